//! The store's record of each converted object, with its skipped pieces and its share of the
//! byte cap, counted once when the record is made so the accounting never walks the store.

use super::ObjKey;
use crate::clusters::convert::{
    HostSubnet, NodeRecord, ServiceRecord, Skip, SkipReason, SliceEndpoint, SliceRecord,
};
use crate::model::{
    Endpoint, EndpointPort, Node, Service, ServiceKey, ServiceKind, ServicePort, TargetPort,
};
use ipnet::IpNet;
use std::mem::size_of;
use std::net::IpAddr;

/// Bookkeeping per map entry (tree node share, key) in the byte accounting.
const ENTRY_OVERHEAD: usize = 64;

/// A record's skipped pieces as the store keeps them: per reason, the count and the first
/// detail (not every detail: a slice can drop 100,000 addresses).
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Skips(pub(super) Vec<(SkipReason, u32, String)>);

impl Skips {
    pub(super) fn of(list: Vec<Skip>) -> Skips {
        let mut out: Vec<(SkipReason, u32, String)> = Vec::new();
        for s in list {
            match out.iter_mut().find(|e| e.0 == s.reason) {
                Some(e) => e.1 = e.1.saturating_add(1),
                None => out.push((s.reason, 1, s.detail)),
            }
        }
        out.sort_by_key(|e| e.0);
        Skips(out)
    }

    pub(super) fn count(&self, r: SkipReason) -> u32 {
        self.0.iter().find(|e| e.0 == r).map_or(0, |e| e.1)
    }

    fn bytes(&self) -> usize {
        self.0.capacity() * size_of::<(SkipReason, u32, String)>()
            + self.0.iter().map(|e| e.2.capacity()).sum::<usize>()
    }
}

fn key_bytes(k: &ServiceKey) -> usize {
    k.namespace.capacity() + k.name.capacity()
}

fn service_bytes(s: &Service) -> usize {
    let kind = match &s.kind {
        ServiceKind::ClusterIp(ips) => ips.capacity() * size_of::<IpAddr>(),
        ServiceKind::Headless => 0,
        ServiceKind::ExternalName(n) => n.capacity(),
    };
    let ports: usize = s
        .ports
        .iter()
        .map(|p| {
            p.name.capacity()
                + match &p.target_port {
                    TargetPort::Name(n) => n.capacity(),
                    TargetPort::Number(_) => 0,
                }
        })
        .sum();
    size_of::<Service>()
        + key_bytes(&s.key)
        + kind
        + s.ports.capacity() * size_of::<ServicePort>()
        + ports
}

/// One endpoint as the slice record keeps it plus its copy in the snapshot.
fn endpoint_bytes(e: &SliceEndpoint) -> usize {
    let more = e.addresses().1.len();
    let host = e.hostname().map_or(0, str::len);
    // The node name is shared (interned); it is counted per endpoint anyway, so the figure
    // stays an upper bound whatever the remote sends.
    let node = e.node_name.as_ref().map_or(0, |n| n.len());
    size_of::<SliceEndpoint>()
        + e.extra_bytes()
        + node
        + size_of::<Endpoint>()
        + (1 + more) * size_of::<IpAddr>()
        + host
}

pub(super) struct SvcEntry {
    pub(super) rec: ServiceRecord,
    pub(super) skips: Skips,
    pub(super) bytes: usize,
}

impl SvcEntry {
    pub(super) fn new(rec: ServiceRecord, skips: Skips) -> SvcEntry {
        let ips = match &rec.service.kind {
            ServiceKind::ClusterIp(ips) => ips.len(),
            _ => 0,
        };
        // The record, its copy in the snapshot, and one claim per ClusterIP.
        let bytes = 2 * service_bytes(&rec.service)
            + ips
                * (size_of::<(IpAddr, i64, ServiceKey)>()
                    + key_bytes(&rec.service.key)
                    + ENTRY_OVERHEAD)
            + skips.bytes()
            + 2 * ENTRY_OVERHEAD;
        SvcEntry { rec, skips, bytes }
    }
}

pub(super) struct SliceEntry {
    pub(super) rec: SliceRecord,
    pub(super) skips: Skips,
    pub(super) bytes: usize,
}

impl SliceEntry {
    pub(super) fn new(k: &ObjKey, rec: SliceRecord, skips: Skips) -> SliceEntry {
        // The endpoints (the record, and the merged copy in the snapshot), the port list once
        // (shared), the key (in the slice map and in the Service's slice index).
        let bytes = rec.endpoints.iter().map(endpoint_bytes).sum::<usize>()
            + rec
                .ports
                .iter()
                .map(|p| size_of::<EndpointPort>() + p.name.len())
                .sum::<usize>()
            + 2 * (k.0.len() + k.1.len() + ENTRY_OVERHEAD)
            + rec.service.as_ref().map_or(0, key_bytes)
            + size_of::<SliceRecord>()
            + skips.bytes();
        SliceEntry { rec, skips, bytes }
    }
}

pub(super) struct NodeEntry {
    pub(super) rec: NodeRecord,
    pub(super) skips: Skips,
    /// Pieces dropped when its HostSubnets were merged in.
    pub(super) hs_skips: Skips,
    pub(super) bytes: usize,
}

impl NodeEntry {
    pub(super) fn new(rec: NodeRecord, skips: Skips) -> NodeEntry {
        let one = size_of::<Node>()
            + rec.name.capacity()
            + rec.pod_cidrs.capacity() * size_of::<IpNet>()
            + rec.public_key.as_ref().map_or(0, String::capacity)
            + rec.endpoint.as_ref().map_or(0, String::capacity);
        let bytes = 2 * one + skips.bytes() + 2 * ENTRY_OVERHEAD;
        NodeEntry {
            rec,
            skips,
            hs_skips: Skips::default(),
            bytes,
        }
    }
}

pub(super) struct HsEntry {
    pub(super) hs: HostSubnet,
    pub(super) bytes: usize,
}

impl HsEntry {
    pub(super) fn new(k: &ObjKey, hs: HostSubnet) -> HsEntry {
        let bytes = size_of::<HostSubnet>()
            + hs.host.capacity()
            + hs.subnet.capacity()
            + 2 * (k.1.len() + ENTRY_OVERHEAD);
        HsEntry { hs, bytes }
    }
}

/// One converted object, not yet in the store.
pub(super) enum Rec {
    Service(SvcEntry),
    Slice(SliceEntry),
    Node(NodeEntry),
    HostSubnet(HsEntry),
}

impl Rec {
    pub(super) fn bytes(&self) -> usize {
        match self {
            Rec::Service(e) => e.bytes,
            Rec::Slice(e) => e.bytes,
            Rec::Node(e) => e.bytes,
            Rec::HostSubnet(e) => e.bytes,
        }
    }
}
