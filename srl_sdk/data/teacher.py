"""Expert trajectories from a teacher model behind any OpenAI-compatible endpoint, verified.

Most users have problems with gold answers and access to a bigger model, not expert step-by-step
solutions. This is rejection sampling as open-r1 runs it (a teacher behind vLLM, several
generations per problem, keep what the answer checker accepts), with the SRL-specific checks
added. For each problem, up to `samples` times: ask the teacher (the configurable prompt), read
the reply text and its `reasoning_content` / `reasoning` (or `<think>` tags), cut the text into
steps with the project's splitter, and keep the first sample that

    has text (else `empty_reply`) -> has a final answer (`no_answer`) -> whose answer matches
    the gold one (`wrong_answer`, `core.answers.answers_match`: exact numbers, plus math-verify
    when installed) -> has at least `min_steps` steps (`too_few_steps`) -> has no failing
    arithmetic check (`arithmetic_error`, `core.checks`);

a request that failed after the client's retries is `api_error`. The report counts every sample
by its outcome, so kept + rejects = samples taken.

Why it is built this way:
- The official `openai` client speaks to vLLM, llama.cpp's server, `srl serve` and hosted APIs
  alike, and its own `max_retries` does the retrying (exponential backoff with jitter, honouring
  Retry-After, on connection errors, 408/409/429 and 5xx): no hand-written retry loop.
- asyncio with `concurrency` workers bounds the requests in flight, and keeps everything on the
  main thread, where math-verify's SIGALRM timeout works.
- Append-only, flushed files make a run resumable: `trajectories.jsonl` gets each kept row the
  moment it is verified, `attempts.jsonl` one line per finished problem. A rerun skips problems
  that are kept, rejected or too easy (`retry_rejected` retries the rejected); a problem whose
  samples failed on the endpoint is retried. `report.json` is rebuilt from `attempts.jsonl`, so it
  covers every run into the folder.
- Difficulty filter (as s1K): with `weak_model`, a problem that the weaker model already solves in
  one of `weak_samples` tries is dropped as `too_easy` before the teacher is asked.
- Setup errors stop the run at once instead of being counted per sample: an unreachable endpoint,
  401/403/404, and any other refused request (4xx) before one request has succeeded.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..core.answers import answers_match, check_verifier, extract_answer, math_verify_available
from ..core.checks import check_arithmetic
from ..core.format import FINAL_MARKER, THINK_CLOSE, THINK_OPEN
from ..core.jsonl import read_jsonl, row_field
from ..core.splitting import SplitStyle, check_split_options, detect_style, split_solution
from ..errors import APIConnectionError, InputError, require, status_error
from .rows import JsonlAppender, export_trl_stepwise, gold_answer, problem_key, read_jsonl_rows, trajectory_row

__all__ = [
    "GENERATOR",
    "DEFAULT_PROMPT",
    "REJECT_REASONS",
    "TeacherConfig",
    "Problem",
    "Verdict",
    "read_problems",
    "gold_answer",
    "reply_texts",
    "judge_reply",
    "generate_from_teacher",
    "agenerate_from_teacher",
    "build_report",
    "format_report",
]

GENERATOR = "teacher-1"
TRAJECTORIES = "trajectories.jsonl"
ATTEMPTS = "attempts.jsonl"
REPORT = "report.json"

DEFAULT_PROMPT = (
    "Solve the following problem step by step. Write each step on its own line, and write out every "
    "calculation you make (for example 48 / 2 = 24). On the last line, write the final answer as "
    "#### <answer>.\n\nProblem: {problem}"
)

KEPT = "kept"
API_ERROR = "api_error"
EMPTY_REPLY = "empty_reply"
NO_ANSWER = "no_answer"
WRONG_ANSWER = "wrong_answer"
TOO_FEW_STEPS = "too_few_steps"
ARITHMETIC_ERROR = "arithmetic_error"
REJECT_REASONS = (API_ERROR, EMPTY_REPLY, NO_ANSWER, WRONG_ANSWER, TOO_FEW_STEPS, ARITHMETIC_ERROR)

Status = Literal["kept", "rejected", "too_easy", "error"]
_RETRYABLE_4XX = (408, 409, 429)


class TeacherConfig(BaseModel):
    """Everything one teacher run needs; every row's metadata records the generation settings."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    model: str = Field(min_length=1, description="the teacher's model name on that endpoint")
    input: Path = Field(description="JSONL problems with gold answers")
    out: Path = Field(description="folder for trajectories.jsonl, attempts.jsonl, report.json")
    samples: int = Field(default=4, ge=1, le=64, description="teacher samples per problem at most")
    prompt: str = Field(default=DEFAULT_PROMPT, description="user message; {problem} is replaced by the problem")
    system: str | None = Field(default=None, description="optional system message")
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int = Field(default=2048, ge=1)
    seed: int | None = Field(default=0, description="sample k (1-based) sends seed + k - 1; None sends none")
    concurrency: int = Field(default=4, ge=1, le=256, description="requests in flight at most")
    max_retries: int = Field(default=3, ge=0, le=20, description="the openai client's retries with backoff")
    timeout_s: float = Field(default=600.0, gt=0, description="per request")
    api_key_env: str = Field(default="OPENAI_API_KEY", description="environment variable holding the API key")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="extra request fields (vLLM: top_k, ...)")
    split_style: SplitStyle = Field(default="auto", description="auto: core.splitting.detect_style per reply")
    split_pattern: str | None = None
    min_steps: int = Field(default=2, ge=1)
    verifier: Literal["auto", "exact", "math"] = "auto"
    limit: int | None = Field(default=None, ge=1, description="use the first N usable problems")
    problem_field: str | None = Field(default=None, description="default: problem, else question")
    answer_field: str | None = Field(default=None, description="default: answer, else solution")
    weak_model: str | None = Field(default=None, description="difficulty filter: drop problems this model solves")
    weak_url: str | None = Field(default=None, description="the weak model's endpoint (default: url)")
    weak_samples: int = Field(default=1, ge=1, le=16)
    retry_rejected: bool = False
    trl_out: Path | None = Field(default=None, description="also write TRL's stepwise-supervision JSONL here")
    progress: bool = True

    @field_validator("url", "weak_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http(s) URL; give the endpoint's base URL, e.g. http://127.0.0.1:8000/v1")
        return value.rstrip("/") if value else value

    @field_validator("prompt")
    @classmethod
    def _has_problem(cls, value: str) -> str:
        if "{problem}" not in value:
            raise ValueError("the prompt must contain {problem}, where the problem text goes")
        return value

    def resolved_verifier(self) -> str:
        return ("math" if math_verify_available() else "exact") if self.verifier == "auto" else self.verifier

    def generation_settings(self) -> dict[str, Any]:
        """What shaped each sample (kept in every row's metadata and in the report)."""
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "samples": self.samples,
            "prompt_sha256": _sha(self.prompt),
            "system_sha256": _sha(self.system) if self.system else None,
            "extra_body": self.extra_body,
            "split_style": self.split_style,
            "min_steps": self.min_steps,
            "verifier": self.resolved_verifier(),
        }


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# -- problems -----------------------------------------------------------------------------------


class Problem(BaseModel):
    id: str
    problem: str
    gold: str
    where: str

    @property
    def key(self) -> str:
        return problem_key(self.problem)


def read_problems(
    path: Path, *, problem_field: str | None = None, answer_field: str | None = None, limit: int | None = None
) -> tuple[list[Problem], dict[str, int]]:
    """Usable problems of a JSONL file and the count of unusable lines by reason.

    A line is dropped (and counted) when it is not JSON / not an object, has no problem text, has
    no gold answer, or repeats an earlier problem. Ids: the row's `id`, else '<stem>-<line>'.
    """
    drops: Counter[str] = Counter()
    problems: list[Problem] = []
    seen: set[str] = set()
    for line in read_jsonl(path, what="problems", hint="check --input"):
        row = line.value
        if line.error is not None or not isinstance(row, dict):
            drops["not_json"] += 1
            continue
        text = row_field(row, problem_field, ("problem", "question"))
        if not isinstance(text, str) or not text.strip():
            drops["no_problem"] += 1
            continue
        gold = gold_answer(row_field(row, answer_field, ("answer", "solution")))
        if gold is None:
            drops["no_gold_answer"] += 1
            continue
        problem = Problem(id=str(row.get("id") or f"{path.stem}-{line.lineno}"), problem=text.strip(), gold=gold,
                          where=line.where)
        if problem.key in seen:
            drops["duplicate_problem"] += 1
            continue
        seen.add(problem.key)
        problems.append(problem)
        if limit is not None and len(problems) >= limit:
            break
    return problems, dict(drops)


# -- judging one reply ----------------------------------------------------------------------------


class Verdict(BaseModel):
    """A reply judged: `reason` None means kept."""

    reason: str | None
    steps: list[str] = Field(default_factory=list)
    answer: str | None = None
    style: str = ""
    detail: str = ""


def reply_texts(message: Any) -> tuple[str, str]:
    """(answer text, reasoning) of a chat message from any server.

    vLLM's reasoning parsers fill `reasoning_content` (older) or `reasoning` (newer); `srl serve`
    sends both; a server without a parser leaves `<think>...</think>` in the text itself.
    """
    content = getattr(message, "content", None) or ""
    extra = getattr(message, "model_extra", None) or {}
    reasoning = extra.get("reasoning_content") or extra.get("reasoning") or getattr(message, "reasoning", None) or ""
    if not isinstance(reasoning, str):
        reasoning = ""
    if THINK_CLOSE in content:
        head, _, content = content.partition(THINK_CLOSE)
        reasoning = "\n".join(part for part in (reasoning.strip(), head.replace(THINK_OPEN, "").strip()) if part)
    return content.strip(), reasoning.strip()


def judge_reply(
    content: str, gold: str, *, style: SplitStyle = "auto", pattern: str | None = None, min_steps: int = 2,
    verifier: str = "exact",
) -> Verdict:
    """Keep or reject one reply; the checks run in the order the module docstring lists."""
    if not content.strip():
        return Verdict(reason=EMPTY_REPLY)
    answer = extract_answer(content)
    if answer is None:
        return Verdict(reason=NO_ANSWER)
    if not answers_match(answer, gold, verifier):  # type: ignore[arg-type]
        return Verdict(reason=WRONG_ANSWER, answer=answer, detail=f"{answer!r} vs gold {gold!r}")
    resolved: SplitStyle = detect_style(content) if style == "auto" else style
    steps = split_solution(content, resolved, pattern)
    if len(steps) < min_steps:
        return Verdict(reason=TOO_FEW_STEPS, steps=steps, answer=answer, style=resolved)
    failed = [c.detail or c.claim for step in steps for c in check_arithmetic(step.partition(FINAL_MARKER)[0])
              if c.passed is False]
    if failed:
        return Verdict(reason=ARITHMETIC_ERROR, steps=steps, answer=answer, style=resolved, detail="; ".join(failed))
    return Verdict(reason=None, steps=steps, answer=answer, style=resolved)


# -- the run -------------------------------------------------------------------------------------


class Attempt(BaseModel):
    """One finished problem, as a line of attempts.jsonl."""

    id: str
    key: str
    status: Status
    samples: list[str] = Field(default_factory=list, description="the outcome of each teacher sample, in order")
    weak_samples: int = 0
    weak_errors: int = 0
    finished_at: str = Field(default_factory=_now)


class _Reply(BaseModel):
    content: str = ""
    reasoning: str = ""
    finish_reason: str | None = None
    usage: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None


class _Run:
    """One run: the client(s), the open output files, the progress bar, the fatal-error latch."""

    def __init__(self, config: TeacherConfig, client: Any, weak_client: Any, openai: Any, bar: Any) -> None:
        self.config = config
        self.client = client
        self.weak_client = weak_client
        self.openai = openai
        self.bar = bar
        self.verifier = config.resolved_verifier()
        self.settings = config.generation_settings()
        self.any_reply = False
        self.counts: Counter[str] = Counter()
        out = config.out
        self.rows = JsonlAppender(out / TRAJECTORIES)
        self.attempts = JsonlAppender(out / ATTEMPTS)

    def close(self) -> None:
        self.rows.close()
        self.attempts.close()

    async def ask(self, client: Any, model: str, problem: Problem, sample: int) -> _Reply:
        """One chat completion; errors the client could not retry away become `_Reply.error`."""
        config, openai = self.config, self.openai
        messages = [{"role": "system", "content": config.system}] if config.system else []
        messages.append({"role": "user", "content": config.prompt.replace("{problem}", problem.problem)})
        request: dict[str, Any] = {"model": model, "messages": messages, "temperature": config.temperature,
                                   "max_tokens": config.max_tokens}
        if config.top_p is not None:
            request["top_p"] = config.top_p
        if config.seed is not None:
            request["seed"] = config.seed + sample - 1
        if config.extra_body:
            request["extra_body"] = config.extra_body
        try:
            response = await client.chat.completions.create(**request)
        except openai.APITimeoutError as exc:
            return _Reply(error=f"timeout: {exc}")
        except openai.APIConnectionError as exc:
            raise APIConnectionError(
                f"cannot reach {client.base_url} ({exc}) after {config.max_retries} retries; start the teacher "
                "(e.g. vllm serve MODEL --port 8000) or fix --teacher; rows kept so far are saved and a rerun resumes"
            ) from exc
        except openai.APIStatusError as exc:
            code = exc.status_code
            fatal = code in (401, 403, 404) or (400 <= code < 500 and code not in _RETRYABLE_4XX and not self.any_reply)
            if fatal:
                raise status_error(code, f"{client.base_url} refused the request for model {model!r}: {exc.message}; "
                                   "check --teacher, --model, --api-key-env and --extra-body", exc.body) from exc
            return _Reply(error=f"HTTP {code}: {exc.message}")
        except openai.APIError as exc:  # a malformed or cut-off response
            return _Reply(error=f"{type(exc).__name__}: {exc}")
        self.any_reply = True
        if not response.choices:
            return _Reply()
        choice = response.choices[0]
        content, reasoning = reply_texts(choice.message)
        usage = response.usage.model_dump(exclude_none=True) if response.usage is not None else {}
        return _Reply(content=content, reasoning=reasoning, finish_reason=choice.finish_reason, usage=usage)

    async def weak_solves(self, problem: Problem, attempt: Attempt) -> bool:
        config = self.config
        for sample in range(1, config.weak_samples + 1):
            reply = await self.ask(self.weak_client, config.weak_model or "", problem, sample)
            attempt.weak_samples += 1
            if reply.error is not None:
                attempt.weak_errors += 1  # cannot tell: the problem goes on to the teacher
                continue
            answer = extract_answer(reply.content)
            if answer is not None and answers_match(answer, problem.gold, self.verifier):  # type: ignore[arg-type]
                return True
        return False

    async def solve(self, problem: Problem) -> Attempt:
        """Sample until one reply is kept (its row written at once) or the samples run out."""
        config = self.config
        attempt = Attempt(id=problem.id, key=problem.key, status="rejected")
        if config.weak_model and await self.weak_solves(problem, attempt):
            attempt.status = "too_easy"
            return attempt
        for sample in range(1, config.samples + 1):
            reply = await self.ask(self.client, config.model, problem, sample)
            if reply.error is not None:
                attempt.samples.append(API_ERROR)
                continue
            verdict = judge_reply(reply.content, problem.gold, style=config.split_style, pattern=config.split_pattern,
                                  min_steps=config.min_steps, verifier=self.verifier)
            if verdict.reason is not None:
                attempt.samples.append(verdict.reason)
                continue
            attempt.samples.append(KEPT)
            attempt.status = "kept"
            self.rows.write(self.row(problem, verdict, reply, sample))
            return attempt
        if API_ERROR in attempt.samples:
            attempt.status = "error"  # the endpoint failed: a rerun tries this problem again
        return attempt

    def row(self, problem: Problem, verdict: Verdict, reply: _Reply, sample: int) -> dict[str, Any]:
        config = self.config
        seed = None if config.seed is None else config.seed + sample - 1
        metadata = {
            "source": "teacher",
            "generator": GENERATOR,
            "teacher": {"url": config.url, "model": config.model},
            "generation": {**self.settings, "seed": seed, "split_style": verdict.style},
            "sample": sample,
            "teacher_answer": verdict.answer,
            "finish_reason": reply.finish_reason,
            "usage": reply.usage,
            "input": problem.where,
            "created_at": _now(),
        }
        return trajectory_row(id=problem.id, problem=problem.problem, steps=verdict.steps, answer=problem.gold,
                              solution=reply.content, metadata=metadata, reasoning=reply.reasoning or None)

    async def worker(self, queue: asyncio.Queue[Problem]) -> None:
        while True:
            try:
                problem = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            attempt = await self.solve(problem)
            self.attempts.write(attempt.model_dump())
            self.counts[attempt.status] += 1
            if self.bar is not None:
                self.bar.update(1)
                self.bar.set_postfix({k: self.counts[k] for k in ("kept", "rejected", "too_easy", "error")}, refresh=False)


def _finished(config: TeacherConfig) -> set[str]:
    """Keys of problems a rerun skips: kept rows, and attempts that ended kept/rejected/too easy."""
    skip = {"kept", "too_easy"} | (set() if config.retry_rejected else {"rejected"})
    done = {problem_key(row["problem"]) for row in read_jsonl_rows(config.out / TRAJECTORIES)
            if isinstance(row.get("problem"), str)}
    latest: dict[str, str] = {}
    for row in read_jsonl_rows(config.out / ATTEMPTS):
        if isinstance(row.get("key"), str):
            latest[row["key"]] = row.get("status", "")
    done |= {key for key, status in latest.items() if status in skip}
    return done


def _api_key(config: TeacherConfig) -> str:
    # local servers (vLLM, llama.cpp, srl serve without keys) accept any key, and the client wants one
    return os.environ.get(config.api_key_env) or "EMPTY"


async def agenerate_from_teacher(config: TeacherConfig) -> dict[str, Any]:
    """The async form of `generate_from_teacher` (for callers already inside an event loop)."""
    openai = require("openai", "teacher")
    check_verifier(config.resolved_verifier())
    check_split_options(config.split_style, config.split_pattern)
    problems, drops = read_problems(config.input, problem_field=config.problem_field,
                                    answer_field=config.answer_field, limit=config.limit)
    if not problems:
        raise InputError(f"{config.input} holds no usable problem ({drops or 'empty file'}); each line needs a problem "
                         "(or question) and a gold answer (answer or solution), or set the field names")
    done = _finished(config)
    todo = [p for p in problems if p.key not in done]
    bar = None
    if config.progress and todo:
        tqdm = require("tqdm", "teacher")
        bar = tqdm.tqdm(total=len(todo), unit="problem", desc="teacher", dynamic_ncols=True)
    client_args = dict(api_key=_api_key(config), max_retries=config.max_retries, timeout=config.timeout_s)
    client = openai.AsyncOpenAI(base_url=config.url, **client_args)
    weak_client = client
    if config.weak_model and config.weak_url and config.weak_url != config.url:
        weak_client = openai.AsyncOpenAI(base_url=config.weak_url, **client_args)
    run = _Run(config, client, weak_client, openai, bar)
    queue: asyncio.Queue[Problem] = asyncio.Queue()
    for problem in todo:
        queue.put_nowait(problem)
    tasks = [asyncio.create_task(run.worker(queue)) for _ in range(min(config.concurrency, len(todo)))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        run.close()
        if bar is not None:
            bar.close()
        await client.close()
        if weak_client is not client:
            await weak_client.close()
        report = build_report(config, len(problems), drops, skipped=len(problems) - len(todo))
        _write_report(config, report)
    if config.trl_out is not None:
        report["trl_rows"] = export_trl_stepwise(config.out / TRAJECTORIES, config.trl_out)
        _write_report(config, report)
    return report


def generate_from_teacher(config: TeacherConfig) -> dict[str, Any]:
    """Run the teacher over the input problems (resuming in `config.out`); return the report."""
    return asyncio.run(agenerate_from_teacher(config))


def _write_report(config: TeacherConfig, report: dict[str, Any]) -> None:
    try:
        (config.out / REPORT).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write {config.out / REPORT}: {exc.strerror or exc}") from exc


def build_report(config: TeacherConfig, n_problems: int, drops: dict[str, int], skipped: int = 0) -> dict[str, Any]:
    """The cumulative report of every run into `config.out`, rebuilt from attempts.jsonl.

    `samples.taken == samples.kept + sum(samples.rejected.values())` always holds; problem counts
    use each problem's latest attempt.
    """
    latest: dict[str, dict[str, Any]] = {}
    outcomes: Counter[str] = Counter()
    weak_samples = weak_errors = 0
    for row in read_jsonl_rows(config.out / ATTEMPTS):
        if not isinstance(row.get("key"), str) or not isinstance(row.get("samples"), list):
            continue
        latest[row["key"]] = row
        outcomes.update(str(s) for s in row["samples"])
        weak_samples += int(row.get("weak_samples") or 0)
        weak_errors += int(row.get("weak_errors") or 0)
    statuses = Counter(row.get("status") for row in latest.values())
    taken = sum(outcomes.values())
    report: dict[str, Any] = {
        "generator": GENERATOR,
        "teacher": {"url": config.url, "model": config.model},
        "generation": config.generation_settings(),  # of the latest run; each row keeps its own
        "prompt": {"user": config.prompt, "system": config.system},
        "input": {"file": str(config.input), "problems": n_problems, "dropped_lines": drops},
        "problems": {
            "finished": len(latest),
            "kept": statuses["kept"],
            "rejected": statuses["rejected"],
            "too_easy": statuses["too_easy"],
            "error": statuses["error"],
            "skipped_this_run": skipped,
        },
        "samples": {
            "taken": taken,
            "kept": outcomes[KEPT],
            "rejected": {reason: outcomes[reason] for reason in REJECT_REASONS},
        },
        "difficulty": None if not config.weak_model else {
            "weak_model": config.weak_model, "weak_url": config.weak_url or config.url,
            "weak_samples": weak_samples, "weak_errors": weak_errors, "too_easy": statuses["too_easy"],
        },
        "files": {"trajectories": TRAJECTORIES, "attempts": ATTEMPTS},
    }
    unknown = taken - outcomes[KEPT] - sum(report["samples"]["rejected"].values())
    if unknown:  # an attempts line from a different version: still make the sum hold, visibly
        report["samples"]["rejected"]["other"] = unknown
    return report


def format_report(report: dict[str, Any]) -> str:
    """Two lines for the terminal: problems, then samples with every reject reason."""
    p, s = report["problems"], report["samples"]
    rejects = ", ".join(f"{k} {v}" for k, v in s["rejected"].items() if v) or "none"
    lines = [
        f"problems: {p['kept']} kept, {p['rejected']} rejected, {p['too_easy']} too easy, {p['error']} endpoint errors "
        f"(of {report['input']['problems']}; {p['skipped_this_run']} already done before this run)",
        f"samples: {s['taken']} taken, {s['kept']} kept; rejected: {rejects}",
    ]
    return "\n".join(lines)

