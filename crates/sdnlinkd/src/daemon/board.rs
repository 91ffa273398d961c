//! The status board: what `sdnlinkd status` answers, served without the reconcile task.
//!
//! The task publishes its own part (phase, last sync, node, proxy, ...) after every sync and
//! reload; the control socket assembles the answer from that and from live reads that never
//! touch the task: the clusters' stores, the tunnel device (through a handle with its own
//! namespace thread), the DNS counters and the publisher. So `status` answers at once also
//! while a multi-second sync runs or an API server hangs.

use super::scheduler::SyncCounts;
use super::LastSync;
use crate::clusters::publish::{PublishStatus, PublishView};
use crate::clusters::{ClusterStatus, ClusterView};
use crate::dns::{DnsHandler, DnsStatus};
use crate::model::SyncState;
use crate::node::NodeStatus;
use crate::proxy::SyncReport;
use crate::tunnel::{TunnelProbe, TunnelStatus};
use arc_swap::{ArcSwap, ArcSwapOption};
use serde::Serialize;
use std::net::IpAddr;
use std::sync::Arc;

/// The daemon's phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Before `READY=1`.
    Starting,
    /// Every cluster is current and nothing failed.
    Ready,
    /// Running, with the problems listed in `problems`.
    Degraded,
}

/// The local cluster and node.
#[derive(Clone, Debug, Serialize)]
pub struct LocalInfo {
    pub cluster: String,
    pub node: String,
}

/// The MSS clamp part of the status.
#[derive(Clone, Debug, Serialize)]
pub struct MssStatus {
    pub table: &'static str,
    pub interface: String,
    pub ipv4: u32,
    pub ipv6: u32,
    pub error: Option<String>,
}

/// The proxy part of the status.
#[derive(Clone, Debug, Serialize)]
pub struct ProxyStatus {
    pub backend: &'static str,
    /// Virtual services desired from the clusters' snapshots.
    pub services: usize,
    /// Of those, or in addition, kept as the kernel has them for clusters not listed yet.
    pub held_clusters: Vec<String>,
    pub draining_vips: Vec<IpAddr>,
    pub last_sync: Option<SyncReport>,
}

/// What the reconcile task publishes after each step.
#[derive(Clone, Debug, Serialize)]
pub struct LoopPart {
    /// `READY=1` was sent.
    pub ready: bool,
    /// The `STATUS=` line.
    pub status: String,
    pub config: String,
    pub local: LocalInfo,
    pub namespace: String,
    pub node: NodeStatus,
    pub mss_clamp: MssStatus,
    pub proxy: ProxyStatus,
    pub last_sync: LastSync,
    pub syncs: SyncCounts,
    pub reload_error: Option<String>,
    /// Problems the task knows of (failed sync, MSS clamp, refused reload), for `problems`.
    pub problems: Vec<String>,
}

/// One cluster row: its status plus what its snapshot holds.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterRow {
    #[serde(flatten)]
    pub status: ClusterStatus,
    pub services: usize,
    pub endpoints: usize,
}

/// The whole answer of `sdnlinkd status --json`.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub phase: Phase,
    /// Why the phase is not `ready` (one line each).
    pub problems: Vec<String>,
    #[serde(flatten)]
    pub daemon: LoopPart,
    pub clusters: Vec<ClusterRow>,
    pub tunnel: Option<TunnelStatus>,
    pub dns: Option<DnsStatus>,
    pub publish: Option<PublishStatus>,
}

/// The shared board. Cheap to clone.
#[derive(Clone)]
pub struct Board {
    part: Arc<ArcSwapOption<LoopPart>>,
    clusters: Arc<ArcSwap<ClusterView>>,
    /// Service and endpoint counts per cluster of the snapshots of the last sync.
    counts: Arc<ArcSwap<Vec<(String, usize, usize)>>>,
    tunnel: Arc<ArcSwapOption<TunnelProbe>>,
    dns: Arc<ArcSwapOption<DnsHandler>>,
    publish: Arc<ArcSwapOption<PublishView>>,
}

impl Board {
    pub fn new(clusters: ClusterView) -> Board {
        Board {
            part: Arc::new(ArcSwapOption::empty()),
            clusters: Arc::new(ArcSwap::from_pointee(clusters)),
            counts: Arc::new(ArcSwap::from_pointee(Vec::new())),
            tunnel: Arc::new(ArcSwapOption::empty()),
            dns: Arc::new(ArcSwapOption::empty()),
            publish: Arc::new(ArcSwapOption::empty()),
        }
    }

    pub fn set_part(&self, part: LoopPart) {
        self.part.store(Some(Arc::new(part)));
    }

    pub fn set_counts(&self, counts: Vec<(String, usize, usize)>) {
        self.counts.store(Arc::new(counts));
    }

    pub fn set_clusters(&self, view: ClusterView) {
        self.clusters.store(Arc::new(view));
    }

    pub fn set_tunnel(&self, probe: TunnelProbe) {
        self.tunnel.store(Some(Arc::new(probe)));
    }

    pub fn set_dns(&self, dns: Option<DnsHandler>) {
        self.dns.store(dns.map(Arc::new));
    }

    /// The DNS stub's handler, when one runs.
    pub fn dns_handler(&self) -> Option<Arc<DnsHandler>> {
        self.dns.load_full()
    }

    pub fn set_publish(&self, view: Option<PublishView>) {
        self.publish.store(view.map(Arc::new));
    }

    /// The status now. `None` before the task published anything.
    pub async fn status(&self) -> Option<Status> {
        let part = self.part.load_full()?;
        let tunnel = match self.tunnel.load_full() {
            Some(p) => Some(p.status().await),
            None => None,
        };
        let counts = self.counts.load();
        let clusters: Vec<ClusterRow> = self
            .clusters
            .load()
            .status()
            .into_iter()
            .map(|status| {
                let (services, endpoints) = counts
                    .iter()
                    .find(|(n, _, _)| *n == status.name)
                    .map(|(_, s, e)| (*s, *e))
                    .unwrap_or((0, 0));
                ClusterRow {
                    status,
                    services,
                    endpoints,
                }
            })
            .collect();
        let publish = self.publish.load_full().map(|v| v.get());
        let mut problems = part.problems.clone();
        problems.extend(cluster_problems(clusters.iter().map(|c| &c.status)));
        if let Some(p) = &publish {
            if let Some(e) = &p.error {
                problems.push(format!("publishing this node's annotations: {e}"));
            }
        }
        let phase = if !part.ready {
            Phase::Starting
        } else if problems.is_empty() {
            Phase::Ready
        } else {
            Phase::Degraded
        };
        Some(Status {
            version: env!("CARGO_PKG_VERSION"),
            phase,
            problems,
            daemon: (*part).clone(),
            clusters,
            tunnel,
            dns: self.dns.load_full().map(|d| d.status()),
            publish,
        })
    }
}

/// One line per cluster that is not current (static clusters have nothing to be current about).
pub fn cluster_problems<'a>(st: impl Iterator<Item = &'a ClusterStatus>) -> Vec<String> {
    st.filter_map(|c| match &c.state {
        SyncState::Current | SyncState::Static => None,
        SyncState::Unknown { reason } => Some(format!(
            "{}: not listed yet, nothing known; what the node has for it is kept{}",
            c.name,
            reason
                .as_ref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        )),
        SyncState::Warm { reason, .. } => Some(format!(
            "{}: not listed yet, serving its last snapshot{}",
            c.name,
            reason
                .as_ref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        )),
        SyncState::Degraded { reason, .. } => Some(format!(
            "{}: degraded, keeping the last good snapshot ({reason})",
            c.name
        )),
    })
    .collect()
}
