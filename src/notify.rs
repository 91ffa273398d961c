//! systemd notification (sd_notify protocol).
//!
//! The socket path is taken from `NOTIFY_SOCKET` once at start and the variable is removed from
//! the environment, so children (wireguard-go, nft) cannot send state changes on our behalf
//! (`NotifyAccess=main` would drop them anyway, but a stray READY=1 must never be possible).
//! Message formatting comes from the sd-notify crate; we keep the socket ourselves so tests can
//! point a notifier at their own datagram socket.

use sd_notify::NotifyState;
use std::fmt::Write as _;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Notifier {
    socket: Option<PathBuf>,
    watchdog: Option<Duration>,
    /// When WATCHDOG=1 was last sent: the loop may spin fast (bursts of netlink events), and
    /// one ping per quarter period is plenty.
    last_ping: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

impl Notifier {
    /// From `NOTIFY_SOCKET` / `WATCHDOG_USEC` (both then removed from the environment).
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET").map(PathBuf::from);
        let watchdog = sd_notify::watchdog_enabled();
        // SAFETY-free: single-threaded at this point of start-up (called before the tokio
        // runtime starts its workers), which is what std requires of remove_var.
        unsafe {
            std::env::remove_var("NOTIFY_SOCKET");
            std::env::remove_var("WATCHDOG_USEC");
            std::env::remove_var("WATCHDOG_PID");
        }
        Notifier {
            socket,
            watchdog,
            last_ping: Default::default(),
        }
    }

    /// A notifier writing to `socket` (tests).
    pub fn with_socket(socket: PathBuf, watchdog: Option<Duration>) -> Notifier {
        Notifier {
            socket: Some(socket),
            watchdog,
            last_ping: Default::default(),
        }
    }

    /// A notifier that sends nothing (not under systemd).
    pub fn disabled() -> Notifier {
        Notifier {
            socket: None,
            watchdog: None,
            last_ping: Default::default(),
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
