"""API keys: `Authorization: Bearer <key>`, compared in constant time.

`/health` stays open so load balancers and orchestrators can probe it without a secret; every
route of the API (reason, chat, traces, models, metrics, info) needs a key when keys are
configured. FastAPI's own `/docs` and `/openapi.json` stay open too: a browser opening the docs
cannot send a bearer header, and they describe the API without revealing a key, the store or
a model path (tests/test_security.py checks that).
"""

from __future__ import annotations

import hmac

OPEN_PATHS = ("/health",)


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
