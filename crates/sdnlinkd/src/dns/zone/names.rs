//! Owner names and labels: the dashed address forms, reverse apexes, and the names of
//! Services, endpoints and SRV records under a zone.

use crate::model::{Endpoint, Service};
use hickory_proto::rr::Name;
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub(super) fn name(s: &str) -> Option<Name> {
    let mut n = Name::from_ascii(s).ok()?;
    n.set_fqdn(true);
    Some(n)
}

/// `10.0.0.1` -> `10-0-0-1`; IPv6 `fd00::1` -> `fd00--1` (the dashed forms Kubernetes DNS uses
/// for pod names and hostless endpoints).
pub fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

pub(super) fn undashed(label: &str) -> Option<IpAddr> {
    if let Ok(v4) = label.replace('-', ".").parse::<Ipv4Addr>() {
        return Some(IpAddr::V4(v4));
    }
    label
        .replace('-', ":")
        .parse::<Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

/// The reverse apex of a CIDR: its prefix rounded down to a label boundary (8 bits for IPv4,
/// 4 for IPv6, RFC 1035 3.5 / RFC 3596 2.5), so a /12 service CIDR lives under `10.in-addr.arpa`.
pub(super) fn reverse_apex(net: IpNet) -> Option<Name> {
    let labels = match net {
        IpNet::V4(_) => net.prefix_len() / 8,
        IpNet::V6(_) => net.prefix_len() / 4,
    };
    let full = Name::from(net.network());
    // `full` is the name of the whole address plus `in-addr.arpa` (2 labels) / `ip6.arpa` (2).
    Some(full.trim_to(labels as usize + 2))
}

/// Owner name of an endpoint under its service: its hostname, else its dashed first address.
pub(super) fn endpoint_label(ep: &Endpoint) -> Option<String> {
    match &ep.hostname {
        Some(h) if !h.is_empty() => Some(h.clone()),
        _ => ep.addresses.first().map(|ip| dashed(*ip)),
    }
}

pub(super) fn svc_name(apex: &Name, svc: &Service) -> Option<Name> {
    Name::from_ascii(format!("{}.{}.svc", svc.key.name, svc.key.namespace))
        .ok()?
        .append_domain(apex)
        .ok()
}

pub(super) fn srv_owner(port_name: &str, proto: &str, svc: &Name) -> Option<Name> {
    Name::from_ascii(format!("_{port_name}._{proto}"))
        .ok()?
        .append_domain(svc)
        .ok()
}

pub(super) fn child(label: &str, parent: &Name) -> Option<Name> {
    Name::from_ascii(label).ok()?.append_domain(parent).ok()
}
