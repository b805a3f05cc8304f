//! Wiring: certificates, xDS, the HBONE listener, admin, metrics and readiness.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ambient_proto::hbone::{H2Settings, PoolSettings};
use ambient_proto::identity::Identity;
use ambient_proto::tls::TrustBundle;
use anyhow::Context as _;
use metrics_exporter_prometheus::Matcher;
use proxy_core::identity::ca_client::CaClient;
use proxy_core::identity::{Backoff, CertificateManager};
use proxy_core::readiness::Readiness;
use proxy_core::state::StateStore;
use proxy_core::xds::{self, NodeInfo};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cli::Args;
use crate::config::{L7Store, L7Subscription};
use crate::context::Ctx;
use crate::routing::Routing;
use crate::upstream::Upstreams;
use crate::workers::{self, Workers};
use crate::{admin, inbound, otlp, telemetry};

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))
}

/// Runs until SIGTERM / SIGINT.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let (gw_ns, gw_name) = args
        .gateway
        .split_once('/')
        .filter(|(ns, n)| !ns.is_empty() && !n.is_empty())
        .with_context(|| format!("--gateway {}: expected <namespace>/<name>", args.gateway))?;
    let sa = args
        .service_account
        .clone()
        .unwrap_or_else(|| gw_name.to_string());
    let identity = Identity::new(&args.trust_domain, gw_ns, &sa)
        .with_context(|| format!("identity for {}/{sa}", gw_ns))?;
    let control_plane = args.control_plane.control_plane()?;
    let roots = control_plane.root_pem.clone();
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(telemetry::REQUEST_DURATION.into()),
            telemetry::DURATION_BUCKETS,
        )?
        .set_buckets_for_metric(Matcher::Suffix("_bytes".into()), telemetry::SIZE_BUCKETS)?
        .install_recorder()
        .context("installing the metrics recorder")?;
    proxy_core::metrics::spawn_upkeep(metrics.clone(), proxy_core::metrics::UPKEEP_PERIOD);
    telemetry::describe();
    otlp::describe();
    otlp::set_sampling(args.trace_sampling);
    let otlp_target = args
        .otlp
        .export()
        .map(|export| export.target())
        .transpose()
        .map_err(anyhow::Error::msg)
        .context("--otlp-endpoint")?;

    let state = Arc::new(StateStore::new());
    let l7 = Arc::new(L7Store::default());
    let readiness = Readiness::new(&["xds:address", "xds:authorization", "xds:l7", "certificate"]);
    let pod_name = std::env::var("POD_NAME").unwrap_or_else(|_| gw_name.to_string());
    let node = NodeInfo {
        node_name: args.node_name.clone(),
        instance_ip: args.instance_ip.clone(),
        id: format!(
            "router~{}~{pod_name}.{gw_ns}~{gw_ns}.svc.cluster.local",
            args.instance_ip
        ),
    };
    tokio::spawn(xds::run_with(
        control_plane.clone(),
        node,
        state.clone(),
        readiness.clone(),
        vec![Arc::new(L7Subscription(l7.clone()))],
    ));

    let bundle = TrustBundle::from_pem(args.trust_domain.clone(), &roots)?;
    tokio::spawn(crate::health::report_forever(
        control_plane.clone(),
        format!("{gw_ns}/{pod_name}@{}", args.instance_ip),
        format!("{gw_ns}/{gw_name}"),
        Duration::from_secs(1),
    ));
    let ca = CaClient::new(control_plane, args.control_plane.workload_cert_ttl())?;
    let certs = Arc::new(CertificateManager::new(Arc::new(ca), Backoff::default()));
    let server = ambient_proto::tls::server_config(certs.slot(&identity), &bundle)?;
    tokio::spawn({
        let certs = certs.clone();
        let identity = identity.clone();
        let readiness = readiness.clone();
        async move {
            loop {
                match certs.get(&identity, Duration::from_secs(30)).await {
                    Ok(_) => return readiness.mark("certificate"),
                    Err(e) => warn!(%identity, error = %e, "still no certificate"),
                }
            }
        }
    });
    let workers = Workers::start(workers::count(args.worker_threads))?;
    let ctx = Arc::new(Ctx {
        gateway_namespace: gw_ns.to_string(),
        gateway_name: gw_name.to_string(),
        identity: identity.clone(),
        instance_ip: args.instance_ip.parse::<IpAddr>().ok(),
        state: state.clone(),
        l7: l7.clone(),
        certs,
        bundle,
        h2: H2Settings::default(),
        acceptor: TlsAcceptor::from(Arc::new(server)),
        upstreams: Upstreams::per_worker(workers.len(), PoolSettings::default()),
        routing: Routing::default(),
        connect_timeout: Duration::from_secs(10),
        cert_wait: Duration::from_secs(10),
    });
    // Upstream connections idle past their service's idleTimeout are closed; rate-limit
    // buckets of clients that have gone quiet are dropped.
    tokio::spawn({
        let ctx = ctx.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let now = std::time::Instant::now();
                for upstreams in ctx.upstreams.iter() {
                    upstreams.close_idle(now);
                }
                for limiter in ctx.routing.load().rate_limiters.all() {
                    limiter.sweep(now);
                }
            }
        }
    });
    // Recompile routes whenever the L7 configuration or the endpoints change.
    tokio::spawn({
        let ctx = ctx.clone();
        async move {
            let mut l7_versions = ctx.l7.subscribe();
            let mut state_versions = ctx.state.subscribe();
            loop {
                let state = ctx.state.load();
                ctx.routing
                    .rebuild(&ctx.gateway_key(), &ctx.l7.load(), &state);
                for upstreams in ctx.upstreams.iter() {
                    upstreams.retain_endpoints(|a| state.workload_by_ip(a.ip()).is_some());
                }
                tokio::select! {
                    r = l7_versions.changed() => if r.is_err() { return },
                    r = state_versions.changed() => if r.is_err() { return },
                }
            }
        }
    });

    let shutdown = CancellationToken::new();
    proxy_core::shutdown::on_signal(shutdown.clone());
    // Spans, and the access log as log records, to the same receiver.
    let otlp_tasks = otlp_target.map(|target| {
        let resource = otlp::resource(gw_name, gw_ns, &pod_name);
        let (exporter, spans) = otlp::SpanExporter::start(
            target.clone(),
            gw_ns,
            resource.clone(),
            otlp::Settings::default(),
            Some(otlp::mesh_resolver(state.clone())),
            shutdown.clone(),
        );
        otlp::install(exporter);
        let (logs_exporter, logs) = proxy_core::otlp::Exporter::<proxy_core::otlp::Logs>::start(
            target,
            resource,
            otlp::scope(),
            otlp::Settings::default(),
            Some(otlp::mesh_resolver(state.clone())),
            shutdown.clone(),
        );
        proxy_core::otlp::access_log::install(logs_exporter);
        [spans, logs]
    });
    let hbone = bind(args.hbone_addr).await?;
    let admin_listener = bind(args.admin_addr).await?;
    let metrics_listener = bind(args.metrics_addr).await?;
    let ready_listener = bind(args.readiness_addr).await?;
    tokio::spawn(proxy_core::admin::serve(
        admin_listener,
        shutdown.clone(),
        admin::routes(ctx.clone(), shutdown.clone()),
    ));
    tokio::spawn(proxy_core::admin::serve(
        metrics_listener,
        shutdown.clone(),
        proxy_core::admin::metrics_routes(metrics),
    ));
    tokio::spawn(proxy_core::admin::serve(
        ready_listener,
        shutdown.clone(),
        proxy_core::admin::readiness_routes(readiness),
    ));
    tokio::spawn(inbound::serve(ctx, workers, hbone, shutdown.clone()));
    info!(gateway = %args.gateway, %identity, hbone = %args.hbone_addr, "waypoint running");
    shutdown.cancelled().await;
    info!("shutting down");
    if let Some(tasks) = otlp_tasks {
        // The last spans and log records, within a bound.
        let _ =
            tokio::time::timeout(Duration::from_secs(2), futures::future::join_all(tasks)).await;
        for (what, stats) in [
            ("request spans", otlp::exporter().map(|e| e.stats())),
            (
                "access log records",
                proxy_core::otlp::access_log::exporter().map(|e| e.stats()),
            ),
        ] {
            if let Some(stats) = stats {
                info!(
                    exported = stats.exported.load(std::sync::atomic::Ordering::Relaxed),
                    dropped = stats.dropped.load(std::sync::atomic::Ordering::Relaxed),
                    "{what}"
                );
            }
        }
    }
    Ok(())
}
