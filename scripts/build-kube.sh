#!/usr/bin/env bash
# Builds real kube-apiserver and etcd from Go modules, once per machine, into
# .cache/kube-<version>/bin. A second run finds the binaries and returns at once.
#
#   scripts/build-kube.sh          kube-apiserver, etcd; prints their folder
#   scripts/build-kube.sh --node   also the node: kubelet, kube-scheduler, kube-controller-manager
#                                  and a static pause program, into .cache/kube-node-<version>/bin;
#                                  prints that folder
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$root/testbed/kube/go.mod")

# build OUT_DIR NAME...: go build of each ./cmd/NAME missing from OUT_DIR.
build() {
  local out=$1 name
  shift
  mkdir -p "$out"
  cd "$root/testbed/kube"
  for name in "$@"; do
    [[ -x $out/$name ]] && continue
    echo "building $name $version from Go modules (first run only, a minute or more)" >&2
    # -trimpath keeps machine paths out of the binaries; gitVersion makes /version truthful.
    # pause is static (no cgo), so it runs in an image holding nothing else.
    local cgo=1
    [[ $name == pause ]] && cgo=0
    CGO_ENABLED=$cgo go build -trimpath -o "$out/$name.tmp" \
      -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$version" "./cmd/$name" >&2
    mv "$out/$name.tmp" "$out/$name"
  done
}

build "$root/.cache/kube-$version/bin" kube-apiserver etcd
if [[ ${1:-} == --node ]]; then
  build "$root/.cache/kube-node-$version/bin" kubelet kube-scheduler kube-controller-manager pause
  echo "$root/.cache/kube-node-$version/bin"
else
  echo "$root/.cache/kube-$version/bin"
fi
