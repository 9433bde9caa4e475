"""Edge builds: merge LoRA adapters, export quantized GGUF and ONNX, and measure what they cost.

Heavy libraries (torch, transformers, peft, llama_cpp, onnxruntime-genai) are imported inside the
functions that use them; importing this package stays light.
"""

from __future__ import annotations

import importlib

__all__ = [
    "GGUFExportConfig", "export_gguf", "OnnxExportConfig", "export_onnx",
    "ParityConfig", "check_parity", "merge_adapter", "resolve_export_source", "export_lora_gguf",
]


# each public name -> the module that defines it, imported on first use
_HOMES = {
    "GGUFExportConfig": "gguf_export", "export_gguf": "gguf_export",
    "OnnxExportConfig": "onnx_export", "export_onnx": "onnx_export",
    "ParityConfig": "parity", "check_parity": "parity",
    "export_lora_gguf": "lora_gguf",
    "merge_adapter": "merge", "resolve_export_source": "merge",
}


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(name)
    return getattr(importlib.import_module(f"srl_sdk.edge.{_HOMES[name]}"), name)
