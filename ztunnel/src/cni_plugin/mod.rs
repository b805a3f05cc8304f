//! Our CNI plugin (`ambient-cni`), chained after the cluster's own network plugin: it tells
//! the node agent about each pod's network namespace and passes the previous result through
//! unchanged. The agent decides enrolment ([`crate::agent::kube_pods`]).
//!
//! - ADD: asks the agent. A pod the agent captured, or left out of the mesh, starts. When the
//!   agent is unreachable, the plugin reads the pod and its namespace itself (the
//!   configuration's `kubeconfig`): a pod in the mesh is not started (error 11, the kubelet
//!   retries), a pod outside it starts, so the mesh never blocks a pod that is not in it.
//! - CHECK: an enrolled pod whose namespace lacks the capture rules is an error.
//! - DEL: tells the agent, and succeeds even when it cannot (the agent's watch releases pods
//!   that are gone).
//! - STATUS: ready when the agent answers, or when the plugin can at least tell pods outside
//!   the mesh (a kubeconfig); GC: nothing to collect here, the agent releases deleted pods.
//!
//! [`spec`] holds the specification's side; this module the decisions.

pub mod spec;

use std::time::Duration;

use serde_json::Value;

use crate::agent::cni::{CniAttachment, CniClient};
use crate::agent::kube_pods;
use spec::{CniError, Command, ErrorCode, Invocation, NetConf};

/// How long an ADD waits for the agent: it waits in turn for ztunnel's acknowledgement (10 s).
const AGENT_TIMEOUT: Duration = Duration::from_secs(30);

/// What the plugin prints on success (None: nothing, as DEL and GC print).
pub type Output = Option<Value>;

/// Runs one invocation: `env` looks up the environment, `stdin` is the configuration.
pub async fn run(
    env: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
) -> Result<Output, (CniError, String)> {
    // Errors are reported in the configuration's version when it parses that far.
    let version = spec::asked_version(stdin)
        .filter(|v| spec::SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| spec::LATEST_VERSION.to_string());
    let fail = |e: CniError| (e, version.clone());
    let command = env("CNI_COMMAND").unwrap_or_default();
    let command = Command::parse(&command).map_err(fail)?;
    if command == Command::Version {
        return Ok(Some(spec::version_result(
            spec::asked_version(stdin).as_deref(),
        )));
    }
    let conf = spec::parse_config(stdin).map_err(fail)?;
    let invocation = Invocation::from_env(command, &env).map_err(fail)?;
    let agent = CniClient::new(&conf.agent_socket);
    match command {
        Command::Add => add(&conf, &invocation, &agent).await,
        Command::Check => check(&conf, &invocation, &agent).await,
        Command::Del => {
            del(&conf, &invocation, &agent).await;
            Ok(None)
        }
        Command::Status => status(&conf, &agent).await,
        Command::Gc => Ok(None),
        Command::Version => unreachable!("answered above"),
    }
    .map_err(fail)
}

/// The attachment to tell the agent about, or None when the mesh has no business with it
/// (not a Kubernetes pod, or a namespace the configuration excludes).
pub fn attachment(conf: &NetConf, invocation: &Invocation) -> Option<CniAttachment> {
    let pod = invocation.pod()?;
    if conf.exclude_namespaces.contains(&pod.namespace) {
        return None;
    }
    Some(CniAttachment {
        container_id: invocation.container_id.clone(),
        netns: invocation.netns.clone(),
        pod_namespace: pod.namespace,
        pod_name: pod.name,
        pod_uid: pod.uid,
    })
}

/// The previous plugin's result in the configuration's version: what a chained plugin that
/// changes nothing prints.
pub fn passed_through(conf: &NetConf) -> Result<Output, CniError> {
    let mut result = conf.prev_result.clone().ok_or_else(|| {
        CniError::new(
            ErrorCode::InvalidConfig,
            "no prevResult: ambient-cni must be chained after the cluster's network plugin",
            format!("network {:?}", conf.name),
        )
    })?;
    result["cniVersion"] = Value::String(conf.cni_version.clone());
    Ok(Some(result))
}

async fn add(
    conf: &NetConf,
    invocation: &Invocation,
    agent: &CniClient,
) -> Result<Output, CniError> {
    let result = passed_through(conf)?;
    let Some(att) = attachment(conf, invocation) else {
        return Ok(result);
    };
    match agent.cni("add", &att, AGENT_TIMEOUT).await {
        Ok(_) => Ok(result),
        Err(e) if e.unreachable() => match in_mesh_without_agent(conf, &att).await {
            Ok(false) => Ok(result),
            Ok(true) => Err(CniError::new(
                ErrorCode::TryAgainLater,
                format!(
                    "pod {}/{} is in the ambient mesh and the node agent is unreachable; it starts once the agent answers",
                    att.pod_namespace, att.pod_name
                ),
                e.to_string(),
            )),
            Err(lookup) => Err(CniError::new(
                ErrorCode::TryAgainLater,
                format!(
                    "the node agent is unreachable and whether pod {}/{} is in the mesh cannot be read",
                    att.pod_namespace, att.pod_name
                ),
                format!("agent: {e}; API server: {lookup}"),
            )),
        },
        Err(e) => Err(CniError::new(
            ErrorCode::TryAgainLater,
            format!(
                "the node agent could not enrol pod {}/{}",
                att.pod_namespace, att.pod_name
            ),
            e.to_string(),
        )),
    }
}

async fn check(
    conf: &NetConf,
    invocation: &Invocation,
    agent: &CniClient,
) -> Result<Output, CniError> {
    passed_through(conf)?;
    let Some(att) = attachment(conf, invocation) else {
        return Ok(None);
    };
    let answer = match agent.cni("check", &att, AGENT_TIMEOUT).await {
        Ok(answer) => answer,
        Err(e) if e.unreachable() => match in_mesh_without_agent(conf, &att).await {
            Ok(false) => return Ok(None),
            Ok(true) => {
                return Err(CniError::new(
                    ErrorCode::TryAgainLater,
                    format!(
                        "pod {}/{} is in the ambient mesh and its capture cannot be checked: the node agent is unreachable",
                        att.pod_namespace, att.pod_name
                    ),
                    e.to_string(),
                ));
            }
            Err(lookup) => {
                return Err(CniError::new(
                    ErrorCode::TryAgainLater,
                    "the node agent is unreachable and the pod cannot be read",
                    format!("agent: {e}; API server: {lookup}"),
                ));
            }
        },
        Err(e) => {
            return Err(CniError::new(
                ErrorCode::TryAgainLater,
                "the node agent could not check the pod",
                e.to_string(),
            ));
        }
    };
    if answer.enrolled && !answer.captured {
        return Err(CniError::new(
            ErrorCode::CaptureMissing,
            format!(
                "pod {}/{} is in the ambient mesh but its network namespace has no capture rules",
                att.pod_namespace, att.pod_name
            ),
            format!(
                "netns {}",
                att.netns
                    .as_deref()
                    .unwrap_or(std::path::Path::new("?"))
                    .display()
            ),
        ));
    }
    Ok(None)
}

async fn del(conf: &NetConf, invocation: &Invocation, agent: &CniClient) {
    let Some(att) = attachment(conf, invocation) else {
        return;
    };
    if let Err(e) = agent.cni("del", &att, AGENT_TIMEOUT).await {
        // DEL must not fail for what is already gone; the agent's watch releases the pod.
        eprintln!(
            "ambient-cni: DEL of pod {}/{} not delivered to the node agent: {e}",
            att.pod_namespace, att.pod_name
        );
    }
}

async fn status(conf: &NetConf, agent: &CniClient) -> Result<Output, CniError> {
    let unreachable = match agent.healthz().await {
        Ok(()) => return Ok(None),
        Err(e) => e,
    };
    match &conf.kubeconfig {
        // Pods outside the mesh can still be told and started.
        Some(path) if path.is_file() => Ok(None),
        _ => Err(CniError::new(
            ErrorCode::NotAvailable,
            "the node agent is unreachable and no kubeconfig is configured to tell pods outside the mesh",
            unreachable.to_string(),
        )),
    }
}

/// Whether the pod is in the mesh, read from the API server with the configuration's
/// kubeconfig (the agent being unreachable).
async fn in_mesh_without_agent(conf: &NetConf, att: &CniAttachment) -> Result<bool, String> {
    let Some(path) = &conf.kubeconfig else {
        return Err("no kubeconfig in the plugin's configuration".into());
    };
    let client = kube_pods::client(Some(path))
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let facts = tokio::time::timeout(
        AGENT_TIMEOUT,
        kube_pods::lookup(&client, &att.pod_namespace, &att.pod_name),
    )
    .await
    .map_err(|_| format!("no answer within {AGENT_TIMEOUT:?}"))?
    .map_err(|e| e.to_string())?
    .ok_or_else(|| format!("pod {}/{} not found", att.pod_namespace, att.pod_name))?;
    Ok(facts.enrolled)
}

/// The binary's whole life: reads the process environment and stdin, prints the result or
/// the error result, and returns the exit code.
pub fn main() -> std::process::ExitCode {
    use std::io::{Read, Write};
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        let err = CniError::new(ErrorCode::Io, "reading the configuration", e.to_string());
        println!("{}", err.to_json(spec::LATEST_VERSION));
        return std::process::ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let err = CniError::new(ErrorCode::Io, "starting the runtime", e.to_string());
            println!("{}", err.to_json(spec::LATEST_VERSION));
            return std::process::ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(|k| std::env::var(k).ok(), &stdin));
    let mut stdout = std::io::stdout().lock();
    match outcome {
        Ok(output) => {
            if let Some(v) = output {
                let _ = writeln!(stdout, "{v}");
            }
            std::process::ExitCode::SUCCESS
        }
        Err((err, version)) => {
            eprintln!("ambient-cni: {err}");
            let _ = writeln!(stdout, "{}", err.to_json(&version));
            std::process::ExitCode::FAILURE
        }
    }
}
