#!/usr/bin/env python3
"""Solve one problem step by step on a device: `python edge/run.py MODEL "problem"`.

MODEL is a .gguf file (llama.cpp), an ONNX build folder (onnxruntime-genai) or 'smollm2'.
Torch-free. With srl-sdk installed (`pip install 'srl-sdk[edge]'`) it uses the SDK's Reasoner,
i.e. the exact step protocol the model was trained on, with checks and confidence per step.
Without it, it falls back to one plain chat completion on the runtime alone (no steps), so a
device with only llama-cpp-python or onnxruntime-genai can still smoke-test a build.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def run_with_sdk(model: str, problem: str, max_steps: int, threads: int) -> int:
    from srl_sdk import Reasoner
    from srl_sdk.reasoning.driver import ReasonConfig

    reasoner = Reasoner.local(model, store=False, config=ReasonConfig(max_steps=max_steps), n_threads=threads)
    stream = reasoner.stream(problem)
    for step in stream:
        mark = "" if step.format_ok else "  [format!]"
        print(f"Step {step.index}: {step.action}{mark}", flush=True)
        if step.thought:
            print(f"    thought: {step.thought}")
    trace = stream.trace
    print(f"Answer: {trace.answer if trace and trace.answer is not None else '(none)'}"
          f"  ({trace.finish_reason if trace else '?'})")
    return 0


def run_plain(model: str, problem: str, threads: int) -> int:
    """One chat completion with the bare runtime: no SDK, no step protocol."""
    messages = [{"role": "user", "content": problem}]
    if model.endswith(".gguf"):
        from llama_cpp import Llama

        llm = Llama(model_path=model, n_ctx=2048, n_threads=threads, verbose=False)
        out = llm.create_chat_completion(messages=messages, max_tokens=256, temperature=0.0)
        print(out["choices"][0]["message"]["content"])
        return 0
    import onnxruntime_genai as og

    folder = os.path.dirname(model) if model.endswith(".onnx") else model
    config = og.Config(folder)
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    model_ = og.Model(config)
    tokenizer = og.Tokenizer(model_)
    prompt = tokenizer.apply_chat_template(messages=json.dumps(messages), add_generation_prompt=True)
    params = og.GeneratorParams(model_)
    params.set_search_options(max_length=2048, do_sample=False)
    generator = og.Generator(model_, params)
    generator.append_tokens(tokenizer.encode(prompt))
    stream = tokenizer.create_stream()
    for _ in range(256):
        if generator.is_done():
            break
        generator.generate_next_token()
        print(stream.decode(generator.get_next_tokens()[0]), end="", flush=True)
    print()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help=".gguf file, ONNX build folder, or 'smollm2'")
    parser.add_argument("problem")
    parser.add_argument("--max-steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    args = parser.parse_args()
    try:
        import srl_sdk  # noqa: F401
    except ImportError:
        print("(srl-sdk not installed: plain completion, no steps)", file=sys.stderr)
        return run_plain(args.model, args.problem, args.threads)
    from srl_sdk.errors import SRLError

    try:
        return run_with_sdk(args.model, args.problem, args.max_steps, args.threads)
    except SRLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
