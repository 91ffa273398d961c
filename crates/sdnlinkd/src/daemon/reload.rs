//! Reload: one path for SIGHUP and `sdnlinkd reload`, applied as a diff of the configuration.
//!
//! A reload changes configuration, not knowledge: clusters whose settings did not change keep
//! their watches and snapshots; a changed cluster restarts its watch and serves its old
//! snapshot until the new list completes; a removed cluster is withdrawn (only its objects); an
//! added one starts unknown. Everything that can fail is built before anything is swapped, so a
//! refused reload leaves the running configuration whole.

use super::{Daemon, Reason};
use crate::config::Config;
use crate::proxy::{AnyProxy, ProxyBackend as _};
use crate::{dns, node, tunnel};
use std::sync::Arc;
use std::time::Instant;

/// A DNS stub built for the new configuration, not yet serving instead of the old one.
enum DnsChange {
    None,
    /// Same address and port: settings applied to the running server.
    InPlace,
    /// A new server (new address or port, or settings that need new sockets).
    Replace(Option<dns::DnsServer>),
}

impl Daemon {
    /// Re-reads and validates the config and applies it, then syncs in full. Returns a summary,
    /// or why the reload was refused (the running configuration then stays, and the reason is
    /// logged and put in `STATUS=`).
    pub(super) async fn reload(&mut self) -> Result<String, String> {
        self.notifier.reloading();
        let result = self.try_reload().await;
        let result = match result {
            Ok(summary) => {
                self.reload_error = None;
                self.sched.mark(Instant::now(), Reason::Reload);
                let due = self
                    .sched
                    .take(Instant::now() + self.cfg.sync.max_delay)
                    .expect("a reload was just marked");
                let ok = self.sync(due.full).await;
                self.sched.finished(Instant::now(), &due, ok);
                self.applied_once = true;
                if ok {
                    tracing::info!("configuration reloaded and applied: {summary}");
                    Ok(summary)
                } else {
                    let e = format!(
                        "new configuration loaded but the apply failed: {}",
                        self.last.error.clone().unwrap_or_default()
                    );
                    tracing::error!("{e}");
                    Err(e)
                }
            }
            Err(e) => {
                tracing::error!("reload refused, keeping the running configuration: {e}");
                self.reload_error = Some(e.clone());
                Err(e)
            }
        };
        // systemd leaves the reloading state on READY=1; before the first READY the daemon
        // stays starting, so it only reports its status.
        if self.ready {
            self.notifier.ready(&self.status_line());
        } else {
            self.check_ready();
            self.notifier.status(&self.status_line());
        }
        self.publish_board();
        result
    }

    async fn try_reload(&mut self) -> Result<String, String> {
        let new = crate::config::load(&self.path).map_err(|e| e.to_string())?;
        let old = self.cfg.clone();
        if new.namespace != old.namespace {
            return Err("the [namespace] section changed: that needs `systemctl restart sdnlinkd` (the old namespace is kept until then)".into());
        }
        if new.control_socket != old.control_socket {
            return Err("control_socket changed: that needs a restart".into());
        }
        if new.metrics != self.cfg.metrics {
            return Err("metrics.listen changed: that needs a restart".into());
        }
        if new.state_dir != old.state_dir {
            return Err("state_dir changed: that needs a restart (the snapshots stay where they are until then)".into());
        }
        let mut parts: Vec<String> = Vec::new();

        // Everything that can fail first, nothing swapped yet.
        let dns_change = self.prepare_dns(&new).await?;
        let built = async {
            let proxy = if new.proxy != old.proxy {
                Some(AnyProxy::choose(&new, &self.ns).map_err(|e| format!("{e:#}"))?)
            } else {
                None
            };
            let tunnel = if new.tunnel != old.tunnel {
                Some(self.rebuild_tunnel(&old, &new).await?)
            } else {
                None
            };
            Ok::<_, String>((proxy, tunnel))
        }
        .await;
        let (proxy, tunnel) = match built {
            Ok(b) => b,
            Err(e) => {
                self.undo_dns(dns_change).await;
                return Err(e);
            }
        };

        // Commit.
        match dns_change {
            DnsChange::None => {}
            DnsChange::InPlace => {
                if let Some(d) = &self.dns {
                    d.set_upstreams(new.dns.upstreams.clone());
                }
                // TTL and cluster.all come with the zones: rebuild them in the next sync.
                self.zones_generation = None;
                parts.push("dns: settings applied".into());
            }
            DnsChange::Replace(server) => {
                if let Some(old_dns) = self.dns.take() {
                    if let Err(e) = old_dns.shutdown().await {
                        tracing::warn!(error = %e, "DNS stub shutdown");
                    }
                }
                self.board
                    .set_dns(server.as_ref().map(|s| s.status_handle()));
                self.dns = server;
                super::keep_dns_fds(&self.notifier, self.dns.as_ref());
                self.zones_generation = None;
                parts.push(if self.dns.is_some() {
                    format!("dns: serving on {}:{}", new.dns.address, new.dns.port)
                } else {
                    "dns: stopped".into()
                });
            }
        }
        if let Some((t, pk)) = tunnel {
            self.tunnel = t;
            self.public_key = pk;
            parts.push(format!("tunnel: {}", new.tunnel.interface));
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
            parts.push(format!("proxy: {}", self.proxy.name()));
        }
        let r = self.clusters.reconfigure(&new);
        if !r.restarted.is_empty() || !r.added.is_empty() || !r.removed.is_empty() {
            parts.push(r.to_string());
        }
        self.board.set_publish(self.clusters.publish_view());
        self.sched
            .set_bounds(new.sync.min_interval, new.sync.max_delay);
        self.cfg = Arc::new(new);
        if parts.is_empty() {
            parts.push("no subsystem changed".into());
        }
        Ok(parts.join("; "))
    }

    /// The zones `cfg` gives the clusters' current snapshots: what a DNS stub starts with.
    fn zones(&self, cfg: &Config) -> Arc<dns::ZoneData> {
        Arc::new(dns::ZoneData::build(cfg, &self.clusters.snapshots()))
    }

    /// Drops a DNS stub prepared for a reload that was then refused. A stub that had to take
    /// over the old one's socket is replaced by one with the running configuration again.
    async fn undo_dns(&mut self, change: DnsChange) {
        let DnsChange::Replace(Some(server)) = change else {
            return;
        };
        let kept = match server.shutdown().await {
            Ok(kept) => kept,
            Err(e) => {
                tracing::warn!(error = %e, "DNS stub shutdown");
                None
            }
        };
        if self.dns.is_none() && self.cfg.dns.enabled {
            self.restart_running_dns(kept).await;
        }
    }

    /// Starts the DNS stub of the running configuration again (after a reload had to stop it
    /// and then could not replace it), on `kept` when those are its sockets.
    async fn restart_running_dns(&mut self, kept: Option<dns::DnsSockets>) {
        let zones = self.zones(&self.cfg);
        let addr = std::net::SocketAddr::new(self.cfg.dns.address, self.cfg.dns.port);
        let (started, fresh) = match kept.filter(|k| k.addr() == addr) {
            Some(k) => (dns::DnsServer::serve(&self.cfg, k, zones), false),
            None => (
                dns::DnsServer::start(&self.cfg, &self.ns, zones).await,
                true,
            ),
        };
        match started {
            Ok(s) => {
                self.zones_generation = None;
                self.board.set_dns(Some(s.status_handle()));
                self.dns = Some(s);
                if fresh {
                    super::keep_dns_fds(&self.notifier, self.dns.as_ref());
                }
            }
            Err(e) => {
                tracing::error!(
                    "restarting the DNS stub with the running configuration failed: {e}"
                )
            }
        }
    }

    /// Builds the DNS stub the new config asks for, without touching the running one. A new
    /// address is added to the namespace interface first (additively: the old one stays until
    /// the old server is stopped and the next full sync withdraws it), so the new server can
    /// bind; if that fails, the reload is refused and the old server keeps answering.
    async fn prepare_dns(&mut self, new: &Config) -> Result<DnsChange, String> {
        let old = &self.cfg.dns;
        if new.dns == *old {
            return Ok(DnsChange::None);
        }
        if !new.dns.enabled {
            return Ok(DnsChange::Replace(None));
        }
        let same_socket = old.enabled && new.dns.address == old.address && new.dns.port == old.port;
        let only_zone_or_upstreams = {
            let mut a = old.clone();
            a.upstreams = new.dns.upstreams.clone();
            a.ttl = new.dns.ttl;
            a.all_zone = new.dns.all_zone;
            a == new.dns
        };
        if same_socket && only_zone_or_upstreams && self.dns.is_some() {
            return Ok(DnsChange::InPlace);
        }
        if same_socket {
            // The new server takes over the old one's sockets: binding the same address and
            // port again would fail while systemd's fd store holds them, and queries that
            // arrive between the two servers wait in the sockets' queues instead of being
            // refused.
            let mut kept = None;
            if let Some(d) = self.dns.take() {
                match d.shutdown().await {
                    Ok(k) => kept = k,
                    Err(e) => tracing::warn!(error = %e, "DNS stub shutdown"),
                }
            }
            let started = match kept {
                Some(k) => dns::DnsServer::serve(new, k, self.zones(new)),
                None => dns::DnsServer::start(new, &self.ns, self.zones(new)).await,
            };
            return match started {
                Ok(s) => Ok(DnsChange::Replace(Some(s))),
                Err(e) => {
                    self.restart_running_dns(None).await;
                    Err(format!("dns: {e}"))
                }
            };
        }
        let mut extras_cfg = (*self.cfg).clone();
        extras_cfg.dns = new.dns.clone();
        let with_new_addr =
            node::NodeDesired::from_config(&extras_cfg, &node::NodeExtras::default());
        self.plumbing
            .sync_additive(&with_new_addr)
            .await
            .map_err(|e| format!("dns: adding {} to the namespace: {e}", new.dns.address))?;
        // The additive sync forgot the committed state: the next sync re-reads the kernel.
        self.sched.mark(Instant::now(), Reason::Repair);
        match dns::DnsServer::start(new, &self.ns, self.zones(new)).await {
            Ok(s) => Ok(DnsChange::Replace(Some(s))),
            Err(e) => Err(format!(
                "dns: {e} (the stub keeps answering on {}:{})",
                old.address, old.port
            )),
        }
    }

    /// A new tunnel device for `new` (returns it with its public key). A new interface name or
    /// mode means a new device: the old one goes first (it holds the UDP port and, for a mode
    /// change, the name), and if the new one fails, the old one is put back.
    async fn rebuild_tunnel(
        &mut self,
        old: &Config,
        new: &Config,
    ) -> Result<(tunnel::Tunnel, String), String> {
        let key = tunnel::keys::load_or_create(&new.tunnel.private_key_file)
            .map_err(|e| format!("tunnel: {e}"))?;
        let pk = key.public_key().to_base64();
        let replaced =
            new.tunnel.interface != old.tunnel.interface || new.tunnel.mode != old.tunnel.mode;
        if replaced {
            // Our own deletion of the old device must not come back as a repair.
            self.plumbing
                .owned()
                .set_tunnel(&old.tunnel.interface, None);
            let r = tunnel::cleanup_in(old, &self.host, Some(&self.ns))
                .await
                .map_err(|e| format!("tunnel: removing {}: {e}", old.tunnel.interface))?;
            tracing::info!(interface = %old.tunnel.interface, "removed the previous tunnel device: {r}");
        }
        match tunnel::Tunnel::ensure(new, self.host.clone(), self.ns.clone(), key).await {
            Ok(t) => Ok((t, pk)),
            Err(e) if replaced => {
                // Put the previous device back so the refused reload leaves the tunnel as it
                // was; its peers come back with the next full sync.
                let restored = match tunnel::keys::load_or_create(&old.tunnel.private_key_file) {
                    Ok(k) => {
                        tunnel::Tunnel::ensure(old, self.host.clone(), self.ns.clone(), k).await
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
                self.sched.mark(Instant::now(), Reason::Repair);
                Err(format!("tunnel: {e}"))
            }
            Err(e) => Err(format!("tunnel: {e}")),
        }
    }
}
