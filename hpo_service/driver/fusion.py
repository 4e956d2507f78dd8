"""Fused trials on Ray: trials that share shapes train together in a fusion worker.

Each trial stays a Ray Tune trial of its own (so the searcher, ASHA, the recorder, our tables and
Optuna's see it as one), but its trainable is a stand-in: it joins a ``FusionWorker`` actor that
holds the device, and reports the epochs the worker trains for it. ASHA stopping a trial ends its
stand-in, which leaves the group; the freed slot takes the next trial.

With checkpoints on, each epoch's report reaches Ray with the member's state as the trial's
checkpoint, as an unfused trial's does: a trial cut off by a crash rejoins a group from its last
finished epoch. The worker puts each state in Ray's object store as soon as it is built (which
spills to disk when full), and the stand-in frees it once saved: members that end an epoch
together never hold all their states in the worker's memory.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import ray
from ray import tune

from hpo_service.training.engine import (
    REPLAYED_KEY,
    TrainingDiverged,
    TrialSetup,
    check_finite,
)
from hpo_service.training.trainable import RayCheckpoints

JOIN_POLL_S = 0.2
# A stand-in trial only waits on its worker; the worker holds the group's CPUs and GPUs.
MEMBER_CPUS = 0.01
_DONE = object()


class FusionGroup:
    """One device's group of fused trials: trains while it has members, in its own thread.

    Ray runs it as an actor (:data:`FusionWorker`). A member's reports wait in its queue until
    its stand-in takes them, however long after the member finished training, and the queue
    goes only when the stand-in leaves. Each state waits where ``keep_state`` puts it: Ray's
    object store, or with ``None`` the queue itself (a group run outside Ray, in tests). A
    member whose training diverged fails alone: its trial gets the error, the others go on.
    """

    def __init__(
        self, setup: TrialSetup, keep_state: Callable[[Any], Any] | None = ray.put
    ) -> None:
        self._setup = setup
        self._keep_state = keep_state  # where members' states wait for their trials
        self._trainer: Any = None  # a training.fused.FusedTrainer once a member joins
        self._capacity = 0
        self._key: tuple[Any, ...] | None = None
        self._training: set[str] = set()  # members the trainer has not finished
        self._reports: dict[str, queue.Queue[Any]] = {}  # every member until it leaves
        self._lock = threading.Lock()
        self._thread_running = False

    def configure(self, capacity: int) -> None:
        self._capacity = capacity

    def join(
        self, member: str, config: dict[str, Any], state: dict[str, Any] | None = None
    ) -> bool:
        """Take ``member`` (going on from ``state``, a ``MemberState``, if given) if a slot is
        free and its shapes match the group's; else False."""
        from hpo_service.training.fused import FusedTrainer, fusion_key

        key = fusion_key(config)
        with self._lock:
            if len(self._training) >= self._capacity or (self._training and key != self._key):
                return False
            if self._trainer is None:
                self._trainer = FusedTrainer(self._setup, keep_state=self._keep_state)
            self._trainer.add(member, config, state)
            self._key = key
            self._training.add(member)
            self._reports[member] = queue.Queue()
            if not self._thread_running:
                self._thread_running = True
                threading.Thread(target=self._train, daemon=True).start()
            return True

    def next_report(self, member: str) -> tuple[dict[str, Any], Any] | None:
        """The member's next epoch report and its state, as ``keep_state`` kept it (a
        reference into Ray's object store; ``None`` without checkpoints); ``None`` once it has
        run all its epochs."""
        reports = self._reports.get(member)
        if reports is None:
            return None
        item = reports.get()
        if item is _DONE:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def leave(self, member: str) -> None:
        """Drop ``member`` (stopped early, cancelled, or done); idempotent."""
        with self._lock:
            if member in self._training:
                self._trainer.remove(member)
                self._training.discard(member)
            reports = self._reports.pop(member, None)
        if reports is not None:
            reports.put(_DONE)  # wakes a next_report still waiting

    def _train(self) -> None:
        while True:
            with self._lock:
                if not self._training:
                    self._key, self._thread_running = None, False
                    return
                try:
                    finished = self._trainer.step()
                except Exception as error:  # every member's trial fails with the group's error
                    for member in self._training:
                        self._reports[member].put(error)
                    self._training.clear()
                    self._trainer, self._key, self._thread_running = None, None, False
                    return
                for member, report, state in finished:
                    if member not in self._training:
                        continue
                    try:
                        check_finite(report)
                    except TrainingDiverged as error:  # its trial fails; the others go on
                        self._reports[member].put(error)
                        self._training.discard(member)
                        if member in self._trainer.members:
                            self._trainer.remove(member)
                        continue
                    self._reports[member].put((report, state))
                for member in self._training - set(self._trainer.members):
                    self._training.discard(member)  # its last epoch reported
                    self._reports[member].put(_DONE)


FusionWorker = ray.remote(FusionGroup)


def fused_member_trial(
    config: dict[str, Any], workers: list[Any], checkpoints: bool = True
) -> None:
    """Ray Tune function trainable: join a fusion worker and report the epochs it trains, each
    with the member's state as its checkpoint (``checkpoints``); a trial run again after a
    crash (``config["resume"]``) goes on from its checkpoint."""
    member = tune.get_context().get_trial_id()
    saved = RayCheckpoints((config.get("resume") or {}).get("checkpoint")) if checkpoints else None
    state = saved.restore() if saved is not None else None
    if state is not None:  # its epoch's report again: the crash may have lost it
        tune.report({**state["report"], REPLAYED_KEY: True})
        if state["epoch"] >= state["report"]["epochs_planned"]:
            return
    worker = _join(workers, member, config, state)
    try:
        while (ended := ray.get(worker.next_report.remote(member))) is not None:
            report, state_ref = ended
            if saved is None or state_ref is None:
                tune.report(report)
                continue
            saved.save(ray.get(state_ref))
            del ended, state_ref  # the last references: the store frees the state now
            saved.report(report)
    finally:
        ray.get(worker.leave.remote(member))


def _join(
    workers: list[Any], member: str, config: dict[str, Any], state: dict[str, Any] | None
) -> Any:
    state_ref = ray.put(state)  # once, however many times it knocks
    while True:
        for worker in workers:
            if ray.get(worker.join.remote(member, config, state_ref)):
                return worker
        time.sleep(JOIN_POLL_S)


def start_workers(
    setup: TrialSetup | ray.ObjectRef, count: int, capacity: int, cpus: float, gpus: float
) -> list[Any]:
    """``count`` fusion workers with ``capacity`` member slots each."""
    workers = [
        FusionWorker.options(
            num_cpus=max(cpus - MEMBER_CPUS * capacity, 0.0),
            num_gpus=gpus,
            max_concurrency=capacity + 4,
        ).remote(setup)
        for _ in range(count)
    ]
    ray.get([worker.configure.remote(capacity) for worker in workers])
    return workers
