"""API latency of a real `hpo serve` under concurrent clients, on SQLite and PostgreSQL.

    .venv/bin/python bench/latency.py [--backends sqlite,postgresql] [--trials 1000]
        [--clients 20] [--reads 400] [--submissions 200] [--out bench/results]

For each backend, in a fresh database of its own (a SQLite file; a new PostgreSQL database on
the test server, dropped afterwards):

1. a finished study of ``--trials`` trials (3 evaluations each) is written straight into the
   database, our tables through ``Store`` and Optuna's through its storage, as a driver leaves
   them;
2. ``hpo serve`` starts on 127.0.0.1 (auth off on loopback; ``HPO_MAX_RUNNING_STUDIES=0``, so
   submitted studies stay queued);
3. one submission checks the data (SST-2's TSVs) for the first time (``cold`` row), then locust
   (headless, ``--clients`` users started at once, no wait between requests) sends a fixed
   number of requests to one endpoint at a time: ``GET /healthz`` (the floor: what an answer
   that reads nothing costs under the same load), ``POST /v1/studies`` (the same files, each
   study a new name), ``GET /v1/studies/{name}`` and ``GET /v1/studies/{name}/trials`` of the
   study of step 1 (answers the service keeps while the study is unchanged), and the same reads
   built at every request (``built`` rows): the study of a second such study with one more
   trial running (its spend counts the time going by), and pages of trials at offsets no
   request asked for before. Each phase stops after its requests or ``--phase-limit`` seconds.

Latency is each request's time as locust's client saw it (send to last byte). Prints a table;
writes ``latency.json`` under ``--out``. Needs locust (``.venv/bin/pip install locust``).

This file is also the locustfile: ``locust -f bench/latency.py`` loads the ``ApiClient`` below.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HPO_SHARED_DATA", ROOT.parent / "shared" / "data"))
STUDY = "recorded"
RUNNING = "running"  # the same trials and one more, running: its answer is built every read
ENDPOINTS = {  # phase -> (method, locust's name for the request)
    "health": ("GET", "GET /healthz"),  # the floor: an answer with no query, same load
    "submit": ("POST", "POST /v1/studies"),
    "study": ("GET", "GET /v1/studies/{name}"),
    "study (built)": ("GET", "GET /v1/studies/{name} (a trial running)"),
    "trials": ("GET", "GET /v1/studies/{name}/trials"),
    "trials (built)": ("GET", "GET /v1/studies/{name}/trials?offset={n}"),
}
TARGET_MS = {"submit": 300.0, "study": 100.0, "trials": 100.0}

if "locust.main" in sys.modules:  # loaded by `locust -f bench/latency.py`: the clients
    from locust import HttpUser, constant, events, task
    from locust.exception import StopUser

    _PHASE = os.environ["LATENCY_PHASE"]
    _REQUESTS = int(os.environ["LATENCY_REQUESTS"])
    _DOCUMENT = json.loads(os.environ.get("LATENCY_DOCUMENT", "{}"))
    _samples: list[dict[str, Any]] = []
    _sent = 0
    _done = 0

    @events.request.add_listener
    def _record(name: str, response_time: float, exception: Any, response: Any, **_: Any) -> None:
        status = getattr(response, "status_code", None)
        sample = {"ms": response_time, "status": status, "error": repr(exception)}
        _samples.append(sample | {"end": time.time()})

    @events.quitting.add_listener
    def _write(environment: Any, **_: Any) -> None:
        Path(os.environ["LATENCY_OUT"]).write_text(json.dumps(_samples))

    class ApiClient(HttpUser):
        """One client: requests of this phase back to back until the phase's count is sent."""

        wait_time = constant(0)

        @task
        def request(self) -> None:
            global _sent, _done
            if _sent >= _REQUESTS:
                _done += 1
                if _done == int(os.environ["LATENCY_CLIENTS"]):  # the last one out ends the run
                    self.environment.runner.quit()
                raise StopUser()
            _sent += 1
            name = ENDPOINTS[_PHASE][1]
            if _PHASE == "submit":
                document = {**_DOCUMENT, "name": f"load-{os.getpid()}-{_sent}"}
                with self.client.post("/v1/studies", json=document, name=name) as answer:
                    assert answer.status_code == 201, answer.text
            elif _PHASE == "health":
                self.client.get("/healthz", name=name)
            elif _PHASE == "study":
                self.client.get(f"/v1/studies/{STUDY}", name=name)
            elif _PHASE == "study (built)":
                self.client.get(f"/v1/studies/{RUNNING}", name=name)
            elif _PHASE == "trials":
                self.client.get(f"/v1/studies/{STUDY}/trials", name=name)
            else:  # a page no request asked for before: built, not kept
                self.client.get(f"/v1/studies/{STUDY}/trials?offset={_sent}", name=name)


def study_document(name: str, model: Path, data: Path) -> dict[str, Any]:
    """A study on SST-2's files (``data``) with a tiny model: what the submissions send."""
    return {
        "name": name,
        "model": {"name": str(model)},
        "dataset": {
            "train": str(data / "SST-2" / "train.tsv"),
            "eval": str(data / "SST-2" / "dev.tsv"),
            "max_train_samples": 2000,
            "max_seq_length": 64,
        },
        "parameters": {
            "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
            "num_train_epochs": 3,
        },
        "limits": {"trials": 20},
    }


def record_trials(url: str, document: dict[str, Any], trials: int, epochs: int = 3) -> float:
    """Write a finished study of ``trials`` complete trials, ``epochs`` evaluations each, as a
    driver leaves it: the study through ``Store`` and Optuna's storage, the trials in one
    transaction per store (our table rows; Optuna's own SQLAlchemy models, since its public
    ``add_trials`` takes ~20 ms a trial here). Returns the seconds it took."""
    import optuna
    from optuna.storages._rdb import models as optuna_rows  # bulk writes: private, bench only
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from hpo_service.core.presets import resolve_definition
    from hpo_service.core.records import StudyStatus, TrialState
    from hpo_service.db.optuna_storage import optuna_storage
    from hpo_service.db.store import Store
    from hpo_service.db.tables import EpochRow, StudyRow, TrialRow, utcnow

    started = time.perf_counter()
    definition = resolve_definition(document)
    store = Store.open(url)
    store.create_study(document, definition, status=StudyStatus.COMPLETED)
    storage = optuna_storage(url)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(study_name=definition.name, storage=storage, direction="maximize")
    space = optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)
    space_json = optuna.distributions.distribution_to_json(space)
    finite = optuna_rows.TrialValueModel.TrialValueType.FINITE
    finite_step = optuna_rows.TrialIntermediateValueModel.TrialIntermediateValueType.FINITE
    now = utcnow()
    with (
        Session(store.engine) as ours,
        ours.begin(),
        Session(storage.engine) as theirs,
        theirs.begin(),
    ):
        study_id = ours.scalar(select(StudyRow.id).where(StudyRow.name == definition.name))
        optuna_id = theirs.scalar(
            select(optuna_rows.StudyModel.study_id).where(
                optuna_rows.StudyModel.study_name == definition.name
            )
        )
        for number in range(trials):
            learning_rate = 1e-5 * 100 ** ((number * 0.618) % 1)
            curve = {e: 0.5 + 0.4 * ((number * 0.37 + e * 0.1) % 1) for e in range(1, epochs + 1)}
            final = curve[epochs]
            ours.add(
                TrialRow(
                    study_id=study_id,
                    number=number,
                    state=TrialState.COMPLETE,
                    params={"learning_rate": learning_rate},
                    objective=final,
                    accuracy=final,
                    eval_loss=1 - final,
                    epochs=epochs,
                    started_at=now,
                    finished_at=now,
                    epoch_results=[
                        EpochRow(epoch=e, objective=v, accuracy=v, eval_loss=1 - v)
                        for e, v in curve.items()
                    ],
                )
            )
            trial = optuna_rows.TrialModel(
                number=number,
                study_id=optuna_id,
                state=optuna.trial.TrialState.COMPLETE,
                datetime_start=now,
                datetime_complete=now,
            )
            theirs.add(trial)
            theirs.add(
                optuna_rows.TrialParamModel(
                    trial=trial,
                    param_name="learning_rate",
                    param_value=learning_rate,
                    distribution_json=space_json,
                )
            )
            theirs.add(
                optuna_rows.TrialValueModel(
                    trial=trial, objective=0, value=final, value_type=finite
                )
            )
            for step, value in curve.items():
                theirs.add(
                    optuna_rows.TrialIntermediateValueModel(
                        trial=trial,
                        step=step,
                        intermediate_value=value,
                        intermediate_value_type=finite_step,
                    )
                )
    store.engine.dispose()
    storage.engine.dispose()
    return time.perf_counter() - started


def run_phase(
    base_url: str, phase: str, clients: int, requests: int, limit_s: int, document: dict, tmp: Path
) -> list[dict[str, Any]]:
    """One locust run against one endpoint; every request's sample (ms, status, error)."""
    out = tmp / f"{phase}.json"
    env = dict(
        os.environ,
        LATENCY_PHASE=phase,
        LATENCY_REQUESTS=str(requests),
        LATENCY_CLIENTS=str(clients),
        LATENCY_DOCUMENT=json.dumps(document),
        LATENCY_OUT=str(out),
    )
    command = [
        str(Path(sys.executable).parent / "locust"),
        "-f",
        __file__,
        "--headless",
        "--host",
        base_url,
        "--users",
        str(clients),
        "--spawn-rate",
        str(clients),
        "--run-time",
        f"{limit_s}s",
        "--stop-timeout",
        "10",
        "--only-summary",
        "--loglevel",
        "WARNING",
    ]
    subprocess.run(
        command,
        env=env,
        cwd=tmp,
        timeout=limit_s + 60,
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    if not out.is_file():
        raise RuntimeError(f"locust wrote no samples for {phase}")
    return json.loads(out.read_text())


def percentile(values: list[float], q: int) -> float:
    """The q-th percentile (inclusive method); the value itself for a single sample."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def summary(backend: str, phase: str, samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Percentiles of one endpoint's samples; requests/s from the first request's start to the
    last one's end."""
    times = [s["ms"] for s in samples]
    span_s = max(s["end"] for s in samples) - min(s["end"] - s["ms"] / 1000 for s in samples)
    failures = [s for s in samples if s["error"] != "None"]
    return {
        "backend": backend,
        "endpoint": phase,
        "requests": len(samples),
        "failures": len(failures),
        "p50_ms": percentile(times, 50),
        "p99_ms": percentile(times, 99),
        "max_ms": max(times),
        "requests_per_s": len(samples) / span_s if len(samples) > 1 else None,
        "target_p99_ms": TARGET_MS.get(phase),
    }


def measure(backend: str, args: argparse.Namespace, folder: Path) -> list[dict[str, Any]]:
    sys.path.insert(0, str(ROOT / "tests"))
    import httpx
    from databases import fresh_database
    from servers import Service
    from tiny_models import save_tiny_model

    from hpo_service.core.records import StudyStatus
    from hpo_service.db.store import Store

    model = folder / "tiny-bert"
    if not model.is_dir():
        save_tiny_model("bert", model)
    rows = []
    with fresh_database(backend, folder) as url:
        document = study_document(STUDY, model, args.data)
        insert_s = record_trials(url, document, args.trials)
        print(f"{backend}: {args.trials} trials recorded in {insert_s:.1f} s", flush=True)
        record_trials(url, study_document(RUNNING, model, args.data), args.trials)
        running = Store.open(url)
        running.set_status(RUNNING, StudyStatus.RUNNING)
        running.start_trial(RUNNING, args.trials, {"learning_rate": 1e-4})
        running.engine.dispose()
        service = Service(url, folder / f"work-{backend}", [args.data, folder])
        service.env["HPO_MAX_RUNNING_STUDIES"] = "0"  # submitted studies stay queued
        with service:
            started = time.perf_counter()
            first = service.client.post(
                "/v1/studies", json=study_document("cold", model, args.data)
            )
            end = time.time()
            assert first.status_code == 201, first.text
            cold = {"ms": (time.perf_counter() - started) * 1000, "error": "None", "end": end}
            rows.append(summary(backend, "submit (cold)", [cold]))
            counts = {
                "health": args.reads,
                "submit": args.submissions,
                "study": args.reads,
                "study (built)": args.reads,
                "trials": args.reads,
                "trials (built)": args.reads,
            }
            for phase, requests in counts.items():
                samples = run_phase(
                    service.url, phase, args.clients, requests, args.phase_limit, document, folder
                )
                rows.append(summary(backend, phase, samples))
                print(f"{backend} {phase}: {len(samples)} requests", flush=True)
            trials = httpx.get(f"{service.url}/v1/studies/{STUDY}/trials", timeout=30).json()
            assert trials["total"] == args.trials  # the reads got its first page (100 trials)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    header = ["backend", "endpoint", "requests", "failures", "p50 ms", "p99 ms", "max ms"]
    header += ["req/s", "target p99"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in rows:
        rate = f"{r['requests_per_s']:.0f}" if r["requests_per_s"] else "-"
        target = f"< {r['target_p99_ms']:.0f} ms" if r["target_p99_ms"] else "-"
        lines.append(
            f"| {r['backend']} | {r['endpoint']} | {r['requests']} | {r['failures']} | "
            f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['max_ms']:.0f} | {rate} | {target} |"
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--reads", type=int, default=400, help="requests per read endpoint")
    parser.add_argument("--submissions", type=int, default=200)
    parser.add_argument("--phase-limit", type=int, default=120, help="seconds per endpoint")
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hpo-latency-") as tmp:
        for backend in args.backends.split(","):
            folder = Path(tmp) / backend
            folder.mkdir()
            rows.extend(measure(backend, args, folder))
    print(table(rows))
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": machine(),
        "settings": vars(args) | {"data": str(args.data), "out": str(args.out)},
        "rows": rows,
    }
    (args.out / "latency.json").write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
