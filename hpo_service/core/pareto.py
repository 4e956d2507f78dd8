"""Several objectives: a study's Pareto front, and the rule that picks one point of it. Pure: it
works on the store's trial records.

A trial is on the front when it is a complete search trial with a value for every objective and
no other such trial is at least as good on every objective and better on one.
"""

from __future__ import annotations

from collections.abc import Sequence

from hpo_service.core.definition import Objective, Pick
from hpo_service.core.records import TrialRecord, TrialState

Point = tuple[float, ...]
FLOAT_SLACK = 1e-12  # 0.90 - 0.005 in floats still counts 0.895 as within the tolerance


def _oriented(trial: TrialRecord, goals: Sequence[Objective]) -> Point | None:
    """The trial's objective values turned so that larger is better on each; ``None`` when it
    lacks one."""
    values = [trial.metrics[goal.metric] for goal in goals]
    if any(value is None for value in values):
        return None
    return tuple(v if g.mode == "maximize" else -v for v, g in zip(values, goals, strict=True))  # type: ignore[operator]


def _dominates(a: Point, b: Point) -> bool:
    return all(x >= y for x, y in zip(a, b, strict=True)) and a != b


def pareto_front(trials: Sequence[TrialRecord], goals: Sequence[Objective]) -> list[TrialRecord]:
    """The Pareto-optimal complete search trials, best first on the first objective (ties by
    the next, then the lowest number). Trials with equal values are all on the front."""
    scored = []
    for trial in trials:
        if trial.state != TrialState.COMPLETE or trial.confirms is not None:
            continue
        point = _oriented(trial, goals)
        if point is not None:
            scored.append((point, trial))
    # Best first lexicographically: a trial can only be dominated by one sorted before it.
    scored.sort(key=lambda item: (tuple(-x for x in item[0]), item[1].number))
    front: list[tuple[Point, TrialRecord]] = []
    for point, trial in scored:
        if not any(_dominates(kept, point) for kept, _ in front):
            front.append((point, trial))
    return [trial for _, trial in front]


def pick(
    front: Sequence[TrialRecord], goals: Sequence[Objective], rule: Pick
) -> TrialRecord | None:
    """The one trial of ``front`` (as ``pareto_front`` orders it) that ``rule`` picks."""
    if not front:
        return None
    if rule.rule == "lexicographic" or len(goals) < 2:
        return front[0]
    assert rule.tolerance is not None
    scored = [(point, t) for t in front if (point := _oriented(t, goals)) is not None]
    best = max(point[0] for point, _ in scored)
    near = [(p, t) for p, t in scored if p[0] >= best - rule.tolerance - FLOAT_SLACK]
    # The rest of the objectives in order, then the first, then the lowest number.
    chosen = min(
        near, key=lambda item: (tuple(-x for x in item[0][1:]), -item[0][0], item[1].number)
    )
    return chosen[1]


def describe(goals: Sequence[Objective], rule: Pick) -> str:
    """The rule in words, as the best-config document and the CLI state it."""
    first, rest = goals[0], goals[1:]
    if rule.rule == "within" and rest:
        others = ", then ".join(f"{g.metric} ({g.mode})" for g in rest)
        return (
            f"of the Pareto front's trials within {rule.tolerance} of the best {first.metric}, "
            f"the best on {others}"
        )
    others = "".join(f", ties by {g.metric} ({g.mode})" for g in rest)
    return f"the Pareto front's best {first.metric} ({first.mode}){others}"
