"""llama.cpp engine (llama-cpp-python): the CPU default and the edge runtime for GGUF builds.

How it runs: one llama.cpp context holds `n_parallel` sequences, each with its own KV stream, and
one thread decodes all running streams in one batch (`srl_sdk.engines.llama_batch`): concurrent
requests share each pass over the weights instead of taking turns. A request's calls go through a
session (`Engine.session`) that keeps its sequence, so each step and phase evaluates only the text
its prompt adds; prompts are read in aligned blocks and only whole blocks are reused across
requests (`srl_sdk.engines.prefix`): the same request gives the same text whatever the cache held.

Traps of llama-cpp-python handled here rather than left to callers:
- its default context is 512 tokens, too small for a problem plus steps: we always pass n_ctx
  (here: tokens per sequence);
- its built-in logprobs need `logits_all=True` (about 5x slower, and reported one position off,
  llama-cpp-python #1983): the scheduler reads the sampled row's logits and takes the token's
  log-probability from them;
- `Llama(...)` cannot make a multi-sequence context: it loads the model, vocabulary and LoRA
  adapter (with a tiny context of its own), and the scheduler makes the real context from them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from srl_sdk.engines.base import EngineSession, SamplingParams, TokenEvent, TokenLoopEngine
from srl_sdk.engines.models import resolve_model
from srl_sdk.engines.prefix import DEFAULT_BLOCK
from srl_sdk.errors import EngineError, ModelError, require

if TYPE_CHECKING:
    from srl_sdk.engines.llama_batch import Slot

DEFAULT_N_CTX = 4096
DEFAULT_N_PARALLEL = 4
"""Sequences decoded together. Each holds n_ctx tokens of KV cache (SmolLM2-135M: 23 MB per 1,000
tokens), allocated when the engine loads; a fifth concurrent request waits for a free one."""
_LOADER_N_CTX = 64  # the context `Llama(...)` makes for itself: never used to decode


def default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def llama_arguments(path: str | os.PathLike[str], *, n_ctx: int = DEFAULT_N_CTX, n_threads: int | None = None,
                    n_batch: int = 512, seed: int = 0, adapter: str | os.PathLike[str] | None = None) -> dict:
    """The keyword arguments of `llama_cpp.Llama(...)` for these settings (pure: tests build them
    for every shipped config without loading a model). `n_ctx` is per sequence; the engine gives
    `Llama` a tiny context of its own and decodes in the scheduler's."""
    threads = n_threads or default_threads()
    return {"model_path": str(path), "n_ctx": n_ctx, "n_threads": threads, "n_threads_batch": threads,
            "n_batch": n_batch, "logits_all": False, "seed": seed,
            "lora_path": str(adapter) if adapter is not None else None, "verbose": False}


class LlamaCppEngine(TokenLoopEngine):
    """A GGUF model in llama.cpp. `model` is a path to a .gguf file or a named model ('smollm2', 'smollm2-srl')."""

    name = "llama.cpp"

    def __init__(
        self,
        model: str | os.PathLike[str] = "smollm2",
        *,
        n_ctx: int = DEFAULT_N_CTX,
        n_threads: int | None = None,
        n_batch: int = 512,
        n_parallel: int = DEFAULT_N_PARALLEL,
        flash_attn: bool = False,
        seed: int = 0,
        prefix_block: int = DEFAULT_BLOCK,
        prefix_reuse: str = "auto",
        adapter: str | os.PathLike[str] | None = None,
    ) -> None:
        """`n_ctx`: tokens per sequence. `n_parallel`: sequences decoded together (concurrent
        requests beyond it wait). `prefix_reuse`: how a first prompt reuses what earlier requests
        read (srl_sdk/engines/prefix.py): "any" prefix, only whole "aligned" blocks of
        `prefix_block` tokens, or "auto" (any, where the loaded model rounds alike in any chunk:
        checked at load); `prefix_block` 0 turns reuse across requests off. `flash_attn`:
        llama.cpp's flash attention, faster decoding, but on several threads a stream's text then
        depends on what runs beside it (docs/benchmarks.md, "Batch invariance"); off by default.
        `adapter`: a llama.cpp LoRA GGUF (`srl export lora-gguf`) applied on load; a named model
        with an adapter ('smollm2-srl') brings its own.
        """
        llama_cpp = require("llama_cpp", "serve", package="llama-cpp-python")
        from srl_sdk.engines.llama_batch import BatchScheduler

        if n_parallel < 1:
            raise ModelError(f"n_parallel must be at least 1, not {n_parallel}")
        if prefix_reuse not in ("auto", "any", "aligned"):
            raise ModelError(f"prefix_reuse must be auto, any or aligned, not {prefix_reuse!r}")
        resolved = resolve_model(model)
        path: Path = resolved.gguf
        self.path = path
        self.build = resolved.build  # named models: "shipped" or the checked quant (srl_sdk/engines/builds.py)
        self.adapter: Path | None = Path(adapter).expanduser() if adapter is not None else resolved.adapter
        if self.adapter is not None and not self.adapter.is_file():
            raise ModelError(f"LoRA adapter {self.adapter} does not exist; export one with `srl export lora-gguf`")
        self.n_threads = n_threads or default_threads()
        arguments = llama_arguments(path, n_ctx=n_ctx, n_threads=self.n_threads, n_batch=n_batch, seed=seed,
                                    adapter=self.adapter)
        try:
            self._llm = llama_cpp.Llama(**{**arguments, "n_ctx": _LOADER_N_CTX, "n_batch": _LOADER_N_CTX})
        except (ValueError, RuntimeError, OSError) as exc:
            if self.adapter is not None:
                raise ModelError(
                    f"llama.cpp could not load {path} with the LoRA adapter {self.adapter}: {exc}; "
                    "is the adapter for this base model? re-export it with `srl export lora-gguf`"
                ) from exc
            raise ModelError(f"llama.cpp could not load {path}: {exc}; the file may be truncated or not a model") from exc
        self._llama_cpp = llama_cpp
        vocab = self._llm._model.vocab  # llama.cpp's own end-of-generation tokens (EOS, EOT, <|endoftext|>...)
        self._eog = {t for t in range(self._llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)}
        self._eog.add(self._llm.token_eos())
        metadata = self._llm.metadata or {}
        self._template = metadata.get("tokenizer.chat_template")
        vocab_tokens = self._llm.tokenize(b"<|im_end|>", add_bos=False, special=True)
        if len(vocab_tokens) == 1:
            self._eog.add(vocab_tokens[0])
        self._bos_text = self._token_text(self._llm.token_bos())
        self._eos_text = self._token_text(self._llm.token_eos())
        try:
            self._scheduler = BatchScheduler(self._llm, llama_cpp, n_ctx=n_ctx, n_parallel=n_parallel,
                                             n_threads=self.n_threads, n_batch=n_batch, flash_attn=flash_attn,
                                             block=prefix_block, eog=self._eog, reuse=prefix_reuse)
        except EngineError:
            self._llm.close()
            raise
        self.n_parallel = n_parallel
        self.flash_attn = flash_attn
        self.prefix_block = prefix_block
        name = resolved.name or metadata.get("general.name") or path.stem
        if self.adapter is not None and resolved.name is None:
            name = f"{name}+{self.adapter.name.removesuffix('.gguf')}"
        super().__init__(model_id=str(name), context_length=self._scheduler.n_ctx, source=model)
        self.closed = False

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    def _render_text(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool) -> str:
        if not self._template:
            # no template in the file: a plain transcript the model can still continue
            text = "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)
            return text + ("\n\nassistant: " if add_generation_prompt else "")
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        formatter = Jinja2ChatFormatter(
            template=self._template,
            eos_token=self._eos_text,
            bos_token=self._bos_text,
            add_generation_prompt=add_generation_prompt,
        )
        return formatter(messages=list(messages)).prompt

    def _tokenize(self, text: str, special: bool, first: bool) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=first, special=special)

    def _decode(
        self,
        tokens: list[int],
        params: SamplingParams,
        budget: int,
        cancel: threading.Event | None,
    ) -> Iterator[TokenEvent]:
        """A call outside a session: a session of one call (its slot is free again at the end)."""
        session = LlamaSession(self)
        try:
            yield from session.decode(tokens, params, budget, cancel)
        finally:
            session.close()

    def session(self) -> "LlamaSession":
        return LlamaSession(self)

    def perf(self) -> dict[str, float]:
        """Tokens the engine evaluated: prompt tokens read (`prompt_tokens`), sampled tokens fed
        back (`decode_tokens`; `shared_decode_tokens` of them in one call with another stream's),
        llama_decode calls (`batches`); and llama.cpp's own milliseconds."""
        data = self._llama_cpp.llama_perf_context(self._scheduler._ctx)
        counts = self._scheduler.counts
        return {
            "prompt_tokens": counts["prompt_tokens"],
            "decode_tokens": counts["sampled_tokens"],
            "shared_decode_tokens": counts["shared_tokens"],
            "batches": counts["batches"],
            "prompt_ms": data.t_p_eval_ms,
            "decode_ms": data.t_eval_ms,
        }

    def gauges(self) -> dict[str, int]:
        """For /metrics: sequences in use and sessions waiting for one; prompt tokens read and
        sampled tokens fed back since the engine loaded (their ratio is the prompt work per token)."""
        scheduler = self._scheduler
        return {
            "sequences_busy": scheduler.busy(),
            "sequences_total": self.n_parallel,
            "sessions_waiting": scheduler.waiting(),
            "prompt_tokens_evaluated": scheduler.counts["prompt_tokens"],
            "tokens_decoded": scheduler.counts["sampled_tokens"],
        }

    def info(self) -> dict[str, object]:
        return {**super().info(), "path": str(self.path), "build": self.build,
                "adapter": str(self.adapter) if self.adapter else None,
                "n_threads": self.n_threads, "n_parallel": self.n_parallel, "flash_attn": self.flash_attn,
                "prefix_block": self.prefix_block, "prefix_reuse": self._scheduler.reuse}

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._scheduler.close()
        self._llm.close()


class LlamaSession(EngineSession):
    """One request on the llama.cpp engine: it holds a sequence (slot) from its first call to
    `close`, so later calls evaluate only what their prompt adds to what the sequence holds."""

    engine: LlamaCppEngine

    def __init__(self, engine: LlamaCppEngine) -> None:
        super().__init__(engine)
        self._slot: Slot | None = None
        self._closed = False

    def stream(self, prompt: str, params: SamplingParams, cancel: threading.Event | None = None) -> Iterator[TokenEvent]:
        tokens, budget = self.engine._checked(prompt, params)
        return self.decode(tokens, params, budget, cancel)

    def decode(self, tokens: list[int], params: SamplingParams, budget: int,
               cancel: threading.Event | None) -> Iterator[TokenEvent]:
        if self._closed:
            raise EngineError("this session was closed; open a new one with engine.session()")
        scheduler = self.engine._scheduler
        first = self._slot is None
        if self._slot is None:
            self._slot = scheduler.acquire(self, tokens, cancel)
            if self._slot is None:  # cancelled while every sequence was taken
                return iter([TokenEvent(text="", finish_reason="cancelled")])
        return scheduler.stream(self._slot, tokens, params, budget, first=first, cancel=cancel)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._slot is not None:
            self.engine._scheduler.release(self._slot)
            self._slot = None
