//! `hostile-manifests`: cluster `b` serves the hostile manifest set
//! ([`super::manifests::hostile`]) plus a Node that copies the public key of one of its real
//! nodes; on every node of cluster `a` nothing hostile may reach the kernel (VIPs, routes in
//! both namespaces, the proxy's nft elements or IPVS services, WireGuard allowed IPs) or DNS,
//! while the good objects of the same files answer in DNS and proxy to `b`'s pods. The set is
//! deleted afterwards and the check waits until it is gone, so later checks see the usual lab.

use super::checks::{
    a_records, dns_server, eventually, first_pod, outcome, remote_api, without_skips, Outcome,
    Pods, CONVERGE, REQUEST,
};
use super::daemon;
use super::dns;
use super::manifests::{cluster_ip, hostile, svc, SERVICE_PORT};
use super::probe::{self, WatchTarget};
use super::run::Lab;
use super::topology::{Cluster, Node, Proxy, K8S_NAMESPACE};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use ipnet::IpNet;
use sdnlinkd::clusters::{ANNOTATION_ENDPOINT, ANNOTATION_PUBLIC_KEY};
use sdnlinkd::netns::NetNs;
use std::net::SocketAddr;

/// The thief's pod subnet lies in `b`'s pod CIDR, so only the key rule can refuse it.
const THIEF: &str = "evil-keythief";

fn run_in(netns: &str, prog: &'static str, args: &[&str]) -> Result<String, String> {
    let ns = NetNs::open(netns).map_err(|e| e.to_string())?;
    let args = args.iter().map(|s| s.to_string()).collect();
    probe::run_in(&ns, prog, args).map_err(|e| format!("{e} (in {netns})"))
}

/// What `node`'s daemon namespace holds in `cidrs`: peers, VIPs, routes, nft or IPVS entries.
fn programmed(lab: &Lab, node: &Node, cidrs: &[IpNet]) -> Result<probe::Objects, String> {
    probe::objects(&WatchTarget {
        daemon_netns: node.daemon_netns.clone(),
        wg_if: node.wg_if.clone(),
        cidrs: cidrs.to_vec(),
        ipvs: lab.plan.proxy == Proxy::Ipvs,
    })
}

/// (public key, endpoint, allowed IPs) of each peer of `wg show IFACE dump`.
pub(super) fn wg_peers(node: &Node) -> Result<Vec<(String, String, Vec<String>)>, String> {
    let dump = run_in(&node.daemon_netns, "wg", &["show", &node.wg_if, "dump"])?;
    Ok(dump
        .lines()
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .filter(|f| f.len() == 8)
        .map(|f| {
            (
                f[0].to_string(),
                f[2].to_string(),
                f[3].split(',').map(str::to_string).collect(),
            )
        })
        .collect())
}

fn name_of(bad: &str, b: &Cluster) -> String {
    format!("{bad}.svc.cluster.{}.", b.name)
}

pub fn check(lab: &Lab, pods: &Pods, a: &Cluster, b: &Cluster) -> Outcome {
    let r = (|| {
        let api = remote_api(lab, b)?;
        let victim = &b.nodes[0];
        let ann = api
            .node_annotations(&victim.name)
            .map_err(|e| e.to_string())?;
        let stolen = ann
            .get(ANNOTATION_PUBLIC_KEY)
            .ok_or_else(|| format!("{} publishes no key", victim.name))?
            .clone();
        let victim_ep = ann.get(ANNOTATION_ENDPOINT).cloned().unwrap_or_default();
        // The thief goes first: the good Node of nodes.yaml comes after it on the same watch,
        // so the barrier below covers it.
        let thief = hostile::node(b, THIEF, &stolen, "192.0.2.248:51820");
        api.apply_yaml(&thief).map_err(|e| e.to_string())?;
        for (file, text) in hostile::files(b) {
            api.apply_yaml(&text)
                .map_err(|e| format!("applying {file} to {}: {e}", b.name))?;
        }
        let r = inspect(lab, pods, a, b, &stolen, &victim_ep);
        let cleaned = clean_up(lab, a, b);
        let detail = r?;
        cleaned?;
        Ok(detail)
    })();
    outcome(format!("hostile-manifests {}->{}", b.name, a.name), r)
}

fn inspect(
    lab: &Lab,
    pods: &Pods,
    a: &Cluster,
    b: &Cluster,
    stolen: &str,
    victim_ep: &str,
) -> Result<String, String> {
    let from = first_pod(a, 0);
    let server = dns_server();
    let q = |name: &str, t: RecordType| {
        dns::query(&from.netns, server, name, t, REQUEST).map_err(|e| e.to_string())
    };
    let good_net = hostile::node_subnet(b, hostile::GOOD_NODE).to_string();
    // Barrier: every good object of the set is programmed on every node of `a`.
    let (r, took) = eventually(CONVERGE, || {
        for good in hostile::GOOD {
            let name = name_of(&format!("{good}.{K8S_NAMESPACE}"), b);
            let got = a_records(&q(&name, RecordType::A)?);
            let want = hostile::ip(b, good);
            if !(got.len() == 1 && got.contains(&want)) {
                return Err(format!("{name} A {got:?}, want {want}"));
            }
        }
        for node in &a.nodes {
            if !wg_peers(node)?.iter().any(|p| p.2 == [good_net.clone()]) {
                return Err(format!(
                    "{}: no peer with allowed IPs {good_net} ({})",
                    node.name,
                    hostile::GOOD_NODE
                ));
            }
        }
        Ok(())
    });
    r.map_err(|e| format!("good objects of the hostile set not served: {e}"))?;

    // DNS: no hostile name answers; echo's address names echo alone.
    for bad in hostile::BAD_NAMES {
        let name = name_of(bad, b);
        let m = q(&name, RecordType::A)?;
        if m.metadata.response_code != ResponseCode::NXDomain || !m.answers.is_empty() {
            return Err(format!(
                "{name}: {:?} {:?}, want NXDOMAIN",
                m.metadata.response_code,
                a_records(&m)
            ));
        }
    }
    let echo = cluster_ip(b, svc::ECHO).ok_or("no echo ClusterIP")?;
    let o = echo.octets();
    let ptr = format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0]);
    let names: Vec<String> = q(&ptr, RecordType::PTR)?
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::PTR(p) => Some(p.0.to_ascii()),
            _ => None,
        })
        .collect();
    let want_ptr = name_of(&format!("{}.{K8S_NAMESPACE}", svc::ECHO), b);
    if names != [want_ptr.clone()] {
        return Err(format!("PTR {ptr}: {names:?}, want only {want_ptr}"));
    }

    // Proxy: the good Services answer, addr-ok every time (none of its foreign endpoints is
    // programmed: one would time out or answer from outside `b`).
    let b_pods: Vec<String> = b
        .nodes
        .iter()
        .flat_map(|n| n.pods.iter().map(|p| p.name.clone()))
        .collect();
    let mut answered = 0;
    for good in hostile::GOOD {
        let tries = if good == "addr-ok" { 12 } else { 2 };
        let to = SocketAddr::from((hostile::ip(b, good), SERVICE_PORT));
        for _ in 0..tries {
            let got = pods.tcp(from, to)?;
            if !b_pods.contains(&got) {
                return Err(format!(
                    "{good} {to} answered by {got}, not a pod of {}",
                    b.name
                ));
            }
            answered += 1;
        }
    }

    // Kernel, on every node of `a`.
    let (ranges, exact) = hostile::markers(b);
    let exact: Vec<String> = exact.iter().map(IpNet::to_string).collect();
    for node in &a.nodes {
        let found = programmed(lab, node, &ranges)?;
        if !found.is_empty() {
            return Err(format!(
                "{} programmed hostile objects: {found:?}",
                node.name
            ));
        }
        let host_routes = run_in(&node.netns, "ip", &["-j", "route", "show", "table", "all"])?;
        let found = probe::routes(&host_routes, &ranges)?;
        if !found.is_empty() {
            return Err(format!("{} host routes: {found:?}", node.name));
        }
        let ns_routes = run_in(
            &node.daemon_netns,
            "ip",
            &["-j", "route", "show", "table", "all"],
        )?;
        let peers = wg_peers(node)?;
        for e in &exact {
            let routed = [&host_routes, &ns_routes]
                .iter()
                .any(|j| j.contains(&format!("\"dst\":\"{e}\"")));
            let allowed = peers.iter().any(|p| p.2.contains(e));
            if routed || allowed {
                return Err(format!(
                    "{}: {e} is {}",
                    node.name,
                    if routed {
                        "routed"
                    } else {
                        "a WireGuard allowed IP"
                    }
                ));
            }
        }
        let victim = &b.nodes[0];
        let mine: Vec<_> = peers.iter().filter(|p| p.0 == stolen).collect();
        let want = vec![victim.pod_subnet.to_string()];
        if mine.len() != 1 || mine[0].2 != want || !victim_ep.ends_with(&mine[0].1) {
            return Err(format!(
                "{}: the peer of {}'s key is {mine:?}, want allowed IPs {want:?} at {victim_ep} (the thief must not take it)",
                node.name, victim.name
            ));
        }
    }
    let bin = lab.daemon_bin.as_deref().ok_or("no daemon binary")?;
    let cfg = lab.plan.node_config_path(&a.nodes[0]);
    let status = daemon::status(bin, &cfg).map_err(|e| e.to_string())?;
    let skipped = status["clusters"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == b.name.as_str()))
        .map(|c| c["skipped"].clone())
        .unwrap_or_default();
    // Each refused Node is named in the tunnel's skipped peers with its reason.
    let refused: Vec<(String, String)> = status["tunnel"]["skipped"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["cluster"] == b.name.as_str())
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap_or_default().to_string();
            (s("node"), s("reason"))
        })
        .collect();
    for (node, why) in [
        ("evil-loopback", "loopback"),
        ("evil-multicast", "multicast"),
        (THIEF, "public key"),
    ] {
        if !refused.iter().any(|(n, r)| n == node && r.contains(why)) {
            return Err(format!(
                "{}'s status does not list {node} as a skipped peer ({why}): {refused:?}",
                a.nodes[0].name
            ));
        }
    }
    let text = without_skips(status).to_string();
    if let Some(r) = ranges.iter().find(|r| {
        text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter_map(|t| t.parse::<std::net::IpAddr>().ok())
            .any(|ip| r.contains(&ip))
    }) {
        return Err(format!("an address in {r} appears in status --json"));
    }
    Ok(format!(
        "{} files + key thief applied to {}; good objects served after {:.1}s; {} hostile names NXDOMAIN, PTR {echo} -> only echo; {answered} connects to the good VIPs answered by {}'s pods; on {} nodes nothing in {} ranges (VIPs, routes in both namespaces, {}, WireGuard) and no route or allowed IP {exact:?}; {}'s key stays with its peer; peers refused {refused:?}; skipped on {}: {skipped}",
        hostile::files(b).len(),
        b.name,
        took.as_secs_f64(),
        hostile::BAD_NAMES.len(),
        b.name,
        a.nodes.len(),
        ranges.len(),
        if lab.plan.proxy == Proxy::Ipvs { "IPVS" } else { "nft" },
        b.nodes[0].name,
        a.nodes[0].name,
    ))
}

/// Deletes the set and waits until the good objects are gone from every node of `a`.
fn clean_up(lab: &Lab, a: &Cluster, b: &Cluster) -> Result<(), String> {
    let api = remote_api(lab, b)?;
    let mut all = hostile::objects(b);
    all.push(("Node".into(), String::new(), THIEF.into()));
    for (kind, ns, name) in &all {
        api.delete(kind, ns, name)
            .map_err(|e| format!("deleting {kind} {ns}/{name}: {e}"))?;
    }
    let from = first_pod(a, 0);
    let good_node = hostile::node_subnet(b, hostile::GOOD_NODE);
    let mut good: Vec<IpNet> = hostile::GOOD
        .iter()
        .map(|g| {
            IpNet::V4(ipnet::Ipv4Net::new(hostile::ip(b, g), 32).expect("32 is a valid prefix"))
        })
        .collect();
    good.push(IpNet::V4(good_node));
    let (r, _) = eventually(CONVERGE, || {
        for good in hostile::GOOD {
            let name = name_of(&format!("{good}.{K8S_NAMESPACE}"), b);
            let m = dns::query(&from.netns, dns_server(), &name, RecordType::A, REQUEST)
                .map_err(|e| e.to_string())?;
            if m.metadata.response_code != ResponseCode::NXDomain {
                return Err(format!("{name} still answers after the delete"));
            }
        }
        // IPVS drains a withdrawn service at weight 0 for `proxy.drain_grace` (2 s in the
        // lab) before deleting it: wait for that too, so the next check's withdrawal watcher
        // does not see the set leave.
        for node in &a.nodes {
            let left = programmed(lab, node, &good)?;
            if !left.is_empty() {
                return Err(format!("{}: still programmed: {left:?}", node.name));
            }
        }
        Ok(())
    });
    r
}
