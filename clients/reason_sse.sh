#!/usr/bin/env bash
# Stream steps from `srl serve` with curl: one SSE event per step, then `done` with the trace.
#   ./clients/reason_sse.sh "Tom has 3 apples and buys 5 more. How many apples does he have?"
# SRL_URL (default http://127.0.0.1:8000) and SRL_API_KEY (if the server has keys) are read.
set -euo pipefail
url="${SRL_URL:-http://127.0.0.1:8000}"
problem="${1:?usage: $0 \"problem text\" [max_steps]}"
max_steps="${2:-4}"
auth=()
if [[ -n "${SRL_API_KEY:-}" ]]; then auth=(-H "Authorization: Bearer ${SRL_API_KEY}"); fi
body=$(python3 -c 'import json,sys; print(json.dumps({"problem": sys.argv[1], "limits": {"max_steps": int(sys.argv[2])}}))' \
  "$problem" "$max_steps")
# -N: print events as they arrive; --fail-with-body: show the JSON error of a 4xx and exit non-zero.
curl -sS -N --fail-with-body "${auth[@]}" -H "Content-Type: application/json" -H "Accept: text/event-stream" \
  --data "$body" "$url/v1/reason"
# Resume after a dropped connection: send the last `id:` you received, e.g.
#   curl -N -H "Last-Event-ID: <trace_id>:<n>" "$url/v1/traces/<trace_id>/events"
