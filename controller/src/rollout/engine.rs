//! The rollout engine: for each Rollout, which step it is at, the canary's weight, and
//! whether to go on, promote or roll back.
//!
//! A rollout starts at its first step whenever the Rollout's spec changes. Every tick the
//! canary's last analysis window (`analysis.interval`, ending now, all waypoint instances
//! summed) is judged once it holds `minRequests`: a success rate under the gate or a p99
//! over it rolls back at once (canary weight 0). A step ends when its pause has passed and a
//! window that began within the step passed; after the last step the canary takes all
//! traffic (promoted). The `rollouts.ambient-rs.io/action` label promotes or aborts by hand.
//! If the HTTPRoute changes during the rollout, the engine reports it and stops setting
//! weights, leaving the route as the user wrote it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::health::{HealthStore, Window};
use crate::index::l7::rollout::RolloutView;
use crate::model::Change;
use crate::push::Published;
use crate::xds::Snapshot;

/// How often the engine looks at the health reports.
pub const TICK: Duration = Duration::from_millis(250);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Phase {
    /// Walking the steps.
    Progressing,
    /// Every step passed: the canary takes all traffic.
    Promoted,
    /// A gate failed (or an abort): the stable takes all traffic.
    RolledBack,
    /// The route was edited during the rollout: weights are the route's own.
    Paused,
    /// The spec cannot be run, or its route does not exist.
    Invalid,
}

/// The canary's last judged window.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisView {
    pub window_ms: u64,
    pub requests: u64,
    pub success_rate: f64,
    /// `null`: no requests, or past the largest bucket.
    pub p99_ms: Option<f64>,
}

/// A Rollout's status, as `/debug/rollouts` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    pub namespace: String,
    pub name: String,
    pub phase: Phase,
    /// The current step (1-based); `steps` + 1 once promoted.
    pub step: usize,
    pub steps: usize,
    /// The canary's share of requests now (`null`: the route's own weights).
    pub canary_weight: Option<u32>,
    pub message: String,
    pub analysis: Option<AnalysisView>,
    /// What happened, oldest first (steps reached, the verdict).
    pub events: Vec<String>,
    /// Milliseconds from the start of this rollout to now, or to its verdict (promoted or
    /// rolled back).
    pub elapsed_ms: u64,
    #[serde(skip)]
    pub generation: Option<i64>,
}

struct Run {
    spec_version: String,
    route_version: Option<String>,
    started: Instant,
    finished: Option<Instant>,
    step: usize,
    step_started: Instant,
    /// A window that began within this step held enough requests and passed.
    step_passed: bool,
    phase: Phase,
    weight: Option<u32>,
    message: String,
    analysis: Option<AnalysisView>,
    events: Vec<String>,
}

impl Run {
    fn new(v: &RolloutView, now: Instant) -> Run {
        let weight = v.steps[0].0;
        Run {
            spec_version: v.spec_version.clone(),
            route_version: v.route_version.clone(),
            started: now,
            finished: None,
            step: 0,
            step_started: now,
            step_passed: false,
            phase: Phase::Progressing,
            weight: Some(weight),
            message: String::new(),
            analysis: None,
            events: vec![format!("step 1/{}: canary at {weight} %", v.steps.len())],
        }
    }

    fn event(&mut self, v: &RolloutView, text: String) {
        info!(rollout = %format!("{}/{}", v.namespace, v.name), "{text}");
        self.events.push(text);
    }

    fn finish(&mut self, v: &RolloutView, phase: Phase, weight: u32, why: String, now: Instant) {
        self.finished = Some(now);
        self.phase = phase;
        self.weight = Some(weight);
        self.message = why.clone();
        self.event(v, why);
    }
}

/// Every Rollout's run.
#[derive(Default)]
pub struct Engine {
    runs: BTreeMap<(String, String), Run>,
}

impl Engine {
    /// One look at every Rollout: the canary weights to apply and each one's status.
    pub fn tick(
        &mut self,
        views: &[RolloutView],
        health: &HealthStore,
        now: Instant,
    ) -> (BTreeMap<(String, String), u32>, Vec<RolloutStatus>) {
        self.runs
            .retain(|(ns, name), _| views.iter().any(|v| &v.namespace == ns && &v.name == name));
        let mut weights = BTreeMap::new();
        let mut statuses = Vec::new();
        for v in views {
            let key = (v.namespace.clone(), v.name.clone());
            let invalid = v.error.clone().or_else(|| {
                v.route_version
                    .is_none()
                    .then(|| "the HTTPRoute it names does not exist".to_string())
            });
            if let Some(why) = invalid {
                self.runs.remove(&key);
                statuses.push(RolloutStatus {
                    namespace: v.namespace.clone(),
                    name: v.name.clone(),
                    phase: Phase::Invalid,
                    step: 0,
                    steps: v.steps.len(),
                    canary_weight: None,
                    message: why,
                    analysis: None,
                    events: Vec::new(),
                    elapsed_ms: 0,
                    generation: v.generation,
                });
                continue;
            }
            let run = match self.runs.get_mut(&key) {
                Some(r) if r.spec_version == v.spec_version => r,
                _ => {
                    let r = Run::new(v, now);
                    info!(rollout = %format!("{}/{}", v.namespace, v.name), "rollout started");
                    self.runs.insert(key.clone(), r);
                    self.runs.get_mut(&key).expect("just inserted")
                }
            };
            advance(run, v, health, now);
            if let Some(w) = run.weight {
                weights.insert(key, w);
            }
            statuses.push(RolloutStatus {
                namespace: v.namespace.clone(),
                name: v.name.clone(),
                phase: run.phase,
                step: match run.phase {
                    Phase::Promoted => v.steps.len() + 1,
                    _ => run.step + 1,
                },
                steps: v.steps.len(),
                canary_weight: run.weight,
                message: run.message.clone(),
                analysis: run.analysis.clone(),
                events: run.events.clone(),
                elapsed_ms: run
                    .finished
                    .unwrap_or(now)
                    .duration_since(run.started)
                    .as_millis() as u64,
                generation: v.generation,
            });
        }
        (weights, statuses)
    }
}

/// One tick of one rollout.
fn advance(run: &mut Run, v: &RolloutView, health: &HealthStore, now: Instant) {
    match (v.action.as_deref(), run.phase) {
        (Some("abort"), Phase::Progressing | Phase::Promoted | Phase::Paused) => {
            return run.finish(
                v,
                Phase::RolledBack,
                0,
                "aborted by hand: stable at 100 %".into(),
                now,
            );
        }
        (Some("promote"), Phase::Progressing | Phase::Paused) => {
            return run.finish(
                v,
                Phase::Promoted,
                100,
                "promoted by hand: canary at 100 %".into(),
                now,
            );
        }
        _ => {}
    }
    if run.phase != Phase::Progressing {
        return;
    }
    if v.route_version != run.route_version {
        run.phase = Phase::Paused;
        run.weight = None;
        run.message = "the HTTPRoute was edited during the rollout: its weights are left as written (change the Rollout to start again)".into();
        let text = run.message.clone();
        run.event(v, text);
        return;
    }
    let interval = Duration::from_millis(v.interval_ms);
    let w: Window = health.window(&v.canary, interval, now);
    let (weight, pause_ms) = v.steps[run.step];
    if w.requests >= v.min_requests {
        run.analysis = Some(AnalysisView {
            window_ms: v.interval_ms,
            requests: w.requests,
            success_rate: w.success_rate(),
            p99_ms: w.p99_ms.filter(|p| p.is_finite()),
        });
        let failed = if w.success_rate() < v.success_rate {
            Some(format!(
                "success rate {:.1} % < {} % ({} of {} requests failed in the last {} ms)",
                w.success_rate(),
                v.success_rate,
                w.errors,
                w.requests,
                v.interval_ms
            ))
        } else {
            match (w.p99_ms, v.max_p99_ms) {
                (Some(p), Some(max)) if p > max => Some(format!(
                    "p99 {} > {max} ms over {} requests in the last {} ms",
                    if p.is_finite() {
                        format!("{p} ms")
                    } else {
                        "past every bucket".into()
                    },
                    w.requests,
                    v.interval_ms
                )),
                _ => None,
            }
        };
        if let Some(why) = failed {
            warn!(rollout = %format!("{}/{}", v.namespace, v.name), %why, "canary failed its gates: rolling back");
            return run.finish(
                v,
                Phase::RolledBack,
                0,
                format!("rolled back at step {} ({weight} %): {why}", run.step + 1),
                now,
            );
        }
        if now
            .checked_sub(interval)
            .is_some_and(|start| start >= run.step_started)
        {
            run.step_passed = true;
        }
    }
    let held = now.duration_since(run.step_started) >= Duration::from_millis(pause_ms);
    if held && run.step_passed {
        run.step += 1;
        run.step_started = now;
        run.step_passed = false;
        if run.step == v.steps.len() {
            return run.finish(
                v,
                Phase::Promoted,
                100,
                format!("promoted: {} steps passed, canary at 100 %", v.steps.len()),
                now,
            );
        }
        let next = v.steps[run.step].0;
        run.weight = Some(next);
        run.event(
            v,
            format!(
                "step {}/{}: canary at {next} %",
                run.step + 1,
                v.steps.len()
            ),
        );
    }
    run.message = format!(
        "step {}/{} at {} %: {}",
        run.step + 1,
        v.steps.len(),
        run.weight.unwrap_or(0),
        if run.step_passed {
            "analysis passed, holding for the pause".to_string()
        } else {
            format!(
                "waiting for a full window with at least {} canary requests ({} so far)",
                v.min_requests, w.requests
            )
        }
    );
}

/// Runs the engine until the snapshot channel closes: every [`TICK`] and on every new
/// snapshot, sends changed weights to the push loop and publishes the statuses.
pub async fn run(
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    health: Arc<HealthStore>,
    changes: mpsc::Sender<Change>,
    published: Arc<Published>,
) {
    let mut engine = Engine::default();
    let mut sent: Option<BTreeMap<(String, String), u32>> = None;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
        let views = snapshots.borrow_and_update().rollouts.clone();
        let (weights, st) = engine.tick(&views, &health, Instant::now());
        *published.rollouts.lock().expect("poisoned") = st;
        if sent.as_ref() != Some(&weights) {
            if changes
                .send(Change::RolloutWeights(weights.clone()))
                .await
                .is_err()
            {
                return;
            }
            sent = Some(weights);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ambient_proto::ambient::rollout::v1 as pb;

    const CANARY: &str = "shop/canary.shop.svc.cluster.local";

    fn view() -> RolloutView {
        RolloutView {
            namespace: "shop".into(),
            name: "web".into(),
            generation: Some(1),
            spec_version: "v1".into(),
            route_version: Some("r1".into()),
            stable: "shop/stable.shop.svc.cluster.local".into(),
            canary: CANARY.into(),
            steps: vec![(20, 2000), (50, 2000)],
            interval_ms: 1000,
            min_requests: 10,
            success_rate: 95.0,
            max_p99_ms: Some(500.0),
            action: None,
            error: None,
        }
    }

    /// Reports `requests` more canary requests (of which `errors` failed, all in the
    /// ≤ `bucket`-th bucket) at `at`.
    struct Reporter {
        requests: u64,
        errors: u64,
        latency: Vec<u64>,
    }

    impl Reporter {
        fn new() -> Self {
            Reporter {
                requests: 0,
                errors: 0,
                latency: vec![0; 4],
            }
        }
        fn send(
            &mut self,
            store: &HealthStore,
            at: Instant,
            requests: u64,
            errors: u64,
            bucket: usize,
        ) {
            self.requests += requests;
            self.errors += errors;
            self.latency[bucket] += requests;
            store.record(
                &pb::HealthReport {
                    instance: "shop/waypoint-0".into(),
                    gateway: "shop/waypoint".into(),
                    backends: vec![pb::BackendCounters {
                        service: CANARY.into(),
                        requests: self.requests,
                        errors: self.errors,
                        latency: self.latency.clone(),
                    }],
                    latency_bounds_ms: vec![10.0, 100.0, 1000.0],
                    uptime_ms: 0,
                },
                at,
            );
        }
    }

    fn weight(w: &BTreeMap<(String, String), u32>) -> Option<u32> {
        w.get(&("shop".to_string(), "web".to_string())).copied()
    }

    #[test]
    fn a_healthy_canary_is_promoted_step_by_step() {
        let store = HealthStore::default();
        let mut engine = Engine::default();
        let mut r = Reporter::new();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut seen = Vec::new();
        for i in 0..=40 {
            let now = t0 + ms(250 * i);
            r.send(&store, now, 5, 0, 1);
            let (w, st) = engine.tick(&[view()], &store, now);
            if seen.last() != Some(&weight(&w)) {
                seen.push(weight(&w));
            }
            if st[0].phase == Phase::Promoted {
                assert_eq!(st[0].events.len(), 3, "{:?}", st[0].events);
                break;
            }
        }
        assert_eq!(seen, [Some(20), Some(50), Some(100)]);
    }

    #[test]
    fn a_failing_canary_is_rolled_back_within_one_window() {
        let store = HealthStore::default();
        let mut engine = Engine::default();
        let mut r = Reporter::new();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let (w, _) = engine.tick(&[view()], &store, t0);
        assert_eq!(weight(&w), Some(20));
        // 5 requests a report, 40 % failing: the window holds 10 after two reports.
        r.send(&store, t0 + ms(250), 5, 2, 0);
        let (w, st) = engine.tick(&[view()], &store, t0 + ms(250));
        assert_eq!((weight(&w), st[0].phase), (Some(20), Phase::Progressing));
        r.send(&store, t0 + ms(500), 5, 2, 0);
        let (w, st) = engine.tick(&[view()], &store, t0 + ms(500));
        assert_eq!((weight(&w), st[0].phase), (Some(0), Phase::RolledBack));
        assert!(
            st[0].message.contains("success rate 60.0 % < 95 %"),
            "{}",
            st[0].message
        );
        // It stays rolled back, whatever comes next.
        r.send(&store, t0 + ms(5000), 100, 0, 0);
        let (w, _) = engine.tick(&[view()], &store, t0 + ms(5000));
        assert_eq!(weight(&w), Some(0));
    }

    #[test]
    fn a_slow_canary_fails_the_latency_gate() {
        let store = HealthStore::default();
        let mut engine = Engine::default();
        let mut r = Reporter::new();
        let t0 = Instant::now();
        engine.tick(&[view()], &store, t0);
        r.send(&store, t0 + Duration::from_millis(300), 20, 0, 2);
        let (_, st) = engine.tick(&[view()], &store, t0 + Duration::from_millis(300));
        assert_eq!(st[0].phase, Phase::RolledBack);
        assert!(
            st[0].message.contains("p99 1000 ms > 500 ms"),
            "{}",
            st[0].message
        );
    }

    #[test]
    fn no_verdict_without_traffic_and_actions_by_hand() {
        let store = HealthStore::default();
        let mut engine = Engine::default();
        let t0 = Instant::now();
        let (w, st) = engine.tick(&[view()], &store, t0 + Duration::from_secs(60));
        assert_eq!((weight(&w), st[0].phase), (Some(20), Phase::Progressing));
        assert!(
            st[0].message.contains("waiting for a full window"),
            "{}",
            st[0].message
        );
        let promote = RolloutView {
            action: Some("promote".into()),
            ..view()
        };
        let (w, st) = engine.tick(&[promote], &store, t0 + Duration::from_secs(61));
        assert_eq!((weight(&w), st[0].phase), (Some(100), Phase::Promoted));
        let abort = RolloutView {
            action: Some("abort".into()),
            ..view()
        };
        let (w, st) = engine.tick(&[abort], &store, t0 + Duration::from_secs(62));
        assert_eq!((weight(&w), st[0].phase), (Some(0), Phase::RolledBack));
        // A new spec starts over.
        let next = RolloutView {
            spec_version: "v2".into(),
            ..view()
        };
        let (w, st) = engine.tick(&[next], &store, t0 + Duration::from_secs(63));
        assert_eq!((weight(&w), st[0].phase), (Some(20), Phase::Progressing));
    }

    #[test]
    fn an_edited_route_is_reported_not_fought() {
        let store = HealthStore::default();
        let mut engine = Engine::default();
        let t0 = Instant::now();
        engine.tick(&[view()], &store, t0);
        let edited = RolloutView {
            route_version: Some("r2".into()),
            ..view()
        };
        let (w, st) = engine.tick(
            std::slice::from_ref(&edited),
            &store,
            t0 + Duration::from_secs(1),
        );
        assert_eq!((weight(&w), st[0].phase), (None, Phase::Paused));
        assert!(st[0].message.contains("edited"), "{}", st[0].message);
        let (w, _) = engine.tick(&[edited], &store, t0 + Duration::from_secs(2));
        assert_eq!(weight(&w), None, "the engine stays out of the way");
        let gone = RolloutView {
            route_version: None,
            ..view()
        };
        let (w, st) = engine.tick(&[gone], &store, t0 + Duration::from_secs(3));
        assert_eq!((weight(&w), st[0].phase), (None, Phase::Invalid));
    }
}
