#!/usr/bin/env bash
# Builds ambient-rs's release programs and writes its four OCI images into one image layout
# (no Docker): ambient-controller, ztunnel, node-agent (with the CNI plugin) and waypoint.
#
#   images/build.sh                      tag = the workspace version, layout in the target dir
#   images/build.sh --tag v1 --out DIR
#
# Then, for example: skopeo copy oci:DIR:ztunnel:v1 docker://registry.example/ambient-rs/ztunnel:v1
# and `ambientctl install --image-hub registry.example/ambient-rs --tag v1`.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-$HOME/.cache/ambient-rs/target}
out=$target/oci
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --tag) args+=(--tag "$2"); shift 2 ;;
    *) echo "usage: images/build.sh [--tag TAG] [--out DIR]" >&2; exit 2 ;;
  esac
done
CARGO_TARGET_DIR=$target cargo build --release -p ambient-controller -p ztunnel -p waypoint -p ambient-images
"$target/release/build-images" --bin-dir "$target/release" --out "$out" --strip "${args[@]}"
