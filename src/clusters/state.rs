//! The per-cluster store: raw objects as the watches deliver them, the converted (trusted)
//! snapshot values, what was skipped and why, and the sync state of each watch.
//!
//! Each event recomputes only the objects it touches (one Service with its slices, or one
//! Node), so a single endpoint change costs O(1) conversions; the snapshot handed out is
//! rebuilt lazily, once per reconcile, not once per event.

use super::convert::{self, HostSubnet, Skip, SkipReason, Trust};
use crate::model::{ClusterSnapshot, Node, Service, ServiceKey, SyncState, WarmSource};
use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use kube::core::DynamicObject;
use kube::runtime::watcher;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
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
}

/// `kube-runtime`'s default backoff retries a failed watch at most 30 s later (plus jitter)
/// and yields an error for every failed attempt; a watch that has been silent for longer than
/// this after its last error therefore has reconnected.
const ERROR_QUIET: Duration = Duration::from_secs(45);

#[derive(Clone, Debug, Default)]
struct KindSync {
    listed_once: bool,
    /// (reason, since, last seen)
    error: Option<(String, SystemTime, Instant)>,
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
}

type ObjKey = (String, String);

fn obj_key(o: &DynamicObject) -> Option<ObjKey> {
    Some((
        o.metadata.namespace.clone().unwrap_or_default(),
        o.metadata.name.clone()?,
    ))
}

fn key_str(k: &ObjKey) -> String {
    if k.0.is_empty() {
        k.1.clone()
    } else {
        format!("{}/{}", k.0, k.1)
    }
}

/// What one cluster's watches have delivered so far.
pub struct ClusterState {
    name: String,
    pod_cidrs: Vec<IpNet>,
    service_cidrs: Vec<IpNet>,
    cap: usize,
    services: BTreeMap<ServiceKey, core::Service>,
    slices: BTreeMap<ObjKey, discovery::EndpointSlice>,
    slices_of: BTreeMap<ServiceKey, BTreeSet<ObjKey>>,
    nodes: BTreeMap<String, core::Node>,
    host_subnets: BTreeMap<String, HostSubnet>,
    out_services: BTreeMap<ServiceKey, Service>,
    out_nodes: BTreeMap<String, Node>,
    /// Objects refused whole (malformed, over the cap), by kind and key.
    refused: BTreeMap<(Kind, String), Skip>,
    /// During a relist: what was refused before it, so a refusal that persists is not logged
    /// again.
    refused_before: BTreeMap<(Kind, String), Skip>,
    /// Pieces dropped while converting a Service or Node, by kind and key.
    dropped: BTreeMap<(Kind, String), Vec<Skip>>,
    buffers: BTreeMap<Kind, Vec<DynamicObject>>,
    sync: BTreeMap<Kind, KindSync>,
    client_error: Option<(String, SystemTime)>,
    snapshot: Option<Arc<ClusterSnapshot>>,
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
    /// An empty store for one cluster with its trust CIDRs and object cap.
    pub fn new(name: &str, pod_cidrs: &[IpNet], service_cidrs: &[IpNet], cap: usize) -> Self {
        ClusterState {
            name: name.to_string(),
            pod_cidrs: pod_cidrs.to_vec(),
            service_cidrs: service_cidrs.to_vec(),
            cap,
            services: BTreeMap::new(),
            slices: BTreeMap::new(),
            slices_of: BTreeMap::new(),
            nodes: BTreeMap::new(),
            host_subnets: BTreeMap::new(),
            out_services: BTreeMap::new(),
            out_nodes: BTreeMap::new(),
            refused: BTreeMap::new(),
            refused_before: BTreeMap::new(),
            dropped: BTreeMap::new(),
            buffers: BTreeMap::new(),
            sync: Kind::ALL
                .iter()
                .map(|k| (*k, KindSync::default()))
                .collect(),
            client_error: None,
            snapshot: None,
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
        Some(self.nodes.get(name).map(|n| {
            let ann = n.metadata.annotations.as_ref();
            let get = |k: &str| ann.and_then(|a| a.get(k)).cloned();
            (
                get(super::ANNOTATION_PUBLIC_KEY),
                get(super::ANNOTATION_ENDPOINT),
            )
        }))
    }

    fn total(&self) -> usize {
        self.services.len() + self.slices.len() + self.nodes.len() + self.host_subnets.len()
    }

    fn held(&self, kind: Kind, k: &ObjKey) -> bool {
        match kind {
            Kind::Service => self.services.contains_key(&ServiceKey {
                namespace: k.0.clone(),
                name: k.1.clone(),
            }),
            Kind::EndpointSlice => self.slices.contains_key(k),
            Kind::Node => self.nodes.contains_key(&k.1),
            Kind::HostSubnet => self.host_subnets.contains_key(&k.1),
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
                self.buffers.insert(kind, Vec::new());
                false
            }
            watcher::Event::InitApply(o) => {
                self.buffers.entry(kind).or_default().push(o);
                false
            }
            watcher::Event::InitDone => {
                let buf = self.buffers.remove(&kind).unwrap_or_default();
                let was_listed = self.listed();
                let s = self.sync.entry(kind).or_default();
                s.listed_once = true;
                s.error = None;
                let changed = self.replace_all(kind, buf);
                if self.listed() && !was_listed {
                    // The cluster moves from its warm (or no) snapshot to the live one.
                    self.generation += 1;
                    return true;
                }
                changed
            }
            watcher::Event::Apply(o) => {
                self.clear_error(kind);
                self.apply(kind, o)
            }
            watcher::Event::Delete(o) => {
                self.clear_error(kind);
                match obj_key(&o) {
                    Some(k) => self.remove(kind, &k),
                    None => false,
                }
            }
        }
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
            s.error
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

    /// What fails now (the client, or watches that failed recently), with the earliest start.
    fn failure(&self) -> Option<(String, SystemTime)> {
        if let Some((reason, since)) = &self.client_error {
            return Some((reason.clone(), *since));
        }
        let mut errs: Vec<(&str, &str, SystemTime)> = self
            .sync
            .iter()
            .filter_map(|(k, s)| {
                s.error
                    .as_ref()
                    .filter(|(_, _, last)| last.elapsed() < ERROR_QUIET)
                    .map(|(r, since, _)| (k.label(), r.as_str(), *since))
            })
            .collect();
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
        }
    }

    /// Currently skipped pieces, by reason.
    pub fn skipped(&self) -> BTreeMap<String, u64> {
        let mut m: BTreeMap<String, u64> = BTreeMap::new();
        let all = self.refused.values().chain(self.dropped.values().flatten());
        for s in all {
            *m.entry(s.reason.as_str().to_string()).or_default() += 1;
        }
        m
    }

    /// The trusted snapshot (rebuilt only after a change).
    pub fn snapshot(&mut self) -> Arc<ClusterSnapshot> {
        if let Some(s) = &self.snapshot {
            return s.clone();
        }
        let s = Arc::new(ClusterSnapshot {
            services: self.out_services.clone(),
            nodes: self.out_nodes.clone(),
        });
        self.snapshot = Some(s.clone());
        s
    }

    fn trust(&self) -> (Vec<IpNet>, Vec<IpNet>) {
        (self.pod_cidrs.clone(), self.service_cidrs.clone())
    }

    fn refuse(&mut self, kind: Kind, key: String, skip: Skip) {
        let k = (kind, key);
        if self.refused.get(&k) != Some(&skip) && self.refused_before.get(&k) != Some(&skip) {
            tracing::warn!(cluster = %self.name, reason = skip.reason.as_str(), "skipping {}", skip.detail);
        }
        self.refused.insert(k, skip);
    }

    /// Refuses object `key` because the cluster holds `sync.max_objects_per_cluster` already.
    fn refuse_over_cap(&mut self, kind: Kind, key: String) {
        let detail = format!(
            "{kind:?} {key}: the cluster already has {} objects (sync.max_objects_per_cluster)",
            self.cap
        );
        self.refuse(
            kind,
            key,
            Skip {
                reason: SkipReason::ObjectCap,
                detail,
            },
        );
    }

    fn apply(&mut self, kind: Kind, o: DynamicObject) -> bool {
        let Some(k) = obj_key(&o) else {
            self.refuse(
                kind,
                String::from("<unnamed>"),
                Skip {
                    reason: SkipReason::Malformed,
                    detail: format!("{kind:?} without metadata.name"),
                },
            );
            return false;
        };
        if !self.held(kind, &k) && self.total() >= self.cap {
            self.refuse_over_cap(kind, key_str(&k));
            return false;
        }
        self.refused.remove(&(kind, key_str(&k)));
        match self.insert_raw(kind, &k, o) {
            Ok(touched) => self.recompute(touched),
            Err(skip) => {
                // The object as it stands now is unusable: forget the previous version too.
                let changed = self.remove(kind, &k);
                self.refuse(kind, key_str(&k), skip);
                changed
            }
        }
    }

    /// Parses and stores one object; returns what must be recomputed.
    fn insert_raw(&mut self, kind: Kind, k: &ObjKey, o: DynamicObject) -> Result<Touched, Skip> {
        let mut touched = Touched::default();
        let bad = |e: serde_json::Error| Skip {
            reason: SkipReason::Malformed,
            detail: format!("{kind:?} {}: {e}", key_str(k)),
        };
        let v = serde_json::to_value(&o).map_err(bad)?;
        match kind {
            Kind::Service => {
                let s: core::Service = serde_json::from_value(v).map_err(bad)?;
                let sk = ServiceKey {
                    namespace: k.0.clone(),
                    name: k.1.clone(),
                };
                self.services.insert(sk.clone(), s);
                touched.services.insert(sk);
            }
            Kind::EndpointSlice => {
                let s: discovery::EndpointSlice = serde_json::from_value(v).map_err(bad)?;
                if let Some(old) = self.slices.get(k).and_then(convert::slice_service) {
                    if let Some(set) = self.slices_of.get_mut(&old) {
                        set.remove(k);
                    }
                    touched.services.insert(old);
                }
                if let Some(svc) = convert::slice_service(&s) {
                    self.slices_of
                        .entry(svc.clone())
                        .or_default()
                        .insert(k.clone());
                    touched.services.insert(svc);
                }
                self.slices.insert(k.clone(), s);
            }
            Kind::Node => {
                let n: core::Node = serde_json::from_value(v).map_err(bad)?;
                self.nodes.insert(k.1.clone(), n);
                touched.nodes.insert(k.1.clone());
            }
            Kind::HostSubnet => {
                let h: HostSubnet = serde_json::from_value(v).map_err(bad)?;
                if let Some(old) = self.host_subnets.get(&k.1) {
                    touched.nodes.insert(old.host.clone());
                }
                touched.nodes.insert(h.host.clone());
                self.host_subnets.insert(k.1.clone(), h);
            }
        }
        Ok(touched)
    }

    fn remove_raw(&mut self, kind: Kind, k: &ObjKey) -> Touched {
        let mut touched = Touched::default();
        match kind {
            Kind::Service => {
                let sk = ServiceKey {
                    namespace: k.0.clone(),
                    name: k.1.clone(),
                };
                self.services.remove(&sk);
                touched.services.insert(sk);
            }
            Kind::EndpointSlice => {
                if let Some(old) = self
                    .slices
                    .remove(k)
                    .as_ref()
                    .and_then(convert::slice_service)
                {
                    if let Some(set) = self.slices_of.get_mut(&old) {
                        set.remove(k);
                        if set.is_empty() {
                            self.slices_of.remove(&old);
                        }
                    }
                    touched.services.insert(old);
                }
            }
            Kind::Node => {
                self.nodes.remove(&k.1);
                touched.nodes.insert(k.1.clone());
            }
            Kind::HostSubnet => {
                if let Some(old) = self.host_subnets.remove(&k.1) {
                    touched.nodes.insert(old.host);
                }
            }
        }
        touched
    }

    fn remove(&mut self, kind: Kind, k: &ObjKey) -> bool {
        self.refused.remove(&(kind, key_str(k)));
        let touched = self.remove_raw(kind, k);
        self.recompute(touched)
    }

    /// A relist finished: the listed objects replace everything held of that kind, so objects
    /// deleted while the watch was down disappear here.
    fn replace_all(&mut self, kind: Kind, objs: Vec<DynamicObject>) -> bool {
        let old: Vec<ObjKey> = match kind {
            Kind::Service => self
                .services
                .keys()
                .map(|k| (k.namespace.clone(), k.name.clone()))
                .collect(),
            Kind::EndpointSlice => self.slices.keys().cloned().collect(),
            Kind::Node => self
                .nodes
                .keys()
                .map(|n| (String::new(), n.clone()))
                .collect(),
            Kind::HostSubnet => self
                .host_subnets
                .keys()
                .map(|n| (String::new(), n.clone()))
                .collect(),
        };
        let mut touched = Touched::default();
        for k in &old {
            touched.merge(self.remove_raw(kind, k));
        }
        let (before, rest) = std::mem::take(&mut self.refused)
            .into_iter()
            .partition(|((rk, _), _)| *rk == kind);
        self.refused = rest;
        self.refused_before = before;
        for o in objs {
            let Some(k) = obj_key(&o) else { continue };
            if self.total() >= self.cap {
                self.refuse_over_cap(kind, key_str(&k));
                continue;
            }
            match self.insert_raw(kind, &k, o) {
                Ok(t) => touched.merge(t),
                Err(skip) => self.refuse(kind, key_str(&k), skip),
            }
        }
        self.refused_before.clear();
        self.recompute(touched)
    }

    fn set_dropped(&mut self, kind: Kind, key: String, skips: Vec<Skip>) {
        let k = (kind, key);
        let old = self.dropped.get(&k).cloned().unwrap_or_default();
        for s in &skips {
            if !old.contains(s) {
                tracing::warn!(cluster = %self.name, reason = s.reason.as_str(), "dropping {}", s.detail);
            }
        }
        if skips.is_empty() {
            self.dropped.remove(&k);
        } else {
            self.dropped.insert(k, skips);
        }
    }

    fn recompute(&mut self, touched: Touched) -> bool {
        let (pod, svc) = self.trust();
        let trust = Trust {
            pod_cidrs: &pod,
            service_cidrs: &svc,
        };
        let mut changed = false;
        for sk in touched.services {
            let out = match self.services.get(&sk) {
                Some(s) => {
                    let slices: Vec<&discovery::EndpointSlice> = self
                        .slices_of
                        .get(&sk)
                        .into_iter()
                        .flatten()
                        .filter_map(|k| self.slices.get(k))
                        .collect();
                    convert::service(s, &slices, trust)
                }
                None => convert::Converted {
                    value: None,
                    skips: Vec::new(),
                },
            };
            self.set_dropped(Kind::Service, sk.to_string(), out.skips);
            let prev = match out.value {
                Some(v) => {
                    if self.out_services.get(&sk) == Some(&v) {
                        continue;
                    }
                    self.out_services.insert(sk, v)
                }
                None => match self.out_services.remove(&sk) {
                    Some(p) => Some(p),
                    None => continue,
                },
            };
            let _ = prev;
            changed = true;
        }
        for name in touched.nodes {
            let out = match self.nodes.get(&name) {
                Some(n) => {
                    let hs: Vec<&HostSubnet> = self
                        .host_subnets
                        .values()
                        .filter(|h| h.host == name)
                        .collect();
                    convert::node(n, &hs, trust)
                }
                None => convert::Converted {
                    value: None,
                    skips: Vec::new(),
                },
            };
            self.set_dropped(Kind::Node, name.clone(), out.skips);
            match out.value {
                Some(v) => {
                    if self.out_nodes.get(&name) == Some(&v) {
                        continue;
                    }
                    self.out_nodes.insert(name, v);
                }
                None => {
                    if self.out_nodes.remove(&name).is_none() {
                        continue;
                    }
                }
            }
            changed = true;
        }
        if changed {
            self.snapshot = None;
            self.generation += 1;
        }
        changed
    }
}

#[derive(Default)]
struct Touched {
    services: BTreeSet<ServiceKey>,
    nodes: BTreeSet<String>,
}

impl Touched {
    fn merge(&mut self, o: Touched) {
        self.services.extend(o.services);
        self.nodes.extend(o.nodes);
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
