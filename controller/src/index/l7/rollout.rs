//! `Rollout` (rollouts.ambient-rs.io/v1alpha1) in the index: each Rollout as the rollout
//! engine needs it ([`RolloutView`]), and the engine's canary weights applied to the rules of
//! the HTTPRoute it names.
//!
//! The engine ([`crate::rollout`]) decides a canary weight per Rollout; the index rewrites
//! the backends of every rule of the route that sends traffic to the stable or the canary
//! Service to `stable: 100 - weight, canary: weight` (each keeping its own filters). A Rollout
//! the engine has not decided on leaves the route as written, as does one whose route was
//! edited during the rollout (the engine withdraws its weight then).

use std::collections::BTreeMap;

use ambient_proto::ambient::waypoint::v1 as l7;
use serde::Serialize;

use super::{Out, ServiceKey, backend_name, parse_duration_ms, routes};
use crate::index::Context;
use crate::model::rollout::{ACTION_LABEL, Rollout};
use crate::model::{Kind, Object, ObjectKey};
use crate::xds::content_version;

/// Defaults of `spec.analysis`.
pub const DEFAULT_INTERVAL_MS: u64 = 10_000;
pub const DEFAULT_MIN_REQUESTS: u64 = 10;
pub const DEFAULT_SUCCESS_RATE: f64 = 99.0;

/// A Rollout as the engine judges it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutView {
    pub namespace: String,
    pub name: String,
    pub generation: Option<i64>,
    /// Changes when the spec does: a new rollout starts.
    pub spec_version: String,
    /// The route's spec fingerprint (`None`: the route does not exist).
    pub route_version: Option<String>,
    /// `namespace/hostname` of the stable and canary Services, as waypoints report them.
    pub stable: String,
    pub canary: String,
    /// (canary weight, pause in ms) per step.
    pub steps: Vec<(u32, u64)>,
    pub interval_ms: u64,
    pub min_requests: u64,
    /// Percent.
    pub success_rate: f64,
    pub max_p99_ms: Option<f64>,
    /// The action label (`promote`, `abort`), if set.
    pub action: Option<String>,
    /// Why the spec cannot be run, if it cannot.
    pub error: Option<String>,
}

/// Every Rollout, valid or not (an invalid one is reported and never run).
pub fn views(ctx: &Context<'_>, out: &mut Out) -> Vec<RolloutView> {
    ctx.state
        .rollouts()
        .map(|r| {
            let view = view(ctx, r);
            if let Some(e) = &view.error {
                out.warn(
                    &format!("Rollout/{}/{}", view.namespace, view.name),
                    format!("{e}; rollout not run"),
                );
            }
            view
        })
        .collect()
}

fn view(ctx: &Context<'_>, r: &Rollout) -> RolloutView {
    let namespace = r
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = r.metadata.name.clone().unwrap_or_default();
    let spec = &r.spec;
    let route = match ctx.state.get(&ObjectKey {
        kind: Kind::HttpRoute,
        namespace: namespace.clone(),
        name: spec.route_ref.name.clone(),
    }) {
        Some(Object::HttpRoute(route)) => Some(route),
        _ => None,
    };
    let route_version = route.map(|route| {
        content_version(
            serde_json::to_string(&route.spec)
                .unwrap_or_default()
                .as_bytes(),
        )
    });
    let mut error = None;
    let mut fail = |e: String| {
        if error.is_none() {
            error = Some(e);
        }
    };
    if !matches!(
        (spec.route_ref.group.as_str(), spec.route_ref.kind.as_str()),
        ("" | "gateway.networking.k8s.io", "" | "HTTPRoute")
    ) {
        fail(format!(
            "routeRef: only an HTTPRoute can be rolled out (not {} {})",
            spec.route_ref.group, spec.route_ref.kind
        ));
    }
    for (what, s) in [("stable", &spec.stable), ("canary", &spec.canary)] {
        if ctx.service(&namespace, &s.name).is_none() {
            fail(format!(
                "{what}: Service {namespace}/{} does not exist",
                s.name
            ));
        }
    }
    if spec.stable.name == spec.canary.name {
        fail("stable and canary are the same Service".into());
    }
    let mut steps = Vec::new();
    for (i, step) in spec.steps.iter().enumerate() {
        if step.weight > 100 {
            fail(format!("steps[{i}].weight {} is above 100", step.weight));
        }
        match parse_duration_ms(&step.pause) {
            Ok(ms) => steps.push((step.weight.min(100), ms)),
            Err(e) => fail(format!("steps[{i}].pause: {e}")),
        }
    }
    if steps.is_empty() {
        fail("needs at least one step".into());
    }
    let a = &spec.analysis;
    let interval_ms = match a.interval.as_deref().map(parse_duration_ms) {
        None => DEFAULT_INTERVAL_MS,
        Some(Ok(0)) => {
            fail("analysis.interval must be longer than 0".into());
            DEFAULT_INTERVAL_MS
        }
        Some(Ok(ms)) => ms,
        Some(Err(e)) => {
            fail(format!("analysis.interval: {e}"));
            DEFAULT_INTERVAL_MS
        }
    };
    let success_rate = a.success_rate.unwrap_or(DEFAULT_SUCCESS_RATE);
    if !(0.0..=100.0).contains(&success_rate) {
        fail(format!(
            "analysis.successRate {success_rate} is not a percentage"
        ));
    }
    let max_p99_ms = match a.max_p99.as_deref().map(parse_duration_ms) {
        None => None,
        Some(Ok(ms)) => Some(ms as f64),
        Some(Err(e)) => {
            fail(format!("analysis.maxP99: {e}"));
            None
        }
    };
    RolloutView {
        generation: r.metadata.generation,
        spec_version: content_version(serde_json::to_string(spec).unwrap_or_default().as_bytes()),
        route_version,
        stable: backend_name(ctx, &namespace, &spec.stable.name),
        canary: backend_name(ctx, &namespace, &spec.canary.name),
        steps,
        interval_ms,
        min_requests: a.min_requests.unwrap_or(DEFAULT_MIN_REQUESTS),
        success_rate,
        max_p99_ms,
        action: r
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(ACTION_LABEL))
            .cloned(),
        error,
        namespace,
        name,
    }
}

/// Rewrites the backends of the rules the engine's weights concern.
pub fn apply_weights(
    ctx: &Context<'_>,
    views: &[RolloutView],
    entries: &mut BTreeMap<ServiceKey, Vec<routes::Entry>>,
) {
    for v in views.iter().filter(|v| v.error.is_none()) {
        let Some(&weight) = ctx
            .state
            .rollout_weights()
            .get(&(v.namespace.clone(), v.name.clone()))
        else {
            continue;
        };
        let Some(Object::Rollout(r)) = ctx.state.get(&ObjectKey {
            kind: Kind::Rollout,
            namespace: v.namespace.clone(),
            name: v.name.clone(),
        }) else {
            continue;
        };
        let route_name = &r.spec.route_ref.name;
        for list in entries.values_mut() {
            for e in list.iter_mut() {
                if e.http_rule()
                    .is_none_or(|(ns, name, _)| ns != v.namespace || name != route_name)
                {
                    continue;
                }
                let backends = &e.route.backends;
                let find = |svc: &str| backends.iter().find(|b| b.service == svc).cloned();
                let (stable, canary) = (find(&v.stable), find(&v.canary));
                let Some(template) = stable.clone().or_else(|| canary.clone()) else {
                    // A rule that does not send to either Service is not the rollout's.
                    continue;
                };
                let backend = |found: Option<l7::Backend>, service: &str, port: Option<u16>, w| {
                    let mut b = found.unwrap_or_else(|| l7::Backend {
                        service: service.to_string(),
                        port: port.map(u32::from).unwrap_or(template.port),
                        weight: 0,
                        filters: Vec::new(),
                    });
                    b.weight = w;
                    b
                };
                let mut next = vec![
                    backend(stable, &v.stable, r.spec.stable.port, 100 - weight.min(100)),
                    backend(canary, &v.canary, r.spec.canary.port, weight.min(100)),
                ];
                next.retain(|b| b.weight > 0);
                e.route.backends = next;
            }
        }
    }
}
