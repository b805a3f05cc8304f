//! The two-node example: a client pod on one node calls a server pod on another, through a
//! service VIP, over HBONE; an outside host is reached directly; a capture of the wire shows
//! only TLS to port 15008 between the nodes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ztunnel::inpod::netns::Netns;

use ambient_lab::hello::{ask, serve_hello};
use ambient_lab::manifest;
use ambient_lab::sniff::Sniffer;
use ambient_lab::{Lab, Mesh, MeshOptions};

/// The service VIP the client dials.
pub const ECHO_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

pub struct DemoOptions {
    pub exe: PathBuf,
    /// Stop after this many requests (default: run until Ctrl-C).
    pub requests: Option<u64>,
    pub interval: Duration,
}

/// Builds and runs the example inside the sandbox (the caller has entered it).
pub async fn two_node(run_dir: PathBuf, opts: DemoOptions) -> anyhow::Result<()> {
    let mut lab = Lab::new(&run_dir)?;
    lab.add_node("node-a")?;
    lab.add_node("node-b")?;
    lab.add_pod("default", "client", "node-a")?;
    lab.add_pod("default", "server", "node-b")?;
    let outside = lab.add_external("outside")?.ip;

    let manifests = vec![
        ("namespace.yaml", manifest::namespace("default", true)),
        (
            "client.yaml",
            manifest::pod(
                lab.pod("default", "client"),
                "client",
                &[("app", "client")],
                &[],
            ),
        ),
        (
            "server.yaml",
            manifest::pod(
                lab.pod("default", "server"),
                "server",
                &[("app", "echo")],
                &[("http", 8080)],
            ),
        ),
        (
            "echo-service.yaml",
            manifest::service(
                "echo",
                "default",
                ECHO_VIP,
                &[("app", "echo")],
                &[("http", 80, 8080)],
            ),
        ),
    ];
    let underlay = lab.underlay.clone();
    let sniffer = Sniffer::start(&underlay)?;
    println!(
        "starting the mesh (controller, 2 node agents, 2 ztunnels) in {}",
        run_dir.display()
    );
    let manifests: Vec<(&str, String)> = manifests;
    let mesh = Mesh::start(lab, &manifests, MeshOptions::new(opts.exe.clone())).await?;
    mesh.enrol("default", "client", "client").await?;
    mesh.enrol("default", "server", "server").await?;
    let server_ns: Arc<Netns> = mesh.lab.pod("default", "server").netns.clone();
    let client_ns: Arc<Netns> = mesh.lab.pod("default", "client").netns.clone();
    serve_hello(&server_ns, 8080, "server".into())?;
    serve_hello(
        &mesh.lab.externals["outside"].netns,
        9000,
        "outside host".into(),
    )?;
    println!(
        "mesh ready: client 10.244.1.2 on node-a, server 10.244.2.2 on node-b, echo VIP {ECHO_VIP}:80"
    );

    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    let mut n = 0u64;
    loop {
        n += 1;
        let via_mesh = ask(
            &client_ns,
            SocketAddr::from((ECHO_VIP, 80)),
            &format!("request {n}"),
        )
        .await;
        let direct = ask(
            &client_ns,
            SocketAddr::from((outside, 9000)),
            &format!("request {n}"),
        )
        .await;
        println!(
            "client → echo VIP (HBONE):     {}",
            via_mesh.unwrap_or_else(|e| format!("error: {e}"))
        );
        println!(
            "client → outside host (direct): {}",
            direct.unwrap_or_else(|e| format!("error: {e}"))
        );
        if opts.requests.is_some_and(|max| n >= max) {
            break;
        }
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(opts.interval) => {}
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let capture = sniffer.finish();
    let between_nodes: Vec<_> = capture
        .tcp()
        .into_iter()
        .filter(|s| is_node_or_pod(s.src.ip()) && is_node_or_pod(s.dst.ip()))
        .collect();
    let hbone = between_nodes
        .iter()
        .filter(|s| s.src.port() == 15008 || s.dst.port() == 15008)
        .count();
    println!();
    println!(
        "wire capture between the nodes: {} TCP segments, {} of them to/from port 15008",
        between_nodes.len(),
        hbone
    );
    println!(
        "plaintext \"request\" seen between the nodes: {}",
        between_nodes
            .iter()
            .any(|s| s.payload.windows(7).any(|w| w == b"request"))
    );
    println!();
    println!("ztunnel access log on node-a (last lines):");
    for line in mesh
        .log("ztunnel-node-a")
        .lines()
        .filter(|l| l.contains("connection complete"))
        .rev()
        .take(2)
    {
        println!("  {line}");
    }
    let metrics = mesh.metrics("node-b").await.context("metrics")?;
    println!("\nnode-b ztunnel metrics (inbound):");
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("istio_tcp_connections_opened_total"))
    {
        println!("  {line}");
    }
    Ok(())
}

fn is_node_or_pod(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            (o[0] == 10 && o[1] == 244) || (o[0] == 172 && o[1] == 30 && o[2] == 0 && o[3] >= 10)
        }
        IpAddr::V6(_) => false,
    }
}
