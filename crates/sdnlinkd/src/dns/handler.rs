//! The request handler: answers our zones from the current [`ZoneData`] (an `ArcSwap` load,
//! never a lock) and forwards everything else. It takes raw messages and returns raw answers;
//! the sockets are the server module's.

use super::forward::{self, Cache, ForwardError, UpstreamLog};
use super::zone::{Lookup, ZoneData};
use crate::metrics::{AtomicHistogram, HistogramSnapshot};
use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Header, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, LowerName, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use hickory_server::net::xfer::Protocol;
use hickory_server::server::Request;
use hickory_server::zone_handler::MessageRequest;
use ipnet::IpNet;
use serde::Serialize;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Largest UDP answer we send even when a client advertises more (BIND's and Unbound's default
/// ceiling; larger datagrams fragment).
const MAX_UDP_PAYLOAD: u16 = 4096;

/// How a message reached us, which bounds the answer's size: UDP to 512 bytes without EDNS
/// (RFC 1035 4.2.1) or the advertised EDNS size, TCP not at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    fn protocol(self) -> Protocol {
        match self {
            Transport::Udp => Protocol::Udp,
            Transport::Tcp => Protocol::Tcp,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// Counters of the stub, shown by `sdnlinkd status`.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    queries: AtomicU64,
    /// Responses by [`Origin`] and response code ([`RCODE_NAMES`]).
    rcodes: [[AtomicU64; 7]; 2],
    forwarded: AtomicU64,
    cache_hits: AtomicU64,
    upstream_errors: AtomicU64,
    loops_refused: AtomicU64,
    malformed: AtomicU64,
    dropped: AtomicU64,
    over_cap: AtomicU64,
    clients_refused: AtomicU64,
    fast: AtomicU64,
}

pub const RCODE_NAMES: [&str; 7] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "OTHER",
];

/// Where an answer came from: the `zone` label of `sdnlink_dns_queries_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Our zones (`cluster.<name>`, `cluster.all`, the reverse zones), and refusals.
    Local = 0,
    /// Every other name: forwarded upstream (or SERVFAIL when that failed or was over the cap).
    Forwarded = 1,
}

/// The label values of [`Origin`], by index.
pub const ORIGIN_NAMES: [&str; 2] = ["local", "forwarded"];

impl Stats {
    fn count_rcode(&self, origin: Origin, rc: ResponseCode) {
        let i = match rc {
            ResponseCode::NoError => 0,
            ResponseCode::FormErr => 1,
            ResponseCode::ServFail => 2,
            ResponseCode::NXDomain => 3,
            ResponseCode::NotImp => 4,
            ResponseCode::Refused => 5,
            _ => 6,
        };
        self.rcodes[origin as usize][i].fetch_add(1, Ordering::Relaxed);
    }
}

/// Upper bounds of the forwarding time buckets in seconds: 1 ms to 4.096 s, doubling
/// (forwarding gives up after a few seconds, so the last one holds nearly everything).
pub(crate) const FORWARD_BUCKETS: [f64; 13] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
];

/// Snapshot of the stub's counters and settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DnsStatus {
    /// Well-formed requests received.
    pub queries: u64,
    /// Responses sent to them, by response code.
    pub answers: BTreeMap<String, u64>,
    /// The same by where the answer came from (`local`, `forwarded`), then response code.
    pub answers_by_zone: BTreeMap<String, BTreeMap<String, u64>>,
    /// Messages that did not decode (answered FORMERR when their header did; not counted in
    /// `queries` or `answers`).
    pub malformed: u64,
    /// Requests left unanswered on purpose: responses sent to us, questions whose compression
    /// pointers cannot be echoed.
    pub dropped: u64,
    /// Queries sent upstream (cache misses).
    pub forwarded: u64,
    /// Forwardable queries answered from the cache.
    pub cache_hits: u64,
    /// Forwarded queries no upstream answered (SERVFAIL to the client).
    pub upstream_errors: u64,
    /// Queries refused because every upstream is this server itself.
    pub loops_refused: u64,
    /// Answers served from the pre-rendered index (the rest went through hickory).
    pub fast_path: u64,
    /// Queries answered REFUSED because their source is neither a local pod nor the host.
    pub clients_refused: u64,
    /// Queries answered SERVFAIL because `dns.max_forwards_in_flight` were already waiting on
    /// an upstream.
    pub forwards_over_cap: u64,
    /// Zone apexes served.
    pub zones: Vec<String>,
    /// Records in the zones.
    pub records: usize,
    pub upstreams: Vec<SocketAddr>,
    pub cached: usize,
}

/// The sources the stub answers (issue: a remote node must not get answers or recursion from
/// us by routing our DNS address into its tunnel).
#[derive(Clone, Debug)]
pub enum Clients {
    /// Every source (a handler used without the daemon's config).
    Any,
    /// Only sources inside these networks; others get REFUSED.
    Only(Vec<IpNet>),
}

impl Clients {
    /// The local cluster's pods and this host, as the config places them:
    /// - `local.pod_cidrs`: pods reach the DNS address through the host's route into the
    ///   namespace with their own address (routed, not masqueraded);
    /// - `namespace.transit_cidr`: the host's route to the DNS address has no preferred source,
    ///   so the kernel picks the veth's own address, the transit CIDR's host end;
    /// - IPv6 link-local (`fe80::/10`): the host end of the veth when the DNS address is IPv6
    ///   (never forwarded, so no pod or tunnel source carries it);
    /// - the DNS address itself and loopback: clients inside sdnlinkd's namespace.
    ///
    /// Sources from the tunnel are remote pod addresses: WireGuard accepts a packet from a peer
    /// only when its source lies in that peer's allowed IPs, which the trust rules keep inside
    /// the remote's pod CIDRs, so none of the above can arrive through it.
    pub fn from_config(cfg: &crate::config::Config) -> Clients {
        let mut nets = cfg.local.pod_cidrs.clone();
        nets.push(IpNet::V4(cfg.namespace.transit_cidr));
        nets.push(IpNet::from(cfg.dns.address));
        for n in ["fe80::/10", "127.0.0.0/8", "::1/128"] {
            nets.push(n.parse().expect("literal network"));
        }
        Clients::Only(nets)
    }

    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        match self {
            Clients::Any => true,
            Clients::Only(nets) => {
                let ip = ip.to_canonical();
                nets.iter().any(|n| n.contains(&ip))
            }
        }
    }
}

pub(crate) struct Shared {
    pub(crate) clients: Clients,
    pub(crate) zones: ArcSwap<ZoneData>,
    pub(crate) upstreams: ArcSwap<Vec<SocketAddr>>,
    pub(crate) ourselves: SocketAddr,
    pub(crate) cache: Cache,
    pub(crate) stats: Stats,
    pub(crate) upstream_log: UpstreamLog,
    /// How long forwarded queries took, until an upstream answered or forwarding gave up.
    pub(crate) forward_times: AtomicHistogram,
}

/// The request handler; cheap to clone (shared state behind an `Arc`).
#[derive(Clone)]
pub struct DnsHandler {
    pub(crate) shared: Arc<Shared>,
}

/// What to do with one request, decided without I/O.
#[derive(Debug)]
pub enum Decision<'a> {
    /// Answer from our zones.
    Local {
        rcode: ResponseCode,
        answers: Cow<'a, [Record]>,
        soa: Option<&'a Record>,
    },
    /// Not ours: forward this question.
    Forward(Query),
    /// Answer with an error and nothing else.
    Error(ResponseCode),
    /// Send nothing (a response sent to us: answering could start a loop).
    Drop,
}

/// Decides how to answer a parsed request from the zone data.
pub fn decide<'a>(zones: &'a ZoneData, request: &MessageRequest) -> Decision<'a> {
    if request.metadata.message_type != MessageType::Query {
        return Decision::Drop;
    }
    if !question_pointers_survive_echo(request.queries.as_bytes()) {
        // hickory-server copies the question section into the response byte for byte. A
        // compression pointer (RFC 1035 4.1.4) into the request's header, or not to an earlier
        // name, is accepted by its parser but would point at other bytes in our response, a
        // malformed message. Such a question is malformed to begin with; no answer is safe.
        return Decision::Drop;
    }
    if request.metadata.op_code != OpCode::Query {
        return Decision::Error(ResponseCode::NotImp);
    }
    let [query] = request.queries.queries() else {
        // RFC 9619: a query carries exactly one question.
        return Decision::Error(ResponseCode::FormErr);
    };
    let class = query.query_class();
    if class != DNSClass::IN && class != DNSClass::ANY {
        return Decision::Forward(query.original().clone());
    }
    match zones.lookup(query.name(), query.query_type()) {
        Lookup::Answer(answers) => Decision::Local {
            rcode: ResponseCode::NoError,
            answers,
            soa: None,
        },
        Lookup::NoData(soa) => Decision::Local {
            rcode: ResponseCode::NoError,
            answers: Cow::Borrowed(&[]),
            soa: Some(soa),
        },
        Lookup::NxDomain(soa) => Decision::Local {
            rcode: ResponseCode::NXDomain,
            answers: Cow::Borrowed(&[]),
            soa: Some(soa),
        },
        // A zone of a cluster that has not listed: no negative answer can be trusted.
        Lookup::Unknown => Decision::Error(ResponseCode::ServFail),
        Lookup::NotOurs => Decision::Forward(query.original().clone()),
    }
}

/// Offset of the question section in every DNS message: after the 12-byte header.
const QUESTION_OFFSET: usize = 12;

/// Whether every compression pointer in the raw question section `raw` points backwards into
/// the question section itself (which sits at the same offset in our response, so the copy
/// stays valid). Rejects pointers into the header, forward or self pointers, and the reserved
/// label types 0x40/0x80 (RFC 6891 5).
fn question_pointers_survive_echo(raw: &[u8]) -> bool {
    let mut i = 0;
    while i < raw.len() {
        // One name: labels up to the root label or a pointer.
        loop {
            let Some(&len) = raw.get(i) else {
                return false;
            };
            match len & 0xC0 {
                0x00 if len == 0 => {
                    i += 1;
                    break;
                }
                0x00 => i += 1 + usize::from(len),
                0xC0 => {
                    let Some(&low) = raw.get(i + 1) else {
                        return false;
                    };
                    let target = usize::from(len & 0x3F) << 8 | usize::from(low);
                    if target < QUESTION_OFFSET || target >= QUESTION_OFFSET + i {
                        return false;
                    }
                    i += 2;
                    break;
                }
                _ => return false,
            }
        }
        // QTYPE and QCLASS.
        i += 4;
    }
    i == raw.len()
}

/// The OPT record of our response: present when the client sent one (RFC 6891 7), carrying the
/// client's buffer size (capped), which is the UDP size limit of the answer.
fn response_edns(request: &MessageRequest) -> Option<Edns> {
    request.edns.as_ref().map(|e| {
        let mut ours = Edns::new();
        ours.set_max_payload(e.max_payload().clamp(512, MAX_UDP_PAYLOAD));
        ours
    })
}

fn response_metadata(request: &MessageRequest, rcode: ResponseCode) -> Metadata {
    let mut md = Metadata::response_from_request(&request.metadata);
    md.response_code = rcode;
    // We forward on the client's behalf, so recursion is available to it.
    md.recursion_available = true;
    md
}

/// Encodes a response to `request` for `transport`: UDP limited to the response's EDNS size,
/// 512 bytes without EDNS (RFC 1035 4.2.1), TCP unlimited. The question is encoded as a name,
/// not copied, so the answers' names compress against it. The whole message is encoded first
/// and then cut at a record boundary ([`fit`]): hickory-server 0.26.3's encoder, given a size
/// limit, rolls back its record count on overflow but not its buffer, leaving half a record.
fn encode<'a>(
    request: &MessageRequest,
    metadata: Metadata,
    answers: impl Iterator<Item = &'a Record>,
    authorities: impl Iterator<Item = &'a Record>,
    additionals: impl Iterator<Item = &'a Record>,
    transport: Transport,
) -> Option<(Vec<u8>, ResponseCode)> {
    let rcode = metadata.response_code;
    let edns = response_edns(request);
    let limit = match (transport, &edns) {
        (Transport::Udp, Some(e)) => usize::from(e.max_payload()),
        (Transport::Udp, None) => 512,
        (Transport::Tcp, _) => usize::from(u16::MAX),
    };
    let mut message =
        hickory_proto::op::Message::new(metadata.id, metadata.message_type, metadata.op_code);
    message.metadata = metadata;
    message.queries = request
        .queries
        .queries()
        .iter()
        .map(|q| q.original().clone())
        .collect();
    message.answers = answers.cloned().collect();
    message.authorities = authorities.cloned().collect();
    message.additionals = additionals.cloned().collect();
    message.edns = edns;
    let mut out = match message.to_vec() {
        Ok(b) => b,
        Err(e) => {
            tracing::debug!(error = %e, "encoding a DNS response failed");
            return None;
        }
    };
    if out.len() > limit {
        out = fit(&out, limit)?;
    }
    Some((out, rcode))
}

/// An answer with only a response code (and the OPT record when the client sent one).
fn encode_error(
    request: &MessageRequest,
    rcode: ResponseCode,
    transport: Transport,
) -> Option<(Vec<u8>, ResponseCode)> {
    let mut md = Metadata::response_from_request(&request.metadata);
    md.response_code = rcode;
    let none = std::iter::empty();
    encode(request, md, none.clone(), none.clone(), none, transport)
}

/// Skips one encoded name at `i`: labels up to the root label or a compression pointer.
fn skip_name(m: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let len = *m.get(i)?;
        match len & 0xC0 {
            0x00 if len == 0 => return Some(i + 1),
            0x00 => i += 1 + usize::from(len),
            0xC0 => return (i + 2 <= m.len()).then_some(i + 2),
            _ => return None,
        }
    }
}

/// Skips one resource record at `i` (name, type, class, TTL, RDLENGTH, RDATA); returns its end
/// and its type.
fn skip_record(m: &[u8], i: usize) -> Option<(usize, u16)> {
    let fixed = skip_name(m, i)?;
    let f = m.get(fixed..fixed + 10)?;
    let rtype = u16::from_be_bytes([f[0], f[1]]);
    let end = fixed + 10 + usize::from(u16::from_be_bytes([f[8], f[9]]));
    (end <= m.len()).then_some((end, rtype))
}

/// RR type of the EDNS pseudo-record (RFC 6891 6.1.2).
const OPT: u16 = 41;

/// Cuts a well-formed encoded message that exceeds `limit` to one that fits: TC set (RFC 1035
/// 4.1.1), the question, as many whole answer records as fit, no authority or additional
/// records except the OPT record (RFC 6891 7: a truncated answer still carries it). Answers
/// keep their order, and every compression pointer in a kept record points backwards into
/// what is kept. `None` when the message does not parse (our own encoding always does).
pub(crate) fn fit(m: &[u8], limit: usize) -> Option<Vec<u8>> {
    let count = |at: usize| m.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let (qd, an, ns, ar) = (count(4)?, count(6)?, count(8)?, count(10)?);
    let mut i = QUESTION_OFFSET;
    for _ in 0..qd {
        i = skip_name(m, i)? + 4;
    }
    let question_end = i;
    let mut answer_ends = Vec::with_capacity(usize::from(an));
    for _ in 0..an {
        i = skip_record(m, i)?.0;
        answer_ends.push(i);
    }
    for _ in 0..ns {
        i = skip_record(m, i)?.0;
    }
    let mut opt: &[u8] = &[];
    for _ in 0..ar {
        let (end, rtype) = skip_record(m, i)?;
        if rtype == OPT {
            opt = &m[i..end];
        }
        i = end;
    }
    let room = limit.saturating_sub(opt.len());
    let end = answer_ends
        .iter()
        .rev()
        .copied()
        .find(|e| *e <= room)
        .unwrap_or(question_end);
    let kept = answer_ends.iter().take_while(|e| **e <= end).count();
    let mut out = Vec::with_capacity(end + opt.len());
    out.extend_from_slice(&m[..end]);
    out[2] |= 0x02;
    let kept = u16::try_from(kept).ok()?;
    out[6..8].copy_from_slice(&kept.to_be_bytes());
    out[8..10].copy_from_slice(&0u16.to_be_bytes());
    out[10..12].copy_from_slice(&u16::from(!opt.is_empty()).to_be_bytes());
    out.extend_from_slice(opt);
    Some(out)
}

/// Answers raw query bytes from the zones only (no forwarding), encoded for a UDP client
/// limited to the size its EDNS advertises (512 without), through the rendered fast path when
/// it applies, as the server does. The fuzzing entry point.
pub fn answer_local_bytes(zones: &ZoneData, raw: &[u8]) -> Option<Vec<u8>> {
    if let Some(b) = super::wire::answer(&zones.wire, raw, Transport::Udp) {
        return Some(b);
    }
    let src: SocketAddr = ([127, 0, 0, 1], 53).into();
    let request = Request::from_bytes(raw.to_vec(), src, Protocol::Udp).ok()?;
    let error = match decide(zones, &request) {
        Decision::Drop => return None,
        Decision::Error(rc) => rc,
        // Forwarding needs I/O: this entry point answers as a stub without upstreams would.
        Decision::Forward(_) => ResponseCode::Refused,
        Decision::Local {
            rcode,
            answers,
            soa,
        } => {
            let mut md = response_metadata(&request, rcode);
            md.authoritative = true;
            return encode(
                &request,
                md,
                answers.iter(),
                soa.into_iter(),
                std::iter::empty(),
                Transport::Udp,
            )
            .map(|(b, _)| b);
        }
    };
    encode_error(&request, error, Transport::Udp).map(|(b, _)| b)
}

/// The question to ask next when a local answer is a lone CNAME for an address query.
fn cname_to_chase(request: &MessageRequest, answers: &[Record]) -> Option<Query> {
    let [q] = request.queries.queries() else {
        return None;
    };
    let qtype = q.query_type();
    if !matches!(qtype, RecordType::A | RecordType::AAAA) {
        return None;
    }
    match answers {
        [Record {
            data: RData::CNAME(target),
            ..
        }] => Some(Query::query(target.0.clone(), qtype)),
        _ => None,
    }
}

/// The FORMERR answer to a message whose header decodes but whose body does not (what
/// hickory-server sent); nothing for a runt, or for a response (no reflection).
fn formerr(raw: &[u8]) -> Option<Vec<u8>> {
    let header = Header::read(&mut BinDecoder::new(raw)).ok()?;
    if header.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut m = hickory_proto::op::Message::new(
        header.metadata.id,
        MessageType::Response,
        header.metadata.op_code,
    );
    m.metadata = Metadata::response_from_request(&header.metadata);
    m.metadata.response_code = ResponseCode::FormErr;
    m.to_vec().ok()
}

/// One request's work that needs I/O (forwarding, or chasing an ExternalName's target): the
/// server runs it off its receive loop.
pub(crate) struct Later {
    request: Request,
    transport: Transport,
    work: Work,
}

enum Work {
    Forward(Query),
    Chase {
        md: Metadata,
        answers: Vec<Record>,
        target: Query,
    },
}

/// The outcome of the synchronous part of answering one message.
pub(crate) enum Step {
    /// Send these bytes.
    Reply(Vec<u8>),
    /// Send nothing.
    Silent,
    /// Finish with [`DnsHandler::finish`].
    Later(Box<Later>),
}

impl DnsHandler {
    pub(crate) fn new(shared: Arc<Shared>) -> DnsHandler {
        DnsHandler { shared }
    }

    /// A handler serving `zones` to every client, forwarding to `upstreams`; `ourselves` is
    /// the server's own listening address (never forwarded to); `cache_size` answers are
    /// cached.
    pub fn standalone(
        zones: Arc<ZoneData>,
        upstreams: Vec<SocketAddr>,
        ourselves: SocketAddr,
        cache_size: usize,
    ) -> DnsHandler {
        DnsHandler::with_clients(zones, upstreams, ourselves, cache_size, Clients::Any)
    }

    /// The daemon's handler: the config's upstreams, cache and clients ([`Clients::from_config`]).
    pub fn from_config(
        cfg: &crate::config::Config,
        zones: Arc<ZoneData>,
        ourselves: SocketAddr,
    ) -> DnsHandler {
        DnsHandler::with_clients(
            zones,
            cfg.dns.upstreams.clone(),
            ourselves,
            cfg.dns.cache_size,
            Clients::from_config(cfg),
        )
    }

    fn with_clients(
        zones: Arc<ZoneData>,
        upstreams: Vec<SocketAddr>,
        ourselves: SocketAddr,
        cache_size: usize,
        clients: Clients,
    ) -> DnsHandler {
        DnsHandler::new(Arc::new(Shared {
            clients,
            zones: ArcSwap::new(zones),
            upstreams: ArcSwap::from_pointee(upstreams),
            ourselves,
            cache: Cache::new(cache_size),
            stats: Stats::default(),
            upstream_log: UpstreamLog::default(),
            forward_times: AtomicHistogram::new(&FORWARD_BUCKETS),
        }))
    }

    /// Replaces the zone data; lookups in flight finish on the old value.
    pub fn update(&self, zones: Arc<ZoneData>) {
        self.shared.zones.store(zones);
    }

    /// Replaces the upstream resolvers (on reload).
    pub fn set_upstreams(&self, upstreams: Vec<SocketAddr>) {
        self.shared.upstreams.store(Arc::new(upstreams));
    }

    /// How long forwarded queries took (`sdnlink_dns_forward_duration_seconds`).
    pub fn forward_times(&self) -> HistogramSnapshot {
        self.shared.forward_times.snapshot()
    }

    /// Current counters.
    pub fn status(&self) -> DnsStatus {
        let s = &self.shared.stats;
        let zones = self.shared.zones.load();
        DnsStatus {
            queries: s.queries.load(Ordering::Relaxed),
            answers: RCODE_NAMES
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let c: u64 = s.rcodes.iter().map(|o| o[i].load(Ordering::Relaxed)).sum();
                    (n.to_string(), c)
                })
                .filter(|(_, c)| *c > 0)
                .collect(),
            answers_by_zone: ORIGIN_NAMES
                .iter()
                .zip(s.rcodes.iter())
                .map(|(zone, codes)| {
                    let by_code = RCODE_NAMES
                        .iter()
                        .zip(codes.iter())
                        .map(|(n, c)| (n.to_string(), c.load(Ordering::Relaxed)))
                        .filter(|(_, c)| *c > 0)
                        .collect();
                    (zone.to_string(), by_code)
                })
                .collect(),
            malformed: s.malformed.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            forwarded: s.forwarded.load(Ordering::Relaxed),
            cache_hits: s.cache_hits.load(Ordering::Relaxed),
            upstream_errors: s.upstream_errors.load(Ordering::Relaxed),
            loops_refused: s.loops_refused.load(Ordering::Relaxed),
            forwards_over_cap: s.over_cap.load(Ordering::Relaxed),
            clients_refused: s.clients_refused.load(Ordering::Relaxed),
            fast_path: s.fast.load(Ordering::Relaxed),
            zones: zones.zone_names(),
            records: zones.record_count(),
            upstreams: self.shared.upstreams.load().as_ref().clone(),
            cached: self.shared.cache.len(),
        }
    }

    /// The answer hickory's path gives, never the rendered one (to compare the two in tests).
    pub async fn answer_without_fast_path(
        &self,
        raw: &[u8],
        src: SocketAddr,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        match self.step_slow(raw, src, transport) {
            Step::Reply(b) => Some(b),
            Step::Silent => None,
            Step::Later(l) => self.finish(l).await,
        }
    }

    /// The whole answer to one raw message from `src` (`None`: send nothing), forwarding when
    /// the name is not ours.
    pub async fn answer(
        &self,
        raw: &[u8],
        src: SocketAddr,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        match self.step(raw, src, transport) {
            Step::Reply(b) => Some(b),
            Step::Silent => None,
            Step::Later(l) => self.finish(l).await,
        }
    }

    fn reply(&self, origin: Origin, encoded: Option<(Vec<u8>, ResponseCode)>) -> Step {
        match encoded {
            Some((b, rc)) => {
                self.shared.stats.count_rcode(origin, rc);
                Step::Reply(b)
            }
            None => {
                self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
                Step::Silent
            }
        }
    }

    /// Everything that needs no I/O: parsing, our zones, errors.
    /// The current zones, for a burst of [`DnsHandler::fast`] calls.
    pub(crate) fn zones(&self) -> arc_swap::Guard<Arc<ZoneData>> {
        self.shared.zones.load()
    }

    /// Answers from the rendered index into `out`; false when the query needs
    /// [`DnsHandler::step`]. Not counted: the caller adds its burst with
    /// [`DnsHandler::count_fast`].
    pub(crate) fn fast(
        &self,
        zones: &ZoneData,
        raw: &[u8],
        src: SocketAddr,
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> bool {
        self.shared.clients.allows(src.ip())
            && super::wire::answer_into(&zones.wire, raw, transport, out)
    }

    /// Counts `n` answers of [`DnsHandler::fast`] (NOERROR all).
    pub(crate) fn count_fast(&self, n: u64) {
        if n == 0 {
            return;
        }
        let stats = &self.shared.stats;
        stats.queries.fetch_add(n, Ordering::Relaxed);
        stats.fast.fetch_add(n, Ordering::Relaxed);
        stats.rcodes[Origin::Local as usize][0].fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn step(&self, raw: &[u8], src: SocketAddr, transport: Transport) -> Step {
        if self.shared.clients.allows(src.ip()) {
            if let Some(b) = super::wire::answer(&self.shared.zones.load().wire, raw, transport) {
                let stats = &self.shared.stats;
                stats.queries.fetch_add(1, Ordering::Relaxed);
                stats.fast.fetch_add(1, Ordering::Relaxed);
                stats.count_rcode(Origin::Local, ResponseCode::NoError);
                return Step::Reply(b);
            }
        }
        self.step_slow(raw, src, transport)
    }

    /// [`DnsHandler::step`] through hickory only.
    fn step_slow(&self, raw: &[u8], src: SocketAddr, transport: Transport) -> Step {
        let stats = &self.shared.stats;
        let allowed = self.shared.clients.allows(src.ip());
        let request = match Request::from_bytes(raw.to_vec(), src, transport.protocol()) {
            Ok(r) => r,
            Err(_) if !allowed => {
                stats.malformed.fetch_add(1, Ordering::Relaxed);
                return Step::Silent;
            }
            Err(_) => {
                stats.malformed.fetch_add(1, Ordering::Relaxed);
                return match formerr(raw) {
                    Some(b) => Step::Reply(b),
                    None => Step::Silent,
                };
            }
        };
        stats.queries.fetch_add(1, Ordering::Relaxed);
        if !allowed {
            if request.metadata.message_type != MessageType::Query {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                return Step::Silent;
            }
            stats.clients_refused.fetch_add(1, Ordering::Relaxed);
            return self.reply(
                Origin::Local,
                encode_error(&request, ResponseCode::Refused, transport),
            );
        }
        let zones = self.shared.zones.load();
        match decide(&zones, &request) {
            Decision::Drop => {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                Step::Silent
            }
            Decision::Error(rc) => self.reply(Origin::Local, encode_error(&request, rc, transport)),
            Decision::Local {
                rcode,
                answers,
                soa,
            } => {
                let mut md = response_metadata(&request, rcode);
                md.authoritative = true;
                match cname_to_chase(&request, &answers) {
                    None => self.reply(
                        Origin::Local,
                        encode(
                            &request,
                            md,
                            answers.iter(),
                            soa.into_iter(),
                            std::iter::empty(),
                            transport,
                        ),
                    ),
                    Some(target) => {
                        let answers = answers.into_owned();
                        drop(zones);
                        Step::Later(Box::new(Later {
                            request,
                            transport,
                            work: Work::Chase {
                                md,
                                answers,
                                target,
                            },
                        }))
                    }
                }
            }
            Decision::Forward(query) => {
                drop(zones);
                Step::Later(Box::new(Later {
                    request,
                    transport,
                    work: Work::Forward(query),
                }))
            }
        }
    }

    /// SERVFAIL for work that found every forwarding slot taken.
    pub(crate) fn overloaded(&self, later: Box<Later>) -> Option<Vec<u8>> {
        self.shared.stats.over_cap.fetch_add(1, Ordering::Relaxed);
        let step = self.reply(
            Origin::Forwarded,
            encode_error(&later.request, ResponseCode::ServFail, later.transport),
        );
        match step {
            Step::Reply(b) => Some(b),
            _ => None,
        }
    }

    /// The I/O part of answering: forwarding or chasing, then encoding.
    pub(crate) async fn finish(&self, later: Box<Later>) -> Option<Vec<u8>> {
        let Later {
            request,
            transport,
            work,
        } = *later;
        let step = match work {
            Work::Chase {
                md,
                mut answers,
                target,
            } => {
                answers.extend(self.chase(target).await);
                let none = std::iter::empty();
                self.reply(
                    Origin::Local,
                    encode(&request, md, answers.iter(), none.clone(), none, transport),
                )
            }
            Work::Forward(query) => {
                match self
                    .forwarded(&query, request.metadata.recursion_desired)
                    .await
                {
                    Ok(msg) => {
                        let mut md = response_metadata(&request, msg.metadata.response_code);
                        md.recursion_available = msg.metadata.recursion_available;
                        self.reply(
                            Origin::Forwarded,
                            encode(
                                &request,
                                md,
                                msg.answers.iter(),
                                msg.authorities.iter(),
                                msg.additionals.iter(),
                                transport,
                            ),
                        )
                    }
                    Err(e) => {
                        let rc = if matches!(e, ForwardError::Loop) {
                            self.shared
                                .stats
                                .loops_refused
                                .fetch_add(1, Ordering::Relaxed);
                            ResponseCode::Refused
                        } else {
                            self.shared
                                .stats
                                .upstream_errors
                                .fetch_add(1, Ordering::Relaxed);
                            ResponseCode::ServFail
                        };
                        self.reply(Origin::Forwarded, encode_error(&request, rc, transport))
                    }
                }
            }
        };
        match step {
            Step::Reply(b) => Some(b),
            _ => None,
        }
    }

    async fn forwarded(
        &self,
        query: &Query,
        rd: bool,
    ) -> Result<hickory_proto::op::Message, ForwardError> {
        let key = (
            LowerName::new(&query.name),
            query.query_type,
            query.query_class,
        );
        let now = Instant::now();
        if let Some(hit) = self.shared.cache.get(&key, now) {
            self.shared.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit);
        }
        let upstreams = self.shared.upstreams.load();
        let usable = forward::usable_upstreams(&upstreams, self.shared.ourselves)?;
        self.shared.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        let msg = forward::forward(&usable, query, rd, &self.shared.upstream_log).await;
        let done = Instant::now();
        self.shared.forward_times.observe(done.duration_since(now));
        let msg = msg?;
        self.shared.cache.put(key, &msg, done);
        Ok(msg)
    }

    /// The records of an ExternalName's target, one step: from our zones, or from the
    /// upstreams. Stub resolvers (glibc, musl) do not follow a bare CNAME themselves, and
    /// CoreDNS answers ExternalName the same way; failures leave the CNAME alone.
    async fn chase(&self, target: Query) -> Vec<Record> {
        let local = {
            let zones = self.shared.zones.load();
            match zones.lookup(&LowerName::new(&target.name), target.query_type) {
                Lookup::Answer(r) => Some(
                    r.iter()
                        .filter(|r| r.record_type() == target.query_type)
                        .cloned()
                        .collect(),
                ),
                Lookup::NoData(_) | Lookup::NxDomain(_) | Lookup::Unknown => Some(Vec::new()),
                Lookup::NotOurs => None,
            }
        };
        if let Some(records) = local {
            return records;
        }
        match self.forwarded(&target, true).await {
            Ok(msg) if msg.metadata.response_code == ResponseCode::NoError => msg.answers,
            Ok(_) => Vec::new(),
            Err(e) => {
                tracing::debug!(error = %e, name = %target.name, "ExternalName target not resolved");
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::question_pointers_survive_echo as ok;

    /// `a.b.` IN A, uncompressed: labels at question offsets 0 ("a") and 2 ("b").
    const PLAIN: &[u8] = &[1, b'a', 1, b'b', 0, 0, 1, 0, 1];

    #[test]
    fn plain_and_backward_pointers_survive_the_echo() {
        assert!(ok(PLAIN));
        // A second question `c.` + pointer to "b." at message offset 12 + 2.
        let mut two = PLAIN.to_vec();
        two.extend_from_slice(&[1, b'c', 0xC0, 14, 0, 1, 0, 1]);
        assert!(ok(&two));
        assert!(ok(&[]));
    }

    #[test]
    fn pointers_into_the_header_forward_or_to_themselves_do_not() {
        // The fuzzer's find: a pointer to offset 2, inside the header.
        assert!(!ok(&[3, b'_', b'p', b'g', 0xC0, 2, 0, 1, 0, 1]));
        assert!(!ok(&[0xC0, 12, 0, 1, 0, 1]), "points at itself");
        assert!(!ok(&[1, b'a', 0xC0, 20, 0, 1, 0, 1]), "points forward");
        assert!(!ok(&[0x41, 0, 0, 1, 0, 1]), "reserved label type");
        assert!(!ok(&[1, b'a', 0, 0, 1, 0]), "truncated class");
        assert!(!ok(&[5, b'a']), "label runs past the end");
    }
}
