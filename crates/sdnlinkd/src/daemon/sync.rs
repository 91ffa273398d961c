//! One sync of every subsystem, and what it reports.

use super::*;

/// What the last sync did, for status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LastSync {
    pub full: bool,
    pub ok: bool,
    pub error: Option<String>,
    pub duration_ms: f64,
    #[serde(with = "crate::model::unix_seconds_opt")]
    pub at: Option<SystemTime>,
    pub node_operations: usize,
    pub tunnel_operations: usize,
    pub proxy: Option<SyncReport>,
}

/// One failure of a sync, by subsystem.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("tunnel: {0}")]
    Tunnel(#[from] tunnel::TunnelError),
    #[error("tunnel: {0}")]
    TunnelPeer(String),
    #[error("proxy: {0}")]
    Proxy(#[from] ProxyError),
    #[error("proxy {key}: {reason}")]
    ProxyService {
        key: proxy::VirtualKey,
        reason: String,
    },
    #[error("withdrawing the replaced {backend} proxy backend: {source}")]
    RetiredProxy {
        backend: &'static str,
        #[source]
        source: ProxyError,
    },
    #[error("node: {0}")]
    Node(#[from] node::NodeError),
}
/// Records `e` in `slot` (shown in the status problems), calling `warn` only when it differs
/// from what is there: a failure that persists is logged once, not at every sync.
fn note_once(slot: &mut Option<String>, e: &dyn std::fmt::Display, warn: impl FnOnce(&str)) {
    let msg = e.to_string();
    if slot.as_deref() != Some(msg.as_str()) {
        warn(&msg);
    }
    *slot = Some(msg);
}
impl Daemon {
    /// The node's extras for `want` from the tunnel's and the proxy's committed state.
    pub(super) fn node_extras(&self, want: &desired::Desired) -> node::NodeExtras {
        want.node_extras(
            self.tunnel.routes(),
            self.proxy.needs_vips(),
            self.proxy.lingering_vips(&want.proxy),
            self.proxy.sysctls(),
        )
    }

    /// One sync of every subsystem. Returns whether everything applied.
    pub(super) async fn sync(&mut self, full: bool) -> bool {
        let t0 = Instant::now();
        let cfg = self.cfg.clone();
        let snaps = self.clusters.snapshots();
        let generation = self.clusters.generation();
        let held = self.clusters.held(&cfg);
        let want = desired::Desired::compute(&cfg, &snaps, held);
        self.last_desired_services = want.proxy.services.len();
        self.held_clusters = want.held_clusters();
        let mut errors: Vec<SyncError> = Vec::new();

        // Tunnel first: the routes through it need the link to exist.
        let mut tunnel_ops = 0;
        match self.tunnel.sync(&want.peers, full).await {
            Ok(r) => {
                tunnel_ops = r.messages as usize;
                errors.extend(r.failed.iter().cloned().map(SyncError::TunnelPeer));
            }
            Err(e) => errors.push(e.into()),
        }
        self.board.set_tunnel(
            self.tunnel.probe(
                self.tunnel
                    .status_namespace(&self.status_host, &self.status_ns)
                    .clone(),
            ),
        );
        let (iface, mtu) = (&cfg.tunnel.interface, cfg.tunnel.mtu);
        match self.mss.sync(iface, mtu, full).await {
            Ok(done) => {
                if done == TableSync::Applied {
                    tunnel_ops += 1;
                    let (v4, v6) = tunnel::mss::mss_for(mtu);
                    tracing::info!(interface = %iface, mtu, mss_ipv4 = v4, mss_ipv6 = v6, "TCP MSS clamp applied in both directions");
                }
                self.mss_error = None;
            }
            Err(e) => note_once(&mut self.mss_error, &e, |msg| {
                tracing::warn!("TCP MSS clamping not applied; connections through the tunnel now depend on path-MTU discovery: {msg}")
            }),
        }
        match self.inbound.sync(iface, &cfg.local.pod_cidrs, full).await {
            Ok(done) => {
                if done == TableSync::Applied {
                    tunnel_ops += 1;
                    tracing::info!(interface = %iface, table = tunnel::inbound::TABLE, "inbound filter applied: only local pod CIDRs and replies pass from the tunnel");
                }
                self.inbound_error = None;
            }
            Err(e) => note_once(&mut self.inbound_error, &e, |msg| {
                tracing::warn!("inbound filter not applied; remote nodes can reach this namespace and the host through the tunnel: {msg}")
            }),
        }
        let proxy_report = match self.proxy.sync(&want.proxy, full).await {
            Ok(r) => {
                errors.extend(r.failed.iter().map(|(key, why)| SyncError::ProxyService {
                    key: *key,
                    reason: why.clone(),
                }));
                Some(r)
            }
            Err(e) => {
                errors.push(e.into());
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
                    Err(source) => {
                        errors.push(SyncError::RetiredProxy {
                            backend: old.name(),
                            source,
                        });
                        self.retired_proxy = Some(old);
                    }
                }
            }
        }
        // The node after the proxy: a Service that left starts draining in this sync, and its
        // VIP must stay until the drain ends. An IPVS service may exist before its VIP does.
        // Routes follow the peers the device has (kept ones of held clusters included).
        self.draining_vips = self.proxy.lingering_vips(&want.proxy).into_iter().collect();
        let extras = self.node_extras(&want);
        let node_desired = node::NodeDesired::from_config(&cfg, &extras);
        let mut node_ops = 0;
        match self.plumbing.sync(&node_desired, full).await {
            Ok(r) => node_ops = r.operations(),
            Err(e) => errors.push(e.into()),
        }
        if let Some(dns) = &self.dns {
            if self.zones_generation.as_ref() != Some(&generation) {
                // Seconds of CPU at 100k endpoints: off the async workers, which also serve
                // status and the control socket.
                let (c, s) = (cfg.clone(), snaps.clone());
                match tokio::task::spawn_blocking(move || dns::ZoneData::build(&c, &s)).await {
                    Ok(zones) => {
                        dns.update(Arc::new(zones));
                        self.zones_generation = Some(generation);
                    }
                    Err(e) => tracing::error!(
                        "building the DNS zones failed, keeping the served ones: {e}"
                    ),
                }
            }
        }
        self.board.set_counts(
            snaps
                .iter()
                .map(|(n, s)| {
                    let eps = s.services.values().map(|v| v.endpoints.len()).sum();
                    (n.clone(), s.services.len(), eps)
                })
                .collect(),
        );
        // Cheap and idempotent: the publisher acts only when the Node differs.
        self.clusters.publish(&self.public_key, cfg.tunnel.endpoint);

        let ok = errors.is_empty();
        if !ok {
            for e in &errors {
                tracing::warn!("sync: {e}");
            }
        }
        let duration = t0.elapsed();
        self.metrics.observe_sync(full, duration);
        tracing::debug!(full, ?duration, node_ops, tunnel_ops, "sync done");
        self.last = LastSync {
            full,
            ok,
            error: (!ok).then(|| {
                errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            }),
            duration_ms: duration.as_secs_f64() * 1000.0,
            at: Some(SystemTime::now()),
            node_operations: node_ops,
            tunnel_operations: tunnel_ops,
            proxy: proxy_report,
        };
        ok
    }
}
