"""The packing rule: fused groups, trials per GPU and concurrency from the device's memory."""

from __future__ import annotations

from typing import Any

import pytest

from hpo_service.core.definition import StudyDefinition
from hpo_service.core.packing import DeviceFacts, plan_packing

GIB = 1 << 30
H100 = DeviceFacts(
    gpu_memory_bytes=80 * GIB, cluster_gpus=1, trial_bytes=3 * GIB, member_bytes=2 * GIB
)


def study(
    execution: dict[str, Any] | None = None,
    gpus: float = 1,
    trials: int = 32,
    concurrent: int = 1,
) -> StudyDefinition:
    return StudyDefinition.model_validate(
        {
            "name": "packing",
            "dataset": {"train": "train.csv"},
            "parameters": {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-4}},
            "limits": {"trials": trials, "concurrent_trials": concurrent},
            "resources_per_trial": {"cpus": 2, "gpus": gpus},
            "execution": execution or {},
        }
    )


def test_cpu_trials_do_not_fuse_unless_asked() -> None:
    packing = plan_packing(study(gpus=0), DeviceFacts())
    assert (packing.fuse_trials, packing.gpus_per_worker, packing.concurrent_trials) == (1, 0, 1)
    asked = plan_packing(study({"fuse_trials": 4}, gpus=0), DeviceFacts())
    assert (asked.fuse_trials, asked.concurrent_trials, asked.workers) == (4, 4, 1)


def test_gpu_fuses_as_many_as_fit_in_its_memory() -> None:
    packing = plan_packing(study(), H100)
    # 85% of 80 GiB = 68 GiB: the first member costs 3 GiB, each further one 2 GiB.
    assert packing.fuse_trials == 16  # (68 - 3) // 2 + 1 = 33, capped at 16
    small = DeviceFacts(
        gpu_memory_bytes=16 * GIB, cluster_gpus=2, trial_bytes=3 * GIB, member_bytes=2 * GIB
    )
    packing = plan_packing(study(), small)
    assert packing.fuse_trials == 6  # int(0.85 * 16 GiB) = 13.6 GiB: (13.6 - 3) // 2 + 1
    assert packing.concurrent_trials == 12  # a group on each of the 2 GPUs
    assert packing.workers == 2 and packing.gpus_per_worker == 1


def test_unfused_trials_share_a_gpu_as_memory_allows() -> None:
    packing = plan_packing(study({"fuse_trials": 1}), H100)
    assert packing.fuse_trials == 1
    assert packing.gpus_per_worker == pytest.approx(1 / 8)  # 68 // 3 = 22, capped at 8
    assert packing.concurrent_trials == 8
    given = plan_packing(study({"fuse_trials": 1, "trials_per_gpu": 3}), H100)
    assert given.gpus_per_worker == pytest.approx(1 / 3) and given.concurrent_trials == 3


def test_explicit_gpu_share_and_small_studies_are_respected() -> None:
    shared = plan_packing(study({"fuse_trials": 1}, gpus=0.5), H100)
    assert shared.gpus_per_worker == 0.5 and shared.concurrent_trials == 2
    tiny = plan_packing(study(trials=3), H100)
    assert tiny.fuse_trials == 3 and tiny.concurrent_trials == 3
    more = plan_packing(study(gpus=0, concurrent=6, execution={"fuse_trials": 4}), DeviceFacts())
    assert (more.concurrent_trials, more.workers) == (6, 2)


@pytest.mark.parametrize("bad", [0, 65, True, "all"])
def test_bad_execution_counts_are_field_errors(bad: Any) -> None:
    with pytest.raises(ValueError, match="fuse_trials"):
        study({"fuse_trials": bad})
