"""One exception hierarchy for the whole SDK.

    SRLError                      every error this SDK raises on purpose
    ├── ConfigError               a setting or argument that cannot work (bad path, bad value)
    ├── InputError                bad user input: empty problem, non-UTF-8, malformed JSONL line
    │   └── ContextOverflowError  the prompt does not fit in the model's context window
    ├── MissingDependencyError    an optional extra is not installed (message names the pip command)
    ├── ModelError                a model that cannot be found, read or loaded
    ├── EngineError               generation failed inside an engine
    ├── StoreError                the trace store cannot be opened, read or written
    │   └── TraceNotFoundError    no trace with that id
    ├── TrainingError             a training run that cannot start or continue
    ├── ExportError               an edge export that cannot be produced or checked
    └── APIError                  an HTTP call to an srl server failed
        ├── APIStatusError        the server answered 4xx / 5xx (has .status_code, .body)
        │   ├── AuthenticationError   401 / 403
        │   ├── NotFoundError         404
        │   └── RequestValidationError 400 / 413 / 422
        ├── APIConnectionError    the server could not be reached
        └── APITimeoutError       the server did not answer in time

Every message says how to fix the problem, not only what went wrong.
"""

from __future__ import annotations

from typing import Any


class SRLError(Exception):
    """Base class: catch this to catch everything the SDK raises on purpose."""


class ConfigError(SRLError):
    pass


class InputError(SRLError):
    pass


class ContextOverflowError(InputError):
    def __init__(self, n_tokens: int, n_ctx: int, hint: str = "") -> None:
        self.n_tokens = n_tokens
        self.n_ctx = n_ctx
        super().__init__(
            f"the prompt is {n_tokens} tokens but the model's context holds {n_ctx}; "
            + (hint or "shorten the problem or the given steps, or load the model with a larger n_ctx")
        )


class MissingDependencyError(SRLError, ImportError):
    def __init__(self, package: str, extra: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{package} is not installed; install it with: pip install 'srl-sdk[{extra}]'"
        )


class ModelError(SRLError):
    pass


class EngineError(SRLError):
    pass


class StoreError(SRLError):
    pass


class TraceNotFoundError(StoreError, KeyError):
    def __init__(self, trace_id: str) -> None:
        self.trace_id = trace_id
        super().__init__(f"no trace with id {trace_id!r}; list the stored ids with `srl traces list`")

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class TrainingError(SRLError):
    pass


class ExportError(SRLError):
    pass


class APIError(SRLError):
    pass


class APIStatusError(APIError):
    def __init__(self, message: str, *, status_code: int, body: Any = None) -> None:
        self.status_code = status_code
        self.body = body
        super().__init__(f"HTTP {status_code}: {message}")


class AuthenticationError(APIStatusError):
    pass


class NotFoundError(APIStatusError):
    pass


class RequestValidationError(APIStatusError):
    pass


class APIConnectionError(APIError):
    pass


class APITimeoutError(APIError):
    pass


def status_error(status_code: int, message: str, body: Any = None) -> APIStatusError:
    """The APIStatusError subclass that fits an HTTP status code."""
    if status_code in (401, 403):
        cls: type[APIStatusError] = AuthenticationError
    elif status_code == 404:
        cls = NotFoundError
    elif status_code in (400, 413, 422):
        cls = RequestValidationError
    else:
        cls = APIStatusError
    return cls(message, status_code=status_code, body=body)


def require(module: str, extra: str, package: str | None = None):
    """Import an optional heavy dependency, or fail with the exact pip command to run."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(package or module, extra) from exc
