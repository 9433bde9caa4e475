"""The wheel carries the trace viewer (issue 16): `srl serve` reads /ui/'s files from package data,
so a page missing from the wheel would be a 500 for every pip user while every test in a source
checkout passed. Builds the wheel from a copy of the package (the checkout stays untouched) with
the environment's own setuptools, and looks inside."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from srl_sdk.serving.ui import UI_FILES, ui_file

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_the_trace_viewer(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    shutil.copytree(REPO_ROOT / "srl_sdk", source / "srl_sdk", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w",
         str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    wheels = list((tmp_path / "dist").glob("srl_sdk-*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = set(wheel.namelist())
        for name in UI_FILES:
            member = f"srl_sdk/serving/ui/{name}"
            assert member in names, f"{member} is not in the wheel"
            assert wheel.read(member) == ui_file(name), f"{member} differs from the source"
        assert "srl_sdk/serving/ui.py" in names and "srl_sdk/core/compare.py" in names
