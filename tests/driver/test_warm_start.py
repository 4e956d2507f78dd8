"""Warm starts: enqueued configurations run first, and another study's finished trials seed the
sampler without running again or counting towards the study's trials."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from helpers import optuna_trials, run, tiny_study

from hpo_service.core.definition import StudyDefinition
from hpo_service.core.errors import DefinitionError
from hpo_service.core.records import StudyStatus, TrialState
from hpo_service.db.optuna_storage import optuna_storage
from hpo_service.driver.searcher import (
    ENQUEUED_ATTR,
    REPEATS_ATTR,
    WARM_START_ATTR,
    StudySearcher,
    warm_start_trials,
)

pytestmark = pytest.mark.usefixtures("ray_runtime")

RATES = [1e-4, 3e-4, 1e-3, 3e-3]
SPACE = {"learning_rate": {"type": "categorical", "choices": RATES}}


def test_enqueued_configurations_run_first_and_a_warm_start_learns_from_another_study(
    tiny_models: dict[str, Path],
    sentiment_files: tuple[Path, Path],
    sqlite_url: str,
    tmp_path: Path,
) -> None:
    model = tiny_models["bert"]
    first = tiny_study(
        "first",
        model,
        sentiment_files,
        parameters=SPACE,
        sampler={"type": "random", "seed": 0},
        enqueue=[{"learning_rate": 3e-3}, {"learning_rate": 1e-4}],
        limits={"trials": 3},
    )
    status, store = run(first, sqlite_url, tmp_path)
    assert status == StudyStatus.COMPLETED
    ran = store.trials("first")
    assert [t.params["learning_rate"] for t in ran[:2]] == [3e-3, 1e-4]
    theirs = optuna_trials(sqlite_url, "first")
    assert [t.user_attrs.get(ENQUEUED_ATTR, False) for t in theirs] == [True, True, False]

    second = tiny_study(
        "second",
        model,
        sentiment_files,
        parameters=SPACE,
        sampler={"type": "tpe", "seed": 0, "n_startup_trials": 1},
        warm_start={"study": "first"},
        limits={"trials": 2},
    )
    status, store = run(second, sqlite_url, tmp_path)
    assert status == StudyStatus.COMPLETED

    seeded = optuna_trials(sqlite_url, "second")
    copies = [t for t in seeded if WARM_START_ATTR in t.user_attrs]
    assert [(c.params, c.value, c.state) for c in copies] == [
        (t.params, t.value, optuna.trial.TrialState.COMPLETE) for t in theirs
    ]
    assert [c.user_attrs[WARM_START_ATTR] for c in copies] == ["first#0", "first#1", "first#2"]
    # Its own trials come after the copies, run, and alone count towards limits.trials; a
    # proposal of a configuration it had trained is not one of them (and does not run).
    own = store.trials("second")
    repeats = {t.number for t in seeded if REPEATS_ATTR in t.user_attrs}
    assert len(own) == 2 and len({t.params["learning_rate"] for t in own}) == 2
    assert sorted({t.number for t in own} | repeats) == list(range(3, len(seeded)))
    assert all(t.state == TrialState.COMPLETE for t in own)
    assert store.get_study("second").trial_counts[TrialState.COMPLETE] == 2


def test_a_study_is_seeded_once_not_again_when_it_runs_again_after_a_crash(
    sqlite_url: str,
) -> None:
    url = optuna_storage(sqlite_url)
    space = {"learning_rate": optuna.distributions.CategoricalDistribution(RATES)}
    source = optuna.create_study(study_name="source", storage=url, direction="maximize")
    source.add_trial(
        optuna.trial.create_trial(params={"learning_rate": 1e-3}, distributions=space, value=0.7)
    )

    def searcher() -> StudySearcher:
        return StudySearcher(
            space=space, metric="objective", mode="max", study_name="seeded", storage=url
        )

    first = searcher()
    assert not first.seeded
    first.seed("source", source.trials, [{"learning_rate": 1e-4}])
    assert searcher().seeded  # the rerun: the runner seeds it no more

    trials = optuna.load_study(study_name="seeded", storage=url).trials
    assert [t.state for t in trials] == [
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.WAITING,
    ]


def test_a_warm_start_from_a_study_deleted_since_submission_fails_saying_so(
    tiny_models: dict[str, Path], sentiment_files: tuple[Path, Path], sqlite_url: str
) -> None:
    """The service checked the source at submission; deleted while this study queued, the
    sampler would have started cold, silently."""
    document = tiny_study(
        "warm", tiny_models["bert"], sentiment_files, warm_start={"study": "gone"}
    )
    with pytest.raises(DefinitionError) as caught:
        warm_start_trials(StudyDefinition.model_validate(document), optuna_storage(sqlite_url))
    assert caught.value.field == "warm_start.study"
    assert "'gone' to warm-start from no longer exists" in str(caught.value)


def test_a_warm_start_from_a_missing_or_different_study_is_refused(
    tiny_models: dict[str, Path],
    sentiment_files: tuple[Path, Path],
    sqlite_url: str,
    tmp_path: Path,
) -> None:
    model = tiny_models["bert"]
    base = tiny_study("base", model, sentiment_files, objective={"metric": "eval_loss"})
    assert run(base, sqlite_url, tmp_path)[0] == StudyStatus.COMPLETED
    for source, shown in [("nowhere", "no study named 'nowhere'"), ("base", "eval_loss")]:
        document = tiny_study("warm", model, sentiment_files, warm_start={"study": source})
        with pytest.raises(DefinitionError) as caught:
            run(document, sqlite_url, tmp_path)
        assert caught.value.field == "warm_start.study"
        assert shown in str(caught.value)
