//! Names in the owned table: the table itself, its base chains, per-family maps, and the
//! identifiers of per-service and per-endpoint chains and sets.

use super::super::table::ElemKey;
use crate::model::Protocol;
use crate::proxy::{Destination, VirtualKey};
use std::net::IpAddr;

/// Family of the owned table.
pub const FAMILY: &str = "inet";
/// Name of the one table sdnlinkd owns in its namespace. Everything inside it is ours and is
/// repaired on a full sync; nothing outside it is ever touched.
pub const TABLE: &str = "sdnlink";
/// `FAMILY TABLE`, as nft commands name the table.
pub const TARGET: &str = "inet sdnlink";
/// Table comment marking ownership for whoever lists the ruleset by hand.
pub const TABLE_COMMENT: &str = "owned by sdnlinkd: repaired on every sync, do not edit";

pub(super) const REJECT_CHAIN: &str = "reject-chain";
pub(super) const SERVICES_CHAIN: &str = "services";

/// A base (hooked) chain of the table.
pub(super) struct BaseChain {
    pub(super) name: &'static str,
    pub(super) kind: &'static str,
    pub(super) hook: &'static str,
    /// Numeric, because Debian 12's nft 1.0.6 rejects `dstnat` on an `output` nat chain.
    pub(super) priority: i64,
}

/// Filter chains run just before DNAT (-100) to reject connections to Services without
/// endpoints; nat chains run at the DNAT priority. Prerouting catches traffic arriving from the
/// host over the veth, output catches connections made inside the namespace.
pub(super) const BASE_CHAINS: [BaseChain; 4] = [
    BaseChain {
        name: "filter-prerouting",
        kind: "filter",
        hook: "prerouting",
        priority: -110,
    },
    BaseChain {
        name: "filter-output",
        kind: "filter",
        hook: "output",
        priority: -110,
    },
    BaseChain {
        name: "nat-prerouting",
        kind: "nat",
        hook: "prerouting",
        priority: -100,
    },
    BaseChain {
        name: "nat-output",
        kind: "nat",
        hook: "output",
        priority: -100,
    },
];

pub(super) fn v6(a: IpAddr) -> bool {
    a.is_ipv6()
}

pub(super) fn ip_kw(a: IpAddr) -> &'static str {
    if v6(a) {
        "ip6"
    } else {
        "ip"
    }
}

pub(super) fn addr_type(a: IpAddr) -> &'static str {
    if v6(a) {
        "ipv6_addr"
    } else {
        "ipv4_addr"
    }
}

pub(super) fn suffix(a: IpAddr) -> &'static str {
    if v6(a) {
        "6"
    } else {
        ""
    }
}

pub(super) fn service_map(a: IpAddr) -> String {
    format!("service-ips{}", suffix(a))
}

pub(super) fn no_endpoint_map(a: IpAddr) -> String {
    format!("no-endpoint-services{}", suffix(a))
}

pub(super) fn endpoints_map(a: IpAddr, p: Protocol) -> String {
    format!("endpoints{}-{p}", suffix(a))
}

pub(super) const PROTOCOLS: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

/// IP protocol number (IANA), as the maps' `inet_proto` keys hold it.
pub fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

pub(super) fn protocol_of(n: u8) -> Option<Protocol> {
    match n {
        6 => Some(Protocol::Tcp),
        17 => Some(Protocol::Udp),
        132 => Some(Protocol::Sctp),
        _ => None,
    }
}

/// An address as part of an nft identifier: `:` is not allowed in unquoted names, and no IPv6
/// text form contains `_`, so replacing one with the other keeps names unique.
pub(super) fn ident_addr(a: IpAddr) -> String {
    a.to_string().replace(':', "_")
}

/// Deterministic suffix naming a virtual service: `10.96.0.10-tcp-80`.
pub(super) fn key_ident(k: &VirtualKey) -> String {
    format!("{}-{}-{}", ident_addr(k.vip), k.protocol, k.port)
}

pub(super) fn dest_ident(k: &VirtualKey, d: &Destination) -> String {
    format!("{}-{}-{}", key_ident(k), ident_addr(d.addr), d.port)
}

/// Name of the per-service chain of `key`.
pub fn service_chain(key: &VirtualKey) -> String {
    format!("svc-{}", key_ident(key))
}

/// Name of the per-endpoint chain of `dest` in `key` (ClientIP affinity only).
pub fn endpoint_chain(key: &VirtualKey, dest: &Destination) -> String {
    format!("ep-{}", dest_ident(key, dest))
}

/// Name of the affinity set of `dest` in `key`.
pub fn affinity_set(key: &VirtualKey, dest: &Destination) -> String {
    format!("aff-{}", dest_ident(key, dest))
}

/// Key of a service in the verdict maps.
pub(super) fn service_key(k: &VirtualKey) -> ElemKey {
    ElemKey {
        addr: k.vip,
        proto: Some(proto_number(k.protocol)),
        port: k.port,
        index: None,
    }
}

/// Key of the `index`-th endpoint of a service in its endpoint map.
pub(super) fn endpoint_key(k: &VirtualKey, index: u32) -> ElemKey {
    ElemKey {
        addr: k.vip,
        proto: None,
        port: k.port,
        index: Some(index),
    }
}
