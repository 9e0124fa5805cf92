#!/usr/bin/env bash
# Installs Debian's prometheus (ships promtool), which tests/dashboard.rs runs on loopback to check
# every Grafana panel's query against a controller's real metrics. Idempotent: skips when present.
# Debian pins the version per release (bookworm: 2.42.0+ds-5+deb12u1); docs/report.md records it.
set -euo pipefail
if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
# An empty package list means this machine never ran apt-get update.
if ! apt-cache show prometheus >/dev/null 2>&1; then
  $sudo apt-get update -qq
fi
# The package's service is not wanted: the test starts its own server on a free port.
DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $sudo apt-get install -y -qq \
  -o DPkg::Lock::Timeout=600 --no-install-recommends prometheus >/dev/null
