//! What is left out and why: skipped pieces and refused objects, counted per reason and
//! logged within bounds, so a remote sending bad objects costs bounded memory and log lines.

use super::records::Skips;
use super::{ClusterState, Kind, MAX_TRACKED_REFUSALS};
use crate::clusters::convert::{Skip, SkipReason};
use std::collections::BTreeMap;

impl ClusterState {
    /// Currently skipped pieces and objects, by reason.
    pub fn skipped(&self) -> BTreeMap<String, u64> {
        self.skip_counts
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(r, n)| (r.as_str().to_string(), *n))
            .collect()
    }

    /// Pieces and objects skipped anew since the store started, by reason.
    pub fn skipped_total(&self) -> BTreeMap<String, u64> {
        self.skip_totals
            .iter()
            .map(|(r, n)| (r.as_str().to_string(), *n))
            .collect()
    }

    pub(super) fn count(&mut self, r: SkipReason, add: u64, sub: u64) {
        let c = self.skip_counts.entry(r).or_default();
        *c = (*c + add).saturating_sub(sub);
    }

    pub(super) fn count_new(&mut self, r: SkipReason, n: u64) {
        *self.skip_totals.entry(r).or_default() += n;
    }

    /// Replaces the counted skips of one record, logging the reasons that grew.
    pub(super) fn swap_skips(&mut self, what: &str, old: &Skips, new: &Skips) {
        if old == new {
            return;
        }
        for (r, n, _) in &old.0 {
            self.count(*r, 0, u64::from(*n));
        }
        for (r, n, detail) in &new.0 {
            self.count(*r, u64::from(*n), 0);
            let before = old.count(*r);
            if *n > before {
                self.count_new(*r, u64::from(*n - before));
                if *n == 1 {
                    tracing::warn!(cluster = %self.name, reason = r.as_str(), "dropping {detail}");
                } else {
                    tracing::warn!(cluster = %self.name, reason = r.as_str(), "dropping {n} pieces of {what}, e.g. {detail}");
                }
            }
        }
    }

    fn refused_insert(&mut self, k: (Kind, String), r: SkipReason) {
        *self.refused_per.entry((k.0, r)).or_default() += 1;
        self.count(r, 1, 0);
        self.count_new(r, 1);
        if let Some(old) = self.refused.insert(k.clone(), r) {
            self.refused_uncount(k.0, old);
        }
    }

    pub(super) fn refused_remove(&mut self, k: &(Kind, String)) -> Option<SkipReason> {
        let r = self.refused.remove(k)?;
        self.refused_uncount(k.0, r);
        Some(r)
    }

    fn refused_uncount(&mut self, kind: Kind, r: SkipReason) {
        self.count(r, 0, 1);
        if let Some(n) = self.refused_per.get_mut(&(kind, r)) {
            *n -= 1;
            if *n == 0 {
                self.refused_per.remove(&(kind, r));
            }
        }
    }

    /// Records object `key` as refused whole, logging it unless `quiet` (it was refused for
    /// the same reason before). Cap refusals log once per kind until none is left.
    pub(super) fn refuse(&mut self, kind: Kind, key: String, skip: Skip, quiet: bool) {
        let k = (kind, key);
        if self.refused.get(&k) == Some(&skip.reason) {
            return;
        }
        let cap = matches!(skip.reason, SkipReason::ObjectCap | SkipReason::ByteCap);
        let first_of_cap = cap && !self.refused_per.contains_key(&(kind, skip.reason));
        if self.refused_remove(&k).is_none() && self.refused.len() >= MAX_TRACKED_REFUSALS {
            let o = self
                .refused_overflow
                .entry((kind, skip.reason))
                .or_default();
            if *o == 0 {
                tracing::warn!(cluster = %self.name, reason = skip.reason.as_str(), "more than {MAX_TRACKED_REFUSALS} objects refused; further {} refusals are counted until the next relist, not logged", kind.label());
            }
            *o += 1;
            self.count(skip.reason, 1, 0);
            self.count_new(skip.reason, 1);
            return;
        }
        if !quiet && (!cap || first_of_cap) {
            if cap {
                tracing::warn!(cluster = %self.name, reason = skip.reason.as_str(), "skipping {}; further {} over the cap are counted, not logged", skip.detail, kind.label());
            } else {
                tracing::warn!(cluster = %self.name, reason = skip.reason.as_str(), "skipping {}", skip.detail);
            }
        }
        self.refused_insert(k, skip.reason);
    }

    pub(super) fn unrefuse(&mut self, kind: Kind, key: &str) {
        self.refused_remove(&(kind, key.to_string()));
    }
}
