//! A waypoint Gateway's `status` as the controller writes it: the index's `Accepted` and
//! `Programmed` conditions (with `observedGeneration`, and `lastTransitionTime` kept while a
//! condition's status stays the same) and `addresses` (the Service's cluster IP).

use serde_json::{Value, json};

use crate::index::l7::status::GatewayStatus;
use crate::model::gateway::Gateway;

/// What a status says, without the transition times: equal views need no write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusView {
    /// (type, status, reason, message, observedGeneration).
    pub conditions: Vec<(String, String, String, String, Option<i64>)>,
    /// (type, value).
    pub addresses: Vec<(String, String)>,
}

fn bool_status(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}

/// What the Gateway's current status says about the conditions we own.
pub fn current_view(gateway: &Gateway, owned: &[&str]) -> StatusView {
    let status = gateway.status.as_ref();
    let conditions = status
        .map(|s| {
            s.conditions
                .iter()
                .filter(|c| owned.contains(&c.type_.as_str()))
                .map(|c| {
                    (
                        c.type_.clone(),
                        c.status.clone(),
                        c.reason.clone(),
                        c.message.clone(),
                        c.observed_generation,
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let addresses = status
        .map(|s| {
            s.addresses
                .iter()
                .map(|a| (a.kind.clone().unwrap_or_default(), a.value.clone()))
                .collect()
        })
        .unwrap_or_default();
    StatusView {
        conditions,
        addresses,
    }
}

/// What the status should say.
pub fn desired_view(gateway: &Gateway, computed: &GatewayStatus) -> StatusView {
    StatusView {
        conditions: computed
            .conditions
            .iter()
            .map(|c| {
                (
                    c.kind.clone(),
                    bool_status(c.status).to_string(),
                    c.reason.clone(),
                    c.message.clone(),
                    gateway.metadata.generation,
                )
            })
            .collect(),
        addresses: computed
            .address
            .iter()
            .map(|ip| ("IPAddress".to_string(), ip.clone()))
            .collect(),
    }
}

/// The `status` to apply: `view`'s conditions, each keeping its previous
/// `lastTransitionTime` unless its status changed (then `now`, RFC 3339).
pub fn status_json(gateway: &Gateway, view: &StatusView, now: &str) -> Value {
    let previous = gateway
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let conditions: Vec<Value> = view
        .conditions
        .iter()
        .map(|(kind, status, reason, message, generation)| {
            let since = previous
                .iter()
                .find(|c| &c.type_ == kind && &c.status == status)
                .and_then(|c| serde_json::to_value(&c.last_transition_time).ok())
                .filter(Value::is_string)
                .unwrap_or_else(|| json!(now));
            let mut c = json!({
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastTransitionTime": since,
            });
            if let Some(g) = generation {
                c["observedGeneration"] = json!(g);
            }
            c
        })
        .collect();
    let mut status = json!({"conditions": conditions});
    if !view.addresses.is_empty() {
        status["addresses"] = view
            .addresses
            .iter()
            .map(|(kind, value)| json!({"type": kind, "value": value}))
            .collect();
    }
    status
}

/// `time` as Kubernetes writes timestamps (RFC 3339, seconds, UTC).
pub fn rfc3339(time: time::OffsetDateTime) -> String {
    let t = time.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::l7::status::GatewayCondition;

    fn computed(programmed: bool, address: Option<&str>) -> GatewayStatus {
        let cond = |kind: &str, status: bool, reason: &str| GatewayCondition {
            kind: kind.into(),
            status,
            reason: reason.into(),
            message: format!("{kind} message"),
        };
        GatewayStatus {
            namespace: "ns".into(),
            name: "w".into(),
            class: "istio-waypoint".into(),
            traffic_type: "service".into(),
            address: address.map(str::to_string),
            programmed,
            reason: String::new(),
            message: String::new(),
            conditions: vec![
                cond("Accepted", true, "Accepted"),
                cond(
                    "Programmed",
                    programmed,
                    if programmed {
                        "Programmed"
                    } else {
                        "NoInstances"
                    },
                ),
            ],
        }
    }

    fn with_status(g: &Gateway, status: Value) -> Gateway {
        let mut v = serde_json::to_value(g).unwrap();
        v["status"] = status;
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn status_round_trips_and_keeps_transition_times() {
        let mut g = Gateway::default();
        g.metadata.generation = Some(3);
        let first = desired_view(&g, &computed(false, None));
        assert_ne!(current_view(&g, &["Accepted", "Programmed"]), first);
        let s1 = status_json(&g, &first, "2026-01-01T00:00:00Z");
        assert!(s1.get("addresses").is_none());
        assert_eq!(s1["conditions"][1]["status"], "False");
        assert_eq!(s1["conditions"][1]["observedGeneration"], 3);
        let g = with_status(&g, s1);
        // Written back, it reads as what was desired: no further write.
        assert_eq!(current_view(&g, &["Accepted", "Programmed"]), first);

        let second = desired_view(&g, &computed(true, Some("10.96.0.9")));
        assert_ne!(current_view(&g, &["Accepted", "Programmed"]), second);
        let s2 = status_json(&g, &second, "2026-01-02T00:00:00Z");
        assert_eq!(
            s2["addresses"],
            json!([{"type": "IPAddress", "value": "10.96.0.9"}])
        );
        assert_eq!(
            s2["conditions"][0]["lastTransitionTime"], "2026-01-01T00:00:00Z",
            "Accepted did not change"
        );
        assert_eq!(
            s2["conditions"][1]["lastTransitionTime"], "2026-01-02T00:00:00Z",
            "Programmed did"
        );
        let g = with_status(&g, s2);
        assert_eq!(current_view(&g, &["Accepted", "Programmed"]), second);
    }

    #[test]
    fn timestamps_are_kubernetes_style() {
        let t = time::OffsetDateTime::from_unix_timestamp(1_767_225_600).unwrap();
        assert_eq!(rfc3339(t), "2026-01-01T00:00:00Z");
    }
}
