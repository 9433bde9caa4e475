"""Edge builds: merge LoRA adapters, export quantized GGUF and ONNX, and measure what they cost.

Heavy libraries (torch, transformers, peft, llama_cpp, onnxruntime-genai) are imported inside the
functions that use them; importing this package stays light.
"""

from __future__ import annotations

__all__ = [
    "GGUFExportConfig", "export_gguf", "OnnxExportConfig", "export_onnx",
    "ParityConfig", "check_parity", "merge_adapter", "resolve_export_source", "export_lora_gguf",
]


def __getattr__(name: str):
    if name in ("GGUFExportConfig", "export_gguf"):
        from srl_sdk.edge import gguf_export as module
    elif name in ("OnnxExportConfig", "export_onnx"):
        from srl_sdk.edge import onnx_export as module
    elif name in ("ParityConfig", "check_parity"):
        from srl_sdk.edge import parity as module
    elif name == "export_lora_gguf":
        from srl_sdk.edge import lora_gguf as module
    elif name in ("merge_adapter", "resolve_export_source"):
        from srl_sdk.edge import merge as module
    else:
        raise AttributeError(name)
    return getattr(module, name)
