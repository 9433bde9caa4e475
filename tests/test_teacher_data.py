"""Teacher trajectories (`srl data generate --teacher`): verified rejection sampling, resume, report.

Two teachers: a small stand-in HTTP server in this file that returns chosen OpenAI-format replies
(so every reject reason, a retry, a kept sample and the difficulty filter happen on purpose), and
the real `srl serve` with SmolLM2 on 127.0.0.1 (which mostly gets rejected: that is the point of
verifying).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from srl_sdk.cli import app
from srl_sdk.data.rows import read_jsonl_rows
from srl_sdk.data.teacher import (
    REJECT_REASONS,
    TeacherConfig,
    generate_from_teacher,
    judge_reply,
    read_problems,
    reply_texts,
)
from srl_sdk.errors import APIConnectionError, NotFoundError
from srl_sdk.training.data import DataConfig, load_trajectories

GOOD_P1 = "Leo has 12 * 3 = 36 marbles.\nAva has 36 - 5 = 31 marbles.\n#### 31"

# problem tag -> the teacher's replies, in order (the last one repeats)
SCRIPT: dict[str, list[dict[str, Any]]] = {
    # wrong answer first, then a verified one: kept at sample 2, no third request
    "P1": [{"content": "Leo has 36 marbles.\nAva has 30 marbles.\n#### 30"}, {"content": GOOD_P1}],
    # one sample per reject reason, never kept
    "P2": [
        {"content": ""},
        {"content": "Let me count them one by one.\nThere are many apples."},
        {"content": "So it is 42. #### 42"},
        {"content": "Tom has 12 + 20 = 31 apples.\nWith 10 more he has 32 + 10 = 42.\n#### 42"},
    ],
    # the endpoint fails every time: api_error after the client's retries, retried on resume
    "P3": [{"status": 500}],
    # fails once, then answers: the client's retry hides the failure
    "P4": [{"status": 500}, {"content": "First 2 + 3 = 5.\nThen 5 * 2 = 10.\n#### 10"}],
    # reasoning in the reasoning fields, steps in the content
    "P5": [{"content": "Half of 48 is 48 / 2 = 24.\nIn all 48 + 24 = 72.\n\\boxed{72}",
            "reasoning_content": "April 48, May half.", "reasoning": "April 48, May half."}],
    # a server without a reasoning parser: <think> tags in the content
    "P6": [{"content": "<think>count the legs</think>Each cat has 4 legs.\n3 cats have 3 * 4 = 12 legs.\n#### 12"}],
}
PROBLEMS = [
    {"id": "p1", "question": "[P1] Mia has 12 marbles. Leo has 3 times as many. Ava has 5 fewer than Leo. Ava?",
     "answer": "Leo: 36\nAva: 31\n#### 31"},
    {"id": "p2", "problem": "[P2] Tom has 12 apples and gets 20, then 10 more. How many?", "answer": 42},
    {"id": "p3", "problem": "[P3] What is 1 + 1?", "answer": "2"},
    {"id": "p4", "problem": "[P4] What is (2 + 3) * 2?", "solution": "It is \\boxed{10}."},
    {"id": "p5", "problem": "[P5] Natalia sold 48 clips in April and half as many in May. In all?", "answer": "72"},
    {"id": "p6", "problem": "[P6] How many legs do 3 cats have?", "answer": "#### 12"},
]
BAD_LINES = ["not json", json.dumps({"problem": "[PX] no gold"}), json.dumps(PROBLEMS[0])]


class StandIn:
    """A tiny OpenAI-compatible chat server that answers from SCRIPT and records every request."""

    def __init__(self, script: dict[str, list[dict[str, Any]]], models: tuple[str, ...] = ("teacher",),
                 weak: dict[str, list[dict[str, Any]]] | None = None, delay_s: float = 0.0) -> None:
        self.script = {key: list(replies) for key, replies in script.items()}
        self.weak = {key: list(replies) for key, replies in (weak or {}).items()}
        self.models = models
        self.delay_s = delay_s
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                with stand_in.lock:
                    stand_in.in_flight += 1
                    stand_in.max_in_flight = max(stand_in.max_in_flight, stand_in.in_flight)
                try:
                    time.sleep(stand_in.delay_s)
                    status, payload = stand_in.answer(self.path, body)
                finally:
                    with stand_in.lock:
                        stand_in.in_flight -= 1
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header("retry-after-ms", "5")  # keep the client's backoff short in tests
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def calls(self, tag: str, model: str = "teacher") -> int:
        return sum(1 for r in self.requests if r["model"] == model and f"[{tag}]" in r["messages"][-1]["content"])

    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.requests.append(body)
        if not path.endswith("/chat/completions"):
            return 404, {"error": {"message": f"no route {path}"}}
        if body["model"] not in self.models:
            return 404, {"error": {"message": f"model {body['model']!r} does not exist", "code": "model_not_found"}}
        script = self.weak if body["model"] == "weak" else self.script
        user = body["messages"][-1]["content"]
        tag = next((key for key in script if f"[{key}]" in user), None)
        if tag is None:
            return 200, completion({"content": "I do not know."}, body["model"])
        with self.lock:
            replies = script[tag]
            reply = replies.pop(0) if len(replies) > 1 else replies[0]
        if "status" in reply:
            return reply["status"], {"error": {"message": "stand-in failure"}}
        return 200, completion(reply, body["model"])

    def __enter__(self) -> "StandIn":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def completion(reply: dict[str, Any], model: str) -> dict[str, Any]:
    message = {"role": "assistant", "content": reply["content"]}
    for field in ("reasoning_content", "reasoning"):
        if field in reply:
            message[field] = reply[field]
    return {"id": "chatcmpl-standin", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": reply.get("finish_reason", "stop")}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}}


def write_problems(path: Path, rows: list[dict[str, Any]], extra_lines: list[str] = ()) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(line + "\n" for line in extra_lines))
    return path


def config(stand_in: StandIn, tmp_path: Path, **overrides: Any) -> TeacherConfig:
    values = dict(url=stand_in.url, model="teacher", input=tmp_path / "problems.jsonl", out=tmp_path / "out",
                  samples=4, max_retries=1, timeout_s=30, progress=False, verifier="exact")
    values.update(overrides)
    return TeacherConfig(**values)


def check_report_adds_up(report: dict[str, Any]) -> None:
    samples = report["samples"]
    assert samples["taken"] == samples["kept"] + sum(samples["rejected"].values())


# -- judging, without a server -----------------------------------------------------------------


def test_judge_reply_reasons_in_order():
    assert judge_reply("", "5").reason == "empty_reply"
    assert judge_reply("some text without an answer", "5").reason == "no_answer"
    assert judge_reply("a\nb\n#### 6", "5").reason == "wrong_answer"
    assert judge_reply("#### 5", "5").reason == "too_few_steps"
    bad = judge_reply("2 + 2 = 5\nso 5\n#### 5", "5")
    assert bad.reason == "arithmetic_error" and "2 + 2" in bad.detail
    good = judge_reply("2 + 3 = 5\nso five\n#### 5", "5.0")
    assert good.reason is None and good.steps == ["2 + 3 = 5", "so five"] and good.style == "lines"
    # LaTeX prose is cut by sentence, never inside display math
    latex = judge_reply("We have \\[ x = 2 + 3. \\] So the answer is $\\boxed{5}$.", "5")
    assert latex.reason is None and latex.style == "sentences" and len(latex.steps) == 2


def test_reply_texts_reads_reasoning_fields_and_think_tags():
    class Message:
        def __init__(self, content, **extra):
            self.content = content
            self.model_extra = extra

    assert reply_texts(Message("step\n#### 1", reasoning_content="r1")) == ("step\n#### 1", "r1")
    assert reply_texts(Message("step", reasoning="r2")) == ("step", "r2")
    assert reply_texts(Message("<think>private</think>\nstep")) == ("step", "private")
    assert reply_texts(Message(None)) == ("", "")


def test_read_problems_counts_unusable_lines(tmp_path):
    path = write_problems(tmp_path / "problems.jsonl", PROBLEMS, BAD_LINES)
    problems, drops = read_problems(path)
    assert [p.id for p in problems] == ["p1", "p2", "p3", "p4", "p5", "p6"]
    assert [p.gold for p in problems] == ["31", "42", "2", "10", "72", "12"]
    assert drops == {"not_json": 1, "no_gold_answer": 1, "duplicate_problem": 1}


# -- the stand-in teacher ------------------------------------------------------------------------


def test_every_reject_reason_a_retry_and_kept_samples(tmp_path):
    write_problems(tmp_path / "problems.jsonl", PROBLEMS, BAD_LINES)
    with StandIn(SCRIPT) as stand_in:
        report = generate_from_teacher(config(stand_in, tmp_path, concurrency=3))
    check_report_adds_up(report)
    rejected = report["samples"]["rejected"]
    assert set(rejected) == set(REJECT_REASONS)
    assert all(rejected[reason] >= 1 for reason in REJECT_REASONS), rejected
    assert rejected == {"api_error": 4, "empty_reply": 1, "no_answer": 1, "wrong_answer": 1,
                        "too_few_steps": 1, "arithmetic_error": 1}
    assert report["samples"]["kept"] == 4 and report["samples"]["taken"] == 13
    assert report["problems"] | {} == {"finished": 6, "kept": 4, "rejected": 1, "too_easy": 0, "error": 1,
                                       "skipped_this_run": 0}
    assert report["input"]["dropped_lines"] == {"not_json": 1, "no_gold_answer": 1, "duplicate_problem": 1}
    # stop at the first kept sample; a 500 is retried by the client (max_retries=1: 2 requests a sample)
    assert stand_in.calls("P1") == 2 and stand_in.calls("P2") == 4
    assert stand_in.calls("P3") == 8 and stand_in.calls("P4") == 2
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))

    rows = {row["id"]: row for row in read_jsonl_rows(tmp_path / "out" / "trajectories.jsonl")}
    assert set(rows) == {"p1", "p4", "p5", "p6"}
    p1 = rows["p1"]
    assert p1["steps"] == ["Leo has 12 * 3 = 36 marbles.", "Ava has 36 - 5 = 31 marbles."]
    assert p1["answer"] == "31" and p1["solution"] == GOOD_P1
    meta = p1["metadata"]
    assert meta["source"] == "teacher" and meta["sample"] == 2 and meta["teacher"]["model"] == "teacher"
    assert meta["generation"]["seed"] == 1 and meta["generation"]["temperature"] == 0.7
    assert meta["generation"]["max_tokens"] == 2048 and meta["generation"]["prompt_sha256"]
    assert meta["usage"]["completion_tokens"] == 20 and meta["finish_reason"] == "stop"
    assert rows["p5"]["reasoning"] == "April 48, May half." and rows["p5"]["answer"] == "72"
    assert rows["p6"]["reasoning"] == "count the legs" and rows["p6"]["steps"][0] == "Each cat has 4 legs."
    # the prompt template wrapped the problem; the seed moves with the sample
    first = next(r for r in stand_in.requests if "[P1]" in r["messages"][-1]["content"])
    assert "step by step" in first["messages"][-1]["content"] and first["seed"] == 0 and first["max_tokens"] == 2048

    # the output loads in srl train's reader with no drops
    items, drops = load_trajectories(DataConfig(source="jsonl", path=tmp_path / "out" / "trajectories.jsonl"))
    assert drops.dropped == 0 and drops.kept == len(items) == 4
    assert {item.answer for item in items} == {"31", "10", "72", "12"}


def test_resume_skips_finished_problems_and_retries_endpoint_failures(tmp_path):
    write_problems(tmp_path / "problems.jsonl", PROBLEMS)
    with StandIn(SCRIPT) as stand_in:
        generate_from_teacher(config(stand_in, tmp_path))
    before = (tmp_path / "out" / "trajectories.jsonl").read_text()
    # a crash left half a line at the end: the next row must not glue onto it
    with (tmp_path / "out" / "trajectories.jsonl").open("a") as handle:
        handle.write('{"id": "half')
    fixed = {**SCRIPT, "P3": [{"content": "1 + 1 = 2\nSo two.\n#### 2"}]}
    with StandIn(fixed) as again:
        report = generate_from_teacher(config(again, tmp_path))
    assert [r["messages"][-1]["content"].count("[P3]") for r in again.requests] == [1], "only P3 is asked again"
    assert report["problems"]["skipped_this_run"] == 5
    assert report["problems"]["kept"] == 5 and report["problems"]["error"] == 0
    check_report_adds_up(report)
    assert report["samples"]["taken"] == 13 + 1  # cumulative over both runs (P1 2, P2 4, P3 4, P4 1, P5 1, P6 1)
    text = (tmp_path / "out" / "trajectories.jsonl").read_text()
    assert text.startswith(before)
    rows = list(read_jsonl_rows(tmp_path / "out" / "trajectories.jsonl"))
    assert sorted(r["id"] for r in rows) == ["p1", "p3", "p4", "p5", "p6"]
    # a third run has nothing left to do; --retry-rejected samples P2 again
    with StandIn(SCRIPT) as third:
        generate_from_teacher(config(third, tmp_path))
        assert third.requests == []
        generate_from_teacher(config(third, tmp_path, retry_rejected=True, samples=1))
        assert third.calls("P2") == 1 and len(third.requests) == 1


def test_difficulty_filter_drops_what_the_weak_model_solves(tmp_path):
    write_problems(tmp_path / "problems.jsonl", [PROBLEMS[0], PROBLEMS[4]])
    weak = {"P1": [{"content": "#### 31"}], "P5": [{"content": "#### 70"}]}
    with StandIn(SCRIPT, models=("teacher", "weak"), weak=weak) as stand_in:
        report = generate_from_teacher(config(stand_in, tmp_path, weak_model="weak", weak_samples=2))
    assert report["problems"]["too_easy"] == 1 and report["problems"]["kept"] == 1
    assert report["difficulty"] == {"weak_model": "weak", "weak_url": stand_in.url, "weak_samples": 3,
                                    "weak_errors": 0, "too_easy": 1}
    assert stand_in.calls("P1") == 0, "a too-easy problem never reaches the teacher"
    assert stand_in.calls("P1", "weak") == 1 and stand_in.calls("P5", "weak") == 2
    check_report_adds_up(report)


def test_concurrency_limit_holds(tmp_path):
    many = [{"id": f"c{i}", "problem": f"[P5] copy {i}: Natalia sold 48 clips...", "answer": "72"} for i in range(8)]
    write_problems(tmp_path / "problems.jsonl", many)
    with StandIn(SCRIPT, delay_s=0.2) as stand_in:
        report = generate_from_teacher(config(stand_in, tmp_path, concurrency=3))
    assert report["problems"]["kept"] == 8
    assert stand_in.max_in_flight == 3


def test_setup_errors_stop_the_run(tmp_path):
    write_problems(tmp_path / "problems.jsonl", PROBLEMS[:2])
    with StandIn(SCRIPT) as stand_in:
        with pytest.raises(NotFoundError, match="no-such-model"):
            generate_from_teacher(config(stand_in, tmp_path, model="no-such-model"))
        url = stand_in.url
    with pytest.raises(APIConnectionError, match="cannot reach"):
        generate_from_teacher(config(stand_in, tmp_path, url=url, max_retries=0))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["samples"]["taken"] == 0


def test_missing_client_names_the_pip_command(tmp_path, monkeypatch):
    import sys

    from srl_sdk.errors import MissingDependencyError

    write_problems(tmp_path / "problems.jsonl", PROBLEMS[:1])
    monkeypatch.setitem(sys.modules, "openai", None)  # as if not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'srl-sdk\[teacher\]'"):
        generate_from_teacher(TeacherConfig(url="http://127.0.0.1:9/v1", model="m", input=tmp_path / "problems.jsonl",
                                            out=tmp_path / "out"))


def test_trl_stepwise_export(tmp_path):
    write_problems(tmp_path / "problems.jsonl", [PROBLEMS[0]])
    with StandIn(SCRIPT) as stand_in:
        report = generate_from_teacher(config(stand_in, tmp_path, trl_out=tmp_path / "prm.jsonl"))
    assert report["trl_rows"] == 1
    (row,) = [json.loads(line) for line in (tmp_path / "prm.jsonl").read_text().splitlines()]
    assert row == {"prompt": PROBLEMS[0]["question"], "completions": ["Leo has 12 * 3 = 36 marbles.",
                   "Ava has 36 - 5 = 31 marbles."], "labels": [True, True]}


def test_cli_teacher_mode(tmp_path, monkeypatch):
    write_problems(tmp_path / "problems.jsonl", PROBLEMS[:2])
    monkeypatch.setenv("MY_TEACHER_KEY", "sk-test")
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Solve: {problem}")
    with StandIn(SCRIPT) as stand_in:
        result = CliRunner().invoke(app, [
            "data", "generate", "--teacher", stand_in.url, "--model", "teacher", "--input", str(tmp_path / "problems.jsonl"),
            "--out", str(tmp_path / "out"), "--samples", "4", "--prompt-file", str(prompt), "--temperature", "0.2",
            "--max-tokens", "256", "--api-key-env", "MY_TEACHER_KEY", "--extra-body", '{"top_k": 5}', "--no-progress",
            "--verifier", "exact", "--max-retries", "0",
        ])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "1 kept, 1 rejected" in text and "samples: 6 taken, 1 kept" in text and "wrong_answer 1" in text
    # the two problems are sampled concurrently, so their requests arrive in either order
    expected = [{"role": "user", "content": "Solve: " + PROBLEMS[0]["question"]}]
    first = next(request for request in stand_in.requests if request["messages"] == expected)
    assert first["temperature"] == 0.2 and first["max_tokens"] == 256 and first["top_k"] == 5


@pytest.mark.parametrize("args, message", [
    (["--model", "m"], "--teacher needs --input"),
    (["--input", "x.jsonl"], "--teacher needs --model"),
    (["--model", "m", "--input", "x.jsonl", "--prompt", "no placeholder"], "must contain {problem}"),
    (["--model", "m", "--input", "x.jsonl", "--extra-body", "[1]"], "--extra-body must be a JSON object"),
    (["--model", "m", "--input", "missing.jsonl"], "cannot read problems from missing.jsonl"),
    (["--model", "m", "--input", "x.jsonl", "--split-style", "words"], "split_style"),
])
def test_cli_teacher_errors_are_one_line(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    write_problems(tmp_path / "x.jsonl", PROBLEMS[:1])
    result = CliRunner().invoke(app, ["data", "generate", "--teacher", "http://127.0.0.1:9/v1", "--out", "o", *args])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "error:" in text and message in text and "Traceback" not in result.output


# -- the real `srl serve` as the teacher -------------------------------------------------------


@pytest.mark.slow
def test_real_srl_serve_as_the_teacher(srl_server, tmp_path, gsm8k_rows):
    write_problems(tmp_path / "problems.jsonl", gsm8k_rows[:2])
    server = srl_server(limits=None, reason={"max_steps": 3, "max_action_tokens": 32})
    # srl serve runs its own step protocol on the user message: send the bare problem
    report = generate_from_teacher(TeacherConfig(
        url=server.url + "/v1", model="smollm2", input=tmp_path / "problems.jsonl", out=tmp_path / "out",
        samples=1, prompt="{problem}", max_tokens=96, temperature=0.0, progress=False, max_retries=0,
        timeout_s=300, extra_body={"max_steps": 3},
    ))
    check_report_adds_up(report)
    assert report["samples"]["taken"] == 2 and report["samples"]["rejected"]["api_error"] == 0
    assert report["problems"]["finished"] == 2
    rows = list(read_jsonl_rows(tmp_path / "out" / "trajectories.jsonl"))
    assert len(rows) == report["problems"]["kept"]  # measured: SmolLM2-135M is almost always rejected
    if rows:
        items, drops = load_trajectories(DataConfig(source="jsonl", path=tmp_path / "out" / "trajectories.jsonl"))
        assert drops.dropped == 0 and len(items) == len(rows)
