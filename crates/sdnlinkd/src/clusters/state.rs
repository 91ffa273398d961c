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

use super::convert::{
    self, HostSubnet, Interner, NodeRecord, ServiceRecord, Skip, SkipReason, SliceEndpoint,
    SliceRecord, Trust,
};
use crate::model::{
    ClusterSnapshot, Endpoint, EndpointPort, Node, Service, ServiceKey, ServiceKind, ServicePort,
    SyncState, TargetPort, WarmSource,
};
use ipnet::IpNet;
use kube::core::DynamicObject;
use kube::runtime::watcher;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::mem::size_of;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

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

/// `kube-runtime`'s default backoff retries a failed watch at most 30 s later (plus jitter)
/// and yields an error for every failed attempt; a watch that has been silent for longer than
/// this after its last error therefore has reconnected.
const ERROR_QUIET: Duration = Duration::from_secs(45);

/// Refused objects tracked one by one (so a later delete or fix uncounts them); past this,
/// refusals are only counted (until the next relist of their kind) and no longer logged, so a
/// remote flooding bad objects costs bounded memory and log lines.
const MAX_TRACKED_REFUSALS: usize = 10_000;

/// Refusal keys longer than this (names no API server admits) are shortened, so a hostile name
/// is not kept whole.
const MAX_KEY_LEN: usize = 300;

/// Stand-in key of a refused relist of one kind.
const RELIST_KEY: &str = "<relist>";

/// Bookkeeping per map entry (tree node share, key) in the byte accounting.
const ENTRY_OVERHEAD: usize = 64;

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

/// A record's skipped pieces as the store keeps them: per reason, the count and the first
/// detail (not every detail: a slice can drop 100,000 addresses).
#[derive(Clone, Debug, Default, PartialEq)]
struct Skips(Vec<(SkipReason, u32, String)>);

impl Skips {
    fn of(list: Vec<Skip>) -> Skips {
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

    fn count(&self, r: SkipReason) -> u32 {
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

struct SvcEntry {
    rec: ServiceRecord,
    skips: Skips,
    bytes: usize,
}

impl SvcEntry {
    fn new(rec: ServiceRecord, skips: Skips) -> SvcEntry {
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

struct SliceEntry {
    rec: SliceRecord,
    skips: Skips,
    bytes: usize,
}

impl SliceEntry {
    fn new(k: &ObjKey, rec: SliceRecord, skips: Skips) -> SliceEntry {
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

struct NodeEntry {
    rec: NodeRecord,
    skips: Skips,
    /// Pieces dropped when its HostSubnets were merged in.
    hs_skips: Skips,
    bytes: usize,
}

impl NodeEntry {
    fn new(rec: NodeRecord, skips: Skips) -> NodeEntry {
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

struct HsEntry {
    hs: HostSubnet,
    bytes: usize,
}

impl HsEntry {
    fn new(k: &ObjKey, hs: HostSubnet) -> HsEntry {
        let bytes = size_of::<HostSubnet>()
            + hs.host.capacity()
            + hs.subnet.capacity()
            + 2 * (k.1.len() + ENTRY_OVERHEAD);
        HsEntry { hs, bytes }
    }
}

/// One converted object, not yet in the store.
enum Rec {
    Service(SvcEntry),
    Slice(SliceEntry),
    Node(NodeEntry),
    HostSubnet(HsEntry),
}

impl Rec {
    fn bytes(&self) -> usize {
        match self {
            Rec::Service(e) => e.bytes,
            Rec::Slice(e) => e.bytes,
            Rec::Node(e) => e.bytes,
            Rec::HostSubnet(e) => e.bytes,
        }
    }
}

/// A list in progress for one kind.
#[derive(Default)]
struct Staging {
    /// A good snapshot exists (this kind listed in this run, or a warm snapshot is served): a
    /// list over a cap is refused whole. Otherwise (nothing to keep) the objects that fit are
    /// taken and the rest refused one by one.
    strict: bool,
    recs: Vec<(ObjKey, Rec)>,
    /// At most [`MAX_TRACKED_REFUSALS`]; the rest only counted in `refused_more`.
    refused: Vec<(String, Skip)>,
    refused_more: BTreeMap<SkipReason, u64>,
    count: usize,
    bytes: usize,
    /// Every object of the list, also those past a cap.
    seen: usize,
    seen_bytes: usize,
    over: Option<SkipReason>,
}

impl Staging {
    /// Keeps a refusal for `list_done`; past the bound only its reason is counted, so a list
    /// of malformed objects costs no memory per object.
    fn refuse(&mut self, key: String, skip: Skip) {
        if self.refused.len() < MAX_TRACKED_REFUSALS {
            self.refused.push((key, skip));
        } else {
            *self.refused_more.entry(skip.reason).or_default() += 1;
        }
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

    fn held_count(&self, kind: Kind) -> usize {
        match kind {
            Kind::Service => self.services.len(),
            Kind::EndpointSlice => self.slices.len(),
            Kind::Node => self.nodes.len(),
            Kind::HostSubnet => self.host_subnets.len(),
        }
    }

    fn bytes(&self) -> usize {
        self.kind_bytes.iter().sum()
    }

    /// Objects and bytes the store will hold once the lists in progress are done: a kind that
    /// is listing counts what its list has taken so far, the others what they hold. Caps are
    /// judged by this, so lists of several kinds at once cannot each fill the whole cap.
    fn projected(&self) -> (usize, usize) {
        Kind::ALL
            .iter()
            .fold((0, 0), |(n, b), k| match self.staging.get(k) {
                Some(st) => (n + st.count, b + st.bytes),
                None => (n + self.held_count(*k), b + self.kind_bytes[k.index()]),
            })
    }

    /// Bytes of the held version of object `k` (0 when not held).
    fn held_bytes(&self, kind: Kind, k: &ObjKey) -> Option<usize> {
        match kind {
            Kind::Service => self.services.get(&service_key(k)).map(|e| e.bytes),
            Kind::EndpointSlice => self.slices.get(k).map(|e| e.bytes),
            Kind::Node => self.nodes.get(&k.1).map(|e| e.bytes),
            Kind::HostSubnet => self.host_subnets.get(&k.1).map(|e| e.bytes),
        }
    }

    /// Handles one watcher item; returns whether the snapshot changed.
    pub fn handle(
        &mut self,
        kind: Kind,
        item: Result<watcher::Event<DynamicObject>, watcher::Error>,
    ) -> bool {
        let ev = match item {
            Ok(ev) => ev,
            Err(e) => {
                self.set_error(kind, describe_watch_error(&e));
                return false;
            }
        };
        match ev {
            watcher::Event::Init => {
                let strict =
                    self.sync.get(&kind).is_some_and(|s| s.listed_once) || self.warm.is_some();
                self.staging.insert(
                    kind,
                    Staging {
                        strict,
                        ..Default::default()
                    },
                );
                false
            }
            watcher::Event::InitApply(o) => {
                self.stage(kind, &o);
                false
            }
            watcher::Event::InitDone => self.list_done(kind),
            watcher::Event::Apply(o) => {
                self.clear_error(kind);
                self.apply(kind, &o)
            }
            watcher::Event::Delete(o) => {
                self.clear_error(kind);
                match obj_key(&o) {
                    Some(k) => {
                        self.unrefuse(kind, &key_str(&k));
                        let changed = self.delete(kind, &k);
                        self.changed(changed)
                    }
                    None => false,
                }
            }
        }
    }

    fn changed(&mut self, changed: bool) -> bool {
        if changed {
            self.generation += 1;
        }
        changed
    }

    fn clear_error(&mut self, kind: Kind) {
        if let Some(s) = self.sync.get_mut(&kind) {
            s.error = None;
        }
    }

    /// Records a failure of one watch (kept with its first time until the watch recovers).
    pub fn set_error(&mut self, kind: Kind, reason: String) {
        let s = self.sync.entry(kind).or_default();
        let since = match &s.error {
            Some((_, since, _)) => *since,
            None => {
                tracing::warn!(cluster = %self.name, watch = kind.label(), %reason, "watch failed; keeping the last good snapshot");
                SystemTime::now()
            }
        };
        s.error = Some((reason, since, Instant::now()));
    }

    /// Records that the cluster's API lacks HostSubnets (not OpenShift SDN): nothing to wait for.
    pub fn host_subnets_absent(&mut self) {
        let was_listed = self.listed();
        let s = self.sync.entry(Kind::HostSubnet).or_default();
        s.listed_once = true;
        s.error = None;
        if self.listed() && !was_listed {
            self.generation += 1;
        }
    }

    /// Records (Some) or clears (None) a failure to build the cluster's client.
    pub fn set_client_error(&mut self, reason: Option<String>) {
        self.client_error = match (reason, self.client_error.take()) {
            (None, _) => None,
            (Some(r), Some((_, since))) => Some((r, since)),
            (Some(r), None) => {
                tracing::warn!(cluster = %self.name, reason = %r, "cluster client failed");
                Some((r, SystemTime::now()))
            }
        };
    }

    /// (listed once, failing now, client failing): what a change of sync state is judged by.
    pub fn health(&self) -> (bool, bool, bool) {
        let failing = self.sync.values().any(|s| {
            s.cap_error.is_some()
                || s.error
                    .as_ref()
                    .is_some_and(|(_, _, last)| last.elapsed() < ERROR_QUIET)
        });
        (self.listed(), failing, self.client_error.is_some())
    }

    /// Whether every watch has listed once.
    pub fn listed(&self) -> bool {
        self.sync.values().all(|s| s.listed_once)
    }

    /// The cluster's sync state now.
    pub fn state(&self) -> SyncState {
        let failing = self.failure();
        if !self.listed() {
            let reason = failing.map(|(r, _)| r);
            return match &self.warm {
                Some((_, source)) => SyncState::Warm {
                    source: source.clone(),
                    reason,
                },
                None => SyncState::Unknown { reason },
            };
        }
        match failing {
            Some((reason, since)) => SyncState::Degraded { reason, since },
            None => SyncState::Current,
        }
    }

    /// What fails now (the client, watches that failed recently, relists refused over a cap),
    /// with the earliest start.
    fn failure(&self) -> Option<(String, SystemTime)> {
        if let Some((reason, since)) = &self.client_error {
            return Some((reason.clone(), *since));
        }
        let mut errs: Vec<(&str, &str, SystemTime)> = Vec::new();
        for (k, s) in &self.sync {
            if let Some((r, since, _)) = s
                .error
                .as_ref()
                .filter(|(_, _, last)| last.elapsed() < ERROR_QUIET)
            {
                errs.push((k.label(), r.as_str(), *since));
            }
            if let Some((r, since)) = &s.cap_error {
                errs.push((k.label(), r.as_str(), *since));
            }
        }
        if errs.is_empty() {
            return None;
        }
        errs.sort_by_key(|e| e.2);
        let reason = errs
            .iter()
            .map(|(k, r, _)| format!("{k}: {r}"))
            .collect::<Vec<_>>()
            .join("; ");
        Some((reason, errs[0].2))
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

    /// Currently skipped pieces and objects, by reason.
    pub fn skipped(&self) -> BTreeMap<String, u64> {
        self.skip_counts
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(r, n)| (r.as_str().to_string(), *n))
            .collect()
    }

    /// Pieces and objects skipped anew since the store started, by reason.
    pub fn skipped_total(&self) -> BTreeMap<String, u64> {
        self.skip_totals
            .iter()
            .map(|(r, n)| (r.as_str().to_string(), *n))
            .collect()
    }

    fn count(&mut self, r: SkipReason, add: u64, sub: u64) {
        let c = self.skip_counts.entry(r).or_default();
        *c = (*c + add).saturating_sub(sub);
    }

    fn count_new(&mut self, r: SkipReason, n: u64) {
        *self.skip_totals.entry(r).or_default() += n;
    }

    /// Replaces the counted skips of one record, logging the reasons that grew.
    fn swap_skips(&mut self, what: &str, old: &Skips, new: &Skips) {
        if old == new {
            return;
        }
        for (r, n, _) in &old.0 {
            self.count(*r, 0, u64::from(*n));
        }
        for (r, n, detail) in &new.0 {
            self.count(*r, u64::from(*n), 0);
            let before = old.count(*r);
            if *n > before {
                self.count_new(*r, u64::from(*n - before));
                if *n == 1 {
                    tracing::warn!(cluster = %self.name, reason = r.as_str(), "dropping {detail}");
                } else {
                    tracing::warn!(cluster = %self.name, reason = r.as_str(), "dropping {n} pieces of {what}, e.g. {detail}");
                }
            }
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

    fn trust(&self) -> Trust<'_> {
        Trust {
            pod_cidrs: &self.pod_cidrs,
            service_cidrs: &self.service_cidrs,
        }
    }

    /// Converts one object into a record, or the reason it is refused whole.
    fn convert(&mut self, kind: Kind, k: &ObjKey, o: &DynamicObject) -> Result<Rec, Skip> {
        let trust = Trust {
            pod_cidrs: &self.pod_cidrs,
            service_cidrs: &self.service_cidrs,
        };
        fn split<T>(c: convert::Converted<T>) -> Result<(T, Skips), Skip> {
            match c.value {
                Some(v) => Ok((v, Skips::of(c.skips))),
                None => Err(c.skips.into_iter().next().unwrap_or_else(|| {
                    Skip::new(SkipReason::Malformed, "an object without content")
                })),
            }
        }
        Ok(match kind {
            Kind::Service => {
                let (rec, skips) = split(convert::service_record(o, trust))?;
                Rec::Service(SvcEntry::new(rec, skips))
            }
            Kind::EndpointSlice => {
                let (rec, skips) = split(convert::slice_record(o, trust, &mut self.intern))?;
                Rec::Slice(SliceEntry::new(k, rec, skips))
            }
            Kind::Node => {
                let (rec, skips) = split(convert::node_record(o, trust))?;
                Rec::Node(NodeEntry::new(rec, skips))
            }
            Kind::HostSubnet => {
                let (hs, _) = split(convert::host_subnet(o))?;
                Rec::HostSubnet(HsEntry::new(k, hs))
            }
        })
    }

    fn refused_insert(&mut self, k: (Kind, String), r: SkipReason) {
        *self.refused_per.entry((k.0, r)).or_default() += 1;
        self.count(r, 1, 0);
        self.count_new(r, 1);
        if let Some(old) = self.refused.insert(k.clone(), r) {
            self.refused_uncount(k.0, old);
        }
    }

    fn refused_remove(&mut self, k: &(Kind, String)) -> Option<SkipReason> {
        let r = self.refused.remove(k)?;
        self.refused_uncount(k.0, r);
        Some(r)
    }

    fn refused_uncount(&mut self, kind: Kind, r: SkipReason) {
        self.count(r, 0, 1);
        if let Some(n) = self.refused_per.get_mut(&(kind, r)) {
            *n -= 1;
            if *n == 0 {
                self.refused_per.remove(&(kind, r));
            }
        }
    }

    /// Records object `key` as refused whole, logging it unless `quiet` (it was refused for
    /// the same reason before). Cap refusals log once per kind until none is left.
    fn refuse(&mut self, kind: Kind, key: String, skip: Skip, quiet: bool) {
        let k = (kind, key);
        if self.refused.get(&k) == Some(&skip.reason) {
            return;
        }
        let cap = matches!(skip.reason, SkipReason::ObjectCap | SkipReason::ByteCap);
        let first_of_cap = cap && !self.refused_per.contains_key(&(kind, skip.reason));
        if self.refused_remove(&k).is_none() && self.refused.len() >= MAX_TRACKED_REFUSALS {
            let o = self
                .refused_overflow
                .entry((kind, skip.reason))
                .or_default();
            if *o == 0 {
                tracing::warn!(cluster = %self.name, reason = skip.reason.as_str(), "more than {MAX_TRACKED_REFUSALS} objects refused; further {} refusals are counted until the next relist, not logged", kind.label());
            }
            *o += 1;
            self.count(skip.reason, 1, 0);
            self.count_new(skip.reason, 1);
            return;
        }
        if !quiet && (!cap || first_of_cap) {
            if cap {
                tracing::warn!(cluster = %self.name, reason = skip.reason.as_str(), "skipping {}; further {} over the cap are counted, not logged", skip.detail, kind.label());
            } else {
                tracing::warn!(cluster = %self.name, reason = skip.reason.as_str(), "skipping {}", skip.detail);
            }
        }
        self.refused_insert(k, skip.reason);
    }

    fn unrefuse(&mut self, kind: Kind, key: &str) {
        self.refused_remove(&(kind, key.to_string()));
    }

    fn cap_skip(&self, kind: Kind, key: &str, reason: SkipReason, bytes: usize) -> Skip {
        let detail = match reason {
            SkipReason::ObjectCap => format!(
                "{kind:?} {key}: the cluster already has {} objects (sync.max_objects_per_cluster)",
                self.cap
            ),
            _ => format!(
                "{kind:?} {key}: {bytes} more bytes would exceed the cluster's {} (sync.max_bytes_per_cluster)",
                self.max_bytes()
            ),
        };
        Skip::new(reason, detail)
    }

    fn apply(&mut self, kind: Kind, o: &DynamicObject) -> bool {
        let Some(k) = obj_key(o) else {
            let skip = Skip::new(
                SkipReason::Malformed,
                format!("{kind:?} without metadata.name"),
            );
            self.refuse(kind, String::from("<unnamed>"), skip, false);
            return false;
        };
        let ks = key_str(&k);
        let rec = match self.convert(kind, &k, o) {
            Ok(rec) => rec,
            Err(skip) => {
                // The object as it stands now is unusable: forget the previous version too.
                let changed = self.delete(kind, &k);
                self.refuse(kind, ks, skip, false);
                return self.changed(changed);
            }
        };
        let held = self.held_bytes(kind, &k);
        let (count, bytes) = self.projected();
        if held.is_none() && count >= self.cap {
            let skip = self.cap_skip(kind, &ks, SkipReason::ObjectCap, 0);
            self.refuse(kind, ks, skip, false);
            return false;
        }
        let replaced = if self.staging.contains_key(&kind) {
            0
        } else {
            held.unwrap_or(0)
        };
        let after = bytes - replaced + rec.bytes();
        if after > self.max_bytes() {
            // A held object keeps its last good version.
            let skip = self.cap_skip(kind, &ks, SkipReason::ByteCap, rec.bytes());
            self.refuse(kind, ks, skip, false);
            return false;
        }
        self.unrefuse(kind, &ks);
        let changed = self.upsert(kind, &k, rec);
        self.changed(changed)
    }

    fn stage(&mut self, kind: Kind, o: &DynamicObject) {
        let Some(k) = obj_key(o) else {
            let skip = Skip::new(
                SkipReason::Malformed,
                format!("{kind:?} without metadata.name"),
            );
            self.staging
                .entry(kind)
                .or_default()
                .refuse("<unnamed>".into(), skip);
            return;
        };
        let converted = self.convert(kind, &k, o);
        // A list without `Init` (not sent by kube-runtime) starts here.
        self.staging.entry(kind).or_default();
        let (count, bytes) = self.projected();
        let (cap, max_bytes) = (self.cap, self.max_bytes());
        let st = self.staging.entry(kind).or_default();
        let rec = match converted {
            Ok(rec) => rec,
            Err(skip) => {
                st.refuse(key_str(&k), skip);
                return;
            }
        };
        let b = rec.bytes();
        st.seen += 1;
        st.seen_bytes += b;
        if st.over.is_some() {
            return;
        }
        let over = if count + 1 > cap {
            Some(SkipReason::ObjectCap)
        } else if bytes + b > max_bytes {
            Some(SkipReason::ByteCap)
        } else {
            None
        };
        match over {
            Some(r) if st.strict => {
                st.over = Some(r);
                st.recs = Vec::new();
            }
            Some(r) => {
                let ks = key_str(&k);
                let skip = self.cap_skip(kind, &ks, r, b);
                self.staging.entry(kind).or_default().refuse(ks, skip);
            }
            None => {
                st.count += 1;
                st.bytes += b;
                st.recs.push((k, rec));
            }
        }
    }

    fn list_done(&mut self, kind: Kind) -> bool {
        let st = self.staging.remove(&kind).unwrap_or_default();
        if let Some(reason) = st.over {
            let why = match reason {
                SkipReason::ObjectCap => format!(
                    "sync.max_objects_per_cluster ({}) with the cluster's other objects",
                    self.cap
                ),
                _ => format!(
                    "sync.max_bytes_per_cluster ({} bytes) with the cluster's other objects",
                    self.max_bytes()
                ),
            };
            let msg = format!(
                "a relist of {} objects ({} bytes) exceeds {why}; keeping the last good list",
                st.seen, st.seen_bytes
            );
            let s = self.sync.entry(kind).or_default();
            s.error = None;
            if s.cap_error.is_none() {
                tracing::warn!(cluster = %self.name, watch = kind.label(), reason = reason.as_str(), "{msg}; raise the cap or remove objects");
                s.cap_error = Some((msg, SystemTime::now()));
            } else if let Some(e) = &mut s.cap_error {
                e.0 = msg;
            }
            let skip = Skip::new(reason, String::new());
            self.refuse(kind, RELIST_KEY.into(), skip, true);
            return false;
        }
        let was_listed = self.listed();
        let s = self.sync.entry(kind).or_default();
        s.listed_once = true;
        s.error = None;
        if s.cap_error.take().is_some() {
            tracing::info!(cluster = %self.name, watch = kind.label(), "a relist fits the caps again");
        }
        let changed = self.replace_all(kind, st.recs, st.refused);
        for (r, n) in st.refused_more {
            let o = self.refused_overflow.entry((kind, r)).or_default();
            if *o == 0 {
                tracing::warn!(cluster = %self.name, reason = r.as_str(), "more than {MAX_TRACKED_REFUSALS} objects refused; further {} refusals are counted until the next relist, not logged", kind.label());
            }
            *o += n;
            self.count(r, n, 0);
            self.count_new(r, n);
        }
        if self.listed() && !was_listed {
            // The cluster moves from its warm (or no) snapshot to the live one.
            self.generation += 1;
            return true;
        }
        self.changed(changed)
    }

    /// A list finished: the listed objects replace everything held of that kind, so objects
    /// deleted while the watch was down disappear here.
    fn replace_all(
        &mut self,
        kind: Kind,
        recs: Vec<(ObjKey, Rec)>,
        refused: Vec<(String, Skip)>,
    ) -> bool {
        let listed: HashSet<&ObjKey> = recs.iter().map(|(k, _)| k).collect();
        let gone: Vec<ObjKey> = match kind {
            Kind::Service => self
                .services
                .keys()
                .map(|k| (k.namespace.clone(), k.name.clone()))
                .filter(|k| !listed.contains(k))
                .collect(),
            Kind::EndpointSlice => self
                .slices
                .keys()
                .filter(|k| !listed.contains(k))
                .cloned()
                .collect(),
            Kind::Node => self
                .nodes
                .keys()
                .map(|n| (String::new(), n.clone()))
                .filter(|k| !listed.contains(k))
                .collect(),
            Kind::HostSubnet => self
                .host_subnets
                .keys()
                .map(|n| (String::new(), n.clone()))
                .filter(|k| !listed.contains(k))
                .collect(),
        };
        drop(listed);
        let mut changed = false;
        for k in &gone {
            changed |= self.delete(kind, k);
        }
        let many = recs.len() > 64;
        for (k, rec) in recs {
            changed |= self.upsert(kind, &k, rec);
        }
        if many {
            // Built one insert at a time, B-tree nodes stay about half full; a rebuild from
            // the sorted entries packs them.
            match kind {
                Kind::Service => {
                    self.claims = std::mem::take(&mut self.claims).into_iter().collect()
                }
                Kind::EndpointSlice => {
                    self.slices_of = std::mem::take(&mut self.slices_of).into_iter().collect()
                }
                Kind::Node | Kind::HostSubnet => {}
            }
        }
        // The list's refusals replace the kind's; those refused before for the same reason
        // are not logged again.
        let before: BTreeMap<String, SkipReason> = {
            let keys: Vec<(Kind, String)> = self
                .refused
                .range((kind, String::new())..)
                .take_while(|((k, _), _)| *k == kind)
                .map(|(k, _)| k.clone())
                .collect();
            keys.into_iter()
                .filter_map(|k| {
                    let r = self.refused_remove(&k)?;
                    Some((k.1, r))
                })
                .collect()
        };
        let overflow: Vec<((Kind, SkipReason), u64)> = self
            .refused_overflow
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|(k, n)| (*k, *n))
            .collect();
        for (k, n) in overflow {
            self.refused_overflow.remove(&k);
            self.count(k.1, 0, n);
        }
        for (ks, skip) in refused {
            let quiet = before.get(&ks) == Some(&skip.reason);
            self.refuse(kind, ks, skip, quiet);
        }
        changed
    }

    fn is_included(&self, k: &ServiceKey) -> bool {
        self.services.contains_key(k) && !self.losers.contains(k)
    }

    fn owner(&self, ip: IpAddr) -> Option<&ServiceKey> {
        let empty = ServiceKey {
            namespace: String::new(),
            name: String::new(),
        };
        self.claims
            .range((ip, i64::MIN, empty)..)
            .next()
            .filter(|(i, _, _)| *i == ip)
            .map(|(_, _, k)| k)
    }

    fn cluster_ips(s: &Service) -> &[IpAddr] {
        match &s.kind {
            ServiceKind::ClusterIp(ips) => ips,
            _ => &[],
        }
    }

    /// Re-judges whether Service `k` loses a ClusterIP to an older Service; returns whether
    /// that changed.
    fn judge(&mut self, k: &ServiceKey) -> bool {
        let lost_to = self.services.get(k).and_then(|e| {
            Self::cluster_ips(&e.rec.service).iter().find_map(|ip| {
                self.owner(*ip)
                    .filter(|o| *o != k)
                    .map(|o| (*ip, o.clone()))
            })
        });
        let was = self.losers.contains(k);
        match lost_to {
            Some((ip, owner)) if !was => {
                tracing::warn!(cluster = %self.name, reason = SkipReason::ClusterIpConflict.as_str(), "leaving Service {k} out: its ClusterIP {ip} belongs to the older Service {owner}");
                self.losers.insert(k.clone());
                self.count(SkipReason::ClusterIpConflict, 1, 0);
                self.count_new(SkipReason::ClusterIpConflict, 1);
                true
            }
            None if was => {
                self.losers.remove(k);
                self.count(SkipReason::ClusterIpConflict, 0, 1);
                if self.services.contains_key(k) {
                    tracing::info!(cluster = %self.name, "Service {k} now owns its ClusterIPs (the older claimant is gone)");
                }
                true
            }
            _ => false,
        }
    }

    /// Puts a converted object into the store; returns whether the snapshot changes.
    fn upsert(&mut self, kind: Kind, k: &ObjKey, rec: Rec) -> bool {
        match rec {
            Rec::Service(e) => self.upsert_service(service_key(k), e),
            Rec::Slice(e) => self.upsert_slice(k, e),
            Rec::Node(e) => self.upsert_node(&k.1, e),
            Rec::HostSubnet(e) => {
                debug_assert_eq!(kind, Kind::HostSubnet);
                self.upsert_host_subnet(&k.1, e)
            }
        }
    }

    fn upsert_service(&mut self, sk: ServiceKey, e: SvcEntry) -> bool {
        let old = self.services.get(&sk);
        if old.is_some_and(|o| o.rec == e.rec && o.skips == e.skips) {
            return false;
        }
        let was_included = self.is_included(&sk);
        let changed_value = old.is_none_or(|o| o.rec.service != e.rec.service);
        let (old_ips, old_created, old_skips, old_bytes) = match old {
            Some(o) => (
                Self::cluster_ips(&o.rec.service).to_vec(),
                o.rec.created,
                o.skips.clone(),
                o.bytes,
            ),
            None => (Vec::new(), 0, Skips::default(), 0),
        };
        let new_ips = Self::cluster_ips(&e.rec.service).to_vec();
        let mut judge: BTreeSet<ServiceKey> = BTreeSet::new();
        judge.insert(sk.clone());
        for ip in old_ips.iter().chain(&new_ips) {
            judge.extend(self.owner(*ip).cloned());
        }
        for ip in &old_ips {
            self.claims.remove(&(*ip, old_created, sk.clone()));
        }
        for ip in &new_ips {
            self.claims.insert((*ip, e.rec.created, sk.clone()));
        }
        for ip in old_ips.iter().chain(&new_ips) {
            judge.extend(self.owner(*ip).cloned());
        }
        self.swap_skips(&format!("Service {sk}"), &old_skips, &e.skips);
        self.kind_bytes[Kind::Service.index()] =
            self.kind_bytes[Kind::Service.index()] - old_bytes + e.bytes;
        self.services.insert(sk.clone(), e);
        let mut changed = false;
        for j in judge {
            if self.judge(&j) {
                self.dirty.insert(j);
                changed = true;
            }
        }
        if changed_value && (was_included || self.is_included(&sk)) {
            self.dirty.insert(sk);
            changed = true;
        }
        changed
    }

    fn upsert_slice(&mut self, k: &ObjKey, e: SliceEntry) -> bool {
        let old = self.slices.get(k);
        if old.is_some_and(|o| o.rec == e.rec && o.skips == e.skips) {
            return false;
        }
        let (old_svc, old_skips, old_bytes, same_eps) = match old {
            Some(o) => (
                o.rec.service.clone(),
                o.skips.clone(),
                o.bytes,
                o.rec == e.rec,
            ),
            None => (None, Skips::default(), 0, false),
        };
        if old_svc != e.rec.service {
            if let Some(s) = &old_svc {
                self.detach(s, k);
            }
            if let Some(s) = &e.rec.service {
                self.slices_of.insert((s.clone(), k.1.clone()));
            }
        }
        let what = format!("EndpointSlice {}/{}", k.0, k.1);
        self.swap_skips(&what, &old_skips, &e.skips);
        let i = Kind::EndpointSlice.index();
        self.kind_bytes[i] = self.kind_bytes[i] - old_bytes + e.bytes;
        let new_svc = e.rec.service.clone();
        self.slices.insert(k.clone(), e);
        if same_eps {
            return false;
        }
        self.touch_services([old_svc, new_svc])
    }

    fn detach(&mut self, s: &ServiceKey, k: &ObjKey) {
        self.slices_of.remove(&(s.clone(), k.1.clone()));
    }

    /// Names of the slices naming Service `k`, in name order.
    fn slices_of_service<'a>(&'a self, k: &'a ServiceKey) -> impl Iterator<Item = &'a str> + 'a {
        self.slices_of
            .range((k.clone(), String::new())..)
            .take_while(move |(s, _)| s == k)
            .map(|(_, n)| n.as_str())
    }

    /// Marks the included ones of `svcs` for rebuilding; returns whether there was one.
    fn touch_services(&mut self, svcs: [Option<ServiceKey>; 2]) -> bool {
        let mut changed = false;
        for s in svcs.into_iter().flatten() {
            if self.is_included(&s) {
                self.dirty.insert(s);
                changed = true;
            }
        }
        changed
    }

    fn upsert_node(&mut self, name: &str, mut e: NodeEntry) -> bool {
        let old = self.nodes.get(name);
        if old.is_some_and(|o| o.rec == e.rec && o.skips == e.skips) {
            return false;
        }
        let (old_skips, old_bytes, hs_skips) = match old {
            Some(o) => (o.skips.clone(), o.bytes, o.hs_skips.clone()),
            None => (Skips::default(), 0, Skips::default()),
        };
        e.hs_skips = hs_skips;
        self.swap_skips(&format!("Node {name}"), &old_skips, &e.skips);
        let i = Kind::Node.index();
        self.kind_bytes[i] = self.kind_bytes[i] - old_bytes + e.bytes;
        self.nodes.insert(name.to_string(), e);
        self.recompute_node(name)
    }

    fn upsert_host_subnet(&mut self, name: &str, e: HsEntry) -> bool {
        let old = self.host_subnets.get(name);
        if old.is_some_and(|o| o.hs == e.hs) {
            return false;
        }
        let (old_host, old_bytes) = match old {
            Some(o) => (Some(o.hs.host.clone()), o.bytes),
            None => (None, 0),
        };
        if let Some(h) = &old_host {
            self.unindex_subnet(h, name);
        }
        self.subnets_of
            .entry(e.hs.host.clone())
            .or_default()
            .insert(name.to_string());
        let host = e.hs.host.clone();
        let i = Kind::HostSubnet.index();
        self.kind_bytes[i] = self.kind_bytes[i] - old_bytes + e.bytes;
        self.host_subnets.insert(name.to_string(), e);
        let mut changed = false;
        if let Some(h) = old_host.filter(|h| *h != host) {
            changed |= self.recompute_node(&h);
        }
        changed | self.recompute_node(&host)
    }

    fn unindex_subnet(&mut self, host: &str, name: &str) {
        if let Some(set) = self.subnets_of.get_mut(host) {
            set.remove(name);
            if set.is_empty() {
                self.subnets_of.remove(host);
            }
        }
    }

    /// Rebuilds the snapshot value of Node `name` from its record and HostSubnets; returns
    /// whether it differs from what the snapshot (or a pending change) holds.
    fn recompute_node(&mut self, name: &str) -> bool {
        let value = match self.nodes.get(name) {
            Some(e) => {
                let hs: Vec<&HostSubnet> = self
                    .subnets_of
                    .get(name)
                    .into_iter()
                    .flatten()
                    .take(convert::MAX_HOST_SUBNETS_PER_NODE + 1)
                    .filter_map(|n| self.host_subnets.get(n))
                    .map(|e| &e.hs)
                    .collect();
                let out = convert::node(&e.rec, &hs, self.trust());
                let new_skips = Skips::of(out.skips);
                let old_skips = e.hs_skips.clone();
                self.swap_skips(&format!("Node {name}"), &old_skips, &new_skips);
                if let Some(e) = self.nodes.get_mut(name) {
                    e.hs_skips = new_skips;
                }
                out.value
            }
            None => None,
        };
        let current = match self.pending_nodes.get(name) {
            Some(p) => p.as_ref(),
            None => self.snap.nodes.get(name),
        };
        if current == value.as_ref() {
            return false;
        }
        self.pending_nodes.insert(name.to_string(), value);
        true
    }

    /// Removes object `k`; returns whether the snapshot changes.
    fn delete(&mut self, kind: Kind, k: &ObjKey) -> bool {
        match kind {
            Kind::Service => {
                let sk = service_key(k);
                let was_included = self.is_included(&sk);
                let Some(e) = self.services.remove(&sk) else {
                    return false;
                };
                let ips = Self::cluster_ips(&e.rec.service);
                for ip in ips {
                    self.claims.remove(&(*ip, e.rec.created, sk.clone()));
                }
                let heirs: BTreeSet<ServiceKey> = ips
                    .iter()
                    .filter_map(|ip| self.owner(*ip).cloned())
                    .collect();
                self.swap_skips("", &e.skips, &Skips::default());
                self.kind_bytes[Kind::Service.index()] -= e.bytes;
                let mut changed = false;
                if self.losers.contains(&sk) {
                    self.judge(&sk);
                }
                for h in heirs {
                    if self.judge(&h) {
                        self.dirty.insert(h);
                        changed = true;
                    }
                }
                if was_included {
                    self.dirty.insert(sk);
                    changed = true;
                }
                changed
            }
            Kind::EndpointSlice => {
                let Some(e) = self.slices.remove(k) else {
                    return false;
                };
                self.swap_skips("", &e.skips, &Skips::default());
                self.kind_bytes[Kind::EndpointSlice.index()] -= e.bytes;
                if let Some(s) = &e.rec.service {
                    self.detach(s, k);
                }
                self.touch_services([e.rec.service, None])
            }
            Kind::Node => {
                let Some(e) = self.nodes.remove(&k.1) else {
                    return false;
                };
                self.swap_skips("", &e.skips, &Skips::default());
                self.swap_skips("", &e.hs_skips, &Skips::default());
                self.kind_bytes[Kind::Node.index()] -= e.bytes;
                self.recompute_node(&k.1)
            }
            Kind::HostSubnet => {
                let Some(e) = self.host_subnets.remove(&k.1) else {
                    return false;
                };
                self.kind_bytes[Kind::HostSubnet.index()] -= e.bytes;
                self.unindex_subnet(&e.hs.host, &k.1);
                self.recompute_node(&e.hs.host)
            }
        }
    }
}

/// A short reason for status: the HTTP status when the API answered, else the error.
pub fn describe_watch_error(e: &watcher::Error) -> String {
    let client = match e {
        watcher::Error::InitialListFailed(c)
        | watcher::Error::WatchStartFailed(c)
        | watcher::Error::WatchFailed(c) => c,
        watcher::Error::WatchError(s) if s.code == 410 => {
            return "watch expired (410 Gone), relisting".into()
        }
        watcher::Error::WatchError(s) => {
            return format!("HTTP {} {}: {}", s.code, s.reason, s.message)
        }
        watcher::Error::NoResourceVersion => return e.to_string(),
    };
    describe_client_error(client)
}

/// A short reason for a kube client error.
pub fn describe_client_error(c: &kube::Error) -> String {
    match c {
        kube::Error::Api(s) => {
            let what = match s.code {
                401 => "unauthorized",
                403 => "forbidden",
                _ => "API error",
            };
            format!("{what} (HTTP {} {}): {}", s.code, s.reason, s.message)
        }
        other => {
            // The chain carries the useful part (connection refused, TLS, timeout).
            let mut s = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(e) = src {
                s.push_str(": ");
                s.push_str(&e.to_string());
                src = e.source();
            }
            s
        }
    }
}

#[cfg(test)]
mod tests;
