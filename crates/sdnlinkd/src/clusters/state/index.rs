//! Records into and out of the store, through the indexes that keep each step O(log n):
//! ClusterIP claims (oldest Service owns an address), slices per Service, HostSubnets per host.

use super::records::{HsEntry, NodeEntry, Rec, Skips, SliceEntry, SvcEntry};
use super::{service_key, ClusterState, Kind, ObjKey};
use crate::clusters::convert::{self, HostSubnet, SkipReason, Trust};
use crate::model::{Service, ServiceKey, ServiceKind};
use std::collections::BTreeSet;
use std::net::IpAddr;

impl ClusterState {
    fn trust(&self) -> Trust<'_> {
        Trust {
            pod_cidrs: &self.pod_cidrs,
            service_cidrs: &self.service_cidrs,
        }
    }

    pub(super) fn is_included(&self, k: &ServiceKey) -> bool {
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
    pub(super) fn upsert(&mut self, kind: Kind, k: &ObjKey, rec: Rec) -> bool {
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
    pub(super) fn slices_of_service<'a>(
        &'a self,
        k: &'a ServiceKey,
    ) -> impl Iterator<Item = &'a str> + 'a {
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
    pub(super) fn delete(&mut self, kind: Kind, k: &ObjKey) -> bool {
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
