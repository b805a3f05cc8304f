//! Istio's standard metric labels, as both proxies attach them, and the per-thread cache that
//! keeps a proxy from building them more than once per label set; the recorder's upkeep.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use ambient_proto::identity::Identity;
use metrics::Label;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::state::{Service, Workload};

/// How often [`spawn_upkeep`] drains histograms: the exporter's own default.
pub const UPKEEP_PERIOD: Duration = Duration::from_secs(5);

/// Drains the recorder's histograms every `period` on the current tokio runtime.
///
/// A histogram handle appends every sample to a queue that only a scrape or an upkeep empties
/// into the exported buckets; a recorder installed with `install_recorder` runs no upkeep of its
/// own, so without this a process nobody scrapes grows by every sample it records (the
/// waypoint's three per request: +0.17 MB a minute in the soak). Every component that installs a
/// recorder calls this once, inside its runtime.
pub fn spawn_upkeep(handle: PrometheusHandle, period: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate: nothing to drain yet
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    })
}

/// A label value, or Istio's `unknown` when there is none.
pub fn or_unknown(s: Option<&str>) -> String {
    match s {
        Some(v) if !v.is_empty() => v.to_string(),
        _ => "unknown".to_string(),
    }
}

/// One side of a connection or request, as Istio's standard metrics label it.
#[derive(Clone, Copy, Default)]
pub struct Peer<'a> {
    pub workload: Option<&'a Workload>,
    pub identity: Option<&'a Identity>,
}

/// Istio's standard labels that name both peers, in Istio's order: `reporter`, the source's
/// workload, principal and canonical service, then the destination's, then the destination
/// service. ztunnel and the waypoint each append the labels of their own layer.
pub fn peer_labels(
    reporter: &'static str,
    src: Peer<'_>,
    dst: Peer<'_>,
    service: Option<&Service>,
) -> Vec<Label> {
    let canonical = |w: Option<&Workload>| {
        or_unknown(w.map(|w| {
            if w.canonical_name.is_empty() {
                w.telemetry_name()
            } else {
                &w.canonical_name
            }
        }))
    };
    const NAMES: [[&str; 10]; 2] = [
        [
            "source_workload",
            "source_workload_namespace",
            "source_principal",
            "source_app",
            "source_version",
            "source_canonical_service",
            "source_canonical_revision",
            "source_cluster",
            "source_region",
            "source_zone",
        ],
        [
            "destination_workload",
            "destination_workload_namespace",
            "destination_principal",
            "destination_app",
            "destination_version",
            "destination_canonical_service",
            "destination_canonical_revision",
            "destination_cluster",
            "destination_region",
            "destination_zone",
        ],
    ];
    let mut labels = Vec::with_capacity(27);
    labels.push(Label::new("reporter", reporter));
    for (names, peer) in NAMES.iter().zip([src, dst]) {
        let w = peer.workload;
        let principal = peer
            .identity
            .map(|i| i.to_string())
            .unwrap_or_else(|| "unknown".into());
        let values = [
            or_unknown(w.map(|w| w.telemetry_name())),
            or_unknown(w.map(|w| w.namespace.as_str())),
            principal,
            canonical(w),
            or_unknown(w.map(|w| w.canonical_revision.as_str())),
            canonical(w),
            or_unknown(w.map(|w| w.canonical_revision.as_str())),
            or_unknown(w.map(|w| w.cluster_id.as_str())),
            or_unknown(w.map(|w| w.region.as_str())),
            or_unknown(w.map(|w| w.zone.as_str())),
        ];
        labels.extend(names.iter().zip(values).map(|(&n, v)| Label::new(n, v)));
    }
    labels.extend([
        Label::new(
            "destination_service",
            or_unknown(service.map(|s| s.hostname.as_str())),
        ),
        Label::new(
            "destination_service_name",
            or_unknown(service.map(|s| s.name.as_str())),
        ),
        Label::new(
            "destination_service_namespace",
            or_unknown(service.map(|s| s.namespace.as_str())),
        ),
    ]);
    labels
}

/// An optional object's address, for hashing a label-set key.
pub fn address<T>(a: Option<&Arc<T>>) -> usize {
    a.map_or(0, |a| Arc::as_ptr(a) as usize)
}

/// An object (workload, service) that a label-set key names by address, without keeping it
/// alive: when the control plane replaces or removes the object, its contents are freed and
/// the entry becomes stale. The weak reference keeps the allocation itself, so no new object
/// can take the address while the entry exists.
pub struct ObjectRef<T>(Option<Weak<T>>);

impl<T> ObjectRef<T> {
    pub fn of(object: Option<&Arc<T>>) -> Self {
        ObjectRef(object.map(Arc::downgrade))
    }

    /// Whether this names `object` (both none counts).
    pub fn is(&self, object: Option<&Arc<T>>) -> bool {
        match (&self.0, object) {
            (Some(weak), Some(arc)) => std::ptr::eq(weak.as_ptr(), Arc::as_ptr(arc)),
            (None, None) => true,
            _ => false,
        }
    }

    /// Whether the object named is gone.
    pub fn is_gone(&self) -> bool {
        self.0.as_ref().is_some_and(|weak| weak.strong_count() == 0)
    }
}

/// A label-set key that can outlive what it names.
pub trait LabelSetKey {
    /// The key names an object that is gone: nothing will look it up again.
    fn is_stale(&self) -> bool;
}

/// Metric handles by label set, for one thread (so the lookup takes no lock): building Istio's
/// labels and finding them in the registry costs more than the rest of a connection's or a
/// request's accounting, so it is done once per label set.
///
/// Entries are found by the hash of their key (a bucket holds the rare keys that share a
/// hash). Every [`LabelSetCache::SWEEP_EVERY`] new entries, the entries whose objects are gone
/// are dropped, so a control plane that keeps replacing objects (pod churn changes a
/// service's endpoints) does not grow the cache; past [`LabelSetCache::CAPACITY`] live entries
/// it starts over, which bounds it whatever the keys.
pub struct LabelSetCache<K, V> {
    entries: usize,
    sweep_at: usize,
    by_hash: HashMap<u64, Vec<(K, V)>>,
}

impl<K, V> Default for LabelSetCache<K, V> {
    fn default() -> Self {
        LabelSetCache {
            entries: 0,
            sweep_at: Self::SWEEP_EVERY,
            by_hash: HashMap::new(),
        }
    }
}

impl<K, V> LabelSetCache<K, V> {
    pub const CAPACITY: usize = 1024;
    pub const SWEEP_EVERY: usize = 64;
}

impl<K: LabelSetKey, V: Clone> LabelSetCache<K, V> {
    /// The handles whose key `matches`, or those `register` makes (with their key).
    pub fn get_or_register(
        &mut self,
        hash: u64,
        matches: impl Fn(&K) -> bool,
        register: impl FnOnce() -> (K, V),
    ) -> V {
        if let Some((_, v)) = self
            .by_hash
            .get(&hash)
            .and_then(|bucket| bucket.iter().find(|(k, _)| matches(k)))
        {
            return v.clone();
        }
        if self.entries >= self.sweep_at {
            self.sweep();
        }
        if self.entries >= Self::CAPACITY {
            *self = LabelSetCache::default();
        }
        let (key, value) = register();
        self.entries += 1;
        self.by_hash
            .entry(hash)
            .or_default()
            .push((key, value.clone()));
        value
    }

    /// Drops the entries whose keys are stale.
    fn sweep(&mut self) {
        self.by_hash.retain(|_, bucket| {
            bucket.retain(|(k, _)| !k.is_stale());
            !bucket.is_empty()
        });
        self.entries = self.by_hash.values().map(Vec::len).sum();
        self.sweep_at = self.entries + Self::SWEEP_EVERY;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl LabelSetKey for u32 {
        fn is_stale(&self) -> bool {
            false
        }
    }

    #[test]
    fn label_set_cache_registers_once_per_key_and_starts_over_when_full() {
        let mut cache: LabelSetCache<u32, u32> = LabelSetCache::default();
        let mut registered = 0;
        let mut get = |cache: &mut LabelSetCache<u32, u32>, key: u32| {
            // Every key shares one hash bucket: `matches` must tell them apart.
            cache.get_or_register(
                7,
                |k| *k == key,
                || {
                    registered += 1;
                    (key, key * 10)
                },
            )
        };
        assert_eq!(get(&mut cache, 1), 10);
        assert_eq!(get(&mut cache, 2), 20);
        assert_eq!(get(&mut cache, 1), 10);
        for key in 3..=LabelSetCache::<u32, u32>::CAPACITY as u32 {
            get(&mut cache, key);
        }
        assert_eq!(cache.entries, LabelSetCache::<u32, u32>::CAPACITY);
        // Full: the next new key empties the cache first.
        get(&mut cache, 5000);
        assert_eq!(cache.entries, 1);
        assert_eq!(get(&mut cache, 1), 10, "re-registered after the restart");
        assert_eq!(registered, LabelSetCache::<u32, u32>::CAPACITY + 2);
    }

    /// Counts its drops: the contents of an object the control plane replaced must be freed.
    struct Object(Arc<std::sync::atomic::AtomicUsize>);

    impl Drop for Object {
        fn drop(&mut self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    impl LabelSetKey for ObjectRef<Object> {
        fn is_stale(&self) -> bool {
            self.is_gone()
        }
    }

    #[test]
    fn entries_of_replaced_objects_are_swept_and_live_ones_kept() {
        let dropped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut cache: LabelSetCache<ObjectRef<Object>, usize> = LabelSetCache::default();
        let mut registered = 0;
        let mut get = |cache: &mut LabelSetCache<_, _>, object: &Arc<Object>| {
            cache.get_or_register(
                address(Some(object)) as u64,
                |k: &ObjectRef<Object>| k.is(Some(object)),
                || {
                    registered += 1;
                    (ObjectRef::of(Some(object)), registered)
                },
            )
        };
        let kept = Arc::new(Object(dropped.clone()));
        let first = get(&mut cache, &kept);
        // A service replaced on every push, 1,000 times: each version gets an entry while it
        // lives, and is freed as soon as the state lets it go.
        for _ in 0..1000 {
            let version = Arc::new(Object(dropped.clone()));
            get(&mut cache, &version);
            assert_eq!(
                get(&mut cache, &kept),
                first,
                "the live object's entry stays"
            );
        }
        assert_eq!(dropped.load(std::sync::atomic::Ordering::Relaxed), 1000);
        assert!(
            cache.entries <= LabelSetCache::<ObjectRef<Object>, usize>::SWEEP_EVERY + 1,
            "{} entries",
            cache.entries
        );
        assert_eq!(registered, 1001, "the live object registered once");
        assert!(ObjectRef::<Object>::of(None).is(None));
        assert!(!ObjectRef::of(Some(&kept)).is(None));
        assert!(!ObjectRef::of(Some(&kept)).is_gone());
    }
}
