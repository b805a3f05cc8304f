#!/usr/bin/env bash
# Builds the Go tools that tests and the local mesh run beside ambient-rs,
# into a cache outside the clone, and prints the path of each binary.
#
#   tools/build.sh            # every tool
#   tools/build.sh kube-lab   # only the ones named (kube-lab, kubectl, crds, cni, helm, jaeger)
#   tools/build.sh crds       # only download the upstream CRD modules (tools/crds)
#
# Binaries: ${AMBIENT_TOOLS_DIR:-~/.cache/ambient-rs/tools}/bin.
# Go caches: GOMODCACHE / GOCACHE as the user set them (environment or
# `go env -w`), else under ~/.cache/ambient-rs/go. Needs only Go >= 1.26 and
# the Go module proxy. A tool is rebuilt only when its go.mod, go.sum or a .go
# file (or this script) is newer than its binary, so a warm run takes seconds.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tools_dir=${AMBIENT_TOOLS_DIR:-$HOME/.cache/ambient-rs/tools}
bin_dir=$tools_dir/bin
go_dir=$HOME/.cache/ambient-rs/go
mkdir -p "$bin_dir"

command -v go >/dev/null || { echo "build.sh: go not found on PATH" >&2; exit 1; }
for v in GOMODCACHE GOCACHE; do
  if [ -z "${!v:-}" ] && [ -z "$(go env -changed "$v")" ]; then
    export "$v=$go_dir/${v#GO}"   # .../go/MODCACHE, .../go/CACHE
  fi
done
# go.sum pins every module; never let a build edit go.mod/go.sum.
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=readonly"

# One build at a time, also across concurrent callers (parallel test setups):
# the machine has 2 cores and a Kubernetes build wants both.
exec 9>"$tools_dir/.build.lock"
command -v flock >/dev/null && flock 9

# build_go NAME MODULE_DIR PACKAGE [LDFLAGS...]
build_go() {
  local name=$1 dir=$here/$2 pkg=$3; shift 3
  local out=$bin_dir/$name
  if [ -x "$out" ] && [ ! "${BASH_SOURCE[0]}" -nt "$out" ] && [ -z "$(find "$dir" \
      \( -name '*.go' -o -name go.mod -o -name go.sum \) -newer "$out" -print -quit)" ]; then
    echo "$out"
    return
  fi
  echo "build.sh: building $name (a cold Kubernetes build takes ~10 min on 2 cores)" >&2
  local t0=$SECONDS
  (cd "$dir" && go build -trimpath -ldflags="-s -w $*" -o "$out.tmp" "$pkg")
  mv -f "$out.tmp" "$out"
  echo "build.sh: built $name in $((SECONDS - t0))s" >&2
  echo "$out"
}

# Kubernetes reads its own version from variables that only the linker can
# set; without them /version says v0.0.0-master and version checks (kubectl,
# helm's kubeVersion) fail.
kube_version_ldflags() {
  local v major minor p
  v=$(awk '$1 == "k8s.io/kubernetes" { print $2 }' "$here/kube/go.mod")
  major=${v#v}; major=${major%%.*}
  minor=${v#v*.}; minor=${minor%%.*}
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    printf -- '-X %s.gitVersion=%s -X %s.gitMajor=%s -X %s.gitMinor=%s -X %s.gitTreeState=clean -X %s.buildDate=1970-01-01T00:00:00Z ' \
      "$p" "$v" "$p" "$major" "$p" "$minor" "$p" "$p"
  done
}

# go_modules NAME FOLDER: downloads the modules FOLDER/go.mod requires (pinned by its
# go.sum; nothing is built) into GOMODCACHE, writes one "MODULE VERSION DIR" line per
# module to $tools_dir/NAME.txt, where tests look them up, and prints that path.
go_modules() {
  local name=$1 dir=$here/$2 out=$tools_dir/$1.txt mods
  mods=$(cd "$dir" && go mod edit -print | awk '/^\t[a-z]/ { print $1 }')
  # shellcheck disable=SC2086 # one word per module
  (cd "$dir" && go mod download $mods &&
    go list -m -f '{{.Path}} {{.Version}} {{.Dir}}' $mods) >"$out.tmp"
  mv -f "$out.tmp" "$out"
  echo "$out"
}

selected=("$@")
build() { if [ ${#selected[@]} -eq 0 ] || [[ " ${selected[*]} " == *" $1 "* ]]; then "${@:2}"; fi; }

# --- one stanza per tool: a folder here with its own go.mod/go.sum pinning it --
# build NAME build_go BINARY FOLDER PACKAGE [LDFLAGS...]
build kube-lab build_go kube-lab kube . $(kube_version_ldflags)
# kubectl of the same release (the machine's own may be several minors older than the
# server, beyond the supported skew); a `tool` of the kube-lab module, sharing its pins.
build kubectl build_go kubectl kube k8s.io/kubernetes/cmd/kubectl $(kube_version_ldflags)
# Upstream CRDs (Gateway API, Istio) that the Kubernetes e2e tests install: modules only.
build crds go_modules crds crds
# The reference CNI plugins (bridge, host-local, loopback) and libcni's runtime (cnitool),
# which the CNI tests chain our plugin behind: CNI_PATH=$bin_dir/cni.
build_cni() {
  mkdir -p "$bin_dir/cni"
  build_go cni/cnitool cni github.com/containernetworking/cni/cnitool
  local p
  for p in main/bridge main/loopback ipam/host-local; do
    build_go "cni/${p#*/}" cni "github.com/containernetworking/plugins/plugins/$p"
  done
}
build cni build_cni
# Helm, for the chart tests (helm lint, helm template).
build helm build_go helm helm helm.sh/helm/v4/cmd/helm
# Jaeger's all-in-one program (OTLP gRPC and HTTP receivers, in-memory storage, the query
# API), which the tracing test exports the waypoints' spans to.
build jaeger build_go jaeger jaeger github.com/jaegertracing/jaeger/cmd/jaeger
