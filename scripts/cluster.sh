#!/usr/bin/env bash
# A real Kubernetes API server (kube-apiserver + etcd, built from Go modules) on loopback.
#
#   scripts/cluster.sh start DIR [--owner-pid PID [--remove-on-exit]] [--node | --nodes N]
#       start; writes DIR/kubeconfig, DIR/env (--remove-on-exit: the watchdog deletes DIR too)
#   scripts/cluster.sh stop DIR   stop, leaving no process, mount, netdev or cgroup behind
#
# Without --node: no controller-manager, scheduler or kubelet, so no pods run. CRDs, validation
# (CEL included), RBAC, status subresources, watches, leases and TokenRequest all work, which is
# what the operator talks to. With --node, scripts/node.sh adds the controller-manager, the
# scheduler and N (default 1) kubelets with containerd and runc: pods run (as root: it needs
# cgroups, mounts and a netdev). Images listed in NODE_IMAGES (OCI archives, space-separated) are
# imported into each node. With --owner-pid the cluster stops by itself when that process exits,
# so a test run that dies cannot leak servers.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

# shellcheck source=scripts/cluster-lib.sh
source "$root/scripts/cluster-lib.sh"

stop() {
  local dir=$1
  bash "$root/scripts/node.sh" stop "$dir"
  for name in watchdog kube-apiserver etcd; do
    local pidfile="$dir/$name.pid"
    [[ -f $pidfile ]] || continue
    local pid
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
}

# serving_cert DIR: a CA and the API server's certificate for every name a client uses (loopback
# from the host and hostNetwork pods, the in-cluster Service names). The controller-manager
# publishes ca.crt to pods (ConfigMap kube-root-ca.crt), so in-cluster clients verify the server.
serving_cert() {
  local d=$1
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=autoresearch-test-ca \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver -keyout "$d/apiserver.key" \
    -out "$d/apiserver.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\nextendedKeyUsage=serverAuth\n' >"$d/san.ext"
  openssl x509 -req -in "$d/apiserver.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -days 2 -extfile "$d/san.ext" -out "$d/apiserver.crt" 2>/dev/null
}

start() {
  dir=$1
  shift
  local owner="" nodes=0 remove=0
  while (($#)); do
    case $1 in
      --owner-pid) owner=$2; shift 2 ;;
      --remove-on-exit) remove=1; shift ;;
      --node) nodes=1; shift ;;
      --nodes) nodes=$2; shift 2 ;;
      *) echo "cluster: unknown option $1" >&2; return 2 ;;
    esac
  done
  local bin
  bin=$(bash "$root/scripts/build-kube.sh")
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  stop "$dir"
  rm -rf "$dir/etcd-data" "$dir/certs"
  mkdir -p "$dir/certs"

  local etcd_port peer_port api_port
  etcd_port=$(free_port)
  peer_port=$(free_port)
  api_port=$(free_port)

  # Credentials made fresh for each cluster: an admin token and the service-account signing key.
  local token
  token=$(openssl rand -hex 24)
  echo "$token,admin,admin,system:masters" >"$dir/certs/tokens.csv"
  openssl genrsa -out "$dir/certs/sa.key" 2048 2>/dev/null
  openssl rsa -in "$dir/certs/sa.key" -pubout -out "$dir/certs/sa.pub" 2>/dev/null
  serving_cert "$dir/certs"
  # Pods get their ServiceAccount token through this admission plugin; it needs the
  # controller-manager (which makes each namespace's default ServiceAccount), so only with nodes.
  local admission=(--disable-admission-plugins ServiceAccount)
  ((nodes == 0)) || admission=()

  "$bin/etcd" --data-dir "$dir/etcd-data" --name test \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "test=http://127.0.0.1:$peer_port" \
    --unsafe-no-fsync --log-level error >"$dir/etcd.log" 2>&1 &
  echo $! >"$dir/etcd.pid"
  wait_for 30 etcd curl -sf "http://127.0.0.1:$etcd_port/health"

  "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --tls-cert-file "$dir/certs/apiserver.crt" --tls-private-key-file "$dir/certs/apiserver.key" \
    --service-cluster-ip-range 10.0.0.0/24 \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$dir/certs/sa.pub" \
    --service-account-signing-key-file "$dir/certs/sa.key" \
    --authorization-mode RBAC \
    --kubelet-preferred-address-types InternalIP \
    --token-auth-file "$dir/certs/tokens.csv" \
    "${admission[@]}" \
    --enable-priority-and-fairness=false \
    --v 0 >"$dir/kube-apiserver.log" 2>&1 &
  echo $! >"$dir/kube-apiserver.pid"
  wait_for 90 kube-apiserver curl -skf -H "Authorization: Bearer $token" "https://127.0.0.1:$api_port/readyz"

  cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: https://127.0.0.1:$api_port
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: $token
contexts:
- name: test
  context: {cluster: test, user: admin, namespace: default}
current-context: test
EOF
  echo "export KUBECONFIG=$dir/kubeconfig" >"$dir/env"
  # The default namespace is created by the API server's own bootstrap controller, shortly after
  # readyz: wait so the first test does not race it.
  wait_for 30 "default namespace" env KUBECONFIG="$dir/kubeconfig" kubectl get namespace default
  ((nodes == 0)) || bash "$root/scripts/node.sh" start "$dir" "$nodes"

  if [[ -n $owner ]]; then
    # The watchdog remembers the PIDs itself: it must work even if the folder is already gone.
    local api_pid etcd_pid
    api_pid=$(cat "$dir/kube-apiserver.pid")
    etcd_pid=$(cat "$dir/etcd.pid")
    (
      trap '' HUP INT
      while kill -0 "$owner" 2>/dev/null && kill -0 "$api_pid" 2>/dev/null; do sleep 1; done
      ((nodes == 0)) || bash "$root/scripts/node.sh" stop "$dir"
      kill "$api_pid" "$etcd_pid" 2>/dev/null
      sleep 3
      kill -9 "$api_pid" "$etcd_pid" 2>/dev/null
      # After the node's stop has unmounted everything; one file system only all the same.
      ((remove == 0)) || rm -rf --one-file-system "$dir"
    ) </dev/null >/dev/null 2>&1 &
    echo $! >"$dir/watchdog.pid"
  fi
  echo "$dir/kubeconfig"
}

case ${1:-} in
  start) shift; start "$@" ;;
  stop) stop "$(realpath -m "$2")" ;;
  *) echo "usage: $0 start DIR [--owner-pid PID [--remove-on-exit]] [--node | --nodes N] | stop DIR" >&2; exit 2 ;;
esac
