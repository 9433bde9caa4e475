"""HF folder -> GGUF -> quantized GGUF, with llama.cpp's own converter and quantizer.

Conversion. llama.cpp's `convert_hf_to_gguf.py` ships in no wheel; it is inside the
llama-cpp-python *source distribution*, version-matched to the installed runtime. We fetch that
sdist once with pip (`pip download --no-deps --no-binary :all: llama-cpp-python==<installed>`),
extract only the converter, its `conversion/` package and its `gguf-py/` into
$SRL_HOME/cache/llama-cpp-src/<version>, and run it as a subprocess. Its code is never copied
into this repository. When that is impossible (no registry, no sdist in the cache) and the
model is Llama-family, a small writer built on the `gguf` package (its own tensor-name map) and
a source GGUF's tokenizer metadata produces the same f16 file (`converter="gguf-py"`).

Quantization is `llama_cpp.llama_model_quantize`, i.e. llama.cpp's quantizer. K-quants need
rows divisible by 256; for models whose rows are not (SmolLM2: 576) llama.cpp falls back to other
types per tensor, which we count from the output and report as a warning.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from srl_sdk.core.atomic import replace_dir
from srl_sdk.edge.files import size_of, staged_file
from srl_sdk.errors import ConfigError, ExportError, require

# quant name -> llama.cpp ftype constant name (llama_cpp.LLAMA_FTYPE_*)
QUANT_TYPES: dict[str, str] = {
    "f16": "LLAMA_FTYPE_MOSTLY_F16",
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
    "q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0",
    "q5_1": "LLAMA_FTYPE_MOSTLY_Q5_1",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
}
K_QUANT_ROW = 256
CONVERTER_TIMEOUT_S = 1800
PIP_TIMEOUT_S = 600


def check_quant(quant: str) -> str:
    name = quant.strip().lower()
    if name not in QUANT_TYPES:
        raise ConfigError(f"unknown quant type {quant!r}; choose one of {', '.join(QUANT_TYPES)}")
    return name


class GGUFExportConfig(BaseModel):
    """How `export_gguf` builds a GGUF. Paired with `export_gguf`."""

    model_config = ConfigDict(extra="forbid")

    quant: str = Field(default="q8_0", description=f"one of {', '.join(QUANT_TYPES)}")
    out: Path | None = Field(default=None, description="output .gguf (default: builds/<model>-<quant>.gguf)")
    converter: Literal["auto", "official", "gguf-py"] = "auto"
    tokenizer_gguf: Path | None = Field(default=None, description="GGUF whose tokenizer metadata the gguf-py writer copies")
    n_threads: int = Field(default=2, ge=1, le=256)

    def model_post_init(self, __context: object) -> None:
        self.quant = check_quant(self.quant)


class GGUFExportResult(BaseModel):
    path: Path
    quant: str
    converter: str
    size_bytes: int
    seconds: float
    tensor_types: dict[str, int]
    warnings: list[str] = Field(default_factory=list)


# -- the official converter, from the runtime's own sdist ---------------------------------------
def llama_cpp_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError as exc:
        raise ExportError("llama-cpp-python is not installed; install it with: pip install 'srl-sdk[edge]'") from exc


def converter_cache_dir(version: str) -> Path:
    """$SRL_CONVERTER_CACHE/<version>, else $SRL_HOME/cache/llama-cpp-src/<version>."""
    from srl_sdk.core.paths import srl_home

    root = os.environ.get("SRL_CONVERTER_CACHE")
    return (Path(root).expanduser() if root else srl_home() / "cache" / "llama-cpp-src") / version


def official_converter(download: bool = True) -> Path:
    """The folder holding llama.cpp's convert_hf_to_gguf.py for the installed llama-cpp-python.

    Fetched once from PyPI (the sdist, ~75 MB) and reduced to the converter's own files.
    """
    version = llama_cpp_version()
    root = converter_cache_dir(version)
    script = root / "convert_hf_to_gguf.py"
    if script.is_file() and (root / "gguf-py").is_dir() and (root / "conversion").is_dir():
        return root
    archive = next(iter(sorted(root.parent.glob(f"llama_cpp_python-{version}.tar.gz"))), None)
    if archive is None:
        if not download:
            raise ExportError(f"llama.cpp's converter for llama-cpp-python {version} is not cached in {root.parent}")
        root.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   f"llama-cpp-python=={version}", "-d", str(root.parent), "--quiet"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ExportError(f"could not download llama-cpp-python {version}'s source for its converter: {exc}") from exc
        archive = root.parent / f"llama_cpp_python-{version}.tar.gz"
        if done.returncode != 0 or not archive.is_file():
            raise ExportError(
                f"could not download llama-cpp-python {version}'s source (it holds llama.cpp's converter): "
                f"{done.stderr.strip()[-400:]}; put llama_cpp_python-{version}.tar.gz in {root.parent}, "
                "or use converter='gguf-py' for Llama-family models"
            )
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=root.parent))
    try:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers()
                       if m.name.startswith(prefix) and m.name[len(prefix):].startswith(wanted)
                       and (m.isfile() or m.isdir())]
            for member in members:
                member.name = member.name[len(prefix):]
            tar.extractall(staging, members=members, filter="data")
        if not (staging / "convert_hf_to_gguf.py").is_file():
            raise ExportError(f"{archive} has no vendor/llama.cpp/convert_hf_to_gguf.py; delete it and run again")
        replace_dir(staging, root)  # a half-unpacked converter never sits under the cache name
    except (tarfile.TarError, OSError) as exc:
        raise ExportError(f"cannot unpack {archive} ({exc}); delete it and run again") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def convert_official(hf_dir: Path, out_file: Path, outtype: str = "f16") -> None:
    root = official_converter()
    env = {**os.environ, "PYTHONPATH": str(root / "gguf-py"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    command = [sys.executable, str(root / "convert_hf_to_gguf.py"), str(hf_dir),
               "--outtype", outtype, "--outfile", str(out_file)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=CONVERTER_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired as exc:
        raise ExportError(f"llama.cpp's converter did not finish in {CONVERTER_TIMEOUT_S} s on {hf_dir}") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-6:]
        if any("No space left" in line for line in tail):
            raise OSError(28, "No space left on device")
        raise ExportError(f"llama.cpp's converter failed on {hf_dir}: " + " | ".join(tail))


# -- the gguf-py writer (Llama family), for when the sdist cannot be had ------------------------
def convert_gguf_py(hf_dir: Path, out_file: Path, tokenizer_gguf: Path) -> None:
    """Write an f16 Llama GGUF with gguf-py's tensor-name map and `tokenizer_gguf`'s tokenizer."""
    gguf = require("gguf", "edge")
    np = require("numpy", "edge")
    safetensors = require("safetensors.numpy", "export", package="safetensors")
    config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") != "llama":
        raise ExportError(
            f"the gguf-py writer handles Llama-family models only, {hf_dir} is {config.get('model_type')!r}; "
            "let the official converter run (it needs the llama-cpp-python sdist from PyPI once)"
        )
    n_layer, n_head = config["num_hidden_layers"], config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads", n_head)
    reader = gguf.GGUFReader(str(tokenizer_gguf))
    writer = gguf.GGUFWriter(str(out_file), "llama")
    writer.add_name(hf_dir.name)
    writer.add_context_length(config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_block_count(n_layer)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(float(config.get("rope_theta") or (config.get("rope_parameters") or {}).get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-5))
    writer.add_vocab_size(config["vocab_size"])
    writer.add_rope_dimension_count(config["hidden_size"] // n_head)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for key, field in reader.fields.items():  # the source tokenizer, copied as is
        if not key.startswith("tokenizer."):
            continue
        value_type = field.types[0]
        if value_type == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, field.contents(), value_type, sub_type=field.types[-1])
        else:
            writer.add_key_value(key, field.contents(), value_type)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layer)
    tensors: dict[str, object] = {}
    for file in sorted(hf_dir.glob("*.safetensors")):
        tensors.update(safetensors.load_file(str(file)))
    for hf_name, weight in tensors.items():
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ExportError(f"tensor {hf_name} of {hf_dir} has no GGUF name; use the official converter")
        w = np.asarray(weight, dtype=np.float32)
        if hf_name.endswith(("q_proj.weight", "k_proj.weight")):  # llama.cpp's rotary layout
            heads = n_head if "q_proj" in hf_name else n_kv
            w = w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
        writer.add_tensor(name, w.astype(np.float16) if w.ndim == 2 else w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# -- quantization -------------------------------------------------------------------------------
def quantize(src: Path, dst: Path, quant: str, n_threads: int = 2) -> None:
    """llama.cpp's quantizer, from Python."""
    llama_cpp = require("llama_cpp", "edge", package="llama-cpp-python")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[check_quant(quant)])
    params.nthread = n_threads
    params.allow_requantize = True
    import logging

    from llama_cpp import _logger  # noqa: F401  (installs the callback that honours this logger's level)

    log = logging.getLogger("llama-cpp-python")
    level = log.level
    log.setLevel(logging.ERROR)  # one line per tensor otherwise; fallbacks are reported from the output
    try:
        status = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    finally:
        log.setLevel(level)
    if status != 0:
        raise ExportError(
            f"llama.cpp could not quantize {src} to {quant} (status {status}); the input may be truncated "
            "or of an architecture this llama-cpp-python does not know"
        )


def tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each type a GGUF holds (shows K-quant fallbacks)."""
    gguf = require("gguf", "edge")
    reader = gguf.GGUFReader(str(path))
    return dict(Counter(t.tensor_type.name for t in reader.tensors))


def kquant_fallback_warning(quant: str, types: dict[str, int]) -> str | None:
    if "_k" not in quant:
        return None
    # a K-quant mix uses several K types on purpose (Q4_K_M puts some tensors in Q6_K); any
    # other type on a weight tensor is llama.cpp's fallback for rows it could not K-quantize
    quantized = {k: v for k, v in types.items() if k not in ("F32",)}
    kept = sum(v for k, v in quantized.items() if k.endswith("_K"))
    fallen = sum(quantized.values()) - kept
    if fallen == 0:
        return None
    return (
        f"{quant}: {fallen} of {sum(quantized.values())} weight tensors fell back to other types "
        f"({', '.join(f'{k} {v}' for k, v in sorted(types.items()))}) because their rows are not divisible "
        f"by {K_QUANT_ROW}; for this model q4_0 / q4_1 / q8_0 are usually smaller or better"
    )


def default_gguf_out(source_name: str, quant: str) -> Path:
    return Path("builds") / f"{source_name}-{quant}.gguf"


def export_gguf(model: str | os.PathLike[str], config: GGUFExportConfig | None = None, *,
                base: str | os.PathLike[str] | None = None) -> GGUFExportResult:
    """MODEL (HF folder, adapter, .gguf, 'smollm2') -> a quantized GGUF, written atomically."""
    from srl_sdk.edge.merge import resolve_export_source, source_gguf

    config = config or GGUFExportConfig()
    started = time.perf_counter()
    hf_dir = resolve_export_source(model, base=base)
    out = Path(config.out or default_gguf_out(source_label(model), config.quant)).expanduser()
    if out.suffix != ".gguf":
        raise ConfigError(f"--out {out} must end in .gguf")
    notes: list[str] = []
    with staged_file(out) as partial:
        f16 = partial.with_name(partial.name + ".f16")
        try:
            converter = config.converter
            if converter in ("auto", "official"):
                try:
                    convert_official(hf_dir, f16)
                    converter = "official"
                except ExportError as exc:
                    if config.converter == "official":
                        raise
                    notes.append(f"official converter unavailable ({exc}); used the gguf-py writer")
                    converter = "gguf-py"
            if converter == "gguf-py":
                tokenizer = config.tokenizer_gguf or source_gguf(model)
                if tokenizer is None:
                    raise ExportError(
                        "the gguf-py writer needs a GGUF to copy the tokenizer from; pass tokenizer_gguf "
                        "(--tokenizer-from) or let the official converter run"
                    )
                convert_gguf_py(hf_dir, f16, Path(tokenizer))
            if config.quant == "f16":
                os.replace(f16, partial)
            else:
                quantize(f16, partial, config.quant, config.n_threads)
        finally:
            f16.unlink(missing_ok=True)
        types = tensor_types(partial)
    warning = kquant_fallback_warning(config.quant, types)
    if warning:
        warnings.warn(warning, stacklevel=2)
        notes.append(warning)
    return GGUFExportResult(path=out, quant=config.quant, converter=converter, size_bytes=size_of(out),
                            seconds=time.perf_counter() - started, tensor_types=types, warnings=notes)


def source_label(model: str | os.PathLike[str]) -> str:
    from srl_sdk.engines.models import is_alias

    text = str(model)
    if is_alias(text):
        return "smollm2-135m-instruct"
    return Path(text).expanduser().resolve().name.removesuffix(".gguf") or "model"
