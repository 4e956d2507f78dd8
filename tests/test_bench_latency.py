"""The latency and study-growth benchmarks still run: tiny versions of them, so they never rot."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
from databases import BACKENDS

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_latency_measures_every_endpoint(shared_data: Path, tmp_path: Path) -> None:
    latency = load("latency")
    argv = ["--backends", "sqlite", "--trials", "50", "--clients", "2", "--reads", "6"]
    argv += ["--submissions", "4", "--phase-limit", "60", "--data", str(shared_data)]
    assert latency.main([*argv, "--out", str(tmp_path)]) == 0

    rows = json.loads((tmp_path / "latency.json").read_text())["rows"]
    by_endpoint = {row["endpoint"]: row for row in rows}
    expected = {"health": 6, "submit (cold)": 1, "submit": 4, "study": 6, "trials": 6}
    expected |= {"study (built)": 6, "trials (built)": 6}
    assert set(by_endpoint) == set(expected)
    for endpoint, requests in expected.items():
        row = by_endpoint[endpoint]
        assert (row["requests"], row["failures"]) == (requests, 0), row
        assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_study_growth_sizes_the_database_and_times_the_dashboard(
    backend: str, tmp_path: Path
) -> None:
    growth = load("study_growth")
    grown = growth.growth(backend, 120, 1, tmp_path)

    assert grown["trials"] == 120
    assert grown["database_bytes"] > 0
    assert set(grown["requests"]) >= {"GET /dashboard", "GET /api/studies/{id}?after=0"}
    assert all(r["ms"] > 0 and r["bytes"] > 0 for r in grown["requests"].values())


@pytest.mark.slow
def test_tokenizing_happens_once_per_study(tmp_path: Path) -> None:
    growth = load("study_growth")
    rows = growth.tokenization_per_study([1, 3], tmp_path)

    assert [(r["trials"], r["trials_recorded"]) for r in rows] == [(1, 1), (3, 3)]
    assert [r["tokenize_calls"] for r in rows] == [1, 1]
