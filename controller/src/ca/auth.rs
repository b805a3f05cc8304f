//! Who is calling the CA: bearer tokens mapped to callers.
//!
//! In the manifest-directory (local) mode the controller issues one random token per node and
//! writes it where that node's ztunnel can read it. In Kubernetes, TokenReview of a pod's
//! service account token tells a ztunnel (by its service account, acting for its node) from a
//! waypoint instance (acting for its own identity only); see [`super::tokenreview`].

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use base64::Engine as _;
use futures::future::BoxFuture;

/// An authenticated caller of the CA or of xDS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The ztunnel of one node; it may obtain identities of pods on that node only.
    Node(String),
    /// A waypoint instance (a pod of a waypoint Gateway) authenticated by its own service
    /// account token; it may obtain its own identity, `<namespace>/<service_account>`, only.
    Waypoint {
        namespace: String,
        service_account: String,
        /// The pod the token was bound to.
        pod: String,
        /// The node it runs on (empty when unknown).
        node: String,
    },
}

impl Caller {
    /// The node the caller runs on (ztunnels speak for it).
    pub fn node(&self) -> &str {
        match self {
            Caller::Node(n) => n,
            Caller::Waypoint { node, .. } => node,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no bearer token in the authorization header")]
    MissingToken,
    #[error("the bearer token is not valid")]
    UnknownToken,
    #[error("the token is valid but {0} is not a ztunnel")]
    NotZtunnel(String),
    #[error("the token is valid but {account} is not a ztunnel, nor a waypoint instance: {reason}")]
    NotWaypoint { account: String, reason: String },
    #[error("the token names no node (a bound service account token of a pod is needed)")]
    NoNode,
    #[error("cannot verify the token: {0}")]
    Unavailable(String),
}

/// Turns a bearer token into a [`Caller`].
pub trait Authenticator: Send + Sync {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>>;
}

/// One random token per node, kept in `<dir>/<node>.token` (mode 0600).
pub struct NodeTokens {
    dir: PathBuf,
    tokens: RwLock<BTreeMap<String, String>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct TokenStoreError {
    path: PathBuf,
    source: std::io::Error,
}

impl NodeTokens {
    /// Opens the token directory, loading tokens already issued.
    pub fn open(dir: &Path) -> Result<Self, TokenStoreError> {
        let err = |source| TokenStoreError {
            path: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(err)?;
        let mut tokens = BTreeMap::new();
        for entry in fs::read_dir(dir).map_err(err)? {
            let entry = entry.map_err(err)?;
            let path = entry.path();
            if let (Some(node), Some("token")) = (
                path.file_stem().and_then(|s| s.to_str()),
                path.extension().and_then(|s| s.to_str()),
            ) {
                let token = fs::read_to_string(&path).map_err(|source| TokenStoreError {
                    path: path.clone(),
                    source,
                })?;
                tokens.insert(node.to_string(), token.trim().to_string());
            }
        }
        Ok(NodeTokens {
            dir: dir.to_path_buf(),
            tokens: RwLock::new(tokens),
        })
    }

    /// Returns the node's token, issuing (and persisting) one the first time.
    pub fn issue(&self, node: &str) -> Result<String, TokenStoreError> {
        if let Some(t) = self.tokens.read().expect("poisoned").get(node) {
            return Ok(t.clone());
        }
        let mut tokens = self.tokens.write().expect("poisoned");
        if let Some(t) = tokens.get(node) {
            return Ok(t.clone());
        }
        let raw: [u8; 32] = rand::random();
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        let path = self.token_path(node);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(token.as_bytes()).map(|_| f))
            .map_err(|source| TokenStoreError {
                path: path.clone(),
                source,
            })?;
        f.flush()
            .map_err(|source| TokenStoreError { path, source })?;
        tokens.insert(node.to_string(), token.clone());
        Ok(token)
    }

    /// Where a node's token is written.
    pub fn token_path(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}.token"))
    }
}

impl Authenticator for NodeTokens {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>> {
        Box::pin(std::future::ready(self.check(token)))
    }
}

impl NodeTokens {
    fn check(&self, token: &str) -> Result<Caller, AuthError> {
        if token.is_empty() {
            return Err(AuthError::MissingToken);
        }
        // Compare against every token in constant time, so timing reveals nothing.
        let tokens = self.tokens.read().expect("poisoned");
        let mut found = None;
        for (node, t) in tokens.iter() {
            if constant_time_eq(t.as_bytes(), token.as_bytes()) {
                found = Some(node.clone());
            }
        }
        found.map(Caller::Node).ok_or(AuthError::UnknownToken)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Extracts the token from an `authorization: Bearer <token>` value.
/// The caller of a gRPC request (xDS or the CA): its `authorization: Bearer <token>` header,
/// authenticated by `auth`. Every refusal is an [`AuthError`] naming why.
pub async fn caller(
    auth: &dyn Authenticator,
    metadata: &tonic::metadata::MetadataMap,
) -> Result<Caller, AuthError> {
    let header = metadata.get("authorization").and_then(|v| v.to_str().ok());
    auth.authenticate(bearer(header)?).await
}

pub fn bearer(header: Option<&str>) -> Result<&str, AuthError> {
    let v = header.ok_or(AuthError::MissingToken)?;
    let token = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .ok_or(AuthError::MissingToken)?
        .trim();
    if token.is_empty() {
        Err(AuthError::MissingToken)
    } else {
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_persists_and_authenticates() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = NodeTokens::open(dir.path()).unwrap();
        let a = tokens.issue("node-a").unwrap();
        let b = tokens.issue("node-b").unwrap();
        assert_ne!(a, b);
        assert_eq!(tokens.issue("node-a").unwrap(), a, "stable");
        assert_eq!(tokens.check(&a), Ok(Caller::Node("node-a".into())));
        assert_eq!(tokens.check("nope"), Err(AuthError::UnknownToken));
        assert_eq!(tokens.check(""), Err(AuthError::MissingToken));
        let reopened = NodeTokens::open(dir.path()).unwrap();
        assert_eq!(reopened.check(&b), Ok(Caller::Node("node-b".into())));
    }

    #[test]
    fn parses_bearer_headers() {
        assert_eq!(bearer(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer(Some("Basic abc")), Err(AuthError::MissingToken));
        assert_eq!(bearer(Some("Bearer ")), Err(AuthError::MissingToken));
        assert_eq!(bearer(None), Err(AuthError::MissingToken));
    }
}
