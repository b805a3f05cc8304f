//! What a configuration change costs a waypoint in a large mesh.
//!
//! The controller's own index builds the mesh (pods, services, namespaces, a waypoint and an
//! HTTPRoute per service in the namespaces that have one); a waypoint's stores are filled as
//! its xDS client fills them (every `Address`, every L7 resource, as the controller sends
//! them to a waypoint); then single-pod changes (a workload turning unhealthy and back, what
//! readiness flapping and rollouts send) are applied one at a time, and each is timed from
//! the update reaching the WDS store until the waypoint's routing is compiled again
//! (`Routing::rebuild`, which runs on the waypoint's main thread beside xDS and the accept
//! loop). In-process, one thread: no network in the figures.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ambient_controller::index::{self, IndexConfig};
use ambient_controller::model::{Change, ClusterState, Kind};
use ambient_controller::source::manifests::parse_file;
use ambient_proto::istio::workload as wds;
use anyhow::Context;
use prost::Message;
use proxy_core::state::{StateStore, Update};
use serde::Serialize;
use waypoint::fuzzing::{L7Store, Routing};

use crate::xds_scale::{Percentiles, percentiles, pod, service};

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    #[arg(long, default_value_t = 1_000)]
    services: usize,
    #[arg(long, default_value_t = 100)]
    namespaces: usize,
    /// Namespaces with a waypoint (the first ones); each of their services has an HTTPRoute
    /// (prefix and regular-expression path matches, a header regular expression, a split).
    #[arg(long, default_value_t = 100)]
    waypoint_namespaces: usize,
    /// Single-pod changes to time.
    #[arg(long, default_value_t = 400)]
    changes: usize,
    /// Write the figures here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Serialize)]
struct Results {
    pods: usize,
    services: usize,
    /// Services with L7 configuration (an HTTPRoute) in the waypoint's store.
    configured_services: usize,
    changes: usize,
    /// The first compilation, from empty.
    initial_rebuild_ms: f64,
    /// A pod's changed `Address` into the WDS store.
    store_apply_us: Percentiles,
    /// Then the routing compiled again (`Routing::rebuild`, from the previous routing).
    rebuild_ms: Percentiles,
    /// The same routing compiled from nothing (a fresh `Routing`).
    full_compile_ms: Percentiles,
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    anyhow::ensure!(
        opts.namespaces > 0 && opts.services >= opts.namespaces && opts.changes > 0,
        "need at least one namespace, a service per namespace and one change"
    );
    println!(
        "building the mesh: {} pods, {} services, {} namespaces ({} with a waypoint)",
        opts.pods,
        opts.services,
        opts.namespaces,
        opts.waypoint_namespaces.min(opts.namespaces)
    );
    // In files of 500 documents: the manifest reader refuses a file of more than 1,024.
    let documents = manifests(&opts);
    let mut objects = Vec::new();
    for (i, file) in documents.chunks(500).enumerate() {
        let parsed = parse_file(Path::new(&format!("mesh-{i}.yaml")), &file.concat(), None);
        anyhow::ensure!(
            parsed.diagnostics.is_empty(),
            "generated manifests: {:?}",
            parsed.diagnostics.first()
        );
        objects.extend(parsed.objects);
    }
    let mut cluster = ClusterState::default();
    cluster.apply(Change::replace(Kind::ALL.to_vec(), objects));
    let built = index::build(&cluster, &IndexConfig::default());

    // The waypoint's stores, as its xDS client fills them.
    let state = StateStore::new();
    let rejected = state.apply(Update {
        upserts: built.addresses.values().cloned().collect(),
        ..Default::default()
    });
    anyhow::ensure!(rejected.is_empty(), "WDS store rejected {rejected:?}");
    let l7 = L7Store::default();
    let errors = l7.apply(
        built
            .l7
            .iter()
            .map(|(name, r)| (name.clone(), r.encode_to_vec().into()))
            .collect(),
        &[],
    );
    anyhow::ensure!(errors.is_empty(), "L7 store rejected {errors:?}");
    let configured_services = l7.load().services.len();
    let gateway = "ns-0/waypoint";

    let routing = Routing::default();
    let started = Instant::now();
    routing.rebuild(gateway, &l7.load(), &state.load());
    let initial_rebuild_ms = started.elapsed().as_secs_f64() * 1e3;
    let compiled = routing.load();
    anyhow::ensure!(
        compiled.errors.is_empty(),
        "compile errors: {:?}",
        compiled.errors.first()
    );
    println!(
        "{} services in the WDS store, {configured_services} with L7 configuration; \
         first compilation {initial_rebuild_ms:.1} ms",
        compiled.services.len()
    );

    let mut workloads: Vec<wds::Address> = built
        .addresses
        .values()
        .filter(|a| matches!(a.r#type, Some(wds::address::Type::Workload(_))))
        .cloned()
        .collect();
    anyhow::ensure!(!workloads.is_empty(), "no workloads");
    let mut apply_us = Vec::with_capacity(opts.changes);
    let mut rebuild_ms = Vec::with_capacity(opts.changes);
    let mut full_ms = Vec::with_capacity(opts.changes);
    for i in 0..opts.changes {
        // Spread over the mesh; every second change of a pod turns it back.
        let n = workloads.len();
        let address = &mut workloads[(i * 7919) % n];
        if let Some(wds::address::Type::Workload(w)) = &mut address.r#type {
            w.status = if w.status == wds::WorkloadStatus::Healthy as i32 {
                wds::WorkloadStatus::Unhealthy as i32
            } else {
                wds::WorkloadStatus::Healthy as i32
            };
        }
        let update = Update {
            upserts: vec![address.clone()],
            ..Default::default()
        };
        let started = Instant::now();
        let rejected = state.apply(update);
        let applied = Instant::now();
        routing.rebuild(gateway, &l7.load(), &state.load());
        let done = Instant::now();
        anyhow::ensure!(rejected.is_empty(), "WDS store rejected {rejected:?}");
        apply_us.push((applied - started).as_secs_f64() * 1e6);
        rebuild_ms.push((done - applied).as_secs_f64() * 1e3);
        // The same state compiled from nothing: what every rebuild cost before rebuilds kept
        // what had not changed.
        let started = Instant::now();
        Routing::default().rebuild(gateway, &l7.load(), &state.load());
        full_ms.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let results = Results {
        pods: opts.pods,
        services: opts.services,
        configured_services,
        changes: opts.changes,
        initial_rebuild_ms,
        store_apply_us: percentiles(apply_us),
        rebuild_ms: percentiles(rebuild_ms),
        full_compile_ms: percentiles(full_ms),
    };
    let p = &results.store_apply_us;
    println!(
        "one pod changed → WDS store: p50 {:.0} µs, p90 {:.0}, p99 {:.0}, max {:.0}",
        p.p50, p.p90, p.p99, p.max
    );
    let p = &results.rebuild_ms;
    println!(
        "then routing compiled again: p50 {:.2} ms, p90 {:.2}, p99 {:.2}, max {:.2}",
        p.p50, p.p90, p.p99, p.max
    );
    let p = &results.full_compile_ms;
    println!(
        "the same compiled from nothing: p50 {:.2} ms, p90 {:.2}, p99 {:.2}, max {:.2}",
        p.p50, p.p90, p.p99, p.max
    );
    if let Some(path) = &opts.json {
        std::fs::write(path, serde_json::to_vec_pretty(&results)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The mesh as manifests (JSON documents, which YAML reads): namespaces enrolled, the first
/// `waypoint_namespaces` with a waypoint that all their services use, services spread over
/// namespaces, pods over services, and an HTTPRoute per service that has a waypoint.
fn manifests(opts: &Options) -> Vec<String> {
    let per_namespace = opts.services / opts.namespaces;
    let mut out = Vec::new();
    let mut doc = |value: serde_json::Value| out.push(format!("---\n{value}\n"));
    for n in 0..opts.namespaces {
        let ns = format!("ns-{n}");
        let waypoint = n < opts.waypoint_namespaces;
        let mut labels = serde_json::json!({"istio.io/dataplane-mode": "ambient"});
        if waypoint {
            labels["istio.io/use-waypoint"] = "waypoint".into();
        }
        doc(serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "labels": labels}}));
        if waypoint {
            doc(
                serde_json::json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                "metadata": {"name": "waypoint", "namespace": ns},
                "spec": {"gatewayClassName": "istio-waypoint",
                         "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}),
            );
        }
    }
    for s in 0..opts.namespaces * per_namespace {
        let n = s % opts.namespaces;
        let ns = format!("ns-{n}");
        let name = format!("svc-{}", s / opts.namespaces);
        doc(service(s, opts.namespaces));
        if n < opts.waypoint_namespaces {
            doc(
                serde_json::json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                "metadata": {"name": name, "namespace": ns},
                "spec": {
                    "parentRefs": [{"group": "", "kind": "Service", "name": name, "port": 80}],
                    "rules": [
                        {"matches": [{"path": {"type": "PathPrefix", "value": "/api/v1"},
                                      "headers": [{"type": "RegularExpression", "name": "x-user",
                                                   "value": "[a-z]+-[0-9]{1,4}"}]}],
                         "backendRefs": [{"name": name, "port": 80, "weight": 90}]},
                        {"matches": [{"path": {"type": "RegularExpression",
                                               "value": "/items/[0-9]+(/reviews)?"}}],
                         "backendRefs": [{"name": name, "port": 80}]},
                        {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                         "backendRefs": [{"name": name, "port": 80}]}
                    ]}}),
            );
        }
    }
    for i in 0..opts.pods {
        doc(pod(i, opts.namespaces, opts.services, 100, "v0"));
    }
    out
}
