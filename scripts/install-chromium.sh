#!/usr/bin/env bash
# Installs Debian's chromium, which tests/page.rs runs headless to render the live campaign page.
# Idempotent: skips when present. Debian pins the version per release (bookworm-security:
# 156.0.8078.114-1~deb12u1 when this was written); docs/report.md records it.
set -euo pipefail
if command -v chromium >/dev/null; then
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if ! apt-cache show chromium >/dev/null 2>&1; then
  $sudo apt-get update -qq
fi
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
  -o DPkg::Lock::Timeout=600 --no-install-recommends chromium >/dev/null
