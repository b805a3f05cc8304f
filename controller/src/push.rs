//! The push loop: source changes → cluster state → index → snapshot, debounced so a burst of
//! changes becomes one push.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::index::incremental::Touched;
use crate::index::{self, Index, IndexConfig, Warning};
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
///
/// Debounce is adaptive: a change that arrives when nothing was pushed for `quiet` is pushed
/// at once (with whatever is already queued); a change that follows a push more closely is
/// part of a burst and waits for `quiet` without changes, at most `max_delay`. A burst that
/// changed only pods updates the index kept from the last push instead of recomputing it
/// ([`index::incremental`]).
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
    // The index of `state` as last published, kept for pod-only bursts.
    let mut kept: Option<Index> = None;
    let mut touched = Touched::Nothing;
    let mut last_push: Option<Instant> = None;
    while let Some(first) = rx.recv().await {
        let started = Instant::now();
        let mut changed = apply(&mut state, &mut synced, &mut touched, first);
        while let Ok(c) = rx.try_recv() {
            changed |= apply(&mut state, &mut synced, &mut touched, c);
        }
        let in_burst = last_push.is_some_and(|t| started.duration_since(t) < debounce.quiet);
        if in_burst {
            let deadline = started + debounce.max_delay;
            loop {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                let wait = debounce.quiet.min(deadline - now);
                match tokio::time::timeout(wait, rx.recv()).await {
                    Ok(Some(c)) => changed |= apply(&mut state, &mut synced, &mut touched, c),
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
        }
        let first_sync = snapshots.borrow().generation == 0;
        if !changed && !first_sync || synced.len() < Kind::ALL.len() {
            continue;
        }
        let computing = Instant::now();
        let (next, mode) = match (std::mem::take(&mut touched), kept.as_mut()) {
            (Touched::Pods(pods), Some(idx)) if !first_sync => {
                let names = index::incremental::update_pods(idx, &state, &config, &pods);
                let next = Snapshot::next_touching(&snapshots.borrow(), idx, &names);
                (next, "pods")
            }
            _ => {
                // The old index goes first: two of them at once would raise the peak.
                drop(kept.take());
                let idx = index::build(&state, &config);
                let next = Snapshot::next(&snapshots.borrow(), &idx);
                kept = Some(idx);
                (next, "full")
            }
        };
        last_push = Some(Instant::now());
        if !next.has_changes() && !first_sync {
            debug!("changes produced no new configuration");
            continue;
        }
        let idx = kept.as_ref().expect("just computed");
        published.nodes.set(idx.identities_by_node.clone());
        if let Some(cb) = published.on_nodes.lock().expect("poisoned").as_ref() {
            let nodes: Vec<String> = idx.identities_by_node.keys().cloned().collect();
            cb(&nodes);
        }
        for w in idx.warnings.iter().filter(|w| !reported.contains(w)) {
            warn!("{w}");
        }
        reported = idx.warnings.clone();
        *published.warnings.lock().expect("poisoned") = idx.warnings.clone();
        let changed_count: usize = next.changed.values().map(|c| c.len()).sum();
        info!(
            generation = next.generation,
            objects = state.len(),
            resources = next.sets.values().map(|s| s.len()).sum::<usize>(),
            changed = changed_count,
            index = mode,
            debounce_ms = computing.duration_since(started).as_millis() as u64,
            compute_ms = computing.elapsed().as_millis() as u64,
            "configuration pushed"
        );
        metrics::histogram!("pilot_debounce_time")
            .record(computing.duration_since(started).as_secs_f64());
        metrics::histogram!("ambient_index_compute_seconds", "index" => mode)
            .record(computing.elapsed().as_secs_f64());
        snapshots.send_replace(Arc::new(next));
    }
}

fn apply(
    state: &mut ClusterState,
    synced: &mut BTreeSet<Kind>,
    touched: &mut Touched,
    change: Change,
) -> bool {
    if let Change::Replace { kinds, .. } = &change {
        synced.extend(kinds.iter().copied());
    }
    // Noted before the change (it needs the old object), kept only if something changed.
    let this = Touched::of(state, &change);
    let changed = state.apply(change);
    if changed {
        touched.merge(this);
    }
    changed
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

    /// The next snapshot after generation `after`, and how long (tokio's clock) it took.
    async fn next_push(
        snap_rx: &mut watch::Receiver<Arc<Snapshot>>,
        after: u64,
    ) -> (Arc<Snapshot>, Duration) {
        let sent = Instant::now();
        snap_rx.wait_for(|s| s.generation > after).await.unwrap();
        (snap_rx.borrow().clone(), sent.elapsed())
    }

    fn pod(name: &str, ip: &str) -> Change {
        let mut pod = k8s_openapi::api::core::v1::Pod::default();
        pod.metadata.name = Some(name.into());
        pod.metadata.namespace = Some("ns-1".into());
        pod.status = Some(k8s_openapi::api::core::v1::PodStatus {
            pod_ip: Some(ip.into()),
            ..Default::default()
        });
        Change::Apply(Object::Pod(pod))
    }

    // The clock is tokio's, paused: it moves only while every task waits on a timer, so "at
    // once" is exactly zero and a burst's timing does not depend on this machine's speed.
    #[tokio::test(start_paused = true)]
    async fn a_lone_change_is_pushed_at_once_and_a_burst_coalesces() {
        let (tx, rx) = mpsc::channel(64);
        let (snap_tx, mut snap_rx) = watch::channel(Arc::new(Snapshot::default()));
        let debounce = Debounce {
            quiet: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        tokio::spawn(run(
            rx,
            IndexConfig::default(),
            debounce,
            snap_tx,
            Arc::new(Published::default()),
        ));
        // Only one kind listed: nothing is published yet.
        tx.send(Change::replace(vec![Kind::Namespace], vec![]))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(snap_rx.borrow().generation, 0);
        tx.send(Change::replace(Kind::ALL.to_vec(), vec![]))
            .await
            .unwrap();
        let (_, took) = next_push(&mut snap_rx, 0).await;
        assert_eq!(
            took,
            Duration::ZERO,
            "the first sync waits for nothing more"
        );

        // A burst right after a push: 30 namespaces and a pod become one push, once the
        // burst has been quiet for 100 ms.
        for i in 0..30 {
            tx.send(Change::Apply(ns(&format!("ns-{i}"))))
                .await
                .unwrap();
        }
        tx.send(pod("p", "10.0.0.1")).await.unwrap();
        let (s, took) = next_push(&mut snap_rx, 1).await;
        assert_eq!(s.generation, 2, "one push for the burst");
        assert_eq!(took, debounce.quiet);
        assert_eq!(s.sets[ambient_proto::ADDRESS_TYPE_URL].len(), 1);

        // Quiet for longer than the quiet period: the next change alone goes at once, through
        // the index kept from the last push.
        tokio::time::sleep(Duration::from_millis(150)).await;
        tx.send(pod("q", "10.0.0.2")).await.unwrap();
        let (s, took) = next_push(&mut snap_rx, 2).await;
        assert_eq!((s.generation, took), (3, Duration::ZERO));
        assert_eq!(
            s.changed[ambient_proto::ADDRESS_TYPE_URL],
            BTreeSet::from(["Kubernetes//Pod/ns-1/q".to_string()])
        );
        assert_eq!(s.sets[ambient_proto::ADDRESS_TYPE_URL].len(), 2);

        // A burst that never goes quiet is still pushed after `max_delay`.
        for i in 0..30u32 {
            tx.send(pod(&format!("r{i}"), &format!("10.0.1.{i}")))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            snap_rx.borrow().generation,
            4,
            "one push at max_delay, mid-burst"
        );
        let (s, _) = next_push(&mut snap_rx, 4).await;
        assert_eq!(s.generation, 5);
        assert_eq!(s.sets[ambient_proto::ADDRESS_TYPE_URL].len(), 32);
    }
}
