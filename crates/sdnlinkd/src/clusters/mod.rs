//! Remote (and local) clusters: one kube-rs client per watched cluster, watches of Services,
//! EndpointSlices, Nodes and (on OpenShift SDN) HostSubnets, trust filtering into plain
//! [`crate::model::ClusterSnapshot`] values, publication of this node's WireGuard annotations
//! and the persisted last-good snapshots. The tests and the lab run it against the simulated API
//! server of `crates/sdnlink-simapi`.
//!
//! The Kubernetes types never leave this module. Every change only marks the cluster's snapshot
//! stale and wakes the daemon's reconcile task through [`ClusterSet::changed`]; the task
//! coalesces bursts and reads [`ClusterSet::snapshots`].

pub mod body_limit;
pub mod convert;
mod kubeconfig;
pub mod persist;
pub mod publish;
mod reload;
mod snapshot_writer;
pub mod state;
mod watch;

pub use convert::{SkipReason, ANNOTATION_ENDPOINT, ANNOTATION_PUBLIC_KEY};
pub use kubeconfig::token_file_problem;
pub use reload::{retrust, Reconfigured};
pub use state::ObjectCounts;

use crate::config::Config;
use crate::model::{Held, Snapshots, SyncState};
use kubeconfig::read_kubeconfig;
use persist::SnapshotStore;
use serde::Serialize;
use snapshot_writer::run_persister;
use state::ClusterState;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::Notify;
use watch::{run_cluster, Wakers, WatchSettings};

/// Errors of the clusters subsystem.
#[derive(Debug, thiserror::Error)]
pub enum ClustersError {
    /// The kubeconfig file is missing or not a kubeconfig.
    #[error("cluster {cluster}: reading kubeconfig {path}: {source}")]
    Kubeconfig {
        cluster: String,
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// kube-client would run `exec` plugins and `auth-provider` helpers as the daemon's user
    /// (root); a remote cluster's kubeconfig must not be able to do that (docs/design.md).
    #[error("cluster {cluster}: kubeconfig {path}: user {user:?} uses {mechanism}, which sdnlinkd refuses (it would run code as root); use a token or a client certificate")]
    RefusedAuth {
        cluster: String,
        path: PathBuf,
        user: String,
        mechanism: &'static str,
    },
    /// A `tokenFile` outside the config directory: kube-client would read any file as root and
    /// send it to the API server as a bearer token.
    #[error("cluster {cluster}: kubeconfig {path}: user {user:?}: {reason}")]
    RefusedTokenFile {
        cluster: String,
        path: PathBuf,
        user: String,
        reason: String,
    },
    /// The kubeconfig is readable but no client can be built from it (bad CA, bad server URL).
    #[error("cluster {cluster}: building the client: {reason}")]
    Client { cluster: String, reason: String },
    /// A request to the API server failed (publish_node).
    #[error("cluster {cluster}: {reason}")]
    Api { cluster: String, reason: String },
    /// `ClusterSet::start` was called outside a tokio runtime.
    #[error("the cluster watches need a tokio runtime")]
    NoRuntime(#[source] tokio::runtime::TryCurrentError),
}

/// Status of one cluster for `STATUS=` and `sdnlinkd status`.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterStatus {
    /// Cluster name from the config.
    pub name: String,
    /// Starting / current / degraded (reason, since) / static.
    pub state: SyncState,
    /// Objects held (before trust filtering of their contents).
    pub objects: ObjectCounts,
    /// Pieces currently kept out of the snapshot, by [`SkipReason`] name.
    pub skipped: BTreeMap<String, u64>,
    /// Pieces skipped anew since the cluster's store started, by reason (only grows).
    pub skipped_total: BTreeMap<String, u64>,
}

/// A cluster's store, shared by its watch task and the readers.
type StateCell = Arc<Mutex<ClusterState>>;

fn lock(cell: &StateCell) -> std::sync::MutexGuard<'_, ClusterState> {
    // A panic while holding the lock can only come from a bug in this module; the state itself
    // stays consistent enough to keep serving the last snapshot.
    cell.lock().unwrap_or_else(|p| p.into_inner())
}

/// One watched cluster: its settings, its store and the task feeding it.
struct Entry {
    settings: WatchSettings,
    cell: StateCell,
    task: tokio::task::JoinHandle<()>,
}

/// The readers' view of every watched cluster (status, the publisher), valid across reloads.
#[derive(Clone, Default)]
pub struct ClusterView {
    inner: Arc<RwLock<ViewInner>>,
}

#[derive(Default)]
struct ViewInner {
    cells: BTreeMap<String, StateCell>,
    /// Clusters without a kubeconfig (static peers only), in config order.
    statics: Vec<String>,
}

impl ClusterView {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, ViewInner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Sync state, object counts and skip counts per cluster (watched ones, then static ones).
    pub fn status(&self) -> Vec<ClusterStatus> {
        let inner = self.read();
        let mut out: Vec<ClusterStatus> = inner
            .cells
            .iter()
            .map(|(name, cell)| {
                let s = lock(cell);
                ClusterStatus {
                    name: name.clone(),
                    state: s.state(),
                    objects: s.counts(),
                    skipped: s.skipped(),
                    skipped_total: s.skipped_total(),
                }
            })
            .collect();
        out.extend(inner.statics.iter().map(|n| ClusterStatus {
            name: n.clone(),
            state: SyncState::Static,
            objects: ObjectCounts::default(),
            skipped: BTreeMap::new(),
            skipped_total: BTreeMap::new(),
        }));
        out
    }
}

/// The watched clusters of the running configuration, their persisted snapshots, and the
/// publisher of this node's WireGuard annotations.
pub struct ClusterSet {
    entries: BTreeMap<String, Entry>,
    view: ClusterView,
    daemon: Arc<Notify>,
    persist: Arc<Notify>,
    /// Wakes the publisher on changes of the local cluster; stable across reloads, so the
    /// local watch needs no restart when the publisher is replaced.
    local_wake: Arc<Notify>,
    store: Option<Arc<SnapshotStore>>,
    persister: tokio::task::JoinHandle<()>,
    publisher: Option<publish::Publisher>,
    rt: tokio::runtime::Handle,
    /// Closed while the daemon starts its DNS stub: watch tasks wait for it before they
    /// connect, so TLS handshakes and first lists do not compete with answering from the
    /// persisted snapshots (which matters on slow or loaded nodes). Open for good once opened.
    gate: tokio::sync::watch::Sender<bool>,
}

/// See [`ClusterSet::generation`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generations(Vec<(u64, u64)>);

impl ClusterSet {
    /// Starts the watches of every cluster with a kubeconfig (`cfg.watched_clusters()`), on
    /// the current tokio runtime, each first serving its persisted snapshot when `store` has a
    /// good one (a bad file is ignored with one warning naming it). Files of clusters that left
    /// the config are deleted. Fails at once on an unreadable kubeconfig or a refused auth
    /// mechanism; an unreachable API server only shows in [`ClusterView::status`].
    pub fn start(cfg: &Config, store: Option<SnapshotStore>) -> Result<ClusterSet, ClustersError> {
        let set = ClusterSet::start_held(cfg, store)?;
        set.release();
        Ok(set)
    }

    /// [`ClusterSet::start`] with the watch tasks waiting until [`ClusterSet::release`]: the
    /// persisted snapshots are loaded and served at once, no API server is contacted yet.
    pub fn start_held(
        cfg: &Config,
        store: Option<SnapshotStore>,
    ) -> Result<ClusterSet, ClustersError> {
        let rt = tokio::runtime::Handle::try_current().map_err(ClustersError::NoRuntime)?;
        for (name, path) in cfg.watched_clusters() {
            read_kubeconfig(name, path, Some(&cfg.config_dir))?;
        }
        let store = store.map(Arc::new);
        if let Some(st) = &store {
            let keep: Vec<&str> = cfg.watched_clusters().map(|(n, _)| n).collect();
            match st.retain(&keep) {
                Ok(gone) if !gone.is_empty() => tracing::info!(
                    clusters = %gone.join(", "),
                    "deleted the persisted snapshots of clusters no longer in the config"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!("cleaning up persisted snapshots: {e}"),
            }
        }
        let view = ClusterView::default();
        let daemon = Arc::new(Notify::new());
        let persist = Arc::new(Notify::new());
        let persister = match &store {
            Some(st) => rt.spawn(run_persister(
                view.clone(),
                st.clone(),
                persist.clone(),
                snapshot_writer::PERSIST_EVERY,
            )),
            None => rt.spawn(async {}),
        };
        let mut set = ClusterSet {
            entries: BTreeMap::new(),
            view,
            daemon,
            persist,
            local_wake: Arc::new(Notify::new()),
            store,
            persister,
            publisher: None,
            rt,
            gate: tokio::sync::watch::channel(false).0,
        };
        set.apply_config(cfg, &mut Reconfigured::default());
        Ok(set)
    }

    /// Lets the watch tasks connect (see [`ClusterSet::start_held`]).
    pub fn release(&self) {
        self.gate.send_replace(true);
    }

    /// The view readers keep across reloads.
    pub fn view(&self) -> ClusterView {
        self.view.clone()
    }

    fn wakers(&self, is_local: bool) -> Wakers {
        Wakers {
            daemon: self.daemon.clone(),
            persist: self.persist.clone(),
            local: is_local.then(|| self.local_wake.clone()),
        }
    }

    fn spawn(&mut self, name: &str, settings: WatchSettings, cell: StateCell) {
        let wake = self.wakers(settings.is_local);
        let task = self.rt.spawn(run_cluster(
            name.to_string(),
            settings.clone(),
            cell.clone(),
            wake,
            self.gate.subscribe(),
        ));
        self.entries.insert(
            name.to_string(),
            Entry {
                settings,
                cell,
                task,
            },
        );
    }

    /// Applies a reloaded configuration; see [`Reconfigured`].
    pub fn reconfigure(&mut self, cfg: &Config) -> Reconfigured {
        let mut report = Reconfigured::default();
        self.apply_config(cfg, &mut report);
        report
    }

    /// The snapshot to use for every watched cluster that has one: live once listed in this
    /// run, else warm. Unknown clusters are absent (see [`ClusterSet::held`]).
    pub fn snapshots(&self) -> Snapshots {
        self.entries
            .iter()
            .filter_map(|(name, e)| Some((name.clone(), lock(&e.cell).served()?)))
            .collect()
    }

    /// Which snapshot of every cluster is served: equal values mean equal snapshots. Each
    /// cluster's (store incarnation, generation) in name order, not a sum: a cluster removed
    /// and added again starts a new store whose generation starts over, and a sum could then
    /// repeat an earlier value for other snapshots.
    pub fn generation(&self) -> Generations {
        Generations(
            self.entries
                .values()
                .map(|e| {
                    let c = lock(&e.cell);
                    (c.incarnation(), c.generation())
                })
                .collect(),
        )
    }

    /// The pod and service CIDRs of every watched remote cluster that has not listed in this
    /// run: what the node has inside them stays (unknown is not empty).
    pub fn held(&self, cfg: &Config) -> (Held, Held) {
        let mut pods = Held::default();
        let mut svcs = Held::default();
        for (name, e) in &self.entries {
            if name == &cfg.local.name || lock(&e.cell).listed() {
                continue;
            }
            pods.cidrs
                .extend(e.settings.pod_cidrs.iter().map(|c| (name.clone(), *c)));
            svcs.cidrs
                .extend(e.settings.service_cidrs.iter().map(|c| (name.clone(), *c)));
        }
        (pods, svcs)
    }

    /// Notified (one stored permit) after every change of any snapshot or sync state; the
    /// reconcile task coalesces.
    pub fn changed(&self) -> Arc<Notify> {
        self.daemon.clone()
    }

    /// Whether every watched cluster has a snapshot to serve (listed in this run, or warm).
    pub fn all_known(&self) -> bool {
        self.entries
            .values()
            .all(|e| lock(&e.cell).served().is_some())
    }

    /// Whether every watched cluster has listed in this run.
    pub fn all_listed(&self) -> bool {
        self.entries.values().all(|e| lock(&e.cell).listed())
    }

    /// Sync state, object counts and skip counts per cluster.
    pub fn status(&self) -> Vec<ClusterStatus> {
        self.view.status()
    }

    /// Asks the publisher to put this node's WireGuard public key and advertised endpoint on
    /// its Node ([`ANNOTATION_PUBLIC_KEY`], [`ANNOTATION_ENDPOINT`]). Returns at once: the
    /// publisher runs in its own task with its own timeout and backoff; see
    /// [`ClusterSet::publish_status`].
    pub fn publish(&self, public_key: &str, endpoint: Option<SocketAddr>) {
        if let Some(p) = &self.publisher {
            p.set(publish::Annotations {
                public_key: public_key.to_string(),
                endpoint,
            });
        }
    }

    /// The publisher's state; `None` without a local kubeconfig.
    pub fn publish_status(&self) -> Option<publish::PublishStatus> {
        self.publisher.as_ref().map(|p| p.status())
    }

    /// A handle on the publisher's state for readers outside the reconcile task.
    pub fn publish_view(&self) -> Option<publish::PublishView> {
        self.publisher.as_ref().map(|p| p.view())
    }

    /// Stops every watch, the snapshot writer and the publisher. Snapshots already handed out
    /// stay valid.
    pub fn shutdown(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        for e in self.entries.values() {
            e.task.abort();
        }
        self.persister.abort();
        if let Some(p) = self.publisher.take() {
            p.stop();
        }
    }
}

impl Drop for ClusterSet {
    fn drop(&mut self) {
        self.stop_all();
    }
}
