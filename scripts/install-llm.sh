#!/usr/bin/env bash
# Installs the LiteLLM proxy (PyPI, pinned in testbed/llm/requirements.txt) into an ignored venv
# under .cache/litellm, for the llm wire tests. Idempotent: a second run costs a second.
#
#   scripts/install-llm.sh        # prints the path of the litellm executable
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
req="$root/testbed/llm/requirements.txt"
# The physical path: .cache may be a symlink, and a venv is tied to the path it was made at.
mkdir -p "$root/.cache"
venv="$(cd "$root/.cache" && pwd -P)/litellm"
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$req" | cut -d' ' -f1)

# A venv is tied to the path it was made at (its scripts' #! lines): one made through another
# path (a moved checkout, a symlinked .cache) is broken, and is made again.
installed() {
  [[ -x $venv/bin/litellm && -f $stamp && $(cat "$stamp") == "$want" ]] &&
    [[ $(head -n 1 "$venv/bin/litellm") == "#!$venv/bin/python"* ]]
}

if ! installed; then
  mkdir -p "$root/.cache"
  # One installer at a time (tests may start in parallel); the others wait and find it installed.
  exec 9>"$root/.cache/litellm.lock"
  flock 9
  if ! installed; then
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" >&2
    echo "$want" >"$stamp"
  fi
  exec 9>&-
fi
echo "$venv/bin/litellm"
