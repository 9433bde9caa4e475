"""Serving overhead and concurrency: `srl serve` against raw llama-cpp-python and llama_cpp.server.

Why: a user picks this server over calling llama.cpp by hand only if it costs nothing at one
stream and gains when several users come at once. All three run the SAME step protocol on the SAME
prompt text (the driver's step prompt, the same GGUF build, same n_threads / n_ctx / flash
attention, greedy, same per-phase token caps): for step k, a thought phase (prompt + `<think>`,
stops at `</think>`/blank line) then an action phase (prompt + thought + `</think>\\n`, one line).
The peers get the loop written by hand, as a user stitching llama.cpp would; `srl serve` runs it in
its driver and adds per-token logprobs, checks, SSE and a SQLite trace.

Measured per run: time to first step (request sent -> first complete step), generated tokens
(each engine's own count of sampled tokens), tokens/s end to end (tokens / wall time, prompt
processing included), and prompt tokens evaluated per generated token (raw: what
`Llama.eval` was handed in batches of more than one token; srl serve: its engine's counters on
/metrics; llama_cpp.server: not visible). The same 8 problems at 1, 2, 4 and 8 streams in flight
(aggregate tokens/s over equal work). Variants run round-robin inside each repetition so load
drifts hit all of them alike; medians over repetitions. Text: each problem's steps from `srl serve` alone, from
`srl serve` with all the other streams running, and from raw llama-cpp-python, compared.

    .venv/bin/python benchmarks/serving_overhead.py --threads 2 --runs 3
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
from common import REPO_ROOT, Session, median, table, write_section  # noqa: E402

from srl_sdk.core.answers import extract_answer  # noqa: E402
from srl_sdk.core.format import THINK_CLOSE, THINK_OPEN, THOUGHT_STOPS, step_messages, strip_step_label  # noqa: E402
from srl_sdk.engines.models import resolve_model  # noqa: E402

GSM8K = REPO_ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"


@dataclass
class Settings:
    threads: int
    n_ctx: int
    steps: int
    thought_tokens: int
    action_tokens: int
    model_path: Path = field(default_factory=lambda: resolve_model("smollm2").gguf)  # the build `srl serve` loads
    flash_attn: bool = False  # the llama.cpp engine's default


@dataclass
class RunResult:
    ttfs_s: float
    tokens: int
    wall_s: float
    actions: list[str] = field(default_factory=list)


def problems(n: int) -> list[str]:
    if not GSM8K.is_file():
        raise SystemExit(f"GSM8K data missing at {GSM8K}: ../shared must sit beside the repository")
    with GSM8K.open(encoding="utf-8") as handle:
        return [json.loads(next(handle))["question"] for _ in range(n)]


# -- the hand-written loop a user would write around a completion call ---------------------------
@dataclass
class Completion:
    text: str  # what the model wrote, up to (not including) the stop
    tokens: int  # tokens sampled (an end-of-generation token not counted)
    matched: str | None  # the stop string that ended it, if one did


def peer_run(complete, render, problem: str, s: Settings) -> RunResult:
    """The driver's stepwise protocol by hand; `complete(prompt, max_tokens, stops, one_line) ->
    Completion`, where `one_line` ends the phase at the first newline that follows text.

    As the driver does, a thought the model closed with `</think>` is kept as written and followed
    by `</think>\n`; one that ended any other way is stripped and closed the way SFT targets close
    it, `\n</think>\n`. A step is final when it states an answer; a repeated step ends the run."""
    t0 = time.perf_counter()
    actions: list[str] = []
    seen: set[str] = set()
    tokens = 0
    ttfs = None
    for _ in range(s.steps):
        prompt = render(step_messages(problem, actions)) + THINK_OPEN
        thought = complete(prompt, s.thought_tokens, THOUGHT_STOPS, False)
        closed = thought.matched == THINK_CLOSE
        closing = THINK_CLOSE + "\n" if closed else "\n" + THINK_CLOSE + "\n"
        thought_text = thought.text if closed else thought.text.rstrip()
        action = complete(prompt + thought_text + closing, s.action_tokens, [], True)
        tokens += thought.tokens + action.tokens
        text = strip_step_label(action.text.replace(THINK_OPEN, "").replace(THINK_CLOSE, "").strip())
        if ttfs is None:
            ttfs = time.perf_counter() - t0
        if not text:
            break
        actions.append(text)
        key = " ".join(text.lower().split())
        if extract_answer(text) is not None or key in seen:
            break
        seen.add(key)
    return RunResult(ttfs or float("nan"), tokens, time.perf_counter() - t0, actions)


class RawLlama:
    """llama-cpp-python in this process, token by token (`Llama.generate`, which reuses the prefix
    its one cached sequence shares with the prompt); one Llama serves one sequence, so a lock."""

    name = "llama-cpp-python in-process"

    def __init__(self, s: Settings) -> None:
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.llama_cpp = llama_cpp
        self.llm = llama_cpp.Llama(model_path=str(s.model_path), n_ctx=s.n_ctx, n_threads=s.threads,
                                   n_threads_batch=s.threads, logits_all=False, flash_attn=s.flash_attn,
                                   verbose=False)
        meta = self.llm.metadata
        eos = self.llm.detokenize([self.llm.token_eos()], special=True).decode()
        bos = self.llm.detokenize([self.llm.token_bos()], special=True).decode()
        self.formatter = Jinja2ChatFormatter(template=meta["tokenizer.chat_template"], eos_token=eos,
                                             bos_token=bos, add_generation_prompt=True)
        self.lock = threading.Lock()
        self.settings = s
        self.prompt_tokens = 0  # tokens handed to Llama.eval in batches of more than one
        evaluate = self.llm.eval

        def counting(tokens):
            if len(tokens) > 1:
                self.prompt_tokens += len(tokens)
            return evaluate(tokens)

        self.llm.eval = counting  # type: ignore[method-assign]

    def render(self, messages: list[dict]) -> str:
        return self.formatter(messages=messages).prompt

    def complete(self, prompt: str, max_tokens: int, stops: list[str], one_line: bool) -> Completion:
        """Greedy tokens until an end-of-generation token, a stop string (the earliest in the text),
        the first newline after text (`one_line`) or `max_tokens`."""
        llm = self.llm
        vocab = llm._model.vocab
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text, n = "", 0
        with self.lock:
            prompt_tokens = llm.tokenize(prompt.encode("utf-8"), special=True)
            for token in llm.generate(prompt_tokens, top_k=1, temp=0.0, repeat_penalty=1.0):
                if self.llama_cpp.llama_vocab_is_eog(vocab, token):
                    return Completion(text, n, None)
                n += 1
                piece = decoder.decode(llm.detokenize([token]))
                if one_line and "\n" in piece and (text + piece[: piece.index("\n")]).strip():
                    return Completion(text + piece[: piece.index("\n")], n, "\n")
                text += piece
                hits = [(text.find(stop), stop) for stop in stops if stop in text]
                if hits:
                    at, stop = min(hits)
                    return Completion(text[:at], n, stop)
                if n >= max_tokens:
                    return Completion(text, n, None)
        return Completion(text, n, None)

    def run(self, problem: str) -> RunResult:
        return peer_run(self.complete, self.render, problem, self.settings)

    def evaluated(self) -> int | None:
        return self.prompt_tokens


class LlamaCppServer:
    """`python -m llama_cpp.server` (its own OpenAI server) on 127.0.0.1, /v1/completions, raw prompt."""

    name = "llama_cpp.server (OpenAI)"

    def __init__(self, s: Settings, render, log: Path) -> None:
        from srl_sdk.serving.process import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.settings = s
        self.render = render
        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(s.model_path),
                   "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(s.n_ctx),
                   "--n_threads", str(s.threads), "--n_threads_batch", str(s.threads),
                   "--logits_all", "false", "--flash_attn", str(s.flash_attn).lower(), "--verbose", "false"]
        self.process = subprocess.Popen(command, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                                        env=dict(os.environ))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"llama_cpp.server exited ({self.process.returncode}); see {log}. "
                                 "It needs: pip install 'llama-cpp-python[server]'")
            try:
                if httpx.get(self.url + "/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        else:
            self.close()
            raise SystemExit(f"llama_cpp.server did not answer within 120 s; see {log}")
        self.client = httpx.Client(timeout=300)

    def complete(self, prompt: str, max_tokens: int, stops: list[str], one_line: bool) -> Completion:
        """Its stop strings, plus "\\n" for a one-line action. The server does not say which stop
        matched, and a newline before any text ends an action too, so where the model writes those
        its text can part from the driver's (only the raw loop's text is compared)."""
        body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "top_k": 1,
                "repeat_penalty": 1.0, "stop": stops + (["\n"] if one_line else [])}
        response = self.client.post(self.url + "/v1/completions", json=body)
        response.raise_for_status()
        out = response.json()
        choice = out["choices"][0]
        closed = THINK_CLOSE if choice["finish_reason"] == "stop" and THINK_CLOSE in stops else None
        return Completion(choice["text"], out["usage"]["completion_tokens"], closed)

    def run(self, problem: str) -> RunResult:
        return peer_run(self.complete, self.render, problem, self.settings)

    def evaluated(self) -> int | None:
        return None  # not visible from outside its process

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


class SrlServe:
    """`srl serve` (LitServe + llama.cpp engine) on 127.0.0.1: POST /v1/reason, SSE `step`/`done`."""

    name = "srl serve"

    def __init__(self, s: Settings, folder: Path) -> None:
        from srl_sdk.serving.process import ServerProcess

        config = folder / "srl.yaml"
        config.write_text(
            "host: 127.0.0.1\nmodel: smollm2\nengine: llama.cpp\n"
            f"engine_options: {{n_ctx: {s.n_ctx}, n_threads: {s.threads}, flash_attn: {str(s.flash_attn).lower()}}}\n"
            f"store: {folder / 'traces.db'}\nlog_level: warning\n"
            f"reason: {{max_steps: {s.steps}, max_thought_tokens: {s.thought_tokens}, "
            f"max_action_tokens: {s.action_tokens}, temperature: 0.0}}\n"
        )
        self.server = ServerProcess(config, log=folder / "srl.log").start()
        self.client = httpx.Client(timeout=300)

    def run(self, problem: str) -> RunResult:
        from httpx_sse import connect_sse

        t0 = time.perf_counter()
        ttfs = None
        with connect_sse(self.client, "POST", self.server.url + "/v1/reason", json={"problem": problem}) as source:
            for event in source.iter_sse():
                if event.event == "step" and ttfs is None:
                    ttfs = time.perf_counter() - t0
                elif event.event == "done":
                    trace = json.loads(event.data)
                    wall = time.perf_counter() - t0
                    actions = [s["action"] for s in trace["steps"]]
                    return RunResult(ttfs or float("nan"), int(trace["usage"]["completion_tokens"]), wall, actions)
                elif event.event == "error":
                    raise RuntimeError(f"srl serve answered an error: {event.data}")
        raise RuntimeError("srl serve ended the stream without `done`")

    def evaluated(self) -> int | None:
        """The engine's prompt tokens read so far, from /metrics (published every 0.5 s)."""
        time.sleep(1.0)
        text = self.client.get(self.server.url + "/metrics").text
        for line in text.splitlines():
            if line.startswith("srl_engine_prompt_tokens_evaluated{"):
                return int(float(line.rsplit(" ", 1)[1]))
        raise RuntimeError("/metrics has no srl_engine_prompt_tokens_evaluated")

    def close(self) -> None:
        self.server.stop()


def measure(variant, items: list[str], streams: int) -> tuple[float, float, list[RunResult], float | None]:
    """Run all `items` with `streams` of them in flight at a time: (aggregate tokens/s, median time
    to first step, results, prompt tokens evaluated per generated token or None where not visible).

    Every stream count runs the same problems, so aggregate rates compare equal work. One stream
    runs in this thread, as a script would: llama-cpp-python called from a pool thread ran 7-13 %
    slower here than from the main thread (libgomp; the server's own threads are not affected)."""
    before = variant.evaluated()
    t0 = time.perf_counter()
    if streams == 1:
        results = [variant.run(item) for item in items]
    else:
        with ThreadPoolExecutor(max_workers=streams) as pool:
            results = list(pool.map(variant.run, items))
    wall = time.perf_counter() - t0
    after = variant.evaluated()
    tokens = sum(r.tokens for r in results)
    per_token = (after - before) / tokens if before is not None and after is not None and tokens else None
    return tokens / wall, median([r.ttfs_s for r in results]), results, per_token


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="n_threads for all three")
    parser.add_argument("--n-ctx", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--thought-tokens", type=int, default=32)
    parser.add_argument("--action-tokens", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3, help="repetitions (medians over them)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--no-docs", action="store_true", help="print only; do not write docs/benchmarks.md")
    args = parser.parse_args()
    s = Settings(args.threads, args.n_ctx, args.steps, args.thought_tokens, args.action_tokens)
    session = Session()
    from memory_floor import decode_floor

    floor = decode_floor(path=s.model_path)
    qs = problems(max(args.concurrency))
    folder = Path(tempfile.mkdtemp(prefix="srl-bench-"))
    raw = RawLlama(s)
    peer_server = LlamaCppServer(s, raw.render, folder / "llama_cpp_server.log")
    ours = SrlServe(s, folder)
    variants = [raw, peer_server, ours]
    rates: dict[tuple[str, int], list[float]] = {}
    ttfs: dict[tuple[str, int], list[float]] = {}
    work: dict[tuple[str, int], list[float]] = {}
    concurrent_texts: list[list[str]] = []
    try:
        for variant in variants:  # warm-up: page in the model, fill caches; not measured
            variant.run(qs[0])
        # the text check (not timed): every problem alone, through srl serve and raw llama-cpp-python
        alone = {v.name: [v.run(q).actions for q in qs] for v in (raw, ours)}
        for rep in range(args.runs):
            for conc in args.concurrency:
                for variant in variants:
                    rate, first, results, per_token = measure(variant, qs, conc)
                    rates.setdefault((variant.name, conc), []).append(rate)
                    ttfs.setdefault((variant.name, conc), []).append(first)
                    if per_token is not None:
                        work.setdefault((variant.name, conc), []).append(per_token)
                    if variant is ours and conc == max(args.concurrency):
                        concurrent_texts.append([r.actions for r in results])
                    print(f"run {rep + 1} x{conc} {variant.name}: {rate:.1f} tok/s, first step {first:.2f} s"
                          + (f", {per_token:.2f} prompt tokens per token" if per_token is not None else ""), flush=True)
    finally:
        peer_server.close()
        ours.close()
    rows = []
    for conc in args.concurrency:
        base = median(rates[(raw.name, conc)])
        base_ttfs = median(ttfs[(raw.name, conc)])
        for variant in variants:
            rate = median(rates[(variant.name, conc)])
            first = median(ttfs[(variant.name, conc)])
            per_token = work.get((variant.name, conc))
            rows.append([variant.name, conc, rate, rate / base, first, first / base_ttfs,
                         f"{median(per_token):.2f}" if per_token else "n/a",
                         f"{100 * rate / floor['tokens_per_s']:.0f} %"])
    one = median(rates[(ours.name, 1)])
    scaling = ", ".join(f"{conc} streams {median(rates[(ours.name, conc)]) / one:.2f}x"
                        for conc in args.concurrency if conc > 1)
    headers = ["variant", "streams", "tokens/s (end to end)", "x raw", "time to first step (s)", "x raw",
               "prompt tokens evaluated per generated token", "of bandwidth floor"]
    same_as_raw = sum(a == b for a, b in zip(alone[ours.name], alone[raw.name]))
    same_concurrent = sum(texts == alone[ours.name][: len(texts)] for texts in concurrent_texts)
    differing = [i for i, (a, b) in enumerate(zip(alone[ours.name], alone[raw.name])) if a != b]
    out = table(headers, rows)
    print(out)
    notes = (
        f"Settings: SmolLM2-135M GGUF build `{s.model_path.name}` (the one `srl serve` loads for `smollm2`), "
        f"n_threads={s.threads}, n_ctx={s.n_ctx}, flash attention {'on' if s.flash_attn else 'off'}, greedy, "
        f"{s.steps} steps of at most {s.thought_tokens} thought + {s.action_tokens} action tokens, {args.runs} "
        f"repetitions (medians); every row runs the same first {len(qs)} GSM8K train problems, that many streams at a time. "
        f"`srl serve` aggregate tokens/s against its own one-stream rate: {scaling}. "
        f"Greedy text: `srl serve` wrote the same steps as raw llama-cpp-python on {same_as_raw} of {len(qs)} problems"
        + (f" (different: problems {differing})" if differing else "")
        + f"; with all {max(args.concurrency)} streams running at once, every stream wrote the same steps as alone in "
        f"{same_concurrent} of {len(concurrent_texts)} runs. "
        f"Bandwidth floor: {floor['bandwidth_gb_s']:.1f} GB/s (numpy copy, read + write) / {floor['model_mb']:.0f} MB per token "
        f"= {floor['tokens_per_s']:.0f} tokens/s."
    )
    print(notes)
    if not args.no_docs:
        write_section("Serving overhead", session.machine_block() + "\n\n" + notes + "\n\n" + out + "\n\n" + EXPLAIN)


EXPLAIN = """\
What the columns show:
- x raw at 1 stream: `srl serve` (HTTP, SSE, the driver with per-token log-probabilities and checks,
  a SQLite trace written per step) against the same loop written by hand on llama-cpp-python
  (`Llama.generate`, token by token, the driver's stop and closing rules), the same text token for
  token. Both read the same prompt tokens: the engine keeps a request's KV cache across its steps
  and phases, and a first prompt reuses whatever an earlier one read where the loaded model rounds
  alike in any chunk (checked at load; srl_sdk/engines/prefix.py). `benchmarks/serve_vs_driver.py`
  separates the server's own cost, `benchmarks/driver_overhead.py` the driver's.
- Several streams: raw llama-cpp-python and llama_cpp.server keep one sequence, so streams take
  turns and evict each other's cache. The llama.cpp engine holds 4 sequences (`n_parallel`) with a
  KV stream each and decodes all running streams in one `llama_decode`; an 8th stream waits for a
  free sequence (first come, first served). On this machine one decode of 4 sequences costs about
  4 times one ("Decode batching"): the two cores, not memory, are the limit, so the aggregate
  cannot rise much above the one-stream rate whatever the scheduling; what batching buys here is
  that streams stop evicting each other's cache (prompt work per token stays at its one-stream
  level, against 2.3-2.7x for the peers).
- Fraction of the bandwidth floor: end-to-end tokens/s (prompt processing included) over the rate
  at which memory could stream the weights once per token."""


if __name__ == "__main__":
    main()
