//! HBONE over real loopback sockets and real TLS: the happy path, pooling, and every way a
//! peer can be refused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use super::*;
use crate::identity::Identity;
use crate::tls::testing::{LeafSpec, TestCa};
use crate::tls::{self, CertSlot, Rejection, TrustBundle};

const TD: &str = "cluster.local";
const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/server";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";

/// An HBONE server that echoes every tunnel and reports refusals.
struct EchoServer {
    addr: SocketAddr,
    refusals: mpsc::UnboundedReceiver<Rejection>,
}

async fn echo_server(ca: &TestCa, server_uri: &str) -> EchoServer {
    echo_server_draining(ca, server_uri, tokio::sync::watch::channel(false).1, false).await
}

/// [`echo_server`] whose accepted connections drain (GOAWAY) once `drain` turns true; new
/// connections are still accepted, as a replacement process would accept them. With
/// `refuse_late`, a draining connection also refuses (REFUSED_STREAM) any stream that reaches
/// it after the drain began, however soon after, instead of serving it.
async fn echo_server_draining(
    ca: &TestCa,
    server_uri: &str,
    drain: tokio::sync::watch::Receiver<bool>,
    refuse_late: bool,
) -> EchoServer {
    let slot = Arc::new(CertSlot::new());
    slot.store(ca.issue(server_uri));
    let config = tls::server_config(slot, &ca.bundle(TD)).unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, refusals) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            // Only connections accepted before the drain began are drained.
            let mut drain = drain.clone();
            let accepted_draining = *drain.borrow_and_update();
            let late = drain.clone();
            tokio::spawn(async move {
                let handler = move |inbound: InboundConnect| {
                    let refuse = refuse_late && !accepted_draining && *late.borrow();
                    async move { echo_or_refuse(inbound, refuse).await }
                };
                let draining = async move {
                    if accepted_draining || drain.wait_for(|d| *d).await.is_err() {
                        std::future::pending::<()>().await;
                    }
                };
                if let Err(e) = serve_connection_until(
                    tcp,
                    peer,
                    acceptor,
                    H2Settings::default(),
                    handler,
                    draining,
                )
                .await
                {
                    tx.send(e.reason).unwrap();
                }
            });
        }
    });
    EchoServer { addr, refusals }
}

/// Echoes one tunnel: refused unprocessed when `refuse`, 503 for port 9, else bytes back.
async fn echo_or_refuse(inbound: InboundConnect, refuse: bool) {
    if refuse {
        inbound.refuse_unprocessed();
        return;
    }
    if inbound.authority().unwrap().port() == 9 {
        inbound.reject(ConnectStatus::Unavailable);
        return;
    }
    let mut stream = inbound.accept().unwrap();
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (r, w) = tokio::io::split(a);
    tokio::spawn(async move {
        let (mut br, mut bw) = tokio::io::split(b);
        tokio::io::copy(&mut br, &mut bw).await.unwrap();
        bw.shutdown().await.unwrap();
    });
    let _ = relay(r, w, &mut stream, &()).await;
}

fn client_config(ca: &TestCa, client_uri: &str, expect: &str) -> Arc<ClientConfig> {
    let cert = ca.issue(client_uri);
    Arc::new(tls::client_config(&cert, &ca.bundle(TD), vec![expect.parse().unwrap()]).unwrap())
}

async fn dial(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<HboneConnection, HboneError> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    HboneConnection::handshake(tcp, addr, config, &H2Settings::default()).await
}

async fn echo_through(conn: &HboneConnection, payload: &[u8]) -> Vec<u8> {
    let target: SocketAddr = "10.0.0.1:8080".parse().unwrap();
    let mut stream = conn.connect(&ConnectRequest::new(target)).await.unwrap();
    let (app, test_side) = tokio::io::duplex(64 * 1024);
    let (r, w) = tokio::io::split(app);
    let relay_task = tokio::spawn(async move { relay(r, w, &mut stream, &()).await });
    let (mut rd, mut wr) = tokio::io::split(test_side);
    let payload = payload.to_vec();
    let writer = tokio::spawn(async move {
        wr.write_all(&payload).await.unwrap();
        wr.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    rd.read_to_end(&mut got).await.unwrap();
    writer.await.unwrap();
    relay_task.await.unwrap().unwrap();
    got
}

#[tokio::test]
async fn tunnels_bytes_both_ways() {
    let ca = TestCa::new("root");
    let server = echo_server(&ca, SERVER_ID).await;
    let conn = dial(server.addr, client_config(&ca, CLIENT_ID, SERVER_ID))
        .await
        .unwrap();
    assert_eq!(conn.peer_identity().to_string(), SERVER_ID);
    // Larger than every window and buffer, to exercise flow control.
    let payload: Vec<u8> = (0..20 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    assert_eq!(echo_through(&conn, &payload).await, payload);
    // A second stream on the same connection.
    assert_eq!(echo_through(&conn, b"again").await, b"again");
}

#[tokio::test]
async fn peer_status_is_reported() {
    let ca = TestCa::new("root");
    let server = echo_server(&ca, SERVER_ID).await;
    let conn = dial(server.addr, client_config(&ca, CLIENT_ID, SERVER_ID))
        .await
        .unwrap();
    let err = conn
        .connect(&ConnectRequest::new("10.0.0.1:9".parse().unwrap()))
        .await
        .unwrap_err();
    assert!(matches!(err, HboneError::Status(s) if s == 503), "{err}");
}

#[tokio::test]
async fn pool_reuses_one_connection_for_many_streams() {
    let ca = TestCa::new("root");
    let server = echo_server(&ca, SERVER_ID).await;
    let pool: Pool<&'static str> = Pool::new(PoolSettings::default());
    let config = client_config(&ca, CLIENT_ID, SERVER_ID);
    let dials = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut held = Vec::new();
    for _ in 0..10 {
        let config = config.clone();
        let dials = dials.clone();
        let s = pool
            .stream(
                &"key",
                &ConnectRequest::new("10.0.0.1:80".parse().unwrap()),
                || async move {
                    dials.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    dial(server.addr, config).await
                },
            )
            .await
            .unwrap();
        held.push(s);
    }
    assert_eq!(dials.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(held[1..].iter().all(|s| s.reused));
    assert_eq!(pool.connection_count(), 1);
}

/// A stream for key 1 from `pool`, dialing `addr` when the pool wants a connection.
async fn pooled_stream(
    pool: &Pool<u8>,
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
) -> PooledStream {
    let config = config.clone();
    pool.stream(
        &1,
        &ConnectRequest::new("10.0.0.1:80".parse().unwrap()),
        || dial(addr, config),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn pool_opens_another_connection_when_streams_run_out() {
    let ca = TestCa::new("root");
    let server = echo_server(&ca, SERVER_ID).await;
    let pool: Pool<u8> = Pool::new(PoolSettings {
        max_streams_per_connection: 2,
        ..PoolSettings::default()
    });
    let config = client_config(&ca, CLIENT_ID, SERVER_ID);
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(pooled_stream(&pool, server.addr, &config).await);
    }
    assert_eq!(pool.connection_count(), 3);
}

/// Streams open at the same time go to separate connections up to `spread`, then to the
/// least-loaded one; with `spread` 1 they share one.
#[tokio::test]
async fn concurrent_streams_spread_over_connections() {
    let ca = TestCa::new("root");
    let server = echo_server(&ca, SERVER_ID).await;
    let config = client_config(&ca, CLIENT_ID, SERVER_ID);
    for (spread, connections) in [(1, 1), (2, 2), (3, 3)] {
        let pool: Pool<u8> = Pool::new(PoolSettings {
            spread,
            ..PoolSettings::default()
        });
        let mut held = Vec::new();
        for _ in 0..6 {
            held.push(pooled_stream(&pool, server.addr, &config).await);
        }
        assert_eq!(pool.connection_count(), connections, "spread {spread}");
        assert_eq!(
            pool.streams_per_connection(&1),
            vec![6 / connections; connections],
            "spread {spread}: streams evenly over the connections"
        );
        // A lone stream after the others ended reuses a connection instead of dialing.
        drop(held);
        assert!(pooled_stream(&pool, server.addr, &config).await.reused);
        assert_eq!(pool.connection_count(), connections);
    }
}

/// A dial made only to spread streams that fails leaves the stream on the connection that
/// still has room: spreading never turns a working pool into a failed stream.
#[tokio::test]
async fn a_failed_spreading_dial_falls_back_to_a_pooled_connection() {
    let ca = TestCa::new("root");
    let server = echo_server(&ca, SERVER_ID).await;
    let config = client_config(&ca, CLIENT_ID, SERVER_ID);
    let pool: Pool<u8> = Pool::new(PoolSettings {
        spread: 2,
        ..PoolSettings::default()
    });
    let req = ConnectRequest::new("10.0.0.1:80".parse().unwrap());
    let first = pooled_stream(&pool, server.addr, &config).await;
    let unreachable: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let second = pool
        .stream(&1, &req, || async move {
            Err(HboneError::Connect {
                addr: unreachable,
                source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
            })
        })
        .await
        .expect("the stream rides the pooled connection");
    assert!(second.reused);
    assert_eq!(pool.streams_per_connection(&1), vec![2]);
    drop((first, second));
    // With no connection at all, the dial's error is the answer.
    let empty: Pool<u8> = Pool::new(PoolSettings {
        spread: 2,
        ..PoolSettings::default()
    });
    let failed = empty
        .stream(&1, &req, || async move {
            Err(HboneError::Connect {
                addr: unreachable,
                source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
            })
        })
        .await;
    assert!(matches!(failed, Err(HboneError::Connect { .. })));
}

/// A server that drains sends GOAWAY: the stream it carries goes on, the pool stops choosing
/// that connection (one new dial, not one per stream) and new streams reach a new connection.
#[tokio::test]
async fn a_draining_peer_keeps_its_streams_and_the_pool_dials_anew() {
    let ca = TestCa::new("root");
    let (drain, draining) = tokio::sync::watch::channel(false);
    let server = echo_server_draining(&ca, SERVER_ID, draining, false).await;
    let pool: Pool<u8> = Pool::new(PoolSettings::default());
    let config = client_config(&ca, CLIENT_ID, SERVER_ID);
    let dials = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let open = || {
        let (config, dials) = (config.clone(), dials.clone());
        let pool = &pool;
        async move {
            pool.stream(
                &1,
                &ConnectRequest::new("10.0.0.1:80".parse().unwrap()),
                || {
                    dials.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    dial(server.addr, config)
                },
            )
            .await
            .unwrap()
        }
    };
    // A long stream on the first connection: the app side is a duplex the test holds.
    let long = open().await;
    let (mut stream, _guard) = long.into_parts();
    let (app, test_side) = tokio::io::duplex(1024);
    let (r, w) = tokio::io::split(app);
    let relay_task = tokio::spawn(async move { relay(r, w, &mut stream, &()).await });
    let (mut rd, mut wr) = tokio::io::split(test_side);
    wr.write_all(b"before").await.unwrap();
    let mut got = [0u8; 6];
    rd.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"before");

    drain.send(true).unwrap();
    // Streams opened before the GOAWAY reaches the client still land on the old connection
    // (which accepts them); wait for the one that needed a new dial.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while dials.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        assert!(std::time::Instant::now() < deadline, "no new connection");
        drop(open().await);
    }
    // The old connection is out of the pool's choice: more streams, no more dials.
    for _ in 0..5 {
        drop(open().await);
    }
    assert_eq!(dials.load(std::sync::atomic::Ordering::SeqCst), 2);
    // The long stream still runs on the draining connection.
    wr.write_all(b"after!").await.unwrap();
    rd.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"after!");
    wr.shutdown().await.unwrap();
    let mut rest = Vec::new();
    rd.read_to_end(&mut rest).await.unwrap();
    relay_task.await.unwrap().unwrap();
}

/// A restarting peer drains every pooled connection at once and refuses the streams that
/// reach them late: a new stream tries each pooled connection that still looks live, retires
/// those that refuse, and ends on a fresh dial. It never fails because the pool held more
/// than one connection.
#[tokio::test]
async fn a_peer_refusing_on_every_connection_fails_no_new_stream() {
    let ca = TestCa::new("root");
    let (drain, draining) = tokio::sync::watch::channel(false);
    let server = echo_server_draining(&ca, SERVER_ID, draining, true).await;
    let config = client_config(&ca, CLIENT_ID, SERVER_ID);
    // Two connections with one stream each held open, so both stay up while draining.
    let pool: Pool<u8> = Pool::new(PoolSettings {
        max_streams_per_connection: 2,
        ..PoolSettings::default()
    });
    let mut held: Vec<_> = Vec::new();
    for _ in 0..3 {
        held.push(pooled_stream(&pool, server.addr, &config).await);
    }
    held.remove(1);
    assert_eq!(pool.streams_per_connection(&1), vec![1, 1]);

    drain.send(true).unwrap();
    let dials = std::sync::atomic::AtomicUsize::new(0);
    let stream = pool
        .stream(
            &1,
            &ConnectRequest::new("10.0.0.1:80".parse().unwrap()),
            || {
                dials.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                dial(server.addr, config.clone())
            },
        )
        .await
        .expect("a stream while every pooled connection refuses");
    assert!(!stream.reused);
    assert_eq!(dials.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Both refusing connections are out of the pool's choice; the held streams go on.
    assert_eq!(pool.streams_per_connection(&1), vec![1]);
    drop(held);
}

/// Connects with a hand-made client certificate and returns what the server said.
async fn refused_with(ca: &TestCa, server_ca: &TestCa, spec: Option<LeafSpec>) -> Rejection {
    let mut server = echo_server(server_ca, SERVER_ID).await;
    let verifier = Arc::new(tls::SpiffeServerVerifier::new(
        server_ca.bundle(TD).roots().clone(),
        vec![SERVER_ID.parse().unwrap()],
        tls::provider(),
    ));
    let builder = ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match spec {
        Some(spec) => {
            let (chain, key) = ca.issue_raw(spec);
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    // In TLS 1.3 the client may finish before the server rejects it; either way the server
    // must report the reason.
    let _ = dial(server.addr, Arc::new(config)).await;
    tokio::time::timeout(Duration::from_secs(5), server.refusals.recv())
        .await
        .expect("server reports a refusal")
        .unwrap()
}

#[tokio::test]
async fn refuses_client_without_certificate() {
    let ca = TestCa::new("root");
    assert_eq!(
        refused_with(&ca, &ca, None).await,
        Rejection::NoClientCertificate
    );
}

#[tokio::test]
async fn refuses_other_trust_domain() {
    let ca = TestCa::new("root");
    let spec = LeafSpec::valid("spiffe://evil.example/ns/default/sa/client");
    assert_eq!(
        refused_with(&ca, &ca, Some(spec)).await,
        Rejection::TrustDomainMismatch
    );
}

#[tokio::test]
async fn refuses_unknown_issuer() {
    let ours = TestCa::new("ours");
    let theirs = TestCa::new("theirs");
    let spec = LeafSpec::valid(CLIENT_ID);
    assert_eq!(
        refused_with(&theirs, &ours, Some(spec)).await,
        Rejection::UnknownIssuer
    );
}

#[tokio::test]
async fn refuses_ca_leaf() {
    let ca = TestCa::new("root");
    let mut spec = LeafSpec::valid(CLIENT_ID);
    spec.ca = true;
    assert_eq!(
        refused_with(&ca, &ca, Some(spec)).await,
        Rejection::CaCertificateAsLeaf
    );
}

#[tokio::test]
async fn refuses_expired() {
    let ca = TestCa::new("root");
    let mut spec = LeafSpec::valid(CLIENT_ID);
    spec.not_before = time::OffsetDateTime::now_utc() - Duration::from_secs(7200);
    spec.not_after = time::OffsetDateTime::now_utc() - Duration::from_secs(3600);
    assert_eq!(refused_with(&ca, &ca, Some(spec)).await, Rejection::Expired);
}

#[tokio::test]
async fn refuses_non_tls() {
    let ca = TestCa::new("root");
    let mut server = echo_server(&ca, SERVER_ID).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let reason = server.refusals.recv().await.unwrap();
    assert_eq!(reason, Rejection::NotTls);
}

#[tokio::test]
async fn refuses_garbage_after_handshake() {
    let ca = TestCa::new("root");
    let mut server = echo_server(&ca, SERVER_ID).await;
    let config = client_config(&ca, CLIENT_ID, SERVER_ID);
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::IpAddress(server.addr.ip().into());
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(b"this is not an HTTP/2 preface at all, not even close\r\n\r\n")
        .await
        .unwrap();
    tls.flush().await.unwrap();
    let reason = server.refusals.recv().await.unwrap();
    assert_eq!(reason, Rejection::Http2Protocol);
}

#[tokio::test]
async fn client_refuses_unexpected_server_identity() {
    let ca = TestCa::new("root");
    let server = echo_server(&ca, "spiffe://cluster.local/ns/default/sa/impostor").await;
    let err = dial(server.addr, client_config(&ca, CLIENT_ID, SERVER_ID))
        .await
        .unwrap_err();
    assert_eq!(err.rejection(), Some(Rejection::IdentityMismatch), "{err}");
}

#[test]
fn bundle_and_identity_helpers() {
    let ca = TestCa::new("root");
    let cert = ca.issue(CLIENT_ID);
    let id: Identity = CLIENT_ID.parse().unwrap();
    assert_eq!(cert.identity(), &id);
    assert!(cert.not_after() > cert.not_before());
    let bundle: TrustBundle = ca.bundle(TD);
    assert_eq!(bundle.root_certs().len(), 1);
}
