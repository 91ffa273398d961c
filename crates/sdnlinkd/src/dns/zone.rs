//! Zone data: the records of every `cluster.<name>` zone, of `cluster.all` and of the reverse
//! zones, computed as one immutable value from the config and the cluster snapshots.
//!
//! Records follow the Kubernetes DNS-Based Service Discovery specification, schema 1.0.1
//! (kubernetes/dns `docs/specification.md`), with `<zone>` = `cluster.<name>`.
//!
//! # `cluster.all`
//! `<svc>.<ns>.svc.cluster.all` is the union over the clusters that count, which are the
//! clusters with a zone (every remote cluster, and the local one when it has a kubeconfig) whose
//! snapshot holds a Service of that namespace and name:
//! - ClusterIP services contribute their ClusterIPs, headless services the addresses of their
//!   ready endpoints; ExternalName services contribute nothing (a CNAME cannot share a name with
//!   other data), so a name only ExternalName services hold answers NODATA.
//! - SRV `_<port>._<proto>.<svc>.<ns>.svc.cluster.all` lists, per contributing cluster, the
//!   records that cluster's own zone has for that port; targets stay in the per-cluster zones
//!   (`<svc>.<ns>.svc.cluster.<name>`, `<host>.<svc>.<ns>.svc.cluster.<name>`), which this server
//!   also answers.
//! - Order: clusters in config order (local first, then remotes as listed), within a cluster the
//!   order of its own zone; an address present in two clusters is listed once.
//! - A degraded cluster keeps contributing its last good snapshot (the daemon keeps it in
//!   [`Snapshots`]); a cluster whose snapshot is absent contributes nothing.
//! - A name that exists in no cluster is NXDOMAIN, as is a headless service without ready
//!   endpoints anywhere (docs/design.md: no ready endpoints means NXDOMAIN), unless a watched
//!   cluster is unknown (below): then it is SERVFAIL.
//!
//! # Unknown clusters
//! A *watched* cluster ([`Config::watched_clusters`]: it has a kubeconfig) whose snapshot is
//! absent from [`Snapshots`] has not listed in this run and has no persisted snapshot: nothing
//! is known about it, which is not the same as knowing it is empty. Every name of its zone and
//! of the reverse zones of its CIDRs answers SERVFAIL, so resolvers retry (or try the next
//! server) instead of caching an authoritative NXDOMAIN or NODATA for a name that may exist
//! (RFC 2308 section 5 negative caching). In `cluster.all`, names found in known clusters are
//! answered from them; a name found nowhere answers SERVFAIL while any watched cluster is
//! unknown. A present snapshot, even an empty one, is authoritative. A remote without a
//! kubeconfig is never watched: its zone is empty and authoritative.
//! - `<a>-<b>-<c>-<d>.<ns>.pod.cluster.all` answers addresses inside any counted cluster's pod
//!   CIDRs (they never overlap: config validation).

use super::wire::WireIndex;
use crate::config::Config;
use crate::model::{ClusterSnapshot, Endpoint, Service, ServiceKind, ServicePort, Snapshots};
use hickory_proto::rr::rdata::{CNAME, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use ipnet::IpNet;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Schema version published in `dns-version.<zone>` TXT (specification section 2.1).
pub const SCHEMA_VERSION: &str = "1.0.1";

/// The name of the merged zone.
pub const ALL_ZONE: &str = "cluster.all";

/// Records of one owner name; empty for an empty non-terminal (RFC 8020: it exists, so NODATA).
#[derive(Debug, Default)]
struct Node {
    rrsets: Vec<(RecordType, Vec<Record>)>,
}

impl Node {
    /// Adds `record`; duplicates go in [`Node::dedup`] once the zone is built (checking here
    /// made a headless Service's address set quadratic in its endpoints).
    fn push(&mut self, record: Record) {
        let rtype = record.record_type();
        match self.rrsets.iter_mut().find(|(t, _)| *t == rtype) {
            Some((_, set)) => set.push(record),
            None => self.rrsets.push((rtype, vec![record])),
        }
    }

    /// Drops repeated records of each RRset (an RRset is a set, RFC 2181 section 5), keeping
    /// the first of each; returns how many went.
    fn dedup(&mut self) -> usize {
        let mut removed = 0;
        for (_, set) in &mut self.rrsets {
            if set.len() < 2 {
                continue;
            }
            let keep: Vec<bool> = {
                let mut seen = HashSet::with_capacity(set.len());
                set.iter().map(|r| seen.insert(&r.data)).collect()
            };
            let before = set.len();
            let mut keep = keep.into_iter();
            set.retain(|_| keep.next().unwrap_or(true));
            removed += before - set.len();
        }
        removed
    }

    fn get(&self, rtype: RecordType) -> Option<&[Record]> {
        self.rrsets
            .iter()
            .find(|(t, _)| *t == rtype)
            .map(|(_, s)| s.as_slice())
    }
}

/// How much of a forward zone is unknown (module docs, "Unknown clusters").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unknown {
    /// Every cluster behind the zone is known: its answers are authoritative.
    No,
    /// The zone's cluster is unknown: every name is SERVFAIL.
    Whole,
    /// `cluster.all` with an unknown member: names found answer, misses are SERVFAIL.
    Misses,
}

#[derive(Debug)]
enum ZoneKind {
    /// A forward zone; the pod CIDRs answer the `a-b-c-d.<ns>.pod.<zone>` form.
    Forward {
        pod_cidrs: Vec<IpNet>,
        unknown: Unknown,
    },
    /// A reverse zone apex; only names of addresses inside `cidrs` are ours, and those inside
    /// a CIDR of an unknown cluster (`true`) are SERVFAIL.
    Reverse { cidrs: Vec<(IpNet, bool)> },
}

#[derive(Debug)]
struct Zone {
    soa: Record,
    kind: ZoneKind,
}

/// Outcome of a lookup in the zone data.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup<'a> {
    /// The name is ours and has records of the type (or a CNAME): NOERROR with these answers.
    Answer(Cow<'a, [Record]>),
    /// The name is ours but has no records of the type: NOERROR, SOA in authority.
    NoData(&'a Record),
    /// The name is under one of our zones and does not exist: NXDOMAIN, SOA in authority.
    NxDomain(&'a Record),
    /// Under a zone whose cluster is unknown: SERVFAIL, never a negative answer.
    Unknown,
    /// Not a name of our zones: forward it.
    NotOurs,
}

/// The immutable record set the stub answers from; swapped whole on every change.
#[derive(Debug, Default)]
pub struct ZoneData {
    names: HashMap<LowerName, Node>,
    zones: HashMap<LowerName, Zone>,
    /// Most labels of any apex: the zone walk starts there.
    max_apex_labels: u8,
    records: usize,
    /// Some zone has an unknown cluster: lookups check for it before answering.
    has_unknown: bool,
    /// The same answers rendered to wire format (the fast path).
    pub(crate) wire: WireIndex,
}

struct Builder {
    ttl: u32,
    data: ZoneData,
}

fn name(s: &str) -> Option<Name> {
    let mut n = Name::from_ascii(s).ok()?;
    n.set_fqdn(true);
    Some(n)
}

/// `10.0.0.1` -> `10-0-0-1`; IPv6 `fd00::1` -> `fd00--1` (the dashed forms Kubernetes DNS uses
/// for pod names and hostless endpoints).
pub fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

fn undashed(label: &str) -> Option<IpAddr> {
    if let Ok(v4) = label.replace('-', ".").parse::<Ipv4Addr>() {
        return Some(IpAddr::V4(v4));
    }
    label
        .replace('-', ":")
        .parse::<Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

fn addr_record(owner: &Name, ttl: u32, ip: IpAddr) -> Record {
    let data = match ip {
        IpAddr::V4(v4) => RData::A(v4.into()),
        IpAddr::V6(v6) => RData::AAAA(v6.into()),
    };
    Record::from_rdata(owner.clone(), ttl, data)
}

/// The reverse apex of a CIDR: its prefix rounded down to a label boundary (8 bits for IPv4,
/// 4 for IPv6, RFC 1035 3.5 / RFC 3596 2.5), so a /12 service CIDR lives under `10.in-addr.arpa`.
fn reverse_apex(net: IpNet) -> Option<Name> {
    let labels = match net {
        IpNet::V4(_) => net.prefix_len() / 8,
        IpNet::V6(_) => net.prefix_len() / 4,
    };
    let full = Name::from(net.network());
    // `full` is the name of the whole address plus `in-addr.arpa` (2 labels) / `ip6.arpa` (2).
    Some(full.trim_to(labels as usize + 2))
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

/// Owner name of an endpoint under its service: its hostname, else its dashed first address.
fn endpoint_label(ep: &Endpoint) -> Option<String> {
    match &ep.hostname {
        Some(h) if !h.is_empty() => Some(h.clone()),
        _ => ep.addresses.first().map(|ip| dashed(*ip)),
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

    /// Names with rendered answers (for tests of the fast path).
    pub fn rendered_names(&self) -> usize {
        self.wire.len()
    }

    /// Number of records (excluding SOA), for status and tests.
    pub fn record_count(&self) -> usize {
        self.records
    }

    /// Apex names of every zone served, lower case, sorted.
    pub fn zone_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.zones.keys().map(|z| z.to_string()).collect();
        v.sort();
        v
    }

    fn zone_of(&self, qname: &LowerName) -> Option<(&LowerName, &Zone)> {
        let mut n: Name = Name::from(qname);
        if n.num_labels() > self.max_apex_labels {
            n = n.trim_to(self.max_apex_labels as usize);
        }
        loop {
            if let Some(z) = self.zones.get_key_value(&LowerName::new(&n)) {
                return Some(z);
            }
            if n.is_root() {
                return None;
            }
            n = n.base_name();
        }
    }

    /// Whether `qname` lies where an unknown cluster's data would be: its forward zone, or
    /// inside one of its CIDRs in a reverse zone.
    fn in_unknown(&self, qname: &LowerName) -> bool {
        match self.zone_of(qname) {
            Some((
                _,
                Zone {
                    kind: ZoneKind::Forward { unknown, .. },
                    ..
                },
            )) => *unknown == Unknown::Whole,
            Some((
                _,
                Zone {
                    kind: ZoneKind::Reverse { cidrs },
                    ..
                },
            )) => Name::from(qname)
                .parse_arpa_name()
                .is_ok_and(|net| cidrs.iter().any(|(c, u)| *u && c.contains(&net))),
            None => false,
        }
    }

    /// Looks a name up. Case-insensitive: `LowerName` is already lower-cased.
    pub fn lookup(&self, qname: &LowerName, qtype: RecordType) -> Lookup<'_> {
        if self.has_unknown && self.in_unknown(qname) {
            return Lookup::Unknown;
        }
        let found = self.lookup_known(qname, qtype);
        if self.has_unknown {
            if let Lookup::NxDomain(_) = found {
                if let Some((_, zone)) = self.zone_of(qname) {
                    if matches!(
                        zone.kind,
                        ZoneKind::Forward {
                            unknown: Unknown::Misses,
                            ..
                        }
                    ) {
                        return Lookup::Unknown;
                    }
                }
            }
        }
        found
    }

    fn lookup_known(&self, qname: &LowerName, qtype: RecordType) -> Lookup<'_> {
        if let Some(node) = self.names.get(qname) {
            // Hits never walk to the apex: only a negative answer needs the zone's SOA.
            if qtype == RecordType::ANY {
                let all: Vec<Record> = node
                    .rrsets
                    .iter()
                    .flat_map(|(_, s)| s.iter().cloned())
                    .collect();
                if !all.is_empty() {
                    return Lookup::Answer(Cow::Owned(all));
                }
            } else if let Some(set) = node.get(qtype) {
                return Lookup::Answer(Cow::Borrowed(set));
            } else if let Some(set) = node.get(RecordType::CNAME) {
                // A CNAME answers every type (RFC 1034 3.6.2); the client follows it.
                return Lookup::Answer(Cow::Borrowed(set));
            }
            return match self.zone_of(qname) {
                Some((_, zone)) => Lookup::NoData(&zone.soa),
                None => Lookup::NotOurs,
            };
        }
        let Some((apex, zone)) = self.zone_of(qname) else {
            return Lookup::NotOurs;
        };
        match &zone.kind {
            ZoneKind::Forward { pod_cidrs, .. } => {
                if let Some(answer) = pod_lookup(qname, apex, pod_cidrs, qtype, zone) {
                    return answer;
                }
                Lookup::NxDomain(&zone.soa)
            }
            ZoneKind::Reverse { cidrs } => {
                let Ok(net) = Name::from(qname).parse_arpa_name() else {
                    return Lookup::NotOurs;
                };
                // Only names inside our CIDRs are ours; the apex was rounded to a label
                // boundary and may cover addresses the upstream resolvers know.
                if cidrs.iter().any(|(c, _)| c.contains(&net)) {
                    Lookup::NxDomain(&zone.soa)
                } else {
                    Lookup::NotOurs
                }
            }
        }
    }
}

/// `<a>-<b>-<c>-<d>.<ns>.pod.<zone>`: exactly three labels below the apex, the middle one any
/// namespace (the spec does not check it), answered for addresses inside the pod CIDRs.
fn pod_lookup<'a>(
    qname: &LowerName,
    apex: &LowerName,
    pod_cidrs: &[IpNet],
    qtype: RecordType,
    zone: &'a Zone,
) -> Option<Lookup<'a>> {
    if qname.num_labels() != apex.num_labels() + 3 {
        return None;
    }
    let labels: Vec<&[u8]> = qname.iter().collect();
    if labels.get(2) != Some(&&b"pod"[..]) {
        return None;
    }
    let ip = undashed(std::str::from_utf8(labels[0]).ok()?)?;
    if !pod_cidrs.iter().any(|c| c.contains(&ip)) {
        return None;
    }
    let want = match ip {
        IpAddr::V4(_) => RecordType::A,
        IpAddr::V6(_) => RecordType::AAAA,
    };
    if qtype == want || qtype == RecordType::ANY {
        let rec = addr_record(&Name::from(qname), zone.soa.ttl, ip);
        Some(Lookup::Answer(Cow::Owned(vec![rec])))
    } else {
        Some(Lookup::NoData(&zone.soa))
    }
}

fn svc_name(apex: &Name, svc: &Service) -> Option<Name> {
    Name::from_ascii(format!("{}.{}.svc", svc.key.name, svc.key.namespace))
        .ok()?
        .append_domain(apex)
        .ok()
}

fn srv_owner(port_name: &str, proto: &str, svc: &Name) -> Option<Name> {
    Name::from_ascii(format!("_{port_name}._{proto}"))
        .ok()?
        .append_domain(svc)
        .ok()
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

fn child(label: &str, parent: &Name) -> Option<Name> {
    Name::from_ascii(label).ok()?.append_domain(parent).ok()
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
