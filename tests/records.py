"""Trial records built by hand, for the pure logic that ranks them (no database)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hpo_service.core.definition import METRICS
from hpo_service.core.records import TrialRecord, TrialState

NOW = datetime(2026, 11, 23, tzinfo=UTC)


def trial_record(number: int, objective: float | None, **fields: Any) -> TrialRecord:
    """A finished trial: complete unless ``state`` says otherwise, every metric ``None`` unless
    given, the learning rate 1e-3 unless ``params`` say otherwise."""
    values: dict[str, Any] = {
        "number": number,
        "state": TrialState.COMPLETE,
        "params": {"learning_rate": 1e-3},
        "objective": objective,
        **dict.fromkeys(METRICS),
        "epochs": 2,
        "started_at": NOW,
        "finished_at": NOW,
        "error": None,
    }
    return TrialRecord(**{**values, **fields})
