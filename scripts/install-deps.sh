#!/usr/bin/env bash
# Installs every test and demo dependency that is not part of the machine, pinned, into ignored
# cache folders. Idempotent: a second run costs a few seconds.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# Real kube-apiserver and etcd, built from Go modules (testbed/kube/go.mod pins the version), and
# the node (kubelet, scheduler, controller-manager, pause) with containerd and runc from Debian.
bash scripts/build-kube.sh --node >/dev/null
bash scripts/node-deps.sh

# Node peers: anvil, Circle's USDC artifacts, the reference x402 facilitator and gates, helm.
bash scripts/testbed-install.sh

# Debian packages for the report tests: Prometheus (dashboard queries), Chromium (the live page).
bash scripts/install-prometheus.sh
bash scripts/install-chromium.sh

# The LiteLLM proxy (PyPI, pinned) for the llm wire tests, in a venv under .cache/litellm.
bash scripts/install-llm.sh >/dev/null
