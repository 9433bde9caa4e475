"""Crash-safe replacement (srl_sdk/core/atomic.py) through its callers, the edge build writers.

Durability is checked by watching the real system calls: every file is fsynced before the rename
that publishes it, and the folder after it. Atomicity is checked by crashing for real: a child
process runs `staged_dir` over an existing build and `os._exit`s just before its N-th file-system
step (rename, exchange, delete, fsync), for every N; after each crash the final name must hold a
complete build, old or new. Both ways of swapping are crashed: the atomic exchange (Linux
renameat2), where the final name is never missing, and the rename-aside fallback for file systems
without it, where `restore_aside` (what the next swap or a training resume runs first) puts the
old build back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from srl_sdk.core import atomic
from srl_sdk.edge.files import staged_dir, staged_file

OLD = {"model.bin": "old weights " * 100, "config.json": '{"version": "old"}'}
NEW = {"model.bin": "new weights " * 100, "config.json": '{"version": "new"}', "extra.txt": "new only"}


def fill(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)


def contents(folder: Path) -> dict[str, str] | None:
    if not folder.is_dir():
        return None
    return {p.name: p.read_text() for p in folder.iterdir() if p.is_file()}


def record_calls(monkeypatch) -> list[tuple]:
    """Record os.fsync (by the path its descriptor names), os.replace and os.rename, in order."""
    calls: list[tuple] = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd):
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, **kw):
        calls.append(("rename", str(src), str(dst)))
        return real_replace(src, dst, **kw)

    def rename(src, dst, **kw):
        calls.append(("rename", str(src), str(dst)))
        return real_rename(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", rename)
    return calls


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")
def test_a_file_is_fsynced_before_its_rename_and_its_folder_after(tmp_path, monkeypatch):
    final = tmp_path / "model.gguf"
    calls = record_calls(monkeypatch)
    with staged_file(final) as temp:
        temp.write_bytes(b"GGUF" * 1000)
    assert final.read_bytes() == b"GGUF" * 1000
    renames = [i for i, c in enumerate(calls) if c[0] == "rename" and c[2] == str(final)]
    assert len(renames) == 1, calls
    (at,) = renames
    temp_name = calls[at][1]
    assert ("fsync", temp_name) in calls[:at], f"the data was not flushed before the rename: {calls}"
    assert ("fsync", str(tmp_path)) in calls[at + 1:], f"the rename was not made durable: {calls}"

    calls.clear()
    atomic.write_atomic(tmp_path / "eval.json", '{"accuracy": 0.5}')
    at = next(i for i, c in enumerate(calls) if c[0] == "rename")
    assert calls[at - 1][0] == "fsync" and calls[at - 1][1] == calls[at][1]
    assert ("fsync", str(tmp_path)) in calls[at + 1:]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")
def test_a_folder_build_is_fsynced_file_by_file_before_it_replaces_the_old_one(tmp_path, monkeypatch):
    final = tmp_path / "onnx-build"
    fill(final, OLD)
    calls = record_calls(monkeypatch)
    with staged_dir(final) as temp:
        fill(temp, NEW)
    assert contents(final) == NEW
    synced = {c[1] for c in calls if c[0] == "fsync"}
    first_swap = next((i for i, c in enumerate(calls) if c[0] == "rename"), len(calls))
    before = {c[1] for c in calls[:first_swap] if c[0] == "fsync"}
    assert {str(temp / name) for name in NEW} <= before, f"files not flushed before the swap: {calls}"
    assert str(temp) in before
    assert str(tmp_path) in synced, "the parent folder was never fsynced after the swap"
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name != "onnx-build")
    assert leftovers == [], f"the old build or the temporary stayed behind: {leftovers}"


CRASHING_SWAP = r"""
import json, os, shutil, sys
from pathlib import Path

from srl_sdk.core import atomic
from srl_sdk.edge.files import staged_dir

final, crash_at, exchange = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "exchange"
new = json.loads(sys.argv[4])
if not exchange:
    atomic._renameat2 = False  # a file system without renameat2(RENAME_EXCHANGE)
steps = [0]

def crashing(function):
    def step(*args, **kwargs):
        steps[0] += 1
        if steps[0] == crash_at:
            os._exit(17)  # killed right before this step: no cleanup, no finally
        return function(*args, **kwargs)
    return step

with staged_dir(final) as temp:
    for name, text in new.items():
        (temp / name).write_text(text)
    os.rename, os.replace, shutil.rmtree, os.fsync = (crashing(f) for f in (os.rename, os.replace, shutil.rmtree, os.fsync))
    atomic._exchange = crashing(atomic._exchange)
print(steps[0])
"""


@pytest.mark.parametrize("mode", ["exchange", "rename-aside"])
def test_a_crash_at_any_step_of_the_swap_leaves_a_complete_build(tmp_path, mode):
    script = tmp_path / "swap.py"
    script.write_text(CRASHING_SWAP)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    final = tmp_path / "build"
    fill(final, OLD)
    done = subprocess.run([sys.executable, str(script), str(final), "0", mode, json.dumps(NEW)],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    total = int(done.stdout.strip())
    assert total >= 3 and contents(final) == NEW
    outcomes = []
    for crash_at in range(1, total + 1):
        final = tmp_path / f"build-{crash_at}"
        fill(final, OLD)
        crashed = subprocess.run([sys.executable, str(script), str(final), str(crash_at), mode, json.dumps(NEW)],
                                 capture_output=True, text=True, timeout=60, env=env)
        assert crashed.returncode == 17, (crash_at, crashed.stderr)
        if mode == "rename-aside":  # only this mode has a moment without the final name
            atomic.restore_aside(final)  # what the next swap, or a training resume, does first
        found = contents(final)
        assert found in (OLD, NEW), f"crash before step {crash_at} of {total} ({mode}) left {found}"
        outcomes.append("new" if found == NEW else "old")
    assert outcomes[0] == "old" and outcomes[-1] == "new", outcomes


def test_the_fallback_puts_the_old_build_back_when_the_new_cannot_be_renamed_in(tmp_path, monkeypatch):
    final = tmp_path / "build"
    fill(final, OLD)
    monkeypatch.setattr(atomic, "_renameat2", False)
    real_rename = os.rename

    def rename(src, dst, **kw):
        if Path(dst) == final and Path(src) != atomic.aside_name(final):
            raise OSError(5, "Input/output error (injected)")
        return real_rename(src, dst, **kw)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(Exception, match="injected"):
        with staged_dir(final) as temp:
            fill(temp, NEW)
    assert contents(final) == OLD
    assert not atomic.aside_name(final).exists()
