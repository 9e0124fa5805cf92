#!/usr/bin/env bash
# Real nodes for the test cluster (called by scripts/cluster.sh start DIR --node [--nodes N]):
# kube-controller-manager, kube-scheduler, and per node a kubelet with its own containerd + runc
# (Debian packages), the self-built pause image and the controller image imported.
#
#   scripts/node.sh start DIR NODES   DIR holds a running API server (scripts/cluster.sh)
#   scripts/node.sh stop DIR          stops every process, unmounts, removes netdevs and cgroups
#
# Networking: pods use hostNetwork. The test peers (API server, testbed) listen on loopback only,
# which a pod in its own network namespace cannot reach. Each node gets a netdev (a bridge
# without ports) holding one address from TEST-NET-3 (203.0.113.0/24, RFC 5737: documentation
# only, never routed): the node's InternalIP, where its kubelet and hostNetwork pods listen. A loopback-only CNI network
# makes the runtime report NetworkReady. Storage: `local` PersistentVolumes under DIR (the
# kubelet applies fsGroup to them, as a real volume) in a default StorageClass.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/oci.sh
source "$root/scripts/oci.sh"

# The cgroup v1 hierarchies a kubelet uses (this machine mounts v1 controllers + an empty v2).
hierarchies() { find /sys/fs/cgroup -mindepth 1 -maxdepth 1 -type d ! -name unified; }

# shellcheck source=scripts/cluster-lib.sh
source "$root/scripts/cluster-lib.sh"

# make_cgroup PATH: PATH in every hierarchy. A new cpuset cgroup has no CPUs or memory nodes
# (a process cannot join it) until it is given its parent's.
make_cgroup() {
  local h part path=""
  for h in $(hierarchies); do mkdir -p "$h/$1"; done
  for part in ${1//\// }; do
    path="$path/$part"
    local c=/sys/fs/cgroup/cpuset$path
    [[ -n $(cat "$c/cpuset.cpus") ]] && continue
    cat "$(dirname "$c")/cpuset.cpus" >"$c/cpuset.cpus"
    cat "$(dirname "$c")/cpuset.mems" >"$c/cpuset.mems"
  done
}

# spawn NAME CGROUP COMMAND...: starts COMMAND in the background inside cgroup CGROUP (in every
# hierarchy), logging to DIR/NAME.log; its children (shims, containers) inherit the cgroup, so
# stop finds all of them.
spawn() {
  local name=$1 cgroup=$2
  shift 2
  make_cgroup "$cgroup"
  bash -c 'for h in $(find /sys/fs/cgroup -mindepth 1 -maxdepth 1 -type d ! -name unified); do
             echo $$ >"$h/$0/cgroup.procs"; done; exec "$@"' "$cgroup" "$@" >"$dir/$name.log" 2>&1 &
  echo $! >"$dir/$name.pid"
}

kctl() { kubectl --kubeconfig "$dir/kubeconfig" "$@"; }

# node_images NODE: the pause image and the controller image (if built) in NODE's containerd.
node_images() {
  local ctr=(ctr --address "$dir/$1/containerd.sock" -n k8s.io)
  local pause=$dir/pause-image
  mkdir -p "$pause/rootfs"
  install -m 0755 "$bin/pause" "$pause/rootfs/pause"
  [[ -f $pause/image.tar ]] || oci_archive "$pause/rootfs" \
    '{"User":"65535:65535","Entrypoint":["/pause"]}' "$PAUSE_IMAGE" "$pause/image.tar"
  "${ctr[@]}" images import "$pause/image.tar" >/dev/null
  local archive
  for archive in ${NODE_IMAGES:-}; do "${ctr[@]}" images import "$archive" >/dev/null; done
}

containerd_config() { # containerd_config NODE
  local n=$1
  cat <<EOF
version = 2
root = "$dir/$n/containerd"
state = "$dir/$n/containerd-state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$dir/$n/containerd.sock"
[ttrpc]
  address = "$dir/$n/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/$n/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  enable_selinux = false
  # Lowering a process's oom_score_adj is refused on this machine (even to root); pods get
  # negative values (the sandbox -998): keep them at containerd's own instead of failing.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/$n/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "$dir/$n/runc"
        SystemdCgroup = false
EOF
}

kubelet_config() { # kubelet_config NODE IP
  local n=$1 ip=$2
  cat <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $ip
port: $(free_port)
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $(free_port)
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
# This machine has cgroup v1 controllers: kubelet 1.35 refuses them unless told otherwise.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$n/pods
containerRuntimeEndpoint: unix://$dir/$n/containerd.sock
podLogsDir: $dir/$n/pod-logs
failSwapOn: false
makeIPTablesUtilChains: false
# The images are imported, never pulled: keep them however full the disk is.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 50Mi, nodefs.available: 1%, imagefs.available: 1%}
nodeStatusUpdateFrequency: 2s
syncFrequency: 5s
fileCheckFrequency: 5s
resolvConf: /etc/resolv.conf
EOF
}

start_node() { # start_node NODE INDEX
  local n=$1 i=$2 ip=203.0.113.$((10 + $2))
  mkdir -p "$dir/$n/cni" "$dir/$n/pod-logs" "$dir/$n/kubelet"
  # A bridge with no ports: this kernel has no dummy netdev type. Traffic to the address is
  # local (it goes over lo), the bridge only holds it.
  ip link add "$n" type bridge
  ip addr add "$ip/32" dev "$n"
  ip link set "$n" up
  echo '{"cniVersion": "0.4.0", "name": "loopback", "plugins": [{"type": "loopback"}]}' \
    >"$dir/$n/cni/10-loopback.conflist"
  containerd_config "$n" >"$dir/$n/containerd.toml"
  kubelet_config "$n" "$ip" >"$dir/$n/kubelet.yaml"
  make_cgroup "$n/pods"
  spawn "$n-containerd" "$n/runtime" containerd --config "$dir/$n/containerd.toml"
  wait_for 30 "containerd of $n" ctr --address "$dir/$n/containerd.sock" version
  node_images "$n"
  spawn "$n-kubelet" "$n/kubelet" "$bin/kubelet" --config "$dir/$n/kubelet.yaml" \
    --kubeconfig "$dir/kubeconfig" --root-dir "$dir/$n/kubelet" --cert-dir "$dir/$n/kubelet/pki" \
    --hostname-override "$n" --node-ip "$ip" --node-labels "$HOST_LABEL=$PREFIX" --v 1
}

# local_volumes NODES COUNT: COUNT local PVs, usable from every node (all nodes are this one
# machine, so each sees the same folder), in the default StorageClass "local".
local_volumes() {
  local count=$1 k
  {
    cat <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: local
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
EOF
    for k in $(seq "$count"); do
      mkdir -p "$dir/volumes/pv-$k"
      cat <<EOF
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: local-$k}
spec:
  capacity: {storage: 2Gi}
  accessModes: [ReadWriteOnce, ReadWriteMany]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: local
  local: {path: "$dir/volumes/pv-$k"}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions: [{key: $HOST_LABEL, operator: In, values: [$PREFIX]}]
EOF
    done
  } | kctl apply -f - >/dev/null
}

start() {
  dir=$1
  local nodes=$2
  # The cgroup handling below (one folder per v1 controller, cpuset set up by hand) is for the
  # v1 layout these machines have; a cgroup v2 machine would need other code, untested here.
  if [[ $(stat -fc %T /sys/fs/cgroup) == cgroup2fs ]]; then
    echo "node: /sys/fs/cgroup is cgroup v2; scripts/node.sh supports the v1 layout only" >&2
    return 1
  fi
  # The names and addresses below are per machine: one node cluster at a time.
  if [[ -e $OWNER ]] && [[ $(cat "$OWNER") != "$dir" ]] && ip link show "$PREFIX-1" >/dev/null 2>&1; then
    echo "node: another test cluster has nodes on this machine ($(cat "$OWNER")); stop it first" >&2
    return 1
  fi
  # Claim the names, clear what a crashed run of this folder left, claim them again (stop
  # releases them).
  echo "$dir" >"$OWNER"
  stop "$dir"
  echo "$dir" >"$OWNER"
  bin=$(bash "$root/scripts/build-kube.sh" --node)
  local cert="$dir/certs"
  # One control-plane process each, on loopback, as the admin.
  spawn kube-scheduler "$PREFIX-control" "$bin/kube-scheduler" --kubeconfig "$dir/kubeconfig" \
    --authentication-kubeconfig "$dir/kubeconfig" --authorization-kubeconfig "$dir/kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$(free_port)" --leader-elect=false --v 0
  spawn kube-controller-manager "$PREFIX-control" "$bin/kube-controller-manager" \
    --kubeconfig "$dir/kubeconfig" --authentication-kubeconfig "$dir/kubeconfig" \
    --authorization-kubeconfig "$dir/kubeconfig" --bind-address 127.0.0.1 --secure-port "$(free_port)" \
    --leader-elect=false --root-ca-file "$cert/ca.crt" --service-account-private-key-file "$cert/sa.key" \
    --use-service-account-credentials=false --node-monitor-grace-period 20s --v 0
  local i
  for i in $(seq "$nodes"); do start_node "$PREFIX-$i" "$i"; done
  local_volumes 12
  for i in $(seq "$nodes"); do
    wait_for 90 "node $PREFIX-$i Ready" kctl wait --for=condition=Ready "node/$PREFIX-$i" --timeout 1s
  done
  # Pods run under a ServiceAccount the controller-manager creates in each namespace.
  wait_for 30 "default ServiceAccount" kctl get serviceaccount default
}

# kill_tree CGROUP: SIGKILL every process in CGROUP and below, until none is left.
kill_tree() {
  local procs
  for _ in $(seq 50); do
    procs=$(find "/sys/fs/cgroup/pids/$1" -name cgroup.procs -exec cat {} + 2>/dev/null || true)
    [[ -z $procs ]] && return 0
    kill -9 $procs 2>/dev/null || true
    sleep 0.1
  done
  echo "node: processes left in cgroup $1: $procs" >&2
}

stop() {
  dir=$1
  # Only the cluster that started the nodes removes them (a cluster without nodes has none).
  [[ -e $OWNER && $(cat "$OWNER") == "$dir" ]] || return 0
  local name pidfile
  # The kubelets first, so nothing restarts the containers being killed.
  for pidfile in "$dir"/*-kubelet.pid "$dir"/kube-scheduler.pid "$dir"/kube-controller-manager.pid "$dir"/*-containerd.pid; do
    [[ -f $pidfile ]] || continue
    kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  sleep 0.5
  local g
  for g in $(cd /sys/fs/cgroup/pids && ls -d "$PREFIX"-* 2>/dev/null); do kill_tree "$g"; done
  rm -f "$dir"/*-kubelet.pid "$dir"/kube-scheduler.pid "$dir"/kube-controller-manager.pid "$dir"/*-containerd.pid
  # Deepest mount first: volumes, tokens, overlay rootfs, shm.
  local m
  for m in $(awk -v d="$dir/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m"
  done
  for name in $(ip -o link show type bridge | awk -F': ' '{print $2}' | grep "^$PREFIX-" || true); do
    ip link del "$name"
  done
  # Cgroups go deepest first (rmdir of an empty cgroup is how they are removed).
  # (The kubelet also makes its cgroups in the v2 hierarchy, hence every folder here.)
  local h
  for h in /sys/fs/cgroup/*/; do
    find "$h" -depth -mindepth 1 -path "$h$PREFIX-*" -type d -exec rmdir {} + 2>/dev/null || true
  done
  rm -f "$OWNER"
}

# Names of what this script creates on the machine (netdevs, cgroups, node names, label value).
PREFIX=${NODE_PREFIX:-arnode}
HOST_LABEL=autoresearch.test/machine
PAUSE_IMAGE=registry.k8s.io/pause:3.10
OWNER=/run/autoresearch-node.owner

case ${1:-} in
  start) start "$(cd "$2" && pwd)" "${3:-1}" ;;
  # The folder may be gone already (a watchdog's late cleanup): the path is enough.
  stop) stop "$(realpath -m "$2")" ;;
  *) echo "usage: $0 start DIR NODES | stop DIR" >&2; exit 2 ;;
esac
