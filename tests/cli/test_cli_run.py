"""`hpo run` and `hpo best` as a user runs them: real processes, on a Ray cluster started with
`ray start --head` and reached through HPO_RAY_ADDRESS."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from servers import RayHead, free_port

pytestmark = pytest.mark.slow  # end to end: a real service, Ray or CLI process

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    head = RayHead(tmp_path_factory.mktemp("ray-head")).wait()
    try:
        yield head.address
    finally:
        head.kill()


def test_run_on_a_ray_cluster_then_pull_the_best_config(
    ray_head: str,
    tiny_models: dict[str, Path],
    sentiment_files: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    train, dev = sentiment_files
    (tmp_path / "study.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "on-cluster",
                "model": {"name": str(tiny_models["bert"])},
                "dataset": {
                    "train": str(train),
                    "eval": str(dev),
                    "max_train_samples": 64,
                    "max_eval_samples": 32,
                    "max_seq_length": 32,
                },
                "parameters": {
                    "learning_rate": {"type": "categorical", "choices": [1e-3, 3e-3]},
                    "num_train_epochs": 1,
                },
                "sampler": {"type": "grid"},
                "limits": {"concurrent_trials": 2},
            }
        )
    )
    env = dict(
        os.environ,
        HPO_RAY_ADDRESS=ray_head,
        RAY_AUTH_MODE="token",
        HPO_DATABASE_URL=f"sqlite:///{tmp_path / 'hpo.db'}",
        HPO_WORK_DIR=str(tmp_path / "work"),
    )
    run = subprocess.run(
        [BIN / "hpo", "run", "study.yaml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "on-cluster: completed" in run.stdout
    assert "Best configuration" in run.stdout
    assert "Traceback" not in run.stderr

    best = subprocess.run(
        [BIN / "hpo", "best", "on-cluster", "--format", "yaml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert best.returncode == 0, best.stderr
    document = yaml.safe_load(best.stdout)
    assert document["study"] == "on-cluster"
    assert document["parameters"]["learning_rate"] in (1e-3, 3e-3)
    assert document["objective"]["metric"] == "accuracy"


def test_an_unreachable_cluster_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "study.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "nowhere",
                "dataset": {
                    "train": str(Path(__file__).parents[2] / "examples/sentiment/train.csv"),
                    "max_train_samples": 20,
                },
                "parameters": {"learning_rate": {"type": "categorical", "choices": [1e-3]}},
            }
        )
    )
    env = dict(
        os.environ,
        HPO_RAY_ADDRESS=f"127.0.0.1:{free_port()}",
        HPO_DATABASE_URL=f"sqlite:///{tmp_path / 'hpo.db'}",
    )
    run = subprocess.run(
        [BIN / "hpo", "run", "study.yaml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2
    assert "cannot connect to the Ray cluster" in run.stderr
    assert "Traceback" not in run.stderr
