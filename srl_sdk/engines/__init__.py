"""Inference engines behind one interface. Each backend's library is imported only when used."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from srl_sdk.engines.base import Engine, SamplingParams, StopMatcher, TokenEvent
from srl_sdk.engines.models import (
    DEFAULT_MODEL,
    NAMED_MODELS,
    is_adapter_model,
    is_alias,
    named_model,
    resolve_gguf,
    resolve_model,
    smollm2_gguf_path,
)
from srl_sdk.errors import ConfigError, ModelError

ENGINE_NAMES = ("llama.cpp", "transformers", "onnx", "vllm")


def guess_engine(model: str | os.PathLike[str]) -> str:
    """Pick the engine a model file or folder is made for."""
    text = str(model)
    if is_alias(text) or named_model(text) is not None or text.endswith(".gguf"):
        return "llama.cpp"
    path = Path(text).expanduser()
    if path.suffix == ".onnx" or (path.is_dir() and (path / "genai_config.json").is_file()):
        return "onnx"
    if path.is_dir() and any(path.glob("*.gguf")) and not (path / "config.json").is_file():
        return "llama.cpp"
    return "transformers"


def load_engine(model: str | os.PathLike[str] = DEFAULT_MODEL, engine: str | None = None, **kwargs: Any) -> Engine:
    """Load `model` in the named engine (or the one its files call for)."""
    name = (engine or guess_engine(model)).lower()
    if is_adapter_model(model) and name in ("onnx", "onnxruntime", "ort", "vllm"):
        raise ModelError(
            f"{model!r} is a base model plus a LoRA adapter, which the llama.cpp and transformers engines apply; "
            f"the {name} engine cannot: use --engine llama.cpp (or transformers)"
        )
    if name in ("llama.cpp", "llama_cpp", "llamacpp", "gguf"):
        from srl_sdk.engines.llama_cpp import LlamaCppEngine

        return LlamaCppEngine(model, **kwargs)
    if name in ("transformers", "hf"):
        from srl_sdk.engines.transformers import TransformersEngine

        return TransformersEngine(model, **kwargs)
    if name in ("onnx", "onnxruntime", "ort"):
        from srl_sdk.engines.onnx import OnnxEngine

        return OnnxEngine(model, **kwargs)
    if name == "vllm":
        from srl_sdk.engines.vllm import VLLMEngine

        return VLLMEngine(model, **kwargs)
    raise ConfigError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINE_NAMES)}")


__all__ = [
    "DEFAULT_MODEL",
    "ENGINE_NAMES",
    "NAMED_MODELS",
    "Engine",
    "SamplingParams",
    "StopMatcher",
    "TokenEvent",
    "guess_engine",
    "load_engine",
    "resolve_gguf",
    "resolve_model",
    "smollm2_gguf_path",
]
