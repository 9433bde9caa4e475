"""llama.cpp engine (llama-cpp-python): the CPU default and the edge runtime for GGUF builds.

Three traps of llama-cpp-python are handled here rather than left to callers:
- its default context is 512 tokens, too small for a problem plus steps: we always pass n_ctx;
- its built-in logprobs need `logits_all=True` (about 5x slower here, and reported one position
  off, llama-cpp-python #1983): we read the last position's logits ourselves after each sampled
  token and take that token's log-probability from them;
- one context serves one sequence at a time: a lock makes concurrent callers wait their turn;
- its automatic prefix reuse evaluates "whatever did not match" as one batch, so the same prompt
  gave different logits (and, seeded or at a greedy near-tie, different text) depending on the
  previous request. We evaluate the prompt ourselves in aligned blocks and reuse only whole blocks
  of an earlier prompt (`srl_sdk.engines.prefix`): same prompt and settings, same text, whatever
  the cache held. A stepwise loop still skips the system prompt and earlier steps.
"""

from __future__ import annotations

import codecs
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from srl_sdk.engines.base import SamplingParams, StopMatcher, TokenEvent, TokenLoopEngine, log_softmax_at
from srl_sdk.engines.models import resolve_model
from srl_sdk.engines.prefix import DEFAULT_BLOCK, AlignedPrefix
from srl_sdk.errors import EngineError, ModelError, require

DEFAULT_N_CTX = 4096


def default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def llama_arguments(path: str | os.PathLike[str], *, n_ctx: int = DEFAULT_N_CTX, n_threads: int | None = None,
                    n_batch: int = 512, seed: int = 0, adapter: str | os.PathLike[str] | None = None) -> dict:
    """The keyword arguments of `llama_cpp.Llama(...)` for these settings (pure: tests build them
    for every shipped config without loading a model)."""
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
        seed: int = 0,
        prefix_block: int = DEFAULT_BLOCK,
        adapter: str | os.PathLike[str] | None = None,
    ) -> None:
        """`prefix_block`: tokens per aligned block of prompt reuse (0: evaluate every prompt anew).

        `adapter`: a llama.cpp LoRA GGUF (`srl export lora-gguf`) applied on load; a named model
        with an adapter ('smollm2-srl') brings its own.
        """
        llama_cpp = require("llama_cpp", "serve", package="llama-cpp-python")
        resolved = resolve_model(model)
        path: Path = resolved.gguf
        self.path = path
        self.adapter: Path | None = Path(adapter).expanduser() if adapter is not None else resolved.adapter
        if self.adapter is not None and not self.adapter.is_file():
            raise ModelError(f"LoRA adapter {self.adapter} does not exist; export one with `srl export lora-gguf`")
        self.n_threads = n_threads or default_threads()
        try:
            self._llm = llama_cpp.Llama(**llama_arguments(path, n_ctx=n_ctx, n_threads=self.n_threads, n_batch=n_batch,
                                                          seed=seed, adapter=self.adapter))
        except (ValueError, RuntimeError, OSError) as exc:
            if self.adapter is not None:
                raise ModelError(
                    f"llama.cpp could not load {path} with the LoRA adapter {self.adapter}: {exc}; "
                    "is the adapter for this base model? re-export it with `srl export lora-gguf`"
                ) from exc
            raise ModelError(f"llama.cpp could not load {path}: {exc}; the file may be truncated or not a model") from exc
        self._llama_cpp = llama_cpp
        self._lock = threading.Lock()
        self._prefix = AlignedPrefix(prefix_block)
        self._eog = {self._llm.token_eos()}
        metadata = self._llm.metadata or {}
        self._template = metadata.get("tokenizer.chat_template")
        vocab_tokens = self._llm.tokenize(b"<|im_end|>", add_bos=False, special=True)
        if len(vocab_tokens) == 1:
            self._eog.add(vocab_tokens[0])
        self._bos_text = self._token_text(self._llm.token_bos())
        self._eos_text = self._token_text(self._llm.token_eos())
        name = resolved.name or metadata.get("general.name") or path.stem
        if self.adapter is not None and resolved.name is None:
            name = f"{name}+{self.adapter.name.removesuffix('.gguf')}"
        super().__init__(model_id=str(name), context_length=self._llm.n_ctx())
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
        llm = self._llm
        with self._lock:
            if params.seed is not None:
                llm.set_seed(params.seed)
            self._evaluate_prompt(tokens)
            # the whole prompt is in the cache now: generate() finds it there and samples at once
            generator = llm.generate(
                tokens,
                top_k=params.top_k if params.temperature > 0 else 1,
                top_p=params.top_p,
                min_p=0.0,
                temp=params.temperature,
                repeat_penalty=1.0,
                reset=True,
            )
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            matcher = StopMatcher(params.stop)
            n_vocab = llm.n_vocab()
            finish = "length"
            produced = 0
            try:
                for token in generator:
                    if cancel is not None and cancel.is_set():
                        finish = "cancelled"
                        break
                    if token in self._eog:
                        finish = "stop"
                        break
                    logits = self._last_logits(n_vocab)
                    logprob = log_softmax_at(logits, token)
                    piece = decoder.decode(llm.detokenize([token], special=False))
                    produced += 1
                    text, hit = matcher.feed(piece)
                    if text or not hit:
                        yield TokenEvent(text=text, token_id=token, logprob=logprob)
                    if hit:
                        finish = "stop"
                        break
                    if produced >= budget:
                        finish = "length"
                        break
                else:
                    finish = "stop"
            finally:
                generator.close()
            tail = matcher.flush() + decoder.decode(b"", final=True)
            yield TokenEvent(text=tail, finish_reason=finish, matched_stop=matcher.matched)  # type: ignore[arg-type]

    def _evaluate_prompt(self, tokens: list[int]) -> None:
        """Bring the cache to exactly `tokens`, evaluated in aligned blocks (see module docstring)."""
        llm = self._llm
        keep = self._prefix.reusable_length(tokens)
        self._prefix.forget()  # until the evaluation below has finished
        if keep == 0:
            llm.reset()
        llm.n_tokens = keep  # eval() drops every cached token from here on before evaluating
        try:
            for start, stop in self._prefix.chunks(keep, len(tokens)):
                llm.eval(tokens[start:stop])
        except Exception as exc:
            llm.reset()
            raise EngineError(f"llama.cpp failed to evaluate the prompt: {exc}") from exc
        self._prefix.evaluated(tokens)

    def _last_logits(self, n_vocab: int):
        import numpy as np

        pointer = self._llama_cpp.llama_get_logits_ith(self._llm._ctx.ctx, -1)
        if not pointer:
            raise EngineError("llama.cpp returned no logits for the last position")
        return np.ctypeslib.as_array(pointer, shape=(n_vocab,))

    def perf(self) -> dict[str, float]:
        """llama.cpp's own counters: prompt and decode token counts and milliseconds."""
        data = self._llama_cpp.llama_perf_context(self._llm._ctx.ctx)
        return {
            "prompt_tokens": data.n_p_eval,
            "prompt_ms": data.t_p_eval_ms,
            "decode_tokens": data.n_eval,
            "decode_ms": data.t_eval_ms,
        }

    def info(self) -> dict[str, object]:
        return {**super().info(), "path": str(self.path), "adapter": str(self.adapter) if self.adapter else None,
                "n_threads": self.n_threads, "prefix_block": self._prefix.block}

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with self._lock:
            self._llm.close()
