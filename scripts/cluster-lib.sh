# Helpers shared by scripts/cluster.sh and scripts/node.sh (sourced). Both set $dir, the
# cluster's folder, before calling wait_for.

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then
      echo "cluster: $what did not come up; see logs in $dir" >&2
      return 1
    fi
    sleep 0.2
  done
}
