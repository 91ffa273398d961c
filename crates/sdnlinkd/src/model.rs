//! Plain snapshot values of one cluster, as the rest of the daemon sees it.
//!
//! The Kubernetes types stay inside `clusters`; everything downstream (tunnel peers, proxy
//! services, DNS zones) is a pure function of these values plus the config. Every value here has
//! already passed the trust rules of docs/design.md: ClusterIPs lie in the cluster's service CIDRs,
//! endpoint addresses and node subnets in its pod CIDRs.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

/// Transport protocol of a service or endpoint port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Lower-case name as used in SRV labels (`_tcp`) and nftables (`tcp`).
    pub fn as_lower(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// Parses the Kubernetes spelling (`TCP`, `UDP`, `SCTP`); absent means TCP.
    pub fn from_k8s(s: Option<&str>) -> Option<Protocol> {
        match s {
            None | Some("TCP") => Some(Protocol::Tcp),
            Some("UDP") => Some(Protocol::Udp),
            Some("SCTP") => Some(Protocol::Sctp),
            Some(_) => None,
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_lower())
    }
}

/// `namespace/name` of a Service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What kind of Service it is, which decides both proxying and DNS records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type", content = "value")]
pub enum ServiceKind {
    /// Has ClusterIPs (one per family for dual-stack): proxied, A/AAAA to the ClusterIPs.
    ClusterIp(Vec<IpAddr>),
    /// `clusterIP: None`: never proxied, A/AAAA to the ready endpoints.
    Headless,
    /// `type: ExternalName`: DNS CNAME only.
    ExternalName(String),
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    /// Port name; empty when the Service has a single unnamed port.
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    /// The Service's `targetPort` as written: a number, or a name resolved through the
    /// EndpointSlice ports. Endpoints carry the resolved numbers (see [`Endpoint::ports`]).
    pub target_port: TargetPort,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

/// A resolved port of an endpoint, from its EndpointSlice's `ports` list.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EndpointPort {
    /// Matches [`ServicePort::name`] (kube-proxy matches slice ports to service ports by name).
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// One endpoint (one pod) of a Service, merged over all of the Service's EndpointSlices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Addresses that passed the pod-CIDR trust rule (at least one).
    pub addresses: Vec<IpAddr>,
    /// `conditions.ready`; absent counts as ready, as the EndpointSlice API says.
    pub ready: bool,
    /// `conditions.serving`; absent takes the value of `ready`.
    pub serving: bool,
    /// `conditions.terminating`; absent counts as false.
    pub terminating: bool,
    pub hostname: Option<String>,
    /// Shared by every endpoint on the same node (the cluster store interns it).
    pub node_name: Option<Arc<str>>,
    /// The ports of the EndpointSlice this endpoint came from, shared by every endpoint of that
    /// slice (and of slices with the same ports): a Service's endpoints cost one copy of them.
    pub ports: Arc<[EndpointPort]>,
}

/// A Service with its endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub key: ServiceKey,
    pub kind: ServiceKind,
    pub ports: Vec<ServicePort>,
    /// `sessionAffinity: ClientIP` with its timeout in seconds (Kubernetes default 10800).
    pub client_ip_affinity: Option<u32>,
    pub endpoints: Vec<Endpoint>,
}

/// A node of a cluster, for tunnel peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    /// From `spec.podCIDRs` (or an OpenShift HostSubnet), already inside the pod CIDRs.
    pub pod_cidrs: Vec<IpNet>,
    /// Annotation `sdnlink.io/wireguard-public-key`, raw: the tunnel validates it.
    pub wireguard_public_key: Option<String>,
    /// Annotation `sdnlink.io/wireguard-endpoint`, raw: the tunnel validates it.
    pub wireguard_endpoint: Option<String>,
}

/// Everything known about one cluster at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSnapshot {
    pub services: BTreeMap<ServiceKey, Service>,
    pub nodes: BTreeMap<String, Node>,
}

/// The snapshots of every cluster the daemon follows, keyed by cluster name (config order is
/// kept by the config, not here). Cheap to clone: each snapshot is shared.
pub type Snapshots = BTreeMap<String, Arc<ClusterSnapshot>>;

/// Sync state of one cluster's watches, shown in `STATUS=` and `sdnlinkd status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum SyncState {
    /// Not every watch has listed in this run and no snapshot is there to serve: what the node
    /// has for the cluster is kept as it is, and its DNS zone answers SERVFAIL.
    Unknown {
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Not every watch has listed in this run; a warm snapshot is served, and nothing the node
    /// has for the cluster is withdrawn until it lists.
    Warm {
        source: WarmSource,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Every watch listed in this run and is following changes.
    Current,
    /// Listed in this run, and something fails now; the last good snapshot stays in use.
    Degraded {
        reason: String,
        #[serde(with = "unix_seconds")]
        since: SystemTime,
    },
    /// No kubeconfig: static peers only, nothing to watch.
    Static,
}

impl SyncState {
    /// The state's name as serialized (`unknown`, `warm`, `current`, `degraded`, `static`).
    pub fn name(&self) -> &'static str {
        match self {
            SyncState::Unknown { .. } => "unknown",
            SyncState::Warm { .. } => "warm",
            SyncState::Current => "current",
            SyncState::Degraded { .. } => "degraded",
            SyncState::Static => "static",
        }
    }

    /// Why the cluster is not current, if it fails.
    pub fn reason(&self) -> Option<&str> {
        match self {
            SyncState::Unknown { reason } | SyncState::Warm { reason, .. } => reason.as_deref(),
            SyncState::Degraded { reason, .. } => Some(reason),
            SyncState::Current | SyncState::Static => None,
        }
    }
}

/// Where a warm snapshot comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "from")]
pub enum WarmSource {
    /// Loaded from the state directory at start; written at `saved_at` by an earlier run.
    Persisted {
        #[serde(with = "unix_seconds")]
        saved_at: SystemTime,
    },
    /// The previous watch of this cluster, replaced by a reload that changed its settings.
    Reload,
}

/// `Option<SystemTime>` as Unix seconds or null.
pub(crate) mod unix_seconds_opt {
    use serde::Serializer;
    use std::time::SystemTime;

    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::unix_seconds::serialize(t, s),
            None => s.serialize_none(),
        }
    }
}

pub(crate) mod unix_seconds {
    use serde::Serializer;
    use std::time::{SystemTime, UNIX_EPOCH};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let secs = t
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        s.serialize_u64(secs)
    }
}

/// The CIDRs of clusters that have not listed in this run (unknown, or served from a persisted
/// or previous snapshot), each with its cluster's name. Kernel objects inside them are what the
/// node already has for those clusters: subsystems keep (adopt) them as they are and only add
/// to them until the cluster lists (docs/design.md, "Continuity": unknown is not empty). Config
/// validation makes the CIDRs of different clusters disjoint, so an object belongs to at most
/// one cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Held {
    pub cidrs: Vec<(String, IpNet)>,
}

impl Held {
    /// Nothing is held.
    pub fn is_empty(&self) -> bool {
        self.cidrs.is_empty()
    }

    /// The held cluster whose CIDRs contain `ip`.
    pub fn cluster_of_addr(&self, ip: IpAddr) -> Option<&str> {
        self.cidrs
            .iter()
            .find(|(_, c)| c.contains(&ip))
            .map(|(n, _)| n.as_str())
    }

    /// The held cluster whose CIDRs contain all of `nets` (none for an empty list, or for nets
    /// that are not all inside one held cluster).
    pub fn cluster_of_nets(&self, nets: &[IpNet]) -> Option<&str> {
        let first = nets.first()?;
        let (name, _) = self.cidrs.iter().find(|(_, c)| c.contains(first))?;
        nets.iter()
            .all(|n| self.cidrs.iter().any(|(m, c)| m == name && c.contains(n)))
            .then_some(name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held() -> Held {
        Held {
            cidrs: vec![
                ("east".into(), "10.1.0.0/16".parse().expect("literal")),
                ("east".into(), "fd01::/64".parse().expect("literal")),
                ("west".into(), "10.2.0.0/16".parse().expect("literal")),
            ],
        }
    }

    #[test]
    fn held_attributes_addresses_and_nets_to_one_cluster() {
        let h = held();
        assert_eq!(
            h.cluster_of_addr("10.1.2.3".parse().expect("literal")),
            Some("east")
        );
        assert_eq!(
            h.cluster_of_addr("10.3.0.1".parse().expect("literal")),
            None
        );
        let nets =
            |v: &[&str]| -> Vec<IpNet> { v.iter().map(|s| s.parse().expect("literal")).collect() };
        assert_eq!(
            h.cluster_of_nets(&nets(&["10.1.1.0/24", "fd01::/80"])),
            Some("east")
        );
        assert_eq!(
            h.cluster_of_nets(&nets(&["10.1.1.0/24", "10.2.1.0/24"])),
            None,
            "two clusters"
        );
        assert_eq!(
            h.cluster_of_nets(&nets(&["10.1.1.0/24", "10.9.1.0/24"])),
            None,
            "one outside"
        );
        assert_eq!(h.cluster_of_nets(&[]), None);
        assert!(Held::default().is_empty());
    }
}
