"""Search efficiency: how much training each search method needs to find a good configuration.

    .venv/bin/python bench/search_efficiency.py [--tasks SST-2,RTE,CoLA] [--trials 8]
        [--seeds 0,1,2] [--train-samples 512] [--eval-samples N] [--max-seq-length 64]
        [--methods grid,random,tpe,tpe-asha,tpe-hyperband,tpe-median,pbt,hf-optuna]
        [--model NAME] [--gpus 0] [--out bench/results]

Every method gets the same trial budget (``--trials``) over the same search space, the
``bert-paper`` preset (search_spaces/bert-paper.yaml: learning rate 5e-5/3e-5/2e-5, batch size
16/32, 2/3/4 epochs; weight decay 0.01, 10% linear warm-up, dropout 0.1), with each sampler
seed of ``--seeds``:

- ``grid``: the service's grid sampler (Optuna's ``GridSampler``, seeded): with a budget smaller
  than the grid's 18 points, its first ``--trials`` points in the sampler's seeded random
  order, so a seeded random subset of the grid without repeats;
- ``random``, ``tpe`` (``n_startup_trials=--startup``), ``tpe-asha`` (TPE with ASHA: grace
  period 1 epoch, reduction factor 2, at most 4 epochs), ``tpe-hyperband`` (asynchronous
  Hyperband, 2 brackets) and ``tpe-median`` (median stopping after 1 epoch, 3 trials to
  compare with), ``pbt`` (population-based training: the ``--trials`` trials as one population
  of random starting points, all at once on the same cores, the learning rate shifted along the
  preset's choices after every epoch): the service's own runner
  (``hpo_service.driver.runner.run_study``), one trial at a time with both cores (``pbt``: all
  at once, each with its share; its trial seconds are scaled by that share, so they count the
  same core-seconds), on one local Ray started once for the whole benchmark;
- ``hf-optuna``: ``transformers.Trainer.hyperparameter_search(backend="optuna")`` with its
  defaults (Optuna's ``MedianPruner`` included) and a seeded ``TPESampler`` over the same
  choices, in this process, ``Trainer`` on the same token ids (``DataCollatorWithPadding``).

With ``--gpus`` (a share of a GPU per trial, e.g. 1) the same runs go to the GPU: the
service's trials through ``resources_per_trial.gpus`` (bf16 where the GPU has it), and
hf-optuna's ``Trainer`` on the GPU in bf16 likewise, so both train at the same precision.

Data: ``--train-samples`` training examples (a seeded sample, ``DatasetSpec.max_train_samples``)
and the dev set (capped by ``--eval-samples``), the shipped all-MiniLM-L6-v2. Per trial it
records the dev score (the last evaluated epoch's objective; an ASHA-stopped or pruned trial's
at the epoch it stopped), the epochs it trained, its dev score after each (``curve``) and its
wall time (the service: the store's ``started_at``/``finished_at``; hyperparameter_search: from
``model_init`` to the end of training). Trials are ordered by when they finished; compute is
cumulated in that order.

Prints a table; writes ``search_efficiency.json`` and (with matplotlib) one PNG of best-so-far
dev score against cumulative epochs and one against cumulative trial wall time per task (mean
over seeds, band = min to max) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")

from hpo_service.core.definition import DEFAULT_MODEL, StudyDefinition
from hpo_service.core.presets import resolve_definition
from hpo_service.core.settings import Settings
from hpo_service.core.training_args import training_arguments
from hpo_service.db.store import Store

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HPO_SHARED_DATA", ROOT.parent / "shared" / "data"))
PRESET = "bert-paper"
METHODS = (
    "grid",
    "random",
    "tpe",
    "tpe-asha",
    "tpe-hyperband",
    "tpe-median",
    "pbt",
    "hf-optuna",
)
# The early stopping of the TPE methods that stop trials (``definition.early_stopping``).
EARLY_STOPPING = {
    "tpe-asha": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
    "tpe-hyperband": {"type": "hyperband", "grace_period": 1, "reduction_factor": 2, "brackets": 2},
    "tpe-median": {"type": "median", "grace_period": 1, "min_samples_required": 3},
    # Population-based training: the whole budget as one population, the learning rate
    # shifted along the preset's choices (or drawn again) after every epoch.
    "pbt": {"type": "pbt", "mutate": ["learning_rate"], "quantile_fraction": 0.25},
}
TARGET_GAP = 0.5  # points of the dev score
TASKS: dict[str, dict[str, Any]] = {
    "SST-2": {"text_fields": ["sentence"], "metric": "accuracy"},
    "RTE": {"text_fields": ["sentence1", "sentence2"], "metric": "accuracy"},
    "CoLA": {
        "text_fields": ["sentence"],
        "column_names": ["source", "label", "mark", "sentence"],
        "metric": "matthews_corrcoef",
    },
}
# The TrainingArguments field each searched knob of the preset sets (core.training_args).
TRAINER_FIELD = {
    "learning_rate": "learning_rate",
    "batch_size": "per_device_train_batch_size",
    "num_train_epochs": "num_train_epochs",
}


@dataclass(frozen=True)
class Trial:
    """One finished trial: its dev score in points, epochs trained and wall seconds; ``curve``
    holds its dev score after each epoch it trained (empty in results written before curves
    were kept), so an early-stopping rule's decisions can be checked from the results."""

    score: float
    epochs: int
    seconds: float
    params: dict[str, Any]
    stopped_early: bool
    curve: list[float] = field(default_factory=list)


@dataclass
class SearchRun:
    """One method with one sampler seed on one task: its trials in the order they finished."""

    task: str
    method: str
    seed: int
    trials: list[Trial]
    wall_s: float  # the whole search, Ray's or Trainer's overhead between trials included


def study_document(args: argparse.Namespace, task: str, method: str, seed: int) -> dict[str, Any]:
    """The study definition a user would submit for ``method`` (not hf-optuna)."""
    spec = TASKS[task]
    dataset: dict[str, Any] = {
        "train": str(args.data / task / "train.tsv"),
        "eval": str(args.data / task / "dev.tsv"),
        "text_fields": spec["text_fields"],
        "max_train_samples": args.train_samples or None,  # 0: the whole train set
        "max_eval_samples": args.eval_samples,
        "max_seq_length": args.max_seq_length,
    }
    if "column_names" in spec:
        dataset["column_names"] = spec["column_names"]
    sampler: dict[str, Any] = {"type": "tpe", "seed": seed, "n_startup_trials": args.startup}
    if method in ("grid", "random", "pbt"):  # PBT: a random population
        sampler = {"type": "random" if method == "pbt" else method, "seed": seed}
    document: dict[str, Any] = {
        "name": f"{task.lower()}-{method}-seed{seed}",
        "preset": PRESET,
        "model": {"name": args.model},
        "dataset": dataset,
        "objective": {"metric": spec["metric"]},
        "sampler": sampler,
        "limits": {"trials": args.trials, "concurrent_trials": 1},
        "resources_per_trial": {"cpus": args.cpus, "gpus": args.gpus},
        "execution": {"checkpoints": False},
    }
    if method in EARLY_STOPPING:
        document["early_stopping"] = EARLY_STOPPING[method]
    if method == "pbt":  # the population trains at once, sharing the same cores
        document["limits"]["concurrent_trials"] = args.trials
        document["resources_per_trial"]["cpus"] = args.cpus / args.trials
        document["resources_per_trial"]["gpus"] = args.gpus / args.trials
        document["execution"]["checkpoints"] = True
    return document


def final_params(record: Any) -> dict[str, Any]:
    """A trial's parameters; after population-based training, the values it ended with (its
    schedule's last), by which it planned its epochs."""
    last = (record.schedule or [{}])[-1]
    return {**record.params, **{k: v for k, v in last.items() if k != "epoch"}}


def run_service(args: argparse.Namespace, task: str, method: str, seed: int) -> SearchRun:
    """One study through the service's runner; trials read back from its store."""
    from hpo_service.core.records import TrialState
    from hpo_service.driver.runner import run_study

    document = study_document(args, task, method, seed)
    share = document["resources_per_trial"]["cpus"] / args.cpus  # of the cores, while it runs
    settings = Settings(
        database_url=f"sqlite:///{args.work / 'studies.db'}", work_dir=args.work / "ray"
    )
    start = time.perf_counter()
    run_study(document, resolve_definition(document), settings)
    wall = time.perf_counter() - start
    records = Store.open(settings.database_url).trials(document["name"], with_curves=True)
    finished = [r for r in records if r.state.is_finished and r.finished_at is not None]
    finished.sort(key=lambda r: r.finished_at)
    trials = [
        Trial(
            score=100 * float(r.objective if r.objective is not None else math.nan),
            epochs=r.epochs,
            seconds=float(r.duration_s or 0.0) * share,
            params=final_params(r),
            stopped_early=r.state == TrialState.EARLY_STOPPED,
            curve=[100 * float(e.objective) for e in r.learning_curve],
        )
        for r in finished
    ]
    return SearchRun(task, method, seed, trials, wall)


def run_hf_optuna(args: argparse.Namespace, task: str, seed: int, setup: Any) -> SearchRun:
    """``Trainer.hyperparameter_search(backend="optuna")`` over the preset's choices."""
    import optuna
    import torch
    from transformers import (
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from hpo_service.training.engine import classification_metrics
    from hpo_service.training.modeling import load_model, load_tokenizer

    definition: StudyDefinition = resolve_definition(study_document(args, task, "tpe", seed))
    searched = definition.parameters.searched()
    unknown = sorted(set(searched) - set(TRAINER_FIELD))
    if unknown:
        raise SystemExit(f"hf-optuna: no TrainingArguments field for searched knobs {unknown}")
    fixed = definition.parameters.fixed_values()
    metric = f"eval_{definition.objective.metric}"
    trials: list[Trial] = []
    current: dict[str, Any] = {}

    def hp_space(trial: optuna.Trial) -> dict[str, Any]:
        return {
            TRAINER_FIELD[name]: trial.suggest_categorical(name, spec.choices)
            for name, spec in searched.items()
        }

    def model_init(trial: optuna.Trial | None) -> Any:  # before the trial's suggestions
        current.clear()
        current.update(start=time.perf_counter(), score=math.nan, epochs=0, curve=[])
        return load_model(definition.model, setup.data.label_names, fixed.get("dropout"))

    class Record(TrainerCallback):
        def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            current["score"] = 100 * float(kwargs["metrics"][metric])
            current["epochs"] = round(state.epoch or 0)
            current["curve"].append(current["score"])

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            trials.append(
                Trial(
                    score=current["score"],
                    epochs=current["epochs"],
                    seconds=time.perf_counter() - current["start"],
                    params=dict(state.trial_params or {}),
                    # hyperparameter_search calls on_train_end before raising TrialPruned
                    stopped_early=current["epochs"] < args.num_train_epochs,
                    curve=current["curve"],
                )
            )

    on_gpu = args.gpus > 0
    with tempfile.TemporaryDirectory(prefix="hpo-bench-hf-") as output_dir:
        trainer = Trainer(
            model_init=model_init,
            args=TrainingArguments(
                output_dir=output_dir,
                use_cpu=not on_gpu,
                bf16=on_gpu and torch.cuda.is_bf16_supported(),  # as the service's trials
                disable_tqdm=True,
                **training_arguments(fixed),
            ),
            train_dataset=examples(setup.data.train),
            eval_dataset=examples(setup.data.eval),
            data_collator=DataCollatorWithPadding(load_tokenizer(definition.model)),
            compute_metrics=lambda p: classification_metrics(p.predictions, p.label_ids),
            callbacks=[Record()],
        )
        start = time.perf_counter()
        trainer.hyperparameter_search(
            hp_space=hp_space,
            compute_objective=lambda metrics: metrics[metric],
            n_trials=args.trials,
            direction="maximize",
            backend="optuna",
            sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=args.startup),
        )
        wall = time.perf_counter() - start
    return SearchRun(task, "hf-optuna", seed, trials, wall)


def examples(split: Any) -> list[dict[str, Any]]:
    """A ``TensorSplit`` as the unpadded rows ``Trainer`` and its collator take."""
    rows = []
    for i, length in enumerate(split.lengths.tolist()):
        row = {"input_ids": split.input_ids[i, :length].tolist(), "labels": int(split.labels[i])}
        if split.token_type_ids is not None:
            row["token_type_ids"] = split.token_type_ids[i, :length].tolist()
        rows.append(row)
    return rows


# --- reading the runs -----------------------------------------------------------------------


def curve(run: SearchRun, axis: str) -> list[tuple[float, float]]:
    """(cumulative epochs or seconds, best score so far) after each trial."""
    points, total, best = [], 0.0, -math.inf
    for trial in run.trials:
        total += trial.epochs if axis == "epochs" else trial.seconds
        if not math.isnan(trial.score):
            best = max(best, trial.score)
        points.append((total, best))
    return points


def to_target(run: SearchRun, target: float, axis: str) -> float | None:
    """Cumulative epochs or seconds when the best-so-far first reaches ``target``; None if never."""
    for total, best in curve(run, axis):
        if best >= target:
            return total
    return None


def summarize(runs: list[SearchRun]) -> dict[str, Any]:
    """Per task: the best score found, and per method its final best and compute to target."""
    summary: dict[str, Any] = {}
    for task in dict.fromkeys(r.task for r in runs):
        task_runs = [r for r in runs if r.task == task]
        best = max(t.score for r in task_runs for t in r.trials if not math.isnan(t.score))
        target = best - TARGET_GAP
        methods: dict[str, Any] = {}
        for method in dict.fromkeys(r.method for r in task_runs):
            chosen = [r for r in task_runs if r.method == method]
            epochs = [to_target(r, target, "epochs") for r in chosen]
            seconds = [to_target(r, target, "seconds") for r in chosen]
            reached = [e for e in epochs if e is not None]
            repeated = [repeats(r) for r in chosen]
            methods[method] = {
                "final_best": mean([curve(r, "epochs")[-1][1] for r in chosen if r.trials]),
                "epochs_total": mean([sum(t.epochs for t in r.trials) for r in chosen]),
                "repeated_trials": mean([len(trials) for trials in repeated]),
                "repeated_epochs": mean([sum(t.epochs for t in trials) for trials in repeated]),
                "seconds_total": mean([sum(t.seconds for t in r.trials) for r in chosen]),
                "wall_s": mean([r.wall_s for r in chosen]),
                "reached": f"{len(reached)}/{len(chosen)}",
                "epochs_to_target": mean(reached) if reached else None,
                "seconds_to_target": mean([s for s in seconds if s is not None])
                if reached
                else None,
                "per_seed_epochs_to_target": epochs,
                "per_seed_seconds_to_target": seconds,
            }
        summary[task] = {"best": best, "target": target, "methods": methods}
    return summary


def repeats(run: SearchRun) -> list[Trial]:
    """The trials that ran a configuration an earlier trial of the same study had run (with
    a fixed training seed, the same training again)."""
    seen: list[dict[str, Any]] = []
    repeated = []
    for trial in run.trials:
        if trial.params in seen:
            repeated.append(trial)
        seen.append(trial.params)
    return repeated


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def targets(summary: dict[str, Any]) -> dict[str, Any]:
    """TPE + ASHA against the grid (epochs and seconds) and hyperparameter_search (seconds)."""
    result = {}
    for task, entry in summary.items():
        methods = entry["methods"]
        asha = methods.get("tpe-asha")
        if asha is None:
            continue
        ratios: dict[str, float | None] = {}
        for other, key, name in (
            ("grid", "epochs_to_target", "epochs_vs_grid"),
            ("grid", "seconds_to_target", "seconds_vs_grid"),
            ("hf-optuna", "seconds_to_target", "seconds_vs_hf_optuna"),
        ):
            mine, theirs = asha[key], methods.get(other, {}).get(key)
            ratios[name] = mine / theirs if mine is not None and theirs else None
        ratios["met_30pct_of_grid"] = ratios["epochs_vs_grid"] is not None and (
            ratios["epochs_vs_grid"] <= 0.30
        )
        ratios["met_50pct_of_hf_optuna"] = ratios["seconds_vs_hf_optuna"] is not None and (
            ratios["seconds_vs_hf_optuna"] <= 0.50
        )
        result[task] = ratios
    return result


def table(summary: dict[str, Any]) -> str:
    lines = [
        "| task | method | best dev (mean over seeds) | epochs | trial s | search wall s "
        "| repeated trials (epochs) | reached target | epochs to target | s to target |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for task, entry in summary.items():
        for method, m in entry["methods"].items():
            to_epochs, to_seconds = m["epochs_to_target"], m["seconds_to_target"]
            lines.append(
                f"| {task} | {method} | {m['final_best']:.2f} | {m['epochs_total']:.1f} "
                f"| {m['seconds_total']:.0f} | {m['wall_s']:.0f} "
                f"| {m['repeated_trials']:.1f} ({m['repeated_epochs']:.1f}) | {m['reached']} "
                f"| {'not reached' if to_epochs is None else f'{to_epochs:.1f}'} "
                f"| {'not reached' if to_seconds is None else f'{to_seconds:.0f}'} |"
            )
    return "\n".join(lines)


def plot(runs: list[SearchRun], summary: dict[str, Any], out: Path) -> list[Path]:
    """Best-so-far against cumulative epochs and seconds, per task; [] without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
    except ImportError:
        return []
    written = []
    for task, entry in summary.items():
        for axis, label in (
            ("epochs", "cumulative training epochs"),
            ("seconds", "cumulative trial wall time (s)"),
        ):
            figure, ax = plt.subplots(figsize=(7, 4.5))
            for method in entry["methods"]:
                chosen = [r for r in runs if r.task == task and r.method == method and r.trials]
                curves = [curve(r, axis) for r in chosen]
                end = max(c[-1][0] for c in curves)
                xs = np.linspace(0, end, 200)
                ys = np.array([[best_at(c, x) for x in xs] for c in curves])
                shown = ~np.isnan(ys).any(axis=0)
                ax.step(xs[shown], ys.mean(axis=0)[shown], where="post", label=method)
                ax.fill_between(
                    xs[shown], ys.min(axis=0)[shown], ys.max(axis=0)[shown], step="post", alpha=0.15
                )
            ax.axhline(entry["target"], color="grey", linestyle=":", label="best - 0.5")
            ax.set_xlabel(label)
            ax.set_ylabel(f"best dev {TASKS[task]['metric']} so far (x100)")
            ax.set_title(f"{task}: mean over seeds, band = min to max")
            ax.legend()
            figure.tight_layout()
            path = out / f"search-{task.lower()}-{axis}.png"
            figure.savefig(path, dpi=100)
            plt.close(figure)
            written.append(path)
    return written


def best_at(points: list[tuple[float, float]], x: float) -> float:
    """The best-so-far score at cumulative compute ``x`` (NaN before the first trial ends)."""
    value = math.nan
    for total, best in points:
        if total > x:
            break
        value = best
    return value


def machine() -> dict[str, Any]:
    import torch
    import transformers

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "load_average": os.getloadavg(),
    }


def write_result(
    args: argparse.Namespace, argv: list[str] | None, began: datetime, runs: list[SearchRun]
) -> dict[str, Any]:
    """Write ``search_efficiency.json`` for the runs so far; return what was written."""
    summary = summarize(runs)
    result = {
        "machine": machine(),
        "started": began.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "argv": sys.argv[1:] if argv is None else argv,
        "target_gap_points": TARGET_GAP,
        "summary": summary,
        "targets": targets(summary),
        "runs": [asdict(r) for r in runs],
    }
    (args.out / "search_efficiency.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def merge_results(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One result holding the runs of ``results`` (commands run apart, e.g. one seed a
    session), each command's machine, times and arguments kept under ``merged_from``; two runs
    of one task, method and seed are refused."""
    if len(results) == 1:
        return results[0]
    runs: dict[tuple[str, str, int], dict[str, Any]] = {}
    for result in results:
        for run in result["runs"]:
            key = (run["task"], run["method"], run["seed"])
            if key in runs:
                raise SystemExit(f"--replot: task {key[0]}, method {key[1]}, seed {key[2]} twice")
            runs[key] = run
    sources = [{k: r[k] for k in ("machine", "started", "finished", "argv")} for r in results]
    return {
        "target_gap_points": results[0]["target_gap_points"],
        "merged_from": sources,
        "runs": list(runs.values()),
    }


def report(result: dict[str, Any], out: Path) -> int:
    """Print the table and targets of a result and plot its runs under ``out``. The summary is
    computed again from the runs, so runs of several commands can be merged into one JSON."""
    runs = [SearchRun(**{**r, "trials": [Trial(**t) for t in r["trials"]]}) for r in result["runs"]]
    summary = summarize(runs)
    result = {**result, "summary": summary, "targets": targets(summary)}
    print()
    print(table(summary))
    print()
    print(json.dumps(result["targets"], indent=2))
    plots = plot(runs, summary, out)
    (out / "search_efficiency.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out / 'search_efficiency.json'} and {len(plots)} plots")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="SST-2", help="comma list of SST-2, RTE, CoLA")
    parser.add_argument(
        "--methods", default=",".join(METHODS), help="comma list of " + ", ".join(METHODS)
    )
    parser.add_argument("--trials", type=int, default=8, help="trials per method and seed")
    parser.add_argument("--seeds", default="0,1,2", help="sampler seeds")
    parser.add_argument("--startup", type=int, default=3, help="TPE's random startup trials")
    parser.add_argument("--train-samples", type=int, default=512, help="0: the whole train set")
    parser.add_argument("--eval-samples", type=int, help="cap on dev examples (default: all)")
    parser.add_argument("--max-seq-length", type=int, default=64)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="hub id or model directory")
    parser.add_argument("--cpus", type=int, default=min(os.cpu_count() or 1, 2), help="per trial")
    parser.add_argument(
        "--gpus", type=float, default=0.0, help="per trial (0: CPU only; 1: a whole GPU)"
    )
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument(
        "--replot",
        type=Path,
        nargs="+",
        help="only summarise, print and plot these JSON files' runs, merged (into --out)",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.replot:
        return report(merge_results([json.loads(p.read_text()) for p in args.replot]), args.out)
    tasks, methods = args.tasks.split(","), args.methods.split(",")
    bad = [t for t in tasks if t not in TASKS] + [m for m in methods if m not in METHODS]
    if bad:
        raise SystemExit(
            f"unknown tasks or methods {bad}; tasks: {list(TASKS)}, methods: {METHODS}"
        )
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.gpus > 0:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit(f"--gpus {args.gpus}: no CUDA GPU here (torch {torch.__version__})")

    import ray

    from hpo_service.driver.runner import prepare_trials

    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(
            address="local",
            num_cpus=args.cpus,
            include_dashboard=False,
            object_store_memory=256 * 1024 * 1024,
            log_to_driver=False,
        )
    runs: list[SearchRun] = []
    began = datetime.now(UTC)
    try:
        with tempfile.TemporaryDirectory(prefix="hpo-bench-search-") as work:
            args.work = Path(work)
            for task in tasks:
                setup = None
                for seed in seeds:  # seeds outermost: a run cut short has whole seeds
                    for method in methods:
                        if method == "hf-optuna":
                            if setup is None:  # the same token ids the service's trials get
                                document = study_document(args, task, "tpe", seed)
                                setup = prepare_trials(resolve_definition(document))
                            run = run_hf_optuna(args, task, seed, setup)
                        else:
                            run = run_service(args, task, method, seed)
                        runs.append(run)
                        best = max((t.score for t in run.trials), default=math.nan)
                        print(
                            f"{task} {method} seed {seed}: {len(run.trials)} trials, "
                            f"{sum(t.epochs for t in run.trials)} epochs, {run.wall_s:.0f} s, "
                            f"best {best:.2f}",
                            flush=True,
                        )
                        result = write_result(args, argv, began, runs)  # after every run
    finally:
        if started_ray:
            ray.shutdown()

    return report(result, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
