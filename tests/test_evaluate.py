"""`srl eval`: the statistics on hand-made data with known answers, the figures rebuilt from
records, and one small end-to-end run on the real embedded model (SmolLM2 GGUF, llama.cpp)."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from srl_sdk.core.checks import check_arithmetic
from srl_sdk.core.splitting import ExpertSolution
from srl_sdk.training.evaluate import (
    EvalConfig,
    EvalReport,
    ProblemRecord,
    StepRecord,
    compare_models,
    driver_step,
    evaluate,
    fast_step,
    step_instances,
    summarise,
)
from srl_sdk.training.stats import cluster_mean_interval, paired_difference, percentile, sign_flip_p_value

# -- statistics -----------------------------------------------------------------------------------


def test_percentile_interpolates_linearly():
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.0) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 1.0) == 4.0


def test_identical_models_differ_by_exactly_zero():
    values = [0.2, 0.9, 0.4, 0.4, 0.7, 0.1]
    result = paired_difference(values, list(values), ["p1", "p1", "p2", "p2", "p3", "p3"], resamples=500)
    assert result.diff == 0.0 and result.low == 0.0 and result.high == 0.0
    assert result.p_value == 1.0
    assert (result.wins, result.losses, result.ties) == (0, 0, 6)
    assert result.clusters == 3


def test_constant_improvement_excludes_zero_and_is_significant():
    a = [0.1 * (i % 7) for i in range(40)]
    b = [x + 0.25 for x in a]
    clusters = [i // 4 for i in range(40)]  # 10 problems, 4 instances each
    result = paired_difference(a, b, clusters, resamples=2000)
    assert result.diff == pytest.approx(0.25)
    assert result.low == pytest.approx(0.25) and result.high == pytest.approx(0.25)
    assert result.low > 0
    # 10 problems all improved: exactly 2 of the 2**10 sign patterns are as extreme
    assert result.exact and result.p_value == pytest.approx(2 / 2**10)


def test_clustered_interval_is_wider_when_instances_of_a_problem_agree():
    per_problem = [0, 1, 1, 0, 1, 0, 0, 1, 1, 0, 1, 1]
    values = [float(v) for v in per_problem for _ in range(6)]  # 6 perfectly correlated instances each
    clusters = [i for i in range(len(per_problem)) for _ in range(6)]
    clustered = cluster_mean_interval(values, clusters, resamples=4000, seed=1)
    independent = cluster_mean_interval(values, None, resamples=4000, seed=1)
    assert clustered.mean == independent.mean == pytest.approx(7 / 12)
    assert clustered.clusters == 12 and independent.clusters == 72
    assert clustered.low <= clustered.mean <= clustered.high
    # the effective sample is 12 problems, not 72 instances: about sqrt(6) times wider
    assert (clustered.high - clustered.low) > 1.8 * (independent.high - independent.low)


def test_permutation_p_value_is_small_for_a_clear_effect_and_large_for_noise():
    rng = random.Random(7)
    clusters = [i // 3 for i in range(90)]  # 30 problems: Monte Carlo, not enumeration
    clear = [0.3 + rng.gauss(0, 0.1) for _ in range(90)]
    p_clear, exact = sign_flip_p_value(clear, clusters, resamples=2000, seed=0)
    assert not exact
    assert 0 < p_clear <= 0.01
    noise = [rng.gauss(0, 1) for _ in range(90)]
    p_noise, _ = sign_flip_p_value(noise, clusters, resamples=2000, seed=0)
    assert 0.05 < p_noise <= 1
    # three problems, all better: 2 of 8 sign patterns are as extreme
    assert sign_flip_p_value([1.0, 2.0, 1.5], resamples=100) == (0.25, True)


def test_statistics_are_deterministic_for_a_seed():
    rng = random.Random(3)
    a = [rng.random() for _ in range(60)]
    b = [rng.random() for _ in range(60)]
    clusters = [i // 3 for i in range(60)]
    first = paired_difference(a, b, clusters, resamples=1000, seed=5)
    assert paired_difference(a, b, clusters, resamples=1000, seed=5) == first
    assert cluster_mean_interval(a, clusters, resamples=1000, seed=5) == cluster_mean_interval(a, clusters, resamples=1000, seed=5)


def test_statistics_refuse_bad_input():
    with pytest.raises(ValueError):
        paired_difference([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        cluster_mean_interval([], [])
    with pytest.raises(ValueError):
        cluster_mean_interval([1.0, 2.0], ["a"])


# -- figures from records (no model) ----------------------------------------------------------------


def _step(pid: str, k: int, similarity: float, format_ok: bool, exact: bool = False) -> StepRecord:
    return StepRecord(
        problem_id=pid, k=k, expert_step="x", thought="", action="x" if format_ok else "", format_ok=format_ok,
        similarity=similarity if format_ok else 0.0, srl_reward=similarity if format_ok else -1.0, exact=exact, tokens=3,
    )


def _problem(pid: str, correct: bool, format_ok: list[bool]) -> ProblemRecord:
    return ProblemRecord(
        problem_id=pid, reference="1", answer="1" if correct else "2", correct=correct, finish_reason="final_answer",
        steps=len(format_ok), tokens=10 * len(format_ok), format_ok=format_ok, actions=["2 + 3 = 5"] * len(format_ok),
        checks=[c for _ in format_ok for c in check_arithmetic("2 + 3 = 5")],
    )


def test_summarise_rebuilds_every_figure_from_records():
    config = EvalConfig(resamples=200)
    problems = [_problem("p1", True, [True, False]), _problem("p2", False, [True])]
    steps = [_step("p1", 0, 0.5, True, exact=False), _step("p1", 1, 1.0, True, exact=True), _step("p2", 0, 0.9, False)]
    report = summarise("m", "m.gguf", "llama.cpp", problems, steps, config)
    assert report.accuracy == 0.5
    assert report.step_similarity == pytest.approx((0.5 + 1.0 + 0.0) / 3)  # malformed counts 0
    assert report.well_formed_similarity == pytest.approx(0.75) and report.well_formed_steps == 2
    assert report.srl_reward == pytest.approx((0.5 + 1.0 - 1.0) / 3)
    assert report.step_format_rate == pytest.approx(2 / 3)
    assert report.exact_step_rate == pytest.approx(1 / 3)
    assert report.format_rate == pytest.approx(4 / 6)  # 2 of 3 solution steps + 2 of 3 instances
    assert report.arithmetic_checks == 3 and report.arithmetic_pass_rate == 1.0  # "2 + 3 = 5" in each solution step
    assert report.mean_steps == 1.5 and report.mean_tokens == 15.0
    assert report.intervals["step_similarity"].clusters == 2


def test_compare_models_pairs_the_same_instances():
    config = EvalConfig(resamples=200)
    problems = [_problem(f"p{i}", i % 2 == 0, [True]) for i in range(6)]
    base_steps = [_step(f"p{i}", k, 0.2, True) for i in range(6) for k in range(2)]
    better_steps = [_step(f"p{i}", k, 0.6, True) for i in range(6) for k in range(2)]
    base = summarise("base", "b", "llama.cpp", problems, base_steps, config)
    better = summarise("better", "t", "llama.cpp", problems, list(reversed(better_steps)), config)  # order must not matter
    same = summarise("same", "b", "llama.cpp", problems, base_steps, config)
    comparisons = compare_models([base, better, same], config, pairs=[("better", "same")])
    found = {(c.a, c.b, c.metric): c.result for c in comparisons}
    sim = found[("base", "better", "step_similarity")]
    assert sim.diff == pytest.approx(0.4) and sim.low > 0 and sim.n == 12 and sim.clusters == 6
    assert sim.p_value == pytest.approx(2 / 2**6)
    zero = found[("base", "same", "accuracy")]
    assert zero.diff == 0 and zero.low == 0 and zero.high == 0 and zero.p_value == 1.0
    assert found[("better", "same", "step_similarity")].diff == pytest.approx(-0.4)
    assert ("base", "better", "avg_at_k") not in found  # no samples were drawn (k = 0)


# -- the real model -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def problems(gsm8k_rows) -> list[ExpertSolution]:
    from srl_sdk.training.data import DataConfig, DropReport, parse_row

    out = []
    for i, row in enumerate(gsm8k_rows[:2]):
        item = parse_row(row, f"gsm8k:{i}", DataConfig(), DropReport())
        assert item is not None
        out.append(item)
    return out


SMALL = dict(
    max_problems=2, max_step_instances=3, max_steps=2, max_thought_tokens=24, max_action_tokens=32, resamples=500, n_threads=1
)


def _fresh_engine():
    """A new SmolLM2 engine on one thread. Fresh, because llama.cpp's greedy output can depend on
    its prefix-cache history: a near tie may flip when the same tokens were evaluated in a batch
    of a different size, so compared runs must start from the same (empty) state."""
    from srl_sdk.engines.llama_cpp import LlamaCppEngine

    return LlamaCppEngine("smollm2", n_ctx=2048, n_threads=1)


def test_fast_step_follows_the_drivers_protocol(problems):
    """One engine call per instance: the same prompt, thought and format verdict as the driver.

    The thought is bit-for-bit the same computation in both, so it must match exactly. The action
    of a well-formed step comes after "</think>\n" evaluated token by token (fast) or as a batch
    (driver), which can flip a near tie; it is checked for shape, and measured in the report.
    """
    config = EvalConfig(**SMALL)
    with _fresh_engine() as fast_engine, _fresh_engine() as driver_engine:
        for i, k in step_instances(problems, config):
            item = problems[i]
            fast = fast_step(fast_engine, item.problem, item.steps[:k], config)
            reference = driver_step(driver_engine, item.problem, item.steps[:k], config)
            assert fast.thought == reference.thought, (i, k, fast, reference)
            assert fast.format_ok == reference.format_ok, (i, k, fast, reference)
            if fast.format_ok:
                assert fast.action and "\n" not in fast.action and "<think>" not in fast.action
            else:
                assert fast.action == ""  # no action is asked for after an unclosed thought
            assert 0 < fast.tokens <= config.max_thought_tokens + config.max_action_tokens + 1


def test_end_to_end_two_labels_of_one_model(problems, tmp_path):
    config = EvalConfig(**SMALL)
    # the same GGUF under two labels, each in a fresh engine: every paired difference is exactly 0
    report = evaluate([("base", "smollm2"), ("again", "smollm2")], problems, config, out_dir=tmp_path)
    base, again = report.models
    assert base.problems == 2 and base.step_instances == 3 and len(base.problem_records) == 2
    assert [r.model_dump() for r in base.step_records] == [r.model_dump() for r in again.step_records]
    for record in base.step_records:
        assert 0.0 <= record.similarity <= 1.0
        assert record.srl_reward == (record.similarity if record.format_ok else -1.0)
    assert {c.metric for c in report.comparisons} == {"accuracy", "step_similarity", "srl_reward", "step_format_rate", "exact_step_rate"}
    for c in report.comparisons:
        assert (c.a, c.b) == ("base", "again")
        assert c.result.diff == 0 and c.result.low == 0 and c.result.high == 0 and c.result.p_value == 1.0
    parsed = EvalReport.model_validate_json((tmp_path / "eval.json").read_text(encoding="utf-8"))
    assert parsed == report
    lines = [json.loads(line) for line in (tmp_path / "instances.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 2 * (2 + 3)
    assert {line["kind"] for line in lines} == {"problem", "step"}
    markdown = (tmp_path / "eval.md").read_text(encoding="utf-8")
    assert "| base |" in markdown and "| again vs base | step_similarity |" in markdown and "95 % CI" in markdown
    # every figure is recomputable from the kept records
    rebuilt = summarise(base.label, base.model, base.engine, parsed.models[0].problem_records, parsed.models[0].step_records, config,
                        seconds=base.seconds, step_seconds=base.step_seconds, problems=base.problems)
    assert rebuilt.step_similarity == base.step_similarity and rebuilt.intervals == base.intervals


def test_cli_eval_on_a_test_split_file(problems, tmp_path):
    data = tmp_path / "test.jsonl"  # a trajectory file, as a generated test split is written
    rows = [{"problem": p.problem, "steps": p.steps, "answer": p.answer} for p in problems]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    out = tmp_path / "eval"
    cmd = [
        sys.executable, "-m", "srl_sdk.cli", "eval", "--model", "a=smollm2", "--model", "b=smollm2", "--data", str(data),
        "--split", "all", "--limit", "2", "--step-instances", "2", "--no-greedy", "--threads", "1",
        "--thought-tokens", "16", "--action-tokens", "24", "--resamples", "200", "--out", str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = EvalReport.model_validate_json((out / "eval.json").read_text(encoding="utf-8"))
    assert [m.label for m in report.models] == ["a", "b"] and report.config.step_mode == "fast"
    assert report.problem_ids == ["test.jsonl:1", "test.jsonl:2"]  # --split all: the file in order
    assert all(c.result.diff == 0 for c in report.comparisons) and report.comparisons
    assert (out / "instances.jsonl").is_file() and (out / "eval.md").is_file()
