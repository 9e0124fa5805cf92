#!/usr/bin/env bash
# The main job: a local demo of a campaign on embedded defaults.
# Starts a real API server on loopback, installs the CRD, applies examples/quickstart.yaml and
# shows it as `kubectl get campaigns` does; cleans everything up on exit or Ctrl-C.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

bash scripts/install-deps.sh
cargo build --quiet

work=$(mktemp -d "${TMPDIR:-/tmp}/autoresearch-demo.XXXXXX")
cleanup() {
  bash scripts/cluster.sh stop "$work/cluster" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "==> starting a local Kubernetes API server"
export KUBECONFIG
KUBECONFIG=$(bash scripts/cluster.sh start "$work/cluster" --owner-pid $$)

echo "==> installing the ExperimentCampaign CRD"
./target/debug/autoresearch-coordinator crd | kubectl apply -f -
kubectl wait --for condition=Established crd/experimentcampaigns.autoresearch.obol.org --timeout=60s >/dev/null
until kubectl get campaigns >/dev/null 2>&1; do sleep 0.2; done

echo "==> applying examples/quickstart.yaml"
kubectl apply -f examples/quickstart.yaml

echo "==> kubectl get campaigns"
kubectl get campaigns
echo
echo "==> kubectl explain experimentcampaign.spec.budget"
kubectl explain experimentcampaign.spec.budget | sed -n '/FIELDS/,$p'
