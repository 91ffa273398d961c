//! Bringing the watches to a (re)loaded configuration: which clusters are kept, restarted,
//! added or removed, and what each serves until it lists (the old or the persisted snapshot).

use super::state::ClusterState;
use super::watch::WatchSettings;
use super::{lock, publish, ClusterSet};
use crate::config::Config;
use crate::model::{ClusterSnapshot, WarmSource};
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// What a reload did to the watched clusters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconfigured {
    /// Settings unchanged: watch and snapshot untouched.
    pub kept: Vec<String>,
    /// Settings changed: a new watch, serving the old snapshot until it lists.
    pub restarted: Vec<String>,
    /// New in the config: unknown until it lists.
    pub added: Vec<String>,
    /// Gone from the config: its objects are withdrawn and its persisted snapshot deleted.
    pub removed: Vec<String>,
}

impl std::fmt::Display for Reconfigured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let part = |f: &mut std::fmt::Formatter<'_>, what: &str, v: &[String]| {
            if v.is_empty() {
                Ok(())
            } else {
                write!(f, " {what}: {};", v.join(", "))
            }
        };
        write!(f, "clusters:")?;
        part(f, "kept", &self.kept)?;
        part(f, "restarted", &self.restarted)?;
        part(f, "added", &self.added)?;
        part(f, "removed", &self.removed)
    }
}

/// Re-applies the trust rules to a snapshot from elsewhere (a file, or a watch whose CIDRs a
/// reload changed): ClusterIPs outside `service_cidrs`, endpoint addresses and node subnets
/// outside `pod_cidrs` are dropped, as the watch would have dropped them.
pub fn retrust(
    snap: &ClusterSnapshot,
    pod_cidrs: &[IpNet],
    service_cidrs: &[IpNet],
) -> ClusterSnapshot {
    use crate::model::ServiceKind;
    let inside = |nets: &[IpNet], ip: &std::net::IpAddr| nets.iter().any(|n| n.contains(ip));
    let mut out = snap.clone();
    out.services.retain(|_, svc| {
        if let ServiceKind::ClusterIp(ips) = &mut svc.kind {
            ips.retain(|ip| inside(service_cidrs, ip));
            if ips.is_empty() {
                return false;
            }
        }
        svc.endpoints.retain_mut(|e| {
            e.addresses.retain(|a| inside(pod_cidrs, a));
            !e.addresses.is_empty()
        });
        true
    });
    out.nodes.retain(|_, n| {
        n.pod_cidrs
            .retain(|c| pod_cidrs.iter().any(|p| p.contains(c)));
        !n.pod_cidrs.is_empty()
    });
    out
}

impl ClusterSet {
    fn load_persisted(&self, name: &str, set: &WatchSettings, state: &mut ClusterState) {
        let Some(store) = &self.store else { return };
        match store.load(name) {
            Ok(Some(snap)) => {
                let saved_at = std::fs::metadata(store.path_of(name))
                    .and_then(|m| m.modified())
                    .unwrap_or_else(|_| std::time::SystemTime::now());
                let snap = retrust(&snap, &set.pod_cidrs, &set.service_cidrs);
                tracing::info!(
                    cluster = %name,
                    services = snap.services.len(),
                    nodes = snap.nodes.len(),
                    "serving the persisted snapshot until the cluster lists"
                );
                state.set_warm(Arc::new(snap), WarmSource::Persisted { saved_at });
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(
                cluster = %name,
                "ignoring the persisted snapshot {}: {e}",
                store.path_of(name).display()
            ),
        }
    }

    /// Brings the watches to `cfg`: see [`Reconfigured`] for what happens to each cluster.
    pub(super) fn apply_config(&mut self, cfg: &Config, report: &mut Reconfigured) {
        let wanted: BTreeMap<String, WatchSettings> = cfg
            .watched_clusters()
            .map(|(n, k)| (n.to_string(), WatchSettings::of(cfg, n, k)))
            .collect();
        let gone: Vec<String> = self
            .entries
            .keys()
            .filter(|n| !wanted.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(e) = self.entries.remove(&name) {
                e.task.abort();
            }
            report.removed.push(name);
        }
        self.reconfigure_publisher(cfg);
        for (name, set) in wanted {
            let cap = cfg.sync.max_objects_per_cluster;
            let max_bytes = usize::try_from(cfg.sync.max_bytes_per_cluster).unwrap_or(usize::MAX);
            match self.entries.get(&name) {
                Some(e) if e.settings == set => {
                    let mut st = lock(&e.cell);
                    st.set_cap(cap);
                    st.set_max_bytes(max_bytes);
                    drop(st);
                    report.kept.push(name);
                }
                Some(e) => {
                    // Serve what the old watch had (under the new trust CIDRs) until the new
                    // one lists; a watch that never listed passes its own warm snapshot on.
                    let previous = {
                        let mut old = lock(&e.cell);
                        old.served()
                    };
                    e.task.abort();
                    let mut state =
                        ClusterState::new(&name, &set.pod_cidrs, &set.service_cidrs, cap);
                    state.set_max_bytes(max_bytes);
                    if let Some(prev) = previous {
                        let snap = retrust(&prev, &set.pod_cidrs, &set.service_cidrs);
                        state.set_warm(Arc::new(snap), WarmSource::Reload);
                    }
                    self.spawn(&name, set, Arc::new(Mutex::new(state)));
                    report.restarted.push(name);
                }
                None => {
                    let mut state =
                        ClusterState::new(&name, &set.pod_cidrs, &set.service_cidrs, cap);
                    state.set_max_bytes(max_bytes);
                    self.load_persisted(&name, &set, &mut state);
                    self.spawn(&name, set, Arc::new(Mutex::new(state)));
                    report.added.push(name);
                }
            }
        }
        let mut inner = self.view.inner.write().unwrap_or_else(|p| p.into_inner());
        inner.cells = self
            .entries
            .iter()
            .map(|(n, e)| (n.clone(), e.cell.clone()))
            .collect();
        inner.statics = cfg
            .remote
            .iter()
            .filter(|r| r.kubeconfig.is_none())
            .map(|r| r.name.clone())
            .collect();
        drop(inner);
        // After the view no longer has them, so the snapshot writer cannot bring them back.
        if let Some(st) = &self.store {
            for name in &report.removed {
                if let Err(e) = st.remove(name) {
                    tracing::warn!(cluster = %name, "deleting the persisted snapshot: {e}");
                }
            }
        }
        if let Some(p) = &self.publisher {
            p.set_source(self.entries.get(&cfg.local.name).map(|e| e.cell.clone()));
        }
        self.daemon.notify_one();
    }

    /// Starts, keeps or replaces the publisher for `cfg`'s local node.
    fn reconfigure_publisher(&mut self, cfg: &Config) {
        let want = cfg.local.kubeconfig.as_ref().map(|k| publish::Target {
            cluster: cfg.local.name.clone(),
            node_name: cfg.local.node_name.clone(),
            kubeconfig: k.clone(),
            api_timeout: cfg.sync.api_timeout,
        });
        let same = match (&self.publisher, &want) {
            (Some(p), Some(t)) => p.target() == t,
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        let annotations = self.publisher.take().and_then(|p| p.stop());
        self.publisher = want.map(|t| {
            let p = publish::Publisher::start(&self.rt, t, self.local_wake.clone());
            if let Some(a) = annotations {
                p.set(a);
            }
            p
        });
    }
}
