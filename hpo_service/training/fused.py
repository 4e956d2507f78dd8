"""Fused trials: several trials of one study trained together as one stacked model.

Horizontal fusion (HFTA, Wang et al., MLSys 2021): members that share the model and the batch
shape run as one ``vmap``'d forward and backward, each with its own hyperparameters, seed, data
order, dropout, schedule and number of epochs, so small models fill the accelerator. Each member
trains as :func:`hpo_service.training.engine.train` would train it alone: same head
initialisation, same batches, same loss, same AdamW, same schedule, same clipping.

A group runs *stacked* (one ``vmap``'d step for all members) or *interleaved* (each member's
step in turn, through the engine's own :func:`~hpo_service.training.engine.optimizer_step`, with
its own random stream: bit for bit its run alone). Stacking pays where one small model leaves the
device idle between kernels (GPUs); on the CPU a model's step already keeps the cores busy, and
stacked members only crowd its caches (measured 0.7x the members' speed one at a time, 2 cores),
so a group runs interleaved there: :func:`stacks_on`.

With checkpoints on (``TrialSetup.checkpoints``), each member's epoch report comes with its
state (:data:`MemberState`): weights, AdamW moments, step and, interleaved, its random stream.
Members stepped together end their epochs in the same step; each state is handed to
``keep_state`` (e.g. Ray's object store, or a file) before the next one is built, so one state
at a time exists in the trainer's memory, not one per member.
A member added with such a state goes on from that epoch, in either mode: interleaved, exactly
as it would have without the break; stacked, with other dropout masks (the group shares one
random stream), so as closely as a stacked member matches its run alone.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from transformers import set_seed

from hpo_service.training.batches import Batch, TensorSplit, steps_per_epoch, train_batches
from hpo_service.training.engine import (
    TrialHyper,
    TrialSetup,
    apply_rates,
    device_and_autocast,
    epoch_report,
    evaluate,
    lr_multiplier,
    make_optimizer,
    model_logits,
    no_decay,
    optimizer_step,
    weighted_loss,
)
from hpo_service.training.modeling import load_model
from hpo_service.training.stacked import (
    Stack,
    StackedAdamW,
    clip_per_member,
    cpu_copy,
    make_stackable,
)


def stacks_on(device: torch.device) -> bool:
    """Whether a group on ``device`` runs stacked (accelerators) rather than interleaved (CPU)."""
    return device.type != "cpu"


def fusion_key(config: dict[str, Any]) -> tuple[Any, ...]:
    """Members with equal keys may train in one group: (batch_size, gradient_accumulation_steps)."""
    hyper = TrialHyper.from_config(config)
    return (int(hyper.batch_size), int(hyper.gradient_accumulation_steps))


# A member's state at the end of an epoch: "model" (its model's state_dict), "exp_avg" and
# "exp_avg_sq" (AdamW's moments by parameter name, in the model's layout), "step" (optimizer
# steps done), "epoch", "report" (that epoch's) and "rng" (an interleaved member's random
# state; empty for a stacked one). Tensors on the CPU.
MemberState = dict[str, Any]


class EpochEnd(NamedTuple):
    """A member's finished epoch: its report, and when the group saves states, what the
    trainer's ``keep_state`` made of its state (the state itself by default)."""

    member: str
    report: dict[str, Any]
    state: Any


@dataclass
class _Member:
    """One member's progress: optimizer steps done and its current epoch's batches."""

    name: str
    hyper: TrialHyper
    steps_per_epoch: int
    schedule: Any  # step -> learning-rate multiplier
    step: int = 0
    batches: list[Batch] = field(default_factory=list)
    loss_sum: torch.Tensor | float = 0.0  # of this epoch's steps, on the device
    # When it joined the group: its train_seconds are the group's wall time since then.
    joined: float = field(default_factory=time.perf_counter)
    alone: _Alone | None = None  # interleaved groups: its own model, optimizer, random stream

    @property
    def epochs(self) -> int:
        return int(self.hyper.num_train_epochs)

    def micro_batches(self, split: TensorSplit) -> list[Batch]:
        """The batches of this member's next optimizer step, in its own seeded order."""
        epoch, index = divmod(self.step, self.steps_per_epoch)
        if index == 0:  # epochs count from 1, as in engine.train
            self.batches = train_batches(split, self.hyper.batch_size, self.hyper.seed, epoch + 1)
        accumulation = self.hyper.gradient_accumulation_steps
        return self.batches[index * accumulation : (index + 1) * accumulation]


@dataclass
class _Alone:
    """An interleaved member's own model, AdamW, schedule and random state, as in engine.train."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    rng: list[torch.Tensor]  # the CPU's random state, and the CUDA device's on CUDA

    @classmethod
    def start(
        cls,
        model: torch.nn.Module,
        hyper: TrialHyper,
        schedule: Any,
        state: MemberState | None = None,
    ) -> _Alone:
        """Fresh, or going on from ``state`` (its random stream too, where it saved one for
        this kind of device)."""
        optimizer = make_optimizer(model, hyper)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        rng = _rng_state(model)
        if state is not None:
            for name, param in model.named_parameters():
                if param.requires_grad:  # copies in the parameter's layout: AdamW updates them
                    optimizer.state[param] = {
                        "step": torch.full((), float(state["step"]), device=param.device),
                        "exp_avg": torch.empty_like(param).copy_(state["exp_avg"][name]),
                        "exp_avg_sq": torch.empty_like(param).copy_(state["exp_avg_sq"][name]),
                    }
            scheduler.last_epoch = int(state["step"])
            apply_rates(optimizer, scheduler, hyper)
            if len(state["rng"]) == len(rng):
                rng = list(state["rng"])
        return cls(model.train(), optimizer, scheduler, rng)

    def state(self) -> MemberState:
        """Its weights, moments and random state (copies, on the CPU)."""
        moments: dict[str, dict[str, torch.Tensor]] = {"exp_avg": {}, "exp_avg_sq": {}}
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                for key, values in moments.items():
                    values[name] = cpu_copy(self.optimizer.state[param][key])
        model = {k: cpu_copy(v) for k, v in self.model.state_dict().items()}
        return {"model": model, **moments, "rng": [t.clone() for t in self.rng]}

    def step(self, group: list[Batch], hyper: TrialHyper, autocast: Any) -> torch.Tensor:
        """One optimizer step over ``group`` with this member's random stream; its loss."""
        device = next(self.model.parameters()).device
        torch.set_rng_state(self.rng[0])
        if device.type == "cuda":
            torch.cuda.set_rng_state(self.rng[1], device)
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        logits_of = model_logits(self.model, autocast)
        loss, _, _ = optimizer_step(
            logits_of, parameters, self.optimizer, self.scheduler, group, hyper
        )
        self.rng = _rng_state(self.model)
        return loss


def _rng_state(model: torch.nn.Module) -> list[torch.Tensor]:
    device = next(model.parameters()).device
    cuda = [torch.cuda.get_rng_state(device)] if device.type == "cuda" else []
    return [torch.get_rng_state(), *cuda]


class FusedTrainer:
    """Trains a changing group of trials of one study together: stacked (one model of all
    members) or interleaved (one member's step after another); ``stacked=None`` chooses by the
    device (:func:`stacks_on`). With checkpoints on, each member's state at the end of an epoch
    goes to ``keep_state`` as soon as it is built, and its epoch's report carries what that
    returns (by default the state itself, so every member ending its epoch in one step holds
    its state at once)."""

    def __init__(
        self,
        setup: TrialSetup,
        device: torch.device | None = None,
        stacked: bool | None = None,
        keep_state: Callable[[MemberState], Any] | None = None,
    ) -> None:
        self.setup = setup
        self.keep_state = keep_state or (lambda state: state)
        default_device, dtype = device_and_autocast()
        self.device = device or default_device
        self.stacked = stacks_on(self.device) if stacked is None else stacked
        self.autocast_dtype = dtype if self.device.type == "cuda" else None
        self.train_split = setup.data.train.to(self.device)
        self.eval_split = setup.data.eval.to(self.device)
        self.stack: Stack | None = None
        self.optimizer = StackedAdamW(lambda name: not no_decay(name))
        self._members: list[_Member] = []
        self.key: tuple[Any, ...] | None = None
        self.takes_types = True

    @property
    def members(self) -> list[str]:
        return [m.name for m in self._members]

    def add(self, member: str, config: dict[str, Any], state: MemberState | None = None) -> None:
        """Start training ``member`` (at its own step 0, or where ``state`` ended), even while
        others are mid-training."""
        key = fusion_key(config)
        if self.key is not None and key != self.key:
            raise ValueError(
                f"trial {member!r} has fusion key (batch_size, gradient_accumulation_steps) "
                f"{key}, the group has {self.key}"
            )
        if member in self.members:
            raise ValueError(f"trial {member!r} is already in the group {self.members}")
        hyper = TrialHyper.from_config(config)
        set_seed(int(hyper.seed))  # before the head is initialised, as when trained alone
        model = load_model(self.setup.model, self.setup.data.label_names, hyper.dropout)
        if state is not None:
            model.load_state_dict(state["model"])
        per_epoch = steps_per_epoch(len(self.train_split), key[0], key[1])
        schedule = lr_multiplier(hyper, per_epoch * int(hyper.num_train_epochs))
        alone = None
        if self.stacked:
            model = make_stackable(model).to(self.device)
            self.takes_types = "token_type_ids" in inspect.signature(model.forward).parameters
            if self.stack is None:
                self.stack = Stack([model])
            else:
                self.stack.extend(model)
            moments = None
            if state is not None:
                moments = {
                    key: {n: self.stack.stored(n, t) for n, t in state[key].items()}
                    for key in ("exp_avg", "exp_avg_sq")
                }
            self.optimizer.add_member(
                self.stack.params,
                hyper.weight_decay,
                hyper.adam_epsilon,
                moments,
                int(state["step"]) if state is not None else 0,
            )
        else:
            alone = _Alone.start(model.to(self.device), hyper, schedule, state)
        joined = _Member(member, hyper, per_epoch, schedule, alone=alone)
        if state is not None:
            joined.step = int(state["step"])
            joined.joined -= state["report"].get("train_seconds") or 0.0  # the time before it
        self._members.append(joined)
        self.key = key

    def remove(self, member: str) -> None:
        """Drop ``member`` (early-stopped, cancelled or done) and free its tensors."""
        keep = [i for i, m in enumerate(self._members) if m.name != member]
        if len(keep) == len(self._members):
            raise KeyError(f"trial {member!r} is not in the group {self.members}")
        self._members = [self._members[i] for i in keep]
        if not keep:
            self.stack, self.key = None, None
            self.optimizer = StackedAdamW(self.optimizer.decays)
        elif self.stack is not None:
            self.stack.keep(keep)
            self.optimizer.keep(keep)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def step(self) -> list[EpochEnd]:
        """One optimizer step for every member; the epochs members finished (members that
        finished their last epoch leave the group)."""
        members = list(self._members)
        if not members:
            return []
        groups = [m.micro_batches(self.train_split) for m in members]
        if self.stacked:
            losses = list(self._stacked_step(members, groups))
        else:
            losses = [
                m.alone.step(group, m.hyper, self.autocast_dtype)  # type: ignore[union-attr]
                for m, group in zip(members, groups, strict=True)
            ]
        for member, loss in zip(members, losses, strict=True):
            member.step += 1
            member.loss_sum = member.loss_sum + loss
        return self._end_epochs(members)

    def _stacked_step(self, members: list[_Member], groups: list[list[Batch]]) -> torch.Tensor:
        """One ``vmap``'d optimizer step of every member; each member's loss."""
        assert self.stack is not None
        stack = self.stack
        rows = [sum(b.real_rows for b in group) for group in groups]
        losses = torch.zeros(len(members), device=self.device)
        for k in range(max(len(group) for group in groups)):
            # A member whose (last, shorter) accumulation group has no k-th batch runs its
            # first one again, left out of the loss.
            batches = [group[k] if k < len(group) else group[0] for group in groups]
            with self._autocast():
                logits = stack.logits(self._stacked_inputs(batches), train=True)
            total = torch.zeros((), device=self.device)
            for i, (member, batch) in enumerate(zip(members, batches, strict=True)):
                if k < len(groups[i]):
                    # As engine.optimizer_step: the mean over the real rows of the whole group.
                    loss = weighted_loss(
                        logits[i], batch.labels, batch.weights, member.hyper.label_smoothing
                    ) * (batch.real_rows / rows[i])
                    losses[i] += loss.detach()
                    total = total + loss
            total.backward()
        clip_per_member(stack.params, [m.hyper.max_grad_norm for m in members])
        rates = [m.hyper.learning_rate * m.schedule(m.step) for m in members]
        self.optimizer.step(stack.params, rates)
        for param in stack.params.values():
            param.grad = None
        return losses

    def _end_epochs(self, members: list[_Member]) -> list[EpochEnd]:
        """Evaluate and report (and save) the members whose epoch ended; remove those that
        are done."""
        reports = []
        for member in members:
            epoch, index = divmod(member.step, member.steps_per_epoch)
            if index != 0:
                continue
            hyper = member.hyper
            scores = evaluate(
                self._eval_logits(member),
                self.eval_split,
                hyper.eval_batch_size,
                self.device,
                hyper.label_smoothing,
            )
            if member.alone is not None:
                member.alone.model.train()
            train_loss = float(member.loss_sum) / member.steps_per_epoch
            member.loss_sum = 0.0
            seconds = time.perf_counter() - member.joined
            report = epoch_report(
                self.setup.metric, scores, epoch, member.epochs, train_loss, seconds
            )
            kept = (
                self.keep_state(self._state(member, epoch, report))
                if self.setup.checkpoints
                else None
            )
            reports.append(EpochEnd(member.name, report, kept))
            if epoch >= member.epochs:
                self.remove(member.name)
        return reports

    def _state(self, member: _Member, epoch: int, report: dict[str, Any]) -> MemberState:
        progress = {"step": member.step, "epoch": epoch, "report": report}
        if member.alone is not None:
            return {**member.alone.state(), **progress}
        assert self.stack is not None
        index = self._members.index(member)
        moments = {
            key: {n: self.stack.stored(n, t).contiguous() for n, t in values.items()}
            for key, values in self.optimizer.moments(index).items()
        }
        return {"model": self.stack.member_state(index), **moments, "rng": [], **progress}

    def _eval_logits(self, member: _Member) -> Callable[[Batch], torch.Tensor]:
        """``batch -> logits`` of ``member`` in evaluation mode."""
        if member.alone is not None:
            return model_logits(member.alone.model.eval(), self.autocast_dtype)
        assert self.stack is not None
        logits_of = self.stack.member_logits(self._members.index(member))

        def member_logits(batch: Batch) -> torch.Tensor:
            with self._autocast():
                return logits_of(self._inputs(batch))

        return member_logits

    def _autocast(self) -> Any:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _inputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if self.takes_types and batch.token_type_ids is not None:
            inputs["token_type_ids"] = batch.token_type_ids
        return inputs

    def _stacked_inputs(self, batches: list[Batch]) -> dict[str, torch.Tensor]:
        """The members' batches as ``[members, B, L]`` tensors, right-padded to the longest L
        (padding is masked, so no member's result changes)."""
        width = max(int(b.input_ids.shape[1]) for b in batches)
        pad = self.setup.data.pad_token_id

        def stacked(tensors: list[torch.Tensor], fill: int) -> torch.Tensor:
            return torch.stack(
                [torch.nn.functional.pad(t, (0, width - t.shape[1]), value=fill) for t in tensors]
            )

        inputs = {
            "input_ids": stacked([b.input_ids for b in batches], pad),
            "attention_mask": stacked([b.attention_mask for b in batches], 0),
        }
        types = [b.token_type_ids for b in batches]
        if self.takes_types and all(t is not None for t in types):
            inputs["token_type_ids"] = stacked(types, 0)  # type: ignore[arg-type]
        return inputs

    def peak_memory_per_member(self) -> int | None:
        """Peak CUDA memory allocated divided by the number of members; None off CUDA."""
        if self.device.type != "cuda" or not self._members:
            return None
        return int(torch.cuda.max_memory_allocated(self.device) // len(self._members))
