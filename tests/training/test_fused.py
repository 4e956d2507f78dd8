"""Fused trials: each member of a group trains as it would alone through engine.train, in
both of a group's modes (stacked: one vmap'd step; interleaved: each member's step in turn).

Tolerance, stacked: a member's eval and train losses match its run alone to 1e-5 relative, its
accuracy, F1 and MCC exactly. The stacked model computes the same sums as the single one but
through batched (vmap) kernels, and per-member gradient norms sum in another order, so results
differ in the last float bits (observed: about 1e-7 relative). 1e-5 still catches small slips:
weight decay on biases and norms moves the eval loss of these runs by more than that.
Interleaved: exactly equal (the same kernels in the same order, the member's own random
stream), dropout included.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from hpo_service.core.definition import DatasetSpec, ModelSpec
from hpo_service.data import load_labelled_data
from hpo_service.driver.fusion import FusionGroup
from hpo_service.training import engine
from hpo_service.training.engine import TrialSetup
from hpo_service.training.fused import FusedTrainer, MemberState, fusion_key, stacks_on
from hpo_service.training.modeling import tokenize
from hpo_service.training.stacked import Stack, StackedAdamW, clip_per_member

CPU = torch.device("cpu")
EXACT = ("accuracy", "f1", "matthews_corrcoef", "epoch", "epochs_planned")
BASE = {"batch_size": 16, "num_train_epochs": 2, "dropout": 0.0}
CONFIGS: dict[str, dict[str, Any]] = {
    "a": {**BASE, "learning_rate": 1e-2, "seed": 1, "lr_scheduler": "linear"},
    "b": {
        **BASE,
        "learning_rate": 3e-3,
        "weight_decay": 0.1,
        "seed": 2,
        "warmup_ratio": 0.2,
        "lr_scheduler": "cosine",
        "label_smoothing": 0.1,
    },
    "c": {
        **BASE,
        "learning_rate": 5e-3,
        "weight_decay": 0.01,
        "seed": 3,
        "warmup_ratio": 0.1,
        "lr_scheduler": "constant_with_warmup",
        "max_grad_norm": 0.1,
        "num_train_epochs": 3,
    },
}


@pytest.fixture(params=[True, False], ids=["stacked", "interleaved"])
def stacked(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One CPU thread: these tiny models gain nothing from more, and a shared machine loses."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tiny_models: dict[str, Path], sentiment_files: tuple[Path, Path]) -> TrialSetup:
    train, dev = sentiment_files
    spec = DatasetSpec(train=str(train), eval=str(dev), max_train_samples=80, max_eval_samples=40)
    model = ModelSpec(name=str(tiny_models["bert"]))
    return TrialSetup(model, "accuracy", tokenize(model, load_labelled_data(spec), 32))


@pytest.fixture(scope="module")
def alone(setup: TrialSetup) -> Any:
    """``alone(config)``: the reports of ``config`` trained by itself through engine.train."""
    cache: dict[str, list[dict[str, Any]]] = {}

    def run(config: dict[str, Any]) -> list[dict[str, Any]]:
        key = repr(sorted(config.items()))
        if key not in cache:
            cache[key] = []
            engine.train(setup, config, cache[key].append, CPU)
        return cache[key]

    return run


def run_group(
    trainer: FusedTrainer,
    start: dict[str, dict[str, Any]],
    join: dict[int, dict[str, dict[str, Any]]] | None = None,
    states: dict[str, list[MemberState | None]] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Step ``trainer`` until it is empty: ``start`` members first, ``join[n]`` added before
    step ``n`` (from 0). Returns each member's reports; its saved states go to ``states``."""
    reports: dict[str, list[dict[str, Any]]] = {}
    for name, config in start.items():
        trainer.add(name, config)
    step = 0
    while trainer.members or (join and max(join) >= step):
        for name, config in (join or {}).get(step, {}).items():
            trainer.add(name, config)
        for name, report, state in trainer.step():
            reports.setdefault(name, []).append(report)
            if states is not None:
                states.setdefault(name, []).append(state)
        step += 1
    return reports


def assert_same_run(
    fused: list[dict[str, Any]], alone: list[dict[str, Any]], exact: bool = False
) -> None:
    assert len(fused) == len(alone)
    for mine, theirs in zip(fused, alone, strict=True):
        if exact:  # all but the wall time
            assert {**mine, "train_seconds": 0} == {**theirs, "train_seconds": 0}
            continue
        assert {k: mine[k] for k in EXACT} == {k: theirs[k] for k in EXACT}
        assert mine["eval_loss"] == pytest.approx(theirs["eval_loss"], rel=1e-5)
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-5)
        assert mine["objective"] == theirs["objective"]


def test_each_fused_member_matches_its_run_alone(
    setup: TrialSetup, alone: Any, stacked: bool
) -> None:
    reports = run_group(FusedTrainer(setup, CPU, stacked), CONFIGS)
    for name, config in CONFIGS.items():
        assert_same_run(reports[name], alone(config), exact=not stacked)
    # Different knobs gave different runs: the match is not one run compared three times.
    assert len({r[-1]["eval_loss"] for r in reports.values()}) == 3


def test_dropout_is_per_member(setup: TrialSetup, alone: Any, stacked: bool) -> None:
    quiet = CONFIGS["a"]
    noisy = {**quiet, "dropout": 0.3}
    group = {"quiet": quiet, "noisy": noisy, "noisier": {**noisy, "seed": 5}}
    reports = run_group(FusedTrainer(setup, CPU, stacked), group)
    # Its neighbours' dropout draws random numbers in the same step, yet "quiet" is unchanged.
    assert_same_run(reports["quiet"], alone(quiet), exact=not stacked)
    if not stacked:  # each member draws from its own stream: its masks are those alone
        assert_same_run(reports["noisy"], alone(noisy), exact=True)
        return
    # Dropout masks come from another random stream than alone: equal only in distribution.
    for mine, theirs in zip(reports["noisy"], alone(noisy), strict=True):
        assert mine["train_loss"] != reports["quiet"][mine["epoch"] - 1]["train_loss"]
        assert math.isfinite(mine["eval_loss"])
        assert mine["eval_loss"] == pytest.approx(theirs["eval_loss"], rel=0.05)


def test_removed_member_leaves_the_others_unchanged_and_frees_its_tensors(
    setup: TrialSetup, alone: Any, stacked: bool
) -> None:
    trainer = FusedTrainer(setup, CPU, stacked)
    for name, config in CONFIGS.items():
        trainer.add(name, config)
    trainer.step()
    if stacked:
        assert trainer.stack is not None
        per_member = sum(p[0].numel() for p in trainer.stack.params.values())
    else:
        removed = trainer._members[1].alone
        assert removed is not None
        weights = weakref.ref(next(removed.model.parameters()))
        moments = weakref.ref(next(iter(removed.optimizer.state.values()))["exp_avg"])
        del removed
    trainer.remove("b")
    assert trainer.members == ["a", "c"]
    if stacked:
        assert sum(p.numel() for p in trainer.stack.params.values()) == 2 * per_member
        assert sum(s.numel() for s in trainer.optimizer.exp_avg.values()) == 2 * per_member
    else:
        gc.collect()
        assert weights() is None and moments() is None
    reports: dict[str, list[dict[str, Any]]] = {}
    while trainer.members:
        for name, report, _ in trainer.step():
            reports.setdefault(name, []).append(report)
    assert_same_run(reports["a"], alone(CONFIGS["a"]), exact=not stacked)
    assert_same_run(reports["c"], alone(CONFIGS["c"]), exact=not stacked)
    assert trainer.stack is None and not trainer.members  # everyone done: nothing kept


def test_member_joining_a_running_group_matches_its_run_alone(
    setup: TrialSetup, alone: Any, stacked: bool
) -> None:
    # 80 rows in batches of 16 with accumulation 2: 5 batches, 3 steps per epoch, the last
    # one shorter; the joiner's short steps fall on the others' full ones.
    first = {**CONFIGS["a"], "gradient_accumulation_steps": 2}
    late = {**CONFIGS["b"], "gradient_accumulation_steps": 2}
    trainer = FusedTrainer(setup, CPU, stacked)
    reports = run_group(trainer, {"first": first}, join={2: {"late": late}})
    assert_same_run(reports["first"], alone(first), exact=not stacked)
    assert_same_run(reports["late"], alone(late), exact=not stacked)


def test_member_with_fewer_epochs_leaves_after_its_last_report(
    setup: TrialSetup, stacked: bool
) -> None:
    trainer = FusedTrainer(setup, CPU, stacked)
    trainer.add("short", {**CONFIGS["a"], "num_train_epochs": 1})
    trainer.add("long", CONFIGS["a"])
    while "short" in trainer.members:
        reports = {end.member: end.report for end in trainer.step()}
    assert reports["short"]["epoch"] == reports["short"]["epochs_planned"] == 1
    assert reports["long"]["epoch"] == 1
    assert trainer.members == ["long"]


@pytest.mark.parametrize("goes_on_stacked", [True, False], ids=["on-stacked", "on-interleaved"])
def test_a_member_goes_on_from_its_saved_epoch_as_without_the_break(
    setup: TrialSetup, alone: Any, stacked: bool, goes_on_stacked: bool
) -> None:
    """A crash cut "c" off after its first epoch: it rejoins a group, in either mode, from the
    state saved with that epoch's report, beside a member starting afresh."""
    states: dict[str, list[MemberState | None]] = {}
    before = run_group(FusedTrainer(setup, CPU, stacked), CONFIGS, states=states)
    saved = states["c"][0]
    assert saved is not None and saved["epoch"] == 1 and saved["report"] == before["c"][0]

    trainer = FusedTrainer(setup, CPU, goes_on_stacked)
    trainer.add("fresh", CONFIGS["a"])
    trainer.add("c", CONFIGS["c"], saved)
    after = run_group(trainer, {})

    assert [r["epoch"] for r in after["c"]] == [2, 3]  # epoch 1 is not trained again
    exact = not stacked and not goes_on_stacked
    assert_same_run(after["c"], alone(CONFIGS["c"])[1:], exact=exact)
    assert_same_run(after["fresh"], alone(CONFIGS["a"]), exact=not goes_on_stacked)
    # Its training time goes on from the first epoch's, not from zero.
    assert after["c"][0]["train_seconds"] > before["c"][0]["train_seconds"]


def test_an_interleaved_member_goes_on_with_its_own_random_stream(
    setup: TrialSetup, alone: Any
) -> None:
    noisy = {**CONFIGS["c"], "dropout": 0.3}
    states: dict[str, list[MemberState | None]] = {}
    run_group(FusedTrainer(setup, CPU, stacked=False), {"noisy": noisy}, states=states)
    trainer = FusedTrainer(setup, CPU, stacked=False)
    trainer.add("noisy", noisy, states["noisy"][1])
    after = run_group(trainer, {})
    # Dropout masks too: bit for bit the epoch it would have trained without the break.
    assert_same_run(after["noisy"], alone(noisy)[2:], exact=True)


def test_a_group_without_checkpoints_saves_no_state(setup: TrialSetup, stacked: bool) -> None:
    states: dict[str, list[MemberState | None]] = {}
    quiet = dataclasses.replace(setup, checkpoints=False)
    run_group(FusedTrainer(quiet, CPU, stacked), {"a": CONFIGS["a"]}, states=states)
    assert states == {"a": [None, None]}


def test_members_ending_an_epoch_together_hand_off_their_states_one_at_a_time(
    setup: TrialSetup, stacked: bool, tmp_path: Path
) -> None:
    """Each state goes to ``keep_state`` before the next is built: the trainer never holds
    every member's state at once (that would cost a model and two moments per member)."""
    handed: list[Path] = []
    last: list[weakref.ref[torch.Tensor]] = []

    def keep_state(state: MemberState) -> Path:
        # The state handed off before this one is gone already: nothing in the trainer kept it.
        assert all(ref() is None for ref in last), "an earlier state is still held"
        last[:] = [weakref.ref(t) for t in state["model"].values()]
        path = tmp_path / f"state-{len(handed)}.pt"
        torch.save(state, path)
        handed.append(path)
        return path

    states: dict[str, list[Any]] = {}
    trainer = FusedTrainer(setup, CPU, stacked, keep_state=keep_state)
    reports = run_group(
        trainer, {n: {**CONFIGS[n], "num_train_epochs": 1} for n in "ab"}, states=states
    )
    assert states == {"a": [handed[0]], "b": [handed[1]]}  # both ended epoch 1 in one step
    for name, [path] in states.items():
        saved = torch.load(path, weights_only=True)
        assert saved["report"] == reports[name][0] and saved["epoch"] == 1


def test_fusion_key_mismatch_is_a_clear_error(setup: TrialSetup, stacked: bool) -> None:
    assert fusion_key({"batch_size": 16}) == fusion_key({"batch_size": 16, "seed": 7})
    assert fusion_key({"batch_size": 16}) != fusion_key({"batch_size": 32})
    trainer = FusedTrainer(setup, CPU, stacked)
    trainer.add("a", CONFIGS["a"])
    with pytest.raises(ValueError, match=r"'b'.*\(32, 1\).*\(16, 1\)"):
        trainer.add("b", {**CONFIGS["b"], "batch_size": 32})
    assert trainer.members == ["a"]


def test_a_group_keeps_a_finished_members_reports_until_its_trial_takes_them(
    setup: TrialSetup, alone: Any
) -> None:
    """A trial that asks for its reports late (it was still reporting an earlier epoch when the
    group finished it) gets every epoch, then the end: it never ends short of its epochs."""
    group = FusionGroup(setup, keep_state=None)
    group.configure(1)
    assert group.join("a", CONFIGS["a"])
    # Other shapes join only a group whose members all finished: "a" has, once this is taken.
    deadline = time.monotonic() + 120
    while not group.join("other", {**CONFIGS["a"], "batch_size": 8}):
        assert time.monotonic() < deadline, "the group never finished its member"
        time.sleep(0.05)
    group.leave("other")

    ended = list(iter(lambda: group.next_report("a"), None))
    assert_same_run([report for report, _ in ended], alone(CONFIGS["a"]), exact=True)
    group.leave("a")
    assert group.next_report("a") is None


def test_a_member_whose_training_diverges_fails_alone(
    setup: TrialSetup, alone: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its trial gets the error at the epoch that went NaN and leaves the group; the other
    member trains on as alone. (Which member diverges is injected into the trainer's reports:
    the tiny model cannot diverge for one member's values on the CPU in float32.)"""
    step = FusedTrainer.step

    def step_with_nan(trainer: FusedTrainer) -> list[Any]:
        ends = step(trainer)
        return [
            e._replace(report={**e.report, "eval_loss": math.nan})
            if e.member == "b" and e.report["epoch"] == 1
            else e
            for e in ends
        ]

    monkeypatch.setattr(FusedTrainer, "step", step_with_nan)
    group = FusionGroup(setup, keep_state=None)
    group.configure(2)
    assert group.join("a", CONFIGS["a"]) and group.join("b", CONFIGS["b"])
    with pytest.raises(engine.TrainingDiverged, match=r"diverged at epoch 1: eval_loss nan"):
        group.next_report("b")
    group.leave("b")
    ended = list(iter(lambda: group.next_report("a"), None))
    assert_same_run([report for report, _ in ended], alone(CONFIGS["a"]), exact=True)
    group.leave("a")


def test_groups_stack_on_accelerators_and_interleave_on_the_cpu(setup: TrialSetup) -> None:
    assert FusedTrainer(setup, CPU).stacked is False
    assert stacks_on(torch.device("cuda")) and not stacks_on(CPU)


def test_stacked_adamw_matches_torch_adamw_per_member() -> None:
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2)) for _ in range(3)]
    hyper = [(1e-2, 0.1, 1e-8, 1.0), (3e-3, 0.0, 1e-6, 0.0), (5e-2, 0.3, 1e-8, 0.05)]
    params, _ = stack_module_state(models)  # type: ignore[arg-type]
    stacked = StackedAdamW(lambda name: not engine.no_decay(name))
    for i, (_, decay, eps, _) in enumerate(hyper):
        stacked.add_member({k: v[: i + 1] for k, v in params.items()}, decay, eps)
    singles = [
        engine.make_optimizer(
            model,
            engine.TrialHyper.from_config(
                {"learning_rate": lr, "weight_decay": decay, "adam_epsilon": eps}
            ),
        )
        for model, (lr, decay, eps, _) in zip(models, hyper, strict=True)
    ]
    for step in range(4):
        factor = 1 - step / 4  # a decaying schedule
        grads = {k: torch.randn_like(v) for k, v in params.items()}
        for name, param in params.items():
            param.grad = grads[name].clone()
        clip_per_member(params, [h[3] for h in hyper])
        stacked.step(params, [h[0] * factor for h in hyper])
        for i, (model, optimizer) in enumerate(zip(models, singles, strict=True)):
            for name, param in model.named_parameters():
                param.grad = grads[name][i].clone()
            if hyper[i][3] > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), hyper[i][3])
            for group in optimizer.param_groups:
                group["lr"] = hyper[i][0] * factor
            optimizer.step()
    for i, model in enumerate(models):
        for name, param in model.named_parameters():
            torch.testing.assert_close(params[name][i], param, rtol=1e-6, atol=1e-7)


def test_stack_stores_linear_weights_in_their_gradients_layout() -> None:
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2)) for _ in range(2)]
    stack = Stack(models)
    # The model sees every member's own weights, in its layout...
    for i, model in enumerate(models):
        for name, param in model.named_parameters():
            torch.testing.assert_close(stack.model_params()[name][i], param.detach())
    assert stack.params["0.weight"].shape == (2, 4, 8)
    assert stack.params["1.weight"].shape == (2, 8)  # a LayerNorm's: as stacked
    # ...and the weight gradient of the batched matmul reaches each weight as it is stored,
    # so autograd needs no transposing copy to accumulate it.
    layouts: dict[str, bool] = {}
    for name in ("0.weight", "2.weight"):
        stack.params[name].register_hook(
            lambda grad, name=name: layouts.__setitem__(name, grad.is_contiguous())
        )

    def forward(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(stack.base, params, (x,))

    vmap(forward)(stack.model_params(), torch.randn(2, 3, 4)).sum().backward()
    assert layouts == {"0.weight": True, "2.weight": True}
