#!/usr/bin/env bash
# make demo: the seed's scenario ("Use Kubernetes RBAC with Microsoft Entra ID in
# AKS") done by the operator on a local control plane.
#
# Builds what it needs, starts a control plane, installs the CRD, starts the Graph
# emulator with the seed's groups and users, runs the operator against it through
# the same Graph code path it uses against Azure (DIRECTORY=static uses the static
# directory instead), applies the seed's two TeamAccess objects, waits for Ready
# and prints the access matrix as the API server decides it, and the Azure role
# assignments the operator made through the emulator's Azure Resource Manager
# (each group's "Azure Kubernetes Service Cluster User Role" on the cluster).
# The operator runs with the chart's default namespace profile, so the seed's
# namespaces arrive with Pod Security "restricted", a quota, default limits and
# same-namespace ingress, and the demo shows a privileged pod refused in dev.
# Then it cleans up; KEEP=1 leaves everything running.
#
# NODE=1 (root) runs the operator as users do: the image made as the Dockerfile
# makes it (scripts/image.sh), installed with the Helm chart as a pod on a real
# node added to the control plane (cluster.sh node-up), reaching the emulator at
# the node's IP. Without it the operator runs as a process on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
seed="$root/deploy/examples/seed"
started=$SECONDS

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

directory_kind="${DIRECTORY:-graph}"
on_node="${NODE:-0}"
if [[ "$on_node" == 1 ]]; then
  [[ $EUID -eq 0 ]] || { echo "NODE=1 needs root: the node runs a kubelet and containerd" >&2; exit 1; }
  [[ "$directory_kind" == graph ]] || { echo "NODE=1 runs the chart with the Graph directory; drop DIRECTORY=$directory_kind" >&2; exit 1; }
fi
# The emulated AKS cluster whose "Azure Kubernetes Service Cluster User Role" the groups get.
aks_cluster_id="/subscriptions/6f1e2d3c-4b5a-4987-8a6b-5c4d3e2f1a0b/resourceGroups/rg-contoso/providers/Microsoft.ContainerService/managedClusters/aks-contoso"
say "building the operator and the Azure emulator (Entra ID, Graph, ARM)"
cargo build --locked --quiet -p teamaccess-operator -p azure-emulator
target_dir="$(cd "${CARGO_TARGET_DIR:-$root/target}" && pwd)"
operator="$target_dir/debug/teamaccess-operator"

say "building the local control plane (cached after the first run)"
# kubectl from the same Kubernetes release as the control plane: no version skew.
cluster_bin="$(tests/cluster/cluster.sh bin | tail -n 1)"
export PATH="$cluster_bin:$PATH"

say "starting a local control plane"
line="$(tests/cluster/cluster.sh up | tail -n 1)"
export KUBECONFIG="${line#KUBECONFIG=}"
state="$(dirname "$KUBECONFIG")"
operator_pid=""
emulator_pid=""
release=""

cleanup() {
  local rc=$?
  if [[ "${KEEP:-}" == 1 && $rc -eq 0 ]]; then
    return
  fi
  say "cleaning up"
  if [[ -n "$release" ]]; then
    # Delete while the operator's pod runs, so its finalizer removes what it created.
    kubectl delete teamaccess appdev-dev opssre-sre --ignore-not-found --wait=true --timeout=60s || true
    if [[ $rc -ne 0 ]]; then
      kubectl -n teamaccess-system logs "deployment/$release" --tail=40 || true
    fi
    helm uninstall "$release" -n teamaccess-system --wait || true
  fi
  if [[ -n "$operator_pid" ]] && kill -0 "$operator_pid" 2>/dev/null; then
    # Delete while the operator runs, so its finalizer removes what it created.
    kubectl delete teamaccess appdev-dev opssre-sre --ignore-not-found --wait=true --timeout=60s || true
    kill "$operator_pid" 2>/dev/null || true
    wait "$operator_pid" 2>/dev/null || true
  fi
  if [[ -n "$emulator_pid" ]]; then
    kill "$emulator_pid" 2>/dev/null || true
  fi
  tests/cluster/cluster.sh down || true  # removes the node too
  if [[ $rc -ne 0 && -f "$state/operator.log" ]]; then
    echo "operator log (last lines):"
    tail -n 40 "$state/operator.log" || true
  fi
}
trap cleanup EXIT

if [[ "$on_node" == 1 ]]; then
  say "adding a real node (kubelet, containerd, runc) to the control plane"
  tests/cluster/cluster.sh node-up >/dev/null
  kubectl get nodes -o wide
  say "building the image as the Dockerfile does (static musl binary, CA certificates, uid 65532) and loading it into the node"
  archive="$(scripts/image.sh | tail -n 1)"
  tests/cluster/cluster.sh node-load "$archive"
else
  say "installing the TeamAccess CRD"
  kubectl apply -f crds/teamaccess.yaml
  kubectl wait --for=condition=Established crd/teamaccesses.teamaccess.dev --timeout=30s
  say "installing the admission policy: a TeamAccess author grants only what they could grant directly"
  kubectl apply --server-side -f deploy/admission-policy.yaml
fi

# The chart's default namespace profiles, as its ConfigMap carries them.
profiles="$state/namespace-profiles.yaml"
helm template teamaccess-operator charts/teamaccess-operator --show-only templates/namespace-profiles-configmap.yaml |
  kubectl create --dry-run=client -f - -o jsonpath='{.data.profiles\.yaml}' >"$profiles"

# Starts the emulator with the seed's tenant on the given address; its files
# (URLs, CA, tenant and client) land in $emu.
emu="$state/azure-emulator"
start_emulator() {
  "$target_dir/debug/azure-emulator" --directory-file "$seed/directory.yaml" --state-dir "$emu" --listen-address "$1" \
    >"$state/azure-emulator.log" 2>&1 &
  emulator_pid=$!
  for _ in $(seq 1 50); do [[ -s "$emu/url" ]] && break; sleep 0.1; done
  [[ -s "$emu/url" ]] || { cat "$state/azure-emulator.log"; echo "the Graph emulator did not start" >&2; exit 1; }
  echo "Entra ID and Graph at $(cat "$emu/url"), Azure Resource Manager at $(cat "$emu/arm-url") (CA $emu/ca.crt)"
}

if [[ "$on_node" == 1 ]]; then
  node_ip="$(kubectl get node teamaccess-node -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')"
  say "starting the Graph emulator on the node's IP $node_ip, so that pods reach it"
  start_emulator "$node_ip"

  say "helm install: the chart with its CRD and admission policy, the operator as a pod"
  kubectl create namespace teamaccess-system
  kubectl -n teamaccess-system create configmap graph-ca --from-file=ca.crt="$emu/ca.crt"
  kubectl -n teamaccess-system create secret generic azure-client --from-file=client-secret="$emu/client-secret"
  release=teamaccess-operator
  helm install "$release" charts/teamaccess-operator -n teamaccess-system --wait --timeout 120s \
    --set image.repository=localhost/teamaccess-operator --set image.tag=dev \
    --set graph.endpoint="$(cat "$emu/url")" --set graph.authorityHost="$(cat "$emu/url")" --set graph.caConfigMap=graph-ca \
    --set azure.tenantId="$(cat "$emu/tenant-id")" --set azure.clientId="$(cat "$emu/client-id")" \
    --set azure.credential=secret --set azure.clientSecret.existingSecret=azure-client \
    --set azure.clusterResourceId="$aks_cluster_id" --set azure.armEndpoint="$(cat "$emu/arm-url")" \
    --set membershipPoll=5s >/dev/null
  kubectl -n teamaccess-system get pods -o wide
elif [[ "$directory_kind" == static ]]; then
  say "starting the operator (static directory: $seed/directory.yaml)"
  cp "$seed/directory.yaml" "$state/directory.yaml"
  "$operator" run --directory static --directory-file "$state/directory.yaml" --resync 10m \
    --namespace-profiles "$profiles" \
    --metrics-addr 127.0.0.1:0 \
    >"$state/operator.log" 2>&1 &
  operator_pid=$!
else
  say "starting the Graph emulator with the seed's tenant ($seed/directory.yaml)"
  start_emulator 127.0.0.1

  say "starting the operator (Microsoft Graph directory, client-secret credential, the AKS cluster's Cluster User Role)"
  AZURE_TENANT_ID="$(cat "$emu/tenant-id")" AZURE_CLIENT_ID="$(cat "$emu/client-id")" \
    "$operator" run --directory graph --credential secret --client-secret-file "$emu/client-secret" \
    --graph-endpoint "$(cat "$emu/url")" --authority-host "$(cat "$emu/url")" --ca-file "$emu/ca.crt" \
    --aks-cluster-resource-id "$aks_cluster_id" --arm-endpoint "$(cat "$emu/arm-url")" \
    --namespace-profiles "$profiles" --resync 10m --membership-poll 5s --metrics-addr 127.0.0.1:0 \
    >"$state/operator.log" 2>&1 &
  operator_pid=$!
fi

if [[ "$on_node" != 1 ]]; then
  for _ in $(seq 1 100); do grep -qs "starting the TeamAccess controller" "$state/operator.log" && break; sleep 0.1; done
  grep -q "starting the TeamAccess controller" "$state/operator.log" || { cat "$state/operator.log"; echo "the operator did not start" >&2; exit 1; }
  grep -E "using the|connected to" "$state/operator.log" | sed 's/^/  /'
  for _ in $(seq 1 50); do grep -qs "serving /metrics" "$state/operator.log" && break; sleep 0.1; done
  metrics_port=$(grep -o 'serving /metrics.*addr=[0-9.]*:[0-9]*' "$state/operator.log" | grep -o '[0-9]*$')
fi

say "waiting until the authorship policy stamps who writes each TeamAccess"
scripts/wait-authorship.sh teamaccess-operator

say "applying the seed's two TeamAccess objects"
applied_at=$(date +%s.%N)
kubectl apply -f "$seed/teamaccesses.yaml"
kubectl wait --for=condition=Ready teamaccess/appdev-dev teamaccess/opssre-sre --timeout=60s
ready_at=$(date +%s.%N)
awk -v a="$applied_at" -v r="$ready_at" 'BEGIN { printf "both Ready %.2fs after apply\n", r - a }'

say "kubectl get teamaccess -o wide"
kubectl get teamaccess -o wide

appdev_id=$(kubectl get teamaccess appdev-dev -o jsonpath='{.status.group.objectId}')
opssre_id=$(kubectl get teamaccess opssre-sre -o jsonpath='{.status.group.objectId}')

say "access matrix, as the API server decides it (kubectl auth can-i --as <upn> --as-group <objectId>)"
printf '%-22s %-46s %-8s %s\n' "USER" "CHECK" "ANSWER" "EXPECTED"
failures=0
check() {
  local user="$1" group="$2" expected="$3"
  shift 3
  local answer
  answer=$(kubectl auth can-i "$@" --as "$user" --as-group "$group" 2>/dev/null || true)
  printf '%-22s %-46s %-8s %s\n' "$user" "$*" "$answer" "$expected"
  [[ "$answer" == "$expected" ]] || failures=$((failures + 1))
}
check aksdev@contoso.com "$appdev_id" yes create pods --namespace dev
check aksdev@contoso.com "$appdev_id" no create pods --namespace sre
check aksdev@contoso.com "$appdev_id" no list pods --all-namespaces
check akssre@contoso.com "$opssre_id" yes create pods --namespace sre
check akssre@contoso.com "$opssre_id" no create pods --namespace dev
check akssre@contoso.com "$opssre_id" no list pods --all-namespaces
# The namespace and its limits stay the admin's. A request on the Namespace
# object dev is authorized in namespace dev, as a RoleBinding there would see it.
check aksdev@contoso.com "$appdev_id" no delete namespaces/dev --namespace dev
check aksdev@contoso.com "$appdev_id" no patch namespaces/dev --namespace dev
check aksdev@contoso.com "$appdev_id" no delete resourcequotas --namespace dev
check aksdev@contoso.com "$appdev_id" yes get resourcequotas --namespace dev
if ((failures)); then
  echo "the access matrix differs from the seed's expectations in $failures place(s)" >&2
  exit 1
fi
echo "the access matrix matches the seed: each team gets in to its own namespace only"

say "the namespaces arrived with the chart's default namespace profile"
kubectl get namespace dev sre -o custom-columns='NAME:.metadata.name,POD-SECURITY:.metadata.labels.pod-security\.kubernetes\.io/enforce,PROFILE:.metadata.annotations.teamaccess\.dev/namespace-profile'
kubectl get resourcequota,limitrange,networkpolicy -n dev
for _ in $(seq 1 50); do kubectl get serviceaccount default -n dev >/dev/null 2>&1 && break; sleep 0.2; done
say "aksdev (appdev) tries to run a privileged pod in dev"
privileged=$(kubectl run root-shell -n dev --image=mcr.microsoft.com/oss/nginx/nginx:1.15.5-alpine --restart=Never \
  --overrides='{"spec":{"containers":[{"name":"root-shell","image":"mcr.microsoft.com/oss/nginx/nginx:1.15.5-alpine","securityContext":{"privileged":true}}]}}' \
  --as aksdev@contoso.com --as-group "$appdev_id" 2>&1 || true)
echo "$privileged" | fold -s -w 120 | sed 's/^/  /'
if ! grep -q 'violates PodSecurity "restricted:latest"' <<<"$privileged"; then
  echo "the namespace profile did not refuse a privileged pod" >&2
  exit 1
fi

if [[ "$directory_kind" != static ]]; then
  say "opssre switches to spec.bind Members: the RoleBinding names its people, and follows the directory"
  kubectl patch teamaccess opssre-sre --type merge -p '{"spec":{"bind":"Members"}}'
  for _ in $(seq 1 100); do
    [[ "$(kubectl get teamaccess opssre-sre -o jsonpath='{.status.members.total}')" == 1 ]] && break
    sleep 0.2
  done
  kubectl get teamaccess opssre-sre -o wide
  kubectl get rolebinding teamaccess-opssre-sre -n sre -o custom-columns='BINDING:.metadata.name,SUBJECTS:.subjects[*].name'
  for _ in $(seq 1 50); do
    [[ "$(kubectl auth can-i create pods -n sre --as akssre@contoso.com 2>/dev/null)" == yes ]] && break
    sleep 0.2
  done
  echo "akssre@contoso.com, with no groups claim at all: create pods in sre? $(kubectl auth can-i create pods -n sre --as akssre@contoso.com 2>/dev/null || true)"

  say "an admin removes akssre from opssre in Entra ID (the emulator); no token has to expire"
  akssre_id=9d4f1a27-6b3c-4e8d-a5f2-1c7b3e9d0a12
  curl -fsS --cacert "$emu/ca.crt" -H 'content-type: application/json' \
    -d "{\"group\":\"$opssre_id\",\"member\":\"$akssre_id\"}" "$(cat "$emu/url")/_emulator/members/remove"
  removed_at=$(date +%s.%N)
  revoked=""
  for _ in $(seq 1 150); do
    if [[ "$(kubectl auth can-i create pods -n sre --as akssre@contoso.com 2>/dev/null)" == no ]]; then
      revoked=$(date +%s.%N)
      break
    fi
    sleep 0.1
  done
  if [[ -z "$revoked" ]]; then
    echo "akssre still had access 15s after the removal" >&2
    exit 1
  fi
  awk -v a="$removed_at" -v r="$revoked" 'BEGIN { printf "akssre@contoso.com: create pods in sre? no, %.1fs after the removal (--membership-poll 5s)\n", r - a }'
  kubectl get teamaccess opssre-sre -o custom-columns='NAME:.metadata.name,MEMBERS:.status.members.total,SYNCED:.status.conditions[?(@.type=="MembersSynced")].reason'

  say "who can get into which namespace (teamaccess-operator access-report, for an admin)"
  AZURE_TENANT_ID="$(cat "$emu/tenant-id")" AZURE_CLIENT_ID="$(cat "$emu/client-id")" \
    "$operator" access-report --directory graph --credential secret --client-secret-file "$emu/client-secret" \
    --graph-endpoint "$(cat "$emu/url")" --authority-host "$(cat "$emu/url")" --ca-file "$emu/ca.crt" | sed 's/^/  /'

  say "Azure role assignments on the AKS cluster (the emulator's ARM), so members can fetch a kubeconfig"
  assignments=$(curl -fsS --cacert "$emu/ca.crt" "$(cat "$emu/url")/_emulator/role-assignments.tsv")
  role_id=4abbcc35-e782-43d8-92c5-2d3f1bd2253f
  printf '%-38s %-8s %-38s %s\n' "PRINCIPAL (GROUP)" "TEAM" "ROLE DEFINITION" "ASSIGNMENT"
  while IFS=$'\t' read -r principal role name _scope; do
    team="?"
    [[ "$principal" == "$appdev_id" ]] && team=appdev
    [[ "$principal" == "$opssre_id" ]] && team=opssre
    printf '%-38s %-8s %-38s %s\n' "$principal" "$team" "${role##*/}" "$name"
  done <<<"$assignments"
  echo "(role $role_id is the Azure Kubernetes Service Cluster User Role; scope $aks_cluster_id)"
  for id in "$appdev_id" "$opssre_id"; do
    held=$(grep -c "^$id"$'\t'".*/$role_id"$'\t' <<<"$assignments" || true)
    if [[ "$held" != 1 ]]; then
      echo "group $id holds the Cluster User Role $held times, not once" >&2
      exit 1
    fi
  done
  kubectl get teamaccess -o custom-columns='NAME:.metadata.name,CLUSTERUSERROLE:.status.conditions[?(@.type=="ClusterUserRole")].reason,ASSIGNMENT:.status.clusterUserRole.assignmentId'
fi

if [[ "$on_node" == 1 ]]; then
  pod="$(kubectl -n teamaccess-system get pods -l app.kubernetes.io/name=teamaccess-operator -o jsonpath='{.items[0].metadata.name}')"
  say "what it cost, from the operator pod's /metrics ($pod, through the API server)"
  metrics=$(kubectl get --raw "/api/v1/namespaces/teamaccess-system/pods/$pod:8080/proxy/metrics")
else
  say "what it cost, from the operator's /metrics (127.0.0.1:$metrics_port)"
  exec 3<>"/dev/tcp/127.0.0.1/$metrics_port"
  printf 'GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
  metrics=$(cat <&3)
  exec 3<&-
fi
grep -E '^teamaccess_(graph_requests_total|arm_requests_total|directory_cache_total|kube_requests_total)' <<<"$metrics" | sed 's/^/  /'
if [[ "$directory_kind" != static ]]; then
  for counter in 'graph_requests_total\{status="200"\}' 'directory_cache_total\{result="miss"\}'; do
    if ! grep -qE "^teamaccess_${counter} [1-9]" <<<"$metrics"; then
      echo "the operator's counter teamaccess_${counter} did not move" >&2
      exit 1
    fi
  done
fi

say "a user who may only write TeamAccess objects tries to grant cluster-admin"
kubectl create clusterrole teamaccess-demo-writer --verb=get,list,create,update,patch --resource=teamaccesses.teamaccess.dev \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl create clusterrolebinding teamaccess-demo-writer --clusterrole=teamaccess-demo-writer --user=mallory@contoso.com \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null
refusal=$(kubectl apply --as mallory@contoso.com -f - 2>&1 <<'YAML' || true
apiVersion: teamaccess.dev/v1alpha1
kind: TeamAccess
metadata: {name: mallory-victim}
spec:
  group: {displayName: appdev}
  namespace: victim
  clusterRole: cluster-admin
YAML
)
echo "$refusal" | fold -s -w 120 | sed 's/^/  /'
if ! grep -q "you cannot bind clusterroles.rbac.authorization.k8s.io/cluster-admin" <<<"$refusal"; then
  echo "the admission policy did not refuse the grant" >&2
  exit 1
fi

if [[ "${KEEP:-}" == 1 ]]; then
  say "left running (KEEP=1)"
  cat <<EOF
  export KUBECONFIG=$KUBECONFIG
  kubectl get teamaccess
  kubectl auth can-i create pods -n dev --as aksdev@contoso.com --as-group $appdev_id
  operator: ${release:+the pod of Helm release $release in teamaccess-system}${operator_pid:+pid $operator_pid, log $state/operator.log}
  stop it:  kill ${operator_pid} ${emulator_pid}; KUBECONFIG=$KUBECONFIG make cluster-down
EOF
fi
echo "demo finished in $((SECONDS - started))s"
