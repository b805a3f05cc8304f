//! SPIFFE identities of mesh workloads: `spiffe://<trust-domain>/ns/<namespace>/sa/<account>`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use spiffe::SpiffeId;

/// The trust domain Kubernetes clusters use unless configured otherwise.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// A workload identity: one per Kubernetes service account.
///
/// Kept as its three parts because authorization, metrics and the CA all ask for the
/// namespace or the account separately, and with its URI because logs and labels show it.
/// Shared: every connection record, pool key and policy check holds one, and a clone is a
/// reference count, not three string copies.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity(Arc<Parts>);

// Field order is the ordering: trust domain, namespace, account (the URI follows from them).
#[derive(PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Parts {
    trust_domain: String,
    namespace: String,
    service_account: String,
    uri: String,
}

impl Identity {
    fn from_parts(trust_domain: String, namespace: String, service_account: String) -> Self {
        let uri = format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}");
        Identity(Arc::new(Parts {
            trust_domain,
            namespace,
            service_account,
            uri,
        }))
    }
}

/// Why a string or certificate did not yield a mesh identity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("not a SPIFFE ID: {0}")]
    NotSpiffe(String),
    #[error("SPIFFE ID {0} is not of the form spiffe://<td>/ns/<namespace>/sa/<service-account>")]
    NotWorkloadPath(String),
}

impl Identity {
    /// Builds an identity from parts; each part must be a valid SPIFFE path segment.
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Result<Self, IdentityError> {
        let id = Identity::from_parts(
            trust_domain.into(),
            namespace.into(),
            service_account.into(),
        );
        // Round-trip through the spiffe crate so only valid IDs exist.
        let uri = id.to_string();
        let parsed: Identity = uri.parse()?;
        if parsed != id {
            return Err(IdentityError::NotWorkloadPath(uri));
        }
        Ok(id)
    }

    pub fn trust_domain(&self) -> &str {
        &self.0.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.0.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.0.service_account
    }

    /// `spiffe://<trust-domain>/ns/<namespace>/sa/<account>`, without formatting anything.
    pub fn as_uri(&self) -> &str {
        &self.0.uri
    }

    /// The identity as a [`SpiffeId`].
    pub fn spiffe_id(&self) -> SpiffeId {
        SpiffeId::new(self.as_uri()).expect("validated at construction")
    }
}

impl TryFrom<&SpiffeId> for Identity {
    type Error = IdentityError;

    fn try_from(id: &SpiffeId) -> Result<Self, Self::Error> {
        let segments: Vec<&str> = id.path().trim_start_matches('/').split('/').collect();
        match segments.as_slice() {
            ["ns", ns, "sa", sa] if !ns.is_empty() && !sa.is_empty() => Ok(Identity::from_parts(
                id.trust_domain_name().to_string(),
                (*ns).to_string(),
                (*sa).to_string(),
            )),
            _ => Err(IdentityError::NotWorkloadPath(id.to_string())),
        }
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let id = SpiffeId::new(s).map_err(|e| IdentityError::NotSpiffe(format!("{s}: {e}")))?;
        Identity::try_from(&id)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_uri())
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("trust_domain", &self.0.trust_domain)
            .field("namespace", &self.0.namespace)
            .field("service_account", &self.0.service_account)
            .finish()
    }
}

/// Serialized as the SPIFFE URI.
impl serde::Serialize for Identity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Identity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_workload_ids() {
        let id: Identity = "spiffe://cluster.local/ns/default/sa/reviews"
            .parse()
            .unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "reviews");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/reviews"
        );
    }

    #[test]
    fn rejects_other_shapes() {
        assert!(matches!(
            "spiffe://cluster.local/workload/x".parse::<Identity>(),
            Err(IdentityError::NotWorkloadPath(_))
        ));
        assert!(matches!(
            "https://cluster.local/ns/a/sa/b".parse::<Identity>(),
            Err(IdentityError::NotSpiffe(_))
        ));
        assert!(Identity::new("cluster.local", "a/b", "c").is_err());
        assert!(Identity::new("Bad Domain", "a", "c").is_err());
    }
}
