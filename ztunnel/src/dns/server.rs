//! The DNS listeners of one pod: UDP datagrams, and TCP streams of messages each preceded by
//! its 2-byte length (RFC 1035 §4.2.2). Both answer from the current state snapshot, so a
//! service pushed a moment ago resolves on the next query.
//!
//! A message that is not a well-formed query gets no response: a UDP datagram is dropped, a
//! TCP connection closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use proxy_core::state::StateStore;

use super::answer::{self, Known, Malformed, Response, Transport};
use super::resolve;

/// How long a TCP connection may sit between (or inside) messages.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// TCP connections served at once; more are closed on arrival.
const MAX_TCP_CONNECTIONS: usize = 256;
/// Receive buffer: the largest UDP payload, so that no datagram is silently cut.
const UDP_BUFFER: usize = 65_535;

/// Answers one pod's queries: names resolve as that pod sees them.
#[derive(Debug)]
pub struct Resolver {
    state: Arc<StateStore>,
    /// The pod's namespace: its search domain.
    namespace: String,
    /// For logs.
    pod: String,
}

impl Resolver {
    pub fn new(state: Arc<StateStore>, namespace: String, pod: String) -> Self {
        Resolver {
            state,
            namespace,
            pod,
        }
    }

    /// Answers one message; counts it.
    pub fn respond(&self, request: &[u8], transport: Transport) -> Result<Response, Malformed> {
        let snapshot = self.state.load();
        let loaded = self.state.loaded();
        let result = answer::respond(request, transport, |name| {
            match resolve::lookup(&snapshot, &self.namespace, name) {
                Some(addresses) => Known::Addresses(addresses),
                None if loaded => Known::NoSuchName,
                None => Known::NothingYet,
            }
        });
        crate::metrics::dns_request(match &result {
            Ok(r) => answer::code_name(r.code),
            Err(_) => "MALFORMED",
        });
        result
    }
}

/// Serves datagrams on `socket` until `cancel`.
pub async fn serve_udp(socket: UdpSocket, resolver: Arc<Resolver>, cancel: CancellationToken) {
    let mut buf = vec![0u8; UDP_BUFFER];
    loop {
        let received = tokio::select! {
            _ = cancel.cancelled() => return,
            r = socket.recv_from(&mut buf) => r,
        };
        let (len, peer) = match received {
            Ok(v) => v,
            Err(e) => {
                debug!(pod = %resolver.pod, error = %e, "DNS: UDP receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        match resolver.respond(&buf[..len], Transport::Udp) {
            Ok(response) => {
                if let Err(e) = socket.send_to(&response.bytes, peer).await {
                    debug!(pod = %resolver.pod, %peer, error = %e, "DNS: UDP send failed");
                }
            }
            Err(e) => {
                debug!(pod = %resolver.pod, %peer, len, error = %e, "DNS: dropping a malformed datagram");
            }
        }
    }
}

/// Accepts TCP connections on `listener` until `cancel`, which also ends the open ones.
pub async fn serve_tcp(listener: TcpListener, resolver: Arc<Resolver>, cancel: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(v) => v,
            Err(e) => {
                debug!(pod = %resolver.pod, error = %e, "DNS: TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(pod = %resolver.pod, %peer, "DNS: too many TCP connections, closing");
            continue;
        };
        let resolver = resolver.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                r = serve_stream(stream, &resolver) => if let Err(reason) = r {
                    debug!(pod = %resolver.pod, %peer, %reason, "DNS: closing TCP connection");
                }
            }
            drop(slot);
        });
    }
}

/// Why a TCP connection ended early.
#[derive(Debug, thiserror::Error)]
enum StreamEnd {
    #[error("idle for {0:?}")]
    Idle(Duration),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("empty message")]
    Empty,
    #[error("malformed query: {0}")]
    Malformed(#[from] Malformed),
}

async fn timed<T>(
    f: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T, StreamEnd> {
    tokio::time::timeout(TCP_IDLE, f)
        .await
        .map_err(|_| StreamEnd::Idle(TCP_IDLE))?
        .map_err(StreamEnd::Io)
}

/// Answers length-prefixed messages on one connection until the client closes it.
async fn serve_stream(mut stream: TcpStream, resolver: &Resolver) -> Result<(), StreamEnd> {
    let _ = stream.set_nodelay(true);
    let mut request = Vec::new();
    loop {
        let mut prefix = [0u8; 2];
        // A clean close between messages is the normal end.
        let first = timed(stream.read(&mut prefix[..1])).await?;
        if first == 0 {
            return Ok(());
        }
        timed(stream.read_exact(&mut prefix[1..])).await?;
        let len = usize::from(u16::from_be_bytes(prefix));
        if len == 0 {
            return Err(StreamEnd::Empty);
        }
        request.resize(len, 0);
        timed(stream.read_exact(&mut request)).await?;
        let response = resolver.respond(&request, Transport::Tcp)?;
        let len = u16::try_from(response.bytes.len()).map_err(|_| {
            StreamEnd::Io(std::io::Error::other("response longer than 65535 bytes"))
        })?;
        let mut out = Vec::with_capacity(2 + response.bytes.len());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&response.bytes);
        timed(stream.write_all(&out)).await?;
    }
}

/// The addresses a pod's DNS listeners bind: where capture's redirect delivers (redirected
/// local traffic arrives at the loopback address), so nothing outside the pod reaches them.
pub fn bind_addresses(port: u16) -> [SocketAddr; 2] {
    [
        SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port)),
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::{Name, RecordType};
    use proxy_core::state::Update;
    use proxy_core::state::local::LocalConfig;
    use std::net::IpAddr;

    fn services(yaml: &str) -> Vec<ambient_proto::istio::workload::Address> {
        LocalConfig::parse(yaml).unwrap().to_addresses()
    }

    const ECHO: &str = r#"
services:
  - name: echo
    namespace: default
    hostname: echo.default.svc.cluster.local
    addresses: [10.96.0.10]
    ports: [{servicePort: 80}]
"#;

    const LATE: &str = r#"
services:
  - name: late
    namespace: default
    hostname: late.default.svc.cluster.local
    addresses: [10.96.0.77]
    ports: [{servicePort: 80}]
"#;

    struct Server {
        udp: SocketAddr,
        tcp: SocketAddr,
        state: Arc<StateStore>,
        cancel: CancellationToken,
    }

    async fn start() -> Server {
        let state = Arc::new(StateStore::new());
        state.apply(Update {
            upserts: services(ECHO),
            ..Default::default()
        });
        let resolver = Arc::new(Resolver::new(
            state.clone(),
            "default".into(),
            "test".into(),
        ));
        let cancel = CancellationToken::new();
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Server {
            udp: udp.local_addr().unwrap(),
            tcp: tcp.local_addr().unwrap(),
            state,
            cancel: cancel.clone(),
        };
        tokio::spawn(serve_udp(udp, resolver.clone(), cancel.clone()));
        tokio::spawn(serve_tcp(tcp, resolver, cancel));
        server
    }

    fn query(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        m.to_vec().unwrap()
    }

    /// The answer to `request`; `None` when none comes within `wait`.
    async fn udp_ask_within(server: SocketAddr, request: &[u8], wait: Duration) -> Option<Message> {
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(request, server).await.unwrap();
        let mut buf = vec![0u8; 2048];
        let (len, _) = tokio::time::timeout(wait, client.recv_from(&mut buf))
            .await
            .ok()?
            .unwrap();
        Some(Message::from_vec(&buf[..len]).unwrap())
    }

    async fn udp_ask(server: SocketAddr, request: &[u8]) -> Option<Message> {
        udp_ask_within(server, request, Duration::from_secs(5)).await
    }

    /// Whether `request` goes unanswered.
    async fn udp_ignored(server: SocketAddr, request: &[u8]) -> bool {
        udp_ask_within(server, request, Duration::from_millis(200))
            .await
            .is_none()
    }

    async fn tcp_ask(stream: &mut TcpStream, request: &[u8]) -> std::io::Result<Message> {
        let mut framed = (request.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(request);
        stream.write_all(&framed).await?;
        let mut prefix = [0u8; 2];
        stream.read_exact(&mut prefix).await?;
        let mut body = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
        stream.read_exact(&mut body).await?;
        Ok(Message::from_vec(&body).unwrap())
    }

    fn addresses(m: &Message) -> Vec<IpAddr> {
        m.answers.iter().filter_map(|r| r.data.ip_addr()).collect()
    }

    #[test]
    fn before_any_configuration_every_name_is_a_temporary_failure() {
        let state = Arc::new(StateStore::new());
        let resolver = Resolver::new(state.clone(), "default".into(), "test".into());
        let ask = |resolver: &Resolver| {
            let r = resolver
                .respond(
                    &query(1, "echo.default.svc.cluster.local.", RecordType::A),
                    Transport::Udp,
                )
                .unwrap();
            Message::from_vec(&r.bytes).unwrap().response_code
        };
        // Not "no such name": a client could cache that for a service that exists.
        assert_eq!(ask(&resolver), ResponseCode::ServFail);
        state.apply(Update {
            upserts: services(LATE),
            ..Default::default()
        });
        assert_eq!(ask(&resolver), ResponseCode::NXDomain);
        state.apply(Update {
            upserts: services(ECHO),
            ..Default::default()
        });
        assert_eq!(ask(&resolver), ResponseCode::NoError);
    }

    #[tokio::test]
    async fn answers_over_udp_and_survives_garbage() {
        let server = start().await;
        let echo: Vec<IpAddr> = vec!["10.96.0.10".parse().unwrap()];

        let r = udp_ask(
            server.udp,
            &query(1, "echo.default.svc.cluster.local.", RecordType::A),
        )
        .await
        .expect("an answer");
        assert_eq!((r.id, r.response_code), (1, ResponseCode::NoError));
        assert_eq!(addresses(&r), echo);

        // Garbage gets no answer, and the server goes on.
        for garbage in [&b""[..], b"\x00", b"hello, world", &[0xff; 600]] {
            assert!(udp_ignored(server.udp, garbage).await);
        }
        let r = udp_ask(server.udp, &query(2, "Echo", RecordType::A))
            .await
            .expect("an answer after garbage");
        assert_eq!(addresses(&r), echo);
        let r = udp_ask(server.udp, &query(3, "nope.default", RecordType::A))
            .await
            .unwrap();
        assert_eq!((r.id, r.response_code), (3, ResponseCode::NXDomain));
        let r = udp_ask(server.udp, &query(4, "echo.default", RecordType::AAAA))
            .await
            .unwrap();
        assert_eq!(r.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty());

        // A service pushed later resolves on the next query.
        let late = query(5, "late", RecordType::A);
        let r = udp_ask(server.udp, &late).await.unwrap();
        assert_eq!(r.response_code, ResponseCode::NXDomain);
        server.state.apply(Update {
            upserts: services(LATE),
            ..Default::default()
        });
        let r = udp_ask(server.udp, &late).await.unwrap();
        assert_eq!(addresses(&r), vec!["10.96.0.77".parse::<IpAddr>().unwrap()]);

        // Stopping the pod stops the listener.
        server.cancel.cancel();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(udp_ignored(server.udp, &late).await);
    }

    #[tokio::test]
    async fn answers_over_tcp_and_closes_on_garbage() {
        let server = start().await;
        let mut stream = TcpStream::connect(server.tcp).await.unwrap();
        // Several queries on one connection.
        for (id, name) in [
            (7, "echo.default.svc"),
            (8, "ECHO.default.svc.cluster.local."),
        ] {
            let r = tcp_ask(&mut stream, &query(id, name, RecordType::A))
                .await
                .unwrap();
            assert_eq!((r.id, r.response_code), (id, ResponseCode::NoError));
            assert_eq!(addresses(&r), vec!["10.96.0.10".parse::<IpAddr>().unwrap()]);
        }
        let r = tcp_ask(&mut stream, &query(9, "example.com", RecordType::A))
            .await
            .unwrap();
        assert_eq!(r.response_code, ResponseCode::NXDomain);

        // A malformed message closes its connection...
        assert!(tcp_ask(&mut stream, b"garbage!").await.is_err());
        // ...and so does an empty one.
        let mut empty = TcpStream::connect(server.tcp).await.unwrap();
        empty.write_all(&[0, 0]).await.unwrap();
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(2), empty.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0);
        // A client that sends half a prefix and leaves does no harm either.
        let mut half = TcpStream::connect(server.tcp).await.unwrap();
        half.write_all(&[0]).await.unwrap();
        drop(half);

        // The server goes on, for new connections and over UDP.
        let mut again = TcpStream::connect(server.tcp).await.unwrap();
        let r = tcp_ask(&mut again, &query(10, "echo", RecordType::A))
            .await
            .unwrap();
        assert_eq!(r.response_code, ResponseCode::NoError);
        assert!(
            udp_ask(server.udp, &query(11, "echo", RecordType::A))
                .await
                .is_some()
        );

        // Cancelling closes open connections.
        server.cancel.cancel();
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(2), again.read_to_end(&mut rest))
            .await
            .expect("closed on cancel")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
}
