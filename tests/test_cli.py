"""The `srl` command line, run as a user runs it (a real subprocess)."""

import json
import os
import subprocess
import sys

import pytest

from srl_sdk import TraceStore


def srl(*args, env_home, timeout=600):
    env = {**os.environ, "SRL_HOME": str(env_home), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "srl_sdk.cli", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("cli_home")


@pytest.fixture(scope="module")
def reasoned(home, gsm8k_path):
    out = srl("reason", "--from", str(gsm8k_path), "--index", "0", "--max-steps", "2", env_home=home)
    assert out.returncode == 0, out.stderr
    return out


def test_reason_prints_steps_and_saves_the_trace(reasoned, home):
    text = reasoned.stdout
    assert "Problem:" in text and "Step 1" in text and "Step 2" in text
    assert "conf mean" in text and "Answer:" in text
    traces = TraceStore(home / "traces.db").list()
    assert len(traces) == 1 and traces[0].n_steps >= 2


def test_traces_list_and_show(reasoned, home):
    trace_id = TraceStore(home / "traces.db").list()[0].id
    listed = srl("traces", "list", env_home=home)
    assert listed.returncode == 0 and trace_id in listed.stdout
    shown = srl("traces", "show", trace_id, env_home=home)
    assert shown.returncode == 0 and "Step 1" in shown.stdout
    as_json = srl("traces", "show", trace_id, "--json", env_home=home)
    assert json.loads(as_json.stdout)["id"] == trace_id


def test_unknown_trace_is_one_readable_line(home):
    out = srl("traces", "show", "nope", env_home=home)
    assert out.returncode == 1
    assert "no trace with id 'nope'" in out.stderr
    assert "Traceback" not in out.stderr


def test_empty_problem_fails_cleanly(home):
    out = srl("reason", "   ", "--no-save", env_home=home)
    assert out.returncode == 1 and "problem is empty" in out.stderr and "Traceback" not in out.stderr


def test_missing_model_file_fails_cleanly(home, tmp_path):
    out = srl("reason", "What is 2+2?", "--model", str(tmp_path / "missing.gguf"), env_home=home)
    assert out.returncode == 1 and "does not exist" in out.stderr and "Traceback" not in out.stderr


def test_data_split_steps_and_instances(home, tmp_path, gsm8k_path):
    sample = tmp_path / "sample.jsonl"
    with gsm8k_path.open() as src:
        lines = [next(src) for _ in range(5)]
    sample.write_text("".join(lines) + "this is not json\n")
    out_steps = tmp_path / "steps.jsonl"
    done = srl("data", "split", str(sample), "--out", str(out_steps), env_home=home)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out_steps.read_text().splitlines()]
    assert len(rows) == 5 and all(r["steps"] for r in rows)
    assert "line 6" in done.stderr or "malformed" in done.stderr.lower()
    out_inst = tmp_path / "inst.jsonl"
    done = srl("data", "split", str(sample), "--output", "instances", "--out", str(out_inst), env_home=home)
    assert done.returncode == 0, done.stderr
    instances = [json.loads(line) for line in out_inst.read_text().splitlines()]
    assert len(instances) == sum(len(r["steps"]) - 1 for r in rows)
