"""The FastAPI application: API under /v1, health probes, and the Optuna dashboard at the root.

Built by ``create_app(settings)`` in the entry point. This process never imports torch or
transformers: studies run in driver processes that the scheduler starts.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import optuna_dashboard
from a2wsgi import WSGIMiddleware
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy import text
from starlette.routing import Match, Mount

from hpo_service import __version__
from hpo_service.api.answers import AnswerCache
from hpo_service.api.auth import TokenAuth, auth_required, login_router
from hpo_service.api.errors import error_response
from hpo_service.api.metrics import add_metrics
from hpo_service.api.routes import router
from hpo_service.api.schemas import Readiness
from hpo_service.core.definition import error_items
from hpo_service.core.errors import DefinitionError, HpoError
from hpo_service.core.settings import Settings, unreachable
from hpo_service.db.optuna_storage import optuna_storage
from hpo_service.db.store import Store
from hpo_service.service.scheduler import Scheduler


def create_app(settings: Settings, schedule: bool = True) -> FastAPI:
    """The service on ``settings``; ``schedule=False`` (or ``max_running_studies`` 0) serves
    the API without running studies, and without touching those another service runs."""
    store = Store.open(settings.database_url)  # refuses an outdated schema before serving

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # What is loaded by now (the modules: about 230,000 objects) lives as long as the
        # process: left out of the garbage collector's full passes, which took 90 ms each and
        # were the slowest 1% of requests.
        gc.collect()
        gc.freeze()
        running = schedule and settings.max_running_studies > 0
        scheduler = Scheduler(settings, store) if running else None
        app.state.scheduler = scheduler
        if scheduler is not None:
            scheduler.start()
        try:
            yield
        finally:
            if scheduler is not None:
                scheduler.stop()

    app = FastAPI(
        title="hpo-service",
        version=__version__,
        summary="Hyperparameter optimization studies for fine-tuning transformer classifiers.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.answers = AnswerCache()
    app.include_router(router)
    app.include_router(login_router)
    _add_probes(app, settings, store)
    add_metrics(app, store)
    _add_error_handlers(app)
    _answer_unknown_api_paths(app)
    # Last: the dashboard owns every path the API does not (/dashboard, /api, /static, /csv).
    dashboard = optuna_dashboard.wsgi(optuna_storage(settings.database_url))
    app.mount("/", WSGIMiddleware(_default_accept_encoding(dashboard)))
    if auth_required(settings.host, settings.auth):
        app.add_middleware(TokenAuth, store=store)  # in front of everything, dashboard included
    return app


def _default_accept_encoding(wsgi_app: Any) -> Any:
    """optuna-dashboard 0.21 answers 500 for /static files asked without Accept-Encoding."""

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        environ.setdefault("HTTP_ACCEPT_ENCODING", "identity")
        return wsgi_app(environ, start_response)

    return app


def _add_probes(app: FastAPI, settings: Settings, store: Store) -> None:
    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], response_model=Readiness)
    def readyz() -> JSONResponse:
        """The database answers, and so does the Ray cluster if one is configured."""
        checks = {"database": _check_database(store), "ray": _check_ray(settings)}
        ready = all(value.startswith("ok") for value in checks.values())
        return JSONResponse(checks, status_code=200 if ready else 503)


def _check_database(store: Store) -> str:
    try:
        with store.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as error:  # any failure means not ready; the probe says which
        return f"unreachable: {type(error).__name__}"
    return "ok"


def _check_ray(settings: Settings) -> str:
    address = settings.ray_jobs_address or settings.ray_address
    if not address:
        return "ok: the service's own local Ray"
    reason = unreachable(address, timeout=3)
    return f"ok: {address}" if reason is None else f"unreachable: {address}: {reason}"


def _answer_unknown_api_paths(app: FastAPI) -> None:
    """A path under /v1 that no endpoint serves answers in JSON, as the API's errors do (not
    with the dashboard's HTML page): 405 with ``Allow`` where other methods serve it, else 404."""

    def unknown_api_path(request: Request) -> JSONResponse:
        path = request.url.path
        allowed = [m for m in _HTTP_METHODS if _served(app, {**request.scope, "method": m})]
        if allowed:
            return JSONResponse(
                {"detail": f"{request.method} is not allowed on {path}"},
                status_code=405,
                headers={"Allow": ", ".join(allowed)},
            )
        return JSONResponse({"detail": f"no such endpoint: {path}"}, status_code=404)

    for unknown in _UNKNOWN_API_PATHS:
        app.add_api_route(
            unknown, unknown_api_path, methods=list(_HTTP_METHODS), include_in_schema=False
        )


_UNKNOWN_API_PATHS = ("/v1", "/v1/{path:path}")
_HTTP_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _served(app: FastAPI, scope: dict[str, Any]) -> bool:
    """Whether an endpoint of the API (not the dashboard, not the answer above) serves it."""
    return any(
        route.matches(scope)[0] == Match.FULL
        for route in app.router.routes
        if not isinstance(route, Mount) and getattr(route, "path", None) not in _UNKNOWN_API_PATHS
    )


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DefinitionError)
    async def definition_error(request: Request, error: DefinitionError) -> JSONResponse:
        loc = error.field.split(".")
        return JSONResponse({"detail": [{"loc": loc, "msg": error.message}]}, status_code=422)

    @app.exception_handler(ValidationError)
    async def validation_error(request: Request, error: ValidationError) -> JSONResponse:
        detail = [{"loc": loc.split("."), "msg": msg} for loc, msg in error_items(error)]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def request_validation_error(
        request: Request, error: RequestValidationError
    ) -> JSONResponse:
        """A bad path or query parameter: its location and what is wrong, in the shape of every
        other 422 (FastAPI's own would echo the value given, however long)."""
        detail = [{"loc": list(item["loc"]), "msg": item["msg"]} for item in error.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(RecursionError)
    async def recursion_error(request: Request, error: RecursionError) -> JSONResponse:
        # A backstop: documents are checked for depth when read (core.presets.parse_document).
        return JSONResponse({"detail": "the request is nested too deeply"}, status_code=422)

    @app.exception_handler(HpoError)
    async def hpo_error(request: Request, error: HpoError) -> JSONResponse:
        return error_response(error)
