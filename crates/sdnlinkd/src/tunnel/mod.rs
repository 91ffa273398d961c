//! The WireGuard tunnel: keys, the interface in sdnlinkd's namespace, and its peers.
//!
//! Desired peers are a pure function of the config and the remote clusters' snapshots
//! ([`desired_peers`]); [`diff::PeerDiff`] compares them with the device's peers; [`Tunnel`]
//! observes the device and applies the diff one peer at a time.

pub mod device;
pub mod diff;
pub mod inbound;
pub mod keys;
pub mod mss;

pub use device::{
    cleanup, cleanup_in, Backend, CleanupReport, PeerStatus, Tunnel, TunnelProbe, TunnelReport,
    TunnelStatus,
};
pub use diff::{Committed, CurrentPeer, KeepaliveHolds, PeerChange, PeerDiff};
pub use keys::{load_or_create, public_key_b64, KeyError, PrivateKey, PublicKey};

use crate::config::Config;
use crate::model::{Held, Snapshots};
use ipnet::IpNet;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

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
    #[error("host interface {iface:?} already exists and is not sdnlinkd's ({why}); refusing to take it over. Rename it or set another tunnel.interface; if it is a leftover of sdnlinkd, delete it with `ip link del {iface}`")]
    ForeignHost { iface: String, why: String },
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
    /// A static peer of the config (`[[remote.peers]]`), trusted as the operator wrote it; the
    /// others come from a remote cluster's Node annotations.
    pub from_config: bool,
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

/// A public key that several remote nodes announce. Which claimant (if any) gets it depends on
/// what the device already has, so it is settled by [`DesiredPeers::settle`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContestedKey {
    pub key: PublicKey,
    /// Every claimant, each valid on its own, in cluster/node order.
    pub claims: Vec<DesiredPeer>,
}

/// The peers the device should have.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DesiredPeers {
    pub peers: BTreeMap<PublicKey, DesiredPeer>,
    pub skipped: Vec<SkippedPeer>,
    /// Pod CIDRs of clusters that have not listed in this run: a device peer whose allowed IPs
    /// lie inside one of them is kept even when `peers` lacks it.
    pub held: Held,
    /// Keys announced by more than one remote node, not yet settled against the device.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub contested: Vec<ContestedKey>,
}

/// What settling the desired peers needs from the node itself: the device's key and peers and
/// the host namespace's addresses (where the WireGuard socket lives).
#[derive(Clone, Copy, Debug)]
pub struct NodeFacts<'a> {
    /// The device's own public key.
    pub local_key: Option<PublicKey>,
    /// Every address (and broadcast address) of the host namespace's interfaces, plus the
    /// advertised `tunnel.endpoint`.
    pub own_addrs: &'a BTreeSet<IpAddr>,
    /// The device's peers as sdnlinkd last committed or read them.
    pub current: &'a BTreeMap<PublicKey, CurrentPeer>,
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
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

    /// Settles what needs the node's own facts, deterministically (the outcome depends on the
    /// inputs, never on the order events arrived in):
    /// - a discovered peer whose endpoint is one of this node's addresses, or whose key is this
    ///   node's own, is skipped;
    /// - a key the device already has for a peer stays with that peer (the claimant whose
    ///   allowed IPs the device peer has): every other claimant is a newcomer and is refused. A
    ///   device peer of a cluster that has not listed yet keeps its key against any newcomer.
    /// - a key claimed by several nodes none of which the device has is given to none of them:
    ///   nothing tells the genuine node from the copy.
    ///
    /// Static peers were already preferred over discovered claimants by [`desired_peers`].
    /// Idempotent: settling a settled value changes nothing.
    pub fn settle(&self, facts: &NodeFacts<'_>) -> DesiredPeers {
        let mut out = DesiredPeers {
            peers: BTreeMap::new(),
            skipped: self.skipped.clone(),
            held: self.held.clone(),
            contested: Vec::new(),
        };
        let skip = |out: &mut DesiredPeers, p: &DesiredPeer, reason: String| {
            out.skipped.push(SkippedPeer {
                cluster: p.cluster.clone(),
                node: p.node.clone(),
                reason,
            })
        };
        let own = |key: &PublicKey, p: &DesiredPeer| -> Option<String> {
            if facts.local_key == Some(*key) {
                return Some("public key is this node's own".into());
            }
            let e = p.endpoint.filter(|_| !p.from_config)?;
            facts
                .own_addrs
                .contains(&e.ip().to_canonical())
                .then(|| format!("endpoint {e} is one of this node's own addresses"))
        };
        // The device has this key for this claimant: some allowed IP in common.
        let programmed_for = |key: &PublicKey, p: &DesiredPeer| {
            facts.current.get(key).is_some_and(|c| {
                p.allowed_ips
                    .iter()
                    .any(|n| c.allowed_ips.iter().any(|m| overlaps(n, m)))
            })
        };
        let held_owner = |key: &PublicKey| -> Option<String> {
            let c = facts.current.get(key)?;
            let nets: Vec<IpNet> = c.allowed_ips.iter().copied().collect();
            self.held.cluster_of_nets(&nets).map(str::to_string)
        };
        let admit = |out: &mut DesiredPeers, key: &PublicKey, p: &DesiredPeer| {
            if !p.from_config && !programmed_for(key, p) {
                if let Some(owner) = held_owner(key) {
                    return skip(out, p, format!(
                        "public key is already programmed for a peer of cluster {owner}, which has not listed yet; refusing the newcomer"
                    ));
                }
            }
            out.peers.insert(*key, p.clone());
        };
        for (key, p) in &self.peers {
            match own(key, p) {
                Some(reason) => skip(&mut out, p, reason),
                None => admit(&mut out, key, p),
            }
        }
        for c in &self.contested {
            let mut claims = Vec::new();
            for p in &c.claims {
                match own(&c.key, p) {
                    Some(reason) => skip(&mut out, p, reason),
                    None => claims.push(p),
                }
            }
            let incumbents: Vec<&DesiredPeer> = claims
                .iter()
                .copied()
                .filter(|p| programmed_for(&c.key, p))
                .collect();
            match (claims.as_slice(), incumbents.as_slice()) {
                ([], _) => {}
                ([only], _) => admit(&mut out, &c.key, only),
                (_, [winner]) => {
                    for p in claims.iter().filter(|p| !std::ptr::eq(**p, *winner)) {
                        skip(&mut out, p, format!(
                            "public key is already programmed for node {} of cluster {}; refusing the newcomer",
                            winner.node, winner.cluster
                        ));
                    }
                    admit(&mut out, &c.key, winner);
                }
                _ => {
                    for p in &claims {
                        let others: Vec<String> = claims
                            .iter()
                            .filter(|q| !std::ptr::eq(**q, *p))
                            .map(|q| format!("node {} of cluster {}", q.node, q.cluster))
                            .collect();
                        skip(&mut out, p, format!(
                            "public key also used by {}, and the device has it for none of them; refusing all",
                            others.join(", ")
                        ));
                    }
                }
            }
        }
        out
    }
}

/// Why an endpoint announced in a Node annotation cannot be a WireGuard endpoint, if it cannot.
/// A remote chooses these addresses, and the node sends handshakes to them every keepalive: only
/// a unicast address of a real host qualifies (IPv4-mapped IPv6 is judged as the IPv4 address).
pub fn endpoint_problem(ep: SocketAddr) -> Option<String> {
    if ep.port() == 0 {
        return Some(format!("endpoint {ep} has port 0"));
    }
    let what = match ep.ip().to_canonical() {
        IpAddr::V4(a) => {
            if a.octets()[0] == 0 {
                "unspecified (0.0.0.0/8)"
            } else if a.is_loopback() {
                "loopback"
            } else if a.is_link_local() {
                "link-local"
            } else if a.is_broadcast() {
                "the broadcast address"
            } else if a.is_multicast() {
                "multicast"
            } else if a.octets()[0] >= 240 {
                "reserved (240.0.0.0/4)"
            } else {
                return None;
            }
        }
        IpAddr::V6(a) => {
            if a.is_unspecified() {
                "unspecified"
            } else if a.is_loopback() {
                "loopback"
            } else if a.is_multicast() {
                "multicast"
            } else if a.segments()[0] & 0xffc0 == 0xfe80 {
                "link-local"
            } else {
                return None;
            }
        }
    };
    Some(format!(
        "endpoint {ep} is {what}, not a unicast host address"
    ))
}

/// WireGuard's REKEY_TIMEOUT and KEEPALIVE_TIMEOUT (whitepaper section 6.1), in seconds.
const REKEY_TIMEOUT_SECS: u16 = 5;
const KEEPALIVE_TIMEOUT_SECS: u16 = 10;

/// The warning a `tunnel.persistent_keepalive` value deserves, if any. With a keepalive of at
/// most KEEPALIVE_TIMEOUT + REKEY_TIMEOUT (15 s), a peer's keepalives keep cancelling the timer
/// that re-handshakes a session on which we send but hear nothing back (whitepaper section 6.5),
/// so a session that carries traffic one way only stays broken until REKEY_AFTER_TIME (120 s).
/// At exactly REKEY_TIMEOUT the keepalive also fires in step with the handshake retry, without
/// its jitter: two ends whose initiations crossed once cross again every 5 s.
pub fn keepalive_warning(keepalive: u16) -> Option<String> {
    let limit = KEEPALIVE_TIMEOUT_SECS + REKEY_TIMEOUT_SECS;
    if keepalive == 0 || keepalive > limit {
        return None;
    }
    let lockstep = if keepalive == REKEY_TIMEOUT_SECS {
        "; at 5 s it also re-sends crossed handshake initiations in lockstep (REKEY_TIMEOUT)"
    } else {
        ""
    };
    Some(format!(
        "tunnel.persistent_keepalive = {keepalive}: at most {limit} s (KEEPALIVE_TIMEOUT 10 s + REKEY_TIMEOUT 5 s), the peers' keepalives hide a session that works one way only from WireGuard's re-handshake for up to 120 s{lockstep}; use 0 or a value above {limit} (25 is the usual one)"
    ))
}

struct Candidate {
    key: PublicKey,
    peer: DesiredPeer,
}

/// Computes the desired peers: each remote cluster's static peers from config plus one peer per
/// node of that cluster's snapshot carrying both WireGuard annotations. The local cluster's
/// nodes are never peers. Every rejected peer lands in `skipped` with its reason. A key claimed
/// by a static peer and by nodes goes to the static peer; a key claimed by several nodes is left
/// in `contested` for [`DesiredPeers::settle`], which needs the device's peers
/// ([`desired_peers_on`] does both).
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
                     nets: &[IpNet],
                     from_config: bool| {
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
                    from_config,
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
                true,
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
                Some(e) => match e.trim().parse::<SocketAddr>() {
                    Err(_) => Err(format!("endpoint annotation {e:?} is not IP:port")),
                    Ok(ep) => match endpoint_problem(ep) {
                        Some(why) => Err(why),
                        None if !remote.endpoint_cidrs.is_empty()
                            && !remote
                                .endpoint_cidrs
                                .iter()
                                .any(|c| c.contains(&ep.ip().to_canonical())) =>
                        {
                            Err(format!(
                                "endpoint {ep} is outside the cluster's endpoint_cidrs"
                            ))
                        }
                        None => Ok(Some(ep)),
                    },
                },
            };
            match check(
                &remote.name,
                node.name.clone(),
                key,
                endpoint,
                &node.pod_cidrs,
                false,
            ) {
                Ok(c) => candidates.push(c),
                Err(s) => skipped.push(s),
            }
        }
    }

    // A subnet claimed by two peers cannot be resolved without trusting one claimant over the
    // other; WireGuard would silently move the allowed IP to whichever was set last. Both sides
    // are skipped, which also keeps the result independent of order. (Config validation keeps
    // the pod CIDRs of clusters disjoint, so only peers of one cluster can collide here.)
    let mut reject: BTreeMap<usize, String> = BTreeMap::new();
    let flag = |reject: &mut BTreeMap<usize, String>, i: usize, j: usize, what: &str| {
        for (x, y) in [(i, j), (j, i)] {
            let other = &candidates[y].peer;
            reject.entry(x).or_insert_with(|| {
                format!("{what} node {} of cluster {}", other.node, other.cluster)
            });
        }
    };
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

    let mut claims: BTreeMap<PublicKey, Vec<DesiredPeer>> = BTreeMap::new();
    for (i, c) in candidates.into_iter().enumerate() {
        match reject.remove(&i) {
            Some(reason) => skipped.push(SkippedPeer {
                cluster: c.peer.cluster,
                node: c.peer.node,
                reason,
            }),
            None => claims.entry(c.key).or_default().push(c.peer),
        }
    }
    let mut peers = BTreeMap::new();
    let mut contested = Vec::new();
    for (key, mut list) in claims {
        list.sort_by(|a, b| (&a.cluster, &a.node).cmp(&(&b.cluster, &b.node)));
        let statics: Vec<&DesiredPeer> = list.iter().filter(|p| p.from_config).collect();
        match (list.len(), statics.as_slice()) {
            (1, _) => {
                if let Some(p) = list.pop() {
                    peers.insert(key, p);
                }
            }
            (_, [winner]) => {
                // The operator's own configuration outranks any remote's announcement.
                let winner = (*winner).clone();
                for p in list.iter().filter(|p| !p.from_config) {
                    skipped.push(SkippedPeer {
                        cluster: p.cluster.clone(),
                        node: p.node.clone(),
                        reason: format!(
                            "public key belongs to static peer {} of cluster {} in the config",
                            winner.node, winner.cluster
                        ),
                    });
                }
                peers.insert(key, winner);
            }
            (_, []) => contested.push(ContestedKey { key, claims: list }),
            _ => {
                // Several static peers with one key: config validation refuses that; should a
                // config get here anyway, no claimant is preferred.
                for p in &list {
                    skipped.push(SkippedPeer {
                        cluster: p.cluster.clone(),
                        node: p.node.clone(),
                        reason: "public key is used by several static peers".into(),
                    });
                }
            }
        }
    }
    DesiredPeers {
        peers,
        skipped,
        held: Held::default(),
        contested,
    }
}

/// [`desired_peers`] settled against the node's facts ([`DesiredPeers::settle`]).
pub fn desired_peers_on(
    cfg: &Config,
    snapshots: &Snapshots,
    facts: &NodeFacts<'_>,
) -> DesiredPeers {
    desired_peers(cfg, snapshots).settle(facts)
}

#[cfg(test)]
mod tests;
