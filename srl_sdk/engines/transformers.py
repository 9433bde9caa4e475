"""transformers engine: the model exactly as training sees it (fp32/bf16 weights, no quantization).

It exists so a freshly trained checkpoint (an HF folder) can be evaluated and served without an
export step, and so training-time and serving-time text can be compared on the same weights.
Decoding is a manual loop over the KV cache (`past_key_values`) rather than `generate()`, because
the Engine contract needs each token as it is sampled, its log-probability, stop strings that
never leak (shared `StopMatcher`), and a prompt stop when the generator is closed or `cancel` is
set.

`model` may be an HF folder, a hub id, a `.gguf` file or a named model ('smollm2', or 'smollm2-srl'
whose llama.cpp LoRA adapter file is merged into the weights on load: srl_sdk/engines/lora.py).
A GGUF is read with `gguf_file=` and dequantized in memory at every load (~15 s for SmolLM2); for
repeated use, convert it once with `srl_sdk.engines.hf_folder.gguf_to_hf_dir` and load the folder (0.2 s).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from srl_sdk.engines.base import SamplingParams, StopMatcher, TokenEvent, TokenLoopEngine
from srl_sdk.engines.models import is_adapter_model, is_alias, resolve_gguf, resolve_model
from srl_sdk.errors import EngineError, ModelError, require

__all__ = ["TransformersEngine"]

# `split_special_tokens` is a flag the call sets on the shared Rust tokenizer before encoding:
# two threads tokenizing at once (a server's streams) must not see each other's setting.
_TOKENIZER_LOCK = threading.Lock()


def _default_threads() -> int:
    """Half the cores, at most 4: with 2 threads on 2 busy cores torch decodes ~20x slower than with 1."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


class TransformersEngine(TokenLoopEngine):
    """A causal LM in transformers + torch, decoded token by token with a KV cache."""

    name = "transformers"

    def __init__(
        self,
        model: str | os.PathLike[str] = "smollm2",
        *,
        device: str = "cpu",
        dtype: str = "float32",
        n_threads: int | None = None,
        context_length: int | None = None,
        seed: int = 0,
        adapter: str | os.PathLike[str] | None = None,
    ) -> None:
        """`adapter`: a llama.cpp LoRA GGUF (`srl export lora-gguf`) merged into the weights on load."""
        torch = require("torch", "train")
        transformers = require("transformers", "train")
        self._torch = torch
        self.n_threads = n_threads or _default_threads()
        if device == "cpu" and torch.get_num_threads() != self.n_threads:
            torch.set_num_threads(self.n_threads)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ModelError("device='cuda' was asked for but no CUDA GPU is visible; use device='cpu'")
        # the shipped base, not the Q4_0 build: transformers dequantizes it, so it gains nothing from Q4_0
        resolved = resolve_model(model, default_build=False) if is_adapter_model(model) else None
        self.adapter: Path | None = Path(adapter).expanduser() if adapter is not None else (
            resolved.adapter if resolved is not None else None)
        source, gguf_file = self._locate(resolved.gguf if resolved is not None else model)
        kwargs = {"gguf_file": gguf_file} if gguf_file else {}
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(source, **kwargs)
            self.model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, dtype), **kwargs)
        except OSError as exc:
            raise ModelError(
                f"transformers could not load {model!r}: {exc}; pass an HF model folder, a .gguf file, "
                "the alias 'smollm2', or a hub id on a machine that can reach the hub"
            ) from exc
        except AttributeError as exc:
            raise ModelError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16") from exc
        if self.adapter is not None:
            from srl_sdk.engines.lora import merge_lora_gguf

            merge_lora_gguf(self.model, self.adapter)
        self.model.to(device)
        self.model.eval()
        self.device = device
        self.seed = seed
        config = self.model.config
        trained = getattr(config, "max_position_embeddings", None) or 4096
        self._eog = self._end_of_turn_ids()
        # transformers >= 5.2x names the KV cache argument `cache` (`past_key_values` is deprecated)
        import inspect

        self._cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        self._lock = threading.Lock()
        self.closed = False
        name = Path(str(model)).name if str(model) else "model"
        if resolved is not None and resolved.name:
            name = resolved.name
        super().__init__(model_id=name, context_length=int(context_length or trained), source=model)

    @staticmethod
    def _locate(model: str | os.PathLike[str]) -> tuple[str, str | None]:
        text = str(model)
        if is_alias(text) or text.endswith(".gguf"):
            path = resolve_gguf(text)
            return str(path.parent), path.name
        path = Path(text).expanduser()
        if path.is_dir() and not (path / "config.json").is_file():
            found = sorted(path.glob("*.gguf"))
            if len(found) == 1:
                return str(path), found[0].name
            raise ModelError(f"{path} has no config.json and {len(found)} .gguf files; pass one model")
        if not path.exists() and text.startswith((".", "/", "~")):
            raise ModelError(f"model folder {path} does not exist")
        return text, None

    def _end_of_turn_ids(self) -> set[int]:
        ids: set[int] = set()
        for value in (self.tokenizer.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None)):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(v for v in value if isinstance(v, int))
        for marker in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>"):
            token = self.tokenizer.convert_tokens_to_ids(marker)
            if isinstance(token, int) and token != self.tokenizer.unk_token_id and token is not None and token >= 0:
                ids.add(token)
        return ids

    # -- Engine ---------------------------------------------------------------------------------
    def _render_text(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            text = "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)
            return text + ("\n\nassistant: " if add_generation_prompt else "")
        return self.tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=add_generation_prompt, tokenize=False
        )

    def _tokenize(self, text: str, special: bool, first: bool) -> list[int]:
        # the template writes BOS itself; split_special_tokens=True reads `<|im_start|>` as characters
        with _TOKENIZER_LOCK:
            return list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=not special)["input_ids"])

    def _pick(self, logits, params: SamplingParams, generator):
        torch = self._torch
        if params.temperature <= 0:
            return int(torch.argmax(logits).item())
        scores = logits.float() / params.temperature
        if params.top_k > 0:
            kth = torch.topk(scores, min(params.top_k, scores.numel())).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if params.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=True)
            cumulative = torch.softmax(sorted_scores, dim=-1).cumsum(dim=-1)
            drop = cumulative - torch.softmax(sorted_scores, dim=-1) > params.top_p
            scores[order[drop]] = float("-inf")
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=generator).item())

    def _decode(
        self,
        tokens: list[int],
        params: SamplingParams,
        budget: int,
        cancel: threading.Event | None,
    ) -> Iterator[TokenEvent]:
        torch = self._torch
        with self._lock, torch.inference_mode():
            generator = torch.Generator(device="cpu")
            generator.manual_seed(params.seed if params.seed is not None else self.seed)
            matcher = StopMatcher(params.stop)
            generated: list[int] = []
            shown = ""  # text of `generated` already handed to the matcher
            finish = "length"
            input_ids = torch.tensor([tokens], device=self.device)
            past = None
            try:
                for _ in range(budget):
                    if cancel is not None and cancel.is_set():
                        finish = "cancelled"
                        break
                    out = self.model(input_ids=input_ids, use_cache=True, **{self._cache_arg: past})
                    past = getattr(out, "cache", None)
                    if past is None:
                        past = out.past_key_values
                    logits = out.logits[0, -1].float().cpu()
                    token = self._pick(logits, params, generator)
                    logprob = float(torch.log_softmax(logits, dim=-1)[token].item())
                    if token in self._eog:
                        finish = "stop"
                        break
                    generated.append(token)
                    text = self.tokenizer.decode(generated, skip_special_tokens=True)
                    piece = "" if text.endswith("\ufffd") else text[len(shown):]
                    if piece:
                        shown = text
                    safe, hit = matcher.feed(piece)
                    yield TokenEvent(text=safe, token_id=token, logprob=logprob)  # counted even when it ends a stop
                    if hit:
                        finish = "stop"
                        break
                    input_ids = torch.tensor([[token]], device=self.device)
            except RuntimeError as exc:
                raise EngineError(f"transformers generation failed: {exc}") from exc
            tail = matcher.flush()
            if finish != "stop":
                rest = self.tokenizer.decode(generated, skip_special_tokens=True)[len(shown):]
                tail += rest
            yield TokenEvent(text=tail, finish_reason=finish, matched_stop=matcher.matched)  # type: ignore[arg-type]

    def info(self) -> dict[str, object]:
        return {**super().info(), "device": self.device, "n_threads": self.n_threads}

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with self._lock:
            self.model = None  # type: ignore[assignment]
