"""Real builds shared by the edge tests, cached under <repo>/.cache so a test run makes each once.

Not a test module (no test_ prefix). The HF folder is the embedded SmolLM2 converted by
`srl_sdk.engines.hf_folder.gguf_to_hf_dir`; builds are made by the SDK's own exporters. The caches are
keyed by the source file, and a build only counts once it is complete (exports are atomic).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache"
os.environ.setdefault("SRL_CONVERTER_CACHE", str(CACHE / "llama-cpp-src"))


def smollm2_hf_dir() -> Path:
    """The SDK's own cached conversion; in a test session its cache is <repo>/.cache/hf (conftest.py),
    so this is the one HF folder every test and the SDK itself use. Tests take the fixture."""
    from srl_sdk.engines.hf_folder import gguf_to_hf_dir

    return gguf_to_hf_dir("smollm2")


def small_gguf() -> Path:
    """SmolLM2 q4_0 through llama.cpp's official converter (cached)."""
    from srl_sdk.edge.gguf_export import GGUFExportConfig, export_gguf

    out = CACHE / "edge-builds" / "smollm2-q4_0.gguf"
    if not out.is_file():
        export_gguf(smollm2_hf_dir(), GGUFExportConfig(quant="q4_0", out=out, converter="official"))
    return out


def small_onnx() -> Path:
    """SmolLM2 int4 through onnxruntime-genai's builder (cached)."""
    from srl_sdk.edge.onnx_export import OnnxExportConfig, export_onnx

    out = CACHE / "edge-builds" / "smollm2-onnx-int4"
    if not (out / "genai_config.json").is_file():
        export_onnx(smollm2_hf_dir(), OnnxExportConfig(precision="int4", out=out))
    return out
