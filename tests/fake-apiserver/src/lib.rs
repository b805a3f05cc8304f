//! A fake Kubernetes API server that speaks the real HTTP API, for testing clients built on
//! kube-rs watchers:
//!
//! - `GET` collections, cluster-wide or per namespace, answered as `<Kind>List` with the
//!   current `resourceVersion`;
//! - `GET ...?watch=true&resourceVersion=N` streams `ADDED` / `MODIFIED` / `DELETED` events
//!   after `N` (newline-delimited JSON), `BOOKMARK`s when asked for, and an `ERROR` event with
//!   a 410 `Status` when `N` is older than the retained history (after [`FakeApiServer::compact`]);
//! - `POST /apis/authentication.k8s.io/v1/tokenreviews` against tokens the test registers.
//!
//! The test mutates state in-process ([`FakeApiServer::apply`], [`FakeApiServer::delete`]).

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

/// A collection the server serves.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ResourceType {
    /// Empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
}

impl ResourceType {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// The collections ambient-rs reads.
pub const TYPES: &[ResourceType] = &[
    ResourceType {
        group: "",
        version: "v1",
        plural: "namespaces",
        kind: "Namespace",
        namespaced: false,
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "pods",
        kind: "Pod",
        namespaced: true,
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "services",
        kind: "Service",
        namespaced: true,
    },
    ResourceType {
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        kind: "EndpointSlice",
        namespaced: true,
    },
    ResourceType {
        group: "gateway.networking.k8s.io",
        version: "v1",
        plural: "gateways",
        kind: "Gateway",
        namespaced: true,
    },
    ResourceType {
        group: "security.istio.io",
        version: "v1",
        plural: "authorizationpolicies",
        kind: "AuthorizationPolicy",
        namespaced: true,
    },
    ResourceType {
        group: "security.istio.io",
        version: "v1",
        plural: "peerauthentications",
        kind: "PeerAuthentication",
        namespaced: true,
    },
    ResourceType {
        group: "gateway.networking.k8s.io",
        version: "v1",
        plural: "httproutes",
        kind: "HTTPRoute",
        namespaced: true,
    },
    ResourceType {
        group: "gateway.networking.k8s.io",
        version: "v1",
        plural: "grpcroutes",
        kind: "GRPCRoute",
        namespaced: true,
    },
    ResourceType {
        group: "networking.istio.io",
        version: "v1",
        plural: "virtualservices",
        kind: "VirtualService",
        namespaced: true,
    },
    ResourceType {
        group: "networking.istio.io",
        version: "v1",
        plural: "destinationrules",
        kind: "DestinationRule",
        namespaced: true,
    },
];

#[derive(Clone, Debug)]
struct Event {
    rv: u64,
    plural: &'static str,
    kind: &'static str,
    namespace: String,
    object: Value,
}

#[derive(Default)]
struct Store {
    rv: u64,
    /// plural → (namespace, name) → object.
    objects: BTreeMap<&'static str, BTreeMap<(String, String), Value>>,
    history: Vec<Event>,
    /// Watches from before this resourceVersion get 410 Gone.
    oldest_watchable: u64,
    /// token → (username, node name).
    tokens: BTreeMap<String, (String, Option<String>)>,
    /// Requests served, for tests that check what the client did.
    requests: Vec<String>,
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
        self.inner.store.lock().expect("poisoned").tokens.insert(
            token.to_string(),
            (username.to_string(), node.map(str::to_string)),
        );
    }

    /// Creates or replaces an object (its `kind` picks the collection).
    pub fn apply(&self, mut object: Value) -> u64 {
        let kind = object["kind"].as_str().expect("kind").to_string();
        let t = TYPES
            .iter()
            .find(|t| t.kind == kind)
            .unwrap_or_else(|| panic!("unsupported kind {kind}"));
        let name = object["metadata"]["name"]
            .as_str()
            .expect("name")
            .to_string();
        let namespace = if t.namespaced {
            object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string()
        } else {
            String::new()
        };
        let mut store = self.inner.store.lock().expect("poisoned");
        store.rv += 1;
        let rv = store.rv;
        let existing = store
            .objects
            .entry(t.plural)
            .or_default()
            .get(&(namespace.clone(), name.clone()))
            .cloned();
        let meta = object["metadata"].as_object_mut().expect("metadata");
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        if !namespace.is_empty() {
            meta.insert("namespace".into(), json!(namespace));
        }
        let uid = existing
            .as_ref()
            .and_then(|e| e["metadata"]["uid"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("uid-{rv}"));
        meta.insert("uid".into(), json!(uid));
        meta.entry("creationTimestamp")
            .or_insert(json!("2026-01-01T00:00:00Z"));
        object["apiVersion"] = json!(t.api_version());
        store
            .objects
            .entry(t.plural)
            .or_default()
            .insert((namespace.clone(), name), object.clone());
        let event = Event {
            rv,
            plural: t.plural,
            kind: if existing.is_some() {
                "MODIFIED"
            } else {
                "ADDED"
            },
            namespace,
            object,
        };
        store.history.push(event.clone());
        let _ = self.inner.events.send(event);
        rv
    }

    /// Deletes an object; returns whether it existed.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> bool {
        let t = TYPES
            .iter()
            .find(|t| t.kind == kind)
            .unwrap_or_else(|| panic!("unsupported kind {kind}"));
        let ns = if t.namespaced {
            namespace.to_string()
        } else {
            String::new()
        };
        let mut store = self.inner.store.lock().expect("poisoned");
        let Some(mut object) = store
            .objects
            .entry(t.plural)
            .or_default()
            .remove(&(ns.clone(), name.to_string()))
        else {
            return false;
        };
        store.rv += 1;
        let rv = store.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let event = Event {
            rv,
            plural: t.plural,
            kind: "DELETED",
            namespace: ns,
            object,
        };
        store.history.push(event.clone());
        let _ = self.inner.events.send(event);
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
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.inner
            .store
            .lock()
            .expect("poisoned")
            .requests
            .push(format!("{} {}", req.method(), req.uri()));
        if req.method() == Method::POST && path == "/apis/authentication.k8s.io/v1/tokenreviews" {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return self.token_review(&body);
        }
        if req.method() != Method::GET {
            return json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &status(405, "MethodNotAllowed", "read-only fake"),
            );
        }
        let Some((t, namespace)) = parse_path(&path) else {
            return json_response(
                StatusCode::NOT_FOUND,
                &status(404, "NotFound", &format!("no route {path}")),
            );
        };
        let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
        if watch {
            self.watch(t, namespace, &query)
        } else {
            self.list(t, namespace)
        }
    }

    fn list(&self, t: &ResourceType, namespace: Option<String>) -> Response<Body> {
        let store = self.inner.store.lock().expect("poisoned");
        let items: Vec<Value> = store
            .objects
            .get(t.plural)
            .map(|m| {
                m.iter()
                    .filter(|((ns, _), _)| namespace.as_ref().is_none_or(|want| want == ns))
                    .map(|(_, v)| v.clone())
                    .collect()
            })
            .unwrap_or_default();
        let list = json!({
            "apiVersion": t.api_version(),
            "kind": format!("{}List", t.kind),
            "metadata": {"resourceVersion": store.rv.to_string()},
            "items": items,
        });
        json_response(StatusCode::OK, &list)
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
            Some((username, node)) => {
                let mut user = json!({"username": username, "uid": "u"});
                if let Some(n) = node {
                    user["extra"] = json!({"authentication.kubernetes.io/node-name": [n]});
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

/// `/api/v1/[namespaces/<ns>/]<plural>` or `/apis/<group>/<version>/[namespaces/<ns>/]<plural>`.
fn parse_path(path: &str) -> Option<(&'static ResourceType, Option<String>)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (namespace, plural) = match rest {
        [plural] => (None, *plural),
        ["namespaces", ns, plural] => (Some(ns.to_string()), *plural),
        _ => return None,
    };
    let t = TYPES
        .iter()
        .find(|t| t.group == group && t.version == version && t.plural == plural)?;
    Some((t, namespace))
}
