//! Network namespace handles.
//!
//! A [`NetNs`] owns one worker thread that has entered the namespace with `setns(2)`; every
//! blocking call that must act inside the namespace (socket creation, wireguard-control, sysctl
//! writes under /proc/sys/net, nft) runs as a job on that thread. Sockets keep the namespace they
//! were created in, so a netlink or UDP socket made on the worker can then be driven from any
//! tokio worker. This module is the only place in the daemon that calls `setns`; async worker
//! threads never change namespace.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;

/// Directory where `ip netns` pins named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {name:?} not found at {path}: {source}")]
    Open {
        name: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("setns into network namespace {name:?} failed: {source} (needs CAP_SYS_ADMIN)")]
    Setns {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("namespace worker thread for {0:?} is gone")]
    WorkerGone(String),
    #[error("spawning the namespace worker thread for {name:?}: {source}")]
    Spawn {
        name: String,
        #[source]
        source: io::Error,
    },
}

type Job = Box<dyn FnOnce() + Send + 'static>;

/// An rtnetlink connection (to spawn), its handle, and the receiver of unsolicited messages.
pub type RtnlConnection = (
    rtnetlink::proto::Connection<rtnetlink::packet_route::RouteNetlinkMessage>,
    rtnetlink::Handle,
    futures::channel::mpsc::UnboundedReceiver<(
        rtnetlink::packet_core::NetlinkMessage<rtnetlink::packet_route::RouteNetlinkMessage>,
        rtnetlink::sys::SocketAddr,
    )>,
);

struct Inner {
    name: String,
    file: File,
    jobs: std::sync::Mutex<mpsc::Sender<Job>>,
}

/// A handle on one network namespace: cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct NetNs {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NetNs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetNs")
            .field("name", &self.inner.name)
            .finish()
    }
}

impl NetNs {
    /// The namespace the calling thread is in now (at daemon start: the host namespace).
    pub fn current() -> Result<NetNs, NetnsError> {
        let path = PathBuf::from("/proc/thread-self/ns/net");
        Self::from_path("host", &path)
    }

    /// A namespace pinned by name under /run/netns (as `ip netns add` does).
    pub fn open(name: &str) -> Result<NetNs, NetnsError> {
        Self::from_path(name, &Path::new(NETNS_RUN_DIR).join(name))
    }

    /// A namespace from any nsfs path (`/run/netns/x`, `/proc/<pid>/ns/net`).
    pub fn from_path(name: &str, path: &Path) -> Result<NetNs, NetnsError> {
        let file = File::open(path).map_err(|source| NetnsError::Open {
            name: name.to_string(),
            path: path.to_path_buf(),
            source,
        })?;
        let (tx, rx) = mpsc::channel::<Job>();
        let thread_file = file.try_clone().map_err(|source| NetnsError::Open {
            name: name.to_string(),
            path: path.to_path_buf(),
            source,
        })?;
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), nix::Error>>();
        std::thread::Builder::new()
            .name(format!("netns-{name}"))
            .spawn(move || {
                // Only this thread changes namespace; CLONE_NEWNET is passed explicitly so a
                // `RestrictNamespaces=net` seccomp filter allows the call.
                let entered =
                    nix::sched::setns(thread_file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET);
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if !ok {
                    return;
                }
                while let Ok(job) = rx.recv() {
                    job();
                }
            })
            .map_err(|source| NetnsError::Spawn {
                name: name.to_string(),
                source,
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(source)) => {
                return Err(NetnsError::Setns {
                    name: name.to_string(),
                    source,
                })
            }
            Err(_) => return Err(NetnsError::WorkerGone(name.to_string())),
        }
        Ok(NetNs {
            inner: Arc::new(Inner {
                name: name.to_string(),
                file,
                jobs: std::sync::Mutex::new(tx),
            }),
        })
    }

    /// Another handle on the same namespace with a worker thread of its own, for work that
    /// must not queue behind long jobs on this handle's thread (status reads during a sync).
    pub fn with_own_worker(&self) -> Result<NetNs, NetnsError> {
        use std::os::fd::AsRawFd;
        let path = PathBuf::from(format!("/proc/self/fd/{}", self.inner.file.as_raw_fd()));
        Self::from_path(&self.inner.name, &path)
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The open nsfs file (for moving links with `IFLA_NET_NS_FD`).
    pub fn file(&self) -> &File {
        &self.inner.file
    }

    fn submit(&self, job: Job) -> Result<(), NetnsError> {
        let jobs = self
            .inner
            .jobs
            .lock()
            .map_err(|_| NetnsError::WorkerGone(self.inner.name.clone()))?;
        jobs.send(job)
            .map_err(|_| NetnsError::WorkerGone(self.inner.name.clone()))
    }

    /// Runs a blocking closure inside the namespace and waits for it. Do not call from an async
    /// task (use [`NetNs::run_async`]).
    pub fn run<F, R>(&self, f: F) -> Result<R, NetnsError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        self.submit(Box::new(move || {
            let _ = tx.send(f());
        }))?;
        rx.recv()
            .map_err(|_| NetnsError::WorkerGone(self.inner.name.clone()))
    }

    /// Runs a blocking closure inside the namespace without blocking the async worker.
    pub async fn run_async<F, R>(&self, f: F) -> Result<R, NetnsError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(Box::new(move || {
            let _ = tx.send(f());
        }))?;
        rx.await
            .map_err(|_| NetnsError::WorkerGone(self.inner.name.clone()))
    }

    /// An rtnetlink handle whose socket lives in this namespace. The connection task is spawned
    /// on the current tokio runtime.
    pub async fn rtnetlink(&self) -> Result<rtnetlink::Handle, NetnsError> {
        let (conn, handle, _messages) = self.rtnetlink_connection().await?;
        tokio::spawn(conn);
        Ok(handle)
    }

    /// A raw rtnetlink connection made inside this namespace, not yet spawned: for callers that
    /// bind multicast groups or read unsolicited messages.
    pub async fn rtnetlink_connection(&self) -> Result<RtnlConnection, NetnsError> {
        // The socket registers with the reactor of the caller's runtime; the worker thread
        // enters that runtime for the call (netlink-sys' TokioSocket panics outside one).
        let rt = tokio::runtime::Handle::current();
        let made = self
            .run_async(move || {
                let _entered = rt.enter();
                rtnetlink::new_connection()
            })
            .await?;
        made.map_err(|source| NetnsError::Open {
            name: self.inner.name.clone(),
            path: PathBuf::from("netlink"),
            source,
        })
    }

    /// A UDP socket bound inside this namespace.
    pub async fn bind_udp(&self, addr: std::net::SocketAddr) -> io::Result<tokio::net::UdpSocket> {
        let sock = self
            .run_async(move || std::net::UdpSocket::bind(addr))
            .await
            .map_err(io::Error::other)??;
        sock.set_nonblocking(true)?;
        tokio::net::UdpSocket::from_std(sock)
    }

    /// A TCP listener bound inside this namespace.
    pub async fn bind_tcp(
        &self,
        addr: std::net::SocketAddr,
    ) -> io::Result<tokio::net::TcpListener> {
        let sock = self
            .run_async(move || std::net::TcpListener::bind(addr))
            .await
            .map_err(io::Error::other)??;
        sock.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(sock)
    }
}
