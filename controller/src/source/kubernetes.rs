//! The Kubernetes API as a configuration source: one kube-rs watcher per kind (list, then
//! watch from the list's resourceVersion; relist on 410 Gone; backoff on errors).

use std::fmt::Debug;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::model::{
    AuthorizationPolicy, Change, DestinationRule, Gateway, GrpcRoute, HttpRoute, Kind,
    LocalRateLimitPolicy, Object, PeerAuthentication, RequestAuthentication, Rollout, ServiceEntry,
    StoredObject, TcpRoute, VirtualService,
};

/// Watches every kind the controller reads until `tx` closes; of ConfigMaps, only Istio's
/// mesh config (`istio` in `root_namespace`).
pub async fn run(client: Client, root_namespace: String, tx: mpsc::Sender<Change>) {
    let mesh_config = watcher::Config::default().fields(&format!(
        "metadata.name={}",
        crate::index::mesh::MESH_CONFIG_MAP
    ));
    let tasks = vec![
        tokio::spawn(watch_api::<ConfigMap>(
            Api::namespaced(client.clone(), &root_namespace),
            mesh_config,
            Kind::ConfigMap,
            Object::ConfigMap,
            tx.clone(),
        )),
        tokio::spawn(watch::<Namespace>(
            client.clone(),
            Kind::Namespace,
            Object::Namespace,
            tx.clone(),
        )),
        tokio::spawn(watch::<Node>(
            client.clone(),
            Kind::Node,
            Object::node,
            tx.clone(),
        )),
        tokio::spawn(watch::<Pod>(
            client.clone(),
            Kind::Pod,
            Object::Pod,
            tx.clone(),
        )),
        tokio::spawn(watch::<Service>(
            client.clone(),
            Kind::Service,
            Object::Service,
            tx.clone(),
        )),
        tokio::spawn(watch::<EndpointSlice>(
            client.clone(),
            Kind::EndpointSlice,
            Object::EndpointSlice,
            tx.clone(),
        )),
        tokio::spawn(watch::<Gateway>(
            client.clone(),
            Kind::Gateway,
            Object::Gateway,
            tx.clone(),
        )),
        tokio::spawn(watch::<AuthorizationPolicy>(
            client.clone(),
            Kind::AuthorizationPolicy,
            Object::AuthorizationPolicy,
            tx.clone(),
        )),
        tokio::spawn(watch::<PeerAuthentication>(
            client.clone(),
            Kind::PeerAuthentication,
            Object::PeerAuthentication,
            tx.clone(),
        )),
        tokio::spawn(watch::<RequestAuthentication>(
            client.clone(),
            Kind::RequestAuthentication,
            Object::RequestAuthentication,
            tx.clone(),
        )),
        tokio::spawn(watch::<HttpRoute>(
            client.clone(),
            Kind::HttpRoute,
            Object::HttpRoute,
            tx.clone(),
        )),
        tokio::spawn(watch::<GrpcRoute>(
            client.clone(),
            Kind::GrpcRoute,
            Object::GrpcRoute,
            tx.clone(),
        )),
        tokio::spawn(watch::<VirtualService>(
            client.clone(),
            Kind::VirtualService,
            Object::VirtualService,
            tx.clone(),
        )),
        tokio::spawn(watch::<DestinationRule>(
            client.clone(),
            Kind::DestinationRule,
            Object::DestinationRule,
            tx.clone(),
        )),
        tokio::spawn(watch::<TcpRoute>(
            client.clone(),
            Kind::TcpRoute,
            Object::TcpRoute,
            tx.clone(),
        )),
        tokio::spawn(watch::<ServiceEntry>(
            client.clone(),
            Kind::ServiceEntry,
            Object::ServiceEntry,
            tx.clone(),
        )),
        tokio::spawn(watch::<LocalRateLimitPolicy>(
            client.clone(),
            Kind::LocalRateLimitPolicy,
            Object::LocalRateLimitPolicy,
            tx.clone(),
        )),
        tokio::spawn(watch::<Rollout>(client, Kind::Rollout, Object::Rollout, tx)),
    ];
    futures::future::join_all(tasks).await;
}

async fn watch<K>(client: Client, kind: Kind, wrap: fn(K) -> Object, tx: mpsc::Sender<Change>)
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    watch_api(Api::all(client), watcher::Config::default(), kind, wrap, tx).await
}

async fn watch_api<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: Kind,
    wrap: fn(K) -> Object,
    tx: mpsc::Sender<Change>,
) where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let stream = watcher::watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    // Stored as the state will keep them: a listing of a large cluster is held whole until
    // it is complete, and decoded pods cost several times their reduced form.
    let mut listing: Option<Vec<StoredObject>> = None;
    // Whether this kind has been reported to the controller once (listed, or found absent).
    let mut reported = false;
    while let Some(event) = stream.next().await {
        let change = match event {
            Ok(Event::Init) => {
                listing = Some(Vec::new());
                None
            }
            Ok(Event::InitApply(o)) => {
                if let Some(l) = listing.as_mut() {
                    l.push(StoredObject::from(wrap(o)));
                }
                None
            }
            Ok(Event::InitDone) => {
                let objects = listing.take().unwrap_or_default();
                info!(%kind, count = objects.len(), "listed");
                reported = true;
                Some(Change::Replace {
                    kinds: vec![kind],
                    objects,
                })
            }
            Ok(Event::Apply(o)) => Some(Change::Apply(wrap(o))),
            Ok(Event::Delete(o)) => Some(Change::Delete(wrap(o).key())),
            Err(e) if !reported && resource_missing(&e) => {
                // The API server does not serve this kind (its CRD is not installed): there
                // are none, which must not hold up the rest of the configuration. The watcher
                // keeps retrying and lists them if the CRD appears later.
                warn!(%kind, error = %e, "kind not served by the API server; treated as empty until it is");
                reported = true;
                Some(Change::Replace {
                    kinds: vec![kind],
                    objects: Vec::new(),
                })
            }
            Err(e) => {
                // The watcher retries with backoff (and relists after 410 Gone) by itself.
                warn!(%kind, error = %e, "watch error");
                None
            }
        };
        if let Some(change) = change {
            debug!(%kind, "change");
            if tx.send(change).await.is_err() {
                return;
            }
        }
    }
}

/// Whether a watch error says the collection does not exist (404 on the initial list).
fn resource_missing(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::InitialListFailed(kube::Error::Api(status)) if status.code == 404)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    #[test]
    fn only_a_missing_collection_counts_as_empty() {
        let api = |code| {
            watcher::Error::InitialListFailed(kube::Error::Api(
                Status::failure("x", "NotFound").with_code(code).boxed(),
            ))
        };
        assert!(resource_missing(&api(404)));
        assert!(
            !resource_missing(&api(403)),
            "forbidden is an error, not 'none'"
        );
        assert!(!resource_missing(&api(500)));
        assert!(!resource_missing(&watcher::Error::NoResourceVersion));
    }
}
