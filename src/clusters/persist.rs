//! TEMPORARY compile stub; replaced by the real store on merge.
use crate::model::ClusterSnapshot;
use std::path::PathBuf;
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;
#[derive(Debug, thiserror::Error)]
#[error("persist stub")]
pub struct PersistError;
pub struct SaveReport;
pub struct SnapshotStore {
    dir: PathBuf,
}
impl SnapshotStore {
    pub fn new(state_dir: impl Into<PathBuf>, _max: u64) -> SnapshotStore {
        SnapshotStore {
            dir: state_dir.into(),
        }
    }
    pub fn path_of(&self, cluster: &str) -> PathBuf {
        self.dir.join(cluster)
    }
    pub fn save(&self, _c: &str, _s: &ClusterSnapshot) -> Result<SaveReport, PersistError> {
        Ok(SaveReport)
    }
    pub fn load(&self, _c: &str) -> Result<Option<ClusterSnapshot>, PersistError> {
        Ok(None)
    }
    pub fn remove(&self, _c: &str) -> Result<bool, PersistError> {
        Ok(false)
    }
    pub fn remove_all(&self) -> Result<usize, PersistError> {
        Ok(0)
    }
    pub fn retain(&self, _k: &[&str]) -> Result<Vec<String>, PersistError> {
        Ok(vec![])
    }
}
