"""API tokens in front of everything a real `hpo serve` (HPO_AUTH=on) serves: every endpoint,
the Optuna dashboard included, against every kind of caller; the login page and its cookie; when
auth is on by default; and the `hpo token` commands."""

from __future__ import annotations

import html
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import optuna
import pytest
from fastapi.testclient import TestClient
from servers import BIN, Service

from hpo_service.api.app import create_app
from hpo_service.core.presets import resolve_definition
from hpo_service.core.records import Scope, StudyStatus, TrialState
from hpo_service.core.settings import Settings, normalize_database_url
from hpo_service.db.optuna_storage import optuna_storage
from hpo_service.db.store import Store
from hpo_service.service.tokens import create_token

# In study x's definition: a refused answer that showed any of x's data would show this.
MARKER = "marker-model-7f3c9a"
CALLERS = ("none", "bad", "revoked", "read", "write", "admin")
BAD_SECRET = "hpo_" + "A" * 43  # the shape of a secret, but no token has it


@dataclass
class Server:
    service: Service
    url: str  # the normalized database URL
    store: Store
    secrets: dict[str, str | None]  # caller -> the secret it presents

    @property
    def client(self) -> httpx.Client:
        return self.service.client

    def headers(self, caller: str) -> dict[str, str]:
        secret = self.secrets[caller]
        return {} if secret is None else {"Authorization": f"Bearer {secret}"}

    def state(self) -> tuple[list[tuple[str, StudyStatus]], list[str]]:
        """Every study with its status, and Optuna's studies: what a write could change."""
        ours = [(name, self.store.get_study(name).status) for name in self.store.study_names()]
        theirs = [s.study_name for s in optuna.get_all_study_summaries(self.url)]
        return ours, sorted(theirs)


def _add_finished_study(
    store: Store, name: str, files: tuple[Path, Path], with_trial: bool
) -> None:
    document = {
        "name": name,
        "model": {"name": f"/models/{MARKER}"},
        "dataset": {"train": str(files[0]), "eval": str(files[1])},
        "parameters": {"learning_rate": {"type": "categorical", "choices": [1e-3]}},
        "limits": {"trials": 1},
    }
    store.create_study(document, resolve_definition(document), status=StudyStatus.COMPLETED)
    if with_trial:
        store.start_trial(name, 0, {"learning_rate": 1e-3})
        store.record_epoch(name, 0, {"epoch": 1, "objective": 0.75, "accuracy": 0.75})
        store.finish_trial(name, 0, TrialState.COMPLETE)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, sentiment_files: tuple[Path, Path]
) -> Iterator[Server]:
    """A server with auth on, tokens of each scope and a revoked one, and finished studies:
    x (one complete trial; in Optuna too), doomed (for DELETE /v1) and, in Optuna only,
    dashboard-doomed (id 1, for the dashboard's DELETE)."""
    folder = tmp_path_factory.mktemp("auth")
    raw_url = f"sqlite:///{folder / 'hpo.db'}"
    url = normalize_database_url(raw_url)
    store = Store.open(url)
    secrets: dict[str, str | None] = {"none": None, "bad": BAD_SECRET}
    for scope in Scope:
        secrets[scope.value] = create_token(store, f"{scope.value}-token", scope)[1]
    secrets["revoked"] = create_token(store, "gone", Scope.ADMIN)[1]
    store.revoke_token("gone")
    _add_finished_study(store, "x", sentiment_files, with_trial=True)
    _add_finished_study(store, "doomed", sentiment_files, with_trial=False)
    storage = optuna_storage(url)
    doomed = optuna.create_study(study_name="dashboard-doomed", storage=storage)
    assert doomed._study_id == 1
    optuna.create_study(study_name="x", storage=storage, direction="maximize")
    with Service(raw_url, folder / "work", [sentiment_files[0].parent], HPO_AUTH="on") as running:
        yield Server(running, url, store, secrets)


# (method, path, JSON body or None, scope needed, status when allowed)
ENDPOINTS: list[tuple[str, str, Any, Scope, int]] = [
    ("GET", "/v1/studies", None, Scope.READ, 200),
    ("POST", "/v1/studies", {"name": "never-queued"}, Scope.WRITE, 422),
    ("GET", "/v1/studies/x", None, Scope.READ, 200),
    ("GET", "/v1/studies/x/trials", None, Scope.READ, 200),
    ("GET", "/v1/studies/x/trials/0", None, Scope.READ, 200),
    ("GET", "/v1/studies/x/best", None, Scope.READ, 200),
    ("POST", "/v1/studies/x/cancel", None, Scope.WRITE, 409),  # x has finished
    ("DELETE", "/v1/studies/doomed", None, Scope.ADMIN, 204),
    ("GET", "/v1/presets", None, Scope.READ, 200),
    ("GET", "/metrics", None, Scope.READ, 200),
    ("GET", "/docs", None, Scope.READ, 200),
    ("GET", "/openapi.json", None, Scope.READ, 200),
    ("GET", "/dashboard", None, Scope.READ, 200),
    ("GET", "/api/studies", None, Scope.READ, 200),
    ("GET", "/static/bundle.js", None, Scope.READ, 200),
    (
        "POST",
        "/api/studies",
        {"study_name": "made-in-dashboard", "directions": ["maximize"]},
        Scope.ADMIN,
        201,
    ),
    ("DELETE", "/api/studies/1", None, Scope.ADMIN, 204),
]


def _granted(caller: str) -> Scope | None:
    return Scope(caller) if caller in {s.value for s in Scope} else None


def _assert_no_data(answer: httpx.Response) -> None:
    """A refusal says why, and nothing else: no study, page, script or spec."""
    text = answer.text
    assert MARKER not in text and '"x"' not in text
    for leak in ("study_summaries", "<html", "<!doctype", "function", "openapi", "hpo_studies"):
        assert leak not in text.lower(), text[:300]
    if answer.status_code == 303:
        assert answer.content == b""
    else:
        assert answer.headers["content-type"] == "application/json"
        assert set(answer.json()) == {"detail"}


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize(
    ("method", "path", "body", "needed", "allowed_status"),
    ENDPOINTS,
    ids=[f"{m} {p}" for m, p, *_ in ENDPOINTS],
)
def test_every_endpoint_needs_a_token_of_enough_scope(
    server: Server,
    method: str,
    path: str,
    body: Any,
    needed: Scope,
    allowed_status: int,
    caller: str,
) -> None:
    headers = {"Accept-Encoding": "gzip", **server.headers(caller)}
    before = server.state()
    answer = server.client.request(method, path, json=body, headers=headers)
    granted = _granted(caller)
    if granted is None:
        assert answer.status_code == 401, answer.text
        assert answer.headers["www-authenticate"] == "Bearer"
    elif not granted.allows(needed):
        assert answer.status_code == 403, answer.text
        assert needed.value in answer.json()["detail"]
    else:
        assert answer.status_code not in (401, 403), answer.text
        assert answer.status_code == allowed_status, answer.text
        return
    _assert_no_data(answer)
    assert server.state() == before  # a refused write changed nothing


def test_allowed_reads_show_the_data(server: Server) -> None:
    read = server.headers("read")
    assert "x" in [
        s["name"] for s in server.client.get("/v1/studies", headers=read).json()["items"]
    ]
    assert server.client.get("/v1/studies/x/best", headers=read).json()["trial"] == 0
    page = server.client.get("/dashboard", headers=read)
    assert "<html" in page.text.lower()
    names = [
        s["study_name"]
        for s in server.client.get("/api/studies", headers=read).json()["study_summaries"]
    ]
    assert "x" in names


@pytest.mark.parametrize("caller", ["none", "bad", "revoked"])
@pytest.mark.parametrize("path", ["/dashboard", "/dashboard/studies/2", "/v1/studies"])
def test_a_browser_without_a_valid_token_is_sent_to_the_login_page(
    server: Server, caller: str, path: str
) -> None:
    headers = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8", **server.headers(caller)}
    answer = server.client.get(path, headers=headers)
    assert answer.status_code == 303
    assert answer.headers["location"] == f"/login?next={path}"
    _assert_no_data(answer)


def test_a_non_get_from_a_browser_is_refused_not_redirected(server: Server) -> None:
    answer = server.client.delete("/api/studies/2", headers={"Accept": "text/html"})
    assert answer.status_code == 401


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_probes_need_no_token(server: Server, path: str) -> None:
    answer = server.client.get(path)
    assert answer.status_code == 200, answer.text


# --- the login page ----------------------------------------------------------------------------


@pytest.fixture
def browser(server: Server) -> Iterator[httpx.Client]:
    """A client with its own cookie jar, like a browser."""
    with httpx.Client(base_url=server.service.url, timeout=30) as client:
        yield client


def test_login_page_is_a_form(browser: httpx.Client) -> None:
    page = browser.get("/login", params={"next": "/dashboard/studies/2"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<form method="post" action="/login">' in page.text
    assert 'name="token"' in page.text
    assert 'name="next" value="/dashboard/studies/2"' in page.text


def test_login_sets_a_cookie_that_reads_but_cannot_write(
    server: Server, browser: httpx.Client
) -> None:
    answer = browser.post("/login", data={"token": server.secrets["read"], "next": "/v1/studies"})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/v1/studies"
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith("hpo_token=")
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    assert browser.cookies.get("hpo_token") == server.secrets["read"]

    assert browser.get("/dashboard").status_code == 200
    assert browser.get("/api/studies").status_code == 200
    assert browser.get("/v1/studies").status_code == 200
    before = server.state()
    submitted = browser.post("/v1/studies", json={"name": "never-queued"})
    assert submitted.status_code == 403
    _assert_no_data(submitted)
    assert server.state() == before

    logout = browser.post("/logout")
    assert logout.status_code == 303
    assert logout.headers["location"] == "/login"
    cleared = logout.headers["set-cookie"]
    assert cleared.startswith("hpo_token=") and "max-age=0" in cleared.lower()
    assert "hpo_token" not in browser.cookies
    assert browser.get("/api/studies").status_code == 401


@pytest.mark.parametrize("caller", ["bad", "revoked"])
def test_login_with_an_unknown_token_shows_the_form_again(
    server: Server, browser: httpx.Client, caller: str
) -> None:
    answer = browser.post("/login", data={"token": server.secrets[caller], "next": "/dashboard"})
    assert answer.status_code == 200
    assert "unknown or revoked" in answer.text
    assert '<form method="post" action="/login">' in answer.text
    assert "set-cookie" not in answer.headers
    assert "hpo_token" not in browser.cookies


def test_login_without_a_token_sets_no_cookie(browser: httpx.Client) -> None:
    answer = browser.post("/login", data={"token": "", "next": "/dashboard"})
    assert answer.status_code == 200
    assert "set-cookie" not in answer.headers


def test_the_open_login_form_takes_no_large_body(server: Server, browser: httpx.Client) -> None:
    """Anyone may post to /login: it reads a token and a path, not megabytes."""
    token = server.secrets["read"]
    answer = browser.post("/login", data={"token": token, "next": "/dashboard" + "x" * 10_000})
    assert answer.status_code == 413 and "set-cookie" not in answer.headers
    assert answer.json()["detail"]


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example",
        "//evil.example/dashboard",
        "https://evil.example/",
        "/\\evil.example",
        "/\t/evil.example",
        "javascript:alert(1)",
    ],
)
def test_login_never_redirects_off_site(server: Server, browser: httpx.Client, target: str) -> None:
    page = browser.get("/login", params={"next": target})
    hidden = re.search(r'name="next" value="([^"]*)"', page.text)
    assert hidden is not None
    for sent in (target, html.unescape(hidden.group(1))):  # as asked, and as the form sends it
        answer = browser.post("/login", data={"token": server.secrets["read"], "next": sent})
        assert answer.status_code == 303
        location = answer.headers["location"]
        assert _stays_on(server.service.url, location), location


def _stays_on(site: str, target: str) -> bool:
    """Whether a browser that follows ``target`` from ``site`` stays there: it reads "\\" as
    "/" and drops tabs and newlines."""
    as_browser = target.replace("\\", "/").replace("\t", "").replace("\n", "").replace("\r", "")
    resolved = urlsplit(urljoin(site + "/login", as_browser))
    return (resolved.scheme, resolved.netloc) == urlsplit(site)[:2]


# --- when auth is on ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "required"),
    [
        ("0.0.0.0", True),
        ("::", True),
        ("10.1.2.3", True),
        ("hpo.example.com", True),
        ("127.0.0.1", False),
        ("::1", False),
        ("localhost", False),
    ],
)
def test_auth_is_on_unless_the_host_is_loopback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, host: str, required: bool
) -> None:
    monkeypatch.delenv("HPO_AUTH", raising=False)
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'hpo.db'}", host=host)
    assert settings.auth == "auto"
    with TestClient(create_app(settings, schedule=False)) as client:
        assert client.get("/healthz").status_code == 200
        studies = client.get("/v1/studies")
        dashboard = client.get("/api/studies")
        if required:
            assert studies.status_code == 401 and dashboard.status_code == 401
        else:
            assert studies.status_code == 200 and dashboard.status_code == 200


# --- the `hpo token` commands ------------------------------------------------------------------


def hpo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "hpo"), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_token_commands(server: Server) -> None:
    url = ("--database-url", server.url)
    created = hpo("token", "create", "ci-cli", "--scope", "write", *url)
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("hpo_") and "\n" not in secret
    bearer = {"Authorization": f"Bearer {secret}"}
    assert server.client.get("/v1/studies", headers=bearer).status_code == 200
    assert server.client.post("/v1/studies", json={}, headers=bearer).status_code == 422
    assert server.client.delete("/v1/studies/x", headers=bearer).status_code == 403

    listed = hpo("token", "list", *url)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if "ci-cli" in line)
    assert "write" in row
    assert secret not in listed.stdout + listed.stderr
    for name in ("read-token", "admin-token", "gone"):
        assert name in listed.stdout
    assert all(s not in listed.stdout for s in server.secrets.values() if s is not None)

    revoked = hpo("token", "revoke", "ci-cli", *url)
    assert revoked.returncode == 0, revoked.stderr
    refused = server.client.get("/v1/studies", headers=bearer)
    assert refused.status_code == 401
    _assert_no_data(refused)
    relisted = hpo("token", "list", *url).stdout
    assert next(line for line in relisted.splitlines() if "ci-cli" in line) != row  # revoked at

    unknown = hpo("token", "revoke", "no-such-token", *url)
    assert unknown.returncode != 0 and "no-such-token" in unknown.stdout + unknown.stderr
    duplicate = hpo("token", "create", "read-token", *url)
    assert duplicate.returncode != 0 and duplicate.stdout == ""
    for bad_name in ("", "a" * 129, "ci runner", ".ci"):
        refused_name = hpo("token", "create", bad_name, *url)
        assert refused_name.returncode == 2 and refused_name.stdout == "", bad_name
        assert "token's name" in refused_name.stderr and "Traceback" not in refused_name.stderr
