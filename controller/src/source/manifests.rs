//! A directory of Kubernetes manifests as a configuration source.
//!
//! Every `*.yaml`, `*.yml` and `*.json` file (recursively) may hold several documents
//! (`---`) and `kind: List` documents. Kinds the controller does not read are skipped. A
//! document that does not parse, names an unknown field or fails validation is reported with
//! file, line and reason and ignored: the last good version of that object (or, for a YAML
//! syntax error, of the whole file) stays in force, and the rest of the configuration is
//! untouched.
//!
//! With the local runtime's allocations file, the objects it generated are read the same way
//! (reported as coming from `runtime`; a file's definition of the same object wins), its
//! placements and addresses are filled in, and its label overlays applied last.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::allocations::Allocations;
use super::{Diagnostic, Severity};
use crate::model::{Change, Kind, Object, ObjectKey};

/// What one file contributed at its last successful parse.
#[derive(Clone, Debug, Default)]
struct FileState {
    modified: Option<SystemTime>,
    len: u64,
    objects: Vec<Object>,
    diagnostics: Vec<Diagnostic>,
}

/// The result of a scan.
#[derive(Clone, Debug)]
pub struct Scan {
    pub objects: Vec<Object>,
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
pub fn parse_generated(values: &[serde_json::Value], previous: Option<&[Object]>) -> ParsedFile {
    let path = Path::new(RUNTIME_SOURCE);
    let mut objects = Vec::new();
    let mut diagnostics = Vec::new();
    let keep_previous = |key: &ObjectKey, objects: &mut Vec<Object>| {
        if let Some(old) = previous.and_then(|p| p.iter().find(|o| &o.key() == key)) {
            objects.push(old.clone());
        }
    };
    for (i, value) in values.iter().enumerate() {
        let mut found = Vec::new();
        match serde_yaml::to_value(value) {
            Ok(v) => parse_value(path, 1, "", v, &mut objects, &mut found, &keep_previous),
            Err(e) => found.push(error(path, None, None, format!("not an object: {e}"))),
        }
        for mut d in found {
            d.line = None;
            d.object = d.object.or_else(|| Some(format!("generated[{i}]")));
            diagnostics.push(d);
        }
    }
    ParsedFile {
        objects,
        diagnostics,
    }
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
        let mut paths = Vec::new();
        collect_files(&self.dir, &mut paths);
        paths.sort();
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
                    FileState {
                        modified,
                        len,
                        objects: parsed.objects,
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
        for (path, state) in &self.files {
            diagnostics.extend(state.diagnostics.iter().cloned());
            for o in &state.objects {
                if let Some((first, _)) = by_key.get(&o.key()) {
                    diagnostics.push(Diagnostic {
                        severity: Severity::Error,
                        file: path.clone(),
                        line: None,
                        object: Some(o.key().to_string()),
                        message: format!(
                            "also defined in {}; that definition is used",
                            first.display()
                        ),
                    });
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
                    diagnostics.push(Diagnostic {
                        severity: Severity::Warning,
                        file: PathBuf::from(RUNTIME_SOURCE),
                        line: None,
                        object: Some(o.key().to_string()),
                        message: format!(
                            "also defined in {}; that definition is used",
                            first.display()
                        ),
                    });
                    continue;
                }
                by_key.insert(o.key(), (PathBuf::from(RUNTIME_SOURCE), o.clone()));
            }
        }
        let mut objects: Vec<Object> = by_key.into_values().map(|(_, o)| o).collect();
        if let Some(a) = self.allocations.as_ref() {
            a.current.apply(&mut objects);
            for key in a.current.apply_labels(&mut objects) {
                diagnostics.push(Diagnostic {
                    severity: Severity::Warning,
                    file: a.path.clone(),
                    line: None,
                    object: Some(key),
                    message: "label overlay names no object; ignored".into(),
                });
            }
        }
        Scan {
            objects,
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
                let change = Change::Replace {
                    kinds: Kind::ALL.to_vec(),
                    objects: scan.objects,
                };
                if tx.send(change).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(poll).await;
        }
    }
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

fn error(file: &Path, line: Option<usize>, object: Option<String>, message: String) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        file: file.to_path_buf(),
        line,
        object,
        message,
    }
}

/// The objects and findings of one file.
pub struct ParsedFile {
    pub objects: Vec<Object>,
    pub diagnostics: Vec<Diagnostic>,
}

/// Splits a YAML stream into documents, with the 1-based line each starts on.
fn documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") {
            docs.push((start, std::mem::take(&mut current)));
            start = i + 2;
            continue;
        }
        if trimmed == "..." {
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    docs.push((start, current));
    docs
}

/// Parses one file. `previous` (the file's objects at its last parse) supplies last-good
/// versions for documents that fail now.
pub fn parse_file(path: &Path, text: &str, previous: Option<&[Object]>) -> ParsedFile {
    let mut objects = Vec::new();
    let mut diagnostics = Vec::new();
    let keep_previous = |key: &ObjectKey, objects: &mut Vec<Object>| {
        if let Some(old) = previous.and_then(|p| p.iter().find(|o| &o.key() == key)) {
            objects.push(old.clone());
        }
    };
    for (start, doc) in documents(text) {
        let value: serde_yaml::Value = match serde_yaml::from_str(&doc) {
            Ok(v) => v,
            Err(e) => {
                let line = e.location().map(|l| start + l.line() - 1);
                diagnostics.push(error(
                    path,
                    line,
                    None,
                    format!("YAML syntax: {}", strip_location(&e.to_string())),
                ));
                // Nothing in the file can be trusted to be complete: keep all its last-good objects.
                return ParsedFile {
                    objects: previous.map(<[Object]>::to_vec).unwrap_or_default(),
                    diagnostics,
                };
            }
        };
        if value.is_null() {
            continue;
        }
        parse_value(
            path,
            start,
            &doc,
            value,
            &mut objects,
            &mut diagnostics,
            &keep_previous,
        );
    }
    ParsedFile {
        objects,
        diagnostics,
    }
}

/// serde_yaml appends "at line X column Y"; we report the line ourselves.
fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

fn field<'a>(v: &'a serde_yaml::Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(|x| x.as_str())
}

/// The line of the first `key:` in `doc` (for fields serde reports by path only).
fn line_of_key(doc: &str, start: usize, key: &str) -> Option<usize> {
    let needle = format!("{key}:");
    doc.lines()
        .position(|l| {
            let t = l.trim_start().trim_start_matches("- ");
            t.starts_with(&needle) || t.starts_with(&format!("\"{key}\":"))
        })
        .map(|i| start + i)
}

#[allow(clippy::too_many_arguments)]
fn parse_value(
    path: &Path,
    start: usize,
    doc: &str,
    value: serde_yaml::Value,
    objects: &mut Vec<Object>,
    diagnostics: &mut Vec<Diagnostic>,
    keep_previous: &dyn Fn(&ObjectKey, &mut Vec<Object>),
) {
    let (Some(api_version), Some(kind_name)) = (field(&value, "apiVersion"), field(&value, "kind"))
    else {
        diagnostics.push(error(
            path,
            Some(start),
            None,
            "document has no apiVersion and kind".into(),
        ));
        return;
    };
    if kind_name == "List" {
        let items = value
            .get("items")
            .and_then(|i| i.as_sequence())
            .cloned()
            .unwrap_or_default();
        for item in items {
            parse_value(path, start, doc, item, objects, diagnostics, keep_previous);
        }
        return;
    }
    let Some(kind) = Kind::from_type(api_version, kind_name) else {
        diagnostics.push(Diagnostic {
            severity: Severity::Info,
            file: path.to_path_buf(),
            line: Some(start),
            object: None,
            message: format!("{api_version} {kind_name} is not read by the controller"),
        });
        return;
    };
    let name = value
        .get("metadata")
        .and_then(|m| field(m, "name"))
        .unwrap_or("")
        .to_string();
    let namespace = value
        .get("metadata")
        .and_then(|m| field(m, "namespace"))
        .map(str::to_string)
        .unwrap_or_else(|| {
            if kind == Kind::Namespace {
                String::new()
            } else {
                "default".into()
            }
        });
    let key = ObjectKey {
        kind,
        namespace,
        name: name.clone(),
    };
    let label = key.to_string();
    if name.is_empty() {
        diagnostics.push(error(
            path,
            Some(start),
            None,
            format!("{kind} has no metadata.name"),
        ));
        return;
    }
    let typed = match kind {
        Kind::Namespace => typed(value, Object::Namespace),
        Kind::Pod => typed(value, Object::Pod),
        Kind::Service => typed(value, Object::Service),
        Kind::EndpointSlice => typed(value, Object::EndpointSlice),
        Kind::Gateway => typed(value, Object::Gateway),
        Kind::AuthorizationPolicy => typed(value, Object::AuthorizationPolicy),
        Kind::PeerAuthentication => typed(value, Object::PeerAuthentication),
        Kind::HttpRoute => typed(value, Object::HttpRoute),
        Kind::GrpcRoute => typed(value, Object::GrpcRoute),
        Kind::VirtualService => typed(value, Object::VirtualService),
        Kind::DestinationRule => typed(value, Object::DestinationRule),
    };
    match typed {
        Err(e) => {
            diagnostics.push(error(
                path,
                Some(start),
                Some(label),
                format!("invalid {kind}: {e}"),
            ));
            keep_previous(&key, objects);
        }
        Ok((_, unknown)) if !unknown.is_empty() => {
            for field in unknown {
                let leaf = field.rsplit('.').next().unwrap_or(&field).to_string();
                diagnostics.push(error(
                    path,
                    line_of_key(doc, start, &leaf).or(Some(start)),
                    Some(label.clone()),
                    format!("unknown field `{field}`; {kind} ignored"),
                ));
            }
            keep_previous(&key, objects);
        }
        Ok((object, _)) => match validate(&object) {
            Ok(()) => objects.push(object),
            Err(reason) => {
                diagnostics.push(error(path, Some(start), Some(label), reason));
                keep_previous(&key, objects);
            }
        },
    }
}

/// Deserializes `value` as `T`, collecting the paths of fields `T` does not know.
fn typed<T: DeserializeOwned>(
    value: serde_yaml::Value,
    wrap: impl FnOnce(T) -> Object,
) -> Result<(Object, Vec<String>), String> {
    let mut unknown = Vec::new();
    let t: T = serde_ignored::deserialize(value, |p| {
        // serde_ignored writes `?` for each Option on the way; users think in YAML keys.
        let p = p
            .to_string()
            .split('.')
            .filter(|segment| *segment != "?")
            .collect::<Vec<_>>()
            .join(".");
        // Server-populated or informational parts a manifest may carry verbatim.
        let envelope = p == "apiVersion" || p == "kind";
        if !envelope && !p.starts_with("status.") && !p.starts_with("metadata.managedFields") {
            unknown.push(p);
        }
    })
    .map_err(|e| e.to_string())?;
    Ok((wrap(t), unknown))
}

/// Checks the API server would make that a manifest can violate.
fn validate(object: &Object) -> Result<(), String> {
    if let Object::Service(s) = object {
        let ports = s
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .cloned()
            .unwrap_or_default();
        let mut seen = std::collections::BTreeMap::new();
        for p in &ports {
            let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            if let Some(other) = seen.insert((p.port, protocol.clone()), p.name.clone()) {
                return Err(format!(
                    "port {}/{protocol} is declared twice ({} and {}); Service ignored",
                    p.port,
                    other.unwrap_or_else(|| "unnamed".into()),
                    p.name.clone().unwrap_or_else(|| "unnamed".into()),
                ));
            }
            if !(1..=65535).contains(&p.port) {
                return Err(format!("port {} is out of range; Service ignored", p.port));
            }
        }
        if ports.len() > 1 && ports.iter().any(|p| p.name.is_none()) {
            return Err("ports of a multi-port Service must be named; Service ignored".into());
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
kind: Deployment
metadata:
  name: ignored
"#;

    fn parse(text: &str) -> ParsedFile {
        parse_file(Path::new("m.yaml"), text, None)
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
