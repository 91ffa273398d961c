//! The pure peer diff between the device and the desired peers (innernet's `PeerDiff` shape).
//!
//! Only what sdnlinkd owns is compared: public key, endpoint, allowed IPs, keepalive. The
//! endpoint is special: WireGuard rewrites a peer's endpoint to the address its authenticated
//! packets arrive from (roaming, NAT). Re-setting the configured endpoint every time the kernel
//! shows another one cut connections every 30 s in Kilo (squat/kilo issue 34), so an endpoint is
//! only re-set when *our* desired endpoint changed since we last set it.

use super::{DesiredPeer, DesiredPeers, PublicKey};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};
use wireguard_control::PeerConfigBuilder;

/// WireGuard's REJECT_AFTER_TIME (180 s, whitepaper section 6.1): a peer with a handshake younger
/// than this has a live session on whatever endpoint the kernel shows.
pub const LIVE_SESSION: Duration = Duration::from_secs(180);

/// A peer as the device reports it (or as sdnlinkd last committed it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurrentPeer {
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: BTreeSet<IpNet>,
    /// `None` = off (the kernel reports 0 for off).
    pub keepalive: Option<u16>,
    pub last_handshake: Option<SystemTime>,
}

impl CurrentPeer {
    /// The state a desired peer has once applied with the given endpoint.
    pub fn from_desired(d: &DesiredPeer, endpoint: Option<SocketAddr>) -> CurrentPeer {
        CurrentPeer {
            endpoint,
            allowed_ips: d.allowed_ips.iter().copied().collect(),
            keepalive: d.keepalive,
            last_handshake: None,
        }
    }
}

/// Who sends the first handshake initiation to a new peer.
///
/// Two ends that add each other within one network round trip (both daemons react to the same
/// Node annotations) and both enable persistent keepalive at once send crossed initiations:
/// wireguard-go (and the kernel) send one at once when keepalive is turned on for a new peer.
/// Each end then answers the other's initiation, which overwrites its own handshake state. In
/// the lab (wireguard-go 0.0.20220316, 2 cores) that ended in one of two ways, both captured on
/// the wire: both responses are rejected ("Received invalid response message") and, with a 5 s
/// keepalive, both ends re-initiate in lockstep for 100 s; or the response and the crossed
/// initiation are handled concurrently by two handshake workers, leaving one end with a session
/// whose receive index it has already freed, so it silently drops everything the other sends
/// while its own keepalives keep that other end from ever re-handshaking.
///
/// So only the end with the lower public key turns keepalive on when it adds the peer; the
/// other adds the peer with keepalive off, answers the first initiation, and turns keepalive on
/// after [`KeepaliveHolds::delay`]: by then a session exists (the keepalive rides on it) or the
/// other end is not initiating at all (no crossing is possible).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeepaliveHolds {
    /// This device's public key; `None` = every new peer gets its keepalive at once.
    pub local: Option<PublicKey>,
    /// Per peer: keepalive stays off until then.
    pub until: BTreeMap<PublicKey, SystemTime>,
}

impl KeepaliveHolds {
    pub fn new(local: PublicKey) -> KeepaliveHolds {
        KeepaliveHolds {
            local: Some(local),
            until: BTreeMap::new(),
        }
    }

    /// Whether a newly added `peer` gets its keepalive only later: when this end has the higher
    /// key (ties cannot happen; a peer with our own key is never desired).
    pub fn defers(&self, peer: &PublicKey) -> bool {
        self.local.is_some_and(|l| l > *peer)
    }

    /// How long the higher key waits: at least 1 s, far more than both ends take to add each
    /// other (milliseconds) plus a handshake's round trip, and under 2 s, well inside the lower
    /// end's 5 s REKEY_TIMEOUT retry. The jitter is a pure function of both keys, so it is
    /// reproducible and different for every pair.
    pub fn delay(&self, peer: &PublicKey) -> Duration {
        let local = self.local.map(|k| k.0).unwrap_or_default();
        let mix = local.iter().zip(peer.0.iter()).fold(0u64, |h, (a, b)| {
            h.wrapping_mul(0x100_0000_01b3) ^ u64::from(a ^ b)
        });
        Duration::from_millis(1000 + mix % 1000)
    }

    /// Whether the keepalive of `peer` is still held at `now`.
    pub fn holds(&self, peer: &PublicKey, now: SystemTime) -> bool {
        self.until.get(peer).is_some_and(|t| now < *t)
    }

    /// The earliest moment a held keepalive is due: the next sync should run then.
    pub fn next_due(&self) -> Option<SystemTime> {
        self.until.values().min().copied()
    }
}

/// One operation on one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerChange {
    Add {
        key: PublicKey,
        peer: DesiredPeer,
        /// `Some(d)`: add the peer with keepalive off and turn `peer.keepalive` on after `d`
        /// (see [`KeepaliveHolds`]).
        keepalive_after: Option<Duration>,
    },
    Update {
        key: PublicKey,
        /// `Some` = set this endpoint.
        endpoint: Option<SocketAddr>,
        /// `Some` = replace the allowed IPs with these.
        allowed_ips: Option<Vec<IpNet>>,
        /// `Some(k)` = set keepalive to `k` (`None` inside = off).
        keepalive: Option<Option<u16>>,
    },
    Remove {
        key: PublicKey,
    },
}

impl PeerChange {
    /// The peer the change is about.
    pub fn key(&self) -> &PublicKey {
        match self {
            PeerChange::Add { key, .. }
            | PeerChange::Update { key, .. }
            | PeerChange::Remove { key } => key,
        }
    }
}

impl PeerChange {
    /// The one wireguard-control message that carries this change. Add replaces the allowed IPs
    /// (an adopted peer of the same key may hold others); an Update sends only the fields that
    /// differ, so an unchanged endpoint is never re-set (roaming, see the module comment).
    pub fn builder(&self) -> PeerConfigBuilder {
        let nets = |mut b: PeerConfigBuilder, nets: &[IpNet]| {
            b = b.replace_allowed_ips();
            for n in nets {
                b = b.add_allowed_ip(n.addr(), n.prefix_len());
            }
            b
        };
        match self {
            PeerChange::Add {
                key,
                peer,
                keepalive_after,
            } => {
                let mut b = PeerConfigBuilder::new(&key.to_wg());
                if let Some(e) = peer.endpoint {
                    b = b.set_endpoint(e);
                }
                let keepalive = match keepalive_after {
                    Some(_) => 0,
                    None => peer.keepalive.unwrap_or(0),
                };
                b = b.set_persistent_keepalive_interval(keepalive);
                nets(b, &peer.allowed_ips)
            }
            PeerChange::Update {
                key,
                endpoint,
                allowed_ips,
                keepalive,
            } => {
                let mut b = PeerConfigBuilder::new(&key.to_wg());
                if let Some(e) = endpoint {
                    b = b.set_endpoint(*e);
                }
                if let Some(k) = keepalive {
                    b = b.set_persistent_keepalive_interval(k.unwrap_or(0));
                }
                match allowed_ips {
                    Some(n) => nets(b, n),
                    None => b,
                }
            }
            PeerChange::Remove { key } => PeerConfigBuilder::new(&key.to_wg()).remove(),
        }
    }

    /// Records in `c` that the device accepted this change at `now`.
    pub fn apply_to(self, c: &mut Committed, now: SystemTime) {
        match self {
            PeerChange::Add {
                key,
                peer,
                keepalive_after,
            } => {
                let mut applied = CurrentPeer::from_desired(&peer, peer.endpoint);
                if let Some(d) = keepalive_after {
                    applied.keepalive = None;
                    c.holds.until.insert(key, now + d);
                }
                c.peers.insert(key, applied);
                c.last_set.insert(key, peer.endpoint);
            }
            PeerChange::Update {
                key,
                endpoint,
                allowed_ips,
                keepalive,
            } => {
                if let Some(p) = c.peers.get_mut(&key) {
                    if let Some(e) = endpoint {
                        p.endpoint = Some(e);
                    }
                    if let Some(n) = allowed_ips {
                        p.allowed_ips = n.into_iter().collect();
                    }
                    if let Some(k) = keepalive {
                        p.keepalive = k;
                        c.holds.until.remove(&key);
                    }
                }
            }
            PeerChange::Remove { key } => {
                c.peers.remove(&key);
                c.last_set.remove(&key);
                c.holds.until.remove(&key);
            }
        }
    }
}

/// What sdnlinkd knows the device holds: the peers as last committed (or read on a full sync),
/// the endpoint it last set per peer (see [`PeerDiff::compute`]) and the keepalive holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    pub peers: BTreeMap<PublicKey, CurrentPeer>,
    pub last_set: BTreeMap<PublicKey, Option<SocketAddr>>,
    pub holds: KeepaliveHolds,
}

impl Committed {
    /// Nothing committed yet, for the device whose key is `local`.
    pub fn new(local: PublicKey) -> Committed {
        Committed {
            peers: BTreeMap::new(),
            last_set: BTreeMap::new(),
            holds: KeepaliveHolds::new(local),
        }
    }

    /// The peers read from the device replace what was committed; what sdnlinkd set and holds
    /// stays (a full sync must not forget that an endpoint shown is a roamed one).
    pub fn observed(&mut self, peers: BTreeMap<PublicKey, CurrentPeer>) {
        self.peers = peers;
    }

    /// A new device has no peers and nothing sdnlinkd set on it.
    pub fn device_created(&mut self) {
        self.peers.clear();
        self.last_set.clear();
    }

    /// The changes from what is committed to `desired` at `now`.
    pub fn diff(&self, desired: &DesiredPeers, now: SystemTime) -> PeerDiff {
        PeerDiff::compute(&self.peers, desired, &self.last_set, &self.holds, now)
    }

    /// Starts the keepalive holds a diff asked for (nothing is sent for them now).
    pub fn hold(&mut self, held: &[(PublicKey, Duration)], now: SystemTime) {
        for (key, d) in held {
            self.holds.until.insert(*key, now + *d);
        }
    }

    /// Ends a sync towards `desired`. What we want is what we last asked for, whether or not
    /// this sync had to send it: a roamed endpoint of an adopted peer is kept until the desired
    /// endpoint itself changes. Holds of peers the device no longer has are dropped.
    pub fn finish(&mut self, desired: &DesiredPeers) {
        for (key, p) in &desired.peers {
            if self.peers.contains_key(key) {
                self.last_set.insert(*key, p.endpoint);
            }
        }
        let peers = &self.peers;
        self.holds.until.retain(|k, _| peers.contains_key(k));
    }

    /// Every allowed IP of every committed peer, sorted: the subnets routed through the device.
    pub fn routes(&self) -> Vec<IpNet> {
        let set: BTreeSet<IpNet> = self
            .peers
            .values()
            .flat_map(|p| p.allowed_ips.iter().copied())
            .collect();
        set.into_iter().collect()
    }
}

impl fmt::Display for PeerChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nets = |v: &[IpNet]| {
            v.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        match self {
            PeerChange::Add {
                key,
                peer,
                keepalive_after,
            } => {
                write!(f, "add peer {key} ({}/{})", peer.cluster, peer.node)?;
                if let Some(e) = peer.endpoint {
                    write!(f, " endpoint={e}")?;
                }
                write!(f, " allowed_ips={}", nets(&peer.allowed_ips))?;
                if let Some(k) = peer.keepalive {
                    write!(f, " keepalive={k}")?;
                    if let Some(d) = keepalive_after {
                        write!(
                            f,
                            " from +{:.1}s (the lower key initiates first)",
                            d.as_secs_f64()
                        )?;
                    }
                }
                Ok(())
            }
            PeerChange::Update {
                key,
                endpoint,
                allowed_ips,
                keepalive,
            } => {
                write!(f, "update peer {key}")?;
                if let Some(e) = endpoint {
                    write!(f, " endpoint={e}")?;
                }
                if let Some(a) = allowed_ips {
                    write!(f, " allowed_ips={}", nets(a))?;
                }
                if let Some(k) = keepalive {
                    write!(f, " keepalive={}", k.unwrap_or(0))?;
                }
                Ok(())
            }
            PeerChange::Remove { key } => write!(f, "remove peer {key}"),
        }
    }
}

/// The changes that turn the current peers into the desired ones, in key order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerDiff {
    pub changes: Vec<PeerChange>,
    /// Existing peers whose keepalive turns on only after this delay (see [`KeepaliveHolds`]);
    /// nothing is sent for them now.
    pub held: Vec<(PublicKey, Duration)>,
}

impl PeerDiff {
    /// Diffs `current` against `desired`. A current peer that the desired state lacks is
    /// removed, unless all its allowed IPs lie in one cluster of `desired.held`. `last_set`
    /// holds, per peer, the endpoint sdnlinkd last set (absent when it never set one in this
    /// process, e.g. right after a restart); `holds` says which new peers get their keepalive
    /// later and which keepalives are still held; `now` dates the handshakes and the holds.
    pub fn compute(
        current: &BTreeMap<PublicKey, CurrentPeer>,
        desired: &DesiredPeers,
        last_set: &BTreeMap<PublicKey, Option<SocketAddr>>,
        holds: &KeepaliveHolds,
        now: SystemTime,
    ) -> PeerDiff {
        let mut changes = Vec::new();
        let mut held = Vec::new();
        for (key, want) in &desired.peers {
            let Some(have) = current.get(key) else {
                let keepalive_after =
                    (want.keepalive.is_some() && holds.defers(key)).then(|| holds.delay(key));
                changes.push(PeerChange::Add {
                    key: *key,
                    peer: want.clone(),
                    keepalive_after,
                });
                continue;
            };
            let endpoint = want
                .endpoint
                .filter(|d| have.endpoint != Some(*d))
                .filter(|d| match last_set.get(key) {
                    // We set this very endpoint; the kernel shows where the peer roamed to.
                    Some(prev) => *prev != Some(*d),
                    // No record (we restarted): keep a live session wherever it is.
                    None => {
                        let live = have.last_handshake.is_some_and(|t| {
                            now.duration_since(t)
                                .map(|age| age < LIVE_SESSION)
                                .unwrap_or(true)
                        });
                        have.endpoint.is_none() || !live
                    }
                });
            let want_ips: BTreeSet<IpNet> = want.allowed_ips.iter().copied().collect();
            let allowed_ips = (want_ips != have.allowed_ips).then(|| want.allowed_ips.clone());
            // Keepalive going from off to on starts initiations just like a new peer does: the
            // higher key waits here too (a peer added by a process that died before its hold
            // ended, or keepalive turned on by a reload on both ends).
            let turning_on = have.keepalive.is_none() && want.keepalive.is_some();
            let start_hold = turning_on && holds.defers(key) && !holds.until.contains_key(key);
            if start_hold {
                held.push((*key, holds.delay(key)));
            }
            let waits = turning_on && (start_hold || holds.holds(key, now));
            let keepalive = (want.keepalive != have.keepalive && !waits).then_some(want.keepalive);
            if endpoint.is_some() || allowed_ips.is_some() || keepalive.is_some() {
                changes.push(PeerChange::Update {
                    key: *key,
                    endpoint,
                    allowed_ips,
                    keepalive,
                });
            }
        }
        for (key, have) in current {
            if desired.peers.contains_key(key) {
                continue;
            }
            // A peer of a cluster that has not listed yet stays as the device has it.
            let nets: Vec<IpNet> = have.allowed_ips.iter().copied().collect();
            if desired.held.cluster_of_nets(&nets).is_some() {
                continue;
            }
            changes.push(PeerChange::Remove { key: *key });
        }
        changes.sort_by(|a, b| a.key().cmp(b.key()));
        PeerDiff { changes, held }
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

impl fmt::Display for PeerDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.changes {
            writeln!(f, "{c}")?;
        }
        for (k, d) in &self.held {
            writeln!(
                f,
                "hold keepalive of peer {k} for {:.1}s (the lower key initiates first)",
                d.as_secs_f64()
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
