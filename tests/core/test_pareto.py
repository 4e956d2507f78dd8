"""Several objectives: the Pareto front of a study's trials, and the rule that picks one."""

from __future__ import annotations

import pytest
from records import trial_record

from hpo_service.core.definition import Objective, Pick
from hpo_service.core.pareto import describe, pareto_front, pick
from hpo_service.core.records import TrialRecord, TrialState

ACCURACY_AND_TIME = [
    Objective(metric="accuracy").resolved(),
    Objective(metric="train_seconds").resolved(),
]


def trial(
    number: int,
    accuracy: float | None,
    seconds: float | None,
    state: TrialState = TrialState.COMPLETE,
    confirms: int | None = None,
) -> TrialRecord:
    return trial_record(
        number, accuracy, state=state, accuracy=accuracy, train_seconds=seconds, confirms=confirms
    )


TRIALS = [
    trial(0, 0.80, 10.0),  # fast
    trial(1, 0.90, 40.0),  # accurate
    trial(2, 0.85, 11.0),  # between
    trial(3, 0.84, 30.0),  # beaten by 2 on both: off the front
    trial(4, 0.90, 50.0),  # as accurate as 1 but slower: off the front
    trial(5, 0.89, 12.0),  # nearly as accurate as 1, much faster
    trial(6, 0.99, 1.0, state=TrialState.EARLY_STOPPED),  # never ran its budget
    trial(7, 0.99, 1.0, state=TrialState.FAILED),
    trial(8, 0.99, 1.0, confirms=1),  # a confirmation run is not a search trial
    trial(9, 0.95, None),  # no time recorded: cannot be placed
]


def numbers(trials: list[TrialRecord]) -> list[int]:
    return [t.number for t in trials]


def test_the_front_holds_the_complete_search_trials_nothing_beats_on_both() -> None:
    assert numbers(pareto_front(TRIALS, ACCURACY_AND_TIME)) == [1, 5, 2, 0]


def test_directions_decide_what_better_means() -> None:
    both_up = [
        Objective(metric="accuracy").resolved(),
        Objective(metric="train_seconds", direction="maximize"),
    ]
    assert numbers(pareto_front(TRIALS, both_up)) == [4]
    assert numbers(pareto_front(TRIALS, [ACCURACY_AND_TIME[1]])) == [0]


def test_equal_points_are_all_on_the_front() -> None:
    twins = [trial(0, 0.9, 10.0), trial(1, 0.9, 10.0), trial(2, 0.8, 20.0)]
    assert numbers(pareto_front(twins, ACCURACY_AND_TIME)) == [0, 1]


def test_lexicographic_picks_the_best_primary_then_the_next() -> None:
    front = pareto_front(TRIALS, ACCURACY_AND_TIME)
    assert pick(front, ACCURACY_AND_TIME, Pick()).number == 1  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("tolerance", "picked"),
    [(0.0, 1), (0.005, 1), (0.01, 5), (0.05, 2), (0.10, 0), (1.0, 0)],
)
def test_within_picks_the_fastest_close_enough_to_the_best_accuracy(
    tolerance: float, picked: int
) -> None:
    front = pareto_front(TRIALS, ACCURACY_AND_TIME)
    rule = Pick(rule="within", tolerance=tolerance)
    assert pick(front, ACCURACY_AND_TIME, rule).number == picked  # type: ignore[union-attr]


def test_no_complete_trial_picks_nothing() -> None:
    assert pick(pareto_front(TRIALS[6:9], ACCURACY_AND_TIME), ACCURACY_AND_TIME, Pick()) is None


def test_the_rule_in_words_names_every_objective() -> None:
    assert describe(ACCURACY_AND_TIME, Pick()) == (
        "the Pareto front's best accuracy (maximize), ties by train_seconds (minimize)"
    )
    assert describe(ACCURACY_AND_TIME, Pick(rule="within", tolerance=0.01)) == (
        "of the Pareto front's trials within 0.01 of the best accuracy, "
        "the best on train_seconds (minimize)"
    )
