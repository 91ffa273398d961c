//! Creates and removes the lab's namespaces, veths, bridge, addresses and routes with iproute2
//! (`ip -n NS ...`, which enters the namespace only for the netlink socket and needs no private
//! mount namespace, unlike `ip netns exec`).

use super::topology::{
    Node, Topology, NODE_UNDERLAY_IF, POD_IF, UNDERLAY_BRIDGE, UNDERLAY_HUB, UNDERLAY_PREFIX,
};
use super::LabError;
use sdnlinkd::netns::{NetNs, NETNS_RUN_DIR};
use std::path::Path;
use std::process::Command;

/// Runs `ip ARGS`, returning stdout.
pub fn ip(args: &[&str]) -> Result<String, LabError> {
    run("ip", args)
}

/// Runs a program, returning stdout; a non-zero exit is an error carrying stderr.
pub fn run(prog: &str, args: &[&str]) -> Result<String, LabError> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .map_err(|e| LabError::io(format!("running {prog}"), e))?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: format!("{prog} {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether a namespace is pinned under /run/netns.
pub fn netns_exists(name: &str) -> bool {
    Path::new(NETNS_RUN_DIR).join(name).exists()
}

/// Writes a sysctl under /proc/sys/net inside a namespace (those files are per namespace of
/// the writing thread).
pub fn sysctl(netns: &str, key: &str, value: &str) -> Result<(), LabError> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let value = value.to_string();
    let ns = NetNs::open(netns)?;
    ns.run(move || std::fs::write(&path, value))?
        .map_err(|e| LabError::io(format!("sysctl {key} in {netns}"), e))
}

/// Namespaces created so far; dropping it removes them (newest first) unless disarmed, so a
/// failure half-way through `up` leaves nothing behind.
#[derive(Debug, Default)]
pub struct Created {
    namespaces: Vec<String>,
    armed: bool,
}

impl Created {
    /// The namespaces created, oldest first.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// Keeps the namespaces on drop (the lab stays up; `down` removes them).
    pub fn disarm(mut self) -> Vec<String> {
        self.armed = false;
        std::mem::take(&mut self.namespaces)
    }

    fn add(&mut self, name: &str) -> Result<(), LabError> {
        ip(&["netns", "add", name])?;
        self.namespaces.push(name.to_string());
        self.armed = true;
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(())
    }
}

impl Drop for Created {
    fn drop(&mut self) {
        if self.armed {
            delete_namespaces(&self.namespaces);
        }
    }
}

/// Deletes the given namespaces that still exist, newest first; returns the ones that could
/// not be deleted, with why.
pub fn delete_namespaces(names: &[String]) -> Vec<(String, LabError)> {
    let mut failed = Vec::new();
    for name in names.iter().rev() {
        if netns_exists(name) {
            if let Err(e) = ip(&["netns", "del", name]) {
                failed.push((name.clone(), e));
            }
        }
    }
    failed
}

/// Builds the whole topology of `plan`: underlay, nodes, pods. Refuses if any of its
/// namespaces already exists (never adopts what it did not create).
pub fn create(plan: &Topology) -> Result<Created, LabError> {
    if let Some(existing) = plan
        .lab_namespaces()
        .into_iter()
        .chain(plan.nodes().map(|n| n.daemon_netns.clone()))
        .find(|n| netns_exists(n))
    {
        return Err(LabError::AlreadyUp(Path::new(NETNS_RUN_DIR).join(existing)));
    }
    let mut created = Created::default();
    let ul = plan.underlay_netns.as_str();
    created.add(ul)?;
    ip(&[
        "-n",
        ul,
        "link",
        "add",
        "name",
        UNDERLAY_BRIDGE,
        "type",
        "bridge",
    ])?;
    let hub = format!("{UNDERLAY_HUB}/{UNDERLAY_PREFIX}");
    ip(&["-n", ul, "addr", "add", &hub, "dev", UNDERLAY_BRIDGE])?;
    ip(&["-n", ul, "link", "set", UNDERLAY_BRIDGE, "up"])?;
    for node in plan.nodes() {
        create_node(plan, node, &mut created)?;
    }
    // Inside a cluster the lab plays the CNI: each node reaches its sibling nodes' pod subnets
    // over the underlay, as a flat pod network would.
    for cluster in &plan.clusters {
        for node in &cluster.nodes {
            for other in cluster.nodes.iter().filter(|o| o.name != node.name) {
                ip(&[
                    "-n",
                    &node.netns,
                    "route",
                    "add",
                    &other.pod_subnet.to_string(),
                    "via",
                    &other.underlay_addr.to_string(),
                    "dev",
                    NODE_UNDERLAY_IF,
                ])?;
            }
        }
    }
    Ok(created)
}

fn create_node(plan: &Topology, node: &Node, created: &mut Created) -> Result<(), LabError> {
    let ns = node.netns.as_str();
    created.add(ns)?;
    // A fresh namespace does not forward; the node routes its pods and the daemon's traffic.
    sysctl(ns, "net.ipv4.ip_forward", "1")?;
    ip(&[
        "-n",
        ns,
        "link",
        "add",
        "name",
        NODE_UNDERLAY_IF,
        "type",
        "veth",
        "peer",
        "name",
        &node.underlay_if,
        "netns",
        &plan.underlay_netns,
    ])?;
    let addr = format!("{}/{UNDERLAY_PREFIX}", node.underlay_addr);
    ip(&["-n", ns, "addr", "add", &addr, "dev", NODE_UNDERLAY_IF])?;
    ip(&["-n", ns, "link", "set", NODE_UNDERLAY_IF, "up"])?;
    let ul = plan.underlay_netns.as_str();
    ip(&[
        "-n",
        ul,
        "link",
        "set",
        &node.underlay_if,
        "master",
        UNDERLAY_BRIDGE,
    ])?;
    ip(&["-n", ul, "link", "set", &node.underlay_if, "up"])?;
    let gw = format!("{}/32", node.gateway);
    for pod in &node.pods {
        created.add(&pod.netns)?;
        ip(&[
            "-n",
            ns,
            "link",
            "add",
            "name",
            &pod.node_if,
            "type",
            "veth",
            "peer",
            "name",
            POD_IF,
            "netns",
            &pod.netns,
        ])?;
        // Routed pod veths (as Calico does): the gateway /32 sits on every pod veth of the
        // node, each pod gets a /32 and a host route, so no bridge or proxy ARP is needed.
        ip(&["-n", ns, "addr", "add", &gw, "dev", &pod.node_if])?;
        ip(&["-n", ns, "link", "set", &pod.node_if, "up"])?;
        let pod_addr = pod.addr.to_string();
        ip(&[
            "-n",
            ns,
            "route",
            "add",
            &pod_addr,
            "dev",
            &pod.node_if,
            "src",
            &node.gateway.to_string(),
        ])?;
        let p = pod.netns.as_str();
        ip(&[
            "-n",
            p,
            "addr",
            "add",
            &format!("{pod_addr}/32"),
            "dev",
            POD_IF,
        ])?;
        ip(&["-n", p, "link", "set", POD_IF, "up"])?;
        let gw_addr = node.gateway.to_string();
        ip(&[
            "-n", p, "route", "add", &gw_addr, "dev", POD_IF, "scope", "link",
        ])?;
        ip(&[
            "-n", p, "route", "add", "default", "via", &gw_addr, "dev", POD_IF,
        ])?;
    }
    Ok(())
}
