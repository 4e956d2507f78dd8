"""Shared fixtures: data folders, tiny models, a Ray runtime, and a fresh database per test on
SQLite and PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from databases import BACKENDS, fresh_database

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SHARED_DATA = Path(os.environ.get("HPO_SHARED_DATA", ROOT.parent / "shared" / "data"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow end-to-end tests first: spread over pytest workers a file at a time (`make test`),
    the long files start early and the workers finish together."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: files stay whole


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The GLUE-style datasets beside the checkout (../shared/data)."""
    if not (SHARED_DATA / "SST-2" / "train.tsv").is_file():
        pytest.fail(f"shared datasets not found at {SHARED_DATA}; set HPO_SHARED_DATA")
    return SHARED_DATA


@pytest.fixture(scope="session")
def sentiment_files() -> tuple[Path, Path]:
    """The project's own example data: train and dev CSVs."""
    return EXAMPLES / "sentiment" / "train.csv", EXAMPLES / "sentiment" / "dev.csv"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny randomly-initialised model directory per family."""
    from tiny_models import save_tiny_model

    root = tmp_path_factory.mktemp("tiny-models")
    return {
        family: save_tiny_model(family, root / family)
        for family in ("bert", "roberta", "albert", "distilbert")
    }


@pytest.fixture(scope="session")
def ray_runtime() -> Iterator[None]:
    """One local Ray for the whole session; the runner uses it instead of starting its own."""
    import ray

    from hpo_service.training.trainable import RESET_WAIT_VARIABLE

    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=256 * 1024 * 1024,
        log_to_driver=False,
        # Ray's own wait for a stopped trial before it reuses the actor: 0 s fails every reuse
        # (the study hung) unless the trials set a wait of their own, as they must.
        runtime_env={"env_vars": {RESET_WAIT_VARIABLE: "0"}},
    )
    yield
    ray.shutdown()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database: a SQLite file, then a new PostgreSQL database."""
    with fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'hpo.db'}"
