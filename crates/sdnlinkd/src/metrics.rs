//! Prometheus metrics: with `[metrics] listen` set, `GET /metrics` on that address (in the host
//! namespace) answers in the Prometheus text format.
//!
//! Most values are read at scrape time from the status board, the same value `sdnlinkd status`
//! prints, so a scrape never waits on a sync and the loop does no metrics work. What the status
//! does not keep (how long each sync took, how long forwarded DNS queries took) is counted in
//! lock-free [`AtomicHistogram`]s by the loop and the DNS stub.

use crate::daemon::board::{Board, Status};
use crate::model::SyncState;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::convert::Infallible;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A histogram of durations with fixed bucket bounds (seconds), counted with atomics so that
/// hot paths (the DNS stub's workers) never take a lock to observe.
#[derive(Debug)]
pub struct AtomicHistogram {
    bounds: &'static [f64],
    /// One per bound, plus one past the last.
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

/// What an [`AtomicHistogram`] counted: `(upper bound, count in that bucket)` pairs, the last
/// with bound `+Inf`, as prometheus-client's encoder takes them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSnapshot {
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

impl AtomicHistogram {
    /// A histogram with the ascending upper bounds `bounds` (seconds).
    pub fn new(bounds: &'static [f64]) -> AtomicHistogram {
        AtomicHistogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self.bounds.partition_point(|le| *le < secs);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        HistogramSnapshot {
            count: buckets.iter().map(|(_, n)| n).sum(),
            sum: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            buckets,
        }
    }
}

/// Bounds of `sdnlink_sync_duration_seconds`: 1 ms to about 16 s, doubling (an idle
/// incremental sync takes well under a millisecond, a full one at 10k Services seconds).
const SYNC_BUCKETS: [f64; 15] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192, 16.384,
];

/// What the loop observes for the metrics; cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    full: Arc<AtomicHistogram>,
    incremental: Arc<AtomicHistogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            full: Arc::new(AtomicHistogram::new(&SYNC_BUCKETS)),
            incremental: Arc::new(AtomicHistogram::new(&SYNC_BUCKETS)),
        }
    }
}

impl Metrics {
    /// Counts one sync of `d`.
    pub fn observe_sync(&self, full: bool, d: Duration) {
        if full {
            self.full.observe(d)
        } else {
            self.incremental.observe(d)
        }
    }
}

/// The values of one scrape, owned (prometheus-client encodes registered collectors).
#[derive(Debug)]
struct Scrape {
    syncs: [(&'static str, HistogramSnapshot); 2],
    status: Option<Status>,
    forward: Option<HistogramSnapshot>,
}

fn state_name(s: &SyncState) -> &'static str {
    match s {
        SyncState::Unknown { .. } => "unknown",
        SyncState::Warm { .. } => "warm",
        SyncState::Current => "current",
        SyncState::Degraded { .. } => "degraded",
        SyncState::Static => "static",
    }
}

const STATES: [&str; 5] = ["unknown", "warm", "current", "degraded", "static"];

/// Encodes one metric family: `each` writes its samples through the family encoder.
fn family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    each: impl FnOnce(&mut prometheus_client::encoding::MetricEncoder) -> fmt::Result,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    each(&mut m)
}

fn histogram(
    m: &mut prometheus_client::encoding::MetricEncoder,
    h: &HistogramSnapshot,
) -> fmt::Result {
    m.encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        family(
            &mut enc,
            "sdnlink_sync_duration_seconds",
            "How long each sync of the node took, by kind (full resync or incremental).",
            MetricType::Histogram,
            |m| {
                for (kind, h) in &self.syncs {
                    histogram(&mut m.encode_family(&[("kind", *kind)])?, h)?;
                }
                Ok(())
            },
        )?;
        if let Some(h) = &self.forward {
            family(
                &mut enc,
                "sdnlink_dns_forward_duration_seconds",
                "How long forwarded DNS queries took, until an upstream answered or forwarding gave up.",
                MetricType::Histogram,
                |m| histogram(m, h),
            )?;
        }
        let Some(st) = &self.status else {
            return Ok(());
        };
        family(
            &mut enc,
            "sdnlink_sync_errors",
            "Syncs that failed (one or more objects not applied).",
            MetricType::Counter,
            |m| m.encode_counter::<NoLabelSet, u64, u64>(&st.daemon.syncs.failed, None),
        )?;
        family(
            &mut enc,
            "sdnlink_cluster_objects",
            "Objects held per cluster and kind (before trust filtering of their contents).",
            MetricType::Gauge,
            |m| {
                for c in &st.clusters {
                    let o = &c.status.objects;
                    for (kind, n) in [
                        ("services", o.services),
                        ("endpointslices", o.endpoint_slices),
                        ("nodes", o.nodes),
                        ("hostsubnets", o.host_subnets),
                    ] {
                        let labels = [("cluster", c.status.name.as_str()), ("kind", kind)];
                        m.encode_family(&labels)?
                            .encode_gauge(&i64::try_from(n).unwrap_or(i64::MAX))?;
                    }
                }
                Ok(())
            },
        )?;
        family(
            &mut enc,
            "sdnlink_cluster_state",
            "1 for the state each cluster is in, 0 for the others.",
            MetricType::Gauge,
            |m| {
                for c in &st.clusters {
                    let now = state_name(&c.status.state);
                    for s in STATES {
                        let labels = [("cluster", c.status.name.as_str()), ("state", s)];
                        m.encode_family(&labels)?
                            .encode_gauge(&i64::from(s == now))?;
                    }
                }
                Ok(())
            },
        )?;
        family(
            &mut enc,
            "sdnlink_skipped_objects",
            "Objects and pieces of a remote's data skipped anew since the cluster's store started, by reason.",
            MetricType::Counter,
            |m| {
                for c in &st.clusters {
                    for (reason, n) in &c.status.skipped_total {
                        let labels = [("cluster", c.status.name.as_str()), ("reason", reason)];
                        m.encode_family(&labels)?
                            .encode_counter::<NoLabelSet, u64, u64>(n, None)?;
                    }
                }
                Ok(())
            },
        )?;
        if let Some(t) = &st.tunnel {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let who = |p: &crate::tunnel::device::PeerStatus| {
                (
                    p.cluster.clone().unwrap_or_default(),
                    p.node.clone().unwrap_or_else(|| p.public_key.to_string()),
                )
            };
            family(
                &mut enc,
                "sdnlink_peer_last_handshake_seconds",
                "Unix time of each WireGuard peer's latest handshake; 0 when it never had one.",
                MetricType::Gauge,
                |m| {
                    for p in &t.peers {
                        let (cluster, node) = who(p);
                        let at = p
                            .latest_handshake_age_secs
                            .map(|age| now.saturating_sub(age))
                            .unwrap_or(0);
                        let labels = [("cluster", cluster.as_str()), ("node", node.as_str())];
                        m.encode_family(&labels)?
                            .encode_gauge(&i64::try_from(at).unwrap_or(i64::MAX))?;
                    }
                    Ok(())
                },
            )?;
            family(
                &mut enc,
                "sdnlink_peer_bytes",
                "Bytes through each WireGuard peer, by direction (rx received, tx sent).",
                MetricType::Counter,
                |m| {
                    for p in &t.peers {
                        let (cluster, node) = who(p);
                        for (dir, n) in [("rx", p.rx_bytes), ("tx", p.tx_bytes)] {
                            let labels = [
                                ("cluster", cluster.as_str()),
                                ("node", node.as_str()),
                                ("direction", dir),
                            ];
                            m.encode_family(&labels)?
                                .encode_counter::<NoLabelSet, u64, u64>(&n, None)?;
                        }
                    }
                    Ok(())
                },
            )?;
        }
        family(
            &mut enc,
            "sdnlink_proxy_services",
            "Remote Services the proxy serves (VIP and port pairs of the desired state).",
            MetricType::Gauge,
            |m| m.encode_gauge(&i64::try_from(st.daemon.proxy.services).unwrap_or(i64::MAX)),
        )?;
        if let Some(d) = &st.dns {
            family(
                &mut enc,
                "sdnlink_dns_queries",
                "DNS answers by zone (local: our cluster and reverse zones and refusals; forwarded: every other name) and response code.",
                MetricType::Counter,
                |m| {
                    // Every pair, zeros too: a node whose stub has not answered yet still
                    // shows the series, and rate() sees them start.
                    for zone in crate::dns::ORIGIN_NAMES {
                        for rcode in crate::dns::RCODE_NAMES {
                            let n = d
                                .answers_by_zone
                                .get(zone)
                                .and_then(|c| c.get(rcode))
                                .copied()
                                .unwrap_or(0);
                            let labels = [("zone", zone), ("rcode", rcode)];
                            m.encode_family(&labels)?
                                .encode_counter::<NoLabelSet, u64, u64>(&n, None)?;
                        }
                    }
                    Ok(())
                },
            )?;
        }
        Ok(())
    }
}

/// The text exposition of `metrics` and the board's `status` (absent before the first sync)
/// and DNS forwarding times.
pub fn render(
    metrics: &Metrics,
    status: Option<Status>,
    forward: Option<HistogramSnapshot>,
) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape {
        syncs: [
            ("full", metrics.full.snapshot()),
            ("incremental", metrics.incremental.snapshot()),
        ],
        status,
        forward,
    }));
    let mut out = String::new();
    // Writing into a String cannot fail; an encoder error would be a bug in a collector.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::error!("encoding metrics: {e}");
    }
    out
}

/// The content type of the Prometheus text format, version 0.0.4.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Metrics, board: Board) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let (metrics, board) = (metrics.clone(), board.clone());
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (metrics, board) = (metrics.clone(), board.clone());
                        async move { Ok::<_, Infallible>(answer(&req, &metrics, &board).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn answer<B>(req: &Request<B>, metrics: &Metrics, board: &Board) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    if req.uri().path() != "/metrics" {
        *r.status_mut() = StatusCode::NOT_FOUND;
        *r.body_mut() = Full::new(Bytes::from_static(b"only /metrics is served\n"));
        return r;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        return r;
    }
    let forward = board.dns_handler().map(|h| h.forward_times());
    let text = render(metrics, board.status().await, forward);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(CONTENT_TYPE),
    );
    *r.body_mut() = Full::new(Bytes::from(text));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_hold_each_duration_once_and_sum_them() {
        static B: [f64; 3] = [0.001, 0.01, 0.1];
        let h = AtomicHistogram::new(&B);
        for ms in [0, 1, 5, 50, 500] {
            h.observe(Duration::from_millis(ms));
        }
        let s = h.snapshot();
        assert_eq!(
            s.buckets,
            vec![(0.001, 2), (0.01, 1), (0.1, 1), (f64::INFINITY, 1)]
        );
        assert_eq!(s.count, 5);
        assert!((s.sum - 0.556).abs() < 1e-9, "{}", s.sum);
    }

    #[test]
    fn without_a_status_only_the_sync_histograms_are_exposed() {
        let m = Metrics::default();
        m.observe_sync(true, Duration::from_millis(3));
        m.observe_sync(false, Duration::from_micros(200));
        let text = render(&m, None, None);
        assert!(
            text.contains("# TYPE sdnlink_sync_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("sdnlink_sync_duration_seconds_count{kind=\"full\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sdnlink_sync_duration_seconds_bucket{le=\"0.004\",kind=\"full\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "sdnlink_sync_duration_seconds_bucket{le=\"0.001\",kind=\"incremental\"} 1"
            ),
            "{text}"
        );
        assert!(!text.contains("sdnlink_cluster_state"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
