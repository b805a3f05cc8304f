//! Delta ADS semantics over a real gRPC connection: wildcard subscription, per-resource
//! versions, incremental pushes, removals, NACK handling, and reconnects that send only what
//! the client lacks.

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use ambient_controller::ca::NodeTokens;
use ambient_controller::index::Index;
use ambient_controller::xds::Snapshot;
use ambient_controller::xds::server::{AdsService, ProxyRegistry};
use ambient_proto::ADDRESS_TYPE_URL;
use ambient_proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use ambient_proto::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use ambient_proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use ambient_proto::google::rpc;
use ambient_proto::istio::workload as wds;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::Streaming;

fn index(workloads: &[(&str, &str)]) -> Index {
    let mut i = Index::default();
    for (uid, node) in workloads {
        i.addresses.insert(
            uid.to_string(),
            wds::Address {
                r#type: Some(wds::address::Type::Workload(wds::Workload {
                    uid: uid.to_string(),
                    node: node.to_string(),
                    ..Default::default()
                })),
            },
        );
    }
    i
}

struct Fixture {
    addr: std::net::SocketAddr,
    snapshots: watch::Sender<Arc<Snapshot>>,
    token: String,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn start(initial: Index) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Arc::new(NodeTokens::open(dir.path()).unwrap());
        let token = tokens.issue("node-a").unwrap();
        let first = Snapshot::next(&Snapshot::default(), &initial);
        let (tx, rx) = watch::channel(Arc::new(first));
        let ads = AdsService::new(rx, tokens, Arc::new(ProxyRegistry::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AggregatedDiscoveryServiceServer::new(ads))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        Fixture {
            addr,
            snapshots: tx,
            token,
            _dir: dir,
        }
    }

    fn publish(&self, idx: Index) {
        let next = Snapshot::next(&self.snapshots.borrow(), &idx);
        self.snapshots.send_replace(Arc::new(next));
    }

    async fn connect(
        &self,
        initial: &[(&str, &str)],
    ) -> (
        mpsc::Sender<DeltaDiscoveryRequest>,
        Streaming<DeltaDiscoveryResponse>,
    ) {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(8);
        tx.send(DeltaDiscoveryRequest {
            type_url: ADDRESS_TYPE_URL.into(),
            initial_resource_versions: initial
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        })
        .await
        .unwrap();
        let mut req = tonic::Request::new(ReceiverStream::new(rx));
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.token).parse().unwrap(),
        );
        let stream = client
            .delta_aggregated_resources(req)
            .await
            .unwrap()
            .into_inner();
        (tx, stream)
    }
}

async fn next(stream: &mut Streaming<DeltaDiscoveryResponse>) -> DeltaDiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("a response")
        .unwrap()
        .expect("stream open")
}

async fn silent(stream: &mut Streaming<DeltaDiscoveryResponse>) -> bool {
    tokio::time::timeout(Duration::from_millis(300), stream.message())
        .await
        .is_err()
}

fn names(r: &DeltaDiscoveryResponse) -> Vec<String> {
    let mut v: Vec<String> = r.resources.iter().map(|r| r.name.clone()).collect();
    v.sort();
    v
}

async fn ack(tx: &mpsc::Sender<DeltaDiscoveryRequest>, r: &DeltaDiscoveryResponse) {
    tx.send(DeltaDiscoveryRequest {
        type_url: r.type_url.clone(),
        response_nonce: r.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn pushes_only_differences() {
    let f = Fixture::start(index(&[("a", "n1"), ("b", "n1")])).await;
    let (tx, mut rx) = f.connect(&[]).await;
    let first = next(&mut rx).await;
    assert_eq!(names(&first), vec!["a", "b"]);
    ack(&tx, &first).await;

    // One workload changes, one is removed, one is added.
    f.publish(index(&[("a", "n2"), ("c", "n1")]));
    let r = next(&mut rx).await;
    assert_eq!(names(&r), vec!["a", "c"]);
    assert_eq!(r.removed_resources, vec!["b"]);
    ack(&tx, &r).await;

    // No change, no push.
    f.publish(index(&[("a", "n2"), ("c", "n1")]));
    assert!(silent(&mut rx).await);
}

#[tokio::test]
async fn reconnect_sends_only_what_the_client_lacks() {
    let f = Fixture::start(index(&[("a", "n1"), ("b", "n1"), ("c", "n1")])).await;
    let (tx, mut rx) = f.connect(&[]).await;
    let first = next(&mut rx).await;
    let versions: Vec<(String, String)> = first
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    ack(&tx, &first).await;
    drop((tx, rx));

    // The client comes back holding everything: the (always sent) first answer is empty.
    let held: Vec<(&str, &str)> = versions
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let (_tx, mut rx) = f.connect(&held).await;
    let r = next(&mut rx).await;
    assert!(
        r.resources.is_empty() && r.removed_resources.is_empty(),
        "{r:?}"
    );

    // Holding a stale `b` and a `gone` the server no longer has.
    let mut stale = held.clone();
    stale[1].1 = "0000";
    stale.push(("gone", "1234"));
    let (_tx, mut rx) = f.connect(&stale).await;
    let r = next(&mut rx).await;
    assert_eq!(names(&r), vec!["b"]);
    assert_eq!(r.removed_resources, vec!["gone"]);
}

#[tokio::test]
async fn nack_makes_the_next_push_resend() {
    let f = Fixture::start(index(&[("a", "n1")])).await;
    let (tx, mut rx) = f.connect(&[]).await;
    let first = next(&mut rx).await;
    ack(&tx, &first).await;
    f.publish(index(&[("a", "n2")]));
    let r = next(&mut rx).await;
    tx.send(DeltaDiscoveryRequest {
        type_url: r.type_url.clone(),
        response_nonce: r.nonce.clone(),
        error_detail: Some(rpc::Status {
            code: 3,
            message: "a: cannot use".into(),
            details: vec![],
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    // Something else changes: `a` is sent again with it, since the client rejected it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    f.publish(index(&[("a", "n2"), ("b", "n1")]));
    let r = next(&mut rx).await;
    assert_eq!(names(&r), vec!["a", "b"]);
}

#[tokio::test]
async fn refuses_unauthenticated_streams() {
    let f = Fixture::start(index(&[])).await;
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", f.addr))
        .await
        .unwrap();
    let (_tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(1);
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("authorization", "Bearer forged".parse().unwrap());
    let err = client.delta_aggregated_resources(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
}
