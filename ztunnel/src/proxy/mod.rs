//! The per-pod proxies. For each enrolled pod, these listeners live inside the pod's network
//! namespace:
//!
//! - [`outbound`] on 15001: everything the pod dials, redirected by capture rules;
//! - [`inbound_passthrough`] on 15006: plaintext arriving at the pod;
//! - [`inbound`] on 15008: HBONE arriving at the pod;
//! - [`crate::dns`] on 15053 (UDP and TCP, loopback): the pod's DNS queries, redirected.
//!
//! A [`PodContext`] carries what they share: the pod, its namespace, its connection pool.

pub mod connection_manager;
pub mod inbound;
pub mod inbound_passthrough;
pub use proxy_core::named_endpoint;
pub mod outbound;
pub mod relay;
pub mod socket;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use ambient_proto::hbone::{H2Settings, Pool, PoolSettings};
use ambient_proto::identity::Identity;
use ambient_proto::tls::TrustBundle;
use futures::task::{ArcWake, AtomicWaker};
use tokio::net::{TcpListener, UdpSocket};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;

use crate::dns;
use crate::inpod::netns::Netns;
use proxy_core::identity::CertificateManager;
use proxy_core::state::{StateStore, Workload};

pub const OUTBOUND_PORT: u16 = 15001;
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;
pub const HBONE_PORT: u16 = ambient_proto::hbone::HBONE_PORT;
pub const DNS_PORT: u16 = 15053;

/// Response flag of a connection refused because its destination pod has no configuration
/// yet (Envoy's "no route / no matching filter chain").
pub const UNKNOWN_POD: &str = "NR";

/// Ports of the tunnel itself, never valid as a destination inside a pod.
pub const RESERVED_PORTS: &[u16] = &[
    OUTBOUND_PORT,
    INBOUND_PLAINTEXT_PORT,
    HBONE_PORT,
    DNS_PORT,
    15000,
    15020,
    15021,
];

/// Node-wide pieces every pod's proxies share.
pub struct Shared {
    pub state: Arc<StateStore>,
    pub certs: Arc<CertificateManager>,
    pub bundle: TrustBundle,
    pub h2: H2Settings,
    pub pool: PoolSettings,
    /// How long a new connection waits for its pod's first certificate.
    pub cert_wait: Duration,
    pub connect_timeout: Duration,
    /// Endpoints known by name, resolved recently.
    pub named_endpoints: named_endpoint::NamedEndpoints,
    /// Mesh-wide settings from the controller (the outbound traffic policy).
    pub mesh: Arc<crate::mesh_settings::MeshSettings>,
    /// Live inbound connections, re-checked when policies change.
    pub connections: Arc<connection_manager::ConnectionManager>,
    /// Cancelled when this process starts draining (SIGTERM): every pod's listeners close and
    /// inbound HBONE connections are asked to go elsewhere, while open connections go on.
    pub draining: CancellationToken,
    /// Every connection's task, so that a draining process can wait for the last one.
    pub connection_tasks: TaskTracker,
}

/// Pool key: (source identity, destination identity, destination HBONE address).
pub type PoolKey = (Identity, Identity, SocketAddr);

/// One enrolled pod, as its proxies see it.
pub struct PodContext {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub identity: Identity,
    pub netns: Netns,
    pub shared: Arc<Shared>,
    pub pool: Pool<PoolKey>,
    pub acceptor: TlsAcceptor,
    /// Cancelled when the pod leaves the node: listeners and connections stop.
    pub cancel: CancellationToken,
    /// Cancelled when the pod leaves the node or the process drains: listeners stop.
    pub listening: CancellationToken,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("binding port {port} in the pod's namespace: {source}")]
    Bind { port: u16, source: std::io::Error },
    #[error("TLS configuration: {0}")]
    Tls(#[from] ambient_proto::tls::TlsError),
}

impl StartError {
    /// The port another process holds without sharing it: worth binding again later.
    pub fn held_port(&self) -> Option<u16> {
        match self {
            StartError::Bind { port, source } if source.kind() == std::io::ErrorKind::AddrInUse => {
                Some(*port)
            }
            _ => None,
        }
    }
}

impl PodContext {
    pub fn new(
        uid: String,
        name: String,
        namespace: String,
        identity: Identity,
        netns: Netns,
        shared: Arc<Shared>,
    ) -> Result<Arc<Self>, StartError> {
        let slot = shared.certs.slot(&identity);
        let server = ambient_proto::tls::server_config(slot, &shared.bundle)?;
        Ok(Arc::new(PodContext {
            uid,
            name,
            namespace,
            identity,
            netns,
            pool: Pool::new(shared.pool),
            acceptor: TlsAcceptor::from(Arc::new(server)),
            listening: shared.draining.child_token(),
            shared,
            cancel: CancellationToken::new(),
        }))
    }

    /// This pod's workload as the control plane describes it, if it does yet.
    pub fn workload(&self) -> Option<Arc<Workload>> {
        self.shared
            .state
            .load()
            .find_pod(&self.uid, &self.namespace, &self.name)
            .cloned()
    }

    /// Binds the listeners in the pod's namespace and starts serving.
    pub fn start(self: &Arc<Self>) -> Result<(), StartError> {
        let outbound = self.bind_both(OUTBOUND_PORT)?;
        let plaintext = self.bind_both(INBOUND_PLAINTEXT_PORT)?;
        let hbone = self.bind_both(HBONE_PORT)?;
        let dns = self.bind_dns()?;
        for listener in outbound {
            tokio::spawn(outbound::serve(self.clone(), listener));
        }
        for listener in plaintext {
            tokio::spawn(inbound_passthrough::serve(self.clone(), listener));
        }
        for listener in hbone {
            tokio::spawn(inbound::serve(self.clone(), listener));
        }
        let resolver = Arc::new(dns::server::Resolver::new(
            self.shared.state.clone(),
            self.namespace.clone(),
            self.name.clone(),
        ));
        for (udp, tcp) in dns {
            let cancel = self.listening.clone();
            tokio::spawn(dns::server::serve_udp(
                udp,
                resolver.clone(),
                cancel.clone(),
            ));
            tokio::spawn(dns::server::serve_tcp(tcp, resolver.clone(), cancel));
        }
        Ok(())
    }

    /// Listeners on `port` for IPv4 and, when the pod has IPv6, IPv6 (an IPv6-only socket:
    /// IPv4 peers keep plain IPv4 addresses rather than mapped ones).
    fn bind_both(&self, port: u16) -> Result<Vec<TcpListener>, StartError> {
        let v4 = socket::listen_in(&self.netns, SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
            .map_err(|source| StartError::Bind { port, source })?;
        let mut listeners = vec![v4];
        match socket::listen_in(&self.netns, SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))) {
            Ok(v6) => listeners.push(v6),
            // IPv6 is off in this pod: no IPv6 peer can reach it either.
            Err(e) => tracing::debug!(pod = %self.name, port, error = %e, "no IPv6 listener"),
        }
        Ok(listeners)
    }

    /// The DNS sockets, UDP and TCP, on IPv4 loopback and (when the pod has it) IPv6's.
    fn bind_dns(&self) -> Result<Vec<(UdpSocket, TcpListener)>, StartError> {
        let pair = |addr| -> std::io::Result<(UdpSocket, TcpListener)> {
            Ok((
                socket::udp_in(&self.netns, addr)?,
                socket::listen_in(&self.netns, addr)?,
            ))
        };
        let [v4, v6] = dns::server::bind_addresses(DNS_PORT);
        let mut sockets = vec![pair(v4).map_err(|source| StartError::Bind {
            port: DNS_PORT,
            source,
        })?];
        match pair(v6) {
            Ok(p) => sockets.push(p),
            // IPv6 is off in this pod: nothing can send it IPv6 queries either.
            Err(e) => {
                tracing::debug!(pod = %self.name, error = %e, "DNS: no IPv6 loopback listener")
            }
        }
        Ok(sockets)
    }

    pub fn stop(&self) {
        self.listening.cancel();
        self.cancel.cancel();
        self.pool.clear();
    }
}

/// Accepts connections until the pod is stopped or the process drains, running `handle` for
/// each on its own task (tracked, so a draining process waits for it). Returning drops the
/// listener.
pub(crate) async fn accept_loop<F, Fut>(
    ctx: Arc<PodContext>,
    listener: tokio::net::TcpListener,
    what: &'static str,
    handle: F,
) where
    F: Fn(Arc<PodContext>, tokio::net::TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        tokio::select! {
            _ = ctx.listening.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let connection = handle(ctx.clone(), stream, peer);
                    ctx.shared
                        .connection_tasks
                        .spawn(UntilCancelled::new(&ctx.cancel, connection));
                }
                Err(e) => {
                    tracing::warn!(pod = %ctx.name, listener = what, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// A connection whose way on is open, holding only what its relay needs.
pub(crate) trait Opened: Send + 'static {
    /// Relays until the connection ends, recording how it ended.
    fn relay(&mut self) -> impl Future<Output = ()> + Send + '_;
}

/// The future of one connection: `opening` (lookups, policy, dialing, the CONNECT request),
/// then the relay of what it opened. Opening needs several times the state of the relay,
/// which may last hours, so it runs in a box that is freed when it finishes and the
/// connection's task is sized for the relay alone. What it opened is bound once and borrowed:
/// matching it by value would keep a second copy in the future.
pub(crate) fn open_then_relay<O: Opened>(
    opening: impl Future<Output = Option<O>> + Send + 'static,
) -> impl Future<Output = ()> + Send {
    let opening = Box::pin(opening);
    async move {
        let mut opened = opening.await;
        if let Some(opened) = opened.as_mut() {
            opened.relay().await
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection's future, dropped when its pod stops. A named future rather than a
    /// `select!` in an async block, which would store the connection's future twice (once
    /// captured, once pinned for polling) for as long as the connection lives.
    ///
    /// The pod's cancellation is polled once, to register [`StopSignal`] with it, and again
    /// only when that signal fired: every poll of a pending cancellation takes a lock that
    /// all the pod's connections share, and a connection's task is polled on every read and
    /// write it makes.
    struct UntilCancelled<F> {
        #[pin]
        cancelled: WaitForCancellationFutureOwned,
        stop: Arc<StopSignal>,
        registered: bool,
        #[pin]
        connection: F,
    }
}

impl<F> UntilCancelled<F> {
    fn new(cancel: &CancellationToken, connection: F) -> Self {
        UntilCancelled {
            cancelled: cancel.clone().cancelled_owned(),
            stop: Arc::default(),
            registered: false,
            connection,
        }
    }
}

impl<F: Future<Output = ()>> Future for UntilCancelled<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        this.stop.task.register(cx.waker());
        if !*this.registered || this.stop.fired.load(Ordering::Acquire) {
            let waker = futures::task::waker_ref(this.stop);
            if this
                .cancelled
                .poll(&mut Context::from_waker(&waker))
                .is_ready()
            {
                return Poll::Ready(());
            }
            *this.registered = true;
        }
        this.connection.poll(cx)
    }
}

/// The waker a connection registers with its pod's cancellation: it records that it fired
/// (an atomic the connection checks on every poll, without a lock) and wakes the task.
#[derive(Default)]
struct StopSignal {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl ArcWake for StopSignal {
    fn wake_by_ref(signal: &Arc<Self>) {
        signal.fired.store(true, Ordering::Release);
        signal.task.wake();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// A connection that is woken and polled again and again, as a busy relay is.
    async fn busy(polls: Arc<AtomicUsize>) {
        loop {
            polls.fetch_add(1, Ordering::Relaxed);
            tokio::task::yield_now().await;
        }
    }

    /// Stops the pod; the connection's task must end soon after.
    async fn stop_and_wait(pod: &CancellationToken, task: tokio::task::JoinHandle<()>) {
        pod.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the connection ended with its pod")
            .expect("no panic");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_busy_connection_ends_when_its_pod_stops() {
        let pod = CancellationToken::new();
        let polls = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(UntilCancelled::new(&pod, busy(polls.clone())));
        while polls.load(Ordering::Relaxed) < 1000 {
            tokio::task::yield_now().await;
        }
        stop_and_wait(&pod, task).await;
    }

    #[tokio::test]
    async fn an_idle_connection_ends_when_its_pod_stops() {
        let pod = CancellationToken::new();
        let task = tokio::spawn(UntilCancelled::new(&pod, std::future::pending()));
        tokio::task::yield_now().await;
        assert!(!task.is_finished());
        stop_and_wait(&pod, task).await;
    }

    #[tokio::test]
    async fn a_connection_ends_on_its_own_or_at_once_when_the_pod_is_gone() {
        let pod = CancellationToken::new();
        UntilCancelled::new(&pod, async {}).await;
        pod.cancel();
        UntilCancelled::new(&pod, std::future::pending::<()>()).await;
    }
}
