//! systemd notification (sd_notify protocol).
//!
//! The socket path is taken from `NOTIFY_SOCKET` once at start and the variable is removed from
//! the environment, so children (wireguard-go, nft) cannot send state changes on our behalf
//! (`NotifyAccess=main` would drop them anyway, but a stray READY=1 must never be possible).
//! Message formatting comes from the sd-notify crate; we keep the socket ourselves so tests can
//! point a notifier at their own datagram socket.
//!
//! The file descriptor store (sd_notify(3) `FDSTORE=1`, `FileDescriptorStoreMax=` in the unit)
//! keeps the DNS stub's sockets open in systemd while the daemon is down: after a crash and
//! `Restart=on-failure`, queries sent meanwhile wait in the sockets' receive queues and are
//! answered by the next process, which gets the same sockets back as `LISTEN_FDS` (named by
//! `LISTEN_FDNAMES`, sd_listen_fds(3)) instead of binding new ones.

use sd_notify::NotifyState;
use std::fmt::Write as _;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Descriptors the service manager passed at start (`LISTEN_FDS`), with their `FDNAME`s.
type Passed = Arc<Mutex<Vec<(OwnedFd, String)>>>;

#[derive(Debug, Clone)]
pub struct Notifier {
    socket: Option<PathBuf>,
    watchdog: Option<Duration>,
    /// When WATCHDOG=1 was last sent: the loop may spin fast (bursts of netlink events), and
    /// one ping per quarter period is plenty.
    last_ping: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    /// Not yet claimed by [`Notifier::take_passed`].
    passed: Passed,
}

impl Notifier {
    /// From `NOTIFY_SOCKET` / `WATCHDOG_USEC` and the passed descriptors (`LISTEN_FDS`,
    /// `LISTEN_FDNAMES`, `LISTEN_PID`); all of them are then removed from the environment, so
    /// children neither inherit nor misread them.
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET").map(PathBuf::from);
        let watchdog = sd_notify::watchdog_enabled();
        // SAFETY: single-threaded at this point of start-up (called before the tokio runtime
        // starts its workers), which is what std requires of remove_var.
        let passed = unsafe { sd_notify::listen_fds_with_names_and_unset_env() };
        let passed: Vec<(OwnedFd, String)> = match passed {
            // SAFETY: sd_listen_fds(3): the descriptors from SD_LISTEN_FDS_START on belong to
            // this process (LISTEN_PID matched) and nothing else in it has claimed them yet.
            Ok(fds) => fds
                .map(|(fd, name)| (unsafe { OwnedFd::from_raw_fd(fd) }, name))
                .collect(),
            Err(e) => {
                eprintln!("sdnlinkd: ignoring the passed file descriptors: {e}");
                Vec::new()
            }
        };
        unsafe {
            std::env::remove_var("NOTIFY_SOCKET");
            std::env::remove_var("WATCHDOG_USEC");
            std::env::remove_var("WATCHDOG_PID");
        }
        Notifier {
            socket,
            watchdog,
            last_ping: Default::default(),
            passed: Arc::new(Mutex::new(passed)),
        }
    }

    /// Claims the passed descriptors named `name` (the rest stay for other callers).
    pub fn take_passed(&self, name: &str) -> Vec<OwnedFd> {
        let mut passed = self.passed.lock().unwrap_or_else(|p| p.into_inner());
        let (mine, rest): (Vec<_>, Vec<_>) = passed.drain(..).partition(|(_, n)| n == name);
        *passed = rest;
        mine.into_iter().map(|(fd, _)| fd).collect()
    }

    /// Names of passed descriptors nobody claimed.
    pub fn unclaimed(&self) -> Vec<String> {
        let passed = self.passed.lock().unwrap_or_else(|p| p.into_inner());
        passed.iter().map(|(_, n)| n.clone()).collect()
    }

    /// Whether a service manager listens (the fd store is worth feeding).
    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// Hands `fds` to the service manager's fd store under `name`, replacing what is stored
    /// under that name (`FDSTOREREMOVE=1` first: systemd adds to a name, it never replaces).
    pub fn store_fds(&self, name: &str, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        self.remove_fds(name)?;
        if fds.is_empty() {
            return Ok(());
        }
        let name = format!("FDNAME={name}");
        self.send_with_fds(
            &[NotifyState::Custom("FDSTORE=1"), NotifyState::Custom(&name)],
            fds,
        )
    }

    /// Drops what the fd store holds under `name`.
    pub fn remove_fds(&self, name: &str) -> io::Result<()> {
        // The crate's FdStore variants come with its `fdstore` feature, which pulls a second
        // fd-passing crate; nix already sends SCM_RIGHTS here, so the lines are spelled out.
        let name = format!("FDNAME={name}");
        self.send_with_fds(
            &[
                NotifyState::Custom("FDSTOREREMOVE=1"),
                NotifyState::Custom(&name),
            ],
            &[],
        )
    }

    /// A notifier writing to `socket` (tests).
    pub fn with_socket(socket: PathBuf, watchdog: Option<Duration>) -> Notifier {
        Notifier {
            socket: Some(socket),
            watchdog,
            last_ping: Default::default(),
            passed: Default::default(),
        }
    }

    /// A notifier writing to `socket` that was passed `fds` at start (tests).
    pub fn with_passed(socket: PathBuf, fds: Vec<(OwnedFd, String)>) -> Notifier {
        Notifier {
            passed: Arc::new(Mutex::new(fds)),
            ..Notifier::with_socket(socket, None)
        }
    }

    /// A notifier that sends nothing (not under systemd).
    pub fn disabled() -> Notifier {
        Notifier {
            socket: None,
            watchdog: None,
            last_ping: Default::default(),
            passed: Default::default(),
        }
    }

    /// The watchdog period systemd asked for, if any. Pet at half of it.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    pub fn send(&self, states: &[NotifyState]) -> io::Result<()> {
        let Some(path) = &self.socket else {
            return Ok(());
        };
        let mut msg = String::new();
        for s in states {
            let _ = writeln!(msg, "{s}");
        }
        let sock = UnixDatagram::unbound()?;
        // A datagram socket whose reader is slow blocks the sender once its queue is full
        // (net.unix.max_dgram_qlen, 10 by default); the reconcile loop must never stall on
        // that, so a message that does not fit is dropped (the next STATUS supersedes it).
        sock.set_nonblocking(true)?;
        let bytes = path.as_os_str().as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            // Abstract socket (systemd may hand one out): the leading '@' stands for NUL.
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(msg.as_bytes(), &addr)?;
        } else {
            sock.send_to(msg.as_bytes(), path)?;
        }
        Ok(())
    }

    /// One message with `fds` attached (SCM_RIGHTS, unix(7)). Blocking: losing an fd-store
    /// message would lose the descriptors, and the manager reads these at once.
    fn send_with_fds(&self, states: &[NotifyState], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
        let Some(path) = &self.socket else {
            return Ok(());
        };
        let mut msg = String::new();
        for s in states {
            let _ = writeln!(msg, "{s}");
        }
        let bytes = path.as_os_str().as_encoded_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => UnixAddr::new_abstract(name)?,
            None => UnixAddr::new(path.as_path())?,
        };
        let sock = UnixDatagram::unbound()?;
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let rights = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &rights };
        let iov = [io::IoSlice::new(msg.as_bytes())];
        sendmsg(
            sock.as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::empty(),
            Some(&addr),
        )?;
        Ok(())
    }

    fn send_logged(&self, states: &[NotifyState]) {
        match self.send(states) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tracing::debug!("sd_notify queue full; message dropped");
            }
            Err(e) => tracing::warn!(error = %e, "sd_notify failed"),
        }
    }

    pub fn status(&self, status: &str) {
        self.send_logged(&[NotifyState::Status(status)]);
    }

    /// READY=1 with a status line: only after the first full apply.
    pub fn ready(&self, status: &str) {
        self.send_logged(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// RELOADING=1 with MONOTONIC_USEC, as systemd.service(5) asks for reload notifications.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send_logged(&[
                NotifyState::Reloading,
                now,
                NotifyState::Status("reloading configuration"),
            ]),
            Err(_) => self.send_logged(&[
                NotifyState::Reloading,
                NotifyState::Status("reloading configuration"),
            ]),
        }
    }

    pub fn stopping(&self) {
        self.send_logged(&[
            NotifyState::Stopping,
            NotifyState::Status("stopping; dataplane left in place"),
        ]);
    }

    pub fn watchdog_ping(&self) {
        let Some(period) = self.watchdog else {
            return;
        };
        let now = std::time::Instant::now();
        if let Ok(mut last) = self.last_ping.lock() {
            if last.is_some_and(|t| now.duration_since(t) < period / 4) {
                return;
            }
            *last = Some(now);
        }
        self.send_logged(&[NotifyState::Watchdog]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv_all(sock: &UnixDatagram) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        sock.set_nonblocking(true).expect("nonblocking");
        while let Ok(n) = sock.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }

    #[test]
    fn lifecycle_messages_reach_the_socket_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier::with_socket(path, Some(Duration::from_secs(30)));
        n.status("starting");
        n.ready("ready: 2 clusters");
        n.watchdog_ping();
        n.reloading();
        n.ready("reloaded");
        n.watchdog_ping(); // within a quarter period of the last one: not sent
        n.stopping();
        let got = recv_all(&server);
        assert_eq!(got.len(), 6, "{got:?}");
        assert_eq!(got[0], "STATUS=starting\n");
        assert_eq!(got[1], "READY=1\nSTATUS=ready: 2 clusters\n");
        assert_eq!(got[2], "WATCHDOG=1\n");
        assert!(
            got[3].starts_with("RELOADING=1\nMONOTONIC_USEC="),
            "{:?}",
            got[3]
        );
        assert!(
            got[3].ends_with("STATUS=reloading configuration\n"),
            "{:?}",
            got[3]
        );
        assert_eq!(got[4], "READY=1\nSTATUS=reloaded\n");
        assert_eq!(
            got[5],
            "STOPPING=1\nSTATUS=stopping; dataplane left in place\n"
        );
    }

    /// What the fd store receives: the text and how many descriptors came with it.
    fn recv_with_fds(sock: &UnixDatagram) -> Vec<(String, Vec<OwnedFd>)> {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
        sock.set_nonblocking(true).expect("nonblocking");
        let mut out = Vec::new();
        loop {
            let mut buf = [0u8; 4096];
            let mut space = nix::cmsg_space!([RawFd; 16]);
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let Ok(m) = recvmsg::<UnixAddr>(
                sock.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::empty(),
            ) else {
                break;
            };
            let mut fds = Vec::new();
            for c in m.cmsgs().expect("control messages") {
                if let ControlMessageOwned::ScmRights(r) = c {
                    // SAFETY: SCM_RIGHTS installed these descriptors in this process for us.
                    fds.extend(r.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                }
            }
            let n = m.bytes;
            out.push((String::from_utf8_lossy(&buf[..n]).into_owned(), fds));
        }
        out
    }

    #[test]
    fn fd_store_messages_replace_the_name_and_carry_the_sockets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier::with_socket(path, None);
        let a = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        let b = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        use std::os::fd::AsFd;
        n.store_fds("dns-udp", &[a.as_fd(), b.as_fd()])
            .expect("store");
        n.remove_fds("dns-tcp").expect("remove");
        let got = recv_with_fds(&server);
        let text: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            text,
            [
                "FDSTOREREMOVE=1\nFDNAME=dns-udp\n",
                "FDSTORE=1\nFDNAME=dns-udp\n",
                "FDSTOREREMOVE=1\nFDNAME=dns-tcp\n"
            ]
        );
        assert_eq!(
            got.iter().map(|(_, f)| f.len()).collect::<Vec<_>>(),
            [0, 2, 0]
        );
        // The received descriptors are the same sockets, not copies of their addresses.
        let stored = std::net::UdpSocket::from(got[1].1[0].try_clone().expect("dup"));
        assert_eq!(
            stored.local_addr().expect("addr"),
            a.local_addr().expect("addr")
        );
    }

    #[test]
    fn passed_descriptors_are_claimed_by_name_once() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        let b = std::net::TcpListener::bind("127.0.0.1:0").expect("tcp");
        let n = Notifier::with_passed(
            "/nonexistent".into(),
            vec![
                (OwnedFd::from(a), "dns-udp".into()),
                (OwnedFd::from(b), "dns-tcp".into()),
            ],
        );
        assert_eq!(n.take_passed("dns-udp").len(), 1);
        assert!(n.take_passed("dns-udp").is_empty());
        assert_eq!(n.unclaimed(), ["dns-tcp"]);
    }

    #[test]
    fn a_full_queue_drops_messages_instead_of_blocking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier::with_socket(path, None);
        // Nobody reads: far more than the kernel's datagram queue holds. Must return.
        for i in 0..200 {
            n.status(&format!("s{i}"));
        }
        let got = recv_all(&server);
        assert!(!got.is_empty() && got.len() < 200, "{}", got.len());
        assert_eq!(got[0], "STATUS=s0\n");
    }

    #[test]
    fn watchdog_is_silent_when_not_requested() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier::with_socket(path, None);
        n.watchdog_ping();
        n.status("x");
        assert_eq!(recv_all(&server), vec!["STATUS=x\n".to_string()]);
    }

    #[test]
    fn disabled_notifier_sends_nothing_and_does_not_fail() {
        Notifier::disabled()
            .send(&[NotifyState::Ready])
            .expect("no socket is not an error");
    }
}
