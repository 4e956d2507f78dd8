"""The package boundaries: one package per process, checked statically and at run time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_import_contracts_hold() -> None:
    """The import-linter contracts in pyproject.toml: pure core, SQL-only db/, light API."""
    result = subprocess.run(
        [BIN / "lint-imports", "--no-cache"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_client_loads_no_database_ray_or_torch() -> None:
    """`hpo submit` and friends, and ServiceClient, run without the server's libraries."""
    code = (
        "import sys, hpo_service.client, hpo_service.cli.remote\n"
        "heavy = {'sqlalchemy', 'alembic', 'ray', 'torch', 'transformers', 'optuna'}\n"
        "print(sorted(heavy & {name.split('.')[0] for name in sys.modules}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
