//go:build tools

// The reference CNI plugins and libcni's command-line runtime, which the CNI tests chain our
// plugin behind (see tools/build.sh). Nothing here is ours to build; this file pins them.
package tools

import (
	_ "github.com/containernetworking/cni/cnitool"
	_ "github.com/containernetworking/plugins/plugins/ipam/host-local"
	_ "github.com/containernetworking/plugins/plugins/main/bridge"
	_ "github.com/containernetworking/plugins/plugins/main/loopback"
)
