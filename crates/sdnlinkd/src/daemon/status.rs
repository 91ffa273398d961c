//! `sdnlinkd status` for people: a summary in the manner of `wg show` and `subctl show`, drawn
//! from the same document `status --json` prints in full.

use serde_json::Value;
use std::fmt::Write as _;

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter()
        .fold(v, |v, k| v.get(*k).unwrap_or(&Value::Null))
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// 1536 -> "1.5 KiB".
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// 75 -> "1m15s ago".
fn age(secs: Option<u64>) -> String {
    match secs {
        None => "never".into(),
        Some(s) if s < 60 => format!("{s}s ago"),
        Some(s) if s < 3600 => format!("{}m{:02}s ago", s / 60, s % 60),
        Some(s) => format!("{}h{:02}m ago", s / 3600, (s % 3600) / 60),
    }
}

/// Left-aligned columns, two spaces apart.
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |out: &mut String, cells: Vec<String>| {
        let last = cells.len() - 1;
        for (i, c) in cells.into_iter().enumerate() {
            if i == last {
                let _ = write!(out, "{c}");
            } else {
                let _ = write!(out, "{c:<w$}  ", w = width[i]);
            }
        }
        out.push('\n');
    };
    line(out, header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(out, r.clone());
    }
}

/// The cluster's state with its reason when it has one.
fn cluster_state(st: &Value) -> String {
    let name = text(s(st, &["state"]));
    match st.get("reason").and_then(Value::as_str) {
        Some(r) => format!("{name} ({r})"),
        None => name,
    }
}

/// Renders the status document as a summary (every field stays in `--json`).
pub fn render(v: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "sdnlinkd {} on node {} of cluster {}: {}",
        text(s(v, &["version"])),
        text(s(v, &["local", "node"])),
        text(s(v, &["local", "cluster"])),
        text(s(v, &["phase"]))
    );
    let last = s(v, &["last_sync"]);
    let _ = writeln!(
        out,
        "  namespace {}, last sync {} ({}, {:.0} ms), {} syncs ({} full, {} failed)",
        text(s(v, &["namespace"])),
        if last["ok"].as_bool() == Some(true) {
            "ok"
        } else if last["at"].is_null() {
            "not yet"
        } else {
            "FAILED"
        },
        if last["full"].as_bool() == Some(true) {
            "full"
        } else {
            "incremental"
        },
        last["duration_ms"].as_f64().unwrap_or(0.0),
        num(s(v, &["syncs", "total"])),
        num(s(v, &["syncs", "full"])),
        num(s(v, &["syncs", "failed"])),
    );
    out.push('\n');

    let clusters: Vec<Vec<String>> = s(v, &["clusters"])
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    let skipped: u64 = c["skipped"]
                        .as_object()
                        .map(|m| m.values().map(num).sum())
                        .unwrap_or(0);
                    vec![
                        text(&c["name"]),
                        cluster_state(&c["state"]),
                        num(&c["services"]).to_string(),
                        num(&c["endpoints"]).to_string(),
                        skipped.to_string(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(
        &mut out,
        &["CLUSTER", "STATE", "SERVICES", "ENDPOINTS", "SKIPPED"],
        &clusters,
    );
    out.push('\n');

    let tunnel = s(v, &["tunnel"]);
    let _ = writeln!(
        out,
        "tunnel {} ({}), port {}, public key {}",
        text(&tunnel["interface"]),
        text(&tunnel["backend"]),
        text(&tunnel["listen_port"]),
        text(&tunnel["public_key"])
    );
    let peers: Vec<Vec<String>> = tunnel["peers"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    vec![
                        format!(
                            "{}/{}",
                            p["cluster"].as_str().unwrap_or("?"),
                            p["node"].as_str().unwrap_or("?")
                        ),
                        text(&p["endpoint"]),
                        age(p["latest_handshake_age_secs"].as_u64()),
                        bytes(num(&p["rx_bytes"])),
                        bytes(num(&p["tx_bytes"])),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    if peers.is_empty() {
        out.push_str("  no peers\n");
    } else {
        table(
            &mut out,
            &["PEER", "ENDPOINT", "HANDSHAKE", "RX", "TX"],
            &peers,
        );
    }
    if let Some(e) = tunnel["error"].as_str() {
        let _ = writeln!(out, "  error: {e}");
    }
    out.push('\n');

    let proxy = s(v, &["proxy"]);
    let held = proxy["held_clusters"]
        .as_array()
        .map(|a| a.iter().map(text).collect::<Vec<_>>().join(", "))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "none".into());
    let _ = writeln!(
        out,
        "proxy: {}, {} services, {} draining VIPs, kept for unlisted clusters: {held}",
        text(&proxy["backend"]),
        num(&proxy["services"]),
        proxy["draining_vips"].as_array().map_or(0, Vec::len),
    );
    let dns = s(v, &["dns"]);
    match dns.as_object() {
        None => out.push_str("dns: off\n"),
        Some(m) => {
            let fields: Vec<String> = m
                .iter()
                .filter(|(_, x)| !x.is_object() && !x.is_array() && !x.is_null())
                .map(|(k, x)| format!("{k} {}", text(x)))
                .collect();
            let _ = writeln!(out, "dns: {}", fields.join(", "));
        }
    }
    let publish = s(v, &["publish"]);
    if !publish.is_null() {
        let _ = writeln!(
            out,
            "publish: node {} {}, {} patches",
            text(&publish["node"]),
            text(&publish["state"]),
            num(&publish["patches"])
        );
    }
    let mss = s(v, &["mss_clamp"]);
    let _ = writeln!(
        out,
        "mss clamp: {} (IPv4 {}, IPv6 {})",
        mss["error"]
            .as_str()
            .map(|e| format!("NOT applied: {e}"))
            .unwrap_or_else(|| "applied".into()),
        text(&mss["ipv4"]),
        text(&mss["ipv6"])
    );
    out.push('\n');
    match s(v, &["problems"]).as_array().filter(|a| !a.is_empty()) {
        None => out.push_str("problems: none\n"),
        Some(a) => {
            out.push_str("problems:\n");
            for p in a {
                let _ = writeln!(out, "  - {}", text(p));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_summary_with_tables() {
        let v = serde_json::json!({
            "version": "0.1.0",
            "phase": "degraded",
            "problems": ["west: not listed yet, serving its last snapshot"],
            "local": {"cluster": "east", "node": "east-n1"},
            "namespace": "sdnlink",
            "last_sync": {"ok": true, "full": false, "duration_ms": 3.2, "at": 1},
            "syncs": {"total": 9, "full": 2, "failed": 0},
            "clusters": [
                {"name": "east", "state": {"state": "current"}, "services": 3, "endpoints": 8,
                 "skipped": {}},
                {"name": "west", "state": {"state": "warm", "reason": "connection refused"},
                 "services": 12, "endpoints": 40, "skipped": {"malformed": 2, "outside_cidrs": 1}},
            ],
            "tunnel": {"interface": "sdnlink-wg", "backend": "userspace", "listen_port": 51820,
                       "public_key": "KEY=", "peers": [
                {"cluster": "west", "node": "west-n1", "endpoint": "192.0.2.21:51820",
                 "latest_handshake_age_secs": 75, "rx_bytes": 1536, "tx_bytes": 12}]},
            "proxy": {"backend": "nftables", "services": 12, "draining_vips": [],
                      "held_clusters": ["west"]},
            "dns": {"listen": "169.254.20.53:53", "queries": 10, "zones": ["cluster.west."]},
            "publish": {"node": "east-n1", "state": "published", "patches": 1},
            "mss_clamp": {"ipv4": 1380, "ipv6": 1360, "error": null},
        });
        let got = render(&v);
        let want = "\
sdnlinkd 0.1.0 on node east-n1 of cluster east: degraded
  namespace sdnlink, last sync ok (incremental, 3 ms), 9 syncs (2 full, 0 failed)

CLUSTER  STATE                      SERVICES  ENDPOINTS  SKIPPED
east     current                    3         8          0
west     warm (connection refused)  12        40         3

tunnel sdnlink-wg (userspace), port 51820, public key KEY=
PEER          ENDPOINT          HANDSHAKE  RX       TX
west/west-n1  192.0.2.21:51820  1m15s ago  1.5 KiB  12 B

proxy: nftables, 12 services, 0 draining VIPs, kept for unlisted clusters: west
dns: listen 169.254.20.53:53, queries 10
publish: node east-n1 published, 1 patches
mss clamp: applied (IPv4 1380, IPv6 1360)

problems:
  - west: not listed yet, serving its last snapshot
";
        assert_eq!(got, want, "\n{got}");
    }

    #[test]
    fn age_and_bytes_are_human() {
        assert_eq!(age(None), "never");
        assert_eq!(age(Some(5)), "5s ago");
        assert_eq!(age(Some(7325)), "2h02m ago");
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(5 << 20), "5.0 MiB");
    }
}
