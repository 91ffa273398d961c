//! The WireGuard device in sdnlinkd's namespace, its two backends, and peer sync.
//!
//! The device is created in the host namespace and then moved into sdnlinkd's namespace, so its
//! UDP socket stays on the host network while its plaintext side lives in the namespace
//! (wireguard.com/netns). Kernel WireGuard remembers the namespace it was created in for its
//! socket; wireguard-go runs as a process in the host namespace and only its TUN link moves.
//!
//! For wireguard-go the daemon creates the TUN itself (TUNSETIFF) and hands the file to it with
//! `WG_TUN_FD`, so the link exists, with our flags, before wireguard-go runs. The link cannot be
//! born inside sdnlinkd's namespace: wireguard-go 0.0.20220316's `CreateTUNFromFile` resolves
//! the link's index and sets its MTU by name with ioctls on sockets of its own (host) namespace
//! and exits with "Failed to create TUN device: no such device" when the link lives elsewhere
//! (checked on this machine). So the link is moved once wireguard-go has opened its UAPI socket,
//! i.e. once `CreateTUNFromFile` is done.

mod cleanup;
mod kernel;
mod probe;
mod sync;
mod userspace;

pub use cleanup::{cleanup, cleanup_in};
pub use kernel::ownership_mark;
pub use probe::TunnelProbe;

use kernel::{find_link, foreign_host, nl_io, rtnl, Link};
use userspace::{foreign_socket_owner, socket_answers, socket_path, stop_userspace, Supervised};

use crate::config::{Config, TunnelMode};
use crate::netns::NetNs;
use crate::tunnel::diff::{Committed, CurrentPeer, PeerChange};
use crate::tunnel::keys::{PrivateKey, PublicKey};
use crate::tunnel::{SkippedPeer, TunnelError};
use ipnet::IpNet;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr as _;
use wireguard_control::InterfaceName;

/// Where wireguard-go puts its UAPI sockets (and where wireguard-control looks first).
pub const UAPI_DIR: &str = "/var/run/wireguard";

/// Which WireGuard implementation drives the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The kernel module, configured over generic netlink.
    Kernel,
    /// A supervised wireguard-go process, configured over its UAPI socket.
    Userspace,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Kernel => "kernel",
            Backend::Userspace => "userspace",
        })
    }
}

impl Backend {
    /// Netlink or UAPI requests one device update costs. wireguard-control's kernel backend
    /// sends RTM_NEWLINK (to create the link, EEXIST ignored), CTRL_CMD_GETFAMILY (the
    /// family id is not cached) and WG_CMD_SET_DEVICE for every update; the userspace backend
    /// sends one UAPI `set` request.
    pub fn messages_per_update(self) -> u64 {
        match self {
            Backend::Kernel => 3,
            Backend::Userspace => 1,
        }
    }

    fn wg(self) -> wireguard_control::Backend {
        match self {
            Backend::Kernel => wireguard_control::Backend::Kernel,
            Backend::Userspace => wireguard_control::Backend::Userspace,
        }
    }
}

/// What one [`Tunnel::sync`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TunnelReport {
    /// The device was missing (deleted out of band) and was created again.
    pub recreated: bool,
    pub added: usize,
    pub updated: usize,
    pub removed: usize,
    /// Configuration messages sent to the device in this sync: UAPI `set` requests for the
    /// userspace backend, generic-netlink requests for the kernel backend.
    pub messages: u64,
    /// The applied plan, one line per change.
    pub plan: Vec<String>,
    /// Changes that failed, with the error; retried on the next sync.
    pub failed: Vec<String>,
}

impl TunnelReport {
    /// Configuration messages sent to the device (the figure that must stay O(1) per change).
    pub fn operations(&self) -> usize {
        usize::try_from(self.messages).unwrap_or(usize::MAX)
    }

    /// Counts a change the device accepted.
    fn count(&mut self, change: &PeerChange) {
        match change {
            PeerChange::Add { .. } => self.added += 1,
            PeerChange::Update { .. } => self.updated += 1,
            PeerChange::Remove { .. } => self.removed += 1,
        }
    }
}

/// What [`cleanup`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CleanupReport {
    /// The wireguard-go process stopped, if one served the interface.
    pub stopped_pid: Option<i32>,
    /// `namespace/interface` of each link deleted.
    pub deleted_links: Vec<String>,
    /// Links with the tunnel's name that sdnlinkd did not create, left alone (and why).
    pub kept_foreign: Vec<String>,
}

impl std::fmt::Display for CleanupReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if self.stopped_pid.is_none() && self.deleted_links.is_empty() {
            parts.push("nothing to remove".to_string());
        }
        if let Some(pid) = self.stopped_pid {
            parts.push(format!("stopped wireguard-go (pid {pid})"));
        }
        if !self.deleted_links.is_empty() {
            parts.push(format!("deleted {}", self.deleted_links.join(", ")));
        }
        for k in &self.kept_foreign {
            parts.push(format!("left alone: {k}"));
        }
        f.write_str(&parts.join("; "))
    }
}

/// One peer in `sdnlinkd status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerStatus {
    pub public_key: PublicKey,
    pub cluster: Option<String>,
    pub node: Option<String>,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
    /// Seconds since the latest handshake; `None` = never.
    pub latest_handshake_age_secs: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// The tunnel part of `sdnlinkd status`. Never contains the private key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TunnelStatus {
    pub backend: Backend,
    pub interface: String,
    pub public_key: PublicKey,
    pub listen_port: u16,
    pub peers: Vec<PeerStatus>,
    pub skipped: Vec<SkippedPeer>,
    /// Set when the device could not be read.
    pub error: Option<String>,
}

/// The WireGuard device and what sdnlinkd last committed to it.
pub struct Tunnel {
    backend: Backend,
    iface: String,
    wg_name: InterfaceName,
    host: NetNs,
    ns: NetNs,
    key: PrivateKey,
    public: PublicKey,
    listen_port: u16,
    mtu: u32,
    userspace_binary: PathBuf,
    /// The wireguard-go process this daemon started; a thread waits for it, so it never lingers
    /// as a zombie, whether or not this `Tunnel` still exists when it exits.
    child: Option<Supervised>,
    /// What the device holds as far as sdnlinkd knows (see [`Committed`]).
    state: Committed,
    /// cluster/node per key from the last desired peers, for status.
    names: BTreeMap<PublicKey, (String, String)>,
    skipped: Vec<SkippedPeer>,
    messages: u64,
    /// The host namespace's own addresses, read on every full sync, plus `tunnel.endpoint`.
    own_addrs: BTreeSet<IpAddr>,
    advertised: Option<SocketAddr>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("backend", &self.backend)
            .field("iface", &self.iface)
            .field("public_key", &self.public)
            .field("peers", &self.state.peers.len())
            .finish_non_exhaustive()
    }
}

impl Tunnel {
    /// Creates or adopts the device `cfg.tunnel.interface` in `ns` (created in `host` and moved),
    /// with the key, listen port and MTU of the config, up. An existing device with the same key
    /// is left alone, so peers keep their sessions. Must run inside a tokio runtime.
    pub async fn ensure(
        cfg: &Config,
        host: NetNs,
        ns: NetNs,
        key: PrivateKey,
    ) -> Result<Tunnel, TunnelError> {
        let iface = cfg.tunnel.interface.clone();
        let wg_name = InterfaceName::from_str(&iface)
            .map_err(|_| TunnelError::InterfaceName(iface.clone()))?;
        if iface.contains('/') || iface.chars().any(char::is_whitespace) {
            return Err(TunnelError::InterfaceName(iface));
        }
        let public = key.public_key();
        let mut tunnel = Tunnel {
            backend: Backend::Userspace,
            iface,
            wg_name,
            host,
            ns,
            key,
            public,
            listen_port: cfg.tunnel.listen_port,
            mtu: cfg.tunnel.mtu,
            userspace_binary: cfg.tunnel.userspace_binary.clone(),
            child: None,
            state: Committed::new(public),
            names: BTreeMap::new(),
            skipped: Vec::new(),
            messages: 0,
            own_addrs: BTreeSet::new(),
            advertised: cfg.tunnel.endpoint,
        };
        if let Some(w) = super::keepalive_warning(cfg.tunnel.persistent_keepalive) {
            tracing::warn!(interface = %tunnel.iface, "{w}");
        }
        tunnel.backend = match cfg.tunnel.mode {
            TunnelMode::Kernel => Backend::Kernel,
            TunnelMode::Userspace => Backend::Userspace,
            TunnelMode::Auto => {
                let chosen = tunnel.probe_backend().await?;
                tracing::info!(
                    interface = %tunnel.iface,
                    backend = %chosen,
                    "WireGuard mode auto: using the {chosen} backend"
                );
                chosen
            }
        };
        tunnel.ensure_device().await?;
        let peers = tunnel.read_peers().await?;
        tunnel.state.observed(peers);
        tunnel.own_addrs = tunnel.host_addrs().await?;
        Ok(tunnel)
    }

    /// Reads the device and reports it. The read runs on the namespace worker thread, so it
    /// never blocks an async worker.
    pub async fn status(&self) -> TunnelStatus {
        self.probe(self.wg_ns().clone()).status().await
    }

    /// Which of (`host`, `ns`) the device is read from: the namespace for the kernel backend,
    /// the host (where wireguard-go's control socket is) for userspace.
    pub fn status_namespace<'a>(&self, host: &'a NetNs, ns: &'a NetNs) -> &'a NetNs {
        match self.backend {
            Backend::Kernel => ns,
            Backend::Userspace => host,
        }
    }

    /// The subnets routed through the device: every allowed IP of every peer it has as of the
    /// last sync (desired ones, and those kept for clusters that have not listed yet), sorted.
    pub fn routes(&self) -> Vec<IpNet> {
        self.state.routes()
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Configuration messages sent since [`Tunnel::ensure`].
    pub fn messages_sent(&self) -> u64 {
        self.messages
    }

    /// The device's public key.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// The peers as last committed.
    pub fn committed(&self) -> &BTreeMap<PublicKey, CurrentPeer> {
        &self.state.peers
    }
}
