//! The per-cluster store: compact records of what the watches delivered (only the fields the
//! daemon uses, already through the trust rules), the snapshot value built from them, what was
//! skipped and why, and the sync state of each watch.
//!
//! Everything here runs under the cluster's mutex, which readers take too, so no step is
//! superlinear in the cluster's data: an event costs O(log n) plus the size of the object it
//! carries; conflicts are resolved through an ordered index of ClusterIP claims; a node finds
//! its HostSubnets through an index. The snapshot is handed out as an `Arc` and changed in
//! place when nobody else holds it; the endpoints of a changed Service are merged from its
//! slices once per `snapshot()`, not once per event.
//!
//! Memory is bounded by `sync.max_objects_per_cluster` and `sync.max_bytes_per_cluster`
//! (approximate bytes of the records plus the snapshot built from them). An event over a cap
//! is refused (a held object keeps its last good version); a relist over a cap is refused whole
//! when a good snapshot exists, so it never replaces one with a partial list.

mod events;
mod index;
mod records;
mod skips;
mod sync_state;

pub use sync_state::{describe_client_error, describe_watch_error};

use super::convert::{self, Interner, SkipReason};
use crate::model::{ClusterSnapshot, Node, Service, ServiceKey, WarmSource};
use events::Staging;
use ipnet::IpNet;
use kube::core::DynamicObject;
use records::{HsEntry, NodeEntry, SliceEntry, SvcEntry};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// The kinds of object watched per cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Kind {
    /// core/v1 Service.
    Service,
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice,
    /// core/v1 Node.
    Node,
    /// network.openshift.io/v1 HostSubnet.
    HostSubnet,
}

impl Kind {
    /// Every kind, in watch order.
    pub const ALL: [Kind; 4] = [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Node,
        Kind::HostSubnet,
    ];

    fn label(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::Node => "nodes",
            Kind::HostSubnet => "hostsubnets",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Refused objects tracked one by one (so a later delete or fix uncounts them); past this,
/// refusals are only counted (until the next relist of their kind) and no longer logged, so a
/// remote flooding bad objects costs bounded memory and log lines.
const MAX_TRACKED_REFUSALS: usize = 10_000;

/// Refusal keys longer than this (names no API server admits) are shortened, so a hostile name
/// is not kept whole.
const MAX_KEY_LEN: usize = 300;

#[derive(Clone, Debug, Default)]
struct KindSync {
    listed_once: bool,
    /// (reason, since, last seen)
    error: Option<(String, SystemTime, Instant)>,
    /// A relist refused over a cap: the objects of this kind are those of the last good list
    /// (plus the watch events since) until a relist fits.
    cap_error: Option<(String, SystemTime)>,
}

/// Object counts of one cluster, as held (before trust filtering of their contents).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ObjectCounts {
    /// Services held.
    pub services: usize,
    /// EndpointSlices held.
    pub endpoint_slices: usize,
    /// Nodes held.
    pub nodes: usize,
    /// OpenShift HostSubnets held.
    pub host_subnets: usize,
    /// Approximate bytes of the records and the snapshot built from them, as counted against
    /// `sync.max_bytes_per_cluster`.
    pub bytes: usize,
}

type ObjKey = (String, String);

fn obj_key(o: &DynamicObject) -> Option<ObjKey> {
    Some((
        o.metadata.namespace.clone().unwrap_or_default(),
        o.metadata.name.clone()?,
    ))
}

fn key_str(k: &ObjKey) -> String {
    let s = if k.0.is_empty() {
        k.1.clone()
    } else {
        format!("{}/{}", k.0, k.1)
    };
    if s.len() <= MAX_KEY_LEN {
        return s;
    }
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    s.hash(&mut h);
    let cut = (0..=64).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
    format!("{}...#{:016x}", &s[..cut], h.finish())
}

fn service_key(k: &ObjKey) -> ServiceKey {
    ServiceKey {
        namespace: k.0.clone(),
        name: k.1.clone(),
    }
}

/// What one cluster's watches have delivered so far.
pub struct ClusterState {
    name: String,
    pod_cidrs: Vec<IpNet>,
    service_cidrs: Vec<IpNet>,
    cap: usize,
    /// `sync.max_bytes_per_cluster`, shared with the API client's response bound
    /// (src/clusters/body_limit.rs), which reads it at each request.
    body_cap: Arc<AtomicUsize>,
    services: HashMap<ServiceKey, SvcEntry>,
    slices: HashMap<ObjKey, SliceEntry>,
    /// (Service, slice name): the slices naming each Service, in name order. One set for
    /// all, not one per Service (a B-tree leaf costs over 500 bytes even for one element).
    slices_of: BTreeSet<(ServiceKey, String)>,
    nodes: HashMap<String, NodeEntry>,
    host_subnets: BTreeMap<String, HsEntry>,
    /// Host name -> names of the HostSubnets naming it.
    subnets_of: BTreeMap<String, BTreeSet<String>>,
    /// (ClusterIP, creation time, Service): the first entry of an address is its owner.
    claims: BTreeSet<(IpAddr, i64, ServiceKey)>,
    /// Services left out because an older one claims one of their ClusterIPs.
    losers: BTreeSet<ServiceKey>,
    /// Bytes held, per kind (see [`ObjectCounts::bytes`]).
    kind_bytes: [usize; 4],
    /// Objects refused whole (malformed, over a cap), by kind and key.
    refused: BTreeMap<(Kind, String), SkipReason>,
    /// Entries of `refused` per kind and reason.
    refused_per: BTreeMap<(Kind, SkipReason), usize>,
    /// Refusals past [`MAX_TRACKED_REFUSALS`], per kind and reason, until the kind relists.
    refused_overflow: BTreeMap<(Kind, SkipReason), u64>,
    /// Currently skipped pieces and objects, by reason.
    skip_counts: BTreeMap<SkipReason, u64>,
    /// Pieces and objects skipped anew since the store started, by reason (never decreases:
    /// `sdnlink_skipped_objects_total`).
    skip_totals: BTreeMap<SkipReason, u64>,
    staging: BTreeMap<Kind, Staging>,
    sync: BTreeMap<Kind, KindSync>,
    client_error: Option<(String, SystemTime)>,
    /// The live snapshot (also before the cluster listed, then just not served).
    snap: Arc<ClusterSnapshot>,
    /// Services whose snapshot value must be rebuilt at the next `snapshot()`.
    dirty: BTreeSet<ServiceKey>,
    /// Node values changed since the last `snapshot()` (`None`: gone).
    pending_nodes: BTreeMap<String, Option<Node>>,
    intern: Interner,
    /// What is served until every watch has listed in this run: a persisted snapshot, or the
    /// snapshot of the watch this one replaced on a reload.
    warm: Option<(Arc<ClusterSnapshot>, WarmSource)>,
    /// Counts changes of the served snapshot (and of listing), so readers can tell cheaply
    /// whether anything moved since they last looked.
    generation: u64,
    /// Unique per store in this process: a cluster removed and added again by reloads gets a
    /// new store whose generation starts over, so (incarnation, generation) names a snapshot.
    incarnation: u64,
}

/// The next [`ClusterState::incarnation`].
static INCARNATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl ClusterState {
    /// An empty store for one cluster with its trust CIDRs and object cap (no byte cap until
    /// [`ClusterState::set_max_bytes`]).
    pub fn new(name: &str, pod_cidrs: &[IpNet], service_cidrs: &[IpNet], cap: usize) -> Self {
        ClusterState {
            name: name.to_string(),
            pod_cidrs: pod_cidrs.to_vec(),
            service_cidrs: service_cidrs.to_vec(),
            cap,
            body_cap: Arc::new(AtomicUsize::new(usize::MAX)),
            services: HashMap::new(),
            slices: HashMap::new(),
            slices_of: BTreeSet::new(),
            nodes: HashMap::new(),
            host_subnets: BTreeMap::new(),
            subnets_of: BTreeMap::new(),
            claims: BTreeSet::new(),
            losers: BTreeSet::new(),
            kind_bytes: [0; 4],
            refused: BTreeMap::new(),
            refused_per: BTreeMap::new(),
            refused_overflow: BTreeMap::new(),
            skip_counts: BTreeMap::new(),
            skip_totals: BTreeMap::new(),
            staging: BTreeMap::new(),
            sync: Kind::ALL
                .iter()
                .map(|k| (*k, KindSync::default()))
                .collect(),
            client_error: None,
            snap: Arc::new(ClusterSnapshot::default()),
            dirty: BTreeSet::new(),
            pending_nodes: BTreeMap::new(),
            intern: Interner::default(),
            warm: None,
            generation: 0,
            incarnation: INCARNATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Serves `snap` until every watch has listed in this run (see [`ClusterState::served`]).
    pub fn set_warm(&mut self, snap: Arc<ClusterSnapshot>, source: WarmSource) {
        self.warm = Some((snap, source));
        self.generation += 1;
    }

    /// Changes the object cap (a reload); objects already held stay.
    pub fn set_cap(&mut self, cap: usize) {
        self.cap = cap;
    }

    /// Changes the byte cap (`sync.max_bytes_per_cluster`); objects already held stay.
    pub fn set_max_bytes(&mut self, bytes: usize) {
        self.body_cap.store(bytes, Ordering::Relaxed);
    }

    /// The byte cap (`sync.max_bytes_per_cluster`).
    fn max_bytes(&self) -> usize {
        self.body_cap.load(Ordering::Relaxed)
    }

    /// The bound on one API response body, shared with the cluster's client.
    pub fn body_cap(&self) -> Arc<AtomicUsize> {
        self.body_cap.clone()
    }

    /// Whether a relist was refused over a cap and the store still holds the last good list
    /// of that kind (a raised cap takes effect at the next relist).
    pub fn over_cap(&self) -> bool {
        self.sync.values().any(|s| s.cap_error.is_some())
    }

    /// The snapshot the daemon should use: the live one once every watch has listed in this
    /// run, before that the warm one, and `None` while the cluster is unknown (nothing listed,
    /// nothing persisted): then what the node has for it stays as it is.
    pub fn served(&mut self) -> Option<Arc<ClusterSnapshot>> {
        if self.listed() {
            return Some(self.snapshot());
        }
        self.warm.as_ref().map(|(s, _)| s.clone())
    }

    /// See the field.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Which store this is (see the field).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The WireGuard annotations (public key, endpoint) of Node `name` as the watch last saw
    /// them; `None` until the Node watch has listed, `Some(None)` when the Node is absent.
    pub fn node_annotations(&self, name: &str) -> Option<Option<(Option<String>, Option<String>)>> {
        let listed = self.sync.get(&Kind::Node).is_some_and(|s| s.listed_once);
        if !listed {
            return None;
        }
        Some(
            self.nodes
                .get(name)
                .map(|n| (n.rec.public_key.clone(), n.rec.endpoint.clone())),
        )
    }

    fn bytes(&self) -> usize {
        self.kind_bytes.iter().sum()
    }

    /// Counts of held objects.
    pub fn counts(&self) -> ObjectCounts {
        ObjectCounts {
            services: self.services.len(),
            endpoint_slices: self.slices.len(),
            nodes: self.nodes.len(),
            host_subnets: self.host_subnets.len(),
            bytes: self.bytes(),
        }
    }

    /// The trusted snapshot: the Services and Nodes changed since the last call are rebuilt
    /// (in place when nobody else holds the previous value).
    pub fn snapshot(&mut self) -> Arc<ClusterSnapshot> {
        if self.dirty.is_empty() && self.pending_nodes.is_empty() {
            return self.snap.clone();
        }
        let mut svc_updates: Vec<(ServiceKey, Option<Service>)> = Vec::new();
        for k in std::mem::take(&mut self.dirty) {
            let new = if self.is_included(&k) {
                self.services.get(&k).map(|e| {
                    let slices = self
                        .slices_of_service(&k)
                        .filter_map(|name| {
                            self.slices.get(&(k.namespace.clone(), name.to_string()))
                        })
                        .map(|e| &e.rec);
                    convert::assemble(&e.rec, slices)
                })
            } else {
                None
            };
            if new.as_ref() != self.snap.services.get(&k) {
                svc_updates.push((k, new));
            }
        }
        let node_updates: Vec<(String, Option<Node>)> = std::mem::take(&mut self.pending_nodes)
            .into_iter()
            .filter(|(n, v)| v.as_ref() != self.snap.nodes.get(n))
            .collect();
        if svc_updates.is_empty() && node_updates.is_empty() {
            return self.snap.clone();
        }
        let s = Arc::make_mut(&mut self.snap);
        // Many changes at once (a list): rebuild the map in one pass, which packs its B-tree
        // nodes full; one insert at a time leaves them about half full.
        let rebuild = svc_updates.len() > 64 && svc_updates.len() > s.services.len() / 8;
        for (k, v) in svc_updates {
            match v {
                Some(v) => s.services.insert(k, v),
                None => s.services.remove(&k),
            };
        }
        if rebuild {
            s.services = std::mem::take(&mut s.services).into_iter().collect();
        }
        for (n, v) in node_updates {
            match v {
                Some(v) => s.nodes.insert(n, v),
                None => s.nodes.remove(&n),
            };
        }
        self.snap.clone()
    }
}

#[cfg(test)]
mod tests;
