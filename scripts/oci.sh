# OCI image archives written directly, without a container daemon or a registry (sourced by
# scripts/image.sh and scripts/node.sh). An image here is one layer: a root filesystem folder
# tarred reproducibly (sorted names, owner 0, time 0), so the same files give the same digest.
#
#   oci_archive ROOTFS CONFIG_JSON REFERENCE OUT.tar
#     CONFIG_JSON is the image config's "config" object (User, Entrypoint, Cmd, ExposedPorts...).
#     OUT.tar is an OCI image layout in a tar (index.json, oci-layout, blobs/sha256/...), the
#     form `ctr images import` and `podman load` read; REFERENCE is recorded in index.json.

oci_blob() { # oci_blob LAYOUT FILE MEDIATYPE: moves FILE into the layout, prints its descriptor
  local layout=$1 file=$2 media=$3 digest size
  digest=$(sha256sum "$file" | cut -d' ' -f1)
  size=$(stat -c %s "$file")
  mv "$file" "$layout/blobs/sha256/$digest"
  jq -cn --arg m "$media" --arg d "sha256:$digest" --argjson s "$size" \
    '{mediaType: $m, digest: $d, size: $s}'
}

oci_archive() {
  local rootfs=$1 config=$2 ref=$3 out=$4
  local work
  work=$(mktemp -d)
  local layout=$work/layout
  mkdir -p "$layout/blobs/sha256"
  tar --create --file "$work/layer.tar" --directory "$rootfs" --sort=name --numeric-owner \
    --owner=0 --group=0 --mtime=@0 --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime .
  local diff_id
  diff_id=sha256:$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
  gzip -n -9 "$work/layer.tar"
  local layer
  layer=$(oci_blob "$layout" "$work/layer.tar.gz" application/vnd.oci.image.layer.v1.tar+gzip)

  jq -cn --argjson c "$config" --arg d "$diff_id" \
    '{architecture: "amd64", os: "linux", created: "1970-01-01T00:00:00Z", config: $c,
      rootfs: {type: "layers", diff_ids: [$d]},
      history: [{created: "1970-01-01T00:00:00Z", created_by: "scripts/oci.sh"}]}' >"$work/config.json"
  local cfg
  cfg=$(oci_blob "$layout" "$work/config.json" application/vnd.oci.image.config.v1+json)

  jq -cn --argjson c "$cfg" --argjson l "$layer" \
    '{schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json", config: $c, layers: [$l]}' \
    >"$work/manifest.json"
  local manifest
  manifest=$(oci_blob "$layout" "$work/manifest.json" application/vnd.oci.image.manifest.v1+json)

  # containerd names the imported image after io.containerd.image.name; other tools read the tag
  # from org.opencontainers.image.ref.name.
  jq -cn --argjson m "$manifest" --arg ref "$ref" --arg tag "${ref##*:}" \
    '{schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json",
      manifests: [$m + {platform: {architecture: "amd64", os: "linux"},
        annotations: {"io.containerd.image.name": $ref, "org.opencontainers.image.ref.name": $tag}}]}' \
    >"$layout/index.json"
  echo '{"imageLayoutVersion": "1.0.0"}' >"$layout/oci-layout"
  mkdir -p "$(dirname "$out")"
  tar --create --file "$out.tmp" --directory "$layout" --sort=name --owner=0 --group=0 --mtime=@0 .
  mv "$out.tmp" "$out"
  rm -rf "$work"
}

# oci_add_binary ROOTFS BINARY DEST: copies an ELF program to ROOTFS/DEST with the shared
# libraries ldd finds for it (and its loader) at the paths the program looks them up under.
oci_add_binary() {
  local rootfs=$1 binary=$2 dest=$3
  install -D -m 0755 "$binary" "$rootfs$dest"
  local lib
  for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
    install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
  done
}
