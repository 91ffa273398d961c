//! Watch items into the store: single events applied at once, lists staged and committed
//! whole, and the object and byte caps both are judged by.

use super::records::{HsEntry, NodeEntry, Rec, Skips, SliceEntry, SvcEntry};
use super::{
    describe_watch_error, key_str, obj_key, service_key, ClusterState, Kind, ObjKey,
    MAX_TRACKED_REFUSALS,
};
use crate::clusters::convert::{self, Skip, SkipReason, Trust};
use kube::core::DynamicObject;
use kube::runtime::watcher;
use std::collections::{BTreeMap, HashSet};
use std::time::SystemTime;

/// Stand-in key of a refused relist of one kind.
const RELIST_KEY: &str = "<relist>";

/// A list in progress for one kind.
#[derive(Default)]
pub(super) struct Staging {
    /// A good snapshot exists (this kind listed in this run, or a warm snapshot is served): a
    /// list over a cap is refused whole. Otherwise (nothing to keep) the objects that fit are
    /// taken and the rest refused one by one.
    strict: bool,
    recs: Vec<(ObjKey, Rec)>,
    /// At most [`MAX_TRACKED_REFUSALS`]; the rest only counted in `refused_more`.
    pub(super) refused: Vec<(String, Skip)>,
    pub(super) refused_more: BTreeMap<SkipReason, u64>,
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

impl ClusterState {
    fn held_count(&self, kind: Kind) -> usize {
        match kind {
            Kind::Service => self.services.len(),
            Kind::EndpointSlice => self.slices.len(),
            Kind::Node => self.nodes.len(),
            Kind::HostSubnet => self.host_subnets.len(),
        }
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
}
