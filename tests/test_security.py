"""Security: no unsafe loading in our own source, keys enforced, and clients cannot name server paths.

The static scan reads the repository's own Python (tracked and new files, not .venv or caches) as
syntax trees, so a pattern in a docstring or comment is not a hit and an aliased call still is.
Each rule is first shown to fire on a bad snippet, so the scan cannot pass by matching nothing.

The live part runs one real `srl serve` on 127.0.0.1 with an API key configured: every route but
/health must refuse a request without the key, and request bodies that try to pick a model file,
a store path or engine options are refused (4xx) with nothing created at the named path.
(Refusing a public bind without a key is tested in test_server_config.py.)
"""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import httpx
import pytest
from servers import serving

REPO_ROOT = Path(__file__).resolve().parents[1]
KEY = "security-test-key-0123"

UNPICKLERS = {("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"), ("cPickle", "load"),
              ("cPickle", "loads"), ("dill", "load"), ("dill", "loads"), ("joblib", "load"),
              ("cloudpickle", "load"), ("cloudpickle", "loads"), ("shelve", "open"), ("marshal", "loads")}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def scan_source(text: str, in_package: bool = True) -> list[str]:
    """Unsafe patterns in one Python source text, as 'line: what' strings."""
    tree = ast.parse(text)
    aliases: dict[str, str] = {}  # `from pickle import loads as l` -> l: pickle.loads
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                aliases[alias.asname or alias.name] = alias.name
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            head, _, rest = name.partition(".")
            full = aliases.get(head, head) + (f".{rest}" if rest else "")
            parts = full.rsplit(".", 1)
            if len(parts) == 2 and (parts[0].split(".")[-1], parts[1]) in UNPICKLERS:
                hits.append(f"{node.lineno}: {full}() loads a pickle; use safetensors / JSON")
            if full == "torch.load" and not _is_true(_kw(node, "weights_only")):
                hits.append(f"{node.lineno}: torch.load without weights_only=True")
            if full.endswith("numpy.load") or name == "np.load":
                if _is_true(_kw(node, "allow_pickle")):
                    hits.append(f"{node.lineno}: numpy.load(allow_pickle=True)")
            if full in ("yaml.load", "yaml.unsafe_load", "yaml.full_load") and not (
                    full == "yaml.load" and "Safe" in _dotted(_kw(node, "Loader") or ast.Name(""))):
                hits.append(f"{node.lineno}: {full} without SafeLoader; use yaml.safe_load")
            if in_package and isinstance(node.func, ast.Name) and node.func.id in ("eval", "exec"):
                hits.append(f"{node.lineno}: {node.func.id}() on a string")
            if _is_true(_kw(node, "trust_remote_code")):
                hits.append(f"{node.lineno}: trust_remote_code=True hard-coded; pass the user's explicit option")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            positional = args.posonlyargs + args.args
            pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults))
            pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
            for arg, default in pairs:
                if arg.arg == "trust_remote_code" and _is_true(default):
                    hits.append(f"{node.lineno}: {node.name}(trust_remote_code=True) defaults to running remote code")
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if node.target.id == "trust_remote_code":
                value = node.value
                if isinstance(value, ast.Call) and _kw(value, "default") is not None:  # Field(default=True)
                    value = _kw(value, "default")
                if _is_true(value):
                    hits.append(f"{node.lineno}: a config field trust_remote_code defaults to True")
        elif isinstance(node, ast.Assign):
            if any(isinstance(t, ast.Name) and t.id == "trust_remote_code" for t in node.targets) and _is_true(node.value):
                hits.append(f"{node.lineno}: trust_remote_code = True")
    return hits


def repo_python_files() -> list[Path]:
    """The repository's own Python: tracked and new (not ignored) files, tests left out (they hold the patterns)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"], cwd=REPO_ROOT,
                         capture_output=True, text=True, check=True).stdout.split()
    return [REPO_ROOT / p for p in out if not p.startswith("tests/") and (REPO_ROOT / p).is_file()]


BAD_SNIPPET = """
import pickle, torch, yaml
from pickle import loads as sneaky
import numpy as np
from transformers import AutoModel
from pydantic import BaseModel, Field
pickle.load(open("x", "rb"))
sneaky(b"")
torch.load("w.pt")
torch.load("w.pt", weights_only=False)
np.load("a.npy", allow_pickle=True)
yaml.load("a: 1")
eval("1 + 1")
exec("x = 1")
AutoModel.from_pretrained("m", trust_remote_code=True)
def load(path, trust_remote_code=True): ...
class C(BaseModel):
    trust_remote_code: bool = Field(default=True)
"""

GOOD_SNIPPET = """
import torch, yaml
torch.load("w.pt", weights_only=True)
yaml.safe_load("a: 1")
yaml.load("a: 1", Loader=yaml.SafeLoader)
def load(path, trust_remote_code=False): return AutoModel.from_pretrained(path, trust_remote_code=trust_remote_code)
model.eval()
"""


def test_scanner_flags_every_rule_and_passes_safe_code():
    hits = scan_source(BAD_SNIPPET)
    for expected in ["pickle.load()", "pickle.loads()", "torch.load without", "allow_pickle", "yaml.load",
                     "eval()", "exec()", "hard-coded", "defaults to running", "config field"]:
        assert any(expected in h for h in hits), f"the scan misses {expected!r}: {hits}"
    assert sum("torch.load without" in h for h in hits) == 2
    assert scan_source(GOOD_SNIPPET) == []


def test_repository_source_has_no_unsafe_loading_eval_or_remote_code_default():
    files = repo_python_files()
    assert any(p.name == "worker.py" for p in files) and len(files) > 20, "the scan found too few files to mean anything"
    problems = []
    for path in files:
        rel = path.relative_to(REPO_ROOT)
        for hit in scan_source(path.read_text(encoding="utf-8"), in_package=rel.parts[0] == "srl_sdk"):
            problems.append(f"{rel}:{hit}")
    assert problems == [], "unsafe patterns in the source:\n" + "\n".join(problems)


# -- live server with a key ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("secure")
    with serving(folder, api_keys=[KEY], limits=None,
                 reason={"max_steps": 1, "max_thought_tokens": 4, "max_action_tokens": 4}) as server:
        yield server, folder


AUTH = {"Authorization": f"Bearer {KEY}"}
PROTECTED = [("GET", "/", None), ("GET", "/info", None), ("GET", "/v1/models", None), ("GET", "/v1/traces", None), ("GET", "/v1/traces/abc", None),
             ("GET", "/metrics", None), ("POST", "/v1/reason", {"problem": "1 + 1?", "stream": False}),
             ("POST", "/v1/chat/completions", {"model": "smollm2", "messages": [{"role": "user", "content": "1+1?"}]})]


@pytest.mark.slow
@pytest.mark.parametrize("method,path,body", PROTECTED)
def test_every_route_but_health_needs_the_key(keyed_server, method, path, body):
    server, _ = keyed_server
    for headers in ({}, {"Authorization": "Bearer wrong-key-0000000"}, {"Authorization": KEY},
                    {"X-API-Key": KEY}):
        response = httpx.request(method, server.url + path, json=body, headers=headers, timeout=60)
        assert response.status_code == 401, (headers, response.status_code, response.text[:200])
        assert response.json()["error"]["type"] == "authentication_error"
    allowed = httpx.request(method, server.url + path, json=body, headers=AUTH, timeout=120)
    assert allowed.status_code in (200, 404), allowed.text[:300]  # 404: the made-up trace id
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200


@pytest.mark.slow
def test_open_pages_reveal_no_key_and_no_server_path(keyed_server):
    """/health, /openapi.json and /docs answer without a key (FastAPI serves the last two itself);
    they may describe the API, but must not reveal the key, the store or the model file."""
    from srl_sdk.engines.models import resolve_model, smollm2_gguf_path

    server, folder = keyed_server
    for path in ("/health", "/openapi.json", "/docs"):
        response = httpx.get(server.url + path, timeout=30)
        assert response.status_code == 200, path
        for secret in (KEY, str(folder), str(smollm2_gguf_path()), str(resolve_model("smollm2").gguf)):
            assert secret not in response.text, f"{path} reveals {secret}"


@pytest.mark.slow
@pytest.mark.parametrize("body,status", [
    ({"problem": "1 + 1?", "model": "/etc/passwd"}, 404),
    ({"problem": "1 + 1?", "model": "{folder}/other.gguf"}, 404),
    ({"problem": "1 + 1?", "store": "{folder}/evil.db"}, 422),
    ({"problem": "1 + 1?", "model_path": "{folder}/other.gguf"}, 422),
    ({"problem": "1 + 1?", "engine_options": {"model_path": "{folder}/other.gguf"}}, 422),
    ({"problem": "1 + 1?", "limits": {"store": "{folder}/evil.db"}}, 422),
])
def test_a_request_cannot_name_a_server_path(keyed_server, body, status):
    server, folder = keyed_server
    text = repr(body).replace("{folder}", str(folder))
    body = ast.literal_eval(text)
    body["stream"] = False
    response = httpx.post(server.url + "/v1/reason", json=body, headers=AUTH, timeout=60)
    assert response.status_code == status, response.text[:300]
    assert response.json()["error"]["type"] in ("model_not_found", "invalid_request")
    assert not (folder / "evil.db").exists() and not (folder / "other.gguf").exists()


@pytest.mark.slow
def test_chat_model_field_cannot_load_another_file_and_trace_ids_are_not_paths(keyed_server):
    server, folder = keyed_server
    secret = folder / "server.yaml"
    chat = httpx.post(server.url + "/v1/chat/completions", headers=AUTH, timeout=60, json={
        "model": str(secret), "messages": [{"role": "user", "content": "1 + 1?"}]})
    assert chat.status_code == 404 and chat.json()["error"]["type"] == "model_not_found"
    for trace_id in ("..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "..%2Fserver.yaml"):
        response = httpx.get(server.url + "/v1/traces/" + trace_id, headers=AUTH, timeout=30)
        assert response.status_code == 404, response.text[:200]
        assert "root:" not in response.text and KEY not in response.text
