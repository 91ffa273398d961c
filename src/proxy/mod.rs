//! Service proxying for remote ClusterIPs.
//!
//! `desired` turns config + snapshots into a [`DesiredProxy`] value (pure); each backend
//! observes its kernel state in sdnlinkd's namespace, plans a printable diff and applies it.
//! `ipvs` programs IPVS over our own generic-netlink codec; `nft` programs one owned nftables
//! table. The daemon keeps the VIP /32 addresses (IPVS needs them as local addresses) through
//! the node plumbing's address code when [`ProxyBackend::needs_vips`] says so.

pub mod desired;
pub mod nft;
pub mod ipvs;

use crate::model::{Protocol, ServiceKey};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

/// Identity of one virtual service: what a packet's destination matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct VirtualKey {
    pub vip: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
}

impl std::fmt::Display for VirtualKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.vip {
            IpAddr::V4(a) => write!(f, "{}:{}/{}", a, self.port, self.protocol),
            IpAddr::V6(a) => write!(f, "[{}]:{}/{}", a, self.port, self.protocol),
        }
    }
}

/// One real server of a virtual service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Destination {
    pub addr: IpAddr,
    pub port: u16,
}

/// One virtual service (ClusterIP, protocol, port) of a remote Service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VirtualService {
    pub key: VirtualKey,
    /// Cluster and Service it comes from (for status and logs).
    pub cluster: String,
    pub service: ServiceKey,
    pub port_name: String,
    /// IPVS scheduler name from config.
    pub scheduler: String,
    /// `sessionAffinity: ClientIP` timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// Ready endpoints at the resolved target port (serving-but-terminating ones only when no
    /// endpoint is ready). Empty: connections are refused.
    pub destinations: BTreeSet<Destination>,
}

/// The full desired proxy state: every virtual service of every remote cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DesiredProxy {
    pub services: BTreeMap<VirtualKey, VirtualService>,
}

impl DesiredProxy {
    /// The VIPs the services need (one /32 or /128 each).
    pub fn vips(&self) -> BTreeSet<IpAddr> {
        self.services.keys().map(|k| k.vip).collect()
    }
}

/// What one backend sync did, for logs and `sdnlinkd status`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SyncReport {
    pub full: bool,
    /// Kernel operations (netlink messages, nft commands) sent.
    pub operations: usize,
    #[serde(with = "duration_ms")]
    pub duration: Duration,
    /// Services that failed to program, with the reason; retried on the next sync.
    pub failed: Vec<(VirtualKey, String)>,
}

mod duration_ms {
    use serde::Serializer;
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1000.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("proxy backend {backend}: {message}")]
    Backend {
        backend: &'static str,
        message: String,
    },
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// A service-proxy backend acting inside sdnlinkd's namespace.
#[allow(async_fn_in_trait)]
pub trait ProxyBackend: Send {
    /// `"ipvs"` or `"nftables"`.
    fn name(&self) -> &'static str;

    /// Whether the VIPs must be local addresses in the namespace (IPVS: yes; nftables DNATs in
    /// prerouting: no).
    fn needs_vips(&self) -> bool;

    /// Brings the kernel to `desired`. `full = false`: diff against the last committed state
    /// and send only changed objects. `full = true` (periodic resync, or after a failed apply):
    /// re-read the kernel and repair drift.
    fn sync(
        &mut self,
        desired: &DesiredProxy,
        full: bool,
    ) -> impl std::future::Future<Output = Result<SyncReport, ProxyError>> + Send;

    /// Removes everything this backend owns (for `sdnlinkd cleanup` when the namespace stays).
    fn cleanup(&mut self) -> impl std::future::Future<Output = Result<(), ProxyError>> + Send;
}
