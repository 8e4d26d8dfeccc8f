//! How the fake API server reads requests and changes objects: paths, query parameters, label
//! selectors, and the three patch types kube sends (server-side apply, JSON patch, merge patch).

use serde_json::{Value, json};

pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(byte) => {
                        out.push(byte);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| percent_decode(value))
    })
}

pub fn label_requirements(selector: Option<String>) -> Vec<(String, String)> {
    selector
        .unwrap_or_default()
        .split(',')
        .filter_map(|requirement| {
            let (key, value) = requirement.split_once('=')?;
            Some((
                key.trim().to_owned(),
                value.trim_start_matches('=').trim().to_owned(),
            ))
        })
        .collect()
}

pub fn labels_match(object: &Value, requirements: &[(String, String)]) -> bool {
    requirements
        .iter()
        .all(|(key, value)| object["metadata"]["labels"][key].as_str() == Some(value.as_str()))
}

/// Where a request goes: resource, namespace, name and subresource.
pub struct Route {
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

pub fn route(path: &str) -> Option<Route> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group_version, rest) = match segments.first().copied() {
        Some("api") if segments.len() >= 3 => (segments[1].to_owned(), &segments[2..]),
        Some("apis") if segments.len() >= 4 => {
            (format!("{}/{}", segments[1], segments[2]), &segments[3..])
        }
        _ => return None,
    };
    let (namespace, rest) = if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        (Some(rest[1].to_owned()), &rest[2..])
    } else {
        (None, rest)
    };
    Some(Route {
        resource: format!("{group_version}/{}", rest[0]),
        namespace,
        name: rest.get(1).map(|s| (*s).to_owned()),
        subresource: rest.get(2).map(|s| (*s).to_owned()),
    })
}

pub fn group_of(resource: &str) -> &str {
    let parts: Vec<&str> = resource.split('/').collect();
    if parts.len() == 3 { parts[0] } else { "" }
}

/// What differs between two versions of an object, outside metadata and status.
pub fn spec_changed(old: &Value, new: &Value) -> bool {
    let strip = |value: &Value| {
        let mut value = value.clone();
        if let Some(object) = value.as_object_mut() {
            object.remove("metadata");
            object.remove("status");
        }
        value
    };
    strip(old) != strip(new)
}

/// Applies the JSON patch operations kube's finalizer helper sends (`test`, `add`, `remove`).
pub fn json_patch(object: &mut Value, operations: &Value) -> Result<(), String> {
    for operation in operations.as_array().ok_or("not a JSON patch")? {
        let path = operation["path"].as_str().ok_or("no path")?;
        let (parent, last) = path.rsplit_once('/').ok_or("bad path")?;
        match operation["op"].as_str() {
            Some("test") => {
                let found = object.pointer(path).cloned().unwrap_or(Value::Null);
                if found != operation["value"] {
                    return Err(format!("test of {path} failed"));
                }
            }
            Some("add") => {
                let target = object.pointer_mut(parent).ok_or("no parent")?;
                match target {
                    Value::Array(items) if last == "-" => items.push(operation["value"].clone()),
                    Value::Object(fields) => {
                        fields.insert(last.to_owned(), operation["value"].clone());
                    }
                    _ => return Err("cannot add there".into()),
                }
            }
            Some("remove") => {
                let target = object.pointer_mut(parent).ok_or("no parent")?;
                match target {
                    Value::Array(items) => {
                        let index: usize = last.parse().map_err(|_| "bad index")?;
                        if index >= items.len() {
                            return Err("no such index".into());
                        }
                        items.remove(index);
                    }
                    Value::Object(fields) => {
                        fields.remove(last);
                    }
                    _ => return Err("cannot remove there".into()),
                }
            }
            other => return Err(format!("unsupported op {other:?}")),
        }
    }
    Ok(())
}

/// Server-side apply by one field manager, forced: what it sends replaces what it sent before.
pub fn server_side_apply(existing: &Value, applied: &Value, status_only: bool) -> Value {
    let mut merged = existing.clone();
    if status_only {
        merged["status"] = applied["status"].clone();
        return merged;
    }
    for (field, value) in applied.as_object().into_iter().flatten() {
        match field.as_str() {
            "status" => {}
            "metadata" => {
                for (meta_field, meta_value) in value.as_object().into_iter().flatten() {
                    if ["labels", "annotations", "ownerReferences", "finalizers"]
                        .contains(&meta_field.as_str())
                    {
                        merged["metadata"][meta_field] = meta_value.clone();
                    }
                }
            }
            _ => merged[field] = value.clone(),
        }
    }
    if spec_changed(existing, &merged) {
        let generation = existing["metadata"]["generation"].as_i64().unwrap_or(0);
        merged["metadata"]["generation"] = json!(generation + 1);
    }
    merged
}

/// RFC 7386 merge patch.
pub fn json_merge(target: &mut Value, patch: &Value) {
    match patch.as_object() {
        Some(fields) => {
            if !target.is_object() {
                *target = json!({});
            }
            for (key, value) in fields {
                if value.is_null() {
                    if let Some(object) = target.as_object_mut() {
                        object.remove(key);
                    }
                } else {
                    json_merge(&mut target[key], value);
                }
            }
        }
        None => *target = patch.clone(),
    }
}
