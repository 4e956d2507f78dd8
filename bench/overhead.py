"""Where a study's time goes besides training, measured side by side in one run.

    .venv/bin/python bench/overhead.py [--trials 8] [--shared-data ../shared/data]

1. Tokenization: SST-2's 67k training sentences tokenized once (what every trial would repeat
   if the data were tokenized per trial, as a naive trainable does).
2. A tiny-BERT study run in-process with `run_study` (local Ray, SQLite): wall time per trial
   against the trials' own training time, i.e. the runner's per-trial overhead.
3. `POST /v1/studies` latency of a real `hpo serve`, on SQLite and PostgreSQL.

Prints a table; nothing here is a pass/fail test (the machines are noisy).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from databases import fresh_database  # noqa: E402
from service import Service  # noqa: E402
from tiny_models import save_tiny_model  # noqa: E402

from hpo_service.data import load_labelled_data  # noqa: E402
from hpo_service.db.store import Store  # noqa: E402
from hpo_service.definition import DatasetSpec, ModelSpec  # noqa: E402
from hpo_service.modeling import tokenize  # noqa: E402
from hpo_service.presets import resolve_definition  # noqa: E402
from hpo_service.runner import run_study  # noqa: E402
from hpo_service.settings import Settings  # noqa: E402

SENTIMENT = ROOT / "examples" / "sentiment"


def tokenization_seconds(shared_data: Path) -> tuple[int, float]:
    spec = DatasetSpec(
        train=str(shared_data / "SST-2" / "train.tsv"), eval=str(shared_data / "SST-2" / "dev.tsv")
    )
    data = load_labelled_data(spec)
    started = time.perf_counter()
    tokenize(ModelSpec(), data, 64)
    return len(data.train) + len(data.eval), time.perf_counter() - started


def study_document(name: str, model: Path, trials: int) -> dict:
    return {
        "name": name,
        "model": {"name": str(model)},
        "dataset": {
            "train": str(SENTIMENT / "train.csv"),
            "eval": str(SENTIMENT / "dev.csv"),
            "max_train_samples": 96,
            "max_eval_samples": 48,
            "max_seq_length": 32,
        },
        "parameters": {
            "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "num_train_epochs": 1,
        },
        "limits": {"trials": trials},
    }


def runner_overhead(model: Path, trials: int, folder: Path) -> tuple[float, float]:
    """(wall seconds per trial, training seconds per trial) of a whole study."""
    url = f"sqlite:///{folder / 'bench.db'}"
    document = study_document("overhead", model, trials)
    settings = Settings(database_url=url, work_dir=folder / "work", ray_num_cpus=2)
    started = time.perf_counter()
    run_study(document, resolve_definition(document), settings)
    wall = time.perf_counter() - started
    durations = [t.duration_s or 0.0 for t in Store.open(settings.database_url).trials("overhead")]
    return wall / trials, statistics.mean(durations)


def submit_latencies(backend: str, model: Path, folder: Path, n: int = 40) -> list[float]:
    with fresh_database(backend, folder) as url:
        service = Service(url, folder / f"svc-{backend}", [SENTIMENT], HPO_MAX_RUNNING_STUDIES="1")
        with service:
            latencies = []
            for i in range(n):
                document = study_document(f"lat-{i}", model, 1)
                started = time.perf_counter()
                answer = service.client.post("/v1/studies", json=document)
                latencies.append(time.perf_counter() - started)
                assert answer.status_code == 201, answer.text
                service.client.post(f"/v1/studies/lat-{i}/cancel")
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--shared-data", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hpo-bench-") as tmp:
        folder = Path(tmp)
        model = save_tiny_model("bert", folder / "tiny-bert")
        examples, tokenize_s = tokenization_seconds(args.shared_data)
        per_trial, training = runner_overhead(model, args.trials, folder)
        sqlite = submit_latencies("sqlite", model, folder / "sqlite")
        postgres = submit_latencies("postgresql", model, folder / "postgresql")

    def p(values: list[float], q: float) -> float:
        return statistics.quantiles(values, n=100)[int(q) - 1] * 1000

    rows = [
        ("tokenize SST-2 once (MiniLM tokenizer)", f"{examples} examples", f"{tokenize_s:.2f} s"),
        (
            f"tiny-BERT study, {args.trials} trials",
            "wall / trial vs training / trial",
            f"{per_trial:.2f} s vs {training:.2f} s (overhead {per_trial - training:.2f} s)",
        ),
        ("POST /v1/studies, SQLite", "p50 / p95", f"{p(sqlite, 50):.0f} / {p(sqlite, 95):.0f} ms"),
        (
            "POST /v1/studies, PostgreSQL",
            "p50 / p95",
            f"{p(postgres, 50):.0f} / {p(postgres, 95):.0f} ms",
        ),
    ]
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in [("measure", "what", "result"), *rows]:
        print("  ".join(cell.ljust(width[i]) for i, cell in enumerate(row)))


if __name__ == "__main__":
    main()
