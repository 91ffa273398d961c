//! The default manifests (tests/lab/<cluster>/*.yaml) as a function of the plan, so their pod
//! addresses and node subnets always match the topology. `sdnlink-lab manifests --out DIR`
//! rewrites them; a test keeps the checked-in copies equal to this output.

use super::topology::{Cluster, Node, Pod, K8S_NAMESPACE, POD_PORT};
use std::net::Ipv4Addr;

/// Services every cluster serves (names are the same in every cluster so `cluster.all` merges).
pub mod svc {
    /// TCP and UDP, all pods of the cluster: load balancing and pod-name answers.
    pub const ECHO: &str = "echo";
    /// ClientIP affinity, all pods.
    pub const STICKY: &str = "sticky";
    /// Endpoints scaled down and up by the churn check.
    pub const CHURN: &str = "churn";
    /// `clusterIP: None`.
    pub const HEADLESS: &str = "headless";
    /// `type: ExternalName` to the upstream's test name.
    pub const EXTERNAL: &str = "ext";
    /// ClusterIP outside the cluster's service CIDR: must never be programmed.
    pub const HOSTILE: &str = "hostile";
}

/// Service port every proxied lab Service exposes.
pub const SERVICE_PORT: u16 = 80;

/// ClusterIP of a lab service in `cluster` (the `.0.N` addresses of its service CIDR).
pub fn cluster_ip(cluster: &Cluster, name: &str) -> Option<Ipv4Addr> {
    let o = cluster.service_cidr.network().octets();
    let last = match name {
        svc::ECHO => 10,
        svc::STICKY => 11,
        svc::CHURN => 12,
        // Outside every lab service CIDR (10.110-10.140/16): the trust rule must drop it.
        svc::HOSTILE => return Some(Ipv4Addr::new(10, 250, o[1], 10)),
        _ => return None,
    };
    Some(Ipv4Addr::new(o[0], o[1], 0, last))
}

/// The files of one cluster's manifest directory: (file name, YAML). An OpenShift-shaped
/// cluster ([`Cluster::openshift`]) has Nodes without pod CIDRs, `hostsubnets.yaml` and
/// `clusternetwork.yaml`.
pub fn cluster_files(cluster: &Cluster) -> Vec<(String, String)> {
    let mut files = vec![
        ("nodes.yaml".into(), nodes_yaml(cluster)),
        ("services.yaml".into(), services_yaml(cluster)),
        ("endpointslices.yaml".into(), slices_yaml(cluster)),
    ];
    if cluster.openshift {
        files.push(("hostsubnets.yaml".into(), host_subnets_yaml(cluster)));
        files.push(("clusternetwork.yaml".into(), cluster_network_yaml(cluster)));
    }
    files
}

fn nodes_yaml(cluster: &Cluster) -> String {
    let mut s = String::new();
    for n in &cluster.nodes {
        s.push_str(&format!(
            "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: {}\n  labels:\n    kubernetes.io/hostname: {}\n",
            n.name, n.name
        ));
        // OpenShift SDN leaves spec.podCIDRs unset: the node's subnet is its HostSubnet's.
        if !cluster.openshift {
            s.push_str(&format!(
                "spec:\n  podCIDR: {}\n  podCIDRs:\n  - {}\n",
                n.pod_subnet, n.pod_subnet
            ));
        }
    }
    s
}

/// One `network.openshift.io/v1` HostSubnet, named after its node as OpenShift SDN names them.
pub fn host_subnet_yaml(node: &Node, subnet: &str) -> String {
    format!(
        "---\napiVersion: network.openshift.io/v1\nkind: HostSubnet\nmetadata:\n  name: {}\nhost: {}\nhostIP: {}\nsubnet: {subnet}\n",
        node.name, node.name, node.underlay_addr
    )
}

fn host_subnets_yaml(cluster: &Cluster) -> String {
    cluster
        .nodes
        .iter()
        .map(|n| host_subnet_yaml(n, &n.pod_subnet.to_string()))
        .collect()
}

/// OpenShift SDN's `default` ClusterNetwork: the cluster's pod network and the host bits of
/// each node's HostSubnet (`hostSubnetLength`), and its service network; what an operator
/// copies into the cluster's `pod_cidrs` and `service_cidrs`.
pub fn cluster_network_yaml(cluster: &Cluster) -> String {
    let host_bits = cluster
        .nodes
        .first()
        .map_or(8, |n| 32 - u32::from(n.pod_subnet.prefix_len()));
    format!(
        "---\napiVersion: network.openshift.io/v1\nkind: ClusterNetwork\nmetadata:\n  name: default\nclusterNetworks:\n- CIDR: {pod}\n  hostSubnetLength: {host_bits}\nnetwork: {pod}\nhostsubnetlength: {host_bits}\nserviceNetwork: {svc}\npluginName: redhat/openshift-ovs-networkpolicy\n",
        pod = cluster.pod_cidr,
        svc = cluster.service_cidr,
    )
}

fn service_header(name: &str) -> String {
    format!("---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {K8S_NAMESPACE}\nspec:\n")
}

fn port(name: &str, proto: &str, port: u16, target: u16) -> String {
    format!("  - name: {name}\n    protocol: {proto}\n    port: {port}\n    targetPort: {target}\n")
}

fn services_yaml(cluster: &Cluster) -> String {
    let ip = |n| {
        cluster_ip(cluster, n)
            .expect("every proxied lab service has a ClusterIP")
            .to_string()
    };
    let mut s = String::new();
    s.push_str(&service_header(svc::ECHO));
    s.push_str(&format!(
        "  type: ClusterIP\n  clusterIP: {}\n  clusterIPs:\n  - {}\n  ports:\n",
        ip(svc::ECHO),
        ip(svc::ECHO)
    ));
    s.push_str(&port("tcp", "TCP", SERVICE_PORT, POD_PORT));
    s.push_str(&port("udp", "UDP", SERVICE_PORT, POD_PORT));
    s.push_str(&service_header(svc::STICKY));
    s.push_str(&format!(
        "  type: ClusterIP\n  clusterIP: {}\n  clusterIPs:\n  - {}\n  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 600\n  ports:\n",
        ip(svc::STICKY), ip(svc::STICKY)
    ));
    s.push_str(&port("tcp", "TCP", SERVICE_PORT, POD_PORT));
    s.push_str(&service_header(svc::CHURN));
    s.push_str(&format!(
        "  type: ClusterIP\n  clusterIP: {}\n  clusterIPs:\n  - {}\n  ports:\n",
        ip(svc::CHURN),
        ip(svc::CHURN)
    ));
    s.push_str(&port("tcp", "TCP", SERVICE_PORT, POD_PORT));
    s.push_str(&service_header(svc::HEADLESS));
    s.push_str("  clusterIP: None\n  clusterIPs:\n  - None\n  ports:\n");
    s.push_str(&port("tcp", "TCP", POD_PORT, POD_PORT));
    s.push_str(&service_header(svc::EXTERNAL));
    s.push_str("  type: ExternalName\n  externalName: forwarded.lab.test\n");
    s.push_str("# Hostile: its ClusterIP lies outside this cluster's service CIDR.\n");
    s.push_str(&service_header(svc::HOSTILE));
    s.push_str(&format!(
        "  type: ClusterIP\n  clusterIP: {}\n  clusterIPs:\n  - {}\n  ports:\n",
        ip(svc::HOSTILE),
        ip(svc::HOSTILE)
    ));
    s.push_str(&port("tcp", "TCP", SERVICE_PORT, POD_PORT));
    s
}

/// An EndpointSlice of service `service` holding `pods` (all ready), with the TCP port and,
/// when `udp`, the UDP port.
pub fn endpoint_slice_yaml(service: &str, pods: &[(&str, &Pod)], udp: bool) -> String {
    let mut s = format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-lab\n  namespace: {K8S_NAMESPACE}\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: IPv4\nendpoints:\n"
    );
    if pods.is_empty() {
        s.truncate(s.len() - 1);
        s.push_str(" []\n");
    }
    for (node, pod) in pods {
        s.push_str(&format!(
            "- addresses:\n  - {}\n  hostname: {}\n  nodeName: {}\n  conditions:\n    ready: true\n    serving: true\n    terminating: false\n",
            pod.addr, pod.name, node
        ));
    }
    s.push_str(&format!(
        "ports:\n- name: tcp\n  protocol: TCP\n  port: {POD_PORT}\n"
    ));
    if udp {
        s.push_str(&format!(
            "- name: udp\n  protocol: UDP\n  port: {POD_PORT}\n"
        ));
    }
    s
}

fn slices_yaml(cluster: &Cluster) -> String {
    let pods: Vec<(&str, &Pod)> = cluster
        .nodes
        .iter()
        .flat_map(|n| n.pods.iter().map(move |p| (n.name.as_str(), p)))
        .collect();
    let mut s = String::new();
    s.push_str(&endpoint_slice_yaml(svc::ECHO, &pods, true));
    s.push_str(&endpoint_slice_yaml(svc::STICKY, &pods, false));
    s.push_str(&endpoint_slice_yaml(svc::CHURN, &pods, false));
    s.push_str(&endpoint_slice_yaml(svc::HEADLESS, &pods, false));
    s.push_str(&endpoint_slice_yaml(svc::HOSTILE, &pods, false));
    s
}

/// The hostile manifest set of one cluster (tests/lab/hostile/<cluster>/*.yaml): one file per
/// kind of attack, each with good objects mixed in. The `hostile` check applies them to the
/// cluster's API server, asserts that nothing hostile reaches a remote node's kernel or DNS while
/// the good objects answer and proxy, and deletes them again.
pub mod hostile {
    use super::*;
    use ipnet::{IpNet, Ipv4Net};

    /// Good Services of the set, each in the file of one attack: they must answer in DNS and
    /// proxy to the cluster's pods.
    pub const GOOD: [&str; 4] = ["names-ok", "addr-ok", "conflict-ok", "sizes-ok"];
    /// Names that must never answer (`NAME.lab.svc.cluster.<c>`): invalid names, the ClusterIP
    /// conflict's loser, the Service with too many ports.
    pub const BAD_NAMES: [&str; 5] = [
        "shadow.echo.lab",
        "upper.lab",
        "badns.evil_ns",
        "zz-conflict.lab",
        "many-ports.lab",
    ];
    /// Node of the set that is a good peer (valid subnet, unicast endpoint).
    pub const GOOD_NODE: &str = "good-extra";

    fn o(c: &Cluster) -> ([u8; 4], [u8; 4]) {
        (
            c.service_cidr.network().octets(),
            c.pod_cidr.network().octets(),
        )
    }

    /// ClusterIP of a Service of the set.
    pub fn ip(c: &Cluster, name: &str) -> Ipv4Addr {
        let (s, _) = o(c);
        let last = match name {
            "shadow.echo" => 20,
            "Upper" => 21,
            "badns" => 22,
            "names-ok" => 23,
            "addr-ok" => 24,
            "conflict-ok" => 25,
            "many-ports" => 26,
            "sizes-ok" => 27,
            // Takes echo's address: must lose to it.
            "zz-conflict" => return super::cluster_ip(c, svc::ECHO).expect("echo has a ClusterIP"),
            _ => 99,
        };
        Ipv4Addr::new(s[0], s[1], 0, last)
    }

    /// The pod subnet of a Node of the set.
    pub fn node_subnet(c: &Cluster, name: &str) -> Ipv4Net {
        let (_, p) = o(c);
        let net =
            |a, b, c, len| Ipv4Net::new(Ipv4Addr::new(a, b, c, 0), len).expect("valid prefix");
        match name {
            "evil-loopback" => net(p[0], p[1], 200, 24),
            "evil-multicast" => net(p[0], p[1], 201, 24),
            GOOD_NODE => net(p[0], p[1], 202, 24),
            "evil-keythief" => net(p[0], p[1], 203, 24),
            "evil-subnet" => net(10, 250, p[1], 24),
            // Everything: every cluster's pods and services.
            _ => net(10, 0, 0, 8),
        }
    }

    /// Address ranges of which nothing may reach a remote node's kernel (VIPs, routes, nft,
    /// IPVS, WireGuard allowed IPs), and exact prefixes that must not be routed or allowed.
    pub fn markers(c: &Cluster) -> (Vec<IpNet>, Vec<IpNet>) {
        let (_, p) = o(c);
        let host = |a: Ipv4Addr| IpNet::V4(Ipv4Net::new(a, 32).expect("32 is a valid prefix"));
        let mut ranges: Vec<IpNet> = ["shadow.echo", "Upper", "badns", "many-ports"]
            .iter()
            .map(|n| host(ip(c, n)))
            .collect();
        ranges.push(host(Ipv4Addr::new(169, 254, 169, 254)));
        // The lab's hostile ClusterIPs, foreign endpoints and the foreign node subnet.
        ranges.push(IpNet::V4(
            Ipv4Net::new(Ipv4Addr::new(10, 250, p[1], 0), 24).expect("valid prefix"),
        ));
        // The over-large slice's endpoints.
        ranges.push(IpNet::V4(
            Ipv4Net::new(Ipv4Addr::new(p[0], p[1], 150, 0), 22).expect("valid prefix"),
        ));
        for n in ["evil-loopback", "evil-multicast", "evil-keythief"] {
            ranges.push(IpNet::V4(node_subnet(c, n)));
        }
        (ranges, vec![IpNet::V4(node_subnet(c, "evil-everything"))])
    }

    /// A public key of the set: 32 bytes that differ per cluster and node.
    pub fn key(c: &Cluster, i: u8) -> String {
        use base64::Engine;
        let (_, p) = o(c);
        let bytes: Vec<u8> = (0u8..32)
            .map(|j| {
                j.wrapping_mul(37)
                    .wrapping_add(p[1].wrapping_mul(101))
                    .wrapping_add(i.wrapping_mul(13))
                    ^ 0x5a
            })
            .collect();
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn service(name: &str, ns: &str, ip: Ipv4Addr, ports: usize) -> String {
        let mut s = format!(
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  type: ClusterIP\n  clusterIP: {ip}\n  clusterIPs:\n  - {ip}\n  ports:\n"
        );
        s.push_str(&port("tcp", "TCP", SERVICE_PORT, POD_PORT));
        for i in 1..ports {
            s.push_str(&port(&format!("p{i}"), "TCP", 10_000 + i as u16, POD_PORT));
        }
        s
    }

    fn slice(service: &str, ns: &str, name: &str, addrs: &[Ipv4Addr]) -> String {
        let mut s = format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: IPv4\nendpoints:\n"
        );
        for a in addrs {
            s.push_str(&format!(
                "- addresses:\n  - {a}\n  conditions:\n    ready: true\n"
            ));
        }
        s.push_str(&format!(
            "ports:\n- name: tcp\n  protocol: TCP\n  port: {POD_PORT}\n"
        ));
        s
    }

    fn pods(c: &Cluster) -> Vec<Ipv4Addr> {
        c.nodes
            .iter()
            .flat_map(|n| n.pods.iter().map(|p| p.addr))
            .collect()
    }

    /// A Node with sdnlinkd's annotations.
    pub fn node(c: &Cluster, name: &str, key: &str, endpoint: &str) -> String {
        let subnet = node_subnet(c, name);
        format!(
            "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  annotations:\n    {}: {key}\n    {}: \"{endpoint}\"\nspec:\n  podCIDR: {subnet}\n  podCIDRs:\n  - {subnet}\n",
            sdnlinkd::clusters::ANNOTATION_PUBLIC_KEY,
            sdnlinkd::clusters::ANNOTATION_ENDPOINT,
        )
    }

    /// The files: (file name, YAML).
    pub fn files(c: &Cluster) -> Vec<(String, String)> {
        let ns = K8S_NAMESPACE;
        let pods = pods(c);
        let (_, p) = o(c);
        let mut names = String::from("# Names the API server would refuse: a dot (it would shadow echo's records), upper\n# case, an underscore in the namespace. Good: names-ok.\n");
        for (name, n) in [
            ("shadow.echo", ns),
            ("Upper", ns),
            ("badns", "Evil_NS"),
            ("names-ok", ns),
        ] {
            names.push_str(&service(name, n, ip(c, name), 1));
            names.push_str(&slice(
                name,
                n,
                &format!("{}-lab", name.to_ascii_lowercase().replace('.', "-")),
                &pods,
            ));
        }

        let mut addrs = String::from("# Addresses outside the cluster's CIDRs: a ClusterIP on the cloud metadata address and one\n# outside every service CIDR; endpoints on loopback, the metadata address and outside the\n# pod CIDR, mixed into the good Service addr-ok's slice.\n");
        addrs.push_str(&service(
            "metadata",
            ns,
            Ipv4Addr::new(169, 254, 169, 254),
            1,
        ));
        addrs.push_str(&service("outside", ns, Ipv4Addr::new(10, 250, p[1], 21), 1));
        addrs.push_str(&service("addr-ok", ns, ip(c, "addr-ok"), 1));
        let mut mixed = pods.clone();
        mixed.extend([
            Ipv4Addr::LOCALHOST,
            Ipv4Addr::new(169, 254, 169, 254),
            Ipv4Addr::new(10, 250, p[1], 30),
        ]);
        addrs.push_str(&slice("addr-ok", ns, "addr-ok-lab", &mixed));

        let mut conflicts = String::from("# zz-conflict claims echo's ClusterIP: echo is older (and sorts first), so it keeps the\n# address, in DNS and PTR too. Good: conflict-ok.\n");
        for name in ["zz-conflict", "conflict-ok"] {
            conflicts.push_str(&service(name, ns, ip(c, name), 1));
            conflicts.push_str(&slice(name, ns, &format!("{name}-lab"), &pods));
        }

        let mut sizes = String::from("# Over the API server's limits: a Service with 101 ports, a slice with 1,001 endpoints.\n# Good: sizes-ok, whose other slice holds the pods.\n");
        sizes.push_str(&service(
            "many-ports",
            ns,
            ip(c, "many-ports"),
            sdnlinkd::clusters::convert::MAX_SERVICE_PORTS + 1,
        ));
        sizes.push_str(&slice("many-ports", ns, "many-ports-lab", &pods));
        sizes.push_str(&service("sizes-ok", ns, ip(c, "sizes-ok"), 1));
        sizes.push_str(&slice("sizes-ok", ns, "sizes-ok-lab", &pods));
        let huge: Vec<Ipv4Addr> = (0..=sdnlinkd::clusters::convert::MAX_SLICE_ENDPOINTS as u32)
            .map(|i| Ipv4Addr::new(p[0], p[1], 150 + (i / 250) as u8, 1 + (i % 250) as u8))
            .collect();
        sizes.push_str(&slice("sizes-ok", ns, "sizes-ok-huge", &huge));

        let mut nodes = String::from("# WireGuard endpoints a remote must not make the node send to (loopback, multicast),\n# pod subnets outside the cluster's pod CIDR (one of them covering every cluster). Good:\n# good-extra. The key thief is added by the check: it needs a real node's key.\n");
        for (i, (name, ep)) in [
            ("evil-loopback", "127.0.0.1:51820"),
            ("evil-multicast", "224.0.0.1:51820"),
            ("evil-subnet", "192.0.2.250:51820"),
            ("evil-everything", "192.0.2.249:51820"),
            (GOOD_NODE, "192.0.2.251:51820"),
        ]
        .into_iter()
        .enumerate()
        {
            nodes.push_str(&node(c, name, &key(c, i as u8), ep));
        }
        vec![
            ("names.yaml".into(), names),
            ("addresses.yaml".into(), addrs),
            ("conflicts.yaml".into(), conflicts),
            ("sizes.yaml".into(), sizes),
            ("nodes.yaml".into(), nodes),
        ]
    }

    /// Every object of the set as (kind, namespace, name), to delete them again.
    pub fn objects(c: &Cluster) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for (_, text) in files(c) {
            for doc in text.split("\n---\n") {
                let v: serde_yaml::Value =
                    match serde_yaml::from_str(doc.trim_start_matches("---\n")) {
                        Ok(v) => v,
                        Err(_) => continue,
                    };
                let s = |x: &serde_yaml::Value| x.as_str().unwrap_or_default().to_string();
                if v["kind"].is_string() {
                    out.push((
                        s(&v["kind"]),
                        s(&v["metadata"]["namespace"]),
                        s(&v["metadata"]["name"]),
                    ));
                }
            }
        }
        out
    }
}

/// A benchmark scale: extra Services per cluster, each with this many endpoints
/// (`sdnlink-lab --scale 10000x10`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scale {
    pub services: u32,
    pub endpoints: u32,
}

impl std::str::FromStr for Scale {
    type Err = String;
    fn from_str(s: &str) -> Result<Scale, String> {
        let bad = || format!("--scale {s:?}: want SERVICESxENDPOINTS, e.g. 10000x10");
        let (a, b) = s.split_once('x').ok_or_else(bad)?;
        let scale = Scale {
            services: a.parse().map_err(|_| bad())?,
            endpoints: b.parse().map_err(|_| bad())?,
        };
        // ClusterIPs come from the .1.1-.250.250 part of the /16 service CIDR.
        if scale.services == 0 || scale.services > 62_500 || scale.endpoints > 1000 {
            return Err(format!(
                "--scale {s:?}: 1..=62500 services of 0..=1000 endpoints each"
            ));
        }
        Ok(scale)
    }
}

/// Pod addresses the scale endpoints use: 10.(10k).100.1 - 10.(10k).249.250, above the lab's
/// node subnets (no pod answers there: the scale objects load the daemons, not the checks).
const SCALE_ADDRS: u32 = 150 * 250;

/// `scale.services` Services `scale-N` with an EndpointSlice of `scale.endpoints` endpoints
/// each, inside `cluster`'s CIDRs.
pub fn scale_yaml(cluster: &Cluster, scale: Scale) -> String {
    let s_o = cluster.service_cidr.network().octets();
    let p_o = cluster.pod_cidr.network().octets();
    let mut out =
        String::with_capacity(scale.services as usize * (600 + 120 * scale.endpoints as usize));
    for i in 0..scale.services {
        let name = format!("scale-{i}");
        let ip = Ipv4Addr::new(s_o[0], s_o[1], (1 + i / 250) as u8, (1 + i % 250) as u8);
        out.push_str(&service_header(&name));
        out.push_str(&format!(
            "  type: ClusterIP\n  clusterIP: {ip}\n  clusterIPs:\n  - {ip}\n  ports:\n"
        ));
        out.push_str(&port("tcp", "TCP", SERVICE_PORT, POD_PORT));
        out.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-lab\n  namespace: {K8S_NAMESPACE}\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\nendpoints:{}\n",
            if scale.endpoints == 0 { " []" } else { "" }
        ));
        for j in 0..scale.endpoints {
            let n = (i * scale.endpoints + j) % SCALE_ADDRS;
            let a = Ipv4Addr::new(p_o[0], p_o[1], (100 + n / 250) as u8, (1 + n % 250) as u8);
            out.push_str(&format!(
                "- addresses:\n  - {a}\n  conditions:\n    ready: true\n"
            ));
        }
        out.push_str(&format!(
            "ports:\n- name: tcp\n  protocol: TCP\n  port: {POD_PORT}\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{Proxy, Topology, Tunnel};
    use std::collections::BTreeSet;
    use std::path::Path;

    fn plan() -> Topology {
        Topology::new(
            crate::topology::CLUSTER_NAMES.len(),
            "lab-",
            Path::new("/run/sdnlink-lab"),
            Tunnel::Userspace,
            Proxy::Nftables,
        )
        .expect("valid lab parameters")
    }

    fn docs(yaml: &str) -> Vec<serde_yaml::Value> {
        yaml.split("\n---\n")
            .map(|d| d.trim_start_matches("---\n"))
            .filter(|d| !d.trim().is_empty())
            .map(|d| serde_yaml::from_str(d).expect("generated YAML parses"))
            .collect()
    }

    #[test]
    fn cluster_ips_lie_in_their_service_cidr_except_the_hostile_one() {
        let p = plan();
        for c in &p.clusters {
            for name in [svc::ECHO, svc::STICKY, svc::CHURN] {
                let ip = cluster_ip(c, name).expect("proxied service");
                assert!(c.service_cidr.contains(&ip), "{name} {ip}");
            }
            let hostile = cluster_ip(c, svc::HOSTILE).expect("hostile service");
            assert!(p
                .clusters
                .iter()
                .all(|o| !o.service_cidr.contains(&hostile) && !o.pod_cidr.contains(&hostile)));
        }
    }

    #[test]
    fn manifests_use_the_plans_pod_addresses_and_node_subnets() {
        let p = plan();
        for c in &p.clusters {
            let files = cluster_files(c);
            let nodes = docs(&files[0].1);
            assert_eq!(nodes.len(), c.nodes.len());
            for (doc, node) in nodes.iter().zip(&c.nodes) {
                assert_eq!(doc["metadata"]["name"].as_str(), Some(node.name.as_str()));
                assert_eq!(
                    doc["spec"]["podCIDRs"][0].as_str(),
                    Some(node.pod_subnet.to_string().as_str())
                );
            }
            let services = docs(&files[1].1);
            assert_eq!(services.len(), 6);
            let slices = docs(&files[2].1);
            let want: Vec<String> = c
                .nodes
                .iter()
                .flat_map(|n| n.pods.iter().map(|p| p.addr.to_string()))
                .collect();
            for slice in &slices {
                let got: Vec<String> = slice["endpoints"]
                    .as_sequence()
                    .expect("endpoints list")
                    .iter()
                    .map(|e| e["addresses"][0].as_str().unwrap_or_default().to_string())
                    .collect();
                assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn scale_manifests_stay_inside_the_cluster_and_are_admitted() {
        let p = plan();
        let c = &p.clusters[1];
        let scale: Scale = "300x3".parse().expect("scale");
        let (ok, refused) = sdnlink_simapi::admit_for_tests("scale.yaml", &scale_yaml(c, scale));
        assert!(refused.is_empty(), "{refused:?}");
        assert_eq!(ok, 600);
        let y = scale_yaml(c, scale);
        let docs = docs(&y);
        let ips: BTreeSet<String> = docs
            .iter()
            .filter_map(|d| d["spec"]["clusterIP"].as_str().map(str::to_string))
            .collect();
        assert_eq!(ips.len(), 300, "distinct ClusterIPs");
        for ip in &ips {
            let ip: Ipv4Addr = ip.parse().expect("ip");
            assert!(c.service_cidr.contains(&ip) && cluster_ip(c, svc::ECHO) != Some(ip));
        }
        for d in docs.iter().filter(|d| d["kind"] == "EndpointSlice") {
            for e in d["endpoints"].as_sequence().expect("endpoints") {
                let a: Ipv4Addr = e["addresses"][0]
                    .as_str()
                    .expect("addr")
                    .parse()
                    .expect("ip");
                assert!(c.pod_cidr.contains(&a));
                assert!(c.nodes.iter().all(|n| !n.pod_subnet.contains(&a)));
            }
        }
        assert!("0x1".parse::<Scale>().is_err());
        assert!("10k".parse::<Scale>().is_err());
    }

    #[test]
    fn empty_slice_is_valid_yaml_with_no_endpoints() {
        let y = endpoint_slice_yaml(svc::CHURN, &[], false);
        let d = docs(&y);
        assert_eq!(d[0]["endpoints"].as_sequence().map(|s| s.len()), Some(0));
    }

    fn assert_checked_in(path: &Path, text: &str) {
        let on_disk =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            on_disk,
            text,
            "{} is stale: run `sdnlink-lab --clusters 4 manifests --out tests/lab`",
            path.display()
        );
    }

    #[test]
    fn hostile_set_is_admitted_whole_and_checked_in() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lab/hostile");
        for c in &plan().clusters {
            let mut total = 0;
            for (file, text) in hostile::files(c) {
                let (ok, refused) = sdnlink_simapi::admit_for_tests(&file, &text);
                assert!(refused.is_empty(), "{file}: {refused:?}");
                total += ok;
                assert_checked_in(&root.join(&c.name).join(&file), &text);
            }
            assert_eq!(hostile::objects(c).len(), total);
            let (ranges, exact) = hostile::markers(c);
            for good in hostile::GOOD {
                let a = std::net::IpAddr::V4(hostile::ip(c, good));
                assert!(c.service_cidr.contains(&hostile::ip(c, good)));
                assert!(!ranges.iter().any(|r| r.contains(&a)), "{good}");
            }
            // The exact markers are wide prefixes that hold good objects too: they are matched
            // as whole routes and allowed IPs, never as ranges.
            assert!(exact.iter().all(|r| r.prefix_len() <= 8), "{exact:?}");
            let good_net = hostile::node_subnet(c, hostile::GOOD_NODE);
            assert!(c.pod_cidr.contains(&good_net));
            assert!(!ranges
                .iter()
                .any(|r| r.contains(&std::net::IpAddr::V4(good_net.network()))));
            for n in &c.nodes {
                for p in &n.pods {
                    let a = std::net::IpAddr::V4(p.addr);
                    assert!(!ranges.iter().any(|r| r.contains(&a)), "{}", p.addr);
                }
            }
        }
    }

    #[test]
    fn checked_in_default_manifests_match_the_plan() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lab");
        for c in &plan().clusters {
            for (file, text) in cluster_files(c) {
                assert_checked_in(&root.join(&c.name).join(&file), &text);
            }
        }
        let names: Vec<String> = plan().clusters.iter().map(|c| c.name.clone()).collect();
        let openshift = plan().with_openshift(&names).expect("every lab cluster");
        for c in &openshift.clusters {
            for (file, text) in cluster_files(c) {
                assert_checked_in(&root.join("openshift").join(&c.name).join(&file), &text);
            }
        }
    }

    #[test]
    fn openshift_clusters_carry_subnets_in_host_subnets_only() {
        let p = plan()
            .with_openshift(&["west".to_string()])
            .expect("west is a lab cluster");
        assert!(plan().with_openshift(&["mars".to_string()]).is_err());
        assert!(plan().with_openshift(&["none".to_string()]).is_ok());
        for c in &p.clusters {
            let files = cluster_files(c);
            let nodes = &files[0].1;
            let subnets = files.iter().find(|(f, _)| f == "hostsubnets.yaml");
            assert_eq!(c.openshift, c.name == "west");
            assert_eq!(nodes.contains("podCIDRs"), !c.openshift, "{}", c.name);
            assert_eq!(subnets.is_some(), c.openshift);
            if let Some((file, text)) = subnets {
                let (ok, refused) = sdnlink_simapi::admit_for_tests(file, text);
                assert!(refused.is_empty(), "{refused:?}");
                assert_eq!(ok, c.nodes.len());
                for (n, d) in c.nodes.iter().zip(docs(text)) {
                    assert_eq!(d["host"].as_str(), Some(n.name.as_str()));
                    assert_eq!(
                        d["subnet"].as_str(),
                        Some(n.pod_subnet.to_string().as_str())
                    );
                }
            }
            let network = files.iter().find(|(f, _)| f == "clusternetwork.yaml");
            assert_eq!(network.is_some(), c.openshift);
            if let Some((file, text)) = network {
                let (ok, refused) = sdnlink_simapi::admit_for_tests(file, text);
                assert!(refused.is_empty(), "{refused:?}");
                assert_eq!(ok, 1);
                let d = &docs(text)[0];
                let pod = c.pod_cidr.to_string();
                assert_eq!(d["clusterNetworks"][0]["CIDR"].as_str(), Some(pod.as_str()));
                assert_eq!(
                    d["clusterNetworks"][0]["hostSubnetLength"].as_u64(),
                    Some(8)
                );
                let svc = c.service_cidr.to_string();
                assert_eq!(d["serviceNetwork"].as_str(), Some(svc.as_str()));
            }
        }
    }

    #[test]
    fn a_cluster_network_without_cidrs_is_refused_naming_the_field() {
        let bad = "apiVersion: network.openshift.io/v1\nkind: ClusterNetwork\nmetadata:\n  name: default\nserviceNetwork: 10.1.0.0/16\nclusterNetworks:\n- hostSubnetLength: 8\n";
        let (ok, refused) = sdnlink_simapi::admit_for_tests("cn.yaml", bad);
        assert_eq!(ok, 0);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(
            format!("{refused:?}").contains("clusterNetworks[0]: missing CIDR"),
            "{refused:?}"
        );
    }
}
