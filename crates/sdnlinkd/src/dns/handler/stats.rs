//! The stub's counters, by response code and by where the answer came from, and their
//! snapshot for `sdnlinkd status`.

use super::DnsHandler;
use crate::metrics::HistogramSnapshot;
use hickory_proto::op::ResponseCode;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of the stub, shown by `sdnlinkd status`.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(super) queries: AtomicU64,
    /// Responses by [`Origin`] and response code ([`RCODE_NAMES`]).
    pub(super) rcodes: [[AtomicU64; 7]; 2],
    pub(super) forwarded: AtomicU64,
    pub(super) cache_hits: AtomicU64,
    pub(super) upstream_errors: AtomicU64,
    pub(super) loops_refused: AtomicU64,
    pub(super) malformed: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) over_cap: AtomicU64,
    pub(super) clients_refused: AtomicU64,
    pub(super) fast: AtomicU64,
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
    pub(super) fn count_rcode(&self, origin: Origin, rc: ResponseCode) {
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

impl DnsHandler {
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
}
