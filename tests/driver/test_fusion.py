"""Fused trials through the real runner: members train as one stacked model in a fusion worker,
yet each stays a trial of its own in our tables and Optuna's."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import optuna_trials, run, tiny_study
from optuna.trial import TrialState as OptunaState

from hpo_service.core.records import StudyStatus, TrialState

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_runtime")]

RATES = [5e-4, 1e-3, 2e-3]


def grid_study(name: str, model: Path, files: tuple[Path, Path], fuse: int) -> dict:
    return tiny_study(
        name,
        model,
        files,
        parameters={
            "learning_rate": {"type": "categorical", "choices": RATES},
            "weight_decay": 0.01,
            "warmup_ratio": 0.1,
            "dropout": 0.0,
            "num_train_epochs": 2,
        },
        sampler={"type": "grid"},
        limits={"trials": len(RATES)},
        execution={"fuse_trials": fuse},
    )


def curves(store: object, name: str) -> dict[float, list[tuple[float, float]]]:
    trials = store.trials(name, with_curves=True)  # type: ignore[attr-defined]
    return {
        t.params["learning_rate"]: [(e.eval_loss, e.accuracy) for e in t.learning_curve]
        for t in trials
    }


def test_fused_study_records_each_member_as_its_own_trial_and_matches_unfused(
    tiny_models: dict[str, Path],
    sentiment_files: tuple[Path, Path],
    database_url: str,
    tmp_path: Path,
) -> None:
    fused = grid_study("fused", tiny_models["bert"], sentiment_files, fuse=3)
    status, store = run(fused, database_url, tmp_path / "fused")

    assert status == StudyStatus.COMPLETED
    ours = store.trials("fused", with_curves=True)
    assert sorted(t.params["learning_rate"] for t in ours) == RATES
    for trial in ours:
        assert trial.state == TrialState.COMPLETE, trial.error
        assert [e.epoch for e in trial.learning_curve] == [1, 2]
    theirs = {t.number: t for t in optuna_trials(database_url, "fused")}
    assert sorted(theirs) == sorted(t.number for t in ours)
    for trial in ours:
        optuna_trial = theirs[trial.number]
        assert optuna_trial.state == OptunaState.COMPLETE
        assert optuna_trial.value == pytest.approx(trial.objective)
        assert sorted(optuna_trial.intermediate_values) == [1, 2]

    alone = grid_study("alone", tiny_models["bert"], sentiment_files, fuse=1)
    status, store = run(alone, database_url, tmp_path / "alone")
    assert status == StudyStatus.COMPLETED
    # Dropout 0: members see the same batches in the same order as alone; only the order of
    # floating-point sums differs under vmap, hence the tolerance.
    fused_curves, alone_curves = curves(store, "fused"), curves(store, "alone")
    for rate in RATES:
        for (fused_loss, fused_acc), (alone_loss, alone_acc) in zip(
            fused_curves[rate], alone_curves[rate], strict=True
        ):
            assert fused_loss == pytest.approx(alone_loss, rel=1e-3)
            assert fused_acc == pytest.approx(alone_acc, abs=1 / 48 + 1e-9)


def test_asha_stops_members_of_a_fused_group_on_their_own(
    tiny_models: dict[str, Path],
    sentiment_files: tuple[Path, Path],
    sqlite_url: str,
    tmp_path: Path,
) -> None:
    document = tiny_study(
        "fused-asha",
        tiny_models["bert"],
        sentiment_files,
        parameters={
            "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
            "num_train_epochs": 4,
        },
        sampler={"type": "random", "seed": 3},
        # Eval loss: accuracy on 48 examples ties often, and ASHA stops no tied trial.
        objective={"metric": "eval_loss"},
        early_stopping={"type": "asha", "grace_period": 1, "reduction_factor": 2},
        limits={"trials": 6},
        execution={"fuse_trials": 3},
    )
    status, store = run(document, sqlite_url, tmp_path)

    assert status == StudyStatus.COMPLETED
    trials = store.trials("fused-asha", with_curves=True)
    assert len(trials) == 6
    states = {t.state for t in trials}
    assert TrialState.FAILED not in states, [t.error for t in trials]
    assert TrialState.EARLY_STOPPED in states and TrialState.COMPLETE in states
    for trial in trials:
        assert [e.epoch for e in trial.learning_curve] == list(range(1, trial.epochs + 1))
