//! Workload certificates on the node: fetched on first use, renewed at half-life, the old one
//! kept in service until its replacement arrives.

pub mod ca_client;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ambient_proto::identity::Identity;
use ambient_proto::tls::{CertSlot, WorkloadCertificate};
use futures::future::BoxFuture;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Why a certificate could not be obtained.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error("CA client configuration: {0}")]
    Config(String),
    #[error("building the CSR: {0}")]
    Csr(String),
    #[error("CA refused ({code:?}): {message}")]
    Refused { code: tonic::Code, message: String },
    #[error("CA returned an unusable certificate: {0}")]
    BadCertificate(String),
    #[error("no certificate for {0} yet (last error: {1})")]
    NotYet(String, String),
}

/// Something that can issue certificates (the CA client; a fake in tests).
pub trait CertificateSource: Send + Sync {
    fn fetch<'a>(
        &'a self,
        identity: &'a Identity,
    ) -> BoxFuture<'a, Result<WorkloadCertificate, FetchError>>;
}

/// Retry pacing after a failed fetch.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
        }
    }
}

struct Entry {
    slot: Arc<CertSlot>,
    /// Last fetch error, for `get` callers and `/config_dump`.
    status: watch::Sender<Status>,
    task: JoinHandle<()>,
}

#[derive(Clone, Debug, Default)]
struct Status {
    generation: u64,
    last_error: Option<String>,
}

/// Certificates per identity, each kept fresh by its own task.
pub struct CertificateManager {
    source: Arc<dyn CertificateSource>,
    entries: Mutex<HashMap<Identity, Entry>>,
    backoff: Backoff,
}

/// One certificate as `/config_dump` shows it.
#[derive(Debug, Serialize)]
pub struct CertificateDump {
    pub identity: String,
    pub state: &'static str,
    pub serial: Option<String>,
    pub not_before: Option<u64>,
    pub not_after: Option<u64>,
    pub last_error: Option<String>,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl CertificateManager {
    pub fn new(source: Arc<dyn CertificateSource>, backoff: Backoff) -> Self {
        CertificateManager {
            source,
            entries: Mutex::new(HashMap::new()),
            backoff,
        }
    }

    /// The slot holding `identity`'s current certificate, starting its refresher if needed.
    /// TLS servers resolve from the slot, so rotation reaches new handshakes by itself.
    pub fn slot(&self, identity: &Identity) -> Arc<CertSlot> {
        self.entry(identity).0
    }

    fn entry(&self, identity: &Identity) -> (Arc<CertSlot>, watch::Receiver<Status>) {
        let mut entries = self.entries.lock().expect("poisoned");
        let e = entries.entry(identity.clone()).or_insert_with(|| {
            let slot = Arc::new(CertSlot::new());
            let (status, _) = watch::channel(Status::default());
            let task = tokio::spawn(refresh(
                self.source.clone(),
                identity.clone(),
                slot.clone(),
                status.clone(),
                self.backoff,
            ));
            Entry { slot, status, task }
        });
        (e.slot.clone(), e.status.subscribe())
    }

    /// The current certificate for `identity`, waiting up to `wait` for the first one.
    pub async fn get(
        &self,
        identity: &Identity,
        wait: Duration,
    ) -> Result<Arc<WorkloadCertificate>, FetchError> {
        let (slot, mut status) = self.entry(identity);
        if let Some(c) = slot.load() {
            return Ok(c);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(c) = slot.load() {
                return Ok(c);
            }
            let last = status.borrow().last_error.clone();
            match tokio::time::timeout_at(deadline, status.changed()).await {
                Ok(Ok(())) => continue,
                _ => {
                    return Err(FetchError::NotYet(
                        identity.to_string(),
                        last.unwrap_or_else(|| "still waiting for the CA".into()),
                    ));
                }
            }
        }
    }

    /// Stops renewing `identity` (its last pod left the node).
    pub fn forget(&self, identity: &Identity) {
        if let Some(e) = self.entries.lock().expect("poisoned").remove(identity) {
            e.task.abort();
        }
    }

    pub fn dump(&self) -> Vec<CertificateDump> {
        let entries = self.entries.lock().expect("poisoned");
        let mut out: Vec<CertificateDump> = entries
            .iter()
            .map(|(id, e)| {
                let cert = e.slot.load();
                let status = e.status.borrow().clone();
                CertificateDump {
                    identity: id.to_string(),
                    state: match &cert {
                        Some(c) if c.is_expired(SystemTime::now()) => "expired",
                        Some(_) => "available",
                        None => "pending",
                    },
                    serial: cert.as_ref().map(|c| c.serial().to_string()),
                    not_before: cert.as_ref().map(|c| unix(c.not_before())),
                    not_after: cert.as_ref().map(|c| unix(c.not_after())),
                    last_error: status.last_error,
                }
            })
            .collect();
        out.sort_by(|a, b| a.identity.cmp(&b.identity));
        out
    }
}

impl Drop for CertificateManager {
    fn drop(&mut self) {
        for e in self.entries.lock().expect("poisoned").values() {
            e.task.abort();
        }
    }
}

/// Keeps one identity's certificate fresh: fetch, sleep to half-life, repeat; on failure
/// retry with exponential backoff while the previous certificate stays in use.
async fn refresh(
    source: Arc<dyn CertificateSource>,
    identity: Identity,
    slot: Arc<CertSlot>,
    status: watch::Sender<Status>,
    backoff: Backoff,
) {
    let mut delay = backoff.initial;
    loop {
        match source.fetch(&identity).await {
            Ok(cert) => {
                let cert = Arc::new(cert);
                // Half of the lifetime left from now: CAs backdate not_before for clock skew,
                // which would otherwise put a short-lived certificate's half-life in the past.
                let remaining = cert
                    .not_after()
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                let wait = (remaining / 2).max(Duration::from_millis(100));
                info!(
                    identity = %identity,
                    serial = cert.serial(),
                    expires = unix(cert.not_after()),
                    "workload certificate ready"
                );
                metrics::counter!("ambient_certificate_fetches_total", "result" => "success")
                    .increment(1);
                slot.store(cert);
                status.send_modify(|s| {
                    s.generation += 1;
                    s.last_error = None;
                });
                delay = backoff.initial;
                tokio::time::sleep(wait).await;
            }
            Err(e) => {
                warn!(identity = %identity, error = %e, retry_in = ?delay, "certificate fetch failed");
                metrics::counter!("ambient_certificate_fetches_total", "result" => "failure")
                    .increment(1);
                status.send_modify(|s| s.last_error = Some(e.to_string()));
                // Up to 25% jitter so a node's identities do not retry in lockstep.
                let jitter = delay.mul_f64(rand::random::<f64>() * 0.25);
                tokio::time::sleep(delay + jitter).await;
                delay = (delay * 2).min(backoff.max);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose, SanType,
    };
    use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    /// Issues certificates of a given lifetime, failing the first `fail_first` requests.
    struct FakeCa {
        issuer: Issuer<'static, KeyPair>,
        lifetime: Duration,
        fail_first: usize,
        calls: AtomicUsize,
    }

    impl FakeCa {
        fn new(lifetime: Duration, fail_first: usize) -> Self {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::default();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
            FakeCa {
                issuer: Issuer::new(params, key),
                lifetime,
                fail_first,
                calls: AtomicUsize::new(0),
            }
        }
    }

    impl CertificateSource for FakeCa {
        fn fetch<'a>(
            &'a self,
            identity: &'a Identity,
        ) -> BoxFuture<'a, Result<WorkloadCertificate, FetchError>> {
            Box::pin(async move {
                let n = self.calls.fetch_add(1, Ordering::SeqCst);
                if n < self.fail_first {
                    return Err(FetchError::Refused {
                        code: tonic::Code::Unavailable,
                        message: "CA down".into(),
                    });
                }
                let key = KeyPair::generate().unwrap();
                let mut params = CertificateParams::default();
                params.subject_alt_names = vec![SanType::URI(
                    identity.to_string().as_str().try_into().unwrap(),
                )];
                params.is_ca = IsCa::ExplicitNoCa;
                params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
                let now = time::OffsetDateTime::now_utc();
                params.not_before = now;
                params.not_after = now + self.lifetime;
                let cert = params.signed_by(&key, &self.issuer).unwrap();
                let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
                Ok(WorkloadCertificate::from_der(vec![cert.der().clone()], key).unwrap())
            })
        }
    }

    fn id() -> Identity {
        "spiffe://cluster.local/ns/default/sa/web".parse().unwrap()
    }

    #[tokio::test]
    async fn fetches_on_first_use_and_retries() {
        let ca = Arc::new(FakeCa::new(Duration::from_secs(3600), 2));
        let mgr = CertificateManager::new(
            ca.clone(),
            Backoff {
                initial: Duration::from_millis(10),
                max: Duration::from_millis(50),
            },
        );
        let cert = mgr.get(&id(), Duration::from_secs(5)).await.unwrap();
        assert_eq!(cert.identity(), &id());
        assert_eq!(
            ca.calls.load(Ordering::SeqCst),
            3,
            "two failures, then success"
        );
        // Served from cache afterwards.
        mgr.get(&id(), Duration::from_secs(1)).await.unwrap();
        assert_eq!(ca.calls.load(Ordering::SeqCst), 3);
        assert_eq!(mgr.dump()[0].state, "available");
    }

    #[tokio::test]
    async fn rotates_at_half_life_keeping_the_old_until_then() {
        let ca = Arc::new(FakeCa::new(Duration::from_secs(2), 0));
        let mgr = CertificateManager::new(ca.clone(), Backoff::default());
        let first = mgr.get(&id(), Duration::from_secs(5)).await.unwrap();
        let slot = mgr.slot(&id());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let now = slot.load().unwrap();
            if now.serial() != first.serial() {
                assert!(now.not_after() > first.not_after());
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no rotation");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn reports_why_it_has_no_certificate() {
        let ca = Arc::new(FakeCa::new(Duration::from_secs(3600), usize::MAX));
        let mgr = CertificateManager::new(ca, Backoff::default());
        let err = mgr
            .get(&id(), Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("CA down"), "{err}");
        assert_eq!(mgr.dump()[0].state, "pending");
        mgr.forget(&id());
        assert!(mgr.dump().is_empty());
    }
}
