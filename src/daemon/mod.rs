//! The daemon: one reconcile task owns every subsystem.
//!
//! Events (cluster changes, netlink deletions, the resync timer, control requests, signals)
//! only mark work; the task coalesces them (at most one sync per `sync.min_interval`, none later
//! than `sync.max_delay` after the first change), computes the desired state of every subsystem
//! as values from config + snapshots, and lets each subsystem diff and apply. Incremental syncs
//! diff against the last committed state; the periodic resync and any sync after a failure are
//! full (re-read the kernel, repair drift). Nothing is applied before every watched cluster has
//! listed once or `sync.startup_grace` has passed. `WATCHDOG=1` is sent from this loop only, so
//! a stuck sync stops the pings and systemd restarts us.

pub mod status;

use crate::clusters::ClusterSet;
use crate::config::{Config, ProxyBackendKind};
use crate::control::{self, Command as Ctl, Pending, Response};
use crate::netns::NetNs;
use crate::notify::Notifier;
use crate::proxy::{DesiredProxy, ProxyBackend, ProxyError, SyncReport};
use crate::{dns, node, proxy, tunnel};
use anyhow::Context;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

/// The proxy backend chosen at start (the trait has async methods, so no trait objects).
pub enum AnyProxy {
    Ipvs(proxy::ipvs::IpvsBackend),
    Nft(proxy::nft::NftBackend),
}

impl AnyProxy {
    fn name(&self) -> &'static str {
        match self {
            AnyProxy::Ipvs(b) => b.name(),
            AnyProxy::Nft(b) => b.name(),
        }
    }
    fn needs_vips(&self) -> bool {
        match self {
            AnyProxy::Ipvs(b) => b.needs_vips(),
            AnyProxy::Nft(b) => b.needs_vips(),
        }
    }
    /// VIPs to keep on the interface beyond the desired ones (IPVS: services still draining).
    fn lingering_vips(&self, d: &DesiredProxy) -> std::collections::BTreeSet<std::net::IpAddr> {
        match self {
            AnyProxy::Ipvs(b) => b.lingering_vips(d),
            AnyProxy::Nft(_) => Default::default(),
        }
    }
    /// When the backend wants a sync without any change (IPVS: a drained destination's grace
    /// period ends and it can be deleted).
    fn next_deadline(&self) -> Option<Instant> {
        match self {
            AnyProxy::Ipvs(b) => b.next_deadline(),
            AnyProxy::Nft(_) => None,
        }
    }
    async fn sync(&mut self, d: &DesiredProxy, full: bool) -> Result<SyncReport, ProxyError> {
        match self {
            AnyProxy::Ipvs(b) => b.sync(d, full).await,
            AnyProxy::Nft(b) => b.sync(d, full).await,
        }
    }

    /// Removes everything this backend owns (a backend replaced by a reload).
    async fn cleanup(&mut self) -> Result<(), ProxyError> {
        match self {
            AnyProxy::Ipvs(b) => b.cleanup().await,
            AnyProxy::Nft(b) => b.cleanup().await,
        }
    }

    /// `proxy.backend`: IPVS when asked or (auto) when the kernel has it, else nftables.
    async fn choose(cfg: &Config, ns: &NetNs) -> anyhow::Result<AnyProxy> {
        let ipvs = match cfg.proxy.backend {
            ProxyBackendKind::Ipvs => true,
            ProxyBackendKind::Nftables => false,
            ProxyBackendKind::Auto => {
                let ok = proxy::ipvs::ipvs_available(ns);
                tracing::info!(
                    backend = if ok { "ipvs" } else { "nftables" },
                    "proxy.backend = auto: IPVS {}",
                    if ok {
                        "is available"
                    } else {
                        "is not in this kernel"
                    }
                );
                ok
            }
        };
        if ipvs {
            let b = proxy::ipvs::IpvsBackend::from_config(ns.clone(), cfg)
                .context("starting the IPVS backend")?;
            proxy::ipvs::apply_sysctls(ns).context("IPVS sysctls in the namespace")?;
            Ok(AnyProxy::Ipvs(b))
        } else {
            Ok(AnyProxy::Nft(proxy::nft::NftBackend::new(ns.clone())))
        }
    }
}

/// What the last sync did, for status.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LastSync {
    pub full: bool,
    pub ok: bool,
    pub error: Option<String>,
    pub duration_ms: f64,
    #[serde(with = "unix_secs_opt")]
    pub at: Option<SystemTime>,
    pub node_operations: usize,
    pub tunnel_operations: usize,
    pub proxy: Option<SyncReport>,
}

mod unix_secs_opt {
    use serde::Serializer;
    use std::time::{SystemTime, UNIX_EPOCH};
    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_u64(
                t.duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            ),
            None => s.serialize_none(),
        }
    }
}

struct Daemon {
    path: PathBuf,
    cfg: Arc<Config>,
    notifier: Notifier,
    host: NetNs,
    ns: NetNs,
    plumbing: node::Plumbing,
    tunnel: tunnel::Tunnel,
    mss: tunnel::mss::MssClamp,
    /// Why the MSS clamp could not be applied; not fatal (path-MTU discovery still works where
    /// ICMP passes), so it degrades the status instead of failing the sync.
    mss_error: Option<String>,
    /// A proxy backend a reload replaced: its services are withdrawn once the new backend has
    /// applied, so no VIP goes unserved in between (nft DNAT runs before IPVS sees a packet, so
    /// a stale nft table would otherwise keep answering for the IPVS backend).
    retired_proxy: Option<AnyProxy>,
    /// VIPs kept for services that left and are draining (IPVS), as of the last sync.
    draining_vips: Vec<std::net::IpAddr>,
    public_key: String,
    proxy: AnyProxy,
    dns: Option<dns::DnsServer>,
    clusters: ClusterSet,
    started: Instant,
    ready: bool,
    last: LastSync,
    consecutive_failures: u32,
    reload_error: Option<String>,
    last_desired_services: usize,
}

/// Runs the daemon until SIGTERM/SIGINT. The dataplane is left in place on exit.
pub async fn run(path: PathBuf, cfg: Config, notifier: Notifier) -> anyhow::Result<()> {
    notifier.status("starting: preparing the namespace");
    let host = NetNs::current().context("opening the host network namespace")?;
    node::ensure_namespace(&cfg.namespace.name)
        .with_context(|| format!("network namespace {:?}", cfg.namespace.name))?;
    let ns = NetNs::open(&cfg.namespace.name)?;
    let key = tunnel::keys::load_or_create(&cfg.tunnel.private_key_file)
        .context("WireGuard private key")?;
    let public_key = key.public_key().to_base64();

    let mut plumbing = node::Plumbing::new(&cfg, host.clone(), ns.clone());
    // The veth and transit addresses first, so the tunnel and DNS have somewhere to live;
    // additive, so a restart withdraws nothing the previous run installed.
    let base = node::NodeDesired::from_config(&cfg, &node::NodeExtras::default());
    plumbing
        .sync_additive(&base)
        .await
        .context("setting up the namespace, veth, addresses and routes")?;

    notifier.status("starting: tunnel");
    let tunnel = tunnel::Tunnel::ensure(&cfg, host.clone(), ns.clone(), key)
        .await
        .context("setting up the WireGuard interface")?;
    let proxy = AnyProxy::choose(&cfg, &ns).await?;
    let dns = if cfg.dns.enabled {
        Some(
            dns::DnsServer::start(&cfg, &ns)
                .await
                .context("starting the DNS stub")?,
        )
    } else {
        None
    };
    notifier.status("starting: waiting for clusters to list");
    let clusters = ClusterSet::start(&cfg).context("starting the cluster watches")?;

    let mss = tunnel::mss::MssClamp::new(ns.clone());
    let mut d = Daemon {
        path,
        cfg: Arc::new(cfg),
        notifier,
        host,
        ns,
        plumbing,
        tunnel,
        mss,
        mss_error: None,
        retired_proxy: None,
        draining_vips: Vec::new(),
        public_key,
        proxy,
        dns,
        clusters,
        started: Instant::now(),
        ready: false,
        last: LastSync::default(),
        consecutive_failures: 0,
        reload_error: None,
        last_desired_services: 0,
    };
    d.main_loop().await
}

impl Daemon {
    async fn main_loop(&mut self) -> anyhow::Result<()> {
        let (ctl_tx, mut ctl_rx) = mpsc::channel::<Pending>(16);
        let sock = self.cfg.control_socket.clone();
        let mut control_task = tokio::spawn(async move { control::serve(&sock, ctl_tx).await });
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
        let mut resync = tokio::time::interval(self.cfg.resync_interval);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        let mut dirty_since: Option<Instant> = Some(Instant::now());
        let mut full_needed = true;
        let mut last_end = Instant::now() - self.cfg.sync.min_interval;
        let mut retry_at: Option<Instant> = None;

        loop {
            let can_apply = self.ready
                || self.clusters.all_listed()
                || self.started.elapsed() >= self.cfg.sync.startup_grace;
            let due = match (dirty_since, can_apply) {
                (Some(first), true) => {
                    let earliest = (last_end + self.cfg.sync.min_interval).max(first);
                    let latest = first + self.cfg.sync.max_delay;
                    let mut at = earliest.min(latest.max(last_end));
                    if let Some(r) = retry_at {
                        at = at.max(r);
                    }
                    Some(at)
                }
                // Still waiting for the first list: look again shortly.
                (Some(_), false) => Some(Instant::now() + Duration::from_millis(250)),
                (None, _) => None,
            };
            let sleep_until = due.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            let drain_at = self.proxy.next_deadline();

            tokio::select! {
                _ = changed.notified() => {
                    dirty_since.get_or_insert_with(Instant::now);
                }
                _ = node_events.notified() => {
                    tracing::info!("owned network object removed out of band; repairing");
                    dirty_since.get_or_insert_with(Instant::now);
                    full_needed = true;
                }
                _ = tokio::time::sleep_until(drain_at.unwrap_or(sleep_until).into()), if drain_at.is_some() && dirty_since.is_none() => {
                    dirty_since.get_or_insert_with(Instant::now);
                }
                _ = resync.tick() => {
                    dirty_since.get_or_insert_with(Instant::now);
                    full_needed = true;
                }
                _ = tokio::time::sleep_until(sleep_until.into()), if due.is_some() => {
                    if can_apply {
                        let ok = self.sync(full_needed).await;
                        last_end = Instant::now();
                        if ok {
                            dirty_since = None;
                            full_needed = false;
                            retry_at = None;
                            if !self.ready {
                                self.ready = true;
                                self.notifier.ready(&self.status_line());
                                tracing::info!("first full apply done: ready");
                            } else {
                                self.notifier.status(&self.status_line());
                            }
                        } else {
                            full_needed = true;
                            let backoff = Duration::from_secs(1u64 << self.consecutive_failures.min(5));
                            retry_at = Some(Instant::now() + backoff);
                            self.notifier.status(&self.status_line());
                        }
                    }
                }
                Some(req) = ctl_rx.recv() => {
                    let resp = match req.cmd {
                        Ctl::Status => Response { ok: true, error: None, status: Some(self.status_json().await) },
                        Ctl::Reload => {
                            let r = self.reload().await;
                            dirty_since.get_or_insert_with(Instant::now);
                            full_needed = true;
                            match r {
                                Ok(()) => {
                                    // The reload is answered after the new config is applied.
                                    let ok = self.sync(true).await;
                                    last_end = Instant::now();
                                    if ok { dirty_since = None; full_needed = false; }
                                    self.notifier.ready(&self.status_line());
                                    if ok { Response { ok: true, error: None, status: None } }
                                    else { Response::error(&format!("new configuration loaded but the apply failed: {}", self.last.error.clone().unwrap_or_default())) }
                                }
                                Err(e) => Response::error(&e),
                            }
                        }
                    };
                    let _ = req.reply.send(resp);
                }
                _ = sighup.recv() => {
                    if self.reload().await.is_ok() {
                        dirty_since.get_or_insert_with(Instant::now);
                        full_needed = true;
                    }
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

    /// One sync of every subsystem. Returns whether everything applied.
    async fn sync(&mut self, full: bool) -> bool {
        let t0 = Instant::now();
        let snaps = self.clusters.snapshots();
        let cfg = self.cfg.clone();
        let peers = tunnel::desired_peers(&cfg, &snaps);
        let desired_proxy = proxy::desired::desired_proxy(&cfg, &snaps);
        self.last_desired_services = desired_proxy.services.len();
        let mut errors: Vec<String> = Vec::new();

        // Tunnel first: the routes through it need the link to exist.
        let mut tunnel_ops = 0;
        match self.tunnel.sync(&peers, full).await {
            Ok(r) => {
                tunnel_ops = r.messages as usize;
                for f in &r.failed {
                    errors.push(format!("tunnel: {f}"));
                }
            }
            Err(e) => errors.push(format!("tunnel: {e}")),
        }
        let (iface, mtu) = (&cfg.tunnel.interface, cfg.tunnel.mtu);
        match self.mss.sync(iface, mtu, full).await {
            Ok(done) => {
                if done == tunnel::mss::ClampSync::Applied {
                    tunnel_ops += 1;
                    let (v4, v6) = tunnel::mss::mss_for(mtu);
                    tracing::info!(interface = %iface, mtu, mss_ipv4 = v4, mss_ipv6 = v6, "TCP MSS clamp applied in both directions");
                }
                self.mss_error = None;
            }
            Err(e) => {
                let msg = e.to_string();
                if self.mss_error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!("TCP MSS clamping not applied; connections through the tunnel now depend on path-MTU discovery: {msg}");
                }
                self.mss_error = Some(msg);
            }
        }
        let proxy_report = match self.proxy.sync(&desired_proxy, full).await {
            Ok(r) => {
                for (key, why) in &r.failed {
                    errors.push(format!("proxy {key}: {why}"));
                }
                Some(r)
            }
            Err(e) => {
                errors.push(format!("proxy: {e}"));
                None
            }
        };
        if proxy_report.as_ref().is_some_and(|r| r.failed.is_empty()) {
            if let Some(mut old) = self.retired_proxy.take() {
                match old.cleanup().await {
                    Ok(()) => tracing::info!(
                        backend = old.name(),
                        "withdrew the services of the replaced proxy backend"
                    ),
                    Err(e) => {
                        errors.push(format!(
                            "withdrawing the replaced {} proxy backend: {e}",
                            old.name()
                        ));
                        self.retired_proxy = Some(old);
                    }
                }
            }
        }
        // The node after the proxy: a Service that left starts draining in this sync, and its
        // VIP must stay until the drain ends. An IPVS service may exist before its VIP does.
        let extras = node::NodeExtras {
            tunnel_routes: self.tunnel.routes(),
            vips: if self.proxy.needs_vips() {
                let lingering = self.proxy.lingering_vips(&desired_proxy);
                self.draining_vips = lingering.iter().copied().collect();
                let mut v = desired_proxy.vips();
                v.extend(lingering);
                v
            } else {
                Default::default()
            },
        };
        let node_desired = node::NodeDesired::from_config(&cfg, &extras);
        let mut node_ops = 0;
        match self.plumbing.sync(&node_desired, full).await {
            Ok(r) => node_ops = r.operations(),
            Err(e) => errors.push(format!("node: {e}")),
        }
        if let Some(dns) = &self.dns {
            dns.update(Arc::new(dns::ZoneData::build(&cfg, &snaps)));
        }
        if full {
            if let Err(e) = self
                .clusters
                .publish_node(&self.public_key, cfg.tunnel.endpoint)
                .await
            {
                // Not fatal: peers keep the last published values.
                tracing::warn!(error = %e, "publishing this node's WireGuard annotations failed");
            }
        }

        let ok = errors.is_empty();
        if ok {
            self.consecutive_failures = 0;
        } else {
            self.consecutive_failures += 1;
            for e in &errors {
                tracing::warn!("sync: {e}");
            }
        }
        let duration = t0.elapsed();
        tracing::debug!(full, ?duration, node_ops, tunnel_ops, "sync done");
        self.last = LastSync {
            full,
            ok,
            error: (!ok).then(|| errors.join("; ")),
            duration_ms: duration.as_secs_f64() * 1000.0,
            at: Some(SystemTime::now()),
            node_operations: node_ops,
            tunnel_operations: tunnel_ops,
            proxy: proxy_report,
        };
        ok
    }

    /// Re-reads and validates the config. Invalid: the running one stays, and the reason is
    /// logged, put in STATUS= and returned (for `sdnlinkd reload`'s exit code).
    async fn reload(&mut self) -> Result<(), String> {
        self.notifier.reloading();
        let result = self.try_reload().await;
        match &result {
            Ok(()) => {
                tracing::info!("configuration reloaded");
                self.reload_error = None;
            }
            Err(e) => {
                tracing::error!("reload refused, keeping the running configuration: {e}");
                self.reload_error = Some(e.clone());
            }
        }
        self.notifier.ready(&self.status_line());
        result
    }

    async fn try_reload(&mut self) -> Result<(), String> {
        let new = crate::config::load(&self.path).map_err(|e| e.to_string())?;
        let old = self.cfg.clone();
        if new.namespace != old.namespace {
            return Err("the [namespace] section changed: that needs `systemctl restart sdnlinkd` (the old namespace is kept until then)".into());
        }
        if new.control_socket != old.control_socket {
            return Err("control_socket changed: that needs a restart".into());
        }
        // Build every changed subsystem before swapping any, so a failure leaves all old.
        let tunnel = if new.tunnel != old.tunnel {
            let key = tunnel::keys::load_or_create(&new.tunnel.private_key_file)
                .map_err(|e| format!("tunnel: {e}"))?;
            let pk = key.public_key().to_base64();
            // A new interface name or mode means a new device. The old one goes first: it holds
            // the UDP listen port (and, for a mode change, the name) the new one needs.
            let replaced =
                new.tunnel.interface != old.tunnel.interface || new.tunnel.mode != old.tunnel.mode;
            if replaced {
                let r = tunnel::cleanup_in(&old, &self.host, Some(&self.ns))
                    .await
                    .map_err(|e| format!("tunnel: removing {}: {e}", old.tunnel.interface))?;
                tracing::info!(interface = %old.tunnel.interface, "removed the previous tunnel device: {r}");
            }
            match tunnel::Tunnel::ensure(&new, self.host.clone(), self.ns.clone(), key).await {
                Ok(t) => Some((t, pk)),
                Err(e) if replaced => {
                    // Put the previous device back so the refused reload leaves the tunnel as
                    // it was; its peers come back with the next full sync.
                    let restored = match tunnel::keys::load_or_create(&old.tunnel.private_key_file)
                    {
                        Ok(k) => {
                            tunnel::Tunnel::ensure(&old, self.host.clone(), self.ns.clone(), k)
                                .await
                        }
                        Err(e) => Err(e.into()),
                    };
                    match restored {
                        Ok(t) => self.tunnel = t,
                        Err(e2) => tracing::error!(
                            "restoring the previous tunnel device {} failed: {e2}",
                            old.tunnel.interface
                        ),
                    }
                    return Err(format!("tunnel: {e}"));
                }
                Err(e) => return Err(format!("tunnel: {e}")),
            }
        } else {
            None
        };
        let proxy = if new.proxy != old.proxy {
            Some(
                AnyProxy::choose(&new, &self.ns)
                    .await
                    .map_err(|e| format!("{e:#}"))?,
            )
        } else {
            None
        };
        let clusters_changed =
            new.local != old.local || new.remote != old.remote || new.sync != old.sync;
        let clusters = if clusters_changed {
            Some(ClusterSet::start(&new).map_err(|e| format!("clusters: {e}"))?)
        } else {
            None
        };
        if new.dns != old.dns {
            if let Some(dns) = self.dns.take() {
                if let Err(e) = dns.shutdown().await {
                    tracing::warn!(error = %e, "DNS stub shutdown");
                }
            }
            if new.dns.enabled {
                match dns::DnsServer::start(&new, &self.ns).await {
                    Ok(s) => self.dns = Some(s),
                    Err(e) => {
                        tracing::error!(error = %e, "DNS stub did not restart; retrying on the next reload")
                    }
                }
            }
        }
        if let Some((t, pk)) = tunnel {
            self.tunnel = t;
            self.public_key = pk;
        }
        if let Some(p) = proxy {
            let old = std::mem::replace(&mut self.proxy, p);
            if old.name() != self.proxy.name() {
                tracing::info!(
                    from = old.name(),
                    to = self.proxy.name(),
                    "proxy backend changed"
                );
                self.retired_proxy = Some(old);
            }
        }
        if let Some(c) = clusters {
            let old = std::mem::replace(&mut self.clusters, c);
            old.shutdown();
        }
        self.cfg = Arc::new(new);
        Ok(())
    }

    fn status_line(&self) -> String {
        let st = self.clusters.status();
        let degraded: Vec<String> = st
            .iter()
            .filter_map(|c| match &c.state {
                crate::model::SyncState::Degraded { reason, .. } => {
                    Some(format!("{} degraded ({reason})", c.name))
                }
                _ => None,
            })
            .collect();
        let mut s = format!(
            "{} {} clusters, proxy {}, last sync {} in {:.0} ms",
            if self.ready { "ready:" } else { "starting:" },
            st.len(),
            self.proxy.name(),
            if self.last.ok { "ok" } else { "FAILED" },
            self.last.duration_ms
        );
        if !degraded.is_empty() {
            s.push_str("; ");
            s.push_str(&degraded.join(", "));
        }
        if let Some(e) = &self.mss_error {
            s.push_str("; MSS clamp not applied: ");
            s.push_str(e);
        }
        if let Some(e) = &self.reload_error {
            s.push_str("; last reload refused: ");
            s.push_str(e);
        }
        if let Some(e) = &self.last.error {
            s.push_str("; ");
            s.push_str(e);
        }
        s
    }

    async fn status_json(&self) -> serde_json::Value {
        let tunnel = self.tunnel.status().await;
        let snaps = self.clusters.snapshots();
        let per_cluster: Vec<serde_json::Value> = self
            .clusters
            .status()
            .into_iter()
            .map(|c| {
                let (services, endpoints) = snaps
                    .get(&c.name)
                    .map(|s| {
                        (
                            s.services.len(),
                            s.services
                                .values()
                                .map(|v| v.endpoints.len())
                                .sum::<usize>(),
                        )
                    })
                    .unwrap_or((0, 0));
                let mut v = serde_json::to_value(&c).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("services".into(), services.into());
                    o.insert("endpoints".into(), endpoints.into());
                }
                v
            })
            .collect();
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "phase": if self.ready { "ready" } else { "starting" },
            "status": self.status_line(),
            "config": self.path.display().to_string(),
            "local": { "cluster": self.cfg.local.name, "node": self.cfg.local.node_name },
            "namespace": self.cfg.namespace.name,
            "clusters": per_cluster,
            "node": serde_json::to_value(self.plumbing.status()).unwrap_or_default(),
            "tunnel": serde_json::to_value(tunnel).unwrap_or_default(),
            "mss_clamp": {
                "table": tunnel::mss::TABLE,
                "interface": self.cfg.tunnel.interface,
                "ipv4": tunnel::mss::mss_for(self.cfg.tunnel.mtu).0,
                "ipv6": tunnel::mss::mss_for(self.cfg.tunnel.mtu).1,
                "error": self.mss_error,
            },
            "proxy": {
                "backend": self.proxy.name(),
                "services": self.last_desired_services,
                "draining_vips": self.draining_vips,
                "last_sync": self.last.proxy,
            },
            "dns": self.dns.as_ref().map(|d| serde_json::to_value(d.status()).unwrap_or_default()),
            "last_sync": serde_json::to_value(&self.last).unwrap_or_default(),
            "reload_error": self.reload_error,
        })
    }
}

/// `sdnlinkd cleanup`: removes everything sdnlinkd owns and nothing else; safe to repeat.
pub async fn cleanup(cfg: &Config) -> anyhow::Result<String> {
    let mut lines = Vec::new();
    match tunnel::cleanup(cfg).await {
        Ok(r) => lines.push(format!("tunnel: {r}")),
        Err(e) => lines.push(format!("tunnel: {e}")),
    }
    let r = node::cleanup(cfg)
        .await
        .context("removing the namespace, veth and routes")?;
    lines.push(format!("node: {r}"));
    let _ = std::fs::remove_file(&cfg.control_socket);
    Ok(lines.join("\n"))
}
