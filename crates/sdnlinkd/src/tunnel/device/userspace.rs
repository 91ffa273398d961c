//! The userspace backend: wireguard-go started on a TUN it is handed, supervised, adopted
//! across restarts, and never confused with another namespace's process.

use super::*;
use crate::netns::NetNs;
use crate::tunnel::TunnelError;
use rtnetlink::LinkUnspec;
use std::io;
use std::os::fd::AsRawFd as _;
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The descriptor number wireguard-go finds its TUN on (`WG_TUN_FD`, read by its main.go).
pub(super) const TUN_FD: i32 = 3;

/// How long a freshly started wireguard-go gets to open its control socket.
pub(super) const SPAWN_TIMEOUT: Duration = Duration::from_secs(10);

/// A wireguard-go child and the slot its reaper thread fills with the exit status. The reaper
/// only waits: it never signals, so wireguard-go still outlives a `kill -9` of the daemon (the
/// thread dies with the daemon and init inherits the process).
pub(super) struct Supervised {
    pid: u32,
    exited: Arc<Mutex<Option<ExitStatus>>>,
}

impl Supervised {
    pub(super) fn watch(mut child: Child, iface: &str) -> Supervised {
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

    pub(super) fn exit_status(&self) -> Option<ExitStatus> {
        self.exited.lock().ok().and_then(|s| *s)
    }
}

/// The pid serving `iface`'s UAPI socket, from the socket's peer credentials (SO_PEERCRED).
pub(super) fn socket_owner(iface: &str) -> Option<i32> {
    let stream = UnixStream::connect(socket_path(iface)).ok()?;
    nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
        .ok()
        .map(|c| c.pid())
}

/// The pid serving `iface`'s control socket when it is a live process of another namespace
/// than `host` (wireguard-go's sockets in /run/wireguard are visible from every namespace).
pub(super) fn foreign_socket_owner(iface: &str, host: &NetNs) -> Option<i32> {
    socket_owner(iface).filter(|pid| !in_namespace(*pid, host) && running(*pid))
}

/// Whether `pid` runs in the network namespace `host` (same nsfs inode). A process whose
/// namespace cannot be read (it exited meanwhile) is not.
pub(super) fn in_namespace(pid: i32, host: &NetNs) -> bool {
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
pub(super) fn open_tun(name: &str) -> io::Result<OwnedFd> {
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

pub(super) fn socket_path(iface: &str) -> PathBuf {
    Path::new(UAPI_DIR).join(format!("{iface}.sock"))
}

pub(super) fn socket_answers(iface: &str) -> bool {
    UnixStream::connect(socket_path(iface)).is_ok()
}

impl Tunnel {
    /// wireguard-go follows its link's up/down state from two sources: rtnetlink events in its
    /// own (host) namespace, and once a second a zero-length write to the TUN (its
    /// cross-namespace "hack listener", which only reports changes). Moving the link out of the
    /// host namespace emits a "down" event there; if wireguard-go reads that event after the
    /// hack listener already reported "up", it stays down for good. A device that is up has its
    /// UDP socket bound on the listen port, so that is checked, and the link bounced (down long
    /// enough for the hack listener to see it) when it is not.
    pub(super) async fn ensure_userspace_up(
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

    pub(super) async fn wait_userspace_bound(&self, within: Duration) -> bool {
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
    pub(super) fn adoptable(&self) -> Result<bool, TunnelError> {
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
    pub(super) async fn ensure_userspace_process(&mut self) -> Result<(), TunnelError> {
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

    /// Userspace backend: the UAPI socket path is shared by every namespace, so before talking
    /// to it, check that the process behind it is in our host namespace (ours, or adopted as
    /// ours); another node's wireguard-go is never read or configured.
    pub(super) fn check_socket_owner(&self) -> Result<(), TunnelError> {
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

    pub(super) fn reap_child(&mut self) {
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
}

/// Stops the wireguard-go serving `iface`, found through its control socket's peer credentials
/// (no pid file to go stale), and only if that process runs `binary` in the namespace `host`:
/// never signal a process sdnlinkd did not start, nor another node's. SIGTERM, then SIGKILL
/// after 5 s.
pub(super) async fn stop_userspace(iface: &str, binary: &Path, host: &NetNs) -> Option<i32> {
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
pub(super) fn udp_port_bound(iface: &str, port: u16) -> bool {
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
pub(super) fn running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself contain ") ".
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}
