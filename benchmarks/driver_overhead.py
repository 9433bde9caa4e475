"""Where the one-stream overhead of issue 15 goes: the driver in-process against the hand loop.

Why: `srl serve` delivered ~0.73x raw llama-cpp-python at one stream. This takes HTTP, SSE, the
worker process and the store out of the picture: the driver (`Driver.solve`) on the llama.cpp
engine in this process, against `serving_overhead.py`'s hand-written loop on llama-cpp-python,
same model build, threads, caps and prompts, greedy, alternating. It also counts the prompt tokens
each evaluates (raw: what `Llama.eval` is handed in batches of more than one; the engine: its own
counter), which is where the time goes when Python is not the cost. Two driver variants: with the
request's session (the engine keeps the problem's KV cache across steps and phases) and with one
engine call per phase (what the engine did before sessions: each call reuses only whole aligned
blocks of an earlier prompt), and with the session but the aligned-block rule of prompt reuse across
requests (srl_sdk/engines/prefix.py) in place of reuse of any prefix.

    .venv/bin/python benchmarks/driver_overhead.py --rounds 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving_overhead import RawLlama, Settings, problems  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="A/B alternations")
    parser.add_argument("--problems", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from srl_sdk.engines.base import EngineSession
    from srl_sdk.engines.llama_batch import decode_thread
    from srl_sdk.engines.llama_cpp import LlamaCppEngine
    from srl_sdk.reasoning.driver import Driver, ReasonConfig

    s = Settings(threads=args.threads, n_ctx=1024, steps=2, thought_tokens=32, action_tokens=32)
    texts = problems(args.problems + 1)
    raw = RawLlama(s)
    engine = LlamaCppEngine("smollm2", n_ctx=1024, n_threads=args.threads)
    config = ReasonConfig(max_steps=2, max_thought_tokens=32, max_action_tokens=32)
    driver = Driver(engine, config)
    aligned_engine = LlamaCppEngine("smollm2", n_ctx=1024, n_threads=args.threads, prefix_reuse="aligned")
    aligned = Driver(aligned_engine, config)

    class PerCall(Driver):
        """The driver with one engine call per phase (no session): the engine's behaviour before sessions."""

        def __init__(self) -> None:
            super().__init__(engine, config)

    per_call = PerCall()
    per_call.engine = _Stateless(engine, EngineSession)  # type: ignore[assignment]
    decode_thread().submit(raw.run, texts[0]).result()  # warm both: the first prompt of a fresh context is not what is measured
    driver.solve(texts[0])
    aligned.solve(texts[0])

    def measure(name: str, run, evaluated) -> None:
        before = evaluated()
        started = time.perf_counter()
        generated = sum(run(p) for p in texts[1:])
        wall = time.perf_counter() - started
        prompt = evaluated() - before
        print(f"{name:31s} {generated:4d} tokens {wall:6.2f} s {generated / wall:6.1f} tok/s  "
              f"prompt tokens evaluated {prompt:5d} ({prompt / generated:.2f} per generated token)", flush=True)

    # raw llama-cpp-python runs on the engine's decode thread: two threads calling llama.cpp in one
    # process make libgomp throttle both (srl_sdk/engines/llama_batch.py)
    on_decode_thread = decode_thread()
    for _ in range(args.rounds):
        measure("raw", lambda p: on_decode_thread.submit(raw.run, p).result().tokens, lambda: raw.prompt_tokens)
        measure("driver, session", lambda p: driver.solve(p).usage["completion_tokens"],
                lambda: engine.perf()["prompt_tokens"])
        measure("driver, per call", lambda p: per_call.solve(p).usage["completion_tokens"],
                lambda: engine.perf()["prompt_tokens"])
        measure("driver, session, aligned blocks", lambda p: aligned.solve(p).usage["completion_tokens"],
                lambda: aligned_engine.perf()["prompt_tokens"])


class _Stateless:
    """An engine whose sessions forward each call to `stream` (the base class's default session)."""

    def __init__(self, engine, session_class) -> None:
        self._engine = engine
        self._session_class = session_class

    def session(self):
        return self._session_class(self._engine)

    def __getattr__(self, name):
        return getattr(self._engine, name)


if __name__ == "__main__":
    main()
