#!/usr/bin/env bash
# Prints a kubeconfig that authenticates as a ServiceAccount, with a token minted by the
# TokenRequest API (`kubectl create token`), for the cluster of the current kubeconfig.
# Use it to run the controller (or kubectl) with exactly the chart's permissions.
#
#   scripts/sa-kubeconfig.sh NAMESPACE SERVICEACCOUNT [DURATION] > sa.kubeconfig
#   KUBECONFIG=sa.kubeconfig kubectl auth can-i --list
#
# DURATION defaults to 1h. KUBECONFIG (or ~/.kube/config) must allow creating serviceaccounts/token.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  sed -n '2,9p' "$0" >&2
  exit 2
fi
namespace=$1 sa=$2 duration=${3:-1h}
kubectl=${KUBECTL:-kubectl}

field() { "$kubectl" config view --raw --minify --flatten -o "jsonpath={.clusters[0].cluster.$1}"; }
server=$(field server)
ca=$(field certificate-authority-data)
insecure=$(field insecure-skip-tls-verify)
token=$("$kubectl" create token "$sa" --namespace "$namespace" --duration "$duration")

if [[ -n $ca ]]; then
  tls="certificate-authority-data: $ca"
elif [[ $insecure == true ]]; then
  tls="insecure-skip-tls-verify: true"
else
  tls=""
fi
cat <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: cluster
  cluster:
    server: $server
    $tls
users:
- name: $sa
  user:
    token: $token
contexts:
- name: $sa
  context: {cluster: cluster, user: $sa, namespace: $namespace}
current-context: $sa
KUBECONFIG
