//! The patch types `kubectl` sends: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and
//! strategic merge patch for the fields of the served kinds.
//!
//! Strategic merge patch is a JSON merge patch in which lists marked `patchStrategy: merge` in
//! the Kubernetes API types are merged element by element on their `patchMergeKey` instead of
//! replaced, plus the directives `$patch` (`replace`, `delete`), `$setElementOrder/<list>`,
//! `$deleteFromPrimitiveList/<list>` and `$retainKeys` that `kubectl apply` computes. The table
//! below holds the merge lists of Service, EndpointSlice, Node and ObjectMeta; every other list
//! is atomic (replaced whole), as it is in those types.

use serde_json::{Map, Value};

/// How a list field merges: on a key of its elements, or as a set of primitives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ListMerge {
    Key(&'static str),
    Primitive,
}

/// `patchStrategy: merge` lists by their path from the object root (`*` for any kind).
fn list_merge(kind: &str, path: &str) -> Option<ListMerge> {
    Some(match (kind, path) {
        (_, "metadata.ownerReferences") => ListMerge::Key("uid"),
        (_, "metadata.finalizers") => ListMerge::Primitive,
        ("Service", "spec.ports") => ListMerge::Key("port"),
        ("Service", "status.conditions") => ListMerge::Key("type"),
        ("Node", "spec.podCIDRs") => ListMerge::Primitive,
        ("Node", "spec.taints") => ListMerge::Key("key"),
        ("Node", "status.addresses") => ListMerge::Key("type"),
        ("Node", "status.conditions") => ListMerge::Key("type"),
        _ => return None,
    })
}

/// Applies a strategic merge patch to an object of `kind`.
pub fn strategic(kind: &str, target: &mut Value, patch: &Value) -> Result<(), String> {
    merge_map(kind, "", target, patch)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn merge_map(kind: &str, path: &str, target: &mut Value, patch: &Value) -> Result<(), String> {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *target = Value::Object(strip_directives(p));
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        Some(other) => return Err(format!("{path}: unknown $patch directive {other:?}")),
        None => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else {
        unreachable!("made an object just above")
    };
    // Deletions apply to the original, before the additions of the same patch.
    for (k, v) in p {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let gone = v.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(list)) = t.get_mut(field) {
                list.retain(|x| !gone.contains(x));
            }
        }
    }
    let mut orders: Vec<(&str, &Value)> = Vec::new();
    for (k, v) in p {
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            orders.push((field, v));
        } else if k.starts_with('$') {
        } else if v.is_null() {
            t.remove(k);
        } else {
            let sub = join(path, k);
            match (v, list_merge(kind, &sub)) {
                (Value::Array(items), Some(how)) => {
                    let cur = t.entry(k.clone()).or_insert(Value::Array(Vec::new()));
                    merge_list(kind, &sub, cur, items, how)?;
                }
                (Value::Object(_), _) => {
                    let cur = t.entry(k.clone()).or_insert(Value::Null);
                    merge_map(kind, &sub, cur, v)?;
                    if cur.is_null() {
                        t.remove(k);
                    }
                }
                _ => {
                    t.insert(k.clone(), strip_value(v));
                }
            }
        }
    }
    for (field, order) in orders {
        let how = list_merge(kind, &join(path, field));
        if let (Some(Value::Array(list)), Some(order)) = (t.get_mut(field), order.as_array()) {
            reorder(list, order, how);
        }
    }
    if let Some(Value::Array(keep)) = p.get("$retainKeys") {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        t.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(())
}

fn merge_list(
    kind: &str,
    path: &str,
    target: &mut Value,
    items: &[Value],
    how: ListMerge,
) -> Result<(), String> {
    if !target.is_array() {
        *target = Value::Array(Vec::new());
    }
    let Value::Array(list) = target else {
        unreachable!("made an array just above")
    };
    match how {
        ListMerge::Primitive => {
            for v in items {
                if !list.contains(v) {
                    list.push(v.clone());
                }
            }
        }
        ListMerge::Key(key) => {
            if items
                .iter()
                .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
            {
                *list = items
                    .iter()
                    .filter(|i| i.get("$patch").is_none())
                    .map(strip_value)
                    .collect();
                return Ok(());
            }
            for item in items {
                let id = item
                    .get(key)
                    .ok_or_else(|| format!("{path}: an element lacks its merge key {key:?}"))?;
                let at = list.iter().position(|e| e.get(key) == Some(id));
                let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                match (at, delete) {
                    (Some(i), true) => {
                        list.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => merge_map(kind, path, &mut list[i], item)?,
                    (None, false) => list.push(strip_value(item)),
                }
            }
        }
    }
    Ok(())
}

/// Orders `list` as `order` names its elements; elements it does not name keep their order
/// after them.
fn reorder(list: &mut Vec<Value>, order: &[Value], how: Option<ListMerge>) {
    let id = |v: &Value| -> Value {
        match how {
            Some(ListMerge::Key(k)) => v.get(k).cloned().unwrap_or(Value::Null),
            _ => v.clone(),
        }
    };
    let mut rest = std::mem::take(list);
    for o in order {
        let want = id(o);
        if let Some(i) = rest.iter().position(|e| id(e) == want) {
            list.push(rest.remove(i));
        }
    }
    list.extend(rest);
}

fn strip_directives(m: &Map<String, Value>) -> Map<String, Value> {
    m.iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k.clone(), strip_value(v)))
        .collect()
}

fn strip_value(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(strip_directives(m)),
        Value::Array(a) => Value::Array(a.iter().map(strip_value).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc() -> Value {
        json!({"metadata": {"name": "s", "annotations": {"a": "1", "b": "2"}},
               "spec": {"clusterIP": "10.0.0.1",
                        "ports": [{"name": "http", "port": 80, "targetPort": 8080},
                                  {"name": "dns", "port": 53, "protocol": "UDP"}]}})
    }

    #[test]
    fn service_ports_merge_on_port() {
        let mut s = svc();
        strategic(
            "Service",
            &mut s,
            &json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}, {"port": 443, "name": "https"}]}}),
        )
        .expect("patch");
        assert_eq!(
            s["spec"]["ports"],
            json!([{"name": "http", "port": 80, "targetPort": 9090},
                   {"name": "dns", "port": 53, "protocol": "UDP"},
                   {"port": 443, "name": "https"}])
        );
    }

    #[test]
    fn directives_delete_order_and_replace() {
        let mut s = svc();
        strategic(
            "Service",
            &mut s,
            &json!({"metadata": {"annotations": {"a": null}},
                    "spec": {"$setElementOrder/ports": [{"port": 53}, {"port": 80}],
                             "ports": [{"port": 80, "$patch": "delete"}]}}),
        )
        .expect("patch");
        assert_eq!(s["metadata"]["annotations"], json!({"b": "2"}));
        assert_eq!(
            s["spec"]["ports"],
            json!([{"name": "dns", "port": 53, "protocol": "UDP"}])
        );
        strategic(
            "Service",
            &mut s,
            &json!({"spec": {"$patch": "replace", "clusterIP": "None"}}),
        )
        .expect("patch");
        assert_eq!(s["spec"], json!({"clusterIP": "None"}));
    }

    #[test]
    fn atomic_lists_are_replaced_and_primitive_merge_lists_unioned() {
        let mut slice =
            json!({"endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"]}]});
        strategic(
            "EndpointSlice",
            &mut slice,
            &json!({"endpoints": [{"addresses": ["10.0.0.3"]}]}),
        )
        .expect("patch");
        assert_eq!(slice["endpoints"], json!([{"addresses": ["10.0.0.3"]}]));
        let mut node = json!({"spec": {"podCIDRs": ["10.1.0.0/24"]}});
        strategic(
            "Node",
            &mut node,
            &json!({"spec": {"podCIDRs": ["fd00::/64"],
                             "$deleteFromPrimitiveList/podCIDRs": ["10.1.0.0/24"]}}),
        )
        .expect("patch");
        assert_eq!(node["spec"]["podCIDRs"], json!(["fd00::/64"]));
    }

    #[test]
    fn a_merge_list_element_without_its_key_is_an_error() {
        let mut s = svc();
        let e = strategic(
            "Service",
            &mut s,
            &json!({"spec": {"ports": [{"name": "x"}]}}),
        )
        .expect_err("no port");
        assert!(e.contains("spec.ports") && e.contains("\"port\""), "{e}");
    }
}
