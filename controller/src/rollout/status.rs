//! Writes each Rollout's `status` in Kubernetes, as the engine judges it: `phase`, `step`,
//! `steps`, `canaryWeight`, `message` and two conditions, `Progressing` (True while steps are
//! being walked) and `Succeeded` (True once promoted, False once rolled back, paused or
//! invalid, Unknown before), each keeping its `lastTransitionTime` while its status holds.
//! Written by server-side apply of the status subresource, when what it says changes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use tracing::{info, warn};

use super::engine::{Phase, RolloutStatus};
use crate::deployer::FIELD_MANAGER;
use crate::deployer::status::rfc3339;
use crate::model::Rollout;
use crate::push::Published;

/// The conditions `s` implies: (type, status, reason).
fn conditions(s: &RolloutStatus) -> [(&'static str, &'static str, String); 2] {
    let reason = format!("{:?}", s.phase);
    let progressing = if s.phase == Phase::Progressing {
        "True"
    } else {
        "False"
    };
    let succeeded = match s.phase {
        Phase::Promoted => "True",
        Phase::Progressing => "Unknown",
        _ => "False",
    };
    [
        ("Progressing", progressing, reason.clone()),
        ("Succeeded", succeeded, reason),
    ]
}

/// The `status` to apply, keeping transition times from `previous` (the object's current
/// status) for conditions whose status is unchanged.
pub fn status_json(s: &RolloutStatus, previous: Option<&Value>, now: &str) -> Value {
    let old = |kind: &str, status: &str| {
        previous
            .and_then(|p| p["conditions"].as_array())
            .and_then(|cs| {
                cs.iter()
                    .find(|c| c["type"] == kind && c["status"] == status)
            })
            .and_then(|c| c["lastTransitionTime"].as_str().map(str::to_string))
    };
    let conditions: Vec<Value> = conditions(s)
        .into_iter()
        .map(|(kind, status, reason)| {
            let mut c = json!({
                "type": kind,
                "status": status,
                "reason": reason,
                "message": s.message,
                "lastTransitionTime": old(kind, status).unwrap_or_else(|| now.to_string()),
            });
            if let Some(g) = s.generation {
                c["observedGeneration"] = json!(g);
            }
            c
        })
        .collect();
    json!({
        "phase": format!("{:?}", s.phase),
        "step": s.step,
        "steps": s.steps,
        "canaryWeight": s.canary_weight,
        "message": s.message,
        "conditions": conditions,
    })
}

/// What a status says, for "has it changed".
fn said(s: &RolloutStatus) -> (Phase, usize, Option<u32>, String, Option<i64>) {
    (
        s.phase,
        s.step,
        s.canary_weight,
        s.message.clone(),
        s.generation,
    )
}

type Said = (Phase, usize, Option<u32>, String, Option<i64>);

/// Runs forever: every second, writes the statuses that changed.
pub async fn run(client: Client, published: Arc<Published>) {
    let mut written: BTreeMap<(String, String), Said> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let statuses = published.rollouts.lock().expect("poisoned").clone();
        written.retain(|(ns, name), _| {
            statuses
                .iter()
                .any(|s| &s.namespace == ns && &s.name == name)
        });
        for s in &statuses {
            let key = (s.namespace.clone(), s.name.clone());
            if written.get(&key) == Some(&said(s)) {
                continue;
            }
            match write(&client, s).await {
                Ok(()) => {
                    written.insert(key, said(s));
                }
                Err(e) => warn!(
                    rollout = %format!("{}/{}", s.namespace, s.name),
                    error = %e,
                    "writing a Rollout's status failed; retried in a second"
                ),
            }
        }
    }
}

async fn write(client: &Client, s: &RolloutStatus) -> Result<(), kube::Error> {
    let api: Api<Rollout> = Api::namespaced(client.clone(), &s.namespace);
    let Some(current) = api.get_opt(&s.name).await? else {
        return Ok(());
    };
    let now = rfc3339(time::OffsetDateTime::now_utc());
    let patch = json!({
        "apiVersion": "rollouts.ambient-rs.io/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": s.name, "namespace": s.namespace},
        "status": status_json(s, current.status.as_ref(), &now),
    });
    api.patch_status(
        &s.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    info!(
        rollout = %format!("{}/{}", s.namespace, s.name),
        phase = ?s.phase,
        weight = ?s.canary_weight,
        "Rollout status written"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(phase: Phase) -> RolloutStatus {
        RolloutStatus {
            namespace: "shop".into(),
            name: "web".into(),
            phase,
            step: 1,
            steps: 2,
            canary_weight: Some(20),
            message: "m".into(),
            analysis: None,
            events: Vec::new(),
            elapsed_ms: 0,
            generation: Some(4),
        }
    }

    #[test]
    fn conditions_follow_the_phase_and_keep_their_transition_times() {
        let first = status_json(&status(Phase::Progressing), None, "T1");
        assert_eq!(first["phase"], "Progressing");
        assert_eq!(first["canaryWeight"], 20);
        let c = &first["conditions"];
        assert_eq!(
            (c[0]["type"].as_str(), c[0]["status"].as_str()),
            (Some("Progressing"), Some("True"))
        );
        assert_eq!(c[1]["status"], "Unknown");
        assert_eq!(c[0]["observedGeneration"], 4);
        let done = status_json(&status(Phase::RolledBack), Some(&first), "T2");
        let c = &done["conditions"];
        assert_eq!(
            (c[0]["status"].as_str(), c[0]["lastTransitionTime"].as_str()),
            (Some("False"), Some("T2"))
        );
        assert_eq!(
            (c[1]["status"].as_str(), c[1]["reason"].as_str()),
            (Some("False"), Some("RolledBack"))
        );
        let again = status_json(&status(Phase::RolledBack), Some(&done), "T3");
        assert_eq!(again["conditions"][1]["lastTransitionTime"], "T2");
    }
}
