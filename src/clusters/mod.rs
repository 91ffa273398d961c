//! Remote (and local) clusters: one kube-rs client per watched cluster, watches of Services,
//! EndpointSlices, Nodes and (on OpenShift SDN) HostSubnets, trust filtering into plain
//! [`crate::model::ClusterSnapshot`] values, publication of this node's WireGuard annotations,
//! and [`simapi`], the simulated API server the tests and the lab run against.
//!
//! The Kubernetes types never leave this module. Every change only marks the cluster's snapshot
//! stale and wakes the daemon's reconcile task through [`ClusterSet::changed`]; the task
//! coalesces bursts and reads [`ClusterSet::snapshots`].

pub mod convert;
pub mod persist;
pub mod simapi;
mod state;

pub use convert::{SkipReason, ANNOTATION_ENDPOINT, ANNOTATION_PUBLIC_KEY};
pub use state::ObjectCounts;

use crate::config::Config;
use crate::model::{Snapshots, SyncState};
use futures::StreamExt;
use k8s_openapi::api::core::v1 as core;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use serde::Serialize;
use state::{ClusterState, Kind};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
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
    /// (root); a remote cluster's kubeconfig must not be able to do that (design.md).
    #[error("cluster {cluster}: kubeconfig {path}: user {user:?} uses {mechanism}, which sdnlinkd refuses (it would run code as root); use a token or a client certificate")]
    RefusedAuth {
        cluster: String,
        path: PathBuf,
        user: String,
        mechanism: &'static str,
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
}

struct Shared {
    clusters: BTreeMap<String, Mutex<ClusterState>>,
    /// Clusters without a kubeconfig (static peers only), in config order.
    statics: Vec<String>,
    notify: Arc<Notify>,
    local_client: tokio::sync::Mutex<Option<Client>>,
}

impl Shared {
    fn with<R>(&self, cluster: &str, f: impl FnOnce(&mut ClusterState) -> R) -> Option<R> {
        let m = self.clusters.get(cluster)?;
        // A panic while holding the lock can only come from a bug in this module; the state
        // itself stays consistent enough to keep serving the last snapshot.
        let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
        Some(f(&mut g))
    }
}

struct LocalNode {
    cluster: String,
    node_name: String,
    kubeconfig: PathBuf,
    api_timeout: Duration,
}

/// The watched clusters of one configuration.
pub struct ClusterSet {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    local: Option<LocalNode>,
}

/// Reads a kubeconfig and refuses users with `exec` or `auth-provider`.
fn read_kubeconfig(cluster: &str, path: &Path) -> Result<Kubeconfig, ClustersError> {
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
    Ok(kc)
}

async fn make_client(
    cluster: &str,
    path: &Path,
    api_timeout: Duration,
) -> Result<Client, ClustersError> {
    let kc = read_kubeconfig(cluster, path)?;
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
    Client::try_from(config).map_err(|e| err(state::describe_client_error(&e)))
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

async fn run_cluster(
    name: String,
    kubeconfig: PathBuf,
    shared: Arc<Shared>,
    is_local: bool,
    api_timeout: Duration,
) {
    let mut attempt = 0;
    let client = loop {
        match make_client(&name, &kubeconfig, api_timeout).await {
            Ok(c) => break c,
            Err(e) => {
                shared.with(&name, |s| s.set_client_error(Some(e.to_string())));
                shared.notify.notify_one();
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
        }
    };
    shared.with(&name, |s| s.set_client_error(None));
    shared.notify.notify_one();
    if is_local {
        *shared.local_client.lock().await = Some(client.clone());
    }

    // The server ends each watch after half the read timeout (a clean end, resumed from the
    // last resourceVersion without a relist), so only a server that stopped answering trips
    // the read timeout, even when no object changes for hours.
    let watch_secs = u32::try_from((api_timeout.as_secs() / 2).max(1)).unwrap_or(u32::MAX);
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
                    shared.with(&name, |s| s.set_error(Kind::HostSubnet, reason));
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
            }
        }
        shared.with(&name, |s| s.host_subnets_absent());
        shared.notify.notify_one();
        None
    };
    let handle = |(kind, ev)| {
        let changed = shared.with(&name, |s| {
            let before = s.health();
            let changed = s.handle(kind, ev);
            changed || s.health() != before
        });
        if changed == Some(true) {
            shared.notify.notify_one();
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

impl ClusterSet {
    /// Starts the watches of every cluster with a kubeconfig (`cfg.watched_clusters()`), on
    /// the current tokio runtime. Fails at once on an unreadable kubeconfig or a refused auth
    /// mechanism; an unreachable API server only shows as degraded in [`ClusterSet::status`].
    pub fn start(cfg: &Config) -> Result<ClusterSet, ClustersError> {
        let rt = tokio::runtime::Handle::try_current().map_err(ClustersError::NoRuntime)?;
        let mut clusters = BTreeMap::new();
        let mut watched = Vec::new();
        for (name, path) in cfg.watched_clusters() {
            read_kubeconfig(name, path)?;
            let pods = cfg.pod_cidrs_of(name).unwrap_or_default();
            let svcs = cfg.service_cidrs_of(name).unwrap_or_default();
            clusters.insert(
                name.to_string(),
                Mutex::new(ClusterState::new(
                    name,
                    pods,
                    svcs,
                    cfg.sync.max_objects_per_cluster,
                )),
            );
            watched.push((name.to_string(), path.to_path_buf()));
        }
        let statics = cfg
            .remote
            .iter()
            .filter(|r| r.kubeconfig.is_none())
            .map(|r| r.name.clone())
            .collect();
        let shared = Arc::new(Shared {
            clusters,
            statics,
            notify: Arc::new(Notify::new()),
            local_client: tokio::sync::Mutex::new(None),
        });
        let tasks = watched
            .into_iter()
            .map(|(name, path)| {
                let is_local = name == cfg.local.name;
                rt.spawn(run_cluster(
                    name,
                    path,
                    shared.clone(),
                    is_local,
                    cfg.sync.api_timeout,
                ))
            })
            .collect();
        let local = cfg.local.kubeconfig.as_ref().map(|k| LocalNode {
            cluster: cfg.local.name.clone(),
            node_name: cfg.local.node_name.clone(),
            kubeconfig: k.clone(),
            api_timeout: cfg.sync.api_timeout,
        });
        Ok(ClusterSet {
            shared,
            tasks,
            local,
        })
    }

    /// The current trusted snapshot of every watched cluster. A cluster whose API server is
    /// unreachable keeps its last good snapshot.
    pub fn snapshots(&self) -> Snapshots {
        self.shared
            .clusters
            .keys()
            .filter_map(|name| Some((name.clone(), self.shared.with(name, |s| s.snapshot())?)))
            .collect()
    }

    /// Notified (one stored permit) after every change of any snapshot or sync state; the
    /// reconcile task coalesces.
    pub fn changed(&self) -> Arc<Notify> {
        self.shared.notify.clone()
    }

    /// Whether every watched cluster has listed every kind once.
    pub fn all_listed(&self) -> bool {
        self.shared
            .clusters
            .keys()
            .all(|n| self.shared.with(n, |s| s.listed()).unwrap_or(false))
    }

    /// Sync state, object counts and skip counts per cluster (watched ones, then static ones).
    pub fn status(&self) -> Vec<ClusterStatus> {
        let mut out: Vec<ClusterStatus> = self
            .shared
            .clusters
            .keys()
            .filter_map(|name| {
                self.shared.with(name, |s| ClusterStatus {
                    name: name.clone(),
                    state: s.state(),
                    objects: s.counts(),
                    skipped: s.skipped(),
                })
            })
            .collect();
        out.extend(self.shared.statics.iter().map(|n| ClusterStatus {
            name: n.clone(),
            state: SyncState::Static,
            objects: ObjectCounts::default(),
            skipped: BTreeMap::new(),
        }));
        out
    }

    /// Writes this node's WireGuard public key and advertised endpoint as annotations
    /// ([`ANNOTATION_PUBLIC_KEY`], [`ANNOTATION_ENDPOINT`]) on its own Node through the local
    /// kubeconfig, only when they differ from what the Node carries (an absent endpoint
    /// removes the annotation). Returns whether it patched; `Ok(false)` without a local
    /// kubeconfig.
    pub async fn publish_node(
        &self,
        public_key: &str,
        endpoint: Option<SocketAddr>,
    ) -> Result<bool, ClustersError> {
        let Some(local) = &self.local else {
            return Ok(false);
        };
        let client = {
            let mut g = self.shared.local_client.lock().await;
            match &*g {
                Some(c) => c.clone(),
                None => {
                    let c =
                        make_client(&local.cluster, &local.kubeconfig, local.api_timeout).await?;
                    *g = Some(c.clone());
                    c
                }
            }
        };
        let api_err = |e: kube::Error| ClustersError::Api {
            cluster: local.cluster.clone(),
            reason: format!(
                "Node {}: {}",
                local.node_name,
                state::describe_client_error(&e)
            ),
        };
        let nodes: Api<core::Node> = Api::all(client);
        let node = nodes.get(&local.node_name).await.map_err(api_err)?;
        let ann = node.metadata.annotations.unwrap_or_default();
        let endpoint = endpoint.map(|e| e.to_string());
        if ann.get(ANNOTATION_PUBLIC_KEY).map(String::as_str) == Some(public_key)
            && ann.get(ANNOTATION_ENDPOINT) == endpoint.as_ref()
        {
            return Ok(false);
        }
        let patch = serde_json::json!({
            "metadata": { "annotations": {
                ANNOTATION_PUBLIC_KEY: public_key,
                ANNOTATION_ENDPOINT: endpoint,
            }}
        });
        nodes
            .patch(
                &local.node_name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(api_err)?;
        tracing::info!(node = %local.node_name, "published this node's WireGuard annotations");
        Ok(true)
    }

    /// Stops every watch. Snapshots already handed out stay valid.
    pub fn shutdown(self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for ClusterSet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
