//! The end-to-end checks. Each produces one [`Outcome`]: a name, pass or fail, and what was
//! measured. Waits are bounded polls, never fixed sleeps.

use super::api::LabApi;
use super::daemon;
use super::dns;
use super::manifests::{cluster_ip, endpoint_slice_yaml, svc, SERVICE_PORT};
use super::probe;
use super::run::{Lab, READY_TIMEOUT};
use super::servers::tcp_ask;
use super::topology::{
    Cluster, Node, Pod, Proxy, Topology, FORWARDED_ADDR, FORWARDED_NAME, K8S_NAMESPACE, POD_PORT,
};
use super::LabError;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use ipnet::IpNet;
use sdnlinkd::netns::NetNs;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// The result of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub name: String,
    pub pass: bool,
    /// What was measured.
    pub detail: String,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.pass { "PASS" } else { "FAIL" };
        write!(f, "{verdict} {} {}", self.name, self.detail)
    }
}

pub(super) fn outcome(name: impl Into<String>, r: Result<String, String>) -> Outcome {
    match r {
        Ok(detail) => Outcome {
            name: name.into(),
            pass: true,
            detail,
        },
        Err(detail) => Outcome {
            name: name.into(),
            pass: false,
            detail,
        },
    }
}

/// Timeout of one connection attempt or request.
pub(super) const REQUEST: Duration = Duration::from_secs(2);
/// How long traffic may take to work after the daemons report ready (handshakes, discovery).
pub(super) const CONVERGE: Duration = Duration::from_secs(60);
/// The bound on endpoint-churn convergence.
const CHURN_BOUND: Duration = Duration::from_secs(30);

/// Polls `f` until it succeeds or `timeout` passes; returns the last result and the time taken.
pub fn eventually<T>(
    timeout: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> (Result<T, String>, Duration) {
    let start = Instant::now();
    loop {
        let r = f();
        if r.is_ok() || start.elapsed() >= timeout {
            return (r, start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Namespace handles of the pods, opened once.
pub struct Pods {
    handles: HashMap<String, NetNs>,
}

impl Pods {
    /// Opens every pod namespace of `plan`.
    pub fn open(plan: &Topology) -> Result<Pods, LabError> {
        let mut handles = HashMap::new();
        for (_, pod) in plan.pods() {
            handles.insert(pod.netns.clone(), NetNs::open(&pod.netns)?);
        }
        Ok(Pods { handles })
    }

    fn ns(&self, pod: &Pod) -> Result<&NetNs, String> {
        self.handles
            .get(&pod.netns)
            .ok_or_else(|| format!("no namespace handle for {}", pod.name))
    }

    /// Opens a TCP connection from `pod` to `to`.
    pub fn connect(&self, pod: &Pod, to: SocketAddr) -> Result<TcpStream, String> {
        let conn = self
            .ns(pod)?
            .run(move || TcpStream::connect_timeout(&to, REQUEST))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("connect {to}: {e}"))?;
        conn.set_read_timeout(Some(REQUEST))
            .map_err(|e| e.to_string())?;
        Ok(conn)
    }

    /// One TCP request from `pod` to `to`: the name of the pod that answered.
    pub fn tcp(&self, pod: &Pod, to: SocketAddr) -> Result<String, String> {
        let mut conn = self.connect(pod, to)?;
        tcp_ask(&mut conn).map_err(|e| format!("tcp {to}: {e}"))
    }

    /// One UDP request from a fresh socket (a new source port) in `pod` to `to`.
    pub fn udp(&self, pod: &Pod, to: SocketAddr) -> Result<String, String> {
        let sock = self
            .ns(pod)?
            .run(|| UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))))
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(REQUEST))
            .map_err(|e| e.to_string())?;
        sock.send_to(b"who\n", to)
            .map_err(|e| format!("udp send {to}: {e}"))?;
        let mut buf = [0u8; 256];
        let (n, _) = sock
            .recv_from(&mut buf)
            .map_err(|e| format!("udp {to}: {e}"))?;
        Ok(String::from_utf8_lossy(&buf[..n]).trim_end().to_string())
    }
}

pub(super) fn first_pod(c: &Cluster, node: usize) -> &Pod {
    &c.nodes[node % c.nodes.len()].pods[0]
}

fn all_pods(c: &Cluster) -> Vec<&Pod> {
    c.nodes.iter().flat_map(|n| n.pods.iter()).collect()
}

pub(super) fn vip(c: &Cluster, service: &str) -> Result<SocketAddr, String> {
    cluster_ip(c, service)
        .map(|ip| SocketAddr::from((ip, SERVICE_PORT)))
        .ok_or_else(|| format!("no ClusterIP for {service}"))
}

/// The DNS stub's address on every node (the daemon's default).
pub fn dns_server() -> SocketAddr {
    let raw = sdnlinkd::config::RawConfig::default();
    let ip: IpAddr = raw
        .dns
        .address
        .parse()
        .expect("the built-in default DNS address is a valid IP");
    SocketAddr::new(ip, raw.dns.port)
}

/// Runs every check in order, handing each outcome to `emit` as soon as it is known.
pub fn all(lab: &mut Lab, emit: &mut dyn FnMut(Outcome)) {
    let pods = match Pods::open(&lab.plan) {
        Ok(p) => p,
        Err(e) => return emit(outcome("pods", Err(e.to_string()))),
    };
    let plan = lab.plan.clone();
    let pairs: Vec<(&Cluster, &Cluster)> = plan
        .clusters
        .iter()
        .flat_map(|a| {
            plan.clusters
                .iter()
                .filter(move |b| b.name != a.name)
                .map(move |b| (a, b))
        })
        .collect();
    emit(api_from_nodes(&plan));
    emit(discovery(lab));
    for (a, b) in &pairs {
        emit(pod_to_pod(&pods, a, b, false));
        emit(pod_to_pod(&pods, a, b, true));
    }
    emit(mss_clamp(&pods, pairs[0].0, pairs[0].1));
    for (a, b) in &pairs {
        emit(load_balanced(&pods, a, b, false));
        emit(load_balanced(&pods, a, b, true));
    }
    let (a, b) = (&plan.clusters[0], &plan.clusters[1]);
    emit(affinity(&pods, a, b));
    for o in dns_checks(&plan, a, b) {
        emit(o);
    }
    // While nothing changes: before the checks that edit the API servers.
    for node in plan.nodes() {
        emit(metrics(&plan, node));
    }
    for node in plan.nodes() {
        emit(plan_idle(lab, node));
    }
    emit(verify(lab, &plan.clusters[0].nodes[0]));
    emit(super::quiet::idle_resync(lab, a));
    emit(super::quiet::dns_logs(lab, a, b));
    emit(super::quiet::foreign_churn(lab, &pods, a, b));
    emit(churn(lab, &pods, a, b));
    emit(hostile(lab, &pods, a, b));
    emit(super::hostile::check(lab, &pods, a, b));
    // An OpenShift-shaped cluster, seen from a cluster that is not.
    if let Some(o) = plan.clusters.iter().find(|c| c.openshift) {
        if let Some(k) = plan.clusters.iter().find(|c| c.name != o.name) {
            emit(super::openshift::host_subnet(lab, &pods, k, o));
        }
    }
    emit(restart(lab, &pods, a, b));
    emit(faults_kill_restart(lab, a, b));
    super::faults::all(lab, a, b, emit);
    emit(service_delete(lab, &pods, a, b));
    // Last: it counts the requests the shipped roles refused over the whole run.
    emit(super::openshift::rbac(lab, &pods, a, b));
}

/// What `sdnlinkd plan --json` says on `node`: whether it found nothing to change (exit 0), a
/// one-line count per subsystem, and the document.
fn plan_of(lab: &Lab, node: &Node) -> Result<(bool, String, String), String> {
    let bin = lab.daemon_bin.clone().ok_or("the lab runs no daemons")?;
    let cfg = lab.plan.node_config_path(node);
    let out = std::process::Command::new(&bin)
        .arg("--config")
        .arg(&cfg)
        .args(["plan", "--json"])
        .output()
        .map_err(|e| format!("running {}: {e}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let doc: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        format!(
            "plan --json is not JSON ({e}): {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let ops = |k: &str| doc[k]["operations"].as_array().map_or(0, |a| a.len());
    let parts = format!(
        "tunnel {}, proxy ({}) {}, node {} changes",
        ops("tunnel"),
        doc["proxy_backend"].as_str().unwrap_or("?"),
        ops("proxy"),
        ops("node")
    );
    if out.status.success() {
        Ok((true, parts, text.into_owned()))
    } else {
        Ok((false, format!("{}: {parts}", out.status), text.into_owned()))
    }
}

/// `sdnlinkd plan` on a node that has applied everything: each subsystem reads the kernel
/// afresh, plans as a full sync would, and finds nothing to change (exit 0).
fn plan_idle(lab: &Lab, node: &Node) -> Outcome {
    let r = plan_of(lab, node).and_then(|(idle, parts, text)| {
        if idle {
            Ok(format!("exit 0: {parts}"))
        } else {
            Err(format!("{parts}: {text}"))
        }
    });
    outcome(format!("plan-idle {}", node.name), r)
}

/// Waits until `node` has listed every cluster and applied what they hold: every cluster
/// current and `sdnlinkd plan` finding nothing to change. Checks that watch for withdrawals
/// start from here, and checks that restart a daemon end here. A daemon restarted a moment
/// ago serves its persisted snapshots until its clusters list, and a snapshot can miss the last
/// changes (written at most every 3 s, `PERSIST_EVERY` in crates/sdnlinkd/src/clusters/mod.rs):
/// withdrawing what the API servers deleted meanwhile is right, and must not be counted as a
/// loss by the next check.
pub(super) fn wait_converged(lab: &Lab, node: &Node) -> Result<Duration, String> {
    let bin = lab.daemon_bin.clone().ok_or("the lab runs no daemons")?;
    let cfg = lab.plan.node_config_path(node);
    let (r, took) = eventually(CONVERGE, || {
        super::faults::all_current(&daemon::status(&bin, &cfg).map_err(|e| e.to_string())?)?;
        match plan_of(lab, node)? {
            (true, _, _) => Ok(()),
            (false, parts, _) => Err(format!("plan: {parts}")),
        }
    });
    r.map(|_| took)
        .map_err(|e| format!("{} not converged after {CONVERGE:?}: {e}", node.name))
}

/// Every node reaches every cluster's API server with the kubeconfig the lab wrote for it.
fn api_from_nodes(plan: &Topology) -> Outcome {
    let r = (|| {
        let mut ok = 0;
        for node in plan.nodes() {
            for c in &plan.clusters {
                let path = plan.kubeconfig_path(node, &c.name);
                let kc = std::fs::read_to_string(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                let (status, body) = super::kubeprobe::get(&node.netns, &kc, "/api/v1/nodes")
                    .map_err(|e| format!("{} -> {}: {e}", node.name, c.name))?;
                if status != 200 {
                    return Err(format!("{} -> {}: HTTP {status} {body}", node.name, c.name));
                }
                ok += 1;
            }
        }
        Ok(format!(
            "{ok} node->API server requests with the generated kubeconfigs answered 200"
        ))
    })();
    outcome("api-from-nodes", r)
}

fn discovery(lab: &Lab) -> Outcome {
    let r = (|| {
        let mut published = 0;
        for api in &lab.apis {
            let cluster = lab
                .plan
                .clusters
                .iter()
                .find(|c| c.name == api.cluster)
                .ok_or("unknown cluster")?;
            for n in &cluster.nodes {
                let (r, _) = eventually(CONVERGE, || {
                    let ann = api.node_annotations(&n.name).map_err(|e| e.to_string())?;
                    match (
                        ann.get("sdnlink.io/wireguard-public-key"),
                        ann.get("sdnlink.io/wireguard-endpoint"),
                    ) {
                        (Some(_), Some(ep)) => Ok(ep.clone()),
                        _ => Err(format!("node {} has no sdnlink.io annotations", n.name)),
                    }
                });
                let ep = r?;
                let want = format!("{}:", n.underlay_addr);
                if !ep.starts_with(&want) {
                    return Err(format!(
                        "node {} publishes endpoint {ep}, want {want}*",
                        n.name
                    ));
                }
                published += 1;
            }
        }
        Ok(format!(
            "{published} nodes publish key and endpoint annotations"
        ))
    })();
    outcome("discovery", r)
}

fn pod_to_pod(pods: &Pods, a: &Cluster, b: &Cluster, udp: bool) -> Outcome {
    let from = first_pod(a, 0);
    let to = first_pod(b, 1);
    let addr = SocketAddr::from((to.addr, POD_PORT));
    let (r, t) = eventually(CONVERGE, || {
        let got = if udp {
            pods.udp(from, addr)
        } else {
            pods.tcp(from, addr)
        }?;
        if got == to.name {
            Ok(got)
        } else {
            Err(format!("answered by {got:?}, want {}", to.name))
        }
    });
    let proto = if udp { "udp" } else { "tcp" };
    outcome(
        format!("pod-{proto} {}->{}", a.name, b.name),
        r.map(|got| {
            format!(
                "{} -> {addr} answered {got} after {:.1}s",
                from.name,
                t.as_secs_f64()
            )
        })
        .map_err(|e| {
            format!(
                "{} -> {addr}: {e} (waited {:.0}s)",
                from.name,
                t.as_secs_f64()
            )
        }),
    )
}

/// A TCP connection across the tunnel settles on an MSS that fits the tunnel although both pods
/// sit on 1500-byte links (unclamped they would agree on 1460): the SYN-ACK was clamped.
/// Scrapes `node`'s metrics endpoint (in its host namespace) and checks that every family the
/// README promises is there, with the remote clusters current and a recent handshake per peer.
fn metrics(plan: &Topology, node: &Node) -> Outcome {
    let r = (|| {
        let addr: SocketAddr = super::topology::METRICS_ADDR
            .parse()
            .map_err(|e| format!("{}: {e}", super::topology::METRICS_ADDR))?;
        let text = NetNs::open(&node.netns)
            .map_err(|e| e.to_string())?
            .run(move || -> std::io::Result<String> {
                use std::io::{Read, Write};
                let mut c = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
                c.set_read_timeout(Some(Duration::from_secs(5)))?;
                c.write_all(b"GET /metrics HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n")?;
                let mut out = String::new();
                c.read_to_string(&mut out)?;
                Ok(out)
            })
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("GET http://{addr}/metrics in {}: {e}", node.netns))?;
        if !text.starts_with("HTTP/1.1 200") {
            return Err(format!("answered {:?}", text.lines().next().unwrap_or("")));
        }
        let mut missing: Vec<String> = [
            "sdnlink_sync_duration_seconds_count{kind=\"full\"}",
            "sdnlink_sync_errors_total",
            "sdnlink_cluster_objects{",
            "sdnlink_proxy_services",
            "sdnlink_dns_queries_total{zone=\"local\",rcode=\"NOERROR\"}",
            "sdnlink_dns_forward_duration_seconds_count",
            "sdnlink_peer_bytes_total{",
        ]
        .iter()
        .filter(|m| !text.contains(*m))
        .map(|m| m.to_string())
        .collect();
        let local = &plan.clusters[node.cluster];
        for c in plan.clusters.iter().filter(|c| c.name != local.name) {
            let current = format!(
                "sdnlink_cluster_state{{cluster=\"{}\",state=\"current\"}} 1",
                c.name
            );
            if !text.contains(&current) {
                missing.push(current);
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let handshakes: Vec<u64> = text
            .lines()
            .filter(|l| l.starts_with("sdnlink_peer_last_handshake_seconds{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        let want_peers = plan.nodes().filter(|n| n.cluster != node.cluster).count();
        let stale = handshakes
            .iter()
            .filter(|t| now.saturating_sub(**t) > 180)
            .count();
        if handshakes.len() != want_peers || stale > 0 {
            missing.push(format!(
                "{want_peers} peers with a handshake in the last 180 s (got {} peers, {stale} stale)",
                handshakes.len()
            ));
        }
        let detail = format!(
            "{} lines from {addr} in {}; {} peers with a recent handshake",
            text.lines().count(),
            node.netns,
            handshakes.len()
        );
        if missing.is_empty() {
            Ok(detail)
        } else {
            Err(format!("{detail}; missing: {}", missing.join(", ")))
        }
    })();
    outcome(format!("metrics {}", node.name), r)
}

/// `sdnlinkd verify` run on `node` as an operator would, from the node's host namespace,
/// against each remote's echo Service: it must pass every line and exit 0.
fn verify(lab: &Lab, node: &Node) -> Outcome {
    let r = (|| {
        let bin = lab.daemon_bin.as_deref().ok_or("no daemon binary")?;
        let service = format!("{}.{K8S_NAMESPACE}", svc::ECHO);
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &node.netns])
            .arg(bin)
            .arg("--config")
            .arg(lab.plan.node_config_path(node))
            .args(["verify", "--service", &service, "--port"])
            .arg(SERVICE_PORT.to_string())
            .output()
            .map_err(|e| format!("running sdnlinkd verify: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("PASS") || l.starts_with("FAIL"))
            .collect();
        let remotes = lab.plan.clusters.len() - 1;
        let passed = lines.iter().filter(|l| l.starts_with("PASS")).count();
        let detail = format!(
            "{} on {}: exit {}, {passed}/{} lines PASS ({})",
            service,
            node.name,
            out.status.code().unwrap_or(-1),
            lines.len(),
            lines.join("; ")
        );
        if out.status.success() && lines.len() == 3 * remotes && passed == lines.len() {
            Ok(detail)
        } else {
            Err(format!(
                "{detail}; stderr: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    })();
    outcome(format!("verify {}", node.name), r)
}

fn mss_clamp(pods: &Pods, a: &Cluster, b: &Cluster) -> Outcome {
    let from = first_pod(a, 0);
    let to = first_pod(b, 1);
    let addr = SocketAddr::from((to.addr, POD_PORT));
    let tunnel_mtu = sdnlinkd::config::RawConfig::default().tunnel.mtu;
    let (want, _) = sdnlinkd::tunnel::mss::mss_for(tunnel_mtu);
    let r = (|| {
        let conn = pods.connect(from, addr)?;
        let mss = nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::TcpMaxSeg)
            .map_err(|e| format!("TCP_MAXSEG: {e}"))?;
        let detail = format!(
            "{} -> {addr}: MSS {mss} (tunnel MTU {tunnel_mtu} allows {want}; 1500-byte pod links alone 1460)",
            from.name
        );
        if mss <= want {
            Ok(detail)
        } else {
            Err(detail)
        }
    })();
    outcome(format!("mss-clamp {}->{}", a.name, b.name), r)
}

fn load_balanced(pods: &Pods, a: &Cluster, b: &Cluster, udp: bool) -> Outcome {
    let proto = if udp { "udp" } else { "tcp" };
    let name = format!("clusterip-{proto} {}->{}", a.name, b.name);
    let from = first_pod(a, 1);
    let r = (|| {
        let to = vip(b, svc::ECHO)?;
        let ask = || {
            if udp {
                pods.udp(from, to)
            } else {
                pods.tcp(from, to)
            }
        };
        let want: BTreeSet<String> = all_pods(b).iter().map(|p| p.name.clone()).collect();
        // Converged means every endpoint has answered once: a tunnel peer that a remote node
        // has not yet learned drops the first handshake, and WireGuard retries it only after
        // REKEY_TIMEOUT (5 s), longer than one request's timeout. The steady state after
        // that must be free of errors.
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let (converged, t) = eventually(CONVERGE, || {
            for _ in 0..want.len() * 4 {
                if let Ok(p) = ask() {
                    seen.insert(p);
                }
            }
            if seen == want {
                Ok(())
            } else {
                Err(format!("answered only by {seen:?}"))
            }
        });
        converged.map_err(|e| format!("{to} never reached every endpoint: {e}"))?;
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        let mut errors = 0;
        let mut first_error = None;
        for _ in 0..40 {
            match ask() {
                Ok(p) => *counts.entry(p).or_default() += 1,
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        let got: BTreeSet<String> = counts.keys().cloned().collect();
        let first_error = first_error
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default();
        let detail = format!(
            "{} -> {to} x40: {counts:?}, {errors} errors{first_error}, every endpoint answered after {:.1}s",
            from.name,
            t.as_secs_f64()
        );
        if got == want && errors == 0 {
            Ok(detail)
        } else {
            Err(format!("{detail}; want every one of {want:?}"))
        }
    })();
    outcome(name, r)
}

fn affinity(pods: &Pods, a: &Cluster, b: &Cluster) -> Outcome {
    let from = first_pod(a, 0);
    let r = (|| {
        let to = vip(b, svc::STICKY)?;
        let (first, _) = eventually(CONVERGE, || pods.tcp(from, to));
        let first = first?;
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..20 {
            *counts.entry(pods.tcp(from, to)?).or_default() += 1;
        }
        if counts.len() == 1 && counts.contains_key(&first) {
            Ok(format!("{} -> {to} x20 all answered by {first}", from.name))
        } else {
            Err(format!(
                "{} -> {to} x20 answered by {counts:?} (first {first})",
                from.name
            ))
        }
    })();
    outcome(format!("affinity {}->{}", a.name, b.name), r)
}

pub(super) fn a_records(m: &Message) -> BTreeSet<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

fn dns_checks(plan: &Topology, a: &Cluster, b: &Cluster) -> Vec<Outcome> {
    let from = first_pod(a, 0);
    let server = dns_server();
    let q = |name: &str, t: RecordType| {
        dns::query(&from.netns, server, name, t, REQUEST).map_err(|e| e.to_string())
    };
    let mut out = Vec::new();
    let echo_name = format!("{}.{K8S_NAMESPACE}.svc.cluster.{}.", svc::ECHO, b.name);
    let want_vip = cluster_ip(b, svc::ECHO);
    let (r, t) = eventually(CONVERGE, || {
        let m = q(&echo_name, RecordType::A)?;
        let got = a_records(&m);
        if want_vip.is_some_and(|v| got.len() == 1 && got.contains(&v)) {
            Ok(format!("{echo_name} A {got:?}"))
        } else {
            Err(format!(
                "{echo_name} A: {:?} {got:?}, want {want_vip:?}",
                m.metadata.response_code
            ))
        }
    });
    out.push(outcome(
        "dns-a",
        r.map(|d| format!("{d} after {:.1}s", t.as_secs_f64())),
    ));

    let srv_name = format!(
        "_tcp._tcp.{}.{K8S_NAMESPACE}.svc.cluster.{}.",
        svc::ECHO,
        b.name
    );
    let r = q(&srv_name, RecordType::SRV).and_then(|m| {
        let srvs: Vec<(u16, String)> = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(s) => Some((s.port, s.target.to_ascii())),
                _ => None,
            })
            .collect();
        if srvs
            .iter()
            .any(|(p, t)| *p == SERVICE_PORT && t.eq_ignore_ascii_case(&echo_name))
        {
            Ok(format!("{srv_name} SRV {srvs:?}"))
        } else {
            Err(format!(
                "{srv_name} SRV {:?} {srvs:?}, want port {SERVICE_PORT} target {echo_name}",
                m.metadata.response_code
            ))
        }
    });
    out.push(outcome("dns-srv", r));

    let headless = format!("{}.{K8S_NAMESPACE}.svc.cluster.{}.", svc::HEADLESS, b.name);
    let want: BTreeSet<Ipv4Addr> = all_pods(b).iter().map(|p| p.addr).collect();
    let r = q(&headless, RecordType::A).and_then(|m| {
        let got = a_records(&m);
        if got == want {
            Ok(format!("{headless} A {got:?}"))
        } else {
            Err(format!(
                "{headless} A {:?} {got:?}, want {want:?}",
                m.metadata.response_code
            ))
        }
    });
    out.push(outcome("dns-headless", r));

    let ext = format!("{}.{K8S_NAMESPACE}.svc.cluster.{}.", svc::EXTERNAL, b.name);
    let r = q(&ext, RecordType::CNAME).and_then(|m| {
        let targets: Vec<String> = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::CNAME(c) => Some(c.0.to_ascii()),
                _ => None,
            })
            .collect();
        if targets
            .iter()
            .any(|t| t.eq_ignore_ascii_case(FORWARDED_NAME))
        {
            Ok(format!("{ext} CNAME {targets:?}"))
        } else {
            Err(format!(
                "{ext} CNAME {:?} {targets:?}, want {FORWARDED_NAME}",
                m.metadata.response_code
            ))
        }
    });
    out.push(outcome("dns-externalname", r));

    let all = format!("{}.{K8S_NAMESPACE}.svc.cluster.all.", svc::ECHO);
    let remote_vips: BTreeSet<Ipv4Addr> = plan
        .clusters
        .iter()
        .filter(|c| c.name != a.name)
        .filter_map(|c| cluster_ip(c, svc::ECHO))
        .collect();
    let r = q(&all, RecordType::A).and_then(|m| {
        let got = a_records(&m);
        if remote_vips.is_subset(&got) {
            Ok(format!(
                "{all} A {got:?} (every remote cluster's {})",
                svc::ECHO
            ))
        } else {
            Err(format!(
                "{all} A {:?} {got:?}, want at least {remote_vips:?}",
                m.metadata.response_code
            ))
        }
    });
    out.push(outcome("dns-cluster-all", r));

    let r = q(FORWARDED_NAME, RecordType::A).and_then(|m| {
        let got = a_records(&m);
        if got.contains(&FORWARDED_ADDR) && m.metadata.response_code == ResponseCode::NoError {
            Ok(format!("{FORWARDED_NAME} A {got:?} via the upstream"))
        } else {
            Err(format!(
                "{FORWARDED_NAME} A {:?} {got:?}, want {FORWARDED_ADDR}",
                m.metadata.response_code
            ))
        }
    });
    out.push(outcome("dns-forwarded", r));
    out
}

/// The simulated API server of cluster `b`.
pub(super) fn remote_api<'l>(lab: &'l Lab, b: &Cluster) -> Result<&'l LabApi, String> {
    lab.apis
        .iter()
        .find(|x| x.cluster == b.name)
        .ok_or_else(|| format!("no API server for cluster {}", b.name))
}

fn churn(lab: &Lab, pods: &Pods, a: &Cluster, b: &Cluster) -> Outcome {
    let from = first_pod(a, 0);
    let r = (|| {
        let api = remote_api(lab, b)?;
        let to = vip(b, svc::CHURN)?;
        let everyone: Vec<(&str, &Pod)> = b
            .nodes
            .iter()
            .flat_map(|n| n.pods.iter().map(move |p| (n.name.as_str(), p)))
            .collect();
        let keep = everyone[0];
        api.apply_yaml(&endpoint_slice_yaml(svc::CHURN, &[keep], false))
            .map_err(|e| e.to_string())?;
        let (r, down) = eventually(CHURN_BOUND, || {
            let mut seen = BTreeSet::new();
            for _ in 0..8 {
                seen.insert(pods.tcp(from, to)?);
            }
            if seen.len() == 1 && seen.contains(&keep.1.name) {
                Ok(())
            } else {
                Err(format!("still answered by {seen:?}"))
            }
        });
        r.map_err(|e| {
            format!(
                "scale down to {} not converged in {CHURN_BOUND:?}: {e}",
                keep.1.name
            )
        })?;
        api.apply_yaml(&endpoint_slice_yaml(svc::CHURN, &everyone, false))
            .map_err(|e| e.to_string())?;
        let want: BTreeSet<String> = everyone.iter().map(|(_, p)| p.name.clone()).collect();
        let (r, up) = eventually(CHURN_BOUND, || {
            let mut seen = BTreeSet::new();
            for _ in 0..24 {
                seen.insert(pods.tcp(from, to)?);
            }
            if seen == want {
                Ok(())
            } else {
                Err(format!("answered by {seen:?}"))
            }
        });
        r.map_err(|e| {
            format!(
                "scale up to {} endpoints not converged in {CHURN_BOUND:?}: {e}",
                want.len()
            )
        })?;
        Ok(format!(
            "{to}: scale down 4->1 converged in {:.1}s, up 1->4 in {:.1}s (bound {}s)",
            down.as_secs_f64(),
            up.as_secs_f64(),
            CHURN_BOUND.as_secs()
        ))
    })();
    outcome(format!("churn {}->{}", a.name, b.name), r)
}

/// Deleting a Service on the remote side stops new connections to its VIP, while a connection
/// already open through it keeps being answered by the same pod (IPVS drains the service's
/// destinations at weight 0 for `proxy.drain_grace`; nftables leaves established flows to
/// conntrack). Runs last: it removes the churn Service.
fn service_delete(lab: &Lab, pods: &Pods, a: &Cluster, b: &Cluster) -> Outcome {
    let from = first_pod(a, 0);
    let r = (|| {
        let api = remote_api(lab, b)?;
        let to = vip(b, svc::CHURN)?;
        let mut conn = pods.connect(from, to)?;
        let before = tcp_ask(&mut conn).map_err(|e| format!("before the delete: {e}"))?;
        // IPVS lists the VIP as draining only for `proxy.drain_grace` (2 s in the lab) from the
        // sync that saw the delete, so status is sampled from the delete on, not after.
        let ipvs = lab.plan.proxy == Proxy::Ipvs;
        let node = &a.nodes[0];
        let bin = lab.daemon_bin.as_deref().ok_or("no daemon binary")?;
        let ip = to.ip().to_string();
        let mut last_vips = serde_json::Value::Null;
        let mut draining_now = || -> bool {
            let Ok(status) = daemon::status(bin, &lab.plan.node_config_path(node)) else {
                return false;
            };
            last_vips = status["proxy"]["draining_vips"].clone();
            last_vips
                .as_array()
                .is_some_and(|v| v.iter().any(|x| x.as_str() == Some(ip.as_str())))
        };
        let mut seen_draining = false;
        api.delete("Service", K8S_NAMESPACE, svc::CHURN)
            .map_err(|e| e.to_string())?;
        let (gone, t) = eventually(CHURN_BOUND, || {
            if ipvs && !seen_draining {
                seen_draining = draining_now();
            }
            match pods.tcp(from, to) {
                Ok(p) => Err(format!("a new connection is still answered by {p}")),
                Err(_) => Ok(()),
            }
        });
        gone.map_err(|e| format!("{to} after deleting the Service: {e}"))?;
        let after = tcp_ask(&mut conn)
            .map_err(|e| format!("the open connection broke after the delete: {e}"))?;
        if after != before {
            return Err(format!(
                "the open connection moved from {before} to {after}"
            ));
        }
        let mut draining = String::new();
        if ipvs {
            if !seen_draining {
                seen_draining = draining_now();
            }
            if !seen_draining {
                return Err(format!(
                    "{}'s status --json proxy.draining_vips never listed {ip} while it drained (last {last_vips})",
                    node.name
                ));
            }
            draining = format!("; {ip} listed as draining in {}'s status", node.name);
        }
        Ok(format!(
            "{to}: new connections refused {:.1}s after the delete; the open one still answered by {after}{draining}",
            t.as_secs_f64()
        ))
    })();
    outcome(format!("service-delete {}->{}", a.name, b.name), r)
}

fn hostile(lab: &Lab, pods: &Pods, a: &Cluster, b: &Cluster) -> Outcome {
    let from = first_pod(a, 0);
    let node = &a.nodes[0];
    let r = (|| {
        let ip = cluster_ip(b, svc::HOSTILE).ok_or("no hostile ClusterIP")?;
        let to = SocketAddr::from((ip, SERVICE_PORT));
        if let Ok(got) = pods.tcp(from, to) {
            return Err(format!(
                "{to} answered ({got}): the hostile ClusterIP is programmed"
            ));
        }
        let bin = lab.daemon_bin.as_deref().ok_or("no daemon binary")?;
        let cfg = lab.plan.node_config_path(node);
        let status = without_skips(daemon::status(bin, &cfg).map_err(|e| e.to_string())?);
        let needle = ip.to_string();
        if status.to_string().contains(&needle) {
            return Err(format!("{needle} appears in {}'s status --json", node.name));
        }
        let (prog, args): (&str, &[&str]) = match lab.plan.proxy {
            Proxy::Nftables => ("nft", &["list", "ruleset"]),
            Proxy::Ipvs => ("ipvsadm", &["-Ln"]),
        };
        let ns = NetNs::open(&node.daemon_netns).map_err(|e| e.to_string())?;
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let listing = ns
            .run(move || std::process::Command::new(prog).args(&args).output())
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("{prog}: {e}"))?;
        let text = String::from_utf8_lossy(&listing.stdout);
        if !listing.status.success() {
            return Err(format!(
                "{prog} in {} failed: {}",
                node.daemon_netns,
                String::from_utf8_lossy(&listing.stderr)
            ));
        }
        if text.contains(&needle) {
            return Err(format!(
                "{needle} is in {prog}'s listing in {}",
                node.daemon_netns
            ));
        }
        let echo = cluster_ip(b, svc::ECHO)
            .ok_or("no echo ClusterIP")?
            .to_string();
        if !text.contains(&echo) {
            return Err(format!(
                "{prog} listing in {} lacks even the legitimate {echo}: nothing to compare",
                node.daemon_netns
            ));
        }
        Ok(format!(
            "{to} unreachable, absent from status --json and {prog} (which has {echo})"
        ))
    })();
    outcome(format!("hostile-clusterip {}", b.name), r)
}

/// The status document without its `*skip*` entries: the daemon may name what it refused
/// there (docs/design.md: skipped, logged once, counted); anywhere else the address means it is
/// programmed.
pub fn without_skips(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => m
            .into_iter()
            .filter(|(k, _)| !k.to_ascii_lowercase().contains("skip"))
            .map(|(k, v)| (k, without_skips(v)))
            .collect(),
        serde_json::Value::Array(a) => a.into_iter().map(without_skips).collect(),
        other => other,
    }
}

fn restart(lab: &mut Lab, pods: &Pods, a: &Cluster, b: &Cluster) -> Outcome {
    let from = first_pod(a, 0);
    let node = a.nodes[0].clone();
    let r = (|| {
        let bin = lab.daemon_bin.clone().ok_or("no daemon binary")?;
        let to = vip(b, svc::ECHO)?;
        let mut conn = pods.connect(from, to)?;
        let before = tcp_ask(&mut conn).map_err(|e| format!("before restart: {e}"))?;
        let d = lab
            .daemons
            .iter()
            .find(|d| d.node == node.name)
            .cloned()
            .ok_or("no daemon for the node")?;
        daemon::signal(d.pid, &d.config, nix::sys::signal::Signal::SIGKILL)
            .map_err(|e| e.to_string())?;
        let started = Instant::now();
        let (gone, _) = eventually(Duration::from_secs(5), || {
            let _ = nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(d.pid as i32),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
            if daemon::is_ours(d.pid, &d.config) {
                Err("still running".to_string())
            } else {
                Ok(())
            }
        });
        gone.map_err(|e| format!("kill -9 {}: {e}", d.pid))?;
        let during = tcp_ask(&mut conn).map_err(|e| format!("while the daemon was down: {e}"))?;
        let pid =
            daemon::spawn(&bin, &lab.plan, &node, &lab.fd_store).map_err(|e| e.to_string())?;
        lab.set_daemon_pid(&node.name, pid)
            .map_err(|e| e.to_string())?;
        daemon::wait_ready(&bin, &d.config, pid, READY_TIMEOUT).map_err(|e| e.to_string())?;
        let ready = started.elapsed();
        let after = tcp_ask(&mut conn).map_err(|e| format!("after restart: {e}"))?;
        let converged = wait_converged(lab, &node)?;
        if before == during && during == after {
            Ok(format!(
                "{} -> {to} one connection answered by {before} before, during and after kill -9 + restart of {} (ready again in {:.1}s, converged {:.1}s later)",
                from.name,
                node.name,
                ready.as_secs_f64(),
                converged.as_secs_f64()
            ))
        } else {
            Err(format!("answers changed: {before} / {during} / {after}"))
        }
    })();
    outcome(format!("restart-keeps-connection {}", a.name), r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn skip_entries_are_ignored_when_looking_for_a_programmed_address() {
        let v = json!({
            "clusters": [{"name": "west", "skipped": [{"detail": "10.250.120.10"}], "skips": 1}],
            "proxy": {"services": ["10.120.0.10:80"]},
        });
        let s = without_skips(v).to_string();
        assert!(!s.contains("10.250.120.10"));
        assert!(s.contains("10.120.0.10:80"));
        let programmed = json!({"proxy": {"services": ["10.250.120.10:80"]}});
        assert!(without_skips(programmed)
            .to_string()
            .contains("10.250.120.10"));
    }

    #[test]
    fn eventually_returns_the_first_success_or_the_last_error() {
        let mut n = 0;
        let (r, _) = eventually(Duration::from_secs(5), || {
            n += 1;
            if n < 3 {
                Err(format!("try {n}"))
            } else {
                Ok(n)
            }
        });
        assert_eq!(r, Ok(3));
        let (r, t) = eventually(Duration::from_millis(300), || {
            Err::<(), _>("never".to_string())
        });
        assert_eq!(r, Err("never".to_string()));
        assert!(t >= Duration::from_millis(300));
    }
}

/// How long the fault checks watch after the daemon is ready again: past one full resync
/// (`resync_interval = 10` in the lab's node config), whose plan would withdraw whatever the
/// restarted daemon wrongly believes gone.
const FAULT_OBSERVE: Duration = Duration::from_secs(12);

/// Probes from a pod of `a` through its node to `b`'s echo Service and `b`'s objects on that
/// node, started together.
pub struct FaultProbes {
    stream: probe::Probe<probe::Counts>,
    connects: probe::Probe<probe::Counts>,
    udp: probe::Probe<probe::Counts>,
    dns: probe::Probe<probe::DnsCounts>,
    watch: probe::Probe<probe::Withdrawals>,
    ipvs: bool,
}

/// What [`FaultProbes`] counted.
#[derive(Clone, Debug)]
pub struct FaultReport {
    pub stream: probe::Counts,
    pub connects: probe::Counts,
    pub udp: probe::Counts,
    pub dns: probe::DnsCounts,
    pub watch: probe::Withdrawals,
    /// IPVS proxy: VIPs are addresses on the namespace's interface (nftables DNATs without).
    pub ipvs: bool,
}

impl FaultProbes {
    /// Starts every probe: from the first pod of `a`'s first node to `b`'s echo VIP (TCP
    /// stream, TCP connects, UDP) and its DNS name, and the withdrawal watcher of `b` in that
    /// node's daemon namespace. Waits until the VIP answers first.
    pub fn start(plan: &Topology, a: &Cluster, b: &Cluster) -> Result<FaultProbes, String> {
        let node = &a.nodes[0];
        let pod = &node.pods[0];
        let to = vip(b, svc::ECHO)?;
        let pods = Pods::open(plan).map_err(|e| e.to_string())?;
        let (ready, _) = eventually(CONVERGE, || pods.tcp(pod, to));
        ready.map_err(|e| format!("{to} does not answer before the fault: {e}"))?;
        let name = format!("{}.{K8S_NAMESPACE}.svc.cluster.{}.", svc::ECHO, b.name);
        let e = |e: LabError| e.to_string();
        Ok(FaultProbes {
            stream: probe::tcp_stream(&pod.netns, to).map_err(e)?,
            connects: probe::tcp_connects(&pod.netns, to).map_err(e)?,
            udp: probe::udp(&pod.netns, to).map_err(e)?,
            dns: probe::dns(&pod.netns, dns_server(), &name).map_err(e)?,
            watch: probe::withdrawals(probe::WatchTarget {
                daemon_netns: node.daemon_netns.clone(),
                wg_if: node.wg_if.clone(),
                cidrs: vec![IpNet::V4(b.pod_cidr), IpNet::V4(b.service_cidr)],
                ipvs: plan.proxy == Proxy::Ipvs,
            })
            .map_err(e)?,
            ipvs: plan.proxy == Proxy::Ipvs,
        })
    }

    /// Stops every probe.
    pub fn stop(self) -> Result<FaultReport, String> {
        let e = |e: LabError| e.to_string();
        Ok(FaultReport {
            stream: self.stream.stop().map_err(e)?,
            connects: self.connects.stop().map_err(e)?,
            udp: self.udp.stop().map_err(e)?,
            dns: self.dns.stop().map_err(e)?,
            watch: self.watch.stop().map_err(e)?,
            ipvs: self.ipvs,
        })
    }
}

impl FaultReport {
    /// Every probe clean: no failed request, the stream never moved, every DNS answer
    /// positive, nothing of the remote withdrawn, and the watcher saw a peer, a route, a
    /// service entry and (IPVS) a VIP, so "nothing withdrawn" means something.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        for (what, c) in [
            ("tcp stream", &self.stream),
            ("tcp connects", &self.connects),
            ("udp", &self.udp),
        ] {
            if c.failures > 0 || c.attempts == 0 {
                p.push(format!("{what}: {c}"));
            }
        }
        if self.stream.answered_by.len() > 1 {
            p.push(format!(
                "the tcp stream moved: {:?}",
                self.stream.answered_by
            ));
        }
        if !self.dns.all_ok() {
            p.push(format!("dns: {}", self.dns));
        }
        if !self.watch.removed.is_empty() || self.watch.poll_errors > 0 {
            p.push(format!(
                "withdrawn: {} {:?}",
                self.watch, self.watch.removed
            ));
        }
        let kinds = self.watch.baseline_kinds();
        let want: &[&str] = if self.ipvs {
            &["peer", "route", "ipvs", "vip"]
        } else {
            &["peer", "route", "nft"]
        };
        if !want.iter().all(|k| kinds.contains_key(*k)) {
            p.push(format!("the watcher saw too little to judge: {kinds:?}"));
        }
        p
    }
}

impl std::fmt::Display for FaultReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tcp stream {}; tcp connects {}; udp {}; dns {}; watcher {}",
            self.stream, self.connects, self.udp, self.dns, self.watch
        )
    }
}

/// Seconds since midnight UTC (the daemon logs UTC RFC 3339 timestamps).
fn seconds_of_day(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() % 86_400.0)
        .unwrap_or(0.0)
}

/// The time of day of a daemon log line (`2026-12-03T13:38:06.129550Z  INFO ...`).
fn log_seconds_of_day(line: &str) -> Option<f64> {
    let stamp = line.split_whitespace().next()?;
    let clock = stamp.split_once('T')?.1.trim_end_matches('Z');
    let mut parts = clock.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// Issue 13 scenario a: kill -9 and restart of one node's daemon with every API server up;
/// traffic, DNS and the kernel objects of the remote stay untouched throughout.
fn faults_kill_restart(lab: &mut Lab, a: &Cluster, b: &Cluster) -> Outcome {
    let node = a.nodes[0].name.clone();
    let r = (|| {
        // The withdrawal watch takes what the node has now as the baseline.
        wait_converged(lab, &a.nodes[0])?;
        let probes = FaultProbes::start(&lab.plan, a, b)?;
        std::thread::sleep(Duration::from_secs(2));
        // The DNS stub's sockets outlive the process in the fd store (src/fdstore.rs
        // stands in for systemd): what is asked while no daemon runs waits in their queues.
        let kept = lab.fd_store.names(&node);
        let log_path = lab.plan.node_dir(&a.nodes[0]).join("daemon.log");
        let log_before = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
        let killed_at = seconds_of_day(std::time::SystemTime::now());
        let restarted = lab.restart_daemon(&node, true);
        if restarted.is_ok() {
            std::thread::sleep(FAULT_OBSERVE);
        }
        let report = probes.stop()?;
        let restarted = restarted.map_err(|e| format!("{e}; probes: {report}"))?;
        let mut problems = report.problems();
        let tcp_kept = kept
            .iter()
            .filter(|n| *n == sdnlinkd::dns::FD_NAME_TCP)
            .count();
        let udp_kept = kept
            .iter()
            .filter(|n| *n == sdnlinkd::dns::FD_NAME_UDP)
            .count();
        if tcp_kept != 1 || udp_kept == 0 {
            problems.push(format!("the fd store held {kept:?} before the kill, not the stub's UDP sockets and one TCP listener"));
        }
        let log = std::fs::read(&log_path)
            .map(|b| String::from_utf8_lossy(&b[log_before as usize..]).into_owned())
            .unwrap_or_default();
        let log = super::quiet::strip_ansi(&log);
        let serving = log
            .lines()
            .find(|l| l.contains("DNS stub answers on the sockets systemd kept"));
        if serving.is_none() {
            problems.push("the new daemon did not log serving DNS on the kept sockets".into());
        }
        // When the new process served again, counted from the kill: the time a stub resolver
        // waits (the first log line shows how much of it the process start took).
        let since_kill = |line: Option<&str>| {
            line.and_then(log_seconds_of_day)
                .map(|t| (t - killed_at + 86_400.0) % 86_400.0)
                .map_or("?".to_string(), |d| format!("{d:.2}s"))
        };
        let detail = format!(
            "kill -9 of {node} (pid {} gone in {:.2}s, new pid {} logged first {} and served DNS {} after the kill on the {udp_kept} UDP + {tcp_kept} TCP sockets the fd store kept, ready in {:.1}s, watched {}s more): {report}",
            restarted.old_pid,
            restarted.stopped.as_secs_f64(),
            restarted.pid,
            since_kill(log.lines().next()),
            since_kill(serving),
            restarted.ready.as_secs_f64(),
            FAULT_OBSERVE.as_secs()
        );
        if problems.is_empty() {
            Ok(detail)
        } else {
            Err(format!("{}; {detail}", problems.join("; ")))
        }
    })();
    outcome(format!("faults-kill-restart {node}"), r)
}

#[cfg(test)]
mod log_time_tests {
    use super::*;

    #[test]
    fn log_timestamps_read_as_seconds_of_day() {
        let t = log_seconds_of_day("2026-12-03T13:38:06.129550Z  INFO DNS stub answers")
            .expect("a daemon log line");
        assert!(
            (t - (13.0 * 3600.0 + 38.0 * 60.0 + 6.129550)).abs() < 1e-6,
            "{t}"
        );
        assert_eq!(log_seconds_of_day("no timestamp here"), None);
        assert_eq!(log_seconds_of_day(""), None);
    }
}
