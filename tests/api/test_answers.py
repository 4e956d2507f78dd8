"""Kept answers: requests that want the same answer at the same study version while it is being
built wait for it instead of building it again (a narrow unit test: the HTTP behaviour is in
test_pages.py)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from hpo_service.api.answers import AnswerCache
from hpo_service.db.store import StudyVersion

VERSION = StudyVersion(1, 7)


def test_concurrent_requests_share_one_build_and_a_kept_answer_is_not_built_again() -> None:
    answers, builds = AnswerCache(), []

    def build() -> tuple[str, bool]:
        builds.append(threading.get_ident())
        time.sleep(0.2)  # the others arrive while it builds
        return '{"n": 1}', True

    with ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(lambda _: answers.answer("study", VERSION, build), range(8)))
    assert bodies == ['{"n": 1}'] * 8 and len(builds) == 1
    assert answers.answer("study", VERSION, build) == '{"n": 1}' and len(builds) == 1
    assert answers.answer("study", StudyVersion(1, 8), build) and len(builds) == 2  # a write


def test_an_answer_not_to_keep_is_built_again_by_the_next_request() -> None:
    answers, count = AnswerCache(), iter(range(100))

    def build() -> tuple[str, bool]:
        return str(next(count)), False

    assert [answers.answer("study", VERSION, build) for _ in range(3)] == ["0", "1", "2"]


def test_those_waiting_on_a_build_that_fails_get_its_error_and_the_next_request_builds() -> None:
    answers, started = AnswerCache(), threading.Event()

    def failing() -> tuple[str, bool]:
        started.set()
        time.sleep(0.2)
        raise LookupError("no study named 'study'")

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(answers.answer, "study", VERSION, failing)
        started.wait()
        second = pool.submit(answers.answer, "study", VERSION, lambda: ("never", True))
        for future in (first, second):
            with pytest.raises(LookupError, match="no study"):
                future.result()
    assert answers.answer("study", VERSION, lambda: ("built", True)) == "built"


def test_only_the_answers_used_last_are_kept() -> None:
    answers, builds = AnswerCache(size=2), []

    def build(key: str) -> tuple[str, bool]:
        builds.append(key)
        return key, True

    for key in ("a", "b", "a", "c", "a", "b"):
        answers.answer(key, VERSION, lambda key=key: build(key))
    assert builds == ["a", "b", "c", "b"]  # "b" was the least recently used when "c" came
