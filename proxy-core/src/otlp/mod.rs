//! OTLP export, for any signal: the waypoint's request spans ([`Traces`]) and both proxies'
//! access logs ([`Logs`], see [`access_log`]), over gRPC or HTTP with protobuf bodies, in
//! plaintext or TLS ([`target`]).
//!
//! The data path only ever calls [`Exporter::record`], which puts the item in a bounded
//! queue with `try_send`: it never waits, never allocates a connection, and when the queue is
//! full the item is dropped and counted (`ambient_<signal>_dropped_total{reason="queue_full"}`).
//! A background task takes items off the queue in batches (up to [`Settings::batch`], or
//! whatever arrived within [`Settings::interval`] of the batch's first) and exports each
//! batch with a deadline. A batch that cannot be delivered (no connection, timeout, error
//! status) is dropped and counted (`reason="export_failed"`), the connection is thrown away
//! and the next one is attempted after an exponential backoff. So a collector that is down
//! or slow costs telemetry, never traffic.
//!
//! The endpoint may name a Service of the mesh (`http://<svc>.<ns>.svc.cluster.local:4317`,
//! `<svc>.<ns>:4317`): proxies are not captured by ztunnel and cannot use the mesh's DNS, so
//! such names are resolved from the proxy's own xDS view ([`mesh_resolver`]: one healthy
//! endpoint of that Service, at the port's target port); TLS still checks the certificate
//! against the name in the endpoint. An IP address is used as is; any other name goes to the
//! system resolver.

pub mod access_log;
pub mod target;

use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ambient_proto::opentelemetry::proto::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use ambient_proto::opentelemetry::proto::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use ambient_proto::opentelemetry::proto::common::v1::KeyValue;
use ambient_proto::opentelemetry::proto::common::v1::{AnyValue, InstrumentationScope, any_value};
use ambient_proto::opentelemetry::proto::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use ambient_proto::opentelemetry::proto::resource::v1::Resource;
use ambient_proto::opentelemetry::proto::trace::v1::{ResourceSpans, ScopeSpans, Span};
use bytes::Bytes;
use http_body_util::Full;
use metrics::counter;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use target::{Export, OtlpArgs, Protocol, Target};

/// One kind of OTLP data: its item, its export messages, and where it is posted.
pub trait Signal: Send + Sync + 'static {
    type Item: Send + Sync + 'static;
    type Request: prost::Message + Default + Send + Sync + 'static;
    type Response: prost::Message + Default + Send + Sync + 'static;
    /// `spans`, `logs`: in metric names and messages.
    const NAME: &'static str;
    /// `ambient_<NAME>_exported_total`.
    const EXPORTED: &'static str;
    /// `ambient_<NAME>_dropped_total{reason}`.
    const DROPPED: &'static str;
    /// The gRPC method.
    const GRPC_METHOD: &'static str;
    /// The OTLP/HTTP path, below the endpoint's base path.
    const HTTP_PATH: &'static str;
    /// One export of `items`, all from `resource` and `scope`.
    fn request(
        resource: Resource,
        scope: InstrumentationScope,
        items: Vec<Self::Item>,
    ) -> Self::Request;
    /// How many items the receiver said it rejected.
    fn rejected(response: &Self::Response) -> i64;
}

/// Spans (`TraceService/Export`, `/v1/traces`).
pub struct Traces;

impl Signal for Traces {
    type Item = Span;
    type Request = ExportTraceServiceRequest;
    type Response = ExportTraceServiceResponse;
    const NAME: &'static str = "spans";
    const EXPORTED: &'static str = "ambient_spans_exported_total";
    const DROPPED: &'static str = "ambient_spans_dropped_total";
    const GRPC_METHOD: &'static str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    const HTTP_PATH: &'static str = "/v1/traces";

    fn request(resource: Resource, scope: InstrumentationScope, spans: Vec<Span>) -> Self::Request {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }

    fn rejected(response: &Self::Response) -> i64 {
        response
            .partial_success
            .as_ref()
            .map_or(0, |p| p.rejected_spans)
    }
}

/// Log records (`LogsService/Export`, `/v1/logs`).
pub struct Logs;

impl Signal for Logs {
    type Item = LogRecord;
    type Request = ExportLogsServiceRequest;
    type Response = ExportLogsServiceResponse;
    const NAME: &'static str = "logs";
    const EXPORTED: &'static str = "ambient_logs_exported_total";
    const DROPPED: &'static str = "ambient_logs_dropped_total";
    const GRPC_METHOD: &'static str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
    const HTTP_PATH: &'static str = "/v1/logs";

    fn request(
        resource: Resource,
        scope: InstrumentationScope,
        log_records: Vec<LogRecord>,
    ) -> Self::Request {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(resource),
                scope_logs: vec![ScopeLogs {
                    scope: Some(scope),
                    log_records,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }

    fn rejected(response: &Self::Response) -> i64 {
        response
            .partial_success
            .as_ref()
            .map_or(0, |p| p.rejected_log_records)
    }
}

/// Describes both signals' counters.
pub fn describe() {
    for (exported, dropped, what) in [
        (Traces::EXPORTED, Traces::DROPPED, "Spans"),
        (Logs::EXPORTED, Logs::DROPPED, "Log records"),
    ] {
        metrics::describe_counter!(exported, format!("{what} accepted by the OTLP receiver"));
        metrics::describe_counter!(
            dropped,
            format!("{what} not delivered, by reason (queue_full, export_failed, rejected)")
        );
    }
}

/// A string attribute.
pub fn string(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
    }
}

/// An integer attribute.
pub fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
    }
}

/// How the exporter queues, batches and retries.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Items waiting for export; beyond this, new ones are dropped.
    pub queue: usize,
    /// Most items in one export.
    pub batch: usize,
    /// How long a batch waits for more items after its first one.
    pub interval: Duration,
    /// Deadline of one connection attempt and of one export call.
    pub timeout: Duration,
    /// Reconnection backoff: first wait, doubled after each failure up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            queue: 2048,
            batch: 512,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// Resolves a host name from the mesh's own view (Service hostnames), before DNS.
pub type MeshResolver = Arc<dyn Fn(&str, u16) -> Option<SocketAddr> + Send + Sync>;

/// Resolves `host:port` against the mesh's Services: `<svc>.<ns>`, `<svc>.<ns>.svc` or the
/// full hostname, to one healthy endpoint at the port's target port.
pub fn mesh_resolver(state: Arc<crate::state::StateStore>) -> MeshResolver {
    Arc::new(move |host: &str, port: u16| {
        let snapshot = state.load();
        let host = host.trim_end_matches('.');
        let candidates = [
            host.to_string(),
            format!("{host}.cluster.local"),
            format!("{host}.svc.cluster.local"),
        ];
        for name in &candidates {
            for service in snapshot.services_by_hostname(name) {
                let Some(sp) = service.ports.iter().find(|p| p.service_port == port) else {
                    continue;
                };
                let key = service.key();
                let endpoint = snapshot
                    .endpoints(service)
                    .iter()
                    .filter(|w| w.healthy)
                    .find_map(|w| w.addresses.first().map(|ip| (ip, w)));
                if let Some((ip, w)) = endpoint {
                    return Some(SocketAddr::new(*ip, w.target_port(&key, sp)));
                }
            }
        }
        None
    })
}

/// Counts kept by the exporter itself (the same figures as its metrics), for tests and
/// diagnostics.
#[derive(Debug, Default)]
pub struct Stats {
    pub exported: AtomicU64,
    pub dropped: AtomicU64,
    pub batches: AtomicU64,
}

impl Stats {
    fn drop_items<S: Signal>(&self, n: u64, reason: &'static str) {
        if n > 0 {
            self.dropped.fetch_add(n, Ordering::Relaxed);
            counter!(S::DROPPED, "reason" => reason).increment(n);
        }
    }
}

/// The data path's handle: cheap to clone, never blocks.
pub struct Exporter<S: Signal> {
    tx: mpsc::Sender<S::Item>,
    stats: Arc<Stats>,
}

impl<S: Signal> Clone for Exporter<S> {
    fn clone(&self) -> Self {
        Exporter {
            tx: self.tx.clone(),
            stats: self.stats.clone(),
        }
    }
}

impl<S: Signal> Exporter<S> {
    /// Starts the export task; it runs until `shutdown`, then tries one last export of what
    /// is queued.
    pub fn start(
        target: Target,
        resource: Resource,
        scope: InstrumentationScope,
        settings: Settings,
        resolver: Option<MeshResolver>,
        shutdown: CancellationToken,
    ) -> (Exporter<S>, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(settings.queue.max(1));
        let stats = Arc::new(Stats::default());
        let task = Batcher::<S> {
            rx,
            target,
            resource,
            scope,
            settings,
            resolver,
            stats: stats.clone(),
            client: None,
            failing: false,
            signal: PhantomData,
        };
        let handle = tokio::spawn(task.run(shutdown));
        (Exporter { tx, stats }, handle)
    }

    /// Queues an item for export; drops it (counted) when the queue is full.
    pub fn record(&self, item: S::Item) {
        if self.tx.try_send(item).is_err() {
            self.stats.drop_items::<S>(1, "queue_full");
        }
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }
}

/// The export task.
struct Batcher<S: Signal> {
    rx: mpsc::Receiver<S::Item>,
    target: Target,
    resource: Resource,
    scope: InstrumentationScope,
    settings: Settings,
    resolver: Option<MeshResolver>,
    stats: Arc<Stats>,
    client: Option<Client>,
    /// The receiver is known to be failing (reported once, until it recovers).
    failing: bool,
    signal: PhantomData<S>,
}

/// A connection to the receiver, kept between batches.
enum Client {
    Grpc(tonic::client::Grpc<tonic::transport::Channel>),
    /// One HTTP/1.1 connection; a new one after any failure.
    Http(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S: Signal> Batcher<S> {
    async fn run(mut self, shutdown: CancellationToken) {
        info!(endpoint = %self.target, signal = S::NAME, "exporting over OTLP");
        let mut backoff = self.settings.backoff_min;
        loop {
            let max = self.settings.batch.max(1);
            let mut batch = Vec::with_capacity(max);
            tokio::select! {
                n = self.rx.recv_many(&mut batch, max) => if n == 0 { return },
                () = shutdown.cancelled() => return self.flush().await,
            }
            let deadline = Instant::now() + self.settings.interval;
            let mut stopping = false;
            while batch.len() < max {
                let room = max - batch.len();
                tokio::select! {
                    n = self.rx.recv_many(&mut batch, room) => if n == 0 { break },
                    () = tokio::time::sleep_until(deadline) => break,
                    () = shutdown.cancelled() => { stopping = true; break }
                }
            }
            if self.export(batch).await {
                backoff = self.settings.backoff_min;
            } else {
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => stopping = true,
                }
                backoff = (backoff * 2).min(self.settings.backoff_max);
            }
            if stopping {
                return self.flush().await;
            }
        }
    }

    /// One last export of what is queued, at shutdown.
    async fn flush(mut self) {
        let mut rest = Vec::new();
        while let Ok(s) = self.rx.try_recv() {
            rest.push(s);
        }
        let max = self.settings.batch.max(1);
        while !rest.is_empty() {
            let chunk: Vec<S::Item> = rest.drain(..rest.len().min(max)).collect();
            if !self.export(chunk).await {
                break;
            }
        }
    }

    /// Exports one batch; `false` (the batch dropped and counted) when it failed.
    async fn export(&mut self, items: Vec<S::Item>) -> bool {
        let n = items.len() as u64;
        let timeout = self.settings.timeout;
        let client = match self.client.take() {
            Some(c) => c,
            None => match tokio::time::timeout(timeout, self.connect()).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return self.failed(n, &format!("cannot connect: {}", chain(&*e))),
                Err(_) => return self.failed(n, "connection timed out"),
            },
        };
        let request = S::request(self.resource.clone(), self.scope.clone(), items);
        let sent = match client {
            Client::Grpc(mut grpc) => {
                match tokio::time::timeout(timeout, grpc_export::<S>(&mut grpc, request)).await {
                    Ok(Ok(response)) => Ok((Client::Grpc(grpc), response)),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err("export timed out".to_string()),
                }
            }
            Client::Http(mut sender) => {
                match tokio::time::timeout(timeout, self.post(&mut sender, &request)).await {
                    Ok(Ok(response)) => Ok((Client::Http(sender), response)),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err("export timed out".to_string()),
                }
            }
        };
        match sent {
            Ok((client, response)) => {
                let rejected = S::rejected(&response).clamp(0, n as i64) as u64;
                self.stats.drop_items::<S>(rejected, "rejected");
                self.stats
                    .exported
                    .fetch_add(n - rejected, Ordering::Relaxed);
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                counter!(S::EXPORTED).increment(n - rejected);
                if std::mem::take(&mut self.failing) {
                    info!(endpoint = %self.target, signal = S::NAME, "OTLP receiver reachable again");
                }
                self.client = Some(client);
                true
            }
            Err(why) => self.failed(n, &why),
        }
    }

    /// One OTLP/HTTP export: the request as a protobuf body; a 2xx answer's body is the
    /// signal's export response (empty means full success).
    async fn post(
        &self,
        sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        request: &S::Request,
    ) -> Result<S::Response, String> {
        use http_body_util::BodyExt;
        sender
            .ready()
            .await
            .map_err(|e| format!("connection lost: {e}"))?;
        let authority = match self.target.host.contains(':') {
            true => format!("[{}]:{}", self.target.host, self.target.port),
            false => format!("{}:{}", self.target.host, self.target.port),
        };
        let path = format!("{}{}", self.target.path, S::HTTP_PATH);
        let req = hyper::Request::post(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(Bytes::from(prost::Message::encode_to_vec(
                request,
            ))))
            .map_err(|e| format!("building the request: {e}"))?;
        let response = sender
            .send_request(req)
            .await
            .map_err(|e| format!("export failed: {}", chain(&e)))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Err(format!("export refused: HTTP {status} {}", text.trim()));
        }
        <S::Response as prost::Message>::decode(body)
            .map_err(|e| format!("export answered with a body that is not OTLP: {e}"))
    }

    /// Counts a batch that could not be delivered; warns once per outage.
    fn failed(&mut self, items: u64, why: &str) -> bool {
        self.stats.drop_items::<S>(items, "export_failed");
        if self.failing {
            debug!(endpoint = %self.target, signal = S::NAME, items, "{why}; dropped");
        } else {
            warn!(endpoint = %self.target, signal = S::NAME, items, "{why}; dropped until the OTLP receiver answers");
            self.failing = true;
        }
        false
    }

    async fn connect(&self) -> Result<Client, BoxError> {
        let addr = self.resolve().await?;
        let client = match self.target.protocol {
            Protocol::Grpc => {
                let origin: hyper::Uri = self.target.to_string().parse()?;
                let scheme = if self.target.tls { "https" } else { "http" };
                let mut endpoint =
                    tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))?
                        .origin(origin)
                        .connect_timeout(self.settings.timeout)
                        .timeout(self.settings.timeout)
                        .tcp_nodelay(true);
                if let Some(roots) = self.tls_roots()? {
                    endpoint = endpoint.tls_config(
                        tonic::transport::ClientTlsConfig::new()
                            .ca_certificate(tonic::transport::Certificate::from_pem(roots))
                            .domain_name(self.target.host.clone()),
                    )?;
                }
                Client::Grpc(tonic::client::Grpc::new(endpoint.connect().await?))
            }
            Protocol::HttpProtobuf => {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                match self.tls_roots()? {
                    Some(roots) => {
                        let connector = tokio_rustls::TlsConnector::from(http_tls(roots)?);
                        let name =
                            rustls::pki_types::ServerName::try_from(self.target.host.clone())?;
                        Client::Http(http1(connector.connect(name, tcp).await?).await?)
                    }
                    None => Client::Http(http1(tcp).await?),
                }
            }
        };
        debug!(endpoint = %self.target, %addr, signal = S::NAME, "connected to the OTLP receiver");
        Ok(client)
    }

    /// The PEM roots when the endpoint is TLS.
    fn tls_roots(&self) -> Result<Option<&[u8]>, BoxError> {
        match (&self.target.roots, self.target.tls) {
            (_, false) => Ok(None),
            (Some(roots), true) => Ok(Some(roots)),
            (None, true) => Err(format!("{}: TLS without roots", self.target).into()),
        }
    }

    async fn resolve(&self) -> Result<SocketAddr, String> {
        let Target { host, port, .. } = &self.target;
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, *port));
        }
        if let Some(addr) = self.resolver.as_ref().and_then(|r| r(host, *port)) {
            return Ok(addr);
        }
        tokio::net::lookup_host((host.as_str(), *port))
            .await
            .map_err(|e| format!("resolving {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host}: no address"))
    }
}

/// One unary gRPC export.
async fn grpc_export<S: Signal>(
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    request: S::Request,
) -> Result<S::Response, String> {
    grpc.ready()
        .await
        .map_err(|e| format!("connection lost: {e}"))?;
    let codec = tonic_prost::ProstCodec::<S::Request, S::Response>::default();
    let path = hyper::http::uri::PathAndQuery::from_static(S::GRPC_METHOD);
    grpc.unary(tonic::Request::new(request), path, codec)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| format!("export refused: {:?} {}", status.code(), status.message()))
}

/// An HTTP/1.1 client connection over `io`, its connection task spawned.
async fn http1<T>(io: T) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, BoxError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!(error = %e, "OTLP/HTTP connection ended");
        }
    });
    Ok(sender)
}

/// TLS for OTLP/HTTP: the given roots, ring, HTTP/1.1 by ALPN.
fn http_tls(roots_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, BoxError> {
    let mut roots = rustls::RootCertStore::empty();
    for der in ambient_proto::tls::certs_from_pem(roots_pem)? {
        roots.add(der)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// An error with its causes (`transport error: tcp connect error: Connection refused`).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let next = c.to_string();
        if !text.ends_with(&next) {
            text = format!("{text}: {next}");
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests;
