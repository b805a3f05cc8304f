//! End to end, in real network namespaces with real processes: two nodes, pods, HBONE.
//! Each test builds its own sandbox (user + network namespaces), so none needs root.

#![forbid(unsafe_code)]

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ambient_lab::hello::{ask, serve_hello};
use ambient_lab::http::connect_from;
use ambient_lab::sandbox::run_test;
use ambient_lab::sniff::Sniffer;
use ambient_proto::hbone::{
    ConnectRequest, H2Settings, HboneConnection, HboneError, InboundConnect, serve_connection,
};
use ambient_proto::identity::Identity;
use ambient_proto::tls::{self, CertSlot, TrustBundle, WorkloadCertificate};
use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::ClientConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[test]
fn pod_to_pod_and_service_across_nodes() {
    run_test("pod_to_pod_and_service_across_nodes", |dir| async move {
        let mesh = cluster(
            &dir,
            vec![
                PodSpec::new("client", "node-a"),
                PodSpec::new("server-1", "node-b").echo(),
                PodSpec::new("server-2", "node-a").echo(),
            ],
            vec![
                echo_service(),
                // node-a's place, for the locality labels; node-b has none.
                (
                    "node-a.yaml",
                    "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-a\n  labels:\n    topology.kubernetes.io/region: lab\n    topology.kubernetes.io/zone: lab-a\n".into(),
                ),
            ],
            &["outside"],
            |_| {},
        )
        .await?;
        let client = mesh.lab.pod("default", "client").netns.clone();
        let s1 = mesh.lab.pod("default", "server-1");
        let s2 = mesh.lab.pod("default", "server-2");
        serve_hello(&s1.netns, 8080, "server-1".into())?;
        serve_hello(&s2.netns, 8080, "server-2".into())?;
        let outside = &mesh.lab.externals["outside"];
        serve_hello(&outside.netns, 9000, "outside".into())?;

        // Pod to pod across nodes; the server sees the client's own address.
        let client_ip = mesh.lab.pod("default", "client").ip;
        let answer = ask(&client, SocketAddr::new(IpAddr::V4(s1.ip), 8080), "hi").await?;
        assert!(answer.starts_with("server-1 got \"hi\""), "{answer}");
        assert!(
            answer.contains(&format!("from {client_ip}:")),
            "source address kept: {answer}"
        );

        // Service VIP with two endpoints: both get traffic.
        let mut by_server: BTreeMap<String, usize> = BTreeMap::new();
        for i in 0..24 {
            let answer = ask(&client, ECHO_VIP, &format!("n{i}")).await?;
            let who = answer
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            *by_server.entry(who).or_default() += 1;
        }
        assert_eq!(
            by_server.keys().collect::<Vec<_>>(),
            vec!["server-1", "server-2"],
            "{by_server:?}"
        );

        // Outside the mesh: reached directly, from the pod's own address.
        let answer = ask(
            &client,
            SocketAddr::new(IpAddr::V4(outside.ip), 9000),
            "out",
        )
        .await?;
        assert!(answer.contains(&format!("from {client_ip}:")), "{answer}");

        // From outside the mesh into a pod: plaintext, captured to 15006, source kept.
        let answer = ask(
            &outside.netns,
            SocketAddr::new(IpAddr::V4(s1.ip), 8080),
            "in",
        )
        .await?;
        assert!(
            answer.contains(&format!("from {}:", outside.ip)),
            "{answer}"
        );

        // Metrics count exactly what happened (each connection closed before we look).
        let a = mesh.metrics("node-a").await?;
        let b = mesh.metrics("node-b").await?;
        let src = [("reporter", "source"), ("source_workload", "client")];
        let to_s1 = [
            src[0],
            src[1],
            ("destination_workload", "server-1"),
            ("connection_security_policy", "mutual_tls"),
        ];
        let s1_via_vip = metric(
            &a,
            "istio_tcp_connections_opened_total",
            &[
                src[0],
                src[1],
                ("destination_workload", "server-1"),
                ("destination_service", "echo.default.svc.cluster.local"),
            ],
        );
        assert_eq!(
            metric(&a, "istio_tcp_connections_opened_total", &to_s1),
            1.0 + s1_via_vip
        );
        assert_eq!(
            metric(
                &b,
                "istio_tcp_connections_opened_total",
                &[
                    ("reporter", "destination"),
                    ("source_workload", "client"),
                    (
                        "source_principal",
                        "spiffe://cluster.local/ns/default/sa/client"
                    ),
                    ("destination_workload", "server-1"),
                    ("source_cluster", "Kubernetes"),
                    ("source_region", "lab"),
                    ("source_zone", "lab-a"),
                    ("destination_zone", "unknown"),
                ]
            ),
            1.0 + s1_via_vip
        );
        let plaintext_in = metric(
            &b,
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "destination"),
                ("destination_workload", "server-1"),
                ("connection_security_policy", "unknown"),
            ],
        );
        assert_eq!(plaintext_in, 1.0, "the plaintext connection from outside");
        let outside_conns = metric(
            &a,
            "istio_tcp_connections_opened_total",
            &[
                src[0],
                src[1],
                ("destination_workload", "unknown"),
                ("connection_security_policy", "unknown"),
            ],
        );
        assert_eq!(outside_conns, 1.0);
        // "hi\n" is 3 request bytes and the answer came back.
        assert!(
            metric(
                &b,
                "istio_tcp_received_bytes_total",
                &[("destination_workload", "server-1")]
            ) >= 3.0
        );
        assert!(
            metric(
                &b,
                "istio_tcp_sent_bytes_total",
                &[("destination_workload", "server-1")]
            ) > 3.0
        );
        // Istio's xDS client metrics: WDS messages and their resource bytes, by type URL.
        let wds = [("url", ambient_proto::ADDRESS_TYPE_URL)];
        assert!(metric(&a, "istio_xds_message_total", &wds) >= 1.0);
        assert!(metric(&a, "istio_xds_message_bytes_total", &wds) > 100.0);
        assert_eq!(
            metric(&a, "istio_tcp_connections_failed_total", &[]),
            0.0,
            "nothing failed"
        );
        // The access log names both identities.
        let log = mesh.log("ztunnel-node-a");
        assert!(
            log.contains("src.identity=\"spiffe://cluster.local/ns/default/sa/client\""),
            "{log}"
        );
        assert!(log.contains("dst.identity=\"spiffe://cluster.local/ns/default/sa/server-1\""));
        TestResult::Ok(())
    });
}

#[test]
fn wire_carries_only_tls_to_15008() {
    run_test("wire_carries_only_tls_to_15008", |dir| async move {
        let mesh = cluster(
            &dir,
            vec![
                PodSpec::new("client", "node-a"),
                PodSpec::new("server", "node-b"),
            ],
            vec![],
            &[],
            |_| {},
        )
        .await?;
        let client = mesh.lab.pod("default", "client").netns.clone();
        let server = mesh.lab.pod("default", "server");
        let server_addr = SocketAddr::new(IpAddr::V4(server.ip), 8080);
        // An echo server: whatever comes in goes back.
        let listener = ambient_lab::http::listen_in(&server.netns, "0.0.0.0:8080".parse()?)?;
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let sniffer = Sniffer::start(&mesh.lab.underlay)?;
        let marker = b"PLAINTEXT-MARKER-7f3a";
        let mut payload = Vec::new();
        while payload.len() < 2 * 1024 * 1024 {
            payload.extend_from_slice(marker);
        }
        for _ in 0..3 {
            let stream = connect_from(&client, server_addr).await?;
            let (mut r, mut w) = stream.into_split();
            let sent = payload.clone();
            let writer = tokio::spawn(async move {
                w.write_all(&sent).await?;
                w.shutdown().await
            });
            let mut back = Vec::new();
            r.read_to_end(&mut back).await?;
            writer.await??;
            assert_eq!(back.len(), payload.len());
            assert!(back == payload, "echo must be intact");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let capture = sniffer.finish();
        let mesh_host = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                (o[0] == 10 && o[1] == 244)
                    || (o[0] == 172 && o[1] == 30 && o[2] == 0 && o[3] >= 10)
            }
            IpAddr::V6(_) => false,
        };
        let between: Vec<_> = capture
            .tcp()
            .into_iter()
            .filter(|s| mesh_host(s.src.ip()) && mesh_host(s.dst.ip()))
            .collect();
        let bytes: usize = between.iter().map(|s| s.payload.len()).sum();
        // 6 MiB crossed; a packet capture may drop frames on a loaded machine, so ask only
        // that it clearly saw the transfers (every captured byte is then checked below).
        assert!(
            bytes > 2 * 1024 * 1024,
            "the transfers crossed the captured link ({bytes} bytes)"
        );
        let off_port: Vec<_> = between
            .iter()
            .filter(|s| s.src.port() != 15008 && s.dst.port() != 15008)
            .map(|s| format!("{} -> {}", s.src, s.dst))
            .collect();
        assert!(
            off_port.is_empty(),
            "only port 15008 between nodes, saw {off_port:?}"
        );
        // Each flow to 15008 opens with a TLS handshake record.
        let first_to_hbone = between
            .iter()
            .find(|s| s.dst.port() == 15008 && !s.payload.is_empty())
            .expect("client data to 15008");
        assert_eq!(
            &first_to_hbone.payload[..2],
            &[0x16, 0x03],
            "TLS handshake record"
        );
        assert!(
            !capture.contains(marker),
            "plaintext marker crossed the wire"
        );
        TestResult::Ok(())
    });
}

/// Mints certificates with the mesh CA's own key, as an attacker who stole nothing could
/// not, so each defect is tested alone.
struct Minter {
    issuer: Issuer<'static, KeyPair>,
    bundle: TrustBundle,
}

impl Minter {
    fn from_ca_dir(dir: &std::path::Path) -> Self {
        let cert = std::fs::read_to_string(dir.join("ca-cert.pem")).unwrap();
        let key =
            KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca-key.pem")).unwrap()).unwrap();
        let root = std::fs::read(dir.join("root-cert.pem")).unwrap();
        Minter {
            issuer: Issuer::from_ca_cert_pem(&cert, key).unwrap(),
            bundle: TrustBundle::from_pem("cluster.local", &root).unwrap(),
        }
    }

    fn leaf(
        &self,
        uri: &str,
        ca: bool,
        expired: bool,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        p.is_ca = if ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if ca {
            p.key_usages.push(KeyUsagePurpose::KeyCertSign);
        }
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = time::OffsetDateTime::now_utc();
        if expired {
            p.not_before = now - Duration::from_secs(7200);
            p.not_after = now - Duration::from_secs(3600);
        } else {
            p.not_before = now - Duration::from_secs(60);
            p.not_after = now + Duration::from_secs(3600);
        }
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }

    fn workload(&self, uri: &str) -> Arc<WorkloadCertificate> {
        let (chain, key) = self.leaf(uri, false, false);
        Arc::new(WorkloadCertificate::from_der(chain, key).unwrap())
    }

    /// A TLS client that presents `client` (or nothing) and accepts `server_id`.
    fn client(
        &self,
        client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
        server_id: &str,
    ) -> Arc<ClientConfig> {
        let verifier = Arc::new(tls::SpiffeServerVerifier::new(
            self.bundle.roots().clone(),
            vec![server_id.parse().unwrap()],
            tls::provider(),
        ));
        let b = ClientConfig::builder_with_provider(tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut c = match client {
            Some((chain, key)) => b.with_client_auth_cert(chain, key).unwrap(),
            None => b.with_no_client_auth(),
        };
        c.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(c)
    }
}

#[test]
fn hbone_refuses_bad_peers() {
    run_test("hbone_refuses_bad_peers", |dir| async move {
        let mesh = cluster(
            &dir,
            vec![
                PodSpec::new("client", "node-a"),
                PodSpec::new("server", "node-b"),
            ],
            vec![],
            &[],
            |_| {},
        )
        .await?;
        let server = mesh.lab.pod("default", "server");
        serve_hello(&server.netns, 8080, "server".into())?;
        let hbone = SocketAddr::new(IpAddr::V4(server.ip), 15008);
        // The attacker sits on node-a's host network, outside any pod.
        let from = mesh.lab.node("node-a").netns.clone();
        let minter = Minter::from_ca_dir(&mesh.ca_dir());
        let server_id = "spiffe://cluster.local/ns/default/sa/server";
        let dial = |config: Arc<ClientConfig>| {
            let from = from.clone();
            async move {
                let tcp = connect_from(&from, hbone).await.unwrap();
                HboneConnection::handshake(tcp, hbone, config, &H2Settings::default()).await
            }
        };
        let cases: Vec<(&str, Arc<ClientConfig>)> = vec![
            ("no_client_certificate", minter.client(None, server_id)),
            (
                "trust_domain_mismatch",
                minter.client(
                    Some(minter.leaf("spiffe://evil.example/ns/default/sa/client", false, false)),
                    server_id,
                ),
            ),
            (
                "ca_certificate_as_leaf",
                minter.client(
                    Some(minter.leaf("spiffe://cluster.local/ns/default/sa/client", true, false)),
                    server_id,
                ),
            ),
            (
                "expired",
                minter.client(
                    Some(minter.leaf("spiffe://cluster.local/ns/default/sa/client", false, true)),
                    server_id,
                ),
            ),
        ];
        for (reason, config) in cases {
            // The handshake (or the first exchange after it) must fail...
            if let Ok(conn) = dial(config).await {
                let r = conn
                    .connect(&ConnectRequest::new(SocketAddr::new(
                        IpAddr::V4(server.ip),
                        8080,
                    )))
                    .await;
                assert!(r.is_err(), "{reason}: tunnel must not open");
            }
            // ...and the server must say why, in its metrics and its log.
            expect_refusal(&mesh, "node-b", reason).await?;
        }
        // Not TLS at all.
        let mut tcp = connect_from(&from, hbone).await?;
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut sink)).await;
        expect_refusal(&mesh, "node-b", "not_tls").await?;
        // A good handshake, then garbage instead of HTTP/2.
        let good = minter.client(
            Some(minter.leaf("spiffe://cluster.local/ns/default/sa/client", false, false)),
            server_id,
        );
        let tcp = connect_from(&from, hbone).await?;
        let name = rustls_pki_types::ServerName::IpAddress(hbone.ip().into());
        let mut tls_stream = tokio_rustls::TlsConnector::from(good.clone())
            .connect(name, tcp)
            .await?;
        tls_stream
            .write_all(b"definitely not an HTTP/2 connection preface\r\n\r\n")
            .await?;
        tls_stream.flush().await?;
        expect_refusal(&mesh, "node-b", "http2_protocol").await?;

        // A well-behaved foreign HBONE client gets the status codes of the protocol.
        let conn = dial(good).await?;
        let ok = conn
            .connect(&ConnectRequest::new(SocketAddr::new(
                IpAddr::V4(server.ip),
                8080,
            )))
            .await;
        assert!(ok.is_ok(), "valid tunnel opens: {:?}", ok.err());
        let status = |r: Result<_, HboneError>| match r {
            Err(HboneError::Status(s)) => s.as_u16(),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => 200,
        };
        let wrong_addr = conn
            .connect(&ConnectRequest::new("10.244.9.9:8080".parse()?))
            .await;
        assert_eq!(status(wrong_addr), 400, "address mismatch");
        let own_port = conn
            .connect(&ConnectRequest::new(SocketAddr::new(
                IpAddr::V4(server.ip),
                15006,
            )))
            .await;
        assert_eq!(status(own_port), 400, "the tunnel's own port");
        let closed = conn
            .connect(&ConnectRequest::new(SocketAddr::new(
                IpAddr::V4(server.ip),
                8081,
            )))
            .await;
        assert_eq!(status(closed), 503, "nothing listens there");
        TestResult::Ok(())
    });
}

async fn expect_refusal(mesh: &ambient_lab::Mesh, node: &str, reason: &str) -> TestResult {
    eventually(Duration::from_secs(5), || async {
        let m = mesh.metrics(node).await.map_err(|e| e.to_string())?;
        let n = metric(
            &m,
            "ambient_hbone_rejected_total",
            &[("direction", "inbound"), ("reason", reason)],
        );
        if n >= 1.0 {
            Ok(())
        } else {
            Err(format!("no {reason} refusal counted yet"))
        }
    })
    .await?;
    let log = mesh.log(&format!("ztunnel-{node}"));
    assert!(
        log.contains(&format!("reason=\"{reason}\"")),
        "log names {reason}:\n{log}"
    );
    Ok(())
}

#[test]
fn outbound_refuses_unexpected_server_identity() {
    run_test(
        "outbound_refuses_unexpected_server_identity",
        |dir| async move {
            // "impostor" is described as an HBONE workload with identity sa/impostor, but what
            // answers on its 15008 presents sa/someone-else.
            let mesh = cluster(
                &dir,
                vec![
                    PodSpec::new("client", "node-a"),
                    PodSpec::new("impostor", "node-b"),
                ],
                vec![],
                &[],
                |_| {},
            )
            .await?;
            let impostor = mesh.lab.pod("default", "impostor");
            // Take the impostor out of the ztunnel (its capture too), then squat on 15008.
            let uid = "Kubernetes//Pod/default/impostor";
            ztunnel::agent::cni::CniClient::new(dir.join("node-node-b").join("cni.sock"))
                .del(uid)
                .await?;
            let minter = Minter::from_ca_dir(&mesh.ca_dir());
            let slot = Arc::new(CertSlot::new());
            slot.store(minter.workload("spiffe://cluster.local/ns/default/sa/someone-else"));
            let config = tls::server_config(slot, &minter.bundle)?;
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
            let listener = ambient_lab::http::listen_in(&impostor.netns, "0.0.0.0:15008".parse()?)?;
            tokio::spawn(async move {
                while let Ok((tcp, peer)) = listener.accept().await {
                    let acceptor = acceptor.clone();
                    tokio::spawn(serve_connection(
                        tcp,
                        peer,
                        acceptor,
                        H2Settings::default(),
                        |c: InboundConnect| async move {
                            c.reject(ambient_proto::hbone::ConnectStatus::Unavailable)
                        },
                    ));
                }
            });
            let client = mesh.lab.pod("default", "client").netns.clone();
            let r = ask(
                &client,
                SocketAddr::new(IpAddr::V4(impostor.ip), 8080),
                "secret",
            )
            .await;
            assert!(
                r.map(|a| a.is_empty()).unwrap_or(true),
                "nothing may come back from an impostor"
            );
            eventually(Duration::from_secs(5), || async {
                let m = mesh.metrics("node-a").await.map_err(|e| e.to_string())?;
                let n = metric(
                    &m,
                    "ambient_hbone_rejected_total",
                    &[("direction", "outbound"), ("reason", "identity_mismatch")],
                );
                if n >= 1.0 {
                    Ok(())
                } else {
                    Err("not counted".to_string())
                }
            })
            .await?;
            let log = mesh.log("ztunnel-node-a");
            assert!(
                log.contains("identity_mismatch") && log.contains("someone-else"),
                "{log}"
            );
            TestResult::Ok(())
        },
    );
}

#[test]
fn certificate_rotation_keeps_long_connection() {
    run_test(
        "certificate_rotation_keeps_long_connection",
        |dir| async move {
            let mesh = cluster(
                &dir,
                vec![
                    PodSpec::new("client", "node-a"),
                    PodSpec::new("server", "node-b"),
                ],
                vec![],
                &[],
                // 4 s certificates: renewed every 2 s, the first one expires mid-connection.
                |o| o.workload_cert_ttl = Duration::from_secs(4),
            )
            .await?;
            let client = mesh.lab.pod("default", "client").netns.clone();
            let server = mesh.lab.pod("default", "server");
            serve_hello(&server.netns, 8080, "server".into())?;
            let addr = SocketAddr::new(IpAddr::V4(server.ip), 8080);
            let stream = connect_from(&client, addr).await?;
            let (r, mut w) = stream.into_split();
            let mut lines = tokio::io::BufReader::new(r);
            let mut serials = std::collections::BTreeSet::new();
            let client_id = "spiffe://cluster.local/ns/default/sa/client";
            for i in 0..30 {
                w.write_all(format!("tick {i}\n").as_bytes()).await?;
                let mut answer = String::new();
                tokio::io::AsyncBufReadExt::read_line(&mut lines, &mut answer).await?;
                assert!(
                    answer.contains(&format!("tick {i}")),
                    "answer {i}: {answer:?}"
                );
                let dump = mesh.config_dump("node-a").await?;
                for c in dump["certificates"].as_array().into_iter().flatten() {
                    if c["identity"] == client_id {
                        serials.insert(c["serial"].as_str().unwrap_or_default().to_string());
                    }
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            assert!(
                serials.len() >= 3,
                "certificate rotated during the connection: {serials:?}"
            );
            // And a new connection, under the newest certificate, works too.
            assert!(ask(&client, addr, "after").await?.contains("after"));
            TestResult::Ok(())
        },
    );
}

#[test]
fn ztunnel_and_agent_restarts_resend_pods() {
    run_test("ztunnel_and_agent_restarts_resend_pods", |dir| async move {
        let (mut mesh, client, addr) = client_and_server(&dir).await?;
        assert!(ask(&client, addr, "before").await?.contains("before"));

        mesh.kill_ztunnel("node-a")?;
        // Capture stays in place: with no ztunnel the pod cannot get out (fails closed).
        let bypass = tokio::time::timeout(Duration::from_secs(2), ask(&client, addr, "leak")).await;
        assert!(
            !matches!(bypass, Ok(Ok(ref a)) if a.contains("leak")),
            "traffic bypassed the dead ztunnel"
        );

        mesh.start_ztunnel("node-a").await?;
        let dump = mesh.config_dump("node-a").await?;
        let pods: Vec<String> = dump["pods"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| p["name"].as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(pods, vec!["client"], "the agent re-sent the pod");
        assert!(
            ask(&client, addr, "after restart")
                .await?
                .contains("after restart")
        );

        // The agent restarting (with its state file) keeps pods and live connections.
        let stream = connect_from(&client, addr).await?;
        let (r, mut w) = stream.into_split();
        let mut lines = tokio::io::BufReader::new(r);
        mesh.restart_agent("node-b").await?;
        mesh.restart_agent("node-a").await?;
        common::eventually(Duration::from_secs(10), || async {
            let log = mesh.log("ztunnel-node-a");
            if log.matches("node agent snapshot applied").count() >= 2 {
                Ok(())
            } else {
                Err("ztunnel has not resynced".to_string())
            }
        })
        .await?;
        w.write_all(b"still here\n").await?;
        let mut answer = String::new();
        tokio::io::AsyncBufReadExt::read_line(&mut lines, &mut answer).await?;
        assert!(answer.contains("still here"), "{answer}");
        assert!(ask(&client, addr, "new").await?.contains("new"));

        // An agent that cannot reopen a pod's namespace after a restart asks ztunnel to keep
        // what it has (KeepWorkload): the server pod stays served.
        let server_netns_path = mesh.lab.pod("default", "server").netns_path.clone();
        nix::mount::umount2(&server_netns_path, nix::mount::MntFlags::MNT_DETACH)?;
        mesh.restart_agent("node-b").await?;
        let status = mesh.agent_pods("node-b").await?;
        assert_eq!(status.len(), 1);
        assert!(!status[0].netns_open, "the namespace is gone from its path");
        common::eventually(Duration::from_secs(10), || async {
            let log = mesh.log("ztunnel-node-b");
            if log.matches("node agent snapshot applied").count() >= 3 {
                Ok(())
            } else {
                Err("ztunnel has not resynced".to_string())
            }
        })
        .await?;
        let dump = mesh.config_dump("node-b").await?;
        assert_eq!(dump["pods"][0]["name"], "server", "kept: {dump}");
        assert!(ask(&client, addr, "kept").await?.contains("kept"));

        // The admin endpoint stops ztunnel cleanly: it drains, and with the last connection
        // it carried closed, it exits without waiting for its drain period.
        drop((w, lines));
        mesh.ztunnel_get("node-a", 15000, "/quitquitquit").await?;
        let status = mesh
            .wait_ztunnel_exit("node-a", Duration::from_secs(5))
            .await?;
        assert!(status.success(), "clean exit: {status}");
        TestResult::Ok(())
    });
}

#[test]
fn ca_refuses_foreign_identities_and_bad_csrs() {
    use ambient_proto::istio::v1::auth::IstioCertificateRequest;
    use ambient_proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
    use tonic::transport::{Certificate, Channel, ClientTlsConfig};

    run_test(
        "ca_refuses_foreign_identities_and_bad_csrs",
        |dir| async move {
            let mesh = cluster(
                &dir,
                vec![
                    PodSpec::new("client", "node-a"),
                    PodSpec::new("server", "node-b"),
                ],
                vec![],
                &[],
                |_| {},
            )
            .await?;
            let root = std::fs::read(mesh.ca_dir().join("root-cert.pem"))?;
            let channel =
                Channel::from_shared(format!("https://{}", ambient_lab::mesh::controller_grpc()))?
                    .tls_config(
                        ClientTlsConfig::new()
                            .ca_certificate(Certificate::from_pem(&root))
                            .domain_name("istiod.istio-system.svc"),
                    )?
                    .connect()
                    .await?;
            let mut ca = IstioCertificateServiceClient::new(channel);
            let token_a = std::fs::read_to_string(mesh.token_path("node-a"))?;
            let request = |csr: String, identity: &str, token: Option<&str>| {
                let mut r = tonic::Request::new(IstioCertificateRequest {
                    csr,
                    validity_duration: 3600,
                    metadata: Some(ambient_proto::google::protobuf::Struct {
                        fields: [(
                            "ImpersonatedIdentity".to_string(),
                            ambient_proto::google::protobuf::Value {
                                kind: Some(
                                    ambient_proto::google::protobuf::value::Kind::StringValue(
                                        identity.to_string(),
                                    ),
                                ),
                            },
                        )]
                        .into(),
                    }),
                });
                if let Some(t) = token {
                    r.metadata_mut()
                        .insert("authorization", format!("Bearer {t}").parse().unwrap());
                }
                r
            };
            let csr = |uri: Option<&str>| {
                let key = KeyPair::generate().unwrap();
                let mut p = CertificateParams::default();
                if let Some(u) = uri {
                    p.subject_alt_names = vec![SanType::URI(u.try_into().unwrap())];
                }
                (p.serialize_request(&key).unwrap().pem().unwrap(), key)
            };
            let client_id = "spiffe://cluster.local/ns/default/sa/client";
            let server_id = "spiffe://cluster.local/ns/default/sa/server";

            // The right node, the right identity: a valid SVID comes back.
            let (pem, key) = csr(Some(client_id));
            let chain = ca
                .create_certificate(request(pem, client_id, Some(&token_a)))
                .await?
                .into_inner()
                .cert_chain;
            let cert = WorkloadCertificate::from_pem(
                chain.concat().as_bytes(),
                key.serialize_pem().as_bytes(),
            )?;
            assert_eq!(cert.identity(), &client_id.parse::<Identity>()?);

            // node-a asking for a pod of node-b.
            let (pem, _) = csr(None);
            let e = ca
                .create_certificate(request(pem, server_id, Some(&token_a)))
                .await
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied);
            assert!(
                e.message()
                    .contains("node node-a runs no pod with identity")
                    && e.message().contains("sa/server"),
                "{}",
                e.message()
            );

            // A malformed CSR.
            let e = ca.create_certificate(request("-----BEGIN CERTIFICATE REQUEST-----\nnonsense\n-----END CERTIFICATE REQUEST-----\n".into(), client_id, Some(&token_a))).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().contains("malformed CSR"), "{}", e.message());

            // A CSR naming another identity than the one asked for.
            let (pem, _) = csr(Some(server_id));
            let e = ca
                .create_certificate(request(pem, client_id, Some(&token_a)))
                .await
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{}", e.message());

            // No token, or a made-up one.
            let (pem, _) = csr(None);
            let e = ca
                .create_certificate(request(pem.clone(), client_id, None))
                .await
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated);
            let e = ca
                .create_certificate(request(pem, client_id, Some("forged")))
                .await
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated);
            let log = mesh.log("controller");
            assert!(log.contains("CA request refused"), "refusals are logged");
            TestResult::Ok(())
        },
    );
}

#[test]
fn controller_away_keeps_the_data_plane() {
    run_test("controller_away_keeps_the_data_plane", |dir| async move {
        let mut mesh = cluster(
            &dir,
            vec![
                PodSpec::new("client", "node-a"),
                PodSpec::new("server", "node-b"),
                PodSpec::new("other", "node-b"),
            ],
            vec![],
            &[],
            |_| {},
        )
        .await?;
        let client = mesh.lab.pod("default", "client").netns.clone();
        let server = mesh.lab.pod("default", "server");
        let other = mesh.lab.pod("default", "other");
        serve_hello(&server.netns, 8080, "server".into())?;
        serve_hello(&other.netns, 8080, "other".into())?;
        let server_addr = SocketAddr::new(IpAddr::V4(server.ip), 8080);
        let other_addr = SocketAddr::new(IpAddr::V4(other.ip), 8080);
        assert!(
            ask(&client, server_addr, "before")
                .await?
                .contains("before")
        );
        // Every enrolled pod's certificate was fetched when it arrived.
        common::eventually(Duration::from_secs(5), || async {
            let d = mesh
                .config_dump("node-b")
                .await
                .map_err(|e| e.to_string())?;
            let ready = d["certificates"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["state"] == "available")
                .count();
            if ready == 2 {
                Ok(())
            } else {
                Err(format!("{ready} certificates ready"))
            }
        })
        .await?;

        mesh.kill_controller();
        // Pooled connections keep working, and so does a brand-new HBONE connection (to a pod
        // never called before) made with the cached certificates.
        for i in 0..3 {
            let line = format!("without controller {i}");
            assert!(ask(&client, server_addr, &line).await?.contains(&line));
        }
        assert!(
            ask(&client, other_addr, "first call")
                .await?
                .contains("first call")
        );
        TestResult::Ok(())
    });
}

#[test]
fn released_pod_leaves_the_mesh() {
    run_test("released_pod_leaves_the_mesh", |dir| async move {
        let (mesh, client, addr) = client_and_server(&dir).await?;
        assert!(ask(&client, addr, "captured").await?.contains("captured"));
        let pods = mesh.agent_pods("node-a").await?;
        assert!(pods[0].captured, "rules present while enrolled");
        // A connection through the tunnel, kept open and busy until the release.
        let mut live = connect_from(&client, addr).await?;
        for _ in 0..50 {
            live.write_all(b"still here\n").await?;
            let mut answer = [0u8; 64];
            assert!(live.read(&mut answer).await? > 0, "answered while enrolled");
        }

        mesh.release("default", "client").await?;
        assert!(mesh.agent_pods("node-a").await?.is_empty());
        // Replies still in flight are read past; then the tunnel's side must be gone.
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            let mut rest = [0u8; 256];
            while let Ok(n) = live.read(&mut rest).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "the tunnel closes the pod's live connections when it lets the pod go"
        );
        let dump = mesh.config_dump("node-a").await?;
        assert_eq!(
            dump["pods"].as_array().map(Vec::len),
            Some(0),
            "ztunnel let go"
        );
        // The released client's traffic now goes out as it is: plaintext, straight to the
        // server pod, where the server's own capture takes it in on 15006.
        let before = mesh.metrics("node-a").await?;
        let opened = |m: &str| {
            metric(
                m,
                "istio_tcp_connections_opened_total",
                &[("reporter", "source")],
            )
        };
        assert!(ask(&client, addr, "released").await?.contains("released"));
        let after = mesh.metrics("node-a").await?;
        assert_eq!(
            opened(&before),
            opened(&after),
            "node-a's ztunnel saw nothing"
        );
        common::eventually(Duration::from_secs(5), || async {
            let b = mesh.metrics("node-b").await.map_err(|e| e.to_string())?;
            let n = metric(
                &b,
                "istio_tcp_connections_opened_total",
                &[
                    ("reporter", "destination"),
                    ("connection_security_policy", "unknown"),
                ],
            );
            if n >= 1.0 {
                Ok(())
            } else {
                Err("plaintext inbound not seen".into())
            }
        })
        .await?;
        TestResult::Ok(())
    });
}

/// A ztunnel replaced the way a rolling update with surge replaces it (the new process ready
/// first, then SIGTERM to the old) refuses no connection, and the old one keeps relaying the
/// connections it holds until they end: on the server's node (inbound HBONE: the client's pool
/// gets GOAWAY and dials the new process) and then on the client's (outbound listeners).
#[test]
fn ztunnel_restart_refuses_nothing() {
    run_test("ztunnel_restart_refuses_nothing", |dir| async move {
        let (mut mesh, client, server_addr) = client_and_server(&dir).await?;
        let server = mesh.lab.pod("default", "server").netns.clone();
        // The node agent let the pod's queued connections move between listeners.
        let migrate =
            server.run(|| std::fs::read_to_string(ztunnel::agent::capture::TCP_MIGRATE_REQ))??;
        assert_eq!(migrate.trim(), "1");

        // A connection opened before the restarts, through both old processes.
        let established = connect_from(&client, server_addr).await?;
        let (r, mut w) = established.into_split();
        let mut replies = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(r));
        let mut exchange =
            async |line: &str| -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
                w.write_all(format!("{line}\n").as_bytes()).await?;
                let reply = tokio::time::timeout(Duration::from_secs(5), replies.next_line())
                    .await??
                    .ok_or("the established connection closed")?;
                Ok(reply)
            };
        assert!(exchange("before").await?.contains("\"before\""));

        // New connections all along, two at a time.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let load: Vec<_> = (0..2)
            .map(|_| {
                let (client, stop) = (client.clone(), stop.clone());
                tokio::spawn(async move {
                    let (mut ok, mut failed) = (0u32, Vec::new());
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let asked = tokio::time::timeout(
                            Duration::from_secs(5),
                            ask(&client, server_addr, "new"),
                        )
                        .await;
                        match asked {
                            Ok(Ok(a)) if a.contains("\"new\"") => ok += 1,
                            Ok(Ok(a)) => failed.push(format!("answer {a:?}")),
                            Ok(Err(e)) => failed.push(e.to_string()),
                            Err(_) => failed.push("timed out".into()),
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();

        let mut drained = Vec::new();
        for node in ["node-b", "node-a"] {
            let mut old = mesh.upgrade_ztunnel(node).await?;
            let replaced = std::time::Instant::now();
            // The old process still carries the established connection.
            let reply = exchange(&format!("during {node}")).await?;
            assert!(reply.contains(&format!("\"during {node}\"")), "{reply}");
            assert!(old.exited().is_none(), "the old {node} ztunnel drains");
            drained.push((node, old, replaced));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut ok, mut failed) = (0, Vec::new());
        for l in load {
            let (o, f) = l.await?;
            ok += o;
            failed.extend(f);
        }
        assert!(
            failed.is_empty(),
            "{} of {} refused or failed, the first: {:?}",
            failed.len(),
            ok as usize + failed.len(),
            &failed[..failed.len().min(5)]
        );
        assert!(ok >= 20, "only {ok} connections during the restarts");

        // Once the last connection it carries ends, each old process exits, well before its
        // 20 s drain period.
        assert!(exchange("after").await?.contains("\"after\""));
        drop((w, replies));
        for (node, mut old, replaced) in drained {
            let status = old
                .exit_within(Duration::from_secs(15))
                .await
                .ok_or_else(|| format!("the old {node} ztunnel still runs"))?;
            assert!(status.success(), "{node}: {status}");
            assert!(
                replaced.elapsed() < Duration::from_secs(19),
                "{node} waited for its deadline"
            );
        }
        // The new processes serve alone.
        let answer = ask(&client, server_addr, "alone").await?;
        assert!(answer.contains("\"alone\""), "{answer}");

        // A port held by a process that does not share it (as a ztunnel from before port
        // sharing would): ztunnel takes the pod anyway and listens once the port is free.
        mesh.release("default", "server").await?;
        let squatter = server.run(|| std::net::TcpListener::bind("0.0.0.0:15008"))??;
        mesh.enrol("default", "server", "server").await?;
        eventually(Duration::from_secs(10), || async {
            if mesh
                .log("ztunnel-node-b")
                .contains("port held by another process")
            {
                Ok(())
            } else {
                Err("no word of the held port yet".to_string())
            }
        })
        .await?;
        drop(squatter);
        // Until the pod's listeners are up, the client's ztunnel closes the connection unanswered.
        eventually(Duration::from_secs(10), || async {
            match ask(&client, server_addr, "freed").await {
                Ok(a) if a.contains("\"freed\"") => Ok(()),
                Ok(a) => Err(format!("answer {a:?}")),
                Err(e) => Err(e.to_string()),
            }
        })
        .await?;
        TestResult::Ok(())
    });
}

/// istio-cni's in-pod rules with its defaults (`InpodMark` 0x539, `InpodTProxyMark` 0x111, mask
/// 0xfff), in iptables-restore form: TPROXY for inbound (HBONE to 15008, plaintext to 15006),
/// REDIRECT for outbound (15001), the mark-to-connmark step, and the connmark restored on
/// replies. Left out: its kubelet-probe SNAT address and DNS capture, which this test does not
/// use.
const ISTIO_CNI_INPOD_RULES: &str = "\
*mangle
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff
-A ISTIO_PRERT ! -d 127.0.0.1/32 -i lo -p tcp -j ACCEPT
-A ISTIO_PRERT -p tcp -m tcp --dport 15008 -m mark ! --mark 0x539/0xfff -j TPROXY --on-port 15008 --on-ip 0.0.0.0 --tproxy-mark 0x111/0xfff
-A ISTIO_PRERT -p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j TPROXY --on-port 15006 --on-ip 0.0.0.0 --tproxy-mark 0x111/0xfff
-A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff
COMMIT
*nat
:ISTIO_OUTPUT - [0:0]
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001
COMMIT
";

/// Replaces our capture rules in `netns` with istio-cni's (`iptables-restore`, iptables' nft
/// backend, as istio-cni runs it) and its policy routing, which is the same as ours.
fn apply_istio_cni_rules(netns: &ztunnel::inpod::netns::Netns) -> TestResult {
    use std::io::Write;
    ztunnel::agent::capture::remove(netns)?;
    let out = netns.run(|| {
        let mut child = std::process::Command::new("iptables-restore")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(ISTIO_CNI_INPOD_RULES.as_bytes())?;
        child.wait_with_output()
    })?;
    let out = out.map_err(|e| {
        format!("iptables-restore: {e} (Debian's iptables package; .ci/run installs it)")
    })?;
    if !out.status.success() {
        return Err(format!("iptables-restore: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    ip_in(
        netns,
        &[
            "rule",
            "add",
            "fwmark",
            "0x111/0xfff",
            "pref",
            "32764",
            "lookup",
            "100",
        ],
    )?;
    ip_in(
        netns,
        &[
            "route",
            "add",
            "local",
            "0.0.0.0/0",
            "dev",
            "lo",
            "table",
            "100",
        ],
    )?;
    Ok(())
}

/// Our ztunnel behind istio-cni's own rules (the other half of swapping node agents): mesh
/// traffic reaches the app from the client's address, and plaintext from outside the mesh
/// reaches it through the TPROXY'd passthrough listener.
#[test]
fn our_ztunnel_under_istio_cni_rules() {
    run_test("our_ztunnel_under_istio_cni_rules", |dir| async move {
        let (mesh, client_ns, server_addr) = client_and_server(&dir).await?;
        let client_ip = IpAddr::V4(mesh.lab.pod("default", "client").ip);
        let server = mesh.lab.pod("default", "server");
        for pod in [&client_ns, &server.netns] {
            apply_istio_cni_rules(pod)?;
            assert!(!ztunnel::agent::capture::installed(pod)?, "ours are gone");
        }
        let mangle = server.netns.run(|| {
            std::process::Command::new("iptables-save")
                .args(["-t", "mangle"])
                .output()
        })??;
        let mangle = String::from_utf8_lossy(&mangle.stdout);
        assert!(mangle.contains("TPROXY --on-port 15006"), "{mangle}");

        // Mesh: captured by REDIRECT in the client pod, HBONE TPROXY'd to 15008 in the server
        // pod, and the app sees the client's own address (its reply kept in the pod by the
        // connmark Istio's rules set from our 0x539).
        let answer = ask(&client_ns, server_addr, "via istio-cni rules").await?;
        assert!(answer.contains(&format!("from {client_ip}:")), "{answer}");
        let node_b = mesh.metrics("node-b").await?;
        let mtls = metric(
            &node_b,
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "destination"),
                ("connection_security_policy", "mutual_tls"),
            ],
        );
        assert!(mtls >= 1.0, "the server's ztunnel took it over HBONE");

        // Plaintext from the node (outside the mesh): TPROXY'd to 15006, whose accepted socket
        // carries the original destination; the app sees the node's address.
        let node_b_ns = mesh.lab.node("node-b").netns.clone();
        let answer = {
            let stream = connect_from(&node_b_ns, server_addr).await?;
            let peer = stream.local_addr()?;
            let (r, mut w) = stream.into_split();
            w.write_all(b"from outside\n").await?;
            let mut answer = String::new();
            tokio::io::AsyncBufReadExt::read_line(&mut tokio::io::BufReader::new(r), &mut answer)
                .await?;
            assert!(answer.contains(&format!("from {}:", peer.ip())), "{answer}");
            answer
        };
        assert!(answer.contains("from outside"), "{answer}");
        let plaintext = metric(
            &mesh.metrics("node-b").await?,
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "destination"),
                ("connection_security_policy", "unknown"),
            ],
        );
        assert!(plaintext >= 1.0, "the passthrough listener took it");
        TestResult::Ok(())
    });
}

/// `ip <args>` run inside `netns` (the child inherits the calling thread's namespace).
fn ip_in(netns: &ztunnel::inpod::netns::Netns, args: &[&str]) -> std::io::Result<String> {
    let out = netns.run(|| std::process::Command::new("ip").args(args).output())??;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Connects to `dst` from inside `netns` the way Istio's ztunnel reaches an app: a transparent
/// socket bound to the client's address and marked 0x539 (istio-cni's `InpodMark`), nothing
/// else. Under capture rules of another scheme its SYN-ACK leaves the pod and this times out.
async fn ask_as_istio_ztunnel(
    netns: &ztunnel::inpod::netns::Netns,
    client: IpAddr,
    dst: SocketAddr,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, setsockopt, socket,
        sockopt::{IpTransparent, Mark},
    };
    let fd = netns.run(|| {
        socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
    })??;
    setsockopt(&fd, Mark, &0x539)?;
    setsockopt(&fd, IpTransparent, &true)?;
    let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
    socket.bind(SocketAddr::new(client, 0))?;
    let stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(dst)).await??;
    let (r, mut w) = stream.into_split();
    w.write_all(b"as istio\n").await?;
    let mut answer = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut tokio::io::BufReader::new(r), &mut answer).await?;
    Ok(answer)
}

#[test]
fn istio_in_pod_marks_keep_original_source() {
    run_test(
        "istio_in_pod_marks_keep_original_source",
        |dir| async move {
            let (mesh, client_ns, server_addr) = client_and_server(&dir).await?;
            let client_ip = IpAddr::V4(mesh.lab.pod("default", "client").ip);
            let server = mesh.lab.pod("default", "server");

            // The routing half of istio-cni's scheme, as the kernel reports it.
            let rules = ip_in(&server.netns, &["rule", "show"])?;
            assert!(
                rules.contains("32764:\tfrom all fwmark 0x111/0xfff lookup 100"),
                "{rules}"
            );
            let table = ip_in(&server.netns, &["route", "show", "table", "100"])?;
            assert!(table.contains("local default dev lo"), "{table}");

            let in_pod = Sniffer::start(&server.netns)?;
            let on_node = Sniffer::start(&mesh.lab.node("node-b").netns)?;
            // Through the mesh: our ztunnel reaches the app as the client.
            let answer = ask(&client_ns, server_addr, "via ztunnel").await?;
            assert!(answer.contains(&format!("from {client_ip}:")), "{answer}");
            // As Istio's ztunnel would, behind this node agent.
            let answer = ask_as_istio_ztunnel(&server.netns, client_ip, server_addr).await?;
            assert!(
                answer.contains(&format!("got \"as istio\" from {client_ip}:")),
                "{answer}"
            );
            let (in_pod, on_node) = (in_pod.finish(), on_node.finish());

            // The app's replies to the client's (non-local) address stayed in the pod: seen on its
            // loopback (ifindex 1 in every namespace), never on the node's side of its veth.
            let replies = |c: &ambient_lab::sniff::Capture, lo_only: bool| {
                c.frames
                    .iter()
                    .filter(|f| !lo_only || f.ifindex == 1)
                    .filter_map(|f| ambient_lab::sniff::decode_tcp(&f.data))
                    .filter(|s| s.src == server_addr && s.dst.ip() == client_ip)
                    .count()
            };
            assert!(
                replies(&in_pod, true) >= 2,
                "a reply on the pod's loopback for each connection"
            );
            assert_eq!(replies(&on_node, false), 0, "no reply left the pod");

            // IPv6 where the pod has it: a plaintext connection from the node's side of the pod's
            // link, captured to ztunnel's IPv6 listener, reaches the app from the client's own
            // IPv6 address (the `ip -6` fwmark rule keeps the reply in the pod).
            let node_b = mesh.lab.node("node-b").netns.clone();
            ip_in(
                &node_b,
                &[
                    "-6",
                    "addr",
                    "add",
                    "fd00:244:2::1/64",
                    "dev",
                    "cni0",
                    "nodad",
                ],
            )?;
            ip_in(
                &server.netns,
                &[
                    "-6",
                    "addr",
                    "add",
                    "fd00:244:2::2/64",
                    "dev",
                    "eth0",
                    "nodad",
                ],
            )?;
            let rules6 = ip_in(&server.netns, &["-6", "rule", "show"])?;
            assert!(
                rules6.contains("32764:\tfrom all fwmark 0x111/0xfff lookup 100"),
                "{rules6}"
            );
            // Its own port: a dual-stack [::] socket would collide with the IPv4 one on 8080.
            let v6 = ambient_lab::http::listen_in(&server.netns, "[::]:8081".parse()?)?;
            tokio::spawn(async move {
                while let Ok((mut s, peer)) = v6.accept().await {
                    let _ = s.write_all(format!("from {peer}\n").as_bytes()).await;
                }
            });
            let mut from_node = connect_from(&node_b, "[fd00:244:2::2]:8081".parse()?).await?;
            let mut answer = String::new();
            from_node.read_to_string(&mut answer).await?;
            assert!(answer.starts_with("from [fd00:244:2::1]:"), "{answer}");
            let opened_v6 = metric(
                &mesh.metrics("node-b").await?,
                "istio_tcp_connections_opened_total",
                &[
                    ("reporter", "destination"),
                    ("connection_security_policy", "unknown"),
                ],
            );
            assert!(opened_v6 >= 1.0, "the IPv6 connection went through ztunnel");

            // Releasing the pod takes the routing pieces with the rules.
            mesh.release("default", "server").await?;
            let rules = ip_in(&server.netns, &["rule", "show"])?;
            assert!(!rules.contains("fwmark 0x111"), "{rules}");
            let rules6 = ip_in(&server.netns, &["-6", "rule", "show"])?;
            assert!(!rules6.contains("fwmark 0x111"), "{rules6}");
            TestResult::Ok(())
        },
    );
}
