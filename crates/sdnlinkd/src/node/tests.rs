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
        ns_sysctls: crate::proxy::ipvs::namespace_sysctls("6.1.0-27-cloud-amd64"),
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
fn the_backends_sysctls_join_the_namespace_ones() {
    let d = NodeDesired::from_config(&cfg(), &extras(&[]));
    for (k, v) in [
        ("net/ipv4/vs/conntrack", "0"),
        ("net/ipv4/vs/expire_nodest_conn", "1"),
        ("net/ipv4/vs/expire_quiescent_template", "1"),
        ("net/ipv4/vs/conn_reuse_mode", "1"),
        ("net/ipv4/ip_forward", "1"),
    ] {
        assert_eq!(d.ns_sysctls.get(k).map(String::as_str), Some(v), "{k}");
    }
    assert!(d
        .host_sysctls
        .keys()
        .all(|k| !k.starts_with("net/ipv4/vs/")));
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

mod owned_filter {
    use super::*;
    use crate::node::kernel::Ifindexes;
    use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
    use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
    use rtnetlink::packet_route::route::{
        RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
        RouteType,
    };
    use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};

    const HOST_VETH: u32 = 5;
    const NS_VETH: u32 = 2;
    const NS_LO: u32 = 1;
    const TUNNEL: u32 = 3;

    fn idx() -> Ifindexes {
        Ifindexes {
            host_veth: Some(HOST_VETH),
            ns_veth: Some(NS_VETH),
            ns_lo: Some(NS_LO),
            tunnel: Some(TUNNEL),
        }
    }

    /// Desired with one VIP, observed matching it, plus a VIP and a route of ours that are
    /// no longer desired (what a sync is about to withdraw).
    fn owned() -> (NodeDesired, Owned) {
        let d = NodeDesired::from_config(&cfg(), &extras(&["172.31.0.10"]));
        let mut obs = matching(&d);
        obs.ns_addrs.insert(net("172.31.0.99/32"));
        obs.host_routes.insert(
            net("10.250.0.0/16"),
            RouteSpec {
                dev: "sdnlink0".into(),
                via: Some(ip("169.254.100.2")),
            },
        );
        let o = Owned::wanted(&d, &obs, &idx());
        (d, o)
    }

    /// An RTM_DELROUTE as the kernel sends it for `ip route del` of an IPv4 route.
    fn del_route(dst: &str, protocol: u8, table: u8) -> RouteNetlinkMessage {
        let dst = net(dst);
        let IpNet::V4(v4) = dst else {
            panic!("IPv4 literal")
        };
        let mut m = RouteMessage::default();
        m.header = RouteHeader {
            address_family: AddressFamily::Inet,
            destination_prefix_length: dst.prefix_len(),
            source_prefix_length: 0,
            tos: 0,
            table,
            protocol: RouteProtocol::from(protocol),
            scope: RouteScope::Universe,
            kind: RouteType::Unicast,
            flags: Default::default(),
        };
        m.attributes = vec![
            RouteAttribute::Table(u32::from(table)),
            RouteAttribute::Destination(RouteAddress::Inet(v4.network())),
            RouteAttribute::Gateway(RouteAddress::Inet("169.254.100.2".parse().expect("lit"))),
            RouteAttribute::Oif(HOST_VETH),
        ];
        RouteNetlinkMessage::DelRoute(m)
    }

    fn del_addr(index: u32, addr: &str) -> RouteNetlinkMessage {
        let a = net(addr);
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = a.prefix_len();
        m.header.index = index;
        m.attributes = vec![
            AddressAttribute::Address(a.addr()),
            AddressAttribute::Local(a.addr()),
            AddressAttribute::Label("eth0".into()),
        ];
        RouteNetlinkMessage::DelAddress(m)
    }

    fn link(index: u32, name: &str, up: bool, mtu: u32) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.index = index;
        if up {
            m.header.flags = LinkFlags::Up | LinkFlags::Broadcast | LinkFlags::Multicast;
        }
        m.attributes = vec![LinkAttribute::IfName(name.into()), LinkAttribute::Mtu(mtu)];
        m
    }

    #[test]
    fn wanted_is_desired_and_installed() {
        let (d, o) = owned();
        assert_eq!(o.protocol, 245);
        assert_eq!(o.host.addrs, d.host_addrs);
        assert_eq!(o.ns.addrs, d.ns_addrs, "not the withdrawn 172.31.0.99");
        assert!(o.host.routes.contains_key(&net("172.31.0.0/16")));
        assert!(!o.host.routes.contains_key(&net("10.250.0.0/16")));
        assert_eq!(
            o.ns.routes.get(&net("10.132.0.0/23")).map(String::as_str),
            Some(d.tunnel_interface.as_str())
        );
        let roles: Vec<_> =
            o.ns.links
                .iter()
                .map(|l| (l.index, l.role.clone()))
                .collect();
        assert_eq!(
            roles,
            vec![
                (NS_LO, LinkRole::Loopback),
                (NS_VETH, LinkRole::Veth { mtu: 1500 }),
                (TUNNEL, LinkRole::Tunnel),
            ]
        );
        // Nothing installed: nothing to defend.
        let none = Owned::wanted(&d, &Observed::default(), &Ifindexes::default());
        assert!(none.host.links.is_empty() && none.host.addrs.is_empty());
        assert!(none.ns.routes.is_empty());
    }

    #[test]
    fn deletions_of_our_objects_concern_us() {
        let (_, o) = owned();
        let mut m = LinkMessage::default();
        m.header.index = HOST_VETH;
        assert_eq!(
            concerns_us(Side::Host, &RouteNetlinkMessage::DelLink(m.clone()), &o),
            Some(Reason::LinkDeleted {
                side: Side::Host,
                name: "sdnlink0".into(),
                index: HOST_VETH
            })
        );
        m.header.index = TUNNEL;
        let r = concerns_us(Side::Ns, &RouteNetlinkMessage::DelLink(m), &o).expect("tunnel");
        assert!(r.to_string().contains("ifindex 3) deleted"), "{r}");
        let r = concerns_us(Side::Ns, &del_addr(NS_VETH, "172.31.0.10/32"), &o);
        assert_eq!(
            r,
            Some(Reason::AddressDeleted {
                side: Side::Ns,
                dev: "eth0".into(),
                addr: net("172.31.0.10/32")
            })
        );
        let r = concerns_us(Side::Host, &del_route("172.31.0.0/16", 245, 254), &o);
        assert_eq!(
            r.map(|r| r.to_string()).as_deref(),
            Some("host route 172.31.0.0/16 proto 245 deleted")
        );
    }

    #[test]
    fn foreign_objects_and_our_withdrawals_do_not() {
        let (_, o) = owned();
        let mut m = LinkMessage::default();
        // A bridge or a pod's veth: another index.
        m.header.index = 42;
        assert_eq!(
            concerns_us(Side::Host, &RouteNetlinkMessage::DelLink(m.clone()), &o),
            None
        );
        // Index spaces are per namespace: the host veth's index in the namespace is not ours.
        m.header.index = HOST_VETH;
        assert_eq!(
            concerns_us(Side::Ns, &RouteNetlinkMessage::DelLink(m), &o),
            None
        );
        // An address on another link, one we withdraw, one with another prefix length.
        assert_eq!(
            concerns_us(Side::Ns, &del_addr(42, "172.31.0.10/32"), &o),
            None
        );
        assert_eq!(
            concerns_us(Side::Ns, &del_addr(NS_VETH, "172.31.0.99/32"), &o),
            None
        );
        assert_eq!(
            concerns_us(Side::Ns, &del_addr(NS_VETH, "172.31.0.10/24"), &o),
            None
        );
        // A CNI's route (another protocol), one of ours we withdraw, our destination in
        // another table, another side.
        assert_eq!(
            concerns_us(Side::Host, &del_route("172.31.0.0/16", 4, 254), &o),
            None
        );
        assert_eq!(
            concerns_us(Side::Host, &del_route("10.250.0.0/16", 245, 254), &o),
            None
        );
        assert_eq!(
            concerns_us(Side::Host, &del_route("172.31.0.0/16", 245, 100), &o),
            None
        );
        assert_eq!(
            concerns_us(Side::Ns, &del_route("172.31.0.0/16", 245, 254), &o),
            None
        );
        // New objects never do.
        let RouteNetlinkMessage::DelRoute(r) = del_route("172.31.0.0/16", 245, 254) else {
            unreachable!()
        };
        assert_eq!(
            concerns_us(Side::Host, &RouteNetlinkMessage::NewRoute(r), &o),
            None
        );
    }

    #[test]
    fn link_changes_that_break_the_veth_concern_us() {
        let (_, o) = owned();
        let new = |m| RouteNetlinkMessage::NewLink(m);
        assert_eq!(
            concerns_us(
                Side::Host,
                &new(link(HOST_VETH, "sdnlink0", true, 1500)),
                &o
            ),
            None
        );
        let change = |m| match concerns_us(Side::Host, &new(m), &o) {
            Some(Reason::LinkChanged { change, .. }) => change,
            other => panic!("expected a link change, got {other:?}"),
        };
        assert_eq!(change(link(HOST_VETH, "sdnlink0", false, 1500)), "down");
        assert_eq!(
            change(link(HOST_VETH, "sdnlink0", true, 1400)),
            "mtu 1400 (want 1500)"
        );
        assert_eq!(
            change(link(HOST_VETH, "other", true, 1500)),
            "renamed to other"
        );
        let r = concerns_us(Side::Ns, &new(link(NS_LO, "lo", false, 65536)), &o);
        assert!(matches!(r, Some(Reason::LinkChanged { .. })), "{r:?}");
        // The tunnel's state is the tunnel's business; a foreign link going down is nobody's.
        assert_eq!(
            concerns_us(Side::Ns, &new(link(TUNNEL, "x", false, 1420)), &o),
            None
        );
        assert_eq!(
            concerns_us(Side::Host, &new(link(42, "br0", false, 1500)), &o),
            None
        );
    }

    #[test]
    fn the_daemon_names_and_withdraws_the_tunnel() {
        let (d, o) = owned();
        let h = OwnedHandle::default();
        h.store(o);
        let mut del = LinkMessage::default();
        del.header.index = 9;
        let del = RouteNetlinkMessage::DelLink(del);
        assert_eq!(concerns_us(Side::Ns, &del, &h.load()), None);
        h.set_tunnel(&d.tunnel_interface, Some(9));
        assert!(concerns_us(Side::Ns, &del, &h.load()).is_some());
        // Withdrawn before the daemon deletes it: the link and the routes through it.
        h.set_tunnel(&d.tunnel_interface, None);
        assert_eq!(concerns_us(Side::Ns, &del, &h.load()), None);
        let through_tunnel = h
            .load()
            .ns
            .routes
            .values()
            .filter(|dev| **dev == d.tunnel_interface)
            .count();
        assert_eq!(through_tunnel, 0);
        assert!(h.load().ns.routes.contains_key(&net("10.128.0.0/14")));
    }
}
