//! Host-kernel tests of the nftables backend with real traffic (root; needs the `nft` program
//! from Debian's `nftables` package and `ip` from `iproute2`).
//!
//! IP plan of every lab (addresses are per namespace, so labs can run in parallel):
//! - client namespace `sdnt-nf-<tag>-c`: 10.200.0.2/24 on `c1`, default via 10.200.0.1
//! - proxy namespace `sdnt-nf-<tag>-p` (plays sdnlinkd's namespace): 10.200.0.1/24 on `c0`,
//!   10.1.<i>.1/24 on `e<i>`, forwarding on, route 10.97.0.0/16 dev c0 (so that connections
//!   made inside the namespace have a route before the output hook DNATs them)
//! - endpoint namespaces `sdnt-nf-<tag>-e<i>`: 10.1.<i>.2/24 on `x0`, default via 10.1.<i>.1;
//!   TCP :8080 and UDP :5353 answer `e<i>`
//! - IPv6 twins: client fd00:200::2/64, proxy fd00:200::1/64 and fd01:<i>::1/64, endpoints
//!   fd01:<i>::2/64; ClusterIP fd97::10 tcp/80
//! - ClusterIPs 10.97.0.0/16: .10 tcp/80, .53 udp/53, .13 tcp/80 and udp/53 without endpoints

mod common;
use common::{sh, NftMonitor};
use sdnlinkd::model::{Held, Protocol, ServiceKey};
use sdnlinkd::netns::NetNs;
use sdnlinkd::proxy::nft::{nft_available, FullRead, NftBackend};
use sdnlinkd::proxy::{
    DesiredProxy, Destination, ProxyBackend, SyncReport, VirtualKey, VirtualService,
};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(3);

fn nft_in(ns: &str, cmd: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft", cmd])
        .output()
        .expect("spawning nft");
    assert!(
        out.status.success(),
        "nft {cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn nft_try(ns: &str, cmd: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "nft", cmd])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Writes a sysctl of namespace `ns`: /proc/sys/net resolves to the namespace of the thread
/// that opens it, so the write runs on the namespace's worker thread.
fn sysctl(ns: &str, key: &str, value: &str) {
    let path = format!("/proc/sys/{key}");
    let value = value.to_string();
    NetNs::open(ns)
        .expect("namespace")
        .run(move || std::fs::write(&path, value))
        .expect("namespace worker")
        .expect("writing a sysctl");
}

/// Throwaway namespaces with endpoint servers; everything is deleted on drop, even when the
/// test fails.
struct Lab {
    names: Vec<String>,
    stop: Arc<AtomicBool>,
    proxy: String,
    client: NetNs,
    proxy_ns: NetNs,
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

impl Lab {
    fn new(tag: &str, endpoints: u8) -> Lab {
        assert!(
            nft_available(),
            "the nft program (Debian package nftables) is required"
        );
        let p = format!("sdnt-nf-{tag}-p");
        let c = format!("sdnt-nf-{tag}-c");
        let eps: Vec<String> = (1..=endpoints)
            .map(|i| format!("sdnt-nf-{tag}-e{i}"))
            .collect();
        let mut names = vec![p.clone(), c.clone()];
        names.extend(eps.iter().cloned());
        for n in &names {
            // Left over by a killed run.
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut lab = Lab {
            names: vec![],
            stop: stop.clone(),
            proxy: p.clone(),
            client: NetNs::current().expect("current namespace"),
            proxy_ns: NetNs::current().expect("current namespace"),
        };
        for n in &names {
            sh(&["ip", "netns", "add", n]);
            lab.names.push(n.clone());
            sh(&["ip", "-n", n, "link", "set", "lo", "up"]);
            // No duplicate address detection (RFC 4862) on the links made below: a tentative
            // link-local address stalls neighbour discovery for the first second or two.
            sysctl(n, "net/ipv6/conf/default/accept_dad", "0");
        }
        sh(&[
            "ip", "-n", &p, "link", "add", "c0", "type", "veth", "peer", "name", "c1", "netns", &c,
        ]);
        sh(&["ip", "-n", &p, "addr", "add", "10.200.0.1/24", "dev", "c0"]);
        sh(&["ip", "-n", &p, "link", "set", "c0", "up"]);
        sh(&["ip", "-n", &c, "addr", "add", "10.200.0.2/24", "dev", "c1"]);
        sh(&["ip", "-n", &c, "link", "set", "c1", "up"]);
        sh(&[
            "ip",
            "-n",
            &c,
            "route",
            "add",
            "default",
            "via",
            "10.200.0.1",
        ]);
        sh(&["ip", "-n", &p, "route", "add", "10.97.0.0/16", "dev", "c0"]);
        sysctl(&p, "net/ipv4/ip_forward", "1");
        sysctl(&p, "net/ipv6/conf/all/forwarding", "1");
        for (i, e) in eps.iter().enumerate() {
            let i = i + 1;
            let dev = format!("e{i}");
            sh(&[
                "ip", "-n", &p, "link", "add", &dev, "type", "veth", "peer", "name", "x0", "netns",
                e,
            ]);
            sh(&[
                "ip",
                "-n",
                &p,
                "addr",
                "add",
                &format!("10.1.{i}.1/24"),
                "dev",
                &dev,
            ]);
            sh(&["ip", "-n", &p, "link", "set", &dev, "up"]);
            sh(&[
                "ip",
                "-n",
                e,
                "addr",
                "add",
                &format!("10.1.{i}.2/24"),
                "dev",
                "x0",
            ]);
            sh(&["ip", "-n", e, "link", "set", "x0", "up"]);
            sh(&[
                "ip",
                "-n",
                e,
                "route",
                "add",
                "default",
                "via",
                &format!("10.1.{i}.1"),
            ]);
            serve(
                &NetNs::open(e).expect("endpoint namespace"),
                format!("e{i}"),
                stop.clone(),
            );
        }
        // IPv6 twins of the links above.
        let v6: Vec<Vec<String>> = [
            vec!["-n", &p, "addr", "add", "fd00:200::1/64", "dev", "c0"],
            vec!["-n", &c, "addr", "add", "fd00:200::2/64", "dev", "c1"],
            vec![
                "-n",
                &c,
                "-6",
                "route",
                "add",
                "default",
                "via",
                "fd00:200::1",
            ],
            vec!["-n", &p, "-6", "route", "add", "fd97::/108", "dev", "c0"],
        ]
        .into_iter()
        .map(|v| v.into_iter().map(String::from).collect())
        .chain(eps.iter().enumerate().flat_map(|(i, e)| {
            let i = i + 1;
            [
                format!("-n {p} addr add fd01:{i}::1/64 dev e{i}"),
                format!("-n {e} addr add fd01:{i}::2/64 dev x0"),
                format!("-n {e} -6 route add default via fd01:{i}::1"),
            ]
            .map(|l| l.split(' ').map(String::from).collect())
        }))
        .collect();
        for args in &v6 {
            let mut all = vec!["ip"];
            all.extend(args.iter().map(String::as_str));
            sh(&all);
        }
        lab.client = NetNs::open(&c).expect("client namespace");
        lab.proxy_ns = NetNs::open(&p).expect("proxy namespace");
        lab
    }

    fn backend(&self) -> NftBackend {
        NftBackend::new(self.proxy_ns.clone())
    }
}

/// TCP :8080 and UDP :5353 answering `name`, until `stop`.
fn serve(ns: &NetNs, name: String, stop: Arc<AtomicBool>) {
    let (tcp, udp) = ns
        .run(|| -> io::Result<(TcpListener, UdpSocket)> {
            Ok((
                // `[::]` is dual-stack (IPV6_V6ONLY is off by default): one socket per
                // protocol serves both families.
                TcpListener::bind("[::]:8080")?,
                UdpSocket::bind("[::]:5353")?,
            ))
        })
        .expect("namespace worker")
        .expect("binding endpoint servers");
    tcp.set_nonblocking(true).expect("nonblocking listener");
    udp.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("udp timeout");
    let (n1, s1) = (name.clone(), stop.clone());
    std::thread::spawn(move || {
        while !s1.load(Ordering::SeqCst) {
            match tcp.accept() {
                Ok((mut s, _)) => {
                    let _ = s.write_all(n1.as_bytes());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::SeqCst) {
            if let Ok((_, from)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(name.as_bytes(), from);
            }
        }
    });
}

fn tcp_ask(ns: &NetNs, to: SocketAddr) -> io::Result<String> {
    ns.run(move || {
        let mut s = TcpStream::connect_timeout(&to, TIMEOUT)?;
        s.set_read_timeout(Some(TIMEOUT))?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .map_err(io::Error::other)?
}

fn udp_ask(ns: &NetNs, to: SocketAddr) -> io::Result<String> {
    ns.run(move || {
        let s = UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
        s.connect(to)?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.send(b"q")?;
        let mut buf = [0u8; 64];
        let n = s.recv(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .map_err(io::Error::other)?
}

/// Answers to `n` fresh connections, counted per endpoint.
fn spread(n: usize, mut ask: impl FnMut() -> io::Result<String>) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let who = ask().expect("connection through the VIP");
        *seen.entry(who).or_insert(0) += 1;
    }
    seen
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test literal")
}

fn vs(
    vip: &str,
    protocol: Protocol,
    port: u16,
    affinity: Option<u32>,
    dests: &[(&str, u16)],
) -> VirtualService {
    VirtualService {
        key: VirtualKey {
            vip: ip(vip),
            protocol,
            port,
        },
        cluster: "east".into(),
        service: ServiceKey {
            namespace: "default".into(),
            name: vip.into(),
        },
        port_name: String::new(),
        scheduler: sdnlinkd::proxy::Scheduling::RoundRobin,
        affinity_timeout: affinity,
        destinations: dests
            .iter()
            .map(|(a, p)| Destination {
                addr: ip(a),
                port: *p,
            })
            .collect(),
    }
}

fn desired(list: Vec<VirtualService>) -> DesiredProxy {
    DesiredProxy {
        services: list.into_iter().map(|v| (v.key, v)).collect(),
        ..Default::default()
    }
}

fn sync(b: &mut NftBackend, d: &DesiredProxy, full: bool) -> SyncReport {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(b.sync(d, full)).expect("nft sync")
}

/// A full sync, with how it read the kernel.
fn full(b: &mut NftBackend, d: &DesiredProxy) -> (usize, FullRead) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(b.full_sync(d)).expect("nft full sync")
}

fn names(seen: &BTreeMap<String, usize>) -> Vec<String> {
    seen.keys().cloned().collect()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("test literal")
}

#[test]
fn root_nft_child_inherits_thread_namespace() {
    let lab = Lab::new("inh", 0);
    let want = std::fs::metadata(format!("/run/netns/{}", lab.proxy)).expect("pinned namespace");
    let got = lab
        .proxy_ns
        .run(|| Command::new("readlink").arg("/proc/self/ns/net").output())
        .expect("worker")
        .expect("readlink runs");
    let host = std::fs::read_link("/proc/self/ns/net").expect("own namespace");
    use std::os::unix::fs::MetadataExt;
    let got = String::from_utf8_lossy(&got.stdout).trim().to_string();
    assert_eq!(got, format!("net:[{}]", want.ino()));
    assert_ne!(
        std::path::PathBuf::from(&got),
        host,
        "the child must not be in the test's namespace"
    );
}

#[test]
fn root_nft_traffic_reaches_every_endpoint_and_refuses_without_endpoints() {
    let lab = Lab::new("tr", 3);
    let eps = [("10.1.1.2", 8080), ("10.1.2.2", 8080), ("10.1.3.2", 8080)];
    let ueps = [("10.1.1.2", 5353), ("10.1.2.2", 5353), ("10.1.3.2", 5353)];
    let d = desired(vec![
        vs("10.97.0.10", Protocol::Tcp, 80, None, &eps),
        vs("10.97.0.53", Protocol::Udp, 53, None, &ueps),
        vs("10.97.0.13", Protocol::Tcp, 80, None, &[]),
        vs("10.97.0.13", Protocol::Udp, 53, None, &[]),
        vs(
            "fd97::10",
            Protocol::Tcp,
            80,
            None,
            &[
                ("fd01:1::2", 8080),
                ("fd01:2::2", 8080),
                ("fd01:3::2", 8080),
            ],
        ),
        vs("fd97::13", Protocol::Tcp, 80, None, &[]),
    ]);
    let mut b = lab.backend();
    let r = sync(&mut b, &d, false);
    assert!(
        r.full,
        "the first sync has no committed state and must be full"
    );

    let all: Vec<String> = ["e1", "e2", "e3"].iter().map(|s| s.to_string()).collect();
    // From the client namespace through the veth (prerouting), TCP and UDP.
    let tcp = spread(30, || tcp_ask(&lab.client, sa("10.97.0.10:80")));
    assert_eq!(
        tcp.keys().cloned().collect::<Vec<_>>(),
        all,
        "tcp spread {tcp:?}"
    );
    let udp = spread(30, || udp_ask(&lab.client, sa("10.97.0.53:53")));
    assert_eq!(
        udp.keys().cloned().collect::<Vec<_>>(),
        all,
        "udp spread {udp:?}"
    );
    let tcp6 = spread(30, || tcp_ask(&lab.client, sa("[fd97::10]:80")));
    assert_eq!(
        tcp6.keys().cloned().collect::<Vec<_>>(),
        all,
        "tcp6 spread {tcp6:?}"
    );
    let e = tcp_ask(&lab.client, sa("[fd97::13]:80")).expect_err("no endpoints");
    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
    // Connections made inside the namespace itself (output hook).
    let local = spread(30, || tcp_ask(&lab.proxy_ns, sa("10.97.0.10:80")));
    assert_eq!(
        local.keys().cloned().collect::<Vec<_>>(),
        all,
        "local spread {local:?}"
    );

    // No endpoints: refused (TCP reset / ICMP port unreachable), not a timeout.
    for ns in [&lab.client, &lab.proxy_ns] {
        let e = tcp_ask(ns, sa("10.97.0.13:80")).expect_err("no endpoints");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
    }
    let e = udp_ask(&lab.client, sa("10.97.0.13:53")).expect_err("no endpoints");
    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
    // A datagram rejected on the output hook of its own namespace is dropped before it leaves,
    // and the kernel reports the drop to the sender as EPERM at once.
    let e = udp_ask(&lab.proxy_ns, sa("10.97.0.13:53")).expect_err("no endpoints");
    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");

    // A second sync of the same state sends nothing.
    let r = sync(&mut b, &d, false);
    assert!(!r.full);
    assert_eq!(r.operations, 0);
}

#[test]
fn root_nft_affinity_holds_and_endpoint_removal_moves_connections() {
    let lab = Lab::new("af", 3);
    let eps = [("10.1.1.2", 8080), ("10.1.2.2", 8080), ("10.1.3.2", 8080)];
    let mut b = lab.backend();
    sync(
        &mut b,
        &desired(vec![
            vs("10.97.0.20", Protocol::Tcp, 80, Some(600), &eps),
            vs("10.97.0.10", Protocol::Tcp, 80, None, &eps[..2]),
        ]),
        true,
    );
    let sticky = spread(20, || tcp_ask(&lab.client, sa("10.97.0.20:80")));
    assert_eq!(
        sticky.len(),
        1,
        "affinity must keep one client on one endpoint: {sticky:?}"
    );
    let chosen = sticky.keys().next().cloned().expect("one endpoint");
    let plain = spread(20, || tcp_ask(&lab.client, sa("10.97.0.10:80")));
    assert_eq!(
        plain.len(),
        2,
        "without affinity both endpoints answer: {plain:?}"
    );

    // Remove the chosen endpoint from the affinity service and e1 from the plain one.
    let idx: usize = chosen[1..].parse().expect("endpoint name e<i>");
    let rest: Vec<(&str, u16)> = eps
        .iter()
        .enumerate()
        .filter(|(i, _)| i + 1 != idx)
        .map(|(_, e)| *e)
        .collect();
    let r = sync(
        &mut b,
        &desired(vec![
            vs("10.97.0.20", Protocol::Tcp, 80, Some(600), &rest),
            vs("10.97.0.10", Protocol::Tcp, 80, None, &eps[1..2]),
        ]),
        false,
    );
    assert!(!r.full, "an endpoint change is an incremental sync");
    // Per service: flush svc chain, flush + delete ep chain, delete its set, rewrite rules.
    assert!(
        r.operations <= 12,
        "endpoint removal cost {} commands",
        r.operations
    );
    let moved = spread(20, || tcp_ask(&lab.client, sa("10.97.0.20:80")));
    assert_eq!(moved.len(), 1, "affinity holds after the move: {moved:?}");
    assert!(
        !moved.contains_key(&chosen),
        "removed endpoint still chosen: {moved:?}"
    );
    let plain = spread(20, || tcp_ask(&lab.client, sa("10.97.0.10:80")));
    assert_eq!(
        plain.keys().cloned().collect::<Vec<_>>(),
        vec!["e2".to_string()]
    );
}

#[test]
fn root_nft_full_sync_repairs_drift_and_spares_foreign_tables() {
    let lab = Lab::new("rp", 2);
    let p = lab.proxy.clone();
    nft_in(&p, "add table ip foreign");
    nft_in(
        &p,
        "add set ip foreign s { type ipv4_addr; elements = { 192.0.2.1 }; }",
    );
    nft_in(
        &p,
        "add chain ip foreign c { type filter hook input priority 0; policy accept; }",
    );
    nft_in(&p, "add rule ip foreign c ip saddr @s counter accept");
    let foreign = nft_in(&p, "list table ip foreign");

    let eps = [("10.1.1.2", 8080), ("10.1.2.2", 8080)];
    let d = desired(vec![
        vs("10.97.0.10", Protocol::Tcp, 80, None, &eps),
        vs("10.97.0.11", Protocol::Tcp, 80, None, &eps),
    ]);
    let mut b = lab.backend();
    sync(&mut b, &d, true);
    assert!(tcp_ask(&lab.client, sa("10.97.0.10:80")).is_ok());

    // Out-of-band: the map elements of both services and the selection chain they share
    // deleted (the kernel refuses to delete a chain something points at), a stale chain added.
    for vip in ["10.97.0.10", "10.97.0.11"] {
        nft_in(
            &p,
            &format!("delete element inet sdnlink service-ips {{ {vip} . tcp . 80 }}"),
        );
    }
    nft_in(&p, "delete chain inet sdnlink pick4-tcp-random-2");
    nft_in(&p, "add chain inet sdnlink svc-stale");
    assert!(!nft_try(&p, "list chain inet sdnlink pick4-tcp-random-2"));

    let r = sync(&mut b, &d, true);
    assert!(r.full);
    assert!(
        nft_try(&p, "list chain inet sdnlink pick4-tcp-random-2"),
        "chain repaired"
    );
    assert!(
        !nft_try(&p, "list chain inet sdnlink svc-stale"),
        "stale chain removed"
    );
    let seen = spread(20, || tcp_ask(&lab.client, sa("10.97.0.10:80")));
    assert_eq!(seen.len(), 2, "repaired service balances again: {seen:?}");

    // Out-of-band deletion, then an incremental sync that deletes that element (to point the
    // service at the one-endpoint chain): the transaction fails as a whole and the backend
    // falls back to a full sync.
    nft_in(
        &p,
        "delete element inet sdnlink service-ips { 10.97.0.11 . tcp . 80 }",
    );
    let d2 = desired(vec![
        vs("10.97.0.10", Protocol::Tcp, 80, None, &eps),
        vs("10.97.0.11", Protocol::Tcp, 80, None, &eps[..1]),
    ]);
    let r = sync(&mut b, &d2, false);
    assert!(
        r.full,
        "a failed incremental sync must fall back to a full one"
    );
    let seen = spread(10, || tcp_ask(&lab.client, sa("10.97.0.11:80")));
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        vec!["e1".to_string()]
    );

    assert_eq!(
        nft_in(&p, "list table ip foreign"),
        foreign,
        "foreign table untouched by syncs"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(b.cleanup()).expect("cleanup");
    rt.block_on(b.cleanup()).expect("cleanup is idempotent");
    assert!(!nft_try(&p, "list table inet sdnlink"), "our table is gone");
    assert_eq!(
        nft_in(&p, "list table ip foreign"),
        foreign,
        "foreign table untouched by cleanup"
    );
}

#[test]
fn root_nft_consistent_scheduler_hashes_the_client() {
    let lab = Lab::new("sh", 3);
    let eps = [("10.1.1.2", 8080), ("10.1.2.2", 8080), ("10.1.3.2", 8080)];
    let mut hashed = vs("10.97.0.30", Protocol::Tcp, 80, None, &eps);
    hashed.scheduler = sdnlinkd::proxy::Scheduling::SourceHash;
    let mut b = lab.backend();
    sync(&mut b, &desired(vec![hashed]), true);
    // Source hashing: one client address always lands on one endpoint, without any state.
    let seen = spread(20, || tcp_ask(&lab.client, sa("10.97.0.30:80")));
    assert_eq!(
        seen.len(),
        1,
        "sh must pin a client to one endpoint: {seen:?}"
    );
    let seen = spread(20, || tcp_ask(&lab.proxy_ns, sa("10.97.0.30:80")));
    assert_eq!(
        seen.len(),
        1,
        "sh must pin a client to one endpoint: {seen:?}"
    );
}

#[test]
fn root_nft_idle_full_syncs_write_nothing() {
    let lab = Lab::new("idle", 2);
    let p = lab.proxy.clone();
    let eps = [("10.1.1.2", 8080), ("10.1.2.2", 8080)];
    let d = desired(vec![
        vs("10.97.0.10", Protocol::Tcp, 80, None, &eps),
        vs("10.97.0.53", Protocol::Udp, 53, None, &[("10.1.1.2", 5353)]),
        vs("10.97.0.20", Protocol::Tcp, 80, Some(600), &eps),
        vs("10.97.0.13", Protocol::Tcp, 80, None, &[]),
        vs("fd97::10", Protocol::Tcp, 80, None, &[("fd01:1::2", 8080)]),
    ]);
    let mut b = lab.backend();
    sync(&mut b, &d, true);
    let mut mon = NftMonitor::start(&p);

    // The monitor's marker was a commit: the first full sync lists the table and compares;
    // the next ones see that nothing was committed since.
    assert_eq!(full(&mut b, &d), (0, FullRead::Listing));
    assert_eq!(full(&mut b, &d), (0, FullRead::Generation));
    let r = sync(&mut b, &d, true);
    assert!(r.full);
    assert_eq!(r.operations, 0);
    let lines = mon.lines_until_marker();
    assert!(lines.is_empty(), "3 idle full syncs wrote: {lines:#?}");

    // A commit of someone else moves the generation: every full sync lists again, and still
    // writes nothing.
    for i in 0..3 {
        nft_in(&p, &format!("add table ip foreign{i}"));
        assert_eq!(full(&mut b, &d), (0, FullRead::Listing));
    }
    let lines = mon.lines_until_marker();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("# new generation"))
            .count(),
        3,
        "only the three foreign commits: {lines:#?}"
    );
    assert!(lines.iter().all(|l| !l.contains("sdnlink")), "{lines:#?}");
    let seen = spread(20, || tcp_ask(&lab.client, sa("10.97.0.10:80")));
    assert_eq!(names(&seen), ["e1", "e2"]);
}

#[test]
fn root_nft_drift_is_repaired_by_a_small_transaction_and_traffic_recovers() {
    let lab = Lab::new("dr", 2);
    let p = lab.proxy.clone();
    let eps = [("10.1.1.2", 8080), ("10.1.2.2", 8080)];
    let d = desired(vec![
        vs("10.97.0.10", Protocol::Tcp, 80, None, &eps),
        vs("10.97.0.11", Protocol::Tcp, 80, None, &eps),
    ]);
    let mut b = lab.backend();
    sync(&mut b, &d, true);
    let mut mon = NftMonitor::start(&p);

    // One endpoint element deleted out of band: one command puts it back.
    nft_in(
        &p,
        "delete element inet sdnlink endpoints-tcp { 10.97.0.10 . 80 . 1 }",
    );
    assert_eq!(mon.lines_until_marker().len(), 2, "the out-of-band delete");
    assert_eq!(full(&mut b, &d), (1, FullRead::Listing));
    let lines = mon.lines_until_marker();
    assert_eq!(
        lines[0],
        "add element inet sdnlink endpoints-tcp { 10.97.0.10 . 80 . 1 : 10.1.2.2 . 8080 }"
    );
    assert_eq!(lines.len(), 2, "one element, one transaction: {lines:#?}");
    let seen = spread(20, || tcp_ask(&lab.client, sa("10.97.0.10:80")));
    assert_eq!(
        names(&seen),
        ["e1", "e2"],
        "repaired service balances again"
    );

    // One verdict map element deleted out of band: one command puts it back.
    nft_in(
        &p,
        "delete element inet sdnlink service-ips { 10.97.0.11 . tcp . 80 }",
    );
    mon.lines_until_marker();
    assert_eq!(full(&mut b, &d), (1, FullRead::Listing));
    let lines = mon.lines_until_marker();
    assert_eq!(
        lines[0],
        "add element inet sdnlink service-ips { 10.97.0.11 . tcp . 80 : goto pick4-tcp-random-2 }"
    );
    assert_eq!(lines.len(), 2, "one element, one transaction: {lines:#?}");

    // The selection chain both services share deleted out of band (their map elements first:
    // the kernel refuses to delete a chain something points at).
    for vip in ["10.97.0.10", "10.97.0.11"] {
        nft_in(
            &p,
            &format!("delete element inet sdnlink service-ips {{ {vip} . tcp . 80 }}"),
        );
    }
    nft_in(&p, "delete chain inet sdnlink pick4-tcp-random-2");
    mon.lines_until_marker();
    let (ops, read) = full(&mut b, &d);
    assert_eq!(read, FullRead::Listing);
    assert_eq!(
        ops, 3,
        "add chain, its rule, one command for both map elements"
    );
    let lines = mon.lines_until_marker();
    let objects: Vec<&String> = lines.iter().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(objects.len(), 4, "chain, rule, two elements: {lines:#?}");
    assert!(
        objects
            .iter()
            .all(|l| l.starts_with("add ") && l.contains("pick4-tcp-random-2")),
        "only the deleted chain and what points at it are written: {lines:#?}"
    );
    for vip in ["10.97.0.10:80", "10.97.0.11:80"] {
        let seen = spread(20, || tcp_ask(&lab.client, sa(vip)));
        assert_eq!(names(&seen), ["e1", "e2"], "{vip} answers again");
    }

    // A rule edited out of band: its chain alone is rewritten.
    nft_in(&p, "flush chain inet sdnlink pick4-tcp-random-2");
    nft_in(
        &p,
        "add rule inet sdnlink pick4-tcp-random-2 meta l4proto tcp dnat ip to 10.1.1.2:8080",
    );
    mon.lines_until_marker();
    let seen = spread(20, || tcp_ask(&lab.client, sa("10.97.0.10:80")));
    assert_eq!(names(&seen), ["e1"], "the edited rule is in force");
    let (ops, _) = full(&mut b, &d);
    assert_eq!(ops, 2, "flush the chain, add its rule");
    let seen = spread(20, || tcp_ask(&lab.client, sa("10.97.0.10:80")));
    assert_eq!(names(&seen), ["e1", "e2"]);
    let lines = mon.lines_until_marker();
    assert!(
        lines
            .iter()
            .filter(|l| !l.starts_with('#'))
            .all(|l| l.contains("pick4-tcp-random-2")),
        "{lines:#?}"
    );

    // A whole kind of selection chains going away (the last service of it removed) deletes
    // chains that still hold their rule, without flushing them first.
    let d = desired(vec![vs("10.97.0.53", Protocol::Udp, 53, None, &eps[..1])]);
    let r = sync(&mut b, &d, false);
    assert!(!r.full, "{r:?}");
    assert!(!nft_try(&p, "list chain inet sdnlink pick4-tcp-random-2"));
    assert!(nft_try(&p, "list chain inet sdnlink pick4-udp-random-1"));
    assert_eq!(full(&mut b, &d).0, 0, "the kernel holds what was committed");
}

/// West (10.98.0.0/16) has not listed in this run: what the kernel has for it stays, and its
/// endpoints only grow, until it lists.
#[test]
fn root_nft_held_cluster_keeps_services_until_it_lists() {
    let lab = Lab::new("hd", 3);
    let p = lab.proxy.clone();
    let east = vs("10.97.0.10", Protocol::Tcp, 80, None, &[("10.1.1.2", 8080)]);
    let west = |eps: &[(&str, u16)]| {
        let mut v = vs("10.98.0.20", Protocol::Tcp, 80, None, eps);
        v.cluster = "west".into();
        v
    };
    let both = [("10.1.2.2", 8080), ("10.1.3.2", 8080)];
    let held = Held {
        cidrs: vec![("west".into(), "10.98.0.0/16".parse().expect("literal"))],
    };
    let mut b = lab.backend();
    sync(&mut b, &desired(vec![east.clone(), west(&both)]), true);
    let west_vip = sa("10.98.0.20:80");
    assert_eq!(
        names(&spread(20, || tcp_ask(&lab.client, west_vip))),
        ["e2", "e3"]
    );

    // A restart (a new backend, nothing committed) while west has not listed and has no
    // snapshot: the desired state lacks its Service.
    let mut b = lab.backend();
    let mut mon = NftMonitor::start(&p);
    let mut d = desired(vec![east.clone()]);
    d.held = held.clone();
    let r = sync(&mut b, &d, true);
    assert_eq!(r.operations, 0, "nothing of west is withdrawn");
    // A persisted snapshot that knows one endpoint only: the union stays.
    let mut d = desired(vec![east.clone(), west(&both[..1])]);
    d.held = held.clone();
    assert_eq!(sync(&mut b, &d, false).operations, 0);
    assert_eq!(sync(&mut b, &d, true).operations, 0);
    let lines = mon.lines_until_marker();
    assert!(lines.is_empty(), "held state written: {lines:#?}");
    assert_eq!(
        names(&spread(20, || tcp_ask(&lab.client, west_vip))),
        ["e2", "e3"]
    );

    // West lists: its state is what it says.
    let d = desired(vec![east.clone(), west(&both[..1])]);
    assert!(sync(&mut b, &d, false).operations > 0);
    assert_eq!(
        names(&spread(20, || tcp_ask(&lab.client, west_vip))),
        ["e2"]
    );
    let d = desired(vec![east]);
    sync(&mut b, &d, false);
    let listing = nft_in(&p, "list map inet sdnlink service-ips");
    assert!(!listing.contains("10.98.0.20"), "{listing}");
}
