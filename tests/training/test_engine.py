"""The training loop keeps Trainer's semantics: schedule with warmup, no-decay groups,
accumulation, clipping, label smoothing, seeds, and one report per epoch."""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import without_time
from tiny_models import save_tiny_model

from hpo_service.core.definition import KNOBS, DatasetSpec, ModelSpec
from hpo_service.data import load_labelled_data
from hpo_service.training import engine
from hpo_service.training.batches import TensorData, batches_of, steps_per_epoch
from hpo_service.training.engine import (
    METRICS,
    StepTrace,
    TrainingDiverged,
    TrialHyper,
    TrialSetup,
    evaluate,
    make_optimizer,
    model_logits,
    no_decay,
    run_epoch,
    train,
    weighted_loss,
)
from hpo_service.training.modeling import load_model, tokenize

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, sentiment_files: tuple[Path, Path]
) -> TrialSetup:
    """A tiny BERT with a fixed initialisation (the shared fixture's is random per session)."""
    torch.manual_seed(0)
    folder = save_tiny_model("bert", tmp_path_factory.mktemp("seeded") / "bert")
    train_file, dev_file = sentiment_files
    data = load_labelled_data(DatasetSpec(train=str(train_file), eval=str(dev_file)))
    spec = ModelSpec(name=str(folder))
    return TrialSetup(model=spec, metric="accuracy", data=tokenize(spec, data, 32))


def run(setup: TrialSetup, config: dict[str, Any]) -> tuple[list[dict[str, Any]], list[StepTrace]]:
    reports: list[dict[str, Any]] = []
    steps: list[StepTrace] = []
    train(setup, config, reports.append, CPU, on_step=steps.append)
    return reports, steps


def hyper(**values: Any) -> TrialHyper:
    return TrialHyper.from_config(values)


def test_hyper_takes_the_knob_defaults() -> None:
    defaults = TrialHyper.from_config({})
    assert {name: getattr(defaults, name) for name in KNOBS} == {
        name: knob.default for name, knob in KNOBS.items()
    }


def test_biases_and_norms_get_no_weight_decay(tiny_models: dict[str, Path]) -> None:
    for family in ("bert", "distilbert"):
        model = load_model(ModelSpec(name=str(tiny_models[family])), ["a", "b"], None)
        optimizer = make_optimizer(model, hyper(weight_decay=0.3))
        decay, exempt = optimizer.param_groups
        assert (decay["weight_decay"], exempt["weight_decay"]) == (0.3, 0.0)
        names = {id(p): n for n, p in model.named_parameters()}
        exempt_names = {names[id(p)] for p in exempt["params"]}
        decay_names = {names[id(p)] for p in decay["params"]}
        assert exempt_names | decay_names == set(names.values())
        assert exempt_names == {
            n
            for n in names.values()
            if n.endswith(".bias") or "LayerNorm" in n or "layer_norm" in n
        }
        assert any(n.endswith("word_embeddings.weight") for n in decay_names)
    assert no_decay("encoder.layer.0.output.LayerNorm.weight")
    assert not no_decay("classifier.weight")


def expected_lr(schedule: str, peak: float, step: int, warmup: int, total: int) -> float:
    """The schedule's formula at a 0-based step."""
    if step < warmup:
        return peak * step / warmup
    progress = (step - warmup) / (total - warmup)
    if schedule == "linear":
        return peak * max(0.0, 1 - progress)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_learning_rate_follows_warmup_and_schedule_over_accumulated_steps(
    setup: TrialSetup, schedule: str
) -> None:
    config = {
        "learning_rate": 1e-3,
        "lr_scheduler": schedule,
        "warmup_ratio": 0.3,
        "batch_size": 32,
        "gradient_accumulation_steps": 3,
        "num_train_epochs": 2,
    }
    reports, steps = run(setup, config)
    n = len(setup.data.train)
    per_epoch = math.ceil(math.ceil(n / 32) / 3)
    total = 2 * per_epoch
    assert steps_per_epoch(n, 32, 3) == per_epoch
    assert [s.step for s in steps] == list(range(1, total + 1))
    warmup = math.ceil(0.3 * total)
    expected = [expected_lr(schedule, 1e-3, i, warmup, total) for i in range(total)]
    assert [s.learning_rate for s in steps] == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert len(reports) == 2


def two_models(setup: TrialSetup) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    model = load_model(setup.model, setup.data.label_names, dropout=0.0)
    return model, copy.deepcopy(model)


def one_step(
    model: torch.nn.Module,
    batches: list[Any],
    knobs: TrialHyper,
    optimizer: torch.optim.Optimizer | None = None,
) -> StepTrace:
    model.train()
    optimizer = optimizer or make_optimizer(model, knobs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    steps: list[StepTrace] = []
    params = list(model.parameters())
    run_epoch(
        model_logits(model, None), params, optimizer, scheduler, batches, knobs, 1, steps.append
    )
    assert len(steps) == 1
    return steps[0]


def test_accumulating_two_batches_equals_one_step_on_both(setup: TrialSetup) -> None:
    split = setup.data.train
    rows = np.arange(10)
    accumulated, whole = two_models(setup)
    before = [p.detach().clone() for p in whole.parameters()]
    knobs = hyper(learning_rate=1e-3, weight_decay=0.1, dropout=0.0, max_grad_norm=0.5)
    # 6 + 4 real rows (4 filler rows in the second batch) against one batch of all 10.
    halves = batches_of(split, [rows[:6], rows[6:]], 6)
    step_a = one_step(accumulated, halves, replace(knobs, gradient_accumulation_steps=2))
    step_b = one_step(whole, batches_of(split, [rows], 16), knobs)
    assert float(step_a.loss) == pytest.approx(float(step_b.loss), rel=1e-5)
    assert float(step_a.grad_norm) == pytest.approx(float(step_b.grad_norm), rel=1e-4)
    for a, b in zip(accumulated.parameters(), whole.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(b, old) for b, old in zip(whole.parameters(), before, strict=True))


@pytest.mark.parametrize("max_grad_norm", [0.0, 0.01])
def test_clipping_bounds_the_update(setup: TrialSetup, max_grad_norm: float) -> None:
    model, _ = two_models(setup)
    before = [p.detach().clone() for p in model.parameters()]
    knobs = hyper(max_grad_norm=max_grad_norm, dropout=0.0)
    sgd = torch.optim.SGD(model.parameters(), lr=1.0)  # the update is the (clipped) gradient
    step = one_step(model, batches_of(setup.data.train, [np.arange(16)], 16), knobs, sgd)
    with torch.no_grad():
        squares = [
            ((p - old) ** 2).sum() for p, old in zip(model.parameters(), before, strict=True)
        ]
        update = torch.stack(squares).sum().sqrt()
    if max_grad_norm:
        assert float(step.grad_norm) > 10 * max_grad_norm  # clipping had work to do
        assert float(update) <= max_grad_norm * (1 + 1e-4)
    else:
        assert step.grad_norm is None
        assert float(update) > 0.1


def test_label_smoothing_loss_follows_the_formula() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 3) * 3
    labels = torch.tensor([0, 2, 1, 1, 0])
    weights = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0])
    logp = F.log_softmax(logits, dim=-1)
    nll = -logp[torch.arange(5), labels]
    uniform = -logp.mean(dim=-1)
    for epsilon in (0.0, 0.1, 0.4):
        expected = ((1 - epsilon) * nll + epsilon * uniform)[:4].mean()
        got = weighted_loss(logits, labels, weights, epsilon)
        torch.testing.assert_close(got, expected)
    # The filler row does not count, whatever its logits.
    spoiled = logits.clone()
    spoiled[4] = torch.tensor([-50.0, 50.0, 0.0])
    torch.testing.assert_close(
        weighted_loss(spoiled, labels, weights, 0.1), weighted_loss(logits, labels, weights, 0.1)
    )


def test_eval_loss_includes_label_smoothing_and_covers_every_example(setup: TrialSetup) -> None:
    model, _ = two_models(setup)
    model.eval()
    logits_of = model_logits(model, None)
    split = setup.data.eval
    with torch.no_grad():
        logits = model(input_ids=split.input_ids, attention_mask=(split.input_ids != 0).long())
    for epsilon in (0.0, 0.2):
        scores = evaluate(logits_of, split, 64, CPU, label_smoothing=epsilon)
        expected = F.cross_entropy(logits.logits, split.labels, label_smoothing=epsilon)
        assert scores["eval_loss"] == pytest.approx(float(expected), rel=1e-4)
        accuracy = (logits.logits.argmax(-1) == split.labels).float().mean()
        assert scores["accuracy"] == pytest.approx(float(accuracy))


def test_a_small_dev_set_is_not_padded_up_to_the_eval_batch(setup: TrialSetup) -> None:
    model, _ = two_models(setup)
    model.eval()
    rows: list[int] = []

    def logits_of(batch: Any) -> torch.Tensor:
        rows.append(int(batch.input_ids.shape[0]))
        return model_logits(model, None)(batch)

    split = setup.data.eval
    small = evaluate(logits_of, split, len(split) * 4, CPU)
    assert rows == [len(split)]  # one batch of the split's own size, not 4x that
    assert small == pytest.approx(evaluate(model_logits(model, None), split, 8, CPU), rel=1e-5)


def test_a_seed_reproduces_a_trial_and_another_seed_differs(setup: TrialSetup) -> None:
    config = {"learning_rate": 1e-3, "num_train_epochs": 1, "batch_size": 32, "seed": 5}
    first, first_steps = run(setup, config)
    again, again_steps = run(setup, config)
    other, _ = run(setup, {**config, "seed": 6})
    assert without_time(first) == without_time(again)
    assert [float(s.loss) for s in first_steps] == [float(s.loss) for s in again_steps]
    assert first[0]["train_loss"] != other[0]["train_loss"]


def test_training_learns_and_reports_each_epoch(setup: TrialSetup) -> None:
    config = {
        "learning_rate": 3e-3,
        "lr_scheduler": "constant",
        "num_train_epochs": 4,
        "batch_size": 8,
        "dropout": 0.0,
    }
    reports, _ = run(setup, config)
    assert [r["epoch"] for r in reports] == [1, 2, 3, 4]
    for report in reports:
        assert set(report) == {"objective", *METRICS, "epoch", "epochs_planned", "train_loss"}
        assert report["epochs_planned"] == 4 and report["objective"] == report["accuracy"]
    first, last = reports[0], reports[-1]
    assert last["accuracy"] >= first["accuracy"] + 0.15
    assert last["eval_loss"] < first["eval_loss"] - 0.1
    assert last["train_loss"] < first["train_loss"] - 0.1


def test_distilbert_trains_without_token_type_ids(tiny_models: dict[str, Path], setup: Any) -> None:
    spec = ModelSpec(name=str(tiny_models["distilbert"]))
    data: TensorData = setup.data
    assert data.train.token_type_ids is not None  # the tokenizer makes them; the model has none
    reports, _ = run(TrialSetup(spec, "f1", data), {"num_train_epochs": 1})
    assert reports[0]["objective"] == reports[0]["f1"]


def test_a_diverged_training_fails_at_its_first_nan_epoch_without_reporting_it(
    tmp_path: Path, setup: TrialSetup
) -> None:
    folder = save_tiny_model("bert", tmp_path / "overflowing", overflowing=True)
    model = ModelSpec(name=str(folder))
    diverging = replace(setup, model=model)
    reports: list[dict[str, Any]] = []
    with pytest.raises(TrainingDiverged, match=r"^training diverged at epoch 1: train_loss nan"):
        train(diverging, {"num_train_epochs": 3}, reports.append, CPU)
    assert reports == []  # no NaN scores reach the tables, Optuna or the schedulers


def test_a_long_epoch_ends_at_its_first_check_after_diverging(
    tmp_path: Path, setup: TrialSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not after spending the rest of the epoch on NaNs."""
    monkeypatch.setattr(engine, "DIVERGENCE_CHECK_STEPS", 2)
    folder = save_tiny_model("bert", tmp_path / "overflowing", overflowing=True)
    diverging = replace(setup, model=ModelSpec(name=str(folder)))
    steps: list[StepTrace] = []
    with pytest.raises(
        TrainingDiverged, match=r"^training diverged at epoch 1, step 2: train_loss"
    ):
        train(
            diverging,
            {"num_train_epochs": 3, "batch_size": 4},
            [].append,
            CPU,
            on_step=steps.append,
        )
    assert len(steps) == 2  # of the epoch's many
