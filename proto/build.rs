//! Compiles the .proto files with protox (pure Rust), so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/istio/workload/workload.proto",
        "proto/istio/security/authorization.proto",
        "proto/istio/zds/zds.proto",
        "proto/istio/ca/ca.proto",
        "proto/ambient/waypoint/v1/waypoint.proto",
        "proto/ambient/rollout/v1/health.proto",
        "proto/ambient/mesh/v1/mesh.proto",
        "proto/envoy/service/discovery/v3/discovery.proto",
        "proto/opentelemetry/proto/collector/trace/v1/trace_service.proto",
        "proto/opentelemetry/proto/collector/logs/v1/logs_service.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        // Ordered maps encode deterministically, so a resource's bytes (and the version
        // hashed from them) only change when its content does.
        .btree_map(".")
        // Our own well-known types, so `Any.value` can be `Bytes`: a resource encoded once is
        // then shared by every client's response instead of copied into each.
        .compile_well_known_types(true)
        .bytes(".google.protobuf.Any.value")
        .extern_path(".google.protobuf.Empty", "()")
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
