//! The daemon: one reconcile task owns every subsystem.
//!
//! Events (cluster changes, deletions of owned network objects, the resync timer, drain
//! deadlines, reloads) only mark a reason in the [`scheduler::Scheduler`], which coalesces them.
//! A sync computes the desired state of every subsystem as values from config + snapshots
//! ([`desired::Desired`]) and lets each subsystem diff and apply. Incremental syncs diff against
//! the last committed state; the periodic resync and any sync after a failure are full (re-read
//! the kernel, repair drift).
//!
//! Unknown is not empty: a watched remote cluster that has not listed in this run is *held*.
//! Its persisted snapshot (if any) is served, and whatever the node has for it in the kernel
//! stays, so a restart or reload with an API server down withdraws nothing. The task never
//! awaits a Kubernetes API call (the node's annotations are published by a task of their own)
//! and `sdnlinkd status` is answered from the [`board::Board`], not by the task. `WATCHDOG=1`
//! is sent from this loop only, so a stuck sync stops the pings and systemd restarts us.

pub mod board;
pub mod desired;
mod plan;
mod reload;
pub mod scheduler;
pub mod status;
mod sync;

pub use plan::{DryRun, PlanPart};
pub use sync::{LastSync, SyncError};

use crate::clusters::persist::SnapshotStore;
use crate::clusters::ClusterSet;
use crate::config::Config;
use crate::control::{self, Command as Ctl, Pending, Response};
use crate::netns::NetNs;
use crate::notify::Notifier;
use crate::proxy::nft::owned::TableSync;
use crate::proxy::{AnyProxy, ProxyBackend, ProxyError, SyncReport};
use crate::{dns, node, proxy, tunnel};
use anyhow::Context;
use board::{Board, LocalInfo, LoopPart, MssStatus, ProxyStatus};
use scheduler::{Due, Reason, Scheduler};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

struct Daemon {
    path: PathBuf,
    cfg: Arc<Config>,
    notifier: Notifier,
    host: NetNs,
    ns: NetNs,
    /// Handles with namespace threads of their own, for status reads during a sync.
    status_host: NetNs,
    status_ns: NetNs,
    plumbing: node::Plumbing,
    tunnel: tunnel::Tunnel,
    mss: tunnel::mss::MssClamp,
    /// Why the MSS clamp could not be applied; not fatal (path-MTU discovery still works where
    /// ICMP passes), so it degrades the status instead of failing the sync.
    mss_error: Option<String>,
    inbound: tunnel::inbound::InboundFilter,
    /// Why the tunnel's inbound filter could not be applied: not fatal either, the tunnel
    /// still carries traffic, but a remote node can then reach this namespace and the host.
    inbound_error: Option<String>,
    /// A proxy backend a reload replaced: its services are withdrawn once the new backend has
    /// applied, so no VIP goes unserved in between (nft DNAT runs before IPVS sees a packet, so
    /// a stale nft table would otherwise keep answering for the IPVS backend).
    retired_proxy: Option<AnyProxy>,
    /// VIPs kept for services that left and are draining (IPVS), as of the last sync.
    draining_vips: Vec<std::net::IpAddr>,
    public_key: String,
    proxy: AnyProxy,
    dns: Option<dns::DnsServer>,
    /// The clusters' generation whose zones the DNS stub serves.
    zones_generation: Option<crate::clusters::Generations>,
    clusters: ClusterSet,
    sched: Scheduler,
    started: Instant,
    /// `READY=1` was sent.
    ready: bool,
    /// A sync (successful or not) has run: what `READY=1` waits for.
    applied_once: bool,
    last: LastSync,
    reload_error: Option<String>,
    last_desired_services: usize,
    held_clusters: Vec<String>,
    board: Board,
    metrics: crate::metrics::Metrics,
}

/// Hands the DNS stub's sockets to systemd's fd store (replacing what it held for them), or
/// drops them from it when there is no stub. A failure costs only the next crash's queries,
/// so it is logged and the daemon goes on.
fn keep_dns_fds(notifier: &Notifier, server: Option<&dns::DnsServer>) {
    if !notifier.enabled() {
        return;
    }
    let Some(sockets) = server.and_then(|s| s.sockets()) else {
        drop_dns_fds(notifier);
        return;
    };
    let stored = notifier
        .store_fds(dns::FD_NAME_UDP, &sockets.udp_fds())
        .and_then(|()| notifier.store_fds(dns::FD_NAME_TCP, &[sockets.tcp_fd()]));
    match stored {
        Ok(()) => tracing::debug!(address = %sockets.addr(), "DNS sockets handed to the fd store"),
        Err(e) => {
            tracing::warn!(error = %e, "handing the DNS sockets to systemd's fd store failed: queries asked during a restart will wait for their retry")
        }
    }
}

/// Drops the DNS sockets from systemd's fd store.
fn drop_dns_fds(notifier: &Notifier) {
    if !notifier.enabled() {
        return;
    }
    for name in [dns::FD_NAME_UDP, dns::FD_NAME_TCP] {
        if let Err(e) = notifier.remove_fds(name) {
            tracing::warn!(fdname = name, error = %e, "dropping the DNS sockets from the fd store");
        }
    }
}

/// Runs the daemon until SIGTERM/SIGINT. The dataplane is left in place on exit.
pub async fn run(path: PathBuf, cfg: Config, notifier: Notifier) -> anyhow::Result<()> {
    notifier.status("starting: loading persisted snapshots and starting the cluster watches");
    // The clusters first: their persisted snapshots are what DNS answers from at once.
    let store = SnapshotStore::new(&cfg.state_dir, crate::clusters::persist::DEFAULT_MAX_BYTES);
    let clusters =
        ClusterSet::start_held(&cfg, Some(store)).context("starting the cluster watches")?;

    // Before anything else when systemd's fd store kept the sockets of the previous process
    // (notify module): they never closed, so what was asked while no process ran is
    // answered now, and the watch tasks wait until then (`ClusterSet::start_held`).
    let zones = || Arc::new(dns::ZoneData::build(&cfg, &clusters.snapshots()));
    let mut dns = None;
    let dns_addr = std::net::SocketAddr::new(cfg.dns.address, cfg.dns.port);
    let kept_udp = notifier.take_passed(dns::FD_NAME_UDP);
    let kept_tcp = notifier.take_passed(dns::FD_NAME_TCP);
    let mut dns_kept = false;
    if !kept_udp.is_empty() || !kept_tcp.is_empty() {
        let adopted = if cfg.dns.enabled {
            dns::DnsSockets::adopt(kept_udp, kept_tcp, dns_addr)
        } else {
            Err("dns.enabled = false".into())
        };
        match adopted
            .and_then(|s| dns::DnsServer::serve(&cfg, s, zones()).map_err(|e| e.to_string()))
        {
            Ok(server) => {
                tracing::info!(address = %dns_addr, "DNS stub answers on the sockets systemd kept (fd store): no query asked while the daemon was down is lost");
                dns = Some(server);
                dns_kept = true;
            }
            Err(e) => {
                // Dropped from the store before anything binds: a stale TCP listener there
                // would hold the port (EADDRINUSE), a stale UDP socket would join the new
                // ones' SO_REUSEPORT group and swallow its share of the queries.
                tracing::warn!(
                    "not serving DNS on the sockets systemd kept: {e}; binding new ones"
                );
                drop_dns_fds(&notifier);
            }
        }
    }
    for name in notifier.unclaimed() {
        tracing::warn!(fdname = %name, "systemd passed a descriptor this version does not use; closing it and dropping it from the fd store");
        let _ = notifier.take_passed(&name);
        if let Err(e) = notifier.remove_fds(&name) {
            tracing::warn!(fdname = %name, error = %e, "dropping a descriptor from the fd store");
        }
    }
    notifier.status("starting: preparing the namespace");
    if let Some(w) = node::cni::routing_warning(&node::cni::host_links()) {
        tracing::warn!("{w}");
    }
    let host = NetNs::current().context("opening the host network namespace")?;
    node::ensure_namespace(&cfg.namespace.name)
        .with_context(|| format!("network namespace {:?}", cfg.namespace.name))?;
    let ns = NetNs::open(&cfg.namespace.name)?;
    let status_host = host
        .with_own_worker()
        .context("a status handle on the host namespace")?;
    let status_ns = ns
        .with_own_worker()
        .context("a status handle on the namespace")?;
    let key = tunnel::keys::load_or_create(&cfg.tunnel.private_key_file)
        .context("WireGuard private key")?;
    let public_key = key.public_key().to_base64();

    let board = Board::new(clusters.view());
    // DNS first when its address is there: after a crash the namespace and the address are
    // still in place, so the stub answers from the persisted snapshots while the rest is being
    // checked. On a first start it starts after the additive sync adds the address (binding
    // earlier, even with IP_FREEBIND, gives replies the wrong source: `dns::address_present`).
    if dns.is_none() && cfg.dns.enabled && dns::address_present(&ns, cfg.dns.address).await {
        match dns::DnsServer::start(&cfg, &ns, zones()).await {
            Ok(server) => dns = Some(server),
            Err(e) => tracing::debug!("DNS stub not bound before the namespace setup: {e}"),
        }
    }
    clusters.release();

    let mut plumbing = node::Plumbing::new(&cfg, host.clone(), ns.clone());
    // The veth and transit addresses before the tunnel, so it has somewhere to live; additive,
    // so a restart withdraws nothing the previous run installed.
    let base = node::NodeDesired::from_config(&cfg, &node::NodeExtras::default());
    plumbing
        .sync_additive(&base)
        .await
        .context("setting up the namespace, veth, addresses and routes")?;
    if cfg.dns.enabled && dns.is_none() {
        let server = dns::DnsServer::start(&cfg, &ns, zones())
            .await
            .context("starting the DNS stub")?;
        dns = Some(server);
    }
    if let Some(server) = &dns {
        board.set_dns(Some(server.status_handle()));
        if !dns_kept {
            keep_dns_fds(&notifier, Some(server));
        }
    }

    notifier.status("starting: tunnel");
    let tunnel = tunnel::Tunnel::ensure(&cfg, host.clone(), ns.clone(), key)
        .await
        .context("setting up the WireGuard interface")?;
    let proxy = AnyProxy::choose(&cfg, &ns).context("starting the proxy backend")?;
    clusters.publish(&public_key, cfg.tunnel.endpoint);
    board.set_publish(clusters.publish_view());

    let metrics = crate::metrics::Metrics::default();
    if let Some(addr) = cfg.metrics.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("metrics.listen = \"{addr}\": cannot listen there (another program on the port, or an address this host does not have); set another address or leave it empty"))?;
        tracing::info!(%addr, "serving Prometheus metrics on /metrics");
        tokio::spawn(crate::metrics::serve(
            listener,
            metrics.clone(),
            board.clone(),
        ));
    }
    let mss = tunnel::mss::MssClamp::new(ns.clone());
    let inbound = tunnel::inbound::InboundFilter::new(ns.clone());
    let sched = Scheduler::new(cfg.sync.min_interval, cfg.sync.max_delay);
    let mut d = Daemon {
        path,
        cfg: Arc::new(cfg),
        notifier,
        host,
        ns,
        status_host,
        status_ns,
        plumbing,
        tunnel,
        mss,
        mss_error: None,
        inbound,
        inbound_error: None,
        retired_proxy: None,
        draining_vips: Vec::new(),
        public_key,
        proxy,
        dns,
        zones_generation: None,
        clusters,
        sched,
        started: Instant::now(),
        ready: false,
        applied_once: false,
        last: LastSync::default(),
        reload_error: None,
        last_desired_services: 0,
        held_clusters: Vec::new(),
        board,
        metrics,
    };
    d.publish_board();
    d.main_loop().await
}

impl Daemon {
    async fn main_loop(&mut self) -> anyhow::Result<()> {
        let (ctl_tx, mut ctl_rx) = mpsc::channel::<Pending>(16);
        let sock = self.cfg.control_socket.clone();
        let board = self.board.clone();
        let status_fn: control::StatusFn = Arc::new(move || {
            let b = board.clone();
            Box::pin(async move {
                let st = b.status().await?;
                serde_json::to_value(st).ok()
            })
        });
        let mut control_task =
            tokio::spawn(async move { control::serve(&sock, ctl_tx, status_fn).await });
        let node_events = node::watch_events(&self.host, &self.ns, self.plumbing.owned())
            .await
            .context("subscribing to netlink events")?;

        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sighup = signal(SignalKind::hangup())?;

        let changed = self.clusters.changed();
        let pet_every = self
            .notifier
            .watchdog()
            .map(|w| w / 2)
            .unwrap_or(Duration::from_secs(10));
        let mut pet = tokio::time::interval(pet_every);
        let mut resync = tokio::time::interval_at(
            (Instant::now() + self.cfg.resync_interval).into(),
            self.cfg.resync_interval,
        );
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.sched.mark(Instant::now(), Reason::Startup);

        loop {
            let due = self.sched.due_at();
            let drain_at = self.proxy.next_deadline();
            let keepalive_at = self.tunnel.next_wakeup().map(|t| {
                let now = Instant::now();
                match t.duration_since(SystemTime::now()) {
                    Ok(d) => now + d,
                    Err(_) => now,
                }
            });
            let grace_end = self.started + self.cfg.sync.startup_grace;
            let far = Instant::now() + Duration::from_secs(3600);

            tokio::select! {
                _ = changed.notified() => self.sched.mark(Instant::now(), Reason::Clusters),
                notice = node_events.notified() => {
                    tracing::info!(%notice, "an owned network object changed out of band; repairing");
                    self.sched.mark(Instant::now(), Reason::Repair);
                }
                _ = tokio::time::sleep_until(drain_at.unwrap_or(far).into()), if drain_at.is_some() && !self.sched.is_pending() => {
                    self.sched.mark(Instant::now(), Reason::Drain);
                }
                _ = tokio::time::sleep_until(keepalive_at.unwrap_or(far).into()), if keepalive_at.is_some() && !self.sched.is_pending() => {
                    self.sched.mark(Instant::now(), Reason::Keepalive);
                }
                _ = resync.tick() => self.sched.mark(Instant::now(), Reason::Resync),
                _ = tokio::time::sleep_until(due.unwrap_or(far).into()), if due.is_some() => {
                    if let Some(d) = self.sched.take(Instant::now()) {
                        self.run_sync(d).await;
                    }
                }
                _ = tokio::time::sleep_until(grace_end.into()), if !self.ready && self.applied_once => {
                    self.check_ready();
                }
                Some(req) = ctl_rx.recv() => {
                    let resp = match req.cmd {
                        // Answered by the control server from the board; kept for old clients.
                        Ctl::Status => Response::error("status is served by the control socket"),
                        Ctl::Reload => match self.reload().await {
                            Ok(_) => Response { ok: true, error: None, status: None },
                            Err(e) => Response::error(&e),
                        },
                        Ctl::Plan => Response {
                            ok: true,
                            error: None,
                            status: serde_json::to_value(self.plan().await).ok(),
                        },
                    };
                    let _ = req.reply.send(resp);
                }
                _ = sighup.recv() => {
                    // The same path as `sdnlinkd reload`; the outcome is in the log and STATUS=.
                    let _ = self.reload().await;
                }
                _ = sigterm.recv() => break,
                _ = sigint.recv() => break,
                r = &mut control_task => {
                    let msg = match r {
                        Ok(Err(e)) => e.to_string(),
                        Ok(Ok(())) => "control socket closed".into(),
                        Err(e) => e.to_string(),
                    };
                    anyhow::bail!("control socket failed: {msg}");
                }
                _ = pet.tick() => {}
            }
            // Only a loop that gets here is alive: a hung sync never pets the watchdog.
            self.notifier.watchdog_ping();
        }
        self.notifier.stopping();
        tracing::info!("stopping; the namespace, tunnel, proxy rules and routes stay in place");
        control_task.abort();
        let _ = std::fs::remove_file(&self.cfg.control_socket);
        if let Some(dns) = self.dns.take() {
            if let Err(e) = dns.shutdown().await {
                tracing::warn!(error = %e, "DNS stub shutdown");
            }
        }
        Ok(())
    }

    /// Runs one scheduled sync and records it.
    async fn run_sync(&mut self, due: Due) {
        let ok = self.sync(due.full).await;
        self.sched.finished(Instant::now(), &due, ok);
        self.applied_once = true;
        if !self.check_ready() {
            self.notifier.status(&self.status_line());
        }
        self.publish_board();
    }

    /// Sends `READY=1` once the first sync has run and every cluster has a snapshot to serve,
    /// or `sync.startup_grace` has passed. A failed object does not hold readiness back: it
    /// degrades `STATUS=` and `status --json` instead. Returns whether READY was sent now.
    fn check_ready(&mut self) -> bool {
        if self.ready || !self.applied_once {
            return false;
        }
        let grace_over = self.started.elapsed() >= self.cfg.sync.startup_grace;
        if !self.clusters.all_known() && !grace_over {
            return false;
        }
        self.ready = true;
        self.notifier.ready(&self.status_line());
        tracing::info!(
            after_ms = self.started.elapsed().as_millis() as u64,
            "first apply done: ready"
        );
        self.publish_board();
        true
    }

    /// Problems the task knows of, one line each (cluster problems come from the board).
    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Some(e) = &self.last.error {
            p.push(format!("last sync failed: {e}"));
        }
        if let Some(e) = &self.mss_error {
            p.push(format!("MSS clamp not applied: {e}"));
        }
        if let Some(e) = &self.inbound_error {
            p.push(format!("inbound filter not applied: {e}"));
        }
        if let Some(e) = &self.reload_error {
            p.push(format!("last reload refused: {e}"));
        }
        p
    }

    /// The `STATUS=` line.
    fn status_line(&self) -> String {
        let st = self.clusters.status();
        let mut problems = self.problems();
        problems.extend(board::cluster_problems(st.iter()));
        let phase = if !self.ready {
            "starting:"
        } else if problems.is_empty() {
            "ready:"
        } else {
            "degraded:"
        };
        let mut s = format!(
            "{phase} {} clusters, proxy {}, last sync {} in {:.0} ms",
            st.len(),
            self.proxy.name(),
            if self.last.ok { "ok" } else { "FAILED" },
            self.last.duration_ms
        );
        for p in problems {
            s.push_str("; ");
            s.push_str(&p);
        }
        s
    }

    /// Publishes the task's part of the status.
    fn publish_board(&self) {
        let (v4, v6) = tunnel::mss::mss_for(self.cfg.tunnel.mtu);
        self.board.set_part(LoopPart {
            ready: self.ready,
            status: self.status_line(),
            config: self.path.display().to_string(),
            local: LocalInfo {
                cluster: self.cfg.local.name.clone(),
                node: self.cfg.local.node_name.clone(),
            },
            namespace: self.cfg.namespace.name.clone(),
            node: self.plumbing.status(),
            mss_clamp: MssStatus {
                table: tunnel::mss::TABLE,
                interface: self.cfg.tunnel.interface.clone(),
                ipv4: v4,
                ipv6: v6,
                error: self.mss_error.clone(),
            },
            proxy: ProxyStatus {
                backend: self.proxy.name(),
                services: self.last_desired_services,
                held_clusters: self.held_clusters.clone(),
                draining_vips: self.draining_vips.clone(),
                last_sync: self.last.proxy.clone(),
            },
            last_sync: self.last.clone(),
            syncs: self.sched.counts().clone(),
            reload_error: self.reload_error.clone(),
            problems: self.problems(),
        });
    }
}

/// `sdnlinkd cleanup`: removes everything sdnlinkd owns and nothing else; safe to repeat.
pub async fn cleanup(cfg: &Config) -> anyhow::Result<String> {
    let mut lines = Vec::new();
    match tunnel::cleanup(cfg).await {
        Ok(r) => lines.push(format!("tunnel: {r}")),
        Err(e) => lines.push(format!("tunnel: {e}")),
    }
    // A package reinstalled later must not warm-start from these, so a failure here fails the
    // cleanup, after the dataplane steps have run.
    let store = crate::clusters::persist::SnapshotStore::new(
        &cfg.state_dir,
        crate::clusters::persist::DEFAULT_MAX_BYTES,
    );
    let snapshots = store.remove_all();
    lines.push(match &snapshots {
        Ok(n) => format!("snapshots: removed {n} files in {}", store.dir().display()),
        Err(e) => format!("snapshots: {e}"),
    });
    let r = node::cleanup(cfg)
        .await
        .context("removing the namespace, veth and routes")?;
    lines.push(format!("node: {r}"));
    let _ = std::fs::remove_file(&cfg.control_socket);
    if snapshots.is_err() {
        anyhow::bail!("{}\nnot every snapshot file was removed", lines.join("\n"));
    }
    Ok(lines.join("\n"))
}
