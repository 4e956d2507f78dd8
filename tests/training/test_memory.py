"""Out of memory is a result, not a crash: a trial that does not fit retries with half the
micro-batch and twice the accumulation, and one that never fits is infeasible, with the reason.

The real path runs under a real memory cap: a child process limits its own address space
(``RLIMIT_AS``) just above what it holds after a warm-up, so the CPU allocator fails for a large
batch the way CUDA's fails on a full GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from hpo_service.training.trainable import InfeasibleTrialError, fit_in_memory


def fits_up_to(rows: int) -> tuple[list[dict[str, Any]], Any]:
    """A stand-in for training that runs out of memory above ``rows`` per micro-batch."""
    tried: list[dict[str, Any]] = []

    def run(config: dict[str, Any], report: Any) -> None:
        tried.append(config)
        if config["batch_size"] > rows:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        report({"epoch": 1, "objective": 0.5})

    return tried, run


def test_a_trial_that_does_not_fit_halves_its_micro_batch_keeping_the_effective_batch() -> None:
    tried, run = fits_up_to(4)
    reports: list[dict[str, Any]] = []
    fit_in_memory({"batch_size": 16, "gradient_accumulation_steps": 2}, reports.append, run)
    shapes = [(c["batch_size"], c["gradient_accumulation_steps"]) for c in tried]
    assert shapes == [(16, 2), (8, 4), (4, 8)]  # 32 rows per optimizer step each time
    assert reports == [
        {"epoch": 1, "objective": 0.5, "micro_batch_size": 4, "accumulation_used": 8}
    ]


def test_a_trial_that_fits_reports_as_it_is() -> None:
    reports: list[dict[str, Any]] = []
    fit_in_memory({"batch_size": 4}, reports.append, fits_up_to(4)[1])
    assert reports == [{"epoch": 1, "objective": 0.5}]


def test_a_trial_that_never_fits_is_infeasible_with_the_reason() -> None:
    tried, run = fits_up_to(0)
    with pytest.raises(InfeasibleTrialError, match=r"infeasible: out of memory even at a "):
        fit_in_memory({"batch_size": 8}, lambda r: None, run)
    assert [c["batch_size"] for c in tried] == [8, 4, 2, 1]


def test_other_errors_and_running_out_after_training_an_epoch_are_not_retried() -> None:
    def broken(config: dict[str, Any], report: Any) -> None:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):
        fit_in_memory({"batch_size": 8}, lambda r: None, broken)

    def late(config: dict[str, Any], report: Any) -> None:
        report({"epoch": 1, "objective": 0.5})
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.OutOfMemoryError):
        fit_in_memory({"batch_size": 8}, lambda r: None, late)


CAPPED = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    import torch
    torch.backends.mkldnn.enabled = False  # oneDNN's own allocations fail with another message
    sys.path.insert(0, sys.argv[1])
    from tiny_models import save_tiny_model
    from hpo_service.core.definition import DatasetSpec, ModelSpec
    from hpo_service.data import load_labelled_data
    from hpo_service.training import engine
    from hpo_service.training.modeling import tokenize
    from hpo_service.training.engine import TrialSetup
    from hpo_service.training.trainable import fit_in_memory

    folder, headroom = Path(sys.argv[2]), int(sys.argv[3]) * 2**20
    model = ModelSpec(name=str(save_tiny_model("bert", folder / "bert")))
    words = "the quick brown fox jumps over a lazy dog while it rains".split()
    rows = ["sentence,label"] + [
        " ".join(words[(i + j) % len(words)] for j in range(150)) + f",{i % 2}" for i in range(512)
    ]
    (folder / "train.csv").write_text("\\n".join(rows))
    (folder / "dev.csv").write_text("\\n".join(rows[:33]))
    spec = DatasetSpec(train=str(folder / "train.csv"), eval=str(folder / "dev.csv"))
    data = tokenize(model, load_labelled_data(spec), 128)
    setup = TrialSetup(model=model, metric="accuracy", data=data, checkpoints=False)

    def run(config, report):
        engine.train(setup, config, report)

    knobs = {"num_train_epochs": 1, "learning_rate": 1e-3}
    fit_in_memory({**knobs, "batch_size": 2}, lambda r: None, run)  # warm up: threads, kernels
    status = Path("/proc/self/status").read_text().splitlines()
    held = int(next(line for line in status if line.startswith("VmSize")).split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (held + headroom, resource.RLIM_INFINITY))
    reports = []
    fit_in_memory({**knobs, "batch_size": 512}, reports.append, run)
    print(json.dumps(reports))
    """
)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_under_a_real_memory_cap_a_large_batch_trains_as_smaller_micro_batches(
    tmp_path: Path,
) -> None:
    tests = Path(__file__).resolve().parents[1]
    argv = [sys.executable, "-c", CAPPED, str(tests), str(tmp_path), "200"]
    # Large blocks straight from mmap, given back when freed: a retry finds its memory again.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]

    [report] = json.loads(done.stdout.strip().splitlines()[-1])
    micro, accumulation = report["micro_batch_size"], report["accumulation_used"]
    assert micro < 512 and micro * accumulation == 512  # the same effective batch
    assert report["epoch"] == 1 and 0 <= report["accuracy"] <= 1
