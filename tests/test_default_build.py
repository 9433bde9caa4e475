"""The default build of the embedded base (srl_sdk/engines/builds.py), on the real model and llama.cpp.

By default the named models run on the shipped Q4_1 file. $SRL_DEFAULT_BUILD asks for a
requantization, made once, checked against the shipped file, cached, and used only if the check
passed: Q8_0 passes, Q4_0 fails (docs/benchmarks.md, "Default build"); the converters keep the
shipped file whatever is asked. Every test points the build cache at a temporary folder
($SRL_BUILD_CACHE), so neither the user's cache nor the shared test cache is touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from srl_sdk.engines import builds
from srl_sdk.engines.models import default_base_build, resolve_gguf, resolve_model, smollm2_gguf_path
from srl_sdk.errors import ConfigError


PASSING = "q8_0"  # a build that passes the acceptance check (top-1 ~0.97, KL ~0.005)
FAILING = "q4_0"  # one that fails it (top-1 ~0.79, KL ~0.27)


def _use_cache(monkeypatch, folder: Path, quant: str = PASSING) -> Path:
    monkeypatch.setenv(builds.CACHE_ENV, str(folder))
    monkeypatch.setenv(builds.BUILD_ENV, quant)
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A cache folder holding one build, made by a separate process (as a first `srl reason` would)."""
    folder = tmp_path_factory.mktemp("builds")
    code = "from srl_sdk.engines.models import default_base_build; print(default_base_build().path)"
    env = {**os.environ, builds.CACHE_ENV: str(folder), builds.BUILD_ENV: PASSING}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return folder


def _copy(built: Path, folder: Path) -> Path:
    shutil.copytree(built, folder)
    return folder


def test_by_default_the_named_models_run_the_shipped_file(tmp_path, monkeypatch):
    monkeypatch.setenv(builds.CACHE_ENV, str(tmp_path / "builds"))
    monkeypatch.delenv(builds.BUILD_ENV, raising=False)
    for name in ("smollm2", "smollm2-srl", "default"):
        resolved = resolve_model(name)
        assert resolved.gguf == smollm2_gguf_path() and resolved.build == "shipped"
    assert default_base_build().describe()["build"] == "shipped"
    assert not (tmp_path / "builds").exists()  # nothing was built


def test_the_named_models_run_on_the_checked_build_made_once(built, monkeypatch):
    _use_cache(monkeypatch, built)
    shipped = smollm2_gguf_path()
    plain, trained = resolve_model("smollm2"), resolve_model("smollm2-srl")
    target = builds.build_path(shipped, PASSING)
    assert plain.gguf == trained.gguf == target and target.parent == built
    assert plain.build == trained.build == PASSING and trained.adapter is not None and trained.name == "smollm2-srl"
    assert resolve_model("default").gguf == target  # the base's aliases too
    stamp = (target.stat().st_ino, target.stat().st_mtime_ns)
    record = json.loads(builds.record_path(target).read_text())
    check = record["check"]
    assert record["build"] == PASSING and record["size"] == target.stat().st_size and len(record["sha256"]) == 64
    assert record["shipped"]["path"] == str(shipped.resolve()) and record["llama_cpp_python"] == builds.llama_cpp_version()
    assert check["threshold"] == builds.THRESHOLD and check["passed"] is True and check["tokens"] > 300
    assert check["top1_agreement"] >= builds.THRESHOLD["min_top1_agreement"] and check["mean_kl"] <= builds.THRESHOLD["max_mean_kl"]
    # reused, in this process and in another one (which checks the sha256 again): nothing is rebuilt
    choice = default_base_build()
    assert choice.path == target and choice.record == record and choice.describe()["check"]["passed"] is True
    code = "from srl_sdk.engines.models import resolve_model; print(resolve_model('smollm2-srl').gguf)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, builds.CACHE_ENV: str(built), builds.BUILD_ENV: PASSING})
    assert out.returncode == 0 and out.stdout.strip() == str(target), out.stderr
    assert (target.stat().st_ino, target.stat().st_mtime_ns) == stamp
    assert json.loads(builds.record_path(target).read_text())["created"] == record["created"]
    assert sorted(p.name for p in built.iterdir()) == sorted([target.name, target.name + ".json", target.name + ".lock"])


def test_the_engine_loads_the_build(built, monkeypatch):
    from srl_sdk.engines import SamplingParams
    from srl_sdk.engines.llama_cpp import LlamaCppEngine

    _use_cache(monkeypatch, built)
    engine = LlamaCppEngine("smollm2-srl", n_ctx=512, n_threads=1)
    try:
        assert engine.path == builds.build_path(smollm2_gguf_path(), PASSING) and engine.model_id == "smollm2-srl"
        assert list(engine.stream(engine.render([{"role": "user", "content": "1 + 1?"}]), SamplingParams(max_tokens=4)))
    finally:
        engine.close()


def test_shipped_can_be_pinned(tmp_path, monkeypatch):
    folder = _use_cache(monkeypatch, tmp_path / "builds")
    monkeypatch.setenv(builds.BUILD_ENV, "shipped")
    for name in ("smollm2", "smollm2-srl"):
        resolved = resolve_model(name)
        assert resolved.gguf == smollm2_gguf_path() and resolved.build == "shipped"
    assert "SRL_DEFAULT_BUILD=shipped" in default_base_build().reason
    assert not folder.exists()  # nothing was built
    monkeypatch.setenv(builds.BUILD_ENV, "fastest")
    with pytest.raises(ConfigError, match="SRL_DEFAULT_BUILD"):
        resolve_model("smollm2")


def test_the_converters_keep_the_shipped_file(built, monkeypatch):
    from srl_sdk.edge.merge import source_gguf

    _use_cache(monkeypatch, built)
    shipped = smollm2_gguf_path()
    assert shipped.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert resolve_gguf("smollm2") == resolve_gguf("default") == shipped
    assert source_gguf("smollm2") == shipped
    assert resolve_model("smollm2-srl", default_build=False).gguf == shipped
    assert resolve_model(str(shipped)).gguf == shipped and resolve_model(str(shipped)).build is None  # a path is a path


@pytest.mark.parametrize("damage", ["truncate", "overwrite", "drop_record"])
def test_a_damaged_build_is_made_again(built, tmp_path, monkeypatch, damage):
    folder = _use_cache(monkeypatch, _copy(built, tmp_path / "builds"))
    target = builds.build_path(smollm2_gguf_path(), PASSING)
    before = json.loads(builds.record_path(target).read_text())
    if damage == "truncate":
        with target.open("r+b") as handle:
            handle.truncate(5_000_000)
    elif damage == "overwrite":  # same size, other bytes
        with target.open("r+b") as handle:
            handle.seek(10_000_000)
            handle.write(b"\x00" * 4096)
    else:
        builds.record_path(target).unlink()
    choice = default_base_build()
    assert choice.path == target and choice.build == PASSING
    after = json.loads(builds.record_path(target).read_text())
    assert after["created"] >= before["created"] and after["sha256"] == before["sha256"]  # the same bytes again
    assert target.stat().st_size == before["size"]
    assert not list(folder.glob("*.partial"))


def test_a_build_that_fails_its_check_is_not_used(tmp_path, monkeypatch):
    """Q4_0 fails the check: the named models run the shipped file, with one warning; the failed
    build and its figures stay in the cache, so the next start neither rebuilds nor rechecks."""
    _use_cache(monkeypatch, tmp_path / "builds", FAILING)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = resolve_model("smollm2-srl"), resolve_model("smollm2")
    assert first.gguf == second.gguf == smollm2_gguf_path() and first.build == second.build == "shipped"
    assert len([w for w in caught if "acceptance check" in str(w.message)]) == 1
    target = builds.build_path(smollm2_gguf_path(), FAILING)
    record = json.loads(builds.record_path(target).read_text())
    check = record["check"]
    assert check["passed"] is False and check["threshold"] == builds.THRESHOLD
    assert check["top1_agreement"] < builds.THRESHOLD["min_top1_agreement"] or check["mean_kl"] > builds.THRESHOLD["max_mean_kl"]
    choice = default_base_build()
    assert "acceptance check" in choice.reason and choice.record == record and choice.describe()["check"]["passed"] is False
    stamp = target.stat().st_mtime_ns
    code = "from srl_sdk.engines.models import resolve_model; print(resolve_model('smollm2').gguf)"
    out = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == str(smollm2_gguf_path()) and "acceptance check" in out.stderr
    assert target.stat().st_mtime_ns == stamp


def test_two_processes_racing_make_one_build(tmp_path):
    folder = tmp_path / "builds"
    code = ("import json; from srl_sdk.engines.models import default_base_build; b = default_base_build(); "
            "print(json.dumps([str(b.path), b.record['created'], b.record['sha256']]))")
    env = {**os.environ, builds.CACHE_ENV: str(folder), builds.BUILD_ENV: PASSING}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert results[0] == results[1]  # the same build, made once: the second process waited and reused it
    assert len(list(folder.glob("*.gguf"))) == 1 and not list(folder.glob("*.partial"))
