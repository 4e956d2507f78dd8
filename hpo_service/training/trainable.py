"""One trial: fine-tune a ``transformers`` classifier and report each epoch to Ray Tune.

Runs inside a Ray worker. Knows nothing of the database: the driver records what it reports.
The training loop is ``engine.train``; each epoch's state goes with its report as a Ray
checkpoint, so a trial cut off by a crash runs again from its last finished epoch.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ray import tune

from hpo_service.core.definition import Metric, ModelSpec
from hpo_service.training import engine
from hpo_service.training.batches import TensorData

# `HPO_TORCH_COMPILE=1` in the workers' environment compiles each trial's model (CUDA only).
COMPILE_VARIABLE = "HPO_TORCH_COMPILE"
STATE_FILE = "state.pt"


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a study shares; Ray puts it in the object store once."""

    model: ModelSpec
    metric: Metric
    data: TensorData
    checkpoints: bool = True


class RayCheckpoints:
    """A trial's epoch states as Ray checkpoints: saved beside each report, restored from the
    checkpoint of the trial this one runs again (``config["resume"]``)."""

    def __init__(self, resume_from: str | None) -> None:
        self.resume_from = resume_from
        self._pending: Path | None = None

    def restore(self) -> dict[str, Any] | None:
        if not self.resume_from:
            return None
        with tune.Checkpoint(self.resume_from).as_directory() as folder:
            path = Path(folder) / STATE_FILE
            return (
                torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None
            )

    def save(self, state: dict[str, Any]) -> None:
        self._pending = Path(tempfile.mkdtemp(prefix="hpo-checkpoint-"))
        torch.save(state, self._pending / STATE_FILE)

    def report(self, result: dict[str, Any]) -> None:
        """Report ``result`` with the state saved for it (Ray copies it to its storage)."""
        pending, self._pending = self._pending, None
        try:
            checkpoint = tune.Checkpoint.from_directory(str(pending)) if pending else None
            tune.report(result, checkpoint=checkpoint)
        finally:
            if pending is not None:
                shutil.rmtree(pending, ignore_errors=True)


def train_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """Ray Tune function trainable: fine-tune with ``config``'s knob values."""
    compile_model = os.environ.get(COMPILE_VARIABLE) == "1"
    if not setup.checkpoints:
        engine.train(setup, config, report=tune.report, compile_model=compile_model)
        return
    resume = config.get("resume") or {}
    checkpoints = RayCheckpoints(resume.get("checkpoint"))
    engine.train(
        setup,
        config,
        report=checkpoints.report,
        compile_model=compile_model,
        checkpoints=checkpoints,
    )
