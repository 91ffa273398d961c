//! [`Plumbing`]: sync of the node state with a committed copy for incremental syncs, status,
//! and [`cleanup`].

use super::desired::NodeDesired;
use super::kernel::{self, Ifindexes, Indexes};
use super::namespace;
use super::owned::{Owned, OwnedHandle};
use super::plan::{apply_to_observed, plan, skipped_routes, NodeOp, Observed};
use super::NodeError;
use crate::config::Config;
use crate::netns::NetNs;
use ipnet::IpNet;
use serde::Serialize;
use std::fmt;
use std::time::SystemTime;

/// What one sync did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NodeReport {
    /// Whether the kernel was re-read (full sync) or the committed state was diffed.
    pub full: bool,
    /// Every executed operation, one `ip`-style line each.
    pub ops: Vec<String>,
    /// Namespace routes through the tunnel interface not installed because it does not exist.
    pub skipped_routes: Vec<IpNet>,
    /// Sysctls changed, as `name old -> new`.
    pub sysctls_changed: Vec<String>,
    /// Whether the namespace pin had to be restored.
    pub repinned: bool,
}

impl NodeReport {
    /// Number of kernel changes made (operations + sysctl writes).
    pub fn operations(&self) -> usize {
        self.ops.len() + self.sysctls_changed.len() + usize::from(self.repinned)
    }
}

/// Status for `sdnlinkd status`.
#[derive(Clone, Debug, Serialize)]
pub struct NodeStatus {
    pub namespace: String,
    pub host_interface: String,
    pub interface: String,
    /// The committed state, if the last sync succeeded.
    pub committed: Option<Observed>,
    pub last_sync: Option<SystemTime>,
    pub last_ops: usize,
    pub skipped_routes: Vec<IpNet>,
    pub last_error: Option<String>,
}

/// The node plumbing of one daemon: host and namespace handles and the last committed state.
pub struct Plumbing {
    namespace: String,
    host_interface: String,
    interface: String,
    host: NetNs,
    ns: NetNs,
    handles: Option<(rtnetlink::Handle, rtnetlink::Handle)>,
    committed: Option<Observed>,
    last_sync: Option<SystemTime>,
    last_ops: usize,
    skipped: Vec<IpNet>,
    last_error: Option<String>,
    /// Interface indexes of our links as last read.
    ifindexes: Ifindexes,
    /// What the event filter treats as ours, published around every sync.
    owned: OwnedHandle,
}

impl Plumbing {
    /// A plumbing for `cfg` with handles on the host namespace and sdnlinkd's namespace. The
    /// first sync is always full.
    pub fn new(cfg: &Config, host: NetNs, ns: NetNs) -> Plumbing {
        Plumbing {
            namespace: cfg.namespace.name.clone(),
            host_interface: cfg.namespace.host_interface.clone(),
            interface: cfg.namespace.interface.clone(),
            host,
            ns,
            handles: None,
            committed: None,
            last_sync: None,
            last_ops: 0,
            skipped: Vec::new(),
            last_error: None,
            ifindexes: Ifindexes::default(),
            owned: OwnedHandle::default(),
        }
    }

    /// What the plumbing owns and wants, updated around every sync: pass it to
    /// [`watch_events`](super::watch_events) so only changes to these objects ask for a repair.
    /// Before a sync executes, it drops what the sync is about to withdraw, so the plumbing's
    /// own deletions never come back as notifications.
    pub fn owned(&self) -> OwnedHandle {
        self.owned.clone()
    }

    async fn handles(&mut self) -> Result<(rtnetlink::Handle, rtnetlink::Handle), NodeError> {
        if let Some(h) = &self.handles {
            return Ok(h.clone());
        }
        let h = (self.host.rtnetlink().await?, self.ns.rtnetlink().await?);
        self.handles = Some(h.clone());
        Ok(h)
    }

    /// Brings the kernel to `desired`. `full`: re-read the kernel (and the namespace pin and
    /// sysctls) and repair drift; otherwise diff against the last committed state and send only
    /// the changes. A failed sync makes the next one full.
    pub async fn sync(
        &mut self,
        desired: &NodeDesired,
        full: bool,
    ) -> Result<NodeReport, NodeError> {
        let r = self.sync_inner(desired, full, false).await;
        self.record(&r);
        r
    }

    /// A full sync that only adds and repairs, never removes. For start-up, before the
    /// tunnel peers and VIPs are known: a restart must not withdraw the routes and VIPs the
    /// previous run installed (connections through them would break until the first real
    /// sync puts them back). The next sync is full and removes what is really stale.
    pub async fn sync_additive(&mut self, desired: &NodeDesired) -> Result<NodeReport, NodeError> {
        let r = self.sync_inner(desired, true, true).await;
        self.record(&r);
        self.committed = None;
        r
    }

    /// What a full sync would do now, without doing it (`sdnlinkd plan`): the kernel read
    /// afresh, the operations planned, nothing executed and nothing committed.
    pub async fn plan_full(&mut self, desired: &NodeDesired) -> Result<Vec<String>, NodeError> {
        let (host, ns) = self.handles().await?;
        let (obs, _) = kernel::observe_indexed(&host, &ns, desired).await?;
        Ok(plan(desired, &obs)
            .iter()
            .map(|op| op.to_string())
            .collect())
    }

    fn record(&mut self, r: &Result<NodeReport, NodeError>) {
        match r {
            Ok(rep) => {
                self.last_ops = rep.operations();
                self.skipped = rep.skipped_routes.clone();
                self.last_error = None;
                self.last_sync = Some(SystemTime::now());
            }
            Err(e) => {
                self.committed = None;
                self.last_error = Some(e.to_string());
            }
        }
    }

    async fn sync_inner(
        &mut self,
        desired: &NodeDesired,
        full: bool,
        additive: bool,
    ) -> Result<NodeReport, NodeError> {
        let (host, ns) = self.handles().await?;
        let full = full || self.committed.is_none();
        let mut report = NodeReport {
            full,
            ..Default::default()
        };
        let mut obs = if full {
            let ns_handle = self.ns.clone();
            let name = desired.namespace.clone();
            report.repinned = self
                .ns
                .run_async(move || namespace::repin(&ns_handle, &name))
                .await??;
            let (obs, idx) = kernel::observe_indexed(&host, &ns, desired).await?;
            self.ifindexes = idx;
            obs
        } else {
            let mut o = self
                .committed
                .clone()
                .expect("checked: not full implies committed");
            // One cheap query so tunnel routes follow the tunnel link appearing.
            let tunnel = kernel::get_link(&ns, &desired.tunnel_interface).await?;
            o.tunnel_present = tunnel.is_some();
            self.ifindexes.tunnel = tunnel.map(|l| l.index);
            o
        };
        let mut ops = plan(desired, &obs);
        if additive {
            ops.retain(|op| !op.is_removal());
        }
        // What is both wanted and there now: what this sync withdraws is no longer ours
        // before its deletion's notification can arrive.
        self.owned
            .store(Owned::wanted(desired, &obs, &self.ifindexes));
        report.skipped_routes = skipped_routes(desired, &obs);
        let mut idx = Indexes::default();
        let mut failed = Vec::new();
        let mut created_veth = false;
        for op in &ops {
            match kernel::execute(op, &host, &ns, self.ns.file(), &mut idx).await {
                Ok(()) => {
                    created_veth |= matches!(op, NodeOp::CreateVeth { .. });
                    tracing::info!(op = %op, "node");
                    apply_to_observed(&mut obs, op, desired);
                    report.ops.push(op.to_string());
                }
                // Losing a race for a name to someone else's object must stop the sync: never
                // touch it.
                Err(e @ NodeError::NoVeth { .. }) => return Err(e),
                Err(e) => {
                    tracing::warn!(op = %op, error = %e, "node operation failed");
                    failed.push(e);
                }
            }
        }
        if created_veth {
            self.ifindexes.host_veth = kernel::get_link(&host, &desired.host_interface)
                .await?
                .map(|l| l.index);
            self.ifindexes.ns_veth = kernel::get_link(&ns, &desired.interface)
                .await?
                .map(|l| l.index);
        }
        self.owned
            .store(Owned::wanted(desired, &obs, &self.ifindexes));
        if !report.skipped_routes.is_empty() && full {
            tracing::info!(
                routes = ?report.skipped_routes,
                tunnel = %desired.tunnel_interface,
                "tunnel routes wait for the tunnel interface"
            );
        }
        // Per-interface sysctls need the links; after a failed operation the next (full) sync
        // writes them.
        if full && failed.is_empty() {
            let h = desired.host_sysctls.clone();
            let mut changed = self
                .host
                .run_async(move || kernel::write_sysctls(&h))
                .await??;
            let n = desired.ns_sysctls.clone();
            changed.extend(
                self.ns
                    .run_async(move || kernel::write_sysctls(&n))
                    .await??
                    .into_iter()
                    .map(|c| format!("{}: {c}", desired.namespace)),
            );
            for c in &changed {
                tracing::info!(sysctl = %c, "sysctl changed");
            }
            report.sysctls_changed = changed;
        }
        if !failed.is_empty() {
            let total = ops.len();
            let n = failed.len();
            let first = failed.swap_remove(0);
            return Err(NodeError::Apply {
                failed: n,
                total,
                first: Box::new(first),
            });
        }
        self.committed = Some(obs);
        Ok(report)
    }

    /// Status for `sdnlinkd status`.
    pub fn status(&self) -> NodeStatus {
        NodeStatus {
            namespace: self.namespace.clone(),
            host_interface: self.host_interface.clone(),
            interface: self.interface.clone(),
            committed: self.committed.clone(),
            last_sync: self.last_sync,
            last_ops: self.last_ops,
            skipped_routes: self.skipped.clone(),
            last_error: self.last_error.clone(),
        }
    }
}

/// What [`cleanup`] removed and what it left because it was not ours.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CleanupReport {
    pub routes_deleted: Vec<String>,
    pub veth_deleted: bool,
    pub namespace_removed: bool,
    /// Objects with our names that are not ours, left untouched.
    pub kept_foreign: Vec<String>,
}

impl fmt::Display for CleanupReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} host routes deleted, veth {}, namespace {}",
            self.routes_deleted.len(),
            if self.veth_deleted {
                "deleted"
            } else {
                "absent"
            },
            if self.namespace_removed {
                "removed"
            } else {
                "absent"
            },
        )?;
        for k in &self.kept_foreign {
            write!(f, "; kept (not ours): {k}")?;
        }
        Ok(())
    }
}

/// `sdnlinkd cleanup` in the calling thread's namespace as host: see [`cleanup_in`].
pub async fn cleanup(cfg: &Config) -> Result<CleanupReport, NodeError> {
    let host = NetNs::current()?;
    cleanup_in(&host, cfg).await
}

/// Removes, with `host` as the host namespace: every main-table route with our protocol in
/// the host, the host veth end (if it is our veth into our namespace), and the namespace pin
/// (everything inside dies with the namespace). Touches nothing else; idempotent.
pub async fn cleanup_in(host: &NetNs, cfg: &Config) -> Result<CleanupReport, NodeError> {
    let nsc = &cfg.namespace;
    let mut rep = CleanupReport::default();
    let h = host.rtnetlink().await?;
    let names = kernel::link_names(&h).await?;
    for (dst, spec, msg) in kernel::dump_routes(&h, nsc.route_protocol, &names).await? {
        let r = h.route().del(msg).execute().await;
        match r {
            Ok(()) => rep.routes_deleted.push(format!("{dst} dev {}", spec.dev)),
            Err(e) if kernel::errno(&e) == Some(libc::ESRCH) => {}
            Err(e) => {
                return Err(NodeError::Netlink {
                    what: format!("deleting host route {dst} proto {}", nsc.route_protocol),
                    source: e,
                })
            }
        }
    }
    let host_link = kernel::get_link(&h, &nsc.host_interface).await?;
    if let Some(hl) = host_link {
        let ns_link = match NetNs::open(&nsc.name) {
            Ok(ns) => {
                let nh = ns.rtnetlink().await?;
                kernel::get_link(&nh, &nsc.interface).await?
            }
            Err(_) => None,
        };
        match kernel::check_ownership(
            &nsc.host_interface,
            &nsc.interface,
            &nsc.name,
            Some(hl.clone()),
            ns_link,
        ) {
            Ok(_) => {
                match h.link().del(hl.index).execute().await {
                    Ok(()) => {}
                    Err(e) if kernel::errno(&e) == Some(libc::ENODEV) => {}
                    Err(e) => {
                        return Err(NodeError::Netlink {
                            what: format!("deleting veth {}", nsc.host_interface),
                            source: e,
                        })
                    }
                }
                rep.veth_deleted = true;
            }
            Err(e) => rep.kept_foreign.push(e.to_string()),
        }
    }
    rep.namespace_removed = namespace::remove_namespace(&nsc.name)?;
    Ok(rep)
}
