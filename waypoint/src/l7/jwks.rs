//! JWKS fetched from a `jwksUri`: fetched by the waypoint when a rule names it, refreshed
//! every [`REFRESH`] (Istio's default), and at once when a token names a key id the set does
//! not have (a key rotation), at most once per [`MIN_REFETCH`].
//!
//! Failures, as Istio handles them: until a fetch succeeds, the issuer's tokens are refused
//! (401); once one has, a failed refresh keeps the last keys.
//!
//! The request path reads the current keys without a lock; fetches are serialized per URI.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ambient_proto::ambient::waypoint::v1 as pb;
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tracing::{debug, warn};

use super::jwt::Jwks;
use crate::egress::{self, Alpn, Origination};

/// How often a JWKS is fetched again (Istio's `PILOT_JWT_PUB_KEY_REFRESH_INTERVAL`).
pub const REFRESH: Duration = Duration::from_secs(20 * 60);
/// The least time between two fetches of one URI caused by unknown key ids.
pub const MIN_REFETCH: Duration = Duration::from_secs(5);
/// The largest JWKS document read.
const MAX_BODY: usize = 1 << 20;

/// The keys at one URI.
#[derive(Debug)]
pub struct RemoteJwks {
    pub uri: String,
    timeout: Duration,
    keys: ArcSwapOption<Jwks>,
    /// When the last fetch started, and how it ended (for `/config_dump`).
    last: Mutex<(Option<Instant>, Option<String>)>,
    /// Held while fetching: one fetch at a time.
    fetching: tokio::sync::Mutex<()>,
}

impl RemoteJwks {
    /// A URI's keys, not fetched yet; a task refreshes them every `refresh` for as long as
    /// the returned value lives (when a runtime runs).
    pub fn new(uri: &str, timeout: Duration, refresh: Duration) -> Arc<RemoteJwks> {
        let remote = Arc::new(RemoteJwks {
            uri: uri.to_string(),
            timeout,
            keys: ArcSwapOption::empty(),
            last: Mutex::new((None, None)),
            fetching: tokio::sync::Mutex::new(()),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(refresh_loop(Arc::downgrade(&remote), refresh));
        }
        remote
    }

    /// The keys held now.
    pub fn current(&self) -> Option<Arc<Jwks>> {
        self.keys.load_full()
    }

    /// The keys to check a token naming `kid` with: fetched first when there are none yet,
    /// or when `kid` is not among them and the last fetch is older than [`MIN_REFETCH`].
    pub async fn keys_for(&self, kid: Option<&str>) -> Option<Arc<Jwks>> {
        let current = self.current();
        let stale = match (&current, kid) {
            (None, _) => true,
            (Some(keys), Some(kid)) if !keys.has_kid(kid) => self
                .last
                .lock()
                .expect("poisoned")
                .0
                .is_none_or(|at| at.elapsed() >= MIN_REFETCH),
            _ => false,
        };
        if stale {
            let _ = self.fetch().await;
            return self.current();
        }
        current
    }

    /// Fetches the document now (after any fetch under way) and keeps its keys if it parses.
    pub async fn fetch(&self) -> Result<(), String> {
        let before = self.last.lock().expect("poisoned").0;
        let _one = self.fetching.lock().await;
        // Someone fetched while we waited: theirs is as fresh as ours would be.
        if self.last.lock().expect("poisoned").0 != before {
            return Ok(());
        }
        self.last.lock().expect("poisoned").0 = Some(Instant::now());
        let result = match tokio::time::timeout(self.timeout, get(&self.uri, self.timeout)).await {
            Err(_) => Err(format!("timed out after {:?}", self.timeout)),
            Ok(r) => r.and_then(|body| Jwks::parse(&body)),
        };
        let error = match result {
            Ok(keys) => {
                debug!(uri = %self.uri, "JWKS fetched");
                self.keys.store(Some(Arc::new(keys)));
                None
            }
            Err(e) => {
                warn!(uri = %self.uri, error = %e, "JWKS fetch failed; keeping the last keys (none: tokens refused)");
                Some(e)
            }
        };
        self.last.lock().expect("poisoned").1 = error.clone();
        error.map_or(Ok(()), Err)
    }

    /// The last fetch's error, if it failed.
    pub fn last_error(&self) -> Option<String> {
        self.last.lock().expect("poisoned").1.clone()
    }
}

async fn refresh_loop(remote: Weak<RemoteJwks>, refresh: Duration) {
    // Failures are retried sooner, doubling up to `refresh`.
    let mut wait = Duration::ZERO;
    loop {
        tokio::time::sleep(wait).await;
        let Some(r) = remote.upgrade() else { return };
        wait = match r.fetch().await {
            Ok(()) => refresh,
            Err(_) => (wait * 2).clamp(Duration::from_secs(1), refresh),
        };
    }
}

/// GET `uri` (http or https, verified against the system's store) and its body as text.
async fn get(uri: &str, timeout: Duration) -> Result<String, String> {
    let parsed: http::Uri = uri.parse().map_err(|e| format!("{uri:?}: {e}"))?;
    let host = parsed.host().ok_or("no host")?.to_string();
    let tls = match parsed.scheme_str() {
        Some("http") => None,
        Some("https") => Some(Origination::compile(
            &pb::ClientTls {
                mode: pb::client_tls::Mode::Simple as i32,
                ..Default::default()
            },
            &host,
        )),
        _ => return Err("not an http:// or https:// URL".into()),
    };
    let port = parsed
        .port_u16()
        .unwrap_or(if tls.is_some() { 443 } else { 80 });
    let addr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("resolving {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))?;
    let io = egress::connect(addr, timeout, tls.as_ref(), Alpn::Http1)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let path = parsed.path_and_query().map_or("/", |p| p.as_str());
    let request = http::Request::get(path)
        .header(
            http::header::HOST,
            parsed.authority().map_or(host.as_str(), |a| a.as_str()),
        )
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != http::StatusCode::OK {
        return Err(format!("answered {}", response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|_| "the document is not UTF-8".into())
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::Full;
    use tokio::net::TcpListener;

    use super::*;
    use crate::l7::jwt_testing::{Issuer, jwks};

    /// A JWKS server on loopback: answers `doc` (or 503 when empty), counting requests.
    struct Server {
        uri: String,
        doc: Arc<Mutex<String>>,
        hits: Arc<AtomicUsize>,
    }

    async fn server() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("http://{}/keys.json", listener.local_addr().unwrap());
        let doc = Arc::new(Mutex::new(String::new()));
        let hits = Arc::new(AtomicUsize::new(0));
        let (d, h) = (doc.clone(), hits.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (d, h) = (d.clone(), h.clone());
                let service = hyper::service::service_fn(move |_req| {
                    h.fetch_add(1, Ordering::SeqCst);
                    let body = d.lock().unwrap().clone();
                    let status = if body.is_empty() { 503 } else { 200 };
                    async move {
                        Ok::<_, Infallible>(
                            http::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from(body)))
                                .unwrap(),
                        )
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service),
                );
            }
        });
        Server { uri, doc, hits }
    }

    #[tokio::test]
    async fn keys_are_fetched_kept_through_failures_and_refetched_for_new_key_ids() {
        let s = server().await;
        // The refresh loop is not started: the test drives every fetch.
        let remote = Arc::new(RemoteJwks {
            uri: s.uri.clone(),
            timeout: Duration::from_secs(5),
            keys: ArcSwapOption::empty(),
            last: Mutex::new((None, None)),
            fetching: tokio::sync::Mutex::new(()),
        });
        // Unreachable document: no keys, tokens are refused.
        assert!(remote.keys_for(Some("k1")).await.is_none());
        assert!(remote.last_error().unwrap().contains("503"));

        let k1 = Issuer::ec("k1");
        *s.doc.lock().unwrap() = jwks(&[&k1]);
        let keys = remote.keys_for(Some("k1")).await.expect("fetched");
        assert!(keys.has_kid("k1"));
        let fetched = s.hits.load(Ordering::SeqCst);
        // Known key id: no fetch.
        remote.keys_for(Some("k1")).await.unwrap();
        assert_eq!(s.hits.load(Ordering::SeqCst), fetched);

        // A failed refresh keeps the keys.
        s.doc.lock().unwrap().clear();
        assert!(remote.fetch().await.is_err());
        assert!(remote.current().unwrap().has_kid("k1"));

        // Rotation: an unknown key id fetches again, once MIN_REFETCH has passed.
        let k2 = Issuer::ec("k2");
        *s.doc.lock().unwrap() = jwks(&[&k2]);
        let before = s.hits.load(Ordering::SeqCst);
        assert!(
            !remote.keys_for(Some("k2")).await.unwrap().has_kid("k2"),
            "too soon"
        );
        assert_eq!(s.hits.load(Ordering::SeqCst), before);
        remote.last.lock().unwrap().0 = Some(Instant::now() - MIN_REFETCH);
        assert!(remote.keys_for(Some("k2")).await.unwrap().has_kid("k2"));
        assert_eq!(s.hits.load(Ordering::SeqCst), before + 1);
    }
}
