//! The request handler: answers our zones from the current [`ZoneData`] (an `ArcSwap` load,
//! never a lock) and forwards everything else. It takes raw messages and returns raw answers;
//! the sockets are the server module's.

mod answer;
mod clients;
mod decide;
mod forwarding;
mod response;
mod stats;

pub use answer::answer_local_bytes;
pub(crate) use answer::Step;
pub use clients::Clients;
pub use decide::{decide, Decision};
pub(crate) use forwarding::Later;
pub(crate) use response::fit;
pub use stats::{DnsStatus, ORIGIN_NAMES, RCODE_NAMES};

use super::forward::{Cache, UpstreamLog};
use super::zone::ZoneData;
use crate::metrics::AtomicHistogram;
use arc_swap::ArcSwap;
use hickory_server::net::xfer::Protocol;
use stats::{Stats, FORWARD_BUCKETS};
use std::net::SocketAddr;
use std::sync::Arc;

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
}
