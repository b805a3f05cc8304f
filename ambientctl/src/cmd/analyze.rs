//! `ambientctl analyze [DIR]`: checks a directory of manifests the way `istioctl analyze`
//! checks a cluster, before (or while) the mesh runs it.
//!
//! Without `DIR` it analyzes the running local mesh's manifest directory, or the current
//! directory when no mesh runs. The directory is read with the controller's own parser
//! (so what is reported is exactly what the mesh would reject) and then cross-checked:
//! references between objects, policies that select nothing, ports that lead nowhere. The
//! controller's index is computed as well, and its warnings are reported.
//!
//! Each message has a stable code, a level, the object it concerns (`Kind namespace/name`)
//! and, when known, the file, line and column (of the field at fault, else of the object's
//! document). Where Istio has an analyzer for the same problem its `IST` code is used; the
//! others are ambient-rs's own `AMB` codes.
//!
//! | Code | Level | Name | Meaning |
//! |------|-------|------|---------|
//! | AMB0000 | (as reported) | ManifestDiagnostic | Another finding of the manifest parser. |
//! | AMB0001 | Error | ManifestSyntaxError | A file cannot be read, is not valid YAML/JSON, or holds a document without `apiVersion` and `kind`. The whole file is ignored. |
//! | AMB0002 | Error | UnknownField | A field the mesh does not know (often a typo); the object is ignored. |
//! | AMB0003 | Error | DuplicateObject | The same object is defined in two files (or twice in one); the first definition is used. |
//! | AMB0004 | Info | KindNotRead | A document of a kind the mesh does not read (ServiceAccount, StatefulSet, ...); skipped. Listed only with `--verbose`. |
//! | AMB0005 | Error | UseWaypointNotAWaypoint | `istio.io/use-waypoint` names a Gateway whose class is not `istio-waypoint`. |
//! | AMB0006 | Warning | WaypointDoesNotServeTraffic | `istio.io/use-waypoint` names a waypoint whose `istio.io/waypoint-for` excludes this traffic (a Pod needs `workload` or `all`, a Service `service` or `all`), so the waypoint is bypassed. |
//! | AMB0007 | Warning | L7AttributesAtL4 | An AuthorizationPolicy enforced by ztunnel (no `targetRefs`) uses HTTP attributes (methods, paths, hosts, request principals, headers, ...) that ztunnel cannot see: ALLOW rules using them match nothing (fail closed), DENY rules are applied without them (deny more). |
//! | AMB0008 | Warning | TargetPortNotFound | A Service port's `targetPort` (number or name) matches no `containerPort` of the pods it selects (checked only when those pods declare ports). |
//! | AMB0009 | Info | ServiceSelectsNoPods | A Service's selector matches no Pod in its namespace: it has no endpoints. |
//! | AMB0010 | Info | NamespaceNotDeclared | A Pod's namespace has no Namespace manifest, so only the Pod's own `istio.io/dataplane-mode` label can enrol it. |
//! | AMB0011 | Warning | ControllerWarning | A warning of the controller's index (an unsupported policy action, a malformed CIDR or port, a bad clusterIP, ...): the mesh runs the object without that part. |
//! | IST0101 | Error | ReferencedResourceNotFound | `istio.io/use-waypoint` on a Namespace, Service or Pod names a Gateway that does not exist (in the object's namespace, or in `istio.io/use-waypoint-namespace`). |
//! | IST0106 | Error | SchemaValidationError | An object is invalid: wrong field types, no `metadata.name`, or a check the API server would make (duplicate or out-of-range Service ports, unnamed ports of a multi-port Service). The object is ignored. |
//! | IST0127 | Warning | NoMatchingWorkloadsFound | An AuthorizationPolicy or PeerAuthentication selector matches no Pod in its namespace (policies in the root namespace `istio-system` apply mesh-wide and are not checked). |
//!
//! Messages are sorted errors first, then by object. The exit code is 1 when there is an
//! error (warnings and infos do not fail), and when `DIR` is not a directory.

use ambient_controller::index::authorization::L4_CONDITION_KEYS;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ambient_controller::index::authorization::{has_selector, is_waypoint_policy};
use ambient_controller::index::labels::{WAYPOINT_FOR, labels, selector_matches, use_waypoint};
use ambient_controller::index::{self, IndexConfig};
use ambient_controller::model::gateway::WAYPOINT_CLASS;
use ambient_controller::model::istio::{AuthorizationAction, Rule};
use ambient_controller::model::{Change, ClusterState, Kind, MeshPod, Object, ObjectKey};
use ambient_controller::source::manifests::ManifestDir;
use ambient_controller::source::yaml::{self, Position, Spans};
use ambient_controller::source::{Diagnostic, Severity};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde_json::Value;

use crate::cmd::output::{Format, print, table};
use crate::runtime::home::Home;

/// `ambientctl analyze` options.
#[derive(clap::Args, Debug, Clone)]
pub struct AnalyzeArgs {
    /// Directory of manifests (default: the running mesh's, else the current directory).
    pub dir: Option<PathBuf>,
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Format,
    /// Report only objects of this namespace (and cluster-scoped or file-level findings).
    #[arg(short, long, conflicts_with = "all_namespaces")]
    pub namespace: Option<String>,
    /// Report every namespace (the default for a directory; accepted as istioctl does).
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Also list documents of kinds the mesh does not read (AMB0004).
    #[arg(short, long)]
    pub verbose: bool,
}

/// How serious a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Level {
    Error,
    Warning,
    Info,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Error => "Error",
            Level::Warning => "Warning",
            Level::Info => "Info",
        })
    }
}

/// One kind of finding: its stable code, name and usual level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Code {
    pub code: &'static str,
    pub name: &'static str,
    pub level: Level,
}

const fn code(code: &'static str, name: &'static str, level: Level) -> Code {
    Code { code, name, level }
}

pub const MANIFEST_DIAGNOSTIC: Code = code("AMB0000", "ManifestDiagnostic", Level::Warning);
pub const SYNTAX_ERROR: Code = code("AMB0001", "ManifestSyntaxError", Level::Error);
pub const UNKNOWN_FIELD: Code = code("AMB0002", "UnknownField", Level::Error);
pub const DUPLICATE_OBJECT: Code = code("AMB0003", "DuplicateObject", Level::Error);
pub const KIND_NOT_READ: Code = code("AMB0004", "KindNotRead", Level::Info);
pub const NOT_A_WAYPOINT: Code = code("AMB0005", "UseWaypointNotAWaypoint", Level::Error);
pub const WAYPOINT_BYPASSED: Code = code("AMB0006", "WaypointDoesNotServeTraffic", Level::Warning);
pub const L7_AT_L4: Code = code("AMB0007", "L7AttributesAtL4", Level::Warning);
pub const TARGET_PORT_NOT_FOUND: Code = code("AMB0008", "TargetPortNotFound", Level::Warning);
pub const SERVICE_SELECTS_NO_PODS: Code = code("AMB0009", "ServiceSelectsNoPods", Level::Info);
pub const NAMESPACE_NOT_DECLARED: Code = code("AMB0010", "NamespaceNotDeclared", Level::Info);
pub const CONTROLLER_WARNING: Code = code("AMB0011", "ControllerWarning", Level::Warning);
pub const REFERENCED_RESOURCE_NOT_FOUND: Code =
    code("IST0101", "ReferencedResourceNotFound", Level::Error);
pub const SCHEMA_VALIDATION_ERROR: Code = code("IST0106", "SchemaValidationError", Level::Error);
pub const NO_MATCHING_WORKLOADS: Code = code("IST0127", "NoMatchingWorkloadsFound", Level::Warning);

/// Every code, for documentation.
pub const CODES: &[Code] = &[
    MANIFEST_DIAGNOSTIC,
    SYNTAX_ERROR,
    UNKNOWN_FIELD,
    DUPLICATE_OBJECT,
    KIND_NOT_READ,
    NOT_A_WAYPOINT,
    WAYPOINT_BYPASSED,
    L7_AT_L4,
    TARGET_PORT_NOT_FOUND,
    SERVICE_SELECTS_NO_PODS,
    NAMESPACE_NOT_DECLARED,
    CONTROLLER_WARNING,
    REFERENCED_RESOURCE_NOT_FOUND,
    SCHEMA_VALIDATION_ERROR,
    NO_MATCHING_WORKLOADS,
];

/// One finding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Message {
    pub code: &'static str,
    pub level: Level,
    /// `Kind namespace/name` (`Kind name` when cluster-scoped).
    pub object: Option<String>,
    pub file: Option<String>,
    /// 1-based.
    pub line: Option<usize>,
    /// 1-based, in characters.
    pub column: Option<usize>,
    pub message: String,
}

impl Message {
    fn new(code: Code, object: Option<String>, at: Option<&Location>, message: String) -> Self {
        Message {
            code: code.code,
            level: code.level,
            object,
            file: at.map(|l| l.file.display().to_string()),
            line: at.map(|l| l.at.line),
            column: at.map(|l| l.at.column),
            message,
        }
    }

    fn location(&self) -> String {
        match (&self.file, self.line) {
            (Some(f), Some(l)) => match self.column {
                Some(c) => format!("{f}:{l}:{c}"),
                None => format!("{f}:{l}"),
            },
            (Some(f), None) => f.clone(),
            _ => "-".into(),
        }
    }

    /// The namespace of the object concerned, if it is namespaced.
    fn namespace(&self) -> Option<&str> {
        let (_, rest) = self.object.as_deref()?.split_once(' ')?;
        rest.split_once('/').map(|(ns, _)| ns)
    }

    fn sort_key(&self) -> (Level, &str, &str, usize, usize, &str, &str) {
        (
            self.level,
            self.object.as_deref().unwrap_or(""),
            self.file.as_deref().unwrap_or(""),
            self.line.unwrap_or(0),
            self.column.unwrap_or(0),
            self.code,
            &self.message,
        )
    }
}

/// Where something is defined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub at: Position,
}

/// Where each object of the directory is defined, found by a second reading of the files with
/// the controller's own YAML reader (the parser reports objects without their place).
#[derive(Debug, Default)]
pub struct Locations {
    /// By `Kind namespace/name`; the first definition wins, as in the controller.
    objects: HashMap<String, Location>,
    /// The object a single-object document (file, line of its first node) defines.
    documents: HashMap<(PathBuf, usize), String>,
}

impl Locations {
    /// Reads every manifest file under `dir`, in the order the controller reads them.
    pub fn of_dir(dir: &Path) -> Self {
        let mut files = Vec::new();
        manifest_files(dir, &mut files);
        files.sort();
        let mut out = Locations::default();
        for f in files {
            if let Ok(text) = std::fs::read_to_string(&f) {
                out.add_file(&f, &text);
            }
        }
        out
    }

    pub fn add_file(&mut self, path: &Path, text: &str) {
        // A syntax error: the parser reports the file.
        let Ok(documents) = yaml::parse(text) else {
            return;
        };
        for document in documents {
            self.add_document(path, &document.value, &document.spans);
        }
    }

    /// A document's objects are placed at its first node (past any comments); a list's items
    /// at their own.
    fn add_document(&mut self, path: &Path, value: &Value, spans: &Spans) {
        let is_list = value.get("kind").and_then(Value::as_str) == Some("List");
        if !is_list {
            if let Some(label) = document_label(value) {
                let at = spans.at();
                self.documents
                    .insert((path.to_path_buf(), at.line), label.clone());
                self.place(label, path, at);
            }
            return;
        }
        let items = value.get("items").and_then(Value::as_array);
        let items_spans = spans.entry("items").map(|(_, s)| s);
        for (i, item) in items.into_iter().flatten().enumerate() {
            if let Some(label) = document_label(item) {
                let at = items_spans
                    .and_then(|s| s.item(i))
                    .map_or(spans.at(), Spans::at);
                self.place(label, path, at);
            }
        }
    }

    fn place(&mut self, label: String, path: &Path, at: Position) {
        self.objects.entry(label).or_insert_with(|| Location {
            file: path.to_path_buf(),
            at,
        });
    }

    pub fn object(&self, label: &str) -> Option<&Location> {
        self.objects.get(label)
    }
}

/// The controller's rule for which files are manifests.
fn manifest_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            manifest_files(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(path);
        }
    }
}

/// `Kind namespace/name` of a manifest document, whatever its kind.
fn document_label(value: &Value) -> Option<String> {
    let api_version = value.get("apiVersion")?.as_str()?;
    let kind = value.get("kind")?.as_str()?;
    let meta = value.get("metadata");
    let name = meta?.get("name")?.as_str()?;
    let namespace = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let namespace = match (namespace, Kind::from_type(api_version, kind)) {
        (_, Some(Kind::Namespace | Kind::Node)) => None,
        (Some(ns), _) => Some(ns),
        // A kind we read is namespaced: the parser puts it in `default`. For others we
        // cannot tell, so they are named without a namespace.
        (None, Some(_)) => Some("default".to_string()),
        (None, None) => None,
    };
    Some(label(kind, namespace.as_deref(), name))
}

fn label(kind: &str, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) if !ns.is_empty() => format!("{kind} {ns}/{name}"),
        _ => format!("{kind} {name}"),
    }
}

/// The controller's `Kind/namespace/name` as `Kind namespace/name`.
fn diagnostic_label(object: &str) -> String {
    match object.split_once('/') {
        Some((kind, rest)) => format!("{kind} {rest}"),
        None => object.to_string(),
    }
}

fn namespace_of(meta: &ObjectMeta) -> String {
    meta.namespace.clone().unwrap_or_else(|| "default".into())
}

fn name_of(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

fn show_labels(selector: &BTreeMap<String, String>) -> String {
    selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The result of analyzing a directory.
#[derive(Debug, Default)]
pub struct Analysis {
    pub messages: Vec<Message>,
}

/// Analyzes the manifests under `dir`.
pub fn analyze_dir(dir: &Path) -> Analysis {
    let scan = ManifestDir::new(dir).scan();
    let locations = Locations::of_dir(dir);
    analyze(scan.objects, &scan.diagnostics, &locations)
}

/// Analyzes parsed objects and the parser's findings.
pub fn analyze(objects: Vec<Object>, diagnostics: &[Diagnostic], at: &Locations) -> Analysis {
    let mut state = ClusterState::default();
    state.apply(Change::replace(Kind::ALL.to_vec(), objects));
    let mut messages: Vec<Message> = diagnostics.iter().map(|d| from_diagnostic(d, at)).collect();
    let mut checks = Checks {
        state: &state,
        at,
        out: &mut messages,
    };
    checks.use_waypoint();
    checks.policy_selectors();
    checks.l7_at_l4();
    checks.service_ports();
    checks.pod_namespaces();
    checks.index_warnings();
    messages.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    messages.dedup();
    Analysis { messages }
}

/// Gives a parser finding its code.
fn from_diagnostic(d: &Diagnostic, at: &Locations) -> Message {
    let m = d.message.as_str();
    let code = if m.starts_with("YAML syntax")
        || m.starts_with("cannot read")
        || m.contains("has no apiVersion and kind")
    {
        SYNTAX_ERROR
    } else if m.starts_with("unknown field") {
        UNKNOWN_FIELD
    } else if m.starts_with("also defined in") {
        DUPLICATE_OBJECT
    } else if m.contains("is not read by the controller") {
        KIND_NOT_READ
    } else if d.severity == Severity::Error {
        SCHEMA_VALIDATION_ERROR
    } else {
        MANIFEST_DIAGNOSTIC
    };
    let object = d.object.as_deref().map(diagnostic_label).or_else(|| {
        d.line
            .and_then(|l| at.documents.get(&(d.file.clone(), l)))
            .cloned()
    });
    let message = if code == KIND_NOT_READ {
        format!("{}; skipped", m.replace("by the controller", "by the mesh"))
    } else {
        m.to_string()
    };
    Message {
        code: code.code,
        level: match d.severity {
            Severity::Error => Level::Error,
            Severity::Warning => Level::Warning,
            Severity::Info => Level::Info,
        },
        object,
        file: Some(d.file.display().to_string()),
        line: d.line,
        column: d.column,
        message,
    }
}

/// The HTTP-level fields a rule uses, by their YAML names.
fn l7_fields(rule: &Rule) -> Vec<String> {
    let mut out = Vec::new();
    for to in &rule.to {
        let o = &to.operation;
        for (name, values) in [
            ("hosts", &o.hosts),
            ("notHosts", &o.not_hosts),
            ("methods", &o.methods),
            ("notMethods", &o.not_methods),
            ("paths", &o.paths),
            ("notPaths", &o.not_paths),
        ] {
            if !values.is_empty() {
                out.push(name.to_string());
            }
        }
    }
    for from in &rule.from {
        let s = &from.source;
        for (name, values) in [
            ("requestPrincipals", &s.request_principals),
            ("notRequestPrincipals", &s.not_request_principals),
            ("remoteIpBlocks", &s.remote_ip_blocks),
            ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
        ] {
            if !values.is_empty() {
                out.push(name.to_string());
            }
        }
    }
    for c in &rule.when {
        if !L4_CONDITION_KEYS.contains(&c.key.as_str()) {
            out.push(format!("when {}", c.key));
        }
    }
    out
}

struct Checks<'a> {
    state: &'a ClusterState,
    at: &'a Locations,
    out: &'a mut Vec<Message>,
}

impl Checks<'_> {
    fn report(&mut self, code: Code, object: String, message: String) {
        let at = self.at.object(&object).cloned();
        self.out
            .push(Message::new(code, Some(object), at.as_ref(), message));
    }

    fn pods_in<'s>(&'s self, namespace: &'s str) -> impl Iterator<Item = &'s MeshPod> + 's {
        self.state
            .pods()
            .filter(move |p| namespace_of(&p.metadata) == namespace)
    }

    fn selects_any_pod(&self, namespace: &str, selector: &BTreeMap<String, String>) -> bool {
        self.pods_in(namespace)
            .any(|p| selector_matches(selector, labels(&p.metadata)))
    }

    /// `istio.io/use-waypoint` on Namespaces, Services and Pods names an existing waypoint
    /// that serves that traffic.
    fn use_waypoint(&mut self) {
        let mut users: Vec<(Kind, &ObjectMeta, String)> = Vec::new();
        for ns in self.state.namespaces() {
            users.push((Kind::Namespace, &ns.metadata, name_of(&ns.metadata).into()));
        }
        for svc in self.state.services() {
            users.push((Kind::Service, &svc.metadata, namespace_of(&svc.metadata)));
        }
        for pod in self.state.pods() {
            users.push((Kind::Pod, &pod.metadata, namespace_of(&pod.metadata)));
        }
        for (kind, meta, namespace) in users {
            let Some(Some((gw_ns, gw_name))) = use_waypoint(meta, &namespace) else {
                continue;
            };
            let object = if kind == Kind::Namespace {
                label(kind.as_str(), None, name_of(meta))
            } else {
                label(kind.as_str(), Some(&namespace), name_of(meta))
            };
            let key = ObjectKey {
                kind: Kind::Gateway,
                namespace: gw_ns.clone(),
                name: gw_name.clone(),
            };
            let gateway = match self.state.get(&key) {
                Some(Object::Gateway(g)) => g,
                _ => {
                    self.report(
                        REFERENCED_RESOURCE_NOT_FOUND,
                        object,
                        format!(
                            "Referenced waypoint not found: istio.io/use-waypoint names Gateway {gw_ns}/{gw_name}, which is not defined; traffic is not sent to any waypoint"
                        ),
                    );
                    continue;
                }
            };
            if gateway.spec.gateway_class_name != WAYPOINT_CLASS {
                self.report(
                    NOT_A_WAYPOINT,
                    object,
                    format!(
                        "istio.io/use-waypoint names Gateway {gw_ns}/{gw_name}, whose gatewayClassName is {:?}, not {WAYPOINT_CLASS:?}; no waypoint is used",
                        gateway.spec.gateway_class_name
                    ),
                );
                continue;
            }
            let serves = labels(&gateway.metadata)
                .get(WAYPOINT_FOR)
                .map(String::as_str)
                .unwrap_or("service");
            let (needed, ok) = match kind {
                Kind::Pod => ("workload", matches!(serves, "workload" | "all")),
                Kind::Service => ("service", matches!(serves, "service" | "all")),
                _ => ("any", serves != "none"),
            };
            if !ok {
                self.report(
                    WAYPOINT_BYPASSED,
                    object,
                    format!(
                        "waypoint {gw_ns}/{gw_name} has {WAYPOINT_FOR}={serves}, so it does not carry {needed} traffic and this reference has no effect"
                    ),
                );
            }
        }
    }

    /// Selector policies select some pod (IST0127).
    fn policy_selectors(&mut self) {
        let root = IndexConfig::default().root_namespace;
        let mut policies: Vec<(String, String, &BTreeMap<String, String>)> = Vec::new();
        for p in self.state.authorization_policies() {
            if has_selector(p)
                && !is_waypoint_policy(p)
                && let Some(sel) = &p.spec.selector
            {
                let ns = namespace_of(&p.metadata);
                let object = label("AuthorizationPolicy", Some(&ns), name_of(&p.metadata));
                policies.push((object, ns, &sel.match_labels));
            }
        }
        for p in self.state.peer_authentications() {
            if let Some(sel) = &p.spec.selector
                && !sel.match_labels.is_empty()
            {
                let ns = namespace_of(&p.metadata);
                let object = label("PeerAuthentication", Some(&ns), name_of(&p.metadata));
                policies.push((object, ns, &sel.match_labels));
            }
        }
        for (object, ns, selector) in policies {
            if ns == root || self.selects_any_pod(&ns, selector) {
                continue;
            }
            self.report(
                NO_MATCHING_WORKLOADS,
                object,
                format!(
                    "No matching workloads for this resource with the following labels: {} (no Pod in namespace {ns} has them); the policy applies to nothing",
                    show_labels(selector)
                ),
            );
        }
    }

    /// ztunnel-enforced policies using HTTP attributes.
    fn l7_at_l4(&mut self) {
        let mut found = Vec::new();
        for p in self.state.authorization_policies() {
            if is_waypoint_policy(p) {
                continue; // a waypoint sees HTTP
            }
            let action = p.spec.action;
            if !matches!(
                action,
                AuthorizationAction::Allow | AuthorizationAction::Deny
            ) {
                continue; // not enforced by ztunnel at all: a controller warning says so
            }
            let mut fields: Vec<String> =
                p.spec.rules.iter().flatten().flat_map(l7_fields).collect();
            fields.sort();
            fields.dedup();
            if fields.is_empty() {
                continue;
            }
            let ns = namespace_of(&p.metadata);
            let object = label("AuthorizationPolicy", Some(&ns), name_of(&p.metadata));
            let effect = if action == AuthorizationAction::Allow {
                "ALLOW rules using them match nothing, so the traffic they were meant to allow is denied (the policy fails closed)"
            } else {
                "DENY rules using them are applied without those conditions, so they deny more than written"
            };
            found.push((
                object,
                format!(
                    "enforced by ztunnel at L4 (no targetRefs), which cannot see HTTP attributes ({}): {effect}; to match on HTTP, attach the policy to a waypoint with targetRefs",
                    fields.join(", ")
                ),
            ));
        }
        for (object, message) in found {
            self.report(L7_AT_L4, object, message);
        }
    }

    /// Services select pods, and their target ports exist on them.
    fn service_ports(&mut self) {
        let mut found = Vec::new();
        for svc in self.state.services() {
            let Some(spec) = svc.spec.as_ref() else {
                continue;
            };
            let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
                continue; // endpoints come from EndpointSlices
            };
            if spec.type_.as_deref() == Some("ExternalName") {
                continue;
            }
            let ns = namespace_of(&svc.metadata);
            let object = label("Service", Some(&ns), name_of(&svc.metadata));
            let selected: Vec<&MeshPod> = self
                .pods_in(&ns)
                .filter(|p| selector_matches(selector, labels(&p.metadata)))
                .collect();
            if selected.is_empty() {
                found.push((
                    SERVICE_SELECTS_NO_PODS,
                    object,
                    format!(
                        "no Pod in namespace {ns} matches the selector {}; the Service has no endpoints",
                        show_labels(selector)
                    ),
                ));
                continue;
            }
            let declared: Vec<(i32, Option<&str>)> =
                selected.iter().flat_map(|p| container_ports(p)).collect();
            if declared.is_empty() {
                continue; // ports not declared: nothing to compare with
            }
            for port in spec.ports.iter().flatten() {
                let target = port
                    .target_port
                    .clone()
                    .unwrap_or(IntOrString::Int(port.port));
                let matched = match &target {
                    IntOrString::Int(n) => declared.iter().any(|(p, _)| p == n),
                    IntOrString::String(name) => {
                        declared.iter().any(|(_, n)| *n == Some(name.as_str()))
                    }
                };
                if !matched {
                    let shown = match &target {
                        IntOrString::Int(n) => n.to_string(),
                        IntOrString::String(s) => format!("{s:?}"),
                    };
                    found.push((
                        TARGET_PORT_NOT_FOUND,
                        object.clone(),
                        format!(
                            "port {}{} targets {shown}, which no container of the selected pods ({}) declares as a containerPort",
                            port.port,
                            port.name
                                .as_deref()
                                .map(|n| format!(" ({n})"))
                                .unwrap_or_default(),
                            selected
                                .iter()
                                .map(|p| name_of(&p.metadata))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
            }
        }
        for (code, object, message) in found {
            self.report(code, object, message);
        }
    }

    /// Pods whose namespace has no manifest.
    fn pod_namespaces(&mut self) {
        let mut found = Vec::new();
        for pod in self.state.pods() {
            let ns = namespace_of(&pod.metadata);
            if self.state.namespace(&ns).is_none() {
                found.push((
                    label("Pod", Some(&ns), name_of(&pod.metadata)),
                    format!(
                        "namespace {ns} has no Namespace manifest; only the Pod's own istio.io/dataplane-mode label can enrol it"
                    ),
                ));
            }
        }
        for (object, message) in found {
            self.report(NAMESPACE_NOT_DECLARED, object, message);
        }
    }

    /// What the controller's index warns about, less what the checks above already say.
    fn index_warnings(&mut self) {
        let config = IndexConfig::default();
        let index = index::build(self.state, &config);
        for w in index.warnings {
            if w.message.contains("istio.io/use-waypoint names")
                || w.message.contains("cannot see HTTP attributes")
            {
                continue;
            }
            let object = index_object(&w.object, &config.domain_suffix);
            self.report(CONTROLLER_WARNING, object, w.message);
        }
    }
}

/// The index names objects as `Kind/ns/name`, services as `ns/hostname`, others `ns/name`.
fn index_object(object: &str, domain_suffix: &str) -> String {
    let Some((first, rest)) = object.split_once('/') else {
        return object.to_string();
    };
    if Kind::ALL.iter().any(|k| k.as_str() == first) {
        return format!("{first} {rest}");
    }
    let service_suffix = format!(".{first}.svc.{domain_suffix}");
    match rest.strip_suffix(&service_suffix) {
        Some(name) => label("Service", Some(first), name),
        None => object.to_string(),
    }
}

fn container_ports(pod: &MeshPod) -> Vec<(i32, Option<&str>)> {
    pod.container_ports
        .iter()
        .map(|p| (p.port, p.name.as_deref()))
        .collect()
}

/// The running mesh's manifests, else the current directory.
fn default_dir() -> PathBuf {
    Home::locate()
        .running()
        .map(|info| info.manifests)
        .unwrap_or_else(|_| PathBuf::from("."))
}

/// `ambientctl analyze`.
pub fn run(args: AnalyzeArgs) -> anyhow::Result<ExitCode> {
    let dir = args.dir.clone().unwrap_or_else(default_dir);
    if !dir.is_dir() {
        let why = if dir.exists() {
            "not a directory"
        } else {
            "no such directory"
        };
        eprintln!("Error: {}: {why}", dir.display());
        return Ok(ExitCode::FAILURE);
    }
    let analysis = analyze_dir(&dir);
    let (shown, hidden) = select(analysis.messages, &args);
    let failed = shown.iter().any(|m| m.level == Level::Error);
    if args.output == Format::Table && shown.is_empty() {
        println!(
            "\u{2714} No validation issues found when analyzing {}.",
            dir.display()
        );
    } else {
        print(args.output, &shown, |messages| render(messages));
    }
    if args.output == Format::Table && hidden > 0 {
        eprintln!(
            "({hidden} document(s) of kinds the mesh does not read were skipped; --verbose lists them)"
        );
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The messages to show, and how many kind-not-read infos were left out.
fn select(messages: Vec<Message>, args: &AnalyzeArgs) -> (Vec<Message>, usize) {
    let mut hidden = 0;
    let shown = messages
        .into_iter()
        .filter(|m| match &args.namespace {
            Some(ns) => m.namespace().is_none_or(|n| n == ns),
            None => true,
        })
        .filter(|m| {
            let keep = args.verbose || m.code != KIND_NOT_READ.code;
            if !keep {
                hidden += 1;
            }
            keep
        })
        .collect();
    (shown, hidden)
}

fn render(messages: &[Message]) -> String {
    let rows: Vec<Vec<String>> = messages
        .iter()
        .map(|m| {
            vec![
                m.code.to_string(),
                m.level.to_string(),
                m.object.clone().unwrap_or_else(|| "-".into()),
                m.location(),
                m.message.clone(),
            ]
        })
        .collect();
    table(&["CODE", "LEVEL", "OBJECT", "LOCATION", "MESSAGE"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ambient_controller::source::manifests::parse_file;

    /// Analyzes files given as (name, text), as a directory scan would.
    fn analyze_files(files: &[(&str, &str)]) -> Vec<Message> {
        let mut objects = Vec::new();
        let mut diagnostics = Vec::new();
        let mut at = Locations::default();
        for (name, text) in files {
            let path = Path::new(name);
            let parsed = parse_file(path, text, None);
            objects.extend(parsed.objects);
            diagnostics.extend(parsed.diagnostics);
            at.add_file(path, text);
        }
        analyze(objects, &diagnostics, &at).messages
    }

    fn with_code(messages: &[Message], code: Code) -> Vec<&Message> {
        messages.iter().filter(|m| m.code == code.code).collect()
    }

    const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels:\n    istio.io/dataplane-mode: ambient\n";

    const WEB: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: shop
  labels: {app: web}
spec:
  containers:
  - name: web
    image: web
    ports:
    - containerPort: 8080
      name: http
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector: {app: web}
  ports:
  - name: http
    port: 80
    targetPort: http
  - name: admin
    port: 9000
    targetPort: 8080
"#;

    const WAYPOINT: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: waypoint
  namespace: shop
  labels:
    istio.io/waypoint-for: service
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
"#;

    #[test]
    fn a_clean_set_has_no_messages() {
        let ns = NAMESPACE.replace(
            "    istio.io/dataplane-mode: ambient\n",
            "    istio.io/dataplane-mode: ambient\n    istio.io/use-waypoint: waypoint\n",
        );
        let m = analyze_files(&[("ns.yaml", &ns), ("web.yaml", WEB), ("wp.yaml", WAYPOINT)]);
        assert!(m.is_empty(), "{m:#?}");
    }

    #[test]
    fn syntax_error_has_file_and_line() {
        let m = analyze_files(&[(
            "bad.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: [x\n",
        )]);
        let e = with_code(&m, SYNTAX_ERROR);
        assert_eq!(e.len(), 1, "{m:#?}");
        assert_eq!(e[0].level, Level::Error);
        assert_eq!(e[0].file.as_deref(), Some("bad.yaml"));
        assert!(e[0].line.is_some());
    }

    #[test]
    fn unknown_field_names_the_object_and_line() {
        let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n  namespace: shop\nspec:\n  selectr: {app: s}\n";
        let m = analyze_files(&[("s.yaml", text)]);
        let e = with_code(&m, UNKNOWN_FIELD);
        assert_eq!(e.len(), 1, "{m:#?}");
        assert_eq!(e[0].object.as_deref(), Some("Service shop/s"));
        assert_eq!(e[0].line, Some(7));
        assert_eq!(e[0].level, Level::Error);
    }

    #[test]
    fn findings_name_line_and_column_and_list_items_their_own_place() {
        let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n  namespace: shop\nspec:\n  selectr: {app: s}\n";
        let m = analyze_files(&[("s.yaml", text)]);
        let e = with_code(&m, UNKNOWN_FIELD);
        assert_eq!((e[0].line, e[0].column), (Some(7), Some(3)), "{m:#?}");
        assert_eq!(e[0].location(), "s.yaml:7:3");

        let list = "# services\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a, namespace: shop}\n  spec: {selector: {app: a}}\n- apiVersion: v1\n  kind: Service\n  metadata: {name: b, namespace: shop}\n  spec: {selector: {app: b}}\n";
        let m = analyze_files(&[("list.yaml", list)]);
        let i = with_code(&m, SERVICE_SELECTS_NO_PODS);
        let places: Vec<_> = i
            .iter()
            .map(|m| (m.object.as_deref(), m.location()))
            .collect();
        assert_eq!(
            places,
            vec![
                (Some("Service shop/a"), "list.yaml:5:3".to_string()),
                (Some("Service shop/b"), "list.yaml:9:3".to_string())
            ]
        );
    }

    #[test]
    fn invalid_object_is_a_schema_error() {
        let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  ports:\n  - {name: a, port: 80}\n  - {name: b, port: 80}\n";
        let m = analyze_files(&[("s.yaml", text)]);
        let e = with_code(&m, SCHEMA_VALIDATION_ERROR);
        assert_eq!(e.len(), 1, "{m:#?}");
        assert_eq!(e[0].object.as_deref(), Some("Service default/s"));
        assert!(e[0].message.contains("declared twice"), "{}", e[0].message);
    }

    #[test]
    fn kinds_not_read_are_infos_with_their_object() {
        let text =
            "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: sa\n  namespace: shop\n";
        let m = analyze_files(&[("sa.yaml", text)]);
        let i = with_code(&m, KIND_NOT_READ);
        assert_eq!(i.len(), 1, "{m:#?}");
        assert_eq!(i[0].level, Level::Info);
        assert_eq!(i[0].object.as_deref(), Some("ServiceAccount shop/sa"));
        assert_eq!(i[0].line, Some(1));
    }

    #[test]
    fn missing_waypoint_is_ist0101_on_each_kind() {
        let ns = NAMESPACE.replace(
            "    istio.io/dataplane-mode: ambient\n",
            "    istio.io/dataplane-mode: ambient\n    istio.io/use-waypoint: ghost\n",
        );
        let web = WEB
            .replace(
                "  labels: {app: web}\n",
                "  labels: {app: web, istio.io/use-waypoint: ghost2}\n",
            )
            .replace(
                "  name: web\n  namespace: shop\n",
                "  name: web\n  namespace: shop\n  labels:\n    istio.io/use-waypoint: waypoint\n    istio.io/use-waypoint-namespace: elsewhere\n",
            );
        let m = analyze_files(&[("ns.yaml", &ns), ("web.yaml", &web), ("wp.yaml", WAYPOINT)]);
        let e = with_code(&m, REFERENCED_RESOURCE_NOT_FOUND);
        let objects: Vec<&str> = e.iter().filter_map(|m| m.object.as_deref()).collect();
        assert_eq!(
            objects,
            vec!["Namespace shop", "Pod shop/web-1", "Service shop/web"],
            "{m:#?}"
        );
        assert!(
            e[2].message.contains("elsewhere/waypoint"),
            "{}",
            e[2].message
        );
        assert_eq!(e[1].file.as_deref(), Some("web.yaml"));
        assert_eq!(e[1].line, Some(1));
        assert!(e.iter().all(|m| m.level == Level::Error));
        // The index's own warning about the same reference is not repeated.
        assert!(with_code(&m, CONTROLLER_WARNING).is_empty(), "{m:#?}");
    }

    #[test]
    fn gateway_of_another_class_and_bypassed_waypoints() {
        let other = WAYPOINT
            .replace("name: waypoint", "name: ingress")
            .replace("istio-waypoint", "istio");
        let web = WEB
            .replace(
                "  labels: {app: web}\n",
                "  labels: {app: web, istio.io/use-waypoint: waypoint}\n",
            )
            .replace(
                "  name: web\n  namespace: shop\n",
                "  name: web\n  namespace: shop\n  labels: {istio.io/use-waypoint: ingress}\n",
            );
        let m = analyze_files(&[
            ("ns.yaml", NAMESPACE),
            ("web.yaml", &web),
            ("wp.yaml", WAYPOINT),
            ("gw.yaml", &other),
        ]);
        let e = with_code(&m, NOT_A_WAYPOINT);
        assert_eq!(e.len(), 1, "{m:#?}");
        assert_eq!(e[0].object.as_deref(), Some("Service shop/web"));
        let w = with_code(&m, WAYPOINT_BYPASSED);
        assert_eq!(w.len(), 1, "{m:#?}");
        assert_eq!(w[0].object.as_deref(), Some("Pod shop/web-1"));
        assert_eq!(w[0].level, Level::Warning);
    }

    const POLICY: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: p
  namespace: shop
spec:
  selector:
    matchLabels: {app: web}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/shop/sa/client"]
"#;

    #[test]
    fn policy_selecting_nothing_is_ist0127() {
        let nothing = POLICY.replace("{app: web}", "{app: webb}");
        let root = nothing.replace("namespace: shop", "namespace: istio-system");
        let peer = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: strict\n  namespace: shop\nspec:\n  selector:\n    matchLabels: {app: nope}\n  mtls: {mode: STRICT}\n";
        let m = analyze_files(&[
            ("ns.yaml", NAMESPACE),
            ("web.yaml", WEB),
            ("ok.yaml", POLICY),
            ("p.yaml", &nothing.replace("name: p", "name: q")),
            ("root.yaml", &root),
            ("peer.yaml", peer),
        ]);
        let w = with_code(&m, NO_MATCHING_WORKLOADS);
        let objects: Vec<&str> = w.iter().filter_map(|m| m.object.as_deref()).collect();
        assert_eq!(
            objects,
            vec![
                "AuthorizationPolicy shop/q",
                "PeerAuthentication shop/strict"
            ],
            "{m:#?}"
        );
        assert!(w[0].message.contains("app=webb"), "{}", w[0].message);
        assert_eq!(w[0].file.as_deref(), Some("p.yaml"));
    }

    #[test]
    fn l7_fields_in_a_ztunnel_policy_are_warned() {
        let allow = POLICY.replace(
            "  - from:\n",
            "  - to:\n    - operation:\n        methods: [GET]\n        paths: [\"/x\"]\n    from:\n",
        );
        let deny = POLICY
            .replace("name: p", "name: d")
            .replace("ALLOW", "DENY")
            .replace(
                "  - from:\n",
                "  - when:\n    - key: request.headers[x-user]\n      values: [\"a\"]\n    - key: source.ip\n      values: [\"10.0.0.1\"]\n    from:\n",
            );
        let waypoint = format!(
            "{}  targetRefs:\n  - {{kind: Service, group: \"\", name: web}}\n",
            allow
                .replace("name: p", "name: w")
                .replace("  selector:\n    matchLabels: {app: web}\n", "")
        );
        let m = analyze_files(&[
            ("ns.yaml", NAMESPACE),
            ("web.yaml", WEB),
            ("allow.yaml", &allow),
            ("deny.yaml", &deny),
            ("waypoint.yaml", &waypoint),
        ]);
        let w = with_code(&m, L7_AT_L4);
        assert_eq!(w.len(), 2, "{m:#?}");
        assert_eq!(w[0].object.as_deref(), Some("AuthorizationPolicy shop/d"));
        assert!(w[0].message.contains("when request.headers[x-user]"));
        assert!(!w[0].message.contains("source.ip"));
        assert!(w[0].message.contains("deny more"));
        assert_eq!(w[1].object.as_deref(), Some("AuthorizationPolicy shop/p"));
        assert!(w[1].message.contains("methods, paths"), "{}", w[1].message);
        assert!(w[1].message.contains("fails closed"));
        // The targetRefs policy is fine at L4 but needs a waypoint to apply at all.
        let c = with_code(&m, CONTROLLER_WARNING);
        assert_eq!(c.len(), 1, "{m:#?}");
        assert_eq!(c[0].object.as_deref(), Some("Service shop/web"));
        assert!(c[0].message.contains("uses no waypoint"));
    }

    #[test]
    fn target_port_without_container_port_is_warned() {
        let web = WEB
            .replace("targetPort: http", "targetPort: web")
            .replace("targetPort: 8080", "targetPort: 9090");
        let m = analyze_files(&[("ns.yaml", NAMESPACE), ("web.yaml", &web)]);
        let w = with_code(&m, TARGET_PORT_NOT_FOUND);
        assert_eq!(w.len(), 2, "{m:#?}");
        assert!(
            w.iter()
                .all(|m| m.object.as_deref() == Some("Service shop/web"))
        );
        assert!(w.iter().any(|m| m.message.contains("\"web\"")));
        assert!(w.iter().any(|m| m.message.contains("9090")));
        assert_eq!(w[0].line, Some(15), "the Service's document");

        // Pods that declare no ports are not compared.
        let undeclared = web.replace(
            "    ports:\n    - containerPort: 8080\n      name: http\n",
            "",
        );
        let m = analyze_files(&[("ns.yaml", NAMESPACE), ("web.yaml", &undeclared)]);
        assert!(with_code(&m, TARGET_PORT_NOT_FOUND).is_empty(), "{m:#?}");
    }

    #[test]
    fn service_selecting_nothing_is_an_info() {
        let web = WEB.replace("  selector: {app: web}", "  selector: {app: other}");
        let m = analyze_files(&[("ns.yaml", NAMESPACE), ("web.yaml", &web)]);
        let i = with_code(&m, SERVICE_SELECTS_NO_PODS);
        assert_eq!(i.len(), 1, "{m:#?}");
        assert_eq!(i[0].level, Level::Info);
        assert_eq!(i[0].object.as_deref(), Some("Service shop/web"));
    }

    #[test]
    fn pod_without_namespace_manifest_is_an_info() {
        let m = analyze_files(&[("web.yaml", WEB)]);
        let i = with_code(&m, NAMESPACE_NOT_DECLARED);
        assert_eq!(i.len(), 1, "{m:#?}");
        assert_eq!(i[0].object.as_deref(), Some("Pod shop/web-1"));
        assert_eq!(i[0].level, Level::Info);
    }

    #[test]
    fn duplicates_across_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), NAMESPACE).unwrap();
        std::fs::write(dir.path().join("b.yaml"), NAMESPACE).unwrap();
        let m = analyze_dir(dir.path()).messages;
        let e = with_code(&m, DUPLICATE_OBJECT);
        assert_eq!(e.len(), 1, "{m:#?}");
        assert_eq!(e[0].object.as_deref(), Some("Namespace shop"));
        assert!(e[0].file.as_deref().unwrap().ends_with("b.yaml"));
    }

    #[test]
    fn index_warnings_are_reported_with_their_object() {
        let custom = POLICY.replace("ALLOW", "AUDIT");
        let svc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: odd\n  namespace: shop\nspec:\n  clusterIP: not-an-ip\n  ports:\n  - port: 80\n";
        let m = analyze_files(&[
            ("ns.yaml", NAMESPACE),
            ("web.yaml", WEB),
            ("p.yaml", &custom),
            ("svc.yaml", svc),
        ]);
        let w = with_code(&m, CONTROLLER_WARNING);
        let objects: Vec<&str> = w.iter().filter_map(|m| m.object.as_deref()).collect();
        assert_eq!(
            objects,
            vec!["AuthorizationPolicy shop/p", "Service shop/odd"],
            "{m:#?}"
        );
        assert_eq!(w[1].file.as_deref(), Some("svc.yaml"));
    }

    #[test]
    fn errors_sort_first_and_namespace_filter_keeps_cluster_scoped() {
        let ns = NAMESPACE.replace(
            "    istio.io/dataplane-mode: ambient\n",
            "    istio.io/dataplane-mode: ambient\n    istio.io/use-waypoint: ghost\n",
        );
        let other = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\n  namespace: other\n";
        let m = analyze_files(&[("ns.yaml", &ns), ("web.yaml", WEB), ("o.yaml", other)]);
        let levels: Vec<Level> = m.iter().map(|m| m.level).collect();
        let mut sorted = levels.clone();
        sorted.sort();
        assert_eq!(levels, sorted);
        assert_eq!(m[0].level, Level::Error);
        let args = AnalyzeArgs {
            dir: None,
            output: Format::Table,
            namespace: Some("shop".into()),
            all_namespaces: false,
            verbose: false,
        };
        let (shown, _) = select(m, &args);
        assert!(
            shown
                .iter()
                .any(|m| m.object.as_deref() == Some("Namespace shop"))
        );
        assert!(
            shown.iter().all(|m| m.namespace() != Some("other")),
            "{shown:#?}"
        );
    }

    #[test]
    fn table_has_the_documented_columns() {
        let m = analyze_files(&[("web.yaml", WEB)]);
        let t = render(&m);
        assert!(t.starts_with("CODE"), "{t}");
        for h in ["LEVEL", "OBJECT", "LOCATION", "MESSAGE"] {
            assert!(t.lines().next().unwrap().contains(h), "{t}");
        }
        assert!(t.contains("web.yaml:1"), "{t}");
    }

    #[test]
    fn every_code_is_documented_once() {
        let source = include_str!("analyze.rs");
        let doc: String = source
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .collect::<Vec<_>>()
            .join("\n");
        for c in CODES {
            let row = format!("//! | {} | ", c.code);
            assert_eq!(doc.matches(&row).count(), 1, "{} not in the table", c.code);
            assert!(doc.contains(&format!("| {} |", c.name)), "{}", c.name);
        }
        let mut codes: Vec<&str> = CODES.iter().map(|c| c.code).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), CODES.len());
    }
}
