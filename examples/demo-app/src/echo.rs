//! The echo role: answers any method and path, over HTTP/1.1 or HTTP/2 with prior knowledge
//! (h2c) on the same port, with a JSON description of the request ([`EchoResponse`]).
//!
//! - `/status/<code>` answers `<code>`;
//! - `/delay/<ms>` waits `<ms>` (at most [`MAX_DELAY`]) before answering;
//! - with `--fail-every N`, requests N, 2N, 3N... (counted across all connections) are
//!   answered with `--fail-status`, and `"failed": true`;
//! - with `--tls-cert`, it speaks HTTPS instead (what a server outside the mesh does), and
//!   says which server name the client asked for.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HOST, HeaderMap, HeaderValue, SERVER};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::access_log;
use crate::model::EchoResponse;
use crate::route::{self, Route};

/// The response header carrying `--name`.
pub const NAME_HEADER: &str = "x-echo-name";
/// The response header carrying `--version`.
pub const VERSION_HEADER: &str = "x-echo-version";
/// The longest `/delay/<ms>` waits.
pub const MAX_DELAY: Duration = Duration::from_secs(60);

/// A `--name` or `--version` that cannot be a header value.
#[derive(Debug, thiserror::Error)]
#[error("{what} {value:?} cannot be sent as a header value")]
pub struct InvalidIdentity {
    what: &'static str,
    value: String,
}

/// The echo server's state, shared by all connections.
#[derive(Debug)]
pub struct Echo {
    name: String,
    version: String,
    name_header: HeaderValue,
    version_header: HeaderValue,
    fail_every: Option<u64>,
    fail_status: StatusCode,
    /// Requests received so far.
    requests: AtomicU64,
}

impl Echo {
    /// An echo server answering as `name`/`version`, failing every `fail_every`-th request
    /// (none when `None` or 0) with `fail_status`.
    pub fn new(
        name: String,
        version: String,
        fail_every: Option<u64>,
        fail_status: StatusCode,
    ) -> Result<Self, InvalidIdentity> {
        let header = |what, value: &str| {
            HeaderValue::from_str(value).map_err(|_| InvalidIdentity {
                what,
                value: value.to_owned(),
            })
        };
        Ok(Self {
            name_header: header("name", &name)?,
            version_header: header("version", &version)?,
            name,
            version,
            fail_every: fail_every.filter(|n| *n > 0),
            fail_status,
            requests: AtomicU64::new(0),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// Serves connections from `listener` until the task is dropped, over TLS when `tls` is
    /// given.
    pub async fn run(self: Arc<Self>, listener: TcpListener, tls: Option<TlsAcceptor>) {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let echo = Arc::clone(&self);
                    match tls.clone() {
                        None => {
                            tokio::spawn(serve_connection(stream, peer, echo, None));
                        }
                        Some(acceptor) => {
                            tokio::spawn(async move {
                                match acceptor.accept(stream).await {
                                    Ok(stream) => {
                                        let sni = stream.get_ref().1.server_name();
                                        let sni = Some(sni.unwrap_or("").to_owned());
                                        serve_connection(stream, peer, echo, sni).await;
                                    }
                                    Err(e) => eprintln!("TLS handshake with {peer}: {e}"),
                                }
                            });
                        }
                    }
                }
                Err(e) => {
                    eprintln!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Counts a request in; whether `--fail-every` fails it, and its number.
    fn next_request(&self) -> (u64, bool) {
        let number = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let failed = self.fail_every.is_some_and(|n| number.is_multiple_of(n));
        (number, failed)
    }
}

async fn serve_connection<I>(stream: I, peer: SocketAddr, echo: Arc<Echo>, sni: Option<String>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let echo = Arc::clone(&echo);
        let sni = sni.clone();
        async move { Ok::<_, Infallible>(respond(&echo, request, peer, sni).await) }
    });
    // HTTP/1.1, or HTTP/2 when the connection opens with the HTTP/2 preface.
    let builder = auto::Builder::new(TokioExecutor::new());
    if let Err(e) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        // Clients that go away mid-request are routine; note them without failing anything.
        let routine = e
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_incomplete_message);
        if !routine {
            eprintln!("connection from {peer}: {e}");
        }
    }
}

/// What a path asks of the echo server.
#[derive(Debug, PartialEq, Eq)]
enum Special {
    None,
    Status(StatusCode),
    Delay(Duration),
    Invalid(String),
}

fn special(path: &str) -> Special {
    match route::id_under(path, "/status") {
        Route::Id(code) => {
            return u16::try_from(code)
                .ok()
                .filter(|c| (200..=999).contains(c))
                .and_then(|c| StatusCode::from_u16(c).ok())
                .map_or_else(
                    || Special::Invalid(format!("status {code} is not between 200 and 999")),
                    Special::Status,
                );
        }
        Route::BadId(raw) => return Special::Invalid(format!("status {raw:?} is not a number")),
        Route::NotFound => {}
    }
    match route::id_under(path, "/delay") {
        Route::Id(ms) => Special::Delay(Duration::from_millis(ms.into()).min(MAX_DELAY)),
        Route::BadId(raw) => Special::Invalid(format!("delay {raw:?} is not a number of ms")),
        Route::NotFound => Special::None,
    }
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "unknown",
    }
}

/// Headers by name, repeated ones joined with `, `.
fn header_map(headers: &HeaderMap) -> BTreeMap<String, String> {
    headers
        .keys()
        .map(|name| {
            let values: Vec<_> = headers
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            (name.as_str().to_owned(), values.join(", "))
        })
        .collect()
}

/// Reads the whole body, keeping only its length.
async fn count_body(mut body: Incoming) -> Result<u64, (u64, hyper::Error)> {
    let mut length = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    length += data.len() as u64;
                }
            }
            Err(e) => return Err((length, e)),
        }
    }
    Ok(length)
}

async fn respond(
    echo: &Echo,
    request: Request<Incoming>,
    peer: SocketAddr,
    tls_server_name: Option<String>,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let at = SystemTime::now();
    let (number, failed) = echo.next_request();
    let (head, body) = request.into_parts();
    let path = head.uri.path().to_owned();

    let mut error = None;
    let body_bytes = match count_body(body).await {
        Ok(length) => length,
        Err((length, e)) => {
            error = Some(format!("cannot read the request body: {e}"));
            length
        }
    };
    let mut status = StatusCode::OK;
    match special(&path) {
        Special::None => {}
        Special::Status(code) => status = code,
        Special::Delay(delay) => tokio::time::sleep(delay).await,
        Special::Invalid(why) => error = Some(why),
    }
    if error.is_some() {
        status = StatusCode::BAD_REQUEST;
    }
    if failed {
        status = echo.fail_status;
    }

    let answer = EchoResponse {
        name: echo.name.clone(),
        version: echo.version.clone(),
        method: head.method.to_string(),
        path: path.clone(),
        query: head.uri.query().unwrap_or("").to_owned(),
        host: head.uri.authority().map(|a| a.to_string()).or_else(|| {
            head.headers
                .get(HOST)
                .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        }),
        protocol: protocol(head.version).to_owned(),
        headers: header_map(&head.headers),
        body_bytes,
        failed,
        request: number,
        peer: peer.to_string(),
        tls_server_name,
        error,
    };
    let body = if matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED) {
        Bytes::new()
    } else {
        let mut body = serde_json::to_vec(&answer).expect("an echo answer is always JSON");
        body.push(b'\n');
        body.into()
    };

    access_log::write(&access_log::Entry {
        at,
        role: "echo",
        pod: &echo.name,
        method: &head.method,
        path: &path,
        status,
        duration: started.elapsed(),
        peer,
        outbound: &[],
    });

    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(SERVER, HeaderValue::from_static("demo-app"));
    headers.insert(NAME_HEADER, echo.name_header.clone());
    headers.insert(VERSION_HEADER, echo.version_header.clone());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_paths() {
        assert_eq!(special("/"), Special::None);
        assert_eq!(special("/status"), Special::None);
        assert_eq!(special("/status/503/x"), Special::None);
        assert_eq!(
            special("/status/418"),
            Special::Status(StatusCode::IM_A_TEAPOT)
        );
        assert!(matches!(special("/status/99"), Special::Invalid(_)));
        assert!(matches!(special("/status/1000"), Special::Invalid(_)));
        assert!(matches!(special("/status/x"), Special::Invalid(_)));
        assert_eq!(
            special("/delay/250"),
            Special::Delay(Duration::from_millis(250))
        );
        assert_eq!(special("/delay/99999999"), Special::Delay(MAX_DELAY));
        assert!(matches!(special("/delay/soon"), Special::Invalid(_)));
    }

    #[test]
    fn fails_every_nth_request() {
        let echo = Echo::new(
            "e".into(),
            "v1".into(),
            Some(3),
            StatusCode::SERVICE_UNAVAILABLE,
        )
        .unwrap();
        let failed: Vec<_> = (0..7).map(|_| echo.next_request()).collect();
        assert_eq!(
            failed,
            [
                (1, false),
                (2, false),
                (3, true),
                (4, false),
                (5, false),
                (6, true),
                (7, false)
            ]
        );
        let never = Echo::new("e".into(), "v1".into(), Some(0), StatusCode::OK).unwrap();
        assert!((0..5).all(|_| !never.next_request().1));
        assert!(Echo::new("bad\nname".into(), "v1".into(), None, StatusCode::OK).is_err());
    }

    #[test]
    fn joins_repeated_headers() {
        let mut headers = HeaderMap::new();
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        headers.append("X-B", HeaderValue::from_static("3"));
        let map = header_map(&headers);
        assert_eq!(map["x-a"], "1, 2");
        assert_eq!(map["x-b"], "3");
    }
}
