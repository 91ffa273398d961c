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
            // What the IPVS backend supplies; skipped while ip_vs is not loaded.
            ns_sysctls: sdnlinkd::proxy::ipvs::namespace_sysctls(
                &sdnlinkd::proxy::ipvs::kernel_release(),
            ),
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

    /// Sets a sysctl inside namespace `ns` (to make a test's starting state explicit: a new
    /// namespace copies init_net's IPv4 settings while `net.core.devconf_inherit_init_net` is 0).
    fn set_sysctl(&self, ns: &str, key: &str, value: &str) {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                &format!("{key}={value}"),
            ])
            .output()
            .expect("running sysctl");
        assert!(
            out.status.success(),
            "sysctl {key}={value} in {ns}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
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
    let events = node::watch_events(&e.host, &NetNs::open(&e.ns_name).expect("ns"), p.owned())
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
    // Forwarding off in both namespaces first, whatever the machine's own setting (new
    // namespaces inherit it), so the sync must be what turns it on.
    for ns in [&e.host_name, &e.ns_name] {
        e.set_sysctl(ns, "net.ipv4.ip_forward", "0");
        assert_eq!(e.sysctl(ns, "net.ipv4.ip_forward"), "0");
    }
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

/// Runs `ip -n <ns> -batch -` on `cmds` (one command a line); panics with stderr on failure.
fn ip_batch(ns: &str, cmds: &str) {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running ip -batch");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(cmds.as_bytes())
        .expect("writing the batch");
    let out = child.wait_with_output().expect("ip -batch");
    assert!(
        out.status.success(),
        "ip -n {ns} -batch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a CNI does on `n` pod starts and stops, in namespace `ns`: a bridge with an address
/// and a route of its own protocol, and a veth pair, each created and deleted again.
fn foreign_churn(ns: &str, n: usize) {
    let one = "link add sdnt-fb type bridge\n\
               addr add 10.99.0.1/24 dev sdnt-fb\n\
               link set sdnt-fb up\n\
               route add 10.98.0.0/16 dev sdnt-fb proto static\n\
               route del 10.98.0.0/16 dev sdnt-fb proto static\n\
               link del sdnt-fb\n\
               link add sdnt-fv type veth peer name sdnt-fp\n\
               link del sdnt-fv\n";
    ip_batch(ns, &one.repeat(n));
}

/// [`foreign_churn`] on a blocking thread, so the event task keeps reading meanwhile (as in the
/// daemon's multi-threaded runtime).
async fn foreign_churn_async(ns: &str, n: usize) {
    let ns = ns.to_string();
    tokio::task::spawn_blocking(move || foreign_churn(&ns, n))
        .await
        .expect("churn thread");
}

async fn next_notice(events: &node::NodeEvents) -> node::Notice {
    tokio::time::timeout(Duration::from_secs(5), events.notified())
        .await
        .expect("a notification within 5 s")
}

/// Only changes to what the plumbing owns and still wants notify, once per burst. Each check
/// ends with a sentinel (an out-of-band deletion of one of ours) whose notice must be the next
/// and carry exactly that reason: a notification caused by anything before it would either be
/// counted or be the notice's first reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_only_owned_changes_notify_once_per_burst() {
    let e = env("evt");
    let d = e.desired(&["172.31.0.10", "172.31.0.11"]);
    let mut p = e.plumbing();
    let tun = e.cfg.tunnel.interface.clone();
    // A stand-in for the WireGuard link (no dummy links on this kernel), as in the tunnel test.
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
            "sdnt-nd-ep",
        ],
    );
    e.ip(&e.ns_name, &["link", "set", &tun, "up"]);
    p.sync(&d, true).await.expect("first sync");
    let ns = NetNs::open(&e.ns_name).expect("ns");
    let events = node::watch_events(&e.host, &ns, p.owned())
        .await
        .expect("subscribe");

    // 100 foreign link add/del (with addresses and routes) in the host: nothing; then the
    // sentinel: one of our host routes deleted.
    foreign_churn_async(&e.host_name, 100).await;
    e.ip(
        &e.host_name,
        &["route", "del", "172.31.0.0/16", "proto", "245"],
    );
    let n = next_notice(&events).await;
    assert_eq!(
        n.first.as_ref().map(ToString::to_string).as_deref(),
        Some("host route 172.31.0.0/16 proto 245 deleted"),
        "{n:?}"
    );
    assert_eq!((events.notifications(), n.changes), (1, 1), "{n}");
    let r = p.sync(&d, true).await.expect("repair the route");
    assert_eq!(r.operations(), 1, "{r:#?}");

    // The same in sdnlinkd's namespace; the sentinel is one of our VIPs.
    foreign_churn_async(&e.ns_name, 100).await;
    e.ip(
        &e.ns_name,
        &["addr", "del", "172.31.0.11/32", "dev", "eth0"],
    );
    let n = next_notice(&events).await;
    assert_eq!(
        n.first.as_ref().map(ToString::to_string).as_deref(),
        Some("namespace address 172.31.0.11/32 on eth0 deleted"),
        "{n:?}"
    );
    assert_eq!((events.notifications(), n.changes), (2, 1), "{n}");
    let r = p.sync(&d, true).await.expect("repair the VIP");
    assert_eq!(r.operations(), 1, "{r:#?}");

    // What a sync withdraws itself (a VIP and a host route) never notifies.
    let mut d2 = d.clone();
    d2.ns_addrs
        .remove(&"172.31.0.11/32".parse().expect("literal"));
    d2.host_routes
        .remove(&"172.31.0.0/16".parse().expect("literal"));
    let r = p.sync(&d2, false).await.expect("withdraw");
    assert_eq!(r.ops.len(), 2, "{:#?}", r.ops);
    let r = p
        .sync(&d2, true)
        .await
        .expect("full sync after the withdrawal");
    assert_eq!(r.operations(), 0, "{r:#?}");
    e.ip(
        &e.host_name,
        &["route", "del", "10.132.0.0/14", "proto", "245"],
    );
    let n = next_notice(&events).await;
    assert_eq!(
        n.first.as_ref().map(ToString::to_string).as_deref(),
        Some("host route 10.132.0.0/14 proto 245 deleted"),
        "{n:?}"
    );
    assert_eq!((events.notifications(), n.changes), (3, 1), "{n}");

    // Our veth deleted: the link in both namespaces, its addresses and routes, one notice.
    e.ip(&e.host_name, &["link", "del", "sdnlink0"]);
    let n = next_notice(&events).await;
    assert!(n.changes >= 2, "{n:?}");
    assert_eq!(events.notifications(), 4, "{n}");
    let r = p.sync(&d2, true).await.expect("repair the veth");
    assert!(r.ops[0].contains("ip link add sdnlink0"), "{:#?}", r.ops);
    // The tunnel link deleted.
    e.ip(&e.ns_name, &["link", "del", &tun]);
    let n = next_notice(&events).await;
    assert!(
        matches!(&n.first, Some(node::Reason::LinkDeleted { name, .. }) if *name == tun),
        "{n:?}"
    );
    assert_eq!(events.notifications(), 5, "{n}");
    let r = p.sync(&d2, true).await.expect("sync without the tunnel");
    assert_eq!(r.skipped_routes.len(), 1, "{r:#?}");
    // Our veth set down out of band (RTM_NEWLINK without IFF_UP).
    e.ip(&e.host_name, &["link", "set", "sdnlink0", "down"]);
    let n = next_notice(&events).await;
    assert!(
        matches!(&n.first, Some(node::Reason::LinkChanged { name, change, .. })
            if name == "sdnlink0" && change == "down"),
        "{n:?}"
    );
    assert_eq!(events.notifications(), 6, "{n}");
    let r = p.sync(&d2, true).await.expect("repair the veth state");
    assert!(
        r.ops.contains(&"host: ip link set sdnlink0 up".to_string()),
        "{:#?}",
        r.ops
    );
    // The repairs above (re-creating the veth, re-adding addresses and routes) notified
    // nothing: the next notice is the sentinel's, and only one.
    e.ip(
        &e.ns_name,
        &["addr", "del", "172.31.0.10/32", "dev", "eth0"],
    );
    let n = next_notice(&events).await;
    assert_eq!(
        n.first.as_ref().map(ToString::to_string).as_deref(),
        Some("namespace address 172.31.0.10/32 on eth0 deleted"),
        "{n:?}"
    );
    assert_eq!((events.notifications(), n.changes), (7, 1), "{n}");
    eprintln!(
        "events: 100 foreign (bridge + address + route, veth pair) add/del in each namespace: \
         0 notifications; {} notifications, {} matching messages in all",
        events.notifications(),
        events.changes()
    );
}

/// Lines `ip -o monitor link address route netconf` prints in a namespace, collected by a
/// thread. Sentinel addresses delimit a window: what it shows between two sentinels is what
/// happened in between.
struct Monitor {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    ns: String,
}

impl Monitor {
    fn start(ns: &str) -> Monitor {
        use std::io::BufRead;
        let mut child = Command::new("ip")
            .args([
                "-n", ns, "-o", "monitor", "link", "address", "route", "netconf",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("ip monitor");
        let out = child.stdout.take().expect("piped stdout");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(l);
            }
        });
        Monitor {
            child,
            lines,
            ns: ns.to_string(),
        }
    }

    /// Adds and deletes address `addr` on `lo` and waits until the monitor has shown its
    /// deletion. (Not a link: a new link's netconf line names it by index only.) `ip monitor`
    /// gives no sign of when its subscription is live, so a sentinel made before that goes
    /// unseen: it is made again until the monitor shows one.
    fn sentinel(&self, addr: &str) {
        let end = std::time::Instant::now() + Duration::from_secs(5);
        let deleted = format!("{addr}/32");
        loop {
            ip_batch(
                &self.ns,
                &format!("addr add {addr}/32 dev lo\naddr del {addr}/32 dev lo\n"),
            );
            let round = std::time::Instant::now() + Duration::from_millis(200);
            while std::time::Instant::now() < round {
                let seen = self
                    .lines
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .any(|l| l.starts_with("Deleted") && l.contains(&deleted));
                if seen {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(
                std::time::Instant::now() < end,
                "ip monitor in {} never showed sentinel {addr}",
                self.ns
            );
        }
    }

    /// The lines after the last one about sentinel `a` and before the first about `b`.
    fn between(&self, a: &str, b: &str) -> Vec<String> {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let start = lines
            .iter()
            .rposition(|l| l.contains(a))
            .map_or(0, |i| i + 1);
        let end = lines
            .iter()
            .position(|l| l.contains(b))
            .unwrap_or(lines.len());
        lines[start..end.max(start)].to_vec()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An idle full resync re-reads the kernel and writes nothing: no netlink change and no
/// sysctl change (netconf) in either namespace over three full syncs, with IPv6, VIPs and a
/// route through the tunnel link in the state.
#[tokio::test]
async fn root_idle_full_syncs_write_nothing() {
    let mut e = env("idle");
    e.cfg.remote[0]
        .pod_cidrs
        .push("fd00:132::/48".parse().expect("literal"));
    e.cfg
        .local
        .pod_cidrs
        .push("fd00:128::/48".parse().expect("literal"));
    let d = e.desired(&["172.31.0.10", "172.31.0.11"]);
    let mut p = e.plumbing();
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
            "sdnt-nd-ip",
        ],
    );
    e.ip(&e.ns_name, &["link", "set", &tun, "up"]);
    let r = p.sync(&d, true).await.expect("first sync");
    assert!(r.skipped_routes.is_empty(), "{r:#?}");
    assert!(r.operations() > 10, "{r:#?}");

    let monitors = [Monitor::start(&e.host_name), Monitor::start(&e.ns_name)];
    for m in &monitors {
        m.sentinel("192.0.2.251");
    }
    let mut ops = 0;
    for i in 0..3 {
        let r = p.sync(&d, true).await.expect("idle full sync");
        assert!(r.full);
        assert_eq!(r.operations(), 0, "idle full sync {i}: {r:#?}");
        ops += r.operations();
    }
    for m in &monitors {
        m.sentinel("192.0.2.252");
        let between = m.between("192.0.2.251", "192.0.2.252");
        assert!(
            between.is_empty(),
            "idle full syncs changed something in {}:\n{}",
            m.ns,
            between.join("\n")
        );
    }
    eprintln!("3 idle full syncs: {ops} operations, 0 ip monitor lines in both namespaces");
}
