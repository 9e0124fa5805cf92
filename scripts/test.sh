#!/usr/bin/env bash
# The test command: installs what the tests need (pinned, cached in ignored folders), starts one
# real API server for the whole run, runs every test, and stops the server.
#   bash scripts/test.sh [cargo test args...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

bash scripts/install-deps.sh

work=$(mktemp -d "${TMPDIR:-/tmp}/autoresearch-test.XXXXXX")
cleanup() {
  bash scripts/cluster.sh stop "$work/cluster" >/dev/null 2>&1 || true
  # One file system only: nothing mounted below is followed, even if a stop went wrong.
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT INT TERM

start=$SECONDS
bash scripts/cluster.sh start "$work/cluster" --owner-pid $$ >/dev/null
echo "test cluster: kube-apiserver $(basename "$(dirname "$(bash scripts/build-kube.sh)")" | sed 's/^kube-//') up in $((SECONDS - start)) s"
export AUTORESEARCH_TEST_KUBECONFIG="$work/cluster/kubeconfig"
# Tests that need the npm testbed fail (rather than skip) when it is missing.
export REQUIRE_TESTBED=1

# The controller's image for tests/pod.rs (which runs it on real nodes of its own cluster),
# under two tags (`helm upgrade` goes from the first to the second).
# (Always: with --all-targets below, naming a test file does not leave the others out.)
images=""
for tag in pod-test-a pod-test-b; do
  line=$(bash scripts/image.sh --tag "$tag")
  read -r ref archive compressed _ <<<"$line"
  images="$images $ref $archive"
done
echo "controller image: $((compressed / 1024 / 1024)) MiB compressed ($ref)"
export AUTORESEARCH_TEST_IMAGES=$images

# The testbed's own self-test first: if a peer misbehaves, say so before the Rust tests do.
node --test testbed/payments/test/
cargo test --all-targets --features failpoints "$@"
