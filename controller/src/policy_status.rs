//! Writes each LocalRateLimitPolicy's `status` in Kubernetes: the `Accepted` condition the
//! index computed (with `observedGeneration`; `lastTransitionTime` kept while the condition's
//! status stays the same), by server-side apply of the status subresource.
//!
//! A write happens when what the index says differs from what was last written (or read, on
//! the first look at a policy), so a status write, which the policy watch sees as a change,
//! does not cause another.

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::deployer::FIELD_MANAGER;
use crate::deployer::status::rfc3339;
use crate::index::l7::ratelimit::PolicyStatus;
use crate::model::LocalRateLimitPolicy;
use crate::xds::Snapshot;

/// What a written condition says: (status, reason, message, observedGeneration).
type Said = (bool, String, String, Option<i64>);

fn said(s: &PolicyStatus) -> Said {
    (
        s.accepted,
        s.reason.clone(),
        s.message.clone(),
        s.generation,
    )
}

/// The status object to apply: `Accepted` as `s` says, keeping `previous`'s transition time
/// when its status is the same.
pub fn status_json(s: &PolicyStatus, previous: Option<&LocalRateLimitPolicy>, now: &str) -> Value {
    let status = if s.accepted { "True" } else { "False" };
    let since = previous
        .and_then(|p| p.status.as_ref())
        .and_then(|st| st.conditions.iter().find(|c| c.type_ == "Accepted"))
        .filter(|c| c.status == status)
        .and_then(|c| serde_json::to_value(&c.last_transition_time).ok())
        .filter(Value::is_string)
        .unwrap_or_else(|| json!(now));
    let mut condition = json!({
        "type": "Accepted",
        "status": status,
        "reason": s.reason,
        "message": s.message,
        "lastTransitionTime": since,
    });
    if let Some(g) = s.generation {
        condition["observedGeneration"] = json!(g);
    }
    json!({"conditions": [condition]})
}

/// Whether `policy`'s current status already says what `s` says.
fn shows(policy: &LocalRateLimitPolicy, s: &PolicyStatus) -> bool {
    let status = if s.accepted { "True" } else { "False" };
    policy.status.as_ref().is_some_and(|st| {
        st.conditions.iter().any(|c| {
            c.type_ == "Accepted"
                && c.status == status
                && c.reason == s.reason
                && c.message == s.message
                && c.observed_generation == s.generation
        })
    })
}

/// Runs until the snapshot channel closes.
pub async fn run(client: Client, mut snapshots: watch::Receiver<Arc<Snapshot>>) {
    let mut written: BTreeMap<(String, String), Said> = BTreeMap::new();
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        if snapshot.generation > 0 {
            written.retain(|(ns, name), _| {
                snapshot
                    .policies
                    .iter()
                    .any(|p| &p.namespace == ns && &p.name == name)
            });
            for s in snapshot.policies.iter() {
                let key = (s.namespace.clone(), s.name.clone());
                if written.get(&key) == Some(&said(s)) {
                    continue;
                }
                match write(&client, s).await {
                    Ok(()) => {
                        written.insert(key, said(s));
                    }
                    Err(e) => warn!(
                        policy = %format!("{}/{}", s.namespace, s.name),
                        error = %e,
                        "writing the status of a LocalRateLimitPolicy failed; retried on the next change"
                    ),
                }
            }
        }
        if snapshots.changed().await.is_err() {
            return;
        }
    }
}

async fn write(client: &Client, s: &PolicyStatus) -> Result<(), kube::Error> {
    let api: Api<LocalRateLimitPolicy> = Api::namespaced(client.clone(), &s.namespace);
    let Some(current) = api.get_opt(&s.name).await? else {
        // Deleted meanwhile; the next snapshot drops it.
        return Ok(());
    };
    if shows(&current, s) {
        return Ok(());
    }
    let now = rfc3339(time::OffsetDateTime::now_utc());
    let patch = json!({
        "apiVersion": "policy.ambient-rs.io/v1alpha1",
        "kind": "LocalRateLimitPolicy",
        "metadata": {"name": s.name, "namespace": s.namespace},
        "status": status_json(s, Some(&current), &now),
    });
    api.patch_status(
        &s.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    info!(
        policy = %format!("{}/{}", s.namespace, s.name),
        accepted = s.accepted,
        reason = %s.reason,
        "LocalRateLimitPolicy status written"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::policy::PolicyStatus as Written;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn computed(accepted: bool) -> PolicyStatus {
        PolicyStatus {
            kind: "LocalRateLimitPolicy".into(),
            namespace: "shop".into(),
            name: "rl".into(),
            accepted,
            reason: if accepted {
                "Accepted"
            } else {
                "TargetNotFound"
            }
            .into(),
            message: "m".into(),
            attached: Vec::new(),
            generation: Some(2),
        }
    }

    fn with(status: &Value) -> LocalRateLimitPolicy {
        let conditions: Vec<Condition> =
            serde_json::from_value(status["conditions"].clone()).unwrap();
        LocalRateLimitPolicy {
            status: Some(Written { conditions }),
            ..Default::default()
        }
    }

    #[test]
    fn status_keeps_its_transition_time_until_the_status_changes() {
        let first = status_json(&computed(true), None, "2026-12-06T10:00:00Z");
        let c = &first["conditions"][0];
        assert_eq!(
            (
                c["type"].as_str(),
                c["status"].as_str(),
                c["observedGeneration"].as_i64()
            ),
            (Some("Accepted"), Some("True"), Some(2))
        );
        let policy = with(&first);
        assert!(shows(&policy, &computed(true)));
        assert!(!shows(&policy, &computed(false)));
        let same = status_json(&computed(true), Some(&policy), "2026-12-06T11:00:00Z");
        assert_eq!(
            same["conditions"][0]["lastTransitionTime"],
            "2026-12-06T10:00:00Z"
        );
        let flipped = status_json(&computed(false), Some(&policy), "2026-12-06T11:00:00Z");
        assert_eq!(
            flipped["conditions"][0]["lastTransitionTime"],
            "2026-12-06T11:00:00Z"
        );
        assert_eq!(flipped["conditions"][0]["reason"], "TargetNotFound");
        // A round trip through the typed model reads the time back.
        let t: Time = serde_json::from_value(json!("2026-12-06T10:00:00Z")).unwrap();
        assert_eq!(policy.status.unwrap().conditions[0].last_transition_time, t);
    }
}
