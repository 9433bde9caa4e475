"""PEFT LoRA adapter folder -> llama.cpp GGUF LoRA adapter (a few MB, applied at load time).

Why not merge: a merged GGUF is a whole second model (94 MiB at Q4_1 for SmolLM2). An adapter file
is ~10 MB, ships inside the package, and llama.cpp applies it to the base GGUF the user already
has (`Llama(model_path=base, lora_path=adapter)`).

The file follows the layout llama.cpp's own `convert_lora_to_gguf.py` writes and its loader
(`llama_adapter_lora_init`) checks:
- metadata `general.type = "adapter"`, `general.architecture` = the base's, `adapter.type = "lora"`,
  `adapter.lora.alpha` (llama.cpp scales every pair by alpha / rank, rank = lora_b's ne[0]);
- one pair per adapted weight, named after the base tensor: `blk.N.attn_q.weight.lora_a` holds
  PEFT's lora_A (numpy shape (r, in), GGUF ne (in, r)) and `.lora_b` PEFT's lora_B ((out, r),
  ne (r, out)); llama.cpp checks ne[0] of A and ne[1] of B against the base tensor;
- for llama, the base GGUF stores the q and k projections with their rows permuted for llama.cpp's
  rotary layout (convert_hf_to_gguf's `LlamaModel.permute`); transformers un-permutes them when it
  reads the GGUF, so an adapter trained on the HF folder (`gguf_to_hf_dir`) is in HF order. The
  delta B @ A must get the same row permutation: lora_b's rows are permuted, lora_a is not (as
  convert_lora_to_gguf's `LoraTorchTensor.permute` does).

Adapters of later training stages are relative to an earlier stage's merged model, not to the base
(`adapter_chain`): the whole chain is written as one LoRA whose A and B stack the stages' A and B
(scalings folded into B), which is exactly the sum of their deltas, with rank the sum of ranks.

No torch is needed: tensors are read with safetensors' numpy reader and written with the `gguf`
package. The tensor names come from gguf's own name map; nothing of llama.cpp's converter code is
copied here.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from srl_sdk.edge.files import size_of, staged_file
from srl_sdk.engines.lora import permute_rows
from srl_sdk.errors import ExportError, ModelError, require

LoraOutType = Literal["f16", "f32", "q8_0"]
OUT_TYPES: tuple[str, ...] = ("f16", "f32", "q8_0")
# architectures whose q/k rows llama.cpp's converter permutes (and that this writer knows)
SUPPORTED_ARCHS = ("llama",)
Q8_0_BLOCK = 32


class LoraGGUFResult(BaseModel):
    path: Path
    base: Path
    architecture: str
    outtype: str
    rank: int
    alpha: float = Field(description="adapter.lora.alpha as written (llama.cpp scales by alpha / rank)")
    n_pairs: int = Field(description="adapted weights (each a lora_a + lora_b tensor)")
    size_bytes: int
    tensor_types: dict[str, int]
    seconds: float
    load_checked: bool = False
    chain: list[Path] = Field(default_factory=list, description="the adapters summed, first trained first")


class _AdapterSpec(BaseModel):
    """What of adapter_config.json the conversion depends on."""

    rank: int
    alpha: float
    use_rslora: bool = False


def read_adapter_config(adapter_dir: Path) -> _AdapterSpec:
    """adapter_config.json -> rank and alpha, refusing the PEFT variants llama.cpp cannot run."""
    path = adapter_dir / "adapter_config.json"
    try:
        config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path} is unreadable ({exc}); pass a PEFT LoRA adapter folder from `srl train`") from exc
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise ExportError(f"{adapter_dir} is a {peft_type} adapter; only LoRA adapters can become llama.cpp adapters")
    refusals = {
        "use_dora": "DoRA adapters have no llama.cpp form; merge it instead: srl export gguf ADAPTER",
        "fan_in_fan_out": "fan_in_fan_out (GPT-2 style Conv1D) adapters are not supported; merge it instead",
        "rank_pattern": "per-module ranks (rank_pattern) are not supported: llama.cpp takes one alpha per file; "
                        "merge it instead",
        "alpha_pattern": "per-module alphas (alpha_pattern) are not supported: llama.cpp takes one alpha per file; "
                         "merge it instead",
        "modules_to_save": "the adapter also saves whole modules (modules_to_save), which a llama.cpp LoRA file "
                           "cannot hold; merge it instead",
    }
    for key, why in refusals.items():
        if config.get(key):
            raise ExportError(f"{adapter_dir}: {why}")
    if str(config.get("bias", "none")) != "none":
        raise ExportError(f"{adapter_dir} trains biases (bias={config['bias']!r}); llama.cpp LoRA files hold no "
                          "biases; merge it instead")
    try:
        rank = int(config["r"])
        alpha = float(config.get("lora_alpha", rank))
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError(f"{path} has no usable r / lora_alpha ({exc}); re-save the adapter with peft") from exc
    return _AdapterSpec(rank=rank, alpha=alpha, use_rslora=bool(config.get("use_rslora")))


def gguf_alpha(spec: _AdapterSpec) -> float:
    """The alpha that makes llama.cpp's alpha / r equal PEFT's scaling (alpha / r, or alpha / sqrt(r) with rsLoRA)."""
    return spec.alpha * math.sqrt(spec.rank) if spec.use_rslora else spec.alpha


def load_adapter_tensors(adapter_dir: Path) -> dict[str, Any]:
    """adapter_model.safetensors as float32 numpy arrays (torch only for bf16 files, which numpy cannot hold)."""
    np = require("numpy", "edge")
    safetensors_numpy = require("safetensors.numpy", "export", package="safetensors")
    file = adapter_dir / "adapter_model.safetensors"
    if not file.is_file():
        other = " (it has adapter_model.bin: re-save it with safe_serialization=True)" if (
            adapter_dir / "adapter_model.bin").is_file() else ""
        raise ExportError(f"{adapter_dir} has no adapter_model.safetensors{other}")
    try:
        tensors = safetensors_numpy.load_file(str(file))
    except (TypeError, ValueError):  # bf16: numpy has no such dtype
        safetensors_torch = require("safetensors.torch", "export", package="safetensors")
        tensors = {k: v.float().numpy() for k, v in safetensors_torch.load_file(str(file)).items()}
    except OSError as exc:
        raise ExportError(f"cannot read {file}: {exc}") from exc
    return {name: np.asarray(value, dtype=np.float32) for name, value in tensors.items()}


def hf_weight_name(peft_name: str) -> tuple[str, str]:
    """'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight'
    -> ('model.layers.0.self_attn.q_proj.weight', 'A')."""
    name = peft_name.removeprefix("base_model.model.")
    for part in ("A", "B"):
        suffix = f".lora_{part}.weight"
        if name.endswith(suffix):
            return name[: -len(suffix)] + ".weight", part
        # an adapter saved with a named adapter keeps the name: .lora_A.<name>.weight
        marker = f".lora_{part}."
        if marker in name and name.endswith(".weight"):
            return name[: name.index(marker)] + ".weight", part
    raise ExportError(
        f"adapter tensor {peft_name!r} is neither lora_A nor lora_B (embeddings, norms or biases in the adapter "
        "cannot go into a llama.cpp LoRA file); merge the adapter instead: srl export gguf ADAPTER"
    )


class _BaseModelInfo(BaseModel):
    path: Path
    architecture: str
    n_layer: int
    n_head: int
    n_head_kv: int
    shapes: dict[str, tuple[int, ...]]  # tensor name -> ne (GGUF order)


def read_base_gguf(base: str | os.PathLike[str]) -> _BaseModelInfo:
    from srl_sdk.engines.models import resolve_gguf

    gguf = require("gguf", "edge")
    try:
        path = resolve_gguf(base)
    except ModelError as exc:
        raise ExportError(f"cannot use {base!r} as the base GGUF: {exc}") from exc
    reader = gguf.GGUFReader(str(path))

    def field(key: str):
        item = reader.fields.get(key)
        return None if item is None else item.contents()

    arch = str(field("general.architecture") or "")
    if arch not in SUPPORTED_ARCHS:
        raise ExportError(
            f"the base {path.name} is a {arch!r} model; this exporter writes LoRA files for "
            f"{', '.join(SUPPORTED_ARCHS)} only. "
            "Merge the adapter instead (srl export gguf ADAPTER) or use llama.cpp's convert_lora_to_gguf.py"
        )
    n_head = int(field(f"{arch}.attention.head_count"))
    n_head_kv = int(field(f"{arch}.attention.head_count_kv") or n_head)
    shapes = {t.name: tuple(int(n) for n in t.shape) for t in reader.tensors}
    return _BaseModelInfo(path=path, architecture=arch, n_layer=int(field(f"{arch}.block_count")),
                          n_head=n_head, n_head_kv=n_head_kv, shapes=shapes)


def _base_named(adapter_dir: Path) -> str:
    try:
        config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"{adapter_dir}/adapter_config.json is unreadable ({exc}); re-save the adapter") from exc
    return str(config.get("base_model_name_or_path") or "")


def adapter_chain(adapter_dir: Path, *, base_given: bool = False) -> tuple[list[Path], str | None]:
    """The adapters between the base GGUF and `adapter_dir` (first applied first), and that GGUF if known.

    A stage of `srl train` writes `<stage>/adapter/` (its LoRA, relative to the model the stage
    started from) and `<stage>/final/` (the merged model, the next stage's start). An adapter of a
    later stage (SFT after the format warm-up, RLVR after SRL) therefore names an earlier
    `<stage>/final` as its base; that stage's own `adapter/` sits beside it and is followed, down to
    the folder `gguf_to_hf_dir` made (its `.srl-complete` marker names the GGUF), a `.gguf` file or
    an alias. A base that is a fine-tuned folder without its adapter beside it cannot be expressed
    as a LoRA on the GGUF: ExportError. A hub id or nothing gives None (the caller's default), and
    so does a base path that is gone when the caller names the base GGUF itself (`base_given`).
    """
    from srl_sdk.engines.models import is_alias

    chain = [adapter_dir]
    while True:
        named = _base_named(chain[0])
        if not named:
            return chain, None
        if is_alias(named) or named.endswith(".gguf"):
            return chain, named
        folder = Path(named).expanduser()
        marker = folder / ".srl-complete"
        if marker.is_file():
            source = marker.read_text(encoding="utf-8").strip().removeprefix("converted from ").strip()
            return chain, source if source.endswith(".gguf") and Path(source).is_file() else None
        sibling = folder.parent / "adapter"
        if folder.name == "final" and (sibling / "adapter_config.json").is_file():
            if sibling.resolve() in {c.resolve() for c in chain} or len(chain) > 16:
                raise ExportError(f"the adapters' base models form a loop at {sibling}")
            chain.insert(0, sibling)
            continue
        if folder.exists() or folder.name == "final":  # a stage's model: the delta down to the GGUF is unknown
            raise ExportError(
                f"the adapter {chain[0]} was trained on {folder}, a fine-tuned model whose own LoRA adapter is not "
                "beside it (../adapter), so it cannot be written as a LoRA on the base GGUF; run the export from "
                "the folder training ran in (relative paths), or export the merged model: srl export gguf "
                + str(adapter_dir)
            )
        # a path that is gone (absolute, or relative with an existing first part such as runs/...)
        looks_local = named.startswith((".", "/", "~")) or ("/" in named and Path(named.split("/")[0]).exists())
        if looks_local and not base_given:
            raise ExportError(
                f"the adapter {chain[0]} names its base {named}, which does not exist here; run the export from the "
                "folder training ran in (relative paths), or pass the base GGUF with --base"
            )
        return chain, None  # a hub id such as 'HuggingFaceTB/SmolLM2-135M-Instruct'


def _encode(np, gguf, array, outtype: str):
    """-> (data, raw_dtype or None). Q8_0 needs rows of 32 values: lora_b's rows are r long, so for
    r = 16 B stays F16 (as llama.cpp's converter does); for r = 32 (a two-stage chain) both are Q8_0."""
    if outtype == "f32":
        return array.astype(np.float32), None
    if outtype == "q8_0" and array.shape[-1] % Q8_0_BLOCK == 0:
        qtype = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(array.astype(np.float32), qtype), qtype
    return array.astype(np.float16), None


def _adapter_pairs(folder: Path, spec: _AdapterSpec, info: _BaseModelInfo, names) -> list[tuple[str, str, Any, Any]]:
    """One adapter's (gguf name, HF name, A, B), each checked against the base GGUF's tensor shapes."""
    pairs: dict[str, dict[str, Any]] = {}
    for peft_name, value in load_adapter_tensors(folder).items():
        hf_name, part = hf_weight_name(peft_name)
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None or gguf_name not in info.shapes:
            raise ExportError(f"adapter weight {hf_name} of {folder} has no tensor in {info.path.name} "
                              "(was it trained on another base?)")
        pairs.setdefault(gguf_name, {})[part] = (hf_name, value)
    if not pairs:
        raise ExportError(f"{folder}/adapter_model.safetensors holds no LoRA tensors")
    out = []
    for gguf_name, pair in pairs.items():
        if set(pair) != {"A", "B"}:
            raise ExportError(f"{folder}: the weight for {gguf_name} has lora_{''.join(pair)} but not both A and B; "
                              "re-save the adapter")
        (hf_name, a), (_, b) = pair["A"], pair["B"]
        ne = info.shapes[gguf_name]  # (in, out) for a linear weight
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1] or a.shape[1] != ne[0] or b.shape[0] != ne[1]:
            raise ExportError(
                f"{hf_name}: lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} of {folder} do not fit {gguf_name} {ne} "
                f"of {info.path.name}; pass the base the adapter was trained on with --base"
            )
        if a.shape[0] != spec.rank:
            raise ExportError(f"{hf_name} of {folder} has rank {a.shape[0]} but its adapter_config.json says "
                              f"r={spec.rank}")
        out.append((gguf_name, hf_name, a, b))
    return out


def export_lora_gguf(
    adapter: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    base: str | os.PathLike[str] | None = None,
    outtype: str = "q8_0",
    check_load: bool = False,
) -> LoraGGUFResult:
    """Write `adapter` (a PEFT LoRA folder) as a llama.cpp LoRA GGUF for `base` (a GGUF or 'smollm2').

    `outtype` q8_0 (default) stores in Q8_0 every tensor whose rows allow it (lora_a always; lora_b's
    rows are r long, so it stays F16 for r = 16); measured as close to the merged model as f16
    (tests/test_lora_adapter.py).

    Every pair is checked against the base's tensor shapes before anything is written, so a wrong
    base fails here with ExportError rather than inside llama.cpp. `check_load` then loads base +
    adapter in llama.cpp once (a few seconds) to prove the file is accepted.
    """
    started = time.perf_counter()
    np = require("numpy", "edge")
    gguf = require("gguf", "edge")
    outtype = outtype.strip().lower()
    if outtype not in OUT_TYPES:
        raise ExportError(f"unknown adapter type {outtype!r}; choose one of {', '.join(OUT_TYPES)}")
    adapter_dir = Path(adapter).expanduser()
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ExportError(f"{adapter_dir} is not a PEFT adapter folder (no adapter_config.json)")
    chain, trained_on = adapter_chain(adapter_dir, base_given=base is not None)
    info = read_base_gguf(base if base is not None else (trained_on or "smollm2"))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, info.n_layer)
    target = Path(out).expanduser() if out is not None else Path("builds") / f"{adapter_dir.name}.lora.gguf"
    if not target.name.endswith(".gguf"):
        raise ExportError(f"--out {target} must end in .gguf")

    # gguf name -> [(A (r, in), B (out, r), PEFT scaling)] in the order the adapters were trained
    stacked: dict[str, list[tuple[Any, Any, float]]] = {}
    specs = []
    for folder in chain:
        spec = read_adapter_config(folder)
        specs.append(spec)
        scaling = gguf_alpha(spec) / spec.rank  # PEFT's: alpha / r (rsLoRA: alpha / sqrt(r))
        for gguf_name, hf_name, a, b in _adapter_pairs(folder, spec, info, names):
            if hf_name.endswith("q_proj.weight"):
                b = permute_rows(b, info.n_head)
            elif hf_name.endswith("k_proj.weight"):
                b = permute_rows(b, info.n_head_kv)
            stacked.setdefault(gguf_name, []).append((a, b, scaling))

    if len(chain) == 1:  # as llama.cpp's converter writes it: PEFT's A and B, PEFT's alpha
        rank, alpha = specs[0].rank, gguf_alpha(specs[0])
        tensors = [(name, a, b) for name in sorted(stacked, key=_natural_key) for a, b, _ in stacked[name]]
    else:  # one LoRA of the summed deltas: A stacked, B stacked with each scaling folded in, exact
        rank = max(sum(a.shape[0] for a, _, _ in parts) for parts in stacked.values())
        alpha = float(rank)  # llama.cpp's alpha / rank = 1: the scalings are inside B
        tensors = []
        for name in sorted(stacked, key=_natural_key):
            parts = stacked[name]
            a = np.concatenate([p[0] for p in parts], axis=0)
            b = np.concatenate([p[1] * p[2] for p in parts], axis=1)
            pad = rank - a.shape[0]  # a weight some stages did not adapt: zero rows change nothing
            if pad:
                a = np.concatenate([a, np.zeros((pad, a.shape[1]), np.float32)], axis=0)
                b = np.concatenate([b, np.zeros((b.shape[0], pad), np.float32)], axis=1)
            tensors.append((name, a, b))

    with staged_file(target) as partial:
        writer = gguf.GGUFWriter(str(partial), info.architecture)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        writer.add_name(adapter_dir.resolve().name)
        writer.add_file_type({"f16": gguf.LlamaFileType.MOSTLY_F16, "f32": gguf.LlamaFileType.ALL_F32,
                              "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype])
        for name, a, b in tensors:
            for suffix, array in ((".lora_a", a), (".lora_b", b)):
                data, raw_dtype = _encode(np, gguf, array, outtype)
                writer.add_tensor(name + suffix, data, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        reader = gguf.GGUFReader(str(partial))
        types = dict(Counter(t.tensor_type.name for t in reader.tensors))
        del reader
    result = LoraGGUFResult(path=target, base=info.path, architecture=info.architecture, outtype=outtype,
                            rank=rank, alpha=alpha, n_pairs=len(tensors), size_bytes=size_of(target),
                            tensor_types=types, seconds=0.0, chain=chain)
    if check_load:
        check_lora_loads(info.path, target)
        result.load_checked = True
    result.seconds = time.perf_counter() - started
    return result


def check_lora_loads(base: Path, adapter_gguf: Path) -> None:
    """Load base + adapter in llama.cpp once; llama.cpp refuses a malformed or mismatched file here."""
    llama_cpp = require("llama_cpp", "edge", package="llama-cpp-python")
    try:
        llm = llama_cpp.Llama(model_path=str(base), lora_path=str(adapter_gguf), n_ctx=64, n_threads=1, verbose=False)
    except (ValueError, RuntimeError, OSError) as exc:
        raise ExportError(f"llama.cpp refused the adapter {adapter_gguf} on {base.name}: {exc}") from exc
    llm.close()


def _natural_key(name: str) -> tuple:
    """blk.2 before blk.10, so the file lists layers in order."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in name.split("."))
