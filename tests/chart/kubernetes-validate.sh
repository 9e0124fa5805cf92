#!/usr/bin/env bash
# Runs kubernetes-validate (PyPI, pinned in tests/chart/requirements.txt; offline schemas for
# Kubernetes 1.25-1.37), installing it first into an ignored venv under .cache/ if needed.
#
#   tests/chart/kubernetes-validate.sh [kubernetes-validate args...]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
req="$root/tests/chart/requirements.txt"
# The physical path: .cache may be a symlink, and a venv is tied to the path it was made at.
mkdir -p "$root/.cache"
venv="$(cd "$root/.cache" && pwd -P)/kubernetes-validate"
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$req" | cut -d' ' -f1)

installed() { [[ -x $venv/bin/kubernetes-validate && -f $stamp && $(cat "$stamp") == "$want" ]]; }

if ! installed; then
  mkdir -p "$root/.cache"
  # One installer at a time; the others wait and then find it installed.
  exec 9>"$root/.cache/kubernetes-validate.lock"
  flock 9
  if ! installed; then
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$req" >&2
    "$venv/bin/pip" check >&2
    echo "$want" >"$stamp"
  fi
  exec 9>&-
fi
exec "$venv/bin/kubernetes-validate" "$@"
