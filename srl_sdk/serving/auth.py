"""API keys: `Authorization: Bearer <key>`, compared in constant time; who may read which trace.

`/health` stays open so load balancers and orchestrators can probe it without a secret; every
route of the API (reason, chat, traces, models, metrics, info) needs a key when keys are
configured. FastAPI's own `/docs` and `/openapi.json` stay open too: a browser opening the docs
cannot send a bearer header, and they describe the API without revealing a key, the store or
a model path (tests/test_security.py checks that).

Traces are private to the key that made them: the store records a salted SHA-256 of the key as
the trace's owner (never the key itself), and a key reads only its own traces unless it is one
of `admin_keys`. With no keys configured (loopback only) there is one user and no owner.
"""

from __future__ import annotations

import hashlib
import hmac

OPEN_PATHS = ("/health",)
OWNER_SALT = b"srl-sdk trace owner v1\0"


def key_matches(keys: list[str], presented: str) -> bool:
    """True if `presented` equals one of `keys`; every key is compared, so timing leaks nothing."""
    given = presented.encode("utf-8")
    found = False
    for key in keys:
        found |= hmac.compare_digest(key.encode("utf-8"), given)
    return found


def check_bearer(keys: list[str], path: str, authorization: str | None) -> None:
    """Raise a 401 HTTPException unless the request carries a valid key (or none are configured)."""
    from fastapi import HTTPException

    if not keys or path in OPEN_PATHS:
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(
            status_code=401,
            detail="missing API key: send the header 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not key_matches(keys, token.strip()):
        raise HTTPException(
            status_code=401,
            detail="invalid API key: check the key you pass in 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


def bearer_token(authorization: str | None) -> str | None:
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def owner_id(key: str) -> str:
    """What the store records for the key that made a trace: a hash, so the store holds no key."""
    return hashlib.sha256(OWNER_SALT + key.encode("utf-8")).hexdigest()


def trace_owner(keys: list[str], authorization: str | None) -> str | None:
    """The owner to record for a request's traces (None when the server has no keys)."""
    token = bearer_token(authorization)
    return owner_id(token) if keys and token else None


def trace_reader(keys: list[str], admin_keys: list[str], authorization: str | None) -> str | None:
    """Whose traces a request may read: its own owner id, or None for all (admin key, or no keys)."""
    token = bearer_token(authorization)
    if not keys or (token is not None and admin_keys and key_matches(admin_keys, token)):
        return None
    return owner_id(token or "")
