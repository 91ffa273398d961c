//! The zone build: every record of the per-cluster zones, of `cluster.all` and of the reverse
//! zones, from the config and the snapshots, then rendered for the fast path.

use super::names::{child, endpoint_label, name, reverse_apex, srv_owner, svc_name};
use super::{addr_record, Node, Unknown, Zone, ZoneData, ZoneKind, ALL_ZONE, SCHEMA_VERSION};
use crate::config::Config;
use crate::dns::wire::WireIndex;
use crate::model::{ClusterSnapshot, Endpoint, Service, ServiceKind, ServicePort, Snapshots};
use hickory_proto::rr::rdata::{CNAME, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{LowerName, Name, RData, Record};
use ipnet::IpNet;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

struct Builder {
    ttl: u32,
    data: ZoneData,
}

impl Builder {
    fn soa(&self, apex: &Name) -> Record {
        let mname = Name::from_ascii("ns.dns")
            .ok()
            .and_then(|n| n.append_domain(apex).ok())
            .unwrap_or_else(|| apex.clone());
        let rname = Name::from_ascii("hostmaster")
            .ok()
            .and_then(|n| n.append_domain(apex).ok())
            .unwrap_or_else(|| apex.clone());
        // Negative answers are cached for min(SOA TTL, MINIMUM) (RFC 2308 section 5): both are
        // the configured TTL.
        let ttl = self.ttl as i32;
        Record::from_rdata(
            apex.clone(),
            self.ttl,
            RData::SOA(SOA::new(
                mname,
                rname,
                1,
                ttl.max(60),
                ttl.max(60),
                86400,
                self.ttl,
            )),
        )
    }

    fn add_zone(&mut self, apex: Name, kind: ZoneKind) {
        let key = LowerName::new(&apex);
        if let Some(existing) = self.data.zones.get_mut(&key) {
            // Two CIDRs sharing a reverse apex: one zone, both CIDRs.
            if let (ZoneKind::Reverse { cidrs }, ZoneKind::Reverse { cidrs: more }) =
                (&mut existing.kind, kind)
            {
                cidrs.extend(more);
            }
            return;
        }
        let soa = self.soa(&apex);
        self.data.max_apex_labels = self.data.max_apex_labels.max(apex.num_labels());
        self.data
            .names
            .entry(key.clone())
            .or_default()
            .push(soa.clone());
        self.data.zones.insert(key, Zone { soa, kind });
    }

    /// Adds a record and the empty non-terminals between it and its zone apex.
    fn add(&mut self, record: Record) {
        let mut parent = record.name.base_name();
        let key = LowerName::new(&record.name);
        self.data.names.entry(key).or_default().push(record);
        self.data.records += 1;
        while !parent.is_root() {
            let pkey = LowerName::new(&parent);
            if self.data.zones.contains_key(&pkey) {
                break;
            }
            self.data.names.entry(pkey).or_default();
            parent = parent.base_name();
        }
    }

    fn ptr(&mut self, ip: IpAddr, target: &Name) {
        self.add(Record::from_rdata(
            Name::from(ip),
            self.ttl,
            RData::PTR(PTR(target.clone())),
        ));
    }
}

fn ready(svc: &Service) -> impl Iterator<Item = &Endpoint> {
    svc.endpoints.iter().filter(|e| e.ready)
}

impl ZoneData {
    /// Computes every zone from the config and the snapshots. Pure: same input, same output.
    pub fn build(cfg: &Config, snapshots: &Snapshots) -> ZoneData {
        let mut b = Builder {
            ttl: cfg.dns.ttl,
            data: ZoneData::default(),
        };
        let empty = ClusterSnapshot::default();
        let watched: HashSet<&str> = cfg.watched_clusters().map(|(n, _)| n).collect();
        let is_unknown = |c: &str| watched.contains(c) && !snapshots.contains_key(c);
        // Clusters with a zone, in config order (local first).
        let mut clusters: Vec<(&str, &[IpNet], &[IpNet])> = Vec::new();
        if cfg.local.kubeconfig.is_some() {
            clusters.push((
                &cfg.local.name,
                &cfg.local.pod_cidrs,
                &cfg.local.service_cidrs,
            ));
        }
        for r in &cfg.remote {
            clusters.push((&r.name, &r.pod_cidrs, &r.service_cidrs));
        }

        for (cluster, pod_cidrs, svc_cidrs) in &clusters {
            let unknown = is_unknown(cluster);
            b.data.has_unknown |= unknown;
            for net in pod_cidrs.iter().chain(svc_cidrs.iter()) {
                if let Some(apex) = reverse_apex(*net) {
                    b.add_zone(
                        apex,
                        ZoneKind::Reverse {
                            cidrs: vec![(*net, unknown)],
                        },
                    );
                }
            }
            let Some(apex) = name(&format!("cluster.{cluster}")) else {
                tracing::warn!(cluster, "cluster name is not a DNS name: no zone");
                continue;
            };
            b.add_zone(
                apex.clone(),
                ZoneKind::Forward {
                    pod_cidrs: pod_cidrs.to_vec(),
                    unknown: if unknown { Unknown::Whole } else { Unknown::No },
                },
            );
            if unknown {
                // Nothing of it is known; the lookup answers SERVFAIL before any record.
                continue;
            }
            // `pod.<zone>` holds the pod form below it: an empty non-terminal, so NODATA.
            if let Some(pod) = child("pod", &apex) {
                b.data.names.entry(LowerName::new(&pod)).or_default();
            }
            let snap = snapshots
                .get(*cluster)
                .map(|s| s.as_ref())
                .unwrap_or(&empty);
            add_cluster(&mut b, &apex, snap);
        }

        if cfg.dns.all_zone {
            if let Some(all) = name(ALL_ZONE) {
                let pods = clusters.iter().flat_map(|c| c.1.iter().copied()).collect();
                let any_unknown = clusters.iter().any(|c| is_unknown(c.0));
                b.data.has_unknown |= any_unknown;
                b.add_zone(
                    all.clone(),
                    ZoneKind::Forward {
                        pod_cidrs: pods,
                        unknown: if any_unknown {
                            Unknown::Misses
                        } else {
                            Unknown::No
                        },
                    },
                );
                if let Some(pod) = child("pod", &all) {
                    b.data.names.entry(LowerName::new(&pod)).or_default();
                }
                let snaps: Vec<(&str, &ClusterSnapshot)> = clusters
                    .iter()
                    .filter_map(|(c, _, _)| snapshots.get(*c).map(|s| (*c, s.as_ref())))
                    .collect();
                add_all(&mut b, &all, &snaps);
            }
        }
        let repeated: usize = b.data.names.values_mut().map(Node::dedup).sum();
        b.data.records = b.data.records.saturating_sub(repeated);
        b.data.wire = b.data.render();
        b.data
    }

    /// Renders every node's answers for the fast path. Off while a cluster is unknown: those
    /// answers depend on the zone walk, which only the hickory path does.
    fn render(&self) -> WireIndex {
        let mut wire = WireIndex::new(!self.has_unknown);
        if self.has_unknown {
            return wire;
        }
        let soas: HashMap<&LowerName, u16> = self
            .zones
            .iter()
            .filter_map(|(apex, z)| wire.add_soa(&z.soa).map(|i| (apex, i)))
            .collect();
        for (name, node) in &self.names {
            let zone = self
                .zone_of(name)
                .and_then(|(apex, _)| soas.get(apex).copied());
            wire.add_node(name, &node.rrsets, zone);
        }
        wire
    }
}

/// Specification 2.3.2 and 2.4.2: one SRV record per *named* port of `svc`, owned by
/// `_<port>._<proto>.<owner>`, pointing at `target` on the port `port_of` gives (none: no
/// record for that port).
fn add_srvs(
    b: &mut Builder,
    svc: &Service,
    owner: &Name,
    target: &Name,
    port_of: impl Fn(&ServicePort) -> Option<u16>,
) {
    for p in svc.ports.iter().filter(|p| !p.name.is_empty()) {
        let Some(port) = port_of(p) else {
            continue;
        };
        if let Some(srv) = srv_owner(&p.name, p.protocol.as_lower(), owner) {
            b.add(Record::from_rdata(
                srv,
                b.ttl,
                RData::SRV(SRV::new(0, 100, port, target.clone())),
            ));
        }
    }
}

/// The port endpoint `ep` serves the Service port `p` on (matched by name and protocol).
fn endpoint_port(ep: &Endpoint, p: &ServicePort) -> Option<u16> {
    ep.ports
        .iter()
        .find(|e| e.name == p.name && e.protocol == p.protocol)
        .map(|e| e.port)
}

fn add_cluster(b: &mut Builder, apex: &Name, snap: &ClusterSnapshot) {
    let ttl = b.ttl;
    if let Some(owner) = child("dns-version", apex) {
        b.add(Record::from_rdata(
            owner,
            ttl,
            RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_string()])),
        ));
    }
    for svc in snap.services.values() {
        let Some(owner) = svc_name(apex, svc) else {
            tracing::debug!(service = %svc.key, "service name is not a DNS name: skipped");
            continue;
        };
        match &svc.kind {
            ServiceKind::ClusterIp(ips) => {
                for ip in ips {
                    b.add(addr_record(&owner, ttl, *ip));
                    b.ptr(*ip, &owner);
                }
                add_srvs(b, svc, &owner, &owner, |p| Some(p.port));
            }
            ServiceKind::Headless => {
                for ep in ready(svc) {
                    let Some(host) = endpoint_label(ep).and_then(|l| child(&l, &owner)) else {
                        continue;
                    };
                    for ip in &ep.addresses {
                        b.add(addr_record(&owner, ttl, *ip));
                        b.add(addr_record(&host, ttl, *ip));
                        b.ptr(*ip, &host);
                    }
                    add_srvs(b, svc, &owner, &host, |p| endpoint_port(ep, p));
                }
            }
            ServiceKind::ExternalName(target) => {
                if let Some(t) = name(target) {
                    b.add(Record::from_rdata(owner, ttl, RData::CNAME(CNAME(t))));
                }
            }
        }
    }
}

fn add_all(b: &mut Builder, all: &Name, snaps: &[(&str, &ClusterSnapshot)]) {
    let ttl = b.ttl;
    if let Some(owner) = child("dns-version", all) {
        b.add(Record::from_rdata(
            owner,
            ttl,
            RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_string()])),
        ));
    }
    let mut seen = HashSet::new();
    // Service keys in first-seen order over the clusters in config order.
    let mut keys = Vec::new();
    for (_, snap) in snaps {
        for k in snap.services.keys() {
            if seen.insert(k) {
                keys.push(k);
            }
        }
    }
    for key in keys {
        let Some(owner) = name(&format!("{}.{}.svc.{ALL_ZONE}", key.name, key.namespace)) else {
            continue;
        };
        let mut any = false;
        let mut external_only = true;
        for (cluster, snap) in snaps {
            let Some(svc) = snap.services.get(key) else {
                continue;
            };
            let Some(apex) = name(&format!("cluster.{cluster}")) else {
                continue;
            };
            let Some(cluster_owner) = svc_name(&apex, svc) else {
                continue;
            };
            match &svc.kind {
                ServiceKind::ClusterIp(ips) => {
                    external_only = false;
                    for ip in ips {
                        b.add(addr_record(&owner, ttl, *ip));
                        any = true;
                    }
                    add_srvs(b, svc, &owner, &cluster_owner, |p| Some(p.port));
                }
                ServiceKind::Headless => {
                    external_only = false;
                    for ep in ready(svc) {
                        let Some(host) = endpoint_label(ep).and_then(|l| child(&l, &cluster_owner))
                        else {
                            continue;
                        };
                        for ip in &ep.addresses {
                            b.add(addr_record(&owner, ttl, *ip));
                            any = true;
                        }
                        add_srvs(b, svc, &owner, &host, |p| endpoint_port(ep, p));
                    }
                }
                ServiceKind::ExternalName(_) => {}
            }
        }
        if !any && external_only {
            // Only ExternalName services: the name exists without data (see module docs).
            let mut parent = owner.clone();
            while !parent.is_root() {
                let k = LowerName::new(&parent);
                if b.data.zones.contains_key(&k) {
                    break;
                }
                b.data.names.entry(k).or_default();
                parent = parent.base_name();
            }
        }
    }
}
