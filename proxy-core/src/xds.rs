//! The proxies' delta xDS client: subscribes (wildcard) to workloads/services and to L4
//! authorizations (plus any [`ExtraType`] a proxy asks for, like the waypoint's L7 resources), applies what arrives to the [`StateStore`], and ACKs or NACKs each
//! response. It reconnects with backoff; on reconnect it tells the controller which
//! versions it holds (`initial_resource_versions`), so only differences are sent. While the
//! controller is away the store keeps the last good configuration.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ambient_proto::envoy::config::core::v3::Node;
use ambient_proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use ambient_proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use ambient_proto::google::rpc;
use ambient_proto::istio::security as sec;
use ambient_proto::istio::workload as wds;
use ambient_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info, warn};

use crate::control_plane::ControlPlane;
use crate::readiness::Readiness;
use crate::state::{Rejected, StateStore, Update};

/// Types every proxy subscribes to.
const TYPES: [&str; 2] = [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL];
/// Code of a NACK's status (INVALID_ARGUMENT).
const NACK_CODE: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    #[error(transparent)]
    ControlPlane(#[from] crate::control_plane::ControlPlaneError),
    #[error("gRPC: {0}")]
    Grpc(#[from] tonic::Status),
    #[error("stream closed by the controller")]
    Closed,
}

/// Who this proxy is, for the controller's proxy status.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub node_name: String,
    pub instance_ip: String,
    /// The xDS node id; ztunnel's form (`ztunnel~<ip>~ztunnel-<node>.istio-system~...`) when
    /// empty. Waypoints use Istio's router form.
    pub id: String,
}

impl NodeInfo {
    fn node(&self) -> Node {
        Node {
            id: if self.id.is_empty() {
                format!(
                    "ztunnel~{}~ztunnel-{}.istio-system~istio-system.svc.cluster.local",
                    self.instance_ip, self.node_name
                )
            } else {
                self.id.clone()
            },
            metadata: Some(ambient_proto::google::protobuf::Struct {
                fields: [("NODE_NAME".to_string(), string_value(&self.node_name))].into(),
            }),
            user_agent_name: "ambient-rs ztunnel".into(),
            ..Default::default()
        }
    }
}

fn string_value(s: &str) -> ambient_proto::google::protobuf::Value {
    ambient_proto::google::protobuf::Value {
        kind: Some(ambient_proto::google::protobuf::value::Kind::StringValue(
            s.to_string(),
        )),
    }
}

/// Resources held, by type, with their versions.
pub type Known = HashMap<String, HashMap<String, String>>;

/// A resource type the [`StateStore`] does not hold, applied by whoever subscribed to it (the
/// waypoint's L7 configuration rides on the same stream as workloads).
pub trait ExtraType: Send + Sync {
    fn type_url(&self) -> &'static str;
    /// The readiness task marked once the first response of this type is applied.
    fn readiness_task(&self) -> &'static str;
    /// Applies upserted `(name, body)` pairs and removed names; returns the rejections, by
    /// resource name (those are NACKed, the rest is used).
    fn apply(&self, upserts: Vec<(String, bytes::Bytes)>, removes: &[String]) -> Vec<Rejected>;
}

/// Runs xDS sessions forever.
pub async fn run(
    control_plane: ControlPlane,
    node: NodeInfo,
    state: Arc<StateStore>,
    readiness: Readiness,
) {
    run_with(control_plane, node, state, readiness, Vec::new()).await
}

/// [`run`], also subscribing to `extra` types.
pub async fn run_with(
    control_plane: ControlPlane,
    node: NodeInfo,
    state: Arc<StateStore>,
    readiness: Readiness,
    extra: Vec<Arc<dyn ExtraType>>,
) {
    let mut known: Known = HashMap::new();
    let mut delay = Duration::from_millis(100);
    loop {
        let started = std::time::Instant::now();
        match session(
            &control_plane,
            &node,
            &state,
            &extra,
            &mut known,
            &readiness,
        )
        .await
        {
            Ok(()) => {}
            Err(e) => {
                warn!(controller = %control_plane.address, error = %e, retry_in = ?delay, "xDS stream ended; keeping the last good configuration")
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            delay = Duration::from_millis(100); // the stream was healthy for a while
        }
        let jitter = delay.mul_f64(rand::random::<f64>() * 0.25);
        tokio::time::sleep(delay + jitter).await;
        delay = (delay * 2).min(Duration::from_secs(15));
    }
}

async fn session(
    control_plane: &ControlPlane,
    node: &NodeInfo,
    state: &StateStore,
    extra: &[Arc<dyn ExtraType>],
    known: &mut Known,
    readiness: &Readiness,
) -> Result<(), XdsError> {
    let channel = control_plane.channel(None)?;
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(256 * 1024 * 1024);
    let (tx, rx) = mpsc::channel(8);
    let types = TYPES
        .iter()
        .copied()
        .chain(extra.iter().map(|e| e.type_url()));
    for t in types {
        let initial = DeltaDiscoveryRequest {
            node: Some(node.node()),
            type_url: t.to_string(),
            initial_resource_versions: known
                .get(t)
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            ..Default::default()
        };
        tx.send(initial).await.map_err(|_| XdsError::Closed)?;
    }
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert("authorization", control_plane.bearer()?);
    let mut responses = client
        .delta_aggregated_resources(request)
        .await?
        .into_inner();
    info!(controller = %control_plane.address, "xDS stream open");
    while let Some(response) = responses.message().await? {
        let type_url = response.type_url.clone();
        count_message(&response);
        let errors = apply_response(state, extra, known, &response);
        let error_detail = (!errors.is_empty()).then(|| {
            warn!(type_url, errors = %errors.join("; "), "rejecting part of the configuration (NACK)");
            rpc::Status {
                code: NACK_CODE,
                message: errors.join("; "),
                details: vec![],
            }
        });
        let answer = DeltaDiscoveryRequest {
            type_url: type_url.clone(),
            response_nonce: response.nonce.clone(),
            error_detail,
            ..Default::default()
        };
        tx.send(answer).await.map_err(|_| XdsError::Closed)?;
        if type_url == ADDRESS_TYPE_URL {
            readiness.mark("xds:address");
        } else if type_url == AUTHORIZATION_TYPE_URL {
            readiness.mark("xds:authorization");
        } else if let Some(e) = extra.iter().find(|e| e.type_url() == type_url) {
            readiness.mark(e.readiness_task());
        }
    }
    Err(XdsError::Closed)
}

/// Istio's xDS client metrics: messages and resource bytes received, by type URL.
fn count_message(response: &DeltaDiscoveryResponse) {
    let bytes: usize = response
        .resources
        .iter()
        .filter_map(|r| r.resource.as_ref())
        .map(|any| any.value.len())
        .sum();
    let url = response.type_url.clone();
    metrics::counter!("istio_xds_message_total", "url" => url.clone()).increment(1);
    metrics::counter!("istio_xds_message_bytes_total", "url" => url).increment(bytes as u64);
}

/// Applies one response, of whichever subscribed type it is, to the store or to the extra
/// type that asked for it; remembers the versions accepted and returns the rejections
/// (`name: reason`; any makes the answer a NACK). Public for the xDS fuzz targets
/// (fuzz/fuzz_targets/xds_*.rs), which feed it the bytes a controller could send.
#[doc(hidden)]
pub fn apply_response(
    state: &StateStore,
    extra: &[Arc<dyn ExtraType>],
    known: &mut Known,
    response: &DeltaDiscoveryResponse,
) -> Vec<String> {
    let held = known.entry(response.type_url.clone()).or_default();
    match extra.iter().find(|e| e.type_url() == response.type_url) {
        Some(e) => apply_extra(e.as_ref(), held, response),
        None => apply(state, held, response),
    }
}

/// Applies one response of an extra type, remembering the versions it accepted.
fn apply_extra(
    extra: &dyn ExtraType,
    known: &mut HashMap<String, String>,
    response: &DeltaDiscoveryResponse,
) -> Vec<String> {
    let mut errors = Vec::new();
    let mut upserts = Vec::new();
    let mut versions = Vec::new();
    for r in &response.resources {
        match &r.resource {
            Some(body) => {
                upserts.push((r.name.clone(), body.value.clone()));
                versions.push((r.name.clone(), r.version.clone()));
            }
            None => errors.push(format!("{}: no body", r.name)),
        }
    }
    let rejected = extra.apply(upserts, &response.removed_resources);
    for (name, version) in versions {
        if !rejected.iter().any(|r| r.name == name) {
            known.insert(name, version);
        }
    }
    for name in &response.removed_resources {
        known.remove(name);
    }
    errors.extend(rejected.iter().map(|r| format!("{}: {}", r.name, r.reason)));
    errors
}

/// Applies one response; valid resources are used even when others are rejected (as Istio
/// does). Returns the rejections, `name: reason`.
fn apply(
    state: &StateStore,
    known: &mut HashMap<String, String>,
    response: &DeltaDiscoveryResponse,
) -> Vec<String> {
    let mut errors = Vec::new();
    let mut update = Update::default();
    // (resource name, version, the name the store files it under and rejects it by).
    let mut versions = Vec::new();
    for r in &response.resources {
        let Some(body) = &r.resource else {
            errors.push(format!("{}: no body", r.name));
            continue;
        };
        let stored_as = match response.type_url.as_str() {
            ADDRESS_TYPE_URL => match wds::Address::decode(body.value.as_ref()) {
                Ok(a) => {
                    let stored_as = match &a.r#type {
                        Some(wds::address::Type::Workload(w)) => w.uid.clone(),
                        Some(wds::address::Type::Service(s)) => {
                            format!("{}/{}", s.namespace, s.hostname)
                        }
                        None => String::new(),
                    };
                    update.upserts.push(a);
                    stored_as
                }
                Err(e) => {
                    errors.push(format!("{}: {e}", r.name));
                    continue;
                }
            },
            AUTHORIZATION_TYPE_URL => match sec::Authorization::decode(body.value.as_ref()) {
                Ok(a) => {
                    let stored_as = format!("{}/{}", a.namespace, a.name);
                    update.policy_upserts.push(a);
                    stored_as
                }
                Err(e) => {
                    errors.push(format!("{}: {e}", r.name));
                    continue;
                }
            },
            other => {
                debug!(type_url = other, "ignoring a type we did not ask for");
                return errors;
            }
        };
        versions.push((r.name.clone(), r.version.clone(), stored_as));
    }
    match response.type_url.as_str() {
        AUTHORIZATION_TYPE_URL => update.policy_removes = response.removed_resources.clone(),
        _ => update.removes = response.removed_resources.clone(),
    }
    let rejected = state.apply(update);
    // The store names what it rejects as it files it (a workload by uid, a service or policy
    // by namespace/name), which need not be the resource's name.
    for (name, version, stored_as) in versions {
        if !rejected.iter().any(|r| r.name == stored_as) {
            known.insert(name, version);
        }
    }
    for name in &response.removed_resources {
        known.remove(name);
    }
    errors.extend(
        rejected
            .into_iter()
            .map(|r| format!("{}: {}", r.name, r.reason)),
    );
    debug!(
        type_url = %response.type_url,
        resources = response.resources.len(),
        removed = response.removed_resources.len(),
        "applied"
    );
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use ambient_proto::envoy::service::discovery::v3::Resource;

    fn resource(name: &str, w: wds::Workload) -> Resource {
        Resource {
            name: name.into(),
            version: "v1".into(),
            resource: Some(ambient_proto::google::protobuf::Any {
                type_url: ADDRESS_TYPE_URL.into(),
                value: wds::Address {
                    r#type: Some(wds::address::Type::Workload(w)),
                }
                .encode_to_vec()
                .into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn applies_good_resources_and_reports_bad_ones() {
        let state = StateStore::new();
        let mut known = HashMap::new();
        let good = wds::Workload {
            uid: "good".into(),
            name: "good".into(),
            namespace: "ns".into(),
            addresses: vec![vec![10, 0, 0, 1]],
            ..Default::default()
        };
        let bad = wds::Workload {
            uid: "bad".into(),
            name: "bad".into(),
            namespace: "ns".into(),
            addresses: vec![vec![10, 0, 0]],
            ..Default::default()
        };
        let mut garbage = resource("garbage", good.clone());
        garbage.resource.as_mut().unwrap().value = vec![0xff, 0xff, 0xff].into();
        let response = DeltaDiscoveryResponse {
            type_url: ADDRESS_TYPE_URL.into(),
            resources: vec![resource("good", good), resource("bad", bad), garbage],
            nonce: "1".into(),
            ..Default::default()
        };
        let errors = apply(&state, &mut known, &response);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("bad: ") && e.contains("3-byte"))
        );
        assert!(errors.iter().any(|e| e.starts_with("garbage: ")));
        assert!(
            state.load().workload_by_uid("good").is_some(),
            "the good one is used"
        );
        assert_eq!(
            known.keys().collect::<Vec<_>>(),
            vec!["good"],
            "only accepted versions are remembered"
        );

        let removal = DeltaDiscoveryResponse {
            type_url: ADDRESS_TYPE_URL.into(),
            removed_resources: vec!["good".into()],
            nonce: "2".into(),
            ..Default::default()
        };
        assert!(apply(&state, &mut known, &removal).is_empty());
        assert!(state.load().workload_by_uid("good").is_none());
        assert!(known.is_empty());
    }

    /// Found by fuzz/fuzz_targets/xds_address.rs: a rejected resource's version was kept when
    /// the store named it otherwise than its resource name (an Address of a kind this proxy
    /// does not know; a workload whose uid is not its name), so on reconnect the proxy would
    /// claim to hold what it refused.
    #[test]
    fn rejected_versions_are_not_remembered_whatever_the_resource_is_named() {
        let state = StateStore::new();
        let mut known = HashMap::new();
        let bad = wds::Workload {
            uid: "uid-1".into(),
            name: "w".into(),
            namespace: "ns".into(),
            addresses: vec![vec![10, 0, 0]],
            ..Default::default()
        };
        let mut unknown_kind = resource("unknown-kind", bad.clone());
        unknown_kind.resource.as_mut().unwrap().value =
            wds::Address { r#type: None }.encode_to_vec().into();
        let response = DeltaDiscoveryResponse {
            type_url: ADDRESS_TYPE_URL.into(),
            resources: vec![resource("named-otherwise", bad), unknown_kind],
            nonce: "1".into(),
            ..Default::default()
        };
        let errors = apply(&state, &mut known, &response);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(known.is_empty(), "remembered {known:?}");

        let policy = sec::Authorization {
            name: "p".into(),
            namespace: "ns".into(),
            scope: 42,
            ..Default::default()
        };
        let response = DeltaDiscoveryResponse {
            type_url: AUTHORIZATION_TYPE_URL.into(),
            resources: vec![Resource {
                name: "named-otherwise".into(),
                version: "v1".into(),
                resource: Some(ambient_proto::google::protobuf::Any {
                    type_url: AUTHORIZATION_TYPE_URL.into(),
                    value: policy.encode_to_vec().into(),
                }),
                ..Default::default()
            }],
            nonce: "2".into(),
            ..Default::default()
        };
        assert_eq!(apply(&state, &mut known, &response).len(), 1);
        assert!(known.is_empty(), "remembered {known:?}");
    }

    /// An extra type that refuses `a: b` and takes `a`.
    struct Picky;

    impl ExtraType for Picky {
        fn type_url(&self) -> &'static str {
            "picky"
        }

        fn readiness_task(&self) -> &'static str {
            "picky"
        }

        fn apply(&self, upserts: Vec<(String, bytes::Bytes)>, _: &[String]) -> Vec<Rejected> {
            upserts
                .into_iter()
                .filter(|(name, _)| name.contains(':'))
                .map(|(name, _)| Rejected {
                    name,
                    reason: "no colons".into(),
                })
                .collect()
        }
    }

    /// Found by fuzz/fuzz_targets/xds_l7.rs: rejections were matched to resources by the
    /// prefix `name: ` of their message, so refusing `a: b` forgot the version of `a`.
    #[test]
    fn an_extra_types_rejection_names_only_its_own_resource() {
        let body = |name: &str| Resource {
            name: name.into(),
            version: "v1".into(),
            resource: Some(ambient_proto::google::protobuf::Any {
                type_url: "picky".into(),
                value: bytes::Bytes::new(),
            }),
            ..Default::default()
        };
        let response = DeltaDiscoveryResponse {
            type_url: "picky".into(),
            resources: vec![body("a"), body("a: b")],
            nonce: "1".into(),
            ..Default::default()
        };
        let mut known = HashMap::new();
        let errors = apply_extra(&Picky, &mut known, &response);
        assert_eq!(errors, vec!["a: b: no colons".to_string()]);
        assert_eq!(known.keys().collect::<Vec<_>>(), vec!["a"]);
    }
}
