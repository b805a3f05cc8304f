//! A fake Kubernetes API server that speaks the real HTTP API, for testing clients built on
//! kube-rs watchers:
//!
//! - `GET` collections, cluster-wide or per namespace, answered as `<Kind>List` with the
//!   current `resourceVersion`, in pages when asked (`limit`, `continue`);
//! - `GET ...?watch=true&resourceVersion=N` streams `ADDED` / `MODIFIED` / `DELETED` events
//!   after `N` (newline-delimited JSON), `BOOKMARK`s when asked for, and an `ERROR` event with
//!   a 410 `Status` when `N` is older than the retained history (after [`FakeApiServer::compact`]);
//! - `GET`, `PUT` and `DELETE` of one object, `POST` to a collection (`generateName`, 409
//!   `AlreadyExists`), `PUT` / `PATCH` of the `/status` subresource (kinds with one ignore
//!   `status` in writes to the object, and count `metadata.generation` on other changes);
//! - `PATCH` as server-side apply (`application/apply-patch+yaml`: creates the object if
//!   absent, otherwise merges the applied fields, removes those the same field manager no
//!   longer applies, and answers 409 `Conflict` for fields another manager owns unless
//!   `force=true`; ownership is kept in `metadata.managedFields`), JSON merge patch
//!   (strategic merge patches are treated as merge patches) and JSON patch; any other
//!   content type is 415;
//! - writes bump the `resourceVersion` and reach the watches; writes that change nothing do
//!   neither; `dryRun` stores nothing; a Secret's `stringData` is stored as `data`;
//!   namespaced objects need their Namespace; `resourceVersion` in a write is a
//!   precondition (409 on mismatch);
//! - `POST /apis/authentication.k8s.io/v1/tokenreviews` against tokens the test registers.
//!
//! Nothing is defaulted or allocated (no cluster IPs, no pods for Deployments) and there is
//! no garbage collection: the test sets such fields itself. It mutates state in-process
//! ([`FakeApiServer::apply`], [`FakeApiServer::patch`], [`FakeApiServer::delete`]) and can
//! make requests fail ([`FakeApiServer::inject_error`]).

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

mod fields;
mod patch;

/// A collection the server serves.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ResourceType {
    /// Empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// Whether the kind has a `/status` subresource: writes to the object then leave its
    /// `status` alone, writes to `/status` change nothing else, and `metadata.generation`
    /// counts changes outside metadata and status.
    pub status: bool,
}

impl ResourceType {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `deployments.apps`, as the API server names a resource in its messages.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

const fn rt(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    status: bool,
) -> ResourceType {
    ResourceType {
        group,
        version,
        plural,
        kind,
        namespaced,
        status,
    }
}

/// The collections ambient-rs reads, and those `ambientctl install` and the controller's
/// waypoint deployer write.
pub const TYPES: &[ResourceType] = &[
    rt("", "v1", "namespaces", "Namespace", false, true),
    rt("", "v1", "nodes", "Node", false, true),
    rt("", "v1", "pods", "Pod", true, true),
    rt("", "v1", "services", "Service", true, true),
    rt("", "v1", "serviceaccounts", "ServiceAccount", true, false),
    rt("", "v1", "configmaps", "ConfigMap", true, false),
    rt("", "v1", "secrets", "Secret", true, false),
    rt("apps", "v1", "deployments", "Deployment", true, true),
    rt("apps", "v1", "daemonsets", "DaemonSet", true, true),
    rt(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterroles",
        "ClusterRole",
        false,
        false,
    ),
    rt(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        false,
        false,
    ),
    rt(
        "rbac.authorization.k8s.io",
        "v1",
        "roles",
        "Role",
        true,
        false,
    ),
    rt(
        "rbac.authorization.k8s.io",
        "v1",
        "rolebindings",
        "RoleBinding",
        true,
        false,
    ),
    rt(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        false,
        true,
    ),
    rt(
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        "EndpointSlice",
        true,
        false,
    ),
    rt(
        "gateway.networking.k8s.io",
        "v1",
        "gateways",
        "Gateway",
        true,
        true,
    ),
    rt(
        "security.istio.io",
        "v1",
        "authorizationpolicies",
        "AuthorizationPolicy",
        true,
        true,
    ),
    rt(
        "security.istio.io",
        "v1",
        "peerauthentications",
        "PeerAuthentication",
        true,
        true,
    ),
    rt(
        "gateway.networking.k8s.io",
        "v1",
        "httproutes",
        "HTTPRoute",
        true,
        true,
    ),
    rt(
        "gateway.networking.k8s.io",
        "v1",
        "grpcroutes",
        "GRPCRoute",
        true,
        true,
    ),
    rt(
        "networking.istio.io",
        "v1",
        "virtualservices",
        "VirtualService",
        true,
        true,
    ),
    rt(
        "networking.istio.io",
        "v1",
        "destinationrules",
        "DestinationRule",
        true,
        true,
    ),
    rt(
        "networking.istio.io",
        "v1",
        "serviceentries",
        "ServiceEntry",
        true,
        true,
    ),
];

#[derive(Clone, Debug)]
struct Event {
    rv: u64,
    plural: &'static str,
    kind: &'static str,
    namespace: String,
    object: Value,
}

/// What a TokenReview answers for a token.
#[derive(Clone, Debug)]
struct Token {
    username: String,
    extra: BTreeMap<String, Vec<String>>,
}

/// An error the test makes the server answer.
#[derive(Clone, Debug)]
struct Injection {
    method: Option<Method>,
    path_contains: String,
    code: u16,
}

#[derive(Default)]
struct Store {
    rv: u64,
    /// plural → (namespace, name) → object.
    objects: BTreeMap<&'static str, BTreeMap<(String, String), Value>>,
    history: Vec<Event>,
    /// Watches from before this resourceVersion get 410 Gone.
    oldest_watchable: u64,
    tokens: BTreeMap<String, Token>,
    /// Requests served, for tests that check what the client did.
    requests: Vec<String>,
    injections: Vec<Injection>,
    /// For `metadata.generateName`.
    generated: u64,
}

impl Store {
    fn get(&self, t: &ResourceType, namespace: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(t.plural)?
            .get(&(namespace.to_string(), name.to_string()))
    }

    fn namespace_exists(&self, name: &str) -> bool {
        self.objects
            .get("namespaces")
            .is_some_and(|m| m.contains_key(&(String::new(), name.to_string())))
    }
}

struct Inner {
    store: Mutex<Store>,
    events: broadcast::Sender<Event>,
    /// Bumped to end every open watch (clients then reconnect).
    generation: broadcast::Sender<()>,
}

/// A running fake API server; dropped, it keeps running until the runtime ends.
#[derive(Clone)]
pub struct FakeApiServer {
    inner: Arc<Inner>,
    addr: SocketAddr,
}

type Body = BoxBody<Bytes, Infallible>;

fn full(v: impl Into<Bytes>) -> Body {
    Full::new(v.into()).boxed()
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(serde_json::to_vec(v).expect("json")))
        .expect("response")
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// A failed request, answered as a `Status`.
#[derive(Debug)]
struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
    details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn about(mut self, t: &ResourceType, name: &str) -> Self {
        self.details = Some(json!({"name": name, "group": t.group, "kind": t.plural}));
        self
    }

    fn not_found(t: &ResourceType, name: &str) -> Self {
        ApiError::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", t.qualified()),
        )
        .about(t, name)
    }

    fn namespace_not_found(namespace: &str) -> Self {
        ApiError::new(
            404,
            "NotFound",
            format!("namespaces \"{namespace}\" not found"),
        )
        .about(&TYPES[0], namespace)
    }

    fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, "BadRequest", message)
    }

    fn modified(t: &ResourceType, name: &str) -> Self {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                t.qualified()
            ),
        )
        .about(t, name)
    }

    /// The `Status` an injected error code answers with.
    fn injected(code: u16, method: &Method, path: &str) -> Self {
        let reason = match code {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            409 => "Conflict",
            422 => "Invalid",
            429 => "TooManyRequests",
            503 => "ServiceUnavailable",
            _ => "InternalError",
        };
        let message = match code {
            401 => "Unauthorized".to_string(),
            403 => format!(
                "{method} {path} is forbidden: User \"system:anonymous\" cannot {} this resource",
                method.as_str().to_lowercase()
            ),
            _ => format!("injected error {code} for {method} {path}"),
        };
        ApiError::new(code, reason, message)
    }

    fn response(&self) -> Response<Body> {
        let mut body = status(self.code, self.reason, &self.message);
        if let Some(d) = &self.details {
            body["details"] = d.clone();
        }
        json_response(
            StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &body,
        )
    }
}

type ApiResult = Result<Response<Body>, ApiError>;

/// What a request path names.
#[derive(Debug, PartialEq)]
struct Target {
    t: &'static ResourceType,
    /// Set for namespaced paths (`.../namespaces/<ns>/...`).
    namespace: Option<String>,
    /// An object, or the collection when `None`.
    name: Option<String>,
    subresource: Option<String>,
}

/// `%XX` and `+` decoding of a query value.
fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The part of an object a write through `subresource` may change, for a kind with a status
/// subresource: `status` alone through `/status`, everything else otherwise.
fn scoped(t: &ResourceType, subresource: &str, old: Option<&Value>, mut new: Value) -> Value {
    if !t.status {
        return new;
    }
    if subresource == "status" {
        let mut kept = old.cloned().unwrap_or_else(|| json!({}));
        match new.get_mut("status").map(Value::take) {
            Some(s) => kept["status"] = s,
            None => {
                kept.as_object_mut().map(|o| o.remove("status"));
            }
        }
        kept
    } else {
        match old.and_then(|o| o.get("status")) {
            Some(s) => new["status"] = s.clone(),
            None => {
                new.as_object_mut().map(|o| o.remove("status"));
            }
        }
        new
    }
}

/// What `generation` counts: everything but metadata and status.
fn desired_state(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("metadata");
        o.remove("status");
    }
    v
}

/// A Secret's `stringData` goes into `data`, base64-encoded, as the API server does.
fn normalize_secret(object: &mut Value) {
    use base64::Engine as _;
    let Some(Value::Object(strings)) = object.as_object_mut().and_then(|o| o.remove("stringData"))
    else {
        return;
    };
    let data = object
        .as_object_mut()
        .expect("an object")
        .entry("data")
        .or_insert_with(|| json!({}));
    if !data.is_object() {
        *data = json!({});
    }
    for (k, v) in strings {
        let text = v.as_str().unwrap_or_default();
        data[k.as_str()] = json!(base64::engine::general_purpose::STANDARD.encode(text));
    }
}

impl FakeApiServer {
    /// Starts serving on 127.0.0.1 (an ephemeral port).
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (events, _) = broadcast::channel(4096);
        let (generation, _) = broadcast::channel(16);
        let server = FakeApiServer {
            inner: Arc::new(Inner {
                store: Mutex::new(Store::default()),
                events,
                generation,
            }),
            addr,
        };
        let s = server.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(s.route(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig pointing at this server.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\nusers:\n- name: fake\n  user:\n    token: test\n",
            self.url()
        )
    }

    /// Accepts `token` in TokenReviews as `username` (e.g. `system:serviceaccount:ns:sa`)
    /// running on `node`.
    pub fn add_token(&self, token: &str, username: &str, node: Option<&str>) {
        let mut extra = BTreeMap::new();
        if let Some(n) = node {
            extra.insert(
                "authentication.kubernetes.io/node-name".to_string(),
                vec![n.to_string()],
            );
        }
        self.insert_token(token, username, extra);
    }

    /// Accepts `token` as a pod-bound service account token, as the API server reviews one
    /// projected into pod `pod` (uid `pod_uid`) on `node`.
    pub fn add_pod_token(
        &self,
        token: &str,
        username: &str,
        node: Option<&str>,
        pod: &str,
        pod_uid: &str,
    ) {
        let mut extra = BTreeMap::from([
            (
                "authentication.kubernetes.io/pod-name".to_string(),
                vec![pod.to_string()],
            ),
            (
                "authentication.kubernetes.io/pod-uid".to_string(),
                vec![pod_uid.to_string()],
            ),
        ]);
        if let Some(n) = node {
            extra.insert(
                "authentication.kubernetes.io/node-name".to_string(),
                vec![n.to_string()],
            );
        }
        self.insert_token(token, username, extra);
    }

    fn insert_token(&self, token: &str, username: &str, extra: BTreeMap<String, Vec<String>>) {
        self.inner.store.lock().expect("poisoned").tokens.insert(
            token.to_string(),
            Token {
                username: username.to_string(),
                extra,
            },
        );
    }

    /// Makes every request whose method is `method` (any when `None`) and whose path and
    /// query contain `path_contains` fail with `code` (e.g. 403 Forbidden) until
    /// [`FakeApiServer::clear_injected_errors`].
    pub fn inject_error(&self, method: Option<&str>, path_contains: &str, code: u16) {
        self.inner
            .store
            .lock()
            .expect("poisoned")
            .injections
            .push(Injection {
                method: method.map(|m| Method::from_bytes(m.as_bytes()).expect("a method")),
                path_contains: path_contains.to_string(),
                code,
            });
    }

    pub fn clear_injected_errors(&self) {
        self.inner
            .store
            .lock()
            .expect("poisoned")
            .injections
            .clear();
    }

    fn type_of(kind: &str) -> &'static ResourceType {
        TYPES
            .iter()
            .find(|t| t.kind == kind)
            .unwrap_or_else(|| panic!("unsupported kind {kind}"))
    }

    fn key(t: &ResourceType, namespace: &str) -> String {
        if t.namespaced {
            namespace.to_string()
        } else {
            String::new()
        }
    }

    /// Fills what the server owns in a new version of an object (identity, uid,
    /// generation, a Secret's `data`); its resourceVersion stays the old one until stored.
    fn prepare(
        store: &mut Store,
        t: &ResourceType,
        namespace: &str,
        name: &str,
        old: Option<&Value>,
        mut object: Value,
    ) -> Value {
        if !object.is_object() {
            object = json!({});
        }
        object["apiVersion"] = json!(t.api_version());
        object["kind"] = json!(t.kind);
        if !object["metadata"].is_object() {
            object["metadata"] = json!({});
        }
        let old_meta = old.map(|o| &o["metadata"]);
        let generation = if t.status {
            let before = old_meta.and_then(|m| m["generation"].as_u64());
            Some(match (before, old) {
                (Some(g), Some(o)) if desired_state(o) == desired_state(&object) => g,
                (Some(g), Some(_)) => g + 1,
                _ => 1,
            })
        } else {
            None
        };
        let uid = match old_meta.and_then(|m| m["uid"].as_str()) {
            Some(uid) => uid.to_string(),
            None => {
                store.generated += 1;
                format!("uid-{}-{}", store.rv + 1, store.generated)
            }
        };
        let meta = object["metadata"].as_object_mut().expect("metadata");
        meta.insert("name".into(), json!(name));
        if t.namespaced {
            meta.insert("namespace".into(), json!(namespace));
        } else {
            meta.remove("namespace");
        }
        meta.insert("uid".into(), json!(uid));
        meta.insert(
            "creationTimestamp".into(),
            old_meta
                .map(|m| m["creationTimestamp"].clone())
                .filter(|v| !v.is_null())
                .unwrap_or_else(|| json!("2026-01-01T00:00:00Z")),
        );
        match old_meta.map(|m| m["resourceVersion"].clone()) {
            Some(rv) => meta.insert("resourceVersion".into(), rv),
            None => meta.remove("resourceVersion"),
        };
        if let Some(g) = generation {
            meta.insert("generation".into(), json!(g));
        }
        if t.kind == "Secret" {
            normalize_secret(&mut object);
        }
        object
    }

    /// Stores a new version of an object (or deletes it), bumps the resourceVersion and
    /// tells the watchers; returns the stored (or deleted) object.
    fn commit(
        &self,
        store: &mut Store,
        t: &'static ResourceType,
        namespace: &str,
        name: &str,
        object: Option<Value>,
    ) -> Value {
        let ns = Self::key(t, namespace);
        let key = (ns.clone(), name.to_string());
        store.rv += 1;
        let rv = store.rv;
        let (kind, mut object) = match object {
            Some(o) => {
                let existed = store.get(t, &ns, name).is_some();
                (if existed { "MODIFIED" } else { "ADDED" }, o)
            }
            None => {
                let removed = store
                    .objects
                    .entry(t.plural)
                    .or_default()
                    .remove(&key)
                    .expect("deleting an existing object");
                ("DELETED", removed)
            }
        };
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        if kind != "DELETED" {
            store
                .objects
                .entry(t.plural)
                .or_default()
                .insert(key, object.clone());
        }
        let event = Event {
            rv,
            plural: t.plural,
            kind,
            namespace: ns,
            object: object.clone(),
        };
        store.history.push(event.clone());
        let _ = self.inner.events.send(event);
        object
    }

    /// Creates or replaces an object (its `kind` picks the collection), as an in-process
    /// change that bypasses the API's rules (a test may set `status` this way).
    pub fn apply(&self, object: Value) -> u64 {
        let kind = object["kind"].as_str().expect("kind").to_string();
        let t = Self::type_of(&kind);
        let name = object["metadata"]["name"]
            .as_str()
            .expect("name")
            .to_string();
        let namespace = Self::key(
            t,
            object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default"),
        );
        let mut store = self.inner.store.lock().expect("poisoned");
        let old = store.get(t, &namespace, &name).cloned();
        let mut object = object;
        if object["metadata"].get("managedFields").is_none()
            && let Some(m) = old.as_ref().map(|o| o["metadata"]["managedFields"].clone())
            && !m.is_null()
        {
            object["metadata"]["managedFields"] = m;
        }
        let given_creation = object["metadata"]["creationTimestamp"].clone();
        let mut object = Self::prepare(&mut store, t, &namespace, &name, old.as_ref(), object);
        if given_creation.is_string() {
            // In-process, a test may date its objects (the API ignores it from clients).
            object["metadata"]["creationTimestamp"] = given_creation;
        }
        let stored = self.commit(&mut store, t, &namespace, &name, Some(object));
        stored["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .expect("a resourceVersion")
    }

    /// Applies a JSON merge patch (RFC 7386) to an object in-process, `status` included,
    /// recorded as an update by field manager `fake-apiserver`; `None` when there is no
    /// such object.
    pub fn patch(&self, kind: &str, namespace: &str, name: &str, patch: Value) -> Option<u64> {
        let t = Self::type_of(kind);
        let ns = Self::key(t, namespace);
        let mut store = self.inner.store.lock().expect("poisoned");
        let old = store.get(t, &ns, name)?.clone();
        let mut new = old.clone();
        patch::merge_patch(&mut new, &patch);
        new["metadata"]["managedFields"] = old["metadata"]["managedFields"].clone();
        fields::record_update(Some(&old), &mut new, "fake-apiserver", "", &t.api_version());
        let new = Self::prepare(&mut store, t, &ns, name, Some(&old), new);
        if new == old {
            return old["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|v| v.parse().ok());
        }
        let stored = self.commit(&mut store, t, &ns, name, Some(new));
        stored["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|v| v.parse().ok())
    }

    /// The stored object, if any.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let t = Self::type_of(kind);
        let store = self.inner.store.lock().expect("poisoned");
        store.get(t, &Self::key(t, namespace), name).cloned()
    }

    /// Every stored object of a kind.
    pub fn list(&self, kind: &str) -> Vec<Value> {
        let t = Self::type_of(kind);
        let store = self.inner.store.lock().expect("poisoned");
        store
            .objects
            .get(t.plural)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Deletes an object; returns whether it existed.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> bool {
        let t = Self::type_of(kind);
        let ns = Self::key(t, namespace);
        let mut store = self.inner.store.lock().expect("poisoned");
        if store.get(t, &ns, name).is_none() {
            return false;
        }
        self.commit(&mut store, t, &ns, name, None);
        true
    }

    /// Forgets the event history: any watch resuming from a resourceVersion seen before now
    /// gets 410 Gone (lists from now on carry a newer one).
    pub fn compact(&self) {
        let mut store = self.inner.store.lock().expect("poisoned");
        store.history.clear();
        store.rv += 1;
        store.oldest_watchable = store.rv;
    }

    /// Ends every open watch, as an API server restart or a load balancer would.
    pub fn close_watches(&self) {
        let _ = self.inner.generation.send(());
    }

    /// Requests served so far (`METHOD path?query`).
    pub fn requests(&self) -> Vec<String> {
        self.inner.store.lock().expect("poisoned").requests.clone()
    }

    async fn route(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let query: BTreeMap<String, String> = req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (percent_decode(k), percent_decode(v)))
            .collect();
        let method = req.method().clone();
        let shown = format!("{} {}", method, req.uri());
        let injected = {
            let mut store = self.inner.store.lock().expect("poisoned");
            store.requests.push(shown.clone());
            store
                .injections
                .iter()
                .find(|i| {
                    i.method.as_ref().is_none_or(|m| *m == method)
                        && shown.contains(&i.path_contains)
                })
                .map(|i| i.code)
        };
        if let Some(code) = injected {
            return ApiError::injected(code, &method, &path).response();
        }
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        let user_agent = req
            .headers()
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.split('/').next().unwrap_or(ua).to_string());
        let body = if matches!(method, Method::POST | Method::PUT | Method::PATCH) {
            match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return ApiError::bad_request(format!("reading the body: {e}")).response();
                }
            }
        } else {
            Bytes::new()
        };
        if method == Method::POST && path == "/apis/authentication.k8s.io/v1/tokenreviews" {
            return self.token_review(&body);
        }
        let Some(target) = parse_path(&path) else {
            return json_response(
                StatusCode::NOT_FOUND,
                &status(404, "NotFound", &format!("no route {path}")),
            );
        };
        let request = Write {
            query: &query,
            manager: query
                .get("fieldManager")
                .cloned()
                .or(user_agent)
                .unwrap_or_else(|| "unknown".into()),
            dry_run: query.contains_key("dryRun"),
        };
        let result = match (&method, &target.name) {
            (&Method::GET, None) => {
                let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
                Ok(if watch {
                    self.watch(target.t, target.namespace, &query)
                } else {
                    self.list_response(target.t, target.namespace, &query)
                })
            }
            (&Method::GET, Some(name)) => self.read(&target, name),
            (&Method::POST, None) => self.create(&target, &body, &request),
            (&Method::PUT, Some(name)) => self.replace(&target, name, &body, &request),
            (&Method::PATCH, Some(name)) => {
                self.patch_request(&target, name, &content_type, &body, &request)
            }
            (&Method::DELETE, Some(name)) if target.subresource.is_none() => {
                self.delete_request(&target, name, &request)
            }
            _ => Err(ApiError::new(
                405,
                "MethodNotAllowed",
                format!("{method} is not supported on {path}"),
            )),
        };
        result.unwrap_or_else(|e| e.response())
    }

    /// A collection, in pages of `limit` when asked (as kube-rs watchers do, 500 at a time):
    /// the `continue` token names the list's resourceVersion and the last key served. Unlike
    /// etcd, later pages show the objects as they are now, not as of the first page; the list's
    /// resourceVersion stays the first page's, so a watch from it replays anything that
    /// changed in between.
    fn list_response(
        &self,
        t: &ResourceType,
        namespace: Option<String>,
        query: &BTreeMap<String, String>,
    ) -> Response<Body> {
        let limit: Option<usize> = query
            .get("limit")
            .and_then(|l| l.parse().ok())
            .filter(|l| *l > 0);
        let resume: Option<(u64, (String, String))> = query
            .get("continue")
            .filter(|c| !c.is_empty())
            .and_then(|c| {
                let mut parts = c.splitn(3, '/');
                let rv = parts.next()?.parse().ok()?;
                Some((rv, (parts.next()?.to_string(), parts.next()?.to_string())))
            });
        if query.get("continue").is_some_and(|c| !c.is_empty()) && resume.is_none() {
            return ApiError::new(400, "BadRequest", "invalid continue token").response();
        }
        let store = self.inner.store.lock().expect("poisoned");
        let rv = resume.as_ref().map_or(store.rv, |(rv, _)| *rv);
        let empty = BTreeMap::new();
        let all = store.objects.get(t.plural).unwrap_or(&empty);
        let after = resume.map(|(_, key)| key);
        let mut matching = all
            .iter()
            .filter(|(key, _)| after.as_ref().is_none_or(|a| *key > a))
            .filter(|((ns, _), _)| namespace.as_ref().is_none_or(|want| want == ns));
        let mut items: Vec<Value> = Vec::new();
        let mut last = None;
        for (key, v) in matching.by_ref() {
            if limit.is_some_and(|l| items.len() == l) {
                break;
            }
            items.push(v.clone());
            last = Some(key);
        }
        let remaining = if limit.is_some_and(|l| items.len() == l) {
            // Count what the next pages hold (the item the loop stopped at included).
            let more = all
                .iter()
                .filter(|(key, _)| last.is_none_or(|l| *key > l))
                .filter(|((ns, _), _)| namespace.as_ref().is_none_or(|want| want == ns))
                .count();
            (more > 0).then_some(more)
        } else {
            None
        };
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if let (Some(more), Some((ns, name))) = (remaining, last) {
            metadata["continue"] = json!(format!("{rv}/{ns}/{name}"));
            metadata["remainingItemCount"] = json!(more);
        }
        let list = json!({
            "apiVersion": t.api_version(),
            "kind": format!("{}List", t.kind),
            "metadata": metadata,
            "items": items,
        });
        json_response(StatusCode::OK, &list)
    }

    fn read(&self, target: &Target, name: &str) -> ApiResult {
        let ns = target.namespace.clone().unwrap_or_default();
        let store = self.inner.store.lock().expect("poisoned");
        let object = store
            .get(target.t, &ns, name)
            .ok_or_else(|| ApiError::not_found(target.t, name))?;
        Ok(json_response(StatusCode::OK, object))
    }

    /// YAML as the API server reads it: serde-saphyr's defaults take YAML 1.1's booleans
    /// (`yes`), as Kubernetes does; the error is one line, as the API server's is.
    fn parse_body(body: &[u8], yaml: bool) -> Result<Value, ApiError> {
        let parsed = if yaml {
            let options = serde_saphyr::options! { with_snippet: false };
            serde_saphyr::from_slice_with_options::<Value>(body, options).map_err(|e| e.to_string())
        } else {
            serde_json::from_slice::<Value>(body).map_err(|e| e.to_string())
        };
        parsed.map_err(|e| ApiError::bad_request(format!("the request body is malformed: {e}")))
    }

    /// Checks the body names the target's kind and namespace.
    fn check_body(target: &Target, body: &Value, name: Option<&str>) -> Result<(), ApiError> {
        let t = target.t;
        if let Some(v) = body["apiVersion"].as_str()
            && v != t.api_version()
        {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({})",
                t.api_version()
            )));
        }
        if let Some(k) = body["kind"].as_str()
            && k != t.kind
        {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                t.kind
            )));
        }
        if let (Some(want), Some(ns)) = (&target.namespace, body["metadata"]["namespace"].as_str())
            && want != ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        if let (Some(want), Some(n)) = (name, body["metadata"]["name"].as_str())
            && want != n
        {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        Ok(())
    }

    fn check_namespace(store: &Store, target: &Target) -> Result<(), ApiError> {
        match &target.namespace {
            Some(ns) if target.t.namespaced && !store.namespace_exists(ns) => {
                Err(ApiError::namespace_not_found(ns))
            }
            _ => Ok(()),
        }
    }

    fn create(&self, target: &Target, body: &[u8], w: &Write<'_>) -> ApiResult {
        let t = target.t;
        if target.subresource.is_some() {
            return Err(ApiError::new(
                405,
                "MethodNotAllowed",
                "POST to a subresource",
            ));
        }
        if t.namespaced && target.namespace.is_none() {
            return Err(ApiError::bad_request(format!(
                "{} are namespaced: POST to .../namespaces/<namespace>/{}",
                t.plural, t.plural
            )));
        }
        let mut object = Self::parse_body(body, false)?;
        Self::check_body(target, &object, None)?;
        let ns = target.namespace.clone().unwrap_or_default();
        let mut store = self.inner.store.lock().expect("poisoned");
        Self::check_namespace(&store, target)?;
        let name = match (
            object["metadata"]["name"].as_str(),
            object["metadata"]["generateName"].as_str(),
        ) {
            (Some(n), _) if !n.is_empty() => n.to_string(),
            (_, Some(prefix)) => {
                store.generated += 1;
                format!("{prefix}{:05x}", store.generated)
            }
            _ => {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    format!("{} is invalid: metadata.name: Required value", t.kind),
                ));
            }
        };
        if store.get(t, &ns, &name).is_some() {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", t.qualified()),
            )
            .about(t, &name));
        }
        if t.status {
            object.as_object_mut().map(|o| o.remove("status"));
        }
        if let Some(m) = object["metadata"].as_object_mut() {
            m.remove("managedFields");
            m.remove("resourceVersion");
        }
        fields::record_update(None, &mut object, &w.manager, "", &t.api_version());
        let object = Self::prepare(&mut store, t, &ns, &name, None, object);
        let stored = if w.dry_run {
            object
        } else {
            self.commit(&mut store, t, &ns, &name, Some(object))
        };
        Ok(json_response(StatusCode::CREATED, &stored))
    }

    /// Stores `new` as the next version of `old` (unless nothing changed).
    fn update(
        &self,
        store: &mut Store,
        target: &Target,
        name: &str,
        old: &Value,
        new: Value,
        w: &Write<'_>,
    ) -> Value {
        let ns = target.namespace.clone().unwrap_or_default();
        let new = Self::prepare(store, target.t, &ns, name, Some(old), new);
        if &new == old || w.dry_run {
            return new;
        }
        self.commit(store, target.t, &ns, name, Some(new))
    }

    fn existing(store: &Store, target: &Target, name: &str) -> Result<Value, ApiError> {
        let ns = target.namespace.clone().unwrap_or_default();
        store
            .get(target.t, &ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(target.t, name))
    }

    fn check_version(
        target: &Target,
        name: &str,
        old: &Value,
        new: &Value,
    ) -> Result<(), ApiError> {
        match new["metadata"]["resourceVersion"].as_str() {
            Some(rv) if Some(rv) != old["metadata"]["resourceVersion"].as_str() => {
                Err(ApiError::modified(target.t, name))
            }
            _ => Ok(()),
        }
    }

    fn replace(&self, target: &Target, name: &str, body: &[u8], w: &Write<'_>) -> ApiResult {
        let mut object = Self::parse_body(body, false)?;
        Self::check_body(target, &object, Some(name))?;
        let subresource = target.subresource.clone().unwrap_or_default();
        let mut store = self.inner.store.lock().expect("poisoned");
        let old = Self::existing(&store, target, name)?;
        Self::check_version(target, name, &old, &object)?;
        object["metadata"]["managedFields"] = old["metadata"]["managedFields"].clone();
        let mut new = scoped(target.t, &subresource, Some(&old), object);
        fields::record_update(
            Some(&old),
            &mut new,
            &w.manager,
            &subresource,
            &target.t.api_version(),
        );
        let stored = self.update(&mut store, target, name, &old, new, w);
        Ok(json_response(StatusCode::OK, &stored))
    }

    fn patch_request(
        &self,
        target: &Target,
        name: &str,
        content_type: &str,
        body: &[u8],
        w: &Write<'_>,
    ) -> ApiResult {
        let t = target.t;
        let subresource = target.subresource.clone().unwrap_or_default();
        match content_type {
            "application/apply-patch+yaml" => {
                let Some(manager) = w.query.get("fieldManager").filter(|m| !m.is_empty()) else {
                    return Err(ApiError::bad_request(
                        "PATCH requests with apply content type require fieldManager",
                    ));
                };
                let force = w.query.get("force").is_some_and(|f| f == "true");
                let mut config = Self::parse_body(body, true)?;
                if !config.is_object() {
                    return Err(ApiError::bad_request("an apply configuration is an object"));
                }
                Self::check_body(target, &config, Some(name))?;
                let mut store = self.inner.store.lock().expect("poisoned");
                let ns = target.namespace.clone().unwrap_or_default();
                let old = store.get(t, &ns, name).cloned();
                if let Some(old) = &old {
                    Self::check_version(target, name, old, &config)?;
                } else if !subresource.is_empty() {
                    return Err(ApiError::not_found(t, name));
                } else {
                    Self::check_namespace(&store, target)?;
                }
                if let Some(m) = config["metadata"].as_object_mut() {
                    if m.contains_key("managedFields") {
                        return Err(ApiError::bad_request("metadata.managedFields must be nil"));
                    }
                    m.remove("resourceVersion");
                }
                // Only what this endpoint may change takes part in the apply.
                let config = if t.status && subresource == "status" {
                    json!({"status": config.get("status").cloned().unwrap_or(json!({}))})
                } else {
                    let mut c = config;
                    if t.status {
                        c.as_object_mut().map(|o| o.remove("status"));
                    }
                    c
                };
                let new = fields::apply(
                    old.as_ref(),
                    &config,
                    manager,
                    &subresource,
                    &t.api_version(),
                    force,
                )
                .map_err(|conflicts| {
                    let causes: Vec<Value> = conflicts
                        .iter()
                        .map(|c| {
                            json!({
                                "reason": "FieldManagerConflict",
                                "message": format!("conflict with \"{}\"", c.manager),
                                "field": c.field(),
                            })
                        })
                        .collect();
                    let list: Vec<String> = conflicts
                        .iter()
                        .map(|c| format!("conflict with \"{}\": {}", c.manager, c.field()))
                        .collect();
                    let mut e = ApiError::new(
                        409,
                        "Conflict",
                        format!(
                            "Apply failed with {} conflict{}: {}",
                            conflicts.len(),
                            if conflicts.len() == 1 { "" } else { "s" },
                            list.join(", ")
                        ),
                    )
                    .about(t, name);
                    if let Some(d) = e.details.as_mut() {
                        d["causes"] = json!(causes);
                    }
                    e
                })?;
                match &old {
                    Some(old) => {
                        let stored = self.update(&mut store, target, name, old, new, w);
                        Ok(json_response(StatusCode::OK, &stored))
                    }
                    None => {
                        let object = Self::prepare(&mut store, t, &ns, name, None, new);
                        let stored = if w.dry_run {
                            object
                        } else {
                            self.commit(&mut store, t, &ns, name, Some(object))
                        };
                        Ok(json_response(StatusCode::CREATED, &stored))
                    }
                }
            }
            "application/merge-patch+json"
            | "application/strategic-merge-patch+json"
            | "application/json-patch+json" => {
                let patch = Self::parse_body(body, false)?;
                let mut store = self.inner.store.lock().expect("poisoned");
                let old = Self::existing(&store, target, name)?;
                let mut new = old.clone();
                if content_type == "application/json-patch+json" {
                    patch::json_patch(&mut new, &patch).map_err(|e| {
                        ApiError::new(422, "Invalid", format!("the JSON patch failed: {e}"))
                    })?;
                } else {
                    if !patch.is_object() {
                        return Err(ApiError::bad_request("a merge patch is an object"));
                    }
                    patch::merge_patch(&mut new, &patch);
                }
                Self::check_body(target, &new, Some(name))?;
                Self::check_version(target, name, &old, &new)?;
                new["metadata"]["managedFields"] = old["metadata"]["managedFields"].clone();
                let mut new = scoped(t, &subresource, Some(&old), new);
                fields::record_update(
                    Some(&old),
                    &mut new,
                    &w.manager,
                    &subresource,
                    &t.api_version(),
                );
                let stored = self.update(&mut store, target, name, &old, new, w);
                Ok(json_response(StatusCode::OK, &stored))
            }
            other => Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format ({other:?}) - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json"
                ),
            )),
        }
    }

    fn delete_request(&self, target: &Target, name: &str, w: &Write<'_>) -> ApiResult {
        let mut store = self.inner.store.lock().expect("poisoned");
        let old = Self::existing(&store, target, name)?;
        let ns = target.namespace.clone().unwrap_or_default();
        let deleted = if w.dry_run {
            old
        } else {
            self.commit(&mut store, target.t, &ns, name, None)
        };
        Ok(json_response(StatusCode::OK, &deleted))
    }

    fn watch(
        &self,
        t: &ResourceType,
        namespace: Option<String>,
        query: &BTreeMap<String, String>,
    ) -> Response<Body> {
        let from: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let bookmarks = query
            .get("allowWatchBookmarks")
            .is_some_and(|v| v == "true");
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(300));
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(256);
        let line = |v: Value| {
            let mut b = serde_json::to_vec(&v).expect("json");
            b.push(b'\n');
            Ok(Frame::data(Bytes::from(b)))
        };
        let matches = {
            let plural = t.plural;
            let namespace = namespace.clone();
            move |e: &Event| {
                e.plural == plural && namespace.as_ref().is_none_or(|n| *n == e.namespace)
            }
        };
        // Subscribe before reading the backlog so nothing falls in between.
        let mut live = self.inner.events.subscribe();
        let mut ended = self.inner.generation.subscribe();
        let (backlog, gone, current) = {
            let store = self.inner.store.lock().expect("poisoned");
            let gone = from != 0 && from < store.oldest_watchable;
            let backlog: Vec<Event> = store
                .history
                .iter()
                .filter(|e| e.rv > from && matches(e))
                .cloned()
                .collect();
            (backlog, gone, store.rv)
        };
        let kind = t.kind;
        let api_version = t.api_version();
        tokio::spawn(async move {
            if gone {
                let _ = tx.send(line(json!({"type": "ERROR", "object": status(410, "Expired", &format!("too old resource version: {from} ({current})"))}))).await;
                return;
            }
            let mut last = from.max(if from == 0 { current } else { 0 });
            for e in backlog {
                last = e.rv;
                if tx
                    .send(line(json!({"type": e.kind, "object": e.object})))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let deadline = tokio::time::Instant::now() + timeout;
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    // A closed watch delivers nothing more, even an event already queued.
                    biased;
                    _ = ended.recv() => return,
                    _ = tokio::time::sleep_until(deadline) => return,
                    e = live.recv() => match e {
                        Ok(e) if e.rv > last && matches(&e) => {
                            last = e.rv;
                            if tx.send(line(json!({"type": e.kind, "object": e.object}))).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => return,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = tick.tick(), if bookmarks => {
                        let bookmark = json!({"type": "BOOKMARK", "object": {
                            "kind": kind, "apiVersion": api_version,
                            "metadata": {"resourceVersion": last.to_string()}}});
                        if tx.send(line(bookmark)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(BodyExt::boxed(StreamBody::new(ReceiverStream::new(rx))))
            .expect("response")
    }

    fn token_review(&self, body: &[u8]) -> Response<Body> {
        let Ok(review) = serde_json::from_slice::<Value>(body) else {
            return json_response(
                StatusCode::BAD_REQUEST,
                &status(400, "BadRequest", "malformed TokenReview"),
            );
        };
        let token = review["spec"]["token"].as_str().unwrap_or("");
        let store = self.inner.store.lock().expect("poisoned");
        let result = match store.tokens.get(token) {
            Some(t) => {
                let mut user = json!({"username": t.username, "uid": "u"});
                if !t.extra.is_empty() {
                    user["extra"] = json!(t.extra);
                }
                json!({"authenticated": true, "user": user})
            }
            None => json!({"authenticated": false, "error": "invalid token"}),
        };
        let answer = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "metadata": {},
            "spec": review["spec"].clone(),
            "status": result,
        });
        json_response(StatusCode::CREATED, &answer)
    }
}

/// The options of a write request.
struct Write<'a> {
    query: &'a BTreeMap<String, String>,
    /// `fieldManager`, else the client's user agent's product.
    manager: String,
    /// `dryRun=All`: answer as if written, store nothing.
    dry_run: bool,
}

/// `/api/v1/...` or `/apis/<group>/<version>/...` followed by `<plural>`,
/// `<plural>/<name>[/<subresource>]` (cluster-scoped kinds and namespaces themselves) or
/// `namespaces/<ns>/<plural>[/<name>[/<subresource>]]`.
fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let find = |plural: &str| {
        TYPES
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
    };
    let object = |t, namespace: Option<&str>, tail: &[&str]| {
        let (name, subresource) = match tail {
            [] => (None, None),
            [name] => (Some(name.to_string()), None),
            [name, sub] => (Some(name.to_string()), Some(sub.to_string())),
            _ => return None,
        };
        if subresource.as_deref().is_some_and(|s| s != "status") {
            return None;
        }
        Some(Target {
            t,
            namespace: namespace.map(str::to_string),
            name,
            subresource,
        })
    };
    match rest {
        ["namespaces", ns, plural, tail @ ..] if find(plural).is_some_and(|t| t.namespaced) => {
            object(find(plural)?, Some(ns), tail)
        }
        [plural, tail @ ..] => {
            let t = find(plural)?;
            if t.namespaced && !tail.is_empty() {
                return None;
            }
            object(t, None, tail)
        }
        [] => None,
    }
}

#[cfg(test)]
mod tests;
