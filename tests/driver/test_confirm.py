"""The confirmation stage end to end on tiny BERT trials: the search's best configurations run
again with fresh seeds, and the best-config document, Optuna's study (the dashboard) and the
study's progress show them."""

from __future__ import annotations

import statistics
from pathlib import Path

import optuna
import pytest
from helpers import optuna_trials, run, tiny_study

from hpo_service.core.records import StudyStatus, TrialState
from hpo_service.core.settings import normalize_database_url
from hpo_service.db.reconcile import CONFIRMS_ATTR, SEED_ATTR
from hpo_service.driver.runner import CONFIRMED_BEST_ATTR
from hpo_service.service.best import SCHEMA, best_config

pytestmark = pytest.mark.usefixtures("ray_runtime")


def test_the_best_configurations_run_again_with_fresh_seeds_and_the_best_mean_wins(
    tiny_models: dict[str, Path],
    sentiment_files: tuple[Path, Path],
    sqlite_url: str,
    tmp_path: Path,
) -> None:
    rates = [1e-4, 1e-3, 5e-3]
    document = tiny_study(
        "confirmed",
        tiny_models["bert"],
        sentiment_files,
        parameters={"learning_rate": {"type": "categorical", "choices": rates}},
        sampler={"type": "grid"},
        limits={"trials": 3},
        confirm={"top_k": 2, "seeds": 2},
    )
    status, store = run(document, sqlite_url, tmp_path)
    assert status == StudyStatus.COMPLETED
    record = store.get_study("confirmed")
    assert record.n_trials == 3 + 2 * 2  # the progress counts the confirmation runs
    assert record.trial_counts[TrialState.COMPLETE] == 7

    trials = store.trials("confirmed")
    search = [t for t in trials if t.confirms is None]
    runs = [t for t in trials if t.confirms is not None]
    assert len(search) == 3 and all(t.params["seed"] == 42 for t in search)
    best_two = sorted(search, key=lambda t: (-t.objective, t.number))[:2]
    assert sorted({r.confirms for r in runs}) == sorted(t.number for t in best_two)
    for run_ in runs:  # the very configuration, another seed
        source = store.trial("confirmed", run_.confirms)
        assert {**run_.params, "seed": 42} == source.params
        assert run_.params["seed"] in (10_000, 10_001)
    assert store.best_trial("confirmed").confirms is None  # the search's best stays the search's

    best = best_config(store, "confirmed")
    assert best["schema"] == SCHEMA
    confirmation = best["confirmation"]
    mine = [r.objective for r in runs if r.confirms == best["trial"]]
    assert confirmation["objective"]["mean"] == pytest.approx(statistics.fmean(mine))
    assert best["objective"]["value"] == pytest.approx(statistics.fmean(mine))
    assert confirmation["candidates"][0]["trial"] == best["trial"]
    means = [c["objective"]["mean"] for c in confirmation["candidates"]]
    assert means == sorted(means, reverse=True)
    assert confirmation["seeds"] == [10_000, 10_001]

    theirs = optuna_trials(sqlite_url, "confirmed")
    tagged = {(t.number, t.user_attrs[CONFIRMS_ATTR], t.user_attrs[SEED_ATTR]) for t in theirs[3:]}
    assert tagged == {(r.number, r.confirms, r.params["seed"]) for r in runs}
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in theirs)
    study = optuna.load_study(study_name="confirmed", storage=normalize_database_url(sqlite_url))
    assert study.user_attrs[CONFIRMED_BEST_ATTR]["trial"] == best["trial"]
