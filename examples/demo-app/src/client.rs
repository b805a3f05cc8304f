//! A minimal HTTP client (HTTP/1.1, or HTTP/2 with prior knowledge): one connection per
//! request, names resolved with the system resolver, one deadline covering resolution,
//! connect and the whole exchange.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HOST, HeaderMap, HeaderName, HeaderValue, USER_AGENT};
use hyper::{Method, Request, StatusCode, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// The deadline of one request (resolve + connect + request + response body).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

const AGENT: &str = concat!("demo-app/", env!("CARGO_PKG_VERSION"));

/// Why a request produced no response.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("unsupported scheme {0:?} (only http is supported)")]
    UnsupportedScheme(String),
    #[error("invalid header {0:?} (expected 'Name: value')")]
    InvalidHeader(String),
    #[error("could not resolve host {host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("could not resolve host {0}: no addresses")]
    NoAddress(String),
    #[error("failed to connect to {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("request to {url} timed out after {} ms", .after.as_millis())]
    Timeout { url: String, after: Duration },
    #[error("request to {url} failed: {source}")]
    Exchange {
        url: String,
        #[source]
        source: hyper::Error,
    },
}

/// A complete response: head and body.
#[derive(Debug)]
pub struct Response {
    pub version: Version,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A request to send.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub timeout: Duration,
    /// The request body (none when empty).
    pub body: Bytes,
    /// HTTP/2 with prior knowledge (h2c) rather than HTTP/1.1.
    pub http2: bool,
}

impl RequestSpec {
    /// A GET of `url` with the default timeout.
    pub fn get(url: impl Into<String>) -> Self {
        Self {
            method: Method::GET,
            url: url.into(),
            headers: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            body: Bytes::new(),
            http2: false,
        }
    }
}

/// Parses `Name: value` (as given to `-H`).
pub fn parse_header(raw: &str) -> Result<(HeaderName, HeaderValue), Error> {
    let invalid = || Error::InvalidHeader(raw.to_owned());
    let (name, value) = raw.split_once(':').ok_or_else(invalid)?;
    let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| invalid())?;
    let value = HeaderValue::from_str(value.trim()).map_err(|_| invalid())?;
    Ok((name, value))
}

/// Checks that `url` is one [`send`] can use, without sending anything.
pub fn check_url(url: &str) -> Result<(), Error> {
    parse_target(url).map(drop)
}

struct Target {
    host: String,
    port: u16,
    authority: String,
    path_and_query: String,
}

fn parse_target(url: &str) -> Result<Target, Error> {
    let invalid = |reason: &str| Error::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: Uri = url
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| invalid(&e.to_string()))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => return Err(Error::UnsupportedScheme(other.to_owned())),
        None => return Err(invalid("missing scheme (expected http://HOST[:PORT]/PATH)")),
    }
    let authority = uri.authority().ok_or_else(|| invalid("missing host"))?;
    if authority.as_str().contains('@') {
        return Err(invalid("credentials in URLs are not supported"));
    }
    // `Authority::host` keeps the brackets of an IPv6 literal; the resolver wants them off.
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if host.is_empty() {
        return Err(invalid("missing host"));
    }
    let port = authority.port_u16().unwrap_or(80);
    let path_and_query = uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .unwrap_or("/")
        .to_owned();
    Ok(Target {
        host,
        port,
        authority: authority.as_str().to_owned(),
        path_and_query,
    })
}

/// Sends one request and reads the whole response, within `spec.timeout`.
pub async fn send(spec: &RequestSpec) -> Result<Response, Error> {
    let target = parse_target(&spec.url)?;
    match tokio::time::timeout(spec.timeout, exchange(spec, &target)).await {
        Ok(result) => result,
        Err(_) => Err(Error::Timeout {
            url: spec.url.clone(),
            after: spec.timeout,
        }),
    }
}

async fn connect(target: &Target) -> Result<TcpStream, Error> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(|source| Error::Resolve {
            host: target.host.clone(),
            source,
        })?
        .collect();
    let mut last = None;
    for addr in &addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                // Small request/response exchanges: do not wait for Nagle.
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last = Some((addr, e)),
        }
    }
    match last {
        Some((addr, source)) => Err(Error::Connect {
            target: format!("{}:{} ({addr})", target.host, target.port),
            source,
        }),
        None => Err(Error::NoAddress(target.host.clone())),
    }
}

async fn exchange(spec: &RequestSpec, target: &Target) -> Result<Response, Error> {
    let stream = connect(target).await?;
    let hyper_err = |source| Error::Exchange {
        url: spec.url.clone(),
        source,
    };

    // HTTP/1.1 wants origin-form and a Host header; HTTP/2 carries the authority in the
    // request's absolute URI (`:authority`) instead.
    let uri = if spec.http2 {
        format!("http://{}{}", target.authority, target.path_and_query)
    } else {
        target.path_and_query.clone()
    };
    let mut request = Request::builder()
        .method(spec.method.clone())
        .uri(uri)
        .body(Full::new(spec.body.clone()))
        .map_err(|e| Error::InvalidUrl {
            url: spec.url.clone(),
            reason: e.to_string(),
        })?;
    let headers = request.headers_mut();
    if !spec.http2
        && let Ok(host) = HeaderValue::from_str(&target.authority)
    {
        headers.insert(HOST, host);
    }
    headers.insert(USER_AGENT, HeaderValue::from_static(AGENT));
    for (name, value) in &spec.headers {
        headers.insert(name.clone(), value.clone());
    }

    let response = if spec.http2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(hyper_err)?;
        let mut conn = tokio::spawn(conn);
        let response = read_response(sender.send_request(request).await).await;
        // Without a sender the connection says GOAWAY and closes; give it a moment to, so
        // that the server sees a clean end rather than a reset.
        drop(sender);
        if tokio::time::timeout(Duration::from_millis(500), &mut conn)
            .await
            .is_err()
        {
            conn.abort();
        }
        response
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(hyper_err)?;
        let conn = tokio::spawn(conn);
        let response = read_response(sender.send_request(request).await).await;
        drop(sender);
        // The connection ends once the sender is gone; its outcome no longer matters.
        conn.abort();
        response
    };
    response.map_err(hyper_err)
}

async fn read_response(
    response: hyper::Result<hyper::Response<hyper::body::Incoming>>,
) -> hyper::Result<Response> {
    let (head, body) = response?.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Response {
        version: head.version,
        status: head.status,
        headers: head.headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        let t = parse_target("http://reviews:9080/reviews/0?x=1").unwrap();
        assert_eq!(t.host, "reviews");
        assert_eq!(t.port, 9080);
        assert_eq!(t.authority, "reviews:9080");
        assert_eq!(t.path_and_query, "/reviews/0?x=1");

        let t = parse_target("http://productpage").unwrap();
        assert_eq!((t.port, t.path_and_query.as_str()), (80, "/"));

        let t = parse_target("http://[::1]:8080/x").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 8080));

        assert!(matches!(
            parse_target("https://x/"),
            Err(Error::UnsupportedScheme(_))
        ));
        assert!(matches!(parse_target("/x"), Err(Error::InvalidUrl { .. })));
    }

    #[test]
    fn parses_headers() {
        let (n, v) = parse_header("X-Test:  a b ").unwrap();
        assert_eq!(n.as_str(), "x-test");
        assert_eq!(v, "a b");
        assert!(parse_header("no-colon").is_err());
    }
}
