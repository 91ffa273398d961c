//! Issue 14's quiet steady state, end to end: what a busy node does around the daemon costs
//! nothing, an idle node's periodic full resyncs write nothing, and DNS traffic leaves the log
//! alone.
//!
//! Every wait ends on an event, never on a guessed delay: a burst of foreign churn is followed
//! by a sentinel (an out-of-band deletion of one of our objects in the same namespace), whose
//! notification the daemon's netlink socket delivers after every churn message of that
//! namespace; monitors are bracketed by sentinel changes they must show; resyncs are counted
//! in `status --json`.

use super::checks::{dns_server, eventually, Outcome, Pods};
use super::daemon;
use super::dns;
use super::manifests::{cluster_ip, svc};
use super::run::Lab;
use super::topology::{Cluster, Node, FORWARDED_ADDR, FORWARDED_NAME, K8S_NAMESPACE, POD_PORT};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use sdnlinkd::netns::NetNs;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The daemon's route protocol (`namespace.route_protocol`, not set by the lab's config).
fn route_protocol() -> u8 {
    sdnlinkd::config::RawConfig::default()
        .namespace
        .route_protocol
}

/// How long a repair of one deleted object may take: the notification burst (at most 0.5 s),
/// the scheduler's `max_delay_ms = 500` and one full sync, with room for a loaded machine.
const REPAIR_BOUND: Duration = Duration::from_secs(15);
/// Foreign pod starts and stops per namespace.
const CHURN: usize = 100;
/// Full resyncs the idle check watches.
const RESYNCS: u64 = 3;
/// DNS queries of the log check.
const QUERIES: usize = 1000;
/// The most new daemon.log lines the DNS check accepts.
const MAX_DNS_LOG_LINES: usize = 5;
/// The log line of a repair (crates/sdnlinkd/src/daemon/mod.rs) and the field carrying what changed.
const REPAIR_LINE: &str = "changed out of band; repairing";
const NOTICE_FIELD: &str = "notice=";

fn outcome(name: String, r: Result<String, String>) -> Outcome {
    let (pass, detail) = match r {
        Ok(d) => (true, d),
        Err(d) => (false, d),
    };
    Outcome { name, pass, detail }
}

/// The daemon of `node`: its binary and config path.
fn daemon_of(lab: &Lab, node: &Node) -> Result<(PathBuf, PathBuf), String> {
    let bin = lab.daemon_bin.clone().ok_or("no daemon binary")?;
    Ok((bin, lab.plan.node_config_path(node)))
}

/// `syncs.by_reason.<reason>` of `node`'s `status --json` (absent: none yet).
fn syncs(lab: &Lab, node: &Node, reason: &str) -> Result<u64, String> {
    let (bin, cfg) = daemon_of(lab, node)?;
    let v = daemon::status(&bin, &cfg).map_err(|e| e.to_string())?;
    if !v["syncs"]["by_reason"].is_object() {
        return Err(format!(
            "{}'s status --json has no syncs.by_reason: {}",
            node.name, v["syncs"]
        ));
    }
    Ok(v["syncs"]["by_reason"][reason].as_u64().unwrap_or(0))
}

/// The node's daemon.log (next to its config, where `daemon::spawn` sends its output).
fn daemon_log(lab: &Lab, node: &Node) -> PathBuf {
    lab.plan.node_dir(node).join("daemon.log")
}

fn read_log(path: &std::path::Path) -> Result<String, String> {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// `text` without ANSI escape sequences (the daemon's stderr formatter colours field names).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters... final byte in 0x40..=0x7e.
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// What each repair log line in `log` says changed (the `notice=` field), in order.
pub fn repair_notices(log: &str) -> Vec<String> {
    strip_ansi(log)
        .lines()
        .filter(|l| l.contains(REPAIR_LINE))
        .map(|l| match l.find(NOTICE_FIELD) {
            Some(i) => l[i + NOTICE_FIELD.len()..].trim().to_string(),
            None => l.trim().to_string(),
        })
        .collect()
}

/// Runs `ip -n <ns> -batch -` on `cmds`, one command a line.
fn ip_batch(ns: &str, cmds: &str) -> Result<(), String> {
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("ip -n {ns} -batch: {e}"))?;
    child
        .stdin
        .take()
        .ok_or("ip -batch without stdin")?
        .write_all(cmds.as_bytes())
        .map_err(|e| format!("ip -n {ns} -batch: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("ip -n {ns} -batch: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip -n {ns} -batch: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip(args: &[&str]) -> Result<String, String> {
    super::net::ip(args).map_err(|e| e.to_string())
}

/// What a CNI does on `n` pod starts and stops: a bridge with an address and a route, and a
/// veth pair, each created and deleted again (names and addresses the lab uses nowhere else).
fn foreign_churn_batch(n: usize) -> String {
    "link add sdnq-fb type bridge\n\
     addr add 10.99.0.1/24 dev sdnq-fb\n\
     link set sdnq-fb up\n\
     route add 10.98.0.0/16 dev sdnq-fb proto static\n\
     route del 10.98.0.0/16 dev sdnq-fb proto static\n\
     link del sdnq-fb\n\
     link add sdnq-fv type veth peer name sdnq-fp\n\
     link del sdnq-fv\n"
        .repeat(n)
}

/// The routes of our protocol in `ns`, one `ip -o` line each, sorted.
fn owned_routes(ns: &str) -> Result<Vec<String>, String> {
    let proto = route_protocol().to_string();
    let text = ip(&["-n", ns, "-o", "route", "show", "proto", &proto])?;
    let mut v: Vec<String> = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect();
    v.sort();
    Ok(v)
}

/// The new part of a log that was `from` bytes long.
fn log_since(path: &std::path::Path, from: usize) -> Result<String, String> {
    let text = read_log(path)?;
    Ok(text.get(from..).unwrap_or_default().to_string())
}

/// One sentinel deletion: our route `route` (an `ip -o route` line) in `ns`, and what its
/// repair must look like.
struct Sentinel<'a> {
    ns: &'a str,
    route: &'a str,
    /// The notice the daemon logs for it.
    notice: &'a str,
    /// Every owned route of `ns` as it must be again.
    routes: &'a [String],
}

/// Deletes the sentinel's route and waits until the daemon has logged its repair and counted
/// a repair sync past `repairs_before`, and the routes are back. Returns the repair notices
/// logged since `log_from`, the repair count and the time taken.
fn delete_route_and_wait(
    lab: &Lab,
    node: &Node,
    s: &Sentinel,
    repairs_before: u64,
    log_from: usize,
) -> Result<(Vec<String>, u64, Duration), String> {
    let dst = s
        .route
        .split_whitespace()
        .next()
        .ok_or("an empty route line")?;
    let proto = route_protocol().to_string();
    ip(&["-n", s.ns, "route", "del", dst, "proto", &proto])?;
    let log = daemon_log(lab, node);
    let (r, t) = eventually(REPAIR_BOUND, || {
        let notices = repair_notices(&log_since(&log, log_from)?);
        let repairs = syncs(lab, node, "repair")?;
        let routes = owned_routes(s.ns)?;
        if notices.iter().any(|n| n == s.notice) && repairs > repairs_before && routes == s.routes {
            Ok((notices, repairs))
        } else {
            Err(format!(
                "after deleting {dst} in {}: repair syncs {repairs_before} -> {repairs}, notices {notices:?}, {} of {} owned routes",
                s.ns,
                routes.len(),
                s.routes.len()
            ))
        }
    });
    let (notices, repairs) = r?;
    Ok((notices, repairs, t))
}

/// `quiet-foreign-churn`: 100 foreign bridge and veth add/del with addresses and routes in the
/// node's host namespace, then as many in the daemon's namespace: no repair sync. Each burst
/// ends with a sentinel (one of our routes deleted in that namespace) whose repair must be the
/// only one and name exactly that route: a repair caused by the churn would either be counted
/// or be the notice's first change. Then our veth is deleted: repaired (both ends, every owned
/// route and traffic through it back).
pub fn foreign_churn(lab: &Lab, pods: &Pods, a: &Cluster, b: &Cluster) -> Outcome {
    let node = &a.nodes[0];
    let name = format!("quiet-foreign-churn {}", node.name);
    let r = (|| {
        let log = daemon_log(lab, node);
        let proto = route_protocol();
        let host_routes = owned_routes(&node.netns)?;
        let ns_routes = owned_routes(&node.daemon_netns)?;
        let mut figures = Vec::new();
        let mut repairs = syncs(lab, node, "repair")?;
        let start_repairs = repairs;
        for (ns, side, routes) in [
            (&node.netns, "host", &host_routes),
            (&node.daemon_netns, "namespace", &ns_routes),
        ] {
            let sentinel = routes
                .first()
                .ok_or_else(|| format!("no route of protocol {proto} in {ns} to delete"))?;
            let dst = sentinel.split_whitespace().next().unwrap_or_default();
            let want = format!("{side} route {dst} proto {proto} deleted");
            let log_from = read_log(&log)?.len();
            let started = Instant::now();
            ip_batch(ns, &foreign_churn_batch(CHURN))?;
            let churned = started.elapsed();
            let s = Sentinel {
                ns,
                route: sentinel,
                notice: &want,
                routes,
            };
            let (notices, after, t) = delete_route_and_wait(lab, node, &s, repairs, log_from)?;
            if after != repairs + 1 || notices != [want.clone()] {
                return Err(format!(
                    "{CHURN} foreign add/del in {ns}, then {dst} deleted: repair syncs {repairs} -> {after} (want +1, the sentinel's), notices {notices:?} (want only {want:?})"
                ));
            }
            figures.push(format!(
                "{CHURN} foreign bridge+veth add/del in {ns} ({:.1}s) -> 0 repairs; sentinel {dst} deleted -> repair +1 ({want:?}) in {:.1}s",
                churned.as_secs_f64(),
                t.as_secs_f64()
            ));
            repairs = after;
        }

        // Our veth: the host end named `namespace.host_interface`, its peer in our namespace.
        let veth = sdnlinkd::config::RawConfig::default()
            .namespace
            .host_interface;
        let log_from = read_log(&log)?.len();
        ip(&["-n", &node.netns, "link", "del", &veth])?;
        let from = &node.pods[0];
        let to = &b.nodes[b.nodes.len() - 1].pods[0];
        let addr = SocketAddr::from((to.addr, POD_PORT));
        let (r, t) = eventually(REPAIR_BOUND, || {
            let after = syncs(lab, node, "repair")?;
            let host_now = owned_routes(&node.netns)?;
            let ns_now = owned_routes(&node.daemon_netns)?;
            if after <= repairs || host_now != host_routes || ns_now != ns_routes {
                return Err(format!(
                    "repair syncs {repairs} -> {after}; owned routes host {}/{} namespace {}/{}",
                    host_now.len(),
                    host_routes.len(),
                    ns_now.len(),
                    ns_routes.len()
                ));
            }
            let got = pods.tcp(from, addr)?;
            if got != to.name {
                return Err(format!("{addr} answered by {got}, want {}", to.name));
            }
            Ok(after)
        });
        let after = r.map_err(|e| {
            format!(
                "{}; then our veth {veth} deleted, not repaired in {REPAIR_BOUND:?}: {e}",
                figures.join("; ")
            )
        })?;
        let notices = repair_notices(&log_since(&log, log_from)?);
        figures.push(format!(
            "our veth {veth} deleted -> repair +{} ({}), {} host and {} namespace routes back and {} -> {addr} answered by {} after {:.1}s",
            after - repairs,
            notices.first().map(String::as_str).unwrap_or("no notice logged"),
            host_routes.len(),
            ns_routes.len(),
            from.name,
            to.name,
            t.as_secs_f64()
        ));
        figures.push(format!("repair syncs {start_repairs} -> {after}"));
        Ok(figures.join("; "))
    })();
    outcome(name, r)
}

/// Lines a monitor program prints, collected by a thread.
struct Monitor {
    what: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Monitor {
    fn start(what: String, prog: &str, args: &[&str]) -> Result<Monitor, String> {
        let mut child = Command::new(prog)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{what}: {e}"))?;
        let out = child.stdout.take().ok_or("monitor without stdout")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(l);
            }
        });
        Ok(Monitor { what, child, lines })
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Makes the sentinel change `make` (which returns the pid of the program that made it)
    /// until the monitor shows a line containing `mark`: the monitor gives no sign of when its
    /// subscription is live, and a sentinel made before that goes unseen. Returns the pids.
    fn sentinel(
        &self,
        mark: &str,
        mut make: impl FnMut() -> Result<u32, String>,
    ) -> Result<Vec<u32>, String> {
        let end = Instant::now() + Duration::from_secs(5);
        let mut pids = Vec::new();
        loop {
            pids.push(make()?);
            let round = Instant::now() + Duration::from_millis(200);
            while Instant::now() < round {
                if self.lines().iter().any(|l| l.contains(mark)) {
                    return Ok(pids);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            if Instant::now() >= end {
                return Err(format!("{} never showed sentinel {mark}", self.what));
            }
        }
    }

    /// The lines after the last one containing `a` and before the first containing `b`,
    /// without what `ignore` says belongs to the sentinels.
    fn between(&self, a: &str, b: &str, ignore: impl Fn(&str) -> bool) -> Vec<String> {
        let lines = self.lines();
        let start = lines
            .iter()
            .rposition(|l| l.contains(a))
            .map_or(0, |i| i + 1);
        let end = lines
            .iter()
            .position(|l| l.contains(b))
            .unwrap_or(lines.len());
        lines[start..end.max(start)]
            .iter()
            .filter(|l| !ignore(l))
            .cloned()
            .collect()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a short program to completion, returning its pid.
fn run_pid(prog: &str, args: &[&str]) -> Result<u32, String> {
    let child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{prog}: {e}"))?;
    let pid = child.id();
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{prog}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{prog} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(pid)
}

/// An address (TEST-NET-3, RFC 5737) the lab uses nowhere else, added to and deleted from
/// `lo`: a netlink change every `ip monitor` shows.
fn addr_sentinel(ns: &str, addr: &str) -> Result<u32, String> {
    let host = format!("{addr}/32");
    run_pid("ip", &["-n", ns, "addr", "add", &host, "dev", "lo"])?;
    run_pid("ip", &["-n", ns, "addr", "del", &host, "dev", "lo"])
}

/// A table of the lab's own, created and deleted: a change `nft monitor` shows.
fn nft_sentinel(ns: &str, table: &str) -> Result<u32, String> {
    run_pid(
        "ip",
        &["netns", "exec", ns, "nft", "add", "table", "inet", table],
    )?;
    run_pid(
        "ip",
        &["netns", "exec", ns, "nft", "delete", "table", "inet", table],
    )
}

/// `wg show <iface> dump` without what traffic changes (latest handshake and transfer
/// counters): interface private key, public key, port, fwmark; per peer public key, preshared
/// key, endpoint, allowed IPs and keepalive.
/// Peers sorted: wireguard-go lists them in the order of a Go map, which varies per call.
pub fn wg_config(dump: &str) -> Vec<String> {
    let mut v: Vec<String> = dump
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let f: Vec<&str> = l.split('\t').collect();
            if i == 0 || f.len() < 8 {
                f.join(" ")
            } else {
                [f[0], f[1], f[2], f[3], f[7]].join(" ")
            }
        })
        .collect();
    if v.len() > 1 {
        v[1..].sort();
    }
    v
}

fn wg_dump(node: &Node) -> Result<Vec<String>, String> {
    let ns = NetNs::open(&node.daemon_netns).map_err(|e| e.to_string())?;
    let iface = node.wg_if.clone();
    let out = ns
        .run(move || Command::new("wg").args(["show", &iface, "dump"]).output())
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("wg: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "wg show {} dump in {}: {}",
            node.wg_if,
            node.daemon_netns,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(wg_config(&String::from_utf8_lossy(&out.stdout)))
}

/// `quiet-idle-resync`: an idle node over three full resyncs writes nothing: `ip monitor`
/// (links, addresses, routes, netconf) and `nft monitor` (the proxy's and the MSS clamp's
/// tables live in the daemon's namespace) in both of the node's namespaces stay empty, and the
/// WireGuard configuration is the same before and after.
pub fn idle_resync(lab: &Lab, a: &Cluster) -> Outcome {
    let node = &a.nodes[a.nodes.len() - 1];
    let name = format!("quiet-idle-resync {}", node.name);
    let r = (|| {
        let namespaces = [node.netns.as_str(), node.daemon_netns.as_str()];
        let mut ip_mons = Vec::new();
        let mut nft_mons = Vec::new();
        for ns in namespaces {
            ip_mons.push(Monitor::start(
                format!("ip monitor in {ns}"),
                "ip",
                &[
                    "-n", ns, "-o", "monitor", "link", "address", "route", "netconf",
                ],
            )?);
            nft_mons.push(Monitor::start(
                format!("nft monitor in {ns}"),
                "ip",
                &["netns", "exec", ns, "nft", "monitor"],
            )?);
        }
        let (a_start, a_end) = ("203.0.113.251", "203.0.113.252");
        let (t_start, t_end) = ("sdnlink-lab-quiet-start", "sdnlink-lab-quiet-end");
        let mut sentinel_pids: Vec<u32> = Vec::new();
        for (ns, (ipm, nftm)) in namespaces.iter().zip(ip_mons.iter().zip(&nft_mons)) {
            ipm.sentinel(&format!("{a_start}/32"), || addr_sentinel(ns, a_start))?;
            sentinel_pids.extend(nftm.sentinel(t_start, || nft_sentinel(ns, t_start))?);
        }
        let wg_before = wg_dump(node)?;
        let resyncs_before = syncs(lab, node, "resync")?;
        let (bin, cfg) = daemon_of(lab, node)?;
        let before = daemon::status(&bin, &cfg).map_err(|e| e.to_string())?["syncs"].clone();
        // resync_interval = 10 in the lab's node config: three resyncs come within 30 s.
        let (r, t) = eventually(Duration::from_secs(45), || {
            let n = syncs(lab, node, "resync")?;
            if n >= resyncs_before + RESYNCS {
                Ok(n)
            } else {
                Err(format!(
                    "{} of {RESYNCS} resyncs so far",
                    n - resyncs_before
                ))
            }
        });
        let resyncs_after = r?;
        let after = daemon::status(&bin, &cfg).map_err(|e| e.to_string())?["syncs"].clone();
        for (ns, (ipm, nftm)) in namespaces.iter().zip(ip_mons.iter().zip(&nft_mons)) {
            ipm.sentinel(&format!("{a_end}/32"), || addr_sentinel(ns, a_end))?;
            sentinel_pids.extend(nftm.sentinel(t_end, || nft_sentinel(ns, t_end))?);
        }
        let wg_after = wg_dump(node)?;
        let ours = |l: &str| {
            // `nft monitor` follows each transaction with "# new generation N by process PID
            // (nft)"; the sentinels' own are not the daemon's writes.
            sentinel_pids
                .iter()
                .any(|p| l.contains(&format!("by process {p} ")))
                || l.contains(t_start)
                || l.contains(t_end)
        };
        let mut writes = Vec::new();
        for m in &ip_mons {
            // Bare addresses: the sentinel's local route names it without the prefix length.
            let lines = m.between(a_start, a_end, |_| false);
            writes.push((m.what.clone(), lines));
        }
        for m in &nft_mons {
            writes.push((m.what.clone(), m.between(t_start, t_end, ours)));
        }
        let total: usize = writes.iter().map(|(_, l)| l.len()).sum();
        let counts: Vec<String> = writes
            .iter()
            .map(|(w, l)| format!("{w}: {} lines", l.len()))
            .collect();
        let peers = wg_before.len().saturating_sub(1);
        let detail = format!(
            "{} full resyncs ({resyncs_before} -> {resyncs_after}) in {:.1}s, syncs {before} -> {after}; {}; wg show {} dump: {peers} peers, {}",
            resyncs_after - resyncs_before,
            t.as_secs_f64(),
            counts.join(", "),
            node.wg_if,
            if wg_before == wg_after { "identical" } else { "changed" }
        );
        if total == 0 && wg_before == wg_after {
            return Ok(detail);
        }
        let mut first = Vec::new();
        for (w, l) in &writes {
            if let Some(l) = l.first() {
                first.push(format!("{w} first: {l:?}"));
            }
        }
        if wg_before != wg_after {
            let gone: Vec<&String> = wg_before
                .iter()
                .skip(1)
                .filter(|l| !wg_after.contains(l))
                .collect();
            let new: Vec<&String> = wg_after
                .iter()
                .skip(1)
                .filter(|l| !wg_before.contains(l))
                .collect();
            // The interface line carries the private key: only whether it changed.
            let iface = wg_before.first() == wg_after.first();
            first.push(format!(
                "wg peers gone {gone:?}, new {new:?}, interface line {}",
                if iface { "same" } else { "changed" }
            ));
        }
        Err(format!("{detail}; {}", first.join("; ")))
    })();
    outcome(name, r)
}

/// `quiet-dns-logs`: 1,000 queries against one node's stub, a third for existing Service
/// names, a third for names of a cluster zone that do not exist, a third forwarded upstream
/// (its one name, and names it answers NXDOMAIN for), every one answered as it should be,
/// add fewer than 5 lines to that node's daemon.log.
pub fn dns_logs(lab: &Lab, a: &Cluster, b: &Cluster) -> Outcome {
    let node = &a.nodes[0];
    let name = format!("quiet-dns-logs {}", node.name);
    let r = (|| {
        let pod = &node.pods[0];
        let log = daemon_log(lab, node);
        let before = read_log(&log)?;
        if before.lines().count() == 0 {
            return Err(format!(
                "{} is empty: the daemon logs elsewhere (journald?), so its lines cannot be counted",
                log.display()
            ));
        }
        let server = dns_server();
        let vip = cluster_ip(b, svc::ECHO).ok_or("no echo ClusterIP")?;
        let existing = format!("{}.{K8S_NAMESPACE}.svc.cluster.{}.", svc::ECHO, b.name);
        let mut wrong = Vec::new();
        let mut kinds = [0usize; 4];
        let started = Instant::now();
        for i in 0..QUERIES {
            let (q, want_code, want_addr) = match i % 4 {
                0 => (existing.clone(), ResponseCode::NoError, Some(vip)),
                1 => (
                    format!("nosuch{i}.{K8S_NAMESPACE}.svc.cluster.{}.", b.name),
                    ResponseCode::NXDomain,
                    None,
                ),
                2 => (
                    FORWARDED_NAME.to_string(),
                    ResponseCode::NoError,
                    Some(FORWARDED_ADDR),
                ),
                _ => (format!("nosuch{i}.lab.test."), ResponseCode::NXDomain, None),
            };
            kinds[i % 4] += 1;
            let got = dns::query(
                &pod.netns,
                server,
                &q,
                RecordType::A,
                Duration::from_secs(2),
            );
            let ok = match &got {
                Ok(m) => {
                    let addrs: Vec<_> = m
                        .answers
                        .iter()
                        .filter_map(|r| match &r.data {
                            RData::A(a) => Some(a.0),
                            _ => None,
                        })
                        .collect();
                    m.metadata.response_code == want_code && want_addr.is_none_or(|w| addrs == [w])
                }
                Err(_) => false,
            };
            if !ok {
                wrong.push(format!(
                    "{q}: {:?}",
                    got.map(|m| m.metadata.response_code)
                        .map_err(|e| e.to_string())
                ));
            }
        }
        let took = started.elapsed();
        let after = read_log(&log)?;
        let new: Vec<String> = strip_ansi(after.get(before.len()..).unwrap_or_default())
            .lines()
            .map(str::to_string)
            .collect();
        let detail = format!(
            "{QUERIES} queries from {} to {server} in {:.1}s ({} existing, {} NXDOMAIN in a cluster zone, {} forwarded, {} forwarded NXDOMAIN; {} answered wrong) -> {} new lines in {}",
            pod.name,
            took.as_secs_f64(),
            kinds[0],
            kinds[1],
            kinds[2],
            kinds[3],
            wrong.len(),
            new.len(),
            log.display()
        );
        if !wrong.is_empty() {
            return Err(format!("{detail}; first wrong: {}", wrong[0]));
        }
        if new.len() >= MAX_DNS_LOG_LINES {
            return Err(format!(
                "{detail} (want fewer than {MAX_DNS_LOG_LINES}); first: {:?}",
                &new[..3.min(new.len())]
            ));
        }
        Ok(detail)
    })();
    outcome(name, r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repair_notices_come_from_coloured_and_plain_lines() {
        let log = "2026-12-02T01:00:00Z  INFO an owned network object changed out of band; repairing \u{1b}[3mnotice\u{1b}[0m\u{1b}[2m=\u{1b}[0mhost route 10.20.0.0/16 proto 245 deleted\n\
                   2026-12-02T01:00:01Z  INFO synced\n\
                   INFO an owned network object changed out of band; repairing notice=namespace link eth0 (ifindex 2) deleted (+3 more changes)\n";
        assert_eq!(
            repair_notices(log),
            [
                "host route 10.20.0.0/16 proto 245 deleted",
                "namespace link eth0 (ifindex 2) deleted (+3 more changes)"
            ]
        );
        assert!(repair_notices("INFO synced\n").is_empty());
    }

    #[test]
    fn wg_config_ignores_handshakes_and_counters_only() {
        let a = "priv\tpub\t51820\toff\n\
                 peerA\t(none)\t192.0.2.3:51820\t10.20.0.0/16\t1700000000\t100\t200\t25\n";
        let b = "priv\tpub\t51820\toff\n\
                 peerA\t(none)\t192.0.2.3:51820\t10.20.0.0/16\t1700000099\t900\t800\t25\n";
        assert_eq!(wg_config(a), wg_config(b));
        let moved = a.replace("192.0.2.3", "192.0.2.4");
        assert_ne!(wg_config(a), wg_config(&moved));
        let keepalive = a.replace("\t25\n", "\toff\n");
        assert_ne!(wg_config(a), wg_config(&keepalive));
        let port = a.replace("51820\toff", "51821\toff");
        assert_ne!(wg_config(a), wg_config(&port));
        let two = format!("{a}peerB\t(none)\t192.0.2.4:51820\t10.30.0.0/16\t0\t0\t0\t25\n");
        let mut lines: Vec<&str> = two.lines().collect();
        lines[1..].reverse();
        assert_eq!(wg_config(&two), wg_config(&lines.join("\n")));
    }

    #[test]
    fn churn_batch_is_eight_commands_per_pod() {
        let b = foreign_churn_batch(3);
        assert_eq!(b.lines().count(), 24);
        assert!(b.lines().all(|l| !l.trim().is_empty()));
    }
}
