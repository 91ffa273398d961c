//! `sdnlinkd verify`: what an operator checks by hand after installing a node, per remote
//! cluster and from the node itself (the host namespace, where pods' traffic starts):
//!
//! - `peers <cluster>`: the daemon has WireGuard peers for it, each with a handshake in the
//!   last [`HANDSHAKE_MAX_AGE`] (WireGuard's REJECT_AFTER_TIME: an older session cannot carry
//!   data any more);
//! - `dns <cluster>`: the stub answers `<service>.<namespace>.svc.cluster.<cluster>` with an
//!   address, asked at `dns.address` as a pod would;
//! - `tcp <cluster>`: a TCP connection to that address and `--port` opens (through the host's
//!   route into the namespace, the proxy and the tunnel). The nftables proxy only DNATs, so
//!   the remote node routes the reply by its source address, and its WireGuard admits only
//!   sources of this node's pod subnet: the connection leaves from this host's own address in
//!   `local.pod_cidrs` (the CNI's gateway on the node), as a pod's would, when it has one.
//!
//! One PASS/FAIL line each; the command exits 0 only if every line passed.

use crate::config::Config;
use hickory_proto::op::{Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// The oldest handshake that still counts (REJECT_AFTER_TIME, 180 s, in the WireGuard paper
/// section 6.1).
pub const HANDSHAKE_MAX_AGE: u64 = 180;

/// How long the TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The Service to look up and connect to, in every remote cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub service: String,
    pub namespace: String,
    pub port: u16,
}

impl Target {
    /// Parses `name.namespace` (the `--service` form).
    pub fn parse(service: &str, port: u16) -> Result<Target, String> {
        let (name, ns) = service.split_once('.').ok_or_else(|| {
            format!("--service {service:?}: expected NAME.NAMESPACE, e.g. kubernetes.default")
        })?;
        if name.is_empty() || ns.is_empty() || ns.contains('.') {
            return Err(format!(
                "--service {service:?}: expected NAME.NAMESPACE, e.g. kubernetes.default"
            ));
        }
        Ok(Target {
            service: name.to_string(),
            namespace: ns.to_string(),
            port,
        })
    }

    fn fqdn(&self, cluster: &str) -> String {
        format!("{}.{}.svc.cluster.{cluster}.", self.service, self.namespace)
    }
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub pass: bool,
    pub check: String,
    pub detail: String,
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.pass { "PASS" } else { "FAIL" };
        write!(f, "{verdict} {} {}", self.check, self.detail)
    }
}

fn line(check: String, r: Result<String, String>) -> Line {
    match r {
        Ok(detail) => Line {
            pass: true,
            check,
            detail,
        },
        Err(detail) => Line {
            pass: false,
            check,
            detail,
        },
    }
}

/// The `peers <cluster>` verdict from `status --json`'s `tunnel.peers`.
pub fn peers(status: &serde_json::Value, cluster: &str) -> Result<String, String> {
    let peers: Vec<&serde_json::Value> = status["tunnel"]["peers"]
        .as_array()
        .map(|a| a.iter().filter(|p| p["cluster"] == cluster).collect())
        .unwrap_or_default();
    if peers.is_empty() {
        return Err(match status["tunnel"]["error"].as_str() {
            Some(e) => format!("no WireGuard peer (tunnel: {e})"),
            None => "no WireGuard peer for this cluster".into(),
        });
    }
    let mut stale = Vec::new();
    let mut newest = u64::MAX;
    for p in &peers {
        let who = p["node"]
            .as_str()
            .or(p["public_key"].as_str())
            .unwrap_or("?");
        match p["latest_handshake_age_secs"].as_u64() {
            Some(age) if age <= HANDSHAKE_MAX_AGE => newest = newest.min(age),
            Some(age) => stale.push(format!("{who} ({age} s ago)")),
            None => stale.push(format!("{who} (never)")),
        }
    }
    if stale.is_empty() {
        Ok(format!(
            "{} peers, every one with a handshake in the last {HANDSHAKE_MAX_AGE} s (newest {newest} s ago)",
            peers.len()
        ))
    } else {
        Err(format!(
            "{} of {} peers without a handshake in the last {HANDSHAKE_MAX_AGE} s: {}",
            stale.len(),
            peers.len(),
            stale.join(", ")
        ))
    }
}

async fn lookup(dns: SocketAddr, fqdn: &str) -> Result<Vec<IpAddr>, String> {
    let name = Name::from_ascii(fqdn).map_err(|e| format!("{fqdn}: {e}"))?;
    let q = Query::query(name, RecordType::A);
    let msg = crate::dns::ask(dns, &q, true)
        .await
        .map_err(|e| format!("{fqdn} at {dns}: {e}"))?;
    let rc = msg.metadata.response_code;
    let addrs: Vec<IpAddr> = msg
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    if rc != ResponseCode::NoError {
        return Err(format!("{fqdn} at {dns}: {rc}"));
    }
    if addrs.is_empty() {
        return Err(format!("{fqdn} at {dns}: no address in the answer"));
    }
    Ok(addrs)
}

/// This host's first address inside `pods` of the family of `to` (the CNI's gateway address
/// on the node side of the pods' links).
fn pod_source(pods: &[ipnet::IpNet], to: IpAddr) -> Option<IpAddr> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    addrs
        .filter_map(|a| {
            let sa = a.address?;
            if let Some(v4) = sa.as_sockaddr_in() {
                return Some(IpAddr::V4(v4.ip()));
            }
            sa.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
        })
        .find(|ip| ip.is_ipv4() == to.is_ipv4() && pods.iter().any(|n| n.contains(ip)))
}

async fn connect(from: Option<IpAddr>, to: SocketAddr) -> std::io::Result<()> {
    let sock = match to {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    if let Some(ip) = from {
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    sock.connect(to).await.map(drop)
}

/// Every check for every remote cluster of `cfg`, given the daemon's `status --json`.
pub async fn run(cfg: &Config, status: &serde_json::Value, target: &Target) -> Vec<Line> {
    let dns = SocketAddr::new(cfg.dns.address, cfg.dns.port);
    let mut out = Vec::new();
    for remote in &cfg.remote {
        let c = &remote.name;
        out.push(line(format!("peers {c}"), peers(status, c)));
        let fqdn = target.fqdn(c);
        let addrs = if cfg.dns.enabled {
            lookup(dns, &fqdn).await
        } else {
            Err("dns.enabled = false: no stub to ask".into())
        };
        out.push(line(
            format!("dns {c}"),
            addrs
                .as_ref()
                .map(|a| {
                    let list: Vec<String> = a.iter().map(|ip| ip.to_string()).collect();
                    format!("{fqdn} -> {}", list.join(", "))
                })
                .map_err(Clone::clone),
        ));
        let tcp = match &addrs {
            Ok(a) => {
                let to = SocketAddr::new(a[0], target.port);
                let from = pod_source(&cfg.local.pod_cidrs, to.ip());
                let via = from
                    .map(|ip| format!("from {ip}"))
                    .unwrap_or_else(|| "from the host's own address".into());
                let t = Instant::now();
                match tokio::time::timeout(CONNECT_TIMEOUT, connect(from, to)).await {
                    Ok(Ok(())) => Ok(format!(
                        "connected to {to} {via} in {:.1} ms",
                        t.elapsed().as_secs_f64() * 1000.0
                    )),
                    Ok(Err(e)) => Err(format!("{to} {via}: {e}")),
                    Err(_) => Err(format!(
                        "{to} {via}: no connection within {CONNECT_TIMEOUT:?}"
                    )),
                }
            }
            Err(_) => Err(format!("{fqdn} has no address (see dns {c})")),
        };
        out.push(line(format!("tcp {c}"), tcp));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn service_is_name_dot_namespace() {
        let t = Target::parse("kubernetes.default", 443).expect("valid");
        assert_eq!(t.fqdn("west"), "kubernetes.default.svc.cluster.west.");
        for bad in ["kubernetes", ".default", "kubernetes.", "a.b.c"] {
            let e = Target::parse(bad, 443).expect_err(bad);
            assert!(e.contains("NAME.NAMESPACE"), "{e}");
        }
    }

    #[test]
    fn peers_pass_only_with_a_recent_handshake_each() {
        let st = |ages: &[Option<u64>]| {
            let peers: Vec<_> = ages
                .iter()
                .enumerate()
                .map(|(i, a)| json!({"cluster": "west", "node": format!("w{i}"), "latest_handshake_age_secs": a}))
                .chain([json!({"cluster": "north", "node": "n0", "latest_handshake_age_secs": 1})])
                .collect();
            json!({"tunnel": {"peers": peers}})
        };
        assert!(peers(&st(&[Some(3), Some(170)]), "west").is_ok());
        let e = peers(&st(&[Some(3), None]), "west").expect_err("one never shook hands");
        assert!(e.contains("w1 (never)"), "{e}");
        let e = peers(&st(&[Some(181)]), "west").expect_err("too old");
        assert!(e.contains("181 s ago"), "{e}");
        assert!(peers(&st(&[]), "west").is_err(), "no peer at all");
        assert!(peers(&json!({}), "west").is_err());
    }
}
