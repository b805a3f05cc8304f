//! The CNI specification's side of the plugin (versions 0.4.0, 1.0.0 and 1.1.0): the
//! command and its environment, the network configuration on stdin, and error results.
//! Nothing here talks to the node agent.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The spec versions this plugin accepts in a configuration, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];

/// The newest of [`SUPPORTED_VERSIONS`]: what VERSION answers when asked without one.
pub const LATEST_VERSION: &str = "1.1.0";

/// The well-known error codes of the specification that this plugin returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ErrorCode {
    IncompatibleVersion = 1,
    InvalidEnvironment = 4,
    Io = 5,
    Decode = 6,
    InvalidConfig = 7,
    TryAgainLater = 11,
    NotAvailable = 50,
    /// Ours (codes from 100 are the plugin's): CHECK found an enrolled pod uncaptured.
    CaptureMissing = 100,
}

/// A CNI error result: printed on stdout, and the plugin exits non-zero.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    pub code: ErrorCode,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: ErrorCode, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error result as the specification lays it out, in `version`.
    pub fn to_json(&self, version: &str) -> Value {
        serde_json::json!({
            "cniVersion": version,
            "code": self.code as u32,
            "msg": self.msg,
            "details": self.details,
        })
    }
}

/// `CNI_COMMAND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Version,
    Gc,
}

impl Command {
    pub fn parse(value: &str) -> Result<Command, CniError> {
        Ok(match value {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            other => {
                return Err(CniError::new(
                    ErrorCode::InvalidEnvironment,
                    "unknown CNI_COMMAND",
                    format!("{other:?}; expected ADD, DEL, CHECK, STATUS, VERSION or GC"),
                ));
            }
        })
    }
}

/// What the runtime passes in the environment, checked per command as the spec requires.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Invocation {
    pub container_id: String,
    /// Absent on DEL when the namespace is already gone.
    pub netns: Option<PathBuf>,
    pub if_name: String,
    /// `CNI_ARGS`: `K8S_POD_NAME`, `K8S_POD_NAMESPACE`, `K8S_POD_UID`, ...
    pub args: BTreeMap<String, String>,
}

impl Invocation {
    /// Reads the invocation from `env` (a lookup such as `std::env::var`) for `command`.
    pub fn from_env(
        command: Command,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Invocation, CniError> {
        let get = |name: &str| env(name).filter(|v| !v.is_empty());
        let required = |name: &str| {
            get(name).ok_or_else(|| {
                CniError::new(
                    ErrorCode::InvalidEnvironment,
                    format!("{name} is required"),
                    format!("the runtime must set it for {command:?}"),
                )
            })
        };
        Ok(match command {
            Command::Add | Command::Check => Invocation {
                container_id: required("CNI_CONTAINERID")?,
                netns: Some(required("CNI_NETNS")?.into()),
                if_name: required("CNI_IFNAME")?,
                args: parse_args(get("CNI_ARGS").as_deref().unwrap_or(""))?,
            },
            Command::Del => Invocation {
                container_id: required("CNI_CONTAINERID")?,
                netns: get("CNI_NETNS").map(PathBuf::from),
                if_name: required("CNI_IFNAME")?,
                args: parse_args(get("CNI_ARGS").as_deref().unwrap_or(""))?,
            },
            Command::Status | Command::Version | Command::Gc => Invocation::default(),
        })
    }

    /// The Kubernetes pod this container belongs to, when the runtime is a kubelet.
    pub fn pod(&self) -> Option<PodRef> {
        let name = self.args.get("K8S_POD_NAME")?;
        let namespace = self.args.get("K8S_POD_NAMESPACE")?;
        Some(PodRef {
            namespace: namespace.clone(),
            name: name.clone(),
            uid: self.args.get("K8S_POD_UID").cloned(),
        })
    }
}

/// A pod named by `CNI_ARGS`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// `CNI_ARGS`: `K1=V1;K2=V2` (empty pairs are skipped; a pair without `=` is an error).
pub fn parse_args(text: &str) -> Result<BTreeMap<String, String>, CniError> {
    let mut out = BTreeMap::new();
    for pair in text.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            CniError::new(
                ErrorCode::InvalidEnvironment,
                "malformed CNI_ARGS",
                format!("{pair:?} is not KEY=VALUE"),
            )
        })?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// This plugin's entry in a network configuration list.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// The result of the plugins before this one: passed through unchanged.
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// The node agent's socket.
    #[serde(default = "default_agent_socket")]
    pub agent_socket: PathBuf,
    /// A kubeconfig the plugin reads pods and namespaces with when the agent is unreachable,
    /// to tell a pod that must wait for the agent from one the mesh must never block.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// Namespaces whose pods are passed through without asking anyone.
    #[serde(default = "default_exclude_namespaces")]
    pub exclude_namespaces: Vec<String>,
}

/// Where the node agent listens by default (the chart and `ambientctl install` use it).
pub const DEFAULT_AGENT_SOCKET: &str = "/var/run/ambient/cni.sock";

fn default_agent_socket() -> PathBuf {
    DEFAULT_AGENT_SOCKET.into()
}

fn default_exclude_namespaces() -> Vec<String> {
    vec!["kube-system".into()]
}

/// Parses the configuration on stdin and checks its version.
pub fn parse_config(stdin: &[u8]) -> Result<NetConf, CniError> {
    let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            ErrorCode::Decode,
            "the network configuration does not parse",
            e.to_string(),
        )
    })?;
    check_version(&conf.cni_version)?;
    if let Some(prev) = &conf.prev_result
        && !prev.is_object()
    {
        return Err(CniError::new(
            ErrorCode::InvalidConfig,
            "prevResult is not an object",
            prev.to_string(),
        ));
    }
    Ok(conf)
}

pub fn check_version(version: &str) -> Result<(), CniError> {
    if SUPPORTED_VERSIONS.contains(&version) {
        Ok(())
    } else {
        Err(CniError::new(
            ErrorCode::IncompatibleVersion,
            format!("CNI version {version:?} is not supported"),
            format!("supported: {}", SUPPORTED_VERSIONS.join(", ")),
        ))
    }
}

/// The VERSION answer.
pub fn version_result(asked: Option<&str>) -> Value {
    serde_json::json!({
        "cniVersion": asked.unwrap_or(LATEST_VERSION),
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

/// The version a VERSION request names on stdin (`{"cniVersion": ...}`), if any.
pub fn asked_version(stdin: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(stdin)
        .ok()?
        .get("cniVersion")?
        .as_str()
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn cni_args_name_the_pod() {
        let inv = Invocation::from_env(
            Command::Add,
            env(&[
                ("CNI_CONTAINERID", "c1"),
                ("CNI_NETNS", "/run/netns/p"),
                ("CNI_IFNAME", "eth0"),
                (
                    "CNI_ARGS",
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1;K8S_POD_UID=u-1",
                ),
            ]),
        )
        .unwrap();
        assert_eq!(
            inv.pod(),
            Some(PodRef {
                namespace: "shop".into(),
                name: "web-1".into(),
                uid: Some("u-1".into())
            })
        );
        assert_eq!(parse_args("A=1;;B=").unwrap().len(), 2);
        let bad = parse_args("A=1;B").unwrap_err();
        assert_eq!(bad.code, ErrorCode::InvalidEnvironment);
    }

    #[test]
    fn each_command_demands_its_environment() {
        let add = Invocation::from_env(Command::Add, env(&[("CNI_CONTAINERID", "c")]));
        let err = add.unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidEnvironment);
        assert!(err.msg.contains("CNI_NETNS"), "{err}");
        // DEL may come after the namespace is gone.
        let del = Invocation::from_env(
            Command::Del,
            env(&[("CNI_CONTAINERID", "c"), ("CNI_IFNAME", "eth0")]),
        )
        .unwrap();
        assert_eq!(del.netns, None);
        assert_eq!(
            Invocation::from_env(Command::Status, env(&[])).unwrap(),
            Invocation::default()
        );
        assert_eq!(
            Command::parse("FROB").unwrap_err().code,
            ErrorCode::InvalidEnvironment
        );
    }

    #[test]
    fn configurations_are_checked_for_version_and_shape() {
        let ok = parse_config(
            br#"{"cniVersion":"1.1.0","name":"k8s","type":"ambient-cni","prevResult":{"ips":[]}}"#,
        )
        .unwrap();
        assert_eq!(ok.agent_socket, PathBuf::from(DEFAULT_AGENT_SOCKET));
        assert_eq!(ok.exclude_namespaces, vec!["kube-system".to_string()]);
        let old = parse_config(br#"{"cniVersion":"0.3.1","name":"k8s","type":"ambient-cni"}"#)
            .unwrap_err();
        assert_eq!(old.code, ErrorCode::IncompatibleVersion);
        let junk = parse_config(b"{not json").unwrap_err();
        assert_eq!(junk.code, ErrorCode::Decode);
        let prev = parse_config(
            br#"{"cniVersion":"1.0.0","name":"k8s","type":"ambient-cni","prevResult":7}"#,
        )
        .unwrap_err();
        assert_eq!(prev.code, ErrorCode::InvalidConfig);
        let e = CniError::new(ErrorCode::TryAgainLater, "m", "d").to_json("1.0.0");
        assert_eq!(e["code"], 11);
        assert_eq!(e["cniVersion"], "1.0.0");
    }
}
