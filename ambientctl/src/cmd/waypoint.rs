//! `ambientctl waypoint generate|apply|list|status|delete`: istioctl's waypoint commands.
//!
//! A waypoint is a Gateway API `Gateway` of class `istio-waypoint` with one `mesh` listener
//! (15008, HBONE). With a local mesh running (`ambientctl up`), `apply` and `delete` go
//! through the supervisor's control socket (the runtime then deploys or removes the waypoint
//! pod), and `list` / `status` read the controller's `/debug/gateways`. Otherwise they talk
//! to the Kubernetes cluster of the kubeconfig (server-side apply, field manager
//! `ambientctl`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ambient_controller::source::yaml;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::output::{Format, print, table};
use crate::runtime::control::{self, ApplyRequest, ApplyResult, DeleteRequest, DeleteResult};
use crate::runtime::home::Home;

/// The class that makes a Gateway a waypoint.
pub const WAYPOINT_CLASS: &str = "istio-waypoint";
pub const WAYPOINT_FOR_LABEL: &str = "istio.io/waypoint-for";
pub const USE_WAYPOINT_LABEL: &str = "istio.io/use-waypoint";
const FIELD_MANAGER: &str = "ambientctl";

#[derive(clap::Subcommand, Debug)]
pub enum WaypointCommand {
    /// Print the Gateway a waypoint is made of (YAML), as `istioctl waypoint generate`.
    Generate(GenerateArgs),
    /// Add a waypoint to the running local mesh (or to the Kubernetes cluster).
    Apply(ApplyArgs),
    /// Waypoints and whether they are programmed.
    List(ListArgs),
    /// A waypoint's Programmed condition; exit 1 when it is not programmed.
    Status(StatusArgs),
    /// Remove waypoints added with `apply` (and the namespace label naming them).
    Delete(DeleteArgs),
}

/// What traffic a waypoint takes (`istio.io/waypoint-for`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TrafficType {
    Service,
    Workload,
    All,
    None,
}

impl TrafficType {
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficType::Service => "service",
            TrafficType::Workload => "workload",
            TrafficType::All => "all",
            TrafficType::None => "none",
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// The waypoint's (Gateway's) name.
    #[arg(long, default_value = "waypoint")]
    pub name: String,
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Talk to this Kubernetes cluster instead of the running local mesh.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub target: Target,
    /// The traffic the waypoint takes (default: service).
    #[arg(long = "for", value_enum)]
    pub traffic_type: Option<TrafficType>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub target: Target,
    /// The traffic the waypoint takes (default: service).
    #[arg(long = "for", value_enum)]
    pub traffic_type: Option<TrafficType>,
    /// Also label the namespace `istio.io/use-waypoint=<name>`: its services (or workloads)
    /// then use this waypoint.
    #[arg(long)]
    pub enroll_namespace: bool,
    /// Wait until the waypoint is programmed.
    #[arg(long)]
    pub wait: bool,
    /// Seconds `--wait` waits.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ListArgs {
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Format,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(clap::Args, Debug, Clone)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: Target,
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Format,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(clap::Args, Debug, Clone)]
pub struct DeleteArgs {
    /// Waypoints to delete.
    #[arg(required_unless_present = "all")]
    pub names: Vec<String>,
    /// Every waypoint of the namespace.
    #[arg(long, conflicts_with = "names")]
    pub all: bool,
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// A Gateway as `list` and `status` show it (the controller's `/debug/gateways` entries).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GatewayView {
    pub namespace: String,
    pub name: String,
    pub class: String,
    pub traffic_type: String,
    pub address: Option<String>,
    pub programmed: bool,
    pub reason: String,
    pub message: String,
}

/// The Gateway `istioctl waypoint generate` prints.
pub fn gateway(name: &str, namespace: &str, traffic: Option<TrafficType>) -> Value {
    let mut metadata = json!({"name": name, "namespace": namespace});
    if let Some(t) = traffic.filter(|t| *t != TrafficType::Service) {
        metadata["labels"] = json!({WAYPOINT_FOR_LABEL: t.as_str()});
    }
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": metadata,
        "spec": {
            "gatewayClassName": WAYPOINT_CLASS,
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
        },
    })
}

/// Runs one `waypoint` subcommand.
pub fn run(command: WaypointCommand) -> anyhow::Result<ExitCode> {
    match command {
        WaypointCommand::Generate(args) => {
            let gw = gateway(&args.target.name, &args.target.namespace, args.traffic_type);
            print!("{}", yaml::to_string(&gw)?);
            Ok(ExitCode::SUCCESS)
        }
        WaypointCommand::Apply(args) => match backend(&args.cluster)? {
            Backend::Local(home) => apply_local(&home, &args),
            Backend::Kube(config) => kube_run(kube_apply(*config, args)),
            Backend::None(why) => no_backend(&why),
        },
        WaypointCommand::List(args) => {
            let gateways = match gateways(&args.cluster)? {
                Ok(g) => g,
                Err(code) => return Ok(code),
            };
            let shown: Vec<GatewayView> = gateways
                .into_iter()
                .filter(|g| g.class == WAYPOINT_CLASS)
                .filter(|g| args.all_namespaces || g.namespace == args.namespace)
                .collect();
            if shown.is_empty() && args.output == Format::Table {
                if args.all_namespaces {
                    eprintln!("No waypoints found.");
                } else {
                    eprintln!("No waypoints found in namespace {}.", args.namespace);
                }
                return Ok(ExitCode::SUCCESS);
            }
            print(args.output, &shown, |rows| render_list(rows));
            Ok(ExitCode::SUCCESS)
        }
        WaypointCommand::Status(args) => {
            let gateways = match gateways(&args.cluster)? {
                Ok(g) => g,
                Err(code) => return Ok(code),
            };
            let Target { name, namespace } = &args.target;
            let Some(gw) = gateways
                .into_iter()
                .find(|g| &g.namespace == namespace && &g.name == name)
            else {
                eprintln!("ambientctl: waypoint {namespace}/{name} not found");
                return Ok(ExitCode::FAILURE);
            };
            if gw.class != WAYPOINT_CLASS {
                eprintln!(
                    "ambientctl: gateway {namespace}/{name} is of class {:?}, not a waypoint ({WAYPOINT_CLASS})",
                    gw.class
                );
                return Ok(ExitCode::FAILURE);
            }
            print(args.output, &gw, render_status);
            Ok(if gw.programmed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        WaypointCommand::Delete(args) => match backend(&args.cluster)? {
            Backend::Local(home) => delete_local(&home, &args),
            Backend::Kube(config) => kube_run(kube_delete(*config, args)),
            Backend::None(why) => no_backend(&why),
        },
    }
}

fn render_list(rows: &[GatewayView]) -> String {
    table(
        &["NAMESPACE", "NAME", "TRAFFIC TYPE", "ADDRESS", "PROGRAMMED"],
        &rows
            .iter()
            .map(|g| {
                vec![
                    g.namespace.clone(),
                    g.name.clone(),
                    if g.traffic_type.is_empty() {
                        "service".into()
                    } else {
                        g.traffic_type.clone()
                    },
                    g.address.clone().unwrap_or_else(|| "<none>".into()),
                    if g.programmed { "True" } else { "False" }.into(),
                ]
            })
            .collect::<Vec<_>>(),
    )
}

fn render_status(g: &GatewayView) -> String {
    table(
        &["NAMESPACE", "NAME", "STATUS", "TYPE", "REASON", "MESSAGE"],
        &[vec![
            g.namespace.clone(),
            g.name.clone(),
            if g.programmed { "True" } else { "False" }.into(),
            "Programmed".into(),
            g.reason.clone(),
            g.message.clone(),
        ]],
    )
}

/// Where the waypoint (and rollout) commands act.
pub(crate) enum Backend {
    Local(Home),
    Kube(Box<kube::Config>),
    /// Neither: why (shown to the user).
    None(String),
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// `--kubeconfig` → that cluster; else the running local mesh; else the kubeconfig's
/// cluster.
pub(crate) fn backend(cluster: &ClusterArgs) -> anyhow::Result<Backend> {
    let mut kubeconfig = cluster.kubeconfig.clone();
    if kubeconfig.is_none() {
        let home = Home::locate();
        match home.running() {
            // A local mesh on an API server changes through that server, as a cluster.
            Ok(info) if info.kubeconfig.is_some() => kubeconfig = info.kubeconfig,
            Ok(_) => return Ok(Backend::Local(home)),
            Err(_) => {}
        }
    }
    Ok(
        match runtime()?.block_on(super::kubeconfig::load(kubeconfig.as_deref())) {
            Ok(config) => Backend::Kube(Box::new(config)),
            Err(e) if cluster.kubeconfig.is_some() => Backend::None(e),
            Err(e) => Backend::None(format!(
                "no local mesh is running (start one with `ambientctl up DIR`) and no \
                 Kubernetes cluster is configured ({e}); point --kubeconfig or $KUBECONFIG at \
                 a cluster"
            )),
        },
    )
}

pub(crate) fn no_backend(why: &str) -> anyhow::Result<ExitCode> {
    eprintln!("ambientctl: {why}");
    Ok(ExitCode::FAILURE)
}

fn kube_run(
    fut: impl std::future::Future<Output = anyhow::Result<ExitCode>>,
) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(fut)
}

/// Every Gateway, from the local mesh's controller or the cluster; `Err` is the exit code
/// after a message.
fn gateways(cluster: &ClusterArgs) -> anyhow::Result<Result<Vec<GatewayView>, ExitCode>> {
    match backend(cluster)? {
        Backend::Local(home) => Ok(Ok(local_gateways(&home)?)),
        Backend::Kube(config) => Ok(Ok(runtime()?.block_on(kube_gateways(*config))?)),
        Backend::None(why) => {
            eprintln!("ambientctl: {why}");
            Ok(Err(ExitCode::FAILURE))
        }
    }
}

fn local_gateways(home: &Home) -> anyhow::Result<Vec<GatewayView>> {
    control::get_json(&home.control_socket(), "/controller/debug/gateways")
        .context("reading the controller's gateways")
}

fn find_local(home: &Home, namespace: &str, name: &str) -> Option<GatewayView> {
    local_gateways(home)
        .ok()?
        .into_iter()
        .find(|g| g.namespace == namespace && g.name == name)
}

fn apply_local(home: &Home, args: &ApplyArgs) -> anyhow::Result<ExitCode> {
    let Target { name, namespace } = &args.target;
    let mut labels = BTreeMap::new();
    if args.enroll_namespace {
        labels.insert(
            format!("Namespace//{namespace}"),
            BTreeMap::from([(USE_WAYPOINT_LABEL.to_string(), Some(name.clone()))]),
        );
    }
    let request = ApplyRequest {
        objects: vec![gateway(name, namespace, args.traffic_type)],
        labels,
    };
    let result: ApplyResult = match control::post_json(&home.control_socket(), "/apply", &request) {
        Ok(r) => r,
        Err(control::ControlError::Status { body, .. }) => {
            eprintln!("ambientctl: {body}");
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e.into()),
    };
    for o in &result.objects {
        match &o.file {
            Some(file) => println!(
                "waypoint {namespace}/{name} {} (defined in {file})",
                o.action
            ),
            None => println!("waypoint {namespace}/{name} applied ({})", o.action),
        }
    }
    if args.enroll_namespace {
        println!("namespace {namespace} labeled with \"{USE_WAYPOINT_LABEL}: {name}\"");
    }
    if args.wait {
        return wait_programmed(namespace, name, args.timeout, || {
            Ok(find_local(home, namespace, name))
        });
    }
    Ok(ExitCode::SUCCESS)
}

fn wait_programmed(
    namespace: &str,
    name: &str,
    timeout: u64,
    mut check: impl FnMut() -> anyhow::Result<Option<GatewayView>>,
) -> anyhow::Result<ExitCode> {
    let deadline = Instant::now() + Duration::from_secs(timeout);
    loop {
        let found = check()?;
        if let Some(g) = &found
            && g.programmed
        {
            println!(
                "waypoint {namespace}/{name} programmed (address {})",
                g.address.as_deref().unwrap_or("<none>")
            );
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() > deadline {
            let why = found
                .map(|g| format!("{}: {}", g.reason, g.message))
                .unwrap_or_else(|| "not known to the controller".into());
            eprintln!(
                "ambientctl: waypoint {namespace}/{name} not programmed after {timeout}s ({why})"
            );
            return Ok(ExitCode::FAILURE);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn delete_local(home: &Home, args: &DeleteArgs) -> anyhow::Result<ExitCode> {
    let ns = &args.namespace;
    let request = DeleteRequest {
        kind: "Gateway".into(),
        namespace: ns.clone(),
        names: args.names.clone(),
        all_waypoints: args.all,
        namespace_label: Some(USE_WAYPOINT_LABEL.into()),
    };
    let result: DeleteResult = match control::post_json(&home.control_socket(), "/delete", &request)
    {
        Ok(r) => r,
        Err(control::ControlError::Status { body, .. }) => {
            eprintln!("ambientctl: {body}");
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e.into()),
    };
    let short = |object: &str| object.trim_start_matches("Gateway/").to_string();
    for d in &result.deleted {
        println!("waypoint {} deleted", short(d));
    }
    for n in &result.unlabeled {
        println!("namespace {n} unlabeled ({USE_WAYPOINT_LABEL} removed)");
    }
    for r in &result.refused {
        eprintln!(
            "ambientctl: waypoint {} is defined in {}; remove it from that file (the mesh applies the change live)",
            short(&r.object),
            r.file
        );
    }
    for m in &result.missing {
        eprintln!("ambientctl: waypoint {} not found", short(m));
    }
    if args.all && result.deleted.is_empty() && result.refused.is_empty() {
        println!("no waypoints in namespace {ns}");
    }
    Ok(if result.refused.is_empty() && result.missing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

// --- Kubernetes ---

fn gateway_resource() -> kube::api::ApiResource {
    kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "Gateway"),
        "gateways",
    )
}

fn client(config: kube::Config) -> anyhow::Result<kube::Client> {
    kube::Client::try_from(config).context("creating the Kubernetes client")
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// A Gateway object as `list` shows it.
pub fn view_of(object: &Value) -> GatewayView {
    let meta = &object["metadata"];
    let conditions = object["status"]["conditions"].as_array();
    let programmed = conditions
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Programmed");
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    GatewayView {
        namespace: text(&meta["namespace"]),
        name: text(&meta["name"]),
        class: text(&object["spec"]["gatewayClassName"]),
        traffic_type: meta["labels"][WAYPOINT_FOR_LABEL]
            .as_str()
            .unwrap_or("service")
            .to_string(),
        address: object["status"]["addresses"][0]["value"]
            .as_str()
            .map(str::to_string),
        programmed: programmed.is_some_and(|c| c["status"] == "True"),
        reason: programmed.map(|c| text(&c["reason"])).unwrap_or_default(),
        message: programmed
            .map(|c| text(&c["message"]))
            .unwrap_or_else(|| "no Programmed condition yet".into()),
    }
}

async fn kube_gateways(config: kube::Config) -> anyhow::Result<Vec<GatewayView>> {
    use kube::api::{Api, DynamicObject, ListParams};
    let api: Api<DynamicObject> = Api::all_with(client(config)?, &gateway_resource());
    let list = api
        .list(&ListParams::default())
        .await
        .context("listing Gateways")?;
    Ok(list
        .items
        .iter()
        .map(|o| view_of(&serde_json::to_value(o).expect("plain data")))
        .collect())
}

async fn kube_apply(config: kube::Config, args: ApplyArgs) -> anyhow::Result<ExitCode> {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Api, DynamicObject, Patch, PatchParams};
    let Target { name, namespace } = &args.target;
    let client = client(config)?;
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &gateway_resource());
    let existed = api
        .get_opt(name)
        .await
        .with_context(|| format!("reading gateway {namespace}/{name}"))?
        .is_some();
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&gateway(name, namespace, args.traffic_type)),
    )
    .await
    .with_context(|| format!("applying gateway {namespace}/{name}"))?;
    println!(
        "waypoint {namespace}/{name} applied ({})",
        if existed { "configured" } else { "created" }
    );
    if args.enroll_namespace {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .patch(
                namespace,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {USE_WAYPOINT_LABEL: name}}})),
            )
            .await
            .with_context(|| format!("labelling namespace {namespace}"))?;
        println!("namespace {namespace} labeled with \"{USE_WAYPOINT_LABEL}: {name}\"");
    }
    if args.wait {
        let deadline = Instant::now() + Duration::from_secs(args.timeout);
        loop {
            let g = api
                .get_opt(name)
                .await?
                .map(|o| view_of(&serde_json::to_value(o).expect("plain data")));
            if let Some(g) = &g
                && g.programmed
            {
                println!(
                    "waypoint {namespace}/{name} programmed (address {})",
                    g.address.as_deref().unwrap_or("<none>")
                );
                return Ok(ExitCode::SUCCESS);
            }
            if Instant::now() > deadline {
                let why = g
                    .map(|g| format!("{}: {}", g.reason, g.message))
                    .unwrap_or_else(|| "gone".into());
                eprintln!(
                    "ambientctl: waypoint {namespace}/{name} not programmed after {}s ({why})",
                    args.timeout
                );
                return Ok(ExitCode::FAILURE);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn kube_delete(config: kube::Config, args: DeleteArgs) -> anyhow::Result<ExitCode> {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
    let ns = &args.namespace;
    let client = client(config)?;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &gateway_resource());
    let names: Vec<String> = if args.all {
        api.list(&ListParams::default())
            .await
            .context("listing Gateways")?
            .items
            .iter()
            .map(|o| view_of(&serde_json::to_value(o).expect("plain data")))
            .filter(|g| g.class == WAYPOINT_CLASS)
            .map(|g| g.name)
            .collect()
    } else {
        args.names.clone()
    };
    if names.is_empty() {
        println!("no waypoints in namespace {ns}");
        return Ok(ExitCode::SUCCESS);
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut failed = false;
    for name in names {
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => println!("waypoint {ns}/{name} deleted"),
            Err(e) if is_not_found(&e) => {
                eprintln!("ambientctl: waypoint {ns}/{name} not found");
                failed = true;
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("deleting gateway {ns}/{name}")),
        }
        let labelled = namespaces
            .get_opt(ns)
            .await?
            .and_then(|n| n.metadata.labels)
            .and_then(|l| l.get(USE_WAYPOINT_LABEL).cloned());
        if labelled.as_deref() == Some(name.as_str()) {
            namespaces
                .patch(
                    ns,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": {USE_WAYPOINT_LABEL: null}}})),
                )
                .await
                .with_context(|| format!("unlabelling namespace {ns}"))?;
            println!("namespace {ns} unlabeled ({USE_WAYPOINT_LABEL} removed)");
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_matches_istioctl() {
        let yaml = yaml::to_string(&gateway("waypoint", "default", None)).unwrap();
        assert_eq!(
            yaml,
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: waypoint\n  namespace: default\nspec:\n  gatewayClassName: istio-waypoint\n  listeners:\n  - name: mesh\n    port: 15008\n    protocol: HBONE\n"
        );
        let gw = gateway("w", "ns", Some(TrafficType::Workload));
        assert_eq!(gw["metadata"]["labels"][WAYPOINT_FOR_LABEL], "workload");
        let gw = gateway("w", "ns", Some(TrafficType::Service));
        assert!(
            gw["metadata"].get("labels").is_none(),
            "service is the default"
        );
    }

    #[test]
    fn gateway_status_reads_like_the_controllers_view() {
        let object = json!({
            "metadata": {"name": "w", "namespace": "ns", "labels": {WAYPOINT_FOR_LABEL: "all"}},
            "spec": {"gatewayClassName": WAYPOINT_CLASS},
            "status": {
                "addresses": [{"type": "IPAddress", "value": "10.96.0.12"}],
                "conditions": [
                    {"type": "Accepted", "status": "True", "reason": "Accepted"},
                    {"type": "Programmed", "status": "True", "reason": "Programmed", "message": "ok"},
                ],
            },
        });
        let v = view_of(&object);
        assert_eq!(
            v,
            GatewayView {
                namespace: "ns".into(),
                name: "w".into(),
                class: WAYPOINT_CLASS.into(),
                traffic_type: "all".into(),
                address: Some("10.96.0.12".into()),
                programmed: true,
                reason: "Programmed".into(),
                message: "ok".into(),
            }
        );
        let t = render_list(&[v]);
        assert!(
            t.starts_with("NAMESPACE  NAME  TRAFFIC TYPE  ADDRESS     PROGRAMMED\n"),
            "{t}"
        );
        let bare = view_of(&json!({"metadata": {"name": "w", "namespace": "ns"}}));
        assert!(!bare.programmed);
        assert_eq!(bare.traffic_type, "service");
    }
}
