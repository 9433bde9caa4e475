"""Does a stream's arithmetic change when other streams share its llama.cpp batch?

Why: the llama.cpp engine decodes every running stream in one `llama_decode` (one KV stream per
sequence). A user expects a stream to write the same text whether it ran alone or beside others,
so the engine's settings must keep the logits of a stream independent of its neighbours. This
measures it directly, with llama.cpp's low-level API as the engine uses it: four prompts of
different lengths are read (16-token chunks, one call each), then 10 greedy tokens are decoded
for each, once alone (one row per call) and once all four together (four rows per call); the
largest difference between the two runs' logits is reported per stream, for flash attention on
and off, on 1 and 2 threads.

    .venv/bin/python benchmarks/batch_invariance.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Session, table, write_section  # noqa: E402

BLOCK = 16


def largest_differences(model_path: str, threads: int, flash_attn: bool, lengths: list[int], tokens: int) -> list[float]:
    """Per stream: max |logit alone - logit batched| over the decoded positions."""
    import llama_cpp as lib
    import numpy as np

    llm = lib.Llama(model_path=model_path, n_ctx=64, n_batch=64, n_threads=threads, verbose=False)
    params = lib.llama_context_default_params()
    params.n_ctx = len(lengths) * 2048
    params.n_batch = params.n_ubatch = 512
    params.n_seq_max = len(lengths)
    params.kv_unified = False
    params.n_threads = params.n_threads_batch = threads
    params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
    ctx = lib.llama_init_from_model(llm._model.model, params)
    memory = lib.llama_get_memory(ctx)
    batch = lib.llama_batch_init(512, 0, 1)
    n_vocab = llm.n_vocab()

    def decode(rows: list[tuple[int, int, int, bool]]) -> None:
        batch.n_tokens = len(rows)
        for i, (token, position, seq, logits) in enumerate(rows):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, position, 1, logits
            batch.seq_id[i][0] = seq
        if lib.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    def logits(row: int):
        return np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, row), shape=(n_vocab,)).copy()

    text = llm.tokenize(b"The quick brown fox jumps over the lazy dog, and then it counts to ten. " * 60)
    prompts = [text[k:k + n] for k, n in enumerate(lengths)]

    def read(seq: int):
        lib.llama_memory_seq_rm(memory, seq, -1, -1)
        prompt = prompts[seq]
        for start in range(0, len(prompt), BLOCK):
            chunk = prompt[start:start + BLOCK]
            decode([(t, start + i, seq, start + i == len(prompt) - 1) for i, t in enumerate(chunk)])
        return logits(len(chunk) - 1)

    try:
        alone = []
        for seq in range(len(lengths)):
            row, position, seen = read(seq), len(prompts[seq]), []
            for _ in range(tokens):
                seen.append(row)
                decode([(int(row.argmax()), position, seq, True)])
                position, row = position + 1, logits(0)
            alone.append(seen)
        rows = {seq: read(seq) for seq in range(len(lengths))}
        positions = {seq: len(prompts[seq]) for seq in range(len(lengths))}
        together: dict[int, list] = {seq: [] for seq in range(len(lengths))}
        for _ in range(tokens):
            step = []
            for seq in range(len(lengths)):
                together[seq].append(rows[seq])
                step.append((int(rows[seq].argmax()), positions[seq], seq, True))
                positions[seq] += 1
            decode(step)
            rows = {seq: logits(seq) for seq in range(len(lengths))}
        return [max(float(np.abs(a - b).max()) for a, b in zip(alone[s], together[s])) for s in range(len(lengths))]
    finally:
        lib.llama_batch_free(batch)
        lib.llama_free(ctx)
        llm.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[100, 300, 520, 800])
    parser.add_argument("--tokens", type=int, default=10)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    from srl_sdk.engines.models import resolve_model

    path = str(resolve_model("smollm2").gguf)
    session = Session()
    rows = []
    for threads in (1, 2):
        for flash_attn in (False, True):
            found = largest_differences(path, threads, flash_attn, args.lengths, args.tokens)
            rows.append([threads, "on" if flash_attn else "off"] + [f"{d:.3g}" for d in found])
            print(rows[-1], flush=True)
    out = table(["threads", "flash attention"] + [f"stream of {n} tokens" for n in args.lengths], rows)
    note = (f"Largest |logit alone - logit batched| over {args.tokens} greedy tokens per stream "
            f"(`{Path(path).name}`, one KV stream per sequence, prompts read in {BLOCK}-token calls). "
            "0 means the stream's arithmetic did not depend on its neighbours; the llama.cpp engine's "
            "default (flash attention off) is chosen on this.")
    print(out)
    if not args.no_docs:
        write_section("Batch invariance", session.machine_block() + "\n\n" + note + "\n\n" + out)


if __name__ == "__main__":
    main()
