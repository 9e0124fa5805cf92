#!/usr/bin/env bash
# Installs the npm testbed (testbed/package.json, pinned by testbed/package-lock.json) with
# `npm ci`, once: a second run is a no-op while node_modules matches the lockfile.
#
#   scripts/testbed-install.sh          install if needed
#   TESTBED_FORCE=1 scripts/testbed-install.sh   reinstall
#
# The check: a stamp (sha256 of package-lock.json) under .cache/, and npm's own record of the
# installed tree (node_modules/.package-lock.json) agreeing with the lockfile on every package
# version. A node_modules that is a symbolic link (a tree shared with another checkout) is never
# wiped: the script fails instead of running `npm ci` on it.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$root/testbed"
lock="$dir/package-lock.json"
stamp_dir="$root/.cache"
stamp="$stamp_dir/testbed-npm-lock.sha256"

command -v node >/dev/null || { echo "testbed-install: node is required (Node.js 20 or later)" >&2; exit 1; }
command -v npm >/dev/null || { echo "testbed-install: npm is required" >&2; exit 1; }
[ -f "$lock" ] || { echo "testbed-install: missing $lock" >&2; exit 1; }

want="$(sha256sum "$lock" | cut -d' ' -f1)"

tree_matches() {
  (cd "$dir" && node -e '
    const fs = require("fs");
    const want = require("./package-lock.json").packages || {};
    if (!Object.keys(want).some((k) => k)) process.exit(0);
    if (!fs.existsSync("./node_modules/.package-lock.json")) process.exit(1);
    const have = require("./node_modules/.package-lock.json").packages || {};
    for (const [k, v] of Object.entries(want)) {
      if (!k || v.optional || v.peer || v.dev) continue;
      if (!have[k] || have[k].version !== v.version) { console.error(`testbed-install: ${k} differs`); process.exit(1); }
    }')
}

if [ "${TESTBED_FORCE:-0}" != "1" ]; then
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && tree_matches; then
    echo "testbed-install: up to date"
    exit 0
  fi
  if tree_matches; then
    mkdir -p "$stamp_dir" && echo "$want" > "$stamp"
    echo "testbed-install: up to date (stamp written)"
    exit 0
  fi
fi

if [ -L "$dir/node_modules" ]; then
  echo "testbed-install: $dir/node_modules is a symbolic link to a shared tree; refusing to run npm ci on it" >&2
  exit 1
fi

echo "testbed-install: npm ci in testbed/" >&2
(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
tree_matches
mkdir -p "$stamp_dir" && echo "$want" > "$stamp"
echo "testbed-install: installed"
