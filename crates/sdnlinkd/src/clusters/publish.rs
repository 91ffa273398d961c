//! Publication of this node's WireGuard public key and endpoint as annotations on its own Node,
//! through the local kubeconfig, in a task of its own.
//!
//! The reconcile loop only hands over what the annotations should say; it never waits for the
//! API server. The task compares that with what the local cluster's Node watch last saw, so in
//! steady state it makes no API call at all; it patches when the two differ (at start, after a
//! key or endpoint change, or when someone removed the annotations), with its own timeout and
//! backoff, and reports into [`PublishStatus`].

use super::kubeconfig::make_client;
use super::{lock, state::describe_client_error, StateCell};
use super::{ClustersError, ANNOTATION_ENDPOINT, ANNOTATION_PUBLIC_KEY};
use k8s_openapi::api::core::v1 as core;
use kube::api::{Api, Patch, PatchParams};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{watch, Notify};

/// Where to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub cluster: String,
    pub node_name: String,
    pub kubeconfig: PathBuf,
    pub api_timeout: Duration,
}

/// What the Node's annotations should say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Annotations {
    pub public_key: String,
    pub endpoint: Option<SocketAddr>,
}

impl Annotations {
    fn matches(&self, seen: &(Option<String>, Option<String>)) -> bool {
        seen.0.as_deref() == Some(self.public_key.as_str())
            && seen.1 == self.endpoint.map(|e| e.to_string())
    }
}

/// The publisher's state for `sdnlinkd status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PublishStatus {
    /// The Node the annotations go on.
    pub node: String,
    /// `pending` (nothing confirmed yet), `published` (the Node carries them) or `failing`.
    pub state: &'static str,
    /// The last failure, while failing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the last patch was accepted.
    #[serde(
        with = "crate::model::unix_seconds_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_patch: Option<SystemTime>,
    /// Patches sent since start.
    pub patches: u64,
}

/// A reader of the publisher's state that outlives reloads of the daemon's config.
#[derive(Clone)]
pub struct PublishView(Arc<Mutex<PublishStatus>>);

impl PublishView {
    /// The publisher's state now.
    pub fn get(&self) -> PublishStatus {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The running publisher.
pub struct Publisher {
    target: Target,
    want: watch::Sender<Option<Annotations>>,
    source: watch::Sender<Option<StateCell>>,
    status: Arc<Mutex<PublishStatus>>,
    task: tokio::task::JoinHandle<()>,
}

/// A patch that the watch has not shown back yet is trusted for this long before the Node's
/// annotations, as the watch sees them, count as changed by someone else.
const WATCH_LAG: Duration = Duration::from_secs(5);

fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.min(8)).min(Duration::from_secs(300))
}

impl Publisher {
    /// Starts the task on `rt`; `wake` is notified on every change of the local cluster.
    pub fn start(rt: &tokio::runtime::Handle, target: Target, wake: Arc<Notify>) -> Publisher {
        let (want, want_rx) = watch::channel(None);
        let (source, source_rx) = watch::channel(None);
        let status = Arc::new(Mutex::new(PublishStatus {
            node: target.node_name.clone(),
            state: "pending",
            ..PublishStatus::default()
        }));
        let task = rt.spawn(run(
            target.clone(),
            want_rx,
            source_rx,
            wake,
            status.clone(),
        ));
        Publisher {
            target,
            want,
            source,
            status,
            task,
        }
    }

    /// Where it publishes.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Sets what the annotations should say; the task patches when the Node differs.
    pub fn set(&self, a: Annotations) {
        self.want.send_if_modified(|cur| {
            let changed = cur.as_ref() != Some(&a);
            *cur = Some(a);
            changed
        });
    }

    /// The store of the local cluster's watch, whose Node view spares API calls.
    pub fn set_source(&self, cell: Option<StateCell>) {
        self.source.send_replace(cell);
    }

    /// The state now.
    pub fn status(&self) -> PublishStatus {
        self.view().get()
    }

    /// A reader of the state.
    pub fn view(&self) -> PublishView {
        PublishView(self.status.clone())
    }

    /// Stops the task; returns what it was asked to publish, for a successor.
    pub fn stop(self) -> Option<Annotations> {
        self.task.abort();
        self.want.borrow().clone()
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    target: Target,
    mut want_rx: watch::Receiver<Option<Annotations>>,
    source_rx: watch::Receiver<Option<StateCell>>,
    wake: Arc<Notify>,
    status: Arc<Mutex<PublishStatus>>,
) {
    let set_status = |f: &dyn Fn(&mut PublishStatus)| {
        let mut g = status.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g);
    };
    let mut client: Option<kube::Client> = None;
    let mut confirmed: Option<(Annotations, Instant)> = None;
    let mut attempt = 0u32;
    let mut last_error: Option<String> = None;
    loop {
        let want = want_rx.borrow_and_update().clone();
        let Some(want) = want else {
            if want_rx.changed().await.is_err() {
                return;
            }
            continue;
        };
        // What the local watch saw: None = not listed (or no watch), Some(None) = no such Node.
        let seen = source_rx
            .borrow()
            .as_ref()
            .and_then(|cell| lock(cell).node_annotations(&target.node_name));
        let recent = confirmed
            .as_ref()
            .filter(|(a, _)| *a == want)
            .map(|(_, at)| at.elapsed() < WATCH_LAG);
        let in_sync = match (&seen, recent) {
            (Some(Some(ann)), _) if want.matches(ann) => true,
            // Our own patch may not have come back through the watch yet.
            (Some(_), Some(true)) => true,
            (Some(_), _) => false,
            (None, r) => r.is_some(),
        };
        if !in_sync {
            let res =
                tokio::time::timeout(target.api_timeout, publish(&target, &mut client, &want))
                    .await
                    .unwrap_or_else(|_| {
                        Err(ClustersError::Api {
                            cluster: target.cluster.clone(),
                            reason: format!(
                                "Node {}: no answer within {} s (sync.api_timeout)",
                                target.node_name,
                                target.api_timeout.as_secs()
                            ),
                        })
                    });
            match res {
                Ok(patched) => {
                    attempt = 0;
                    confirmed = Some((want.clone(), Instant::now()));
                    if patched || last_error.is_some() {
                        tracing::info!(node = %target.node_name, "published this node's WireGuard annotations");
                    }
                    last_error = None;
                    set_status(&|s| {
                        s.state = "published";
                        s.error = None;
                        if patched {
                            s.patches += 1;
                            s.last_patch = Some(SystemTime::now());
                        }
                    });
                }
                Err(e) => {
                    let msg = e.to_string();
                    if last_error.as_deref() != Some(msg.as_str()) {
                        tracing::warn!("publishing this node's WireGuard annotations failed (peers keep the last published values; retrying with backoff): {msg}");
                    }
                    // A client that failed may hold a dead connection: build a new one.
                    client = None;
                    set_status(&|s| {
                        s.state = "failing";
                        s.error = Some(msg.clone());
                    });
                    last_error = Some(msg);
                    let delay = backoff(attempt);
                    attempt = attempt.saturating_add(1);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        r = want_rx.changed() => if r.is_err() { return },
                    }
                    continue;
                }
            }
        }
        let lag = confirmed
            .as_ref()
            .map(|(_, at)| WATCH_LAG.saturating_sub(at.elapsed()))
            .filter(|d| !d.is_zero());
        tokio::select! {
            r = want_rx.changed() => if r.is_err() { return },
            _ = wake.notified() => {}
            _ = tokio::time::sleep(lag.unwrap_or(Duration::from_secs(3600))), if lag.is_some() => {}
        }
    }
}

/// Reads the Node and patches the annotations when they differ; returns whether it patched.
async fn publish(
    target: &Target,
    client: &mut Option<kube::Client>,
    want: &Annotations,
) -> Result<bool, ClustersError> {
    let c = match client {
        Some(c) => c.clone(),
        None => {
            let c = make_client(&target.cluster, &target.kubeconfig, target.api_timeout).await?;
            *client = Some(c.clone());
            c
        }
    };
    let api_err = |e: kube::Error| ClustersError::Api {
        cluster: target.cluster.clone(),
        reason: format!("Node {}: {}", target.node_name, describe_client_error(&e)),
    };
    let nodes: Api<core::Node> = Api::all(c);
    let node = nodes.get(&target.node_name).await.map_err(api_err)?;
    let ann = node.metadata.annotations.unwrap_or_default();
    let seen = (
        ann.get(ANNOTATION_PUBLIC_KEY).cloned(),
        ann.get(ANNOTATION_ENDPOINT).cloned(),
    );
    if want.matches(&seen) {
        return Ok(false);
    }
    let patch = serde_json::json!({
        "metadata": { "annotations": {
            ANNOTATION_PUBLIC_KEY: want.public_key,
            ANNOTATION_ENDPOINT: want.endpoint.map(|e| e.to_string()),
        }}
    });
    nodes
        .patch(
            &target.node_name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(api_err)?;
    Ok(true)
}
