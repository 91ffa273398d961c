//! Checks of the OpenShift-shaped cluster and of the shipped RBAC:
//! - `openshift-hostsubnet A->B`: cluster `B` is OpenShift SDN-shaped (its Nodes carry no pod
//!   CIDRs; HostSubnets do). Replacing one node's HostSubnet subnet moves that peer's allowed IPs
//!   on every node of `A` within one sync; a HostSubnet outside `B`'s `pod_cidrs` is refused
//!   (nothing of it programmed, counted in status under `node_subnet_outside_pod_cidrs`, logged
//!   naming the subnet); restoring it brings the pods back, also when a step failed.
//! - `rbac-shipped-roles`: the daemons ran the whole lab with exactly packaging/rbac.yaml's roles
//!   (no request refused); a verb taken from the remote role shows in status naming the verb and
//!   the resource, while what the node has stays; given back, the cluster is current again.

use super::api::Access;
use super::checks::{eventually, first_pod, outcome, remote_api, vip, Outcome, Pods, CONVERGE};
use super::daemon;
use super::faults::cluster_states;
use super::hostile::wg_peers;
use super::manifests::{host_subnet_yaml, svc};
use super::run::Lab;
use super::topology::{Cluster, Node, POD_PORT};
use ipnet::Ipv4Net;
use sdnlinkd::clusters::ANNOTATION_PUBLIC_KEY;
use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

/// A subnet outside every lab pod CIDR (10.0.0.0/8 holds them all): the trust rule must drop it.
const OUTSIDE: &str = "172.31.77.0/24";

/// The status `skipped` key of a HostSubnet (or Node) subnet outside the pod CIDRs.
const SKIP_REASON: &str = "node_subnet_outside_pod_cidrs";

/// Every string of a JSON document.
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(m) => m.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

/// The status entry of cluster `name` on `node`.
fn cluster_status(lab: &Lab, node: &Node, name: &str) -> Result<Value, String> {
    let bin = lab.daemon_bin.clone().ok_or("no daemon binary")?;
    let v = daemon::status(&bin, &lab.plan.node_config_path(node)).map_err(|e| e.to_string())?;
    v["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == name)
        .cloned()
        .ok_or_else(|| format!("{}: status lists no cluster {name}", node.name))
}

/// The allowed IPs of the peer with public key `key` on `node` (`None`: no such peer).
fn allowed_ips(node: &Node, key: &str) -> Result<Option<Vec<String>>, String> {
    Ok(wg_peers(node)?
        .into_iter()
        .find(|(k, _, _)| k == key)
        .map(|(_, _, ips)| ips.into_iter().filter(|i| i != "(none)").collect()))
}

/// Waits until `want` holds for the peer `key` on every node of `a`; returns the slowest time.
fn on_every_node(
    a: &Cluster,
    key: &str,
    what: &str,
    want: impl Fn(Option<&[String]>) -> bool,
) -> Result<f64, String> {
    let start = Instant::now();
    for node in &a.nodes {
        let (r, _) = eventually(CONVERGE, || {
            let ips = allowed_ips(node, key)?;
            if want(ips.as_deref()) {
                Ok(())
            } else {
                Err(format!(
                    "{}: peer allowed IPs {ips:?}, want {what}",
                    node.name
                ))
            }
        });
        r?;
    }
    Ok(start.elapsed().as_secs_f64())
}

pub fn host_subnet(lab: &Lab, pods: &Pods, a: &Cluster, b: &Cluster) -> Outcome {
    let r = (|| {
        let api = remote_api(lab, b)?;
        // What an operator copies into the cluster's config is what the lab configured.
        let cn = api
            .object("ClusterNetwork", "", "default")
            .map_err(|e| e.to_string())?;
        let (pod, svc_net) = (b.pod_cidr.to_string(), b.service_cidr.to_string());
        if cn["clusterNetworks"][0]["CIDR"] != pod.as_str()
            || cn["serviceNetwork"] != svc_net.as_str()
        {
            return Err(format!(
                "ClusterNetwork default of {} says clusterNetworks {} serviceNetwork {}, the \
                 config says pod_cidrs [{pod}] service_cidrs [{svc_net}]",
                b.name, cn["clusterNetworks"], cn["serviceNetwork"]
            ));
        }
        let moved = &b.nodes[1];
        let key = api
            .node_annotations(&moved.name)
            .map_err(|e| e.to_string())?
            .get(ANNOTATION_PUBLIC_KEY)
            .cloned()
            .ok_or_else(|| format!("{} publishes no key", moved.name))?;
        let o = b.pod_cidr.network().octets();
        let spare = Ipv4Net::new(Ipv4Addr::new(o[0], o[1], 200, 0), 24)
            .expect("24 is a valid IPv4 prefix length");
        if !b.pod_cidr.contains(&spare) || b.nodes.iter().any(|n| n.pod_subnet == spare) {
            return Err(format!("{spare} is not a free subnet of {}", b.pod_cidr));
        }
        let original = moved.pod_subnet.to_string();
        let only = |net: String| move |ips: Option<&[String]>| ips == Some(&[net.clone()][..]);

        let changed = (|| -> Result<(f64, f64), String> {
            api.apply_yaml(&host_subnet_yaml(moved, &spare.to_string()))
                .map_err(|e| e.to_string())?;
            let t_move = on_every_node(a, &key, &spare.to_string(), only(spare.to_string()))
                .map_err(|e| format!("after moving {} to {spare}: {e}", moved.name))?;

            api.apply_yaml(&host_subnet_yaml(moved, OUTSIDE))
                .map_err(|e| e.to_string())?;
            let t_refuse = on_every_node(a, &key, "none of 172.31.77.0/24", |ips| {
                ips.is_none_or(|ips| ips.iter().all(|i| i != OUTSIDE && i != &spare.to_string()))
            })
            .map_err(|e| format!("after a HostSubnet outside the pod CIDRs: {e}"))?;
            // The refusal is counted in status under its reason and logged with the subnet.
            for node in &a.nodes {
                let log = lab.plan.node_dir(node).join("daemon.log");
                let (r, _) = eventually(CONVERGE, || {
                    let c = cluster_status(lab, node, &b.name)?;
                    let n = c["skipped"][SKIP_REASON].as_u64().unwrap_or(0);
                    let text = std::fs::read_to_string(&log)
                        .map_err(|e| format!("{}: {e}", log.display()))?;
                    if n >= 1 && text.contains(OUTSIDE) {
                        Ok(())
                    } else {
                        Err(format!(
                            "{}: status of {} counts {n} {SKIP_REASON} (want >= 1); daemon.log \
                             names {OUTSIDE}: {}",
                            node.name,
                            b.name,
                            text.contains(OUTSIDE)
                        ))
                    }
                });
                r?;
            }
            Ok((t_move, t_refuse))
        })();
        // Restored whatever happened above: later checks need every pod of `b` reachable.
        let restored = api
            .apply_yaml(&host_subnet_yaml(moved, &original))
            .map_err(|e| e.to_string());
        let (t_move, t_refuse) = changed?;
        restored?;
        let t_back = on_every_node(a, &key, &original, only(original.clone()))
            .map_err(|e| format!("after restoring {original}: {e}"))?;
        let from = first_pod(a, 0);
        let to = &moved.pods[0];
        let addr = SocketAddr::from((to.addr, POD_PORT));
        let (r, _) = eventually(CONVERGE, || {
            let got = pods.tcp(from, addr)?;
            if got == to.name {
                Ok(())
            } else {
                Err(format!("{addr} answered by {got:?}, want {}", to.name))
            }
        });
        r.map_err(|e| format!("after restoring {original}: {e}"))?;
        Ok(format!(
            "ClusterNetwork default {pod} (service {svc_net}) as configured; {} HostSubnet {original} -> {spare}: allowed IPs moved on {} nodes in {t_move:.2}s; \
             {OUTSIDE} (outside {}) refused, counted and logged in {t_refuse:.2}s; restored in \
             {t_back:.2}s, {} -> {addr} answered {}",
            moved.name,
            a.nodes.len(),
            b.pod_cidr,
            from.name,
            to.name
        ))
    })();
    outcome(format!("openshift-hostsubnet {}->{}", a.name, b.name), r)
}

pub fn rbac(lab: &Lab, pods: &Pods, a: &Cluster, b: &Cluster) -> Outcome {
    let r = (|| {
        let denied: u64 = lab.apis.iter().map(|x| x.denials()).sum();
        if denied != 0 {
            return Err(format!(
                "the shipped roles refused {denied} requests of the daemons during the lab run \
                 (see the daemons' logs for the verb and resource)"
            ));
        }
        let api = remote_api(lab, b)?;
        let role = Access::Remote.shipped_role().map_err(|e| e.to_string())?;
        api.set_role(Access::Remote, role.without("list", "endpointslices"));
        // Every watch ends with 410 Gone; the relist of EndpointSlices is what the role refuses.
        api.expire();
        let want = "cannot list resource \"endpointslices\" in API group \"discovery.k8s.io\"";
        let shown = (|| {
            let mut reason = String::new();
            for node in &a.nodes {
                let (r, _) = eventually(CONVERGE, || {
                    let c = cluster_status(lab, node, &b.name)?;
                    let mut texts = Vec::new();
                    strings(&c["state"], &mut texts);
                    match texts.into_iter().find(|t| t.contains(want)) {
                        Some(t) if c["state"]["state"] != "current" => Ok(t),
                        _ => Err(format!(
                            "{}: state of {} is {}, want one naming `{want}`",
                            node.name, b.name, c["state"]
                        )),
                    }
                });
                reason = r?;
            }
            let to = vip(b, svc::ECHO)?;
            let got = pods.tcp(first_pod(a, 0), to)?;
            if !b.nodes.iter().any(|n| n.pods.iter().any(|p| p.name == got)) {
                return Err(format!("{to} answered by {got:?}, not a pod of {}", b.name));
            }
            Ok((reason, to, got))
        })();
        api.set_role(Access::Remote, role);
        let (reason, to, got) = shown?;
        let start = Instant::now();
        for node in &a.nodes {
            let (r, _) = eventually(CONVERGE, || {
                let bin = lab.daemon_bin.clone().ok_or("no daemon binary")?;
                let v = daemon::status(&bin, &lab.plan.node_config_path(node))
                    .map_err(|e| e.to_string())?;
                match cluster_states(&v).get(&b.name).map(String::as_str) {
                    Some("current") => Ok(()),
                    other => Err(format!("{}: {} is {other:?}", node.name, b.name)),
                }
            });
            r.map_err(|e| format!("after giving list back: {e}"))?;
        }
        Ok(format!(
            "0 requests refused over the run with packaging/rbac.yaml's roles; without list on \
             endpointslices every node of {} said {reason:?} while {to} still answered ({got}); \
             current again {:.1}s after the role was restored",
            a.name,
            start.elapsed().as_secs_f64()
        ))
    })();
    outcome("rbac-shipped-roles", r)
}
