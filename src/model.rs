//! Plain snapshot values of one cluster, as the rest of the daemon sees it.
//!
//! The Kubernetes types stay inside `clusters`; everything downstream (tunnel peers, proxy
//! services, DNS zones) is a pure function of these values plus the config. Every value here has
//! already passed the trust rules of design.md: ClusterIPs lie in the cluster's service CIDRs,
//! endpoint addresses and node subnets in its pod CIDRs.

use ipnet::IpNet;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

/// Transport protocol of a service or endpoint port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServicePort {
    /// Port name; empty when the Service has a single unnamed port.
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    /// The Service's `targetPort` as written: a number, or a name resolved through the
    /// EndpointSlice ports. Endpoints carry the resolved numbers (see [`Endpoint::ports`]).
    pub target_port: TargetPort,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

/// A resolved port of an endpoint, from its EndpointSlice's `ports` list.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct EndpointPort {
    /// Matches [`ServicePort::name`] (kube-proxy matches slice ports to service ports by name).
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// One endpoint (one pod) of a Service, merged over all of the Service's EndpointSlices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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
    pub node_name: Option<String>,
    /// The ports of the EndpointSlice this endpoint came from.
    pub ports: Vec<EndpointPort>,
}

/// A Service with its endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Service {
    pub key: ServiceKey,
    pub kind: ServiceKind,
    pub ports: Vec<ServicePort>,
    /// `sessionAffinity: ClientIP` with its timeout in seconds (Kubernetes default 10800).
    pub client_ip_affinity: Option<u32>,
    pub endpoints: Vec<Endpoint>,
}

/// A node of a cluster, for tunnel peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
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
    /// Not every watch has listed once yet.
    Starting,
    /// Every watch listed once and is following changes.
    Current,
    /// Something failed; the last good snapshot stays in use.
    Degraded {
        reason: String,
        #[serde(with = "unix_seconds")]
        since: SystemTime,
    },
    /// No kubeconfig: static peers only, nothing to watch.
    Static,
}

mod unix_seconds {
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
