"""API tokens: random secrets shown once, stored as SHA-256 hashes, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from hpo_service.core.definition import NAME_PATTERN
from hpo_service.core.errors import HpoError
from hpo_service.core.records import Scope, TokenRecord
from hpo_service.db.store import Store

SECRET_PREFIX = "hpo_"
PREFIX_LENGTH = 12  # "hpo_" and 8 random characters: finds the row, reveals little


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(store: Store, name: str, scope: Scope) -> tuple[TokenRecord, str]:
    """A new token and its secret (the only time the secret is seen). Its name follows the
    rule of study names: letters, digits, `.`, `_` and `-`, up to 128."""
    if not re.fullmatch(NAME_PATTERN, name):
        raise HpoError(
            f"a token's name takes letters, digits, '.', '_' and '-' (up to 128, the first a "
            f"letter or digit), but got {name[:40]!r}" + ("..." if len(name) > 40 else "")
        )
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    record = store.add_token(name, hash_secret(secret), secret[:PREFIX_LENGTH], scope)
    return record, secret


def scope_of_secret(store: Store, secret: str) -> Scope | None:
    """The scope a presented secret grants, or ``None`` for an unknown or revoked one."""
    if not secret.startswith(SECRET_PREFIX) or len(secret) <= PREFIX_LENGTH:
        return None
    digest = hash_secret(secret)
    for stored, scope in store.live_token_hashes(secret[:PREFIX_LENGTH]):
        if hmac.compare_digest(stored, digest):
            return scope
    return None
