"""llama.cpp LoRA adapter files (GGUF) outside llama.cpp: read one and merge it into a transformers model.

The named model `smollm2-srl` ships only as a LoRA GGUF beside the base GGUF (srl_sdk/models/). llama.cpp
applies it at load time; for the transformers engine the same file is merged into the fp32 weights
here (W += alpha / r * B @ A), so both engines run the same model from the same file and no PEFT
folder has to ship.

The file's q/k pairs are in llama.cpp's rotary row order (see srl_sdk/edge/lora_gguf.py, which
writes them); transformers keeps HF order, so lora_b's rows of q and k are permuted back first.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from srl_sdk.errors import ModelError, require

# GGUF tensor name (without blk.N.) -> module path inside a transformers Llama layer
LLAMA_MODULES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def permute_rows(matrix, n_head: int):
    """HF row order -> llama.cpp's rotary row order for q/k (convert_hf_to_gguf's LlamaModel.permute)."""
    rows = matrix.shape[0]
    return matrix.reshape(n_head, 2, rows // n_head // 2, *matrix.shape[1:]).swapaxes(1, 2).reshape(matrix.shape)


def unpermute_rows(matrix, n_head: int):
    """The inverse of `permute_rows`: llama.cpp's q/k row order -> HF order."""
    rows = matrix.shape[0]
    return matrix.reshape(n_head, rows // n_head // 2, 2, *matrix.shape[1:]).swapaxes(1, 2).reshape(matrix.shape)


def read_lora_gguf(path: str | os.PathLike[str]) -> tuple[float, dict[str, tuple[Any, Any]]]:
    """A llama.cpp LoRA GGUF -> (alpha, {base tensor name: (A (r, in), B (out, r))}) as float32 numpy."""
    gguf = require("gguf", "edge")
    np = require("numpy", "edge")
    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read the LoRA adapter {path}: {exc}; re-export it with `srl export lora-gguf`") \
            from exc

    def field(key: str):
        item = reader.fields.get(key)
        return None if item is None else item.contents()

    if field("general.type") != "adapter" or field("adapter.type") != "lora":
        raise ModelError(f"{path} is not a llama.cpp LoRA adapter (general.type / adapter.type); "
                         "export one with `srl export lora-gguf`")
    alpha = float(field("adapter.lora.alpha") or 0.0)
    pairs: dict[str, dict[str, Any]] = {}
    for tensor in reader.tensors:
        base, _, part = tensor.name.rpartition(".")
        if part not in ("lora_a", "lora_b"):
            continue
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF ne -> numpy order
        pairs.setdefault(base, {})[part] = np.asarray(values, dtype=np.float32).reshape(shape)
    out = {}
    for name, pair in pairs.items():
        if set(pair) != {"lora_a", "lora_b"}:
            raise ModelError(f"{path}: {name} lacks lora_a or lora_b; re-export the adapter")
        out[name] = (pair["lora_a"], pair["lora_b"])
    return alpha, out


def merge_lora_gguf(model, adapter: str | os.PathLike[str], *, scale: float = 1.0) -> int:
    """Add a llama.cpp LoRA GGUF into a transformers Llama model's weights, in place; returns the pairs merged.

    llama.cpp's scale per pair is scale * alpha / r (r = lora_b's columns), or `scale` when alpha is 0.
    """
    torch = require("torch", "train")
    config = model.config
    if getattr(config, "model_type", None) != "llama":
        raise ModelError(f"LoRA GGUF adapters can be merged into Llama models only, not {config.model_type!r}")
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    alpha, pairs = read_lora_gguf(adapter)
    layers = model.model.layers
    for name, (a, b) in pairs.items():
        parts = name.split(".")  # blk.N.<kind>.weight
        if len(parts) != 4 or parts[0] != "blk" or parts[2] not in LLAMA_MODULES or parts[3] != "weight":
            raise ModelError(f"{Path(adapter).name}: cannot place adapter tensor {name} in a transformers Llama model")
        layer = int(parts[1])
        if parts[2] == "attn_q":
            b = unpermute_rows(b, n_head)
        elif parts[2] == "attn_k":
            b = unpermute_rows(b, n_kv)
        module = layers[layer].get_submodule(LLAMA_MODULES[parts[2]])
        weight = module.weight
        if tuple(weight.shape) != (b.shape[0], a.shape[1]):
            raise ModelError(
                f"{Path(adapter).name}: {name} is {b.shape[0]}x{a.shape[1]} but the model's weight is "
                f"{tuple(weight.shape)}; the adapter belongs to another base model"
            )
        factor = scale * alpha / a.shape[0] if alpha else scale
        delta = torch.from_numpy(b) @ torch.from_numpy(a)
        with torch.no_grad():
            weight.add_(delta.to(weight.dtype), alpha=factor)
    return len(pairs)
