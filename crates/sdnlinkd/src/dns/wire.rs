//! The fast path: answers rendered to wire format once per zone change, keyed by (lower-case
//! wire name, type), and served by copying with only the ID, the flags and the client's
//! question (its case included) taken from the query. hickory stays for everything else
//! (forwarding, ExternalName chasing, ANY, the pod form, negative answers without a name,
//! unknown clusters, anything unusual in the query): [`answer`] returns `None` for those and
//! the caller takes the hickory path, which gives the same answer (tests/dns_handler.rs
//! compares the two for every name and type of a zone).
//!
//! A rendered set is the answer section of a message whose question is the owner name in
//! lower case, compressed by hickory's encoder: its pointers point into that question at
//! offset 12 or back into the set itself. The client's question has the same length (the same
//! name up to case, never compressed: [`parse`] refuses pointers), so the pointers hold in the
//! response too.

use super::handler::{fit, Transport};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use std::collections::HashSet;

/// Largest UDP answer we send even when a client advertises more (as the hickory path).
const MAX_UDP_PAYLOAD: u16 = 4096;
const HEADER: usize = 12;
const OPT: u16 = 41;

/// One owner name and its rendered answers in one allocation, so a lookup touches the table
/// slot and this blob only (the hot path is bound by cache misses, not instructions):
/// `[name length][name][zone: u16, 0xFFFF none][flags][set count]` then per set
/// `[type: u16][records: u16][length: u16][answer-section bytes]`.
#[derive(Debug)]
struct Entry(Box<[u8]>);

const NO_ZONE: u16 = 0xFFFF;
const FLAG_CNAME: u8 = 1;

impl Entry {
    fn key(&self) -> &[u8] {
        &self.0[1..1 + usize::from(self.0[0])]
    }

    /// (zone, has a CNAME, the sets as (type, count, bytes)).
    fn parts(&self) -> (Option<u16>, bool, SetIter<'_>) {
        let at = 1 + usize::from(self.0[0]);
        let b = &self.0[at..];
        let zone = u16::from_be_bytes([b[0], b[1]]);
        (
            (zone != NO_ZONE).then_some(zone),
            b[2] & FLAG_CNAME != 0,
            SetIter {
                rest: &b[4..],
                left: b[3],
            },
        )
    }
}

struct SetIter<'a> {
    rest: &'a [u8],
    left: u8,
}

impl<'a> Iterator for SetIter<'a> {
    type Item = (u16, u16, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let h = self.rest.get(..6)?;
        let (t, c, l) = (
            u16::from_be_bytes([h[0], h[1]]),
            u16::from_be_bytes([h[2], h[3]]),
            usize::from(u16::from_be_bytes([h[4], h[5]])),
        );
        let bytes = self.rest.get(6..6 + l)?;
        self.rest = &self.rest[6 + l..];
        Some((t, c, bytes))
    }
}

impl std::borrow::Borrow<[u8]> for Entry {
    fn borrow(&self) -> &[u8] {
        self.key()
    }
}

impl std::hash::Hash for Entry {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state)
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Entry {}

/// The SOA of a zone, as a NODATA answer carries it in its authority section.
#[derive(Debug)]
struct WireSoa {
    /// Wire length of the apex name (the suffix of the question the SOA's names point to).
    apex_len: usize,
    ttl: u32,
    mname_prefix: Box<[u8]>,
    rname_prefix: Box<[u8]>,
    fixed: [u8; 20],
}

/// Every rendered answer of one [`super::ZoneData`].
#[derive(Debug, Default)]
pub(crate) struct WireIndex {
    /// foldhash: several times faster than SipHash on short keys; the keys are names from our
    /// own zones, and a client cannot add any, so hash flooding is not a concern here.
    nodes: HashSet<Entry, foldhash::fast::RandomState>,
    soas: Vec<WireSoa>,
    /// Off while some cluster is unknown: those answers need the zone walk (hickory path).
    enabled: bool,
}

/// `name` in wire format, lower case, uncompressed.
pub(crate) fn wire_name(name: &LowerName) -> Box<[u8]> {
    let mut out = Vec::with_capacity(64);
    for label in name.iter() {
        out.push(label.len() as u8);
        out.extend_from_slice(label);
    }
    out.push(0);
    out.into_boxed_slice()
}

/// The labels of `name` before `apex` as a wire prefix (`ns.dns` of `ns.dns.<apex>`), when
/// `name` lies under `apex`.
fn prefix_under(name: &Name, apex: &Name) -> Option<Box<[u8]>> {
    if !apex.zone_of(name) {
        return None;
    }
    let keep = usize::from(name.num_labels() - apex.num_labels());
    let mut out = Vec::new();
    for label in name.iter().take(keep) {
        out.push(label.len() as u8);
        out.extend_from_slice(label);
    }
    Some(out.into_boxed_slice())
}

/// Renders the answer section of `records` for a question of `owner` (module docs).
fn render(
    owner: &LowerName,
    qname_len: usize,
    rtype: RecordType,
    records: &[Record],
) -> Option<Box<[u8]>> {
    let mut m = Message::new(0, MessageType::Response, OpCode::Query);
    m.add_query(Query::query(Name::from(owner), rtype));
    m.answers = records.to_vec();
    let bytes = m.to_vec().ok()?;
    let start = HEADER + qname_len + 4;
    bytes.get(start..).map(|b| b.to_vec().into_boxed_slice())
}

impl WireIndex {
    /// Starts an index; `enabled` false serves nothing (every query takes the hickory path).
    pub(crate) fn new(enabled: bool) -> WireIndex {
        WireIndex {
            enabled,
            ..WireIndex::default()
        }
    }

    /// Registers a zone's SOA record; returns its index for [`WireIndex::add_node`].
    pub(crate) fn add_soa(&mut self, soa: &Record) -> Option<u16> {
        let RData::SOA(s) = &soa.data else {
            return None;
        };
        let apex = &soa.name;
        let mut fixed = [0u8; 20];
        fixed[0..4].copy_from_slice(&s.serial.to_be_bytes());
        fixed[4..8].copy_from_slice(&s.refresh.to_be_bytes());
        fixed[8..12].copy_from_slice(&s.retry.to_be_bytes());
        fixed[12..16].copy_from_slice(&s.expire.to_be_bytes());
        fixed[16..20].copy_from_slice(&s.minimum.to_be_bytes());
        let soa = WireSoa {
            apex_len: wire_name(&LowerName::new(apex)).len(),
            ttl: soa.ttl,
            mname_prefix: prefix_under(&s.mname, apex)?,
            rname_prefix: prefix_under(&s.rname, apex)?,
            fixed,
        };
        let i = u16::try_from(self.soas.len()).ok()?;
        self.soas.push(soa);
        Some(i)
    }

    /// Renders one owner name's record sets; `zone` from [`WireIndex::add_soa`].
    pub(crate) fn add_node(
        &mut self,
        name: &LowerName,
        rrsets: &[(RecordType, Vec<Record>)],
        zone: Option<u16>,
    ) {
        if !self.enabled {
            return;
        }
        let key = wire_name(name);
        let mut zone = zone.unwrap_or(NO_ZONE);
        let mut flags = 0;
        let mut sets = Vec::new();
        let mut count = 0u8;
        for (rtype, set) in rrsets {
            if *rtype == RecordType::CNAME {
                flags |= FLAG_CNAME;
            }
            let rendered = render(name, key.len(), *rtype, set).and_then(|b| {
                Some((
                    u16::try_from(set.len()).ok()?,
                    u16::try_from(b.len()).ok()?,
                    b,
                ))
            });
            let (Some((records, len, bytes)), Some(more)) = (rendered, count.checked_add(1)) else {
                // Not renderable (too large for a message): the hickory path answers it.
                zone = NO_ZONE;
                sets.clear();
                count = 0;
                break;
            };
            count = more;
            sets.extend_from_slice(&u16::from(*rtype).to_be_bytes());
            sets.extend_from_slice(&records.to_be_bytes());
            sets.extend_from_slice(&len.to_be_bytes());
            sets.extend_from_slice(&bytes);
        }
        let mut blob = Vec::with_capacity(1 + key.len() + 4 + sets.len());
        // A wire name is at most 255 bytes (RFC 1035 2.3.4).
        blob.push(key.len() as u8);
        blob.extend_from_slice(&key);
        blob.extend_from_slice(&zone.to_be_bytes());
        blob.push(flags);
        blob.push(count);
        blob.extend_from_slice(&sets);
        self.nodes.insert(Entry(blob.into_boxed_slice()));
    }

    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }
}

/// What [`parse`] found in a query.
struct Parsed<'a> {
    /// The question section as the client sent it.
    question: &'a [u8],
    qtype: u16,
    /// The client's EDNS payload size, when it sent an OPT record.
    edns: Option<u16>,
}

/// Parses a plain query: QUERY opcode, one IN question with an uncompressed name, no answer or
/// authority records, at most an EDNS version 0 OPT record, nothing after it. `lower` receives
/// the lower-cased name. Anything else is `None` (the hickory path handles it).
fn parse<'a>(raw: &'a [u8], lower: &mut [u8; 255]) -> Option<(Parsed<'a>, usize)> {
    let h = raw.get(..HEADER)?;
    // QR = 0, opcode = 0, TC = 0 (byte 2 keeps only RD free); QD = 1, AN = NS = 0, AR <= 1.
    if h[2] & 0xFE != 0 || h[4..10] != [0, 1, 0, 0, 0, 0] || h[10] != 0 || h[11] > 1 {
        return None;
    }
    let mut i = HEADER;
    loop {
        let len = usize::from(*raw.get(i)?);
        if len == 0 {
            break;
        }
        if len > 63 || i - HEADER + len + 1 >= 255 {
            return None;
        }
        let label = raw.get(i..i + 1 + len)?;
        for (j, b) in label.iter().enumerate() {
            lower[i - HEADER + j] = b.to_ascii_lowercase();
        }
        i += 1 + len;
    }
    lower[i - HEADER] = 0;
    let name_len = i + 1 - HEADER;
    let tail = raw.get(i + 1..i + 5)?;
    let qtype = u16::from_be_bytes([tail[0], tail[1]]);
    if tail[2..4] != [0, 1] {
        return None;
    }
    let question_end = i + 5;
    let edns = if h[11] == 1 {
        // Root owner, type OPT, class = payload size, TTL = extended RCODE, version, flags.
        let opt = raw.get(question_end..question_end + 11)?;
        if opt[0] != 0 || u16::from_be_bytes([opt[1], opt[2]]) != OPT || opt[6] != 0 {
            return None;
        }
        let rdlen = usize::from(u16::from_be_bytes([opt[9], opt[10]]));
        if question_end + 11 + rdlen != raw.len() {
            return None;
        }
        Some(u16::from_be_bytes([opt[3], opt[4]]))
    } else {
        if question_end != raw.len() {
            return None;
        }
        None
    };
    Some((
        Parsed {
            question: &raw[HEADER..question_end],
            qtype,
            edns,
        },
        name_len,
    ))
}

/// The response header for `raw`'s query: QR, AA and RA set, RD and CD copied (hickory's
/// `Metadata::response_from_request`), NOERROR.
fn header(raw: &[u8], out: &mut Vec<u8>, an: u16, ns: u16, ar: u16) {
    out.extend_from_slice(&raw[0..2]);
    out.push(0x80 | 0x04 | (raw[2] & 0x01));
    out.push(0x80 | (raw[3] & 0x10));
    out.extend_from_slice(&[0, 1]);
    out.extend_from_slice(&an.to_be_bytes());
    out.extend_from_slice(&ns.to_be_bytes());
    out.extend_from_slice(&ar.to_be_bytes());
}

fn push_opt(out: &mut Vec<u8>, size: u16) {
    out.extend_from_slice(&[0, 0, 41]);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
}

fn push_soa(out: &mut Vec<u8>, soa: &WireSoa, qname_len: usize) {
    // Every name of the SOA ends in the zone apex, which is the question's suffix.
    let apex = HEADER + qname_len - soa.apex_len;
    let ptr = (0xC000 | apex as u16).to_be_bytes();
    out.extend_from_slice(&ptr);
    out.extend_from_slice(&[0, 6, 0, 1]);
    out.extend_from_slice(&soa.ttl.to_be_bytes());
    let rdlen = soa.mname_prefix.len() + soa.rname_prefix.len() + 4 + 20;
    out.extend_from_slice(&(rdlen as u16).to_be_bytes());
    out.extend_from_slice(&soa.mname_prefix);
    out.extend_from_slice(&ptr);
    out.extend_from_slice(&soa.rname_prefix);
    out.extend_from_slice(&ptr);
    out.extend_from_slice(&soa.fixed);
}

/// The answer to `raw` from the rendered index, or `None` for the hickory path.
pub(crate) fn answer(index: &WireIndex, raw: &[u8], transport: Transport) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    answer_into(index, raw, transport, &mut out).then_some(out)
}

/// [`answer`] into `out` (cleared first; its capacity is reused): false for the hickory path.
pub(crate) fn answer_into(
    index: &WireIndex,
    raw: &[u8],
    transport: Transport,
    out: &mut Vec<u8>,
) -> bool {
    out.clear();
    if !index.enabled {
        return false;
    }
    compose(index, raw, transport, out).is_some()
}

fn compose(index: &WireIndex, raw: &[u8], transport: Transport, out: &mut Vec<u8>) -> Option<()> {
    let mut lower = [0u8; 255];
    let (q, name_len) = parse(raw, &mut lower)?;
    // ANY and the meta types (RFC 6895 3.1) take the hickory path.
    if q.qtype == u16::from(RecordType::ANY) || q.qtype >= 128 && q.qtype < 256 || q.qtype == OPT {
        return None;
    }
    let (zone, cname, mut sets) = index.nodes.get(&lower[..name_len])?.parts();
    let set = sets.find(|(t, _, _)| *t == q.qtype);
    let size = q.edns.map(|s| s.clamp(512, MAX_UDP_PAYLOAD));
    let ar = u16::from(size.is_some());
    match set {
        Some((_, count, bytes)) => {
            header(raw, out, count, 0, ar);
            out.extend_from_slice(q.question);
            out.extend_from_slice(bytes);
        }
        None if cname => return None,
        None => {
            let soa = index.soas.get(usize::from(zone?))?;
            header(raw, out, 0, 1, ar);
            out.extend_from_slice(q.question);
            push_soa(out, soa, name_len);
        }
    }
    if let Some(size) = size {
        push_opt(out, size);
    }
    let limit = match transport {
        Transport::Udp => usize::from(size.unwrap_or(512)),
        Transport::Tcp => usize::from(u16::MAX),
    };
    if out.len() > limit {
        let cut = fit(out, limit)?;
        out.clear();
        out.extend_from_slice(&cut);
    }
    Some(())
}
