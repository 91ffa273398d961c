//! Service proxying for remote ClusterIPs.
//!
//! `desired` turns config + snapshots into a [`DesiredProxy`] value (pure); each backend
//! observes its kernel state in sdnlinkd's namespace, plans a printable diff and applies it.
//! `ipvs` programs IPVS over our own generic-netlink codec; `nft` programs one owned nftables
//! table. The daemon keeps the VIP /32 addresses (IPVS needs them as local addresses) through
//! the node plumbing's address code when [`ProxyBackend::needs_vips`] says so.

mod any;
pub mod desired;
pub mod ipvs;
pub mod nft;

pub use any::AnyProxy;

use crate::model::{Held, Protocol, ServiceKey};
use serde::{Serialize, Serializer};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
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

/// `10.1.0.1:8080`, `[fd00::1]:8080`: what `nft` and `ipvsadm` print.
impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        std::net::SocketAddr::new(self.addr, self.port).fmt(f)
    }
}

/// How a virtual service picks a destination, in the vocabulary of `proxy.scheduler` (the
/// names of the IPVS algorithms). The IPVS backend maps each to its kernel scheduler; the
/// nftables backend to a hash of the client address ([`Scheduling::by_client`]) or a uniform
/// random choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scheduling {
    RoundRobin,
    WeightedRoundRobin,
    LeastConnection,
    WeightedLeastConnection,
    LocalityLeastConnection,
    LocalityLeastConnectionReplicated,
    DestinationHash,
    SourceHash,
    ShortestExpectedDelay,
    NeverQueue,
    WeightedFailover,
    WeightedOverflow,
    MaglevHash,
    TwoRandomChoices,
}

impl Scheduling {
    pub const ALL: [Scheduling; 14] = [
        Scheduling::RoundRobin,
        Scheduling::WeightedRoundRobin,
        Scheduling::LeastConnection,
        Scheduling::WeightedLeastConnection,
        Scheduling::LocalityLeastConnection,
        Scheduling::LocalityLeastConnectionReplicated,
        Scheduling::DestinationHash,
        Scheduling::SourceHash,
        Scheduling::ShortestExpectedDelay,
        Scheduling::NeverQueue,
        Scheduling::WeightedFailover,
        Scheduling::WeightedOverflow,
        Scheduling::MaglevHash,
        Scheduling::TwoRandomChoices,
    ];

    /// The name `proxy.scheduler` takes.
    pub fn name(self) -> &'static str {
        match self {
            Scheduling::RoundRobin => "rr",
            Scheduling::WeightedRoundRobin => "wrr",
            Scheduling::LeastConnection => "lc",
            Scheduling::WeightedLeastConnection => "wlc",
            Scheduling::LocalityLeastConnection => "lblc",
            Scheduling::LocalityLeastConnectionReplicated => "lblcr",
            Scheduling::DestinationHash => "dh",
            Scheduling::SourceHash => "sh",
            Scheduling::ShortestExpectedDelay => "sed",
            Scheduling::NeverQueue => "nq",
            Scheduling::WeightedFailover => "fo",
            Scheduling::WeightedOverflow => "ovf",
            Scheduling::MaglevHash => "mh",
            Scheduling::TwoRandomChoices => "twos",
        }
    }

    /// Whether the choice is a function of the client address (source or Maglev hashing).
    pub fn by_client(self) -> bool {
        matches!(self, Scheduling::SourceHash | Scheduling::MaglevHash)
    }
}

impl std::str::FromStr for Scheduling {
    type Err = ();
    fn from_str(s: &str) -> Result<Scheduling, ()> {
        Scheduling::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or(())
    }
}

impl fmt::Display for Scheduling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Scheduling {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// One virtual service (ClusterIP, protocol, port) of a remote Service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VirtualService {
    pub key: VirtualKey,
    /// Cluster and Service it comes from (for status and logs).
    pub cluster: String,
    pub service: ServiceKey,
    pub port_name: String,
    /// `proxy.scheduler`.
    pub scheduler: Scheduling,
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
    /// Service CIDRs of clusters that have not listed in this run: the backend keeps the
    /// services it finds on VIPs inside them and never removes their destinations, only adds
    /// ([`DesiredProxy::adopting`]).
    pub held: Held,
}

impl DesiredProxy {
    /// The desired state with the held part of the kernel's state adopted: every `observed`
    /// service whose VIP lies in a held CIDR is kept, and when the desired state also has it
    /// (a persisted snapshot), its destinations are the union of both, so nothing of a cluster
    /// that has not listed yet is withdrawn. `None` when nothing needs adopting (the common
    /// case: no cluster is held), so callers use `self` without a copy. `observed` should hold
    /// only active destinations: one already draining keeps draining.
    pub fn adopting(
        &self,
        observed: impl IntoIterator<Item = VirtualService>,
    ) -> Option<DesiredProxy> {
        if self.held.is_empty() {
            return None;
        }
        let mut out: Option<DesiredProxy> = None;
        for mut vs in observed {
            let Some(cluster) = self.held.cluster_of_addr(vs.key.vip) else {
                continue;
            };
            let target = out.get_or_insert_with(|| self.clone());
            match target.services.get_mut(&vs.key) {
                Some(want) => {
                    if !vs.destinations.is_subset(&want.destinations) {
                        want.destinations.append(&mut vs.destinations);
                    }
                }
                None => {
                    vs.cluster = cluster.to_string();
                    target.services.insert(vs.key, vs);
                }
            }
        }
        out
    }

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

/// A proxy backend's failure, with the backend's own error kept as the source.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("proxy backend ipvs: {0}")]
    Ipvs(#[from] ipvs::IpvsError),
    #[error("proxy backend nftables: {0}")]
    Nft(#[from] nft::NftError),
    /// The blocking thread a backend's netlink work runs on died (a panic in the codec).
    #[error("proxy backend {backend}: {what} task: {source}")]
    Task {
        backend: &'static str,
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
}

/// A service-proxy backend acting inside sdnlinkd's namespace.
#[allow(async_fn_in_trait)]
pub trait ProxyBackend: Send {
    /// `"ipvs"` or `"nftables"`.
    fn name(&self) -> &'static str;

    /// Whether the VIPs must be local addresses in the namespace (IPVS: yes; nftables DNATs in
    /// prerouting: no).
    fn needs_vips(&self) -> bool;

    /// VIPs to keep on the interface beyond the desired ones (IPVS: services still draining).
    fn lingering_vips(&self, _desired: &DesiredProxy) -> BTreeSet<IpAddr> {
        BTreeSet::new()
    }

    /// When the backend wants a sync without any change (IPVS: a drained destination's grace
    /// period ends and it can be deleted).
    fn next_deadline(&self) -> Option<std::time::Instant> {
        None
    }

    /// The namespace sysctls the backend needs (path under /proc/sys -> value): the node
    /// plumbing writes them with its own, and only those that differ.
    fn sysctls(&self) -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    /// Brings the kernel to `desired`. `full = false`: diff against the last committed state
    /// and send only changed objects. `full = true` (periodic resync, or after a failed apply):
    /// re-read the kernel and repair drift.
    fn sync(
        &mut self,
        desired: &DesiredProxy,
        full: bool,
    ) -> impl std::future::Future<Output = Result<SyncReport, ProxyError>> + Send;

    /// What a full sync would send now, one operation per line, without sending it
    /// (`sdnlinkd plan`).
    fn plan_full(
        &self,
        desired: &DesiredProxy,
    ) -> impl std::future::Future<Output = Result<String, ProxyError>> + Send;

    /// Removes everything this backend owns (for `sdnlinkd cleanup` when the namespace stays).
    fn cleanup(&mut self) -> impl std::future::Future<Output = Result<(), ProxyError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vs(vip: &str, port: u16, dests: &[&str]) -> VirtualService {
        VirtualService {
            key: VirtualKey {
                vip: vip.parse().expect("literal"),
                protocol: Protocol::Tcp,
                port,
            },
            cluster: String::new(),
            service: ServiceKey {
                namespace: "ns".into(),
                name: "svc".into(),
            },
            port_name: String::new(),
            scheduler: Scheduling::RoundRobin,
            affinity_timeout: None,
            destinations: dests
                .iter()
                .map(|d| Destination {
                    addr: d.parse().expect("literal"),
                    port: 8080,
                })
                .collect(),
        }
    }

    fn desired(list: Vec<VirtualService>, held: &[(&str, &str)]) -> DesiredProxy {
        DesiredProxy {
            services: list.into_iter().map(|v| (v.key, v)).collect(),
            held: Held {
                cidrs: held
                    .iter()
                    .map(|(n, c)| (n.to_string(), c.parse().expect("literal")))
                    .collect(),
            },
        }
    }

    #[test]
    fn nothing_held_adopts_nothing() {
        let d = desired(vec![vs("10.97.0.1", 80, &["10.1.0.1"])], &[]);
        assert!(d
            .adopting(vec![vs("10.98.0.1", 80, &["10.2.0.1"])])
            .is_none());
    }

    #[test]
    fn held_services_are_kept_and_their_destinations_only_grow() {
        let d = desired(
            vec![
                vs("10.97.0.1", 80, &["10.1.0.1"]),
                vs("10.98.0.1", 80, &["10.2.0.1"]),
            ],
            &[("west", "10.98.0.0/16")],
        );
        let observed = vec![
            // Not held (east listed): the desired state alone decides.
            vs("10.97.0.1", 80, &["10.1.0.9"]),
            vs("10.97.0.2", 80, &["10.1.0.9"]),
            // Held: kept, and merged with the persisted snapshot's destinations.
            vs("10.98.0.1", 80, &["10.2.0.7"]),
            vs("10.98.0.2", 53, &["10.2.0.8"]),
        ];
        let got = d.adopting(observed).expect("west is held");
        let keys: Vec<String> = got.services.keys().map(|k| k.to_string()).collect();
        assert_eq!(
            keys,
            ["10.97.0.1:80/tcp", "10.98.0.1:80/tcp", "10.98.0.2:53/tcp"]
        );
        let dests = |k: &str| -> Vec<String> {
            got.services
                .values()
                .find(|v| v.key.to_string() == k)
                .expect("present")
                .destinations
                .iter()
                .map(|d| d.addr.to_string())
                .collect()
        };
        assert_eq!(dests("10.97.0.1:80/tcp"), ["10.1.0.1"]);
        assert_eq!(dests("10.98.0.1:80/tcp"), ["10.2.0.1", "10.2.0.7"]);
        assert_eq!(dests("10.98.0.2:53/tcp"), ["10.2.0.8"]);
        let adopted = got
            .services
            .values()
            .find(|v| v.key.port == 53)
            .expect("adopted");
        assert_eq!(adopted.cluster, "west");
    }
}
