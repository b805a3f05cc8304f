// Upstream CustomResourceDefinitions the end-to-end tests install into kube-lab
// (see tools/kube/README.md): not built, only downloaded by tools/build.sh into
// the Go module cache, whose copies the tests read.
module ambient-rs/tools/crds

go 1.26.0

require (
	istio.io/api v1.32.0 // kubernetes/customresourcedefinitions.gen.yaml
	sigs.k8s.io/gateway-api v1.6.3 // config/crd/standard/*.yaml
)
