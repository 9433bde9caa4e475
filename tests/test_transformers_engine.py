"""TransformersEngine on the real SmolLM2 (the embedded GGUF converted once to an HF folder): what
only it does. The Engine contract is tests/engine_contract.py, run on it by test_engine_contract.py."""

from __future__ import annotations

import pytest

from srl_sdk.core.format import step_messages
from srl_sdk.engines import SamplingParams, guess_engine, load_engine
from srl_sdk.engines.hf_folder import gguf_to_hf_dir
from srl_sdk.errors import ModelError

PROBLEM = "Tom has 3 apples and buys 5 more. How many apples does he have?"


def test_converted_folder_is_a_complete_hf_model(smollm2_hf_dir) -> None:
    names = {p.name for p in smollm2_hf_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert guess_engine(str(smollm2_hf_dir)) == "transformers"
    # the alias finds the same cached folder: no second conversion
    assert gguf_to_hf_dir("smollm2").resolve() == smollm2_hf_dir.resolve()


def test_greedy_matches_hf_generate_token_for_token(transformers_engine) -> None:
    import torch

    engine = transformers_engine
    prompt = engine.render(step_messages(PROBLEM, [])) + "<think>"
    events = list(engine.stream(prompt, SamplingParams(max_tokens=12, temperature=0.0)))
    ids = engine.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
    with torch.inference_mode():
        out = engine.model.generate(**ids, max_new_tokens=12, do_sample=False)
    reference_ids = out[0, ids["input_ids"].shape[1]:].tolist()
    assert [e.token_id for e in events[:-1]] == reference_ids[: len(events) - 1]
    assert "".join(e.text for e in events) == engine.tokenizer.decode(reference_ids, skip_special_tokens=True)
    assert events[-1].finish_reason in ("length", "stop")


def test_render_and_count_are_the_tokenizers(transformers_engine) -> None:
    engine = transformers_engine
    messages = step_messages(PROBLEM, ["3 + 5 = 8"])
    text = engine.render(messages)
    assert text == engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert engine.count_tokens(text) == len(engine.tokenizer(text, add_special_tokens=False)["input_ids"])


def test_missing_model_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_engine(str(tmp_path / "nope"), "transformers")
