"""Parity reports: real builds against the embedded model, through the same driver, in child processes."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from srl_sdk.cli import app
from srl_sdk.edge.parity import ParityConfig, check_parity, held_out_problems
from srl_sdk.engines.models import smollm2_gguf_path
from srl_sdk.errors import ConfigError, InputError

FAST = dict(problems=2, max_steps=2, max_thought_tokens=32, max_action_tokens=40)


def test_a_model_against_itself_agrees_fully(tmp_path, gsm8k_path):
    build = tmp_path / "same.gguf"
    build.write_bytes(smollm2_gguf_path().read_bytes())
    report = check_parity(build, "smollm2", ParityConfig(data=gsm8k_path, **FAST))
    assert report.answer_agreement == 1.0
    assert report.mean_step_similarity == 1.0  # greedy, same weights, same driver
    assert all(p.build_steps == p.reference_steps for p in report.problems)
    assert report.build.size_bytes == report.reference.size_bytes
    assert report.build.peak_rss_mb > 50 and report.build.tokens_per_s > 0 and report.build.load_s > 0
    saved = json.loads((tmp_path / "same.parity.json").read_text())
    assert saved["answer_agreement"] == 1.0 and len(saved["problems"]) == 2
    assert "Answer agreement" in (tmp_path / "same.parity.md").read_text()


def test_edge_check_compares_an_onnx_build_with_the_gguf(tmp_path, gsm8k_path):
    from edge_builds import small_onnx

    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["edge", "check", str(small_onnx()), "--against", "smollm2", "--problems", "2",
                                      "--max-steps", "2", "--data", str(gsm8k_path)])
    assert result.exit_code == 0, result.output
    assert "onnx" in result.output and "llama.cpp" in result.output
    report_json = small_onnx().with_name(small_onnx().name + ".parity.json")
    data = json.loads(report_json.read_text())
    assert data["build"]["engine"] == "onnx" and data["reference"]["engine"] == "llama.cpp"
    assert 0.0 <= data["mean_step_similarity"] <= 1.0
    assert data["build"]["size_bytes"] < data["reference"]["size_bytes"]  # int4 vs Q4_1 + f32 norms
    del out


def test_held_out_problems_are_the_last_rows(gsm8k_path):
    rows = held_out_problems(gsm8k_path, 3)
    lines = gsm8k_path.read_text(encoding="utf-8").strip().splitlines()
    assert [r["question"] for r in rows] == [json.loads(line)["question"] for line in lines[-3:]]


def test_bad_parity_inputs_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        check_parity(tmp_path / "none.gguf", "smollm2")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok"}\nnot json\n')
    with pytest.raises(InputError, match="bad.jsonl:2"):
        held_out_problems(bad, 2)
