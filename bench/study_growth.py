"""What a study costs as it grows: tokenization per study, database size and dashboard time.

    .venv/bin/python bench/study_growth.py [--studies 1,4,16] [--trials 10000]
        [--backends sqlite,postgresql] [--out bench/results]

1. Tokenization per study: studies of 1, 4 and 16 trials (a tiny random BERT saved by
   tests/tiny_models.py, 64 training and 32 evaluation sentences of examples/sentiment, one
   epoch) run in this process with ``run_study`` on one local Ray started once (SQLite). Every
   call of ``modeling.tokenize`` (the runner's one call site; no trial calls it) is counted
   and timed.
2. A study of ``--trials`` finished trials (3 evaluations each, in our tables and Optuna's,
   written as bench/latency.py's ``record_trials`` does) in a fresh database per backend: the
   database's size (the SQLite file with its WAL; PostgreSQL's ``pg_database_size``) and, on
   a real ``hpo serve`` (loopback, auth off), the time of one client's requests (median of
   ``--repeats``): ``GET /dashboard`` (the page), the optuna-dashboard API calls the study's
   page makes (``/api/studies``, ``/api/studies/{id}?after=0`` with every trial), and our
   ``GET /v1/studies/{name}`` and ``/trials`` for comparison; ``param_importances`` once.

Prints tables; writes ``study_growth.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from latency import SHARED_DATA, machine, record_trials, study_document  # noqa: E402

SENTIMENT = ROOT / "examples" / "sentiment"


def tokenization_per_study(trial_counts: list[int], folder: Path) -> list[dict[str, Any]]:
    """Run one study per trial count; each one's tokenize calls, their seconds and its wall."""
    import ray
    from tiny_models import save_tiny_model

    from hpo_service.core.presets import resolve_definition
    from hpo_service.core.settings import Settings
    from hpo_service.driver import runner

    folder.mkdir(parents=True, exist_ok=True)
    model = save_tiny_model("bert", folder / "tiny-bert")
    settings = Settings(database_url=f"sqlite:///{folder / 'tokenize.db'}", work_dir=folder)
    calls: list[float] = []
    real = runner.tokenize

    def counted(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            calls.append(time.perf_counter() - started)

    runner.tokenize = counted
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        for trials in trial_counts:
            document = {
                "name": f"tokenize-{trials}",
                "model": {"name": str(model)},
                "dataset": {
                    "train": str(SENTIMENT / "train.csv"),
                    "eval": str(SENTIMENT / "dev.csv"),
                    "max_train_samples": 64,
                    "max_eval_samples": 32,
                    "max_seq_length": 32,
                },
                "parameters": {
                    "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                    "num_train_epochs": 1,
                },
                "limits": {"trials": trials},
            }
            calls.clear()
            started = time.perf_counter()
            record = runner.run_study(document, resolve_definition(document), settings)
            finished = sum(record.trial_counts.values())
            rows.append(
                {
                    "trials": trials,
                    "trials_recorded": finished,
                    "tokenize_calls": len(calls),
                    "tokenize_s": sum(calls),
                    "study_s": time.perf_counter() - started,
                }
            )
            print(f"study of {trials} trials: {len(calls)} tokenize call(s)", flush=True)
    finally:
        runner.tokenize = real
        if started_ray:
            ray.shutdown()
    return rows


def database_bytes(url: str) -> int:
    """The database's size: the SQLite file and its WAL, or PostgreSQL's own figure."""
    if url.startswith("sqlite"):
        path = Path(url.removeprefix("sqlite:///"))
        return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.is_file())
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as connection:
        size = connection.scalar(text("SELECT pg_database_size(current_database())"))
    engine.dispose()
    return int(size)


def timed(client: Any, path: str, repeats: int) -> dict[str, float]:
    """Milliseconds of the first of ``repeats`` GETs of ``path`` (optuna-dashboard caches
    finished trials in memory after it) and their median, and the answer's size in bytes."""
    times, size = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        answer = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 200, f"{path}: {answer.status_code} {answer.text[:300]}"
        size = len(answer.content)
    return {"first_ms": times[0], "ms": statistics.median(times), "bytes": size, "repeats": repeats}


def growth(backend: str, trials: int, repeats: int, folder: Path) -> dict[str, Any]:
    """Database size and page times of one study of ``trials`` trials on ``backend``."""
    from databases import fresh_database
    from servers import Service

    name = "grown"
    model = folder / "model"
    model.mkdir(exist_ok=True)
    with fresh_database(backend, folder) as url:
        document = study_document(name, model, SHARED_DATA)
        empty = 0 if backend == "sqlite" else database_bytes(url)  # PostgreSQL's own catalog
        insert_s = record_trials(url, document, trials)
        size = database_bytes(url)
        print(f"{backend}: {trials} trials written in {insert_s:.1f} s", flush=True)
        service = Service(url, folder / "work", [folder])
        service.env["HPO_MAX_RUNNING_STUDIES"] = "0"  # the service runs no study
        requests: dict[str, dict[str, float]] = {}
        with service:
            client = service.client
            studies = client.get("/api/studies").json()["study_summaries"]
            study_id = next(s["study_id"] for s in studies if s["study_name"] == name)
            paths = {
                "GET /dashboard": "/dashboard",
                "GET /api/studies": "/api/studies",
                "GET /api/studies/{id}?after=0": f"/api/studies/{study_id}?after=0",
                "GET /v1/studies/{name}": f"/v1/studies/{name}",
                "GET /v1/studies/{name}/trials": f"/v1/studies/{name}/trials",
            }
            paths["GET /api/studies/{id}/param_importances"] = (
                f"/api/studies/{study_id}/param_importances"
            )
            for label, path in paths.items():
                requests[label] = timed(client, path, 1 if "importances" in label else repeats)
            detail = client.get(f"/api/studies/{study_id}?after=0").json()
            assert len(detail["trials"]) == trials, len(detail["trials"])
    return {
        "backend": backend,
        "trials": trials,
        "insert_s": insert_s,
        "database_bytes": size,
        "empty_database_bytes": empty,
        "requests": requests,
    }


def tables(tokenizing: list[dict[str, Any]], grown: list[dict[str, Any]]) -> str:
    lines = [
        "| trials per study | trials recorded | tokenize calls | tokenize s | study s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in tokenizing:
        lines.append(
            f"| {r['trials']} | {r['trials_recorded']} | {r['tokenize_calls']} | "
            f"{r['tokenize_s']:.2f} | {r['study_s']:.1f} |"
        )
    lines += ["", "| backend | trials | database MiB | request | first ms | median ms | KiB |"]
    lines.append("| --- | --- | --- | --- | --- | --- | --- |")
    for g in grown:
        for label, r in g["requests"].items():
            lines.append(
                f"| {g['backend']} | {g['trials']:,} | {g['database_bytes'] / 2**20:.1f} | "
                f"`{label}` | {r['first_ms']:.0f} | {r['ms']:.0f} | {r['bytes'] / 1024:,.0f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", default="1,4,16", help="trials of each tokenizing study")
    parser.add_argument("--trials", type=int, default=10_000, help="trials of the grown study")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="hpo-growth-") as tmp:
        folder = Path(tmp)
        counts = [int(n) for n in args.studies.split(",") if n]
        tokenizing = tokenization_per_study(counts, folder / "tokenize") if counts else []
        grown = []
        for backend in args.backends.split(","):
            (folder / backend).mkdir()
            grown.append(growth(backend, args.trials, args.repeats, folder / backend))
    print(tables(tokenizing, grown))
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine(), "tokenization": tokenizing, "growth": grown}
    (args.out / "study_growth.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
