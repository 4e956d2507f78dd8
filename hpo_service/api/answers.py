"""Answers about a study kept between requests, under the study's version (``StudyVersion``:
its row's id, and the revision that every write to the study or its trials increases).

A read first asks the database for the study's version (one query): while it is the version an
answer was kept under, that answer is served as it was serialized; after any write the next
read builds its answer again. The version is read before the answer is built, so a write in
between can only make a kept answer newer than its version, never older.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

from hpo_service.db.store import StudyVersion


class AnswerCache:
    """The ``size`` answers used last, each under the study version it was built at."""

    def __init__(self, size: int = 512) -> None:
        self.size = size
        self._answers: OrderedDict[Hashable, tuple[StudyVersion, str]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, version: StudyVersion) -> str | None:
        """The answer kept under ``key`` if it was built at ``version``."""
        with self._lock:
            kept = self._answers.get(key)
            if kept is None or kept[0] != version:
                return None
            self._answers.move_to_end(key)
            return kept[1]

    def put(self, key: Hashable, version: StudyVersion, body: str) -> None:
        with self._lock:
            self._answers[key] = (version, body)
            self._answers.move_to_end(key)
            while len(self._answers) > self.size:
                self._answers.popitem(last=False)
