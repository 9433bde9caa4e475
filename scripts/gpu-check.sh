#!/usr/bin/env bash
# The GPU check in one call (docs/gpu.md): installs the carried wheels, finds the carried model,
# then runs scripts/gpu_check.py (train bf16 + LoRA + dynamic sampling, transformers engine,
# Reasoner/driver, FSDP save, onnxruntime-genai-cuda if present). One line per check; the JSON
# report goes to $OUT/gpu-check.json (or --json FILE).
#
#   bash scripts/gpu-check.sh                 # on the GPU machine (default --device cuda)
#   bash scripts/gpu-check.sh --device cpu    # the dry run CI does (tests/test_gpu_check.py)
#
# Carried by the device tool's `carry` (built here by scripts/gpu-wheels.sh, git-ignored), one
# part a call, back to back on the same warm machine (a call's tree + carry is at most 64 MiB):
#   .gpu-carry/part-1/wheels/*.whl        packages the GPU image lacks (trl, datasets, pydantic, ...)
#   .gpu-carry/part-N/model/NAME.part-NN  the model GGUF in pieces (joined here, checked by SHA256SUMS)
# or, if it fits one call, .gpu-carry/wheels/ and .gpu-carry/model/ (a .gguf or an HF folder).
# Extra arguments go to scripts/gpu_check.py (--model, --json, --skip NAME, --work DIR).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
carry="${SRL_GPU_CARRY:-$repo/.gpu-carry}"

python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then python="$repo/.venv/bin/python"; else python="python3"; fi
fi

shopt -s nullglob
wheels=("$carry"/wheels/*.whl "$carry"/part-*/wheels/*.whl)
if (( ${#wheels[@]} )) && [[ -z "${SRL_GPU_SKIP_WHEELS:-}" ]]; then   # set it where the packages are installed already
  site="${SRL_GPU_SITE:-/tmp/srl-gpu-site}"
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "${wheels[@]}"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

# the model: a GGUF split over several calls' carries (part-N/model/NAME.part-NN), a whole .gguf, or an HF folder
model_args=()
parts=("$carry"/part-*/model/*.part-* "$carry"/model/*.part-*)
sums=("$carry"/part-*/model/SHA256SUMS "$carry"/model/SHA256SUMS)
if (( ${#parts[@]} )); then
  mapfile -t parts < <(printf '%s\n' "${parts[@]}" | awk -F/ '{print $NF "\t" $0}' | sort | cut -f2)
  name="$(basename "${parts[0]%.part-*}")"
  joined="${SRL_HOME:-$HOME/.srl}/gpu-check/$name"   # beside the GGUF -> HF conversion cache
  mkdir -p "$(dirname "$joined")"
  cat "${parts[@]}" > "$joined"
  if (( ${#sums[@]} )); then
    if ! (cd "$(dirname "$joined")" && sha256sum --quiet -c "${sums[0]}"); then
      echo "[FAIL] model   the joined $name does not match SHA256SUMS: a part is missing (${#parts[@]} found);" \
           "carry every .gpu-carry/part-N in back-to-back calls on the same warm machine (docs/gpu.md)" >&2
      exit 3
    fi
  fi
  model_args=(--model "$joined")
else
  ggufs=("$carry"/model/*.gguf)
  if (( ${#ggufs[@]} )); then
    model_args=(--model "${ggufs[0]}")
  elif [[ -f "$carry/model/config.json" ]]; then
    model_args=(--model "$carry/model")
  fi
fi
shopt -u nullglob

exec "$python" "$repo/scripts/gpu_check.py" "${model_args[@]}" "$@"
