//! When the reconcile task syncs, as a pure value over plain `Instant`s.
//!
//! Events only mark a reason; the scheduler coalesces them: a sync starts no sooner than
//! `min_interval` after the previous one ended and no later than `max_delay` after the first
//! unserved mark (never before the previous one ended), and a failed sync is retried, full, with
//! an exponential backoff (1 s, 2 s, ... 32 s).

use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Why a sync runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The first sync after start.
    Startup,
    /// A cluster's snapshot or sync state changed.
    Clusters,
    /// An object the daemon owns and wants was removed out of band.
    Repair,
    /// The periodic full resync (`resync_interval`).
    Resync,
    /// A draining IPVS destination's grace period ended.
    Drain,
    /// A WireGuard peer's held keepalive falls due (the higher key of a new pair waits).
    Keepalive,
    /// A reload applied a new configuration.
    Reload,
    /// The previous sync failed.
    Retry,
}

impl Reason {
    /// Whether this reason needs the kernel re-read (a full sync).
    pub fn full(self) -> bool {
        matches!(
            self,
            Reason::Startup | Reason::Repair | Reason::Resync | Reason::Reload | Reason::Retry
        )
    }
}

/// A sync to run now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    pub full: bool,
    pub reasons: BTreeSet<Reason>,
}

#[derive(Clone, Debug)]
struct Pending {
    first: Instant,
    reasons: BTreeSet<Reason>,
}

/// The coalescing and retry state.
#[derive(Clone, Debug)]
pub struct Scheduler {
    min_interval: Duration,
    max_delay: Duration,
    pending: Option<Pending>,
    last_end: Option<Instant>,
    failures: u32,
    retry_at: Option<Instant>,
    counts: SyncCounts,
}

/// How many syncs ran, in all and per reason (a sync with several reasons counts for each).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SyncCounts {
    pub total: u64,
    pub full: u64,
    pub failed: u64,
    pub by_reason: BTreeMap<Reason, u64>,
}

impl Scheduler {
    pub fn new(min_interval: Duration, max_delay: Duration) -> Scheduler {
        Scheduler {
            min_interval,
            max_delay,
            pending: None,
            last_end: None,
            failures: 0,
            retry_at: None,
            counts: SyncCounts::default(),
        }
    }

    /// New coalescing bounds (a reload of `[sync]`).
    pub fn set_bounds(&mut self, min_interval: Duration, max_delay: Duration) {
        self.min_interval = min_interval;
        self.max_delay = max_delay;
    }

    /// Records that something at `now` needs a sync for `reason`.
    pub fn mark(&mut self, now: Instant, reason: Reason) {
        self.pending
            .get_or_insert_with(|| Pending {
                first: now,
                reasons: BTreeSet::new(),
            })
            .reasons
            .insert(reason);
    }

    /// Whether a sync is wanted (now or later).
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// When the pending sync should start; `None` when nothing is pending.
    pub fn due_at(&self) -> Option<Instant> {
        let p = self.pending.as_ref()?;
        let mut at = p.first;
        if let Some(end) = self.last_end {
            let throttled = at.max(end + self.min_interval);
            let deadline = (p.first + self.max_delay).max(end);
            at = throttled.min(deadline);
        }
        if let Some(r) = self.retry_at {
            at = at.max(r);
        }
        Some(at)
    }

    /// Takes the pending sync when it is due at `now`.
    pub fn take(&mut self, now: Instant) -> Option<Due> {
        if self.due_at()? > now {
            return None;
        }
        let p = self.pending.take()?;
        Some(Due {
            full: p.reasons.iter().any(|r| r.full()),
            reasons: p.reasons,
        })
    }

    /// Records the end of the sync `due` at `now`. A failure schedules a full retry after the
    /// backoff; marks that arrived during the sync stay pending.
    pub fn finished(&mut self, now: Instant, due: &Due, ok: bool) {
        self.last_end = Some(now);
        self.counts.total += 1;
        if due.full {
            self.counts.full += 1;
        }
        for r in &due.reasons {
            *self.counts.by_reason.entry(*r).or_default() += 1;
        }
        if ok {
            self.failures = 0;
            self.retry_at = None;
            return;
        }
        self.counts.failed += 1;
        let backoff = Duration::from_secs(1u64 << self.failures.min(5));
        self.failures = self.failures.saturating_add(1);
        self.retry_at = Some(now + backoff);
        self.mark(now, Reason::Retry);
    }

    /// Failed syncs in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The counters since start.
    pub fn counts(&self) -> &SyncCounts {
        &self.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn sched() -> (Scheduler, Instant) {
        (Scheduler::new(ms(200), ms(2000)), Instant::now())
    }

    #[test]
    fn nothing_marked_nothing_due() {
        let (mut s, t0) = sched();
        assert_eq!(s.due_at(), None);
        assert_eq!(s.take(t0 + ms(10_000)), None);
        assert!(!s.is_pending());
    }

    #[test]
    fn first_mark_is_due_at_once_and_marks_coalesce() {
        let (mut s, t0) = sched();
        s.mark(t0, Reason::Startup);
        s.mark(t0 + ms(5), Reason::Clusters);
        assert_eq!(s.due_at(), Some(t0));
        let due = s.take(t0).expect("due");
        assert!(due.full, "startup is full");
        assert_eq!(
            due.reasons,
            [Reason::Startup, Reason::Clusters].into_iter().collect()
        );
        assert!(!s.is_pending());
    }

    #[test]
    fn a_burst_after_a_sync_waits_for_the_min_interval() {
        let (mut s, t0) = sched();
        s.mark(t0, Reason::Clusters);
        let due = s.take(t0).expect("due");
        s.finished(t0 + ms(50), &due, true);
        s.mark(t0 + ms(60), Reason::Clusters);
        assert_eq!(s.due_at(), Some(t0 + ms(250)));
        assert_eq!(s.take(t0 + ms(249)), None, "throttled");
        let due = s.take(t0 + ms(250)).expect("due after min_interval");
        assert!(!due.full, "a cluster change alone is incremental");
    }

    #[test]
    fn max_delay_caps_a_long_min_interval_but_never_before_the_last_end() {
        let mut s = Scheduler::new(ms(5000), ms(1000));
        let t0 = Instant::now();
        s.mark(t0, Reason::Clusters);
        let due = s.take(t0).expect("due");
        s.finished(t0 + ms(100), &due, true);
        s.mark(t0 + ms(200), Reason::Clusters);
        assert_eq!(s.due_at(), Some(t0 + ms(1200)), "first mark + max_delay");
        // A mark older than the end of the last sync is due right at that end.
        let mut s = Scheduler::new(ms(5000), ms(10));
        s.mark(t0, Reason::Clusters);
        let due = s.take(t0).expect("due");
        s.mark(t0 + ms(1), Reason::Clusters);
        s.finished(t0 + ms(300), &due, true);
        assert_eq!(s.due_at(), Some(t0 + ms(300)));
    }

    #[test]
    fn a_failure_retries_full_with_backoff_and_success_resets_it() {
        let (mut s, t0) = sched();
        s.mark(t0, Reason::Clusters);
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..7 {
            let due = s.take(now).expect("due");
            s.finished(now, &due, false);
            let at = s.due_at().expect("retry pending");
            waits.push((at - now).as_secs());
            now = at;
            assert!(
                s.take(now).expect("retry").full,
                "a retry re-reads the kernel"
            );
            s.mark(now, Reason::Clusters);
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 32]);
        assert_eq!(s.failures(), 7);
        let due = s.take(now).expect("due");
        s.finished(now, &due, true);
        assert_eq!(s.failures(), 0);
        s.mark(now + ms(300), Reason::Clusters);
        assert_eq!(
            s.due_at(),
            Some(now + ms(300)),
            "no backoff after a success"
        );
        assert_eq!(s.counts().failed, 7);
    }

    #[test]
    fn reasons_decide_full_and_are_counted() {
        let (mut s, t0) = sched();
        for (r, full) in [
            (Reason::Clusters, false),
            (Reason::Drain, false),
            (Reason::Repair, true),
            (Reason::Resync, true),
            (Reason::Reload, true),
        ] {
            s.mark(t0, r);
            let due = s.take(t0 + ms(100_000)).expect("due");
            assert_eq!(due.full, full, "{r:?}");
            s.finished(t0, &due, true);
        }
        let c = s.counts();
        assert_eq!((c.total, c.full), (5, 3));
        assert_eq!(c.by_reason.get(&Reason::Repair), Some(&1));
        assert_eq!(c.by_reason.get(&Reason::Startup), None);
    }
}
