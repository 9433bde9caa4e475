"""A PEFT LoRA adapter exported with `srl export lora-gguf` runs in llama.cpp as the merged model runs in transformers.

The adapter is made here, not taken from runs/: PEFT's LoRA (r=16, alpha=32, all 7 projections,
as `srl train` makes them) on the HF folder `gguf_to_hf_dir` builds from the embedded GGUF, with
lora_B set to seeded random values (std 0.02) instead of PEFT's zeros, so the adapter changes
the model a lot (about 1 in 10 next-token choices differ from the base) without any training.

What is compared, on 3 chat prompts, every position's full logit vector (151 positions):
- llama.cpp on an f16 GGUF of the same weights with the adapter file applied, against
  transformers with the PEFT adapter merged (merge_and_unload). The f16 base keeps llama.cpp's
  own rounding small (base vs base: max |logit diff| ~0.1), so the adapter's effect can be
  checked closely: delta = adapted - base logits on each side must correlate >= 0.99 with a
  slope (scale) within 5 % of 1, max |logit diff| <= 0.5, top-token agreement >= 0.98.
  Measured here (q8_0 file 7.2 MiB / f16 file 9.3 MiB): correlation 0.99978 / 0.99983, slope
  0.992 / 0.997, max diff 0.12 / 0.08, agreement 1.000; base vs adapted transformers agree on
  only 0.894 of the top tokens.
- the same checks fail for an exporter that skips the q/k row permutation (correlation 0.866,
  max diff 3.1) or writes half the alpha (slope 0.498): `test_a_broken_export_is_caught`.
- a chain of two stage adapters (r 16 on 7 weights, then r 8 on 4, trained on the first's merged
  final/) exported as one rank-24 LoRA: correlation 0.99989, slope 1.000, max diff 0.07; the
  last stage alone fails the checks.
- on the shipped Q4_1 base (what `smollm2-srl` runs on) llama.cpp's quantized matmuls add noise
  of their own, so only top-token agreement with the merged fp32 model is checked (>= 0.90;
  measured 0.987, where the unadapted Q4_1 agrees with it on 0.887).
Whole file: 27 min on the 2 shared cores under load average ~8 (not profiled).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from srl_sdk.engines.models import smollm2_gguf_path
from srl_sdk.errors import ExportError, ModelError

pytestmark = pytest.mark.slow

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_B_STD = 0.02
PROMPTS = [
    "Tom has 3 apples and buys 4 more. How many apples does he have?",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "Write the next step: 12 + 7 = 19. Then",
]
# tolerances (see the module docstring for the measured values)
MIN_DELTA_CORRELATION = 0.99
SLOPE_RANGE = (0.95, 1.05)
MAX_LOGIT_DIFF = 0.5
MIN_TOP1_F16 = 0.98
MIN_TOP1_QUANTIZED = 0.90  # the base the engine runs + the adapter (the Q4_0 build measured 0.64 here: builds.py)
MAX_TOP1_BASE_VS_ADAPTED = 0.95  # the adapter must change the model for the checks to mean anything


@pytest.fixture(scope="module")
def lab(smollm2_hf_dir, tmp_path_factory):
    """A random-B PEFT adapter, the prompts' token ids, and transformers' base and merged logits."""
    from srl_sdk.engines.hf_folder import cap_torch_threads, load_causal_lm, load_tokenizer

    cap_torch_threads(1)
    root = tmp_path_factory.mktemp("lora")
    hf_dir = smollm2_hf_dir
    tokenizer = load_tokenizer(hf_dir)
    ids = []
    for prompt in PROMPTS:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=False)
        ids.append(list(tokenizer(text, add_special_tokens=False)["input_ids"]))
    model = random_lora(load_causal_lm(hf_dir), r=16, alpha=32, targets=TARGETS, seed=1)
    adapter = root / "adapter"
    model.save_pretrained(str(adapter))
    with model.disable_adapter():
        hf_base = hf_logits(model, ids)
    hf_merged = hf_logits(model.merge_and_unload(), ids)
    del model
    return {"root": root, "hf_dir": hf_dir, "adapter": adapter, "ids": ids,
            "hf_base": hf_base, "hf_merged": hf_merged}


def random_lora(model, *, r: int, alpha: float, targets: list[str], seed: int):
    """PEFT's LoRA as `srl train` makes it, with lora_B drawn at random instead of PEFT's zeros."""
    import peft
    import torch

    torch.manual_seed(seed)
    model = peft.get_peft_model(model, peft.LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * LORA_B_STD)
    return model


def hf_logits(model, ids) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        return [model(torch.tensor([row])).logits[0].float().numpy() for row in ids]


@pytest.fixture(scope="module")
def f16_base(lab):
    """The same weights as the HF folder, as an f16 GGUF (gguf-py writer, the embedded tokenizer)."""
    from srl_sdk.edge.gguf_export import convert_gguf_py

    path = lab["root"] / "base-f16.gguf"
    convert_gguf_py(lab["hf_dir"], path, smollm2_gguf_path())
    return path


def llama_logits(base, adapter, ids) -> list[np.ndarray]:
    import llama_cpp

    extra = {"lora_path": str(adapter)} if adapter is not None else {}
    llm = llama_cpp.Llama(model_path=str(base), n_ctx=512, n_threads=2, logits_all=True, verbose=False, **extra)
    try:
        out = []
        for row in ids:
            llm.reset()
            llm.eval(row)
            out.append(np.array(llm.scores[: len(row)], dtype=np.float32))
        return out
    finally:
        llm.close()


def compare(lab, llama_base, llama_adapted) -> dict[str, float]:
    def top(xs):
        return np.concatenate([x.argmax(-1) for x in xs])

    delta_llama = np.concatenate([(a - b).ravel() for a, b in zip(llama_adapted, llama_base)])
    delta_hf = np.concatenate([(a - b).ravel() for a, b in zip(lab["hf_merged"], lab["hf_base"])])
    return {
        "top1_vs_merged": float((top(llama_adapted) == top(lab["hf_merged"])).mean()),
        "top1_base_vs_merged_hf": float((top(lab["hf_base"]) == top(lab["hf_merged"])).mean()),
        "delta_correlation": float(np.corrcoef(delta_llama, delta_hf)[0, 1]),
        "slope": float(delta_llama @ delta_hf / (delta_hf @ delta_hf)),
        "max_logit_diff": float(max(np.abs(a - b).max() for a, b in zip(llama_adapted, lab["hf_merged"]))),
    }


def faithful(m: dict[str, float]) -> bool:
    return (m["delta_correlation"] >= MIN_DELTA_CORRELATION and SLOPE_RANGE[0] <= m["slope"] <= SLOPE_RANGE[1]
            and m["max_logit_diff"] <= MAX_LOGIT_DIFF and m["top1_vs_merged"] >= MIN_TOP1_F16)


@pytest.fixture(scope="module")
def f16_llama_base(lab, f16_base):
    return llama_logits(f16_base, None, lab["ids"])


@pytest.mark.parametrize("outtype", ["q8_0", "f16"])
def test_exported_adapter_runs_in_llama_cpp_as_the_merged_model(lab, f16_base, f16_llama_base, outtype):
    from srl_sdk.edge.lora_gguf import export_lora_gguf

    result = export_lora_gguf(lab["adapter"], lab["root"] / f"adapter-{outtype}.gguf", base=f16_base,
                              outtype=outtype, check_load=True)
    assert result.n_pairs == 30 * 7 and result.rank == 16 and result.alpha == 32 and result.load_checked
    assert result.size_bytes < 12 * 2**20
    metrics = compare(lab, f16_llama_base, llama_logits(f16_base, result.path, lab["ids"]))
    print(outtype, f"{result.size_bytes / 2**20:.1f} MiB", metrics)
    assert metrics["top1_base_vs_merged_hf"] <= MAX_TOP1_BASE_VS_ADAPTED, "the test adapter barely changes the model"
    assert faithful(metrics), metrics


@pytest.mark.parametrize("broken", ["no q/k permutation", "half alpha"])
def test_a_broken_export_is_caught(lab, f16_base, f16_llama_base, monkeypatch, broken):
    """The checks above are sharp enough to see a missing rotary permutation or a wrong scale."""
    from srl_sdk.edge import lora_gguf

    if broken == "no q/k permutation":
        monkeypatch.setattr(lora_gguf, "permute_rows", lambda matrix, n_head: matrix)
    else:
        real = lora_gguf.gguf_alpha
        monkeypatch.setattr(lora_gguf, "gguf_alpha", lambda spec: real(spec) / 2)
    path = lora_gguf.export_lora_gguf(lab["adapter"], lab["root"] / "broken.gguf", base=f16_base).path
    metrics = compare(lab, f16_llama_base, llama_logits(f16_base, path, lab["ids"]))
    print(broken, metrics)
    assert not faithful(metrics), metrics


def test_a_chain_of_stage_adapters_becomes_one_exact_lora(lab, f16_base, f16_llama_base):
    """`srl train` stages: warm-up adapter -> merged final/ -> the next stage's adapter on that final/.
    Exported from the last adapter, the file holds both deltas (rank 16 + 8, stage 2 on fewer weights)."""
    from srl_sdk.edge.lora_gguf import export_lora_gguf
    from srl_sdk.engines.hf_folder import load_causal_lm

    root = lab["root"] / "run"
    stage1 = random_lora(load_causal_lm(lab["hf_dir"]), r=16, alpha=32, targets=TARGETS, seed=2)
    stage1.save_pretrained(str(root / "warmup" / "adapter"))
    stage1.merge_and_unload().save_pretrained(str(root / "warmup" / "final"))
    del stage1
    stage2 = random_lora(load_causal_lm(root / "warmup" / "final"), r=8, alpha=16, targets=TARGETS[:4], seed=3)
    stage2.save_pretrained(str(root / "sft" / "adapter"))
    config = json.loads((root / "sft" / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(root / "warmup" / "final")
    chain = {**lab, "hf_merged": hf_logits(stage2.merge_and_unload(), lab["ids"])}
    del stage2

    result = export_lora_gguf(root / "sft" / "adapter", lab["root"] / "chain.gguf", base=f16_base)
    assert result.chain == [root / "warmup" / "adapter", root / "sft" / "adapter"]
    assert result.rank == 24 and result.alpha == 24 and result.n_pairs == 30 * 7
    metrics = compare(chain, f16_llama_base, llama_logits(f16_base, result.path, lab["ids"]))
    print("chain", f"{result.size_bytes / 2**20:.1f} MiB", metrics)
    assert faithful(metrics), metrics
    # the check sees the difference: the last stage alone, as if it had been trained on the base
    alone = lab["root"] / "alone"
    shutil.copytree(root / "sft" / "adapter", alone)
    (alone / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(lab["hf_dir"])}))
    partial = export_lora_gguf(alone, lab["root"] / "alone.gguf", base=f16_base)
    assert partial.chain == [alone]
    assert not faithful(compare(chain, f16_llama_base, llama_logits(f16_base, partial.path, lab["ids"])))


def test_adapter_on_the_quantized_base(lab):
    """What `smollm2-srl` runs: the base file its engine loads (`resolve_model`: the shipped Q4_1
    unless $SRL_DEFAULT_BUILD asks for a checked requantization, srl_sdk/engines/builds.py) + the
    adapter, against the merged fp32 model."""
    from srl_sdk.edge.lora_gguf import export_lora_gguf
    from srl_sdk.engines.models import resolve_model

    result = export_lora_gguf(lab["adapter"], lab["root"] / "adapter-q4.gguf", base="smollm2")
    gguf = resolve_model("smollm2-srl").gguf
    adapted = llama_logits(gguf, result.path, lab["ids"])
    top = np.concatenate([x.argmax(-1) for x in adapted])
    merged = np.concatenate([x.argmax(-1) for x in lab["hf_merged"]])
    unadapted = np.concatenate([x.argmax(-1) for x in llama_logits(gguf, None, lab["ids"])])
    print(gguf.name, f"adapted {(top == merged).mean():.3f}", f"unadapted {(unadapted == merged).mean():.3f}")
    assert (top == merged).mean() >= MIN_TOP1_QUANTIZED, (top == merged).mean()
    assert (top == merged).mean() > (unadapted == merged).mean()


def test_engines_apply_the_adapter_and_keep_prefix_reuse_reproducible(lab, f16_base):
    """llama.cpp (adapter file on load) and transformers (adapter file merged) write the same greedy
    text with close log-probabilities, unlike the base; with the adapter, llama.cpp's prefix reuse
    still gives the same text and log-probabilities whatever the cache held."""
    from srl_sdk.core.format import THINK_OPEN, step_messages
    from srl_sdk.edge.lora_gguf import export_lora_gguf
    from srl_sdk.engines import SamplingParams
    from srl_sdk.engines.llama_cpp import LlamaCppEngine
    from srl_sdk.engines.transformers import TransformersEngine

    adapter = export_lora_gguf(lab["adapter"], lab["root"] / "adapter-engine.gguf", base=f16_base).path
    problem = PROMPTS[1] + " How many clips did Natalia sell altogether in April and May?"
    greedy = SamplingParams(max_tokens=16)
    seeded = SamplingParams(max_tokens=12, temperature=1.0, seed=7)

    def run(engine, prompt, params):
        events = list(engine.stream(prompt, params))
        return "".join(e.text for e in events), [e.logprob for e in events if e.finish_reason is None]

    llama = LlamaCppEngine(f16_base, adapter=adapter, n_ctx=1024, n_threads=2)
    base = LlamaCppEngine(f16_base, n_ctx=1024, n_threads=2)
    hf = TransformersEngine(str(lab["hf_dir"]), adapter=adapter, n_threads=1)
    try:
        assert llama.info()["adapter"] == str(adapter) and llama.model_id.endswith("+adapter-engine")
        prompt = llama.render(step_messages(problem, ["Natalia sold 48 / 2 = 24 clips in May."])) + THINK_OPEN
        adapted, merged, unadapted = run(llama, prompt, greedy), run(hf, prompt, greedy), run(base, prompt, greedy)
        assert adapted[0] == merged[0]
        assert max(abs(a - b) for a, b in zip(adapted[1], merged[1])) <= 0.25, (adapted[1], merged[1])
        # the adapter is on: the same tokens (if any) are chosen with other probabilities
        assert adapted[0] != unadapted[0] or max(abs(a - b) for a, b in zip(adapted[1], unadapted[1])) > 0.25
        for params in (greedy, seeded):
            first = run(llama, prompt, params)
            run(llama, llama.render([{"role": "user", "content": "Name three colours."}]), params)
            assert run(llama, prompt, params) == first
            run(llama, prompt + " So", params)
            assert run(llama, prompt, params) == first
    finally:
        for engine in (llama, base, hf):
            engine.close()


def test_named_model_smollm2_srl():
    """`smollm2-srl` = the embedded base + the adapter shipped in the package; `smollm2` stays the base."""
    import gguf

    from srl_sdk.engines import SamplingParams, guess_engine, load_engine, resolve_gguf, resolve_model
    from srl_sdk.engines.llama_cpp import LlamaCppEngine
    from srl_sdk.engines.models import default_base_build
    from srl_sdk.serving.config import ServerConfig

    plain, trained = resolve_model("smollm2"), resolve_model("smollm2-srl")
    # both run on the base's default build (srl_sdk/engines/builds.py); the converters keep the shipped file
    assert plain.adapter is None and plain.gguf == trained.gguf == default_base_build().path
    assert resolve_gguf("smollm2") == smollm2_gguf_path() and trained.name == "smollm2-srl"
    assert trained.adapter is not None and trained.adapter.parent.name == "models"
    fields = gguf.GGUFReader(str(trained.adapter)).fields
    assert fields["general.type"].contents() == "adapter" and fields["adapter.type"].contents() == "lora"
    assert trained.adapter.stat().st_size < 12 * 2**20
    assert guess_engine("smollm2-srl") == "llama.cpp"
    with pytest.raises(ModelError, match="llama.cpp"):
        load_engine("smollm2-srl", "onnx")
    with pytest.raises(ModelError, match="LoRA adapter"):
        resolve_gguf("smollm2-srl")  # code that needs one plain GGUF must not drop the adapter silently
    assert ServerConfig(model="smollm2-srl").model_name == "smollm2-srl"
    engine = LlamaCppEngine("smollm2-srl", n_ctx=512, n_threads=2)
    try:
        assert engine.model_id == "smollm2-srl" and engine.info()["adapter"] == str(trained.adapter)
        assert engine.path == trained.gguf  # the file the engine loaded is the one resolve_model named
        assert engine.prompt_style == "compact"  # what it was trained with, sent by the driver
        assert list(engine.stream(engine.render([{"role": "user", "content": "1 + 1?"}]), SamplingParams(max_tokens=4)))
    finally:
        engine.close()


def test_exporter_refuses_what_llama_cpp_cannot_run(tmp_path):
    from safetensors.numpy import save_file

    from srl_sdk.edge.lora_gguf import export_lora_gguf

    folder = tmp_path / "adapter"
    folder.mkdir()
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "bias": "none"}
    (folder / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ExportError, match="DoRA"):
        export_lora_gguf(folder, tmp_path / "a.gguf", base="smollm2")
    (folder / "adapter_config.json").write_text(json.dumps(config))
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file({f"{prefix}.lora_A.weight": np.zeros((4, 100), np.float32),  # SmolLM2's q_proj takes 576
               f"{prefix}.lora_B.weight": np.zeros((576, 4), np.float32)}, str(folder / "adapter_model.safetensors"))
    with pytest.raises(ExportError, match="do not fit"):
        export_lora_gguf(folder, tmp_path / "a.gguf", base="smollm2")
    assert not (tmp_path / "a.gguf").exists()


def test_the_default_model_is_the_trained_one_and_follows_the_step_protocol():
    """`Reasoner()` and `srl reason` load `smollm2-srl` (docs/results.md, "Learning benchmark"): on
    problems of the task it was trained on, drawn with another seed, it writes only well-formed
    steps with the compact prompt it learned, and ends with an answer."""
    from srl_sdk import Reasoner
    from srl_sdk.core.generate import GenerateConfig, generate_splits
    from srl_sdk.engines.models import DEFAULT_MODEL, NAMED_MODELS

    assert DEFAULT_MODEL == "smollm2-srl" and NAMED_MODELS[DEFAULT_MODEL].prompt == "compact"
    config = GenerateConfig(train=0, validation=4, test=0, test_hard=0, seed=7, ops=["+", "-", "*"], max_operand=10,
                            max_factor=3, max_result=60, distractors=0, min_steps=2, max_steps=3,
                            hard_min_steps=4, hard_max_steps=6)
    problems = generate_splits(config)["validation"]
    with Reasoner(store=False) as reasoner:
        traces = [reasoner.solve(p.question, max_steps=5, temperature=0.0) for p in problems]
    for trace in traces:
        assert trace.model == "smollm2-srl"
        assert trace.steps and all(step.format_ok for step in trace.steps), trace.steps
    assert sum(trace.finish_reason == "final_answer" for trace in traces) >= 3, [t.finish_reason for t in traces]
