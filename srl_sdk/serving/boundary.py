"""The HTTP boundary: what the server refuses before a request reaches a route, and what it never
sends back.

Drive-by use: a web page may make a browser send a "simple" request (text/plain or form POST, a
GET) to 127.0.0.1 without asking first, and a page whose DNS name was rebound to 127.0.0.1 can
even read the answer. So POST bodies must be `application/json` (a browser preflights that, and
without `cors_origins` the preflight fails), and a Host header outside the allow-list (the
loopback names on a loopback bind) is refused before any route runs. This is what vLLM, TGI and
llama.cpp's server answer such requests with.

Malformed JSON is a 400, never a 500: nesting deeper than MAX_JSON_DEPTH, integers past Python's
int-from-string limit, NaN / Infinity and overflowing floats are refused while parsing.

Privacy: error bodies are built from the SDK's own error messages with the server's paths
removed; an exception the SDK did not raise on purpose is answered with a generic message (the
log keeps the exception).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Any

from srl_sdk.errors import SRLError
from srl_sdk.serving.schemas import ErrorReply

MAX_JSON_DEPTH = 32
JSON_MEDIA_TYPE = "application/json"
INTERNAL_MESSAGE = "the run failed with an internal error; the server log has the details"
# an absolute path of two parts or more (`/a/b`), not preceded by text that would make it a URL or a ratio
_PATH = re.compile(r"(?<![\w/.:~-])/(?:[^\s/'\"():;,]+/)+[^\s/'\"():;,]*")


def is_json_content_type(value: str | None) -> bool:
    """`application/json`, optionally with `charset=utf-8` (JSON is UTF-8, RFC 8259)."""
    if not value:
        return False
    media_type, *params = (part.strip().lower() for part in value.split(";"))
    if media_type != JSON_MEDIA_TYPE:
        return False
    for param in params:
        name, _, setting = param.partition("=")
        if name.strip() == "charset" and setting.strip().strip('"') not in ("utf-8", "utf8"):
            return False
    return True


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def parse_json(raw: bytes) -> Any:
    """JSON text -> data, or ErrorReply 400 for anything that is not plain, bounded JSON."""
    try:
        data = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError as exc:
        raise ErrorReply(400, "invalid_json", f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels") from exc
    except json.JSONDecodeError as exc:
        raise ErrorReply(400, "invalid_json", f"the body is not valid JSON ({exc}); send a JSON object") from exc
    except UnicodeDecodeError as exc:
        raise ErrorReply(400, "invalid_json", "the body is not UTF-8 text; send JSON encoded as UTF-8") from exc
    except ValueError as exc:  # Python's int-from-string limit, NaN, Infinity, 1e400
        raise ErrorReply(400, "invalid_json", "the body holds a number out of range (or NaN / Infinity); "
                                            "send plain JSON numbers") from exc
    if _too_deep(data):
        raise ErrorReply(400, "invalid_json", f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels")
    return data


def _too_deep(data: Any) -> bool:
    """Whether containers nest past MAX_JSON_DEPTH (checked without recursion, O(size))."""
    stack = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > MAX_JSON_DEPTH:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


# -- Host allow-list -------------------------------------------------------------------------------
def host_name(header: str) -> str:
    """`127.0.0.1:8000` -> `127.0.0.1`, `[::1]:8000` -> `::1`, `Example.COM.` -> `example.com`."""
    value = header.strip().lower()
    if value.startswith("["):
        name = value[1:].partition("]")[0]
    elif value.count(":") == 1:
        name = value.partition(":")[0]
    else:
        name = value
    return name.rstrip(".")


def host_allowed(header: str | None, names: tuple[str, ...]) -> bool:
    """Whether a Host header names this server. `*` allows any; `*.example.com` its subdomains."""
    if "*" in names:
        return True
    if not header:
        return False
    name = host_name(header)
    return any(name == allowed or (allowed.startswith("*.") and name.endswith(allowed[1:])) for allowed in names)


class HostGuard:
    """ASGI middleware: a request whose Host header is not in `names` gets a 400 JSON error."""

    def __init__(self, app: Any, names: tuple[str, ...]) -> None:
        self.app = app
        self.names = names

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or "*" in self.names:  # lifespan; no websocket routes exist
            await self.app(scope, receive, send)
            return
        raw = next((value for key, value in scope.get("headers", ()) if key == b"host"), b"")
        header = raw.decode("latin-1")
        if host_allowed(header, self.names):
            await self.app(scope, receive, send)
            return
        from fastapi.responses import JSONResponse

        from srl_sdk.serving import metrics

        metrics.REJECTED.labels("400").inc()
        error = ErrorReply(400, "invalid_host", f"this server does not answer to the host {header[:100]!r}; "
                                              "add the name to allowed_hosts in the server config")
        await JSONResponse(error.body(), status_code=400)(scope, receive, send)


# -- what error bodies may say ----------------------------------------------------------------------
def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` without the given server paths and without any other absolute path."""
    for secret in sorted((s for s in secrets if s and len(s) > 1), key=len, reverse=True):
        text = text.replace(secret, "<server path>")
    return _PATH.sub("<server path>", text)


def public_error(exc: BaseException, secrets: tuple[str, ...] = ()) -> tuple[str, str]:
    """(type, message) a client may see for an exception raised inside a run.

    The SDK's own errors (SRLError) carry messages written for users: sent without server paths.
    Anything else is an internal failure: its text stays in the log."""
    if isinstance(exc, SRLError):
        return type(exc).__name__, redact(str(exc), secrets)
    return "internal_error", INTERNAL_MESSAGE


def server_paths(config: Any) -> tuple[str, ...]:
    """The paths of a server's store and model as written in its config and as resolved: removed
    from error text even when relative (the generic rule only catches absolute paths)."""
    from pathlib import Path

    from srl_sdk.store import default_store_path

    paths: list[Path] = []
    model = Path(config.model).expanduser()
    if model.exists():  # not an alias such as 'smollm2'
        paths.append(model)
    if config.store is not False and "://" not in str(config.store):  # a URL names no file
        paths.append(Path(config.store) if config.store is not None else default_store_path())
    found = [text for path in paths for text in (str(path), str(path.resolve()), str(path.resolve().parent))]
    if config.store is not False and "://" in str(config.store):  # a store URL as its errors name it
        from srl_sdk.store import describe_store

        found.append(describe_store(config.store))
    return tuple(dict.fromkeys(found))
