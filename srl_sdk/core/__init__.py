"""The SDK's core: typed steps, the step protocol, answers, splitting, checks and the SRL reward.

Everything here is pure Python (standard library + pydantic) so training, serving, the edge
runtime and the clients can all import it without heavy dependencies.
"""

from .answers import answers_equal, extract_answer, normalize_answer, parse_number
from .checks import check_arithmetic, run_checks, safe_eval
from .format import (
    FINAL_MARKER,
    FREE_INSTRUCTION,
    STEP_INSTRUCTION,
    SYSTEM_PROMPT,
    THINK_CLOSE,
    THINK_OPEN,
    ParsedStep,
    format_step_target,
    free_messages,
    parse_step_response,
    render_steps,
    step_messages,
    step_user_message,
    strip_step_label,
)
from .instances import (
    SplitReport,
    SRLInstance,
    instances_to_jsonl,
    make_srl_instances,
    split_file,
    write_jsonl,
)
from .similarity import srl_step_reward, step_similarity
from .splitting import (
    ExpertSolution,
    load_gsm8k,
    parse_expert_solution,
    split_solution,
    strip_calculator_notes,
)
from .steps import CheckResult, Confidence, FinishReason, Step, Trace

__all__ = [
    # steps
    "Step",
    "Trace",
    "CheckResult",
    "Confidence",
    "FinishReason",
    # format
    "FINAL_MARKER",
    "THINK_OPEN",
    "THINK_CLOSE",
    "SYSTEM_PROMPT",
    "STEP_INSTRUCTION",
    "FREE_INSTRUCTION",
    "ParsedStep",
    "parse_step_response",
    "strip_step_label",
    "render_steps",
    "step_user_message",
    "step_messages",
    "free_messages",
    "format_step_target",
    # answers
    "extract_answer",
    "normalize_answer",
    "parse_number",
    "answers_equal",
    # splitting
    "ExpertSolution",
    "split_solution",
    "strip_calculator_notes",
    "parse_expert_solution",
    "load_gsm8k",
    # checks
    "safe_eval",
    "check_arithmetic",
    "run_checks",
    # similarity
    "step_similarity",
    "srl_step_reward",
    # instances
    "SRLInstance",
    "make_srl_instances",
    "SplitReport",
    "split_file",
    "instances_to_jsonl",
    "write_jsonl",
]
