#!/usr/bin/env bash
# CI stage: build or reuse the vLLM CPU environment, then run the vLLM tests in it.
#
#   bash scripts/ci-vllm.sh [extra pytest args]
#   SRL_VLLM_TESTS=tests/vllm_cpu/test_vllm_engine.py bash scripts/ci-vllm.sh -x   # a subset
#
# The main suite never needs vLLM (it runs with `--ignore=tests/vllm_cpu`); this stage runs
# `pytest -m vllm tests/vllm_cpu` with the venv made by scripts/vllm-env.sh. Engines use enforce_eager
# and one vLLM runs at a time. Prints how long the environment and the tests took.
set -euo pipefail

stage_start=$(date +%s)
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="$(bash "$repo/scripts/vllm-env.sh" | tail -n 1)"
env_done=$(date +%s)

# vLLM reads these when its engine processes start: keep its caches and temp files out of the repo.
cache="${SRL_VLLM_CACHE:-$HOME/.cache/srl-sdk/vllm}"
mkdir -p "$cache/tmp"
export SRL_VLLM_CACHE="$cache"
export VLLM_CACHE_ROOT="${VLLM_CACHE_ROOT:-$cache/vllm}"
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$cache/inductor}"
export TMPDIR="${SRL_VLLM_TMPDIR:-$cache/tmp}"
export OMP_WAIT_POLICY=PASSIVE
export TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1
export SRL_VLLM_STAGE=1  # tests/conftest.py collects tests/vllm_cpu only in this stage

cd "$repo"
status=0
"$python" -m pytest -m vllm ${SRL_VLLM_TESTS:-tests/vllm_cpu} -p no:cacheprovider --timeout=900 "$@" || status=$?
end=$(date +%s)
echo "ci-vllm: environment $(( env_done - stage_start )) s, tests $(( end - env_done )) s, stage $(( end - stage_start )) s (exit $status)"
exit $status
