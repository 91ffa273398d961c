//! Root tests of the node plumbing. Each runs against a throwaway "host" namespace and a
//! throwaway sdnlinkd namespace (prefix `sdnt-nd-`), so the machine's real network is never
//! touched; a Drop guard removes both even when an assertion fails.

use sdnlinkd::config::{parse_str, Config};
use sdnlinkd::netns::NetNs;
use sdnlinkd::node::{self, NodeDesired, NodeError, NodeExtras, Plumbing};
use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

const PROTO: u8 = 245;

struct Env {
    host_name: String,
    ns_name: String,
    host: NetNs,
    cfg: Config,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = node::remove_namespace(&self.ns_name);
        let _ = node::remove_namespace(&self.host_name);
    }
}

fn env(tag: &str) -> Env {
    let host_name = format!("sdnt-nd-{tag}-h");
    let ns_name = format!("sdnt-nd-{tag}-n");
    // Leftovers of an aborted earlier run.
    let _ = node::remove_namespace(&ns_name);
    let _ = node::remove_namespace(&host_name);
    assert!(node::ensure_namespace(&host_name).expect("host namespace"));
    let host = NetNs::open(&host_name).expect("open host namespace");
    let toml = format!(
        r#"
[local]
name = "east"
pod_cidrs = ["10.128.0.0/14"]
service_cidrs = ["172.30.0.0/16"]
node_name = "node-1"
[namespace]
name = "{ns_name}"
route_protocol = {PROTO}
[tunnel]
# Never read: keeps validation away from the machine's real key file, which other tests
# create and chmod concurrently.
private_key_file = "/nonexistent/sdnt-nd/private.key"
[dns]
upstreams = ["192.0.2.53"]
[[remote]]
name = "west"
pod_cidrs = ["10.132.0.0/14"]
service_cidrs = ["172.31.0.0/16"]
[[remote.peers]]
public_key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
endpoint = "198.51.100.7:51820"
allowed_ips = ["10.132.0.0/23"]
"#
    );
    let cfg = parse_str(&toml).expect("test config is valid");
    Env {
        host_name,
        ns_name,
        host,
        cfg,
    }
}

impl Env {
    fn plumbing(&self) -> Plumbing {
        assert!(node::ensure_namespace(&self.ns_name).is_ok());
        let ns = NetNs::open(&self.ns_name).expect("open sdnlinkd namespace");
        Plumbing::new(&self.cfg, self.host.clone(), ns)
    }

    fn desired(&self, vips: &[&str]) -> NodeDesired {
        let extras = NodeExtras {
            tunnel_routes: vec!["10.132.0.0/23".parse().expect("literal")],
            vips: vips
                .iter()
                .map(|v| v.parse::<IpAddr>().expect("literal"))
                .collect(),
        };
        NodeDesired::from_config(&self.cfg, &extras)
    }

    /// `ip -n <ns> args...` output; panics with stderr on failure.
    fn ip(&self, ns: &str, args: &[&str]) -> String {
        let out = Command::new("ip")
            .arg("-n")
            .arg(ns)
            .args(args)
            .output()
            .expect("running ip");
        assert!(
            out.status.success(),
            "ip -n {ns} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn host_snapshot(&self) -> String {
        let h = &self.host_name;
        [
            self.ip(h, &["-d", "link"]),
            self.ip(h, &["addr"]),
            self.ip(
                h,
                &["route", "show", "table", "all", "proto", &PROTO.to_string()],
            ),
        ]
        .join("\n--\n")
    }

    /// Whether one echo reply comes back within 5 s (`-w`: keep sending until then; a veth
    /// that just came up drops packets until link watch marks it operational).
    fn ping(&self, ns: &str, dst: &str) -> Result<(), String> {
        let out = Command::new("ip")
            .args([
                "netns", "exec", ns, "ping", "-c", "1", "-i", "0.2", "-w", "5", dst,
            ])
            .output()
            .expect("running ping");
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }

    fn sysctl(&self, ns: &str, key: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "sysctl", "-n", key])
            .output()
            .expect("running sysctl");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

#[tokio::test]
async fn root_create_adopt_incremental_cleanup() {
    let e = env("life");
    let before = e.host_snapshot();
    let d = e.desired(&[]);

    let mut p = e.plumbing();
    let r = p.sync(&d, true).await.expect("first sync");
    assert!(r.full);
    assert!(r.ops.len() >= 10, "{:#?}", r.ops);
    assert_eq!(
        r.skipped_routes,
        vec!["10.132.0.0/23".parse().expect("literal")]
    );

    let hr = e.ip(&e.host_name, &["route", "show", "proto", "245"]);
    assert!(
        hr.contains("10.132.0.0/14 via 169.254.100.2 dev sdnlink0"),
        "{hr}"
    );
    assert!(
        hr.contains("172.31.0.0/16 via 169.254.100.2 dev sdnlink0"),
        "{hr}"
    );
    let dns = e.cfg.dns.address.to_string();
    assert!(
        hr.contains(&format!("{dns} via 169.254.100.2 dev sdnlink0")),
        "{hr}"
    );
    let nr = e.ip(&e.ns_name, &["route", "show", "proto", "245"]);
    assert!(
        nr.contains("10.128.0.0/14 via 169.254.100.1 dev eth0"),
        "{nr}"
    );
    let na = e.ip(&e.ns_name, &["addr", "show", "dev", "eth0"]);
    assert!(na.contains("inet 169.254.100.2/30"), "{na}");
    assert!(na.contains(&format!("inet {dns}/32")), "{na}");
    let hl = e.ip(&e.host_name, &["-d", "link", "show", "sdnlink0"]);
    assert!(
        hl.contains("veth") && hl.contains("mtu 1500") && hl.contains("UP"),
        "{hl}"
    );

    // Nothing changed: a full sync finds nothing to do.
    let r = p.sync(&d, true).await.expect("second sync");
    assert_eq!(r.operations(), 0, "{r:#?}");

    // "Restart": a fresh Plumbing with fresh handles adopts everything with zero operations.
    drop(p);
    let mut p = e.plumbing();
    let r = p.sync(&d, true).await.expect("sync after restart");
    assert_eq!(r.operations(), 0, "{r:#?}");

    // Incremental: one VIP more is one operation; one VIP fewer is one operation.
    let d2 = e.desired(&["172.31.0.10"]);
    let r = p.sync(&d2, false).await.expect("incremental add");
    assert!(!r.full);
    assert_eq!(
        r.ops,
        vec!["ns: ip addr add 172.31.0.10/32 dev eth0".to_string()]
    );
    let na = e.ip(&e.ns_name, &["addr", "show", "dev", "eth0"]);
    assert!(na.contains("inet 172.31.0.10/32"), "{na}");
    // End to end: the host reaches the VIP and the DNS address in the namespace.
    e.ping(&e.host_name, "172.31.0.10")
        .expect("ping from host to the VIP");
    e.ping(&e.host_name, &dns)
        .expect("ping from host to the DNS address");
    let r = p.sync(&d, false).await.expect("incremental del");
    assert_eq!(
        r.ops,
        vec!["ns: ip addr del 172.31.0.10/32 dev eth0".to_string()]
    );
    // The removed VIP no longer answers (the namespace has no route back to a lost
    // destination: ICMP net unreachable at once).
    assert!(e.ping(&e.host_name, "172.31.0.10").is_err());
    let st = serde_json::to_value(p.status()).expect("status serializes");
    assert_eq!(st["namespace"], e.ns_name.as_str());
    drop(p);

    let c = node::cleanup_in(&e.host, &e.cfg).await.expect("cleanup");
    assert!(c.veth_deleted && c.namespace_removed, "{c}");
    assert_eq!(c.routes_deleted.len(), 3, "{c:?}");
    assert_eq!(e.host_snapshot(), before);
    assert!(!std::path::Path::new("/run/netns").join(&e.ns_name).exists());
    let c = node::cleanup_in(&e.host, &e.cfg)
        .await
        .expect("second cleanup");
    assert!(
        !c.veth_deleted && !c.namespace_removed && c.routes_deleted.is_empty(),
        "{c}"
    );
    assert_eq!(e.host_snapshot(), before);
}

#[tokio::test]
async fn root_out_of_band_deletions_are_repaired() {
    let e = env("oob");
    let d = e.desired(&["172.31.0.10"]);
    let mut p = e.plumbing();
    p.sync(&d, true).await.expect("first sync");
    let events = node::watch_events(&e.host, &NetNs::open(&e.ns_name).expect("ns"))
        .await
        .expect("subscribe");

    e.ip(
        &e.host_name,
        &["route", "del", "172.31.0.0/16", "proto", "245"],
    );
    tokio::time::timeout(Duration::from_secs(5), events.notified())
        .await
        .expect("a route deletion is notified");
    let r = p.sync(&d, true).await.expect("repair route");
    assert_eq!(
        r.ops,
        vec![
            "host: ip route add 172.31.0.0/16 via 169.254.100.2 dev sdnlink0 proto 245".to_string()
        ]
    );

    e.ip(
        &e.ns_name,
        &["addr", "del", "172.31.0.10/32", "dev", "eth0"],
    );
    let r = p.sync(&d, true).await.expect("repair address");
    assert_eq!(
        r.ops,
        vec!["ns: ip addr add 172.31.0.10/32 dev eth0".to_string()]
    );

    e.ip(&e.ns_name, &["route", "del", "10.128.0.0/14"]);
    let r = p.sync(&d, true).await.expect("repair ns route");
    assert_eq!(r.ops.len(), 1, "{:#?}", r.ops);

    e.ip(&e.host_name, &["link", "del", "sdnlink0"]);
    let r = p.sync(&d, true).await.expect("repair veth");
    assert!(r.ops[0].contains("ip link add sdnlink0"), "{:#?}", r.ops);
    let hr = e.ip(&e.host_name, &["route", "show", "proto", "245"]);
    assert_eq!(hr.lines().count(), 3, "{hr}");
    let na = e.ip(&e.ns_name, &["addr", "show", "dev", "eth0"]);
    assert!(na.contains("inet 172.31.0.10/32"), "{na}");
    let r = p.sync(&d, true).await.expect("steady");
    assert_eq!(r.operations(), 0, "{r:#?}");

    // The pin removed out of band (`ip netns del`) while we hold the namespace: re-pinned,
    // with everything in it intact.
    let out = Command::new("ip")
        .args(["netns", "del", &e.ns_name])
        .status()
        .expect("ip netns del");
    assert!(out.success());
    let r = p.sync(&d, true).await.expect("repin");
    assert!(r.repinned);
    assert!(r.ops.is_empty(), "{:#?}", r.ops);
    let na = e.ip(&e.ns_name, &["addr", "show", "dev", "eth0"]);
    assert!(na.contains("inet 172.31.0.10/32"), "{na}");
}

#[tokio::test]
async fn root_foreign_sdnlink0_is_refused_and_untouched() {
    let e = env("foreign");
    e.ip(
        &e.host_name,
        &[
            "link", "add", "sdnlink0", "type", "veth", "peer", "name", "other0",
        ],
    );
    e.ip(
        &e.host_name,
        &["addr", "add", "192.0.2.1/24", "dev", "sdnlink0"],
    );
    let before = e.host_snapshot();
    let mut p = e.plumbing();
    match p.sync(&e.desired(&[]), true).await {
        Err(NodeError::Foreign { name, .. }) => assert_eq!(name, "sdnlink0"),
        other => panic!("expected a Foreign error, got {other:?}"),
    }
    let msg = p.status().last_error.expect("error recorded");
    assert!(msg.contains("\"sdnlink0\""), "{msg}");
    assert_eq!(e.host_snapshot(), before);

    let c = node::cleanup_in(&e.host, &e.cfg).await.expect("cleanup");
    assert!(!c.veth_deleted);
    assert_eq!(c.kept_foreign.len(), 1, "{c}");
    assert_eq!(e.host_snapshot(), before);
}

#[tokio::test]
async fn root_tunnel_routes_follow_the_tunnel_link_and_sysctls_apply() {
    let e = env("tun");
    let d = e.desired(&[]);
    let mut p = e.plumbing();
    let r = p.sync(&d, true).await.expect("first sync");
    assert_eq!(r.skipped_routes.len(), 1);
    assert!(
        r.sysctls_changed.iter().any(|c| c.contains("ip_forward")),
        "{r:#?}"
    );
    assert_eq!(e.sysctl(&e.ns_name, "net.ipv4.ip_forward"), "1");
    assert_eq!(e.sysctl(&e.host_name, "net.ipv4.ip_forward"), "1");
    assert_eq!(e.sysctl(&e.ns_name, "net.ipv4.conf.eth0.rp_filter"), "2");
    assert_eq!(
        e.sysctl(&e.host_name, "net.ipv4.conf.sdnlink0.rp_filter"),
        "2"
    );
    let r = p.sync(&d, true).await.expect("second sync");
    assert!(r.sysctls_changed.is_empty(), "{r:#?}");

    // A stand-in for the WireGuard link (no dummy links on this kernel): a veth end with the
    // tunnel interface's name, up.
    let tun = e.cfg.tunnel.interface.clone();
    e.ip(
        &e.ns_name,
        &[
            "link",
            "add",
            &tun,
            "type",
            "veth",
            "peer",
            "name",
            "sdnt-nd-tp",
        ],
    );
    e.ip(&e.ns_name, &["link", "set", &tun, "up"]);
    let r = p.sync(&d, false).await.expect("incremental");
    assert_eq!(
        r.ops,
        vec![format!(
            "ns: ip route add 10.132.0.0/23 dev {tun} proto 245"
        )]
    );
    assert!(r.skipped_routes.is_empty());
    let nr = e.ip(&e.ns_name, &["route", "show", "proto", "245"]);
    assert!(nr.contains(&format!("10.132.0.0/23 dev {tun}")), "{nr}");
}

#[test]
fn root_ensure_namespace_creates_adopts_and_repairs_a_stale_pin() {
    let name = "sdnt-nd-pin";
    let path = std::path::Path::new("/run/netns").join(name);
    struct Guard(&'static str);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = node::remove_namespace(self.0);
        }
    }
    let _g = Guard(name);
    let _ = node::remove_namespace(name);
    std::fs::create_dir_all("/run/netns").expect("run dir");
    std::fs::write(&path, b"").expect("stale pin file");
    assert!(node::ensure_namespace(name).expect("repair"));
    assert!(!node::ensure_namespace(name).expect("adopt"));
    let out = Command::new("ip")
        .args(["netns", "exec", name, "ip", "-o", "link"])
        .output()
        .expect("ip netns exec");
    assert!(out.status.success());
    let links = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        links.lines().count(),
        1,
        "a fresh namespace has only lo: {links}"
    );
    assert!(node::remove_namespace(name).expect("remove"));
    assert!(!path.exists());
    assert!(!node::remove_namespace(name).expect("remove again"));
}

#[tokio::test]
async fn root_only_routes_with_our_protocol_are_touched() {
    let e = env("proto");
    let d = e.desired(&[]);
    let mut p = e.plumbing();
    p.sync(&d, true).await.expect("first sync");

    // A stale route of ours is removed; someone else's routes are left alone.
    e.ip(
        &e.host_name,
        &[
            "route",
            "add",
            "10.250.0.0/16",
            "via",
            "169.254.100.2",
            "dev",
            "sdnlink0",
            "proto",
            "245",
        ],
    );
    e.ip(
        &e.host_name,
        &[
            "route",
            "add",
            "10.251.0.0/16",
            "via",
            "169.254.100.2",
            "dev",
            "sdnlink0",
            "proto",
            "static",
        ],
    );
    let r = p.sync(&d, true).await.expect("sync");
    assert_eq!(
        r.ops,
        vec![
            "host: ip route del 10.250.0.0/16 via 169.254.100.2 dev sdnlink0 proto 245".to_string()
        ]
    );
    let all = e.ip(&e.host_name, &["route", "show"]);
    assert!(
        all.contains("10.251.0.0/16 via 169.254.100.2 dev sdnlink0 proto static"),
        "{all}"
    );
    assert!(!all.contains("10.250.0.0/16"), "{all}");

    // Someone else's route to one of our destinations is an error naming it, not replaced.
    e.ip(
        &e.host_name,
        &["route", "del", "172.31.0.0/16", "proto", "245"],
    );
    e.ip(
        &e.host_name,
        &[
            "route",
            "add",
            "172.31.0.0/16",
            "dev",
            "sdnlink0",
            "proto",
            "static",
        ],
    );
    match p.sync(&d, true).await {
        Err(NodeError::Apply { first, .. }) => {
            assert!(
                matches!(*first, NodeError::ForeignRoute { dst, .. } if dst.to_string() == "172.31.0.0/16"),
                "{first}"
            );
        }
        other => panic!("expected a foreign route error, got {other:?}"),
    }
    let all = e.ip(&e.host_name, &["route", "show", "172.31.0.0/16"]);
    assert!(all.contains("dev sdnlink0 proto static"), "{all}");
}

#[tokio::test]
async fn root_ipv6_cidrs_route_through_the_ipv4_transit() {
    let mut e = env("v6");
    e.cfg.remote[0]
        .pod_cidrs
        .push("fd00:132::/48".parse().expect("literal"));
    e.cfg
        .local
        .pod_cidrs
        .push("fd00:128::/48".parse().expect("literal"));
    e.cfg.remote[0]
        .service_cidrs
        .push("fd00:31::/112".parse().expect("literal"));
    let d = e.desired(&["fd00:31::10"]);
    let mut p = e.plumbing();
    p.sync(&d, true).await.expect("first sync");
    let hr = e.ip(&e.host_name, &["-6", "route", "show", "proto", "245"]);
    assert!(
        hr.contains("fd00:132::/48 via fe80::2 dev sdnlink0"),
        "{hr}"
    );
    let nr = e.ip(&e.ns_name, &["-6", "route", "show", "proto", "245"]);
    assert!(nr.contains("fd00:128::/48 via fe80::1 dev eth0"), "{nr}");
    let na = e.ip(&e.ns_name, &["-6", "addr", "show", "dev", "eth0"]);
    assert!(na.contains("inet6 fd00:31::10/128"), "{na}");
    assert_eq!(e.sysctl(&e.ns_name, "net.ipv6.conf.all.forwarding"), "1");
    // End to end: the host reaches the VIP in the namespace through the veth and back.
    e.ping(&e.host_name, "fd00:31::10")
        .expect("ping6 from host to the VIP");
    let r = p.sync(&d, true).await.expect("steady");
    assert_eq!(r.operations(), 0, "{r:#?}");
}

#[tokio::test]
async fn root_two_thousand_vips_one_change_is_one_message_each_way() {
    let e = env("scale");
    let vips: Vec<String> = (0..2000u32)
        .map(|i| format!("172.31.{}.{}", i / 200, i % 200 + 1))
        .collect();
    let refs: Vec<&str> = vips.iter().map(String::as_str).collect();
    let d = e.desired(&refs);
    let mut p = e.plumbing();
    let r = p.sync(&d, true).await.expect("first sync");
    assert!(r.ops.len() > 2000, "{}", r.ops.len());
    let na = e.ip(&e.ns_name, &["-4", "-o", "addr", "show", "dev", "eth0"]);
    // 2000 VIPs + transit + DNS address.
    assert_eq!(na.lines().count(), 2002);

    let mut changed = refs.clone();
    changed[1234] = "172.31.250.1";
    let d2 = e.desired(&changed);
    let r = p.sync(&d2, false).await.expect("incremental");
    assert_eq!(
        r.ops,
        vec![
            format!("ns: ip addr del {}/32 dev eth0", refs[1234]),
            "ns: ip addr add 172.31.250.1/32 dev eth0".to_string(),
        ]
    );
    // A fresh Plumbing adopts all 2001 VIPs without a single operation.
    drop(p);
    let mut p = e.plumbing();
    let r = p.sync(&d2, true).await.expect("adopt");
    assert_eq!(r.operations(), 0, "{:?}", r.ops.first());
}
