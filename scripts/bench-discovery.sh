#!/usr/bin/env bash
# Benchmark of `discover` at the index's real limits, printed as one line per case: index requests
# and wall time for discovering 100 agents, cold (empty cache) and warm (second run), with and
# without an API key. The index is the 8004scan stand-in with --real-limits (anonymous 10 requests
# a minute and 100 a day, 600 a minute with a key).
#
#   bash scripts/bench-discovery.sh
#   BENCH_AGENTS=100 BENCH_EMBEDDED=0.5 BENCH_PROFILE=debug|release BENCH_CASES="key anonymous"
#
# BENCH_EMBEDDED is the share of list rows that carry their registration document (the others
# cost a detail request each). The anonymous cold case is paced at 6 s a request: with the
# defaults it takes about five minutes, which is the point.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
agents=${BENCH_AGENTS:-100}
embedded=${BENCH_EMBEDDED:-0.5}
profile=${BENCH_PROFILE:-debug}
cases=${BENCH_CASES:-key anonymous}

bash scripts/testbed-install.sh >/dev/null
if [[ $profile == release ]]; then cargo build --release --quiet; else cargo build --quiet; fi
bin=${CARGO_TARGET_DIR:-$root/target}/$profile/autoresearch-coordinator

work=$(mktemp -d "${TMPDIR:-/tmp}/autoresearch-bench-discovery.XXXXXX")
scan_pid=
cleanup() {
  [[ -n $scan_pid ]] && kill "$scan_pid" 2>/dev/null && wait "$scan_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

node testbed/scan/server.mjs --real-limits --fail-every 0 --agents "$agents" \
  --embedded-share "$embedded" >"$work/scan.out" 2>"$work/scan.err" &
scan_pid=$!
until grep -q SCAN_API_URL "$work/scan.out" 2>/dev/null; do
  kill -0 "$scan_pid" 2>/dev/null || { cat "$work/scan.err" >&2; exit 1; }
  sleep 0.1
done
api=$(sed -n 's/^SCAN_API_URL=//p' "$work/scan.out")
stats() { curl -fsS "${api%/api/v1/public}/__stats"; }
served() { stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["api"])'; }

run_case() { # <key|anonymous> <cold|warm>
  local who=$1 temp=$2 before after start end found
  local -a env=(env -u SCAN_API_KEY -u SCAN_RATE_LIMIT SCAN_API_URL="$api" DATA_DIR="$work/data-$who" RUST_LOG=warn)
  [[ $who == key ]] && env+=(SCAN_API_KEY=testbed-scan-key)
  before=$(served)
  start=$(date +%s.%N)
  "${env[@]}" "$bin" discover --json --on-chain never --limit "$agents" \
    --allow-private 127.0.0.1/32 >"$work/out.json" 2>"$work/err.txt" ||
    { cat "$work/err.txt" >&2; exit 1; }
  end=$(date +%s.%N)
  after=$(served)
  found=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["workers"]))' "$work/out.json")
  printf 'discover %s agents (%s in rows)  %-9s  %-4s  index requests %3d  wall %6.2f s  workers %d\n' \
    "$agents" "$embedded" "$who" "$temp" $((after - before)) "$(echo "$end - $start" | bc)" "$found"
}

for who in $cases; do
  run_case "$who" cold
  run_case "$who" warm
done
