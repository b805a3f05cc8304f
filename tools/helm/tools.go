//go:build tools

// Helm, which the chart tests run (helm lint, helm template; see tools/build.sh). This file
// only pins it.
package tools

import _ "helm.sh/helm/v4/cmd/helm"
