"""The real pretrained all-MiniLM-L6-v2 (shipped offline) fine-tuned on real SST-2 sentences."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from hpo_service.core.presets import resolve_definition
from hpo_service.core.records import StudyStatus, TrialState
from hpo_service.core.settings import Settings
from hpo_service.db.store import Store
from hpo_service.driver.runner import run_study

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_runtime")]


def test_minilm_beats_the_majority_baseline_on_sst2_dev(
    shared_data: Path, sqlite_url: str, tmp_path: Path
) -> None:
    dev_rows = 300
    document = {
        "name": "minilm-sst2",
        "model": {"name": "sentence-transformers/all-MiniLM-L6-v2"},
        "dataset": {
            "train": str(shared_data / "SST-2" / "train.tsv"),
            "eval": str(shared_data / "SST-2" / "dev.tsv"),
            "max_train_samples": 480,
            "max_eval_samples": dev_rows,
            "max_seq_length": 64,
        },
        "parameters": {
            "learning_rate": {"type": "categorical", "choices": [1e-4]},
            "batch_size": 16,
            "num_train_epochs": 3,
            "warmup_ratio": 0.1,
            "dropout": 0.1,
        },
        "limits": {"trials": 1},
        "resources_per_trial": {"cpus": 2},
    }
    settings = Settings(database_url=sqlite_url, work_dir=tmp_path / "work")
    record = run_study(document, resolve_definition(document), settings)

    assert record.status == StudyStatus.COMPLETED
    best = Store.open(settings.database_url).best_trial("minilm-sst2")
    assert best is not None and best.state == TrialState.COMPLETE
    # The same dev sample the study evaluated on (seeded), and its majority-class accuracy.
    dev = pd.read_csv(shared_data / "SST-2" / "dev.tsv", sep="\t", quoting=3)
    dev = dev.sample(n=dev_rows, random_state=0)
    baseline = dev["label"].value_counts(normalize=True).max()
    assert best.accuracy > baseline + 0.10, (best.accuracy, baseline)
