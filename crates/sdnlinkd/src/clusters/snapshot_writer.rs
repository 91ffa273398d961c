//! The snapshot writer task: it persists each cluster's last good snapshot, so a restart while
//! the cluster's API server is unreachable starts from it rather than from nothing.

use super::persist::SnapshotStore;
use super::{lock, ClusterView};
use crate::model::ClusterSnapshot;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// How often, at most, a cluster's snapshot is written while changes keep arriving.
pub(super) const PERSIST_EVERY: Duration = Duration::from_secs(3);

/// Writes the snapshot of every cluster that has listed in this run and changed since its last
/// write: at once after a change, then at most every `pause` ([`PERSIST_EVERY`]). Only a write starts the
/// pause: a wake with nothing due (a warm snapshot served before the cluster lists) must not
/// hold back the write of the first list, or a crash in the next seconds restarts from the old
/// file again and re-serves what the list had already withdrawn.
pub(super) async fn run_persister(
    view: ClusterView,
    store: Arc<SnapshotStore>,
    wake: Arc<Notify>,
    pause: Duration,
) {
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
            tokio::time::sleep(pause).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::state::{ClusterState, Kind};
    use super::super::ViewInner;
    use super::*;
    use kube::api::DynamicObject;
    use kube::runtime::watcher;
    use std::sync::{Mutex, RwLock};

    fn svc(name: &str, ip: &str) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "ns", "uid": format!("u-{name}")},
            "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                     "ports": [{"name": "p", "port": 80, "protocol": "TCP"}]}}))
        .expect("a Service object")
    }

    fn list(s: &mut ClusterState, kind: Kind, objs: Vec<DynamicObject>) {
        s.handle(kind, Ok(watcher::Event::Init));
        for o in objs {
            s.handle(kind, Ok(watcher::Event::InitApply(o)));
        }
        s.handle(kind, Ok(watcher::Event::InitDone));
    }

    async fn saved_services(store: &SnapshotStore, within: Duration) -> Option<Vec<String>> {
        let start = std::time::Instant::now();
        loop {
            if let Ok(Some(snap)) = store.load("east") {
                return Some(snap.services.keys().map(|k| k.to_string()).collect());
            }
            if start.elapsed() > within {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The faults-kill-restart flake: a wake before the cluster had listed (a warm start) put
    /// the writer to sleep, so the first list stayed unwritten for the whole pause and a
    /// crash then restarted from the older file. With a pause of an hour, that bug leaves no
    /// file at all; the fix writes the list at once, and only then pauses.
    #[tokio::test]
    async fn the_first_list_after_a_wake_with_nothing_due_is_written_at_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(SnapshotStore::new(dir.path(), 1 << 20));
        let pod = vec!["10.132.0.0/14".parse().expect("cidr")];
        let svcs = vec!["172.31.0.0/16".parse().expect("cidr")];
        let cell = Arc::new(Mutex::new(ClusterState::new("east", &pod, &svcs, 100)));
        let view = ClusterView {
            inner: Arc::new(RwLock::new(ViewInner {
                cells: BTreeMap::from([("east".to_string(), cell.clone())]),
                statics: vec![],
            })),
        };
        let wake = Arc::new(Notify::new());
        let writer = tokio::spawn(run_persister(
            view,
            store.clone(),
            wake.clone(),
            Duration::from_secs(3600),
        ));

        // Nothing listed yet: the wake finds nothing due and writes nothing.
        wake.notify_one();
        assert_eq!(
            saved_services(&store, Duration::from_millis(200)).await,
            None
        );

        {
            let mut s = cell.lock().expect("state lock");
            list(&mut s, Kind::Service, vec![svc("a", "172.31.0.1")]);
            for kind in Kind::ALL.into_iter().filter(|k| *k != Kind::Service) {
                list(&mut s, kind, vec![]);
            }
            assert!(s.listed(), "every watch listed");
        }
        wake.notify_one();
        assert_eq!(
            saved_services(&store, Duration::from_secs(10)).await,
            Some(vec!["ns/a".to_string()]),
            "the first list is written without waiting for a pause"
        );

        // A write starts the pause: the next change waits for it.
        {
            let mut s = cell.lock().expect("state lock");
            s.handle(
                Kind::Service,
                Ok(watcher::Event::Apply(svc("b", "172.31.0.2"))),
            );
        }
        wake.notify_one();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            saved_services(&store, Duration::ZERO).await,
            Some(vec!["ns/a".to_string()])
        );
        writer.abort();
    }
}
