//! The delta ADS gRPC service (`envoy.service.discovery.v3.AggregatedDiscoveryService/
//! DeltaAggregatedResources`).
//!
//! Per stream and type the server remembers what the client holds (name → version). A
//! client's first request of a type subscribes it (wildcard unless it names resources) and
//! seeds that memory from `initial_resource_versions`, so a reconnecting client is sent only
//! what changed. Each new [`Snapshot`] is diffed against that memory (only the snapshot's
//! changed names, when the client was current) and sent as one response per type. ACKs
//! confirm; a NACK is logged and counted, and the rejected resources are forgotten so the
//! next change resends them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use ambient_proto::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use ambient_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use futures::Stream;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use super::{ResourceSet, Snapshot, TYPES};
use crate::ca::auth::{Authenticator, Caller, caller};

/// Resources per response; a first sync of a large mesh is split into several.
const MAX_RESOURCES_PER_RESPONSE: usize = 1000;
/// Encoded resource bytes per response (a response holds at least one resource, whatever
/// its size). tonic keeps each stream's encoding buffer at the size of the largest message
/// it has encoded, for as long as the stream lives: 1,000 workloads (~160 kB) per response
/// cost every connected proxy that much memory after its first sync.
const MAX_BYTES_PER_RESPONSE: usize = 32 * 1024;
/// The change set of a snapshot nobody changed.
static EMPTY: BTreeSet<String> = BTreeSet::new();
/// Large pushes in progress at once (across all proxies).
const CONCURRENT_LARGE_PUSHES: usize = 8;

/// What one connected proxy has been sent and has confirmed, for `proxy-status`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProxyStatus {
    pub id: String,
    pub node: String,
    pub connected_at: u64,
    /// Per type: resources the proxy holds.
    pub resources: BTreeMap<String, usize>,
    /// Per type: last snapshot generation sent / acknowledged.
    pub sent_generation: BTreeMap<String, u64>,
    pub acked_generation: BTreeMap<String, u64>,
    pub nacks: u64,
    pub last_nack: Option<String>,
}

/// Connected proxies, and the configuration they are served.
#[derive(Default)]
pub struct ProxyRegistry {
    proxies: Mutex<BTreeMap<u64, ProxyStatus>>,
    next: Mutex<u64>,
    served: Mutex<Option<watch::Receiver<Arc<Snapshot>>>>,
}

impl ProxyRegistry {
    /// The snapshot being served, once the ADS service exists.
    pub fn served(&self) -> Option<Arc<Snapshot>> {
        self.served
            .lock()
            .expect("poisoned")
            .as_ref()
            .map(|rx| rx.borrow().clone())
    }

    /// Remembers where snapshots come from (the ADS service does this when created).
    pub fn serve_from(&self, snapshots: watch::Receiver<Arc<Snapshot>>) {
        *self.served.lock().expect("poisoned") = Some(snapshots);
    }

    fn add(&self, status: ProxyStatus) -> u64 {
        let mut n = self.next.lock().expect("poisoned");
        *n += 1;
        self.proxies.lock().expect("poisoned").insert(*n, status);
        *n
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut ProxyStatus)) {
        if let Some(s) = self.proxies.lock().expect("poisoned").get_mut(&id) {
            f(s);
        }
    }

    fn remove(&self, id: u64) {
        self.proxies.lock().expect("poisoned").remove(&id);
    }

    pub fn list(&self) -> Vec<ProxyStatus> {
        self.proxies
            .lock()
            .expect("poisoned")
            .values()
            .cloned()
            .collect()
    }
}

/// The ADS service.
pub struct AdsService {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    auth: Arc<dyn Authenticator>,
    registry: Arc<ProxyRegistry>,
    /// Bounds how many large pushes (first syncs) are in progress at once, so a fleet of
    /// proxies connecting together does not buffer a full configuration each at the same time.
    large_pushes: Arc<Semaphore>,
}

impl AdsService {
    pub fn new(
        snapshots: watch::Receiver<Arc<Snapshot>>,
        auth: Arc<dyn Authenticator>,
        registry: Arc<ProxyRegistry>,
    ) -> Self {
        registry.serve_from(snapshots.clone());
        AdsService {
            snapshots,
            auth,
            registry,
            large_pushes: Arc::new(Semaphore::new(CONCURRENT_LARGE_PUSHES)),
        }
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsService {
    type DeltaAggregatedResourcesStream = ResponseStream;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let caller = caller(self.auth.as_ref(), request.metadata())
            .await
            .map_err(|e| {
                metrics::counter!("pilot_xds_auth_failures_total").increment(1);
                warn!(error = %e, "xDS stream refused");
                Status::unauthenticated(e.to_string())
            })?;
        let inbound = request.into_inner();
        // A short queue: sending waits until the previous response is on its way.
        let (tx, rx) = mpsc::channel(2);
        let session = Session {
            caller,
            snapshots: self.snapshots.clone(),
            registry: self.registry.clone(),
            tx,
            large_pushes: self.large_pushes.clone(),
            types: HashMap::new(),
            in_flight: HashMap::new(),
            nonce: 0,
            registry_id: 0,
        };
        tokio::spawn(session.run(inbound));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// What a client holds of one type: a snapshot's set (shared with every other client that is
/// in sync, so a synced client costs no memory per resource) with `overrides` on top, for
/// names where the client differs (from its initial versions, a NACK, or explicit
/// subscriptions).
#[derive(Default)]
struct TypeState {
    /// None: wildcard; Some: only these names.
    subscribed: Option<BTreeSet<String>>,
    base: Arc<ResourceSet>,
    /// name → the version the client holds (None: it holds nothing by that name).
    overrides: HashMap<String, Option<String>>,
    /// Generation the client's memory is current with (None: do a full diff next time).
    synced: Option<u64>,
}

impl TypeState {
    fn held(&self, name: &str) -> Option<&str> {
        match self.overrides.get(name) {
            Some(v) => v.as_deref(),
            None => self.base.get(name).map(|v| v.version.as_str()),
        }
    }

    fn forget(&mut self, name: &str) {
        self.overrides.insert(name.to_string(), None);
    }

    /// Every name the client may hold.
    fn names(&self) -> impl Iterator<Item = &String> {
        self.base.keys().chain(self.overrides.keys())
    }

    fn held_count(&self) -> usize {
        let extra = self
            .overrides
            .iter()
            .filter(|(n, v)| v.is_some() && !self.base.contains_key(*n))
            .count();
        let missing = self
            .overrides
            .iter()
            .filter(|(n, v)| v.is_none() && self.base.contains_key(*n))
            .count();
        self.base.len() + extra - missing
    }
}

/// A response awaiting its ACK or NACK: its type, generation, and each name sent with the
/// version the client had before (to restore on NACK).
struct InFlight {
    type_url: String,
    generation: u64,
    sent: Vec<(String, Option<String>)>,
}

struct Session {
    large_pushes: Arc<Semaphore>,
    caller: Caller,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    registry: Arc<ProxyRegistry>,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    types: HashMap<String, TypeState>,
    in_flight: HashMap<String, InFlight>,
    nonce: u64,
    registry_id: u64,
}

impl Session {
    async fn run(mut self, mut inbound: Streaming<DeltaDiscoveryRequest>) {
        let node = self.caller.node().to_string();
        self.registry_id = self.registry.add(ProxyStatus {
            node: node.clone(),
            connected_at: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            ..Default::default()
        });
        metrics::gauge!("pilot_xds").increment(1.0);
        info!(node = %node, "xDS client connected");
        let result = self.serve(&mut inbound).await;
        metrics::gauge!("pilot_xds").decrement(1.0);
        self.registry.remove(self.registry_id);
        match result {
            Ok(()) => info!(node = %node, "xDS client disconnected"),
            Err(e) => info!(node = %node, reason = %e, "xDS stream ended"),
        }
    }

    async fn serve(
        &mut self,
        inbound: &mut Streaming<DeltaDiscoveryRequest>,
    ) -> Result<(), Status> {
        // Never answer from an empty, not-yet-computed configuration: a reconnecting client
        // would take it as "everything was removed".
        self.snapshots
            .wait_for(|s| s.generation > 0)
            .await
            .map_err(|_| Status::unavailable("controller shutting down"))?;
        loop {
            tokio::select! {
                request = inbound.next() => {
                    match request {
                        None => return Ok(()),
                        Some(Err(e)) => return Err(e),
                        Some(Ok(r)) => self.on_request(r).await?,
                    }
                }
                changed = self.snapshots.changed() => {
                    if changed.is_err() {
                        return Err(Status::unavailable("controller shutting down"));
                    }
                    let snapshot = self.snapshots.borrow_and_update().clone();
                    let types: Vec<String> = self.types.keys().cloned().collect();
                    for t in types {
                        self.push(&t, &snapshot, false).await?;
                    }
                }
            }
        }
    }

    async fn on_request(&mut self, r: DeltaDiscoveryRequest) -> Result<(), Status> {
        if let Some(node) = &r.node {
            let id = node.id.clone();
            self.registry.update(self.registry_id, |s| s.id = id);
        }
        let type_url = r.type_url.clone();
        if !TYPES.contains(&type_url.as_str()) {
            debug!(type_url, "request for a type this server does not serve");
            return Ok(());
        }
        if !r.response_nonce.is_empty() {
            self.on_answer(&type_url, &r);
            if r.resource_names_subscribe.is_empty() && r.resource_names_unsubscribe.is_empty() {
                return Ok(());
            }
        }
        let first = !self.types.contains_key(&type_url);
        let state = self.types.entry(type_url.clone()).or_default();
        if first {
            let explicit: BTreeSet<String> = r
                .resource_names_subscribe
                .iter()
                .filter(|n| n.as_str() != "*")
                .cloned()
                .collect();
            let wildcard = r.resource_names_subscribe.is_empty()
                || r.resource_names_subscribe.iter().any(|n| n == "*");
            state.subscribed = if wildcard { None } else { Some(explicit) };
            state.base = Arc::default();
            state.overrides = r
                .initial_resource_versions
                .into_iter()
                .map(|(n, v)| (n, Some(v)))
                .collect();
            state.synced = None;
        } else {
            if let Some(set) = state.subscribed.as_mut() {
                set.extend(
                    r.resource_names_subscribe
                        .iter()
                        .filter(|n| n.as_str() != "*")
                        .cloned(),
                );
                for n in &r.resource_names_unsubscribe {
                    set.remove(n);
                }
                for n in &r.resource_names_unsubscribe {
                    state.forget(n);
                }
            }
            // Newly named resources must be sent even if the client claims to hold them.
            for n in &r.resource_names_subscribe {
                state.forget(n);
            }
            state.synced = None;
        }
        let snapshot = self.snapshots.borrow().clone();
        // The first answer of a type is sent even when empty: it tells the client it is synced.
        self.push(&type_url, &snapshot, first).await
    }

    fn on_answer(&mut self, type_url: &str, r: &DeltaDiscoveryRequest) {
        let Some(InFlight {
            type_url: t,
            generation,
            sent,
        }) = self.in_flight.remove(&r.response_nonce)
        else {
            return; // an answer to a response superseded long ago
        };
        let node = self.caller.node().to_string();
        match &r.error_detail {
            None => {
                self.registry.update(self.registry_id, |s| {
                    s.acked_generation.insert(t.clone(), generation);
                });
            }
            Some(status) => {
                metrics::counter!("pilot_total_xds_rejects", "type" => type_url.to_string())
                    .increment(1);
                warn!(node = %node, type_url, nonce = %r.response_nonce, error = %status.message, "configuration rejected (NACK)");
                // The client kept what it had: forget what we sent so the next push resends it.
                if let Some(state) = self.types.get_mut(&t) {
                    for (name, before) in sent {
                        state.overrides.insert(name, before);
                    }
                    state.synced = None;
                }
                let message = status.message.clone();
                self.registry.update(self.registry_id, |s| {
                    s.nacks += 1;
                    s.last_nack = Some(message);
                });
            }
        }
    }

    /// Sends the client what it lacks of `type_url`, if anything (`always`: even nothing).
    async fn push(
        &mut self,
        type_url: &str,
        snapshot: &Snapshot,
        always: bool,
    ) -> Result<(), Status> {
        let Some(set) = snapshot.sets.get(type_url).cloned() else {
            return Ok(());
        };
        let Some(state) = self.types.get(type_url) else {
            return Ok(());
        };
        // Names to look at: only what changed, when the client was current with the previous
        // generation; otherwise everything either side knows (a full diff).
        let incremental = match (state.synced, snapshot.changed.get(type_url)) {
            (Some(g), Some(changed)) if g + 1 == snapshot.generation => Some(changed),
            (Some(g), _) if g == snapshot.generation => Some(&EMPTY),
            _ => None,
        };
        // Full diffs of big sets are throttled across clients: each builds a lot at once.
        let _permit = if incremental.is_none() && set.len() > MAX_RESOURCES_PER_RESPONSE {
            Some(
                self.large_pushes
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| Status::unavailable("shutting down"))?,
            )
        } else {
            None
        };
        let state = self.types.get_mut(type_url).expect("checked above");
        let candidates: Vec<String> = match incremental {
            Some(changed) => changed.iter().cloned().collect(),
            None => {
                let mut all: BTreeSet<String> = set.keys().cloned().collect();
                all.extend(state.names().cloned());
                all.into_iter().collect()
            }
        };
        // (name, version the client held before, whether it is now removed)
        let mut changes: Vec<(String, Option<String>, bool)> = Vec::new();
        for name in candidates {
            let before = state.held(&name).map(str::to_string);
            let wanted = state.subscribed.as_ref().is_none_or(|s| s.contains(&name));
            match set.get(&name) {
                Some(v) if wanted => {
                    if before.as_deref() != Some(v.version.as_str()) {
                        changes.push((name, before, false));
                    }
                }
                _ => {
                    if before.is_some() {
                        changes.push((name, before, true));
                    }
                }
            }
        }
        // Record what the client now holds.
        if state.subscribed.is_none() {
            // Wildcard: exactly the current set (unless a NACK later says otherwise).
            state.base = set.clone();
            state.overrides.clear();
        } else {
            for (name, _, removed) in &changes {
                let now = if *removed {
                    None
                } else {
                    set.get(name).map(|v| v.version.clone())
                };
                state.overrides.insert(name.clone(), now);
            }
        }
        state.synced = Some(snapshot.generation);
        let held = state.held_count();
        if changes.is_empty() && !always {
            return Ok(());
        }
        let generation = snapshot.generation;
        let t = type_url.to_string();
        self.registry.update(self.registry_id, |s| {
            s.sent_generation.insert(t.clone(), generation);
            s.resources.insert(t, held);
        });
        metrics::counter!("pilot_xds_pushes", "type" => type_url.to_string()).increment(1);
        debug!(node = %self.caller.node(), type_url, changes = changes.len(), "push");
        // Sent in chunks built one at a time, so a first sync never holds the whole
        // configuration as one message.
        let body_len = |name: &str| set.get(name).map_or(0, |v| v.body.value.len());
        let mut chunks =
            response_chunks(
                &changes,
                |(name, _, removed)| {
                    if *removed { name.len() } else { body_len(name) }
                },
            )
            .peekable();
        let mut sent_any = false;
        while chunks.peek().is_some() || !sent_any {
            let chunk = chunks.next().unwrap_or(&[]);
            sent_any = true;
            let mut resources = Vec::with_capacity(chunk.len());
            let mut removed = Vec::new();
            let mut bytes = 0;
            for (name, _, is_removed) in chunk {
                if *is_removed {
                    removed.push(name.clone());
                } else if let Some(v) = set.get(name) {
                    bytes += v.body.value.len();
                    resources.push(Resource {
                        name: name.clone(),
                        version: v.version.clone(),
                        // `Bytes`: shared with the snapshot, not copied.
                        resource: Some(v.body.clone()),
                        ..Default::default()
                    });
                }
            }
            metrics::counter!("pilot_xds_push_bytes_total", "type" => type_url.to_string())
                .increment(bytes as u64);
            self.nonce += 1;
            let nonce = format!("{generation}-{}", self.nonce);
            self.in_flight.insert(
                nonce.clone(),
                InFlight {
                    type_url: type_url.to_string(),
                    generation,
                    sent: chunk
                        .iter()
                        .map(|(n, before, _)| (n.clone(), before.clone()))
                        .collect(),
                },
            );
            let response = DeltaDiscoveryResponse {
                system_version_info: generation.to_string(),
                resources,
                type_url: type_url.to_string(),
                removed_resources: removed,
                nonce,
            };
            self.tx
                .send(Ok(response))
                .await
                .map_err(|_| Status::cancelled("client went away"))?;
        }
        Ok(())
    }
}

/// `items` cut into responses of at most [`MAX_RESOURCES_PER_RESPONSE`] items and
/// [`MAX_BYTES_PER_RESPONSE`] bytes by `size` (an item larger than that goes alone).
fn response_chunks<T>(items: &[T], size: impl Fn(&T) -> usize) -> impl Iterator<Item = &[T]> {
    let mut rest = items;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let mut end = 0;
        while end < rest.len() && end < MAX_RESOURCES_PER_RESPONSE {
            bytes += size(&rest[end]);
            if end > 0 && bytes > MAX_BYTES_PER_RESPONSE {
                break;
            }
            end += 1;
        }
        let (chunk, tail) = rest.split_at(end);
        rest = tail;
        Some(chunk)
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ambient_proto::ambient::waypoint::v1 as l7;
    use ambient_proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use ambient_proto::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
    use ambient_proto::istio::workload as wds;
    use ambient_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, L7_TYPE_URL};
    use prost::Message;
    use tokio_stream::wrappers::TcpListenerStream;

    use super::*;
    use crate::ca::NodeTokens;
    use crate::index::Index;

    #[test]
    fn responses_are_cut_by_bytes_and_by_count() {
        let lens = |items: &[usize]| -> Vec<usize> {
            response_chunks(items, |n| *n).map(<[usize]>::len).collect()
        };
        assert!(lens(&[]).is_empty());
        // 10 kB resources: three fit in 32 kB, the fourth starts the next response.
        assert_eq!(lens(&[10_000; 7]), [3, 3, 1]);
        // A resource larger than the budget goes alone, never split or dropped.
        assert_eq!(lens(&[100, 50_000, 100]), [1, 1, 1]);
        assert_eq!(lens(&[50_000]), [1]);
        // Tiny resources (removals, say) are capped by count.
        let tiny = vec![10; 2 * MAX_RESOURCES_PER_RESPONSE + 1];
        assert_eq!(
            lens(&tiny),
            [MAX_RESOURCES_PER_RESPONSE, MAX_RESOURCES_PER_RESPONSE, 1]
        );
        let cut: usize = lens(&[100; 5_000]).iter().sum();
        assert_eq!(cut, 5_000);
    }

    fn index(l7_port: u32) -> Index {
        let mut i = Index::default();
        i.addresses.insert(
            "w".into(),
            wds::Address {
                r#type: Some(wds::address::Type::Workload(wds::Workload {
                    uid: "w".into(),
                    ..Default::default()
                })),
            },
        );
        i.l7.insert(
            "service/ns/s.ns.svc.cluster.local".into(),
            l7::L7Resource {
                kind: Some(l7::l7_resource::Kind::Service(l7::ServiceConfig {
                    namespace: "ns".into(),
                    name: "s".into(),
                    ports: vec![l7::PortConfig {
                        port: l7_port,
                        ..Default::default()
                    }],
                    ..Default::default()
                })),
            },
        );
        i
    }

    async fn recv(
        stream: &mut Streaming<DeltaDiscoveryResponse>,
    ) -> Option<DeltaDiscoveryResponse> {
        tokio::time::timeout(Duration::from_millis(500), stream.message())
            .await
            .ok()
            .map(|r| r.unwrap().expect("stream open"))
    }

    /// Opens a stream subscribing to `types` (wildcard).
    async fn subscribe(
        addr: std::net::SocketAddr,
        token: &str,
        types: &[&str],
    ) -> (
        mpsc::Sender<DeltaDiscoveryRequest>,
        Streaming<DeltaDiscoveryResponse>,
    ) {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(8);
        for t in types {
            tx.send(DeltaDiscoveryRequest {
                type_url: t.to_string(),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        let mut req = Request::new(ReceiverStream::new(rx));
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let stream = client
            .delta_aggregated_resources(req)
            .await
            .unwrap()
            .into_inner();
        (tx, stream)
    }

    #[tokio::test]
    async fn clients_get_only_the_types_they_subscribe_to() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Arc::new(NodeTokens::open(dir.path()).unwrap());
        let token = tokens.issue("node-a").unwrap();
        let (snapshots, rx) =
            watch::channel(Arc::new(Snapshot::next(&Snapshot::default(), &index(80))));
        let registry = Arc::new(ProxyRegistry::default());
        let ads = AdsService::new(rx, tokens, registry.clone());
        assert_eq!(
            registry.served().unwrap().generation,
            1,
            "the registry sees what is served"
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AggregatedDiscoveryServiceServer::new(ads))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );

        // ztunnel: addresses and authorizations.
        let (_zt_tx, mut ztunnel) =
            subscribe(addr, &token, &[ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL]).await;
        let mut seen = Vec::new();
        while let Some(r) = recv(&mut ztunnel).await {
            seen.push(r.type_url.clone());
        }
        seen.sort();
        assert_eq!(seen, vec![AUTHORIZATION_TYPE_URL, ADDRESS_TYPE_URL]);

        // A waypoint: L7 configuration.
        let (_wp_tx, mut waypoint) = subscribe(addr, &token, &[L7_TYPE_URL]).await;
        let first = recv(&mut waypoint).await.expect("L7 resources");
        assert_eq!(first.type_url, L7_TYPE_URL);
        assert_eq!(first.resources[0].name, "service/ns/s.ns.svc.cluster.local");
        let body = first.resources[0].resource.as_ref().unwrap();
        assert_eq!(body.type_url, L7_TYPE_URL);
        let decoded = l7::L7Resource::decode(body.value.as_ref()).unwrap();
        assert_eq!(decoded, index(80).l7["service/ns/s.ns.svc.cluster.local"]);

        // An L7-only change reaches the waypoint, not ztunnel.
        let next = Snapshot::next(&snapshots.borrow(), &index(81));
        snapshots.send_replace(Arc::new(next));
        let update = recv(&mut waypoint).await.expect("L7 update");
        assert_eq!(update.resources.len(), 1);
        assert!(
            recv(&mut ztunnel).await.is_none(),
            "ztunnel is sent nothing"
        );
    }
}
