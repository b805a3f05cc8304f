#!/usr/bin/env bash
# End-to-end check of kube-lab with kubectl: readiness, scheduling onto a
# hand-made Node, EndpointSlices, service-account tokens and TokenReview,
# garbage collection, namespace deletion, restart with the same data dir, and
# 410 Gone after etcd compaction. Ends with "N passed, N failed".
#
#   tools/kube/smoke.sh [path/to/kube-lab]     (default: tools/build.sh output)
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=${1:-$("$here/../build.sh" kube-lab)}
command -v kubectl >/dev/null || { echo "smoke.sh: kubectl not found" >&2; exit 1; }
work=$(mktemp -d)
export KUBECONFIG=$work/kubeconfig
pass=0 fail=0 pid=
ok()  { echo "PASS: $*"; pass=$((pass + 1)); }
bad() { echo "FAIL: $*"; fail=$((fail + 1)); }
check() { local what=$1; shift; if "$@" >/dev/null 2>&1; then ok "$what"; else bad "$what"; fi; }
# until SECONDS CMD...: retry CMD every 0.5s
until_() { local end=$((SECONDS + $1)); shift; until "$@" >/dev/null 2>&1; do
  [ $SECONDS -ge $end ] && return 1; sleep 0.5; done; }
k() { kubectl --request-timeout=10s "$@"; }

start() {   # start [kube-lab flags...]; sets pid, prints time to ready
  local t0; t0=$(date +%s.%N)
  : >"$work/stdout"   # truncated here, not in the background child: no stale "ready"
  "$bin" --data-dir "$work/data" --kubeconfig-out "$KUBECONFIG" --admin-addr 127.0.0.1:0 "$@" \
    >>"$work/stdout" 2>>"$work/stderr" &
  pid=$!
  until_ 120 grep -q '^ready ' "$work/stdout" || { bad "kube-lab ready"; tail -20 "$work/stderr"; return 1; }
  admin=$(awk '$1 == "admin" { print $2 }' "$work/stdout")
  ok "kube-lab ready in $(printf '%.1f' "$(echo "$(date +%s.%N) - $t0" | bc)")s ($*)"
}
stop() {
  local t0=$SECONDS
  kill -TERM "$pid"; wait "$pid"; local rc=$?
  if [ $rc -eq 0 ]; then ok "clean stop in $((SECONDS - t0))s"; else bad "stop exited $rc"; tail -20 "$work/stderr"; fi
}
cleanup() { [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
# A watch on default/configmaps from $rv0, one second long; an expired
# resourceVersion shows as an ERROR event with "code":410.
cm_watch() { k get --raw "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=$rv0&timeoutSeconds=1" 2>&1; }
watch_gone() { cm_watch | grep -q '"code":410'; }
watch_served() { cm_watch | grep -q probe-1; }
list_rv() { k get --raw "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["metadata"]["resourceVersion"])'; }

start || exit 1
check "/readyz ok" test "$(k get --raw /readyz)" = ok
pinned=$(awk '$1 == "k8s.io/kubernetes" { print $2 }' "$here/go.mod")
check "server version is $pinned" test "$(k get --raw /version | python3 -c 'import json,sys; print(json.load(sys.stdin)["gitVersion"])')" = "$pinned"
kcfg_before=$(sha256sum <"$KUBECONFIG")

k create namespace demo >/dev/null
k apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: Node
metadata: {name: node-1, labels: {kubernetes.io/hostname: node-1}}
EOF
k patch node node-1 --subresource=status --type=merge -p '{"status":{
  "capacity":{"cpu":"8","memory":"16Gi","pods":"110"},"allocatable":{"cpu":"8","memory":"16Gi","pods":"110"},
  "conditions":[{"type":"Ready","status":"True","reason":"KubeletReady","message":"hand-made"}],
  "addresses":[{"type":"InternalIP","address":"10.0.0.11"}]}}' >/dev/null
k apply -f - >/dev/null <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: demo}
spec:
  replicas: 2
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      terminationGracePeriodSeconds: 2
      containers: [{name: echo, image: example.invalid/echo:1, ports: [{containerPort: 8080}]}]
EOF
bound() { [ "$(k -n demo get pods -l app=echo -o jsonpath='{range .items[*]}{.spec.nodeName}{" "}{end}')" = "node-1 node-1 " ]; }
if until_ 60 bound; then ok "2 pods created and bound to node-1"; else bad "pods bound"; k -n demo get pods -o wide; fi

k -n demo create service clusterip echo --tcp=80:8080 >/dev/null
i=10
for p in $(k -n demo get pods -l app=echo -o name); do
  i=$((i + 1)); now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  k -n demo patch "$p" --subresource=status --type=merge -p "{\"status\":{\"phase\":\"Running\",
    \"podIP\":\"10.244.0.$i\",\"podIPs\":[{\"ip\":\"10.244.0.$i\"}],\"hostIP\":\"10.0.0.11\",
    \"conditions\":[{\"type\":\"Ready\",\"status\":\"True\",\"lastTransitionTime\":\"$now\"},
                    {\"type\":\"ContainersReady\",\"status\":\"True\",\"lastTransitionTime\":\"$now\"}]}}" >/dev/null
done
slice() { [ "$(k -n demo get endpointslices -l kubernetes.io/service-name=echo \
  -o jsonpath='{range .items[*].endpoints[?(@.conditions.ready==true)]}{.addresses[0]}{" "}{end}')" = "10.244.0.11 10.244.0.12 " ]; }
if until_ 30 slice; then ok "EndpointSlice lists both ready pod IPs"; else bad "EndpointSlice"; k -n demo get endpointslices -o yaml; fi

k -n demo create serviceaccount ztunnel >/dev/null
token=$(k -n demo create token ztunnel --audience istio-ca)
# review TOKEN AUDIENCE [JSONPATH]: create a TokenReview, print fields of its status
review() { k create -o jsonpath="${3:-"{.status.authenticated} {.status.user.username}"}" -f - <<EOF
{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{"token":"$1","audiences":["$2"]}}
EOF
}
check "TokenReview [istio-ca] authenticates the SA token" test "$(review "$token" istio-ca)" = "true system:serviceaccount:demo:ztunnel"
check "TokenReview [other] rejects it" test "$(review "$token" other | cut -d' ' -f1)" != true
pod=$(k -n demo get pods -l app=echo -o jsonpath='{.items[0].metadata.name}')
ptoken=$(k -n demo create token default --audience istio-ca --bound-object-kind Pod --bound-object-name "$pod")
check "pod-bound token reviews with its pod name" test "$(review "$ptoken" istio-ca \
  "{.status.user.username} {.status.user.extra['authentication\.kubernetes\.io/pod-name'][0]}")" = "system:serviceaccount:demo:default $pod"

k -n demo delete deployment echo --wait=false >/dev/null
gone() { [ -z "$(k -n demo get rs,pods -l app=echo -o name)" ]; }
if until_ 60 gone; then ok "ReplicaSet and Pods garbage-collected after Deployment delete"; else bad "GC"; k -n demo get rs,pods; fi

rv0=$(list_rv /api/v1/namespaces/default/configmaps)
k create configmap probe-1 >/dev/null
check "watch from a recent RV is served" watch_served

k create namespace doomed >/dev/null
until_ 30 k -n doomed get serviceaccount default
k -n doomed run lone --image=x --overrides='{"spec":{"nodeName":"node-1"}}' >/dev/null
k delete namespace doomed --wait=false >/dev/null
check "namespace with a bound pod is deleted (reaper finishes the pod)" until_ 90 sh -c '! kubectl get namespace doomed'

echo "RSS after ready: $(($(ps -o rss= -p "$pid") / 1024)) MiB"
stop

# Restart with the same data dir: same port, certs, kubeconfig and objects.
start || exit 1
check "kubeconfig unchanged across restart" test "$(sha256sum <"$KUBECONFIG")" = "$kcfg_before"
check "objects survive restart" k -n demo get serviceaccount ztunnel
check "old SA token still validates" test "$(review "$token" istio-ca | cut -d' ' -f1)" = true
check "watch from a pre-restart RV gets 410 (watch cache restarted)" watch_gone
stop

# Without the watch cache, watches reach etcd: compaction turns them into 410.
start --watch-cache=false || exit 1
check "watch from old RV is served before compaction" watch_served
compact=$(curl -sS -X POST "$admin/compact")
check "POST /compact answers a revision ($compact)" grep -q '"revision":[0-9]' <<<"$compact"
check "watch from old RV gets 410 Gone after compaction" watch_gone
stop

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
