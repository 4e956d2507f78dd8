"""The few errors hpo-service raises on purpose; each entry point turns them into one clear line."""

from __future__ import annotations


class HpoError(Exception):
    """Base class of every error hpo-service raises on purpose."""


class DefinitionError(HpoError, ValueError):
    """A study definition (or the data it points at) is not usable.

    ``field`` is the dotted path of the offending key, such as ``dataset.label_field``.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NotFoundError(HpoError, KeyError):
    """A study (or preset, or trial) that was asked for does not exist."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else ""


class AlreadyExistsError(HpoError, ValueError):
    """A study with that name already exists."""


class ConflictError(HpoError):
    """The study is in a state that does not allow this (cancel a finished one, delete a running
    one)."""


class PayloadTooLargeError(HpoError, ValueError):
    """A submitted document is larger than the service accepts."""


class SchemaOutdatedError(HpoError, RuntimeError):
    """The database holds an older schema of hpo-service's tables."""


class StorageError(HpoError, RuntimeError):
    """The database failed or cannot be reached; nothing was changed. Worth retrying."""


class RayUnavailableError(HpoError, ConnectionError):
    """The Ray cluster named in the settings cannot be reached."""


class ServiceError(HpoError):
    """hpo-service answered a client's request with an error, or could not be reached.

    ``status_code`` is the HTTP status of the answer, or ``None`` when none came.
    """

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
