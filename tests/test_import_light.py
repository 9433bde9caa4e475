"""`import srl_sdk` and the client must stay light: no torch, llama.cpp or LitServe at import."""

import subprocess
import sys

HEAVY = ("torch", "llama_cpp", "litserve", "transformers", "trl", "onnxruntime_genai", "vllm", "numpy")


def test_top_level_import_is_light():
    code = (
        "import sys, srl_sdk, srl_sdk.client, srl_sdk.cli;"
        "from srl_sdk import Reasoner, AsyncReasoner, Step, Trace;"
        f"heavy=[m for m in {HEAVY!r} if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"heavy modules imported by srl_sdk: {out.stdout.strip()}"


def test_missing_extra_names_the_pip_command():
    from srl_sdk.errors import MissingDependencyError, require

    try:
        require("srl_sdk_no_such_module_xyz", "serve", package="no-such")
    except MissingDependencyError as exc:
        assert "pip install 'srl-sdk[serve]'" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("require() did not raise")
