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
pub mod persist;
pub mod publish;
pub mod state;

pub use convert::{SkipReason, ANNOTATION_ENDPOINT, ANNOTATION_PUBLIC_KEY};
pub use state::ObjectCounts;

use crate::config::Config;
use crate::model::{ClusterSnapshot, Held, Snapshots, SyncState, WarmSource};
use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use persist::SnapshotStore;
use serde::Serialize;
use state::{ClusterState, Kind};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::Notify;

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

/// Where the `tokenFile` of kubeconfig `kubeconfig` may lie: the kubeconfig's own directory
/// when that is inside `config_dir` (the directory of the main config file), else `config_dir`
/// itself; both with symlinks resolved. Without a `config_dir` (a caller that does not know
/// it), the kubeconfig's own directory.
fn token_root(kubeconfig: &Path, config_dir: Option<&Path>) -> std::io::Result<PathBuf> {
    let own = std::fs::canonicalize(kubeconfig)?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let Some(dir) = config_dir else {
        return Ok(own);
    };
    let dir = std::fs::canonicalize(dir)?;
    Ok(if own.starts_with(&dir) { own } else { dir })
}

/// Why `token_file` (as written in kubeconfig `kubeconfig`, relative to its directory) may not
/// be read, or `None` when it lies inside [`token_root`]. Symlinks are resolved first, so a
/// link inside the directory that points out of it is refused too.
pub fn token_file_problem(
    kubeconfig: &Path,
    token_file: &str,
    config_dir: Option<&Path>,
) -> Option<String> {
    let root = match token_root(kubeconfig, config_dir) {
        Ok(r) => r,
        Err(e) => {
            return Some(format!(
                "tokenFile {token_file:?}: cannot resolve the config directory ({e})"
            ))
        }
    };
    let raw = Path::new(token_file);
    let joined = if raw.is_relative() {
        kubeconfig
            .parent()
            .map_or_else(|| raw.to_path_buf(), |d| d.join(raw))
    } else {
        raw.to_path_buf()
    };
    let fix = format!(
        "sdnlinkd reads a token file as root and sends its content to the API server, so it must lie inside {}; move the token file there or write the token inline (`token:`)",
        root.display()
    );
    match std::fs::canonicalize(&joined) {
        Ok(real) if real.starts_with(&root) => None,
        Ok(real) => Some(format!(
            "tokenFile {token_file:?} is {}, outside {}: {fix}",
            real.display(),
            root.display()
        )),
        Err(e) => Some(format!(
            "tokenFile {token_file:?} ({}) cannot be read ({e}): {fix}",
            joined.display()
        )),
    }
}

/// Reads a kubeconfig and refuses users with `exec` or `auth-provider`, and a `tokenFile`
/// outside the config directory (see [`token_file_problem`]).
fn read_kubeconfig(
    cluster: &str,
    path: &Path,
    config_dir: Option<&Path>,
) -> Result<Kubeconfig, ClustersError> {
    let kc = Kubeconfig::read_from(path).map_err(|source| ClustersError::Kubeconfig {
        cluster: cluster.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    for named in &kc.auth_infos {
        let Some(ai) = &named.auth_info else { continue };
        let mechanism = if ai.exec.is_some() {
            "exec"
        } else if ai.auth_provider.is_some() {
            "auth-provider"
        } else {
            continue;
        };
        return Err(ClustersError::RefusedAuth {
            cluster: cluster.to_string(),
            path: path.to_path_buf(),
            user: named.name.clone(),
            mechanism,
        });
    }
    for named in &kc.auth_infos {
        let Some(tf) = named
            .auth_info
            .as_ref()
            .and_then(|a| a.token_file.as_deref())
        else {
            continue;
        };
        if let Some(reason) = token_file_problem(path, tf, config_dir) {
            return Err(ClustersError::RefusedTokenFile {
                cluster: cluster.to_string(),
                path: path.to_path_buf(),
                user: named.name.clone(),
                reason,
            });
        }
    }
    Ok(kc)
}

/// A client for `cluster` from kubeconfig `path`; a `tokenFile` must lie inside the
/// kubeconfig's own directory (see [`make_watch_client`] for the config-directory rule).
async fn make_client(
    cluster: &str,
    path: &Path,
    api_timeout: Duration,
) -> Result<Client, ClustersError> {
    // The publisher reads and patches one Node: its answers are one object each.
    let cap = Arc::new(AtomicUsize::new(body_limit::MAX_EVENT_BYTES));
    make_watch_client(cluster, path, None, api_timeout, cap).await
}

/// A client for `cluster` from kubeconfig `path`, whose `tokenFile` must lie inside
/// `config_dir` (or the kubeconfig's own directory when that is inside it).
async fn make_watch_client(
    cluster: &str,
    path: &Path,
    config_dir: Option<&Path>,
    api_timeout: Duration,
    body_cap: Arc<AtomicUsize>,
) -> Result<Client, ClustersError> {
    let kc = read_kubeconfig(cluster, path, config_dir)?;
    let err = |reason: String| ClustersError::Client {
        cluster: cluster.to_string(),
        reason,
    };
    let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| err(e.to_string()))?;
    // kube's default read timeout (295 s) leaves a wedged API server, one that accepts
    // connections and never answers, looking healthy for five minutes.
    config.read_timeout = Some(api_timeout);
    config.connect_timeout = Some(api_timeout.min(Duration::from_secs(10)));
    let builder = kube::client::ClientBuilder::try_from(config)
        .map_err(|e| err(state::describe_client_error(&e)))?;
    Ok(builder
        .with_layer(&body_limit::BodyLimitLayer::new(body_cap))
        .build())
}

const HOST_SUBNET_GROUP_VERSION: &str = "network.openshift.io/v1";

fn host_subnet_resource() -> ApiResource {
    ApiResource {
        group: "network.openshift.io".into(),
        version: "v1".into(),
        api_version: HOST_SUBNET_GROUP_VERSION.into(),
        kind: "HostSubnet".into(),
        plural: "hostsubnets".into(),
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << attempt.min(6))).min(Duration::from_secs(30))
}

/// A cluster's store, shared by its watch task and the readers.
type StateCell = Arc<Mutex<ClusterState>>;

fn lock(cell: &StateCell) -> std::sync::MutexGuard<'_, ClusterState> {
    // A panic while holding the lock can only come from a bug in this module; the state itself
    // stays consistent enough to keep serving the last snapshot.
    cell.lock().unwrap_or_else(|p| p.into_inner())
}

/// What wakes whom when a cluster's store changes.
#[derive(Clone)]
struct Wakers {
    /// The daemon's reconcile task.
    daemon: Arc<Notify>,
    /// The snapshot writer.
    persist: Arc<Notify>,
    /// The node publisher (local cluster only).
    local: Option<Arc<Notify>>,
}

impl Wakers {
    fn changed(&self) {
        self.daemon.notify_one();
        self.persist.notify_one();
        if let Some(l) = &self.local {
            l.notify_one();
        }
    }
}

/// The settings a cluster's watch is built from: a reload that changes any of them restarts
/// that cluster's watch (keeping its snapshot); one that changes none leaves it running.
#[derive(Clone, Debug, PartialEq, Eq)]
struct WatchSettings {
    kubeconfig: PathBuf,
    /// The main config file's directory: where a kubeconfig's `tokenFile` may lie.
    config_dir: PathBuf,
    pod_cidrs: Vec<IpNet>,
    service_cidrs: Vec<IpNet>,
    api_timeout: Duration,
    is_local: bool,
}

impl WatchSettings {
    fn of(cfg: &Config, name: &str, kubeconfig: &Path) -> WatchSettings {
        WatchSettings {
            kubeconfig: kubeconfig.to_path_buf(),
            config_dir: cfg.config_dir.clone(),
            pod_cidrs: cfg.pod_cidrs_of(name).unwrap_or_default().to_vec(),
            service_cidrs: cfg.service_cidrs_of(name).unwrap_or_default().to_vec(),
            api_timeout: cfg.sync.api_timeout,
            is_local: name == cfg.local.name,
        }
    }
}

async fn run_cluster(
    name: String,
    set: WatchSettings,
    cell: StateCell,
    wake: Wakers,
    mut gate: tokio::sync::watch::Receiver<bool>,
) {
    // A dropped sender (the set is gone) also ends the wait; the task is aborted then anyway.
    let _ = gate.wait_for(|open| *open).await;
    let mut attempt = 0;
    let body_cap = lock(&cell).body_cap();
    let client = loop {
        match make_watch_client(
            &name,
            &set.kubeconfig,
            Some(&set.config_dir),
            set.api_timeout,
            body_cap.clone(),
        )
        .await
        {
            Ok(c) => break c,
            Err(e) => {
                lock(&cell).set_client_error(Some(e.to_string()));
                wake.daemon.notify_one();
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
        }
    };
    lock(&cell).set_client_error(None);
    wake.daemon.notify_one();

    // The server ends each watch after half the read timeout (a clean end, resumed from the
    // last resourceVersion without a relist), so only a server that stopped answering trips
    // the read timeout, even when no object changes for hours.
    let watch_secs = u32::try_from((set.api_timeout.as_secs() / 2).max(1)).unwrap_or(u32::MAX);
    let cfg = watcher::Config::default().timeout(watch_secs);
    let stream = |kind: Kind, ar: ApiResource| {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        watcher(api, cfg.clone())
            .default_backoff()
            .map(move |ev| (kind, ev))
            .boxed()
    };
    let main = futures::stream::select_all([
        stream(Kind::Service, ApiResource::erase::<core::Service>(&())),
        stream(
            Kind::EndpointSlice,
            ApiResource::erase::<k8s_openapi::api::discovery::v1::EndpointSlice>(&()),
        ),
        stream(Kind::Node, ApiResource::erase::<core::Node>(&())),
    ]);
    let host_subnets = async {
        let mut attempt = 0;
        loop {
            match client
                .list_api_group_resources(HOST_SUBNET_GROUP_VERSION)
                .await
            {
                Ok(list) if list.resources.iter().any(|r| r.name == "hostsubnets") => {
                    return Some(stream(Kind::HostSubnet, host_subnet_resource()));
                }
                Ok(_) => break,
                Err(kube::Error::Api(s)) if s.code == 404 => break,
                Err(e) => {
                    let reason = format!("discovery: {}", state::describe_client_error(&e));
                    lock(&cell).set_error(Kind::HostSubnet, reason);
                    wake.daemon.notify_one();
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
            }
        }
        lock(&cell).host_subnets_absent();
        wake.changed();
        None
    };
    let handle = |(kind, ev)| {
        let changed = {
            let mut s = lock(&cell);
            let before = s.health();
            let changed = s.handle(kind, ev);
            changed || s.health() != before
        };
        if changed {
            wake.changed();
        }
    };
    // Services, slices and nodes start at once; HostSubnets join when discovery has answered.
    let mut main = main;
    tokio::pin!(host_subnets);
    let extra = loop {
        tokio::select! {
            hs = &mut host_subnets => break hs,
            item = main.next() => match item {
                Some(item) => handle(item),
                None => return,
            },
        }
    };
    if let Some(extra) = extra {
        main.push(extra);
    }
    while let Some(item) = main.next().await {
        handle(item);
    }
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

/// How often, at most, a cluster's snapshot is written while changes keep arriving.
const PERSIST_EVERY: Duration = Duration::from_secs(3);

/// Writes the snapshot of every cluster that has listed in this run and changed since its last
/// write: at once after a change, then at most every [`PERSIST_EVERY`]. Only a write starts the
/// pause: a wake with nothing due (a warm snapshot served before the cluster lists) must not
/// hold back the write of the first list, or a crash in the next seconds restarts from the old
/// file again and re-serves what the list had already withdrawn.
async fn run_persister(view: ClusterView, store: Arc<SnapshotStore>, wake: Arc<Notify>) {
    // (incarnation, generation) written per cluster: a cluster removed and added back by
    // reloads gets a new store whose generation can reach the old number again.
    let mut written: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut failing: BTreeMap<String, String> = BTreeMap::new();
    loop {
        wake.notified().await;
        let due: Vec<(String, Arc<ClusterSnapshot>, (u64, u64))> = {
            let inner = view.read();
            written.retain(|n, _| inner.cells.contains_key(n));
            inner
                .cells
                .iter()
                .filter_map(|(name, cell)| {
                    let mut s = lock(cell);
                    let generation = (s.incarnation(), s.generation());
                    if !s.listed() || written.get(name) == Some(&generation) {
                        return None;
                    }
                    Some((name.clone(), s.snapshot(), generation))
                })
                .collect()
        };
        let wrote = !due.is_empty();
        for (name, snap, generation) in due {
            let st = store.clone();
            let n = name.clone();
            let res = tokio::task::spawn_blocking(move || st.save(&n, &snap)).await;
            match res {
                Ok(Ok(_)) if !view.read().cells.contains_key(&name) => {
                    // The cluster left the config while its file was being written: the
                    // removal may have run before the rename, so remove again.
                    let st = store.clone();
                    let n = name.clone();
                    let _ = tokio::task::spawn_blocking(move || st.remove(&n)).await;
                }
                Ok(Ok(_)) => {
                    written.insert(name.clone(), generation);
                    if failing.remove(&name).is_some() {
                        tracing::info!(cluster = %name, "snapshot written again");
                    }
                }
                Ok(Err(e)) => {
                    let msg = e.to_string();
                    if failing.get(&name) != Some(&msg) {
                        tracing::warn!(cluster = %name, "writing the cluster's snapshot failed; a restart while its API is unreachable would start without it: {msg}");
                    }
                    failing.insert(name, msg);
                }
                Err(e) => tracing::warn!(cluster = %name, "snapshot writer task failed: {e}"),
            }
        }
        if wrote {
            tokio::time::sleep(PERSIST_EVERY).await;
        }
    }
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
            Some(st) => rt.spawn(run_persister(view.clone(), st.clone(), persist.clone())),
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
    fn apply_config(&mut self, cfg: &Config, report: &mut Reconfigured) {
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
