"""The HTTP answer to each error hpo-service raises on purpose, in one place."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from hpo_service.core.errors import (
    AlreadyExistsError,
    ConflictError,
    HpoError,
    NotFoundError,
    PayloadTooLargeError,
    StorageError,
)

STATUS = {
    NotFoundError: 404,
    AlreadyExistsError: 409,
    ConflictError: 409,
    PayloadTooLargeError: 413,
    StorageError: 503,  # the database is down or failing: worth retrying later
}


def error_response(error: HpoError) -> JSONResponse:
    """``{"detail": "<one line>"}`` with the error's status; 400 for any other kind."""
    code = next((c for kind, c in STATUS.items() if isinstance(error, kind)), 400)
    return JSONResponse({"detail": str(error)}, status_code=code)
