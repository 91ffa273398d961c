//! The WireGuard tunnel: keys, the interface in sdnlinkd's namespace, and its peers.
//!
//! Desired peers are a pure function of the config and the remote clusters' snapshots
//! ([`desired_peers`]); [`diff::PeerDiff`] compares them with the device's peers; [`Tunnel`]
//! observes the device and applies the diff one peer at a time.

pub mod device;
pub mod diff;
pub mod keys;
pub mod mss;

pub use device::{
    cleanup, cleanup_in, Backend, CleanupReport, PeerStatus, Tunnel, TunnelProbe, TunnelReport,
    TunnelStatus,
};
pub use diff::{CurrentPeer, PeerChange, PeerDiff};
pub use keys::{load_or_create, public_key_b64, KeyError, PrivateKey, PublicKey};

use crate::config::Config;
use crate::model::{Held, Snapshots};
use ipnet::IpNet;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

/// Errors of the tunnel subsystem.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
    #[error("invalid interface name {0:?} (1 to 15 bytes, no '/' or whitespace)")]
    InterfaceName(String),
    #[error("netlink {op} for {iface}: {source}")]
    Netlink {
        op: &'static str,
        iface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("WireGuard {op} on {iface} ({backend} backend): {source}")]
    Device {
        op: &'static str,
        iface: String,
        backend: Backend,
        #[source]
        source: std::io::Error,
    },
    #[error("starting {binary} for {iface}: {source}")]
    Spawn {
        binary: String,
        iface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{binary} for {iface} did not open its control socket {socket} within {secs} s")]
    SocketTimeout {
        binary: String,
        iface: String,
        socket: String,
        secs: u64,
    },
    #[error("the control socket of {iface} is served by pid {pid}, which runs in another network namespace than sdnlinkd's host namespace; refusing to adopt it")]
    OtherNamespace { iface: String, pid: i32 },
    #[error("interface {iface} exists in namespace {ns} but is not a WireGuard device of the {backend} backend")]
    Foreign {
        iface: String,
        ns: String,
        backend: Backend,
    },
}

/// One peer sdnlinkd wants on the device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DesiredPeer {
    pub cluster: String,
    /// Node name, or `static-<n>` for the n-th static peer of the cluster in config.
    pub node: String,
    pub endpoint: Option<SocketAddr>,
    /// Sorted, truncated to their network address, no duplicates.
    pub allowed_ips: Vec<IpNet>,
    /// Persistent keepalive in seconds; `None` = off.
    pub keepalive: Option<u16>,
}

/// A peer that was not applied, and why (shown in status, logged by the caller).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SkippedPeer {
    pub cluster: String,
    pub node: String,
    pub reason: String,
}

impl std::fmt::Display for SkippedPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "skipping WireGuard peer for node {} of cluster {}: {}",
            self.node, self.cluster, self.reason
        )
    }
}

/// The peers the device should have.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DesiredPeers {
    pub peers: BTreeMap<PublicKey, DesiredPeer>,
    pub skipped: Vec<SkippedPeer>,
    /// Pod CIDRs of clusters that have not listed in this run: a device peer whose allowed IPs
    /// lie inside one of them is kept even when `peers` lacks it.
    pub held: Held,
}

impl DesiredPeers {
    /// The subnets to route through the tunnel interface inside the namespace: every allowed IP
    /// of every applied peer, sorted.
    pub fn routes(&self) -> Vec<IpNet> {
        let set: BTreeSet<IpNet> = self
            .peers
            .values()
            .flat_map(|p| p.allowed_ips.iter().copied())
            .collect();
        set.into_iter().collect()
    }
}

struct Candidate {
    key: PublicKey,
    peer: DesiredPeer,
}

/// Computes the desired peers: each remote cluster's static peers from config plus one peer per
/// node of that cluster's snapshot carrying both WireGuard annotations. The local cluster's
/// nodes are never peers. Every rejected peer lands in `skipped` with its reason.
pub fn desired_peers(cfg: &Config, snapshots: &Snapshots) -> DesiredPeers {
    let keepalive = Some(cfg.tunnel.persistent_keepalive).filter(|k| *k != 0);
    let mut skipped = Vec::new();
    let mut candidates: Vec<Candidate> = Vec::new();

    for remote in &cfg.remote {
        if remote.name == cfg.local.name {
            continue;
        }
        let check = |cluster: &str,
                     node: String,
                     key: Result<PublicKey, String>,
                     endpoint: Result<Option<SocketAddr>, String>,
                     nets: &[IpNet]| {
            let skip = |reason: String| SkippedPeer {
                cluster: cluster.to_string(),
                node: node.clone(),
                reason,
            };
            let key = match key {
                Ok(k) => k,
                Err(reason) => return Err(skip(reason)),
            };
            let endpoint = match endpoint {
                Ok(e) => e,
                Err(reason) => return Err(skip(reason)),
            };
            if nets.is_empty() {
                return Err(skip("no pod subnet".into()));
            }
            let mut allowed = BTreeSet::new();
            for net in nets {
                let net = net.trunc();
                if !remote.pod_cidrs.iter().any(|c| c.contains(&net)) {
                    return Err(skip(format!(
                        "pod subnet {net} is outside the cluster's pod CIDRs"
                    )));
                }
                allowed.insert(net);
            }
            Ok(Candidate {
                key,
                peer: DesiredPeer {
                    cluster: cluster.to_string(),
                    node,
                    endpoint,
                    allowed_ips: allowed.into_iter().collect(),
                    keepalive,
                },
            })
        };

        for (i, sp) in remote.peers.iter().enumerate() {
            let key = PublicKey::from_base64(&sp.public_key)
                .map_err(|_| "public key is not base64 of 32 bytes".to_string());
            match check(
                &remote.name,
                format!("static-{i}"),
                key,
                Ok(sp.endpoint),
                &sp.allowed_ips,
            ) {
                Ok(c) => candidates.push(c),
                Err(s) => skipped.push(s),
            }
        }

        let Some(snap) = snapshots.get(&remote.name) else {
            continue;
        };
        for node in snap.nodes.values() {
            let key = match node.wireguard_public_key.as_deref() {
                None => Err("no public key annotation".to_string()),
                Some(k) => PublicKey::from_base64(k)
                    .map_err(|_| "public key annotation is not base64 of 32 bytes".to_string()),
            };
            let endpoint = match node.wireguard_endpoint.as_deref() {
                None => Err("no endpoint annotation".to_string()),
                Some(e) => e
                    .trim()
                    .parse::<SocketAddr>()
                    .map(Some)
                    .map_err(|_| format!("endpoint annotation {e:?} is not IP:port")),
            };
            match check(
                &remote.name,
                node.name.clone(),
                key,
                endpoint,
                &node.pod_cidrs,
            ) {
                Ok(c) => candidates.push(c),
                Err(s) => skipped.push(s),
            }
        }
    }

    // A key claimed twice, or a subnet claimed by two peers, cannot be resolved without trusting
    // one claimant over the other; WireGuard would silently move the allowed IP to whichever was
    // set last. Both sides are skipped, which also keeps the result independent of order.
    let mut reject: BTreeMap<usize, String> = BTreeMap::new();
    let flag = |reject: &mut BTreeMap<usize, String>, i: usize, j: usize, what: &str| {
        for (x, y) in [(i, j), (j, i)] {
            let other = &candidates[y].peer;
            reject.entry(x).or_insert_with(|| {
                format!("{what} node {} of cluster {}", other.node, other.cluster)
            });
        }
    };
    let mut by_key: BTreeMap<PublicKey, usize> = BTreeMap::new();
    for (i, c) in candidates.iter().enumerate() {
        if let Some(&first) = by_key.get(&c.key) {
            flag(&mut reject, first, i, "public key also used by");
        } else {
            by_key.insert(c.key, i);
        }
    }
    // CIDRs are either nested or disjoint: sorted by start address (widest first), a net
    // overlaps another exactly when it starts before the widest open net ends. O(n log n), so
    // thousands of nodes stay cheap.
    let mut nets: Vec<(IpNet, usize)> = candidates
        .iter()
        .enumerate()
        .flat_map(|(i, c)| c.peer.allowed_ips.iter().map(move |n| (*n, i)))
        .collect();
    nets.sort_by_key(|(n, _)| (n.network(), n.prefix_len()));
    let mut open: Option<(IpNet, usize)> = None;
    for (net, i) in nets {
        match open {
            Some((wide, j)) if wide.contains(&net) => {
                if i != j {
                    flag(
                        &mut reject,
                        j,
                        i,
                        &format!("allowed IP {net} overlaps {wide} of"),
                    );
                }
            }
            _ => open = Some((net, i)),
        }
    }

    let mut peers = BTreeMap::new();
    for (i, c) in candidates.into_iter().enumerate() {
        match reject.remove(&i) {
            Some(reason) => skipped.push(SkippedPeer {
                cluster: c.peer.cluster,
                node: c.peer.node,
                reason,
            }),
            None => {
                peers.insert(c.key, c.peer);
            }
        }
    }
    DesiredPeers {
        peers,
        skipped,
        held: Held::default(),
    }
}

#[cfg(test)]
mod tests;
