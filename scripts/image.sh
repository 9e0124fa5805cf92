#!/usr/bin/env bash
# Builds the controller's OCI image without a container daemon: the release binary, exactly the
# shared libraries it loads (ldd: glibc, libm, libgcc_s, the loader), CA certificates and a
# passwd naming UID 65532, with the USER, EXPOSE, ENTRYPOINT and CMD of the Dockerfile's last
# stage (read from the Dockerfile, so the two cannot drift apart).
#
#   scripts/image.sh [--tag TAG] [--binary PATH] [--out FILE]
#
# Prints one line: REFERENCE ARCHIVE COMPRESSED_BYTES UNCOMPRESSED_BYTES. The archive is an OCI
# layout in a tar, for `ctr -n k8s.io images import`, `k3s ctr images import`, `kind load
# image-archive` or `podman load`. Without --binary it builds target/release first (cargo
# returns at once when it is up to date).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/oci.sh
source "$root/scripts/oci.sh"

repository=$(awk '/^image:/ {i=1} i && $1 == "repository:" {print $2; exit}' "$root/charts/autoresearch-coordinator/values.yaml")
tag=$(awk -F'"' '/^appVersion:/ {print $2}' "$root/charts/autoresearch-coordinator/Chart.yaml")
binary="" out=""
while (($#)); do
  case $1 in
    --tag) tag=$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "usage: $0 [--tag TAG] [--binary PATH] [--out FILE]" >&2; exit 2 ;;
  esac
done
ref="$repository:$tag"
out=${out:-$root/.cache/image/autoresearch-coordinator-$tag.oci.tar}
if [[ -z $binary ]]; then
  (cd "$root" && cargo build --release --locked --bin autoresearch-coordinator >&2)
  binary=${CARGO_TARGET_DIR:-$root/target}/release/autoresearch-coordinator
fi

# The Dockerfile's last stage, as an image config: USER, EXPOSE, ENTRYPOINT and CMD (exec form).
dockerfile_config() {
  awk '/^FROM /{stage=""} {stage = stage $0 "\n"} END {printf "%s", stage}' "$root/Dockerfile" |
    awk '$1 == "USER" {print "user", $2} $1 == "EXPOSE" {print "expose", $2}
         $1 == "ENTRYPOINT" || $1 == "CMD" {k=$1; sub(/^[A-Z]+ +/, ""); print tolower(k), $0}' |
    jq -Rn '[inputs | capture("^(?<k>[a-z]+) (?<v>.*)$")] | map({(.k): .v}) | add |
      {User: .user, ExposedPorts: {((.expose | tostring) + (if (.expose | test("/")) then "" else "/tcp" end)): {}},
       Entrypoint: (.entrypoint | fromjson), Cmd: (.cmd | fromjson),
       Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"]}'
}
config=$(dockerfile_config)
entrypoint=$(jq -r '.Entrypoint[0]' <<<"$config")

rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
chmod 0755 "$rootfs"
oci_add_binary "$rootfs" "$binary" "$entrypoint"
# Symbols are not needed at run time; they are most of a Rust binary's size.
objcopy --strip-all "$rootfs$entrypoint"
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
install -d -m 1777 "$rootfs/tmp"
oci_archive "$rootfs" "$config" "$ref" "$out"

compressed=$(tar -xOf "$out" ./index.json | jq -r '.manifests[0].digest' | cut -d: -f2 |
  xargs -I{} tar -xOf "$out" ./blobs/sha256/{} | jq '[.config.size] + [.layers[].size] | add')
uncompressed=$(du -sb "$rootfs" | cut -f1)
echo "$ref $out $compressed $uncompressed"
