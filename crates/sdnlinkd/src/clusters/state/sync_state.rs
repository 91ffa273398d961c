//! The sync state of a cluster's watches and client: failures kept until they recover, and
//! the state and reason status shows for them.

use super::{ClusterState, Kind};
use crate::model::SyncState;
use kube::runtime::watcher;
use std::time::{Duration, Instant, SystemTime};

/// `kube-runtime`'s default backoff retries a failed watch at most 30 s later (plus jitter)
/// and yields an error for every failed attempt; a watch that has been silent for longer than
/// this after its last error therefore has reconnected.
const ERROR_QUIET: Duration = Duration::from_secs(45);

impl ClusterState {
    pub(super) fn clear_error(&mut self, kind: Kind) {
        if let Some(s) = self.sync.get_mut(&kind) {
            s.error = None;
        }
    }

    /// Records a failure of one watch (kept with its first time until the watch recovers).
    pub fn set_error(&mut self, kind: Kind, reason: String) {
        let s = self.sync.entry(kind).or_default();
        let since = match &s.error {
            Some((_, since, _)) => *since,
            None => {
                tracing::warn!(cluster = %self.name, watch = kind.label(), %reason, "watch failed; keeping the last good snapshot");
                SystemTime::now()
            }
        };
        s.error = Some((reason, since, Instant::now()));
    }

    /// Records that the cluster's API lacks HostSubnets (not OpenShift SDN): nothing to wait for.
    pub fn host_subnets_absent(&mut self) {
        let was_listed = self.listed();
        let s = self.sync.entry(Kind::HostSubnet).or_default();
        s.listed_once = true;
        s.error = None;
        if self.listed() && !was_listed {
            self.generation += 1;
        }
    }

    /// Records (Some) or clears (None) a failure to build the cluster's client.
    pub fn set_client_error(&mut self, reason: Option<String>) {
        self.client_error = match (reason, self.client_error.take()) {
            (None, _) => None,
            (Some(r), Some((_, since))) => Some((r, since)),
            (Some(r), None) => {
                tracing::warn!(cluster = %self.name, reason = %r, "cluster client failed");
                Some((r, SystemTime::now()))
            }
        };
    }

    /// (listed once, failing now, client failing): what a change of sync state is judged by.
    pub fn health(&self) -> (bool, bool, bool) {
        let failing = self.sync.values().any(|s| {
            s.cap_error.is_some()
                || s.error
                    .as_ref()
                    .is_some_and(|(_, _, last)| last.elapsed() < ERROR_QUIET)
        });
        (self.listed(), failing, self.client_error.is_some())
    }

    /// Whether every watch has listed once.
    pub fn listed(&self) -> bool {
        self.sync.values().all(|s| s.listed_once)
    }

    /// The cluster's sync state now.
    pub fn state(&self) -> SyncState {
        let failing = self.failure();
        if !self.listed() {
            let reason = failing.map(|(r, _)| r);
            return match &self.warm {
                Some((_, source)) => SyncState::Warm {
                    source: source.clone(),
                    reason,
                },
                None => SyncState::Unknown { reason },
            };
        }
        match failing {
            Some((reason, since)) => SyncState::Degraded { reason, since },
            None => SyncState::Current,
        }
    }

    /// What fails now (the client, watches that failed recently, relists refused over a cap),
    /// with the earliest start.
    fn failure(&self) -> Option<(String, SystemTime)> {
        if let Some((reason, since)) = &self.client_error {
            return Some((reason.clone(), *since));
        }
        let mut errs: Vec<(&str, &str, SystemTime)> = Vec::new();
        for (k, s) in &self.sync {
            if let Some((r, since, _)) = s
                .error
                .as_ref()
                .filter(|(_, _, last)| last.elapsed() < ERROR_QUIET)
            {
                errs.push((k.label(), r.as_str(), *since));
            }
            if let Some((r, since)) = &s.cap_error {
                errs.push((k.label(), r.as_str(), *since));
            }
        }
        if errs.is_empty() {
            return None;
        }
        errs.sort_by_key(|e| e.2);
        let reason = errs
            .iter()
            .map(|(k, r, _)| format!("{k}: {r}"))
            .collect::<Vec<_>>()
            .join("; ");
        Some((reason, errs[0].2))
    }
}

/// A short reason for status: the HTTP status when the API answered, else the error.
pub fn describe_watch_error(e: &watcher::Error) -> String {
    let client = match e {
        watcher::Error::InitialListFailed(c)
        | watcher::Error::WatchStartFailed(c)
        | watcher::Error::WatchFailed(c) => c,
        watcher::Error::WatchError(s) if s.code == 410 => {
            return "watch expired (410 Gone), relisting".into()
        }
        watcher::Error::WatchError(s) => {
            return format!("HTTP {} {}: {}", s.code, s.reason, s.message)
        }
        watcher::Error::NoResourceVersion => return e.to_string(),
    };
    describe_client_error(client)
}

/// A short reason for a kube client error.
pub fn describe_client_error(c: &kube::Error) -> String {
    match c {
        kube::Error::Api(s) => {
            let what = match s.code {
                401 => "unauthorized",
                403 => "forbidden",
                _ => "API error",
            };
            format!("{what} (HTTP {} {}): {}", s.code, s.reason, s.message)
        }
        other => {
            // The chain carries the useful part (connection refused, TLS, timeout).
            let mut s = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(e) = src {
                s.push_str(": ");
                s.push_str(&e.to_string());
                src = e.source();
            }
            s
        }
    }
}
