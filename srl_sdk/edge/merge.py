"""Model sources for an export: whatever a user names becomes one plain HF safetensors folder.

The converters (llama.cpp's, onnxruntime-genai's builder) read only a full Hugging Face model
folder. A user may instead hold a LoRA adapter from `srl train` (merged into its base here with
peft's `merge_and_unload`, so the build needs no adapter support at run time), a GGUF file or the
embedded default (turned into an fp32 folder by `srl_sdk.engines.hf_folder.gguf_to_hf_dir`, cached).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from srl_sdk.edge.files import staged_dir
from srl_sdk.engines.models import is_alias
from srl_sdk.errors import ExportError, ModelError, require

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")


def is_adapter_dir(path: Path) -> bool:
    return path.is_dir() and (path / "adapter_config.json").is_file()


def is_hf_model_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file() and any(
        any(path.glob(pattern)) for pattern in WEIGHT_PATTERNS
    )


def _fingerprint(folder: Path) -> str:
    """Changes whenever a file of the folder changes, so a re-trained adapter is merged again."""
    digest = hashlib.sha256(str(folder.resolve()).encode())
    for item in sorted(folder.iterdir()):
        if item.is_file():
            stat = item.stat()
            digest.update(f"{item.name}|{stat.st_size}|{int(stat.st_mtime)}".encode())
    return digest.hexdigest()[:10]


def adapter_base(adapter_dir: Path, base: str | os.PathLike[str] | None = None) -> str:
    """The base model an adapter was trained on: `base` if given, else its adapter_config.json."""
    if base is not None:
        return str(base)
    try:
        config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"{adapter_dir}/adapter_config.json is unreadable ({exc}); re-save the adapter") from exc
    named = config.get("base_model_name_or_path")
    if not named:
        raise ExportError(
            f"the adapter {adapter_dir} does not name its base model; pass it with --base "
            "(a model folder, a .gguf file or 'smollm2')"
        )
    return str(named)


def merge_adapter(
    adapter_dir: str | os.PathLike[str],
    *,
    base: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Merge a PEFT LoRA adapter into its base and save HF safetensors (+ tokenizer).

    Returns the merged folder (default: cached under $SRL_HOME/cache/merged). An adapter whose
    base cannot be found raises ExportError naming the base and the --base option.
    """
    adapter_dir = Path(adapter_dir).expanduser()
    if not is_adapter_dir(adapter_dir):
        raise ExportError(f"{adapter_dir} is not a PEFT adapter folder (no adapter_config.json)")
    from srl_sdk.engines.hf_folder import hf_cache_dir, load_causal_lm, resolve_hf_model

    base_name = adapter_base(adapter_dir, base)
    base_path = Path(base_name).expanduser()
    looks_local = base_name.startswith((".", "/", "~")) or base_path.suffix == ".gguf"
    if looks_local and not base_path.exists():
        raise ExportError(
            f"the base model of adapter {adapter_dir} is {base_name}, which does not exist here; "
            "pass the base with --base (a model folder, a .gguf file or 'smollm2')"
        )
    target = Path(out_dir).expanduser() if out_dir else hf_cache_dir().parent / "merged" / (
        f"{adapter_dir.name}-{_fingerprint(adapter_dir)}"
    )
    if is_hf_model_dir(target):
        return target
    peft = require("peft", "export")
    transformers = require("transformers", "export")
    try:
        base_ref = resolve_hf_model(base_name)
        model = load_causal_lm(base_ref)
    except (ModelError, OSError) as exc:
        raise ExportError(
            f"cannot load the base model {base_name!r} of adapter {adapter_dir}: {exc}; "
            "pass the base with --base (a model folder, a .gguf file or 'smollm2')"
        ) from exc
    try:
        merged = peft.PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    except Exception as exc:  # peft raises ValueError/KeyError/RuntimeError on mismatched shapes
        raise ExportError(
            f"could not merge adapter {adapter_dir} into {base_name}: {exc}; is this the base it was trained on? "
            "pass the right one with --base"
        ) from exc
    tokenizer_source = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base_ref
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer_source))
    with staged_dir(target) as staging:
        merged.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
    return target


def resolve_export_source(
    model: str | os.PathLike[str],
    *,
    base: str | os.PathLike[str] | None = None,
) -> Path:
    """What a user names (HF folder, adapter folder, .gguf, 'smollm2') -> an HF model folder."""
    text = str(model)
    path = Path(text).expanduser()
    if is_alias(text) or (path.is_file() and path.suffix == ".gguf"):
        from srl_sdk.engines.hf_folder import gguf_to_hf_dir

        try:
            return gguf_to_hf_dir(text)
        except ModelError as exc:
            raise ExportError(f"cannot convert {text} for export: {exc}") from exc
    if is_adapter_dir(path):
        return merge_adapter(path, base=base)
    if is_hf_model_dir(path):
        return path
    if not path.exists():
        raise ExportError(
            f"model {text!r} does not exist; pass a Hugging Face model folder, a PEFT adapter folder, "
            "a .gguf file or 'smollm2'"
        )
    raise ExportError(
        f"{path} is not a model: expected a Hugging Face folder (config.json + *.safetensors), a PEFT "
        "adapter folder (adapter_config.json), a .gguf file or 'smollm2'"
    )


def source_gguf(model: str | os.PathLike[str]) -> Path | None:
    """The GGUF a model came from, when the user named one (its tokenizer metadata is reused)."""
    text = str(model)
    if is_alias(text) or text.endswith(".gguf"):
        from srl_sdk.engines.models import resolve_gguf

        return resolve_gguf(text)
    return None
