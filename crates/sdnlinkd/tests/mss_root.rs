//! Host-kernel tests of the tunnel's own nft tables, the TCP MSS clamp and the inbound filter
//! (root; needs `ip` and `nft`).
//!
//! Three namespaces in a row: client `c` (10.201.0.2) -> router `r` -> server `s` (10.201.1.2).
//! The router plays sdnlinkd's namespace and its veth toward the server plays the tunnel
//! interface `tun0`. Every link has MTU 1500, so without the clamp both ends agree on an MSS of
//! 1460; with the clamp for a 1420-byte tunnel, the client's SYN (leaving through `tun0`) and the
//! server's SYN-ACK (arriving through `tun0`) both carry at most 1380.

mod common;
use common::{sh, NftMonitor};
use nix::sys::socket::{getsockopt, sockopt::TcpMaxSeg};
use sdnlinkd::netns::NetNs;
use sdnlinkd::proxy::nft::owned::TableSync as ClampSync;
use sdnlinkd::tunnel::inbound::InboundFilter;
use sdnlinkd::tunnel::mss::{MssClamp, TABLE};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

struct Lab {
    tag: String,
}

impl Lab {
    /// `name` keeps the namespaces of tests running in parallel apart.
    fn new(name: &str) -> Lab {
        let lab = Lab {
            tag: format!("sdnt-mss-{name}-{}", std::process::id()),
        };
        let (c, r, s) = (lab.ns("c"), lab.ns("r"), lab.ns("s"));
        for n in [&c, &r, &s] {
            // A leftover of a killed earlier run with the same pid.
            let _ = Command::new("ip").args(["netns", "del", n]).output();
            sh(&["ip", "netns", "add", n]);
            sh(&["ip", "-n", n, "link", "set", "lo", "up"]);
        }
        sh(&[
            "ip", "-n", &c, "link", "add", "c1", "type", "veth", "peer", "c0", "netns", &r,
        ]);
        sh(&[
            "ip", "-n", &s, "link", "add", "s1", "type", "veth", "peer", "tun0", "netns", &r,
        ]);
        for (n, dev, addr) in [
            (&c, "c1", "10.201.0.2/24"),
            (&r, "c0", "10.201.0.1/24"),
            (&r, "tun0", "10.201.1.1/24"),
            (&s, "s1", "10.201.1.2/24"),
        ] {
            sh(&["ip", "-n", n, "addr", "add", addr, "dev", dev]);
            sh(&["ip", "-n", n, "link", "set", dev, "up"]);
        }
        for (n, gw) in [(&c, "10.201.0.1"), (&s, "10.201.1.1")] {
            sh(&["ip", "-n", n, "route", "add", "default", "via", gw]);
        }
        sh(&[
            "ip",
            "netns",
            "exec",
            &r,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        lab
    }

    fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.tag)
    }

    /// One connection client -> server: the MSS each end settled on (client, server), as
    /// TCP_MAXSEG reports it (the peer's advertised MSS less this end's TCP options).
    fn mss_pair(&self, port: u16) -> (u32, u32) {
        let addr: SocketAddr = format!("10.201.1.2:{port}").parse().expect("addr");
        let listener = NetNs::open(&self.ns("s"))
            .expect("server ns")
            .run(move || TcpListener::bind(addr))
            .expect("server ns worker")
            .expect("bind");
        let server = std::thread::spawn(move || {
            let (conn, _) = listener.accept().expect("accept");
            getsockopt(&conn, TcpMaxSeg).expect("server TCP_MAXSEG")
        });
        let mut conn = NetNs::open(&self.ns("c"))
            .expect("client ns")
            .run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
            .expect("client ns worker")
            .expect("connect through the router");
        conn.write_all(b"x").expect("write");
        let client = getsockopt(&conn, TcpMaxSeg).expect("client TCP_MAXSEG");
        (client, server.join().expect("server thread"))
    }

    /// A listener on `addr` in namespace `role` (the kernel completes handshakes into its
    /// backlog, no accept needed).
    fn listen(&self, role: &str, addr: &str) -> TcpListener {
        let addr: SocketAddr = addr.parse().expect("addr");
        NetNs::open(&self.ns(role))
            .expect("ns")
            .run(move || TcpListener::bind(addr))
            .expect("ns worker")
            .expect("bind")
    }

    /// A TCP connection from namespace `role` to `addr`, or the error (a dropped SYN times out
    /// after 1 s; a refused one fails at once).
    fn connect(&self, role: &str, addr: &str) -> std::io::Result<TcpStream> {
        let addr: SocketAddr = addr.parse().expect("addr");
        NetNs::open(&self.ns(role))
            .expect("ns")
            .run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(1)))
            .expect("ns worker")
    }

    fn nft(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns("r"), "nft"])
            .args(args)
            .output()
            .expect("spawning nft");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for role in ["c", "r", "s"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(role)])
                .status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_mss_clamp_lowers_syn_and_syn_ack_and_repairs_drift() {
    let lab = Lab::new("clamp");
    let (c0, s0) = lab.mss_pair(7001);
    assert!(
        c0 > 1380 && s0 > 1380,
        "without the clamp both ends use the 1500-byte links' MSS: client {c0}, server {s0}"
    );

    let mut clamp = MssClamp::new(NetNs::open(&lab.ns("r")).expect("router ns"));
    let first = clamp.sync("tun0", 1420, true).await.expect("first sync");
    assert_eq!(first, ClampSync::Applied);
    let (c1, s1) = lab.mss_pair(7002);
    assert!(
        s1 <= 1380,
        "the client's SYN left through tun0: the server must see MSS <= 1380, got {s1}"
    );
    assert!(
        c1 <= 1380,
        "the server's SYN-ACK arrived through tun0: the client must see MSS <= 1380, got {c1}"
    );

    // The kernel's listing is recognised as ours: nothing is rewritten.
    assert_eq!(
        clamp.sync("tun0", 1420, true).await.expect("full again"),
        ClampSync::Unchanged
    );
    assert_eq!(
        clamp.sync("tun0", 1420, false).await.expect("incremental"),
        ClampSync::Unchanged
    );

    // Deleted out of band: the full sync puts it back.
    let table: Vec<&str> = TABLE.split(' ').collect();
    assert!(lab.nft(&["delete", "table", table[0], table[1]]).0);
    assert_eq!(
        clamp.sync("tun0", 1420, true).await.expect("repair"),
        ClampSync::Applied
    );
    assert!(lab.nft(&["list", "table", table[0], table[1]]).0);

    // A new tunnel MTU replaces the rules in one transaction.
    assert_eq!(
        clamp.sync("tun0", 1300, false).await.expect("new mtu"),
        ClampSync::Applied
    );
    let (ok, listing) = lab.nft(&["list", "table", table[0], table[1]]);
    assert!(ok);
    assert!(
        listing.contains("maxseg size set 1260") && !listing.contains("maxseg size set 1380"),
        "{listing}"
    );
    let (c2, s2) = lab.mss_pair(7003);
    assert!(c2 <= 1260 && s2 <= 1260, "client {c2}, server {s2}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_mss_idle_full_syncs_write_nothing_and_drift_is_repaired_per_chain() {
    let lab = Lab::new("idle");
    let mut clamp = MssClamp::new(NetNs::open(&lab.ns("r")).expect("router ns"));
    assert_eq!(
        clamp.sync("tun0", 1420, true).await.expect("first sync"),
        ClampSync::Applied
    );
    let mut mon = NftMonitor::start(&lab.ns("r"));
    for _ in 0..3 {
        assert_eq!(
            clamp
                .sync("tun0", 1420, true)
                .await
                .expect("idle full sync"),
            ClampSync::Unchanged
        );
    }
    let lines = mon.lines_until_marker();
    assert!(lines.is_empty(), "3 idle full syncs wrote: {lines:#?}");

    // The IPv4 rule of the outgoing direction deleted out of band: the client's SYN leaves
    // through tun0 unclamped.
    let (_, listing) = lab.nft(&["-a", "list", "chain", "inet", "sdnlink-mss", "postrouting"]);
    let handle = listing
        .lines()
        .find(|l| l.contains("nfproto ipv4"))
        .and_then(|l| l.rsplit("# handle ").next())
        .map(|h| h.trim().to_string())
        .expect("the ipv4 rule and its handle");
    assert!(
        lab.nft(&[
            "delete",
            "rule",
            "inet",
            "sdnlink-mss",
            "postrouting",
            "handle",
            &handle
        ])
        .0
    );
    let (_, s0) = lab.mss_pair(7011);
    assert!(
        s0 > 1380,
        "without the rule the server sees the client's MSS: {s0}"
    );
    mon.lines_until_marker();

    assert_eq!(
        clamp.sync("tun0", 1420, true).await.expect("repair"),
        ClampSync::Applied
    );
    let lines = mon.lines_until_marker();
    let objects: Vec<&String> = lines.iter().filter(|l| !l.starts_with('#')).collect();
    assert!(!objects.is_empty());
    assert!(
        objects
            .iter()
            .all(|l| l.contains("postrouting") && !l.contains("table")),
        "only the drifted chain is rewritten: {lines:#?}"
    );
    let (c1, s1) = lab.mss_pair(7012);
    assert!(c1 <= 1380 && s1 <= 1380, "client {c1}, server {s1}");
}

/// The router `r` plays sdnlinkd's namespace, `tun0` its tunnel and `s` a remote node; the
/// client side `c` holds the local pod CIDR 10.201.0.0/24 and a host address 10.202.0.2 that
/// is not in it. From the tunnel only traffic to the pod CIDR and replies pass: the namespace's
/// own address and the host address are unreachable, while the host and the namespace still
/// reach the remote side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_inbound_filter_passes_pods_and_replies_and_drops_the_rest() {
    let lab = Lab::new("inbound");
    let (c, r) = (lab.ns("c"), lab.ns("r"));
    sh(&["ip", "-n", &c, "addr", "add", "10.202.0.2/32", "dev", "c1"]);
    sh(&[
        "ip",
        "-n",
        &c,
        "route",
        "add",
        "10.201.1.0/24",
        "via",
        "10.201.0.1",
        "src",
        "10.202.0.2",
    ]);
    sh(&[
        "ip",
        "-n",
        &r,
        "route",
        "add",
        "10.202.0.2/32",
        "via",
        "10.201.0.2",
    ]);
    let _pod = lab.listen("c", "10.201.0.2:7101");
    let _host = lab.listen("c", "10.202.0.2:7102");
    let _own = lab.listen("r", "10.201.1.1:7103");
    let _remote = lab.listen("s", "10.201.1.2:7104");
    for to in ["10.201.0.2:7101", "10.202.0.2:7102", "10.201.1.1:7103"] {
        lab.connect("s", to)
            .unwrap_or_else(|e| panic!("without the filter the remote side reaches {to}: {e}"));
    }

    let mut filter = InboundFilter::new(NetNs::open(&r).expect("router ns"));
    let pods = ["10.201.0.0/24".parse().expect("literal CIDR")];
    assert_eq!(
        filter.sync("tun0", &pods, true).await.expect("first sync"),
        ClampSync::Applied
    );
    lab.connect("s", "10.201.0.2:7101")
        .expect("the remote side reaches a local pod through the tunnel");
    for to in ["10.202.0.2:7102", "10.201.1.1:7103"] {
        let e = lab.connect("s", to).expect_err("dropped from the tunnel");
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{to}: {e}");
    }
    lab.connect("c", "10.201.1.2:7104")
        .expect("replies to the host address (forwarded, established) pass");
    lab.connect("r", "10.201.1.2:7104")
        .expect("replies to the namespace itself (input, established) pass");

    let mut mon = NftMonitor::start(&r);
    assert_eq!(
        filter
            .sync("tun0", &pods, true)
            .await
            .expect("idle full sync"),
        ClampSync::Unchanged
    );
    let lines = mon.lines_until_marker();
    assert!(lines.is_empty(), "an idle full sync wrote: {lines:#?}");
}
