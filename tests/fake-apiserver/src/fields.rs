//! Field ownership, as server-side apply keeps it in `metadata.managedFields`.
//!
//! A field is a path of map keys; lists are atomic (a manager owns a whole list), as are
//! scalars and empty maps. Each manager entry (manager, operation `Apply` / `Update`,
//! subresource) owns a set of paths, stored as Kubernetes does (`fieldsType: FieldsV1`,
//! `f:<key>` trees). Apply merges the configuration into the object, removes the fields its
//! manager applied before and no longer does (unless someone else owns them), and refuses
//! to change a field another manager owns unless forced.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

pub(crate) type Path = Vec<String>;

/// Fields that identify the object rather than describe it: never owned.
fn identity_field(path: &[String]) -> bool {
    match path {
        [top] => top == "apiVersion" || top == "kind",
        [meta, field, ..] if meta == "metadata" => matches!(
            field.as_str(),
            "name"
                | "namespace"
                | "uid"
                | "resourceVersion"
                | "generation"
                | "creationTimestamp"
                | "deletionTimestamp"
                | "managedFields"
                | "selfLink"
        ),
        _ => false,
    }
}

/// Every owned leaf of `v`.
pub(crate) fn leaves(v: &Value) -> BTreeSet<Path> {
    fn walk(v: &Value, path: &mut Path, out: &mut BTreeSet<Path>) {
        if identity_field(path) {
            return;
        }
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, child) in m {
                    path.push(k.clone());
                    walk(child, path, out);
                    path.pop();
                }
            }
            _ if !path.is_empty() => {
                out.insert(path.clone());
            }
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

pub(crate) fn get_path<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.as_object()?.get(k))
}

/// Removes the field at `path`, and the maps it leaves empty.
pub(crate) fn remove_path(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let Some(Value::Object(parent)) = parents
        .iter()
        .try_fold(&mut *v, |v, k| v.as_object_mut()?.get_mut(k))
    else {
        return;
    };
    if parent.remove(last).is_some() && parent.is_empty() && !parents.is_empty() {
        remove_path(v, parents);
    }
}

/// One path is the other or contains it.
fn overlap(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// Deep merge for apply: maps merge key by key, anything else is replaced.
pub(crate) fn merge_applied(target: &mut Value, config: &Value) {
    match (target, config) {
        (Value::Object(t), Value::Object(c)) => {
            for (k, v) in c {
                match t.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => {
                        merge_applied(existing, v)
                    }
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (t, c) => *t = c.clone(),
    }
}

/// One `metadata.managedFields` entry.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Manager {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    /// Empty, or `status`.
    pub subresource: String,
    pub api_version: String,
    pub fields: BTreeSet<Path>,
}

impl Manager {
    fn is(&self, manager: &str, operation: &str, subresource: &str) -> bool {
        self.manager == manager && self.operation == operation && self.subresource == subresource
    }
}

fn to_fields_v1(paths: &BTreeSet<Path>) -> Value {
    fn node<'a>(root: &'a mut Map<String, Value>, path: &[String]) -> &'a mut Map<String, Value> {
        path.iter().fold(root, |node, key| {
            node.entry(format!("f:{key}"))
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("fieldsV1 nodes are maps")
        })
    }
    let mut root = Map::new();
    for path in paths {
        node(&mut root, path);
    }
    // A field that is also the parent of another owned one is marked as owned itself.
    for path in paths {
        let n = node(&mut root, path);
        if !n.is_empty() && !n.contains_key(".") {
            n.insert(".".into(), json!({}));
        }
    }
    Value::Object(root)
}

fn from_fields_v1(v: &Value) -> BTreeSet<Path> {
    fn walk(v: &Map<String, Value>, path: &mut Path, out: &mut BTreeSet<Path>) {
        if (v.is_empty() || v.contains_key(".")) && !path.is_empty() {
            out.insert(path.clone());
        }
        for (k, child) in v {
            let (Some(key), Some(child)) = (k.strip_prefix("f:"), child.as_object()) else {
                continue;
            };
            path.push(key.to_string());
            walk(child, path, out);
            path.pop();
        }
    }
    let mut out = BTreeSet::new();
    if let Some(m) = v.as_object() {
        walk(m, &mut Vec::new(), &mut out);
    }
    out
}

pub(crate) fn read_managers(object: &Value) -> Vec<Manager> {
    object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| Manager {
            manager: e["manager"].as_str().unwrap_or_default().to_string(),
            operation: e["operation"].as_str().unwrap_or("Update").to_string(),
            subresource: e["subresource"].as_str().unwrap_or_default().to_string(),
            api_version: e["apiVersion"].as_str().unwrap_or_default().to_string(),
            fields: from_fields_v1(&e["fieldsV1"]),
        })
        .collect()
}

pub(crate) fn write_managers(object: &mut Value, managers: &[Manager]) {
    let entries: Vec<Value> = managers
        .iter()
        .filter(|m| !m.fields.is_empty())
        .map(|m| {
            let mut e = json!({
                "manager": m.manager,
                "operation": m.operation,
                "apiVersion": m.api_version,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&m.fields),
            });
            if !m.subresource.is_empty() {
                e["subresource"] = json!(m.subresource);
            }
            e
        })
        .collect();
    let Some(meta) = object
        .as_object_mut()
        .map(|o| o.entry("metadata").or_insert_with(|| json!({})))
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    if entries.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(entries));
    }
}

/// A field another manager owns with a different value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Conflict {
    pub manager: String,
    pub path: Path,
}

impl Conflict {
    /// `.spec.replicas`, as Kubernetes prints field paths.
    pub fn field(&self) -> String {
        self.path.iter().map(|k| format!(".{k}")).collect()
    }
}

/// Server-side apply of `config` (already limited to what the endpoint may change) by
/// `manager` onto `current`.
pub(crate) fn apply(
    current: Option<&Value>,
    config: &Value,
    manager: &str,
    subresource: &str,
    api_version: &str,
    force: bool,
) -> Result<Value, Vec<Conflict>> {
    let fields = leaves(config);
    let mut object = current.cloned().unwrap_or_else(|| json!({}));
    let mut managers = read_managers(&object);
    let mine = |m: &Manager| m.is(manager, "Apply", subresource);

    let mut conflicts = Vec::new();
    for p in &fields {
        if get_path(config, p) == get_path(&object, p) {
            continue;
        }
        for m in managers.iter().filter(|m| !mine(m)) {
            for q in m.fields.iter().filter(|q| overlap(p, q)) {
                conflicts.push(Conflict {
                    manager: m.manager.clone(),
                    path: q.clone(),
                });
            }
        }
    }
    if !conflicts.is_empty() {
        if !force {
            return Err(conflicts);
        }
        // Forced: the fields change hands.
        for m in managers.iter_mut().filter(|m| !mine(m)) {
            m.fields.retain(|q| {
                !conflicts
                    .iter()
                    .any(|c| &c.path == q && c.manager == m.manager)
            });
        }
    }

    // Fields this manager applied before and no longer does go, unless someone else has
    // them too.
    let previous: BTreeSet<Path> = managers
        .iter()
        .find(|m| mine(m))
        .map(|m| m.fields.clone())
        .unwrap_or_default();
    for p in previous.difference(&fields) {
        let shared = managers
            .iter()
            .filter(|m| !mine(m))
            .any(|m| m.fields.iter().any(|q| overlap(p, q)));
        if !shared {
            remove_path(&mut object, p);
        }
    }
    merge_applied(&mut object, config);

    match managers.iter_mut().find(|m| mine(m)) {
        Some(m) => {
            m.fields = fields;
            m.api_version = api_version.to_string();
        }
        None => managers.push(Manager {
            manager: manager.to_string(),
            operation: "Apply".into(),
            subresource: subresource.to_string(),
            api_version: api_version.to_string(),
            fields,
        }),
    }
    managers.retain(|m| !m.fields.is_empty());
    write_managers(&mut object, &managers);
    Ok(object)
}

/// Records an update (create, replace, merge or JSON patch) by `manager`: it owns what it
/// changed, others lose those fields, and removed fields are owned by nobody.
pub(crate) fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: &str,
    api_version: &str,
) {
    let mut managers = old.map(read_managers).unwrap_or_default();
    let changed: BTreeSet<Path> = leaves(new)
        .into_iter()
        .filter(|p| old.and_then(|o| get_path(o, p)) != get_path(new, p))
        .collect();
    for m in &mut managers {
        m.fields
            .retain(|q| get_path(new, q).is_some() && !changed.iter().any(|p| overlap(p, q)));
    }
    if !changed.is_empty() {
        match managers
            .iter_mut()
            .find(|m| m.is(manager, "Update", subresource))
        {
            Some(m) => {
                m.fields.extend(changed);
                m.api_version = api_version.to_string();
            }
            None => managers.push(Manager {
                manager: manager.to_string(),
                operation: "Update".into(),
                subresource: subresource.to_string(),
                api_version: api_version.to_string(),
                fields: changed,
            }),
        }
    }
    managers.retain(|m| !m.fields.is_empty());
    write_managers(new, &managers);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Path {
        s.split('.').map(str::to_string).collect()
    }

    #[test]
    fn leaves_skip_identity_and_treat_lists_as_atomic() {
        let v = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "x", "namespace": "n", "labels": {"a": "1"}, "annotations": {}},
            "data": {"k": "v"},
            "spec": {"ports": [{"port": 1}]},
        });
        let l: Vec<String> = leaves(&v).into_iter().map(|p| p.join(".")).collect();
        assert_eq!(
            l,
            [
                "data.k",
                "metadata.annotations",
                "metadata.labels.a",
                "spec.ports"
            ]
        );
    }

    #[test]
    fn fields_v1_round_trips() {
        let set: BTreeSet<Path> = [p("metadata.labels.a"), p("spec"), p("spec.x.y")]
            .into_iter()
            .collect();
        let v = to_fields_v1(&set);
        assert_eq!(
            v,
            json!({"f:metadata": {"f:labels": {"f:a": {}}}, "f:spec": {".": {}, "f:x": {"f:y": {}}}})
        );
        assert_eq!(from_fields_v1(&v), set);
    }

    #[test]
    fn apply_merges_removes_dropped_fields_and_detects_conflicts() {
        let first = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"x": 1}});
        let o = apply(None, &first, "m1", "", "v1", false).unwrap();
        assert_eq!(o["metadata"]["labels"], json!({"a": "1", "b": "2"}));
        // Another manager adds a field: both coexist.
        let o = apply(Some(&o), &json!({"spec": {"y": 2}}), "m2", "", "v1", false).unwrap();
        assert_eq!(o["spec"], json!({"x": 1, "y": 2}));
        // m1 stops applying label b: it goes; m2's field stays.
        let o = apply(
            Some(&o),
            &json!({"metadata": {"labels": {"a": "1"}}, "spec": {"x": 1}}),
            "m1",
            "",
            "v1",
            false,
        )
        .unwrap();
        assert_eq!(o["metadata"]["labels"], json!({"a": "1"}));
        assert_eq!(o["spec"]["y"], 2);
        // m2 changing m1's field conflicts, unless forced.
        let err = apply(Some(&o), &json!({"spec": {"x": 5}}), "m2", "", "v1", false).unwrap_err();
        assert_eq!(err[0].manager, "m1");
        assert_eq!(err[0].field(), ".spec.x");
        // The same value is shared ownership, not a conflict.
        apply(Some(&o), &json!({"spec": {"x": 1}}), "m2", "", "v1", false).unwrap();
        let o = apply(Some(&o), &json!({"spec": {"x": 5}}), "m2", "", "v1", true).unwrap();
        assert_eq!(o["spec"]["x"], 5);
        let managers = read_managers(&o);
        let m1 = managers.iter().find(|m| m.manager == "m1").unwrap();
        assert!(!m1.fields.contains(&p("spec.x")), "forced: m1 lost .spec.x");
        // An update takes the fields it changes from their owners.
        let mut new = o.clone();
        new["metadata"]["labels"]["a"] = json!("9");
        record_update(Some(&o), &mut new, "kubectl", "", "v1");
        let managers = read_managers(&new);
        assert!(
            managers
                .iter()
                .any(|m| m.manager == "kubectl" && m.fields.contains(&p("metadata.labels.a")))
        );
        assert!(
            !managers
                .iter()
                .any(|m| m.manager == "m1" && m.fields.contains(&p("metadata.labels.a")))
        );
    }

    #[test]
    fn removal_prunes_emptied_maps() {
        let mut v = json!({"a": {"b": {"c": 1}}, "d": 1});
        remove_path(&mut v, &p("a.b.c"));
        assert_eq!(v, json!({"d": 1}));
    }
}
