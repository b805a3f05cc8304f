//! Where pods are announced to the agent: HTTP/1.1 over a unix socket, as istio-cni's plugin
//! posts its events. The local runtime (or a CNI plugin) is the client.
//!
//! | request | body | effect |
//! |---|---|---|
//! | `POST /cmdadd` | [`PodEvent`] JSON | capture the pod and hand it to ztunnel |
//! | `POST /cmddel` | `{"uid": "..."}` | release it |
//! | `GET /pods` | | the pods the agent holds, as JSON |
//! | `POST /cni/add` | [`CniAttachment`] | our CNI plugin's ADD: the agent decides enrolment from the pod's and its namespace's labels; answers [`CniAnswer`] |
//! | `POST /cni/check` | [`CniAttachment`] | CHECK: whether the pod should be and is captured ([`CniAnswer`]) |
//! | `POST /cni/del` | [`CniAttachment`] | DEL: release the pod if held |
//! | `GET /healthz` | | `ok` (the plugin's STATUS) |
//!
//! `/cmdadd` carries a decision already made (the local runtime decides from its manifests);
//! `/cni/*` carry only what the CNI runtime knows, and need an agent that watches the API
//! server (see [`super::kube_pods`]); without one they answer 503.
//!
//! Errors answer 400 (malformed request), 503 (no pod source) or 500 with the reason as
//! text.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use super::kube_pods::KubePods;
use super::{NodeAgent, PodEvent, PodStatus};

/// Largest request body accepted.
const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelRequest {
    pub uid: String,
}

/// A container attachment as the CNI plugin sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CniAttachment {
    pub container_id: String,
    /// The pod's network namespace; absent on a DEL after it is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    pub pod_namespace: String,
    pub pod_name: String,
    /// `K8S_POD_UID`, when the runtime passes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
}

/// The agent's answer to a plugin's ADD or CHECK.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CniAnswer {
    /// The pod's and its namespace's labels put it in the mesh.
    pub enrolled: bool,
    /// Its capture rules are in place in the attachment's namespace.
    pub captured: bool,
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .body(Full::new(body.into()))
        .expect("static response")
}

/// Binds the socket, replacing a stale file.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    UnixListener::bind(path)
}

/// Serves pod events forever; `/cni/*` need `kube_pods`.
pub async fn serve(
    agent: Arc<NodeAgent>,
    kube_pods: Option<Arc<KubePods>>,
    listener: UnixListener,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "CNI socket accept failed");
                continue;
            }
        };
        let agent = agent.clone();
        let kube_pods = kube_pods.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let agent = agent.clone();
                let kube_pods = kube_pods.clone();
                async move { Ok::<_, Infallible>(route(agent, kube_pods, req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(error = %e, "CNI connection ended");
            }
        });
    }
}

async fn read_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, String> {
    let body = http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("reading body: {e}"))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| format!("malformed request: {e}"))
}

async fn route(
    agent: Arc<NodeAgent>,
    kube_pods: Option<Arc<KubePods>>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if let Some(command) = path.strip_prefix("/cni/")
        && req.method() == Method::POST
    {
        let Some(kube_pods) = kube_pods else {
            return reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "this node agent has no pod source (run it with --node-name and a kubeconfig)\n",
            );
        };
        let attachment = match read_json::<CniAttachment>(req).await {
            Ok(a) => a,
            Err(e) => return reply(StatusCode::BAD_REQUEST, e),
        };
        let answer = match command {
            "add" => kube_pods.cni_add(&attachment).await,
            "check" => kube_pods.cni_check(&attachment).await,
            "del" => kube_pods.cni_del(&attachment).await,
            _ => return reply(StatusCode::NOT_FOUND, "not found\n"),
        };
        return match answer {
            Ok(a) => reply(
                StatusCode::OK,
                serde_json::to_vec(&a).expect("serializable"),
            ),
            Err(e) => {
                warn!(pod = %format!("{}/{}", attachment.pod_namespace, attachment.pod_name), command, error = %e, "CNI request failed");
                reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
        };
    }
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/healthz") => reply(StatusCode::OK, "ok\n"),
        (Method::POST, "/cmdadd") => match read_json::<PodEvent>(req).await {
            Err(e) => reply(StatusCode::BAD_REQUEST, e),
            Ok(event) => match agent.add_pod(event).await {
                Ok(()) => reply(StatusCode::OK, "ok\n"),
                Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            },
        },
        (Method::POST, "/cmddel") => match read_json::<DelRequest>(req).await {
            Err(e) => reply(StatusCode::BAD_REQUEST, e),
            Ok(del) => match agent.remove_pod(&del.uid).await {
                Ok(()) => reply(StatusCode::OK, "ok\n"),
                Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            },
        },
        (Method::GET, "/pods") => {
            let pods = agent.pods();
            reply(
                StatusCode::OK,
                serde_json::to_vec_pretty(&pods).expect("serializable"),
            )
        }
        _ => reply(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// A client of an agent's CNI socket.
#[derive(Clone, Debug)]
pub struct CniClient {
    path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum CniClientError {
    #[error("agent socket {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(String),
    #[error("agent answered {status}: {body}")]
    Refused { status: StatusCode, body: String },
    #[error("agent did not answer within {0:?}")]
    Timeout(std::time::Duration),
}

impl CniClientError {
    /// The agent could not be asked at all (as opposed to answering with a refusal).
    pub fn unreachable(&self) -> bool {
        !matches!(self, CniClientError::Refused { .. })
    }
}

impl CniClient {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        CniClient { path: path.into() }
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        body: Vec<u8>,
    ) -> Result<Bytes, CniClientError> {
        let stream =
            UnixStream::connect(&self.path)
                .await
                .map_err(|source| CniClientError::Connect {
                    path: self.path.clone(),
                    source,
                })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| CniClientError::Http(e.to_string()))?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "node-agent")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| CniClientError::Http(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| CniClientError::Http(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| CniClientError::Http(e.to_string()))?
            .to_bytes();
        if status.is_success() {
            Ok(body)
        } else {
            Err(CniClientError::Refused {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        }
    }

    pub async fn add(&self, event: &PodEvent) -> Result<(), CniClientError> {
        let body = serde_json::to_vec(event).expect("serializable");
        self.call(Method::POST, "/cmdadd", body).await.map(|_| ())
    }

    pub async fn del(&self, uid: &str) -> Result<(), CniClientError> {
        let body = serde_json::to_vec(&DelRequest {
            uid: uid.to_string(),
        })
        .expect("serializable");
        self.call(Method::POST, "/cmddel", body).await.map(|_| ())
    }

    /// The plugin's ADD, CHECK or DEL (`command`: `add`, `check`, `del`), bounded by
    /// `timeout` (an ADD waits for ztunnel's acknowledgement).
    pub async fn cni(
        &self,
        command: &str,
        attachment: &CniAttachment,
        timeout: std::time::Duration,
    ) -> Result<CniAnswer, CniClientError> {
        let body = serde_json::to_vec(attachment).expect("serializable");
        let uri = format!("/cni/{command}");
        let call = self.call(Method::POST, &uri, body);
        let answer = tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| CniClientError::Timeout(timeout))??;
        serde_json::from_slice(&answer).map_err(|e| CniClientError::Http(e.to_string()))
    }

    /// Whether the agent answers at all.
    pub async fn healthz(&self) -> Result<(), CniClientError> {
        self.call(Method::GET, "/healthz", Vec::new())
            .await
            .map(|_| ())
    }

    pub async fn pods(&self) -> Result<Vec<PodStatus>, CniClientError> {
        let body = self.call(Method::GET, "/pods", Vec::new()).await?;
        serde_json::from_slice(&body).map_err(|e| CniClientError::Http(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn raw_post(path: &Path, uri: &str, body: &'static [u8]) -> (StatusCode, String) {
        let stream = UnixStream::connect(path).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header("host", "x")
            .body(Full::new(Bytes::from_static(body)))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn refuses_bad_announcements_with_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("cni.sock");
        let agent = Arc::new(NodeAgent::new(Some(dir.path().join("state.json"))).unwrap());
        tokio::spawn(serve(agent, None, bind(&sock).unwrap()));
        let client = CniClient::new(&sock);
        assert!(client.pods().await.unwrap().is_empty());
        client.healthz().await.unwrap();

        // The plugin's requests need a pod source; this agent was started without one.
        let attachment = CniAttachment {
            container_id: "c".into(),
            netns: Some("/x".into()),
            pod_namespace: "shop".into(),
            pod_name: "web".into(),
            pod_uid: None,
        };
        let err = client
            .cni("add", &attachment, std::time::Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(!err.unreachable());
        assert!(err.to_string().contains("no pod source"), "{err}");

        let (status, body) = raw_post(&sock, "/cmdadd", b"{not json").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("malformed request"), "{body}");
        let (status, body) = raw_post(
            &sock,
            "/cmdadd",
            br#"{"uid":"u","name":"n","namespace":"d","netns":"/x","colour":"red"}"#,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "unknown field");
        assert!(body.contains("colour"), "{body}");

        // A path that is not a network namespace.
        let err = client
            .add(&PodEvent {
                uid: "Kubernetes//Pod/default/p".into(),
                name: "p".into(),
                namespace: "default".into(),
                service_account: "default".into(),
                netns: "/proc/self/status".into(),
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not a namespace file"), "{err}");
        // Nothing was recorded, and deleting an unknown pod is a no-op.
        assert!(client.pods().await.unwrap().is_empty());
        client.del("Kubernetes//Pod/default/nobody").await.unwrap();
    }
}
