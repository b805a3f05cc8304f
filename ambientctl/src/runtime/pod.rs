//! A pod's containers as processes: each container's `command` + `args` runs inside the
//! pod's network namespace, in a mount namespace of its own that shows the pod's
//! `/etc/resolv.conf` and `/etc/hosts` (as the kubelet arranges). The image is ignored: the
//! command must exist on this machine. Containers restart as `restartPolicy` says, with
//! Kubernetes-like exponential backoff. `$(VAR)` in the command and arguments expands from
//! the container's environment, as the kubelet does.

use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::net::Ipv4Addr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Serialize;
use tracing::warn;
use ztunnel::inpod::netns::Netns;

use super::waypoints::expand;
use ambient_lab::spawn::{self, Entry};

/// Cluster DNS as pods see it (the address is never dialled for real: ztunnel captures
/// port 53 in enrolled pods and answers for mesh services).
pub const CLUSTER_DNS: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const CLUSTER_DOMAIN: &str = "cluster.local";
const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What a container is doing, as `ambientctl status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum ContainerState {
    Running {
        pid: u32,
    },
    /// Exited; restarts after the backoff (or never, per `restartPolicy`).
    Exited {
        code: Option<i32>,
        restart_in_ms: Option<u64>,
    },
    /// Cannot start (no command, command not found, ...).
    Waiting {
        reason: String,
    },
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    pub name: String,
    #[serde(flatten)]
    pub state: ContainerState,
    pub restarts: u32,
    pub log: PathBuf,
}

/// An environment variable's value as the container spec gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum EnvValue {
    Literal(String),
    /// `valueFrom.fieldRef.fieldPath`: resolved from the pod when the container starts.
    Field(String),
}

/// What a container runs; a change restarts it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ContainerSpec {
    name: String,
    argv: Vec<String>,
    env: Vec<(String, EnvValue)>,
    working_dir: Option<String>,
}

impl ContainerSpec {
    fn of(c: &Container) -> Self {
        let mut argv: Vec<String> = c.command.clone().unwrap_or_default();
        argv.extend(c.args.clone().unwrap_or_default());
        let env = c
            .env
            .iter()
            .flatten()
            .map(|e| {
                let field = e
                    .value_from
                    .as_ref()
                    .and_then(|v| v.field_ref.as_ref())
                    .map(|f| f.field_path.clone());
                let value = match field {
                    Some(path) => EnvValue::Field(path),
                    None => EnvValue::Literal(e.value.clone().unwrap_or_default()),
                };
                (e.name.clone(), value)
            })
            .collect();
        ContainerSpec {
            name: c.name.clone(),
            argv,
            env,
            working_dir: c.working_dir.clone(),
        }
    }
}

struct ContainerProc {
    spec: ContainerSpec,
    child: Option<Child>,
    restarts: u32,
    last_exit: Option<Option<i32>>,
    backoff: Duration,
    restart_at: Option<Instant>,
    waiting: Option<String>,
    started: Option<Instant>,
    log: PathBuf,
}

/// Where the pod is and who it is, for its containers' environment.
#[derive(Clone, Debug)]
pub struct PodIdentity {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub node: String,
    pub service_account: String,
}

impl PodIdentity {
    /// A downward-API field of this pod (`valueFrom.fieldRef`), as the kubelet fills it.
    fn field(&self, path: &str) -> Option<String> {
        Some(match path {
            "metadata.name" => self.name.clone(),
            "metadata.namespace" => self.namespace.clone(),
            "spec.nodeName" => self.node.clone(),
            "spec.serviceAccountName" => self.service_account.clone(),
            "status.podIP" => self.ip.to_string(),
            "status.podIPs" => self.ip.to_string(),
            _ => return None,
        })
    }
}

/// What every container of a pod starts with.
struct PodEnv {
    identity: PodIdentity,
    netns: std::sync::Arc<Netns>,
    /// The pod's own files (resolv.conf, hosts).
    dir: PathBuf,
    logs: PathBuf,
    search_path: Vec<PathBuf>,
}

/// The running containers of one pod.
pub struct PodProcesses {
    env: PodEnv,
    restart_policy: String,
    containers: Vec<ContainerProc>,
}

/// Where bare command names are looked up: next to the `ambientctl` binary first (so
/// `cargo build` output such as `demo-app` is found), then `$PATH`.
pub fn search_path() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        out.push(dir);
    }
    if let Some(path) = std::env::var_os("PATH") {
        out.extend(std::env::split_paths(&path));
    }
    out
}

/// Resolves a command name the way a shell would, with [`search_path`] as the path.
pub fn resolve_command(name: &str, path: &[PathBuf]) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return executable(&p).then_some(p);
    }
    path.iter().map(|d| d.join(name)).find(|p| executable(p))
}

/// Writes the pod's `resolv.conf` and `hosts` into `dir`; returns the bind mounts that show
/// them at `/etc/...`.
pub fn pod_files(dir: &Path, id: &PodIdentity) -> std::io::Result<Vec<(PathBuf, PathBuf)>> {
    std::fs::create_dir_all(dir)?;
    let resolv = dir.join("resolv.conf");
    std::fs::write(
        &resolv,
        format!(
            "nameserver {CLUSTER_DNS}\nsearch {ns}.svc.{d} svc.{d} {d}\noptions ndots:5\n",
            ns = id.namespace,
            d = CLUSTER_DOMAIN
        ),
    )?;
    let hosts = dir.join("hosts");
    std::fs::write(
        &hosts,
        format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{}\n",
            id.ip, id.name
        ),
    )?;
    Ok(vec![
        (resolv, PathBuf::from("/etc/resolv.conf")),
        (hosts, PathBuf::from("/etc/hosts")),
    ])
}

fn cstring(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

impl PodProcesses {
    /// Prepares the pod (its files) without starting anything yet.
    pub fn new(
        identity: PodIdentity,
        netns: std::sync::Arc<Netns>,
        dir: PathBuf,
        logs: PathBuf,
    ) -> Self {
        PodProcesses {
            env: PodEnv {
                identity,
                netns,
                dir,
                logs,
                search_path: search_path(),
            },
            restart_policy: "Always".into(),
            containers: Vec::new(),
        }
    }

    pub fn identity(&self) -> &PodIdentity {
        &self.env.identity
    }

    /// Brings the containers in line with `pod`'s spec: starts new ones, restarts changed
    /// ones, stops removed ones.
    pub fn apply(&mut self, pod: &Pod) {
        let spec = pod.spec.as_ref();
        self.restart_policy = spec
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into());
        let wanted: Vec<ContainerSpec> = spec
            .map(|s| s.containers.iter().map(ContainerSpec::of).collect())
            .unwrap_or_default();
        let mut keep = Vec::new();
        for c in std::mem::take(&mut self.containers) {
            if wanted.contains(&c.spec) {
                keep.push(c);
            } else {
                stop_container(c, Duration::from_secs(2));
            }
        }
        self.containers = keep;
        for w in wanted {
            if !self.containers.iter().any(|c| c.spec == w) {
                let id = &self.env.identity;
                let log = self
                    .env
                    .logs
                    .join(format!("{}_{}_{}.log", id.namespace, id.name, w.name));
                let mut c = ContainerProc {
                    spec: w,
                    child: None,
                    restarts: 0,
                    last_exit: None,
                    backoff: BACKOFF_START,
                    restart_at: None,
                    waiting: None,
                    started: None,
                    log,
                };
                start(&self.env, &mut c);
                self.containers.push(c);
            }
        }
    }

    /// Notices exits and restarts containers whose backoff has passed.
    pub fn tick(&mut self) {
        let now = Instant::now();
        let policy = self.restart_policy.clone();
        let env = &self.env;
        for c in self.containers.iter_mut() {
            if let Some(child) = c.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    c.child = None;
                    c.last_exit = Some(status.code());
                    let restart = match policy.as_str() {
                        "Never" => false,
                        "OnFailure" => !status.success(),
                        _ => true,
                    };
                    // A container that ran a while starts over with a short backoff.
                    if c.started
                        .is_some_and(|s| s.elapsed() > Duration::from_secs(60))
                    {
                        c.backoff = BACKOFF_START;
                    }
                    c.restart_at = restart.then(|| now + c.backoff);
                    if restart {
                        c.backoff = (c.backoff * 2).min(BACKOFF_MAX);
                    }
                }
            } else if c.restart_at.is_some_and(|t| t <= now) {
                c.restart_at = None;
                if c.last_exit.is_some() {
                    c.restarts += 1;
                }
                start(env, c);
            }
        }
    }

    pub fn statuses(&self) -> Vec<ContainerStatus> {
        let now = Instant::now();
        self.containers
            .iter()
            .map(|c| ContainerStatus {
                name: c.spec.name.clone(),
                state: if let Some(child) = &c.child {
                    ContainerState::Running { pid: child.id() }
                } else if let Some(reason) = &c.waiting {
                    ContainerState::Waiting {
                        reason: reason.clone(),
                    }
                } else {
                    ContainerState::Exited {
                        code: c.last_exit.flatten(),
                        restart_in_ms: c
                            .restart_at
                            .map(|t| t.saturating_duration_since(now).as_millis() as u64),
                    }
                },
                restarts: c.restarts,
                log: c.log.clone(),
            })
            .collect()
    }

    /// The pod's phase, as Kubernetes would report it.
    pub fn phase(&self) -> &'static str {
        let running = self.containers.iter().filter(|c| c.child.is_some()).count();
        if !self.containers.is_empty() && running == self.containers.len() {
            "Running"
        } else if self.containers.iter().any(|c| c.waiting.is_some()) {
            "Pending"
        } else if self
            .containers
            .iter()
            .all(|c| c.child.is_none() && c.restart_at.is_none() && c.last_exit.is_some())
        {
            if self.containers.iter().all(|c| c.last_exit == Some(Some(0))) {
                "Succeeded"
            } else {
                "Failed"
            }
        } else {
            "Running"
        }
    }

    /// Stops every container: SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        for c in self.containers.drain(..) {
            stop_container(c, grace);
        }
    }
}

fn start(env: &PodEnv, c: &mut ContainerProc) {
    match spawn_container(env, &c.spec, &c.log) {
        Ok(child) => {
            c.child = Some(child);
            c.waiting = None;
            c.started = Some(Instant::now());
        }
        Err(reason) => {
            c.waiting = Some(reason);
            c.restart_at = Some(Instant::now() + c.backoff);
            c.backoff = (c.backoff * 2).min(BACKOFF_MAX);
        }
    }
}

fn spawn_container(env: &PodEnv, spec: &ContainerSpec, log: &Path) -> Result<Child, String> {
    let Some(program) = spec.argv.first() else {
        return Err(
            "no command: the local runtime runs a container's command (images are not run)".into(),
        );
    };
    let exe = resolve_command(program, &env.search_path).ok_or_else(|| {
        format!("command {program:?} not found (looked next to ambientctl and in $PATH)")
    })?;
    let binds =
        pod_files(&env.dir, &env.identity).map_err(|e| format!("writing the pod's files: {e}"))?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("log {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let id = &env.identity;
    let mut vars: BTreeMap<String, String> = [
        ("POD_NAME", id.name.clone()),
        ("POD_NAMESPACE", id.namespace.clone()),
        ("POD_IP", id.ip.to_string()),
        ("NODE_NAME", id.node.clone()),
        ("SERVICE_ACCOUNT", id.service_account.clone()),
        ("HOSTNAME", id.name.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, v) in &spec.env {
        let value = match v {
            EnvValue::Literal(v) => v.clone(),
            EnvValue::Field(path) => match id.field(path) {
                Some(v) => v,
                None => {
                    warn!(variable = %k, field = %path, "field not supported by the local runtime; variable left empty");
                    String::new()
                }
            },
        };
        vars.insert(k.clone(), value);
    }
    let mut cmd = Command::new(&exe);
    cmd.arg0(OsString::from(program))
        .args(spec.argv[1..].iter().map(|a| expand(a, &vars)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .envs(&vars);
    if let Some(dir) = &spec.working_dir {
        cmd.current_dir(dir);
    }
    let netns = env.netns.fd().try_clone().map_err(|e| e.to_string())?;
    let binds = binds
        .iter()
        .map(|(s, t)| (cstring(s), cstring(t)))
        .collect();
    spawn::configure(&mut cmd, Entry::Pod { netns, binds });
    cmd.spawn()
        .map_err(|e| format!("starting {}: {e}", exe.display()))
}

fn stop_container(mut c: ContainerProc, grace: Duration) {
    let Some(mut child) = c.child.take() else {
        return;
    };
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for PodProcesses {
    fn drop(&mut self) {
        self.stop(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_resolve_like_a_shell() {
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = vec![dir.path().to_path_buf()];
        assert_eq!(resolve_command("tool", &path), Some(tool.clone()));
        assert_eq!(resolve_command("missing", &path), None);
        assert_eq!(
            resolve_command(tool.to_str().unwrap(), &[]),
            Some(tool.clone())
        );
        std::fs::write(dir.path().join("plain"), "").unwrap();
        assert_eq!(resolve_command("plain", &path), None, "not executable");
    }

    #[test]
    fn pod_files_point_dns_at_the_cluster_and_search_the_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let id = PodIdentity {
            namespace: "bookinfo".into(),
            name: "sleep".into(),
            ip: Ipv4Addr::new(10, 244, 1, 2),
            node: "node-1".into(),
            service_account: "sleep".into(),
        };
        let binds = pod_files(dir.path(), &id).unwrap();
        let resolv = std::fs::read_to_string(&binds[0].0).unwrap();
        assert!(resolv.contains("nameserver 10.96.0.10"));
        assert!(
            resolv.contains("search bookinfo.svc.cluster.local svc.cluster.local cluster.local")
        );
        let hosts = std::fs::read_to_string(&binds[1].0).unwrap();
        assert!(hosts.contains("10.244.1.2\tsleep"));
    }

    #[test]
    fn downward_api_fields_come_from_the_pod() {
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "c",
            "env": [
                {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "MODE", "value": "x"},
            ],
        }))
        .unwrap();
        let spec = ContainerSpec::of(&c);
        assert_eq!(
            spec.env,
            [
                (
                    "NODE_NAME".to_string(),
                    EnvValue::Field("spec.nodeName".into())
                ),
                ("MODE".to_string(), EnvValue::Literal("x".into())),
            ]
        );
        let id = PodIdentity {
            namespace: "shop".into(),
            name: "web-1".into(),
            ip: Ipv4Addr::new(10, 244, 1, 7),
            node: "node-1".into(),
            service_account: "web".into(),
        };
        assert_eq!(id.field("spec.nodeName").as_deref(), Some("node-1"));
        assert_eq!(id.field("status.podIP").as_deref(), Some("10.244.1.7"));
        assert_eq!(id.field("metadata.namespace").as_deref(), Some("shop"));
        assert_eq!(id.field("metadata.uid"), None);
    }
}
