"""A trial cut off after an epoch goes on from the state saved at its end, exactly."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from hpo_service.core.definition import DatasetSpec, ModelSpec
from hpo_service.data import load_labelled_data
from hpo_service.training.engine import REPLAYED_KEY, StepTrace, TrialSetup, train
from hpo_service.training.modeling import tokenize
from hpo_service.training.trainable import RayCheckpoints

CPU = torch.device("cpu")
# Dropout on: an exact continuation needs the random state back too, not only the weights.
CONFIG = {"learning_rate": 3e-3, "num_train_epochs": 3, "dropout": 0.1, "warmup_ratio": 0.2}


class MemoryCheckpoints:
    """Keeps every saved state; restores ``resume``."""

    def __init__(self, resume: dict[str, Any] | None = None) -> None:
        self.saved: list[dict[str, Any]] = []
        self.resume = resume

    def restore(self) -> dict[str, Any] | None:
        return self.resume

    def save(self, state: dict[str, Any]) -> None:
        self.saved.append(copy.deepcopy(state))  # a snapshot, as torch.save writes one


@pytest.fixture(scope="module")
def setup(tiny_models: dict[str, Path], sentiment_files: tuple[Path, Path]) -> TrialSetup:
    train_file, dev_file = sentiment_files
    data = load_labelled_data(
        DatasetSpec(train=str(train_file), eval=str(dev_file), max_train_samples=96)
    )
    spec = ModelSpec(name=str(tiny_models["bert"]))
    return TrialSetup(model=spec, metric="accuracy", data=tokenize(spec, data, 32))


def test_a_resumed_trial_continues_exactly_where_it_stopped(setup: TrialSetup) -> None:
    straight: list[dict[str, Any]] = []
    saved = MemoryCheckpoints()
    train(setup, CONFIG, straight.append, CPU, checkpoints=saved)
    assert [s["epoch"] for s in saved.saved] == [1, 2, 3]

    resumed: list[dict[str, Any]] = []
    train(setup, CONFIG, resumed.append, CPU, checkpoints=MemoryCheckpoints(saved.saved[1]))

    assert [r["epoch"] for r in resumed] == [2, 3]  # epoch 2 reported again, not trained again
    assert resumed[0] == {**straight[1], REPLAYED_KEY: True}  # marked: not trained again
    for key in ("eval_loss", "train_loss", "accuracy"):
        assert resumed[1][key] == pytest.approx(straight[2][key], rel=1e-6), key


def test_a_trial_cut_off_after_its_last_save_reports_it_again(setup: TrialSetup) -> None:
    saved = MemoryCheckpoints()
    train(setup, CONFIG, lambda _: None, CPU, checkpoints=saved)
    reports: list[dict[str, Any]] = []
    train(setup, CONFIG, reports.append, CPU, checkpoints=MemoryCheckpoints(saved.saved[-1]))
    assert reports == [{**saved.saved[-1]["report"], REPLAYED_KEY: True}]


def test_ray_checkpoints_restore_what_was_saved(setup: TrialSetup, tmp_path: Path) -> None:
    saved = MemoryCheckpoints()
    train(setup, {**CONFIG, "num_train_epochs": 1}, lambda _: None, CPU, checkpoints=saved)
    folder = tmp_path / "checkpoint_000000"
    folder.mkdir()
    torch.save(saved.saved[0], folder / "state.pt")
    state = RayCheckpoints(str(folder)).restore()
    assert state is not None and state["epoch"] == 1
    assert torch.equal(state["cpu_rng"], saved.saved[0]["cpu_rng"])
    assert RayCheckpoints(None).restore() is None


def test_a_trial_restored_with_new_rates_trains_on_with_them(setup: TrialSetup) -> None:
    """Population-based training: a trial goes on from another's state with a mutated peak
    learning rate and weight decay; the restored optimizer and schedule take them on."""
    saved = MemoryCheckpoints()
    straight: list[StepTrace] = []
    train(setup, CONFIG, lambda _: None, CPU, on_step=straight.append, checkpoints=saved)
    mutated = {**CONFIG, "learning_rate": CONFIG["learning_rate"] / 3, "weight_decay": 0.05}
    steps: list[StepTrace] = []
    decays: list[float] = []
    original = torch.optim.AdamW.step

    def step_and_read(self: torch.optim.AdamW, *args: Any, **kwargs: Any) -> Any:
        decays.append(self.param_groups[0]["weight_decay"])
        assert self.param_groups[1]["weight_decay"] == 0.0  # biases and norms still none
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.optim.AdamW, "step", step_and_read)
        train(
            setup,
            mutated,
            lambda _: None,
            CPU,
            on_step=steps.append,
            checkpoints=MemoryCheckpoints(saved.saved[0]),
        )
    later = straight[len(straight) - len(steps) :]  # the same steps of the straight run
    assert [s.step for s in steps] == [s.step for s in later]
    for new, old in zip(steps, later, strict=True):  # the same schedule, a third of the peak
        assert new.learning_rate == pytest.approx(old.learning_rate / 3, rel=1e-9)
    assert decays and all(d == 0.05 for d in decays)
