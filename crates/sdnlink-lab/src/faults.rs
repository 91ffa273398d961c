//! Issue 13's fault scenarios b-h (scenario a, `faults-kill-restart`, is in `checks`): restarts
//! with API servers unreachable, a corrupt persisted snapshot, reloads, a hung local API server
//! and an expired watch. Each runs [`FaultProbes`] from a pod of the first cluster's first node
//! to the second cluster's echo Service and requires them clean, then undoes its fault (every
//! API server answering, the node's original config reloaded, every cluster current again)
//! before the next one, so later checks are unaffected.
//!
//! Some scenarios shorten `sync.startup_grace` in the node's config to [`SHORT_GRACE`] seconds
//! (the lab's default is 20) so that watching past the end of the grace stays short.

use super::checks::{dns_server, eventually, FaultProbes, Outcome};
use super::daemon;
use super::manifests::{cluster_ip, svc, SERVICE_PORT};
use super::probe::{self, DnsCounts, Objects, WatchTarget};
use super::run::Lab;
use super::topology::{Cluster, Node, Proxy, Topology, K8S_NAMESPACE};
use hickory_proto::rr::RecordType;
use ipnet::IpNet;
use sdnlink_simapi::Fault;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `sync.startup_grace` (seconds) of the scenarios that watch past its end.
pub const SHORT_GRACE: u64 = 5;
/// How long past the end of the startup grace scenario b watches (the figure).
const PAST_GRACE: Duration = Duration::from_secs(10);
/// How long a scenario watches after its fault took effect: past one full resync
/// (`resync_interval = 10` in the lab's node config), whose plan would withdraw whatever the
/// daemon wrongly believes gone.
const OBSERVE: Duration = Duration::from_secs(12);
/// How long the local API server hangs in scenario g (the figure).
const HANG: Duration = Duration::from_secs(60);
/// The bound on `sdnlinkd status` answering (the figure).
const STATUS_BOUND: Duration = Duration::from_secs(1);
/// How long one status poll of scenario g waits before it counts as failed.
const STATUS_POLL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a restored lab gets until every cluster is current again.
const RESTORE: Duration = Duration::from_secs(60);
/// How long the daemon gets to notice an API fault (a cut watch shows at once).
const NOTICE: Duration = Duration::from_secs(2);
/// Warning of the daemon about a persisted snapshot file it does not use
/// (`ClusterSet::load_persisted` in crates/sdnlinkd/src/clusters/mod.rs).
const IGNORED_SNAPSHOT: &str = "ignoring the persisted snapshot";
/// `sync.api_timeout` of scenario g (the lab's default is the daemon's, 60 s).
const SHORT_API_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs scenarios b-h in order on the first node of `a` (probing `b`), handing each outcome
/// to `emit`.
pub fn all(lab: &mut Lab, a: &Cluster, b: &Cluster, emit: &mut dyn FnMut(Outcome)) {
    let node = a.nodes[0].clone();
    let orig = match lab.node_config(&node.name) {
        Ok(c) => c,
        Err(e) => {
            return emit(fail(
                format!("faults {}", node.name),
                format!("reading the node config: {e}"),
            ))
        }
    };
    let s = Scenario {
        node: node.clone(),
        orig,
        a: a.clone(),
        b: b.clone(),
    };
    emit(s.run(
        lab,
        "restart-remote-unreachable",
        restart_remote_unreachable,
    ));
    emit(s.run(
        lab,
        "warm-restart-all-unreachable",
        warm_restart_all_unreachable,
    ));
    emit(s.run(lab, "corrupt-snapshot", corrupt_snapshot));
    emit(s.run(
        lab,
        "reload-sync-remote-unreachable",
        reload_sync_unreachable,
    ));
    for o in remove_and_add_remote(lab, &s) {
        emit(o);
    }
    emit(s.run(lab, "local-api-hang", local_api_hang));
    emit(s.run(lab, "watch-gone", watch_gone));
}

fn fail(name: String, detail: String) -> Outcome {
    Outcome {
        name,
        pass: false,
        detail,
    }
}

/// The node under test, its original config and the two clusters.
struct Scenario {
    node: Node,
    orig: String,
    a: Cluster,
    b: Cluster,
}

impl Scenario {
    /// Runs `body`, then restores the lab whatever happened; the outcome fails if either did.
    fn run(
        &self,
        lab: &mut Lab,
        scenario: &str,
        body: fn(&mut Lab, &Scenario) -> Result<String, String>,
    ) -> Outcome {
        let name = format!("faults-{scenario} {}", self.node.name);
        // Each scenario's withdrawal watch takes what the node has at its start as the
        // baseline.
        let r = super::checks::wait_converged(lab, &self.node).and_then(|_| body(lab, self));
        let restored = self.restore(lab);
        match (r, restored) {
            (Ok(d), Ok(t)) => Outcome {
                name,
                pass: true,
                detail: format!("{d}; restored in {:.1}s", t.as_secs_f64()),
            },
            (Err(e), Ok(_)) => fail(name, e),
            (Ok(d), Err(e)) => fail(name, format!("restoring the lab failed: {e}; ({d})")),
            (Err(e), Err(e2)) => fail(name, format!("{e}; restoring the lab failed too: {e2}")),
        }
    }

    /// Every API server answering, the original config on disk and in force, every cluster
    /// current.
    fn restore(&self, lab: &Lab) -> Result<Duration, String> {
        let t = Instant::now();
        for api in &lab.apis {
            api.set_fault(Fault::None).map_err(|e| e.to_string())?;
        }
        let now = lab
            .node_config(&self.node.name)
            .map_err(|e| e.to_string())?;
        // A scenario that wrote another config leaves a different file until this reload.
        if now != self.orig {
            lab.reload_daemon(&self.node.name, &self.orig)
                .map_err(|e| format!("reloading the original config: {e}"))?;
        }
        wait_current(lab, &self.node, RESTORE)?;
        Ok(t.elapsed())
    }

    fn bin(&self, lab: &Lab) -> Result<PathBuf, String> {
        lab.daemon_bin
            .clone()
            .ok_or_else(|| "no daemon binary".into())
    }

    fn config_path(&self, lab: &Lab) -> PathBuf {
        lab.plan.node_config_path(&self.node)
    }

    fn status(&self, lab: &Lab) -> Result<Value, String> {
        daemon::status(&self.bin(lab)?, &self.config_path(lab)).map_err(|e| e.to_string())
    }

    fn pid(&self, lab: &Lab) -> Result<u32, String> {
        lab.daemons
            .iter()
            .find(|d| d.node == self.node.name)
            .map(|d| d.pid)
            .ok_or_else(|| format!("no daemon recorded for {}", self.node.name))
    }

    fn log_path(&self, lab: &Lab) -> PathBuf {
        lab.plan.node_dir(&self.node).join("daemon.log")
    }

    /// The length of the daemon's log now (a mark for [`Scenario::log_since`]).
    fn log_mark(&self, lab: &Lab) -> u64 {
        std::fs::metadata(self.log_path(lab)).map_or(0, |m| m.len())
    }

    /// What the daemon logged after `mark`.
    fn log_since(&self, lab: &Lab, mark: u64) -> String {
        let text = std::fs::read(self.log_path(lab)).unwrap_or_default();
        let from = usize::try_from(mark).unwrap_or(usize::MAX).min(text.len());
        String::from_utf8_lossy(&text[from..]).into_owned()
    }

    /// The persisted snapshot file of `cluster` (the lab's `state_dir` is `state/` in the node
    /// directory; files as `SnapshotStore::path_of` in crates/sdnlinkd/src/clusters/persist.rs names them).
    fn snapshot_file(&self, lab: &Lab, cluster: &str) -> PathBuf {
        sdnlinkd::clusters::persist::SnapshotStore::new(
            lab.plan.node_dir(&self.node).join("state"),
            sdnlinkd::clusters::persist::DEFAULT_MAX_BYTES,
        )
        .path_of(cluster)
    }

    /// Writes the original config with `[sync] startup_grace` = [`SHORT_GRACE`] (read at the
    /// next start).
    fn write_short_grace(&self, lab: &Lab) -> Result<(), String> {
        let cfg = set_key(
            &self.orig,
            "sync",
            "startup_grace",
            &SHORT_GRACE.to_string(),
        )?;
        lab.write_node_config(&self.node.name, &cfg)
            .map_err(|e| e.to_string())
    }

    fn probes(&self, lab: &Lab) -> Result<FaultProbes, String> {
        FaultProbes::start(&lab.plan, &self.a, &self.b)
    }

    /// A DNS probe from the probing pod for `cluster`'s echo name.
    fn dns_probe(&self, cluster: &Cluster) -> Result<probe::Probe<DnsCounts>, String> {
        probe::dns(&self.node.pods[0].netns, dns_server(), &echo_name(cluster))
            .map_err(|e| e.to_string())
    }

    /// What of `cidrs` the node's daemon namespace holds.
    fn target(&self, plan: &Topology, cidrs: Vec<IpNet>) -> WatchTarget {
        WatchTarget {
            daemon_netns: self.node.daemon_netns.clone(),
            wg_if: self.node.wg_if.clone(),
            cidrs,
            ipvs: plan.proxy == Proxy::Ipvs,
        }
    }
}

fn echo_name(c: &Cluster) -> String {
    format!("{}.{K8S_NAMESPACE}.svc.cluster.{}.", svc::ECHO, c.name)
}

/// `[section] key = value` set in a TOML text the lab generated: its `key = ...` line in that
/// section replaced, or added right after the section header. An error if the section is
/// missing.
pub fn set_key(config: &str, section: &str, key: &str, value: &str) -> Result<String, String> {
    let header = format!("[{section}]");
    let mut in_section = false;
    let mut done = false;
    let mut out = String::with_capacity(config.len() + value.len());
    for line in config.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            in_section = t == header;
        }
        let is_key = t
            .split_once('=')
            .is_some_and(|(k, _)| k.trim() == key && !t.starts_with('#'));
        if in_section && is_key && !done {
            out.push_str(&format!("{key} = {value}\n"));
            done = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if done {
        return Ok(out);
    }
    let at = out
        .lines()
        .position(|l| l.trim() == header)
        .ok_or_else(|| format!("the node config has no [{section}] section for {key}"))?;
    let mut lines: Vec<String> = out.lines().map(str::to_string).collect();
    lines.insert(at + 1, format!("{key} = {value}"));
    let mut s = lines.join("\n");
    s.push('\n');
    Ok(s)
}

/// The config without the `[[remote]]` table named `name` (up to the next table header). An
/// error if there is no such remote.
pub fn without_remote(config: &str, name: &str) -> Result<String, String> {
    let want = format!("name = {name:?}");
    let lines: Vec<&str> = config.lines().collect();
    let mut out: Vec<&str> = Vec::with_capacity(lines.len());
    let mut i = 0;
    let mut removed = false;
    while i < lines.len() {
        if lines[i].trim() == "[[remote]]" {
            let end = (i + 1..lines.len())
                .find(|j| lines[*j].trim_start().starts_with('['))
                .unwrap_or(lines.len());
            if lines[i + 1..end].iter().any(|l| l.trim() == want) {
                removed = true;
                i = end;
                continue;
            }
        }
        out.push(lines[i]);
        i += 1;
    }
    if !removed {
        return Err(format!("the node config has no [[remote]] named {name:?}"));
    }
    let mut s = out.join("\n");
    s.push('\n');
    Ok(s)
}

/// Whether any word of `object` (split at spaces, dashes and slashes) is an address inside
/// `cidrs`.
fn names_address_in(object: &str, cidrs: &[IpNet]) -> bool {
    object
        .split([' ', '-', '/'])
        .filter_map(|w| w.parse::<std::net::IpAddr>().ok())
        .any(|a| cidrs.iter().any(|c| c.contains(&a)))
}

/// Each cluster's state name in a status document (`unknown`, `warm`, `current`, ...).
pub fn cluster_states(status: &Value) -> BTreeMap<String, String> {
    status["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            Some((
                c["name"].as_str()?.to_string(),
                c["state"]["state"].as_str()?.to_string(),
            ))
        })
        .collect()
}

/// `Ok` when the status names clusters and every one is current (or static).
pub fn all_current(status: &Value) -> Result<(), String> {
    let st = cluster_states(status);
    if !st.is_empty() && st.values().all(|s| s == "current" || s == "static") {
        Ok(())
    } else {
        Err(format!("clusters {st:?}"))
    }
}

/// Polls until every cluster is current (or static).
fn wait_current(lab: &Lab, node: &Node, timeout: Duration) -> Result<Duration, String> {
    let bin = lab.daemon_bin.clone().ok_or("no daemon binary")?;
    let cfg = lab.plan.node_config_path(node);
    let (r, t) = eventually(timeout, || {
        all_current(&daemon::status(&bin, &cfg).map_err(|e| e.to_string())?)
    });
    r.map(|_| t)
        .map_err(|e| format!("not every cluster current after {timeout:?}: {e}"))
}

/// The problems of `report` and its figures, as a check result.
fn verdict(problems: Vec<String>, detail: String) -> Result<String, String> {
    if problems.is_empty() {
        Ok(detail)
    } else {
        Err(format!("{}; {detail}", problems.join("; ")))
    }
}

/// DNS that never lies about an existing name while its cluster is unknown: every answer
/// positive or SERVFAIL (resolvers retry; README, "Restarts"), none NXDOMAIN, empty, other or
/// unanswered.
fn dns_honest(d: &DnsCounts) -> bool {
    d.queries > 0
        && d.ok + d.servfail == d.queries
        && d.nxdomain == 0
        && d.empty == 0
        && d.other == 0
        && d.unanswered == 0
}

/// How often the daemon's phase was seen, and any `ready` seen while `cluster` was not
/// current.
#[derive(Default)]
struct PhaseWatch {
    polls: u64,
    errors: u64,
    phases: BTreeMap<String, u64>,
    states: BTreeMap<String, u64>,
    ready_while_not_current: Option<String>,
}

impl PhaseWatch {
    /// Polls the phase of `s.b` every 250 ms until the shortened startup grace plus
    /// [`PAST_GRACE`] have passed since the restart (`ready` is how long ago that was).
    fn past_grace(s: &Scenario, lab: &Lab, ready: Duration) -> PhaseWatch {
        let until =
            Instant::now() + (Duration::from_secs(SHORT_GRACE) + PAST_GRACE).saturating_sub(ready);
        let mut phases = PhaseWatch::default();
        while Instant::now() < until {
            phases.poll(s, lab, &s.b.name);
            std::thread::sleep(Duration::from_millis(250));
        }
        phases
    }

    fn poll(&mut self, s: &Scenario, lab: &Lab, cluster: &str) {
        self.polls += 1;
        match s.status(lab) {
            Ok(v) => {
                let phase = v["phase"].as_str().unwrap_or("?").to_string();
                let state = cluster_states(&v)
                    .remove(cluster)
                    .unwrap_or_else(|| "absent".into());
                if phase == "ready" && state != "current" {
                    self.ready_while_not_current
                        .get_or_insert(format!("phase ready while {cluster} is {state}"));
                }
                *self.phases.entry(phase).or_default() += 1;
                *self.states.entry(state).or_default() += 1;
            }
            Err(_) => self.errors += 1,
        }
    }

    fn problems(&self, cluster: &str) -> Vec<String> {
        let mut p = Vec::new();
        if let Some(e) = &self.ready_while_not_current {
            p.push(e.clone());
        }
        if !self.phases.contains_key("degraded") {
            p.push(format!(
                "status never said degraded while {cluster} was unreachable: {:?}",
                self.phases
            ));
        }
        if self.errors > 0 {
            p.push(format!("{} status polls failed", self.errors));
        }
        p
    }
}

impl std::fmt::Display for PhaseWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} status polls: phase {:?}, remote state {:?}",
            self.polls, self.phases, self.states
        )
    }
}

/// b: kill -9 and restart with the remote's API server unreachable, watched until
/// `startup_grace` + 10 s after the start: nothing of the remote is withdrawn, traffic and DNS
/// keep working (its persisted snapshot is served), and status says `degraded`, never `ready`.
fn restart_remote_unreachable(lab: &mut Lab, s: &Scenario) -> Result<String, String> {
    s.write_short_grace(lab)?;
    let probes = s.probes(lab)?;
    let r = (|| {
        lab.set_api_fault(&s.b.name, Fault::Unreachable)
            .map_err(|e| e.to_string())?;
        std::thread::sleep(NOTICE);
        let restarted = lab
            .restart_daemon(&s.node.name, true)
            .map_err(|e| e.to_string())?;
        let phases = PhaseWatch::past_grace(s, lab, restarted.ready);
        Ok::<_, String>((restarted, phases))
    })();
    let report = probes.stop()?;
    let (restarted, phases) = r.map_err(|e| format!("{e}; probes: {report}"))?;
    let mut problems = report.problems();
    problems.extend(phases.problems(&s.b.name));
    verdict(
        problems,
        format!(
            "{} API unreachable, kill -9 of pid {} -> {} ready in {:.1}s, watched to startup_grace ({SHORT_GRACE}s, shortened) + {}s: {phases}; {report}",
            s.b.name,
            restarted.old_pid,
            restarted.pid,
            restarted.ready.as_secs_f64(),
            PAST_GRACE.as_secs()
        ),
    )
}

/// c: kill -9 and restart with every API server unreachable: both clusters start warm from
/// their persisted snapshots; traffic, DNS of both clusters and the remote's objects untouched.
fn warm_restart_all_unreachable(lab: &mut Lab, s: &Scenario) -> Result<String, String> {
    s.write_short_grace(lab)?;
    let probes = s.probes(lab)?;
    let local_dns = s.dns_probe(&s.a);
    let r = (|| {
        let local_dns = local_dns?;
        for c in [&s.a, &s.b] {
            lab.set_api_fault(&c.name, Fault::Unreachable)
                .map_err(|e| e.to_string())?;
        }
        std::thread::sleep(NOTICE);
        let restarted = lab
            .restart_daemon(&s.node.name, true)
            .map_err(|e| e.to_string())?;
        let states = cluster_states(&s.status(lab)?);
        std::thread::sleep(OBSERVE);
        let states_after = cluster_states(&s.status(lab)?);
        Ok::<_, String>((restarted, states, states_after, local_dns))
    })();
    let report = probes.stop()?;
    let (restarted, states, states_after, local_dns) =
        r.map_err(|e| format!("{e}; probes: {report}"))?;
    let local = local_dns.stop().map_err(|e| e.to_string())?;
    let mut problems = report.problems();
    if !local.all_ok() {
        problems.push(format!("dns of {}: {local}", s.a.name));
    }
    for (when, st) in [("at ready", &states), ("after watching", &states_after)] {
        if st.get(&s.a.name).map(String::as_str) != Some("warm")
            || st.get(&s.b.name).map(String::as_str) != Some("warm")
        {
            problems.push(format!(
                "clusters {when} {st:?}: want both warm (served from their persisted snapshots)"
            ));
        }
    }
    verdict(
        problems,
        format!(
            "every API unreachable, kill -9 of pid {} -> {} ready in {:.1}s, clusters {states:?}, watched {}s: {report}; dns of {}: {local}",
            restarted.old_pid,
            restarted.pid,
            restarted.ready.as_secs_f64(),
            OBSERVE.as_secs(),
            s.a.name
        ),
    )
}

/// Flips the last byte of `path` (inside the JSON body, so the CRC-32 of the header no longer
/// matches). Returns the damaged bytes.
fn corrupt(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let mut bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let last = bytes
        .last_mut()
        .ok_or_else(|| format!("{} is empty", path.display()))?;
    *last ^= 0x5a;
    std::fs::write(path, &bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(bytes)
}

/// c, second half: the remote's snapshot file damaged while the daemon is down, every API
/// unreachable. The file is ignored with exactly one warning naming it; the remote starts
/// unknown: its kernel objects stay (traffic keeps flowing) and its DNS zone answers SERVFAIL,
/// never NXDOMAIN. The DNS probe for the remote's name accepts SERVFAIL here only (the
/// cluster is unknown, so SERVFAIL is the honest answer); the local cluster, warm, must answer.
fn corrupt_snapshot(lab: &mut Lab, s: &Scenario) -> Result<String, String> {
    s.write_short_grace(lab)?;
    let file = s.snapshot_file(lab, &s.b.name);
    if !file.is_file() {
        return Err(format!(
            "{} does not exist before the restart",
            file.display()
        ));
    }
    let probes = s.probes(lab)?;
    let local_dns = s.dns_probe(&s.a);
    let mark = s.log_mark(lab);
    let r = (|| {
        let local_dns = local_dns?;
        for c in [&s.a, &s.b] {
            lab.set_api_fault(&c.name, Fault::Unreachable)
                .map_err(|e| e.to_string())?;
        }
        std::thread::sleep(NOTICE);
        let mut damaged = None;
        let restarted = lab
            .restart_daemon_with(&s.node.name, true, || {
                let bytes = corrupt(&file).map_err(|reason| super::LabError::Daemon {
                    node: s.node.name.clone(),
                    reason,
                })?;
                damaged = Some(bytes);
                Ok(())
            })
            .map_err(|e| e.to_string())?;
        let phases = PhaseWatch::past_grace(s, lab, restarted.ready);
        Ok::<_, String>((restarted, phases, local_dns, damaged))
    })();
    let report = probes.stop()?;
    let (restarted, phases, local_dns, damaged) =
        r.map_err(|e| format!("{e}; probes: {report}"))?;
    let local = local_dns.stop().map_err(|e| e.to_string())?;
    let log = s.log_since(lab, mark);
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(IGNORED_SNAPSHOT))
        .collect();
    let mut problems: Vec<String> = report
        .problems()
        .into_iter()
        .filter(|p| !(p.starts_with("dns: ") && dns_honest(&report.dns)))
        .collect();
    if report.dns.servfail == 0 {
        problems.push(format!(
            "dns of {} never answered SERVFAIL although it was unknown: {}",
            s.b.name, report.dns
        ));
    }
    if !local.all_ok() {
        problems.push(format!("dns of {}: {local}", s.a.name));
    }
    let name = file.display().to_string();
    if warnings.len() != 1 || !warnings[0].contains(&name) {
        problems.push(format!(
            "want exactly one warning naming {name} in daemon.log, got {}: {warnings:?}",
            warnings.len()
        ));
    }
    if !phases.states.contains_key("unknown") || phases.states.contains_key("warm") {
        problems.push(format!(
            "{} should be unknown (its only snapshot is damaged): {phases}",
            s.b.name
        ));
    }
    problems.extend(phases.problems(&s.b.name));
    let detail = format!(
        "{} damaged while pid {} was down, every API unreachable, new pid {} ready in {:.1}s, watched to startup_grace ({SHORT_GRACE}s, shortened) + {}s: {phases}; warning: {:?}; {report}; dns of {}: {local}",
        name,
        restarted.old_pid,
        restarted.pid,
        restarted.ready.as_secs_f64(),
        PAST_GRACE.as_secs(),
        warnings.first().map(|w| w.trim()).unwrap_or(""),
        s.a.name
    );
    let detail = verdict(problems, detail)?;
    // Once the remote lists again its file is written anew (checked after the APIs are back).
    for c in [&s.a, &s.b] {
        lab.set_api_fault(&c.name, Fault::None)
            .map_err(|e| e.to_string())?;
    }
    let (rewritten, t) = eventually(Duration::from_secs(30), || {
        let now = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        if Some(&now) == damaged.as_ref() {
            Err("still the damaged file".to_string())
        } else {
            Ok(now.len())
        }
    });
    let len = rewritten.map_err(|e| format!("{e} 30s after the APIs came back; {detail}"))?;
    Ok(format!(
        "{detail}; the file was rewritten ({len} bytes) {:.1}s after the APIs came back",
        t.as_secs_f64()
    ))
}

/// d: a reload that changes a `[sync]` key while the remote's API server is unreachable:
/// nothing withdrawn, probes clean.
fn reload_sync_unreachable(lab: &mut Lab, s: &Scenario) -> Result<String, String> {
    let changed = set_key(&s.orig, "sync", "min_interval_ms", "150")?;
    let probes = s.probes(lab)?;
    let r = (|| {
        lab.set_api_fault(&s.b.name, Fault::Unreachable)
            .map_err(|e| e.to_string())?;
        std::thread::sleep(NOTICE);
        let t = Instant::now();
        let out = lab
            .reload_daemon(&s.node.name, &changed)
            .map_err(|e| e.to_string())?;
        let took = t.elapsed();
        std::thread::sleep(OBSERVE);
        let states = cluster_states(&s.status(lab)?);
        Ok::<_, String>((out, took, states))
    })();
    let report = probes.stop()?;
    let (out, took, states) = r.map_err(|e| format!("{e}; probes: {report}"))?;
    verdict(
        report.problems(),
        format!(
            "{} API unreachable, reload with sync.min_interval_ms 100 -> 150 answered in {:.2}s ({:?}), clusters then {states:?}, watched {}s: {report}",
            s.b.name,
            took.as_secs_f64(),
            out.trim(),
            OBSERVE.as_secs()
        ),
    )
}

/// What [`remove_and_add_remote`] measured of one watcher.
struct Watched {
    w: probe::Withdrawals,
}

impl Watched {
    /// Names of the objects removed, each once.
    fn removed(&self) -> Objects {
        self.w.removed.iter().map(|(_, o)| o.clone()).collect()
    }
}

/// f then e: a reload without the remote, then one that adds it back. Asserted:
/// - before the removal the remote's probes are clean (2 s);
/// - the removal withdraws exactly the remote's objects: every peer, route and service entry
///   of its CIDRs in the baseline goes, each once, and within the reload (it answers after
///   the apply); its persisted snapshot file is deleted; its VIP no longer answers;
/// - the re-add brings back exactly the baseline objects, the cluster lists, the file is
///   written again, and the remote's probes are clean for 12 s afterwards (past a resync);
/// - throughout both reloads the local cluster's objects in the daemon namespace (the route to
///   its pod CIDR, the DNS stub and link addresses: `169.254.0.0/16`) lose nothing and a DNS
///   probe for the local echo name answers every query.
///
/// The remote's probes do not run between the removal and the end of the re-add, where its
/// failures are the expected result.
fn remove_and_add_remote(lab: &mut Lab, s: &Scenario) -> Vec<Outcome> {
    let f_name = format!("faults-reload-remove-remote {}", s.node.name);
    let e_name = format!("faults-reload-add-remote {}", s.node.name);
    let r = remove_and_add(lab, s);
    let restored = s.restore(lab);
    let (f, e) = match r {
        Ok(pair) => pair,
        Err(err) => (Err(err.clone()), Err(format!("not run: {err}"))),
    };
    let mut out = Vec::new();
    for (name, r) in [(f_name, f), (e_name, e)] {
        out.push(match (r, &restored) {
            (Ok(d), Ok(t)) => Outcome {
                name,
                pass: true,
                detail: format!("{d}; restored in {:.1}s", t.as_secs_f64()),
            },
            (Err(err), _) => fail(name, err),
            (Ok(d), Err(err)) => fail(name, format!("restoring the lab failed: {err}; ({d})")),
        });
    }
    out
}

type Pair = (Result<String, String>, Result<String, String>);

fn remove_and_add(lab: &mut Lab, s: &Scenario) -> Result<Pair, String> {
    let without = without_remote(&s.orig, &s.b.name)?;
    let remote_cidrs = vec![IpNet::V4(s.b.pod_cidr), IpNet::V4(s.b.service_cidr)];
    let local_cidrs = vec![
        IpNet::V4(s.a.pod_cidr),
        IpNet::V4(s.a.service_cidr),
        "169.254.0.0/16".parse().expect("a valid literal CIDR"),
    ];
    let remote_target = s.target(&lab.plan, remote_cidrs);
    let to = cluster_ip(&s.b, svc::ECHO)
        .map(|ip| SocketAddr::from((ip, SERVICE_PORT)))
        .ok_or("no echo ClusterIP")?;
    let file = s.snapshot_file(lab, &s.b.name);

    let before = s.probes(lab)?;
    std::thread::sleep(Duration::from_secs(2));
    let before = before.stop()?;
    let before_problems = before.problems();
    if !before_problems.is_empty() {
        return Err(format!(
            "the remote's probes fail before the removal: {}; {before}",
            before_problems.join("; ")
        ));
    }

    let e = |e: super::LabError| e.to_string();
    let remote_watch = probe::withdrawals(remote_target.clone()).map_err(e)?;
    let local_watch = probe::withdrawals(s.target(&lab.plan, local_cidrs)).map_err(e)?;
    let local_dns = s.dns_probe(&s.a)?;
    std::thread::sleep(Duration::from_millis(500));
    let present = probe::objects(&remote_target)?;

    // f: remove.
    let f = (|| {
        let t = Instant::now();
        let out = lab
            .reload_daemon(&s.node.name, &without)
            .map_err(|e| e.to_string())?;
        let took = t.elapsed();
        // IPVS drains a withdrawn service at weight 0 for `proxy.drain_grace` (2 s in the lab)
        // before it deletes the service and its VIP; nftables withdraws at once.
        let left = if lab.plan.proxy == Proxy::Ipvs {
            let until = Instant::now() + Duration::from_secs(4);
            loop {
                let l = probe::objects(&remote_target)?;
                if l.is_empty() || Instant::now() >= until {
                    break l;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        } else {
            probe::objects(&remote_target)?
        };
        let states = cluster_states(&s.status(lab)?);
        let file_left = file.exists();
        let pods = super::checks::Pods::open(&lab.plan).map_err(|e| e.to_string())?;
        let answered = pods.tcp(&s.node.pods[0], to);
        let dns = super::dns::query(
            &s.node.pods[0].netns,
            dns_server(),
            &echo_name(&s.b),
            RecordType::A,
            Duration::from_secs(2),
        )
        .map(|m| m.metadata.response_code.to_string())
        .map_err(|e| e.to_string());
        let mut problems = Vec::new();
        if !left.is_empty() {
            problems.push(format!(
                "{:?} of {} still there after the reload answered",
                left, s.b.name
            ));
        }
        if states.contains_key(&s.b.name) {
            problems.push(format!("status still lists {}: {states:?}", s.b.name));
        }
        if file_left {
            problems.push(format!("{} still exists", file.display()));
        }
        if let Ok(who) = &answered {
            problems.push(format!("{to} still answered by {who}"));
        }
        Ok::<_, String>((problems, out, took, states, dns))
    })();

    // e: add back (also when f failed, so the lab is whole again).
    let e_result = (|| {
        let t = Instant::now();
        let out = lab
            .reload_daemon(&s.node.name, &s.orig)
            .map_err(|e| e.to_string())?;
        let took = t.elapsed();
        let listed = wait_current(lab, &s.node, RESTORE)?;
        // Until all of them are back: one sync adds the peers, then the proxy's services, then
        // the routes and VIPs, so a look in between sees only part of them.
        let (back, back_t) = eventually(RESTORE, || {
            let now = probe::objects(&remote_target)?;
            if now == present {
                Ok(now)
            } else {
                Err(format!(
                    "{} of the {} objects there before the removal: {now:?}",
                    now.intersection(&present).count(),
                    present.len()
                ))
            }
        });
        let back = back?;
        let probes = s.probes(lab)?;
        std::thread::sleep(OBSERVE);
        let report = probes.stop()?;
        let (file_back, _) = eventually(Duration::from_secs(10), || {
            if file.is_file() {
                Ok(())
            } else {
                Err(format!("{} not written again", file.display()))
            }
        });
        Ok::<_, String>((out, took, listed, back, back_t, report, file_back))
    })();

    let remote = Watched {
        w: remote_watch.stop().map_err(e)?,
    };
    let local = Watched {
        w: local_watch.stop().map_err(e)?,
    };
    let local_dns = local_dns.stop().map_err(e)?;

    // What must hold across both reloads. An affinity element holds a local client's address
    // but belongs to the remote's service (its set is named after the remote's VIP and
    // endpoint): it goes with the remote.
    let remote_cidrs = [IpNet::V4(s.b.pod_cidr), IpNet::V4(s.b.service_cidr)];
    let local_removed: Vec<&(Duration, String)> = local
        .w
        .removed
        .iter()
        .filter(|(_, o)| !names_address_in(o, &remote_cidrs))
        .collect();
    let local_baseline: Objects = local
        .w
        .baseline
        .iter()
        .filter(|o| !names_address_in(o, &remote_cidrs))
        .cloned()
        .collect();
    let mut shared = Vec::new();
    if !local_removed.is_empty() || local.w.poll_errors > 0 || local_baseline.is_empty() {
        shared.push(format!(
            "local objects touched: {} {local_removed:?}",
            local.w
        ));
    }
    if !local_dns.all_ok() {
        shared.push(format!("dns of {}: {local_dns}", s.a.name));
    }
    let shared_detail = format!(
        "local objects {local_baseline:?} untouched ({} polls); dns of {} throughout: {local_dns}",
        local.w.polls, s.a.name
    );

    let f_result = f.and_then(|(mut problems, out, took, states, dns)| {
        let removed = remote.removed();
        if removed != remote.w.baseline || remote.w.removed.len() != remote.w.baseline.len() {
            problems.push(format!(
                "removed {:?}, want exactly the baseline {:?} once each",
                remote.w.removed, remote.w.baseline
            ));
        }
        if remote.w.baseline.is_empty() {
            problems.push("the remote had no objects to remove".into());
        }
        problems.extend(shared.iter().cloned());
        let last = remote.w.removed.iter().map(|(t, _)| *t).max();
        verdict(
            problems,
            format!(
                "reload without {} answered in {:.2}s ({:?}): its {} objects {:?} withdrawn (last seen gone at {:.2}s of the watch), snapshot file deleted, {to} refused, clusters {states:?}, DNS {} -> {}; {shared_detail}",
                s.b.name,
                took.as_secs_f64(),
                out.trim(),
                remote.w.baseline.len(),
                remote.w.baseline_kinds(),
                last.map_or(0.0, |t| t.as_secs_f64()),
                echo_name(&s.b),
                dns.unwrap_or_else(|e| e)
            ),
        )
    });
    let e_result = e_result.and_then(|(out, took, listed, back, back_t, report, file_back)| {
        let mut problems = report.problems();
        if back != remote.w.baseline || remote.w.last != remote.w.baseline {
            problems.push(format!(
                "back {back:?} (at the end {:?}), want the baseline {:?}",
                remote.w.last, remote.w.baseline
            ));
        }
        if let Err(e) = file_back {
            problems.push(e);
        }
        problems.extend(shared.iter().cloned());
        verdict(
            problems,
            format!(
                "reload adding {} back answered in {:.2}s ({:?}), every cluster current {:.1}s later, its {} objects back {:.1}s after that, snapshot file written again; then {report}; {shared_detail}",
                s.b.name,
                took.as_secs_f64(),
                out.trim(),
                listed.as_secs_f64(),
                back.len(),
                back_t.as_secs_f64()
            ),
        )
    });
    Ok((f_result, e_result))
}

/// g: the local API server hangs (accepts, never answers) for 60 s, and the node's daemon is
/// killed (-9) and restarted as it begins, so every request to it hangs from the start: the
/// publisher's first look at this node's Node, the local cluster's lists and watches (as after
/// a watchdog kill under systemd). `sync.api_timeout` is shortened to [`SHORT_API_TIMEOUT`]
/// so the local cluster shows degraded within the hang and lists soon after it. Asserted:
/// the daemon answers `status` on its control socket within 1 s at every poll (every 200 ms),
/// `sdnlinkd status` works before and after, the new daemon keeps its pid, its
/// loop keeps running (at least 4 of the 6 resyncs of 60 s), the remote's probes stay clean
/// and the local DNS names keep answering (from the persisted snapshot).
fn local_api_hang(lab: &mut Lab, s: &Scenario) -> Result<String, String> {
    let cfg_text = set_key(
        &s.orig,
        "sync",
        "api_timeout",
        &SHORT_API_TIMEOUT.as_secs().to_string(),
    )?;
    lab.write_node_config(&s.node.name, &cfg_text)
        .map_err(|e| e.to_string())?;
    let bin = s.bin(lab)?;
    let cfg = s.config_path(lab);
    let probes = s.probes(lab)?;
    let local_dns = s.dns_probe(&s.a);
    let r = (|| {
        let local_dns = local_dns?;
        lab.set_api_fault(&s.a.name, Fault::Hang)
            .map_err(|e| e.to_string())?;
        let restarted = lab
            .restart_daemon(&s.node.name, true)
            .map_err(|e| e.to_string())?;
        let before = s.status(lab)?;
        let start = Instant::now();
        let (mut polls, mut slow, mut failed) = (0u64, 0u64, 0u64);
        let mut max = Duration::ZERO;
        let mut first_problem = None;
        let mut publish: BTreeMap<String, u64> = BTreeMap::new();
        let mut local: BTreeMap<String, u64> = BTreeMap::new();
        // The daemon's answer is what is bounded, asked on its control socket from here: a
        // `sdnlinkd status` process per poll would add its own start (about 270 ms a poll
        // under the VM's TCG emulation, up to 1 s when both vCPUs are busy), which says
        // nothing about the daemon. The CLI is run before and after the hang.
        let sock = lab.plan.control_socket(&s.node);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("a runtime for the status polls: {e}"))?;
        while start.elapsed() < HANG {
            let t = Instant::now();
            let r = rt
                .block_on(sdnlinkd::control::request(
                    &sock,
                    sdnlinkd::control::Command::Status,
                    STATUS_POLL_TIMEOUT,
                ))
                .map_err(|e| e.to_string())
                .and_then(|resp| {
                    resp.status
                        .ok_or_else(|| resp.error.unwrap_or_else(|| "no status yet".into()))
                });
            let took = t.elapsed();
            polls += 1;
            max = max.max(took);
            match r {
                Ok(v) => {
                    if took > STATUS_BOUND {
                        slow += 1;
                        first_problem.get_or_insert(format!(
                            "status took {:.0} ms at {:.1}s",
                            took.as_secs_f64() * 1000.0,
                            start.elapsed().as_secs_f64()
                        ));
                    }
                    let p = v["publish"]["state"].as_str().unwrap_or("?").to_string();
                    *publish.entry(p).or_default() += 1;
                    let st = cluster_states(&v)
                        .remove(&s.a.name)
                        .unwrap_or_else(|| "absent".into());
                    *local.entry(st).or_default() += 1;
                }
                Err(e) => {
                    failed += 1;
                    first_problem.get_or_insert(e.to_string());
                }
            }
            std::thread::sleep(Duration::from_millis(200).saturating_sub(took));
        }
        let alive = daemon::is_ours(restarted.pid, &cfg);
        // And the CLI still answers after the hang.
        let last = daemon::status(&bin, &cfg).map_err(|e| e.to_string())?;
        let hang = HangFigures {
            polls,
            slow,
            failed,
            max,
            first_problem,
            publish,
            local,
            alive,
        };
        Ok::<_, String>((restarted, before, last, hang, local_dns))
    })();
    let report = probes.stop()?;
    let (restarted, before, last, hang, local_dns) =
        r.map_err(|e| format!("{e}; probes: {report}"))?;
    let local_dns = local_dns.stop().map_err(|e| e.to_string())?;
    let resyncs = |v: &Value| v["syncs"]["by_reason"]["resync"].as_u64().unwrap_or(0);
    let syncs = |v: &Value| v["syncs"]["total"].as_u64().unwrap_or(0);
    let (resynced, synced) = (
        resyncs(&last).saturating_sub(resyncs(&before)),
        syncs(&last).saturating_sub(syncs(&before)),
    );
    let mut problems = report.problems();
    if hang.slow > 0 || hang.failed > 0 {
        problems.push(format!(
            "status: {} polls over {} ms, {} failed (first: {})",
            hang.slow,
            STATUS_BOUND.as_millis(),
            hang.failed,
            hang.first_problem.clone().unwrap_or_default()
        ));
    }
    if !hang.alive || s.pid(lab)? != restarted.pid {
        problems.push(format!(
            "the daemon (pid {}) did not survive the hang",
            restarted.pid
        ));
    }
    // resync_interval = 10: six resyncs in 60 s; fewer than four means the loop stalled.
    if resynced < 4 {
        problems.push(format!(
            "the loop ran only {resynced} resyncs ({synced} syncs) in {}s",
            HANG.as_secs()
        ));
    }
    if !local_dns.all_ok() {
        problems.push(format!("dns of {}: {local_dns}", s.a.name));
    }
    verdict(
        problems,
        format!(
            "{} API hung {}s from a kill -9 + restart (pid {} -> {}, ready in {:.1}s; sync.api_timeout {}s, shortened): {} status polls, max {:.0} ms (bound {} ms), pid unchanged, {synced} syncs ({resynced} resyncs), publish states {:?}, {} states {:?}; {report}; dns of {}: {local_dns}",
            s.a.name,
            HANG.as_secs(),
            restarted.old_pid,
            restarted.pid,
            restarted.ready.as_secs_f64(),
            SHORT_API_TIMEOUT.as_secs(),
            hang.polls,
            hang.max.as_secs_f64() * 1000.0,
            STATUS_BOUND.as_millis(),
            hang.publish,
            s.a.name,
            hang.local,
            s.a.name
        ),
    )
}

/// What scenario g's status polls saw.
struct HangFigures {
    polls: u64,
    slow: u64,
    failed: u64,
    max: Duration,
    first_problem: Option<String>,
    /// `publish.state` values seen, and how often.
    publish: BTreeMap<String, u64>,
    /// The local cluster's states seen, and how often.
    local: BTreeMap<String, u64>,
    alive: bool,
}

/// h: the remote's API server expires every watch (`410 Gone`) and gives every object a new
/// resourceVersion; the daemon relists: nothing still listed is withdrawn, probes clean.
fn watch_gone(lab: &mut Lab, s: &Scenario) -> Result<String, String> {
    let probes = s.probes(lab)?;
    let mark = s.log_mark(lab);
    let r = (|| {
        std::thread::sleep(Duration::from_secs(1));
        lab.api(&s.b.name).map_err(|e| e.to_string())?.expire();
        std::thread::sleep(OBSERVE);
        let states = cluster_states(&s.status(lab)?);
        Ok::<_, String>(states)
    })();
    let report = probes.stop()?;
    let states = r.map_err(|e| format!("{e}; probes: {report}"))?;
    let log = s.log_since(lab, mark);
    let expired = log.lines().filter(|l| l.contains("410 Gone")).count();
    let mut problems = report.problems();
    if expired == 0 {
        problems.push(format!(
            "daemon.log shows no expired watch after the expiry: {:?}",
            log.lines().take(5).collect::<Vec<_>>()
        ));
    }
    if states.get(&s.b.name).map(String::as_str) != Some("current") {
        problems.push(format!(
            "{} not current {}s after the expiry: {states:?}",
            s.b.name,
            OBSERVE.as_secs()
        ));
    }
    verdict(
        problems,
        format!(
            "{} watches expired (410 Gone, new resourceVersions): {expired} watch expiries logged, {} current again, watched {}s: {report}",
            s.b.name,
            s.b.name,
            OBSERVE.as_secs()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "log_level = \"info\"\n\n[local]\nname = \"east\"\n\n[sync]\nstartup_grace = 20\nmin_interval_ms = 100\n\n[[remote]]\nname = \"west\"\nkubeconfig = \"/x/west.kubeconfig\"\npod_cidrs = [\"10.20.0.0/16\"]\n\n[[remote]]\nname = \"north\"\nkubeconfig = \"/x/north.kubeconfig\"\n";

    #[test]
    fn set_key_changes_one_key_of_one_section() {
        let c = set_key(CONFIG, "sync", "startup_grace", "5").expect("present");
        assert!(c.contains("startup_grace = 5\n"));
        assert!(!c.contains("startup_grace = 20"));
        assert!(c.contains("min_interval_ms = 100"));
        assert_eq!(c.lines().count(), CONFIG.lines().count());
        // `name` exists in [local] and [[remote]]: only the section's own line is touched.
        let c = set_key(CONFIG, "local", "name", "\"x\"").expect("present");
        assert!(c.contains("name = \"x\"") && c.contains("name = \"west\""));
        let c = set_key(CONFIG, "sync", "api_timeout", "10").expect("added");
        assert!(
            c.contains("[sync]\napi_timeout = 10\nstartup_grace = 20\n"),
            "{c}"
        );
        assert!(set_key(CONFIG, "dns", "startup_grace", "1").is_err());
    }

    #[test]
    fn without_remote_drops_exactly_that_table() {
        let c = without_remote(CONFIG, "west").expect("present");
        assert!(!c.contains("west"));
        assert!(c.contains("name = \"north\"") && c.contains("[sync]"));
        assert_eq!(c.matches("[[remote]]").count(), 1);
        let c = without_remote(CONFIG, "north").expect("present");
        assert!(c.contains("west.kubeconfig") && !c.contains("north"));
        assert!(without_remote(CONFIG, "south").is_err());
    }

    #[test]
    fn lab_node_configs_survive_the_edits() {
        let dir = tempfile::tempdir().expect("temp dir");
        let p = Topology::new(
            2,
            "lab-",
            dir.path(),
            super::super::topology::Tunnel::Userspace,
            Proxy::Nftables,
        )
        .expect("valid lab parameters");
        let node = p.clusters[0].nodes[0].clone();
        std::fs::create_dir_all(p.node_dir(&node)).expect("node dir");
        let kc = "apiVersion: v1\nkind: Config\nusers:\n- name: lab\n  user:\n    token: t\n";
        for c in &p.clusters {
            std::fs::write(p.kubeconfig_path(&node, &c.name), kc).expect("kubeconfig");
        }
        let orig = p.node_config(&node);
        let short = set_key(&orig, "sync", "startup_grace", "5").expect("edit");
        let cfg = sdnlinkd::config::parse_str(&short).expect("valid");
        assert_eq!(cfg.sync.startup_grace, Duration::from_secs(5));
        let alone = without_remote(&orig, &p.clusters[1].name).expect("edit");
        let cfg = sdnlinkd::config::parse_str(&alone).expect("valid");
        assert!(cfg.remote.is_empty());
        let changed = set_key(&orig, "sync", "min_interval_ms", "150").expect("edit");
        assert!(sdnlinkd::config::parse_str(&changed).is_ok());
        let timeout = set_key(&orig, "sync", "api_timeout", "10").expect("edit");
        let cfg = sdnlinkd::config::parse_str(&timeout).expect("valid");
        assert_eq!(cfg.sync.api_timeout, Duration::from_secs(10));
    }

    #[test]
    fn cluster_states_and_honest_dns() {
        let v = serde_json::json!({"clusters": [
            {"name": "east", "state": {"state": "warm", "source": "persisted"}},
            {"name": "west", "state": {"state": "unknown"}},
        ]});
        let st = cluster_states(&v);
        assert_eq!(st.get("east").map(String::as_str), Some("warm"));
        assert_eq!(st.get("west").map(String::as_str), Some("unknown"));
        let west: [IpNet; 1] = ["10.120.0.0/16".parse().expect("cidr")];
        assert!(names_address_in(
            "nft aff-10.120.0.11-tcp-80-10.20.1.12-8080 10.10.1.11 . 489",
            &west
        ));
        assert!(!names_address_in("route 10.10.0.0/16 dev eth0", &west));
        let mut d = DnsCounts::default();
        assert!(!dns_honest(&d), "no queries is no evidence");
        d.record(Some(probe::DnsOutcome::Ok), 1, Duration::ZERO);
        d.record(Some(probe::DnsOutcome::ServFail), 1, Duration::ZERO);
        assert!(dns_honest(&d));
        d.record(Some(probe::DnsOutcome::NxDomain), 1, Duration::ZERO);
        assert!(!dns_honest(&d));
    }
}
