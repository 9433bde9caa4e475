"""The text splitter behind the `srl` vLLM reasoning parser: whole and streamed, tags cut anywhere."""

from __future__ import annotations

import importlib

import pytest

from srl_sdk.serving.reasoning_split import ThinkSplitter, split_reasoning

OUTPUT = "<think>48 / 2 is half of 48.</think>\nNatalia sold 48 / 2 = 24 clips in May."


def stream(text: str, cuts: list[int], starts_in_thought=None) -> tuple[str, str]:
    splitter = ThinkSplitter(starts_in_thought)
    reasoning, content = "", ""
    edges = [0, *cuts, len(text)]
    for a, b in zip(edges, edges[1:]):
        r, c = splitter.feed(text[a:b])
        reasoning, content = reasoning + r, content + c
    r, c = splitter.finish()
    return reasoning + r, content + c


def test_whole_output_splits_at_the_tags():
    assert split_reasoning(OUTPUT) == ("48 / 2 is half of 48.", "Natalia sold 48 / 2 = 24 clips in May.")


def test_prefilled_thought_without_open_tag():
    assert split_reasoning("half of 48</think> 48/2 = 24") == ("half of 48", "48/2 = 24")
    assert split_reasoning("half of 48</think> 48/2 = 24", starts_in_thought=True) == ("half of 48", "48/2 = 24")


def test_unclosed_and_untagged_outputs():
    assert split_reasoning("<think>still thinking") == ("still thinking", None)
    assert split_reasoning("no tags at all") == ("no tags at all", None)  # auto: prefilled convention
    assert split_reasoning("no tags at all", starts_in_thought=False) == (None, "no tags at all")


@pytest.mark.parametrize("width", [1, 2, 3, 5, 7])
def test_streaming_with_tags_cut_across_deltas(width):
    cuts = list(range(width, len(OUTPUT), width))
    reasoning, content = stream(OUTPUT, cuts)
    assert reasoning == "48 / 2 is half of 48."
    assert content == "Natalia sold 48 / 2 = 24 clips in May."


def test_streaming_never_leaks_a_partial_tag():
    splitter = ThinkSplitter()
    assert splitter.feed("<thi") == ("", "")
    assert splitter.feed("nk>abc</th") == ("abc", "")
    assert not splitter.reasoning_ended
    assert splitter.feed("ink> step") == ("", "step")
    assert splitter.reasoning_ended
    assert splitter.feed(" two") == ("", " two")


def test_streaming_prefilled_case_matches_whole():
    text = "count the clips</think>\n24 clips #### 24"
    for width in (1, 4, 9):
        got = stream(text, list(range(width, len(text), width)), starts_in_thought=True)
        assert got == ("count the clips", "24 clips #### 24")


def test_vllm_adapter_imports_only_with_vllm():
    """The plugin file needs vLLM; without it the import names the pip command."""
    try:  # not find_spec("vllm"): a folder named vllm on sys.path (e.g. tests/vllm) would fool it
        importlib.import_module("vllm.reasoning")
        has_vllm = True
    except ImportError:
        has_vllm = False
    if not has_vllm:
        from srl_sdk.errors import MissingDependencyError

        with pytest.raises(MissingDependencyError, match=r"pip install 'srl-sdk\[gpu\]'"):
            importlib.import_module("srl_sdk.serving.vllm_reasoning_parser")
    else:  # in the vLLM environment: the parser is registered under "srl"
        module = importlib.import_module("srl_sdk.serving.vllm_reasoning_parser")
        from vllm.reasoning import ReasoningParserManager

        assert ReasoningParserManager.get_reasoning_parser("srl") is module.SRLReasoningParser
