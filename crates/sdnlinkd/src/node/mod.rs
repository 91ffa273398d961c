//! The node plumbing: sdnlinkd's network namespace, the veth pair into it, the addresses and
//! routes on both sides, and the sysctls that make forwarding work.
//!
//! Shape (see docs/design.md): [`NodeDesired::from_config`] computes the desired state as a
//! value; [`observe`] reads the kernel; [`plan`] diffs the two into printable [`NodeOp`]s; the
//! executor applies them idempotently. [`Plumbing`] keeps the last committed state so an
//! incremental sync sends only what changed (one VIP change = one netlink message), and a full
//! sync re-reads the kernel and repairs drift.

pub mod cni;
mod desired;
mod events;
mod kernel;
mod namespace;
mod owned;
mod plan;
mod plumbing;

pub use desired::{NodeDesired, NodeExtras, RouteSpec};
pub use events::{watch_events, NodeEvents, Notice};
pub use kernel::observe;
pub use namespace::{ensure_namespace, remove_namespace};
pub use owned::{concerns_us, LinkRole, Owned, OwnedHandle, OwnedLink, OwnedSide, Reason};
pub use plan::{apply_to_observed, plan, skipped_routes, LinkState, NodeOp, Observed, Side};
pub use plumbing::{cleanup, cleanup_in, CleanupReport, NodeReport, NodeStatus, Plumbing};

use std::path::PathBuf;

/// Errors of the node plumbing. Each names the object or kernel feature involved.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// `unshare(CLONE_NEWNET)` refused: the kernel lacks `CONFIG_NET_NS` (EINVAL) or the
    /// process lacks CAP_SYS_ADMIN (EPERM).
    #[error("cannot create a network namespace (kernel feature CONFIG_NET_NS missing or no CAP_SYS_ADMIN): unshare(CLONE_NEWNET): {0}")]
    NoNetns(#[source] nix::Error),
    /// The kernel does not know the `veth` link kind (`CONFIG_VETH` missing).
    #[error("cannot create veth pair {host} <-> {ns}: the kernel has no veth support (CONFIG_VETH): {source}")]
    NoVeth {
        host: String,
        ns: String,
        #[source]
        source: rtnetlink::Error,
    },
    /// An object with one of our names exists but is not ours; it is never modified.
    #[error("{side} interface {name:?} already exists and is not sdnlinkd's ({why}); refusing to touch it")]
    Foreign {
        side: Side,
        name: String,
        why: String,
    },
    /// A route to one of our destinations exists with another owner (route protocol).
    #[error("{side} route to {dst} already exists and is not sdnlinkd's (not proto {protocol}); refusing to replace it")]
    ForeignRoute {
        side: Side,
        dst: ipnet::IpNet,
        protocol: u8,
    },
    /// Mounting, creating or removing the namespace pin under /run/netns failed.
    #[error("namespace pin {path}: {op}: {source}")]
    Pin {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The pin now holds a different namespace than the one this daemon has open.
    #[error("{path} now holds a different network namespace than the one sdnlinkd opened (deleted and re-created out of band); restart sdnlinkd to adopt it")]
    NamespaceReplaced { path: PathBuf },
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
    /// A netlink request failed.
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    /// Opening or subscribing a netlink socket failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing a sysctl under /proc/sys failed.
    #[error("sysctl {path}: {source}")]
    Sysctl {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Some operations of a sync failed; the next sync is a full one.
    #[error("{failed} of {total} node operations failed; first: {first}")]
    Apply {
        failed: usize,
        total: usize,
        #[source]
        first: Box<NodeError>,
    },
}

#[cfg(test)]
mod tests;
