"""Answers about a study kept between requests, under the study's version (``StudyVersion``:
its row's id, and the revision that every write to the study or its trials increases).

A read first asks the database for the study's version (one query): while it is the version an
answer was kept under, that answer is served as it was serialized; after any write the next
read builds its answer again. The version is read before the answer is built, so a write in
between can only make a kept answer newer than its version, never older.

Requests that want an answer another request is building for the same version wait for that
one instead of building it too: after a write, 20 clients polling a study build its answer
once, not 20 times at once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future

from hpo_service.db.store import StudyVersion

Build = Callable[[], tuple[str, bool]]  # -> (the serialized answer, whether to keep it)


class AnswerCache:
    """The ``size`` answers used last, each under the study version it was built at."""

    def __init__(self, size: int = 512) -> None:
        self.size = size
        self._answers: OrderedDict[Hashable, tuple[StudyVersion, str]] = OrderedDict()
        self._building: dict[tuple[Hashable, StudyVersion], Future[str]] = {}
        self._lock = threading.Lock()

    def answer(self, key: Hashable, version: StudyVersion, build: Build) -> str:
        """The answer under ``key`` at ``version``: the one kept, else the one a concurrent
        request is building (its error, if it fails), else ``build()``'s, kept if it says so."""
        with self._lock:
            kept = self._answers.get(key)
            if kept is not None and kept[0] == version:
                self._answers.move_to_end(key)
                return kept[1]
            building = self._building.get((key, version))
            if building is None:
                self._building[(key, version)] = mine = Future[str]()
        if building is not None:
            return building.result()
        try:
            body, keep = build()
        except BaseException as error:
            mine.set_exception(error)
            raise
        else:
            mine.set_result(body)
            if keep:
                self._put(key, version, body)
            return body
        finally:
            with self._lock:
                del self._building[(key, version)]

    def _put(self, key: Hashable, version: StudyVersion, body: str) -> None:
        with self._lock:
            self._answers[key] = (version, body)
            self._answers.move_to_end(key)
            while len(self._answers) > self.size:
                self._answers.popitem(last=False)
