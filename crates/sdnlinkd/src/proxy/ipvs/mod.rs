//! The IPVS service-proxy backend on our own generic-netlink codec.
//!
//! - [`nlas`] / [`message`]: the pure codec of the "IPVS" generic-netlink family
//!   (`include/uapi/linux/ip_vs.h`).
//! - [`handle`]: a socket opened inside the namespace, pipelined changes, dumps.
//! - [`plan`]: the pure diff of desired vs observed state and its printable plan.
//! - [`IpvsBackend`]: the [`ProxyBackend`] the daemon drives.
//!
//! Ownership rule: the backend owns exactly the services whose VIP is in its owned-VIP set.
//! That set is every VIP of the desired state it has been asked to program (the VIPs the
//! daemon puts on the namespace interface), plus, at start, the VIPs adopted by
//! [`adoptable_vips`]: addresses of the namespace interface that lie in a remote cluster's
//! service CIDRs (a previous run placed them; nobody else has a reason to). Services on any
//! other address are never read back into the plan, changed or deleted.

pub mod handle;
pub mod message;
pub mod nlas;
pub mod plan;

pub use handle::{ipvs_available, IpvsSocket};
pub use plan::{Drains, Op, OpKind, Plan, Removal, Table, TableService};

use crate::config::Config;
use crate::netns::NetNs;
use crate::proxy::{DesiredProxy, Destination, ProxyBackend, ProxyError, SyncReport, VirtualKey};
use message::protocol_of;
use plan::DestState;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Errors of the IPVS codec, socket and backend.
#[derive(Debug, thiserror::Error)]
pub enum IpvsError {
    #[error("the kernel has no IPVS (generic netlink family \"IPVS\" not found)")]
    Unavailable,
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("decoding an IPVS netlink message: {0}")]
    Decode(String),
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
}

impl From<netlink_packet_core::DecodeError> for IpvsError {
    fn from(e: netlink_packet_core::DecodeError) -> Self {
        IpvsError::Decode(e.to_string())
    }
}

/// The plan from `observed` to `desired` now, after `desired` adopted what the kernel has for
/// clusters that have not listed yet (returned with the plan): what a sync sends and what
/// `sdnlinkd plan` prints.
fn plan_adopting<'a>(
    desired: &'a DesiredProxy,
    observed: &Table,
    owned: &BTreeSet<IpAddr>,
    drains: &plan::Drains,
    grace: Duration,
    removal: Removal,
) -> (std::borrow::Cow<'a, DesiredProxy>, Plan) {
    let desired = match desired.adopting(plan::table_services(observed)) {
        Some(adopted) => std::borrow::Cow::Owned(adopted),
        None => std::borrow::Cow::Borrowed(desired),
    };
    let p = plan::plan_with(
        &desired,
        observed,
        owned,
        drains,
        Instant::now(),
        grace,
        removal,
    );
    (desired, p)
}

/// Reads our part of the kernel table: every service on `owned` VIPs with its destinations.
/// One service dump plus one destination dump per owned service (a netlink socket runs one
/// dump at a time, so these are sequential round trips).
pub fn observe(sock: &mut IpvsSocket, owned: &BTreeSet<IpAddr>) -> Result<Table, IpvsError> {
    let mut t = Table::new();
    for s in sock.services()? {
        if !owned.contains(&s.id.addr) {
            continue;
        }
        let Some(protocol) = protocol_of(s.id.protocol) else {
            continue;
        };
        let key = VirtualKey {
            vip: s.id.addr,
            protocol,
            port: s.id.port,
        };
        let dests = sock
            .dests(&s.id)?
            .into_iter()
            .map(|d| {
                (
                    Destination {
                        addr: d.addr,
                        port: d.port,
                    },
                    DestState {
                        weight: d.weight,
                        fwd: d.fwd,
                    },
                )
            })
            .collect();
        t.insert(key, TableService { service: s, dests });
    }
    Ok(t)
}

/// Plans of at most this many operations log each one at INFO.
const LOGGED_OPS: usize = 32;

/// The committed table after a plan, the failures per service, and the messages sent.
pub type Executed = (Table, Vec<(VirtualKey, String)>, usize);

/// Sends a plan pipelined; returns the committed table after it (successful ops applied to
/// `base`), the failures per service, and the number of messages sent. "Already exists" on
/// creation and "already gone" on deletion count as success.
pub fn execute(sock: &mut IpvsSocket, plan: &Plan, mut base: Table) -> Result<Executed, IpvsError> {
    let msgs: Vec<_> = plan.ops.iter().map(Op::message).collect();
    // Like the node's operations: every write is in the log, and a steady state writes none.
    // A large plan (an initial list, a mass change) is summed up in one line.
    if plan.ops.len() <= LOGGED_OPS {
        for op in &plan.ops {
            tracing::info!(op = %op, "ipvs");
        }
    } else {
        tracing::info!(operations = plan.ops.len(), "ipvs: applying a large plan");
        for op in &plan.ops {
            tracing::debug!(op = %op, "ipvs");
        }
    }
    let results = sock.execute(&msgs)?;
    let mut failed: BTreeMap<VirtualKey, String> = BTreeMap::new();
    for (op, r) in plan.ops.iter().zip(results) {
        let ok = match &r {
            Ok(()) => true,
            Err(e) => {
                let code = e.raw_os_error().unwrap_or(0);
                match op.kind {
                    OpKind::AddService(_) | OpKind::AddDest(..) => code == libc::EEXIST,
                    // IPVS answers ESRCH for an unknown service, ENOENT for an unknown dest.
                    OpKind::DelService | OpKind::DelDest(_) => {
                        code == libc::ESRCH || code == libc::ENOENT
                    }
                    _ => false,
                }
            }
        };
        if ok {
            op.apply_to(&mut base);
        } else if let Err(e) = r {
            failed.entry(op.key).or_insert_with(|| format!("{op}: {e}"));
        }
    }
    Ok((base, failed.into_iter().collect(), msgs.len()))
}

/// VIPs a starting daemon adopts as its own: addresses of `interface` in the namespace that
/// lie in one of `service_cidrs` (every remote cluster's service CIDRs).
pub fn adoptable_vips(
    ns: &NetNs,
    interface: &str,
    service_cidrs: &[ipnet::IpNet],
) -> Result<BTreeSet<IpAddr>, IpvsError> {
    let iface = interface.to_string();
    let addrs = ns
        .run(move || -> Result<Vec<IpAddr>, io::Error> {
            let mut out = Vec::new();
            for ifa in nix::ifaddrs::getifaddrs().map_err(io::Error::from)? {
                if ifa.interface_name != iface {
                    continue;
                }
                let Some(a) = ifa.address else { continue };
                if let Some(v4) = a.as_sockaddr_in() {
                    out.push(IpAddr::V4(v4.ip()));
                } else if let Some(v6) = a.as_sockaddr_in6() {
                    out.push(IpAddr::V6(v6.ip()));
                }
            }
            Ok(out)
        })?
        .map_err(|source| IpvsError::Io {
            context: "listing namespace addresses".into(),
            source,
        })?;
    Ok(addrs
        .into_iter()
        .filter(|a| service_cidrs.iter().any(|c| c.contains(a)))
        .collect())
}

/// The namespace sysctls IPVS needs on a kernel of `release` (path under /proc/sys -> value).
/// The node plumbing writes them with its own (through [`ProxyBackend::sysctls`]); the
/// directory appears with the ip_vs module.
///
/// - `conntrack=0`: IPVS keeps its own connection table, which is all its NAT and the reply
///   path need, and leaves its flows untracked. With 1, IPVS rewrites a new flow's conntrack
///   reply tuple without NAT's clash resolution: a pod that reaches an endpoint through a VIP
///   from a source port its earlier direct connection to that endpoint still holds in
///   conntrack (TIME_WAIT, 120 s) clashes at confirmation (`insert_failed`), and every SYN is
///   dropped until the old entry expires (`tests/ipvs_vm.rs`
///   `root_ipvs_a_source_port_reused_after_a_direct_connection_still_connects`). Nothing in the
///   namespace needs the entries: the inbound filter admits replies by their pod destination.
/// - `expire_nodest_conn=1`: connections to a deleted destination are dropped at once
///   instead of black-holing until they time out.
/// - `expire_quiescent_template=1`: persistence templates pointing at a weight-0 destination
///   expire, so ClientIP affinity moves off a draining endpoint.
/// - `conn_reuse_mode`: kubernetes 81775 — on kernels before 5.9 mode 1 delays reconnects
///   that reuse a source port by a second, so 0 there; from 5.9 the kernel reschedules such
///   connections without the delay and 1 (the default) is right.
pub fn namespace_sysctls(release: &str) -> BTreeMap<String, String> {
    let reuse = if kernel_at_least(release, 5, 9) {
        "1"
    } else {
        "0"
    };
    [
        ("conntrack", "0"),
        ("expire_nodest_conn", "1"),
        ("expire_quiescent_template", "1"),
        ("conn_reuse_mode", reuse),
    ]
    .into_iter()
    .map(|(k, v)| (format!("net/ipv4/vs/{k}"), v.to_string()))
    .collect()
}

/// The running kernel's release (`uname -r`); empty when it cannot be read, which
/// [`kernel_at_least`] treats as older than anything.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Writes [`namespace_sysctls`] in `ns` (ip_vs must be loaded), for tests that run IPVS without
/// the node plumbing.
pub fn apply_sysctls(ns: &NetNs) -> Result<(), IpvsError> {
    let want = namespace_sysctls(&kernel_release());
    let r = ns.run(move || -> Result<(), io::Error> {
        for (k, v) in &want {
            let path = format!("/proc/sys/{k}");
            std::fs::write(&path, v)
                .map_err(|e| io::Error::new(e.kind(), format!("writing {path}: {e}")))?;
        }
        Ok(())
    })?;
    r.map_err(|source| IpvsError::Io {
        context: "IPVS sysctls".into(),
        source,
    })
}

/// `"6.1.0-27-cloud-amd64"` >= (major, minor)?
pub fn kernel_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>().unwrap_or(0));
    let (ma, mi) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (ma, mi) >= (major, minor)
}

/// The IPVS backend: see the module documentation for what it owns.
pub struct IpvsBackend {
    ns: NetNs,
    sock: Option<IpvsSocket>,
    owned_vips: BTreeSet<IpAddr>,
    committed: Option<Table>,
    drains: Drains,
    grace: Duration,
    last_plan: Plan,
}

impl std::fmt::Debug for IpvsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpvsBackend")
            .field("ns", &self.ns)
            .field("owned_vips", &self.owned_vips.len())
            .finish()
    }
}

impl IpvsBackend {
    /// A backend acting in `ns`, deleting drained destinations after `drain_grace`, owning
    /// `adopted_vips` from the start (see [`adoptable_vips`]). Fails with
    /// `IpvsError::Unavailable` when the kernel has no IPVS.
    pub fn new(
        ns: NetNs,
        drain_grace: Duration,
        adopted_vips: BTreeSet<IpAddr>,
    ) -> Result<Self, IpvsError> {
        let sock = IpvsSocket::open(&ns)?;
        Ok(IpvsBackend {
            ns,
            sock: Some(sock),
            owned_vips: adopted_vips,
            committed: None,
            drains: Drains::new(),
            grace: drain_grace,
            last_plan: Plan::default(),
        })
    }

    /// `new` with the adoption rule and drain grace of `cfg`.
    pub fn from_config(ns: NetNs, cfg: &Config) -> Result<Self, IpvsError> {
        let cidrs: Vec<ipnet::IpNet> = cfg
            .remote
            .iter()
            .flat_map(|r| r.service_cidrs.iter().copied())
            .collect();
        let adopted = adoptable_vips(&ns, &cfg.namespace.interface, &cidrs)?;
        Self::new(ns, cfg.proxy.drain_grace, adopted)
    }

    /// The VIPs whose services this backend owns.
    pub fn owned_vips(&self) -> &BTreeSet<IpAddr> {
        &self.owned_vips
    }

    /// VIPs that still carry one of our services although the desired state no longer has
    /// them (a service draining before its deletion, or a delete that failed): the daemon
    /// keeps them on the interface, since IPVS only sees packets to local addresses.
    pub fn lingering_vips(&self, desired: &DesiredProxy) -> BTreeSet<IpAddr> {
        let wanted = desired.vips();
        self.owned_vips
            .iter()
            .filter(|v| !wanted.contains(v))
            .copied()
            .collect()
    }

    /// When the daemon should sync again so draining destinations get deleted.
    pub fn next_deadline(&self) -> Option<Instant> {
        Plan::next_deadline(&self.drains, self.grace)
    }

    /// The plan of the last sync (printable).
    pub fn last_plan(&self) -> &Plan {
        &self.last_plan
    }

    /// Blocking sync (call from a blocking context; [`ProxyBackend::sync`] wraps it).
    pub fn sync_blocking(
        &mut self,
        desired: &DesiredProxy,
        full: bool,
    ) -> Result<SyncReport, IpvsError> {
        self.sync_removing(desired, full, Removal::Drain)
    }

    fn sync_removing(
        &mut self,
        desired: &DesiredProxy,
        full: bool,
        removal: Removal,
    ) -> Result<SyncReport, IpvsError> {
        let start = Instant::now();
        let mut sock = match self.sock.take() {
            Some(s) => s,
            None => IpvsSocket::open(&self.ns)?,
        };
        let res = self.sync_with(&mut sock, desired, full, start, removal);
        // A socket that failed at the transport level is reopened next time.
        if res.is_ok() {
            self.sock = Some(sock);
        } else {
            self.committed = None;
        }
        res
    }

    fn sync_with(
        &mut self,
        sock: &mut IpvsSocket,
        desired: &DesiredProxy,
        full: bool,
        start: Instant,
        removal: Removal,
    ) -> Result<SyncReport, IpvsError> {
        self.owned_vips.extend(desired.vips());
        let sent_before = sock.messages_sent;
        let was_full = full || self.committed.is_none();
        // The committed table is moved, not copied: at 10k services x 10 endpoints a copy
        // costs more than the diff itself.
        let observed = match (self.committed.take(), full) {
            (Some(c), false) => c,
            _ => observe(sock, &self.owned_vips)?,
        };
        let (desired, plan) = plan_adopting(
            desired,
            &observed,
            &self.owned_vips,
            &self.drains,
            self.grace,
            removal,
        );
        let desired = desired.as_ref();
        let (table, failed, _) = execute(sock, &plan, observed)?;
        // Keep a VIP owned while one of our services still sits on it (a failed delete).
        let still: BTreeSet<IpAddr> = table.keys().map(|k| k.vip).collect();
        let wanted = desired.vips();
        self.owned_vips
            .retain(|v| wanted.contains(v) || still.contains(v));
        self.drains = plan.drains.clone();
        self.committed = Some(table);
        self.last_plan = plan;
        Ok(SyncReport {
            full: was_full,
            operations: (sock.messages_sent - sent_before) as usize,
            duration: start.elapsed(),
            failed,
        })
    }

    /// What a full sync would send now, one operation per line, without sending it
    /// (`sdnlinkd plan`): the table read afresh on a socket of its own, planned as
    /// [`IpvsBackend::sync`] plans, nothing committed.
    pub async fn plan_full(&self, desired: &DesiredProxy) -> Result<String, ProxyError> {
        let ns = self.ns.clone();
        let desired = desired.clone();
        let mut owned = self.owned_vips.clone();
        owned.extend(desired.vips());
        let drains = self.drains.clone();
        let grace = self.grace;
        let planned = tokio::task::spawn_blocking(move || -> Result<String, IpvsError> {
            let mut sock = IpvsSocket::open(&ns)?;
            let observed = observe(&mut sock, &owned)?;
            let (_, p) = plan_adopting(&desired, &observed, &owned, &drains, grace, Removal::Drain);
            Ok(p.to_string())
        })
        .await
        .map_err(|source| ProxyError::Task {
            backend: "ipvs",
            what: "plan",
            source,
        })?;
        Ok(planned?)
    }

    /// Blocking cleanup: deletes every service on owned VIPs.
    pub fn cleanup_blocking(&mut self) -> Result<(), IpvsError> {
        let report = self.sync_removing(&DesiredProxy::default(), true, Removal::Immediate)?;
        if let Some((k, e)) = report.failed.first() {
            return Err(IpvsError::Io {
                context: format!("cleanup of {k}"),
                source: io::Error::other(e.clone()),
            });
        }
        Ok(())
    }
}

impl ProxyBackend for IpvsBackend {
    fn name(&self) -> &'static str {
        "ipvs"
    }

    fn needs_vips(&self) -> bool {
        true
    }

    fn lingering_vips(&self, desired: &DesiredProxy) -> BTreeSet<IpAddr> {
        IpvsBackend::lingering_vips(self, desired)
    }

    fn next_deadline(&self) -> Option<Instant> {
        IpvsBackend::next_deadline(self)
    }

    fn sysctls(&self) -> BTreeMap<String, String> {
        namespace_sysctls(&kernel_release())
    }

    async fn plan_full(&self, desired: &DesiredProxy) -> Result<String, ProxyError> {
        IpvsBackend::plan_full(self, desired).await
    }

    async fn sync(&mut self, desired: &DesiredProxy, full: bool) -> Result<SyncReport, ProxyError> {
        // The netlink socket and the table can be large: the work runs on a blocking thread
        // (the socket keeps its namespace, so any thread will do).
        let desired = desired.clone();
        let mut me = std::mem::replace(self, self.placeholder());
        let (me, res) = tokio::task::spawn_blocking(move || {
            let r = me.sync_blocking(&desired, full);
            (me, r)
        })
        .await
        .map_err(|source| ProxyError::Task {
            backend: "ipvs",
            what: "sync",
            source,
        })?;
        *self = me;
        Ok(res?)
    }

    async fn cleanup(&mut self) -> Result<(), ProxyError> {
        let mut me = std::mem::replace(self, self.placeholder());
        let (me, res) = tokio::task::spawn_blocking(move || {
            let r = me.cleanup_blocking();
            (me, r)
        })
        .await
        .map_err(|source| ProxyError::Task {
            backend: "ipvs",
            what: "cleanup",
            source,
        })?;
        *self = me;
        Ok(res?)
    }
}

impl IpvsBackend {
    /// What stays behind while the real state is away on the blocking thread: if the sync
    /// future is dropped mid-way, the next sync is a full one that still knows every VIP it
    /// owns and every drain in progress.
    fn placeholder(&self) -> IpvsBackend {
        IpvsBackend {
            ns: self.ns.clone(),
            sock: None,
            owned_vips: self.owned_vips.clone(),
            committed: None,
            drains: self.drains.clone(),
            grace: self.grace,
            last_plan: Plan::default(),
        }
    }
}

#[cfg(test)]
mod tests;
