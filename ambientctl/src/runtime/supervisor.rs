//! The process at the root of a local mesh's namespaces (`ambientctl up` starts it inside
//! the sandbox): builds the network, runs the mesh, keeps the manifest directory's pods
//! running (plus the waypoints its Gateways ask for and what the CLI applied), serves the
//! control API, and stops everything on SIGTERM or Ctrl-C.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ambient_controller::model::gateway::WAYPOINT_CLASS;
use ambient_controller::model::{Kind, Object, ObjectKey};
use ambient_controller::source::manifests::ManifestDir;
use anyhow::Context;
use tokio::sync::{Mutex, Notify};
use tracing::{info, warn};

use super::cluster::{self, Cluster};
use super::control::{
    self, ApiError, Applied, ApplyRequest, ApplyResult, DeleteRequest, DeleteResult, Endpoints,
    NodeReport, Refused, StatusReport, StatusSource,
};
use super::generated::{self, Store, key_string};
use super::home::{Home, MeshInfo, Phase, now_secs};
use super::kubelet::{Kubelet, NodeSpec};
use super::waypoints::{READINESS_PATH, READINESS_PORT, WaypointEnv};
use super::{api_port, scrape_port};
use ambient_lab::http;
use ambient_lab::mesh::{controller_grpc, controller_monitoring};
use ambient_lab::{Lab, Mesh, MeshOptions};

/// How `ambientctl up` runs the mesh.
#[derive(Clone, Debug)]
pub struct UpOptions {
    pub manifests: PathBuf,
    pub nodes: usize,
    /// First two octets of the pods' /16.
    pub pod_prefix: [u8; 2],
    /// First two octets of the services' /16.
    pub service_prefix: [u8; 2],
    pub log_filter: String,
    /// Where and how waypoints export request spans, if anywhere.
    pub otlp: Option<waypoint::otlp::Export>,
    /// Run on a Kubernetes API server (kube-lab) as the nodes' kubelet ([`kubelet`]).
    pub kubernetes: bool,
}

/// What the control API answers to `apply` and `delete` when the mesh runs on an API server.
const USE_KUBECTL: &str = "this mesh runs on a Kubernetes API server: change it with kubectl \
     (export KUBECONFIG=$(ambientctl kubeconfig))";

/// How often the manifest directory is re-read and containers are checked.
const POLL: Duration = Duration::from_millis(500);

struct Shared {
    cluster: Mutex<Cluster>,
    manifests: PathBuf,
    diagnostics: std::sync::Mutex<Vec<String>>,
    /// What the runtime could not generate (shown with the diagnostics).
    problems: std::sync::Mutex<Vec<String>>,
    phase: std::sync::Mutex<Phase>,
    nodes: Vec<(String, Arc<ztunnel::inpod::netns::Netns>, String, String)>,
    /// The directory's objects at the last scan.
    dir_objects: std::sync::Mutex<Vec<Object>>,
    /// The directory's Deployments (the runtime makes their pods).
    dir_deployments: std::sync::Mutex<Vec<serde_json::Value>>,
    /// Objects and labels applied through the control API.
    store: std::sync::Mutex<Store>,
    store_path: PathBuf,
    /// The store changed: the view must be rebuilt (`wake` says so at once).
    dirty: AtomicBool,
    wake: Notify,
    waypoint_env: WaypointEnv,
    /// The mesh runs on an API server: objects change through it, not the control API.
    kubernetes: bool,
}

impl Shared {
    fn changed(&self, store: &Store) {
        if let Err(e) = store.save(&self.store_path) {
            warn!(error = %e, path = %self.store_path.display(), "saving the applied objects");
        }
        self.dirty.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    fn file_of(&self, key: &ObjectKey) -> String {
        generated::defining_file(&self.manifests, key)
            .unwrap_or_else(|| self.manifests.clone())
            .display()
            .to_string()
    }
}

impl StatusSource for Shared {
    async fn status(&self) -> StatusReport {
        let (pods, services) = {
            let c = self.cluster.lock().await;
            (c.report(), c.service_addresses())
        };
        let mut nodes = Vec::new();
        for (name, netns, ip, cidr) in &self.nodes {
            let ready = matches!(
                http::get(
                    netns,
                    "127.0.0.1:15021".parse().expect("addr"),
                    "/healthz/ready"
                )
                .await,
                Ok((200, _))
            );
            nodes.push(NodeReport {
                name: name.clone(),
                ip: ip.clone(),
                pod_cidr: cidr.clone(),
                ztunnel_ready: ready,
            });
        }
        StatusReport {
            manifests: self.manifests.display().to_string(),
            phase: format!("{:?}", *self.phase.lock().expect("poisoned")).to_lowercase(),
            nodes,
            pods: pods
                .iter()
                .map(|p| serde_json::to_value(p).expect("plain data"))
                .collect(),
            services,
            diagnostics: {
                let mut d = self.diagnostics.lock().expect("poisoned").clone();
                d.extend(self.problems.lock().expect("poisoned").iter().cloned());
                d
            },
        }
    }

    async fn apply(&self, request: ApplyRequest) -> Result<ApplyResult, ApiError> {
        if self.kubernetes {
            return Err(ApiError::conflict(USE_KUBECTL));
        }
        let mut parsed = Vec::new();
        for value in &request.objects {
            let objects = generated::parse_value("request", value)
                .map_err(|e| ApiError::bad_request(e.join("; ")))?;
            let [object] = objects.as_slice() else {
                return Err(ApiError::bad_request(format!(
                    "{} {}: not a kind the mesh reads",
                    value["apiVersion"].as_str().unwrap_or("?"),
                    value["kind"].as_str().unwrap_or("?")
                )));
            };
            parsed.push((value.clone(), object.clone()));
        }
        for key in request.labels.keys() {
            let parts: Vec<&str> = key.split('/').collect();
            if parts.len() != 3 || parts[0].is_empty() || parts[2].is_empty() {
                return Err(ApiError::bad_request(format!(
                    "{key:?}: expected Kind/namespace/name"
                )));
            }
        }
        let dir = self.dir_objects.lock().expect("poisoned").clone();
        let mut result = ApplyResult::default();
        let mut fresh = Vec::new();
        for (value, object) in parsed {
            let key = object.key();
            if let Some(existing) = dir.iter().find(|o| o.key() == key) {
                let file = self.file_of(&key);
                if *existing != object {
                    return Err(ApiError::conflict(format!(
                        "{key} is defined in {file}; edit that file instead"
                    )));
                }
                result.objects.push(Applied {
                    object: key_string(&key),
                    action: "unchanged".into(),
                    file: Some(file),
                });
            } else {
                fresh.push((key_string(&key), value));
            }
        }
        let mut store = self.store.lock().expect("poisoned");
        for (key, value) in fresh {
            let action = match store.objects.get(&key) {
                None => "created",
                Some(old) if *old == value => "unchanged",
                Some(_) => "configured",
            };
            info!(object = %key, action, "applied");
            store.objects.insert(key.clone(), value);
            result.objects.push(Applied {
                object: key,
                action: action.into(),
                file: None,
            });
        }
        for (key, labels) in request.labels {
            let entry = store.labels.entry(key.clone()).or_default();
            entry.extend(labels);
            info!(object = %key, labels = ?entry, "labels set");
            result.labels.push(key);
        }
        self.changed(&store);
        Ok(result)
    }

    async fn delete(&self, request: DeleteRequest) -> Result<DeleteResult, ApiError> {
        if self.kubernetes {
            return Err(ApiError::conflict(USE_KUBECTL));
        }
        let kind = Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == request.kind)
            .ok_or_else(|| ApiError::bad_request(format!("unknown kind {:?}", request.kind)))?;
        let ns = request.namespace.clone();
        let dir = self.dir_objects.lock().expect("poisoned").clone();
        let mut store = self.store.lock().expect("poisoned");
        let mut names = request.names.clone();
        if request.all_waypoints && kind == Kind::Gateway {
            let waypoint = |o: &Object| {
                matches!(o, Object::Gateway(g) if g.spec.gateway_class_name == WAYPOINT_CLASS)
                    && o.key().namespace == ns
            };
            for o in dir.iter().filter(|o| waypoint(o)) {
                names.push(o.key().name);
            }
            for value in store.objects.values() {
                if let Ok(objects) = generated::parse_value("store", value) {
                    names.extend(objects.iter().filter(|o| waypoint(o)).map(|o| o.key().name));
                }
            }
            names.sort();
            names.dedup();
        }
        let mut result = DeleteResult::default();
        for name in names {
            let key = ObjectKey {
                kind,
                namespace: if matches!(kind, Kind::Namespace | Kind::Node) {
                    String::new()
                } else {
                    ns.clone()
                },
                name: name.clone(),
            };
            let shown = key_string(&key);
            if store.objects.remove(&shown).is_some() {
                info!(object = %shown, "deleted");
                result.deleted.push(shown);
                if let Some(label) = &request.namespace_label {
                    let ns_key = format!("Namespace//{ns}");
                    if let Some(labels) = store.labels.get_mut(&ns_key)
                        && labels.get(label) == Some(&Some(name.clone()))
                    {
                        labels.remove(label);
                        if labels.is_empty() {
                            store.labels.remove(&ns_key);
                        }
                        result.unlabeled.push(ns.clone());
                    }
                }
            } else if dir.iter().any(|o| o.key() == key) {
                result.refused.push(Refused {
                    object: shown,
                    file: self.file_of(&key),
                });
            } else {
                result.missing.push(shown);
            }
        }
        if !result.deleted.is_empty() {
            self.changed(&store);
        }
        Ok(result)
    }
}

/// Rebuilds the runtime's view (directory + applied + generated objects) and brings the
/// pods in line with it.
async fn rebuild(shared: &Shared) {
    let dir = shared.dir_objects.lock().expect("poisoned").clone();
    let dir_deployments = shared.dir_deployments.lock().expect("poisoned").clone();
    let store = shared.store.lock().expect("poisoned").clone();
    let view = generated::compose(&dir, &dir_deployments, &store, &shared.waypoint_env);
    {
        let mut known = shared.problems.lock().expect("poisoned");
        for p in view.problems.iter().filter(|p| !known.contains(p)) {
            warn!("{p}");
        }
        *known = view.problems.clone();
    }
    let mut cluster = shared.cluster.lock().await;
    cluster.publish(&view, &store.labels);
    match cluster.allocate(&view.objects).await {
        Ok(problems) => problems.iter().for_each(|p| warn!("{p}")),
        Err(e) => warn!(error = %e, "applying the manifests"),
    }
    cluster.converge(&view.objects).await;
}

/// Brings the pods in line with what the API server binds to the simulated nodes, and
/// reports back as their kubelet: status, deletions, tokens.
async fn sync_kube(shared: &Shared, kubelet: &Kubelet) {
    let wanted = kubelet.wanted();
    let view = generated::View {
        objects: wanted.objects,
        generated: Vec::new(),
        waypoint_pods: wanted.waypoint_pods,
        problems: wanted.problems,
    };
    {
        let mut cluster = shared.cluster.lock().await;
        cluster.publish(&view, &generated::LabelOverlay::new());
        match cluster.allocate(&view.objects).await {
            Ok(problems) => problems.iter().for_each(|p| warn!("{p}")),
            Err(e) => warn!(error = %e, "placing the pods"),
        }
        cluster.converge(&view.objects).await;
        cluster.tick();
    }
    probe_waypoints(shared).await;
    let running = shared.cluster.lock().await.report();
    kubelet.report(&running).await;
    kubelet.finish(&wanted.terminating, &running).await;
    kubelet.renew_tokens().await;
}

/// Keeps syncing until the API server's Deployments and Pods are all running (bounded), so
/// that `up --detach` returns a mesh whose workloads exist.
async fn settle_kube(shared: &Shared, kubelet: &Kubelet) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        sync_kube(shared, kubelet).await;
        let missing = kubelet.unsettled();
        if missing.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            warn!(missing = ?missing, "not every workload ran in time; continuing");
            return;
        }
        tokio::select! {
            _ = kubelet.changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// Probes every waypoint pod's readiness; a ready one is `Running` for the controller.
async fn probe_waypoints(shared: &Shared) {
    let probes = shared.cluster.lock().await.waypoint_probes();
    if probes.is_empty() {
        return;
    }
    let mut results = Vec::new();
    for (key, netns, ip) in probes {
        let probe = http::get(
            &netns,
            SocketAddr::new(ip.into(), READINESS_PORT),
            READINESS_PATH,
        );
        let ready = matches!(
            tokio::time::timeout(Duration::from_secs(1), probe).await,
            Ok(Ok((200, _)))
        );
        results.push((key, ready));
    }
    let mut cluster = shared.cluster.lock().await;
    let mut changed = false;
    for (key, ready) in results {
        changed |= cluster.set_ready(&key, ready);
    }
    if changed && let Err(e) = cluster.save() {
        warn!(error = %e, "saving the allocations");
    }
}

/// Listeners `ambientctl up` bound on the host's loopback, where the sandbox cannot bind.
#[derive(Debug, Default)]
pub struct HostPorts {
    /// The API server's port (`--kubernetes` only).
    pub api: Option<std::net::TcpListener>,
    /// Prometheus' port ([`scrape_port`]).
    pub scrape: Option<std::net::TcpListener>,
}

/// Runs the mesh until SIGTERM/SIGINT. Call inside the sandbox, holding the home's lock.
pub async fn run(
    home: Home,
    options: UpOptions,
    exe: PathBuf,
    host_ports: HostPorts,
) -> anyhow::Result<()> {
    let api_listener = host_ports.api;
    let started = now_secs();
    let node_names: Vec<String> = (1..=options.nodes).map(|i| format!("node-{i}")).collect();
    let mut info = MeshInfo {
        pid: std::process::id(),
        manifests: options.manifests.clone(),
        nodes: node_names.clone(),
        phase: Phase::Starting,
        started,
        kubeconfig: None,
        scrape_address: None,
        error: None,
    };
    home.write_info(&info)?;

    let run_dir = home.run_dir();
    let mut lab = Lab::new(&run_dir).context("building the mesh network")?;
    lab.set_pod_prefix(options.pod_prefix[0], options.pod_prefix[1])?;
    for n in &node_names {
        lab.add_node(n).with_context(|| format!("adding {n}"))?;
    }
    lab.route_pods_from_underlay()
        .context("routing the pods' ranges from the underlay")?;
    let nodes: Vec<_> = lab
        .nodes
        .values()
        .map(|n| {
            (
                n.name.clone(),
                n.netns.clone(),
                n.ip.to_string(),
                format!("{}/24", n.pod_subnet),
            )
        })
        .collect();
    let endpoints = Endpoints {
        underlay: lab.underlay.clone(),
        controller_monitoring: controller_monitoring(),
        nodes: nodes
            .iter()
            .map(|(n, ns, _, _)| (n.clone(), ns.clone()))
            .collect::<BTreeMap<_, _>>(),
    };

    let mut mesh_options = MeshOptions::new(exe);
    mesh_options.log_filter = options.log_filter.clone();
    mesh_options.otlp = options.otlp.clone();
    mesh_options.debounce_quiet = Duration::from_millis(100);
    let waypoint_env = WaypointEnv {
        exe: mesh_options.exe.clone(),
        run_dir: run_dir.clone(),
        trust_domain: mesh_options.trust_domain.clone(),
        controller_address: format!("https://{}", controller_grpc()),
        workload_cert_ttl_secs: mesh_options.workload_cert_ttl.as_secs(),
        log_filter: options.log_filter.clone(),
        otlp: options.otlp.clone(),
    };
    let mut kubelet = None;
    if options.kubernetes {
        let specs: Vec<NodeSpec> = nodes
            .iter()
            .map(|(name, _, ip, cidr)| NodeSpec {
                name: name.clone(),
                ip: ip.clone(),
                pod_cidr: cidr.clone(),
            })
            .collect();
        let k = Kubelet::start(&run_dir, &specs).await?;
        mesh_options.kubeconfig = Some(k.kubeconfig().to_path_buf());
        let listener = api_listener.context("no host port for the API server")?;
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let server = format!("https://{}", listener.local_addr()?);
        tokio::spawn(api_port::relay(listener, k.api_address()?));
        k.write_kubeconfig(&server, &home.kubeconfig_path())?;
        info!(%server, kubeconfig = %home.kubeconfig_path().display(), "API server reachable from the host");
        info.kubeconfig = Some(home.kubeconfig_path());
        home.write_info(&info)?;
        kubelet = Some(k);
    }
    let mesh = Mesh::start_on(lab, options.manifests.clone(), mesh_options)
        .await
        .context("starting the mesh")?;

    let mut source = ManifestDir::new(&options.manifests);
    let scan = source.scan();
    let cluster = Cluster::new(mesh, options.service_prefix);
    let findings = cluster::describe(&scan.diagnostics);
    for f in &findings {
        warn!("{f}");
    }
    let store_path = run_dir.join("applied.json");
    let shared = Arc::new(Shared {
        cluster: Mutex::new(cluster),
        manifests: options.manifests.clone(),
        diagnostics: std::sync::Mutex::new(findings),
        problems: std::sync::Mutex::new(Vec::new()),
        phase: std::sync::Mutex::new(Phase::Starting),
        nodes,
        dir_objects: std::sync::Mutex::new(scan.objects),
        dir_deployments: std::sync::Mutex::new(scan.deployments),
        store: std::sync::Mutex::new(Store::load(&store_path)),
        store_path,
        dirty: AtomicBool::new(false),
        wake: Notify::new(),
        waypoint_env,
        kubernetes: kubelet.is_some(),
    });
    match &kubelet {
        Some(k) => {
            let refused = k.apply_dir(&options.manifests).await;
            refused.iter().for_each(|p| warn!("{p}"));
            shared.problems.lock().expect("poisoned").extend(refused);
            settle_kube(&shared, k).await;
        }
        None => rebuild(&shared).await,
    }

    let socket = home.control_socket();
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("binding {}", socket.display()))?;
    let scrape_server = match host_ports.scrape {
        Some(listener) => {
            listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            info.scrape_address = Some(listener.local_addr()?);
            Some(tokio::spawn(scrape_port::serve(
                listener,
                shared.clone(),
                endpoints.clone(),
            )))
        }
        None => None,
    };
    let server = tokio::spawn(control::serve(listener, shared.clone(), endpoints));

    wait_until_served(&shared).await;
    info.phase = Phase::Ready;
    *shared.phase.lock().expect("poisoned") = Phase::Ready;
    home.write_info(&info)?;
    {
        let status = shared.status().await;
        info!(
            nodes = status.nodes.len(),
            pods = status.pods.len(),
            services = status.services.len(),
            "mesh ready"
        );
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let api_changed = kubelet
        .as_ref()
        .map(|k| k.changed.clone())
        .unwrap_or_default();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = hangup.recv() => break,
            _ = tokio::time::sleep(POLL) => {}
            _ = shared.wake.notified() => {}
            _ = api_changed.notified() => {}
        }
        // A crashed node agent comes back (a kubelet restarts the container); it finds its
        // pods again from its state file, or on an API server from its pod watch.
        for (node, restarted) in shared.cluster.lock().await.mesh.revive_agents().await {
            match restarted {
                Ok(()) => warn!(node, "node agent exited; started again"),
                Err(e) => warn!(node, error = %e, "node agent exited; restarting it failed"),
            }
        }
        let scan = source.scan();
        if let Some(k) = &kubelet {
            if scan.changed {
                let refused = k.apply_dir(&options.manifests).await;
                refused.iter().for_each(|p| warn!("{p}"));
                *shared.problems.lock().expect("poisoned") = refused;
            }
            sync_kube(&shared, k).await;
            continue;
        }
        if scan.changed {
            let findings = cluster::describe(&scan.diagnostics);
            {
                let mut known = shared.diagnostics.lock().expect("poisoned");
                for f in findings.iter().filter(|f| !known.contains(f)) {
                    warn!("{f}");
                }
                *known = findings;
            }
            *shared.dir_objects.lock().expect("poisoned") = scan.objects;
            *shared.dir_deployments.lock().expect("poisoned") = scan.deployments;
        }
        if shared.dirty.swap(false, Ordering::SeqCst) || scan.changed {
            rebuild(&shared).await;
        }
        shared.cluster.lock().await.tick();
        probe_waypoints(&shared).await;
    }

    info!("stopping the mesh");
    info.phase = Phase::Stopping;
    *shared.phase.lock().expect("poisoned") = Phase::Stopping;
    home.write_info(&info)?;
    server.abort();
    if let Some(s) = scrape_server {
        s.abort();
    }
    let mut cluster = shared.cluster.lock().await;
    cluster.stop_pods();
    cluster.mesh.stop();
    if let Some(k) = kubelet.as_mut() {
        k.stop().await;
    }
    let _ = std::fs::remove_file(home.control_socket());
    let _ = std::fs::remove_file(home.info_path());
    info!("mesh stopped");
    Ok(())
}

/// Waits (a bounded time) until every node's ztunnel holds the workloads of the pods it
/// serves and every waypoint is ready, so that `up --detach` returns a mesh that already
/// carries traffic.
async fn wait_until_served(shared: &Shared) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        shared.cluster.lock().await.tick();
        probe_waypoints(shared).await;
        let (pods, mut missing) = {
            let cluster = shared.cluster.lock().await;
            let not_ready = cluster
                .waypoints_not_ready()
                .into_iter()
                .map(|w| format!("waypoint {w} not ready"))
                .collect::<Vec<_>>();
            (cluster.report(), not_ready)
        };
        // The controller must have seen them ready too (Programmed), so that `waypoint
        // list` right after `up --detach` agrees.
        let gateways: Vec<&str> = pods.iter().filter_map(|p| p.waypoint.as_deref()).collect();
        if missing.is_empty() && !gateways.is_empty() {
            let listed = shared
                .cluster
                .lock()
                .await
                .mesh
                .controller_get("/debug/gateways")
                .await;
            if let Ok(body) = listed {
                let views: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap_or_default();
                for gw in &gateways {
                    let programmed = views.iter().any(|v| {
                        format!(
                            "{}/{}",
                            v["namespace"].as_str().unwrap_or_default(),
                            v["name"].as_str().unwrap_or_default()
                        ) == *gw
                            && v["programmed"] == true
                    });
                    if !programmed {
                        missing.push(format!("waypoint {gw} not programmed"));
                    }
                }
            }
        }
        for (node, netns, _, _) in &shared.nodes {
            let dump = match http::get(
                netns,
                "127.0.0.1:15000".parse().expect("addr"),
                "/config_dump",
            )
            .await
            {
                Ok((200, body)) => {
                    serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default()
                }
                _ => serde_json::Value::Null,
            };
            let served: Vec<&str> = dump["pods"]
                .as_array()
                .map(|a| a.iter().filter_map(|p| p["uid"].as_str()).collect())
                .unwrap_or_default();
            let known: Vec<&str> = dump["workloads"]
                .as_array()
                .map(|a| a.iter().filter_map(|w| w["uid"].as_str()).collect())
                .unwrap_or_default();
            for p in pods
                .iter()
                .filter(|p| p.dataplane == "ambient" || p.waypoint.is_some())
            {
                let uid = format!("Kubernetes//Pod/{}/{}", p.namespace, p.name);
                // Every node must know every pod (waypoints included); the pod's own node
                // must serve it if it is captured.
                if !known.contains(&uid.as_str())
                    || (p.dataplane == "ambient"
                        && &p.node == node
                        && !served.contains(&uid.as_str()))
                {
                    missing.push(format!("{uid} on {node}"));
                }
            }
        }
        if missing.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            warn!(missing = ?missing, "not every pod reached the ztunnels in time; continuing");
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
