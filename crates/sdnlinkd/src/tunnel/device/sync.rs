//! Peer sync over wireguard-control: read the device, settle and diff the desired peers,
//! send one message per changed peer, commit what was applied.

use super::*;
use crate::netns::NetNs;
use crate::tunnel::diff::CurrentPeer;
use crate::tunnel::keys::PublicKey;
use crate::tunnel::{DesiredPeers, NodeFacts, TunnelError};
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::io;
use std::time::SystemTime;
use wireguard_control::DeviceUpdate;

impl Tunnel {
    /// The namespace wireguard-control must be called from: the kernel backend talks generic
    /// netlink in the calling thread's namespace (the device is in `ns`); the userspace backend
    /// talks to a socket file, and runs in the host namespace so that nothing it might start
    /// lands in `ns`.
    pub(super) fn wg_ns(&self) -> &NetNs {
        match self.backend {
            Backend::Kernel => &self.ns,
            Backend::Userspace => &self.host,
        }
    }

    pub(super) async fn get_device(&self) -> Result<wireguard_control::Device, TunnelError> {
        self.check_socket_owner()?;
        let (name, backend) = (self.wg_name, self.backend);
        let res = self
            .wg_ns()
            .run_async(move || {
                if backend == Backend::Userspace && !socket_answers(&name.to_string()) {
                    return Err(io::Error::from_raw_os_error(libc::ENODEV));
                }
                wireguard_control::Device::get(&name, backend.wg())
            })
            .await?;
        res.map_err(|source| TunnelError::Device {
            op: "read device",
            iface: self.iface.clone(),
            backend,
            source,
        })
    }

    /// Sends one update. Both wireguard-control backends create the device when it is missing
    /// (kernel: RTM_NEWLINK in the calling namespace; userspace: starts wireguard-go there);
    /// either would put a device with its UDP socket inside the namespace, so a missing device
    /// is ENODEV here and the next full sync re-creates it properly.
    pub(super) async fn apply(
        &mut self,
        update: DeviceUpdate,
        op: &'static str,
    ) -> Result<(), TunnelError> {
        self.check_socket_owner()?;
        let (name, backend, iface) = (self.wg_name, self.backend, self.iface.clone());
        let res = self
            .wg_ns()
            .run_async(move || {
                let present = match backend {
                    Backend::Userspace => socket_answers(&iface),
                    Backend::Kernel => nix::net::if_::if_nametoindex(iface.as_str()).is_ok(),
                };
                if !present {
                    return Err(io::Error::from_raw_os_error(libc::ENODEV));
                }
                update.apply(&name, backend.wg())
            })
            .await?;
        self.messages += self.backend.messages_per_update();
        res.map_err(|source| TunnelError::Device {
            op,
            iface: self.iface.clone(),
            backend: self.backend,
            source,
        })
    }

    pub(super) async fn read_peers(&self) -> Result<BTreeMap<PublicKey, CurrentPeer>, TunnelError> {
        let dev = self.get_device().await?;
        let mut peers = BTreeMap::new();
        for p in dev.peers {
            let key = PublicKey(p.config.public_key.0);
            let allowed_ips = p
                .config
                .allowed_ips
                .iter()
                .filter_map(|a| IpNet::new(a.address, a.cidr).ok())
                .map(|n| n.trunc())
                .collect();
            peers.insert(
                key,
                CurrentPeer {
                    endpoint: p.config.endpoint,
                    allowed_ips,
                    keepalive: p.config.persistent_keepalive_interval.filter(|k| *k != 0),
                    last_handshake: p.stats.last_handshake_time,
                },
            );
        }
        Ok(peers)
    }

    /// What a full sync would change now, without changing it (`sdnlinkd plan`): the peers
    /// read from the device, settled and diffed as [`Tunnel::sync`] does, nothing sent.
    pub async fn plan_full(&self, desired: &DesiredPeers) -> Result<Vec<String>, TunnelError> {
        let mut observed = self.state.clone();
        observed.observed(self.read_peers().await?);
        let own_addrs = self.host_addrs().await?;
        let facts = NodeFacts {
            local_key: Some(self.public),
            own_addrs: &own_addrs,
            current: &observed.peers,
        };
        let diff = observed.diff(&desired.settle(&facts), SystemTime::now());
        Ok(diff.changes.iter().map(|c| c.to_string()).collect())
    }

    /// Applies the difference between the device and `desired`, one peer per message (never
    /// replace-peers, which drops every session). Incremental (`full = false`): diffs against
    /// the last committed state without reading the device. Full: re-creates a device deleted
    /// out of band, re-reads the peers and repairs drift. Skipped peers are logged once. After an
    /// error (the device vanished, a namespace is gone) the next sync must be a full one.
    pub async fn sync(
        &mut self,
        desired: &DesiredPeers,
        full: bool,
    ) -> Result<TunnelReport, TunnelError> {
        let before = self.messages;
        let mut report = TunnelReport::default();
        self.reap_child();
        if full {
            report.recreated = self.ensure_device().await?;
            let peers = self.read_peers().await?;
            self.state.observed(peers);
            self.own_addrs = self.host_addrs().await?;
        }
        let facts = NodeFacts {
            local_key: Some(self.public),
            own_addrs: &self.own_addrs,
            current: &self.state.peers,
        };
        let desired = &desired.settle(&facts);
        self.names = desired
            .peers
            .iter()
            .map(|(k, p)| (*k, (p.cluster.clone(), p.node.clone())))
            .collect();
        for s in &desired.skipped {
            if !self.skipped.contains(s) {
                tracing::warn!(cluster = %s.cluster, node = %s.node, "{s}");
            }
        }
        self.skipped = desired.skipped.clone();
        let now = SystemTime::now();
        let diff = self.state.diff(desired, now);
        self.state.hold(&diff.held, now);
        for change in diff.changes {
            let line = change.to_string();
            let update = DeviceUpdate::new().add_peer(change.builder());
            match self.apply(update, "set peer").await {
                Ok(()) => {
                    tracing::info!(interface = %self.iface, "{line}");
                    report.plan.push(line);
                    report.count(&change);
                    change.apply_to(&mut self.state, now);
                }
                Err(TunnelError::Device { source, .. })
                    if source.raw_os_error() == Some(libc::ENODEV) =>
                {
                    // The device is gone: nothing else can apply; the next full sync rebuilds.
                    report.messages = self.messages - before;
                    return Err(TunnelError::Device {
                        op: "set peer",
                        iface: self.iface.clone(),
                        backend: self.backend,
                        source,
                    });
                }
                Err(e) => {
                    tracing::warn!(interface = %self.iface, "{line}: {e}");
                    report.failed.push(format!("{line}: {e}"));
                }
            }
        }
        self.state.finish(desired);
        report.messages = self.messages - before;
        Ok(report)
    }

    /// When a held keepalive (see [`KeepaliveHolds`]) falls due: the caller should sync then.
    /// Until it does, the keepalive is turned on by the next sync after that moment.
    pub fn next_wakeup(&self) -> Option<SystemTime> {
        self.state.holds.next_due()
    }
}
