//! The validated configuration the daemon runs with. Produced only by
//! [`crate::config::load`] / [`crate::config::parse_str`] after every rule has passed, so the
//! rest of the daemon never re-checks it.

use ipnet::{IpNet, Ipv4Net};
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Config {
    pub log_level: String,
    /// Full resync period: re-read the kernel and repair drift.
    #[serde(with = "secs")]
    pub resync_interval: Duration,
    /// Unix socket of `sdnlinkd status` / `sdnlinkd reload`.
    pub control_socket: PathBuf,
    /// Where the daemon keeps what must survive a restart: the last good snapshot of each
    /// cluster, under `snapshots/` ([`crate::clusters::persist::SnapshotStore`]).
    pub state_dir: PathBuf,
    /// The directory of the main config file (`/etc/sdnlink` for the default file): a
    /// kubeconfig's `tokenFile` must lie inside it. Not a config key.
    #[serde(skip)]
    pub config_dir: PathBuf,
    pub local: LocalCluster,
    pub namespace: NamespaceConfig,
    pub tunnel: TunnelConfig,
    pub proxy: ProxyConfig,
    pub dns: DnsConfig,
    pub sync: SyncConfig,
    pub metrics: MetricsConfig,
    pub remote: Vec<RemoteCluster>,
}

/// `[metrics]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MetricsConfig {
    /// Where `GET /metrics` is served, in the host namespace; `None`: no metrics.
    pub listen: Option<SocketAddr>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LocalCluster {
    /// A DNS label; the zone `cluster.<name>` when a kubeconfig is given.
    pub name: String,
    pub pod_cidrs: Vec<IpNet>,
    pub service_cidrs: Vec<IpNet>,
    /// This node's Node object name (default: the host name).
    pub node_name: String,
    /// With it: publish this node's WireGuard key and endpoint, serve `cluster.<local>`.
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NamespaceConfig {
    /// Network namespace pinned at `/run/netns/<name>`.
    pub name: String,
    /// Host end of the veth pair.
    pub host_interface: String,
    /// Namespace end of the veth pair.
    pub interface: String,
    /// Point-to-point transit: first usable address on the host end, second in the namespace.
    pub transit_cidr: Ipv4Net,
    /// MTU of the veth pair.
    pub mtu: u32,
    /// Route protocol number that marks every route sdnlinkd installs (rtnetlink `proto`).
    pub route_protocol: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelMode {
    Kernel,
    Userspace,
    Auto,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TunnelConfig {
    pub interface: String,
    pub listen_port: u16,
    pub private_key_file: PathBuf,
    /// Advertised to peers through the Node annotation.
    pub endpoint: Option<SocketAddr>,
    pub mode: TunnelMode,
    /// Seconds; 0 turns keepalive off.
    pub persistent_keepalive: u16,
    pub mtu: u32,
    /// The userspace implementation the `userspace` mode supervises.
    pub userspace_binary: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyBackendKind {
    Ipvs,
    Nftables,
    Auto,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProxyConfig {
    pub backend: ProxyBackendKind,
    /// `rr`, `wrr`, `lc`, `wlc`, `sh`, `mh`, ... (the IPVS algorithms); the nftables backend
    /// maps `sh`/`mh` to consistent (hash) selection and everything else to random.
    pub scheduler: crate::proxy::Scheduling,
    /// How long a removed IPVS destination stays at weight 0 before it is deleted.
    #[serde(with = "secs")]
    pub drain_grace: Duration,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DnsConfig {
    pub enabled: bool,
    pub address: IpAddr,
    pub port: u16,
    /// Empty in the file means: the nameservers of /etc/resolv.conf, resolved at load time.
    pub upstreams: Vec<SocketAddr>,
    pub all_zone: bool,
    pub ttl: u32,
    /// Entries of the forwarding cache.
    pub cache_size: usize,
    /// One info line per query (off: nothing is logged per query).
    pub log_queries: bool,
    /// Forwarded queries waiting on an upstream at once; more are answered SERVFAIL. Each holds
    /// one UDP socket (a fresh source port per query, RFC 5452), so this also bounds sockets.
    pub max_forwards_in_flight: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SyncConfig {
    /// Apply anyway after this long even if some cluster has not listed once.
    #[serde(with = "secs")]
    pub startup_grace: Duration,
    /// Minimum time between two syncs (coalesces bursts).
    #[serde(with = "millis")]
    pub min_interval: Duration,
    /// Maximum time a change waits before a sync.
    #[serde(with = "millis")]
    pub max_delay: Duration,
    /// Per-cluster cap on Services + EndpointSlices + Nodes.
    pub max_objects_per_cluster: usize,
    /// Per-cluster cap on the bytes the cluster's store holds (records and snapshot).
    pub max_bytes_per_cluster: u64,
    /// How long an API request may stay silent before the cluster counts as unreachable. Watches
    /// are asked to end after half of it, so a healthy idle watch never trips it.
    #[serde(with = "secs")]
    pub api_timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RemoteCluster {
    pub name: String,
    pub kubeconfig: Option<PathBuf>,
    pub pod_cidrs: Vec<IpNet>,
    pub service_cidrs: Vec<IpNet>,
    /// Where this cluster's nodes may announce WireGuard endpoints; empty = anywhere unicast.
    pub endpoint_cidrs: Vec<IpNet>,
    pub peers: Vec<StaticPeer>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StaticPeer {
    /// Base64 of 32 bytes, checked at load.
    pub public_key: String,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
}

impl Config {
    /// Every cluster name the daemon follows with a kubeconfig: remotes, plus the local one
    /// when it has a kubeconfig.
    pub fn watched_clusters(&self) -> impl Iterator<Item = (&str, &std::path::Path)> {
        let local = self
            .local
            .kubeconfig
            .as_deref()
            .map(|k| (self.local.name.as_str(), k));
        local.into_iter().chain(
            self.remote
                .iter()
                .filter_map(|r| r.kubeconfig.as_deref().map(|k| (r.name.as_str(), k))),
        )
    }

    pub fn remote(&self, name: &str) -> Option<&RemoteCluster> {
        self.remote.iter().find(|r| r.name == name)
    }

    /// Pod CIDRs of the named cluster, local or remote.
    pub fn pod_cidrs_of(&self, cluster: &str) -> Option<&[IpNet]> {
        if cluster == self.local.name {
            return Some(&self.local.pod_cidrs);
        }
        self.remote(cluster).map(|r| r.pod_cidrs.as_slice())
    }

    /// Service CIDRs of the named cluster, local or remote.
    pub fn service_cidrs_of(&self, cluster: &str) -> Option<&[IpNet]> {
        if cluster == self.local.name {
            return Some(&self.local.service_cidrs);
        }
        self.remote(cluster).map(|r| r.service_cidrs.as_slice())
    }

    /// The namespace end of the transit link (second address of `transit_cidr`).
    pub fn transit_ns_addr(&self) -> std::net::Ipv4Addr {
        transit_addrs(self.namespace.transit_cidr).1
    }

    /// The host end of the transit link (first usable address of `transit_cidr`).
    pub fn transit_host_addr(&self) -> std::net::Ipv4Addr {
        transit_addrs(self.namespace.transit_cidr).0
    }
}

/// (host, namespace) addresses of a transit network: the first two usable addresses; on a /31
/// the two addresses (RFC 3021). Validation guarantees at least two.
pub fn transit_addrs(net: Ipv4Net) -> (std::net::Ipv4Addr, std::net::Ipv4Addr) {
    let base = u32::from(net.network());
    if net.prefix_len() >= 31 {
        (base.into(), (base + 1).into())
    } else {
        ((base + 1).into(), (base + 2).into())
    }
}

mod secs {
    use serde::Serializer;
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
}

mod millis {
    use serde::Serializer;
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}
