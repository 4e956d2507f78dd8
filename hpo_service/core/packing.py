"""How many trials share a worker's device: fused groups, trials per GPU, concurrency.

Pure: the driver measures the GPU and estimates a trial's memory, this module decides. The rule
(docs/definition.md, `execution`):

- A CPU worker (``resources_per_trial.gpus: 0``) fuses ``execution.fuse_trials`` trials when
  that is a number, else none (``auto``: fusion pays on accelerators).
- A GPU worker fuses as many trials as fit in 85% of its GPU's memory (at most 16) when
  ``fuse_trials`` is ``auto``; a number is taken as given.
- Trials that do not fuse (a group of 1) and ask for one whole GPU share it: as many as fit
  (at most 8) when ``execution.trials_per_gpu`` is ``auto``, else that many.
- Population-based training never fuses (PBT restarts each member from another's state as a
  trial of its own).
- Concurrent trials are at least ``limits.concurrent_trials`` and enough to fill every GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hpo_service.core.definition import PopulationBased, StudyDefinition

USABLE_SHARE = 0.85
MAX_AUTO_FUSED = 16
MAX_AUTO_PER_GPU = 8


@dataclass(frozen=True)
class Packing:
    """Trials per worker (1: no fusion), each worker's resources, and trials at once."""

    fuse_trials: int
    cpus_per_worker: float
    gpus_per_worker: float
    concurrent_trials: int

    @property
    def workers(self) -> int:
        return math.ceil(self.concurrent_trials / self.fuse_trials)


@dataclass(frozen=True)
class DeviceFacts:
    """What the driver measured: one GPU's memory, the cluster's GPUs, a trial's footprint."""

    gpu_memory_bytes: int | None = None
    cluster_gpus: float = 0.0
    trial_bytes: int = 0
    member_bytes: int = 0


def plan_packing(definition: StudyDefinition, facts: DeviceFacts) -> Packing:
    """The packing of ``definition``'s trials on the devices ``facts`` describes."""
    execution, resources = definition.execution, definition.resources_per_trial
    asked = definition.limits.concurrent_trials
    on_gpu = resources.gpus > 0 and facts.gpu_memory_bytes is not None
    usable = int(USABLE_SHARE * facts.gpu_memory_bytes * resources.gpus) if on_gpu else 0
    if isinstance(definition.early_stopping, PopulationBased):
        fuse = 1
    elif isinstance(execution.fuse_trials, int):
        fuse = execution.fuse_trials
    elif on_gpu and facts.member_bytes > 0:
        fuse = max(1, min(MAX_AUTO_FUSED, (usable - facts.trial_bytes) // facts.member_bytes + 1))
    else:
        fuse = 1
    fuse = min(fuse, definition.n_trials)
    gpus = resources.gpus
    if fuse == 1 and on_gpu and resources.gpus == 1:
        per_gpu = execution.trials_per_gpu
        if per_gpu == "auto":
            per_gpu = max(1, min(MAX_AUTO_PER_GPU, usable // max(facts.trial_bytes, 1)))
        gpus = 1 / per_gpu
    fill = math.floor(facts.cluster_gpus / gpus + 1e-9) * fuse if on_gpu and gpus > 0 else 0
    concurrent = min(max(asked, fuse, fill), definition.n_trials)
    return Packing(
        fuse_trials=fuse,
        cpus_per_worker=resources.cpus,
        gpus_per_worker=gpus,
        concurrent_trials=concurrent,
    )
