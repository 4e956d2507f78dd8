"""A client of hpo-service's REST API, for the ``hpo`` command and for scripts.

Answers come back as the API's own response models; every failure is a ``ServiceError`` with
one line built from the server's answer (or saying the server could not be reached).
"""

from __future__ import annotations

import re
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from hpo_service.api.schemas import (
    ParetoFront,
    StudyDetail,
    StudyPage,
    StudySummary,
    TrialDetail,
    TrialPage,
    TrialSummary,
)
from hpo_service.core.definition import NAME_PATTERN
from hpo_service.core.errors import DefinitionError, ServiceError

DEFAULT_URL = "http://127.0.0.1:8000"
M = TypeVar("M", bound=BaseModel)


class ServiceClient:
    """hpo-service at ``base_url`` (such as ``http://127.0.0.1:8000``), over HTTP, with an API
    token where the service requires one."""

    def __init__(
        self, base_url: str = DEFAULT_URL, token: str | None = None, timeout: float = 30.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        if token and not re.fullmatch(r"[!-~]+", token):  # it would go into an HTTP header
            raise ServiceError(
                "the API token (--token or HPO_TOKEN) is not one: a token is printable ASCII, "
                "with no spaces or line breaks"
            )
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            self._http = httpx.Client(
                base_url=self.base_url,
                headers=headers,
                timeout=httpx.Timeout(timeout, connect=5.0),
            )
        except (httpx.InvalidURL, TypeError, ValueError) as error:
            raise ServiceError(f"not a URL of hpo-service: {base_url!r}: {error}") from error

    def submit(self, document: dict[str, Any]) -> StudySummary:
        """Queue a study; raises ``ServiceError`` naming each bad field of the definition."""
        return self._model(StudySummary, "POST", "/v1/studies", json=document)

    def studies(self, status: str | None = None, offset: int = 0, limit: int = 50) -> StudyPage:
        """One page of studies in order of submission, optionally only those in ``status``."""
        params: dict[str, Any] = {"offset": offset, "limit": limit}
        if status is not None:
            params["status"] = status
        return self._model(StudyPage, "GET", "/v1/studies", params=params)

    def study(self, name: str) -> StudyDetail:
        return self._model(StudyDetail, "GET", _study_path(name))

    def trials(self, name: str, offset: int = 0, limit: int = 100) -> TrialPage:
        """One page of a study's trials, by number."""
        params = {"offset": offset, "limit": limit}
        return self._model(TrialPage, "GET", f"{_study_path(name)}/trials", params=params)

    def all_trials(self, name: str, page_size: int = 1000) -> list[TrialSummary]:
        """Every trial of a study, a page at a time."""
        items: list[TrialSummary] = []
        while True:
            page = self.trials(name, offset=len(items), limit=page_size)
            items += page.items
            if not page.items or len(items) >= page.total:
                return items

    def trial(self, name: str, number: int) -> TrialDetail:
        return self._model(TrialDetail, "GET", f"{_study_path(name)}/trials/{number}")

    def pareto_front(self, name: str) -> ParetoFront:
        """The study's Pareto front over its objectives, and the trial its rule picks."""
        return self._model(ParetoFront, "GET", f"{_study_path(name)}/pareto-front")

    def best(self, name: str, fmt: str = "json") -> str:
        """The best configuration as the server renders it in ``fmt`` (``json``, ``yaml``)."""
        return self._request("GET", f"{_study_path(name)}/best", params={"format": fmt}).text

    def cancel(self, name: str) -> StudySummary:
        return self._model(StudySummary, "POST", f"{_study_path(name)}/cancel")

    def delete(self, name: str) -> None:
        self._request("DELETE", _study_path(name))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _model(self, model: type[M], method: str, path: str, **kwargs: Any) -> M:
        response = self._request(method, path, **kwargs)
        try:
            return model.model_validate_json(response.content)
        except ValidationError as error:
            raise ServiceError(
                f"unexpected answer from {response.request.url}: not a {model.__name__}; "
                f"is {self.base_url} hpo-service, of this client's version?",
                response.status_code,
            ) from error

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except (httpx.HTTPError, httpx.InvalidURL) as error:
            reason = str(error) or type(error).__name__
            raise ServiceError(
                _one_line(f"cannot reach hpo-service at {self.base_url}: {reason}")
            ) from error
        if response.is_error:
            raise ServiceError(_one_line(_describe(response)), response.status_code)
        return response


def _study_path(name: str) -> str:
    """The study's URL path; a name no study can have is refused here, as the server would
    route some (``a/trials``, ``..``) to other endpoints."""
    if not re.fullmatch(NAME_PATTERN, name):
        raise DefinitionError(
            "name", f"{name!r} is not a study name (letters, digits, `.`, `_`, `-`; at most 128)"
        )
    return f"/v1/studies/{quote(name, safe='')}"


def _describe(response: httpx.Response) -> str:
    """The server's error: ``loc.dotted: msg`` per item of a 422, else its ``detail``."""
    try:
        detail = response.json()["detail"]
    except (ValueError, KeyError, TypeError):
        detail = None
    if isinstance(detail, list) and detail:
        return "; ".join(_item(item) for item in detail)
    if isinstance(detail, str) and detail:
        return detail
    request = response.request
    status = f"{response.status_code} {response.reason_phrase}"
    return f"HTTP {status} from {request.method} {request.url}"


def _item(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    loc = ".".join(str(part) for part in item.get("loc", []))
    msg = str(item.get("msg", item))
    return f"{loc}: {msg}" if loc else msg


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())
