//! Human rendering of the daemon's status JSON for `sdnlinkd status`.

use serde_json::Value;
use std::fmt::Write as _;

/// Renders the status document as indented `key: value` lines, keeping the daemon's key order
/// for objects and numbering list items, so every field of `--json` is visible in text form.
pub fn render(status: &Value) -> String {
    let mut out = String::new();
    if let Some(line) = status.get("status").and_then(Value::as_str) {
        let _ = writeln!(out, "{line}");
    }
    if let Value::Object(map) = status {
        for (k, v) in map {
            if k == "status" {
                continue;
            }
            walk(&mut out, k, v, 0);
        }
    }
    out
}

fn walk(out: &mut String, key: &str, v: &Value, depth: usize) {
    let pad = "  ".repeat(depth);
    match v {
        Value::Object(map) if map.is_empty() => {
            let _ = writeln!(out, "{pad}{key}: -");
        }
        Value::Object(map) => {
            let _ = writeln!(out, "{pad}{key}:");
            for (k, v) in map {
                walk(out, k, v, depth + 1);
            }
        }
        Value::Array(items) if items.is_empty() => {
            let _ = writeln!(out, "{pad}{key}: -");
        }
        Value::Array(items) if items.iter().all(|i| !i.is_object() && !i.is_array()) => {
            let joined: Vec<String> = items.iter().map(scalar).collect();
            let _ = writeln!(out, "{pad}{key}: {}", joined.join(", "));
        }
        Value::Array(items) => {
            let _ = writeln!(out, "{pad}{key}:");
            for (i, item) in items.iter().enumerate() {
                let label = item
                    .get("name")
                    .or_else(|| item.get("node"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("[{i}]"));
                walk(out, &label, item, depth + 1);
            }
        }
        other => {
            let _ = writeln!(out, "{pad}{key}: {}", scalar(other));
        }
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_nested_status() {
        let v = serde_json::json!({
            "status": "ready: 2 clusters",
            "phase": "ready",
            "clusters": [{"name": "west", "state": {"state": "current"}, "services": 3}],
            "tunnel": {"peers": []},
            "dns": null,
        });
        let text = render(&v);
        assert_eq!(
            text,
            "ready: 2 clusters\nphase: ready\nclusters:\n  west:\n    name: west\n    state:\n      state: current\n    services: 3\ntunnel:\n  peers: -\ndns: -\n"
        );
    }
}
