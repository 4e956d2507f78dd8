"""Bearer-token authentication in front of everything the service serves, the Optuna dashboard
included: a token in the ``Authorization`` header, or in a cookie that the login page sets.

Scopes: ``read`` may look; ``write`` may also submit and cancel studies; ``admin`` may also
delete them and change anything through the dashboard's own API (which can delete studies and
tell trials). Health probes and the login page are open.
"""

from __future__ import annotations

import html
import ipaddress
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from hpo_service.api.errors import error_response
from hpo_service.api.routes import read_body
from hpo_service.core.errors import StorageError
from hpo_service.core.records import Scope as TokenScope
from hpo_service.db.store import Store
from hpo_service.service.tokens import scope_of_secret

COOKIE = "hpo_token"
OPEN_PATHS = {"/healthz", "/readyz", "/login", "/logout"}
LOGIN_BODY_BYTES = 4096  # a token and a path to go back to; the form is open to anyone


def auth_required(host: str, setting: str) -> bool:
    """Auth is on when asked for, and always when the service binds a non-loopback address."""
    return setting == "on" or not is_loopback(host)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def required_scope(method: str, path: str) -> TokenScope:
    if method in ("GET", "HEAD", "OPTIONS"):
        return TokenScope.READ
    if path.startswith("/v1/") and method != "DELETE":
        return TokenScope.WRITE
    return TokenScope.ADMIN  # deleting, and any change through the dashboard's API


class TokenAuth:
    """ASGI middleware: every request but the open paths needs a token of enough scope."""

    def __init__(self, app: ASGIApp, store: Store) -> None:
        self.app = app
        self.store = store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":  # none are served; refuse one rather than pass it on
            await send({"type": "websocket.close", "code": 1008})
            return
        request = Request(scope)
        secret = _presented_secret(request)
        granted = None
        if secret is not None:
            try:
                granted = await run_in_threadpool(scope_of_secret, self.store, secret)
            except StorageError as error:  # outside the app's error handlers
                await error_response(error)(scope, receive, send)
                return
        needed = required_scope(request.method, request.url.path)
        response = _refusal(request, secret, granted, needed)
        if response is not None:
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _presented_secret(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return request.cookies.get(COOKIE)


def _refusal(
    request: Request, secret: str | None, granted: TokenScope | None, needed: TokenScope
) -> Response | None:
    if granted is not None and granted.allows(needed):
        return None
    if granted is not None:
        message = f"this needs a token of scope {needed.value}; this token's is {granted.value}"
        return JSONResponse({"detail": message}, status_code=403)
    if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
        wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        target = quote(wanted, safe="/")
        return RedirectResponse(f"/login?next={target}", status_code=303)
    message = "a bearer token is required" if secret is None else "invalid or revoked token"
    return JSONResponse(
        {"detail": message}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
    )


login_router = APIRouter(include_in_schema=False)

_LOGIN_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>hpo-service: sign in</title></head>
<body style="font-family: sans-serif; max-width: 30em; margin: 4em auto">
<h1>hpo-service</h1>
<p>Paste an API token (<code>hpo token create NAME --scope read</code>).</p>
<form method="post" action="/login">
<input type="hidden" name="next" value="{next}">
<input type="password" name="token" size="50" autofocus required>
<button type="submit">Sign in</button>
</form>{error}
</body></html>"""


@login_router.get("/login")
def login_page(next: str = "/dashboard") -> HTMLResponse:
    return _login_form(next, failed=False)


def _login_form(target: str, failed: bool) -> HTMLResponse:
    error = '<p style="color: #b00">That token is unknown or revoked.</p>' if failed else ""
    return HTMLResponse(_LOGIN_PAGE.format(next=html.escape(_local(target)), error=error))


@login_router.post("/login")
async def login(request: Request) -> Response:
    body = await read_body(request, LOGIN_BODY_BYTES)
    form = parse_qs(body.decode("utf-8", errors="replace"))
    secret = form.get("token", [""])[0].strip()
    target = _local(form.get("next", ["/dashboard"])[0])
    store: Store = request.app.state.store
    if not secret or await run_in_threadpool(scope_of_secret, store, secret) is None:
        return _login_form(target, failed=True)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        secret,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        max_age=7 * 24 * 3600,
    )
    return response


@login_router.post("/logout")
def logout() -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE)
    return response


def _local(target: Any) -> str:
    """Only redirect within this site."""
    text = str(target)
    local = text.startswith("/") and not text.startswith("//")
    return text if local and "\\" not in text and text.isprintable() else "/dashboard"
