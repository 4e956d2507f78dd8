"""The scheduling-overhead benchmark still runs: a tiny version of it, so it never rots."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "overhead.py"


@pytest.mark.slow
def test_overhead_times_every_runner_and_the_first_trial(tmp_path: Path) -> None:
    argv = [sys.executable, SCRIPT, "--trials", "3", "--backends", "sqlite", "--out", tmp_path]
    subprocess.run(argv, check=True, timeout=600)

    result = json.loads((tmp_path / "overhead.json").read_text())
    runners = {(row["kind"], row["runner"]) for row in result["rows"]}
    for kind in ("instant", "0.5 s"):
        assert {
            (kind, "plain Optuna, in memory"),
            (kind, "plain Optuna, sqlite"),
            (kind, "raw Ray Tune + OptunaSearch"),
        } <= runners
    assert ("tiny BERT trial", "hpo-service (sqlite), POST → completed") in runners
    for row in result["rows"]:
        assert row["trials"] == 3 and row["seconds"] > 0
        if row["kind"] == "0.5 s":  # the objective itself sleeps 0.5 s
            assert row["s_per_trial"] >= 0.5
    (served,) = result["first_trial"]
    assert 0 < served["first_trial_warm_s"] < served["wall_s"]
    assert result["ray_start_s"] > 0
