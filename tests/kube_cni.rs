//! Our CNI plugin (`ambient-cni`) driven through the real CNI exec protocol: libcni's runtime
//! (`cnitool`) runs it chained after the reference plugins (bridge with host-local IPAM, and
//! loopback), all built by `tools/build.sh cni`, on network namespaces the test creates as
//! pods, with the node agent watching a real API server (kube-lab). The agent itself puts the
//! plugin in the node's configuration (install mode) and takes it out on uninstall. The error
//! cases run the plugin directly, as a runtime does (environment + configuration on stdin),
//! to read the error result's code.
//!
//! Nothing plays ztunnel here: whether a pod's traffic is captured is seen at the port the
//! capture rules send it to (15001), where the test listens in the pod's namespace in
//! ztunnel's place.

#![forbid(unsafe_code)]

mod common;
mod kube_common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ambient_lab::kube::{KubeLab, KubeLabOptions, tools_dir};
use ambient_lab::process::Proc;
use ambient_lab::sandbox::run_test;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube_common::*;
use serde_json::{Value, json};
use ztunnel::agent::PodStatus;
use ztunnel::agent::cni::CniClient;
use ztunnel::inpod::netns::Netns;

const NODE: &str = "node-a";
/// host-local hands out addresses of this range; the bridge (`cni0`) is its gateway.
const POD_CIDR: &str = "10.244.1.0/24";
const GATEWAY: &str = "10.244.1.1";
/// Where the test's "server outside the pod" listens, on the node's side of the bridge.
const SERVER_PORT: u16 = 8080;
/// ztunnel's outbound capture port in a pod.
const OUTBOUND: u16 = 15001;

/// Everything a CNI invocation needs: the configuration directory, plugin path, agent socket.
struct Cni {
    dir: PathBuf,
    /// The node's network configuration (`/etc/cni/net.d`).
    conf_dir: PathBuf,
    /// The node's plugin binaries (`/opt/cni/bin`), where the agent puts ours.
    bin_dir: PathBuf,
    agent_socket: PathBuf,
    kubeconfig: PathBuf,
}

/// The cluster's own pod network, before ambient-rs joins its chain.
const PRIMARY: &str = "10-pods.conflist";

impl Cni {
    fn new(dir: &Path, kubeconfig: &Path) -> std::io::Result<Cni> {
        let cni = Cni {
            dir: dir.to_path_buf(),
            conf_dir: dir.join("net.d"),
            bin_dir: dir.join("opt-cni-bin"),
            agent_socket: dir.join("agent/cni.sock"),
            kubeconfig: kubeconfig.to_path_buf(),
        };
        std::fs::create_dir_all(&cni.conf_dir)?;
        std::fs::create_dir_all(&cni.bin_dir)?;
        // The cluster's pod network (first by name: the one a runtime uses, and the one the
        // agent joins), and loopback, which runtimes run on their own.
        let pods = json!({"cniVersion": "1.1.0", "name": "k8s-pod-network", "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR}]],
                      "dataDir": dir.join("ipam")}},
        ]});
        let loopback = json!({"cniVersion": "1.1.0", "name": "loopback",
                              "plugins": [{"type": "loopback"}]});
        std::fs::write(
            cni.conf_dir.join(PRIMARY),
            serde_json::to_string_pretty(&pods).unwrap(),
        )?;
        std::fs::write(
            cni.conf_dir.join("99-loopback.conflist"),
            loopback.to_string(),
        )?;
        Ok(cni)
    }

    /// Our plugin's entry in the chain.
    fn plugin_conf(&self) -> Value {
        json!({"type": "ambient-cni", "agentSocket": self.agent_socket,
               "kubeconfig": self.kubeconfig})
    }

    /// CNI_PATH: the reference plugins, and the node's directory our plugin is installed in.
    fn path(&self) -> String {
        format!(
            "{}:{}",
            tools_dir().join("bin/cni").display(),
            self.bin_dir.display()
        )
    }

    /// `cnitool <command> <network> <netns>` for pod `namespace/name`.
    fn cnitool(
        &self,
        command: &str,
        network: &str,
        netns: &Path,
        pod: (&str, &str),
    ) -> std::process::Output {
        let ifname = if network == "loopback" { "lo" } else { "eth0" };
        Command::new(tools_dir().join("bin/cni/cnitool"))
            .args([command, network])
            .arg(netns)
            .env("NETCONFPATH", &self.conf_dir)
            .env("CNI_PATH", self.path())
            .env("CNI_IFNAME", ifname)
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={}",
                    pod.0, pod.1
                ),
            )
            .output()
            .expect("running cnitool")
    }

    /// Sets up pod `namespace/name` as a kubelet would: a new network namespace, loopback,
    /// then `network`. Returns the namespace's path and the pod's address.
    fn start_pod(&self, network: &str, pod: (&str, &str)) -> Result<(PathBuf, String), String> {
        let netns = self.dir.join(format!("netns-{}-{}", pod.0, pod.1));
        if !netns.exists() {
            ambient_lab::netns::create(&netns).map_err(|e| e.to_string())?;
        }
        for net in ["loopback", network] {
            let out = self.cnitool("add", net, &netns, pod);
            if !out.status.success() {
                return Err(format!(
                    "cnitool add {net} for {}/{}: {}{}",
                    pod.0,
                    pod.1,
                    text(&out.stdout),
                    text(&out.stderr)
                ));
            }
            if net == network {
                let result: Value = serde_json::from_slice(&out.stdout)
                    .map_err(|e| format!("result of {net}: {e}: {}", text(&out.stdout)))?;
                let ip = result["ips"][0]["address"]
                    .as_str()
                    .and_then(|a| a.split('/').next())
                    .ok_or_else(|| format!("no address in {result}"))?
                    .to_string();
                return Ok((netns, ip));
            }
        }
        unreachable!("the loop returns at the pod network")
    }

    /// Runs our plugin directly: `CNI_COMMAND=command`, the configuration on stdin. Returns
    /// whether it succeeded and what it printed (a result or an error result).
    fn exec(
        &self,
        command: &str,
        conf: &Value,
        netns: Option<&Path>,
        pod: (&str, &str),
    ) -> (bool, Value) {
        let mut cmd = Command::new(e2e::cni_plugin());
        cmd.env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", format!("direct-{}-{}", pod.0, pod.1))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", self.path())
            .env(
                "CNI_ARGS",
                format!("K8S_POD_NAMESPACE={};K8S_POD_NAME={}", pod.0, pod.1),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(n) = netns {
            cmd.env("CNI_NETNS", n);
        }
        let mut child = cmd.spawn().expect("running ambient-cni");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let printed = if out.stdout.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("ambient-cni printed {:?}: {e}", text(&out.stdout)))
        };
        (out.status.success(), printed)
    }

    /// Our plugin's configuration as a runtime passes it in the chain (with `prevResult`).
    fn chained(&self, extra: Value) -> Value {
        let mut conf = self.plugin_conf();
        conf["cniVersion"] = json!("1.1.0");
        conf["name"] = json!("k8s-pod-network");
        conf["prevResult"] = json!({"cniVersion": "1.1.0",
            "interfaces": [{"name": "eth0", "sandbox": "/x"}],
            "ips": [{"address": "10.244.1.200/24", "interface": 0}]});
        for (k, v) in extra.as_object().unwrap() {
            conf[k] = v.clone();
        }
        conf
    }
}

fn daemonset() -> Value {
    let (namespace, name) = DAEMONSET.split_once('/').unwrap();
    json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "node-agent", "image": "x"}]}}},
    })
}

fn pod(namespace: &str, name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"nodeName": NODE, "terminationGracePeriodSeconds": 0,
                 "containers": [{"name": "app", "image": "x"}]},
    })
}

/// Which listener a connection from pod namespace `netns` to the node's server reaches:
/// `"server"` (not captured) or `"captured"` (our stand-in for ztunnel's outbound port).
async fn reached(netns: &Path) -> Result<String, String> {
    let netns = netns.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let ns = Netns::open(&netns).map_err(|e| e.to_string())?;
        let server: SocketAddr = format!("{GATEWAY}:{SERVER_PORT}").parse().unwrap();
        let stream = ns
            .run(|| TcpStream::connect_timeout(&server, Duration::from_secs(5)))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("connecting from {}: {e}", netns.display()))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut line = String::new();
        BufReader::new(stream)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        Ok(line.trim().to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Answers every connection on `listener` with `tag` and a newline.
fn answer_with(listener: TcpListener, tag: &'static str) {
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = writeln!(stream, "{tag}");
        }
    });
}

/// Listens on ztunnel's outbound port inside pod namespace `netns`, answering "captured".
fn stand_in_for_ztunnel(netns: &Path) -> Result<(), String> {
    let ns = Netns::open(netns).map_err(|e| e.to_string())?;
    let listener = ns
        .run(|| TcpListener::bind(("0.0.0.0", OUTBOUND)))
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    answer_with(listener, "captured");
    Ok(())
}

fn start_agent(cni: &Cni) -> std::io::Result<Proc> {
    let dir = &cni.dir;
    let kubeconfig = &cni.kubeconfig;
    let agent_dir = dir.join("agent");
    std::fs::create_dir_all(&agent_dir)?;
    let args: Vec<String> = [
        "component",
        "node-agent",
        "--zds-socket",
        &agent_dir.join("zds.sock").display().to_string(),
        "--cni-socket",
        &agent_dir.join("cni.sock").display().to_string(),
        "--state-file",
        &agent_dir.join("pods.json").display().to_string(),
        "--node-name",
        NODE,
        "--kubeconfig",
        &kubeconfig.display().to_string(),
        "--cni-conf-dir",
        &cni.conf_dir.display().to_string(),
        "--cni-bin-dir",
        &cni.bin_dir.display().to_string(),
        "--cni-plugin",
        &e2e::cni_plugin().display().to_string(),
        "--daemonset",
        DAEMONSET,
        "--readiness-addr",
        READINESS,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Proc::spawn(
        "node-agent",
        &Netns::current()?,
        common::EXE.path(),
        &args,
        &dir.join("node-agent.log"),
        &[("RUST_LOG", "info")],
    )
}

/// The DaemonSet the agent runs in: while it exists, an exiting agent leaves the plugin.
const DAEMONSET: &str = "ambient-rs/ztunnel";
const READINESS: &str = "127.0.0.1:15022";

/// Waits until the agent reports ready (its pod watch listed, the plugin in the chain).
async fn agent_ready() -> Result<(), String> {
    common::eventually(Duration::from_secs(20), || async {
        let mut stream = tokio::net::TcpStream::connect(READINESS)
            .await
            .map_err(|e| e.to_string())?;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /healthz/ready HTTP/1.0\r\nHost: agent\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        if answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(answer)
        }
    })
    .await
}

/// The agent's pods once `check` holds of them (the agent acts on watch events).
async fn agent_pods(
    agent: &CniClient,
    what: &str,
    check: impl Fn(&[PodStatus]) -> bool,
) -> Result<Vec<PodStatus>, String> {
    common::eventually(Duration::from_secs(20), || async {
        let pods = agent.pods().await.map_err(|e| e.to_string())?;
        if check(&pods) {
            Ok(pods)
        } else {
            Err(format!("{what}: agent holds {pods:?}"))
        }
    })
    .await
}

fn holds(pods: &[PodStatus], namespace: &str, name: &str) -> bool {
    pods.iter()
        .any(|p| p.pod.namespace == namespace && p.pod.name == name && p.captured)
}

#[test]
fn cni_plugin_enrols_pods_by_labels_behind_the_reference_plugins() {
    run_test(
        "cni_plugin_enrols_pods_by_labels_behind_the_reference_plugins",
        |dir| async move {
            ztunnel::agent::rtnl::Rtnl::open()?.set_up("lo", None)?;
            // libcni caches results under /var/lib/cni: keep this sandbox's to itself.
            std::fs::create_dir_all("/var/lib/cni")?;
            nix::mount::mount(
                Some("tmpfs"),
                "/var/lib/cni",
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )?;
            let kube = KubeLab::start(&dir, KubeLabOptions::default()).await?;
            kube.add_node(NODE).await?;
            kube.apply(namespace("shop", true)).await?;
            kube.apply(namespace("plain", false)).await?;
            kube.apply(namespace("other", false)).await?;
            for (ns, name, labels) in [
                ("shop", "early", json!({"app": "early"})),
                ("shop", "web", json!({"app": "web"})),
                (
                    "shop",
                    "opted-out",
                    json!({"istio.io/dataplane-mode": "none"}),
                ),
                ("plain", "tool", json!({"app": "tool"})),
                ("shop", "late", json!({"app": "late"})),
                ("other", "free", json!({"app": "free"})),
            ] {
                kube.apply(pod(ns, name, labels)).await?;
            }
            // The DaemonSet the agent belongs to (an uninstall deletes it).
            kube.apply(namespace("ambient-rs", false)).await?;
            kube.apply(daemonset()).await?;
            let cni = Cni::new(&dir, kube.kubeconfig())?;
            let agent_client = CniClient::new(&cni.agent_socket);
            let primary = cni.conf_dir.join(PRIMARY);
            let original = std::fs::read(&primary)?;

            // A pod running before ambient-rs was installed (the chain without our plugin),
            // one process in it.
            let (early_ns, early_ip) = cni.start_pod("k8s-pod-network", ("shop", "early"))?;
            kube.set_pod_running("shop", "early", &early_ip).await?;
            let _early_process = Proc::spawn(
                "early",
                &Netns::open(&early_ns)?,
                Path::new("/bin/sleep"),
                &["600".to_string()],
                &dir.join("early.log"),
                &[],
            )?;
            // The node's side of the bridge now exists: the server pods connect to.
            answer_with(TcpListener::bind((GATEWAY, SERVER_PORT))?, "server");

            let mut agent = start_agent(&cni)?;
            // Ready once its plugin is in the node's chain (and its pod watch has listed).
            agent_ready().await?;
            let chain: Value = serde_json::from_slice(&std::fs::read(&primary)?)?;
            assert_eq!(chain["plugins"][1]["type"], "ambient-cni", "{chain}");
            assert!(cni.bin_dir.join("ambient-cni").is_file());
            assert!(cni.conf_dir.join("ambient-cni-kubeconfig").is_file());
            // Found by its address, without any CNI event.
            agent_pods(&agent_client, "early enrolled by the watch", |p| {
                holds(p, "shop", "early")
            })
            .await?;
            stand_in_for_ztunnel(&early_ns)?;
            assert_eq!(reached(&early_ns).await?, "captured");

            // Through the chain: in the mesh by its namespace; out by its own label; out as
            // its namespace is.
            let (web_ns, web_ip) = cni.start_pod("k8s-pod-network", ("shop", "web"))?;
            let (opted_ns, _) = cni.start_pod("k8s-pod-network", ("shop", "opted-out"))?;
            let (tool_ns, tool_ip) = cni.start_pod("k8s-pod-network", ("plain", "tool"))?;
            kube.set_pod_running("shop", "web", &web_ip).await?;
            kube.set_pod_running("plain", "tool", &tool_ip).await?;
            let pods = agent_client.pods().await?;
            assert!(holds(&pods, "shop", "web"), "{pods:?}");
            assert!(
                !pods
                    .iter()
                    .any(|p| p.pod.name != "web" && p.pod.name != "early")
            );
            for ns in [&web_ns, &opted_ns, &tool_ns] {
                stand_in_for_ztunnel(ns)?;
            }
            assert_eq!(reached(&web_ns).await?, "captured");
            assert_eq!(reached(&opted_ns).await?, "server");
            assert_eq!(reached(&tool_ns).await?, "server");
            let check = cni.cnitool("check", "k8s-pod-network", &web_ns, ("shop", "web"));
            assert!(check.status.success(), "{}", text(&check.stderr));

            // Labels change live: the namespace joins, then the pod opts out.
            kube.apply(namespace("plain", true)).await?;
            agent_pods(&agent_client, "tool enrolled by its namespace", |p| {
                holds(p, "plain", "tool")
            })
            .await?;
            assert_eq!(reached(&tool_ns).await?, "captured");
            let pods_api: Api<Pod> = Api::namespaced(kube.client(), "plain");
            pods_api
                .patch(
                    "tool",
                    &PatchParams::default(),
                    &Patch::Merge(
                        json!({"metadata": {"labels": {"istio.io/dataplane-mode": "none"}}}),
                    ),
                )
                .await?;
            agent_pods(&agent_client, "tool released by its label", |p| {
                !p.iter().any(|p| p.pod.name == "tool")
            })
            .await?;
            assert_eq!(reached(&tool_ns).await?, "server");

            // CHECK notices capture rules gone from behind the agent's back.
            ztunnel::agent::capture::remove(&Netns::open(&web_ns)?)?;
            let check = cni.cnitool("check", "k8s-pod-network", &web_ns, ("shop", "web"));
            assert!(!check.status.success());
            assert!(
                text(&check.stderr).contains("no capture rules"),
                "{}",
                text(&check.stderr)
            );
            let (ok, error) = cni.exec(
                "CHECK",
                &cni.chained(json!({})),
                Some(&web_ns),
                ("shop", "web"),
            );
            assert!(!ok);
            assert_eq!(error["code"], 100, "{error}");

            // DEL releases.
            let del = cni.cnitool("del", "k8s-pod-network", &web_ns, ("shop", "web"));
            assert!(del.status.success(), "{}", text(&del.stderr));
            let pods = agent_client.pods().await?;
            assert!(!pods.iter().any(|p| p.pod.name == "web"), "{pods:?}");

            // Bad configurations are error results with the spec's codes.
            let (ok, error) = cni.exec(
                "ADD",
                &cni.chained(json!({"agentSocket": 5})),
                Some(&web_ns),
                ("shop", "web"),
            );
            assert!(!ok);
            assert_eq!(error["code"], 6, "{error}");
            let (ok, error) = cni.exec(
                "ADD",
                &cni.chained(json!({"cniVersion": "0.3.1"})),
                Some(&web_ns),
                ("shop", "web"),
            );
            assert!(!ok);
            assert_eq!(error["code"], 1, "{error}");
            let mut unchained = cni.chained(json!({}));
            unchained.as_object_mut().unwrap().remove("prevResult");
            let (ok, error) = cni.exec("ADD", &unchained, Some(&web_ns), ("shop", "web"));
            assert!(!ok);
            assert_eq!(error["code"], 7, "{error}");
            let (ok, version) =
                cni.exec("VERSION", &json!({"cniVersion": "1.0.0"}), None, ("", ""));
            assert!(ok);
            assert_eq!(
                version["supportedVersions"],
                json!(["0.4.0", "1.0.0", "1.1.0"])
            );

            // The agent down: a pod in the mesh does not start, one outside it does.
            agent.kill();
            let late_ns = dir.join("netns-shop-late");
            ambient_lab::netns::create(&late_ns)?;
            let (ok, error) = cni.exec(
                "ADD",
                &cni.chained(json!({})),
                Some(&late_ns),
                ("shop", "late"),
            );
            assert!(!ok);
            assert_eq!(error["code"], 11, "{error}");
            assert!(
                error["msg"]
                    .as_str()
                    .unwrap()
                    .contains("node agent is unreachable"),
                "{error}"
            );
            let (free_ns, _) = cni.start_pod("k8s-pod-network", ("other", "free"))?;
            assert_eq!(reached(&free_ns).await?, "server");
            // STATUS: ready while pods outside the mesh can be told; not without a kubeconfig.
            let (ok, _) = cni.exec("STATUS", &cni.chained(json!({})), None, ("", ""));
            assert!(ok);
            let mut blind = cni.chained(json!({}));
            blind.as_object_mut().unwrap().remove("kubeconfig");
            let (ok, error) = cni.exec("STATUS", &blind, None, ("", ""));
            assert!(!ok);
            assert_eq!(error["code"], 50, "{error}");
            let status = cni.cnitool("status", "k8s-pod-network", &free_ns, ("other", "free"));
            assert!(status.status.success(), "{}", text(&status.stderr));
            // DEL never fails for want of the agent (its watch releases what is gone).
            let del = cni.cnitool("del", "k8s-pod-network", &opted_ns, ("shop", "opted-out"));
            assert!(del.status.success(), "{}", text(&del.stderr));

            // The kubelet's retry once the agent is back starts the pod, captured.
            let mut agent = start_agent(&cni)?;
            let (late_ns, _) = common::eventually(Duration::from_secs(20), || async {
                cni.start_pod("k8s-pod-network", ("shop", "late"))
            })
            .await?;
            stand_in_for_ztunnel(&late_ns)?;
            assert_eq!(reached(&late_ns).await?, "captured");

            // A restart (its DaemonSet still there) leaves the plugin in the chain.
            agent.sigterm();
            assert!(agent.exit_within(Duration::from_secs(10)).await.is_some());
            let chain: Value = serde_json::from_slice(&std::fs::read(&primary)?)?;
            assert_eq!(chain["plugins"][1]["type"], "ambient-cni", "{chain}");
            // An uninstall (the DaemonSet deleted) restores the configuration as it was.
            let mut agent = start_agent(&cni)?;
            agent_ready().await?;
            kube.delete("apps/v1", "DaemonSet", "ambient-rs", "ztunnel")
                .await?;
            agent.sigterm();
            assert!(agent.exit_within(Duration::from_secs(10)).await.is_some());
            assert_eq!(
                String::from_utf8_lossy(&std::fs::read(&primary)?),
                String::from_utf8_lossy(&original)
            );
            assert!(!cni.bin_dir.join("ambient-cni").exists());
            assert!(!cni.conf_dir.join("ambient-cni-kubeconfig").exists());
            let left: Vec<_> = std::fs::read_dir(&cni.conf_dir)?
                .flatten()
                .map(|e| e.file_name())
                .collect();
            assert_eq!(left.len(), 2, "{left:?}");
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        },
    );
}
