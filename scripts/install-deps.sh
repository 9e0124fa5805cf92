#!/usr/bin/env bash
# Installs every test and demo dependency that is not part of the machine, pinned, into ignored
# cache folders. Idempotent: a second run costs a few seconds.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# Real kube-apiserver and etcd, built from Go modules (testbed/kube/go.mod pins the version).
bash scripts/build-kube.sh >/dev/null

# Node peers: anvil, Circle's USDC artifacts, the reference x402 facilitator and gates, helm.
lock_hash=$(sha256sum testbed/package-lock.json | cut -d' ' -f1)
stamp=testbed/node_modules/.installed-$lock_hash
if [[ ! -e $stamp ]]; then
  echo "installing testbed/ npm packages (first run only)" >&2
  (cd testbed && npm ci --no-audit --no-fund --loglevel=error >&2)
  touch "$stamp"
fi
