//! The lab's stand-in for systemd as the daemons' notify socket and file descriptor store.
//!
//! Under systemd a daemon that crashed gets back what it stored with `FDSTORE=1` (the DNS
//! stub's sockets, crates/sdnlinkd/src/notify.rs) as `LISTEN_FDS` when `Restart=` starts it again. The lab
//! starts its daemons itself, so it does the same for them: one datagram socket per node
//! (`notify.sock` in the node directory) given as `NOTIFY_SOCKET`, a thread per node that keeps
//! the descriptors sent with `FDSTORE=1`/`FDNAME=` and drops them on `FDSTOREREMOVE=1`
//! (sd_notify(3)), and [`FdStore::passed`], which the next start maps to fds 3.. with
//! `LISTEN_FDS`, `LISTEN_FDNAMES` and `LISTEN_PID` (sd_listen_fds(3)).
//!
//! Like systemd, the store outlives the daemon process but not the lab: `down` (or the end of
//! a run) closes everything.

use super::LabError;
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Stored descriptors per node, in the order they came.
type Stored = Arc<Mutex<BTreeMap<String, Vec<(String, OwnedFd)>>>>;

/// systemd's own limit for one message's descriptors is the unit's FileDescriptorStoreMax=;
/// the daemon sends one UDP socket per core (at most 16) or one TCP listener per message.
const MAX_FDS_PER_MESSAGE: usize = 32;

/// The notify sockets and fd stores of a lab's daemons.
#[derive(Default)]
pub struct FdStore {
    stored: Stored,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl FdStore {
    /// Binds `path` as `node`'s notify socket and starts keeping what arrives there.
    pub fn listen(&mut self, node: &str, path: &Path) -> Result<(), LabError> {
        let _ = std::fs::remove_file(path);
        let sock = UnixDatagram::bind(path)
            .map_err(|e| LabError::io(format!("notify socket {}", path.display()), e))?;
        // The thread looks at the stop flag between reads.
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .map_err(|e| LabError::io("notify socket timeout", e))?;
        let stored = self.stored.clone();
        let stop = self.stop.clone();
        let node = node.to_string();
        let t = std::thread::Builder::new()
            .name(format!("notify-{node}"))
            .spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    if let Some((text, fds)) = receive(&sock) {
                        apply(&stored, &node, &text, fds);
                    }
                }
            })
            .map_err(|e| LabError::io("starting a notify socket thread", e))?;
        self.threads.push(t);
        Ok(())
    }

    /// New descriptors of what `node`'s store holds, with their names, for its next start.
    pub fn passed(&self, node: &str) -> Result<Vec<(String, OwnedFd)>, LabError> {
        let stored = self.stored.lock().unwrap_or_else(|p| p.into_inner());
        stored
            .get(node)
            .into_iter()
            .flatten()
            .map(|(name, fd)| {
                fd.try_clone()
                    .map(|fd| (name.clone(), fd))
                    .map_err(|e| LabError::io("duplicating a stored descriptor", e))
            })
            .collect()
    }

    /// The names `node`'s store holds (for check details).
    pub fn names(&self, node: &str) -> Vec<String> {
        let stored = self.stored.lock().unwrap_or_else(|p| p.into_inner());
        stored
            .get(node)
            .into_iter()
            .flatten()
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Closes what `node`'s store holds, as systemd does when a unit is stopped (a
    /// `systemctl restart` included); only a restart after a crash gets the descriptors back.
    pub fn clear(&self, node: &str) {
        let mut stored = self.stored.lock().unwrap_or_else(|p| p.into_inner());
        stored.remove(node);
    }

    /// Stops the threads and closes every stored descriptor.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.stored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

impl Drop for FdStore {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One notify message and the descriptors that came with it; `None` on timeout or error.
fn receive(sock: &UnixDatagram) -> Option<(String, Vec<OwnedFd>)> {
    let mut buf = [0u8; 4096];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS_PER_MESSAGE]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let m = recvmsg::<UnixAddr>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ok()?;
    let mut fds = Vec::new();
    if let Ok(cmsgs) = m.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmRights(r) = c {
                // SAFETY: SCM_RIGHTS installed these descriptors in this process for us; nothing
                // else refers to them.
                fds.extend(r.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
    }
    let n = m.bytes;
    Some((String::from_utf8_lossy(&buf[..n]).into_owned(), fds))
}

/// What one message does to `node`'s store, as systemd does it: `FDSTORE=1` adds the message's
/// descriptors under its `FDNAME` ("stored" without one), `FDSTOREREMOVE=1` drops every
/// descriptor of that name; descriptors sent with any other message are closed.
fn apply(stored: &Stored, node: &str, text: &str, fds: Vec<OwnedFd>) {
    let mut name = "stored";
    let (mut store, mut remove) = (false, false);
    for line in text.lines() {
        match line.split_once('=') {
            Some(("FDSTORE", "1")) => store = true,
            Some(("FDSTOREREMOVE", "1")) => remove = true,
            Some(("FDNAME", n)) => name = n,
            _ => {}
        }
    }
    let mut stored = stored.lock().unwrap_or_else(|p| p.into_inner());
    let entry = stored.entry(node.to_string()).or_default();
    if remove {
        entry.retain(|(n, _)| n != name);
    }
    if store {
        entry.extend(fds.into_iter().map(|fd| (name.to_string(), fd)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd() -> OwnedFd {
        OwnedFd::from(std::net::UdpSocket::bind("127.0.0.1:0").expect("udp"))
    }

    #[test]
    fn store_adds_under_the_name_and_remove_drops_that_name_only() {
        let stored = Stored::default();
        apply(
            &stored,
            "n1",
            "FDSTORE=1\nFDNAME=dns-udp\n",
            vec![fd(), fd()],
        );
        apply(&stored, "n1", "FDSTORE=1\nFDNAME=dns-tcp\n", vec![fd()]);
        apply(&stored, "n1", "STATUS=ready\n", vec![fd()]);
        apply(&stored, "n2", "FDSTORE=1\n", vec![fd()]);
        let names = |node: &str| -> Vec<String> {
            stored.lock().expect("lock")[node]
                .iter()
                .map(|(n, _)| n.clone())
                .collect()
        };
        assert_eq!(names("n1"), ["dns-udp", "dns-udp", "dns-tcp"]);
        assert_eq!(names("n2"), ["stored"]);
        apply(&stored, "n1", "FDSTOREREMOVE=1\nFDNAME=dns-udp\n", vec![]);
        assert_eq!(names("n1"), ["dns-tcp"]);
    }

    #[test]
    fn a_notifier_feeds_the_store_over_the_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let mut store = FdStore::default();
        store.listen("n1", &path).expect("listen");
        let n = sdnlinkd::notify::Notifier::with_socket(path, None);
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        use std::os::fd::AsFd;
        n.store_fds("dns-udp", &[sock.as_fd()]).expect("store");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while store.names("n1").is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let passed = store.passed("n1").expect("passed");
        assert_eq!(passed.len(), 1);
        assert_eq!(passed[0].0, "dns-udp");
        let back = std::net::UdpSocket::from(passed[0].1.try_clone().expect("dup"));
        assert_eq!(
            back.local_addr().expect("addr"),
            sock.local_addr().expect("addr")
        );
        store.stop();
        assert!(store.names("n1").is_empty());
    }
}
