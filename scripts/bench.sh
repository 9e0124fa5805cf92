#!/usr/bin/env bash
# Benchmarks of the controller, printed as numbers (not pass/fail tests):
#   1. throughput: 8 stand-in workers at 2 s per experiment, 200 experiments paid on anvil
#      through real x402 gates; achieved experiments per second against the ideal (8 / 2 s);
#   2. scale: 1,000 idle campaigns in the API server; the controller's resident memory and the
#      time until it has reconciled every one after start.
#
#   bash scripts/bench.sh [throughput|scale]...   (default: both)
#   BENCH_EXPERIMENTS=200 BENCH_CAMPAIGNS=1000 BENCH_PROFILE=release|debug
#   BENCH_BASELINE_RUNS=N sets objective.baselineRuns (default: the campaign default, 2), to
#   see what THINK's wait for the baseline costs apart from the engine's own overhead
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
which=("$@")
((${#which[@]})) || which=(throughput scale)
experiments=${BENCH_EXPERIMENTS:-200}
campaigns=${BENCH_CAMPAIGNS:-1000}
profile=${BENCH_PROFILE:-release}

bash scripts/install-deps.sh
if [[ $profile == release ]]; then cargo build --release --quiet; else cargo build --quiet; fi
bin=$root/target/$profile/autoresearch-coordinator

work=$(mktemp -d "${TMPDIR:-/tmp}/autoresearch-bench.XXXXXX")
# BENCH_KEEP=1 keeps the logs (printed at the end).
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  bash scripts/cluster.sh stop "$work/cluster" >/dev/null 2>&1 || true
  if [[ -n ${BENCH_KEEP:-} ]]; then echo "logs kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
export KUBECONFIG
KUBECONFIG=$(bash scripts/cluster.sh start "$work/cluster" --owner-pid $$)
"$bin" crd | kubectl apply -f - >/dev/null
kubectl wait --for condition=Established crd/experimentcampaigns.autoresearch.obol.org --timeout=60s >/dev/null
until kubectl get campaigns >/dev/null 2>&1; do sleep 0.2; done

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
start_controller() { # start_controller NAMESPACE LOG
  metrics_addr=127.0.0.1:$(free_port)
  METRICS_ADDR=$metrics_addr DATA_DIR=$work/data-$1 POD_NAMESPACE=$1 WATCH_NAMESPACE=$1 POD_NAME=bench \
    RUST_LOG=${BENCH_LOG:-warn} NO_COLOR=1 "$bin" controller >"$2" 2>&1 &
  pids+=($!)
  controller=$!
}

throughput() {
  local ns=bench-throughput
  kubectl create namespace $ns >/dev/null
  local workers
  workers=$(python3 -c "import json; print(json.dumps({'workers': [{'name': f'w{i}', 'gate': ['v2', 'v1', 'obol'][i % 3], 'price': '1000', 'durationMs': 2000} for i in range(8)]}))")
  node testbed/payments/up.mjs --no-stdin --manifest "$work/tb.json" --config "$workers" >/dev/null 2>"$work/tb.log" &
  pids+=($!)
  until [[ -s $work/tb.json ]]; do sleep 0.2; done
  python3 - "$work/tb.json" "$experiments" "${BENCH_BASELINE_RUNS:-}" >"$work/campaign.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1])); n = int(sys.argv[2])
objective = {"baselineRuns": int(sys.argv[3])} if sys.argv[3] else {}
print(json.dumps({
  "apiVersion": "autoresearch.obol.org/v1alpha1", "kind": "ExperimentCampaign",
  "metadata": {"name": "throughput"},
  "spec": {
    "trainScript": {"inline": "print('val_bpb: 1.0')\n"},
    "search": {"strategy": "random", "seed": 1, "parameters": [
      {"name": "lr", "type": "float", "min": 0.0001, "max": 0.1, "logScale": True},
      {"name": "depth", "type": "int", "min": 2, "max": 64}]},
    "maxExperiments": n, "parallelism": 8, "experimentTimeoutSeconds": 60, "objective": objective,
    "budget": {"total": "100", "maxPricePerExperiment": "0.01"},
    "payment": {"remoteSignerUrl": m["signer"]["url"], "tokenSecretRef": {"name": "remote-signer-keystore"}},
    "discovery": {"scanApiUrl": "", "onChain": {"mode": "never"},
                  "workers": [{"endpoint": w["endpoint"]} for w in m["workers"]]}}}))
PY
  kubectl -n $ns create secret generic remote-signer-keystore \
    --from-literal=authToken="$(python3 -c "import json; print(json.load(open('$work/tb.json'))['signer']['token'])")" >/dev/null
  # The chain judges payments, as in a deployment (ERPC_URL).
  ERPC_URL=$(python3 -c "import json; print(json.load(open('$work/tb.json'))['rpcUrl'])") \
    start_controller $ns "$work/controller-throughput.log"
  kubectl -n $ns apply -f "$work/campaign.json" >/dev/null
  # The clock starts when the first run starts on its worker (after leader election and the
  # first discovery; read from the workers' results at the end) and stops when the campaign is
  # seen done. Polling for the first experiment in flight saw it up to 0.2 s late.
  local t0 t1 running=0
  until ((running > 0)); do
    sleep 0.1
    running=$(kubectl -n $ns get campaign throughput -o jsonpath='{.status.running}' 2>/dev/null || echo 0)
    running=${running:-0}
  done
  # One watch, not a kubectl process every 0.2 s: on 2 cores that polling took CPU from the
  # gates and the controller it measures. Complete is True for every end (Succeeded, Failed,
  # BudgetExhausted).
  kubectl -n $ns wait --for=condition=Complete campaign/throughput --timeout=900s >/dev/null || {
    echo "throughput: did not finish in 900 s" >&2; tail "$work/controller-throughput.log" >&2; return 1; }
  t1=$(date +%s.%N)
  t0=$(first_run_started "$work/tb.json")
  local done
  done=$(kubectl -n $ns get campaign throughput -o jsonpath='{.status.succeeded}')
  python3 -c "
secs, n = $t1 - $t0, $done
ideal = 8 / 2.0
print(f'throughput: {n} experiments on 8 workers at 2 s each in {secs:.1f} s: {n/secs:.2f}/s against an ideal {ideal:.2f}/s = {100*n/secs/ideal:.1f}% (target >= 95%)')"
  curl -sf "http://$metrics_addr/metrics" >"$work/metrics.txt"
  breakdown "$work/metrics.txt"
  schedule "$work/tb.json" "$t0" "$t1"
}

# The earliest start of a run on any worker's clock (epoch seconds).
first_run_started() {
  python3 - "$1" <<'PY'
import json, sys
from datetime import datetime
starts = []
for w in json.load(open(sys.argv[1]))["workers"]:
    for line in open(f"{w['dataDir']}/results.jsonl"):
        starts.append(datetime.fromisoformat(json.loads(line)["startedAt"]).timestamp())
print(min(starts))
PY
}

# Where the makespan went, from the workers' own clocks (each stand-in's results.jsonl, read
# while the testbed runs), in seconds from the first run's start: when each worker started, how
# long it sat free between runs (the gate's settle and verify, the answer's way back, the
# controller's idle gap), and how unevenly the last round ended.
schedule() {
  python3 - "$@" <<'PY'
import json, sys
from datetime import datetime
manifest, t0, t1 = json.load(open(sys.argv[1])), float(sys.argv[2]), float(sys.argv[3])
at = lambda s: datetime.fromisoformat(s).timestamp() - t0
rows = []
for w in manifest["workers"]:
    runs = [json.loads(l) for l in open(f"{w['dataDir']}/results.jsonl")]
    spans = sorted((at(r["startedAt"]), at(r["finishedAt"])) for r in runs)
    free = [b[0] - a[1] for a, b in zip(spans, spans[1:])]
    rows.append((f"{w.get('name', '?')} ({w.get('gate', '?')})", len(spans), spans[0][0], spans[-1][1],
                 1000 * sum(free) / max(len(free), 1), sum(e - s for s, e in spans) / len(spans),
                 1000 * max(free, default=0), 1 + max(range(len(free)), key=free.__getitem__, default=0)))
n = sorted(r[1] for r in rows)
print(f"workers' clocks: runs per worker {n[0]}-{n[-1]}; each worker's first run started {min(r[2] for r in rows):.2f}-{max(r[2] for r in rows):.2f} s; free between runs {min(r[4] for r in rows):.0f}-{max(r[4] for r in rows):.0f} ms (mean per worker); "
      f"a run {1000 * sum(r[5] for r in rows) / len(rows):.0f} ms; last run ended {min(r[3] for r in rows):.2f}-{max(r[3] for r in rows):.2f} s; "
      f"campaign seen Complete {t1 - t0:.2f} s")
print("per worker (gate): " + ", ".join(f"{r[0]} {r[1]} runs, free {r[4]:.0f} ms (longest {r[6]:.0f}, after run {r[7]}), done {r[3]:.2f} s" for r in rows))
PY
}

# Mean milliseconds per experiment of each step (autoresearch_step_seconds), and the idle gap
# (autoresearch_worker_idle_seconds: from a worker's answer to the next voucher sent to it).
breakdown() {
  python3 - "$1" <<'PY'
import re, sys
sums, counts = {}, {}
for line in open(sys.argv[1]):
    m = re.match(r'(autoresearch_step_seconds|autoresearch_worker_idle_seconds)_(sum|count)(?:\{step="(\w+)"\})? (\S+)', line)
    if m:
        name = m.group(3) or 'idle gap'
        (sums if m.group(2) == 'sum' else counts)[name] = float(m.group(4))
order = ['price', 'sign', 'reserve', 'send', 'judge', 'record', 'status', 'decide', 'idle gap']
cells = [f'{k} {1000 * sums[k] / counts[k]:.1f} ms (n={counts[k]:.0f})' for k in order if counts.get(k)]
print('mean per experiment: ' + ', '.join(cells))
conflicts = [l.split()[1] for l in open(sys.argv[1]) if l.startswith('autoresearch_status_conflicts_total ')]
if conflicts:
    print(f'status write conflicts (409, read again): {float(conflicts[0]):.0f}')
if counts.get('send'):
    # What the gates and workers take beyond the 2 s run bounds any controller.
    print(f"ceiling set by the sends alone (2 s / mean send): {100 * 2.0 / (sums['send'] / counts['send']):.1f}%")
PY
}

scale() {
  local ns=bench-scale
  kubectl create namespace $ns >/dev/null
  python3 - "$campaigns" >"$work/campaigns.json" <<'PY'
import json, sys
items = [{
  "apiVersion": "autoresearch.obol.org/v1alpha1", "kind": "ExperimentCampaign",
  "metadata": {"name": f"idle-{i:04}"},
  "spec": {"trainScript": {"inline": "print(1)\n"}, "suspend": True,
           "search": {"strategy": "list", "experiments": [{"i": i}]},
           "maxExperiments": 1, "budget": {"total": "1", "maxPricePerExperiment": "0.1"},
           "discovery": {"scanApiUrl": "", "onChain": {"mode": "never"}}}} for i in range(int(sys.argv[1]))]
print(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
PY
  kubectl -n $ns create -f "$work/campaigns.json" >/dev/null
  local t0
  t0=$(date +%s.%N)
  start_controller $ns "$work/controller-scale.log"
  local n=0
  until ((n >= campaigns)); do
    sleep 0.5
    n=$(kubectl -n $ns get campaigns -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' | grep -c Suspended || true)
  done
  local t1 rss
  t1=$(date +%s.%N)
  sleep 2
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$controller/status")
  python3 -c "print(f'scale: {$campaigns} idle campaigns reconciled {float($t1) - float($t0):.1f} s after start; resident memory {$rss / 1024:.1f} MiB (target < 100 MiB)')"
}

for b in "${which[@]}"; do "$b"; done
