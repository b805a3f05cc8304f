//! The push loop: source changes → cluster state → index → snapshot, debounced so a burst of
//! changes becomes one push.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::index::{self, IndexConfig, Warning};
use crate::model::{Change, ClusterState, Kind};
use crate::nodes::NodeIdentities;
use crate::xds::Snapshot;

/// Debounce tuning.
#[derive(Clone, Copy, Debug)]
pub struct Debounce {
    /// Push once no change has arrived for this long...
    pub quiet: Duration,
    /// ...or this long after the first change of a burst, whichever comes first.
    pub max_delay: Duration,
}

impl Default for Debounce {
    fn default() -> Self {
        Debounce {
            quiet: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        }
    }
}

/// Told the nodes that have enrolled pods after each push.
pub type NodesCallback = Box<dyn Fn(&[String]) + Send>;

/// What the push loop publishes besides snapshots.
#[derive(Default)]
pub struct Published {
    pub nodes: NodeIdentities,
    pub warnings: Mutex<Vec<Warning>>,
    /// Called with every node that has enrolled pods (for issuing node tokens).
    pub on_nodes: Mutex<Option<NodesCallback>>,
    /// Every Rollout's status, as the rollout engine last judged it.
    pub rollouts: Mutex<Vec<crate::rollout::engine::RolloutStatus>>,
}

/// Runs until the sources' channel closes. Nothing is published until every kind has been
/// listed once, so proxies never see a half-loaded cluster.
pub async fn run(
    mut rx: mpsc::Receiver<Change>,
    config: IndexConfig,
    debounce: Debounce,
    snapshots: watch::Sender<Arc<Snapshot>>,
    published: Arc<Published>,
) {
    let mut state = ClusterState::default();
    let mut synced: BTreeSet<Kind> = BTreeSet::new();
    let mut reported: Vec<Warning> = Vec::new();
    while let Some(first) = rx.recv().await {
        let started = Instant::now();
        let mut changed = apply(&mut state, &mut synced, first);
        let deadline = started + debounce.max_delay;
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let wait = debounce.quiet.min(deadline - now);
            match tokio::time::timeout(wait, rx.recv()).await {
                Ok(Some(c)) => changed |= apply(&mut state, &mut synced, c),
                Ok(None) => return,
                Err(_) => break,
            }
        }
        let first_sync = snapshots.borrow().generation == 0;
        if !changed && !first_sync || synced.len() < Kind::ALL.len() {
            continue;
        }
        let computing = Instant::now();
        let idx = index::build(&state, &config);
        let next = Snapshot::next(&snapshots.borrow(), &idx);
        if !next.has_changes() && !first_sync {
            debug!("changes produced no new configuration");
            continue;
        }
        published.nodes.set(idx.identities_by_node.clone());
        if let Some(cb) = published.on_nodes.lock().expect("poisoned").as_ref() {
            let nodes: Vec<String> = idx.identities_by_node.keys().cloned().collect();
            cb(&nodes);
        }
        for w in idx.warnings.iter().filter(|w| !reported.contains(w)) {
            warn!("{w}");
        }
        reported = idx.warnings.clone();
        *published.warnings.lock().expect("poisoned") = idx.warnings;
        let changed_count: usize = next.changed.values().map(|c| c.len()).sum();
        info!(
            generation = next.generation,
            objects = state.len(),
            resources = next.sets.values().map(|s| s.len()).sum::<usize>(),
            changed = changed_count,
            debounce_ms = computing.duration_since(started).as_millis() as u64,
            compute_ms = computing.elapsed().as_millis() as u64,
            "configuration pushed"
        );
        metrics::histogram!("pilot_debounce_time")
            .record(computing.duration_since(started).as_secs_f64());
        metrics::histogram!("ambient_index_compute_seconds")
            .record(computing.elapsed().as_secs_f64());
        snapshots.send_replace(Arc::new(next));
    }
}

fn apply(state: &mut ClusterState, synced: &mut BTreeSet<Kind>, change: Change) -> bool {
    if let Change::Replace { kinds, .. } = &change {
        synced.extend(kinds.iter().copied());
    }
    state.apply(change)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Object;
    use k8s_openapi::api::core::v1::Namespace;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn ns(name: &str) -> Object {
        Object::Namespace(Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn waits_for_every_kind_then_coalesces_bursts() {
        let (tx, rx) = mpsc::channel(64);
        let (snap_tx, mut snap_rx) = watch::channel(Arc::new(Snapshot::default()));
        let debounce = Debounce {
            quiet: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
        };
        tokio::spawn(run(
            rx,
            IndexConfig::default(),
            debounce,
            snap_tx,
            Arc::new(Published::default()),
        ));
        // Only one kind listed: nothing is published yet.
        tx.send(Change::Replace {
            kinds: vec![Kind::Namespace],
            objects: vec![],
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(snap_rx.borrow().generation, 0);
        tx.send(Change::Replace {
            kinds: Kind::ALL.to_vec(),
            objects: vec![],
        })
        .await
        .unwrap();
        snap_rx.wait_for(|s| s.generation == 1).await.unwrap();
        // A burst of 30 changes becomes one push.
        for i in 0..30 {
            tx.send(Change::Apply(ns(&format!("ns-{i}"))))
                .await
                .unwrap();
        }
        let mut pod = k8s_openapi::api::core::v1::Pod::default();
        pod.metadata.name = Some("p".into());
        pod.metadata.namespace = Some("ns-1".into());
        pod.status = Some(k8s_openapi::api::core::v1::PodStatus {
            pod_ip: Some("10.0.0.1".into()),
            ..Default::default()
        });
        tx.send(Change::Apply(Object::Pod(pod))).await.unwrap();
        snap_rx.wait_for(|s| s.generation >= 2).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(snap_rx.borrow().generation, 2, "one push for the burst");
        assert_eq!(
            snap_rx.borrow().sets[ambient_proto::ADDRESS_TYPE_URL].len(),
            1
        );
    }
}
