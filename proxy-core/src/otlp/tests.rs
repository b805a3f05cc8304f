//! The exporter against real receivers on loopback: tonic's gRPC server, and an OTLP/HTTP
//! server over TLS written here with hyper and rustls.

use super::*;
use ambient_proto::opentelemetry::proto::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use std::sync::Mutex;
use tokio::net::TcpListener;

type OtlpSpan = Span;

fn resource(name: &str) -> Resource {
    Resource {
        attributes: vec![string("service.name", name)],
        dropped_attributes_count: 0,
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "test".into(),
        ..Default::default()
    }
}

#[test]
fn endpoints_parse() {
    let t = |s: &str| Target::parse(s);
    let grpc = t("http://sink.obs.svc.cluster.local:4317").unwrap();
    assert_eq!(
        (grpc.host.as_str(), grpc.port, grpc.tls, grpc.path.as_str()),
        ("sink.obs.svc.cluster.local", 4317, false, "")
    );
    assert_eq!(t("http://10.0.0.1/").unwrap().port, 4317);
    assert_eq!(t("collector:55680").unwrap().port, 55680);
    assert_eq!(t("http://[fd00::1]:4317").unwrap().host, "fd00::1");
    assert_eq!(
        t("http://[fd00::1]:4317").unwrap().to_string(),
        "http://[fd00::1]:4317"
    );
    assert!(t("https://collector").unwrap().tls);
    for bad in [
        "grpc://x:1",
        "http://x:0",
        "http://x:port",
        "http://x:4317/v1/traces",
        "http://",
        ":4317",
    ] {
        assert!(t(bad).is_err(), "{bad}");
    }

    let h = |s: &str| Target::parse_as(s, Protocol::HttpProtobuf);
    let http = h("http://jaeger.obs").unwrap();
    assert_eq!((http.port, http.path.as_str()), (4318, ""));
    assert_eq!(http.to_string(), "http://jaeger.obs:4318");
    // A base path, as OTEL_EXPORTER_OTLP_ENDPOINT's: signals post below it.
    let custom = h("https://collector:443/otlp/").unwrap();
    assert_eq!(
        (custom.port, custom.path.as_str(), custom.tls),
        (443, "/otlp", true)
    );
    for bad in ["http://x/a?b", "http://x/a#b", "http:///v1/traces"] {
        assert!(h(bad).is_err(), "{bad}");
    }
}

#[test]
fn tls_endpoints_need_roots_and_plaintext_ones_refuse_them() {
    let dir = tempfile::tempdir().unwrap();
    let ca = rcgen::generate_simple_self_signed(vec!["collector".into()]).unwrap();
    let pem_path = dir.path().join("ca.pem");
    std::fs::write(&pem_path, ca.cert.pem()).unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();

    let tls = Target::parse("https://collector:4317").unwrap();
    let with = tls.clone().with_roots(Some(&pem_path)).unwrap();
    assert_eq!(with.roots.as_deref(), Some(ca.cert.pem().as_bytes()));
    let err = tls.clone().with_roots(Some(&garbage)).unwrap_err();
    assert!(err.contains("garbage.pem"), "{err}");
    let err = tls
        .with_roots(Some(&dir.path().join("missing.pem")))
        .unwrap_err();
    assert!(err.contains("missing.pem"), "{err}");

    let plain = Target::parse("http://collector:4317").unwrap();
    assert!(plain.clone().with_roots(None).unwrap().roots.is_none());
    let err = plain.with_roots(Some(&pem_path)).unwrap_err();
    assert!(err.contains("use https://"), "{err}");
}

/// What the fake receiver got, and how it behaves.
#[derive(Clone, Default)]
struct Receiver {
    requests: Arc<Mutex<Vec<usize>>>,
    spans: Arc<Mutex<Vec<OtlpSpan>>>,
    hang: bool,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if self.hang {
            std::future::pending::<()>().await;
        }
        let req = request.into_inner();
        let spans: Vec<OtlpSpan> = req
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans)
            .collect();
        self.requests.lock().unwrap().push(spans.len());
        self.spans.lock().unwrap().extend(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

async fn serve(receiver: Receiver) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

fn span(i: u64) -> OtlpSpan {
    OtlpSpan {
        trace_id: vec![1; 16],
        span_id: (i + 1).to_be_bytes().to_vec(),
        name: format!("s{i}"),
        ..Default::default()
    }
}

fn target(addr: SocketAddr) -> Target {
    Target::parse(&addr.to_string()).unwrap()
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A certificate for `collector.test` signed by a new CA: (CA PEM, cert PEM, key PEM).
fn collector_certificate() -> (String, String, String) {
    let pki = crate::test_pki::server_pki(&["collector.test"]);
    (pki.ca_pem, pki.cert_pem, pki.key_pem)
}

/// An OTLP/HTTP receiver over TLS; the first export is answered with one span rejected.
async fn serve_http_tls(receiver: Receiver, cert: &str, key: &str) -> SocketAddr {
    use http_body_util::BodyExt;
    use prost::Message;
    let certs = ambient_proto::tls::certs_from_pem(cert.as_bytes()).unwrap();
    let key: rustls::pki_types::PrivateKeyDer<'static> =
        rustls::pki_types::pem::PemObject::from_pem_slice(key.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue; // a client that refused our certificate
            };
            let receiver = receiver.clone();
            let service = hyper::service::service_fn(
                move |req: hyper::Request<hyper::body::Incoming>| {
                    let receiver = receiver.clone();
                    async move {
                        assert_eq!(req.uri().path(), "/v1/traces");
                        assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                        assert_eq!(req.headers()["host"], format!("collector.test:{}", 4318));
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let export = ExportTraceServiceRequest::decode(body).unwrap();
                        let spans: Vec<OtlpSpan> = export
                            .resource_spans
                            .into_iter()
                            .flat_map(|r| r.scope_spans)
                            .flat_map(|s| s.spans)
                            .collect();
                        let first = receiver.requests.lock().unwrap().is_empty();
                        receiver.requests.lock().unwrap().push(spans.len());
                        receiver.spans.lock().unwrap().extend(spans);
                        let answer = ExportTraceServiceResponse {
                        partial_success: first.then_some(
                            ambient_proto::opentelemetry::proto::collector::trace::v1::ExportTracePartialSuccess {
                                rejected_spans: 1,
                                error_message: "one too many".into(),
                            },
                        ),
                    };
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(answer.encode_to_vec())),
                        ))
                    }
                },
            );
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service),
            );
        }
    });
    addr
}

/// Resolves `collector.test` to `addr`, as the mesh resolver resolves a Service.
fn resolve_to(addr: SocketAddr) -> MeshResolver {
    Arc::new(move |host: &str, _| (host == "collector.test").then_some(addr))
}

/// `endpoint` over `protocol`, checked against the CA `ca` (written to `dir`).
fn tls_target(dir: &std::path::Path, endpoint: &str, protocol: Protocol, ca: &str) -> Target {
    std::fs::write(dir.join("ca.pem"), ca).unwrap();
    Export {
        endpoint: endpoint.into(),
        protocol,
        ca_cert: Some(dir.join("ca.pem")),
    }
    .target()
    .unwrap()
}

/// A span exporter to `target`.
fn start(
    target: Target,
    settings: Settings,
    resolver: Option<MeshResolver>,
    shutdown: CancellationToken,
) -> (Exporter<Traces>, JoinHandle<()>) {
    Exporter::<Traces>::start(
        target,
        resource("test"),
        scope(),
        settings,
        resolver,
        shutdown,
    )
}

#[tokio::test]
async fn otlp_http_over_tls_posts_protobuf_and_counts_rejections() {
    let (ca, cert, key) = collector_certificate();
    let receiver = Receiver::default();
    let addr = serve_http_tls(receiver.clone(), &cert, &key).await;
    let dir = tempfile::tempdir().unwrap();
    let target = tls_target(
        dir.path(),
        "https://collector.test",
        Protocol::HttpProtobuf,
        &ca,
    );
    let settings = Settings {
        batch: 10,
        ..Settings::default()
    };
    let (exporter, _task) = start(
        target,
        settings,
        Some(resolve_to(addr)),
        CancellationToken::new(),
    );
    for i in 0..25 {
        exporter.record(span(i));
    }
    wait_for("25 spans delivered, one rejected", || {
        exporter.stats().exported.load(Ordering::Relaxed) == 24
            && exporter.stats().dropped.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(*receiver.requests.lock().unwrap(), vec![10, 10, 5]);
    // One connection carried all three exports (kept alive between batches).
    assert_eq!(exporter.stats().batches.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn tls_to_a_collector_whose_certificate_is_not_trusted_delivers_nothing() {
    let (_, cert, key) = collector_certificate();
    let (other_ca, _, _) = collector_certificate();
    let receiver = Receiver::default();
    let addr = serve_http_tls(receiver.clone(), &cert, &key).await;
    let dir = tempfile::tempdir().unwrap();
    let target = tls_target(
        dir.path(),
        "https://collector.test",
        Protocol::HttpProtobuf,
        &other_ca,
    );
    let (exporter, _task) = start(
        target,
        Settings::default(),
        Some(resolve_to(addr)),
        CancellationToken::new(),
    );
    exporter.record(span(0));
    wait_for("the span dropped", || {
        exporter.stats().dropped.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(exporter.stats().exported.load(Ordering::Relaxed), 0);
    assert!(receiver.requests.lock().unwrap().is_empty());
}

#[tokio::test]
async fn otlp_grpc_over_tls() {
    let (ca, cert, key) = collector_certificate();
    let receiver = Receiver::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(
                tonic::transport::Identity::from_pem(cert.as_bytes(), key.as_bytes()),
            ))
            .unwrap()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let dir = tempfile::tempdir().unwrap();
    let target = tls_target(
        dir.path(),
        &format!("https://collector.test:{}", addr.port()),
        Protocol::Grpc,
        &ca,
    );
    let (exporter, _task) = start(
        target,
        Settings::default(),
        Some(resolve_to(addr)),
        CancellationToken::new(),
    );
    for i in 0..3 {
        exporter.record(span(i));
    }
    wait_for("3 spans over gRPC with TLS", || {
        exporter.stats().exported.load(Ordering::Relaxed) == 3
    })
    .await;
    assert_eq!(receiver.spans.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn batches_by_size_then_by_time() {
    let receiver = Receiver::default();
    let addr = serve(receiver.clone()).await;
    let settings = Settings {
        batch: 100,
        interval: Duration::from_millis(300),
        ..Settings::default()
    };
    let (exporter, _task) = start(target(addr), settings, None, CancellationToken::new());
    let started = std::time::Instant::now();
    for i in 0..250 {
        exporter.record(span(i));
    }
    wait_for("all 250 spans exported", || {
        exporter.stats().exported.load(Ordering::Relaxed) == 250
    })
    .await;
    let sizes = receiver.requests.lock().unwrap().clone();
    assert_eq!(
        sizes,
        vec![100, 100, 50],
        "two full batches, then the rest on time"
    );
    assert_eq!(exporter.stats().batches.load(Ordering::Relaxed), 3);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "the partial batch waited for the interval"
    );
    let names: Vec<String> = receiver
        .spans
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(names.len(), 250);
    assert_eq!(names[0], "s0");
    assert_eq!(names[249], "s249");
    assert_eq!(exporter.stats().dropped.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_full_queue_drops_without_waiting_and_a_stuck_receiver_only_costs_spans() {
    let receiver = Receiver {
        hang: true,
        ..Receiver::default()
    };
    let addr = serve(receiver.clone()).await;
    let settings = Settings {
        queue: 64,
        batch: 16,
        interval: Duration::from_millis(20),
        timeout: Duration::from_millis(200),
        backoff_min: Duration::from_secs(60),
        backoff_max: Duration::from_secs(60),
    };
    let (exporter, _task) = start(target(addr), settings, None, CancellationToken::new());
    // The first batch goes out and hangs; the queue then fills and stays full.
    exporter.record(span(0));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = std::time::Instant::now();
    for i in 1..=10_000 {
        exporter.record(span(i));
    }
    let spent = t.elapsed();
    assert!(
        spent < Duration::from_millis(500),
        "recording never waits (10 000 spans took {spent:?})"
    );
    let dropped = exporter.stats().dropped.load(Ordering::Relaxed);
    assert!(dropped >= 10_000 - 64, "queue overflow dropped: {dropped}");
    // The hung export times out: its batch is dropped too.
    wait_for("the stuck export timed out", || {
        exporter.stats().dropped.load(Ordering::Relaxed) > dropped
    })
    .await;
    assert_eq!(exporter.stats().exported.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_receiver_that_is_down_costs_spans_then_reconnects_when_back() {
    // A port where nothing listens (bound, then closed).
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let settings = Settings {
        batch: 10,
        interval: Duration::from_millis(20),
        timeout: Duration::from_millis(500),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(100),
        ..Settings::default()
    };
    let (exporter, _task) = start(target(addr), settings, None, CancellationToken::new());
    for i in 0..10 {
        exporter.record(span(i));
    }
    wait_for("the failed batch counted", || {
        exporter.stats().dropped.load(Ordering::Relaxed) == 10
    })
    .await;
    // The receiver comes up on that port: later spans arrive.
    let receiver = Receiver::default();
    let listener = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut i = 10;
    wait_for("spans exported after the receiver came back", || {
        exporter.record(span(i));
        i += 1;
        exporter.stats().exported.load(Ordering::Relaxed) > 0
    })
    .await;
}

#[tokio::test]
async fn shutdown_flushes_what_is_queued() {
    let receiver = Receiver::default();
    let addr = serve(receiver.clone()).await;
    let shutdown = CancellationToken::new();
    let settings = Settings {
        interval: Duration::from_secs(60),
        ..Settings::default()
    };
    let (exporter, task) = start(target(addr), settings, None, shutdown.clone());
    for i in 0..5 {
        exporter.record(span(i));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the task ends")
        .unwrap();
    assert_eq!(receiver.spans.lock().unwrap().len(), 5);
}
