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
const PERSIST_EVERY: Duration = Duration::from_secs(3);

/// Writes the snapshot of every cluster that has listed in this run and changed since its last
/// write: at once after a change, then at most every [`PERSIST_EVERY`]. Only a write starts the
/// pause: a wake with nothing due (a warm snapshot served before the cluster lists) must not
/// hold back the write of the first list, or a crash in the next seconds restarts from the old
/// file again and re-serves what the list had already withdrawn.
pub(super) async fn run_persister(view: ClusterView, store: Arc<SnapshotStore>, wake: Arc<Notify>) {
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
