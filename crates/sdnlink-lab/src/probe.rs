//! Probes for the fault checks: each runs on its own thread from `start` to [`Probe::stop`]
//! and returns what it counted. From a pod: one long-lived TCP connection streaming requests
//! through a VIP, a new TCP connection every 100 ms, UDP request/response, and DNS queries for
//! an existing name every few milliseconds. In a node's daemon namespace: a watcher that
//! records every removal of a remote's WireGuard peer, VIP, nft element, IPVS service or route
//! while it runs (polling `wg show`, `ip -j addr`, `ip -j route`, `nft -j list table` and
//! `ipvsadm -Ln` every 50 ms).

use super::servers::tcp_ask;
use super::LabError;
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use ipnet::IpNet;
use sdnlinkd::netns::NetNs;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A probe running on its own thread.
pub struct Probe<R> {
    name: String,
    stop: Arc<AtomicBool>,
    handle: JoinHandle<R>,
}

impl<R: Send + 'static> Probe<R> {
    fn spawn(
        name: String,
        f: impl FnOnce(&AtomicBool) -> R + Send + 'static,
    ) -> Result<Self, LabError> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name(format!("probe-{name}"))
            .spawn(move || f(&flag))
            .map_err(|e| LabError::io("starting a probe thread", e))?;
        Ok(Probe { name, stop, handle })
    }

    /// Stops the probe and returns its counts.
    pub fn stop(self) -> Result<R, LabError> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().map_err(|_| LabError::Daemon {
            node: self.name,
            reason: "the probe thread panicked".into(),
        })
    }
}

/// Attempts, failures and latency of request/response probes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub attempts: u64,
    pub failures: u64,
    pub first_error: Option<String>,
    /// UTC time of day of the first error, to match it with the daemons' log lines.
    pub first_error_at: Option<String>,
    pub max_latency: Duration,
    /// Longest time between two successes (or from the start to the first).
    pub max_stall: Duration,
    /// Who answered, and how often.
    pub answered_by: BTreeMap<String, u64>,
}

impl Counts {
    /// Records one attempt that took `took`, ending at `at` after the previous success
    /// `last_ok` (updated on success).
    pub fn record(
        &mut self,
        r: Result<String, String>,
        took: Duration,
        at: Instant,
        last_ok: &mut Instant,
    ) {
        self.attempts += 1;
        self.max_latency = self.max_latency.max(took);
        match r {
            Ok(who) => {
                self.max_stall = self.max_stall.max(at.duration_since(*last_ok));
                *last_ok = at;
                *self.answered_by.entry(who).or_default() += 1;
            }
            Err(e) => {
                self.failures += 1;
                if self.first_error.is_none() {
                    self.first_error_at = Some(wall_clock());
                }
                self.first_error.get_or_insert(e);
            }
        }
    }

    /// Closes the stall that is still open at `end`.
    pub fn finish(&mut self, end: Instant, last_ok: Instant) {
        self.max_stall = self.max_stall.max(end.duration_since(last_ok));
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} tries, {} failed, max stall {:.0} ms, max latency {:.0} ms",
            self.attempts,
            self.failures,
            self.max_stall.as_secs_f64() * 1000.0,
            self.max_latency.as_secs_f64() * 1000.0
        )?;
        if let Some(e) = &self.first_error {
            write!(f, " (first error: {e}")?;
            if let Some(at) = &self.first_error_at {
                write!(f, " at {at}")?;
            }
            write!(f, ")")?;
        }
        Ok(())
    }
}

/// The time of day in UTC, as the daemons' log lines print it.
fn wall_clock() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%H:%M:%S%.3fZ")
        .to_string()
}

const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

fn connect(ns: &NetNs, to: SocketAddr) -> Result<TcpStream, String> {
    let c = ns
        .run(move || TcpStream::connect_timeout(&to, REQUEST_TIMEOUT))
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("connect {to}: {e}"))?;
    c.set_read_timeout(Some(REQUEST_TIMEOUT))
        .map_err(|e| e.to_string())?;
    Ok(c)
}

/// One TCP connection from `pod_netns` to `to`, asked every 20 ms; a failed request counts and
/// reconnects (so `answered_by` with more than one pod means the connection moved).
pub fn tcp_stream(pod_netns: &str, to: SocketAddr) -> Result<Probe<Counts>, LabError> {
    let ns = NetNs::open(pod_netns)?;
    let mut conn = Some(connect(&ns, to).map_err(LabError::Dns)?);
    Probe::spawn(format!("tcp-stream-{to}"), move |stop| {
        let mut c = Counts::default();
        let mut last_ok = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            let t = Instant::now();
            let r = match conn.as_mut() {
                Some(s) => tcp_ask(s).map_err(|e| format!("tcp stream {to}: {e}")),
                None => connect(&ns, to).and_then(|mut s| {
                    let r = tcp_ask(&mut s).map_err(|e| format!("tcp stream {to}: {e}"));
                    conn = Some(s);
                    r
                }),
            };
            if r.is_err() {
                conn = None;
            }
            c.record(r, t.elapsed(), Instant::now(), &mut last_ok);
            std::thread::sleep(Duration::from_millis(20));
        }
        c.finish(Instant::now(), last_ok);
        c
    })
}

/// A new TCP connection from `pod_netns` to `to` every 100 ms, one request on each.
pub fn tcp_connects(pod_netns: &str, to: SocketAddr) -> Result<Probe<Counts>, LabError> {
    let ns = NetNs::open(pod_netns)?;
    Probe::spawn(format!("tcp-connect-{to}"), move |stop| {
        let mut c = Counts::default();
        let mut last_ok = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            let t = Instant::now();
            let r = connect(&ns, to)
                .and_then(|mut s| tcp_ask(&mut s).map_err(|e| format!("tcp {to}: {e}")));
            c.record(r, t.elapsed(), Instant::now(), &mut last_ok);
            std::thread::sleep(Duration::from_millis(100).saturating_sub(t.elapsed()));
        }
        c.finish(Instant::now(), last_ok);
        c
    })
}

/// UDP request/response from a fresh socket (a new flow) in `pod_netns` to `to` every 50 ms.
pub fn udp(pod_netns: &str, to: SocketAddr) -> Result<Probe<Counts>, LabError> {
    let ns = NetNs::open(pod_netns)?;
    Probe::spawn(format!("udp-{to}"), move |stop| {
        let mut c = Counts::default();
        let mut last_ok = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            let t = Instant::now();
            let r = (|| {
                let sock = ns
                    .run(|| UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))))
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
                sock.set_read_timeout(Some(REQUEST_TIMEOUT))
                    .map_err(|e| e.to_string())?;
                sock.send_to(b"who\n", to)
                    .map_err(|e| format!("udp send {to}: {e}"))?;
                let mut buf = [0u8; 256];
                let (n, _) = sock
                    .recv_from(&mut buf)
                    .map_err(|e| format!("udp {to}: {e}"))?;
                Ok(String::from_utf8_lossy(&buf[..n]).trim_end().to_string())
            })();
            c.record(r, t.elapsed(), Instant::now(), &mut last_ok);
            std::thread::sleep(Duration::from_millis(50).saturating_sub(t.elapsed()));
        }
        c.finish(Instant::now(), last_ok);
        c
    })
}

/// What the DNS probe counted. A query is retried like a stub resolver (`timeout:1
/// attempts:3`): only one unanswered after every attempt is `unanswered`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsCounts {
    pub queries: u64,
    /// NOERROR with at least one answer.
    pub ok: u64,
    pub nxdomain: u64,
    /// NOERROR without answers (NODATA).
    pub empty: u64,
    pub servfail: u64,
    /// Any other response code.
    pub other: u64,
    pub unanswered: u64,
    /// Answered only after a retry.
    pub retried: u64,
    pub max_latency: Duration,
}

/// How one DNS answer counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsOutcome {
    Ok,
    NxDomain,
    Empty,
    ServFail,
    Other,
}

/// Classifies an answer.
pub fn classify(m: &Message) -> DnsOutcome {
    match m.metadata.response_code {
        ResponseCode::NoError if m.answers.is_empty() => DnsOutcome::Empty,
        ResponseCode::NoError => DnsOutcome::Ok,
        ResponseCode::NXDomain => DnsOutcome::NxDomain,
        ResponseCode::ServFail => DnsOutcome::ServFail,
        _ => DnsOutcome::Other,
    }
}

impl DnsCounts {
    /// Records one query's final outcome (`None`: unanswered) after `attempts` tries.
    pub fn record(&mut self, outcome: Option<DnsOutcome>, attempts: u32, took: Duration) {
        self.queries += 1;
        self.max_latency = self.max_latency.max(took);
        if attempts > 1 && outcome.is_some() {
            self.retried += 1;
        }
        match outcome {
            Some(DnsOutcome::Ok) => self.ok += 1,
            Some(DnsOutcome::NxDomain) => self.nxdomain += 1,
            Some(DnsOutcome::Empty) => self.empty += 1,
            Some(DnsOutcome::ServFail) => self.servfail += 1,
            Some(DnsOutcome::Other) => self.other += 1,
            None => self.unanswered += 1,
        }
    }

    /// Every query got a positive answer.
    pub fn all_ok(&self) -> bool {
        self.queries > 0 && self.ok == self.queries
    }
}

impl std::fmt::Display for DnsCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} queries: {} ok, {} NXDOMAIN, {} empty, {} SERVFAIL, {} other, {} unanswered ({} retried), max latency {:.0} ms",
            self.queries,
            self.ok,
            self.nxdomain,
            self.empty,
            self.servfail,
            self.other,
            self.unanswered,
            self.retried,
            self.max_latency.as_secs_f64() * 1000.0
        )
    }
}

/// Queries `name` A at `server` from `pod_netns` every 5 ms.
pub fn dns(pod_netns: &str, server: SocketAddr, name: &str) -> Result<Probe<DnsCounts>, LabError> {
    let ns = NetNs::open(pod_netns)?;
    let name = Name::from_ascii(name).map_err(|e| LabError::Dns(format!("{name}: {e}")))?;
    let sock = ns
        .run(|| UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))))?
        .map_err(|e| LabError::io(format!("DNS probe socket in {pod_netns}"), e))?;
    sock.set_read_timeout(Some(REQUEST_TIMEOUT))
        .map_err(|e| LabError::io("DNS probe timeout", e))?;
    Probe::spawn(format!("dns-{name}"), move |stop| {
        let mut c = DnsCounts::default();
        let mut buf = [0u8; 4096];
        while !stop.load(Ordering::SeqCst) {
            let t = Instant::now();
            let mut msg = Message::query();
            msg.metadata.recursion_desired = true;
            msg.add_query(Query::query(name.clone(), RecordType::A));
            let Ok(bytes) = msg.to_vec() else {
                c.record(Some(DnsOutcome::Other), 1, t.elapsed());
                continue;
            };
            let mut outcome = None;
            let mut attempts = 0;
            while attempts < 3 && outcome.is_none() {
                attempts += 1;
                if sock.send_to(&bytes, server).is_err() {
                    std::thread::sleep(REQUEST_TIMEOUT);
                    continue;
                }
                let deadline = Instant::now() + REQUEST_TIMEOUT;
                while Instant::now() < deadline {
                    match sock.recv_from(&mut buf) {
                        Ok((n, from)) if from == server => {
                            if let Ok(m) = Message::from_vec(&buf[..n]) {
                                if m.metadata.id == msg.metadata.id {
                                    outcome = Some(classify(&m));
                                    break;
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            }
            c.record(outcome, attempts, t.elapsed());
            std::thread::sleep(Duration::from_millis(5));
        }
        c
    })
}

/// One remote's objects in a node's daemon namespace, as strings (`peer KEY`, `vip IP/32`,
/// `route DST dev DEV`, `nft SET ELEMENT`, `ipvs PROTO VIP:PORT`).
pub type Objects = BTreeSet<String>;

/// Whether `text` names an address inside one of `cidrs`.
fn within(text: &str, cidrs: &[IpNet]) -> bool {
    let ip = text.split('/').next().unwrap_or(text);
    let ip = ip.rsplit_once(':').map_or(ip, |(h, p)| {
        if p.chars().all(|c| c.is_ascii_digit()) && h.contains('.') {
            h
        } else {
            ip
        }
    });
    ip.parse::<IpAddr>()
        .is_ok_and(|a| cidrs.iter().any(|c| c.contains(&a)))
}

/// Peers of `wg show IFACE dump` whose allowed IPs lie in `cidrs`.
pub fn wg_peers(dump: &str, cidrs: &[IpNet]) -> Objects {
    dump.lines()
        .map(|l| l.split('\t').collect::<Vec<_>>())
        // The interface line has 4 fields, a peer line 8.
        .filter(|f| f.len() == 8)
        .filter(|f| f[3].split(',').any(|a| within(a, cidrs)))
        .map(|f| format!("peer {}", f[0]))
        .collect()
}

/// Addresses of `ip -j addr show` inside `cidrs` (the VIPs).
pub fn vips(json: &str, cidrs: &[IpNet]) -> Result<Objects, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("ip -j addr: {e}"))?;
    let mut out = Objects::new();
    for link in v.as_array().into_iter().flatten() {
        for a in link["addr_info"].as_array().into_iter().flatten() {
            if let (Some(ip), Some(len)) = (a["local"].as_str(), a["prefixlen"].as_u64()) {
                if within(ip, cidrs) {
                    out.insert(format!("vip {ip}/{len}"));
                }
            }
        }
    }
    Ok(out)
}

/// Routes of `ip -j route show` whose destination lies in `cidrs`.
pub fn routes(json: &str, cidrs: &[IpNet]) -> Result<Objects, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("ip -j route: {e}"))?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            let dst = r["dst"].as_str()?;
            within(dst, cidrs)
                .then(|| format!("route {dst} dev {}", r["dev"].as_str().unwrap_or("?")))
        })
        .collect())
}

/// Elements of the sets and maps of `nft -j list table` that hold an address in `cidrs`.
pub fn nft_elements(json: &str, cidrs: &[IpNet]) -> Result<Objects, String> {
    fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Number(n) => out.push(n.to_string()),
            serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
            serde_json::Value::Object(m) => m.values().for_each(|x| strings(x, out)),
            _ => {}
        }
    }
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("nft -j: {e}"))?;
    let mut out = Objects::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        for kind in ["set", "map"] {
            let Some(s) = item.get(kind) else { continue };
            let name = s["name"].as_str().unwrap_or("?");
            for elem in s["elem"].as_array().into_iter().flatten() {
                // A map element is [key, value]; only the key identifies it.
                let key = match elem.as_array() {
                    Some(kv) if kind == "map" && kv.len() == 2 => &kv[0],
                    _ => elem,
                };
                let mut parts = Vec::new();
                strings(key, &mut parts);
                if parts.iter().any(|p| within(p, cidrs)) {
                    out.insert(format!("nft {name} {}", parts.join(" . ")));
                }
            }
        }
    }
    Ok(out)
}

/// Virtual services of `ipvsadm -Ln` whose address lies in `cidrs`.
pub fn ipvs_services(text: &str, cidrs: &[IpNet]) -> Objects {
    text.lines()
        .filter(|l| !l.starts_with(' '))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let proto = f.next()?;
            let addr = f.next()?;
            (matches!(proto, "TCP" | "UDP" | "SCTP") && within(addr, cidrs))
                .then(|| format!("ipvs {proto} {addr}"))
        })
        .collect()
}

/// What the withdrawal watcher saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Withdrawals {
    pub polls: u64,
    pub poll_errors: u64,
    pub first_poll_error: Option<String>,
    /// The remote's objects at the first poll.
    pub baseline: Objects,
    /// Every object that went missing, with when (after the start) it was first missed.
    pub removed: Vec<(Duration, String)>,
    /// The remote's objects at the last poll.
    pub last: Objects,
}

impl Withdrawals {
    /// Records one poll: every object seen before and missing now is a removal (counted once
    /// per disappearance).
    pub fn record(
        &mut self,
        now: &Objects,
        seen: &mut Objects,
        present: &mut Objects,
        at: Duration,
    ) {
        if self.polls == 0 {
            self.baseline = now.clone();
        }
        self.polls += 1;
        for gone in present.difference(now) {
            self.removed.push((at, gone.clone()));
        }
        seen.extend(now.iter().cloned());
        *present = now.clone();
        self.last = now.clone();
    }

    /// How many objects of each kind the baseline holds (`peer`, `vip`, ...).
    pub fn baseline_kinds(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for o in &self.baseline {
            *m.entry(o.split(' ').next().unwrap_or("").to_string())
                .or_default() += 1;
        }
        m
    }
}

impl std::fmt::Display for Withdrawals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} polls ({} failed), watched {:?}, {} removed",
            self.polls,
            self.poll_errors,
            self.baseline_kinds(),
            self.removed.len()
        )?;
        if let Some((at, what)) = self.removed.first() {
            write!(f, " (first: {what} at {:.2}s)", at.as_secs_f64())?;
        }
        if let Some(e) = &self.first_poll_error {
            write!(f, " (first poll error: {e})")?;
        }
        Ok(())
    }
}

/// What to watch in one node's daemon namespace.
#[derive(Clone, Debug)]
pub struct WatchTarget {
    pub daemon_netns: String,
    pub wg_if: String,
    /// The remote's pod and service CIDRs.
    pub cidrs: Vec<IpNet>,
    pub ipvs: bool,
}

pub(super) fn run_in(ns: &NetNs, prog: &'static str, args: Vec<String>) -> Result<String, String> {
    let out = ns
        .run(move || std::process::Command::new(prog).args(&args).output())
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{prog}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{prog} {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn poll(ns: &NetNs, t: &WatchTarget) -> Result<Objects, String> {
    let s = |x: &str| x.to_string();
    let mut o = wg_peers(
        &run_in(ns, "wg", vec![s("show"), t.wg_if.clone(), s("dump")])?,
        &t.cidrs,
    );
    o.extend(vips(
        &run_in(ns, "ip", vec![s("-j"), s("addr"), s("show")])?,
        &t.cidrs,
    )?);
    o.extend(routes(
        &run_in(ns, "ip", vec![s("-j"), s("route"), s("show")])?,
        &t.cidrs,
    )?);
    if t.ipvs {
        o.extend(ipvs_services(
            &run_in(ns, "ipvsadm", vec![s("-Ln")])?,
            &t.cidrs,
        ));
    } else {
        let table = vec![
            s("-j"),
            s("list"),
            s("table"),
            s(sdnlinkd::proxy::nft::ruleset::FAMILY),
            s(sdnlinkd::proxy::nft::ruleset::TABLE),
        ];
        o.extend(nft_elements(&run_in(ns, "nft", table)?, &t.cidrs)?);
    }
    Ok(o)
}

/// The objects of `target` now (one poll).
pub fn objects(target: &WatchTarget) -> Result<Objects, String> {
    let ns = NetNs::open(&target.daemon_netns).map_err(|e| e.to_string())?;
    poll(&ns, target)
}

/// Polls `target` every 50 ms and records every removal of one of the remote's objects.
pub fn withdrawals(target: WatchTarget) -> Result<Probe<Withdrawals>, LabError> {
    let ns = NetNs::open(&target.daemon_netns)?;
    Probe::spawn(format!("watch-{}", target.daemon_netns), move |stop| {
        let mut w = Withdrawals::default();
        let (mut seen, mut present) = (Objects::new(), Objects::new());
        let start = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            let t = Instant::now();
            match poll(&ns, &target) {
                Ok(now) => w.record(&now, &mut seen, &mut present, start.elapsed()),
                Err(e) => {
                    w.poll_errors += 1;
                    w.first_poll_error.get_or_insert(e);
                }
            }
            std::thread::sleep(Duration::from_millis(50).saturating_sub(t.elapsed()));
        }
        w
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs() -> Vec<IpNet> {
        vec![
            "10.20.0.0/16".parse().expect("cidr"),
            "10.120.0.0/16".parse().expect("cidr"),
        ]
    }

    #[test]
    fn wg_dump_keeps_the_remotes_peers() {
        let dump = "PRIV\tPUB\t51820\toff\nKEYA=\t(none)\t192.0.2.21:51820\t10.20.1.0/24\t1700000000\t1\t2\t5\nKEYB=\t(none)\t(none)\t10.30.1.0/24,10.20.2.0/24\t0\t0\t0\toff\nKEYC=\t(none)\t(none)\t(none)\t0\t0\t0\toff\n";
        let got: Vec<String> = wg_peers(dump, &cidrs()).into_iter().collect();
        assert_eq!(got, ["peer KEYA=", "peer KEYB="]);
    }

    #[test]
    fn addresses_routes_nft_and_ipvs_are_filtered_to_the_remote() {
        let addr = r#"[{"ifname":"eth0","addr_info":[{"local":"169.254.100.2","prefixlen":30},{"local":"10.120.0.10","prefixlen":32}]}]"#;
        assert_eq!(
            vips(addr, &cidrs())
                .expect("json")
                .into_iter()
                .collect::<Vec<_>>(),
            ["vip 10.120.0.10/32"]
        );
        let route = r#"[{"dst":"10.20.0.0/16","dev":"lab-wg11"},{"dst":"10.10.0.0/16","dev":"eth0"},{"dst":"default","dev":"eth0"}]"#;
        assert_eq!(
            routes(route, &cidrs())
                .expect("json")
                .into_iter()
                .collect::<Vec<_>>(),
            ["route 10.20.0.0/16 dev lab-wg11"]
        );
        let nft = r#"{"nftables":[{"metainfo":{}},{"map":{"family":"inet","name":"services","table":"sdnlink","elem":[[{"concat":["10.120.0.10","tcp",80]},{"goto":"svc-1"}],[{"concat":["10.130.0.10","tcp",80]},{"goto":"svc-2"}]]}},{"set":{"name":"vips","elem":["10.120.0.11"]}}]}"#;
        let got: Vec<String> = nft_elements(nft, &cidrs())
            .expect("json")
            .into_iter()
            .collect();
        assert_eq!(
            got,
            [
                "nft services 10.120.0.10 . tcp . 80",
                "nft vips 10.120.0.11"
            ]
        );
        let ipvs = "IP Virtual Server version 1.2.1 (size=4096)\nProt LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\nTCP  10.120.0.10:80 rr\n  -> 10.20.1.11:8080              Masq    1      0          0\nUDP  10.130.0.10:80 rr\n";
        assert_eq!(
            ipvs_services(ipvs, &cidrs())
                .into_iter()
                .collect::<Vec<_>>(),
            ["ipvs TCP 10.120.0.10:80"]
        );
        assert!(vips("not json", &cidrs()).is_err());
    }

    #[test]
    fn a_removal_counts_once_per_disappearance() {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Objects>();
        let mut w = Withdrawals::default();
        let (mut seen, mut present) = (Objects::new(), Objects::new());
        let d = Duration::from_millis;
        w.record(&set(&["peer A", "vip 1"]), &mut seen, &mut present, d(0));
        w.record(&set(&["peer A", "vip 1"]), &mut seen, &mut present, d(50));
        w.record(&set(&["vip 1"]), &mut seen, &mut present, d(100));
        w.record(&set(&["vip 1"]), &mut seen, &mut present, d(150));
        w.record(&set(&["peer A", "vip 1"]), &mut seen, &mut present, d(200));
        assert_eq!(w.polls, 5);
        assert_eq!(w.removed, vec![(d(100), "peer A".to_string())]);
        assert_eq!(
            w.baseline_kinds(),
            BTreeMap::from([("peer".into(), 1), ("vip".into(), 1)])
        );
    }

    #[test]
    fn counts_track_failures_and_the_longest_stall() {
        let mut c = Counts::default();
        let t0 = Instant::now();
        let mut last = t0;
        let ms = Duration::from_millis;
        c.record(Ok("p1".into()), ms(1), t0 + ms(10), &mut last);
        c.record(Err("timeout".into()), ms(1000), t0 + ms(1010), &mut last);
        c.record(Ok("p1".into()), ms(2), t0 + ms(1030), &mut last);
        c.finish(t0 + ms(1050), last);
        assert_eq!((c.attempts, c.failures), (3, 1));
        assert_eq!(c.max_stall, ms(1020));
        assert_eq!(c.max_latency, ms(1000));
        assert_eq!(c.first_error.as_deref(), Some("timeout"));
        assert_eq!(c.answered_by.get("p1"), Some(&2));

        let mut d = DnsCounts::default();
        d.record(Some(DnsOutcome::Ok), 1, ms(1));
        d.record(Some(DnsOutcome::Ok), 2, ms(1001));
        d.record(Some(DnsOutcome::NxDomain), 1, ms(1));
        d.record(None, 3, ms(3000));
        assert_eq!(
            (d.queries, d.ok, d.nxdomain, d.unanswered, d.retried),
            (4, 2, 1, 1, 1)
        );
        assert!(!d.all_ok());
        let mut m = Message::query();
        m.metadata.response_code = ResponseCode::ServFail;
        assert_eq!(classify(&m), DnsOutcome::ServFail);
        m.metadata.response_code = ResponseCode::NoError;
        assert_eq!(classify(&m), DnsOutcome::Empty);
    }
}
