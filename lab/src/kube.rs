//! A real Kubernetes control plane for tests: `kube-lab` (tools/kube: etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler in one process) as a child process, with the
//! upstream CRDs of what the controller reads, and the few things a test does to it (apply,
//! wait for a condition, make Nodes, play the kubelet's part in a Pod's status, mint tokens,
//! compact etcd, restart).
//!
//! `kube-lab` is a Go program built by `tools/build.sh` (which also downloads the CRD
//! modules); a test that finds it missing fails saying so, it is never skipped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::discovery::Scope;
use kube::runtime::wait::{await_condition, conditions};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Child;

use super::spawn::{self, Entry};

/// The audience of the tokens proxies present to the controller's CA: the API server must
/// accept it in TokenReviews.
pub const CA_AUDIENCE: &str = ambient_controller::ca::tokenreview::CA_AUDIENCE;
/// kube-lab's service-account issuer, also the default audience of TokenRequests.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// Field manager of what tests apply (the default of [`KubeLabOptions::field_manager`]).
pub const FIELD_MANAGER: &str = "kube-lab-test";
/// The CRDs of the kinds the controller reads, installed from the upstream modules.
pub const READ_CRDS: &[&str] = &[
    "gateways.gateway.networking.k8s.io",
    "httproutes.gateway.networking.k8s.io",
    "grpcroutes.gateway.networking.k8s.io",
    "authorizationpolicies.security.istio.io",
    "peerauthentications.security.istio.io",
    "requestauthentications.security.istio.io",
    "virtualservices.networking.istio.io",
    "destinationrules.networking.istio.io",
    "serviceentries.networking.istio.io",
];

/// Start to `ready` takes 3-5 s on an idle 2-core machine; a loaded CI machine gets slack.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// SIGTERM to exit takes 1-3 s.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// Where `tools/build.sh` puts binaries and module lists.
pub fn tools_dir() -> PathBuf {
    match std::env::var_os("AMBIENT_TOOLS_DIR") {
        Some(d) => d.into(),
        None => Path::new(&std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".cache/ambient-rs/tools"),
    }
}

/// The kube-lab executable: `$AMBIENT_KUBE_LAB`, else the one `tools/build.sh` builds.
pub fn executable() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("AMBIENT_KUBE_LAB") {
        Some(p) => PathBuf::from(p),
        None => tools_dir().join("bin/kube-lab"),
    };
    if !path.is_file() {
        bail!(
            "kube-lab not found at {} (set AMBIENT_KUBE_LAB or run tools/build.sh, which \
             builds it and downloads the upstream CRDs; a cold build takes ~10 min)",
            path.display()
        );
    }
    Ok(path)
}

/// How to start kube-lab.
#[derive(Clone, Debug)]
pub struct KubeLabOptions {
    /// The API server's watch cache. Off, every watch goes to etcd, so after
    /// [`KubeLab::compact`] a watch resumed from an older resourceVersion gets 410 Gone.
    pub watch_cache: bool,
    /// Record the requests of the admin user (tests and an in-process controller) in an
    /// audit log, read by [`KubeLab::audit`].
    pub audit: bool,
    /// Further kube-lab flags.
    pub args: Vec<String>,
    /// The field manager of [`KubeLab::apply`] and [`KubeLab::apply_status`].
    pub field_manager: String,
    /// Where kube-lab logs (default `<dir>/kube-lab.log`).
    pub log: Option<PathBuf>,
}

impl Default for KubeLabOptions {
    fn default() -> Self {
        KubeLabOptions {
            watch_cache: true,
            audit: false,
            args: Vec::new(),
            field_manager: FIELD_MANAGER.into(),
            log: None,
        }
    }
}

/// A running kube-lab; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct KubeLab {
    exe: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    audit_log: Option<PathBuf>,
    child: Option<Child>,
    kubeconfig: PathBuf,
    admin: SocketAddr,
    client: kube::Client,
    field_manager: String,
}

impl KubeLab {
    /// Starts kube-lab with its data in `dir/kube-lab` (logs in `dir/kube-lab.log` unless
    /// the options say otherwise) and waits for its `ready` line.
    pub async fn start(dir: &Path, options: KubeLabOptions) -> anyhow::Result<KubeLab> {
        let exe = executable()?;
        let data = dir.join("kube-lab");
        std::fs::create_dir_all(&data)?;
        let mut args = vec![
            format!("--data-dir={}", data.display()),
            "--admin-addr=127.0.0.1:0".into(),
            format!("--api-audiences={ISSUER},{CA_AUDIENCE}"),
            format!("--watch-cache={}", options.watch_cache),
        ];
        let audit_log = options.audit.then(|| dir.join("kube-lab-audit.log"));
        if let Some(log) = &audit_log {
            let policy = dir.join("kube-lab-audit-policy.yaml");
            std::fs::write(
                &policy,
                "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived, ResponseStarted]\n\
                 rules:\n- level: Metadata\n  users: [kube-lab-admin]\n- level: None\n",
            )?;
            args.push(format!(
                "--apiserver-arg=--audit-policy-file={}",
                policy.display()
            ));
            args.push(format!(
                "--apiserver-arg=--audit-log-path={}",
                log.display()
            ));
            args.push("--apiserver-arg=--audit-log-format=json".into());
            // Written before the response is sent: a test reads what it just caused.
            args.push("--apiserver-arg=--audit-log-mode=blocking".into());
        }
        args.extend(options.args);
        let field_manager = options.field_manager;
        let log = options.log.unwrap_or_else(|| dir.join("kube-lab.log"));
        let (child, kubeconfig, admin) = launch(&exe, &args, &log).await?;
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&kubeconfig)?,
            &kube::config::KubeConfigOptions::default(),
        )
        .await?;
        Ok(KubeLab {
            exe,
            args,
            log,
            audit_log,
            child: Some(child),
            kubeconfig,
            admin,
            client: kube::Client::try_from(config)?,
            field_manager,
        })
    }

    /// The admin (`system:masters`) kubeconfig; it stays valid across restarts.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A client with the admin kubeconfig.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// Compacts etcd up to its current revision (the admin hook); returns the revision.
    pub async fn compact(&self) -> anyhow::Result<u64> {
        let mut s = tokio::net::TcpStream::connect(self.admin).await?;
        s.write_all(b"POST /compact HTTP/1.0\r\nHost: kube-lab\r\nContent-Length: 0\r\n\r\n")
            .await?;
        let mut raw = String::new();
        s.read_to_string(&mut raw).await?;
        let body = raw
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default();
        serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| v["revision"].as_u64())
            .ok_or_else(|| anyhow!("/compact answered {raw:?}"))
    }

    /// Stops kube-lab (SIGTERM) and starts it again on the same data: same port,
    /// certificates, tokens and objects; clients only reconnect.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await;
        let (child, kubeconfig, admin) = launch(&self.exe, &self.args, &self.log).await?;
        self.child = Some(child);
        self.kubeconfig = kubeconfig;
        self.admin = admin;
        Ok(())
    }

    /// Stops kube-lab (SIGTERM, SIGKILL after a grace period) and waits for it to exit.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&child);
            if tokio::time::timeout(STOP_GRACE, child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }

    /// The requests of the admin user so far (audit events at `ResponseComplete`), when
    /// started with [`KubeLabOptions::audit`].
    pub fn audit(&self) -> Vec<Value> {
        let Some(path) = &self.audit_log else {
            panic!("kube-lab was started without an audit log");
        };
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The last lines of kube-lab's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// The API of `kind` (in `namespace` when it is namespaced and `namespace` is not empty),
    /// found by discovery.
    pub async fn api(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
    ) -> anyhow::Result<Api<DynamicObject>> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (resource, caps) = kube::discovery::pinned_kind(&self.client, &gvk)
            .await
            .with_context(|| format!("discovering {api_version} {kind}"))?;
        Ok(match caps.scope {
            Scope::Namespaced if !namespace.is_empty() => {
                Api::namespaced_with(self.client.clone(), namespace, &resource)
            }
            _ => Api::all_with(self.client.clone(), &resource),
        })
    }

    async fn api_of(&self, object: &Value) -> anyhow::Result<(Api<DynamicObject>, String)> {
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let api = self
            .api(
                &s(&object["apiVersion"]),
                &s(&object["kind"]),
                &s(&object["metadata"]["namespace"]),
            )
            .await?;
        Ok((api, s(&object["metadata"]["name"])))
    }

    /// Server-side applies `object` (forcing conflicts); returns what the server stored. A
    /// namespaced object that names no namespace goes to `default`, as with kubectl.
    pub async fn apply(&self, mut object: Value) -> anyhow::Result<Value> {
        if object["metadata"]["namespace"]
            .as_str()
            .is_none_or(str::is_empty)
        {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            let namespaced = self
                .api(&s(&object["apiVersion"]), &s(&object["kind"]), "default")
                .await?
                .resource_url()
                .contains("/namespaces/");
            if namespaced {
                object["metadata"]["namespace"] = "default".into();
            }
        }
        let (api, name) = self.api_of(&object).await?;
        let stored = api
            .patch(
                &name,
                &PatchParams::apply(&self.field_manager).force(),
                &Patch::Apply(&object),
            )
            .await
            .with_context(|| format!("applying {} {name}", object["kind"]))?;
        Ok(serde_json::to_value(stored)?)
    }

    /// Server-side applies `object`'s status (the `/status` subresource).
    pub async fn apply_status(&self, object: Value) -> anyhow::Result<Value> {
        let (api, name) = self.api_of(&object).await?;
        let stored = api
            .patch_status(
                &name,
                &PatchParams::apply(&self.field_manager).force(),
                &Patch::Apply(&object),
            )
            .await
            .with_context(|| format!("applying the status of {} {name}", object["kind"]))?;
        Ok(serde_json::to_value(stored)?)
    }

    /// The object, if it exists (`namespace` empty for cluster-scoped kinds).
    pub async fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<Option<Value>> {
        let api = self.api(api_version, kind, namespace).await?;
        Ok(api.get_opt(name).await?.map(|o| json!(o)))
    }

    /// Deletes the object at once (grace period 0: nothing waits for a kubelet); returns
    /// whether it existed.
    pub async fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<bool> {
        let api = self.api(api_version, kind, namespace).await?;
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::background()
        };
        match api.delete(name, &params).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Watches the object until `done` accepts it (`None`: it does not exist) and returns
    /// it; fails after `timeout`.
    pub async fn wait_for(
        &self,
        (api_version, kind): (&str, &str),
        namespace: &str,
        name: &str,
        timeout: Duration,
        done: impl Fn(Option<&Value>) -> bool,
    ) -> anyhow::Result<Option<Value>> {
        let api = self.api(api_version, kind, namespace).await?;
        let condition = move |o: Option<&DynamicObject>| done(o.map(|o| json!(o)).as_ref());
        match tokio::time::timeout(timeout, await_condition(api, name, condition)).await {
            Ok(found) => Ok(found?.map(|o| json!(o))),
            Err(_) => {
                let now = self.get(api_version, kind, namespace, name).await?;
                bail!("{kind} {namespace}/{name}: condition not met in {timeout:?}; now {now:?}")
            }
        }
    }

    /// A Node that fits pods (the scheduler needs `allocatable`), marked Ready.
    pub async fn add_node(&self, name: &str) -> anyhow::Result<()> {
        self.apply(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        }))
        .await?;
        let resources = json!({"cpu": "8", "memory": "16Gi", "pods": "110"});
        self.apply_status(json!({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {"allocatable": resources, "capacity": resources,
                       "conditions": [{"type": "Ready", "status": "True",
                                       "reason": "KubeletReady", "message": "kube-lab test node"}]},
        }))
        .await?;
        Ok(())
    }

    /// What a kubelet reports once the pod's containers run and pass their readiness probe:
    /// Running, ready, at `ip`. The EndpointSlice controller then lists it as ready.
    pub async fn set_pod_running(
        &self,
        namespace: &str,
        name: &str,
        ip: &str,
    ) -> anyhow::Result<()> {
        let conditions: Vec<Value> = ["PodScheduled", "Initialized", "ContainersReady", "Ready"]
            .iter()
            .map(|c| json!({"type": c, "status": "True"}))
            .collect();
        self.apply_status(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "conditions": conditions},
        }))
        .await?;
        Ok(())
    }

    /// A token of service account `namespace/account` for `audience` (TokenRequest), bound
    /// to pod `pod` of the same namespace when given (so a TokenReview names the pod and its
    /// node).
    pub async fn token(
        &self,
        namespace: &str,
        account: &str,
        audience: &str,
        pod: Option<&str>,
    ) -> anyhow::Result<String> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(vec![audience.to_string()]),
                bound_object_ref: pod.map(|p| BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(p.to_string()),
                    uid: None,
                }),
                expiration_seconds: Some(3600),
                ..Default::default()
            }),
            ..Default::default()
        };
        let answer = api
            .create_token_request(account, &PostParams::default(), &request)
            .await
            .with_context(|| format!("TokenRequest for {namespace}/{account}"))?;
        answer.status.and_then(|s| s.token).ok_or_else(|| {
            anyhow!("TokenRequest for {namespace}/{account}: no token in the answer")
        })
    }

    /// Writes to `path` a kubeconfig of service account `namespace/account` (a token for the
    /// API server's audience): a client with exactly the rights RBAC gives that account.
    pub async fn kubeconfig_for(
        &self,
        namespace: &str,
        account: &str,
        path: &Path,
    ) -> anyhow::Result<()> {
        let token = self.token(namespace, account, ISSUER, None).await?;
        let mut config = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        for user in &mut config.auth_infos {
            user.auth_info = Some(kube::config::AuthInfo {
                token: Some(token.clone().into()),
                ..Default::default()
            });
        }
        // JSON is YAML: every kubeconfig reader takes it.
        std::fs::write(path, serde_json::to_string_pretty(&config)?)?;
        Ok(())
    }

    /// Applies CRDs and waits until each is Established (served).
    pub async fn install_crds(&self, crds: &[Value]) -> anyhow::Result<()> {
        for crd in crds {
            self.apply(crd.clone()).await?;
        }
        let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        for crd in crds {
            let name = crd["metadata"]["name"].as_str().unwrap_or_default();
            tokio::time::timeout(
                Duration::from_secs(60),
                await_condition(api.clone(), name, conditions::is_crd_established()),
            )
            .await
            .with_context(|| format!("CRD {name} not Established in 60 s"))??;
        }
        Ok(())
    }

    /// Installs the upstream CRDs of the kinds the controller reads ([`READ_CRDS`]).
    pub async fn install_upstream_crds(&self) -> anyhow::Result<()> {
        self.install_crds(&upstream_crds(READ_CRDS)?).await
    }
}

impl Drop for KubeLab {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&child);
            let deadline = std::time::Instant::now() + STOP_GRACE;
            while std::time::Instant::now() < deadline {
                if !matches!(child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.start_kill();
        }
    }
}

fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Starts kube-lab and reads its stdout until `ready KUBECONFIG`; returns the child, the
/// kubeconfig and the admin hook's address.
async fn launch(
    exe: &Path,
    args: &[String],
    log: &Path,
) -> anyhow::Result<(Child, PathBuf, SocketAddr)> {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    // Killed with the thread that started it: a crashed test leaves no control plane behind.
    spawn::configure(&mut cmd, Entry::Stay);
    let mut child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        // Read to the end: a closed pipe would kill kube-lab (SIGPIPE) at its next line.
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.send(line);
        }
    });
    let ready = async {
        let mut admin = None;
        while let Some(line) = rx.recv().await {
            if let Some(a) = line.strip_prefix("admin http://") {
                admin = Some(a.parse::<SocketAddr>()?);
            } else if let Some(path) = line.strip_prefix("ready ") {
                let admin = admin.ok_or_else(|| anyhow!("no admin address before ready"))?;
                return Ok((PathBuf::from(path), admin));
            }
        }
        Err(anyhow!("kube-lab exited before it was ready"))
    };
    match tokio::time::timeout(START_TIMEOUT, ready).await {
        Ok(Ok((kubeconfig, admin))) => Ok((child, kubeconfig, admin)),
        outcome => {
            terminate(&child);
            let _ = tokio::time::timeout(STOP_GRACE, child.wait()).await;
            let why = match outcome {
                Ok(Err(e)) => e.to_string(),
                _ => format!("not ready in {START_TIMEOUT:?}"),
            };
            bail!("{why}; {} ends:\n{}", log.display(), tail(log, 30))
        }
    }
}

/// A module `tools/build.sh` downloaded into the Go module cache.
#[derive(Clone, Debug)]
pub struct GoModule {
    pub path: String,
    pub version: String,
    pub dir: PathBuf,
}

/// The CRD modules (`tools/crds/go.mod`), as `tools/build.sh` listed them.
pub fn crd_modules() -> anyhow::Result<Vec<GoModule>> {
    let list = tools_dir().join("crds.txt");
    let text = std::fs::read_to_string(&list).with_context(|| {
        format!(
            "reading {} (run tools/build.sh: it downloads the upstream CRD modules)",
            list.display()
        )
    })?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut words = l.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some(path), Some(version), Some(dir)) => Ok(GoModule {
                    path: path.into(),
                    version: version.into(),
                    dir: dir.into(),
                }),
                _ => Err(anyhow!("{}: bad line {l:?}", list.display())),
            }
        })
        .collect()
}

/// The upstream CRDs named in `names` (`plural.group`), read from the CRD modules: Gateway
/// API's standard channel (`config/crd/standard`), Istio's
/// `kubernetes/customresourcedefinitions.gen.yaml`.
pub fn upstream_crds(names: &[&str]) -> anyhow::Result<Vec<Value>> {
    let mut files = Vec::new();
    for m in crd_modules()? {
        match m.path.as_str() {
            "sigs.k8s.io/gateway-api" => {
                for f in std::fs::read_dir(m.dir.join("config/crd/standard"))? {
                    files.push(f?.path());
                }
            }
            "istio.io/api" => {
                files.push(m.dir.join("kubernetes/customresourcedefinitions.gen.yaml"))
            }
            _ => {}
        }
    }
    let mut found = Vec::new();
    for file in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "yaml"))
    {
        let text = std::fs::read_to_string(file)?;
        let documents = ambient_controller::source::yaml::parse(&text)
            .with_context(|| format!("{}", file.display()))?;
        for crd in documents.into_iter().map(|d| d.value) {
            if crd["kind"] == "CustomResourceDefinition"
                && names.contains(&crd["metadata"]["name"].as_str().unwrap_or_default())
            {
                found.push(crd);
            }
        }
    }
    for name in names {
        if !found.iter().any(|c| c["metadata"]["name"] == *name) {
            bail!(
                "no upstream CRD {name} in the modules of {}",
                tools_dir().join("crds.txt").display()
            );
        }
    }
    Ok(found)
}
