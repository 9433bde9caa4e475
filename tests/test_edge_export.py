"""GGUF and ONNX exports of the real SmolLM2, and every kind of bad input the issue lists."""

from __future__ import annotations

import errno
import json
import shutil

import pytest
from typer.testing import CliRunner

from srl_sdk.cli import app
from srl_sdk.edge.gguf_export import GGUFExportConfig, export_gguf, kquant_fallback_warning
from srl_sdk.edge.merge import merge_adapter, resolve_export_source
from srl_sdk.edge.onnx_export import OnnxExportConfig, export_onnx
from srl_sdk.engines import load_engine
from srl_sdk.engines.base import SamplingParams
from srl_sdk.engines.models import smollm2_gguf_path
from srl_sdk.errors import ConfigError, ExportError, ModelError

PROMPT_MESSAGES = [{"role": "user", "content": "What is 12 + 30?"}]


def greedy(model, n=12):
    with load_engine(model, n_threads=2, n_ctx=512) as engine:
        return "".join(e.text for e in engine.stream(engine.render(PROMPT_MESSAGES), SamplingParams(max_tokens=n)))


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def official_q4_0(smollm2_hf_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf") / "smol-q4_0.gguf"
    return export_gguf(smollm2_hf_dir, GGUFExportConfig(quant="q4_0", out=out, converter="official"))


def test_official_converter_and_llama_quantizer_make_a_working_q4_0(official_q4_0):
    result = official_q4_0
    assert result.converter == "official" and result.path.is_file()
    assert result.tensor_types.get("Q4_0", 0) > 200  # the weights really are q4_0
    assert 80e6 < result.size_bytes < 100e6
    assert leftovers(result.path.parent) == []
    assert greedy(result.path).strip()


def test_gguf_py_writer_matches_the_official_converter(smollm2_hf_dir, official_q4_0, tmp_path):
    result = export_gguf(smollm2_hf_dir, GGUFExportConfig(quant="q4_0", out=tmp_path / "w.gguf", converter="gguf-py",
                                                  tokenizer_gguf=smollm2_gguf_path()))
    assert result.converter == "gguf-py"
    assert result.tensor_types == official_q4_0.tensor_types
    assert greedy(result.path) == greedy(official_q4_0.path)


def test_kquant_fallback_is_reported():
    types = {"F32": 61, "Q4_K": 92, "Q5_0": 150, "Q8_0": 30}
    warning = kquant_fallback_warning("q4_k_m", types)
    assert warning and "180 of 272" in warning and "256" in warning
    assert kquant_fallback_warning("q4_k_m", {"F32": 3, "Q4_K": 10, "Q6_K": 2}) is None
    assert kquant_fallback_warning("q8_0", types) is None


def test_unknown_quant_type_is_refused_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="q4_k_m"):
        GGUFExportConfig(quant="q3_z")
    result = CliRunner().invoke(app, ["export", "gguf", "smollm2", "--quant", "q3_z", "--out", str(tmp_path / "x.gguf")])
    assert result.exit_code == 1 and "unknown quant type" in result.output
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_is_not_a_model_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ExportError, match="is not a model"):
        export_gguf(tmp_path, GGUFExportConfig(out=tmp_path / "out.gguf"))
    with pytest.raises(ExportError, match="does not exist"):
        resolve_export_source(tmp_path / "missing")
    assert not (tmp_path / "out.gguf").exists()


def test_an_adapter_whose_base_is_missing_names_what_to_pass(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "base_model_name_or_path": str(tmp_path / "gone"), "r": 4}))
    with pytest.raises(ExportError, match="--base"):
        export_gguf(adapter, GGUFExportConfig(out=tmp_path / "out.gguf"))
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    with pytest.raises(ExportError, match="--base"):
        merge_adapter(adapter)
    assert not (tmp_path / "out.gguf").exists()


def test_lora_adapter_is_merged_into_its_base(smollm2_hf_dir, tmp_path):
    import peft
    import torch
    import transformers

    torch.manual_seed(0)  # the random LoRA weights (init_lora_weights=False) are the same every run
    base = transformers.AutoModelForCausalLM.from_pretrained(str(smollm2_hf_dir), dtype="float32")
    lora = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter = tmp_path / "adapter"
    lora.save_pretrained(str(adapter))
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        expected = lora(ids).logits
        plain = lora.get_base_model()
    merged_dir = merge_adapter(adapter, base=smollm2_hf_dir, out_dir=tmp_path / "merged")
    assert (merged_dir / "model.safetensors").is_file() and (merged_dir / "tokenizer.json").is_file()
    merged = transformers.AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype="float32")
    with torch.no_grad():
        got = merged(ids).logits
    assert torch.allclose(got, expected, atol=1e-3)
    del plain


def test_disk_full_leaves_no_build_and_no_temp(smollm2_hf_dir, tmp_path, monkeypatch):
    import srl_sdk.edge.gguf_export as gguf_export

    def disk_fills_while_converting(hf, out_file, outtype="f16"):
        with open(out_file, "wb") as handle:
            handle.write(b"GGUF" + b"\0" * 4096)  # a partial intermediate must be cleaned up too
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf_export, "convert_official", disk_fills_while_converting)
    with pytest.raises(ExportError, match="disk filled up"):
        export_gguf(smollm2_hf_dir, GGUFExportConfig(quant="q4_0", out=tmp_path / "full.gguf", converter="official"))
    assert list(tmp_path.iterdir()) == []


def test_truncated_gguf_is_a_clear_error_and_never_exported(official_q4_0, tmp_path):
    truncated = tmp_path / "cut.gguf"
    with official_q4_0.path.open("rb") as src:
        truncated.write_bytes(src.read(official_q4_0.size_bytes // 2))
    with pytest.raises(ModelError):
        load_engine(truncated, n_threads=1)
    with pytest.raises((ExportError, ModelError)):
        export_gguf(truncated, GGUFExportConfig(out=tmp_path / "out.gguf"))
    assert not (tmp_path / "out.gguf").exists()


def test_onnx_int4_export_is_atomic_and_runs(smollm2_hf_dir, tmp_path):
    result = export_onnx(smollm2_hf_dir, OnnxExportConfig(precision="int4", out=tmp_path / "onnx"))
    assert (result.path / "genai_config.json").is_file() and (result.path / "model.onnx").is_file()
    assert 70e6 < result.size_bytes < 120e6
    assert leftovers(tmp_path) == []
    assert greedy(result.path).strip()


def test_onnx_export_failures_leave_nothing(smollm2_hf_dir, tmp_path, monkeypatch):
    import srl_sdk.edge.onnx_export as onnx_export

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx_export.subprocess, "run", full_disk)
    with pytest.raises(ExportError, match="disk filled up"):
        export_onnx(smollm2_hf_dir, OnnxExportConfig(precision="int4", out=tmp_path / "onnx"))
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    broken = tmp_path / "broken"
    shutil.copytree(smollm2_hf_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ExportError, match="builder failed"):
        export_onnx(broken, OnnxExportConfig(precision="int4", out=tmp_path / "onnx"))
    assert not (tmp_path / "onnx").exists() and leftovers(tmp_path) == []


def test_sigkill_during_export_leaves_no_build_and_the_next_export_sweeps_it(smollm2_hf_dir, tmp_path):
    """`srl export gguf` killed without warning while it writes: nothing under the final name; its
    hidden temporaries are removed by the next export to that name, which then succeeds."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from srl_sdk.edge.files import remove_dead_partials

    out = tmp_path / "killed.gguf"
    log = (tmp_path / "export.log").open("wb")
    command = [sys.executable, "-m", "srl_sdk.cli", "export", "gguf", str(smollm2_hf_dir), "--quant", "q8_0",
               "--out", str(out), "--threads", "1"]
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})

    def partial_bytes() -> int:
        return sum(p.stat().st_size for p in tmp_path.glob(f".{out.name}.{proc.pid}-*") if p.is_file())

    deadline = time.monotonic() + 300
    try:
        while partial_bytes() < 1_000_000:  # mid-write: the converter has written at least 1 MB
            assert proc.poll() is None, (tmp_path / "export.log").read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the export wrote nothing within 5 minutes"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        log.close()
    assert not out.exists(), "a killed export left a file under the final name"
    stale = sorted(p.name for p in tmp_path.glob(f".{out.name}.*"))
    assert stale and all(name.startswith(f".{out.name}.{proc.pid}-") for name in stale), stale

    # an export running beside the leftovers keeps its own temporaries (its PID is alive)
    mine = tmp_path / f".{out.name}.{os.getpid()}-inprogress.partial"
    mine.write_bytes(b"GGUF")
    result = export_gguf(smollm2_hf_dir, GGUFExportConfig(quant="q8_0", out=out, n_threads=2))
    assert result.path == out and out.is_file()
    assert leftovers(tmp_path) == [mine.name]
    assert remove_dead_partials(out) == []
    assert greedy(out).strip()
