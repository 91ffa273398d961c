//! Pure conversion of Kubernetes objects into [`crate::model`] values, with the trust rules of
//! design.md applied at this boundary: a remote cluster never gets a ClusterIP outside its
//! service CIDRs, an endpoint outside its pod CIDRs or a node subnet outside its pod CIDRs into
//! the snapshot. Nothing here logs or panics: every dropped piece comes back as a [`Skip`] so the
//! caller can log it once and count it.

use crate::model::{
    Endpoint, EndpointPort, Node, Protocol, Service, ServiceKey, ServiceKind, ServicePort,
    TargetPort,
};
use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};
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
        }
    }
}

/// One dropped piece, with a human-readable detail for the log line.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Skip {
    /// The counted category.
    pub reason: SkipReason,
    /// What exactly, naming the object (never credentials).
    pub detail: String,
}

impl Skip {
    fn new(reason: SkipReason, detail: impl Into<String>) -> Skip {
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

/// OpenShift SDN's `HostSubnet` (network.openshift.io/v1): the pod subnet of one node lives
/// here instead of in `Node.spec.podCIDRs`. Only the fields sdnlinkd reads.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct HostSubnet {
    /// Standard object metadata (the name is the node name by OpenShift convention).
    #[serde(default)]
    pub metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    /// Name of the node this subnet belongs to.
    #[serde(default)]
    pub host: String,
    /// The node's host address (not used: endpoints come from the node annotation).
    #[serde(default, rename = "hostIP")]
    pub host_ip: String,
    /// The node's pod subnet, a CIDR.
    #[serde(default)]
    pub subnet: String,
}

fn port_u16(p: i32) -> Option<u16> {
    u16::try_from(p).ok().filter(|p| *p != 0)
}

/// Converts a Service and the EndpointSlices that name it (label
/// `kubernetes.io/service-name`) into a snapshot Service.
///
/// Slices of several generations are merged; an endpoint present in two slices (the
/// controller moving it) appears once. Endpoints are sorted so the result does not depend on
/// the order objects arrived in.
pub fn service(
    svc: &core::Service,
    slices: &[&discovery::EndpointSlice],
    trust: Trust<'_>,
) -> Converted<Service> {
    let mut skips = Vec::new();
    let malformed = |why: String| Converted {
        value: None,
        skips: vec![Skip::new(SkipReason::Malformed, why)],
    };
    let (Some(namespace), Some(name)) = (&svc.metadata.namespace, &svc.metadata.name) else {
        return malformed("Service without metadata.namespace/name".into());
    };
    let key = ServiceKey {
        namespace: namespace.clone(),
        name: name.clone(),
    };
    let Some(spec) = &svc.spec else {
        return malformed(format!("Service {key}: no spec"));
    };

    let mut ports = Vec::new();
    for p in spec.ports.iter().flatten() {
        let pname = p.name.clone().unwrap_or_default();
        let Some(port) = port_u16(p.port) else {
            return malformed(format!("Service {key}: port {} out of range", p.port));
        };
        let Some(protocol) = Protocol::from_k8s(p.protocol.as_deref()) else {
            return malformed(format!(
                "Service {key}: unknown protocol {:?}",
                p.protocol.as_deref().unwrap_or_default()
            ));
        };
        let target_port = match &p.target_port {
            None => TargetPort::Number(port),
            Some(IntOrString::Int(n)) => match port_u16(*n) {
                Some(n) => TargetPort::Number(n),
                None => return malformed(format!("Service {key}: targetPort {n} out of range")),
            },
            Some(IntOrString::String(s)) if s.is_empty() => TargetPort::Number(port),
            Some(IntOrString::String(s)) => match s.parse::<i32>() {
                // The API stores numeric strings as names only by mistake; kube-proxy treats
                // them as numbers, and so do we.
                Ok(n) => match port_u16(n) {
                    Some(n) => TargetPort::Number(n),
                    None => {
                        return malformed(format!("Service {key}: targetPort {n} out of range"))
                    }
                },
                Err(_) => TargetPort::Name(s.clone()),
            },
        };
        ports.push(ServicePort {
            name: pname,
            protocol,
            port,
            target_port,
        });
    }

    let kind = if spec.type_.as_deref() == Some("ExternalName") {
        match spec.external_name.as_deref().filter(|n| !n.is_empty()) {
            Some(n) => ServiceKind::ExternalName(n.trim_end_matches('.').to_string()),
            None => return malformed(format!("Service {key}: ExternalName without externalName")),
        }
    } else {
        let raw: Vec<&str> = match spec.cluster_ips.as_deref() {
            Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
            _ => spec.cluster_ip.as_deref().into_iter().collect(),
        };
        if raw.first() == Some(&"None") {
            ServiceKind::Headless
        } else if raw.is_empty() || raw.iter().all(|s| s.is_empty()) {
            return malformed(format!("Service {key}: no clusterIP allocated"));
        } else {
            let mut ips = Vec::new();
            for s in raw {
                let Ok(ip) = s.parse::<IpAddr>() else {
                    return malformed(format!("Service {key}: bad clusterIP {s:?}"));
                };
                if in_any(trust.service_cidrs, ip) {
                    ips.push(ip);
                } else {
                    skips.push(Skip::new(
                        SkipReason::ClusterIpOutsideServiceCidrs,
                        format!("Service {key}: clusterIP {ip} outside the service CIDRs"),
                    ));
                }
            }
            if ips.is_empty() {
                return Converted { value: None, skips };
            }
            ServiceKind::ClusterIp(ips)
        }
    };

    let client_ip_affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| (1..=86_400).contains(t))
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
    });

    let mut endpoints: Vec<Endpoint> = Vec::new();
    if !matches!(kind, ServiceKind::ExternalName(_)) {
        let mut sorted: Vec<&&discovery::EndpointSlice> = slices.iter().collect();
        sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        for slice in sorted {
            endpoints.extend(slice_endpoints(&key, slice, trust, &mut skips));
        }
        endpoints.sort_by(|a, b| {
            (&a.addresses, &a.ports, &a.hostname).cmp(&(&b.addresses, &b.ports, &b.hostname))
        });
        endpoints.dedup_by(|a, b| a.addresses == b.addresses && a.ports == b.ports);
    }

    Converted {
        value: Some(Service {
            key,
            kind,
            ports,
            client_ip_affinity,
            endpoints,
        }),
        skips,
    }
}

fn slice_endpoints(
    key: &ServiceKey,
    slice: &discovery::EndpointSlice,
    trust: Trust<'_>,
    skips: &mut Vec<Skip>,
) -> Vec<Endpoint> {
    let sname = slice.metadata.name.as_deref().unwrap_or("<unnamed>");
    let want_v4 = match slice.address_type.as_str() {
        "IPv4" => true,
        "IPv6" => false,
        // FQDN slices are deprecated and never proxied by kube-proxy either.
        _ => return Vec::new(),
    };
    let mut ports = Vec::new();
    for p in slice.ports.iter().flatten() {
        let (Some(port), Some(protocol)) = (
            p.port.and_then(port_u16),
            Protocol::from_k8s(p.protocol.as_deref()),
        ) else {
            skips.push(Skip::new(
                SkipReason::Malformed,
                format!(
                    "EndpointSlice {}/{sname} of {key}: bad port {p:?}",
                    key.namespace
                ),
            ));
            return Vec::new();
        };
        ports.push(EndpointPort {
            name: p.name.clone().unwrap_or_default(),
            protocol,
            port,
        });
    }
    ports.sort();

    let mut out = Vec::new();
    for ep in &slice.endpoints {
        let mut addresses = Vec::new();
        for a in &ep.addresses {
            match a.parse::<IpAddr>() {
                Ok(ip) if ip.is_ipv4() == want_v4 => {
                    if in_any(trust.pod_cidrs, ip) {
                        addresses.push(ip);
                    } else {
                        skips.push(Skip::new(
                            SkipReason::EndpointOutsidePodCidrs,
                            format!("EndpointSlice {}/{sname} of {key}: endpoint {ip} outside the pod CIDRs", key.namespace),
                        ));
                    }
                }
                _ => skips.push(Skip::new(
                    SkipReason::Malformed,
                    format!(
                        "EndpointSlice {}/{sname} of {key}: bad {} address {a:?}",
                        key.namespace, slice.address_type
                    ),
                )),
            }
        }
        if addresses.is_empty() {
            continue;
        }
        addresses.sort();
        let cond = ep.conditions.clone().unwrap_or_default();
        // EndpointSlice API: absent `ready` means ready, absent `serving` follows `ready`.
        let ready = cond.ready.unwrap_or(true);
        out.push(Endpoint {
            addresses,
            ready,
            serving: cond.serving.unwrap_or(ready),
            terminating: cond.terminating.unwrap_or(false),
            hostname: ep.hostname.clone(),
            node_name: ep.node_name.clone(),
            ports: ports.clone(),
        });
    }
    out
}

/// The Service an EndpointSlice belongs to, from its label.
pub fn slice_service(slice: &discovery::EndpointSlice) -> Option<ServiceKey> {
    let ns = slice.metadata.namespace.clone()?;
    let name = slice
        .metadata
        .labels
        .as_ref()?
        .get(LABEL_SERVICE_NAME)?
        .clone();
    Some(ServiceKey {
        namespace: ns,
        name,
    })
}

/// Converts a Node (and the OpenShift HostSubnets naming it as `host`) into a snapshot Node.
/// Subnets outside the pod CIDRs are dropped; the node itself stays (its annotations still
/// describe a peer, just with fewer allowed IPs).
pub fn node(n: &core::Node, host_subnets: &[&HostSubnet], trust: Trust<'_>) -> Converted<Node> {
    let Some(name) = n.metadata.name.clone() else {
        return Converted {
            value: None,
            skips: vec![Skip::new(
                SkipReason::Malformed,
                "Node without metadata.name",
            )],
        };
    };
    let mut skips = Vec::new();
    let spec = n.spec.clone().unwrap_or_default();
    let mut raw: Vec<String> = match spec.pod_cidrs {
        Some(c) if !c.is_empty() => c,
        _ => spec.pod_cidr.into_iter().collect(),
    };
    raw.extend(host_subnets.iter().map(|h| h.subnet.clone()));
    let mut pod_cidrs: Vec<IpNet> = Vec::new();
    for s in raw {
        let Ok(net) = s.parse::<IpNet>() else {
            skips.push(Skip::new(
                SkipReason::Malformed,
                format!("Node {name}: bad pod subnet {s:?}"),
            ));
            continue;
        };
        let net = net.trunc();
        if trust.pod_cidrs.iter().any(|p| p.contains(&net)) {
            if !pod_cidrs.contains(&net) {
                pod_cidrs.push(net);
            }
        } else {
            skips.push(Skip::new(
                SkipReason::NodeSubnetOutsidePodCidrs,
                format!("Node {name}: pod subnet {net} outside the pod CIDRs"),
            ));
        }
    }
    pod_cidrs.sort();
    let ann = n.metadata.annotations.clone().unwrap_or_default();
    Converted {
        value: Some(Node {
            name,
            pod_cidrs,
            wireguard_public_key: ann.get(ANNOTATION_PUBLIC_KEY).cloned(),
            wireguard_endpoint: ann.get(ANNOTATION_ENDPOINT).cloned(),
        }),
        skips,
    }
}

#[cfg(test)]
mod tests;
