//! The Kubernetes API as a configuration source: one kube-rs watcher per kind (list, then
//! watch from the list's resourceVersion; relist on 410 Gone; backoff on errors).

use std::fmt::Debug;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::model::{AuthorizationPolicy, Change, Gateway, Kind, Object, PeerAuthentication};

/// Watches every kind the controller reads until `tx` closes.
pub async fn run(client: Client, tx: mpsc::Sender<Change>) {
    let tasks = vec![
        tokio::spawn(watch::<Namespace>(
            client.clone(),
            Kind::Namespace,
            Object::Namespace,
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
            client,
            Kind::PeerAuthentication,
            Object::PeerAuthentication,
            tx,
        )),
    ];
    futures::future::join_all(tasks).await;
}

async fn watch<K>(client: Client, kind: Kind, wrap: fn(K) -> Object, tx: mpsc::Sender<Change>)
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let api: Api<K> = Api::all(client);
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    let mut listing: Option<Vec<Object>> = None;
    while let Some(event) = stream.next().await {
        let change = match event {
            Ok(Event::Init) => {
                listing = Some(Vec::new());
                None
            }
            Ok(Event::InitApply(o)) => {
                if let Some(l) = listing.as_mut() {
                    l.push(wrap(o));
                }
                None
            }
            Ok(Event::InitDone) => {
                let objects = listing.take().unwrap_or_default();
                info!(%kind, count = objects.len(), "listed");
                Some(Change::Replace {
                    kinds: vec![kind],
                    objects,
                })
            }
            Ok(Event::Apply(o)) => Some(Change::Apply(wrap(o))),
            Ok(Event::Delete(o)) => Some(Change::Delete(wrap(o).key())),
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
