"""GRPO rollouts through colocated vLLM: push the policy's weights with vLLM's own `reload_weights`.

Why this exists: TRL 1.16's colocate sync copies each parameter into vLLM's model in place
(`model.load_weights([(name, param)])`). vLLM's CPU build repacks every linear layer's weights at
load time (a different layout, without `weight_loader` on the parameters), so that copy fails
('Parameter' object has no attribute 'weight_loader') and, where it does not fail, cannot reach the
repacked tensors. vLLM's `reload_weights` runs the model's full loading path again (the same
repacking included) from `(hf_name, tensor)` pairs, which works on CPU and GPU alike (~0.4 s for
SmolLM2-135M).

What is sent: the policy as vLLM must sample it, i.e. LoRA merged into the base weights, under the
Hugging Face names (TRL's own iterator does the merge/unmerge and the PEFT renaming). Tensors are
cloned while merged, because the adapter is unmerged again right after. Limit: with tied
embeddings, a changed `embed_tokens` does not reach `lm_head` this way; LoRA on the attention and
MLP projections (the default) never changes either.
"""

from __future__ import annotations

import types
from typing import Any

from srl_sdk.errors import TrainingError

__all__ = ["merged_policy_weights", "reload_weights_sync", "use_reload_weights_sync"]


def merged_policy_weights(generation: Any) -> list[tuple[str, Any]]:
    """The policy's weights as `(hf_name, tensor)` pairs, LoRA merged (copies, safe after unmerge)."""
    return [(name, tensor.detach().clone()) for name, tensor in generation._iter_named_params()]


def reload_weights_sync(generation: Any) -> None:
    """Replacement for TRL's `VLLMGeneration.sync_weights` in colocate mode."""
    llm = getattr(generation, "llm", None)
    if llm is None:
        raise TrainingError("vLLM colocate sync called before TRL started vLLM; use_vllm with vllm_mode='colocate' is needed")
    pairs = merged_policy_weights(generation)
    try:
        llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(pairs), "is_checkpoint_format": True})
    except Exception as exc:
        raise TrainingError(
            f"vLLM could not take the updated policy weights ({type(exc).__name__}: {exc}); this vLLM build may "
            "lack `reload_weights` (it needs vLLM >= 0.11), or the model names differ from vLLM's"
        ) from exc
    llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
    generation.syncs = getattr(generation, "syncs", 0) + 1


def use_reload_weights_sync(trainer: Any) -> bool:
    """Make a TRL GRPOTrainer (colocate vLLM) sync through `reload_weights`. True if installed."""
    generation = getattr(trainer, "vllm_generation", None)
    if generation is None or getattr(generation, "mode", None) != "colocate":
        return False
    generation.sync_weights = types.MethodType(reload_weights_sync, generation)
    generation.syncs = 0
    return True
