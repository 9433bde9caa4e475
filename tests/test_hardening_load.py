"""A short load run (4 streaming clients x 20 s) through benchmarks/load_test.py's own code.

0 errors, the server's RSS grows by less than the bound, and every streamed trace is stored and
identical when fetched back by id. The long version: `benchmarks/load_test.py --seconds 120`.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

LOAD_TEST = Path(__file__).resolve().parents[1] / "benchmarks" / "load_test.py"


def _load_module():
    spec = importlib.util.spec_from_file_location("srl_benchmarks_load_test", LOAD_TEST)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_four_clients_for_twenty_seconds(tmp_path):
    load = _load_module()
    server = load.start_server(tmp_path, threads=1, steps=1, tokens=8)
    try:
        result = load.run_load(server.url, server.process.pid, clients=4, seconds=20, request_timeout_s=120)
    finally:
        assert server.stop(), "the server did not stop cleanly after the load"
    assert result.errors == []
    assert len(result.completed) >= 4, f"only {len(result.completed)} streams finished in 20 s"
    assert result.missing == [], f"streamed but not stored as streamed: {result.missing}"
    assert result.growth_mb < load.RSS_GROWTH_BOUND_MB, (result.rss_before_mb, result.rss_after_mb)
    assert result.rss_before_mb > 50, "RSS was not measured (the server's processes were not found)"
