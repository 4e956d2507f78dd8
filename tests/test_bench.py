"""The throughput benchmark still runs: a tiny version of it, so it never rots."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "throughput.py"


@pytest.fixture(scope="module")
def throughput():
    spec = importlib.util.spec_from_file_location("bench_throughput", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_quick_run_measures_every_run(
    throughput, shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--quick", "--modes", "stacked,interleaved", "--peak-tflops", "1"]
    assert throughput.main([*argv, "--out", str(tmp_path)]) == 0

    result = json.loads((tmp_path / "throughput.json").read_text())
    runs = {row["run"]: row for row in result["runs"]}
    fused = {"fused-4 stacked", "fused-4 interleaved"}
    assert set(runs) == {"trainer", "engine", "sequential-4", *fused}
    examples = 32  # --quick: 32 training examples, 1 epoch
    for row in runs.values():
        assert row["model"] == "tiny"
        assert row["samples"] == examples * row["members"]
        assert row["samples_per_s"] > 0 and row["tokens_per_s"] > 0
        assert row["whole_trial_samples_per_s"] <= row["samples_per_s"]
        assert row["real_tokens"] > row["samples"]  # [CLS] and [SEP] at least
        # MFU = 6 N (real tokens) / training seconds / peak, against the stated 1 TFLOP/s.
        flops = 6 * row["parameters"] * row["real_tokens"]
        assert row["mfu"] == pytest.approx(flops / row["train_s"] / 1e12)
    assert runs["sequential-4"]["real_tokens"] == 4 * runs["engine"]["real_tokens"]
    assert {r["ratio"] for r in result["ratios"]} == {
        "engine / Trainer",
        *(f"{run} / 4 one at a time" for run in fused),
    }

    printed = capsys.readouterr().out
    assert "| tiny | fused-4 interleaved | 4 |" in printed
    assert "engine / Trainer" in printed
