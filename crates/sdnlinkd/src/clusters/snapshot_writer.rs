//! The snapshot writer task: it persists each cluster's last good snapshot, so a restart while
//! the cluster's API server is unreachable starts from it rather than from nothing.

use super::persist::SnapshotStore;
use super::{lock, ClusterView};
use crate::model::ClusterSnapshot;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How often, at most, a cluster's snapshot is written while changes keep arriving.
pub(super) const PERSIST_EVERY: Duration = Duration::from_secs(3);

/// Writes the snapshot of every cluster that has listed in this run and changed since its last
/// write: at once after its first list in this run, then at most every `pause`
/// ([`PERSIST_EVERY`]) while changes keep arriving. The pause is per cluster: one cluster's
/// write must not hold back another's first list (nor a wake with nothing due), or a crash in
/// the next seconds restarts from that cluster's older file and re-serves what its list had
/// already withdrawn (the local cluster lists first and was written first: the remote's first
/// list then waited out the local's pause, which a lab kill -9 two seconds after a start hit).
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
    // When each cluster was last written (or tried) in this run.
    let mut last_try: BTreeMap<String, Instant> = BTreeMap::new();
    let mut next_due: Option<Instant> = None;
    loop {
        match next_due {
            Some(at) => {
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep_until(at.into()) => {}
                }
            }
            None => wake.notified().await,
        }
        let now = Instant::now();
        next_due = None;
        let due: Vec<(String, Arc<ClusterSnapshot>, (u64, u64))> = {
            let inner = view.read();
            written.retain(|n, _| inner.cells.contains_key(n));
            last_try.retain(|n, _| inner.cells.contains_key(n));
            let mut due = Vec::new();
            for (name, cell) in &inner.cells {
                let mut s = lock(cell);
                let generation = (s.incarnation(), s.generation());
                if !s.listed() || written.get(name) == Some(&generation) {
                    continue;
                }
                if let Some(at) = last_try.get(name).map(|t| *t + pause) {
                    if now < at {
                        next_due = Some(next_due.map_or(at, |n: Instant| n.min(at)));
                        continue;
                    }
                }
                due.push((name.clone(), s.snapshot(), generation));
            }
            due
        };
        for (name, snap, generation) in due {
            last_try.insert(name.clone(), Instant::now());
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
    }
}

#[cfg(test)]
mod tests {
    use super::super::state::{ClusterState, Kind};
    use super::super::{StateCell, ViewInner};
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

    async fn saved_services(
        store: &SnapshotStore,
        cluster: &str,
        within: Duration,
    ) -> Option<Vec<String>> {
        let start = std::time::Instant::now();
        loop {
            if let Ok(Some(snap)) = store.load(cluster) {
                return Some(snap.services.keys().map(|k| k.to_string()).collect());
            }
            if start.elapsed() > within {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn cell(name: &str) -> StateCell {
        let pod = vec!["10.132.0.0/14".parse().expect("cidr")];
        let svcs = vec!["172.31.0.0/16".parse().expect("cidr")];
        Arc::new(Mutex::new(ClusterState::new(name, &pod, &svcs, 100)))
    }

    fn list_all(cell: &StateCell, services: Vec<DynamicObject>) {
        let mut s = cell.lock().expect("state lock");
        list(&mut s, Kind::Service, services);
        for kind in Kind::ALL.into_iter().filter(|k| *k != Kind::Service) {
            list(&mut s, kind, vec![]);
        }
        assert!(s.listed(), "every watch listed");
    }

    /// A writer over `cells` with a pause of an hour: whatever the test sees written was
    /// written without waiting for a pause.
    fn writer(
        cells: &[(&str, &StateCell)],
        dir: &std::path::Path,
    ) -> (Arc<SnapshotStore>, Arc<Notify>, tokio::task::JoinHandle<()>) {
        let store = Arc::new(SnapshotStore::new(dir, 1 << 20));
        let view = ClusterView {
            inner: Arc::new(RwLock::new(ViewInner {
                cells: cells
                    .iter()
                    .map(|(n, c)| (n.to_string(), Arc::clone(c)))
                    .collect(),
                statics: vec![],
            })),
        };
        let wake = Arc::new(Notify::new());
        let task = tokio::spawn(run_persister(
            view,
            store.clone(),
            wake.clone(),
            Duration::from_secs(3600),
        ));
        (store, wake, task)
    }

    /// The first faults-kill-restart flake: a wake before the cluster had listed (a warm start)
    /// put the writer to sleep, so the first list stayed unwritten for the whole pause and a
    /// crash then restarted from the older file. The fix writes the list at once, and only
    /// then pauses that cluster.
    #[tokio::test]
    async fn the_first_list_after_a_wake_with_nothing_due_is_written_at_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let east = cell("east");
        let (store, wake, task) = writer(&[("east", &east)], dir.path());

        // Nothing listed yet: the wake finds nothing due and writes nothing.
        wake.notify_one();
        let none = saved_services(&store, "east", Duration::from_millis(200)).await;
        assert_eq!(none, None);

        list_all(&east, vec![svc("a", "172.31.0.1")]);
        wake.notify_one();
        assert_eq!(
            saved_services(&store, "east", Duration::from_secs(10)).await,
            Some(vec!["ns/a".to_string()]),
            "the first list is written without waiting for a pause"
        );

        // A write starts the cluster's pause: its next change waits for it.
        {
            let mut s = east.lock().expect("state lock");
            s.handle(
                Kind::Service,
                Ok(watcher::Event::Apply(svc("b", "172.31.0.2"))),
            );
        }
        wake.notify_one();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            saved_services(&store, "east", Duration::ZERO).await,
            Some(vec!["ns/a".to_string()])
        );
        task.abort();
    }

    /// The second: the local cluster lists first and is written, which paused the one writer
    /// for every cluster; the remote's first list then waited out that pause, and a kill -9
    /// two seconds after the start restarted from the remote's older file.
    #[tokio::test]
    async fn one_clusters_write_does_not_hold_back_another_clusters_first_list() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (east, west) = (cell("east"), cell("west"));
        let (store, wake, task) = writer(&[("east", &east), ("west", &west)], dir.path());

        list_all(&east, vec![svc("a", "172.31.0.1")]);
        wake.notify_one();
        assert_eq!(
            saved_services(&store, "east", Duration::from_secs(10)).await,
            Some(vec!["ns/a".to_string()])
        );
        list_all(&west, vec![svc("w", "172.31.0.9")]);
        wake.notify_one();
        assert_eq!(
            saved_services(&store, "west", Duration::from_secs(10)).await,
            Some(vec!["ns/w".to_string()]),
            "west's first list is written at once although east was just written"
        );
        task.abort();
    }
}
