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

use super::diff::{CurrentPeer, KeepaliveHolds, PeerChange, PeerDiff};
use super::keys::{PrivateKey, PublicKey};
use super::{DesiredPeers, NodeFacts, SkippedPeer, TunnelError};
use crate::config::{Config, TunnelMode};
use crate::netns::NetNs;
use futures::TryStreamExt as _;
use ipnet::IpNet;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::{LinkUnspec, LinkWireguard};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd as _;
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::str::FromStr as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use wireguard_control::{DeviceUpdate, InterfaceName, PeerConfigBuilder};

/// Where wireguard-go puts its UAPI sockets (and where wireguard-control looks first).
pub const UAPI_DIR: &str = "/var/run/wireguard";

/// The descriptor number wireguard-go finds its TUN on (`WG_TUN_FD`, read by its main.go).
const TUN_FD: i32 = 3;

/// How long a freshly started wireguard-go gets to open its control socket.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// The peers as last committed (or read on a full sync).
    committed: BTreeMap<PublicKey, CurrentPeer>,
    /// The endpoint sdnlinkd last set per peer (see [`PeerDiff::compute`]).
    last_set: BTreeMap<PublicKey, Option<SocketAddr>>,
    /// cluster/node per key from the last desired peers, for status.
    names: BTreeMap<PublicKey, (String, String)>,
    skipped: Vec<SkippedPeer>,
    messages: u64,
    /// Which new peers get their keepalive later (see [`KeepaliveHolds`]).
    holds: KeepaliveHolds,
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
            .field("peers", &self.committed.len())
            .finish_non_exhaustive()
    }
}

/// A wireguard-go child and the slot its reaper thread fills with the exit status. The reaper
/// only waits: it never signals, so wireguard-go still outlives a `kill -9` of the daemon (the
/// thread dies with the daemon and init inherits the process).
struct Supervised {
    pid: u32,
    exited: Arc<Mutex<Option<ExitStatus>>>,
}

impl Supervised {
    fn watch(mut child: Child, iface: &str) -> Supervised {
        let pid = child.id();
        let exited = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&exited);
        let spawned = std::thread::Builder::new()
            .name(format!("reap-{iface}"))
            .spawn(move || {
                if let Ok(status) = child.wait() {
                    if let Ok(mut s) = slot.lock() {
                        *s = Some(status);
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(interface = %iface, pid, "cannot start the thread that reaps wireguard-go: {e}");
        }
        Supervised { pid, exited }
    }

    fn exit_status(&self) -> Option<ExitStatus> {
        self.exited.lock().ok().and_then(|s| *s)
    }
}

/// The pid serving `iface`'s UAPI socket, from the socket's peer credentials (SO_PEERCRED).
fn socket_owner(iface: &str) -> Option<i32> {
    let stream = UnixStream::connect(socket_path(iface)).ok()?;
    nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
        .ok()
        .map(|c| c.pid())
}

/// The pid serving `iface`'s control socket when it is a live process of another namespace
/// than `host` (wireguard-go's sockets in /run/wireguard are visible from every namespace).
fn foreign_socket_owner(iface: &str, host: &NetNs) -> Option<i32> {
    socket_owner(iface).filter(|pid| !in_namespace(*pid, host) && running(*pid))
}

/// Whether `pid` runs in the network namespace `host` (same nsfs inode). A process whose
/// namespace cannot be read (it exited meanwhile) is not.
fn in_namespace(pid: i32, host: &NetNs) -> bool {
    let want = host.file().metadata().map(|m| (m.dev(), m.ino()));
    let got = std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| (m.dev(), m.ino()));
    matches!((want, got), (Ok(a), Ok(b)) if a == b)
}

/// Creates the TUN link `name` in the calling thread's namespace, as wireguard-go's own
/// `CreateTUN` does, and returns its file. The flags are IFF_TUN alone, with the 4-byte packet
/// information header: wireguard-go 0.0.20220316's `CreateTUNFromFile` sets `nopi: false` and
/// reads and writes that header, so an IFF_NO_PI file makes it drop every packet ("Received
/// packet with unknown IP version", checked here; its own links show `pi on`). The link is not
/// persistent: it goes away with the last descriptor, i.e. when wireguard-go exits.
fn open_tun(name: &str) -> io::Result<OwnedFd> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: a valid C string; the result is checked before use.
    let raw = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` was just opened and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // struct ifreq: the name (IFNAMSIZ bytes, NUL-terminated), then the flags as a short.
    let mut ifr = [0u8; 40];
    ifr[..bytes.len()].copy_from_slice(bytes);
    let flags = libc::IFF_TUN as libc::c_short;
    ifr[libc::IFNAMSIZ..libc::IFNAMSIZ + 2].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `ifr` is large enough to hold.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, ifr.as_mut_ptr()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// The error for a host link with the tunnel's name that sdnlinkd did not create.
fn foreign_host(iface: &str, link: &Link) -> TunnelError {
    let kind = link
        .kind
        .as_ref()
        .map(|k| format!("{k:?}").to_lowercase())
        .unwrap_or_else(|| "unknown".into());
    TunnelError::ForeignHost {
        iface: iface.to_string(),
        why: match &link.alias {
            Some(a) => format!("kind {kind}, alias {a:?}"),
            None => format!("kind {kind}, no sdnlinkd mark"),
        },
    }
}

fn nl_io(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

/// An rtnetlink handle whose socket lives in `ns`. `NetNs::rtnetlink` builds the tokio socket on
/// the namespace worker thread, which has no tokio runtime, and panics there (killing the worker);
/// entering the caller's runtime on the worker first registers the socket with its reactor.
async fn rtnl(ns: &NetNs) -> Result<rtnetlink::Handle, TunnelError> {
    let rt = tokio::runtime::Handle::current();
    let made = ns
        .run_async(move || {
            let _guard = rt.enter();
            rtnetlink::new_connection()
        })
        .await?;
    let (conn, handle, _) = made.map_err(|source| TunnelError::Netlink {
        op: "open rtnetlink socket",
        iface: ns.name().to_string(),
        source,
    })?;
    tokio::spawn(conn);
    Ok(handle)
}

fn socket_path(iface: &str) -> PathBuf {
    Path::new(UAPI_DIR).join(format!("{iface}.sock"))
}

fn socket_answers(iface: &str) -> bool {
    UnixStream::connect(socket_path(iface)).is_ok()
}

/// A link found by name: index, kind and alias (IFLA_IFALIAS, where sdnlinkd marks the links it
/// creates in the host namespace).
#[derive(Clone, Debug)]
struct Link {
    index: u32,
    kind: Option<InfoKind>,
    alias: Option<String>,
}

/// The alias sdnlinkd gives a tunnel link it creates in the host namespace, before moving it into
/// `ns`: the only proof that a host link with the tunnel's name is ours (a link keeps its alias
/// across namespaces).
pub fn ownership_mark(ns: &str) -> String {
    format!("sdnlinkd tunnel of netns {ns}")
}

/// The link named `name` in the namespace behind `handle`.
async fn find_link(handle: &rtnetlink::Handle, name: &str) -> Result<Option<Link>, TunnelError> {
    let res = handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await;
    match res {
        Ok(Some(msg)) => Ok(Some(Link {
            index: msg.header.index,
            kind: link_kind(&msg),
            alias: msg.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfAlias(s) => Some(s.clone()),
                _ => None,
            }),
        })),
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(TunnelError::Netlink {
            op: "get link",
            iface: name.to_string(),
            source: nl_io(e),
        }),
    }
}

fn link_kind(msg: &LinkMessage) -> Option<InfoKind> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k.clone()),
            _ => None,
        }),
        _ => None,
    })
}

/// What creating a kernel WireGuard link did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KernelLink {
    Created,
    /// A link with the name exists already (someone else's, unless it carries our mark).
    Exists,
    /// The kernel has no WireGuard support (no module: EOPNOTSUPP from rtnl_newlink's missing
    /// link ops).
    Unsupported,
}

/// Creates a kernel WireGuard link in the namespace behind `handle`.
async fn create_kernel_link(
    handle: &rtnetlink::Handle,
    name: &str,
) -> Result<KernelLink, TunnelError> {
    match handle
        .link()
        .add(LinkWireguard::new(name).build())
        .execute()
        .await
    {
        Ok(()) => Ok(KernelLink::Created),
        Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::EEXIST => {
            Ok(KernelLink::Exists)
        }
        Err(rtnetlink::Error::NetlinkError(m))
            if [-libc::EOPNOTSUPP, -libc::ENODEV, -libc::ENOENT].contains(&m.raw_code()) =>
        {
            Ok(KernelLink::Unsupported)
        }
        Err(e) => Err(TunnelError::Netlink {
            op: "create wireguard link",
            iface: name.to_string(),
            source: nl_io(e),
        }),
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
            committed: BTreeMap::new(),
            last_set: BTreeMap::new(),
            names: BTreeMap::new(),
            skipped: Vec::new(),
            messages: 0,
            holds: KeepaliveHolds::new(public),
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
        tunnel.committed = tunnel.read_peers().await?;
        tunnel.own_addrs = tunnel.host_addrs().await?;
        Ok(tunnel)
    }

    /// Every address of the host namespace (where the WireGuard socket lives), broadcast
    /// addresses included, and the advertised endpoint's address: a remote that announces one of
    /// them as its endpoint would have this node send handshakes to itself.
    async fn host_addrs(&self) -> Result<BTreeSet<IpAddr>, TunnelError> {
        use rtnetlink::packet_route::address::AddressAttribute;
        let hh = rtnl(&self.host).await?;
        let mut stream = hh.address().get().execute();
        let mut out: BTreeSet<IpAddr> = self
            .advertised
            .map(|e| e.ip().to_canonical())
            .into_iter()
            .collect();
        loop {
            match stream.try_next().await {
                Ok(Some(msg)) => {
                    for a in msg.attributes {
                        match a {
                            AddressAttribute::Address(ip) | AddressAttribute::Local(ip) => {
                                out.insert(ip.to_canonical());
                            }
                            AddressAttribute::Broadcast(ip) => {
                                out.insert(IpAddr::V4(ip));
                            }
                            _ => {}
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(TunnelError::Netlink {
                        op: "list host addresses",
                        iface: self.iface.clone(),
                        source: nl_io(e),
                    })
                }
            }
        }
        Ok(out)
    }

    /// The host link with the tunnel's name, if any, provided sdnlinkd made it (it carries our
    /// mark); any other is someone else's and is never moved, configured or deleted.
    async fn own_host_link(&self, hh: &rtnetlink::Handle) -> Result<Option<Link>, TunnelError> {
        let Some(link) = find_link(hh, &self.iface).await? else {
            return Ok(None);
        };
        let mark = ownership_mark(self.ns.name());
        if link.alias.as_deref() == Some(mark.as_str()) {
            Ok(Some(link))
        } else {
            Err(foreign_host(&self.iface, &link))
        }
    }

    /// Marks the link just created in the host namespace as ours.
    async fn created_in_host(&self, hh: &rtnetlink::Handle) -> Result<(), TunnelError> {
        let Some(link) = find_link(hh, &self.iface).await? else {
            return Err(TunnelError::Netlink {
                op: "find the new link in the host namespace",
                iface: self.iface.clone(),
                source: io::Error::from_raw_os_error(libc::ENODEV),
            });
        };
        self.mark_host_link(hh, link.index).await
    }

    /// Marks the host link `index` as ours (see [`ownership_mark`]).
    async fn mark_host_link(&self, hh: &rtnetlink::Handle, index: u32) -> Result<(), TunnelError> {
        let mut msg = LinkUnspec::new_with_index(index).build();
        msg.attributes
            .push(LinkAttribute::IfAlias(ownership_mark(self.ns.name())));
        hh.link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| TunnelError::Netlink {
                op: "mark link as sdnlinkd's (alias)",
                iface: self.iface.clone(),
                source: nl_io(e),
            })
    }

    /// Auto mode: an existing device decides; otherwise creating the kernel link in the host
    /// namespace is the probe (and, when it works, the device).
    async fn probe_backend(&self) -> Result<Backend, TunnelError> {
        let nsh = rtnl(&self.ns).await?;
        if let Some(link) = find_link(&nsh, &self.iface).await? {
            return Ok(if link.kind == Some(InfoKind::Wireguard) {
                Backend::Kernel
            } else {
                Backend::Userspace
            });
        }
        let hh = rtnl(&self.host).await?;
        if let Some(link) = self.own_host_link(&hh).await? {
            // Our own leftover, created but not yet moved when the daemon stopped.
            return Ok(if link.kind == Some(InfoKind::Wireguard) {
                Backend::Kernel
            } else {
                Backend::Userspace
            });
        }
        if socket_answers(&self.iface) {
            return Ok(Backend::Userspace);
        }
        match create_kernel_link(&hh, &self.iface).await? {
            KernelLink::Created => {
                self.created_in_host(&hh).await?;
                Ok(Backend::Kernel)
            }
            KernelLink::Exists => match find_link(&hh, &self.iface).await? {
                Some(link) => Err(foreign_host(&self.iface, &link)),
                None => Ok(Backend::Userspace),
            },
            KernelLink::Unsupported => Ok(Backend::Userspace),
        }
    }

    /// Makes sure the device exists in the namespace, is up with our MTU, key and port.
    /// Returns true when it had to be created or moved.
    async fn ensure_device(&mut self) -> Result<bool, TunnelError> {
        let nsh = rtnl(&self.ns).await?;
        let mut created = false;
        let index = match find_link(&nsh, &self.iface).await? {
            Some(Link {
                index: idx, kind, ..
            }) => {
                let ours = match self.backend {
                    Backend::Kernel => kind == Some(InfoKind::Wireguard),
                    Backend::Userspace => kind == Some(InfoKind::Tun) && self.adoptable()?,
                };
                if !ours {
                    return Err(TunnelError::Foreign {
                        iface: self.iface.clone(),
                        ns: self.ns.name().to_string(),
                        backend: self.backend,
                    });
                }
                idx
            }
            None => {
                created = true;
                let hh = rtnl(&self.host).await?;
                // A host link with our name that we did not make is someone else's device:
                // never moved into our namespace (this errors out naming it).
                let leftover = self.own_host_link(&hh).await?;
                match self.backend {
                    Backend::Kernel if leftover.is_some() => {}
                    Backend::Kernel => match create_kernel_link(&hh, &self.iface).await? {
                        KernelLink::Created => self.created_in_host(&hh).await?,
                        KernelLink::Exists => {
                            // Appeared since we looked: someone else's.
                            return Err(match find_link(&hh, &self.iface).await? {
                                Some(link) => foreign_host(&self.iface, &link),
                                None => TunnelError::Netlink {
                                    op: "create wireguard link (kernel backend)",
                                    iface: self.iface.clone(),
                                    source: io::Error::from_raw_os_error(libc::EEXIST),
                                },
                            });
                        }
                        KernelLink::Unsupported => {
                            return Err(TunnelError::Netlink {
                                op: "create wireguard link (kernel backend)",
                                iface: self.iface.clone(),
                                source: io::Error::from_raw_os_error(libc::EOPNOTSUPP),
                            });
                        }
                    },
                    Backend::Userspace => {
                        if self.adoptable()? && leftover.is_none() {
                            // Its link was deleted out of band and it has not exited yet: a
                            // wireguard-go without a TUN is useless, start a fresh one.
                            let _ = stop_userspace(&self.iface, &self.userspace_binary, &self.host)
                                .await;
                            self.reap_child();
                        }
                        self.ensure_userspace_process().await?;
                        if leftover.is_none() {
                            self.created_in_host(&hh).await?;
                        }
                    }
                }
                let Some(Link { index: hidx, .. }) = self.own_host_link(&hh).await? else {
                    return Err(TunnelError::Netlink {
                        op: "find the new link in the host namespace",
                        iface: self.iface.clone(),
                        source: io::Error::from_raw_os_error(libc::ENODEV),
                    });
                };
                let fd = self.ns.file().as_raw_fd();
                hh.link()
                    .set(LinkUnspec::new_with_index(hidx).setns_by_fd(fd).build())
                    .execute()
                    .await
                    .map_err(|e| TunnelError::Netlink {
                        op: "move link into the namespace",
                        iface: self.iface.clone(),
                        source: nl_io(e),
                    })?;
                tracing::info!(interface = %self.iface, backend = %self.backend, ns = %self.ns.name(),
                    "created WireGuard device and moved it into the namespace");
                match find_link(&nsh, &self.iface).await? {
                    Some(link) => link.index,
                    None => {
                        return Err(TunnelError::Netlink {
                            op: "find the moved link in the namespace",
                            iface: self.iface.clone(),
                            source: io::Error::from_raw_os_error(libc::ENODEV),
                        })
                    }
                }
            }
        };
        nsh.link()
            .set(LinkUnspec::new_with_index(index).mtu(self.mtu).up().build())
            .execute()
            .await
            .map_err(|e| TunnelError::Netlink {
                op: "set MTU and up",
                iface: self.iface.clone(),
                source: nl_io(e),
            })?;

        let dev = self.get_device().await?;
        let mut update = DeviceUpdate::new();
        let mut needed = false;
        if dev.public_key.as_ref().map(|k| k.0) != Some(self.public.0) {
            update = update.set_private_key(self.key.to_wg());
            needed = true;
        }
        if dev.listen_port != Some(self.listen_port) {
            update = update.set_listen_port(self.listen_port);
            needed = true;
        }
        // `dev` holds the private key: it goes out of scope here, never into a log.
        drop(dev);
        if needed {
            self.apply(update, "set key and listen port").await?;
        }
        if self.backend == Backend::Userspace {
            self.ensure_userspace_up(&nsh, index).await?;
        }
        if created {
            self.committed.clear();
            self.last_set.clear();
        }
        Ok(created)
    }

    /// wireguard-go follows its link's up/down state from two sources: rtnetlink events in its
    /// own (host) namespace, and once a second a zero-length write to the TUN (its
    /// cross-namespace "hack listener", which only reports changes). Moving the link out of the
    /// host namespace emits a "down" event there; if wireguard-go reads that event after the
    /// hack listener already reported "up", it stays down for good. A device that is up has its
    /// UDP socket bound on the listen port, so that is checked, and the link bounced (down long
    /// enough for the hack listener to see it) when it is not.
    async fn ensure_userspace_up(
        &self,
        nsh: &rtnetlink::Handle,
        index: u32,
    ) -> Result<(), TunnelError> {
        if self.wait_userspace_bound(Duration::from_secs(3)).await {
            return Ok(());
        }
        tracing::warn!(interface = %self.iface, "wireguard-go missed its link coming up; bouncing the link");
        for up in [false, true] {
            let msg = LinkUnspec::new_with_index(index);
            let msg = if up { msg.up() } else { msg.down() };
            nsh.link()
                .set(msg.build())
                .execute()
                .await
                .map_err(|e| TunnelError::Netlink {
                    op: "bounce link",
                    iface: self.iface.clone(),
                    source: nl_io(e),
                })?;
            if !up {
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
        }
        if !self.wait_userspace_bound(Duration::from_secs(3)).await {
            tracing::warn!(interface = %self.iface, port = self.listen_port,
                "wireguard-go still has no UDP socket on its listen port");
        }
        Ok(())
    }

    async fn wait_userspace_bound(&self, within: Duration) -> bool {
        let start = Instant::now();
        loop {
            if udp_port_bound(&self.iface, self.listen_port) {
                return true;
            }
            if start.elapsed() > within {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether a running wireguard-go may be adopted: its control socket answers and the process
    /// behind it runs in our host namespace. The socket path is shared by all namespaces, so a
    /// wireguard-go of another node (a lab node, a container) can answer it; adopting that one
    /// would configure someone else's device, so it is an error naming the interface and pid.
    fn adoptable(&self) -> Result<bool, TunnelError> {
        let Some(pid) = socket_owner(&self.iface) else {
            return Ok(false);
        };
        if in_namespace(pid, &self.host) {
            Ok(true)
        } else if running(pid) {
            Err(TunnelError::OtherNamespace {
                iface: self.iface.clone(),
                pid,
            })
        } else {
            Ok(false)
        }
    }

    /// Userspace backend: adopt a running wireguard-go of our host namespace whose socket
    /// answers, or create the TUN link and start wireguard-go on it, in the host namespace and
    /// in its own process group, so that it outlives a `kill -9` of the daemon (the device and
    /// its sessions must survive restarts).
    async fn ensure_userspace_process(&mut self) -> Result<(), TunnelError> {
        if self.adoptable()? {
            return Ok(());
        }
        let sock = socket_path(&self.iface);
        // A socket file nobody listens on is left by a killed wireguard-go; it would make the
        // new one fail to bind.
        let _ = std::fs::remove_file(&sock);
        let binary = self.userspace_binary.clone();
        let iface = self.iface.clone();
        let spawned = self
            .host
            .run_async(move || {
                std::fs::create_dir_all(UAPI_DIR)?;
                let tun = open_tun(&iface)?;
                let raw = tun.as_raw_fd();
                let mut cmd = Command::new(&binary);
                cmd.arg("-f")
                    .arg(&iface)
                    .env("WG_PROCESS_FOREGROUND", "1")
                    .env("WG_TUN_FD", TUN_FD.to_string())
                    // Null, not pipes: Go dies of SIGPIPE writing to a closed stdout/stderr,
                    // which a pipe to a restarted daemon would be.
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .process_group(0);
                // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
                unsafe {
                    cmd.pre_exec(move || {
                        // dup2 clears FD_CLOEXEC on the copy; when the file already is fd 3,
                        // dup2 does nothing and the flag must be cleared by hand.
                        let rc = if raw == TUN_FD {
                            libc::fcntl(raw, libc::F_SETFD, 0)
                        } else {
                            libc::dup2(raw, TUN_FD)
                        };
                        if rc < 0 {
                            return Err(io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                // Our copy of the descriptor closes with `tun` here: wireguard-go holds the only
                // one, so the link goes away with it rather than outliving it unserved.
                cmd.spawn()
            })
            .await?;
        let child = spawned.map_err(|source| TunnelError::Spawn {
            binary: self.userspace_binary.display().to_string(),
            iface: self.iface.clone(),
            source,
        })?;
        tracing::info!(interface = %self.iface, pid = child.id(), binary = %self.userspace_binary.display(),
            "started userspace WireGuard on a TUN it was handed");
        self.child = Some(Supervised::watch(child, &self.iface));
        let start = Instant::now();
        while !socket_answers(&self.iface) {
            if let Some(status) = self.child.as_ref().and_then(Supervised::exit_status) {
                self.child = None;
                return Err(TunnelError::Spawn {
                    binary: self.userspace_binary.display().to_string(),
                    iface: self.iface.clone(),
                    source: io::Error::other(format!("exited at start with {status}")),
                });
            }
            if start.elapsed() > SPAWN_TIMEOUT {
                return Err(TunnelError::SocketTimeout {
                    binary: self.userspace_binary.display().to_string(),
                    iface: self.iface.clone(),
                    socket: sock.display().to_string(),
                    secs: SPAWN_TIMEOUT.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// The namespace wireguard-control must be called from: the kernel backend talks generic
    /// netlink in the calling thread's namespace (the device is in `ns`); the userspace backend
    /// talks to a socket file, and runs in the host namespace so that nothing it might start
    /// lands in `ns`.
    fn wg_ns(&self) -> &NetNs {
        match self.backend {
            Backend::Kernel => &self.ns,
            Backend::Userspace => &self.host,
        }
    }

    /// Userspace backend: the UAPI socket path is shared by every namespace, so before talking
    /// to it, check that the process behind it is in our host namespace (ours, or adopted as
    /// ours); another node's wireguard-go is never read or configured.
    fn check_socket_owner(&self) -> Result<(), TunnelError> {
        if self.backend != Backend::Userspace {
            return Ok(());
        }
        match foreign_socket_owner(&self.iface, &self.host) {
            Some(pid) => Err(TunnelError::OtherNamespace {
                iface: self.iface.clone(),
                pid,
            }),
            None => Ok(()),
        }
    }

    async fn get_device(&self) -> Result<wireguard_control::Device, TunnelError> {
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
    async fn apply(&mut self, update: DeviceUpdate, op: &'static str) -> Result<(), TunnelError> {
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

    async fn read_peers(&self) -> Result<BTreeMap<PublicKey, CurrentPeer>, TunnelError> {
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
        let current = self.read_peers().await?;
        let own_addrs = self.host_addrs().await?;
        let facts = NodeFacts {
            local_key: Some(self.public),
            own_addrs: &own_addrs,
            current: &current,
        };
        let settled = desired.settle(&facts);
        let diff = PeerDiff::compute(
            &current,
            &settled,
            &self.last_set,
            &self.holds,
            SystemTime::now(),
        );
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
            self.committed = self.read_peers().await?;
            self.own_addrs = self.host_addrs().await?;
        }
        let facts = NodeFacts {
            local_key: Some(self.public),
            own_addrs: &self.own_addrs,
            current: &self.committed,
        };
        let settled = desired.settle(&facts);
        let desired = &settled;
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
        let diff = PeerDiff::compute(&self.committed, desired, &self.last_set, &self.holds, now);
        for (key, d) in &diff.held {
            self.holds.until.insert(*key, now + *d);
        }
        for change in diff.changes {
            let line = change.to_string();
            let key = *change.key();
            let update = match &change {
                PeerChange::Add {
                    key,
                    peer,
                    keepalive_after,
                } => {
                    let mut b = PeerConfigBuilder::new(&key.to_wg()).replace_allowed_ips();
                    if let Some(e) = peer.endpoint {
                        b = b.set_endpoint(e);
                    }
                    let keepalive = match keepalive_after {
                        Some(_) => 0,
                        None => peer.keepalive.unwrap_or(0),
                    };
                    b = b.set_persistent_keepalive_interval(keepalive);
                    for n in &peer.allowed_ips {
                        b = b.add_allowed_ip(n.addr(), n.prefix_len());
                    }
                    b
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
                    if let Some(nets) = allowed_ips {
                        b = b.replace_allowed_ips();
                        for n in nets {
                            b = b.add_allowed_ip(n.addr(), n.prefix_len());
                        }
                    }
                    b
                }
                PeerChange::Remove { key } => PeerConfigBuilder::new(&key.to_wg()).remove(),
            };
            match self
                .apply(DeviceUpdate::new().add_peer(update), "set peer")
                .await
            {
                Ok(()) => {
                    tracing::info!(interface = %self.iface, "{line}");
                    report.plan.push(line);
                    match change {
                        PeerChange::Add {
                            peer,
                            keepalive_after,
                            ..
                        } => {
                            report.added += 1;
                            let mut applied = CurrentPeer::from_desired(&peer, peer.endpoint);
                            if let Some(d) = keepalive_after {
                                applied.keepalive = None;
                                self.holds.until.insert(key, now + d);
                            }
                            self.committed.insert(key, applied);
                            self.last_set.insert(key, peer.endpoint);
                        }
                        PeerChange::Update {
                            endpoint,
                            allowed_ips,
                            keepalive,
                            ..
                        } => {
                            report.updated += 1;
                            if let Some(c) = self.committed.get_mut(&key) {
                                if let Some(e) = endpoint {
                                    c.endpoint = Some(e);
                                }
                                if let Some(n) = allowed_ips {
                                    c.allowed_ips = n.into_iter().collect();
                                }
                                if let Some(k) = keepalive {
                                    c.keepalive = k;
                                    self.holds.until.remove(&key);
                                }
                            }
                        }
                        PeerChange::Remove { .. } => {
                            report.removed += 1;
                            self.committed.remove(&key);
                            self.last_set.remove(&key);
                            self.holds.until.remove(&key);
                        }
                    }
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
        // What we want is what we last asked for, whether or not this sync had to send it: a
        // roamed endpoint of an adopted peer is kept until the desired endpoint itself changes.
        for (key, p) in &desired.peers {
            if self.committed.contains_key(key) {
                self.last_set.insert(*key, p.endpoint);
            }
        }
        let committed = &self.committed;
        self.holds.until.retain(|k, _| committed.contains_key(k));
        report.messages = self.messages - before;
        Ok(report)
    }

    /// When a held keepalive (see [`KeepaliveHolds`]) falls due: the caller should sync then.
    /// Until it does, the keepalive is turned on by the next sync after that moment.
    pub fn next_wakeup(&self) -> Option<SystemTime> {
        self.holds.next_due()
    }

    fn reap_child(&mut self) {
        if let Some(child) = self.child.as_ref() {
            if let Some(status) = child.exit_status() {
                tracing::warn!(interface = %self.iface, pid = child.pid, "userspace WireGuard exited with {status}; the next full sync restarts it");
                self.child = None;
            }
        }
    }

    /// The pid of the wireguard-go this `Tunnel` started, while it runs (`None` for the kernel
    /// backend, and for an adopted process).
    pub fn child_pid(&self) -> Option<u32> {
        self.child
            .as_ref()
            .filter(|c| c.exit_status().is_none())
            .map(|c| c.pid)
    }

    /// Reads the device and reports it. The read runs on the namespace worker thread, so it
    /// never blocks an async worker.
    pub async fn status(&self) -> TunnelStatus {
        self.probe(self.wg_ns().clone()).status().await
    }

    /// A read-only handle for status that reads the device through `ns` (a handle on the
    /// namespace the device is read from, see [`Tunnel::status_namespace`]), with the names of
    /// the last sync.
    pub fn probe(&self, ns: NetNs) -> TunnelProbe {
        TunnelProbe {
            ns,
            wg_name: self.wg_name,
            backend: self.backend,
            iface: self.iface.clone(),
            public: self.public,
            listen_port: self.listen_port,
            names: self.names.clone(),
            skipped: self.skipped.clone(),
        }
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
        let set: BTreeSet<IpNet> = self
            .committed
            .values()
            .flat_map(|p| p.allowed_ips.iter().copied())
            .collect();
        set.into_iter().collect()
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
        &self.committed
    }
}

/// Stops the wireguard-go serving `iface`, found through its control socket's peer credentials
/// (no pid file to go stale), and only if that process runs `binary` in the namespace `host`:
/// never signal a process sdnlinkd did not start, nor another node's. SIGTERM, then SIGKILL
/// after 5 s.
async fn stop_userspace(iface: &str, binary: &Path, host: &NetNs) -> Option<i32> {
    let owner = socket_owner(iface)?;
    let exe = std::fs::read_link(format!("/proc/{owner}/exe")).ok();
    let expected = std::fs::canonicalize(binary).ok();
    if exe.is_none() || exe != expected {
        tracing::warn!(interface = %iface, pid = owner, "control socket is served by another program; not stopping it");
        return None;
    }
    if !in_namespace(owner, host) {
        tracing::warn!(interface = %iface, pid = owner, "control socket is served by a process of another network namespace; not stopping it");
        return None;
    }
    use nix::sys::signal::{kill, Signal};
    let pid = nix::unistd::Pid::from_raw(owner);
    let _ = kill(pid, Signal::SIGTERM);
    let start = Instant::now();
    while running(owner) {
        if start.elapsed() > Duration::from_secs(5) {
            let _ = kill(pid, Signal::SIGKILL);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Some(owner)
}

/// Whether the wireguard-go serving `iface` has a UDP socket bound on `port`, read from
/// `/proc/<pid>/net/udp{,6}` (the tables of that process's namespace).
fn udp_port_bound(iface: &str, port: u16) -> bool {
    let Ok(stream) = UnixStream::connect(socket_path(iface)) else {
        return false;
    };
    let Ok(cred) =
        nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
    else {
        return false;
    };
    let needle = format!(":{port:04X}");
    ["udp", "udp6"].iter().any(|t| {
        std::fs::read_to_string(format!("/proc/{}/net/{t}", cred.pid()))
            .map(|text| {
                text.lines()
                    .skip(1)
                    .filter_map(|l| l.split_whitespace().nth(1))
                    .any(|local| local.ends_with(&needle))
            })
            .unwrap_or(false)
    })
}

/// Whether `pid` exists and is not a zombie (a zombie child of this process has exited; it is
/// reaped with its `Child`).
fn running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself contain ") ".
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

/// `sdnlinkd cleanup`: removes the device of `cfg.tunnel.interface` from the host namespace and
/// from sdnlinkd's namespace (when it still exists), and stops the wireguard-go serving it.
pub async fn cleanup(cfg: &Config) -> Result<CleanupReport, TunnelError> {
    let host = NetNs::current()?;
    let ns = NetNs::open(&cfg.namespace.name).ok();
    cleanup_in(cfg, &host, ns.as_ref()).await
}

/// Removes the device: stops the wireguard-go process serving `cfg.tunnel.interface` (found
/// through its control socket's peer credentials, so no pid file is needed) and deletes the link
/// from `ns` and the host namespace. Idempotent: "already gone" is success.
pub async fn cleanup_in(
    cfg: &Config,
    host: &NetNs,
    ns: Option<&NetNs>,
) -> Result<CleanupReport, TunnelError> {
    let mut report = CleanupReport::default();
    let iface = cfg.tunnel.interface.as_str();
    let sock = socket_path(iface);
    let hh = rtnl(host).await?;
    let nsh = match ns {
        Some(n) => Some(rtnl(n).await?),
        None => None,
    };
    let mark = ownership_mark(ns.map_or(cfg.namespace.name.as_str(), |n| n.name()));
    let host_link = find_link(&hh, iface).await?;
    let ns_link = match &nsh {
        Some(h) => find_link(h, iface).await?,
        None => None,
    };
    let host_foreign = host_link
        .as_ref()
        .filter(|l| l.alias.as_deref() != Some(mark.as_str()));
    if let Some(l) = host_foreign {
        report.kept_foreign.push(foreign_host(iface, l).to_string());
    }
    // The wireguard-go behind the socket serves a host link of that name that is not ours,
    // unless our namespace has the device: then it is ours.
    let ours_served = host_foreign.is_none() || ns_link.is_some();
    if ours_served {
        report.stopped_pid = stop_userspace(iface, &cfg.tunnel.userspace_binary, host).await;
    }
    let deletable = |l: &Link| matches!(l.kind, Some(InfoKind::Wireguard) | Some(InfoKind::Tun));
    let mut targets: Vec<(&rtnetlink::Handle, &NetNs, u32)> = Vec::new();
    if let Some(l) = host_link
        .as_ref()
        .filter(|l| host_foreign.is_none() && deletable(l))
    {
        targets.push((&hh, host, l.index));
    }
    if let (Some(h), Some(n), Some(l)) = (&nsh, ns, ns_link.as_ref().filter(|l| deletable(l))) {
        // Our namespace holds only what sdnlinkd put there.
        targets.push((h, n, l.index));
    }
    for (h, space, idx) in targets {
        match h.link().del(idx).execute().await {
            Ok(()) => report
                .deleted_links
                .push(format!("{}/{iface}", space.name())),
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::ENODEV => {}
            Err(e) => {
                return Err(TunnelError::Netlink {
                    op: "delete link",
                    iface: iface.to_string(),
                    source: nl_io(e),
                })
            }
        }
    }
    if !socket_answers(iface) {
        let _ = std::fs::remove_file(&sock);
    }
    Ok(report)
}

/// A read-only view of the tunnel for `sdnlinkd status`, independent of the reconcile task.
#[derive(Clone)]
pub struct TunnelProbe {
    ns: NetNs,
    wg_name: InterfaceName,
    backend: Backend,
    iface: String,
    public: PublicKey,
    listen_port: u16,
    names: BTreeMap<PublicKey, (String, String)>,
    skipped: Vec<SkippedPeer>,
}

impl TunnelProbe {
    /// Reads the device and reports it (on the probe's namespace thread).
    pub async fn status(&self) -> TunnelStatus {
        let (name, backend) = (self.wg_name, self.backend);
        let mut status = TunnelStatus {
            backend: self.backend,
            interface: self.iface.clone(),
            public_key: self.public,
            listen_port: self.listen_port,
            peers: Vec::new(),
            skipped: self.skipped.clone(),
            error: None,
        };
        // A socket of our name served from another namespace is not our device (the probe's
        // namespace is the host one for the userspace backend).
        let foreign = match backend {
            Backend::Userspace => foreign_socket_owner(&self.iface, &self.ns),
            Backend::Kernel => None,
        };
        if let Some(pid) = foreign {
            let iface = self.iface.clone();
            status.error = Some(TunnelError::OtherNamespace { iface, pid }.to_string());
            return status;
        }
        let read = self
            .ns
            .run_async(move || {
                if backend == Backend::Userspace && !socket_answers(&name.to_string()) {
                    return Err(io::Error::from_raw_os_error(libc::ENODEV));
                }
                wireguard_control::Device::get(&name, backend.wg())
            })
            .await;
        let dev = match read {
            Ok(Ok(dev)) => dev,
            Ok(Err(source)) => {
                let e = TunnelError::Device {
                    op: "read device",
                    iface: self.iface.clone(),
                    backend,
                    source,
                };
                status.error = Some(e.to_string());
                return status;
            }
            Err(e) => {
                status.error = Some(e.to_string());
                return status;
            }
        };
        if let Some(p) = dev.listen_port {
            status.listen_port = p;
        }
        let now = SystemTime::now();
        for p in dev.peers {
            let key = PublicKey(p.config.public_key.0);
            let names = self.names.get(&key);
            status.peers.push(PeerStatus {
                public_key: key,
                cluster: names.map(|n| n.0.clone()),
                node: names.map(|n| n.1.clone()),
                endpoint: p.config.endpoint,
                allowed_ips: p
                    .config
                    .allowed_ips
                    .iter()
                    .filter_map(|a| IpNet::new(a.address, a.cidr).ok())
                    .collect(),
                latest_handshake_age_secs: p
                    .stats
                    .last_handshake_time
                    .map(|t| now.duration_since(t).map(|d| d.as_secs()).unwrap_or(0)),
                rx_bytes: p.stats.rx_bytes,
                tx_bytes: p.stats.tx_bytes,
            });
        }
        status.peers.sort_by_key(|p| p.public_key);
        status
    }
}
