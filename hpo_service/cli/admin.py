"""`hpo db` and `hpo token`: the database's schema and API tokens."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from hpo_service.errors import HpoError

if TYPE_CHECKING:
    pass
from hpo_service.cli.common import (
    DatabaseUrl,
    clear_errors,
    db_app,
    err,
    out,
    settings_for,
    store_for,
    token_app,
)


@db_app.command("upgrade")
@clear_errors
def db_upgrade(database_url: DatabaseUrl = None) -> None:
    """Create or upgrade hpo-service's tables to this version's schema."""
    from hpo_service.db.migrate import current_revision, upgrade
    from hpo_service.db.store import make_engine

    engine = make_engine(settings_for(database_url).database_url)
    upgrade(engine)
    out.print(f"database schema at revision {current_revision(engine)}")


@token_app.command("create")
@clear_errors
def token_create(
    name: Annotated[str, typer.Argument(help="What the token is for, e.g. ci.")],
    scope: Annotated[str, typer.Option(help="read, write or admin.")] = "read",
    database_url: DatabaseUrl = None,
) -> None:
    """Create an API token and print its secret (shown only this once)."""
    from hpo_service.db.tables import Scope
    from hpo_service.tokens import create_token

    if scope not in {s.value for s in Scope}:
        raise HpoError(f"--scope must be read, write or admin, not {scope!r}")
    record, secret = create_token(store_for(database_url), name, Scope(scope))
    err.print(f"token {record.name} ({record.scope.value}); its secret, shown only now:")
    typer.echo(secret)


@token_app.command("list")
@clear_errors
def token_list(database_url: DatabaseUrl = None) -> None:
    """List API tokens (never their secrets)."""
    table = Table("name", "starts with", "scope", "created", "revoked")
    for record in store_for(database_url).tokens():
        revoked = record.revoked_at.isoformat(timespec="seconds") if record.revoked_at else ""
        table.add_row(
            record.name,
            record.prefix + "…",
            record.scope.value,
            record.created_at.isoformat(timespec="seconds"),
            revoked,
        )
    out.print(table)


@token_app.command("revoke")
@clear_errors
def token_revoke(
    name: Annotated[str, typer.Argument(help="The token's name.")],
    database_url: DatabaseUrl = None,
) -> None:
    """Revoke an API token for good."""
    store_for(database_url).revoke_token(name)
    out.print(f"token {name} revoked")
