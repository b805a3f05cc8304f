//! The waypoint deployer (Kubernetes mode): what Istio's gateway deployment controller does
//! for waypoints.
//!
//! For every Gateway of class `istio-waypoint` it server-side applies (field manager
//! `ambient-controller`) a ServiceAccount, a Service and a Deployment named after the Gateway
//! and owned by it ([`render`]), plus the mesh root ConfigMap in the Gateway's namespace; it
//! re-applies when the Gateway changes (and every few minutes, to repair edits). Objects of
//! that name it does not own (no owner reference to a Gateway of that name) are left alone.
//! Then it writes the Gateway's `/status` (`Accepted`, `Programmed`, `addresses`) from what
//! the index computed, whenever that differs from what the Gateway shows ([`status`]).
//!
//! Errors are logged and the Gateway retried with exponential backoff; nothing here stops the
//! controller. Deleted Gateways are forgotten: Kubernetes' garbage collector removes their
//! objects through the owner references.

pub mod render;
pub mod status;

/// Environment every proxy process (ztunnel, waypoint) is started with, wherever it is
/// deployed (Kubernetes manifests, the local runtime, the lab).
///
/// mimalloc otherwise commits each arena eagerly: about 4 MB of an idle proxy's 6 MB heap
/// (docs/benchmarks.md). mimalloc reads its options once, before `main`, so they can only
/// come from the environment.
pub const PROXY_ENV: &[(&str, &str)] = &[("MIMALLOC_ARENA_EAGER_COMMIT", "0")];

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

pub use render::{DeployerConfig, render};

use crate::model::gateway::{Gateway, WAYPOINT_CLASS};
use crate::xds::Snapshot;

/// Server-side apply field manager of everything the controller writes.
pub const FIELD_MANAGER: &str = "ambient-controller";
/// The conditions the controller owns on a waypoint Gateway.
const OWNED_CONDITIONS: &[&str] = &["Accepted", "Programmed"];
/// Everything is re-applied this often (applies that change nothing are free).
const RESYNC: Duration = Duration::from_secs(300);

type Key = (String, String);

fn key(g: &Gateway) -> Key {
    (
        g.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        g.metadata.name.clone().unwrap_or_default(),
    )
}

/// The backoff before retry number `attempt` (1-based): 0.5 s doubling up to 60 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500)
        .saturating_mul(1 << attempt.saturating_sub(1).min(7))
        .min(Duration::from_secs(60))
}

/// 64-bit FNV-1a of the rendered objects: what was deployed.
fn fingerprint(r: &render::Rendered) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for o in r.objects() {
        for b in o.to_string().bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "{0} exists and is not owned by the Gateway; it is left alone (delete or rename it to let the waypoint be deployed)"
    )]
    Foreign(String),
}

struct Retry {
    attempts: u32,
    next: Instant,
}

/// The deployer's memory between reconciliations.
struct Deployer {
    client: Client,
    config: DeployerConfig,
    /// What was applied per Gateway: its uid and the fingerprint of the objects.
    deployed: BTreeMap<Key, (String, u64)>,
    /// Namespaces whose CA root ConfigMap is in place.
    roots: BTreeSet<String>,
    failures: BTreeMap<Key, Retry>,
}

/// Whether `meta` says the object belongs to the Gateway `name` (any incarnation of it: a
/// recreated Gateway takes over what its predecessor's garbage collection has not removed).
fn owned_by(meta: &ObjectMeta, name: &str) -> bool {
    meta.owner_references.iter().flatten().any(|o| {
        o.kind == "Gateway"
            && o.name == name
            && o.api_version.starts_with("gateway.networking.k8s.io/")
    })
}

impl Deployer {
    fn new(client: Client, config: DeployerConfig) -> Self {
        Deployer {
            client,
            config,
            deployed: BTreeMap::new(),
            roots: BTreeSet::new(),
            failures: BTreeMap::new(),
        }
    }

    /// Applies or writes what differs for every waypoint Gateway; returns when a failed one
    /// is due again.
    async fn reconcile(
        &mut self,
        gateways: &BTreeMap<Key, Gateway>,
        snapshot: &Snapshot,
    ) -> Option<Instant> {
        self.deployed.retain(|k, _| gateways.contains_key(k));
        self.failures.retain(|k, _| gateways.contains_key(k));
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for (k, g) in gateways {
            if g.spec.gateway_class_name != WAYPOINT_CLASS
                || g.metadata.deletion_timestamp.is_some()
            {
                continue;
            }
            if let Some(r) = self.failures.get(k)
                && r.next > now
            {
                next = Some(next.map_or(r.next, |n| n.min(r.next)));
                continue;
            }
            match self.sync(k, g, snapshot).await {
                Ok(()) => {
                    self.failures.remove(k);
                }
                Err(e) => {
                    let attempts = self.failures.get(k).map_or(0, |r| r.attempts) + 1;
                    let wait = backoff(attempts);
                    warn!(
                        gateway = %format!("{}/{}", k.0, k.1),
                        error = %e,
                        retry_in_ms = wait.as_millis() as u64,
                        "waypoint deployment failed"
                    );
                    let at = Instant::now() + wait;
                    self.failures
                        .insert(k.clone(), Retry { attempts, next: at });
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
            }
        }
        next
    }

    async fn sync(&mut self, k: &Key, g: &Gateway, snapshot: &Snapshot) -> Result<(), SyncError> {
        let (namespace, name) = k;
        if let Some(rendered) = render(g, &self.config) {
            let uid = g.metadata.uid.clone().unwrap_or_default();
            let print = fingerprint(&rendered);
            if self.deployed.get(k) != Some(&(uid.clone(), print)) {
                self.ensure_ca_root(namespace).await?;
                self.check_owned::<ServiceAccount>(namespace, name).await?;
                self.check_owned::<Service>(namespace, name).await?;
                self.check_owned::<Deployment>(namespace, name).await?;
                self.apply::<ServiceAccount>(namespace, name, &rendered.service_account)
                    .await?;
                self.apply::<Service>(namespace, name, &rendered.service)
                    .await?;
                self.apply::<Deployment>(namespace, name, &rendered.deployment)
                    .await?;
                info!(gateway = %format!("{namespace}/{name}"), "waypoint deployed (ServiceAccount, Service, Deployment)");
                self.deployed.insert(k.clone(), (uid, print));
            }
        }
        // The status, once the index has judged this Gateway.
        if snapshot.generation == 0 {
            return Ok(());
        }
        let Some(computed) = snapshot
            .gateways
            .iter()
            .find(|s| &s.namespace == namespace && &s.name == name)
        else {
            return Ok(());
        };
        let desired = status::desired_view(g, computed);
        if status::current_view(g, OWNED_CONDITIONS) == desired {
            return Ok(());
        }
        let now = status::rfc3339(time::OffsetDateTime::now_utc());
        let patch = json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": name, "namespace": namespace},
            "status": status::status_json(g, &desired, &now),
        });
        Api::<Gateway>::namespaced(self.client.clone(), namespace)
            .patch_status(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(|source| SyncError::Api {
                what: format!("writing the status of gateway {namespace}/{name}"),
                source,
            })?;
        info!(
            gateway = %format!("{namespace}/{name}"),
            programmed = computed.programmed,
            reason = %computed.reason,
            address = ?computed.address,
            "gateway status written"
        );
        Ok(())
    }

    /// Refuses to touch an existing object the Gateway does not own.
    async fn check_owned<K>(&self, namespace: &str, name: &str) -> Result<(), SyncError>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + std::fmt::Debug
            + DeserializeOwned,
    {
        let shown = format!("{} {namespace}/{name}", K::kind(&()));
        let existing = Api::<K>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(|source| SyncError::Api {
                what: format!("reading {shown}"),
                source,
            })?;
        match existing {
            Some(o) if !owned_by(o.meta(), name) => Err(SyncError::Foreign(shown)),
            _ => Ok(()),
        }
    }

    async fn apply<K>(&self, namespace: &str, name: &str, object: &Value) -> Result<(), SyncError>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + std::fmt::Debug
            + DeserializeOwned,
    {
        Api::<K>::namespaced(self.client.clone(), namespace)
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(object),
            )
            .await
            .map_err(|source| SyncError::Api {
                what: format!("applying {} {namespace}/{name}", K::kind(&())),
                source,
            })?;
        debug!(kind = %K::kind(&()), %namespace, %name, "applied");
        Ok(())
    }

    /// The mesh root, where the namespace's waypoint pods can mount it. One that someone
    /// else made is left alone (with a warning if its root differs).
    async fn ensure_ca_root(&mut self, namespace: &str) -> Result<(), SyncError> {
        if self.roots.contains(namespace) {
            return Ok(());
        }
        let name = render::CA_ROOT_CONFIGMAP;
        let api = Api::<ConfigMap>::namespaced(self.client.clone(), namespace);
        let existing = api.get_opt(name).await.map_err(|source| SyncError::Api {
            what: format!("reading ConfigMap {namespace}/{name}"),
            source,
        })?;
        let ours = |cm: &ConfigMap| {
            cm.metadata
                .managed_fields
                .iter()
                .flatten()
                .any(|f| f.manager.as_deref() == Some(FIELD_MANAGER))
        };
        match existing {
            Some(cm) if !ours(&cm) => {
                let root = cm.data.as_ref().and_then(|d| d.get("root-cert.pem"));
                if root.map(String::as_str) != Some(self.config.ca_root_pem.as_str()) {
                    warn!(
                        configmap = %format!("{namespace}/{name}"),
                        "a ConfigMap not made by the controller holds a different mesh root; left alone (waypoints there may fail to reach the controller)"
                    );
                }
            }
            _ => {
                api.patch(
                    name,
                    &PatchParams::apply(FIELD_MANAGER),
                    &Patch::Apply(&render::ca_root(namespace, &self.config)),
                )
                .await
                .map_err(|source| SyncError::Api {
                    what: format!("applying ConfigMap {namespace}/{name}"),
                    source,
                })?;
            }
        }
        self.roots.insert(namespace.to_string());
        Ok(())
    }
}

/// Runs until the snapshot channel closes: watches Gateways, deploys waypoints and writes
/// their status.
pub async fn run(
    client: Client,
    config: DeployerConfig,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
) {
    let api: Api<Gateway> = Api::all(client.clone());
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    let mut deployer = Deployer::new(client, config);
    let mut gateways: BTreeMap<Key, Gateway> = BTreeMap::new();
    let mut listing: Option<BTreeMap<Key, Gateway>> = None;
    let mut listed = false;
    let mut retry: Option<Instant> = None;
    let mut resync = tokio::time::interval_at(Instant::now() + RESYNC, RESYNC);
    loop {
        let far = Instant::now() + Duration::from_secs(3600);
        tokio::select! {
            event = stream.next() => match event {
                None => return,
                Some(Ok(Event::Init)) => listing = Some(BTreeMap::new()),
                Some(Ok(Event::InitApply(g))) => {
                    if let Some(l) = listing.as_mut() {
                        l.insert(key(&g), g);
                    }
                }
                Some(Ok(Event::InitDone)) => {
                    gateways = listing.take().unwrap_or_default();
                    listed = true;
                }
                Some(Ok(Event::Apply(g))) => {
                    gateways.insert(key(&g), g);
                }
                Some(Ok(Event::Delete(g))) => {
                    gateways.remove(&key(&g));
                }
                Some(Err(e)) => {
                    // The watcher backs off and relists by itself.
                    warn!(error = %e, "waypoint deployer: Gateway watch error");
                    continue;
                }
            },
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep_until(retry.unwrap_or(far)), if retry.is_some() => {}
            _ = resync.tick() => {
                deployer.deployed.clear();
                deployer.roots.clear();
            }
        }
        // Marks the snapshot seen either way, so that `changed()` waits for the next one.
        let snapshot = snapshots.borrow_and_update().clone();
        if !listed {
            continue;
        }
        retry = deployer.reconcile(&gateways, &snapshot).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    #[test]
    fn backoff_doubles_to_a_minute() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(4), Duration::from_secs(4));
        assert_eq!(backoff(8), Duration::from_secs(60));
        assert_eq!(backoff(100), Duration::from_secs(60));
    }

    #[test]
    fn ownership_is_by_gateway_name() {
        let owner = |kind: &str, name: &str| ObjectMeta {
            owner_references: Some(vec![OwnerReference {
                api_version: "gateway.networking.k8s.io/v1".into(),
                kind: kind.into(),
                name: name.into(),
                uid: "u".into(),
                controller: Some(true),
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert!(owned_by(&owner("Gateway", "waypoint"), "waypoint"));
        assert!(!owned_by(&owner("Gateway", "other"), "waypoint"));
        assert!(!owned_by(&owner("Deployment", "waypoint"), "waypoint"));
        assert!(!owned_by(&ObjectMeta::default(), "waypoint"));
    }

    #[test]
    fn the_fingerprint_follows_the_objects() {
        let config = render::tests::config();
        let g = render::tests::gateway(WAYPOINT_CLASS);
        let a = fingerprint(&render(&g, &config).unwrap());
        assert_eq!(a, fingerprint(&render(&g, &config).unwrap()));
        let mut other = config.clone();
        other.image = "x".into();
        assert_ne!(a, fingerprint(&render(&g, &other).unwrap()));
    }
}
