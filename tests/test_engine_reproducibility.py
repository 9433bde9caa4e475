"""Same prompt and settings -> same text and the same log-probabilities, whatever the cache held.

One contract for every engine that promises reproducibility (llama.cpp, transformers,
onnxruntime). llama.cpp and onnxruntime-genai keep a prompt cache between calls; their kernels may
round differently depending on how many tokens are evaluated together (always for a lone token,
for some quantization types in any chunk), so reusing "whatever matched" used to change the logits
of the same prompt (issue: seeded sampling failed on a fresh machine). The llama.cpp engine checks
at load which rule its model needs (srl_sdk/engines/prefix.py); both rules are tested here. The log-probabilities are compared bit for bit: a cache path that evaluated the prompt
differently would change them on any processor, even where the sampled text happens to survive.
vLLM is not here: it batches concurrent requests together and promises no such thing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from srl_sdk.core.format import THINK_OPEN, step_messages
from srl_sdk.engines import SamplingParams
from srl_sdk.engines.llama_batch import within_batch
from srl_sdk.engines.prefix import AlignedPrefix, AnyPrefix

PROBLEM = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)
STEP_1 = "Natalia sold 48 / 2 = 24 clips in May."
STEP_2 = "Natalia sold 48 + 24 = 72 clips altogether in April and May. #### 72"
UNRELATED = [{"role": "user", "content": "Name three colours."}]

SETTINGS = {
    "greedy": SamplingParams(max_tokens=12),
    "seeded": SamplingParams(max_tokens=12, temperature=1.0, seed=7),
}


@pytest.fixture(scope="module")
def engine(any_engine):
    """Each in-process engine in turn (conftest.py: llama.cpp, transformers, onnxruntime, loaded once)."""
    return any_engine


def run(engine, prompt: str, params: SamplingParams) -> tuple[str, list[float]]:
    events = list(engine.stream(prompt, params))
    return "".join(e.text for e in events), [e.logprob for e in events if e.finish_reason is None]


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_same_prompt_same_result_whatever_the_cache_held(engine, setting):
    params = SETTINGS[setting]
    prompt = engine.render(step_messages(PROBLEM, [STEP_1])) + THINK_OPEN
    longer = engine.render(step_messages(PROBLEM, [STEP_1, STEP_2])) + THINK_OPEN  # shares a long prefix
    unrelated = engine.render(UNRELATED)

    first = run(engine, prompt, params)
    assert first[0] and len(first[1]) >= 1
    seen = {"twice in a row": run(engine, prompt, params)}
    run(engine, unrelated, params)
    seen["after an unrelated prompt"] = run(engine, prompt, params)
    run(engine, longer, params)
    seen["after a longer prompt with the same start"] = run(engine, prompt, params)
    run(engine, prompt + " So", params)
    seen["after the same prompt plus a word"] = run(engine, prompt, params)
    for cache_state, result in seen.items():
        assert result == first, f"{engine.name}, {setting}, {cache_state}: {result} != {first}"


def test_a_fresh_llama_engine_agrees_with_a_used_one(llama_engine):
    from srl_sdk.engines.llama_cpp import LlamaCppEngine

    prompt = llama_engine.render(step_messages(PROBLEM, [STEP_1])) + THINK_OPEN
    run(llama_engine, llama_engine.render(UNRELATED), SETTINGS["greedy"])
    for params in SETTINGS.values():
        used = run(llama_engine, prompt, params)
        with LlamaCppEngine("smollm2", n_ctx=2048, n_threads=2) as fresh:
            assert run(fresh, prompt, params) == used


@pytest.fixture(scope="module")
def aligned_engine():
    """The llama.cpp engine held to the aligned rule (what a model whose chunking matters gets)."""
    from srl_sdk.engines.llama_cpp import LlamaCppEngine

    with LlamaCppEngine("smollm2", n_ctx=2048, n_threads=2, prefix_reuse="aligned") as engine:
        yield engine


@pytest.mark.parametrize("rule", ["any", "aligned"])
def test_llama_engine_reuses_the_shared_prefix_of_the_previous_prompt(llama_engine, aligned_engine, rule):
    """Reproducible, yet a stepwise loop does not evaluate the shared system prompt again; under
    the aligned rule only whole blocks are kept."""
    engine = aligned_engine if rule == "aligned" else llama_engine
    if rule == "any" and engine.info()["prefix_reuse"] != "any":
        pytest.skip("this processor rounds the shipped model differently by chunk: the engine chose the aligned rule")
    prompt = engine.render(step_messages(PROBLEM, [STEP_1])) + THINK_OPEN
    longer = engine.render(step_messages(PROBLEM, [STEP_1, STEP_2])) + THINK_OPEN
    run(engine, prompt, SETTINGS["greedy"])
    before = engine.perf()["prompt_tokens"]
    run(engine, longer, SETTINGS["greedy"])
    evaluated = engine.perf()["prompt_tokens"] - before
    n_longer, n_prompt = engine.count_tokens(longer), engine.count_tokens(prompt)
    assert evaluated < n_longer / 2, "the shared prefix was evaluated again"
    assert evaluated >= n_longer - n_prompt  # the new tokens, at least
    if rule == "aligned":
        assert (n_longer - evaluated) % engine.info()["prefix_block"] == 0  # only whole aligned blocks were kept


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_the_aligned_rule_is_reproducible_too(aligned_engine, llama_engine, setting):
    test_same_prompt_same_result_whatever_the_cache_held(aligned_engine, setting)
    prompt = aligned_engine.render(step_messages(PROBLEM, [STEP_1])) + THINK_OPEN
    if llama_engine.info()["prefix_reuse"] == "any":  # two ways of reading the prompt, one result
        assert run(aligned_engine, prompt, SETTINGS[setting]) == run(llama_engine, prompt, SETTINGS[setting])


def _rounds_by_chunk(engine) -> bool:
    """Ground truth for the load-time probe: a 200-token prompt read whole and in 8 random
    chunkings (2 to 40 tokens per chunk); True if any chunking changed the last logits at all."""
    import random

    import numpy as np

    scheduler = engine._scheduler
    tokens = engine._tokenize(PROBLEM * 8, True, False)[:200]
    whole, draw = scheduler.last_logits(tokens, [0, len(tokens)]), random.Random(0)
    for _ in range(8):
        cuts = [0]
        while cuts[-1] < len(tokens) - 2:
            cuts.append(min(len(tokens) - 2, cuts[-1] + draw.randint(2, 40)))
        if not np.array_equal(whole, scheduler.last_logits(tokens, cuts + [len(tokens)])):
            return True
    return False


@pytest.mark.parametrize("quant", [None, "iq4_nl"])
def test_the_load_time_probe_tells_whether_chunking_changes_the_logits(tmp_path, quant):
    """The engine's rule of reuse follows what the model does on this processor: the shipped file,
    and IQ4_NL, which llama.cpp repacks for its matrix-matrix kernels (on this project's x86
    machine its logits depend on the chunk, the shipped file's do not)."""
    from srl_sdk.engines.builds import requantize
    from srl_sdk.engines.llama_cpp import LlamaCppEngine
    from srl_sdk.engines.models import smollm2_gguf_path

    model = "smollm2"
    if quant:
        model = str(tmp_path / f"{quant}.gguf")
        requantize(smollm2_gguf_path(), Path(model), quant=quant)
    with LlamaCppEngine(model, n_ctx=512, n_threads=2) as engine:
        assert engine.info()["prefix_reuse"] == ("aligned" if _rounds_by_chunk(engine) else "any")


def test_any_prefix_always_reads_the_last_two_tokens():
    prefix = AnyPrefix()
    prefix.evaluated([1, 2, 3, 4, 5, 6])
    assert prefix.reusable_length([1, 2, 3, 9, 9]) == 3               # whatever matched
    assert prefix.reusable_length([1, 2, 3, 4, 5, 6]) == 4            # the same prompt: two tokens read again
    assert prefix.reusable_length([1, 2, 3, 4, 5, 6, 7]) == 5         # never a lone token after the reuse
    assert prefix.reusable_length([1]) == 0 and prefix.reusable_length([1, 2]) == 0
    assert prefix.chunks(5, 40) == [(5, 40)]
    prefix.keep(2)
    assert prefix.reusable_length([1, 2, 3, 4, 5, 6]) == 2


def test_a_read_cut_to_the_batch_size_leaves_no_lone_token():
    assert within_batch([(0, 10)], 4) == [(0, 4), (4, 8), (8, 10)]
    assert within_batch([(0, 9)], 4) == [(0, 4), (4, 7), (7, 9)]       # not (8, 9) alone
    assert within_batch([(3, 4)], 4) == [(3, 4)]                       # a one-token read stays one
    assert all(b - a > 1 for a, b in within_batch([(0, 1025)], 512))


@pytest.mark.parametrize(
    "cached, prompt, block, expected",
    [
        ([], [1, 2, 3], 2, 0),                                  # nothing cached
        ([1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6, 7, 8], 2, 6),   # whole blocks shared
        ([1, 2, 3, 4, 5, 6], [1, 2, 3, 9, 9, 9, 9, 9], 2, 2),   # a mismatch inside a block drops that block
        ([1, 2, 3, 4], [1, 2, 3, 4], 2, 2),                     # the last chunk is always evaluated
        ([1, 2, 3, 4], [1, 2, 3, 4, 5], 2, 2),                  # never a lone last token: [2, 5) together
        ([1, 2, 3, 4], [1, 2, 3, 4, 5], 0, 0),                  # block 0: no reuse at all
    ],
)
def test_aligned_prefix_keeps_only_whole_blocks(cached, prompt, block, expected):
    prefix = AlignedPrefix(block)
    prefix.evaluated(cached)
    assert prefix.reusable_length(prompt) == expected


def test_aligned_prefix_chunks_depend_on_the_prompt_length_only():
    prefix = AlignedPrefix(4)
    assert prefix.chunks(0, 10) == [(0, 4), (4, 8), (8, 10)]
    assert prefix.chunks(4, 10) == [(4, 8), (8, 10)]          # the same ranges after a reused block
    assert prefix.chunks(0, 9) == [(0, 4), (4, 9)]            # a lone 9th token joins the block before it
    prefix.evaluated(list(range(10)))  # the partial chunk 8..9 is not reusable
    assert prefix.reusable_length(list(range(12))) == 8
    prefix.evaluated(list(range(9)))   # nor is the merged 4..8
    assert prefix.reusable_length(list(range(12))) == 4
    assert AlignedPrefix(0).chunks(0, 10) == [(0, 10)]
