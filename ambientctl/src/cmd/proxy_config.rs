//! `ztunnel-config` and `proxy-status`: what the proxies hold and whether they are in sync,
//! read from ztunnel's `/config_dump` and the controller's `/debug/proxies` through the
//! running mesh's control socket.

use std::process::ExitCode;

use serde_json::Value;

use super::output::{Format, print, table};
use crate::runtime::control;
use crate::runtime::home::Home;

/// What `ztunnel-config` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ZtunnelView {
    Workloads,
    Services,
    Policies,
    Certificates,
    Connections,
    /// Everything, as one document per node.
    All,
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A waypoint as istioctl shows it: the Gateway's name when the controller named it by its
/// Service hostname, else the address; `None` without one.
fn waypoint(v: &Value) -> String {
    let target = &v["target"];
    if let Some(host) = target["hostname"]["hostname"].as_str() {
        return host.split('.').next().unwrap_or(host).to_string();
    }
    match target["address"].as_str() {
        Some(a) => a.to_string(),
        None => "None".into(),
    }
}

fn list(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(s).collect())
        .unwrap_or_default()
}

fn time(secs: &Value) -> String {
    let Some(t) = secs.as_u64() else {
        return String::new();
    };
    time_fmt(t)
}

/// RFC 3339 UTC, from seconds since the epoch.
pub fn time_fmt(t: u64) -> String {
    let days = t / 86_400;
    let rem = t % 86_400;
    // Civil from days (Howard Hinnant's algorithm, proleptic Gregorian).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn dumps(node: Option<&str>) -> anyhow::Result<Vec<Value>> {
    let home = Home::locate();
    let info = home.running()?;
    let nodes: Vec<String> = match node {
        Some(n) if info.nodes.iter().any(|x| x == n) => vec![n.to_string()],
        Some(n) => anyhow::bail!("no node {n:?}; nodes: {}", info.nodes.join(", ")),
        None => info.nodes.clone(),
    };
    nodes
        .iter()
        .map(|n| {
            control::get_json(
                &home.control_socket(),
                &format!("/ztunnel/{n}/15000/config_dump"),
            )
            .map_err(Into::into)
        })
        .collect()
}

/// Rows for one view, merged over nodes (workloads and services are the same everywhere,
/// so they are taken once; certificates and connections are per node).
fn collect(view: ZtunnelView, dumps: &[Value], single_node: bool) -> Vec<Value> {
    let key = match view {
        ZtunnelView::Workloads => "workloads",
        ZtunnelView::Services => "services",
        ZtunnelView::Policies => "policies",
        ZtunnelView::Certificates => "certificates",
        ZtunnelView::Connections => "connections",
        ZtunnelView::All => return dumps.to_vec(),
    };
    let per_node = matches!(view, ZtunnelView::Certificates | ZtunnelView::Connections);
    let mut out = Vec::new();
    for d in dumps {
        for item in d[key].as_array().into_iter().flatten() {
            let mut item = item.clone();
            if per_node && let Value::Object(m) = &mut item {
                m.insert("node".into(), d["node"].clone());
            }
            if per_node || single_node || !out.contains(&item) {
                out.push(item);
            }
        }
    }
    out
}

fn render(view: ZtunnelView, rows: &[Value]) -> String {
    match view {
        ZtunnelView::Workloads => table(
            &[
                "NAMESPACE",
                "POD NAME",
                "ADDRESS",
                "NODE",
                "WAYPOINT",
                "PROTOCOL",
            ],
            &rows
                .iter()
                .map(|w| {
                    let waypoint = waypoint(&w["waypoint"]);
                    vec![
                        s(&w["namespace"]),
                        s(&w["name"]),
                        list(&w["addresses"]).join(","),
                        s(&w["node"]),
                        waypoint,
                        s(&w["protocol"]),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
        ZtunnelView::Services => table(
            &[
                "NAMESPACE",
                "SERVICE NAME",
                "SERVICE VIP",
                "PORTS",
                "WAYPOINT",
            ],
            &rows
                .iter()
                .map(|v| {
                    let ports: Vec<String> = v["ports"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|p| format!("{}->{}", s(&p["service_port"]), s(&p["target_port"])))
                        .collect();
                    let waypoint = waypoint(&v["waypoint"]);
                    vec![
                        s(&v["namespace"]),
                        s(&v["name"]),
                        list(&v["vips"]).join(","),
                        ports.join(","),
                        waypoint,
                    ]
                })
                .collect::<Vec<_>>(),
        ),
        ZtunnelView::Policies => table(
            &["NAMESPACE", "POLICY NAME", "ACTION", "SCOPE"],
            &rows
                .iter()
                .map(|p| {
                    vec![
                        s(&p["namespace"]),
                        s(&p["name"]),
                        s(&p["action"]),
                        s(&p["scope"]),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
        ZtunnelView::Certificates => table(
            &[
                "NODE",
                "CERTIFICATE NAME",
                "STATUS",
                "SERIAL NUMBER",
                "NOT BEFORE",
                "NOT AFTER",
            ],
            &rows
                .iter()
                .map(|c| {
                    vec![
                        s(&c["node"]),
                        s(&c["identity"]),
                        s(&c["state"]),
                        s(&c["serial"]),
                        time(&c["not_before"]),
                        time(&c["not_after"]),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
        ZtunnelView::Connections => table(
            &[
                "NODE",
                "SOURCE",
                "DESTINATION",
                "SOURCE IDENTITY",
                "DESTINATION IDENTITY",
            ],
            &rows
                .iter()
                .map(|c| {
                    vec![
                        s(&c["node"]),
                        s(&c["source"]),
                        s(&c["destination"]),
                        s(&c["source_identity"]),
                        s(&c["destination_identity"]),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
        ZtunnelView::All => rows
            .iter()
            .map(|d| serde_json::to_string_pretty(d).expect("json"))
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// `ambientctl ztunnel-config VIEW [--node N]`.
pub fn ztunnel_config(
    view: ZtunnelView,
    node: Option<&str>,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let dumps = dumps(node)?;
    let rows = collect(view, &dumps, node.is_some());
    print(format, &rows, |rows| render(view, rows));
    Ok(ExitCode::SUCCESS)
}

/// `ambientctl proxy-status`.
pub fn proxy_status(format: Format) -> anyhow::Result<ExitCode> {
    let home = Home::locate();
    home.running()?;
    let proxies: Vec<Value> =
        control::get_json(&home.control_socket(), "/controller/debug/proxies")?;
    let mut out_of_sync = false;
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut views: Vec<Value> = Vec::new();
    for p in &proxies {
        let mut row = vec![s(&p["id"]), s(&p["node"])];
        let mut per_type = serde_json::Map::new();
        for (short, url) in [
            ("ADDRESS", ambient_proto::ADDRESS_TYPE_URL),
            ("AUTHORIZATION", ambient_proto::AUTHORIZATION_TYPE_URL),
        ] {
            let sent = p["sent_generation"][url].as_u64();
            let acked = p["acked_generation"][url].as_u64();
            let held = p["resources"][url].as_u64().unwrap_or(0);
            let state = match (sent, acked) {
                (None, _) => "NOT SENT".to_string(),
                (Some(s), Some(a)) if s == a => format!("SYNCED ({held})"),
                _ => "STALE".to_string(),
            };
            if !state.starts_with("SYNCED") {
                out_of_sync = true;
            }
            per_type.insert(short.to_lowercase(), Value::String(state.clone()));
            row.push(state);
        }
        let nack = s(&p["last_nack"]);
        row.push(if nack.is_empty() {
            "-".into()
        } else {
            nack.clone()
        });
        rows.push(row);
        let mut v = p.clone();
        if let Value::Object(m) = &mut v {
            m.insert("sync".into(), Value::Object(per_type));
        }
        views.push(v);
    }
    print(format, &views, |_| {
        table(
            &[
                "NAME",
                "NODE",
                "ADDRESS (WDS)",
                "AUTHORIZATION (RBAC)",
                "LAST NACK",
            ],
            &rows,
        )
    });
    if proxies.is_empty() {
        eprintln!("no proxies connected");
    }
    Ok(if out_of_sync {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_from_unix_seconds() {
        assert_eq!(time_fmt(0), "1970-01-01T00:00:00Z");
        assert_eq!(time_fmt(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(time_fmt(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn waypoints_show_as_istioctl_shows_them() {
        let by_name = serde_json::json!({"target": {"hostname": {"namespace": "shop", "hostname": "waypoint.shop.svc.cluster.local"}}, "port": 15008});
        assert_eq!(waypoint(&by_name), "waypoint");
        let by_address = serde_json::json!({"target": {"address": "10.96.0.14"}, "port": 15008});
        assert_eq!(waypoint(&by_address), "10.96.0.14");
        assert_eq!(waypoint(&Value::Null), "None");
    }

    #[test]
    fn workloads_are_merged_over_nodes_and_certificates_are_not() {
        let w = serde_json::json!({"uid": "u", "name": "a", "namespace": "ns", "addresses": ["10.244.1.2"], "node": "node-1", "protocol": "HBONE"});
        let c = serde_json::json!({"identity": "spiffe://x", "state": "Available"});
        let dumps = vec![
            serde_json::json!({"node": "node-1", "workloads": [w.clone()], "certificates": [c.clone()]}),
            serde_json::json!({"node": "node-2", "workloads": [w.clone()], "certificates": [c]}),
        ];
        assert_eq!(collect(ZtunnelView::Workloads, &dumps, false).len(), 1);
        let certs = collect(ZtunnelView::Certificates, &dumps, false);
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[1]["node"], "node-2");
        let t = render(ZtunnelView::Workloads, &[w]);
        assert!(
            t.starts_with("NAMESPACE  POD NAME  ADDRESS     NODE    WAYPOINT  PROTOCOL\n"),
            "{t}"
        );
        assert!(
            t.contains("ns         a         10.244.1.2  node-1  None      HBONE"),
            "{t}"
        );
    }
}
