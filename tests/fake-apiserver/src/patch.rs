//! The patch formats: JSON merge patch (RFC 7386; strategic merge patches are treated as
//! merge patches) and JSON patch (RFC 6902).

use serde_json::Value;

/// RFC 7386: maps merge recursively, `null` removes, anything else replaces.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let t = target.as_object_mut().expect("made an object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// A JSON pointer's reference tokens (`~1` is `/`, `~0` is `~`).
fn tokens(pointer: &str) -> Result<Vec<String>, String> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let rest = pointer
        .strip_prefix('/')
        .ok_or_else(|| format!("invalid JSON pointer {pointer:?}"))?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn parent<'a>(doc: &'a mut Value, path: &[String]) -> Result<&'a mut Value, String> {
    path.iter().try_fold(doc, |v, t| match v {
        Value::Object(m) => m.get_mut(t).ok_or_else(|| format!("no field {t:?}")),
        Value::Array(a) => t
            .parse::<usize>()
            .ok()
            .and_then(|i| a.get_mut(i))
            .ok_or_else(|| format!("no index {t:?}")),
        _ => Err(format!("{t:?} is inside a scalar")),
    })
}

fn get(doc: &Value, pointer: &str) -> Result<Value, String> {
    doc.pointer(pointer)
        .cloned()
        .ok_or_else(|| format!("no value at {pointer:?}"))
}

fn add(doc: &mut Value, pointer: &str, value: Value) -> Result<(), String> {
    let path = tokens(pointer)?;
    let Some((last, up)) = path.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent(doc, up)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(a) if last == "-" => {
            a.push(value);
            Ok(())
        }
        Value::Array(a) => match last.parse::<usize>() {
            Ok(i) if i <= a.len() => {
                a.insert(i, value);
                Ok(())
            }
            _ => Err(format!("index {last:?} out of range")),
        },
        _ => Err(format!("cannot add under a scalar at {pointer:?}")),
    }
}

fn remove(doc: &mut Value, pointer: &str) -> Result<Value, String> {
    let path = tokens(pointer)?;
    let (last, up) = path
        .split_last()
        .ok_or_else(|| "cannot remove the whole document".to_string())?;
    match parent(doc, up)? {
        Value::Object(m) => m.remove(last).ok_or_else(|| format!("no field {last:?}")),
        Value::Array(a) => match last.parse::<usize>() {
            Ok(i) if i < a.len() => Ok(a.remove(i)),
            _ => Err(format!("index {last:?} out of range")),
        },
        _ => Err(format!("no value at {pointer:?}")),
    }
}

/// RFC 6902: applies every operation or none.
pub(crate) fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops
        .as_array()
        .ok_or_else(|| "a JSON patch is a list of operations".to_string())?;
    let mut work = doc.clone();
    for op in ops {
        let path = op["path"]
            .as_str()
            .ok_or_else(|| "operation without path".to_string())?;
        let from = || {
            op["from"]
                .as_str()
                .ok_or_else(|| "operation without from".to_string())
        };
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| "operation without value".to_string())
        };
        match op["op"].as_str().unwrap_or_default() {
            "add" => add(&mut work, path, value()?)?,
            "remove" => drop(remove(&mut work, path)?),
            "replace" => {
                remove(&mut work, path)?;
                add(&mut work, path, value()?)?;
            }
            "move" => {
                let v = remove(&mut work, from()?)?;
                add(&mut work, path, v)?;
            }
            "copy" => {
                let v = get(&work, from()?)?;
                add(&mut work, path, v)?;
            }
            "test" => {
                if get(&work, path)? != value()? {
                    return Err(format!("test failed at {path:?}"));
                }
            }
            other => return Err(format!("unknown operation {other:?}")),
        }
    }
    *doc = work;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        // The RFC's own example.
        let mut doc = json!({"title": "Goodbye!", "author": {"givenName": "John", "familyName": "Doe"}, "tags": ["example", "sample"], "content": "This will be unchanged"});
        merge_patch(
            &mut doc,
            &json!({"title": "Hello!", "phoneNumber": "+01-123-456-7890", "author": {"familyName": null}, "tags": ["example"]}),
        );
        assert_eq!(
            doc,
            json!({"title": "Hello!", "author": {"givenName": "John"}, "tags": ["example"], "content": "This will be unchanged", "phoneNumber": "+01-123-456-7890"})
        );
        let mut doc = json!({"a": 1});
        merge_patch(&mut doc, &json!({"a": {"b": null, "c": 2}}));
        assert_eq!(doc, json!({"a": {"c": 2}}));
    }

    #[test]
    fn json_patch_operations_apply_atomically() {
        let mut doc = json!({"metadata": {"labels": {"a/b": "1"}}, "list": [1, 2]});
        json_patch(
            &mut doc,
            &json!([
                {"op": "add", "path": "/list/-", "value": 3},
                {"op": "replace", "path": "/metadata/labels/a~1b", "value": "2"},
                {"op": "copy", "from": "/list/0", "path": "/first"},
                {"op": "move", "from": "/first", "path": "/moved"},
                {"op": "remove", "path": "/list/1"},
                {"op": "test", "path": "/moved", "value": 1},
            ]),
        )
        .unwrap();
        assert_eq!(
            doc,
            json!({"metadata": {"labels": {"a/b": "2"}}, "list": [1, 3], "moved": 1})
        );
        let before = doc.clone();
        let err = json_patch(
            &mut doc,
            &json!([{"op": "remove", "path": "/list/0"}, {"op": "test", "path": "/moved", "value": 9}]),
        )
        .unwrap_err();
        assert!(err.contains("test failed"), "{err}");
        assert_eq!(doc, before, "nothing applied");
    }
}
