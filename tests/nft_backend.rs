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
use common::sh;
use sdnlinkd::model::{Protocol, ServiceKey};
use sdnlinkd::netns::NetNs;
use sdnlinkd::proxy::nft::{nft_available, NftBackend};
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
        scheduler: "rr".into(),
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

    // Out-of-band: our service's map element and chains deleted, a stale chain added, a base
    // chain's rule removed.
    nft_in(
        &p,
        "delete element inet sdnlink service-ips { 10.97.0.10 . tcp . 80 }",
    );
    nft_in(&p, "flush chain inet sdnlink svc-10.97.0.10-tcp-80");
    nft_in(&p, "delete chain inet sdnlink svc-10.97.0.10-tcp-80");
    nft_in(&p, "add chain inet sdnlink svc-stale");
    assert!(!nft_try(
        &p,
        "list chain inet sdnlink svc-10.97.0.10-tcp-80"
    ));

    let r = sync(&mut b, &d, true);
    assert!(r.full);
    assert!(
        nft_try(&p, "list chain inet sdnlink svc-10.97.0.10-tcp-80"),
        "chain repaired"
    );
    assert!(
        !nft_try(&p, "list chain inet sdnlink svc-stale"),
        "stale chain removed"
    );
    let seen = spread(20, || tcp_ask(&lab.client, sa("10.97.0.10:80")));
    assert_eq!(seen.len(), 2, "repaired service balances again: {seen:?}");

    // Out-of-band deletion, then an incremental sync touching that chain: the transaction
    // fails as a whole and the backend falls back to a full sync.
    nft_in(
        &p,
        "delete element inet sdnlink service-ips { 10.97.0.11 . tcp . 80 }",
    );
    nft_in(&p, "flush chain inet sdnlink svc-10.97.0.11-tcp-80");
    nft_in(&p, "delete chain inet sdnlink svc-10.97.0.11-tcp-80");
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
    hashed.scheduler = "sh".into();
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
