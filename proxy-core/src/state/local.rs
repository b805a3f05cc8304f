//! A hand-writable YAML encoding of WDS resources, for running without a controller.
//!
//! Field names are the protobuf ones in camelCase, as in proto3's JSON mapping; addresses are
//! written as IP strings instead of base64 bytes. [`LocalConfig::to_addresses`] turns the file
//! into exactly the `istio.workload.Address` messages a controller would push.
//!
//! ```yaml
//! workloads:
//!   - name: client
//!     namespace: default
//!     serviceAccount: client
//!     node: node-a
//!     addresses: [10.244.1.2]
//!     tunnelProtocol: HBONE
//!     services:
//!       default/echo.default.svc.cluster.local: [{servicePort: 80, targetPort: 8080}]
//! services:
//!   - name: echo
//!     namespace: default
//!     hostname: echo.default.svc.cluster.local
//!     addresses: [10.96.0.10]
//!     ports: [{servicePort: 80, targetPort: 8080}]
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_saphyr::MessageFormatter as _;

use ambient_proto::identity::{DEFAULT_TRUST_DOMAIN, Identity};
use ambient_proto::istio::workload as wds;

/// A malformed file: where, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}{reason}", location.map(|(l, c)| format!("line {l} column {c}: ")).unwrap_or_default())]
pub struct LocalConfigError {
    /// 1-based line and column, when known.
    pub location: Option<(usize, usize)>,
    pub reason: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalConfig {
    #[serde(default)]
    pub workloads: Vec<LocalWorkload>,
    #[serde(default)]
    pub services: Vec<LocalService>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalWorkload {
    /// Defaults to `Kubernetes//Pod/<namespace>/<name>`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    pub name: String,
    pub namespace: String,
    #[serde(default = "default_service_account")]
    pub service_account: String,
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    /// Instead of addresses: a name resolved when a connection picks this endpoint.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    #[serde(default)]
    pub tunnel_protocol: LocalTunnel,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub canonical_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub canonical_revision: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub workload_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster_id: String,
    #[serde(default)]
    pub status: LocalStatus,
    /// Services this workload backs, keyed `namespace/hostname`, with per-workload ports.
    #[serde(default)]
    pub services: BTreeMap<String, Vec<LocalPort>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalService {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    #[serde(default)]
    pub ports: Vec<LocalPort>,
    /// With no endpoint, connections go on to the address dialed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub passthrough: bool,
    /// Only clients in this namespace see the service.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub namespace_only: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalPort {
    pub service_port: u16,
    #[serde(default)]
    pub target_port: u16,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LocalTunnel {
    #[default]
    #[serde(rename = "NONE")]
    None,
    #[serde(rename = "HBONE")]
    Hbone,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LocalStatus {
    #[default]
    #[serde(rename = "HEALTHY")]
    Healthy,
    #[serde(rename = "UNHEALTHY")]
    Unhealthy,
}

fn default_service_account() -> String {
    "default".into()
}

fn default_trust_domain() -> String {
    DEFAULT_TRUST_DOMAIN.into()
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

impl LocalWorkload {
    pub fn uid(&self) -> String {
        if self.uid.is_empty() {
            format!("Kubernetes//Pod/{}/{}", self.namespace, self.name)
        } else {
            self.uid.clone()
        }
    }

    pub fn identity(&self) -> Result<Identity, LocalConfigError> {
        Identity::new(&self.trust_domain, &self.namespace, &self.service_account).map_err(|e| {
            LocalConfigError {
                location: None,
                reason: format!("workload {}/{}: {e}", self.namespace, self.name),
            }
        })
    }

    pub fn to_proto(&self) -> wds::Workload {
        wds::Workload {
            uid: self.uid(),
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            addresses: self.addresses.iter().map(ip_bytes).collect(),
            hostname: self.hostname.clone(),
            tunnel_protocol: match self.tunnel_protocol {
                LocalTunnel::None => wds::TunnelProtocol::None,
                LocalTunnel::Hbone => wds::TunnelProtocol::Hbone,
            } as i32,
            trust_domain: self.trust_domain.clone(),
            service_account: self.service_account.clone(),
            node: self.node.clone(),
            canonical_name: self.canonical_name.clone(),
            canonical_revision: self.canonical_revision.clone(),
            workload_name: self.workload_name.clone(),
            workload_type: wds::WorkloadType::Pod as i32,
            cluster_id: self.cluster_id.clone(),
            status: match self.status {
                LocalStatus::Healthy => wds::WorkloadStatus::Healthy,
                LocalStatus::Unhealthy => wds::WorkloadStatus::Unhealthy,
            } as i32,
            services: self
                .services
                .iter()
                .map(|(k, ports)| {
                    (
                        k.clone(),
                        wds::PortList {
                            ports: ports.iter().copied().map(LocalPort::to_proto).collect(),
                        },
                    )
                })
                .collect(),
            ..Default::default()
        }
    }
}

impl LocalService {
    pub fn to_proto(&self) -> wds::Service {
        wds::Service {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            hostname: self.hostname.clone(),
            addresses: self
                .addresses
                .iter()
                .map(|ip| wds::NetworkAddress {
                    network: String::new(),
                    address: ip_bytes(ip),
                })
                .collect(),
            ports: self
                .ports
                .iter()
                .copied()
                .map(LocalPort::to_proto)
                .collect(),
            load_balancing: self.passthrough.then(|| wds::LoadBalancing {
                mode: wds::load_balancing::Mode::Passthrough as i32,
                ..Default::default()
            }),
            visibility: if self.namespace_only {
                wds::service::Visibility::Namespace
            } else {
                wds::service::Visibility::Public
            } as i32,
            ..Default::default()
        }
    }
}

impl LocalPort {
    fn to_proto(self) -> wds::Port {
        wds::Port {
            service_port: u32::from(self.service_port),
            target_port: u32::from(self.target_port),
        }
    }
}

impl LocalConfig {
    /// Parses and validates a file's contents.
    pub fn parse(yaml: &str) -> Result<Self, LocalConfigError> {
        let config: LocalConfig = if yaml.trim().is_empty() {
            LocalConfig::default()
        } else {
            serde_saphyr::from_str(yaml).map_err(|e| LocalConfigError {
                location: e
                    .location()
                    .filter(|l| l.line() > 0)
                    .map(|l| (l.line() as usize, l.column() as usize)),
                reason: serde_saphyr::UserMessageFormatter
                    .format_message(&e)
                    .into_owned(),
            })?
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), LocalConfigError> {
        let mut uids = std::collections::HashSet::new();
        let mut ips = std::collections::HashMap::new();
        for w in &self.workloads {
            w.identity()?;
            if !uids.insert(w.uid()) {
                return Err(LocalConfigError {
                    location: None,
                    reason: format!("workload uid {} appears twice", w.uid()),
                });
            }
            for ip in &w.addresses {
                if let Some(other) = ips.insert(*ip, w.uid()) {
                    return Err(LocalConfigError {
                        location: None,
                        reason: format!("address {ip} belongs to both {other} and {}", w.uid()),
                    });
                }
            }
        }
        Ok(())
    }

    /// The WDS resources this file describes, as a controller would send them.
    pub fn to_addresses(&self) -> Vec<wds::Address> {
        let workloads = self.workloads.iter().map(|w| wds::Address {
            r#type: Some(wds::address::Type::Workload(w.to_proto())),
        });
        let services = self.services.iter().map(|s| wds::Address {
            r#type: Some(wds::address::Type::Service(s.to_proto())),
        });
        workloads.chain(services).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
workloads:
  - name: client
    namespace: default
    serviceAccount: client
    node: node-a
    addresses: [10.244.1.2]
    tunnelProtocol: HBONE
services:
  - name: echo
    namespace: default
    hostname: echo.default.svc.cluster.local
    addresses: [10.96.0.10]
    ports: [{servicePort: 80, targetPort: 8080}]
"#;

    #[test]
    fn parses_into_wds_messages() {
        let c = LocalConfig::parse(EXAMPLE).unwrap();
        let addrs = c.to_addresses();
        assert_eq!(addrs.len(), 2);
        let Some(wds::address::Type::Workload(w)) = &addrs[0].r#type else {
            panic!("workload first")
        };
        assert_eq!(w.uid, "Kubernetes//Pod/default/client");
        assert_eq!(w.addresses, vec![vec![10, 244, 1, 2]]);
        assert_eq!(w.tunnel_protocol, wds::TunnelProtocol::Hbone as i32);
        assert_eq!(w.trust_domain, "cluster.local");
    }

    #[test]
    fn reports_line_of_unknown_field() {
        let bad = "workloads:\n  - name: a\n    namespace: b\n    colour: blue\n";
        let e = LocalConfig::parse(bad).unwrap_err();
        assert_eq!(e.location.map(|l| l.0), Some(4), "{e}");
        assert!(e.reason.contains("colour"), "{e}");
    }

    #[test]
    fn rejects_duplicate_addresses_and_bad_names() {
        let dup = "workloads:\n  - {name: a, namespace: n, addresses: [10.0.0.1]}\n  - {name: b, namespace: n, addresses: [10.0.0.1]}\n";
        assert!(
            LocalConfig::parse(dup)
                .unwrap_err()
                .reason
                .contains("10.0.0.1")
        );
        let bad_ns = "workloads:\n  - {name: a, namespace: 'a/b'}\n";
        assert!(LocalConfig::parse(bad_ns).is_err());
    }
}
