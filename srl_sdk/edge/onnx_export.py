"""HF folder -> ONNX decoder with KV cache, via onnxruntime-genai's model builder.

optimum-onnx cannot live beside transformers 5, so the builder of onnxruntime-genai is the
route: it writes model.onnx (+ .data), genai_config.json, tokenizer and chat template, with
int4 / int8 weight-only quantization (MatMulNBits) built in, and its output runs on the
torch-free onnxruntime-genai runtime (`OnnxEngine`). The builder itself needs torch, onnx,
onnx-ir and transformers (the `export` extra). It runs as a subprocess
(`python -m onnxruntime_genai.models.builder`) into a temporary folder that is renamed into
place only when complete, so an interrupted export leaves nothing that looks finished.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from srl_sdk.edge.files import size_of, staged_dir
from srl_sdk.errors import ExportError, require

BUILDER_TIMEOUT_S = 3600
PRECISIONS = ("int4", "int8", "fp32")


class OnnxExportConfig(BaseModel):
    """How `export_onnx` builds an ONNX model. Paired with `export_onnx`."""

    model_config = ConfigDict(extra="forbid")

    precision: Literal["int4", "int8", "fp32"] = "int8"
    out: Path | None = Field(default=None, description="output folder (default: builds/<model>-onnx-<precision>)")
    execution_provider: Literal["cpu", "cuda"] = "cpu"
    n_threads: int = Field(default=2, ge=1, le=256)


class OnnxExportResult(BaseModel):
    path: Path
    precision: str
    size_bytes: int
    seconds: float


def export_onnx(model: str | os.PathLike[str], config: OnnxExportConfig | None = None, *,
                base: str | os.PathLike[str] | None = None) -> OnnxExportResult:
    """MODEL (HF folder, adapter, .gguf, 'smollm2') -> an onnxruntime-genai build folder."""
    from srl_sdk.edge.gguf_export import source_label
    from srl_sdk.edge.merge import resolve_export_source

    config = config or OnnxExportConfig()
    for module, package in (("onnxruntime_genai", "onnxruntime-genai"), ("onnx", "onnx"), ("onnx_ir", "onnx-ir"),
                            ("torch", "torch"), ("transformers", "transformers")):
        require(module, "export", package=package)  # the builder imports them but does not declare them
    started = time.perf_counter()
    hf_dir = resolve_export_source(model, base=base)
    out = Path(config.out or Path("builds") / f"{source_label(model)}-onnx-{config.precision}").expanduser()
    if out.exists() and not (out / "genai_config.json").is_file():
        raise ExportError(f"{out} exists and is not an ONNX build; choose another --out or remove it")
    with staged_dir(out) as staging, tempfile.TemporaryDirectory(
            prefix=staging.name.removesuffix(".partial") + "-cache-", suffix=".partial", dir=staging.parent) as cache:
        command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(staging),
                   "-p", config.precision, "-e", config.execution_provider, "-c", cache]
        env = {**os.environ, "OMP_NUM_THREADS": str(config.n_threads)}
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=BUILDER_TIMEOUT_S, env=env)
        except subprocess.TimeoutExpired as exc:
            raise ExportError(f"the ONNX builder did not finish in {BUILDER_TIMEOUT_S} s on {hf_dir}") from exc
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-6:]
            if any("No space left" in line for line in tail):
                raise OSError(28, "No space left on device")
            raise ExportError(f"onnxruntime-genai's builder failed on {hf_dir}: " + " | ".join(tail))
        if not (staging / "genai_config.json").is_file():
            raise ExportError(f"the ONNX builder finished without genai_config.json in {staging}; see its output")
    return OnnxExportResult(path=out, precision=config.precision, size_bytes=size_of(out),
                            seconds=time.perf_counter() - started)
