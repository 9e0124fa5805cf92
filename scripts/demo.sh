#!/usr/bin/env bash
# The main job: a full local demo of a campaign, on embedded defaults, on loopback only.
#
# Starts a real Kubernetes API server, anvil with Circle's USDC, the reference x402 facilitator,
# three GPU workers (stand-ins that run the submitted train.py as obol-stack's worker does) behind
# real x402 gates (v2, v1, obol-stack's), an 8004scan stand-in that lists them, the
# remote-signer stand-in and the controller; applies examples/quickstart.yaml; shows the campaign
# progressing as `kubectl get campaigns -w` does; ends with the leaderboard, the USDC each worker
# received (read from the chain) and where results.jsonl is. Everything is stopped on exit and on Ctrl-C.
#
#   bash scripts/demo.sh            (DEMO_TIMEOUT=seconds to change the 150 s limit)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

bash scripts/install-deps.sh
# DEMO_BIN: an already built binary (the test that runs this demo headless passes its own).
if [[ -z ${DEMO_BIN:-} ]]; then cargo build --quiet; fi
bin=${DEMO_BIN:-$root/target/debug/autoresearch-coordinator}

work=$(mktemp -d "${TMPDIR:-/tmp}/autoresearch-demo.XXXXXX")
data=${DEMO_DATA:-$root/.cache/demo}/data
rm -rf "$data" && mkdir -p "$data"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  bash scripts/cluster.sh stop "$work/cluster" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'echo; echo "interrupted: cleaning up"; exit 130' INT TERM
step() { printf '\n==> %s\n' "$*"; }
json() { python3 -c "import json,sys; m=json.load(open('$work/testbed.json')); print($1)"; }

step "starting a local Kubernetes API server (kube-apiserver + etcd on 127.0.0.1)"
export KUBECONFIG
KUBECONFIG=$(bash scripts/cluster.sh start "$work/cluster" --owner-pid $$)

step "starting anvil with USDC, the x402 facilitator, 3 GPU workers behind x402 gates, the remote signer"
node testbed/payments/up.mjs --no-stdin --manifest "$work/testbed.json" --config '{"workers": [
  {"name": "gpu-alpha", "gate": "v2", "price": "10000", "durationMs": 1500},
  {"name": "gpu-beta", "gate": "v1", "price": "20000", "durationMs": 1500},
  {"name": "gpu-gamma", "gate": "obol", "price": "30000", "durationMs": 1500}]}' >/dev/null 2>"$work/testbed.log" &
pids+=($!)
until [[ -s $work/testbed.json ]]; do
  kill -0 "${pids[-1]}" 2>/dev/null || { cat "$work/testbed.log"; exit 1; }
  sleep 0.2
done
json "'\n'.join(f\"    {w['name']:10} {w['gate']:5} {int(w['price'])/1e6:.2f} USDC  {w['endpoint']}\" for w in m['workers'])"

step "starting an 8004scan stand-in that lists them (and two decoys a correct client refuses)"
workers=$(json "json.dumps([{'name': w['name'], 'endpoint': w['endpoint'], 'bestValBpb': '0.97'} for w in m['workers']])")
node testbed/scan/server.mjs --fail-every 0 --workers "$workers" >"$work/scan.out" 2>&1 &
pids+=($!)
until grep -q SCAN_API_URL "$work/scan.out"; do sleep 0.1; done
scan=$(sed -n 's/^SCAN_API_URL=//p' "$work/scan.out")
echo "    $scan"

step "installing the CRD and the remote signer's token Secret"
"$bin" crd | kubectl apply -f - >/dev/null
kubectl wait --for condition=Established crd/experimentcampaigns.autoresearch.obol.org --timeout=60s >/dev/null
until kubectl get campaigns >/dev/null 2>&1; do sleep 0.2; done
kubectl create secret generic remote-signer-keystore --from-literal=authToken="$(json "m['signer']['token']")" >/dev/null

step "starting the controller (logs: ${data%/data}/controller.log)"
metrics_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
METRICS_ADDR=127.0.0.1:$metrics_port DATA_DIR=$data POD_NAMESPACE=default POD_NAME=demo \
  SCAN_RATE_LIMIT=600 RUST_LOG=info,kube=warn "$bin" controller >"$data/../controller.log" 2>&1 &
pids+=($!)

step "applying examples/quickstart.yaml (pointed at the local signer and index)"
kubectl create configmap train-py --from-file=train.py="$root/examples/train_tiny.py" >/dev/null
signer=$(json "m['signer']['url']")
kubectl create --dry-run=client -o json -f examples/quickstart.yaml | python3 -c "
import json, sys
c = json.load(sys.stdin)
c['spec']['payment']['remoteSignerUrl'] = '$signer'
c['spec']['discovery'] = {'scanApiUrl': '$scan', 'onChain': {'mode': 'never'}, 'allowPrivate': ['127.0.0.1/32']}
c['spec']['experimentTimeoutSeconds'] = 60
print(json.dumps(c))" | kubectl apply -f -

step "kubectl get campaigns -w"
# -w prints a row per status write; rows that repeat the previous one are dropped.
kubectl get campaigns -w > >(awk '$0 != prev { print; fflush(); prev = $0 }') &
watcher=$!
pids+=($watcher)
deadline=$((SECONDS + ${DEMO_TIMEOUT:-150}))
phase=""
until [[ $phase =~ ^(Succeeded|Failed|BudgetExhausted)$ ]]; do
  if ((SECONDS > deadline)); then
    echo "the campaign did not finish in time; controller log:" >&2
    tail -20 "$data/../controller.log" >&2
    exit 1
  fi
  sleep 1
  phase=$(kubectl get campaign quickstart -o jsonpath='{.status.phase}')
done
sleep 1
kill "$watcher" 2>/dev/null || true

step "conditions and events (kubectl describe campaign quickstart)"
kubectl get campaign quickstart -o json | python3 -c "
import json, sys
for c in json.load(sys.stdin)['status']['conditions']:
    print(f\"    {c['type']:17} {c['status']:6} {c['reason']:22} {c['message']}\")"
kubectl describe campaign quickstart | sed -n '/^Events:/,$p' | awk 'NR <= 12'

step "leaderboard (status.leaderboard, lowest val_bpb first)"
kubectl get campaign quickstart -o json | python3 -c "
import json, sys
s = json.load(sys.stdin)['status']
for i, r in enumerate(s.get('leaderboard', []), 1):
    print(f\"  {i:>2}. val_bpb {r['valBpb']:.6f}  {r['experimentId']}  {r['worker']}\")
print(f\"  phase {s['phase']}: {s['succeeded']} succeeded, {s['failed']} failed, {s['spent']} USDC spent\")"

step "USDC received by each worker, read from the chain (USDC at $(json "m['usdc']"))"
cast=testbed/node_modules/.bin/cast
rpc=$(json "m['rpcUrl']")
usdc=$(json "m['usdc']")
for row in $(json "' '.join(w['name'] + '=' + w['payTo'] for w in m['workers'])"); do
  balance=$("$cast" call --rpc-url "$rpc" "$usdc" "balanceOf(address)(uint256)" "${row#*=}" | awk '{print $1}')
  printf '    %-10s %s  %s USDC\n' "${row%%=*}" "${row#*=}" "$(python3 -c "print(f'{$balance/1e6:.2f}')")"
done

step "report: progress chart, results.tsv, summary"
"$bin" report --results "$data/autoresearch/results.jsonl" --campaign quickstart --data-dir "$data" --out "$data/../report"
echo "    chart: $data/../report/progress.png (progress.svg and results.tsv beside it)"

step "results"
echo "    $(wc -l <"$data/autoresearch/results.jsonl") experiments recorded in $data/autoresearch/results.jsonl"
echo "    metrics were at http://127.0.0.1:$metrics_port/metrics; everything is stopped now."
