//! Pure conversion of Kubernetes objects, as the watches deliver them, into compact records and
//! [`crate::model`] values, with the trust rules of docs/design.md applied at this boundary: a remote
//! cluster never gets a ClusterIP outside its service CIDRs, an endpoint outside its pod CIDRs,
//! a node subnet outside its pod CIDRs, a name the API server would refuse, or more ports or
//! endpoints than the API server admits into the snapshot. Only the fields the daemon uses are
//! read (never managedFields or foreign annotations), straight from the object's JSON. Nothing
//! here logs or panics: every dropped piece comes back as a [`Skip`] so the caller can log it
//! once and count it.

mod fields;
mod intern;
mod names;
mod node;
mod service;
mod slice;

pub use intern::Interner;
pub use names::{is_dns1035_label, is_dns1123_label, is_dns1123_subdomain};
pub use node::{host_subnet, node, node_record, HostSubnet, NodeRecord};
pub use service::{assemble, service, service_record, ServiceRecord};
pub use slice::{merge_endpoints, slice_record, slice_service, SliceEndpoint, SliceRecord};

use ipnet::IpNet;
use serde::Serialize;
use std::net::IpAddr;

/// Node annotation holding the node's WireGuard public key (base64 of 32 bytes), written by the
/// node's own sdnlinkd through the local kubeconfig and read by the daemons of other clusters.
pub const ANNOTATION_PUBLIC_KEY: &str = "sdnlink.io/wireguard-public-key";
/// Node annotation holding the node's advertised WireGuard endpoint (`IP:port` or
/// `[IPv6]:port`); absent when the node is not reachable from outside (it then only dials out).
pub const ANNOTATION_ENDPOINT: &str = "sdnlink.io/wireguard-endpoint";
/// EndpointSlice label naming the Service the slice belongs to (set by the EndpointSlice
/// controller; slices without it are not attached to any Service, as in kube-proxy).
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// `sessionAffinityConfig.clientIP.timeoutSeconds` default of the Kubernetes API (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// EndpointSlice API limit (discovery/v1 `endpoints`: "a maximum of 1000 endpoints").
pub const MAX_SLICE_ENDPOINTS: usize = 1000;
/// EndpointSlice API limit (discovery/v1 `ports`: "a maximum of 100 ports").
pub const MAX_SLICE_PORTS: usize = 100;
/// EndpointSlice API limit (discovery/v1 `endpoints[].addresses`: "no more than 100").
pub const MAX_ENDPOINT_ADDRESSES: usize = 100;
/// The Service API sets no count of its own (only the object size), but the EndpointSlice
/// controller copies a Service's ports into each of its slices, which admit at most
/// [`MAX_SLICE_PORTS`]: ports beyond that can never have endpoints, so a Service with more is
/// refused whole rather than served in part.
pub const MAX_SERVICE_PORTS: usize = MAX_SLICE_PORTS;
/// Core API limit: `clusterIPs` holds at most one address per family.
const MAX_CLUSTER_IPS: usize = 2;
/// Core API limit: `podCIDRs` holds at most one CIDR per family. A few more are read (and
/// refused one by one by the CIDR rule) so a hostile list shows in the counts; a longer one is
/// refused whole.
const MAX_NODE_POD_CIDRS: usize = 16;
/// OpenShift SDN gives each node one HostSubnet; more naming one host are ignored past this.
pub const MAX_HOST_SUBNETS_PER_NODE: usize = 16;
/// Our annotations hold a 44-character key and an `address:port`; longer values are refused so
/// the store never keeps a remote's large annotation.
const MAX_ANNOTATION_VALUE: usize = 256;
/// Remote values quoted in log details are cut to this many characters.
const SHOWN_MAX: usize = 64;

/// Why a piece of a remote object was not taken into the snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// A ClusterIP outside the cluster's configured service CIDRs.
    ClusterIpOutsideServiceCidrs,
    /// An endpoint address outside the cluster's configured pod CIDRs.
    EndpointOutsidePodCidrs,
    /// A node pod subnet outside the cluster's configured pod CIDRs.
    NodeSubnetOutsidePodCidrs,
    /// The object (or a part of it) does not parse: bad IP, port out of range, missing field.
    Malformed,
    /// The cluster already has `sync.max_objects_per_cluster` objects.
    ObjectCap,
    /// The cluster's objects would take more than `sync.max_bytes_per_cluster`.
    ByteCap,
    /// A Service name that is not a DNS-1035 label (the API server's rule).
    InvalidServiceName,
    /// A namespace that is not a DNS-1123 label.
    InvalidNamespace,
    /// An endpoint hostname that is not a DNS-1123 label.
    InvalidEndpointHostname,
    /// A Service or EndpointSlice port name that is not a DNS-1123 label.
    InvalidPortName,
    /// An ExternalName that is not a DNS-1123 subdomain.
    InvalidExternalName,
    /// A Node name (or an endpoint's nodeName, a HostSubnet's host) that is not a DNS-1123
    /// subdomain.
    InvalidNodeName,
    /// A Service whose ClusterIP an older Service of the same cluster already claims.
    ClusterIpConflict,
    /// More ports than the API server admits (Service or EndpointSlice).
    TooManyPorts,
    /// An EndpointSlice with more endpoints than the API server admits.
    TooManyEndpoints,
    /// An endpoint with more addresses than the API server admits.
    TooManyAddresses,
}

impl SkipReason {
    /// The snake_case name used in status and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::ClusterIpOutsideServiceCidrs => "cluster_ip_outside_service_cidrs",
            SkipReason::EndpointOutsidePodCidrs => "endpoint_outside_pod_cidrs",
            SkipReason::NodeSubnetOutsidePodCidrs => "node_subnet_outside_pod_cidrs",
            SkipReason::Malformed => "malformed",
            SkipReason::ObjectCap => "object_cap",
            SkipReason::ByteCap => "byte_cap",
            SkipReason::InvalidServiceName => "invalid_service_name",
            SkipReason::InvalidNamespace => "invalid_namespace",
            SkipReason::InvalidEndpointHostname => "invalid_endpoint_hostname",
            SkipReason::InvalidPortName => "invalid_port_name",
            SkipReason::InvalidExternalName => "invalid_external_name",
            SkipReason::InvalidNodeName => "invalid_node_name",
            SkipReason::ClusterIpConflict => "cluster_ip_conflict",
            SkipReason::TooManyPorts => "too_many_ports",
            SkipReason::TooManyEndpoints => "too_many_endpoints",
            SkipReason::TooManyAddresses => "too_many_addresses",
        }
    }
}

/// One dropped piece, with a human-readable detail for the log line.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Skip {
    /// The counted category.
    pub reason: SkipReason,
    /// What exactly, naming the object (never credentials; remote values cut short).
    pub detail: String,
}

impl Skip {
    pub(crate) fn new(reason: SkipReason, detail: impl Into<String>) -> Skip {
        Skip {
            reason,
            detail: detail.into(),
        }
    }
}

/// The result of converting one object: the value (if anything is left of it) and what was
/// dropped on the way.
#[derive(Clone, Debug, PartialEq)]
pub struct Converted<T> {
    /// What is left of the object after the trust rules; `None` when nothing usable is.
    pub value: Option<T>,
    /// Everything dropped on the way.
    pub skips: Vec<Skip>,
}

impl<T> Converted<T> {
    fn refused(reason: SkipReason, detail: String) -> Converted<T> {
        Converted {
            value: None,
            skips: vec![Skip::new(reason, detail)],
        }
    }
}

/// The CIDRs a cluster's objects must lie in (from the config).
#[derive(Clone, Copy, Debug)]
pub struct Trust<'a> {
    /// Endpoint addresses and node subnets must lie in one of these.
    pub pod_cidrs: &'a [IpNet],
    /// ClusterIPs must lie in one of these.
    pub service_cidrs: &'a [IpNet],
}

fn in_any(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(&ip))
}

/// A remote value for a log line: quoted, and cut to [`SHOWN_MAX`] characters.
pub(crate) fn shown(s: &str) -> String {
    match s.char_indices().nth(SHOWN_MAX) {
        Some((i, _)) => format!("{:?}...", &s[..i]),
        None => format!("{s:?}"),
    }
}

#[cfg(test)]
mod tests;
