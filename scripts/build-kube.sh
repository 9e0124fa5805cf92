#!/usr/bin/env bash
# Builds real kube-apiserver and etcd from Go modules, once per machine, into
# .cache/kube-<version>/bin. A second run finds the binaries and returns at once.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$root/testbed/kube/go.mod")
out="$root/.cache/kube-$version/bin"
if [[ -x "$out/kube-apiserver" && -x "$out/etcd" ]]; then
  echo "$out"
  exit 0
fi
mkdir -p "$out"
cd "$root/testbed/kube"
echo "building kube-apiserver and etcd $version from Go modules (first run only, several minutes)" >&2
# -trimpath keeps machine paths out of the binaries; gitVersion makes /version truthful.
go build -trimpath -o "$out/kube-apiserver.tmp" \
  -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$version" ./cmd/kube-apiserver >&2
go build -trimpath -o "$out/etcd.tmp" -ldflags "-s -w" ./cmd/etcd >&2
mv "$out/kube-apiserver.tmp" "$out/kube-apiserver"
mv "$out/etcd.tmp" "$out/etcd"
echo "$out"
