//! Node and OpenShift HostSubnet conversion: the trusted pod subnets of a node and our
//! WireGuard annotations.

use super::fields::{data, opt_arr, opt_obj, opt_str, Bad};
use super::names::is_dns1123_subdomain;
use super::{
    shown, Converted, Skip, SkipReason, Trust, ANNOTATION_ENDPOINT, ANNOTATION_PUBLIC_KEY,
    MAX_ANNOTATION_VALUE, MAX_HOST_SUBNETS_PER_NODE, MAX_NODE_POD_CIDRS,
};
use crate::model::Node;
use ipnet::IpNet;
use kube::core::DynamicObject;

/// A Node as the store keeps it: the pod subnets of its spec and our annotations.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeRecord {
    /// `metadata.name`.
    pub name: String,
    /// `spec.podCIDRs` (or `spec.podCIDR`) inside the pod CIDRs, truncated, in spec order.
    pub pod_cidrs: Vec<IpNet>,
    /// [`ANNOTATION_PUBLIC_KEY`], raw.
    pub public_key: Option<String>,
    /// [`ANNOTATION_ENDPOINT`], raw.
    pub endpoint: Option<String>,
}

/// OpenShift SDN's `HostSubnet` (network.openshift.io/v1): the pod subnet of one node lives
/// here instead of in `Node.spec.podCIDRs`. Only the fields sdnlinkd reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostSubnet {
    /// Name of the node this subnet belongs to.
    pub host: String,
    /// The node's pod subnet, a CIDR (checked when the node is converted).
    pub subnet: String,
}

fn annotation(o: &DynamicObject, key: &str, skips: &mut Vec<Skip>, node: &str) -> Option<String> {
    let v = o.metadata.annotations.as_ref()?.get(key)?;
    if v.len() > MAX_ANNOTATION_VALUE {
        skips.push(Skip::new(
            SkipReason::Malformed,
            format!("Node {node}: annotation {key} is {} bytes long", v.len()),
        ));
        return None;
    }
    Some(v.clone())
}

/// Converts a Node object into its record: the spec's pod subnets inside the pod CIDRs, and our
/// two annotations (every other annotation is left behind).
pub fn node_record(o: &DynamicObject, trust: Trust<'_>) -> Converted<NodeRecord> {
    let Some(name) = o.metadata.name.clone() else {
        return Converted::refused(SkipReason::Malformed, "Node without metadata.name".into());
    };
    if !is_dns1123_subdomain(&name) {
        return Converted::refused(
            SkipReason::InvalidNodeName,
            format!(
                "Node {}: the name is not a DNS-1123 subdomain",
                shown(&name)
            ),
        );
    }
    let raw = match node_cidrs(o) {
        Ok(r) => r,
        Err(Bad(why)) => {
            return Converted::refused(SkipReason::Malformed, format!("Node {name}: {why}"))
        }
    };
    if raw.len() > MAX_NODE_POD_CIDRS {
        return Converted::refused(
            SkipReason::Malformed,
            format!("Node {name}: {} podCIDRs", raw.len()),
        );
    }
    let mut skips = Vec::new();
    let mut pod_cidrs = Vec::new();
    for s in raw {
        if let Some(net) = trusted_subnet(&name, s, trust, &mut skips) {
            if !pod_cidrs.contains(&net) {
                pod_cidrs.push(net);
            }
        }
    }
    let public_key = annotation(o, ANNOTATION_PUBLIC_KEY, &mut skips, &name);
    let endpoint = annotation(o, ANNOTATION_ENDPOINT, &mut skips, &name);
    Converted {
        value: Some(NodeRecord {
            name,
            pod_cidrs,
            public_key,
            endpoint,
        }),
        skips,
    }
}

fn node_cidrs(o: &DynamicObject) -> Result<Vec<&str>, Bad> {
    let Some(spec) = opt_obj(data(o)?, "spec")? else {
        return Ok(Vec::new());
    };
    let list = opt_arr(spec, "podCIDRs")?;
    if list.is_empty() {
        return Ok(opt_str(spec, "podCIDR")?.into_iter().collect());
    }
    list.iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| Bad("podCIDRs holds a non-string".into()))
        })
        .collect()
}

fn trusted_subnet(node: &str, s: &str, trust: Trust<'_>, skips: &mut Vec<Skip>) -> Option<IpNet> {
    let Ok(net) = s.parse::<IpNet>() else {
        skips.push(Skip::new(
            SkipReason::Malformed,
            format!("Node {node}: bad pod subnet {}", shown(s)),
        ));
        return None;
    };
    let net = net.trunc();
    if trust.pod_cidrs.iter().any(|p| p.contains(&net)) {
        Some(net)
    } else {
        skips.push(Skip::new(
            SkipReason::NodeSubnetOutsidePodCidrs,
            format!("Node {node}: pod subnet {net} outside the pod CIDRs"),
        ));
        None
    }
}

/// Converts a HostSubnet object (only `host` and `subnet` are read).
pub fn host_subnet(o: &DynamicObject) -> Converted<HostSubnet> {
    let name = o.metadata.name.as_deref().unwrap_or("<unnamed>");
    let parsed = data(o).and_then(|d| Ok((opt_str(d, "host")?, opt_str(d, "subnet")?)));
    if !is_dns1123_subdomain(name) {
        return Converted::refused(
            SkipReason::Malformed,
            format!(
                "HostSubnet {}: the name is not a DNS-1123 subdomain",
                shown(name)
            ),
        );
    }
    match parsed {
        Err(Bad(why)) => Converted::refused(
            SkipReason::Malformed,
            format!("HostSubnet {}: {why}", shown(name)),
        ),
        Ok((Some(host), _)) if !is_dns1123_subdomain(host) => Converted::refused(
            SkipReason::InvalidNodeName,
            format!(
                "HostSubnet {}: host {} is not a DNS-1123 subdomain",
                shown(name),
                shown(host)
            ),
        ),
        Ok((host, subnet)) => Converted {
            value: Some(HostSubnet {
                host: host.unwrap_or_default().to_string(),
                subnet: subnet.unwrap_or_default().to_string(),
            }),
            skips: Vec::new(),
        },
    }
}

/// The snapshot Node of `rec` with the subnets of the OpenShift HostSubnets naming it as
/// `host` (at most [`MAX_HOST_SUBNETS_PER_NODE`] are read). Subnets outside the pod CIDRs are
/// dropped; the node itself stays (its annotations still describe a peer, just with fewer
/// allowed IPs).
pub fn node(rec: &NodeRecord, host_subnets: &[&HostSubnet], trust: Trust<'_>) -> Converted<Node> {
    let mut skips = Vec::new();
    let mut pod_cidrs = rec.pod_cidrs.clone();
    for h in host_subnets.iter().take(MAX_HOST_SUBNETS_PER_NODE) {
        if let Some(net) = trusted_subnet(&rec.name, &h.subnet, trust, &mut skips) {
            if !pod_cidrs.contains(&net) {
                pod_cidrs.push(net);
            }
        }
    }
    if host_subnets.len() > MAX_HOST_SUBNETS_PER_NODE {
        skips.push(Skip::new(
            SkipReason::Malformed,
            format!(
                "Node {}: more than {MAX_HOST_SUBNETS_PER_NODE} HostSubnets name it; only the first {MAX_HOST_SUBNETS_PER_NODE} by name are read",
                rec.name,
            ),
        ));
    }
    pod_cidrs.sort();
    Converted {
        value: Some(Node {
            name: rec.name.clone(),
            pod_cidrs,
            wireguard_public_key: rec.public_key.clone(),
            wireguard_endpoint: rec.endpoint.clone(),
        }),
        skips,
    }
}
