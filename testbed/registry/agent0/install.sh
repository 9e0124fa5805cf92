#!/usr/bin/env bash
# Installs agent0-sdk (version pinned in package.json) into agent0/node_modules, once per machine.
#
# agent0-sdk's own dependencies include helia and kubo-rpc-client (hundreds of MB) that it loads
# only for IPFS uploads; registering with a data: URI needs only viem (from testbed/node_modules)
# and graphql-request. So the package is unpacked from its registry tarball and only those are
# installed.
set -euo pipefail
cd "$(dirname "$0")"
version=$(node -p 'require("./package.json").agent0Sdk')
marker=node_modules/agent0-sdk/package.json
if [ -f "$marker" ] && [ "$(node -p "require('./$marker').version")" = "$version" ] \
  && [ -d node_modules/graphql-request ]; then
  exit 0
fi
npm install --no-package-lock --ignore-scripts --no-audit --no-fund --silent
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "agent0-sdk@$version" >/dev/null)
rm -rf node_modules/agent0-sdk
mkdir -p node_modules/agent0-sdk
tar xzf "$tmp/agent0-sdk-$version.tgz" -C node_modules/agent0-sdk --strip-components 1
