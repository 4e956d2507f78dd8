"""A lean PyTorch training loop for one trial, with the semantics of ``transformers.Trainer``.

Weight decay except on biases and norms, AdamW, warmup and ``transformers`` lr schedules,
gradient accumulation, clipping, label smoothing, bf16 autocast on GPUs that have it, an
evaluation and a report after each epoch. Batches have static shapes (``batches.py``) and the
loop never waits for the device within an epoch: the train loss stays on the device until the
epoch ends.

The helpers (``no_decay``, ``lr_multiplier``, ``weighted_loss``, ``evaluate``, …) take no single
model for granted, so the fused trials (several stacked models per step) reuse them.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
from transformers import get_scheduler, set_seed

from hpo_service.core.definition import METRICS, Metric, ModelSpec
from hpo_service.core.training_args import trial_values
from hpo_service.training.batches import (
    Batch,
    TensorData,
    TensorSplit,
    eval_batches,
    steps_per_epoch,
    train_batches,
)
from hpo_service.training.modeling import load_model

# Marks the report of an epoch restored from a checkpoint (sent again: a crash may have lost it).
REPLAYED_KEY = "replayed"
# Parameter names that get no weight decay, as `Trainer.get_decay_parameter_names` (lower case).
_NO_DECAY = re.compile(r"bias|layernorm|rmsnorm|(?:^|\.)norm(?:$|\.)|_norm(?:$|\.)")


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a study shares; Ray puts it in the object store once."""

    model: ModelSpec
    metric: Metric
    data: TensorData
    checkpoints: bool = True


@dataclass(frozen=True)
class TrialHyper:
    """One trial's training knobs."""

    learning_rate: float
    batch_size: int
    dropout: float | None
    weight_decay: float
    warmup_ratio: float
    num_train_epochs: int
    gradient_accumulation_steps: int
    lr_scheduler: str
    seed: int
    max_grad_norm: float
    adam_epsilon: float
    label_smoothing: float

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TrialHyper:
        """The knobs of a Ray trial config; a knob it leaves out takes its default."""
        v = trial_values(config)
        return cls(
            learning_rate=float(v["learning_rate"]),
            batch_size=int(v["batch_size"]),
            dropout=None if v["dropout"] is None else float(v["dropout"]),
            weight_decay=float(v["weight_decay"]),
            warmup_ratio=float(v["warmup_ratio"]),
            num_train_epochs=int(v["num_train_epochs"]),
            gradient_accumulation_steps=int(v["gradient_accumulation_steps"]),
            lr_scheduler=str(v["lr_scheduler"]),
            seed=int(v["seed"]),
            max_grad_norm=float(v["max_grad_norm"]),
            adam_epsilon=float(v["adam_epsilon"]),
            label_smoothing=float(v["label_smoothing"]),
        )

    @property
    def eval_batch_size(self) -> int:
        """Evaluation batches: at least 64 rows (no gradients to keep)."""
        return max(self.batch_size, 64)


@dataclass(frozen=True)
class StepTrace:
    """What one optimizer step did: its number (from 1), the learning rate it used (of the
    first parameter group), the gradient norm before clipping and the loss of its effective
    batch (both device tensors: reading them waits for the device)."""

    step: int
    learning_rate: float
    grad_norm: torch.Tensor | None
    loss: torch.Tensor


def no_decay(parameter_name: str) -> bool:
    """Whether a parameter is exempt from weight decay: biases and norm weights (Trainer's
    ``get_decay_parameter_names`` by name: ``LayerNorm``, ``*_layer_norm``, ``norm``)."""
    return _NO_DECAY.search(parameter_name.lower()) is not None


def warmup_steps(hyper: TrialHyper, total_steps: int) -> int:
    """Warmup steps: ``ceil(warmup_ratio * total_steps)``, as Trainer."""
    return math.ceil(hyper.warmup_ratio * total_steps)


def lr_multiplier(hyper: TrialHyper, total_steps: int) -> Callable[[int], float]:
    """The factor of the peak learning rate at each step (0-based), from the ``transformers``
    schedule ``hyper.lr_scheduler`` with warmup over ``total_steps`` optimizer steps."""
    probe = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=hyper.learning_rate)
    scheduler = get_scheduler(
        hyper.lr_scheduler,
        probe,
        num_warmup_steps=warmup_steps(hyper, total_steps),
        num_training_steps=total_steps,
    )
    return scheduler.lr_lambdas[0]


def classification_metrics(logits: Any, labels: Any) -> dict[str, float]:
    """Accuracy, F1 (binary for two labels, macro otherwise) and Matthews correlation."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    predictions = np.argmax(logits, axis=-1)
    binary = logits.shape[-1] == 2
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "f1": float(
            f1_score(labels, predictions, average="binary" if binary else "macro", zero_division=0)
        ),
        "matthews_corrcoef": float(matthews_corrcoef(labels, predictions)),
    }


def row_losses(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Cross entropy per row (in float32), with label smoothing as Trainer's ``LabelSmoother``:
    ``(1 - e) * nll + e * mean over classes of -log p``."""
    return F.cross_entropy(
        logits.float(), labels, reduction="none", label_smoothing=label_smoothing
    )


def weighted_loss(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, label_smoothing: float
) -> torch.Tensor:
    """Cross entropy with label smoothing, the mean over real rows (weight 1; filler rows have
    weight 0). Needs no host sync."""
    return (row_losses(logits, labels, label_smoothing) * weights).sum() / weights.sum()


def evaluate(
    logits_of: Callable[[Batch], torch.Tensor],
    split: TensorSplit,
    batch_size: int,
    device: torch.device,
    label_smoothing: float = 0.0,
) -> dict[str, float]:
    """Accuracy, F1, Matthews correlation and ``eval_loss`` of ``logits_of`` on ``split``.

    ``eval_loss`` is the mean cross entropy over the examples WITH ``label_smoothing``, as
    Trainer reports it (its label smoother also computes the evaluation loss). The device is
    read once, at the end.
    """
    # No batch has more rows than the split has examples: a small dev set is not padded up.
    batches = eval_batches(split.to(device), min(batch_size, max(len(split), 1)))
    logits, labels, losses = [], [], []
    with torch.inference_mode():
        for batch in batches:
            real = batch.weights > 0
            batch_logits = logits_of(batch).float()
            logits.append(batch_logits[real])
            labels.append(batch.labels[real])
            losses.append(row_losses(batch_logits, batch.labels, label_smoothing)[real])
        all_logits = torch.cat(logits).cpu().numpy()
        all_labels = torch.cat(labels).cpu().numpy()
        eval_loss = float(torch.cat(losses).mean())
    return {**classification_metrics(all_logits, all_labels), "eval_loss": eval_loss}


def epoch_report(
    metric: Metric,
    scores: dict[str, float],
    epoch: int,
    epochs_planned: int,
    train_loss: float | None,
    train_seconds: float,
) -> dict[str, Any]:
    """What a trial reports to Ray after an epoch: the objective, every metric (the evaluation
    ``scores`` and ``train_seconds``, the wall time trained and evaluated so far), the epoch
    (from 1), the epochs planned and the mean train loss of the epoch's optimizer steps."""
    scores = {**scores, "train_seconds": train_seconds}
    return {
        "objective": scores[metric],
        **{m: float(scores[m]) for m in METRICS},
        "epoch": epoch,
        "epochs_planned": epochs_planned,
        "train_loss": train_loss,
    }


class TrainingDiverged(RuntimeError):
    """A loss or a score that is not a finite number: during an epoch or at its end."""


# Every this many optimizer steps the epoch's loss so far is checked (one host sync): a trial
# that diverged early in a long epoch ends there, not after spending the rest of it on NaNs.
DIVERGENCE_CHECK_STEPS = 100
_DIVERGED_HINT = "(a lower learning_rate or a max_grad_norm may help)"


def check_finite(report: dict[str, Any]) -> None:
    """Raise ``TrainingDiverged`` (its trial fails, saying why) if ``report``, an
    :func:`epoch_report`, has a loss or a score that is NaN or infinite: the training diverged
    (a learning rate too high for the model, or an overflow in bf16), its scores mean nothing,
    and going on would spend the device on NaNs."""
    bad = [
        f"{name} {report[name]}"
        for name in ("train_loss", *METRICS)
        if isinstance(report.get(name), float) and not math.isfinite(report[name])
    ]
    if bad:
        raise TrainingDiverged(
            f"training diverged at epoch {report['epoch']}: {', '.join(bad)} {_DIVERGED_HINT}"
        )


def device_and_autocast() -> tuple[torch.device, torch.dtype | None]:
    """CUDA with bf16 autocast where the GPU has bf16 (float32 otherwise), else the CPU in
    float32."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.device("cpu"), None


def make_optimizer(model: torch.nn.Module, hyper: TrialHyper) -> torch.optim.AdamW:
    """AdamW with two groups: weight decay, and none for biases and norms (``no_decay``);
    torch's fused kernel (one pass over each tensor; on the CPU ~7x faster than ``foreach``
    for BERT-base)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if not no_decay(n)], "weight_decay": hyper.weight_decay},
        {"params": [p for n, p in named if no_decay(n)], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=hyper.learning_rate, eps=hyper.adam_epsilon, betas=(0.9, 0.999), fused=True
    )


def model_logits(
    model: torch.nn.Module, autocast: torch.dtype | None
) -> Callable[[Batch], torch.Tensor]:
    """``batch -> logits`` for a ``transformers`` classifier, passing ``token_type_ids`` only
    to models that take them (DistilBERT does not). ``model`` may be ``torch.compile``'d."""
    plain = getattr(model, "_orig_mod", model)
    takes_types = "token_type_ids" in inspect.signature(plain.forward).parameters

    def logits_of(batch: Batch) -> torch.Tensor:
        inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if takes_types and batch.token_type_ids is not None:
            inputs["token_type_ids"] = batch.token_type_ids
        with _autocast(batch.input_ids.device, autocast):
            return model(**inputs).logits

    return logits_of


def optimizer_step(
    logits_of: Callable[[Batch], torch.Tensor],
    parameters: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    group: list[Batch],
    hyper: TrialHyper,
) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """One optimizer step over the batches of ``group`` (one effective batch): its loss is the
    mean over the real rows of the whole group. Returns the loss (on the device), the gradient
    norm before clipping (None without clipping) and the learning rate the step used (of the
    first parameter group)."""
    rows = sum(b.real_rows for b in group)
    step_loss = torch.zeros((), device=group[0].input_ids.device)
    for batch in group:
        loss = weighted_loss(logits_of(batch), batch.labels, batch.weights, hyper.label_smoothing)
        scaled = loss * (batch.real_rows / rows)
        scaled.backward()
        step_loss += scaled.detach()
    grad_norm = None
    if hyper.max_grad_norm > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, hyper.max_grad_norm)
    learning_rate = float(optimizer.param_groups[0]["lr"])
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return step_loss, grad_norm, learning_rate


def run_epoch(
    logits_of: Callable[[Batch], torch.Tensor],
    parameters: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batches: list[Batch],
    hyper: TrialHyper,
    first_step: int = 1,
    on_step: Callable[[StepTrace], None] | None = None,
    *,
    epoch: int = 1,
    check_every: int = DIVERGENCE_CHECK_STEPS,
) -> tuple[torch.Tensor, int]:
    """One epoch of optimizer steps (:func:`optimizer_step`), each over
    ``gradient_accumulation_steps`` batches (the last group may be shorter, as Trainer).
    Returns the sum of the steps' losses (on the device) and the number of steps; raises
    ``TrainingDiverged`` when, every ``check_every`` steps, that sum is not finite."""
    accumulation = hyper.gradient_accumulation_steps
    total = torch.zeros((), device=batches[0].input_ids.device) if batches else torch.zeros(())
    steps = 0
    for start in range(0, len(batches), accumulation):
        group = batches[start : start + accumulation]
        step_loss, grad_norm, learning_rate = optimizer_step(
            logits_of, parameters, optimizer, scheduler, group, hyper
        )
        steps += 1
        total += step_loss
        if on_step is not None:
            on_step(StepTrace(first_step + steps - 1, learning_rate, grad_norm, step_loss))
        if steps % check_every == 0 and not bool(torch.isfinite(total)):
            raise TrainingDiverged(
                f"training diverged at epoch {epoch}, step {first_step + steps - 1}: "
                f"train_loss {float(total) / steps} {_DIVERGED_HINT}"
            )
    return total, steps


def train(
    setup: TrialSetup,
    config: dict[str, Any],
    report: Callable[[dict[str, Any]], None],
    device: torch.device | None = None,
    *,
    compile_model: bool = False,
    on_step: Callable[[StepTrace], None] | None = None,
    checkpoints: Checkpoints | None = None,
) -> None:
    """Fine-tune ``setup.model`` on ``setup.data`` (``TensorData``) with ``config``'s knobs and
    ``report(epoch_report(...))`` after each epoch. ``compile_model`` applies ``torch.compile``
    on CUDA (ignored elsewhere); ``on_step`` sees every optimizer step; ``checkpoints`` saves
    each epoch's state before its report, and training goes on from the state it restores."""
    hyper = TrialHyper.from_config(config)
    default_device, autocast = device_and_autocast()
    device = device or default_device
    if device.type != "cuda":
        autocast = None
    data = setup.data
    set_seed(hyper.seed)  # before the classification head is initialised
    model = load_model(setup.model, data.label_names, hyper.dropout).to(device)
    try:
        parameters = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_optimizer(model, hyper)
        total_steps = hyper.num_train_epochs * steps_per_epoch(
            len(data.train), hyper.batch_size, hyper.gradient_accumulation_steps
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(hyper, total_steps))
        forward = torch.compile(model) if compile_model and device.type == "cuda" else model
        logits_of = model_logits(forward, autocast)
        train_split = data.train.to(device)
        step, first_epoch, started = 1, 1, time.perf_counter()
        restored = checkpoints.restore() if checkpoints is not None else None
        if restored is not None:  # its epoch's report again: the crash may have lost it
            step, first_epoch = _load_state(restored, model, optimizer, scheduler)
            apply_rates(optimizer, scheduler, hyper)  # PBT may have changed them
            report({**restored["report"], REPLAYED_KEY: True})
            started -= restored["report"].get("train_seconds") or 0.0  # the time before it
        for epoch in range(first_epoch, hyper.num_train_epochs + 1):
            model.train()
            batches = train_batches(train_split, hyper.batch_size, hyper.seed, epoch)
            loss_sum, steps = run_epoch(
                logits_of,
                parameters,
                optimizer,
                scheduler,
                batches,
                hyper,
                step,
                on_step,
                epoch=epoch,
                check_every=DIVERGENCE_CHECK_STEPS,
            )
            step += steps
            model.eval()
            scores = evaluate(
                logits_of, data.eval, hyper.eval_batch_size, device, hyper.label_smoothing
            )
            train_loss = float(loss_sum) / steps
            result = epoch_report(
                setup.metric,
                scores,
                epoch,
                hyper.num_train_epochs,
                train_loss,
                time.perf_counter() - started,
            )
            check_finite(result)
            if checkpoints is not None:
                checkpoints.save(_state(model, optimizer, scheduler, epoch, step, result))
            report(result)
    finally:
        # Free the model (and GPU memory) before a reused worker starts the next trial.
        model = forward = optimizer = logits_of = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


class Checkpoints(Protocol):
    """Where a trial's state at the end of an epoch is kept, to go on from after a crash."""

    def restore(self) -> dict[str, Any] | None:
        """The state to go on from, if there is one."""

    def save(self, state: dict[str, Any]) -> None:
        """Keep ``state``; called at the end of each epoch, just before its report."""


def _state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    epoch: int,
    next_step: int,
    report: dict[str, Any],
) -> dict[str, Any]:
    """Everything that continuing exactly needs: weights, optimizer, schedule, random state."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "next_step": next_step,
        "report": report,
        "cpu_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _load_state(
    state: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> tuple[int, int]:
    """Put a saved state back; returns (the next step's number, the next epoch)."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["cpu_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return int(state["next_step"]), int(state["epoch"]) + 1


def apply_rates(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    hyper: TrialHyper,
) -> None:
    """Give a restored optimizer and schedule ``hyper``'s peak learning rate and weight decay
    (``make_optimizer``'s groups: decay, then none), at the schedule's current step: a
    population-based trial goes on from another trial's state with mutated values. A no-op
    when they are the values it was saved with."""
    decays = (hyper.weight_decay, 0.0)
    for group, decay, multiplier in zip(
        optimizer.param_groups, decays, scheduler.lr_lambdas, strict=True
    ):
        group["initial_lr"] = hyper.learning_rate
        group["weight_decay"] = decay
        group["lr"] = hyper.learning_rate * multiplier(scheduler.last_epoch)
    scheduler.base_lrs = [hyper.learning_rate] * len(optimizer.param_groups)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
