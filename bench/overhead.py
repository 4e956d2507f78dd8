"""Scheduling overhead: what a trial costs besides its own work, side by side in one run.

    .venv/bin/python bench/overhead.py [--trials 200] [--backends sqlite,postgresql]
        [--out bench/results]

1. A trivial objective, ``--trials`` times, one trial at a time, in two kinds: ``instant``
   (returns at once) and ``0.5 s`` (sleeps 0.5 s in three steps, reporting after each):
   a plain Optuna loop (TPE) on in-memory storage, SQLite and PostgreSQL; raw Ray Tune +
   ``OptunaSearch`` (in-memory Optuna) on a local Ray started once (its start timed apart).
2. A tiny real trial (a random tiny BERT, 16 sentences, one epoch, a Ray checkpoint) through raw
   Ray Tune + ``OptunaSearch`` calling hpo-service's own trainable, and through the full
   service (`hpo serve` on SQLite and PostgreSQL: POST → the study completed): the seconds the
   service adds per trial over raw Ray Tune running the very same trials.
3. POST → first trial running, for a service's first study (its shared local Ray head starts)
   and for its next study (the head is up: no Ray start per study).

Prints a table; writes ``overhead.json`` (and ``overhead.png`` when matplotlib is installed)
under ``--out``. Measurements, not pass/fail tests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

import optuna  # noqa: E402
import ray  # noqa: E402
from databases import fresh_database  # noqa: E402
from latency import machine  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402
from servers import Service  # noqa: E402
from tiny_models import save_tiny_model  # noqa: E402

from hpo_service.core.presets import resolve_definition  # noqa: E402
from hpo_service.core.settings import LOCAL_OBJECT_STORE_BYTES, Settings  # noqa: E402
from hpo_service.driver.runner import prepare_trials  # noqa: E402
from hpo_service.driver.search_space import optuna_distributions  # noqa: E402
from hpo_service.training.trainable import train_trial  # noqa: E402

SENTIMENT = ROOT / "examples" / "sentiment"
SLEEP_S = 0.5
STEPS = 3
KINDS = {"instant": 0.0, "0.5 s": SLEEP_S}


def optuna_objective(sleep_s: float) -> Callable[[optuna.Trial], float]:
    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -10, 10)
        for step in range(1, STEPS + 1 if sleep_s else 1):
            time.sleep(sleep_s / STEPS)
            trial.report(x * x / step, step)
        return x * x

    return objective


def ray_objective(config: dict[str, Any]) -> None:
    sleep_s = config["sleep_s"]
    for step in range(1, STEPS + 1 if sleep_s else 2):
        time.sleep(sleep_s / STEPS)
        tune.report({"loss": config["x"] ** 2 / step})


def plain_optuna(storage: str | None, sleep_s: float, trials: int) -> float:
    """Seconds for ``trials`` trials of a plain ``study.optimize`` loop."""
    sampler = optuna.samplers.TPESampler(seed=0)
    study = optuna.create_study(storage=storage, sampler=sampler, study_name=f"plain-{sleep_s}")
    started = time.perf_counter()
    study.optimize(optuna_objective(sleep_s), n_trials=trials)
    return time.perf_counter() - started


def raw_ray_tune(
    trainable: Any,
    space: dict[str, Any],
    param_space: dict[str, Any],
    metric: str,
    mode: str,
    trials: int,
    folder: Path,
) -> float:
    """Seconds of ``Tuner.fit`` for ``trials`` trials, one at a time, with ``OptunaSearch``."""
    searcher = OptunaSearch(
        space=space, metric=metric, mode=mode, sampler=optuna.samplers.TPESampler(seed=0)
    )
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=searcher, num_samples=trials, max_concurrent_trials=1, reuse_actors=True
        ),
        run_config=tune.RunConfig(storage_path=str(folder), verbose=0),
    )
    started = time.perf_counter()
    grid = tuner.fit()
    seconds = time.perf_counter() - started
    assert grid.num_errors == 0 and len(grid) == trials, grid.errors
    return seconds


def study_document(name: str, model: Path, trials: int) -> dict[str, Any]:
    return {
        "name": name,
        "model": {"name": str(model)},
        "dataset": {
            "train": str(SENTIMENT / "train.csv"),
            "eval": str(SENTIMENT / "dev.csv"),
            "max_train_samples": 16,
            "max_eval_samples": 16,
            "max_seq_length": 16,
        },
        "parameters": {
            "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "batch_size": 8,
            "num_train_epochs": 1,
        },
        "resources_per_trial": {"cpus": 1},
        "limits": {"trials": trials, "concurrent_trials": 1},
    }


def ray_tune_on_our_trainable(model: Path, trials: int, folder: Path) -> float:
    """The service's tiny trial (its own trainable, data tokenized once) under raw Ray Tune."""
    document = study_document("raw", model, trials)
    definition = resolve_definition(document)
    setup = prepare_trials(definition)
    trainable = tune.with_resources(tune.with_parameters(train_trial, setup=setup), {"cpu": 1})
    space = optuna_distributions(definition)
    fixed = definition.parameters.fixed_values()
    return raw_ray_tune(trainable, space, fixed, "objective", "max", trials, folder)


def wait_for(check: Callable[[], bool], timeout: float, interval: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("the service did not get there in time")
        time.sleep(interval)


def submit_and_follow(service: Service, document: dict[str, Any]) -> tuple[float, float]:
    """(seconds from POST to its first trial running, seconds from POST to completed)."""
    name = document["name"]
    started = time.perf_counter()
    answer = service.client.post("/v1/studies", json=document)
    assert answer.status_code == 201, answer.text

    def a_trial_runs() -> bool:
        return bool(service.client.get(f"/v1/studies/{name}/trials").json()["items"])

    wait_for(a_trial_runs, timeout=300, interval=0.02)
    first = time.perf_counter() - started

    def finished() -> bool:
        status = service.client.get(f"/v1/studies/{name}").json()["status"]
        assert status in ("queued", "running", "completed"), status
        return status == "completed"

    wait_for(finished, timeout=3600, interval=0.2)
    return first, time.perf_counter() - started


def through_the_service(backend: str, model: Path, trials: int, folder: Path) -> dict[str, float]:
    with fresh_database(backend, folder) as url:
        interval = str(Settings.model_fields["scheduler_interval_s"].default)
        service = Service(url, folder / "service", [SENTIMENT], HPO_SCHEDULER_INTERVAL_S=interval)
        with service:
            cold, _ = submit_and_follow(service, study_document("first", model, 1))
            warm, wall = submit_and_follow(service, study_document("study", model, trials))
    return {"first_trial_cold_s": cold, "first_trial_warm_s": warm, "wall_s": wall}


def measure(trials: int, backends: list[str], folder: Path) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []

    def row(runner: str, kind: str, seconds: float, **extra: Any) -> None:
        rows.append({"runner": runner, "kind": kind, "trials": trials, "seconds": seconds, **extra})

    for kind, sleep_s in KINDS.items():
        row("plain Optuna, in memory", kind, plain_optuna(None, sleep_s, trials))
        for backend in backends:
            with fresh_database(backend, folder / f"optuna-{backend}-{sleep_s}") as url:
                row(f"plain Optuna, {backend}", kind, plain_optuna(url, sleep_s, trials))

    started = time.perf_counter()
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=LOCAL_OBJECT_STORE_BYTES,
        log_to_driver=False,
    )
    ray_start_s = time.perf_counter() - started
    try:
        space = {"x": optuna.distributions.FloatDistribution(-10, 10)}
        for kind, sleep_s in KINDS.items():
            seconds = raw_ray_tune(
                ray_objective, space, {"sleep_s": sleep_s}, "loss", "min", trials, folder / "ray"
            )
            row("raw Ray Tune + OptunaSearch", kind, seconds)
        model = save_tiny_model("bert", folder / "tiny-bert")
        tiny = ray_tune_on_our_trainable(model, trials, folder / "ray")
        row("raw Ray Tune + OptunaSearch", "tiny BERT trial", tiny)
    finally:
        ray.shutdown()

    first_trial = []
    for backend in backends:
        served = through_the_service(backend, model, trials, folder / f"service-{backend}")
        row(f"hpo-service ({backend}), POST → completed", "tiny BERT trial", served["wall_s"])
        first_trial.append({"backend": backend, **served})

    for r in rows:
        r["trials_per_s"] = trials / r["seconds"]
        r["s_per_trial"] = r["seconds"] / trials
        base = next(b for b in rows if b["kind"] == r["kind"])  # the kind's first runner
        r["baseline"] = base["runner"]
        r["added_s_per_trial"] = r["s_per_trial"] - base["s_per_trial"]
    return {
        "machine": machine(),
        "ray_start_s": ray_start_s,
        "rows": rows,
        "first_trial": first_trial,
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        "| trial | runner | trials/s | s per trial | added s per trial | over |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['kind']} | {r['runner']} | {r['trials_per_s']:.1f} | {r['s_per_trial']:.3f} | "
            f"{r['added_s_per_trial']:+.3f} | {r['baseline']} |"
        )
    lines += ["", f"`ray.init` (a local Ray, once): {result['ray_start_s']:.1f} s", ""]
    lines += ["| backend | POST → first trial running, first study | next study |"]
    lines += ["| --- | --- | --- |"]
    for f in result["first_trial"]:
        cold, warm = f["first_trial_cold_s"], f["first_trial_warm_s"]
        lines.append(f"| {f['backend']} | {cold:.2f} s | {warm:.2f} s |")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    kinds = list(dict.fromkeys(r["kind"] for r in result["rows"]))
    figure, axes = plt.subplots(len(kinds), 1, figsize=(9, 2.4 * len(kinds)))
    for ax, kind in zip(axes, kinds, strict=True):
        rows = [r for r in result["rows"] if r["kind"] == kind]
        ax.barh([r["runner"] for r in rows], [r["s_per_trial"] for r in rows])
        ax.set_title(f"{kind}: seconds per trial")
        ax.invert_yaxis()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="hpo-overhead-") as tmp:
        result = measure(args.trials, args.backends.split(","), Path(tmp))
    print(table(result))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "overhead.json").write_text(json.dumps(result, indent=2))
    plot(result, args.out / "overhead.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
