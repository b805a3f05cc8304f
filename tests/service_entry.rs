//! End to end: ServiceEntries. A pod resolves an entry's host to the address the controller
//! allocated and reaches the endpoints through its ztunnel: by address (`STATIC`), by a name
//! ztunnel resolves (`DNS`), or at the address it dialed (`NONE`); an entry exported to its
//! own namespace is invisible elsewhere; allocated addresses survive a controller restart.

#![forbid(unsafe_code)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ambient_lab::hello::{ask, serve_hello};
use ambient_lab::manifest;
use ambient_lab::sandbox::run_test;
use common::dns::*;
use common::*;
use ztunnel::dns::wire::op::ResponseCode;
use ztunnel::inpod::netns::Netns;

fn service_entry(name: &str, namespace: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: {name}\n  \
         namespace: {namespace}\nspec:\n{spec}"
    )
}

/// The one address `name` resolves to from `netns`, once it resolves at all.
async fn resolved(netns: &Netns, name: &str) -> Result<Ipv4Addr, String> {
    eventually(Duration::from_secs(15), || async {
        let m = ask_udp(netns, NAMESERVER, name)
            .await
            .map_err(|e| e.to_string())?;
        match addresses(&m)[..] {
            [IpAddr::V4(ip)] if m.response_code == ResponseCode::NoError => Ok(ip),
            _ => Err(format!("{name}: {} {:?}", m.response_code, addresses(&m))),
        }
    })
    .await
}

fn allocated(ip: Ipv4Addr) -> bool {
    ip.octets()[..2] == [240, 240]
}

#[test]
fn pods_reach_service_entries() {
    run_test("pods_reach_service_entries", |dir| async move {
        let mut peer = PodSpec::new("peer", "node-b");
        peer.namespace = "data";
        let mut mesh = cluster(
            &dir,
            vec![PodSpec::new("client", "node-a"), peer],
            vec![("data-ns.yaml", manifest::namespace("data", true))],
            &["api", "legacy"],
            |_| {},
        )
        .await?;
        let client_pod = mesh.lab.pod("default", "client");
        let (client, client_ip) = (client_pod.netns.clone(), client_pod.ip);
        let peer = mesh.lab.pod("data", "peer").netns.clone();
        let api = &mesh.lab.externals["api"];
        let (api_ip, api_netns) = (api.ip, api.netns.clone());
        let legacy = &mesh.lab.externals["legacy"];
        let (legacy_ip, legacy_netns) = (legacy.ip, legacy.netns.clone());
        serve_hello(&api_netns, 9000, "api".into())?;
        serve_hello(&legacy_netns, 5432, "legacy".into())?;
        // The client's own server, which a `resolution: DNS` entry names `localhost`.
        serve_hello(&client, 7000, "self".into())?;

        mesh.write_manifest(
            "entries.yaml",
            &[
                service_entry(
                    "api",
                    "default",
                    &format!(
                        "  hosts: [api.example.test]\n  location: MESH_EXTERNAL\n  ports: \
                         [{{number: 80, name: tcp, protocol: TCP, targetPort: 9000}}]\n  \
                         resolution: STATIC\n  endpoints: [{{address: {}}}]\n",
                        api_ip
                    ),
                ),
                service_entry(
                    "myself",
                    "default",
                    "  hosts: [self.example.test]\n  ports: [{number: 80, name: tcp}]\n  \
                     resolution: DNS\n  endpoints: [{address: localhost, ports: {tcp: 7000}}]\n  \
                     exportTo: [.]\n",
                ),
                service_entry(
                    "legacy",
                    "default",
                    &format!(
                        "  hosts: [db.legacy.test]\n  addresses: [{}]\n  ports: [{{number: \
                         5432, name: pg, protocol: TCP}}]\n  resolution: NONE\n",
                        legacy_ip
                    ),
                ),
            ]
            .join("---\n"),
        )?;

        // STATIC: the host has an allocated address, and connections to it reach the
        // endpoint directly, from the pod's own address.
        let api_vip = resolved(&client, "api.example.test").await?;
        assert!(allocated(api_vip), "{api_vip}");
        let answer = ask(&client, SocketAddr::from((api_vip, 80)), "static").await?;
        assert!(
            answer.starts_with("api got \"static\"")
                && answer.contains(&format!("from {client_ip}:")),
            "{answer}"
        );

        // DNS: ztunnel resolves the endpoint's name (`localhost`: the client's own server,
        // seen from the pod's network namespace) when the connection is made.
        let self_vip = resolved(&client, "self.example.test").await?;
        assert!(allocated(self_vip) && self_vip != api_vip, "{self_vip}");
        let answer = ask(&client, SocketAddr::from((self_vip, 80)), "named").await?;
        assert!(answer.starts_with("self got \"named\""), "{answer}");

        // exportTo ".": another namespace's pod does not see the host at all.
        let m = ask_udp(&peer, NAMESERVER, "self.example.test").await?;
        expect_code(&m, "self.example.test from data", ResponseCode::NXDomain)?;
        // The other entries are exported everywhere.
        assert_eq!(resolved(&peer, "api.example.test").await?, api_vip);

        // NONE: the host names the address given, and connections go where they were sent.
        assert_eq!(resolved(&client, "db.legacy.test").await?, legacy_ip);
        let answer = ask(&client, SocketAddr::from((legacy_ip, 5432)), "none").await?;
        assert!(answer.starts_with("legacy got \"none\""), "{answer}");

        // Telemetry names the entry's host as the destination service.
        let metrics = mesh.metrics("node-a").await?;
        for host in ["api.example.test", "self.example.test"] {
            let opened = metric(
                &metrics,
                "istio_tcp_connections_opened_total",
                &[("reporter", "source"), ("destination_service", host)],
            );
            assert!(opened >= 1.0, "{host}: {opened}\n{metrics}");
        }

        // A restarted controller gives the same addresses. The entry added after the restart
        // resolving shows the new controller's configuration has arrived.
        mesh.restart_controller().await?;
        mesh.write_manifest(
            "late.yaml",
            &service_entry(
                "late",
                "default",
                "  hosts: [late.example.test]\n  ports: [{number: 80, name: tcp}]\n  resolution: \
                 DNS\n",
            ),
        )?;
        let late_vip = resolved(&client, "late.example.test").await?;
        assert!(allocated(late_vip), "{late_vip}");
        assert_eq!(resolved(&client, "api.example.test").await?, api_vip);
        assert_eq!(resolved(&client, "self.example.test").await?, self_vip);
        let answer = ask(&client, SocketAddr::from((api_vip, 80)), "after").await?;
        assert!(answer.starts_with("api got \"after\""), "{answer}");
        TestResult::Ok(())
    });
}

fn mesh_config(mode: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: istio\n  namespace: istio-system\n\
         data:\n  mesh: |\n    outboundTrafficPolicy:\n      mode: {mode}\n"
    )
}

/// Whether a line sent from `netns` to `dst` gets an answer (a refused connection is closed
/// without one).
async fn answered(netns: &Netns, dst: SocketAddr) -> bool {
    ask(netns, dst, "ping")
        .await
        .is_ok_and(|answer| !answer.is_empty())
}

#[test]
fn registry_only_refuses_what_no_entry_declares() {
    run_test(
        "registry_only_refuses_what_no_entry_declares",
        |dir| async move {
            let mut mesh = cluster(
                &dir,
                vec![PodSpec::new("client", "node-a")],
                vec![],
                &["declared", "undeclared"],
                |_| {},
            )
            .await?;
            let client = mesh.lab.pod("default", "client").netns.clone();
            let declared = &mesh.lab.externals["declared"];
            let (declared_ip, declared_netns) = (declared.ip, declared.netns.clone());
            let undeclared = &mesh.lab.externals["undeclared"];
            let (undeclared_ip, undeclared_netns) = (undeclared.ip, undeclared.netns.clone());
            serve_hello(&declared_netns, 9000, "declared".into())?;
            serve_hello(&undeclared_netns, 9000, "undeclared".into())?;
            let (to_declared, to_undeclared) = (
                SocketAddr::from((declared_ip, 9000)),
                SocketAddr::from((undeclared_ip, 9000)),
            );
            // `declared` is a `resolution: NONE` entry's address.
            mesh.write_manifest(
                "entry.yaml",
                &service_entry(
                    "declared",
                    "default",
                    &format!(
                        "  hosts: [declared.example.test]\n  addresses: [{declared_ip}]\n  ports: \
                     [{{number: 9000, name: tcp}}]\n  resolution: NONE\n"
                    ),
                ),
            )?;
            assert_eq!(
                resolved(&client, "declared.example.test").await?,
                declared_ip
            );

            // ALLOW_ANY (the default): both reachable.
            assert!(answered(&client, to_undeclared).await);
            assert!(answered(&client, to_declared).await);

            // REGISTRY_ONLY: the undeclared destination is refused, the declared one is not.
            mesh.write_manifest("mesh.yaml", &mesh_config("REGISTRY_ONLY"))?;
            eventually(Duration::from_secs(15), || async {
                match answered(&client, to_undeclared).await {
                    false => Ok(()),
                    true => Err("still reachable".to_string()),
                }
            })
            .await?;
            assert!(answered(&client, to_declared).await);
            let metrics = mesh.metrics("node-a").await?;
            let refused = metric(
                &metrics,
                "istio_tcp_connections_opened_total",
                &[("reporter", "source"), ("response_flags", "NR")],
            );
            assert!(refused >= 1.0, "refusals counted: {refused}\n{metrics}");

            // Back to ALLOW_ANY.
            mesh.write_manifest("mesh.yaml", &mesh_config("ALLOW_ANY"))?;
            eventually(Duration::from_secs(15), || async {
                match answered(&client, to_undeclared).await {
                    true => Ok(()),
                    false => Err("still refused".to_string()),
                }
            })
            .await?;
            // The restarted controller keeps the setting as written.
            mesh.write_manifest("mesh.yaml", &mesh_config("REGISTRY_ONLY"))?;
            mesh.restart_controller().await?;
            eventually(Duration::from_secs(15), || async {
                match answered(&client, to_undeclared).await {
                    false => Ok(()),
                    true => Err("reachable after the restart".to_string()),
                }
            })
            .await?;
            TestResult::Ok(())
        },
    );
}
