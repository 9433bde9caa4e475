"""A plain Hugging Face model folder from anything a user names, and transformers loading.

It sits in engines/ because every part needs it: the transformers and vLLM engines, the edge
exporters and training all load HF folders.

Training needs an fp32/bf16 transformers model, but the embedded default model ships only as a
Q4_1 GGUF. transformers can read a GGUF (it dequantizes to fp32), yet the loaded model stays
flagged as GGUF-quantized: `save_pretrained` raises and TRL refuses to train it. So a GGUF is
converted ONCE into an ordinary safetensors HF directory (quantization flag removed) and cached
under `$SRL_HOME/cache/hf/<name>`; everything after that (training, the transformers engine, the
ONNX and vLLM builders) loads that directory in well under a second.

`gguf_to_hf_dir` is the public entry point other parts of the SDK reuse; it is safe to call from
several processes at once (the directory appears by an atomic rename, or not at all).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from srl_sdk.core.atomic import place_dir
from srl_sdk.core.paths import srl_home
from srl_sdk.engines.models import is_alias, resolve_gguf
from srl_sdk.errors import ConfigError, ModelError, require

__all__ = [
    "hf_cache_dir",
    "gguf_to_hf_dir",
    "resolve_hf_model",
    "load_causal_lm",
    "load_tokenizer",
    "cap_torch_threads",
    "default_torch_threads",
]

_COMPLETE_MARKER = ".srl-complete"


def hf_cache_dir() -> Path:
    return srl_home() / "cache" / "hf"


def cap_torch_threads(n_threads: int | None = None) -> int:
    """Keep torch to half the cores (at most 4) unless told otherwise ($SRL_TORCH_THREADS).

    Measured on a 2-core machine shared with other jobs: a 16-token batch-4 generate took 6 s
    with 1 thread and 127 s with 2 (OpenMP threads spin against each other when the cores are
    busy), the same collapse llama.cpp shows. Half the cores is the safe default.
    """
    torch = require("torch", "train")
    n = n_threads or int(os.environ.get("SRL_TORCH_THREADS", "0") or 0) or default_torch_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def default_torch_threads() -> int:
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def _gguf_cache_name(path: Path) -> str:
    """Stem plus a fingerprint of the file, so a changed GGUF never reuses a stale conversion."""
    stat = path.stat()
    digest = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()[:10]
    return f"{path.stem}-{digest}"


def gguf_to_hf_dir(gguf_path: str | os.PathLike[str] = "smollm2", out_dir: str | os.PathLike[str] | None = None) -> Path:
    """Convert a GGUF (path or the alias 'smollm2') into a cached fp32 safetensors HF directory.

    Returns the directory (config.json, model.safetensors, tokenizer files, chat template). The
    conversion runs once (~15 s for SmolLM2-135M); later calls return the cached folder at once.
    The result is written to a temporary sibling folder and renamed into place, so a killed
    conversion never leaves a half-written model that a later call would trust.
    """
    source = resolve_gguf(gguf_path)
    target = Path(out_dir).expanduser() if out_dir is not None else hf_cache_dir() / _gguf_cache_name(source)
    if (target / _COMPLETE_MARKER).is_file():
        return target
    if target.exists() and any(target.iterdir()):
        raise ModelError(
            f"{target} exists but is not a finished conversion of {source.name}; delete it and call again"
        )
    transformers = require("transformers", "train")
    require("accelerate", "train")  # transformers needs it to read GGUF files
    require("gguf", "train")
    cap_torch_threads()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    os.chmod(staging, 0o755)  # mkdtemp makes it private; the cache is shared with other tools
    try:
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(
                str(source.parent), gguf_file=source.name, dtype="float32"
            )
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
        except Exception as exc:  # transformers raises many types for unreadable files
            raise ModelError(
                f"transformers could not read {source} as a model ({type(exc).__name__}: {exc}); "
                "check the file is a complete GGUF of a supported architecture (llama, qwen2, ...)"
            ) from exc
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:
            quantizer.remove_quantization_config(model)
        model.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
        (staging / _COMPLETE_MARKER).write_text(f"converted from {source}\n", encoding="utf-8")
        if target.exists():
            target.rmdir()  # empty (checked above); rename cannot replace a folder
        try:
            place_dir(staging, target)  # fsynced before and after the rename (srl_sdk/core/atomic.py)
        except OSError:
            if (target / _COMPLETE_MARKER).is_file():  # another process finished first
                shutil.rmtree(staging, ignore_errors=True)
                return target
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def resolve_hf_model(model: str | os.PathLike[str]) -> str:
    """Anything a user may name as a model -> what `from_pretrained` accepts.

    The alias 'smollm2' and `.gguf` files are converted (cached); a local HF directory is used
    as is; anything else is taken for a Hugging Face hub id (needs a reachable hub).
    """
    text = str(model)
    if is_alias(text) or text.endswith(".gguf"):
        return str(gguf_to_hf_dir(text))
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return str(path)
        if any(path.glob("*.gguf")):
            return str(gguf_to_hf_dir(path))
        raise ModelError(f"{path} has no config.json and no .gguf file; point at a Hugging Face model folder")
    if path.exists():
        raise ModelError(f"{path} is a file but not a .gguf; pass a GGUF file or a model folder")
    if text.startswith((".", "/", "~")):
        raise ModelError(f"model folder {path} does not exist")
    return text  # a hub id such as 'Qwen/Qwen2.5-7B-Instruct'


def load_tokenizer(model: str | os.PathLike[str]):
    transformers = require("transformers", "train")
    name = resolve_hf_model(model)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(name)
    except OSError as exc:
        raise ModelError(f"cannot load a tokenizer for {name!r}: {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(model: str | os.PathLike[str], *, dtype: str = "float32", **kwargs: Any):
    """A transformers causal LM from a path, hub id, GGUF or alias; clear ModelError on failure."""
    transformers = require("transformers", "train")
    if dtype not in ("float32", "bfloat16", "float16", "auto"):
        raise ConfigError(f"dtype {dtype!r} is not supported; use float32, bfloat16, float16 or auto")
    name = resolve_hf_model(model)
    try:
        return transformers.AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **kwargs)
    except OSError as exc:
        raise ModelError(
            f"cannot load model {name!r}: {exc}; pass a local model folder, a .gguf file, the alias "
            "'smollm2', or a hub id on a machine that can reach the hub"
        ) from exc
