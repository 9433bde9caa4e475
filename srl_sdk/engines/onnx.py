"""onnxruntime-genai engine: the torch-free runtime for ONNX builds made by `srl export onnx`.

A build is a folder with `genai_config.json`, `model.onnx` (+ `.onnx.data`), the tokenizer and
the chat template; the decoder carries its own KV cache. Choices made here and why:
- threads are capped through a config overlay (onnxruntime otherwise takes every core, and the
  machines we run on are shared);
- the sampled token's log-probability comes from the last position's logits, read *before*
  `generate_next_token` (get_logits returns shape (1, 1, vocab) for the last position only);
- one generator is kept between calls and rewound to the prefix it shares with the next prompt,
  so a stepwise loop (same problem, one more step each call) skips most of the prompt; prompts
  are appended in aligned blocks and only whole blocks of an earlier prompt are kept
  (`srl_sdk.engines.prefix.AlignedPrefix`: the rule the llama.cpp engine falls back to for a model
  whose rounding depends on the chunk; onnxruntime's kernels are not checked for that here), so
  the same prompt gives the same logits whatever the generator held before. A call with a seed starts a fresh generator (the seed is a generator
  setting), appended in the same blocks, so it agrees with an unseeded reuse bit for bit;
- the CUDA provider is used when onnxruntime-genai was built with it (onnxruntime-genai-cuda),
  CPU otherwise; one lock, one sequence at a time.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from srl_sdk.engines.base import SamplingParams, StopMatcher, TokenEvent, TokenLoopEngine, log_softmax_at
from srl_sdk.engines.prefix import DEFAULT_BLOCK, AlignedPrefix
from srl_sdk.errors import EngineError, ModelError, require

DEFAULT_CONTEXT = 4096


def default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def resolve_onnx_dir(model: str | os.PathLike[str]) -> Path:
    """A build folder (or a .onnx file inside one) -> the folder, checked before onnxruntime sees it."""
    path = Path(model).expanduser()
    folder = path.parent if path.suffix == ".onnx" else path
    if not folder.is_dir():
        raise ModelError(f"ONNX build {path} does not exist; pass the folder written by `srl export onnx`")
    config = folder / "genai_config.json"
    if not config.is_file():
        raise ModelError(
            f"{folder} has no genai_config.json, so it is not an onnxruntime-genai build; "
            "make one with `srl export onnx MODEL`"
        )
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
        filename = data["model"]["decoder"]["filename"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{config} is unreadable or incomplete ({exc}); re-export the build") from exc
    onnx_file = folder / filename
    if not onnx_file.is_file():
        raise ModelError(f"{onnx_file} is missing: the build is incomplete; re-export it with `srl export onnx`")
    return folder


class OnnxEngine(TokenLoopEngine):
    """An onnxruntime-genai build folder (or its model.onnx)."""

    name = "onnx"

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        n_ctx: int = DEFAULT_CONTEXT,
        n_threads: int | None = None,
        provider: str | None = None,
        prefix_block: int = DEFAULT_BLOCK,
    ) -> None:
        """`prefix_block`: tokens per aligned block of prompt reuse (0: a fresh generator every call)."""
        og = require("onnxruntime_genai", "edge", package="onnxruntime-genai")
        self._og = og
        self.path = resolve_onnx_dir(model)
        self.n_threads = n_threads or default_threads()
        self.provider = provider or ("cuda" if _cuda_available(og) else "cpu")
        try:
            config = og.Config(str(self.path))
            config.overlay(json.dumps({"model": {"decoder": {"session_options": {
                "intra_op_num_threads": self.n_threads, "inter_op_num_threads": 1}}}}))
            config.clear_providers()
            if self.provider != "cpu":
                config.append_provider(self.provider)
            self._model = og.Model(config)
            self._tokenizer = og.Tokenizer(self._model)
        except Exception as exc:  # onnxruntime-genai raises RuntimeError/OSError subclasses
            raise ModelError(
                f"onnxruntime-genai could not load {self.path}: {exc}; the build may be truncated "
                "or made for another execution provider; re-export it with `srl export onnx`"
            ) from exc
        data = json.loads((self.path / "genai_config.json").read_text(encoding="utf-8"))
        trained = int(data["model"].get("context_length") or n_ctx)
        self._eos = set(int(t) for t in self._tokenizer.eos_token_ids)
        template = self.path / "chat_template.jinja"
        self._template = template.read_text(encoding="utf-8") if template.is_file() else None
        self._lock = threading.Lock()
        self._generator = None
        self._generator_key: tuple | None = None
        self._prefix = AlignedPrefix(prefix_block)
        self.closed = False
        super().__init__(model_id=self.path.name, context_length=min(n_ctx, trained))

    # -- prompt -----------------------------------------------------------------------------
    def _render_text(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool) -> str:
        try:
            return self._tokenizer.apply_chat_template(
                messages=json.dumps(list(messages)),
                template_str=self._template,
                add_generation_prompt=add_generation_prompt,
            )
        except Exception as exc:
            raise EngineError(f"onnxruntime-genai could not render the chat template: {exc}") from exc

    def _tokenize(self, text: str, special: bool, first: bool) -> list[int]:
        if not text:
            return []
        if special:
            return self._encode_piece(text, first)
        # onnxruntime-genai always reads control-token text as the token: cut each occurrence after
        # its first character, so the tokenizer only ever sees ordinary text
        ids: list[int] = []
        for k, piece in enumerate(self._control_split().split(text)):
            parts = (piece[:1], piece[1:]) if k % 2 else (piece,)
            for part in parts:
                if part:
                    ids += self._encode_piece(part, first and not ids)
        return ids

    def _encode_piece(self, text: str, first: bool) -> list[int]:
        ids = [int(t) for t in self._tokenizer.encode(text)]
        if not first and self._adds_bos():
            ids = ids[1:]
        return ids

    def _adds_bos(self) -> bool:
        """Whether encode() puts BOS in front of any text (then only the prompt's first piece keeps it)."""
        if getattr(self, "_bos_added", None) is None:
            ids = [int(t) for t in self._tokenizer.encode(" ")]
            self._bos_added = bool(ids) and ids[0] == self._tokenizer.bos_token_id
        return self._bos_added

    def _control_split(self) -> re.Pattern[str]:
        """A pattern matching the tokenizer's added (control) tokens' text, from the build's tokenizer.json."""
        if getattr(self, "_control", None) is None:
            added: list[str] = []
            tokenizer_json = self.path / "tokenizer.json"
            if tokenizer_json.is_file():
                data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
                added = [t["content"] for t in data.get("added_tokens", []) if t.get("content")]
            alternatives = "|".join(re.escape(t) for t in sorted(added, key=len, reverse=True))
            self._control = re.compile(f"({alternatives})" if alternatives else "(?!)")
        return self._control

    def _search_options(self, params: SamplingParams) -> dict[str, object]:
        options: dict[str, object] = {"max_length": self.context_length, "batch_size": 1}
        if params.temperature > 0:
            options.update(
                do_sample=True,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k or 0,
            )
            if params.seed is not None:
                options["random_seed"] = params.seed
        else:
            options.update(do_sample=False, temperature=1.0, top_k=1)
        return options

    def _generator_for(self, tokens: list[int], params: SamplingParams):
        """A generator rewound to the whole aligned blocks it shares with `tokens`, and their count."""
        options = self._search_options(params)
        key = tuple(sorted((k, v) for k, v in options.items() if k != "random_seed"))
        reusable = self._generator is not None and self._generator_key == key and params.seed is None
        keep = self._prefix.reusable_length(tokens) if reusable else 0
        self._prefix.forget()  # until the prompt has been appended
        if keep > 0:
            assert self._generator is not None  # reusable: checked above
            self._generator.rewind_to(keep)
            return self._generator, keep
        generator_params = self._og.GeneratorParams(self._model)
        generator_params.set_search_options(**options)
        self._generator = None  # free the old KV cache before allocating a new one
        self._generator = self._og.Generator(self._model, generator_params)
        self._generator_key = key
        return self._generator, 0

    def _decode(
        self,
        tokens: list[int],
        params: SamplingParams,
        budget: int,
        cancel: threading.Event | None,
    ) -> Iterator[TokenEvent]:
        with self._lock:
            try:
                generator, start = self._generator_for(tokens, params)
                for a, b in self._prefix.chunks(start, len(tokens)):
                    generator.append_tokens(tokens[a:b])
                self._prefix.evaluated(tokens)
            except Exception as exc:
                self._generator = None
                raise EngineError(f"onnxruntime-genai failed on the prompt: {exc}") from exc
            stream = self._tokenizer.create_stream()
            matcher = StopMatcher(params.stop)
            finish = "length"
            produced = 0
            try:
                while produced < budget:
                    if cancel is not None and cancel.is_set():
                        finish = "cancelled"
                        break
                    if generator.is_done():
                        finish = "stop"
                        break
                    logits = generator.get_logits()[0, -1]
                    generator.generate_next_token()
                    token = int(generator.get_next_tokens()[0])
                    if token in self._eos:
                        finish = "stop"
                        break
                    produced += 1
                    text, hit = matcher.feed(stream.decode(token))
                    yield TokenEvent(text=text, token_id=token, logprob=log_softmax_at(logits, token))  # counted even when it ends a stop
                    if hit:
                        finish = "stop"
                        break
            except GeneratorExit:
                raise
            except Exception as exc:
                self._generator = None
                raise EngineError(f"onnxruntime-genai failed while decoding: {exc}") from exc
            yield TokenEvent(text=matcher.flush(), finish_reason=finish, matched_stop=matcher.matched)  # type: ignore[arg-type]

    def info(self) -> dict[str, object]:
        return {**super().info(), "path": str(self.path), "n_threads": self.n_threads, "provider": self.provider,
                "prefix_block": self._prefix.block}

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with self._lock:
            self._generator = None
            self._tokenizer = None
            self._model = None


def _cuda_available(og) -> bool:
    """True only with a CUDA build of onnxruntime-genai on a machine that has a GPU."""
    try:
        return bool(og.is_cuda_available())
    except Exception:
        return False
