"""One trial: fine-tune a ``transformers`` classifier and report each epoch to Ray Tune.

Runs inside a Ray worker. Knows nothing of the database: the driver records what it reports.
The training loop is ``engine.train``; each epoch's state goes with its report as a Ray
checkpoint, so a trial cut off by a crash runs again from its last finished epoch.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from ray import tune

from hpo_service.core.definition import KNOBS
from hpo_service.training import engine
from hpo_service.training.engine import TrialSetup

# `HPO_TORCH_COMPILE=1` in the workers' environment compiles each trial's model (CUDA only).
COMPILE_VARIABLE = "HPO_TORCH_COMPILE"
STATE_FILE = "state.pt"
# Before a reused actor starts its next trial, Ray waits TUNE_FUNCTION_THREAD_TIMEOUT_S (2 s)
# for the stopped trial's thread to end (the engine frees its model on the way out). A busy
# machine can take longer; Ray then errors the next trial without telling the search algorithm,
# whose concurrency limit waits for it forever: the study hangs, a trial short.
RESET_WAIT_VARIABLE = "TUNE_FUNCTION_THREAD_TIMEOUT_S"
RESET_WAIT_SECONDS = 120
logger = logging.getLogger(__name__)


class RayCheckpoints:
    """A trial's epoch states as Ray checkpoints: saved beside each report, restored from the
    checkpoint Ray restarts the trial from (population-based training exploiting another
    trial) or, on its first start, from the checkpoint of the trial it runs again
    (``config["resume"]``; a PBT member copying another's values copies that key too). That
    one goes with the epoch's report again, so Ray holds it as this trial's checkpoint (to pause
    and go on from it, or to hand it to another member)."""

    def __init__(self, resume_from: str | None) -> None:
        self.resume_from = resume_from
        self._pending: Path | None = None
        self._carried: tune.Checkpoint | None = None  # the rerun trial's, until it is reported

    def restore(self) -> dict[str, Any] | None:
        given = tune.get_checkpoint()
        if given is None and self.resume_from:
            given = self._carried = tune.Checkpoint(self.resume_from)
        if given is None:
            return None
        with given.as_directory() as folder:
            path = Path(folder) / STATE_FILE
            return (
                torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None
            )

    def save(self, state: dict[str, Any]) -> None:
        self._pending = Path(tempfile.mkdtemp(prefix="hpo-checkpoint-"))
        torch.save(state, self._pending / STATE_FILE)

    def report(self, result: dict[str, Any]) -> None:
        """Report ``result`` with the state saved for it, or restored for it from the trial it
        runs again (Ray copies it to its storage)."""
        pending, self._pending = self._pending, None
        carried, self._carried = self._carried, None
        try:
            checkpoint = tune.Checkpoint.from_directory(str(pending)) if pending else carried
            tune.report(result, checkpoint=checkpoint)
        finally:
            if pending is not None:
                shutil.rmtree(pending, ignore_errors=True)


class InfeasibleTrialError(RuntimeError):
    """The trial cannot fit in its device's memory, even one row at a time."""


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's out-of-memory error, or the CPU allocator's failure under a memory limit."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "can't allocate memory" in text or "Cannot allocate memory" in text  # ENOMEM
    )


def fit_in_memory(
    config: dict[str, Any], report: Callable[[dict[str, Any]], None], run: Callable[..., None]
) -> None:
    """``run(config, report)``; out of memory before it reported an epoch it trained, again
    with half the micro-batch and twice the gradient accumulation (the same effective batch,
    added to each report as ``micro_batch_size``), down to one row; then
    ``InfeasibleTrialError``."""
    micro = int(config.get("batch_size") or KNOBS["batch_size"].default)
    accumulation = int(config.get("gradient_accumulation_steps") or 1)
    asked = (micro, accumulation)
    reported = False

    def report_fit(result: dict[str, Any]) -> None:
        nonlocal reported
        reported = reported or not result.get(engine.REPLAYED_KEY)  # this attempt trained
        if (micro, accumulation) != asked:  # it fell back to a smaller micro-batch
            result = {**result, "micro_batch_size": micro, "accumulation_used": accumulation}
        report(result)

    while True:
        fitted = {**config, "batch_size": micro, "gradient_accumulation_steps": accumulation}
        try:
            run(fitted, report_fit)
            return
        except RuntimeError as error:
            if not is_out_of_memory(error) or reported:
                raise
            if micro == 1:
                raise InfeasibleTrialError(
                    f"infeasible: out of memory even at a micro-batch of 1 "
                    f"({type(error).__name__}: {str(error).splitlines()[0][:200]})"
                ) from error
            micro, accumulation = micro // 2, accumulation * 2
            logger.warning("out of memory: again at micro-batch %d x %d", micro, accumulation)


def train_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """Ray Tune function trainable: fine-tune with ``config``'s knob values, at a smaller
    micro-batch if the device runs out of memory (see ``fit_in_memory``)."""
    os.environ[RESET_WAIT_VARIABLE] = str(RESET_WAIT_SECONDS)  # read by this actor's next reset
    compile_model = os.environ.get(COMPILE_VARIABLE) == "1"
    resume = config.get("resume") or {}
    checkpoints = RayCheckpoints(resume.get("checkpoint")) if setup.checkpoints else None

    def run(fitted: dict[str, Any], report: Callable[[dict[str, Any]], None]) -> None:
        engine.train(
            setup, fitted, report=report, compile_model=compile_model, checkpoints=checkpoints
        )

    fit_in_memory(config, checkpoints.report if checkpoints else tune.report, run)
