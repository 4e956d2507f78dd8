"""A study with several objectives: Optuna gets every value, the Pareto front and the picked
point come out of both stores alike, and the best-config document names the rule."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import optuna_study, run, tiny_study

from hpo_service.core.definition import StudyDefinition
from hpo_service.core.pareto import pick
from hpo_service.core.records import StudyStatus, TrialRecord, TrialState
from hpo_service.driver.runner import PICKED_BEST_ATTR
from hpo_service.service.best import SCHEMA, best_config

pytestmark = pytest.mark.usefixtures("ray_runtime")


def test_a_study_with_two_objectives_finds_and_picks_from_its_pareto_front(
    tiny_models: dict[str, Path],
    sentiment_files: tuple[Path, Path],
    sqlite_url: str,
    tmp_path: Path,
) -> None:
    database_url = sqlite_url  # the store's Pareto ranking runs on PostgreSQL in tests/db
    document = tiny_study(
        "accurate-and-fast",
        tiny_models["bert"],
        sentiment_files,
        objectives=[{"metric": "accuracy"}, {"metric": "train_seconds"}],
        pick={"rule": "within", "tolerance": 0.05},
        parameters={
            "learning_rate": {"type": "categorical", "choices": [1e-3, 3e-3]},
            "num_train_epochs": {"type": "categorical", "choices": [1, 2]},
        },
        sampler={"type": "grid", "seed": 0},
        limits={"trials": 4},
    )
    status, store = run(document, database_url, tmp_path)
    assert status == StudyStatus.COMPLETED
    trials = store.trials("accurate-and-fast", with_curves=True)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    for trial in trials:  # cumulative wall time, recorded with every epoch
        seconds = [e.train_seconds for e in trial.learning_curve]
        assert all(s is not None and s > 0 for s in seconds)
        assert seconds == sorted(seconds) and trial.train_seconds == seconds[-1]

    # Optuna's study is a two-objective one, told both values of each trial.
    ours = {t.number: t for t in trials}
    theirs = optuna_study(database_url, "accurate-and-fast").trials
    for trial in theirs:
        mine = ours[trial.number]
        assert trial.values == [mine.accuracy, mine.train_seconds]

    # The front: no complete trial beats a front member on both; every other trial is beaten.
    front = store.pareto_front("accurate-and-fast")
    assert front

    def beats(a: TrialRecord, b: TrialRecord) -> bool:
        points = (a.accuracy, -a.train_seconds), (b.accuracy, -b.train_seconds)  # type: ignore[operator]
        return all(x >= y for x, y in zip(*points, strict=True)) and points[0] != points[1]

    on_front = {t.number for t in front}
    for trial in trials:
        beaten = any(beats(other, trial) for other in trials)
        assert (trial.number not in on_front) == beaten, trial.number

    definition = StudyDefinition.model_validate(document)
    picked = pick(front, definition.goals, definition.picking)
    assert picked is not None
    best = store.best_trial("accurate-and-fast")
    assert best is not None and best.number == picked.number

    document_out = best_config(store, "accurate-and-fast")
    assert document_out["schema"] == SCHEMA
    assert document_out["trial"] == picked.number
    assert document_out["objectives"] == [
        {"metric": "accuracy", "direction": "maximize", "value": picked.accuracy},
        {"metric": "train_seconds", "direction": "minimize", "value": picked.train_seconds},
    ]
    assert document_out["pick"]["rule"] == "within"
    assert document_out["pick"]["tolerance"] == 0.05
    assert "within 0.05 of the best accuracy" in document_out["pick"]["description"]
    assert document_out["pick"]["pareto_front"] == [t.number for t in front]

    study = optuna_study(database_url, "accurate-and-fast")
    assert len(study.directions) == 2
    assert study.user_attrs[PICKED_BEST_ATTR]["trial"] == picked.number
