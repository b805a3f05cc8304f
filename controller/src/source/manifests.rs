//! A directory of Kubernetes manifests as a configuration source.
//!
//! Every `*.yaml`, `*.yml` and `*.json` file (recursively) may hold several documents
//! (`---`) and `kind: List` documents, read by [`super::yaml`]. Kinds the controller does not
//! read are skipped. A document that does not parse, names an unknown field or fails
//! validation is reported with file, line, column and reason and ignored: the last good
//! version of that object (or, for a YAML syntax error, of the whole file) stays in force, and
//! the rest of the configuration is untouched. A finding about a field (a wrong type, an
//! unknown field, a port the API server would refuse) points at that field; one about the
//! whole document (no kind, no name, a kind not read) at the document's first node.
//!
//! Deployments (`apps/v1`) are not the controller's to read, but the local runtime runs
//! them: they are kept, as written, in [`Scan::deployments`].
//!
//! With the local runtime's allocations file, the objects it generated are read the same way
//! (reported as coming from `runtime`; a file's definition of the same object wins), its
//! placements and addresses are filled in, and its label overlays applied last.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::allocations::Allocations;
use super::yaml::{self, Position, Spans};
use super::{Diagnostic, Severity};
use crate::model::{Change, Kind, Object, ObjectKey};

/// What one file contributed at its last successful parse.
#[derive(Clone, Debug, Default)]
struct FileState {
    modified: Option<SystemTime>,
    len: u64,
    objects: Vec<Object>,
    deployments: Vec<Value>,
    diagnostics: Vec<Diagnostic>,
}

/// The result of a scan.
#[derive(Clone, Debug)]
pub struct Scan {
    pub objects: Vec<Object>,
    /// The directory's Deployments, for the local runtime (which makes their pods).
    pub deployments: Vec<Value>,
    pub diagnostics: Vec<Diagnostic>,
    /// Whether any file changed since the previous scan.
    pub changed: bool,
}

/// Where objects the local runtime generated are reported to come from.
pub const RUNTIME_SOURCE: &str = "runtime";

/// The local runtime's decisions file, as last read.
#[derive(Debug)]
struct AllocationsFile {
    path: PathBuf,
    stamp: Option<(Option<SystemTime>, u64)>,
    current: Allocations,
    error: Option<Diagnostic>,
    /// `current.generated`, parsed (a malformed object keeps its last good version).
    generated: Vec<Object>,
    generated_diagnostics: Vec<Diagnostic>,
}

impl AllocationsFile {
    /// Re-reads the file if it changed; returns whether it did. A bad file keeps the last
    /// good decisions and is reported.
    fn refresh(&mut self) -> bool {
        let stamp = std::fs::metadata(&self.path)
            .ok()
            .map(|m| (m.modified().ok(), m.len()));
        if stamp == self.stamp && stamp.is_some_and(|(m, _)| m.is_some()) {
            return false;
        }
        self.stamp = stamp;
        match Allocations::load(&self.path) {
            Ok(a) => {
                let parsed = parse_generated(&a.generated, Some(&self.generated));
                self.generated = parsed.objects;
                self.generated_diagnostics = parsed.diagnostics;
                self.current = a;
                self.error = None;
            }
            Err(e) => self.error = Some(error(&self.path, None, None, e.to_string())),
        }
        true
    }
}

/// Parses the objects the local runtime generated as manifest documents (reported as
/// [`RUNTIME_SOURCE`], without lines; a document without a name is called `generated[i]`).
pub fn parse_generated(values: &[Value], previous: Option<&[Object]>) -> ParsedFile {
    let mut reader = Reader::new(Path::new(RUNTIME_SOURCE), previous);
    for (i, value) in values.iter().enumerate() {
        let first = reader.diagnostics.len();
        reader.document(value.clone(), None);
        for d in &mut reader.diagnostics[first..] {
            d.object = d.object.take().or_else(|| Some(format!("generated[{i}]")));
        }
    }
    reader.finish()
}

/// Watches a manifest directory.
pub struct ManifestDir {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    published: Arc<Mutex<Vec<Diagnostic>>>,
    allocations: Option<AllocationsFile>,
}

impl ManifestDir {
    pub fn new(dir: &Path) -> Self {
        ManifestDir {
            dir: dir.to_path_buf(),
            files: BTreeMap::new(),
            published: Arc::default(),
            allocations: None,
        }
    }

    /// Fills in the local runtime's decisions from `path` (see [`super::allocations`]).
    pub fn with_allocations(mut self, path: &Path) -> Self {
        self.allocations = Some(AllocationsFile {
            path: path.to_path_buf(),
            stamp: None,
            current: Allocations::default(),
            error: None,
            generated: Vec::new(),
            generated_diagnostics: Vec::new(),
        });
        self
    }

    /// Keeps the current findings in `published` (for the monitoring port).
    pub fn with_diagnostics(mut self, published: Arc<Mutex<Vec<Diagnostic>>>) -> Self {
        self.published = published;
        self
    }

    /// Re-reads files that changed and returns every object the directory now defines.
    pub fn scan(&mut self) -> Scan {
        let paths = manifest_files(&self.dir);
        let mut changed = false;
        let mut next = BTreeMap::new();
        for path in paths {
            let meta = std::fs::metadata(&path).ok();
            let modified = meta.as_ref().and_then(|m| m.modified().ok());
            let len = meta.as_ref().map(|m| m.len()).unwrap_or(0);
            let previous = self.files.remove(&path);
            let state = match previous {
                Some(p) if p.modified == modified && p.len == len && modified.is_some() => p,
                previous => {
                    changed = true;
                    let text = match std::fs::read_to_string(&path) {
                        Ok(t) => t,
                        Err(e) => {
                            let mut kept = previous.unwrap_or_default();
                            kept.diagnostics =
                                vec![error(&path, None, None, format!("cannot read: {e}"))];
                            next.insert(path, kept);
                            continue;
                        }
                    };
                    let parsed = parse_file(
                        &path,
                        &text,
                        previous.as_ref().map(|p| p.objects.as_slice()),
                    );
                    // A file that does not parse keeps its last good Deployments too.
                    let deployments = match (parsed.syntax_error, previous) {
                        (true, Some(p)) => p.deployments,
                        _ => parsed.deployments,
                    };
                    FileState {
                        modified,
                        len,
                        objects: parsed.objects,
                        deployments,
                        diagnostics: parsed.diagnostics,
                    }
                }
            };
            next.insert(path, state);
        }
        if !self.files.is_empty() {
            changed = true; // files were removed
        }
        self.files = next;

        let mut by_key: BTreeMap<ObjectKey, (PathBuf, Object)> = BTreeMap::new();
        let mut diagnostics = Vec::new();
        let mut deployments = Vec::new();
        for (path, state) in &self.files {
            diagnostics.extend(state.diagnostics.iter().cloned());
            deployments.extend(state.deployments.iter().cloned());
            for o in &state.objects {
                if let Some((first, _)) = by_key.get(&o.key()) {
                    diagnostics.push(Diagnostic::new(
                        Severity::Error,
                        path.clone(),
                        None,
                        Some(o.key().to_string()),
                        format!(
                            "also defined in {}; that definition is used",
                            first.display()
                        ),
                    ));
                    continue;
                }
                by_key.insert(o.key(), (path.clone(), o.clone()));
            }
        }
        if let Some(a) = self.allocations.as_mut() {
            changed |= a.refresh();
            diagnostics.extend(a.error.clone());
            diagnostics.extend(a.generated_diagnostics.iter().cloned());
            for o in &a.generated {
                if let Some((first, _)) = by_key.get(&o.key()) {
                    diagnostics.push(Diagnostic::new(
                        Severity::Warning,
                        PathBuf::from(RUNTIME_SOURCE),
                        None,
                        Some(o.key().to_string()),
                        format!(
                            "also defined in {}; that definition is used",
                            first.display()
                        ),
                    ));
                    continue;
                }
                by_key.insert(o.key(), (PathBuf::from(RUNTIME_SOURCE), o.clone()));
            }
        }
        let mut objects: Vec<Object> = by_key.into_values().map(|(_, o)| o).collect();
        if let Some(a) = self.allocations.as_ref() {
            a.current.apply(&mut objects);
            for key in a.current.apply_labels(&mut objects) {
                diagnostics.push(Diagnostic::new(
                    Severity::Warning,
                    a.path.clone(),
                    None,
                    Some(key),
                    "label overlay names no object; ignored".into(),
                ));
            }
        }
        Scan {
            objects,
            deployments,
            diagnostics,
            changed,
        }
    }

    /// Scans every `poll` and sends the directory's whole view whenever a file changed.
    /// New diagnostics are logged as they appear.
    pub async fn run(mut self, poll: Duration, tx: mpsc::Sender<Change>) {
        let mut reported: Vec<Diagnostic> = Vec::new();
        loop {
            let scan = self.scan();
            if scan.changed {
                for d in &scan.diagnostics {
                    if !reported.contains(d) {
                        match d.severity {
                            Severity::Error | Severity::Warning => warn!("{d}"),
                            Severity::Info => info!("{d}"),
                        }
                    }
                }
                reported = scan.diagnostics.clone();
                *self.published.lock().expect("poisoned") = scan.diagnostics.clone();
                info!(dir = %self.dir.display(), objects = scan.objects.len(), "manifests loaded");
                let change = Change::replace(Kind::ALL.to_vec(), scan.objects);
                if tx.send(change).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(poll).await;
        }
    }
}

/// The manifest files under `dir` (YAML or JSON, recursively, hidden names skipped), in
/// name order: what the directory mode reads, and what `up --kubernetes` applies.
pub fn manifest_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    collect_files(dir, &mut files);
    files.sort();
    files
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue; // editors' swap files and the like
        }
        if path.is_dir() {
            collect_files(&path, out);
        } else if matches!(
            path.extension().and_then(|x| x.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(path);
        }
    }
}

fn error(file: &Path, at: Option<Position>, object: Option<String>, message: String) -> Diagnostic {
    Diagnostic::new(Severity::Error, file.to_path_buf(), at, object, message)
}

/// The objects and findings of one file.
pub struct ParsedFile {
    pub objects: Vec<Object>,
    /// Its Deployments, as written (for the local runtime).
    pub deployments: Vec<Value>,
    pub diagnostics: Vec<Diagnostic>,
    /// Whether the file is not YAML at all (its last good objects were kept).
    pub syntax_error: bool,
}

/// Parses one file. `previous` (the file's objects at its last parse) supplies last-good
/// versions for documents that fail now.
pub fn parse_file(path: &Path, text: &str, previous: Option<&[Object]>) -> ParsedFile {
    let documents = match yaml::parse(text) {
        Ok(documents) => documents,
        Err(e) => {
            // Nothing in the file can be trusted to be complete: keep all its last-good objects.
            return ParsedFile {
                objects: previous.map(<[Object]>::to_vec).unwrap_or_default(),
                deployments: Vec::new(),
                syntax_error: true,
                diagnostics: vec![error(
                    path,
                    e.position,
                    None,
                    format!("YAML syntax: {}", e.message),
                )],
            };
        }
    };
    let mut reader = Reader::new(path, previous);
    for document in documents {
        reader.document(document.value, Some(&document.spans));
    }
    reader.finish()
}

/// Reads the documents of one source into objects and findings. Documents read from a file
/// come with their spans, so findings name the line and column of the field concerned.
struct Reader<'a> {
    path: &'a Path,
    previous: Option<&'a [Object]>,
    objects: Vec<Object>,
    deployments: Vec<Value>,
    diagnostics: Vec<Diagnostic>,
}

impl<'a> Reader<'a> {
    fn new(path: &'a Path, previous: Option<&'a [Object]>) -> Self {
        Reader {
            path,
            previous,
            objects: Vec::new(),
            deployments: Vec::new(),
            diagnostics: Vec::new(),
        }
    }

    fn finish(self) -> ParsedFile {
        ParsedFile {
            objects: self.objects,
            deployments: self.deployments,
            diagnostics: self.diagnostics,
            syntax_error: false,
        }
    }

    fn report(
        &mut self,
        severity: Severity,
        at: Option<Position>,
        object: Option<String>,
        message: String,
    ) {
        let file = self.path.to_path_buf();
        self.diagnostics
            .push(Diagnostic::new(severity, file, at, object, message));
    }

    /// A document that fails keeps the last good version of its object in force.
    fn keep_previous(&mut self, key: &ObjectKey) {
        if let Some(old) = self
            .previous
            .and_then(|p| p.iter().find(|o| &o.key() == key))
        {
            self.objects.push(old.clone());
        }
    }

    /// One document (or one item of a `kind: List`).
    fn document(&mut self, value: Value, spans: Option<&Spans>) {
        let root = spans.map(Spans::at);
        let (Some(api_version), Some(kind_name)) =
            (str_field(&value, "apiVersion"), str_field(&value, "kind"))
        else {
            let message = "document has no apiVersion and kind".into();
            return self.report(Severity::Error, root, None, message);
        };
        if kind_name == "List" {
            return self.list(value, spans);
        }
        if (api_version, kind_name) == ("apps/v1", "Deployment") {
            return self.deployment(value, root);
        }
        let Some(kind) = Kind::from_type(api_version, kind_name) else {
            let message = format!("{api_version} {kind_name} is not read by the controller");
            return self.report(Severity::Info, root, None, message);
        };
        let key = object_key(kind, &value);
        if key.name.is_empty() {
            let message = format!("{kind} has no metadata.name");
            return self.report(Severity::Error, root, None, message);
        }
        // Of ConfigMaps, only Istio's mesh config is read (as on an API server).
        if kind == Kind::ConfigMap && key.name != crate::index::mesh::MESH_CONFIG_MAP {
            let message = format!(
                "{api_version} {kind_name} is not read by the controller (only {:?}, Istio's mesh config)",
                crate::index::mesh::MESH_CONFIG_MAP
            );
            return self.report(Severity::Info, root, None, message);
        }
        self.object(key, value, spans);
    }

    /// A Deployment: kept for the local runtime, which runs its pods. Only what it needs
    /// is checked here: a name, and a template whose labels the selector matches (the API
    /// server refuses a Deployment whose selector does not select its own template).
    fn deployment(&mut self, value: Value, root: Option<Position>) {
        let name = value["metadata"]["name"].as_str().unwrap_or_default();
        if name.is_empty() {
            let message = "Deployment has no metadata.name".to_string();
            return self.report(Severity::Error, root, None, message);
        }
        let namespace = value["metadata"]["namespace"].as_str().unwrap_or("default");
        let shown = format!("Deployment/{namespace}/{name}");
        let wanted = value["spec"]["selector"]["matchLabels"].as_object();
        let labels = &value["spec"]["template"]["metadata"]["labels"];
        let selected =
            wanted.is_some_and(|w| !w.is_empty() && w.iter().all(|(k, v)| &labels[k] == v));
        if !selected {
            let message =
                "spec.selector.matchLabels must select spec.template.metadata.labels".to_string();
            return self.report(Severity::Error, root, Some(shown), message);
        }
        self.deployments.push(value);
    }

    fn list(&mut self, value: Value, spans: Option<&Spans>) {
        let Value::Object(mut list) = value else {
            return;
        };
        let Some(Value::Array(items)) = list.remove("items") else {
            return;
        };
        let items_spans = spans.and_then(|s| s.entry("items")).map(|(_, s)| s);
        for (i, item) in items.into_iter().enumerate() {
            self.document(item, items_spans.and_then(|s| s.item(i)));
        }
    }

    /// An object of a kind the controller reads: typed, checked, and kept if both pass.
    fn object(&mut self, key: ObjectKey, value: Value, spans: Option<&Spans>) {
        let kind = key.kind;
        let label = Some(key.to_string());
        let locate = |path: &yaml::Path| spans.map(|s| s.locate(path));
        match typed_object(kind, value) {
            Err(Invalid { path, message }) => {
                let message = if path.is_root() {
                    format!("invalid {kind}: {message}")
                } else {
                    format!("invalid {kind}: {path}: {message}")
                };
                self.report(Severity::Error, locate(&path), label, message);
                self.keep_previous(&key);
            }
            Ok((_, unknown)) if !unknown.is_empty() => {
                for field in unknown {
                    let message = format!("unknown field `{field}`; {kind} ignored");
                    self.report(Severity::Error, locate(&field), label.clone(), message);
                }
                self.keep_previous(&key);
            }
            Ok((object, _)) => match validate(&object) {
                Ok(()) => self.objects.push(object),
                Err((path, reason)) => {
                    self.report(Severity::Error, locate(&path), label, reason);
                    self.keep_previous(&key);
                }
            },
        }
    }
}

fn str_field<'v>(value: &'v Value, key: &str) -> Option<&'v str> {
    value.get(key).and_then(Value::as_str)
}

/// The key an object will have: a namespaced kind without a namespace is in `default`.
fn object_key(kind: Kind, value: &Value) -> ObjectKey {
    let metadata = value.get("metadata");
    let name = metadata.and_then(|m| str_field(m, "name")).unwrap_or("");
    let namespace = metadata
        .and_then(|m| str_field(m, "namespace"))
        .map(str::to_string)
        .unwrap_or_else(|| {
            if matches!(kind, Kind::Namespace | Kind::Node) {
                String::new()
            } else {
                "default".into()
            }
        });
    ObjectKey {
        kind,
        namespace,
        name: name.to_string(),
    }
}

fn typed_object(kind: Kind, value: Value) -> Result<(Object, Vec<yaml::Path>), Invalid> {
    match kind {
        Kind::Namespace => typed(value, Object::Namespace),
        Kind::Node => typed(value, Object::node),
        Kind::Pod => typed(value, Object::Pod),
        Kind::Service => typed(value, Object::Service),
        Kind::EndpointSlice => typed(value, Object::EndpointSlice),
        Kind::Gateway => typed(value, Object::Gateway),
        Kind::AuthorizationPolicy => typed(value, Object::AuthorizationPolicy),
        Kind::PeerAuthentication => typed(value, Object::PeerAuthentication),
        Kind::RequestAuthentication => typed(value, Object::RequestAuthentication),
        Kind::HttpRoute => typed(value, Object::HttpRoute),
        Kind::GrpcRoute => typed(value, Object::GrpcRoute),
        Kind::VirtualService => typed(value, Object::VirtualService),
        Kind::DestinationRule => typed(value, Object::DestinationRule),
        Kind::ServiceEntry => typed(value, Object::ServiceEntry),
        Kind::TcpRoute => typed(value, Object::TcpRoute),
        Kind::ConfigMap => typed(value, Object::ConfigMap),
        Kind::LocalRateLimitPolicy => typed(value, Object::LocalRateLimitPolicy),
        Kind::Rollout => typed(value, Object::Rollout),
    }
}

/// Why a document is not a valid object of its kind, and the field where that was found.
struct Invalid {
    path: yaml::Path,
    message: String,
}

/// Deserializes `value` as `T`, collecting the paths of fields `T` does not know. A failure
/// carries the path where it happened, so that it can be reported at that field.
fn typed<T: DeserializeOwned>(
    value: Value,
    wrap: impl FnOnce(T) -> Object,
) -> Result<(Object, Vec<yaml::Path>), Invalid> {
    let mut unknown = Vec::new();
    let mut ignored = |path: serde_ignored::Path<'_>| {
        let path = yaml::Path::from(&path);
        if !is_informational(&path) {
            unknown.push(path);
        }
    };
    let deserializer = serde_ignored::Deserializer::new(value, &mut ignored);
    let t: T = serde_path_to_error::deserialize(deserializer).map_err(|e| Invalid {
        path: yaml::Path::from(e.path()),
        message: e.into_inner().to_string(),
    })?;
    Ok((wrap(t), unknown))
}

/// Server-populated or informational parts a manifest may carry verbatim: the envelope, the
/// status, the managed fields.
fn is_informational(path: &yaml::Path) -> bool {
    let envelope = path.segments().len() == 1
        && (path.starts_with_keys(&["apiVersion"]) || path.starts_with_keys(&["kind"]));
    let status = path.segments().len() > 1 && path.starts_with_keys(&["status"]);
    envelope || status || path.starts_with_keys(&["metadata", "managedFields"])
}

/// Kubernetes' DNS-1123 label: lowercase letters, digits and `-`, starting and ending with a
/// letter or digit, at most 63 characters (namespaces).
fn is_dns1123_label(s: &str) -> bool {
    let edge = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    s.len() <= 63
        && edge(s.bytes().next())
        && edge(s.bytes().last())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Kubernetes' DNS-1123 subdomain: labels joined by dots, at most 253 characters (most object
/// names, service accounts).
fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// The names the API server would refuse. A namespace and a service account become path
/// segments of a workload's SPIFFE identity: accepting a malformed one would give every proxy
/// a workload it must reject.
fn validate_names(object: &Object) -> Result<(), (yaml::Path, String)> {
    let kind = object.kind();
    let meta = object.meta();
    let field = |name: &str| yaml::Path::root().key("metadata").key(name);
    let name = meta.name.as_deref().unwrap_or_default();
    let namespace_name = matches!(kind, Kind::Namespace);
    let valid = if namespace_name {
        is_dns1123_label(name)
    } else {
        is_dns1123_subdomain(name)
    };
    if !valid {
        return Err((
            field("name"),
            format!(
                "name {name:?} is not a valid {} (lowercase letters, digits, '-'{}); {kind} ignored",
                if namespace_name {
                    "DNS-1123 label"
                } else {
                    "DNS-1123 subdomain"
                },
                if namespace_name {
                    ", at most 63"
                } else {
                    " and '.', at most 253"
                },
            ),
        ));
    }
    if let Some(namespace) = meta.namespace.as_deref()
        && !is_dns1123_label(namespace)
    {
        return Err((
            field("namespace"),
            format!(
                "namespace {namespace:?} is not a valid DNS-1123 label (lowercase letters, digits, '-', at most 63); {kind} ignored"
            ),
        ));
    }
    if let Object::Pod(pod) = object
        && let Some(account) = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.as_deref())
        && !account.is_empty()
        && !is_dns1123_subdomain(account)
    {
        return Err((
            yaml::Path::root().key("spec").key("serviceAccountName"),
            format!(
                "service account {account:?} is not a valid DNS-1123 subdomain; {kind} ignored"
            ),
        ));
    }
    Ok(())
}

/// Checks the API server would make that a manifest can violate, with the field at fault.
fn validate(object: &Object) -> Result<(), (yaml::Path, String)> {
    validate_names(object)?;
    if let Object::Service(s) = object {
        let ports = s
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .cloned()
            .unwrap_or_default();
        let port_path = |i: usize| yaml::Path::root().key("spec").key("ports").index(i);
        let mut seen = std::collections::BTreeMap::new();
        for (i, p) in ports.iter().enumerate() {
            let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            if let Some(other) = seen.insert((p.port, protocol.clone()), p.name.clone()) {
                return Err((
                    port_path(i),
                    format!(
                        "port {}/{protocol} is declared twice ({} and {}); Service ignored",
                        p.port,
                        other.unwrap_or_else(|| "unnamed".into()),
                        p.name.clone().unwrap_or_else(|| "unnamed".into()),
                    ),
                ));
            }
            if !(1..=65535).contains(&p.port) {
                return Err((
                    port_path(i).key("port"),
                    format!("port {} is out of range; Service ignored", p.port),
                ));
            }
        }
        if ports.len() > 1
            && let Some(i) = ports.iter().position(|p| p.name.is_none())
        {
            return Err((
                port_path(i),
                "ports of a multi-port Service must be named; Service ignored".into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    istio.io/dataplane-mode: ambient
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
    targetPort: 8080
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: ignored
"#;

    fn parse(text: &str) -> ParsedFile {
        parse_file(Path::new("m.yaml"), text, None)
    }

    /// Found by the `manifests` fuzz target: a namespace the API server would refuse became
    /// a workload identity no proxy accepts. Such objects are refused at their field; the rest
    /// of the file applies.
    #[test]
    fn names_the_api_server_would_refuse_are_refused_at_their_field() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web-0\n  namespace: s'op\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: Shop\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: shop}\nspec:\n  serviceAccountName: web/admin\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: Web_2, namespace: shop}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web-3.a, namespace: shop}\nspec: {serviceAccountName: \"\"}\n";
        let p = parse(text);
        let keys: Vec<String> = p.objects.iter().map(|o| o.key().to_string()).collect();
        assert_eq!(keys, vec!["Pod/shop/web-3.a"], "{:?}", p.diagnostics);
        let lines: Vec<(Option<usize>, bool)> = p
            .diagnostics
            .iter()
            .map(|d| (d.line, d.message.contains("DNS-1123")))
            .collect();
        assert_eq!(
            lines,
            vec![
                (Some(5), true),
                (Some(10), true),
                (Some(16), true),
                (Some(20), true)
            ],
            "{:?}",
            p.diagnostics
        );
        assert!(is_dns1123_subdomain("web-0.shop"));
        for bad in ["", "-web", "web-", "we_b", "web..x", &"a".repeat(254)] {
            assert!(!is_dns1123_subdomain(bad), "{bad:?}");
        }
        assert!(!is_dns1123_label(&"a".repeat(64)));
    }

    #[test]
    fn reads_kinds_and_skips_others() {
        let p = parse(GOOD);
        let keys: Vec<String> = p.objects.iter().map(|o| o.key().to_string()).collect();
        assert_eq!(keys, vec!["Namespace/shop", "Service/shop/web"]);
        assert_eq!(p.diagnostics.len(), 1);
        assert_eq!(p.diagnostics[0].severity, Severity::Info);
        assert_eq!(p.diagnostics[0].line, Some(21));
    }

    #[test]
    fn deployments_are_kept_for_the_runtime_when_their_selector_selects_the_template() {
        let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web, version: v1}}\n    spec: {containers: [{name: web, image: x}]}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: stray}\nspec:\n  selector: {matchLabels: {app: other}}\n  template:\n    metadata: {labels: {app: web}}\n";
        let p = parse(text);
        assert!(p.objects.is_empty());
        assert_eq!(p.deployments.len(), 1);
        assert_eq!(p.deployments[0]["metadata"]["name"], "web");
        assert_eq!(p.diagnostics.len(), 1, "{:?}", p.diagnostics);
        let d = &p.diagnostics[0];
        assert_eq!(d.severity, Severity::Error);
        assert_eq!(d.line, Some(10), "{d}");
        assert!(d.message.contains("must select"), "{d}");
        assert!(d.to_string().contains("Deployment/default/stray"), "{d}");
    }

    #[test]
    fn unknown_field_is_reported_with_its_line_and_the_object_ignored() {
        let text = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: shop\nspec:\n  action: DENY\n  rules:\n  - from:\n    - source:\n        principalz: [\"x\"]\n";
        let p = parse(text);
        assert!(p.objects.is_empty());
        let d = &p.diagnostics[0];
        assert_eq!(d.line, Some(11), "{d}");
        assert!(d.message.contains("principalz"), "{d}");
        assert_eq!(d.object.as_deref(), Some("AuthorizationPolicy/shop/p"));
    }

    #[test]
    fn syntax_error_keeps_the_files_last_good_objects() {
        let first = parse(GOOD);
        let broken = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: [unclosed\n";
        let p = parse_file(Path::new("m.yaml"), broken, Some(&first.objects));
        assert_eq!(p.objects.len(), 2, "last good kept");
        assert!(
            p.diagnostics[0].message.starts_with("YAML syntax"),
            "{}",
            p.diagnostics[0]
        );
        assert!(p.diagnostics[0].line.is_some());
    }

    #[test]
    fn invalid_object_keeps_its_last_good_version() {
        let first = parse(GOOD);
        let clash = GOOD.replace(
            "    targetPort: 8080",
            "    targetPort: 8080\n  - name: other\n    port: 80",
        );
        let p = parse_file(Path::new("m.yaml"), &clash, Some(&first.objects));
        let svc = p
            .objects
            .iter()
            .find(|o| o.kind() == Kind::Service)
            .expect("kept");
        assert_eq!(
            svc,
            first
                .objects
                .iter()
                .find(|o| o.kind() == Kind::Service)
                .unwrap()
        );
        let d = p
            .diagnostics
            .iter()
            .find(|d| d.severity == Severity::Error)
            .unwrap();
        assert!(d.message.contains("port 80/TCP is declared twice"), "{d}");
    }

    #[test]
    fn bad_types_and_missing_names_are_errors() {
        let p = parse(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  ports: 7\n---\napiVersion: v1\nkind: Pod\nmetadata: {}\n",
        );
        assert!(p.objects.is_empty());
        assert_eq!(p.diagnostics.len(), 2);
        assert!(
            p.diagnostics[0].message.starts_with("invalid Service"),
            "{}",
            p.diagnostics[0]
        );
        assert_eq!(p.diagnostics[1].line, Some(8));
    }

    #[test]
    fn lists_are_unpacked() {
        let p = parse(
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: a}\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: b}\n",
        );
        assert_eq!(p.objects.len(), 2);
    }

    #[test]
    fn reads_l7_kinds_in_every_version_and_reports_typos() {
        let p = parse(
            r#"
apiVersion: gateway.networking.k8s.io/v1beta1
kind: HTTPRoute
metadata: {name: r, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules: [{backendRefs: [{name: web, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g, namespace: shop}
spec: {parentRefs: [{group: "", kind: Service, name: web}]}
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: v, namespace: shop}
spec:
  hosts: [web]
  http:
  - route: [{destination: {host: web}}]
    corsPolicy: {allowOrigins: [{exact: x}]}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: d, namespace: shop}
spec:
  host: web
  trafficPolicy: {outlierDetection: {consecutive5xxErrors: 1, interval: 1s}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: typo, namespace: shop}
spec:
  hosts: [web]
  http:
  - route: [{destination: {host: web}}]
    retires: {attempts: 3}
---
apiVersion: networking.istio.io/v2
kind: VirtualService
metadata: {name: future, namespace: shop}
"#,
        );
        let keys: Vec<String> = p.objects.iter().map(|o| o.key().to_string()).collect();
        assert_eq!(
            keys,
            vec![
                "HTTPRoute/shop/r",
                "GRPCRoute/shop/g",
                "VirtualService/shop/v",
                "DestinationRule/shop/d"
            ]
        );
        let typo = p
            .diagnostics
            .iter()
            .find(|d| d.severity == Severity::Error)
            .expect("typo reported");
        assert!(typo.message.contains("retires"), "{typo}");
        assert_eq!(typo.object.as_deref(), Some("VirtualService/shop/typo"));
        assert!(
            p.diagnostics
                .iter()
                .any(|d| d.severity == Severity::Info
                    && d.message.contains("networking.istio.io/v2"))
        );
    }

    #[test]
    fn runtime_generated_objects_and_label_overlays() {
        let dir = tempfile::tempdir().unwrap();
        let manifests = dir.path().join("m");
        std::fs::create_dir(&manifests).unwrap();
        std::fs::write(manifests.join("a.yaml"), GOOD).unwrap();
        let alloc = dir.path().join("allocations.json");
        let generated = serde_json::json!({
            "pods": {"shop/waypoint-0": {"nodeName": "node-a", "podIp": "10.244.1.9", "phase": "Running"}},
            "services": {"shop/waypoint": {"clusterIp": "10.96.0.99"}},
            "generated": [
                {"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": "waypoint-0", "namespace": "shop",
                              "labels": {"gateway.networking.k8s.io/gateway-name": "waypoint"}},
                 "spec": {"containers": [{"name": "w", "image": "w"}]}},
                {"apiVersion": "v1", "kind": "Service",
                 "metadata": {"name": "waypoint", "namespace": "shop"},
                 "spec": {"ports": [{"name": "mesh", "port": 15008}]}},
                {"apiVersion": "v1", "kind": "Service",
                 "metadata": {"name": "broken", "namespace": "shop"},
                 "spec": {"ports": 7}},
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}
            ],
            "labels": {"Namespace//shop": {"istio.io/use-waypoint": "waypoint", "istio.io/dataplane-mode": null}}
        });
        std::fs::write(&alloc, generated.to_string()).unwrap();
        let mut m = ManifestDir::new(&manifests).with_allocations(&alloc);
        let s = m.scan();
        let keys: Vec<String> = s.objects.iter().map(|o| o.key().to_string()).collect();
        assert_eq!(
            keys,
            vec![
                "Namespace/shop",
                "Pod/shop/waypoint-0",
                "Service/shop/waypoint",
                "Service/shop/web"
            ],
            "the malformed object is left out, nothing else is lost"
        );
        let broken = s
            .diagnostics
            .iter()
            .find(|d| d.object.as_deref() == Some("Service/shop/broken"))
            .expect("reported");
        assert_eq!(broken.file, PathBuf::from(RUNTIME_SOURCE));
        assert_eq!(broken.severity, Severity::Error);
        assert!(broken.message.starts_with("invalid Service"), "{broken}");
        let dup = s
            .diagnostics
            .iter()
            .find(|d| d.object.as_deref() == Some("Namespace/shop"))
            .expect("duplicate reported");
        assert!(dup.message.contains("a.yaml"), "{dup}");
        let Object::Pod(pod) = &s.objects[1] else {
            panic!()
        };
        assert_eq!(
            pod.status.as_ref().unwrap().pod_ip.as_deref(),
            Some("10.244.1.9"),
            "allocations apply to generated objects"
        );
        let Object::Service(svc) = &s.objects[2] else {
            panic!()
        };
        assert_eq!(
            svc.spec.as_ref().unwrap().cluster_ip.as_deref(),
            Some("10.96.0.99")
        );
        let ns_labels = s.objects[0].meta().labels.clone().unwrap();
        assert_eq!(
            ns_labels.get("istio.io/use-waypoint").map(String::as_str),
            Some("waypoint")
        );
        assert!(
            !ns_labels.contains_key("istio.io/dataplane-mode"),
            "null removes"
        );

        // A later edit that breaks a generated object keeps its last good version.
        let mut edited = generated.clone();
        edited["generated"][1]["spec"]["ports"] = serde_json::json!("nope");
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&alloc, format!("{edited} ")).unwrap();
        let s = m.scan();
        assert!(s.changed);
        assert!(
            s.objects
                .iter()
                .any(|o| o.key().to_string() == "Service/shop/waypoint"),
            "last good version kept"
        );
        assert!(
            s.diagnostics
                .iter()
                .any(|d| d.object.as_deref() == Some("Service/shop/waypoint"))
        );
    }

    /// A directory holding `files` (name, text) and a good file of its own.
    fn directory(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("other.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n",
        )
        .unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    fn keys(scan: &Scan) -> Vec<String> {
        scan.objects.iter().map(|o| o.key().to_string()).collect()
    }

    fn errors(scan: &Scan) -> Vec<&Diagnostic> {
        scan.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .collect()
    }

    fn line_and_column(d: &Diagnostic) -> (Option<usize>, Option<usize>) {
        (d.line, d.column)
    }

    #[test]
    fn block_scalar_holding_a_document_marker_is_one_document() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: scripts, namespace: shop}\ndata:\n  run.sh: |\n    echo one\n    ---\n    echo two\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\n  annotations:\n    note: |\n      above\n      ---\n      below\nspec:\n  ports:\n  - {name: http, port: 80}\n";
        let dir = directory(&[("m.yaml", text)]);
        let scan = ManifestDir::new(dir.path()).scan();
        assert!(errors(&scan).is_empty(), "{:#?}", scan.diagnostics);
        assert_eq!(keys(&scan), vec!["Namespace/other", "Service/shop/web"]);
        let annotations = scan.objects[1].meta().annotations.clone().unwrap();
        assert_eq!(annotations["note"], "above\n---\nbelow\n");
        let skipped: Vec<_> = scan
            .diagnostics
            .iter()
            .map(|d| (d.message.as_str(), d.line))
            .collect();
        assert_eq!(
            skipped,
            vec![(
                "v1 ConfigMap is not read by the controller (only \"istio\", Istio's mesh config)",
                Some(1)
            )],
            "the ConfigMap is one document"
        );
    }

    #[test]
    fn repeated_key_name_is_reported_at_the_port_not_the_metadata() {
        let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  ports:\n  - name: http\n    port: 80\n  - port: 81\n    name: 7\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n";
        let dir = directory(&[("svc.yaml", text)]);
        let scan = ManifestDir::new(dir.path()).scan();
        let errors = errors(&scan);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        let d = errors[0];
        assert_eq!(line_and_column(d), (Some(11), Some(5)), "{d}");
        assert_eq!(d.object.as_deref(), Some("Service/shop/web"));
        assert!(d.message.contains("spec.ports[1].name"), "{d}");
        assert!(d.to_string().contains("svc.yaml:11:5"), "{d}");
        assert_eq!(keys(&scan), vec!["Namespace/other", "Namespace/shop"]);
    }

    #[test]
    fn unknown_field_is_reported_at_its_own_line_not_the_first_key_of_that_name() {
        let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  ports:\n  - {name: http, port: 80}\n  name: web\n";
        let p = parse(text);
        assert!(p.objects.is_empty());
        let d = &p.diagnostics[0];
        assert_eq!(line_and_column(d), (Some(9), Some(3)), "{d}");
        assert!(d.message.contains("unknown field `spec.name`"), "{d}");
    }

    #[test]
    fn wrongly_typed_nested_field_is_reported_at_its_line_and_column() {
        let bad = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  selector: {app: web}\n  ports:\n    - name: http\n      port: \"eighty\"\n";
        let dir = directory(&[("bad.yaml", bad)]);
        let scan = ManifestDir::new(dir.path()).scan();
        let errors = errors(&scan);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        let d = errors[0];
        assert_eq!(line_and_column(d), (Some(14), Some(7)), "{d}");
        assert!(d.message.starts_with("invalid Service"), "{d}");
        assert!(d.message.contains("spec.ports[0].port"), "{d}");
        assert!(d.message.contains("eighty"), "{d}");
        assert_eq!(keys(&scan), vec!["Namespace/other", "Namespace/shop"]);
    }

    #[test]
    fn tab_indented_document_is_a_syntax_error_at_the_tab_and_the_file_keeps_its_objects() {
        let dir = directory(&[("m.yaml", GOOD)]);
        let mut m = ManifestDir::new(dir.path());
        let before = m.scan();
        assert_eq!(
            keys(&before),
            vec!["Namespace/other", "Namespace/shop", "Service/shop/web"]
        );
        let tabbed =
            format!("{GOOD}---\napiVersion: v1\nkind: Namespace\nmetadata:\n\tname: tabbed\n");
        std::fs::write(dir.path().join("m.yaml"), tabbed).unwrap();
        let after = m.scan();
        assert!(after.changed);
        let errors = errors(&after);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(
            errors[0].message.starts_with("YAML syntax"),
            "{}",
            errors[0]
        );
        assert_eq!(errors[0].line, Some(29), "{}", errors[0]);
        assert_eq!(
            keys(&after),
            keys(&before),
            "last good objects and the other file"
        );
    }

    #[test]
    fn list_items_and_validation_failures_point_at_their_fields() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: a}\n- apiVersion: v1\n  kind: Service\n  metadata: {name: s}\n  spec:\n    ports:\n    - {name: a, port: 80}\n    - {name: b, port: 80}\n- apiVersion: v1\n  kind: Service\n  metadata: {name: far}\n  spec:\n    ports: [{port: 70000}]\n";
        let p = parse(text);
        assert_eq!(p.objects.len(), 1);
        let at: Vec<_> = p.diagnostics.iter().map(line_and_column).collect();
        assert_eq!(at, vec![(Some(13), Some(7)), (Some(18), Some(14))]);
        assert!(p.diagnostics[0].message.contains("declared twice"));
        assert!(p.diagnostics[1].message.contains("out of range"));
    }

    #[test]
    fn generated_objects_are_reported_without_positions() {
        let values = [serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "s"}, "spec": {"ports": [{"port": "x"}]}})];
        let p = parse_generated(&values, None);
        let d = &p.diagnostics[0];
        assert_eq!(line_and_column(d), (None, None), "{d}");
        assert!(d.message.contains("spec.ports[0].port"), "{d}");
        assert!(
            d.to_string()
                .starts_with("runtime (Service/default/s): invalid Service"),
            "{d}"
        );
    }

    #[test]
    fn directory_scan_tracks_changes_and_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), GOOD).unwrap();
        let mut m = ManifestDir::new(dir.path());
        let s = m.scan();
        assert!(s.changed);
        assert_eq!(s.objects.len(), 2);
        assert!(!m.scan().changed, "nothing changed");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(
            dir.path().join("sub/b.yml"),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
        )
        .unwrap();
        let s = m.scan();
        assert!(s.changed);
        assert_eq!(s.objects.len(), 2, "duplicate not added twice");
        assert!(
            s.diagnostics
                .iter()
                .any(|d| d.message.contains("also defined in"))
        );
        std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
        let s = m.scan();
        assert!(s.changed);
        assert_eq!(s.objects.len(), 1);
    }
}
