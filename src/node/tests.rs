use super::kernel::{check_ownership, LinkFacts};
use super::*;
use crate::config::parse_str;
use ipnet::IpNet;
use rtnetlink::packet_route::link::InfoKind;
use std::collections::BTreeSet;
use std::net::IpAddr;

const CFG: &str = r#"
[local]
name = "east"
pod_cidrs = ["10.128.0.0/14"]
service_cidrs = ["172.30.0.0/16"]
node_name = "node-1"
[namespace]
route_protocol = 245
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
"#;

fn cfg() -> crate::config::Config {
    parse_str(CFG).expect("test config is valid")
}

fn net(s: &str) -> ipnet::IpNet {
    s.parse().expect("test literal")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test literal")
}

fn extras(vips: &[&str]) -> NodeExtras {
    NodeExtras {
        tunnel_routes: vec![net("10.132.0.0/23")],
        vips: vips.iter().map(|v| ip(v)).collect(),
    }
}

/// The observed state that exactly matches `d` (as a kernel would report after a full apply).
fn matching(d: &NodeDesired) -> Observed {
    let l = Some(LinkState {
        mtu: d.mtu,
        up: true,
    });
    Observed {
        host_link: l,
        ns_link: l,
        ns_lo_up: true,
        tunnel_present: true,
        host_addrs: d.host_addrs.clone(),
        ns_addrs: d.ns_addrs.clone(),
        host_routes: d.host_routes.clone(),
        ns_routes: d.ns_routes.clone(),
    }
}

#[test]
fn desired_from_config() {
    let c = cfg();
    let d = NodeDesired::from_config(&c, &extras(&["172.31.0.10"]));
    let dns = IpNet::from(c.dns.address);
    assert_eq!(d.host_addrs, BTreeSet::from([net("169.254.100.1/30")]));
    assert_eq!(
        d.ns_addrs,
        BTreeSet::from([net("169.254.100.2/30"), dns, net("172.31.0.10/32")])
    );
    let via_ns = RouteSpec {
        dev: "sdnlink0".into(),
        via: Some(ip("169.254.100.2")),
    };
    let hr: Vec<_> = d.host_routes.iter().map(|(k, v)| (*k, v.clone())).collect();
    let mut want = vec![
        (net("10.132.0.0/14"), via_ns.clone()),
        (net("172.31.0.0/16"), via_ns.clone()),
        (dns, via_ns.clone()),
    ];
    want.sort();
    assert_eq!(hr, want);
    assert_eq!(
        d.ns_routes.get(&net("10.128.0.0/14")),
        Some(&RouteSpec {
            dev: "eth0".into(),
            via: Some(ip("169.254.100.1"))
        })
    );
    assert_eq!(
        d.ns_routes.get(&net("10.132.0.0/23")),
        Some(&RouteSpec {
            dev: c.tunnel.interface.clone(),
            via: None
        })
    );
    assert_eq!(d.protocol, 245);
    assert_eq!(
        d.ns_sysctls.get("net/ipv4/ip_forward").map(String::as_str),
        Some("1")
    );
    assert_eq!(
        d.ns_sysctls
            .get("net/ipv4/conf/eth0/rp_filter")
            .map(String::as_str),
        Some("2")
    );
    assert_eq!(
        d.host_sysctls
            .get("net/ipv4/conf/sdnlink0/rp_filter")
            .map(String::as_str),
        Some("2")
    );
    // IPv4-only config: no IPv6 forwarding.
    assert!(!d.ns_sysctls.contains_key("net/ipv6/conf/all/forwarding"));
}

#[test]
fn nftables_backend_has_no_ipvs_sysctls_and_dns_off_has_no_dns_address() {
    let mut c = cfg();
    c.proxy.backend = crate::config::ProxyBackendKind::Nftables;
    c.dns.enabled = false;
    let d = NodeDesired::from_config(&c, &NodeExtras::default());
    assert!(d.ns_sysctls.keys().all(|k| !k.starts_with("net/ipv4/vs/")));
    assert!(!d.ns_addrs.contains(&IpNet::from(c.dns.address)));
    assert!(!d.host_routes.contains_key(&IpNet::from(c.dns.address)));
    assert_eq!(d.ns_addrs.len(), 1);
}

#[test]
fn plan_from_nothing_creates_everything_in_order() {
    let c = cfg();
    let d = NodeDesired::from_config(&c, &extras(&[]));
    let obs = Observed {
        tunnel_present: true,
        ..Default::default()
    };
    let ops = plan(&d, &obs);
    let lines: Vec<String> = ops.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines[0],
        "host: ip link add sdnlink0 mtu 1500 type veth peer name eth0 netns sdnlink"
    );
    assert_eq!(lines[1], "host: ip link set sdnlink0 mtu 1500 up");
    assert_eq!(lines[2], "ns: ip link set eth0 mtu 1500 up");
    assert_eq!(lines[3], "ns: ip link set lo up");
    let first_route = lines
        .iter()
        .position(|l| l.contains("ip route"))
        .expect("routes");
    let last_addr = lines
        .iter()
        .rposition(|l| l.contains("ip addr"))
        .expect("addrs");
    assert!(
        last_addr < first_route,
        "addresses before routes: {lines:#?}"
    );
    assert!(lines.contains(
        &"host: ip route add 172.31.0.0/16 via 169.254.100.2 dev sdnlink0 proto 245".into()
    ));
    let tunnel_route = format!(
        "ns: ip route add 10.132.0.0/23 dev {} proto 245",
        c.tunnel.interface
    );
    assert!(lines.contains(&tunnel_route), "{lines:#?}");
    let n_routes = d.host_routes.len() + d.ns_routes.len();
    let n_addrs = d.host_addrs.len() + d.ns_addrs.len();
    assert_eq!(ops.len(), 4 + n_addrs + n_routes);
}

#[test]
fn plan_of_matching_state_is_empty() {
    let d = NodeDesired::from_config(&cfg(), &extras(&["172.31.0.10", "172.31.0.11"]));
    assert_eq!(plan(&d, &matching(&d)), vec![]);
}

#[test]
fn one_vip_change_among_ten_thousand_is_two_ops() {
    let vips: Vec<String> = (0..10_000u32)
        .map(|i| format!("172.31.{}.{}", i / 250, i % 250 + 1))
        .collect();
    let refs: Vec<&str> = vips.iter().map(String::as_str).collect();
    let before = NodeDesired::from_config(&cfg(), &extras(&refs));
    let obs = matching(&before);
    let mut changed = refs.clone();
    changed[17] = "172.31.200.1";
    let after = NodeDesired::from_config(&cfg(), &extras(&changed));
    let ops = plan(&after, &obs);
    assert_eq!(
        ops,
        vec![
            NodeOp::DelAddr {
                side: Side::Ns,
                dev: "eth0".into(),
                addr: net(&format!("{}/32", refs[17])),
            },
            NodeOp::AddAddr {
                side: Side::Ns,
                dev: "eth0".into(),
                addr: net("172.31.200.1/32"),
            },
        ]
    );
}

#[test]
fn stale_and_changed_routes() {
    let d = NodeDesired::from_config(&cfg(), &extras(&[]));
    let mut obs = matching(&d);
    let stale = net("10.200.0.0/16");
    obs.host_routes.insert(
        stale,
        RouteSpec {
            dev: "sdnlink0".into(),
            via: Some(ip("169.254.100.2")),
        },
    );
    obs.ns_routes.insert(
        net("10.128.0.0/14"),
        RouteSpec {
            dev: "eth0".into(),
            via: Some(ip("169.254.100.9")),
        },
    );
    obs.ns_addrs.insert(net("172.31.9.9/32"));
    let lines: Vec<String> = plan(&d, &obs).iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        vec![
            "host: ip route del 10.200.0.0/16 via 169.254.100.2 dev sdnlink0 proto 245",
            "ns: ip addr del 172.31.9.9/32 dev eth0",
            "ns: ip route replace 10.128.0.0/14 via 169.254.100.1 dev eth0 proto 245",
        ]
    );
}

#[test]
fn tunnel_routes_wait_for_the_tunnel_link() {
    let c = cfg();
    let d = NodeDesired::from_config(&c, &extras(&[]));
    let mut obs = matching(&d);
    obs.tunnel_present = false;
    obs.ns_routes.remove(&net("10.132.0.0/23"));
    assert_eq!(plan(&d, &obs), vec![]);
    assert_eq!(skipped_routes(&d, &obs), vec![net("10.132.0.0/23")]);
    obs.tunnel_present = true;
    let ops = plan(&d, &obs);
    assert_eq!(ops.len(), 1);
    assert!(
        matches!(&ops[0], NodeOp::AddRoute { side: Side::Ns, dst, spec, .. }
        if *dst == net("10.132.0.0/23") && spec.dev == c.tunnel.interface)
    );
    assert!(skipped_routes(&d, &obs).is_empty());
}

#[test]
fn mtu_and_down_links_are_fixed_in_place() {
    let d = NodeDesired::from_config(&cfg(), &extras(&[]));
    let mut obs = matching(&d);
    obs.host_link = Some(LinkState {
        mtu: 1400,
        up: true,
    });
    obs.ns_link = Some(LinkState {
        mtu: 1500,
        up: false,
    });
    let lines: Vec<String> = plan(&d, &obs).iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        vec![
            "host: ip link set sdnlink0 mtu 1500 up",
            "ns: ip link set eth0 up"
        ]
    );
}

#[test]
fn applying_the_plan_to_the_observed_state_reaches_desired() {
    let d = NodeDesired::from_config(&cfg(), &extras(&["172.31.0.10"]));
    let mut obs = Observed {
        tunnel_present: true,
        ..Default::default()
    };
    obs.host_routes.insert(
        net("10.250.0.0/16"),
        RouteSpec {
            dev: "if99".into(),
            via: None,
        },
    );
    for op in plan(&d, &obs) {
        apply_to_observed(&mut obs, &op, &d);
    }
    assert_eq!(plan(&d, &obs), vec![]);
    assert_eq!(obs, matching(&d));
}

fn facts(index: u32, kind: InfoKind, peer: u32, nsid: Option<i32>) -> LinkFacts {
    LinkFacts {
        index,
        kind: Some(kind),
        peer_index: Some(peer),
        link_netnsid: nsid,
        mtu: 1500,
        up: true,
    }
}

#[test]
fn ownership_of_the_veth_pair() {
    let ours = check_ownership(
        "sdnlink0",
        "eth0",
        "sdnlink",
        Some(facts(7, InfoKind::Veth, 2, Some(0))),
        Some(facts(2, InfoKind::Veth, 7, None)),
    );
    assert!(matches!(ours, Ok(Some(_))));
    assert!(matches!(
        check_ownership("a", "b", "n", None, None),
        Ok(None)
    ));

    let cases = [
        // Host name taken by a bridge.
        (
            Some(facts(7, InfoKind::Bridge, 0, None)),
            Some(facts(2, InfoKind::Veth, 7, None)),
            Side::Host,
        ),
        // A veth, but its peer is some other interface.
        (
            Some(facts(7, InfoKind::Veth, 3, Some(0))),
            Some(facts(2, InfoKind::Veth, 7, None)),
            Side::Host,
        ),
        // A veth with its peer in the same namespace (no IFLA_LINK_NETNSID).
        (
            Some(facts(7, InfoKind::Veth, 2, None)),
            Some(facts(2, InfoKind::Veth, 7, None)),
            Side::Host,
        ),
        // The host name exists without the namespace end.
        (Some(facts(7, InfoKind::Veth, 2, Some(0))), None, Side::Host),
        // The namespace name exists without the host end.
        (None, Some(facts(2, InfoKind::Veth, 7, None)), Side::Ns),
    ];
    for (h, n, side) in cases {
        match check_ownership("sdnlink0", "eth0", "sdnlink", h, n) {
            Err(NodeError::Foreign { side: s, name, .. }) => {
                assert_eq!(s, side);
                assert_eq!(
                    name,
                    if side == Side::Host {
                        "sdnlink0"
                    } else {
                        "eth0"
                    }
                );
            }
            other => panic!("expected Foreign, got {other:?}"),
        }
    }
}
