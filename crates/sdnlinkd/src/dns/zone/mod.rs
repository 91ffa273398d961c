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
//!
//! [`Snapshots`]: crate::model::Snapshots
//! [`Config::watched_clusters`]: crate::config::Config::watched_clusters

mod build;
mod names;

pub use names::dashed;

use super::wire::WireIndex;
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use ipnet::IpNet;
use names::undashed;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

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

fn addr_record(owner: &Name, ttl: u32, ip: IpAddr) -> Record {
    let data = match ip {
        IpAddr::V4(v4) => RData::A(v4.into()),
        IpAddr::V6(v6) => RData::AAAA(v6.into()),
    };
    Record::from_rdata(owner.clone(), ttl, data)
}

impl ZoneData {
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
