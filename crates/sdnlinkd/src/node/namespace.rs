//! Named network namespaces pinned under /run/netns exactly as iproute2's `ip netns add` does
//! (ip/ipnetns.c `netns_add`), so `ip netns exec`, `ipvsadm`, `wg` and `nft` find them.

use super::NodeError;
use crate::netns::{NetNs, NETNS_RUN_DIR};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// `NSFS_MAGIC` from include/uapi/linux/magic.h: the filesystem type of a pinned namespace.
const NSFS_MAGIC: i64 = 0x6e73_6673;

fn pin_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

fn pin_err(path: &Path, op: &'static str) -> impl FnOnce(io::Error) -> NodeError {
    let path = path.to_path_buf();
    move |source| NodeError::Pin { path, op, source }
}

fn nix_io(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Whether `path` is a mounted nsfs file (a live namespace pin).
fn is_nsfs(path: &Path) -> io::Result<bool> {
    match nix::sys::statfs::statfs(path) {
        // f_type is __fsword_t: i64 on x86_64, narrower on other architectures.
        #[allow(clippy::unnecessary_cast)]
        Ok(st) => Ok(st.filesystem_type().0 as i64 == NSFS_MAGIC),
        Err(nix::Error::ENOENT) => Ok(false),
        Err(e) => Err(nix_io(e)),
    }
}

/// Makes /run/netns a shared mount point (bound on itself first if it is not a mount point), so
/// pins made here propagate into mount namespaces created later, as `ip netns add` does.
fn prepare_run_dir() -> Result<(), NodeError> {
    let dir = Path::new(NETNS_RUN_DIR);
    std::fs::create_dir_all(dir).map_err(pin_err(dir, "creating the directory"))?;
    let mut bound = false;
    loop {
        match mount(
            None::<&str>,
            dir,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        ) {
            Ok(()) => return Ok(()),
            // EINVAL: not a mount point yet; bind it on itself once and retry.
            Err(nix::Error::EINVAL) if !bound => {
                mount(
                    Some(dir),
                    dir,
                    Some("none"),
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .map_err(|e| pin_err(dir, "bind-mounting on itself")(nix_io(e)))?;
                bound = true;
            }
            Err(e) => return Err(pin_err(dir, "making it a shared mount")(nix_io(e))),
        }
    }
}

/// Removes whatever sits at `path` that is not a live pin (a stale file left by a crash between
/// create and mount, or a pin whose mount was detached).
fn remove_stale(path: &Path) -> Result<(), NodeError> {
    // A non-nsfs mount on the path would keep the unlink from working (EBUSY).
    let _ = umount2(path, MntFlags::MNT_DETACH);
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(pin_err(path, "removing the stale pin file")(e)),
    }
}

fn create_pin_file(path: &Path) -> Result<(), NodeError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(path)
        .map(drop)
        .map_err(pin_err(path, "creating the pin file"))
}

/// Creates the network namespace `name` pinned at /run/netns/<name>, or adopts it if it is
/// already pinned. Returns `true` when it was created. A pin file that is not an nsfs mount is
/// repaired. Needs CAP_SYS_ADMIN and the host's mount namespace: call it from the unsandboxed
/// pre-start step (`sdnlinkd netns ensure`).
pub fn ensure_namespace(name: &str) -> Result<bool, NodeError> {
    let path = pin_path(name);
    // Adopting must not mount: the daemon runs under a seccomp filter that denies @mount (it
    // holds CAP_SYS_ADMIN for setns) and only adopts the pin its unsandboxed ExecStartPre made.
    if is_nsfs(&path).map_err(pin_err(&path, "statfs"))? {
        return Ok(false);
    }
    prepare_run_dir()?;
    if path.symlink_metadata().is_ok() {
        tracing::warn!(path = %path.display(), "namespace pin is not an nsfs mount; repairing it");
        remove_stale(&path)?;
    }
    create_pin_file(&path)?;
    let thread_path = path.clone();
    // unshare() moves only the calling thread; a throwaway thread keeps every other thread of
    // the process (tokio workers included) in its namespace.
    let joined = std::thread::Builder::new()
        .name("netns-create".into())
        .spawn(move || -> Result<(), NodeError> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(NodeError::NoNetns)?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &thread_path,
                Some("none"),
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| pin_err(&thread_path, "bind-mounting the new namespace")(nix_io(e)))
        })
        .map_err(pin_err(&path, "spawning the namespace thread"))?
        .join();
    let result = match joined {
        Ok(r) => r,
        Err(_) => Err(NodeError::Pin {
            path: path.clone(),
            op: "namespace thread",
            source: io::Error::other("panicked"),
        }),
    };
    if let Err(e) = result {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(true)
}

/// Unpins /run/netns/<name> (detach + unlink) as `ip netns del` does. The namespace dies when
/// its last user (process, open handle) goes. Returns whether a pin was there; idempotent.
pub fn remove_namespace(name: &str) -> Result<bool, NodeError> {
    let path = pin_path(name);
    let was_pinned = is_nsfs(&path).map_err(pin_err(&path, "statfs"))?;
    match umount2(&path, MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point; ENOENT: already gone.
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => return Err(pin_err(&path, "unmounting")(nix_io(e))),
    }
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(pin_err(&path, "removing the pin file")(e)),
    }
    Ok(was_pinned)
}

/// Restores the pin of an open namespace whose pin was removed out of band (`ip netns del`
/// while the daemon holds it open): bind-mounts our handle back onto /run/netns/<name>.
/// Returns whether it re-pinned.
pub(crate) fn repin(ns: &NetNs, name: &str) -> Result<bool, NodeError> {
    let path = pin_path(name);
    let ours = ns
        .file()
        .metadata()
        .map_err(pin_err(&path, "fstat of the open namespace"))?;
    if is_nsfs(&path).map_err(pin_err(&path, "statfs"))? {
        let pinned = std::fs::metadata(&path).map_err(pin_err(&path, "stat"))?;
        if pinned.ino() == ours.ino() && pinned.dev() == ours.dev() {
            return Ok(false);
        }
        return Err(NodeError::NamespaceReplaced { path });
    }
    prepare_run_dir()?;
    if path.symlink_metadata().is_ok() {
        remove_stale(&path)?;
    }
    create_pin_file(&path)?;
    let src = format!("/proc/self/fd/{}", ns.file().as_raw_fd());
    if let Err(e) = mount(
        Some(src.as_str()),
        &path,
        Some("none"),
        MsFlags::MS_BIND,
        None::<&str>,
    ) {
        let _ = std::fs::remove_file(&path);
        return Err(pin_err(&path, "bind-mounting the open namespace")(nix_io(
            e,
        )));
    }
    Ok(true)
}
