//! The table that shares equal node names and endpoint-port lists between the records.

use crate::model::EndpointPort;
use std::collections::HashSet;
use std::sync::Arc;

/// Shares equal strings and endpoint-port lists between records: the node name of every
/// endpoint on one node, the port list of every endpoint of a slice and of every slice with
/// the same ports. Entries no record uses any more are dropped when the table has doubled
/// since its last sweep, so the table stays proportional to what is held.
#[derive(Debug, Default)]
pub struct Interner {
    strs: HashSet<Arc<str>>,
    ports: HashSet<Arc<[EndpointPort]>>,
    sweep_at: usize,
}

impl Interner {
    /// The shared copy of `s`.
    pub fn str(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.strs.get(s) {
            return a.clone();
        }
        self.sweep();
        let a: Arc<str> = Arc::from(s);
        self.strs.insert(a.clone());
        a
    }

    /// The shared copy of `ports`.
    pub fn ports(&mut self, ports: Vec<EndpointPort>) -> Arc<[EndpointPort]> {
        if let Some(a) = self.ports.get(ports.as_slice()) {
            return a.clone();
        }
        self.sweep();
        let a: Arc<[EndpointPort]> = Arc::from(ports);
        self.ports.insert(a.clone());
        a
    }

    fn sweep(&mut self) {
        let len = self.strs.len() + self.ports.len();
        if len < self.sweep_at.max(1024) {
            return;
        }
        self.strs.retain(|a| Arc::strong_count(a) > 1);
        self.ports.retain(|a| Arc::strong_count(a) > 1);
        self.sweep_at = 2 * (self.strs.len() + self.ports.len());
    }

    /// Entries held (for tests and accounting).
    pub fn len(&self) -> usize {
        self.strs.len() + self.ports.len()
    }

    /// Whether nothing is interned.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
