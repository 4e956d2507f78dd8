"""The ``hpo`` command."""

from hpo_service.cli import admin, local, remote  # noqa: F401 (each module adds its commands)
from hpo_service.cli.common import app

__all__ = ["app"]
