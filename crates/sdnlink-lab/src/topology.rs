//! The lab's topology as a value: every namespace, interface, address and daemon config is a pure
//! function of the cluster count and the name prefix, so `up`, `down`, the checks and the default
//! manifests all agree without sharing mutable state.
//!
//! Address plan (underlay uses RFC 5737 documentation ranges only):
//! - underlay bridge: 192.0.2.1/24 in the underlay namespace; node `k,j` is 192.0.2.(10k+j).
//! - cluster `k`: pod CIDR 10.(10k).0.0/16, node `j` gets 10.(10k).j.0/24 (gateway .1, pods
//!   .11, .12); service CIDR 10.(100+10k).0.0/16.
//! - per cluster `k` an API server on 192.0.2.1:(6440+k); the upstream DNS server on
//!   192.0.2.1:53.

use ipnet::{IpNet, Ipv4Net};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};

/// Cluster names in order; the lab supports as many clusters as names here.
pub const CLUSTER_NAMES: [&str; 4] = ["east", "west", "north", "south"];
/// Nodes per cluster.
pub const NODES_PER_CLUSTER: u8 = 2;
/// Pods behind every node.
pub const PODS_PER_NODE: u8 = 2;
/// Port of every pod's TCP and UDP echo server.
pub const POD_PORT: u16 = 8080;
/// Kubernetes namespace of the lab's Services.
pub const K8S_NAMESPACE: &str = "lab";
/// The name the upstream DNS server answers (and the address it answers with).
pub const FORWARDED_NAME: &str = "forwarded.lab.test.";
/// Answer of [`FORWARDED_NAME`] (TEST-NET-2).
pub const FORWARDED_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 53);
/// WireGuard listen port of every node (each node has its own namespace).
pub const WG_PORT: u16 = 51820;
/// Underlay address of the underlay namespace (API servers, upstream DNS).
pub const UNDERLAY_HUB: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// Prefix length of the underlay network.
pub const UNDERLAY_PREFIX: u8 = 24;
/// Bearer token every lab API server accepts with every permission (the lab's own requests).
pub const API_TOKEN: &str = "sdnlink-lab-token";
/// Bearer token of ServiceAccount `sdnlinkd-local` of packaging/rbac.yaml: what a node's daemon
/// uses for its own cluster.
pub const LOCAL_TOKEN: &str = "sdnlink-lab-local-token";
/// Bearer token of ServiceAccount `sdnlinkd-remote` of packaging/rbac.yaml: what the daemons of
/// the other clusters use.
pub const REMOTE_TOKEN: &str = "sdnlink-lab-remote-token";

/// Wrong parameters for a lab.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("--clusters {0}: the lab supports 2..={max} clusters", max = CLUSTER_NAMES.len())]
    Clusters(usize),
    #[error("prefix {0:?}: use 1-5 characters a-z, 0-9 or '-' (names must fit IFNAMSIZ)")]
    Prefix(String),
    #[error("--openshift {0:?}: not a cluster of this lab ({1}); or `none`")]
    OpenShift(String, String),
}

/// Which WireGuard the daemons run.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Tunnel {
    Kernel,
    Userspace,
}

/// Which service proxy the daemons run.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Proxy {
    Ipvs,
    Nftables,
}

/// One pod: a namespace behind its node with one address and an echo server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    /// Pod name, also what its servers answer.
    pub name: String,
    /// Network namespace (pinned under /run/netns).
    pub netns: String,
    /// Interface name of the pod's veth end inside the node namespace.
    pub node_if: String,
    pub addr: Ipv4Addr,
}

/// Where every node's daemon serves its metrics, in the node's host namespace.
pub const METRICS_ADDR: &str = "127.0.0.1:9451";

/// One node: a namespace standing in for the node's host network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Cluster index (0-based).
    pub cluster: usize,
    /// Kubernetes Node name.
    pub name: String,
    /// The node's "host" network namespace.
    pub netns: String,
    /// The namespace the daemon creates and owns (`namespace.name`).
    pub daemon_netns: String,
    /// WireGuard interface name (also names the userspace control socket, which is global).
    pub wg_if: String,
    /// Underlay address (192.0.2.x).
    pub underlay_addr: Ipv4Addr,
    /// Interface name of the node's veth end inside the underlay namespace.
    pub underlay_if: String,
    /// The node's pod subnet (`spec.podCIDRs`).
    pub pod_subnet: Ipv4Net,
    /// The pods' gateway, on the node side of every pod veth.
    pub gateway: Ipv4Addr,
    pub pods: Vec<Pod>,
}

/// One cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    pub name: String,
    pub pod_cidr: Ipv4Net,
    pub service_cidr: Ipv4Net,
    /// Where its API server listens (in the underlay namespace).
    pub api_addr: SocketAddrV4,
    pub nodes: Vec<Node>,
    /// OpenShift SDN-shaped: Nodes without `spec.podCIDRs`, each node's subnet in a
    /// `network.openshift.io/v1` HostSubnet (manifests under `openshift/<cluster>/`).
    pub openshift: bool,
}

impl Cluster {
    /// Its manifest directory under `root`: `<cluster>/`, or `openshift/<cluster>/` when
    /// OpenShift-shaped.
    pub fn manifest_dir(&self, root: &Path) -> PathBuf {
        if self.openshift {
            root.join("openshift").join(&self.name)
        } else {
            root.join(&self.name)
        }
    }
}

/// The whole lab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// Prefix of every namespace and global interface name the lab creates.
    pub prefix: String,
    /// Directory of generated configs, keys, sockets, logs and the state file.
    pub state_dir: PathBuf,
    pub underlay_netns: String,
    pub tunnel: Tunnel,
    pub proxy: Proxy,
    pub clusters: Vec<Cluster>,
}

/// Interface name of the node's underlay veth inside the node namespace.
pub const NODE_UNDERLAY_IF: &str = "ul0";
/// Bridge joining the nodes inside the underlay namespace.
pub const UNDERLAY_BRIDGE: &str = "br0";
/// Interface name of a pod's veth end inside the pod namespace.
pub const POD_IF: &str = "eth0";

impl Topology {
    /// The plan for `clusters` clusters with names prefixed by `prefix` (e.g. `lab-`).
    pub fn new(
        clusters: usize,
        prefix: &str,
        state_root: &Path,
        tunnel: Tunnel,
        proxy: Proxy,
    ) -> Result<Topology, TopologyError> {
        if !(2..=CLUSTER_NAMES.len()).contains(&clusters) {
            return Err(TopologyError::Clusters(clusters));
        }
        if prefix.is_empty()
            || prefix.len() > 5
            || !prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(TopologyError::Prefix(prefix.to_string()));
        }
        let clusters = (0..clusters)
            .map(|ci| {
                let k = ci as u8 + 1;
                let name = CLUSTER_NAMES[ci].to_string();
                let nodes = (1..=NODES_PER_CLUSTER)
                    .map(|j| {
                        let node_name = format!("{name}-n{j}");
                        let netns = format!("{prefix}{node_name}");
                        let pods = (1..=PODS_PER_NODE)
                            .map(|p| Pod {
                                name: format!("{node_name}-p{p}"),
                                netns: format!("{netns}-p{p}"),
                                node_if: format!("pod{p}"),
                                addr: Ipv4Addr::new(10, 10 * k, j, 10 + p),
                            })
                            .collect();
                        Node {
                            cluster: ci,
                            daemon_netns: format!("{netns}-sdn"),
                            wg_if: format!("{prefix}wg{k}{j}"),
                            underlay_addr: Ipv4Addr::new(192, 0, 2, 10 * k + j),
                            underlay_if: format!("n{k}{j}"),
                            pod_subnet: Ipv4Net::new(Ipv4Addr::new(10, 10 * k, j, 0), 24)
                                .expect("24 is a valid IPv4 prefix length"),
                            gateway: Ipv4Addr::new(10, 10 * k, j, 1),
                            name: node_name,
                            netns,
                            pods,
                        }
                    })
                    .collect();
                Cluster {
                    pod_cidr: Ipv4Net::new(Ipv4Addr::new(10, 10 * k, 0, 0), 16)
                        .expect("16 is a valid IPv4 prefix length"),
                    service_cidr: Ipv4Net::new(Ipv4Addr::new(10, 100 + 10 * k, 0, 0), 16)
                        .expect("16 is a valid IPv4 prefix length"),
                    api_addr: SocketAddrV4::new(UNDERLAY_HUB, 6440 + u16::from(k)),
                    name,
                    nodes,
                    openshift: false,
                }
            })
            .collect();
        Ok(Topology {
            prefix: prefix.to_string(),
            state_dir: state_root.join(prefix.trim_end_matches('-')),
            underlay_netns: format!("{prefix}underlay"),
            tunnel,
            proxy,
            clusters,
        })
    }

    /// Every node of every cluster.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.clusters.iter().flat_map(|c| c.nodes.iter())
    }

    /// Every pod of every node.
    pub fn pods(&self) -> impl Iterator<Item = (&Node, &Pod)> {
        self.nodes()
            .flat_map(|n| n.pods.iter().map(move |p| (n, p)))
    }

    /// Every network namespace the lab itself creates (not the daemons' own), in creation
    /// order.
    pub fn lab_namespaces(&self) -> Vec<String> {
        let mut v = vec![self.underlay_netns.clone()];
        for n in self.nodes() {
            v.push(n.netns.clone());
            v.extend(n.pods.iter().map(|p| p.netns.clone()));
        }
        v
    }

    /// The upstream DNS server the daemons forward to.
    pub fn upstream_dns(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(UNDERLAY_HUB, 53))
    }

    /// Directory of one node's generated files.
    pub fn node_dir(&self, node: &Node) -> PathBuf {
        self.state_dir.join(&node.name)
    }

    /// The daemon config of `node`.
    pub fn node_config_path(&self, node: &Node) -> PathBuf {
        self.node_dir(node).join("sdnlink.toml")
    }

    /// The kubeconfig a node's daemon uses for `cluster`.
    pub fn kubeconfig_path(&self, node: &Node, cluster: &str) -> PathBuf {
        self.node_dir(node).join(format!("{cluster}.kubeconfig"))
    }

    /// The daemon's control socket.
    pub fn control_socket(&self, node: &Node) -> PathBuf {
        self.node_dir(node).join("control.sock")
    }

    /// This plan with the clusters named in `names` OpenShift-shaped (`none` names none).
    pub fn with_openshift(mut self, names: &[String]) -> Result<Topology, TopologyError> {
        for n in names.iter().filter(|n| n.as_str() != "none") {
            let known: Vec<String> = self.clusters.iter().map(|c| c.name.clone()).collect();
            let c = self
                .clusters
                .iter_mut()
                .find(|c| &c.name == n)
                .ok_or_else(|| TopologyError::OpenShift(n.clone(), known.join(", ")))?;
            c.openshift = true;
        }
        Ok(self)
    }

    /// The state file that marks a lab as up.
    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join("state.json")
    }

    /// The daemon config of `node` as TOML (kubeconfig files are written next to it).
    pub fn node_config(&self, node: &Node) -> String {
        let local = &self.clusters[node.cluster];
        let dir = self.node_dir(node);
        let mut s = String::new();
        s.push_str("# Generated by sdnlink-lab for one lab node.\n");
        s.push_str("log_level = \"info\"\n");
        s.push_str("resync_interval = 10\n");
        s.push_str(&format!(
            "control_socket = {:?}\n",
            self.control_socket(node).display().to_string()
        ));
        s.push_str(&format!(
            "state_dir = {:?}\n\n",
            dir.join("state").display().to_string()
        ));
        s.push_str("[local]\n");
        s.push_str(&format!("name = {:?}\n", local.name));
        s.push_str(&format!("pod_cidrs = [\"{}\"]\n", local.pod_cidr));
        s.push_str(&format!("service_cidrs = [\"{}\"]\n", local.service_cidr));
        s.push_str(&format!("node_name = {:?}\n", node.name));
        s.push_str(&format!(
            "kubeconfig = {:?}\n\n",
            self.kubeconfig_path(node, &local.name)
                .display()
                .to_string()
        ));
        s.push_str("[namespace]\n");
        s.push_str(&format!("name = {:?}\n\n", node.daemon_netns));
        s.push_str("[tunnel]\n");
        s.push_str(&format!("interface = {:?}\n", node.wg_if));
        s.push_str(&format!("listen_port = {WG_PORT}\n"));
        s.push_str(&format!(
            "private_key_file = {:?}\n",
            dir.join("private.key").display().to_string()
        ));
        s.push_str(&format!(
            "endpoint = \"{}:{WG_PORT}\"\n",
            node.underlay_addr
        ));
        let mode = match self.tunnel {
            Tunnel::Kernel => "kernel",
            Tunnel::Userspace => "userspace",
        };
        s.push_str(&format!("mode = {mode:?}\n"));
        // Keepalive keeps the userspace devices' handshakes fresh across daemon restarts. 25 s,
        // the default: 15 s or less keeps WireGuard from re-handshaking a session that works one
        // way only (see `tunnel::keepalive_warning`).
        s.push_str("persistent_keepalive = 25\n\n");
        s.push_str("[proxy]\n");
        let backend = match self.proxy {
            Proxy::Ipvs => "ipvs",
            Proxy::Nftables => "nftables",
        };
        s.push_str(&format!("backend = {backend:?}\n"));
        s.push_str("drain_grace = 2\n\n");
        s.push_str("[dns]\n");
        s.push_str(&format!("upstreams = [\"{}\"]\n", self.upstream_dns()));
        s.push_str("all_zone = true\n\n");
        // Loopback of the node's own (host) namespace: every node has its own.
        s.push_str("[metrics]\n");
        s.push_str(&format!("listen = \"{METRICS_ADDR}\"\n\n"));
        s.push_str("[sync]\n");
        s.push_str("startup_grace = 20\n");
        s.push_str("min_interval_ms = 100\n");
        s.push_str("max_delay_ms = 500\n");
        for remote in self.clusters.iter().filter(|c| c.name != local.name) {
            s.push_str("\n[[remote]]\n");
            s.push_str(&format!("name = {:?}\n", remote.name));
            s.push_str(&format!(
                "kubeconfig = {:?}\n",
                self.kubeconfig_path(node, &remote.name)
                    .display()
                    .to_string()
            ));
            s.push_str(&format!("pod_cidrs = [\"{}\"]\n", remote.pod_cidr));
            s.push_str(&format!("service_cidrs = [\"{}\"]\n", remote.service_cidr));
        }
        s
    }

    /// Every pod CIDR and service CIDR of the lab (for overlap checks).
    pub fn all_cidrs(&self) -> Vec<(String, IpNet)> {
        self.clusters
            .iter()
            .flat_map(|c| {
                [
                    (format!("{} pods", c.name), IpNet::V4(c.pod_cidr)),
                    (format!("{} services", c.name), IpNet::V4(c.service_cidr)),
                ]
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(n: usize) -> Topology {
        Topology::new(
            n,
            "lab-",
            Path::new("/run/sdnlink-lab"),
            Tunnel::Userspace,
            Proxy::Nftables,
        )
        .expect("valid lab parameters")
    }

    #[test]
    fn rejects_bad_parameters() {
        let root = Path::new("/tmp");
        assert!(Topology::new(1, "lab-", root, Tunnel::Userspace, Proxy::Nftables).is_err());
        assert!(Topology::new(5, "lab-", root, Tunnel::Userspace, Proxy::Nftables).is_err());
        assert!(Topology::new(2, "Lab/", root, Tunnel::Userspace, Proxy::Nftables).is_err());
        assert!(Topology::new(2, "toolong", root, Tunnel::Userspace, Proxy::Nftables).is_err());
    }

    #[test]
    fn names_are_unique_and_fit_ifnamsiz() {
        let p = plan(4);
        let mut ns = p.lab_namespaces();
        ns.extend(p.nodes().map(|n| n.daemon_netns.clone()));
        let count = ns.len();
        ns.sort();
        ns.dedup();
        assert_eq!(ns.len(), count, "namespace names collide");
        assert!(ns.iter().all(|n| n.starts_with("lab-")));
        let mut wg: Vec<_> = p.nodes().map(|n| n.wg_if.clone()).collect();
        wg.sort();
        wg.dedup();
        assert_eq!(wg.len(), 4 * usize::from(NODES_PER_CLUSTER));
        for n in p.nodes() {
            assert!(n.wg_if.len() <= 15, "{} too long", n.wg_if);
            assert!(n.underlay_if.len() <= 15);
            for pod in &n.pods {
                assert!(pod.node_if.len() <= 15);
            }
        }
    }

    #[test]
    fn cidrs_do_not_overlap_and_contain_their_members() {
        let p = plan(4);
        let cidrs = p.all_cidrs();
        for (i, (a_name, a)) in cidrs.iter().enumerate() {
            for (b_name, b) in &cidrs[i + 1..] {
                assert!(
                    !a.contains(&b.network()) && !b.contains(&a.network()),
                    "{a_name} {a} overlaps {b_name} {b}"
                );
            }
        }
        for c in &p.clusters {
            for n in &c.nodes {
                assert!(c.pod_cidr.contains(&n.pod_subnet));
                assert!(n.pod_subnet.contains(&n.gateway));
                for pod in &n.pods {
                    assert!(n.pod_subnet.contains(&pod.addr));
                    assert_ne!(pod.addr, n.gateway);
                }
            }
        }
    }

    #[test]
    fn underlay_uses_documentation_addresses_only() {
        let p = plan(4);
        let doc: Ipv4Net = "192.0.2.0/24".parse().expect("literal CIDR");
        assert!(doc.contains(&UNDERLAY_HUB));
        let mut addrs: Vec<_> = p.nodes().map(|n| n.underlay_addr).collect();
        assert!(addrs.iter().all(|a| doc.contains(a) && *a != UNDERLAY_HUB));
        addrs.sort();
        addrs.dedup();
        assert_eq!(addrs.len(), 4 * usize::from(NODES_PER_CLUSTER));
    }

    #[test]
    fn generated_node_configs_pass_daemon_validation() {
        let dir = tempfile::tempdir().expect("temp dir");
        let p = Topology::new(3, "lab-", dir.path(), Tunnel::Userspace, Proxy::Nftables)
            .expect("valid lab parameters");
        let kubeconfig =
            "apiVersion: v1\nkind: Config\nusers:\n- name: lab\n  user:\n    token: t\n";
        for node in p.nodes() {
            std::fs::create_dir_all(p.node_dir(node)).expect("node dir");
            for c in &p.clusters {
                std::fs::write(p.kubeconfig_path(node, &c.name), kubeconfig).expect("kubeconfig");
            }
            let text = p.node_config(node);
            let cfg = sdnlinkd::config::parse_str(&text)
                .unwrap_or_else(|e| panic!("config of {} rejected: {e}\n{text}", node.name));
            assert_eq!(cfg.local.node_name, node.name);
            assert_eq!(cfg.namespace.name, node.daemon_netns);
            assert_eq!(cfg.tunnel.interface, node.wg_if);
            assert_eq!(cfg.remote.len(), 2);
            assert_eq!(cfg.dns.upstreams, vec![p.upstream_dns()]);
            assert_eq!(
                cfg.tunnel.endpoint,
                Some(SocketAddr::V4(SocketAddrV4::new(
                    node.underlay_addr,
                    WG_PORT
                )))
            );
            assert!(cfg
                .remote
                .iter()
                .all(|r| r.name != cfg.local.name && r.kubeconfig.is_some()));
        }
    }
}
