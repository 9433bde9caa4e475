"""Which `engine_options` each engine takes, checked before any engine loads.

Why: a server config's `engine_options` reach the engine's constructor inside a worker process,
so a misspelt or misplaced option used to surface as a TypeError at worker setup, after the
server had already started. Checking them when the config loads turns that into one ConfigError
naming the options the chosen engine takes.

Where the allowed options come from: an engine class that declares `options_model` (a pydantic
model, e.g. VLLMOptions with its ranges) is checked against it; any other engine against its
constructor's keyword parameters and their types, so the list never drifts from the code.
`engine_arguments` builds the keyword arguments the engine would hand its library (vLLM's
AsyncEngineArgs, llama_cpp.Llama) without loading anything, for tests of the shipped configs.
"""

from __future__ import annotations

import importlib
import inspect
import os
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from srl_sdk.errors import ConfigError

# canonical name -> (module, class); aliases as load_engine accepts them
_ENGINES = {
    "llama.cpp": ("srl_sdk.engines.llama_cpp", "LlamaCppEngine"),
    "transformers": ("srl_sdk.engines.transformers", "TransformersEngine"),
    "onnx": ("srl_sdk.engines.onnx", "OnnxEngine"),
    "vllm": ("srl_sdk.engines.vllm", "VLLMEngine"),
}
_ALIASES = {"llama_cpp": "llama.cpp", "llamacpp": "llama.cpp", "gguf": "llama.cpp", "hf": "transformers",
            "onnxruntime": "onnx", "ort": "onnx"}
# set by the engine's caller, not by a config's engine_options
_NOT_OPTIONS = {"self", "model"}


def canonical_engine(name: str) -> str:
    """'llama_cpp' -> 'llama.cpp' etc.; a ConfigError for an engine that does not exist."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in _ENGINES:
        raise ConfigError(f"unknown engine {name!r}; choose one of {', '.join(_ENGINES)}")
    return key


def engine_class(name: str) -> type:
    module, attribute = _ENGINES[canonical_engine(name)]
    return getattr(importlib.import_module(module), attribute)


def options_model(name: str) -> type[BaseModel]:
    """The pydantic model of the engine's options: declared, or made from its constructor."""
    cls = engine_class(name)
    declared = getattr(cls, "options_model", None)
    if declared is not None:
        return declared
    # the class's own constructor: its parameters are the options (mypy calls any __init__ access unsound)
    init = cls.__init__  # type: ignore[misc]
    hints = typing.get_type_hints(init)
    fields: dict[str, Any] = {}
    for parameter in inspect.signature(init).parameters.values():
        if parameter.name in _NOT_OPTIONS or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        default = ... if parameter.default is parameter.empty else parameter.default
        fields[parameter.name] = (hints.get(parameter.name, Any), default)
    return create_model(f"{cls.__name__}Options", __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True),
                        **fields)


def allowed_options(name: str) -> tuple[str, ...]:
    return tuple(options_model(name).model_fields)


def check_engine_options(name: str, options: dict[str, Any]) -> None:
    """A ConfigError naming the allowed options if `options` are not what the engine takes."""
    model = options_model(name)
    try:
        model.model_validate(options)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "engine_options"
            message = "not an option of this engine" if error["type"] == "extra_forbidden" else error["msg"]
            problems.append(f"{where}: {message}")
        raise ConfigError(
            f"engine_options for the {canonical_engine(name)} engine: {'; '.join(problems)}. "
            f"It takes: {', '.join(model.model_fields)}"
        ) from None


def engine_arguments(name: str, model: str | os.PathLike[str], options: dict[str, Any], *,
                     on_cpu: bool) -> dict[str, Any]:
    """The keyword arguments the engine would pass its library for `model` and `options`
    (llama.cpp: llama_cpp.Llama; vllm: AsyncEngineArgs), built without loading a model."""
    check_engine_options(name, options)
    engine = canonical_engine(name)
    if engine == "vllm":
        from srl_sdk.engines.vllm import vllm_engine_args, vllm_options

        return vllm_engine_args(model, vllm_options(options), on_cpu=on_cpu)
    if engine == "llama.cpp":
        from srl_sdk.engines.llama_cpp import llama_arguments
        from srl_sdk.engines.models import resolve_model

        resolved = resolve_model(model)
        settings = {key: options[key] for key in ("n_ctx", "n_threads", "n_batch", "seed") if key in options}
        return llama_arguments(resolved.gguf, adapter=options.get("adapter", resolved.adapter), **settings)
    raise ConfigError(f"engine_arguments does not build the {engine} engine's arguments (no shipped config uses it)")
