#!/usr/bin/env bash
# Installs the node's container runtime from Debian packages for scripts/node.sh: containerd,
# runc and the CNI plugins (the node uses `loopback`); and what scripts/image.sh writes images
# with (jq, objcopy from binutils). Idempotent: skips what is present.
# Debian pins the versions per release (bookworm: containerd 1.6.20~ds1-1+deb12u3, runc
# 1.1.5+ds1-1+deb12u1, containernetworking-plugins 1.1.1+ds1-3+b5); docs/pod.md records the
# ones the node was measured with. containerd 1.6 speaks CRI v1, which kubelet 1.35 needs.
set -euo pipefail
if command -v containerd >/dev/null && command -v runc >/dev/null && [[ -x /usr/lib/cni/loopback ]] &&
  command -v jq >/dev/null && command -v objcopy >/dev/null; then
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if ! apt-cache show containerd >/dev/null 2>&1; then
  $sudo apt-get update -qq
fi
# The package's service is not wanted (RUNLEVEL=1): each node starts its own containerd.
DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $sudo apt-get install -y -qq \
  -o DPkg::Lock::Timeout=600 --no-install-recommends containerd runc containernetworking-plugins jq binutils >/dev/null
