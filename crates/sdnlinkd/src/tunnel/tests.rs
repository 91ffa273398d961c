use super::diff::{CurrentPeer, KeepaliveHolds, PeerChange, PeerDiff};
use super::*;
use crate::model::{ClusterSnapshot, Node};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

fn cfg() -> Config {
    crate::config::parse_str(
        r#"
[local]
name = "east"
pod_cidrs = ["10.128.0.0/14"]
service_cidrs = ["172.30.0.0/16"]
# Explicit upstreams: a VM or container may have no /etc/resolv.conf.
[dns]
upstreams = ["192.0.2.53:53"]
[[remote]]
name = "west"
pod_cidrs = ["10.132.0.0/14"]
service_cidrs = ["172.31.0.0/16"]
[[remote.peers]]
public_key = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
endpoint = "198.51.100.7:51820"
allowed_ips = ["10.132.0.0/23"]
[[remote]]
name = "north"
pod_cidrs = ["10.140.0.0/16"]
service_cidrs = ["172.29.0.0/16"]
"#,
    )
    .expect("test config is valid")
}

fn no_facts() -> NodeFacts<'static> {
    static EMPTY_ADDRS: BTreeSet<IpAddr> = BTreeSet::new();
    static EMPTY_PEERS: BTreeMap<PublicKey, CurrentPeer> = BTreeMap::new();
    NodeFacts {
        local_key: None,
        own_addrs: &EMPTY_ADDRS,
        current: &EMPTY_PEERS,
    }
}

fn key(n: u8) -> String {
    PublicKey([n; 32]).to_base64()
}

fn node(name: &str, k: Option<String>, ep: Option<&str>, cidrs: &[&str]) -> Node {
    Node {
        name: name.into(),
        pod_cidrs: cidrs
            .iter()
            .map(|c| c.parse().expect("test cidr"))
            .collect(),
        wireguard_public_key: k,
        wireguard_endpoint: ep.map(str::to_string),
    }
}

fn snaps(items: &[(&str, Vec<Node>)]) -> Snapshots {
    items
        .iter()
        .map(|(c, nodes)| {
            let snap = ClusterSnapshot {
                nodes: nodes.iter().map(|n| (n.name.clone(), n.clone())).collect(),
                ..Default::default()
            };
            (c.to_string(), Arc::new(snap))
        })
        .collect()
}

fn skipped_reason<'a>(d: &'a DesiredPeers, cluster: &str, node: &str) -> Option<&'a str> {
    d.skipped
        .iter()
        .find(|s| s.cluster == cluster && s.node == node)
        .map(|s| s.reason.as_str())
}

#[test]
fn static_and_discovered_peers_local_nodes_ignored() {
    let s = snaps(&[
        (
            "west",
            vec![node(
                "w1",
                Some(key(1)),
                Some("192.0.2.1:51820"),
                &["10.133.0.0/24"],
            )],
        ),
        (
            "north",
            vec![node(
                "n1",
                Some(key(2)),
                Some("[2001:db8::2]:51820"),
                &["10.140.1.0/24"],
            )],
        ),
        (
            "east",
            vec![node(
                "e1",
                Some(key(3)),
                Some("192.0.2.3:51820"),
                &["10.128.1.0/24"],
            )],
        ),
    ]);
    let d = desired_peers(&cfg(), &s);
    assert_eq!(d.peers.len(), 3, "{d:?}");
    let w1 = &d.peers[&PublicKey([1; 32])];
    assert_eq!((w1.cluster.as_str(), w1.node.as_str()), ("west", "w1"));
    assert_eq!(w1.endpoint, Some("192.0.2.1:51820".parse().expect("addr")));
    assert_eq!(w1.keepalive, Some(25));
    assert!(
        !d.peers.contains_key(&PublicKey([3; 32])),
        "local cluster node must not be a peer"
    );
    let st = d
        .peers
        .values()
        .find(|p| p.node == "static-0")
        .expect("static peer present");
    assert_eq!(st.cluster, "west");
    assert_eq!(
        d.routes(),
        vec![
            "10.132.0.0/23".parse().expect("net"),
            "10.133.0.0/24".parse().expect("net"),
            "10.140.1.0/24".parse().expect("net")
        ]
    );
    assert!(d.skipped.is_empty(), "{:?}", d.skipped);
}

#[test]
fn bad_nodes_are_skipped_with_reasons() {
    let s = snaps(&[(
        "west",
        vec![
            node("nokey", None, Some("192.0.2.1:1"), &["10.133.1.0/24"]),
            node("noep", Some(key(4)), None, &["10.133.2.0/24"]),
            node(
                "short",
                Some("AAAA".into()),
                Some("192.0.2.1:1"),
                &["10.133.3.0/24"],
            ),
            node(
                "badep",
                Some(key(5)),
                Some("host.example:51820"),
                &["10.133.4.0/24"],
            ),
            node(
                "outside",
                Some(key(6)),
                Some("192.0.2.1:1"),
                &["10.128.5.0/24"],
            ),
            node("nosubnet", Some(key(7)), Some("192.0.2.1:1"), &[]),
            node(
                "good",
                Some(key(8)),
                Some("192.0.2.8:51820"),
                &["10.133.8.0/24"],
            ),
        ],
    )]);
    let d = desired_peers(&cfg(), &s);
    assert!(skipped_reason(&d, "west", "nokey").is_some_and(|r| r.contains("no public key")));
    assert!(skipped_reason(&d, "west", "noep").is_some_and(|r| r.contains("no endpoint")));
    assert!(skipped_reason(&d, "west", "short").is_some_and(|r| r.contains("32 bytes")));
    assert!(skipped_reason(&d, "west", "badep").is_some_and(|r| r.contains("not IP:port")));
    assert!(skipped_reason(&d, "west", "outside").is_some_and(|r| r.contains("outside")));
    assert!(skipped_reason(&d, "west", "nosubnet").is_some());
    // The static peer and "good" remain.
    assert_eq!(d.peers.len(), 2);
    assert!(d.peers.contains_key(&PublicKey([8; 32])));
    let line = d.skipped[0].to_string();
    assert!(
        line.contains("node") && line.contains("cluster west"),
        "{line}"
    );
}

#[test]
fn duplicate_keys_and_overlaps_skip_both_sides() {
    // Settled against an empty device: no claimant of the shared key is programmed.
    let s = snaps(&[
        (
            "west",
            vec![
                node("a", Some(key(9)), Some("192.0.2.1:1"), &["10.133.1.0/24"]),
                node("b", Some(key(10)), Some("192.0.2.2:1"), &["10.133.0.0/16"]),
                node("c", Some(key(11)), Some("192.0.2.3:1"), &["10.134.0.0/24"]),
                // overlaps the static peer's 10.132.0.0/23
                node("d", Some(key(13)), Some("192.0.2.5:1"), &["10.132.1.0/24"]),
            ],
        ),
        (
            "north",
            vec![node(
                "x",
                Some(key(11)),
                Some("192.0.2.4:1"),
                &["10.140.0.0/24"],
            )],
        ),
    ]);
    let d = desired_peers_on(&cfg(), &s, &no_facts());
    for (c, n) in [
        ("west", "a"),
        ("west", "b"),
        ("west", "c"),
        ("north", "x"),
        ("west", "d"),
        ("west", "static-0"),
    ] {
        assert!(
            skipped_reason(&d, c, n).is_some(),
            "{c}/{n} must be skipped: {d:?}"
        );
    }
    assert!(skipped_reason(&d, "west", "c")
        .is_some_and(|r| r.contains("public key also used by node x of cluster north")));
    assert!(skipped_reason(&d, "west", "a").is_some_and(|r| r.contains("overlaps")));
    assert!(d.peers.is_empty(), "{:?}", d.peers);
}

fn desired_with(peers: &[(u8, &str, &[&str])]) -> DesiredPeers {
    DesiredPeers {
        peers: peers
            .iter()
            .map(|(k, ep, nets)| {
                (
                    PublicKey([*k; 32]),
                    DesiredPeer {
                        cluster: "west".into(),
                        node: format!("n{k}"),
                        endpoint: Some(ep.parse().expect("ep")),
                        allowed_ips: nets.iter().map(|n| n.parse().expect("net")).collect(),
                        keepalive: Some(25),
                        from_config: false,
                    },
                )
            })
            .collect(),
        skipped: vec![],
        held: Default::default(),
        contested: vec![],
    }
}

fn as_current(d: &DesiredPeers) -> BTreeMap<PublicKey, CurrentPeer> {
    d.peers
        .iter()
        .map(|(k, p)| (*k, CurrentPeer::from_desired(p, p.endpoint)))
        .collect()
}

#[test]
fn diff_add_update_remove_only_changed() {
    let old = desired_with(&[
        (1, "192.0.2.1:1", &["10.133.1.0/24"]),
        (2, "192.0.2.2:1", &["10.133.2.0/24"]),
        (3, "192.0.2.3:1", &["10.133.3.0/24"]),
    ]);
    let new = desired_with(&[
        (1, "192.0.2.1:1", &["10.133.1.0/24"]),
        (2, "192.0.2.2:1", &["10.133.2.0/24", "10.133.20.0/24"]),
        (4, "192.0.2.4:1", &["10.133.4.0/24"]),
    ]);
    let last: BTreeMap<_, _> = old.peers.iter().map(|(k, p)| (*k, p.endpoint)).collect();
    let diff = PeerDiff::compute(
        &as_current(&old),
        &new,
        &last,
        &KeepaliveHolds::default(),
        SystemTime::now(),
    );
    assert_eq!(diff.changes.len(), 3, "{diff}");
    assert!(
        matches!(&diff.changes[0], PeerChange::Update { key, endpoint: None, allowed_ips: Some(a), keepalive: None } if *key == PublicKey([2; 32]) && a.len() == 2)
    );
    assert!(matches!(&diff.changes[1], PeerChange::Remove { key } if *key == PublicKey([3; 32])));
    assert!(matches!(&diff.changes[2], PeerChange::Add { key, .. } if *key == PublicKey([4; 32])));
    assert!(PeerDiff::compute(
        &as_current(&new),
        &new,
        &last,
        &KeepaliveHolds::default(),
        SystemTime::now()
    )
    .is_empty());
}

#[test]
fn diff_keeps_device_peers_of_held_clusters() {
    let old = desired_with(&[
        (1, "192.0.2.1:1", &["10.133.1.0/24"]),
        (2, "192.0.2.2:1", &["10.134.2.0/24"]),
        (3, "192.0.2.3:1", &["10.133.3.0/24", "10.134.3.0/24"]),
    ]);
    let mut new = desired_with(&[]);
    new.held = crate::model::Held {
        cidrs: vec![("west".into(), "10.133.0.0/16".parse().expect("net"))],
    };
    let last: BTreeMap<_, _> = old.peers.iter().map(|(k, p)| (*k, p.endpoint)).collect();
    let diff = PeerDiff::compute(
        &as_current(&old),
        &new,
        &last,
        &KeepaliveHolds::default(),
        SystemTime::now(),
    );
    let removed: Vec<PublicKey> = diff.changes.iter().map(|c| *c.key()).collect();
    // Peer 1 lies in the held cluster and stays; 2 is outside it; 3 straddles it, so it is not
    // that cluster's peer.
    assert_eq!(removed, [PublicKey([2; 32]), PublicKey([3; 32])], "{diff}");
    assert!(diff
        .changes
        .iter()
        .all(|c| matches!(c, PeerChange::Remove { .. })));
}

#[test]
fn diff_keepalive_zero_equals_off_and_change_detected() {
    let mut d = desired_with(&[(1, "192.0.2.1:1", &["10.133.1.0/24"])]);
    let last: BTreeMap<_, _> = d.peers.iter().map(|(k, p)| (*k, p.endpoint)).collect();
    let cur = as_current(&d);
    for p in d.peers.values_mut() {
        p.keepalive = None;
    }
    let diff = PeerDiff::compute(
        &cur,
        &d,
        &last,
        &KeepaliveHolds::default(),
        SystemTime::now(),
    );
    assert!(
        matches!(
            &diff.changes[..],
            [PeerChange::Update {
                keepalive: Some(None),
                endpoint: None,
                allowed_ips: None,
                ..
            }]
        ),
        "{diff}"
    );
}

#[test]
fn diff_nat_rewritten_endpoint_does_not_thrash() {
    let d = desired_with(&[(1, "192.0.2.1:51820", &["10.133.1.0/24"])]);
    let k = PublicKey([1; 32]);
    let mut cur = as_current(&d);
    let nat: SocketAddr = "203.0.113.9:40000".parse().expect("addr");
    cur.get_mut(&k).expect("peer").endpoint = Some(nat);
    cur.get_mut(&k).expect("peer").last_handshake = Some(SystemTime::now());
    let last: BTreeMap<_, _> = [(k, d.peers[&k].endpoint)].into();
    // We set 192.0.2.1 last time; the kernel shows the NAT address: leave it.
    assert!(PeerDiff::compute(
        &cur,
        &d,
        &last,
        &KeepaliveHolds::default(),
        SystemTime::now()
    )
    .is_empty());
    // After a restart (no record) with a live session: leave it too.
    assert!(PeerDiff::compute(
        &cur,
        &d,
        &BTreeMap::new(),
        &KeepaliveHolds::default(),
        SystemTime::now()
    )
    .is_empty());
    // No record and no live session: set the configured endpoint.
    let later = SystemTime::now() + Duration::from_secs(600);
    let diff = PeerDiff::compute(
        &cur,
        &d,
        &BTreeMap::new(),
        &KeepaliveHolds::default(),
        later,
    );
    assert!(
        matches!(&diff.changes[..], [PeerChange::Update { endpoint: Some(e), .. }] if *e == "192.0.2.1:51820".parse::<SocketAddr>().expect("addr"))
    );
    // Our desired endpoint changed: set it even though the session is live.
    let d2 = desired_with(&[(1, "192.0.2.99:51820", &["10.133.1.0/24"])]);
    let diff = PeerDiff::compute(
        &cur,
        &d2,
        &last,
        &KeepaliveHolds::default(),
        SystemTime::now(),
    );
    assert!(
        matches!(
            &diff.changes[..],
            [PeerChange::Update {
                endpoint: Some(_),
                allowed_ips: None,
                keepalive: None,
                ..
            }]
        ),
        "{diff}"
    );
}

#[test]
fn diff_prints_a_plan() {
    let d = desired_with(&[(1, "192.0.2.1:1", &["10.133.1.0/24"])]);
    let diff = PeerDiff::compute(
        &BTreeMap::new(),
        &d,
        &BTreeMap::new(),
        &KeepaliveHolds::default(),
        SystemTime::now(),
    );
    let text = diff.to_string();
    assert!(text.starts_with("add peer AQEB"), "{text}");
    assert!(
        text.contains("(west/n1) endpoint=192.0.2.1:1 allowed_ips=10.133.1.0/24 keepalive=25"),
        "{text}"
    );
}

#[test]
fn skipped_peers_never_appear_in_routes() {
    let s = snaps(&[(
        "west",
        vec![node("noep", Some(key(4)), None, &["10.133.2.0/24"])],
    )]);
    let d = desired_peers(&cfg(), &s);
    assert!(!d.routes().contains(&"10.133.2.0/24".parse().expect("net")));
}

fn cfg_with(extra_north: &str) -> Config {
    crate::config::parse_str(&format!(
        r#"
[local]
name = "east"
pod_cidrs = ["10.128.0.0/14"]
service_cidrs = ["172.30.0.0/16"]
[dns]
upstreams = ["192.0.2.53:53"]
[[remote]]
name = "west"
pod_cidrs = ["10.132.0.0/14"]
service_cidrs = ["172.31.0.0/16"]
[[remote]]
name = "north"
pod_cidrs = ["10.140.0.0/16"]
service_cidrs = ["172.29.0.0/16"]
{extra_north}
"#
    ))
    .expect("test config is valid")
}

#[test]
fn endpoints_must_be_unicast_host_addresses() {
    let cases: &[(&str, Option<&str>)] = &[
        ("127.0.0.1:51820", Some("loopback")),
        ("0.0.0.0:51820", Some("unspecified")),
        ("0.1.2.3:51820", Some("unspecified")),
        ("169.254.1.1:51820", Some("link-local")),
        ("255.255.255.255:51820", Some("broadcast")),
        ("224.0.0.1:51820", Some("multicast")),
        ("240.0.0.1:51820", Some("reserved")),
        ("192.0.2.9:0", Some("port 0")),
        ("[::1]:51820", Some("loopback")),
        ("[::]:51820", Some("unspecified")),
        ("[ff02::1]:51820", Some("multicast")),
        ("[fe80::1]:51820", Some("link-local")),
        ("[::ffff:127.0.0.1]:51820", Some("loopback")),
        ("192.0.2.9:51820", None),
        ("[2001:db8::9]:51820", None),
        ("[::ffff:192.0.2.9]:51820", None),
    ];
    let nodes: Vec<Node> = cases
        .iter()
        .enumerate()
        .map(|(i, (ep, _))| {
            node(
                &format!("n{i}"),
                Some(key(100 + i as u8)),
                Some(ep),
                &[&format!("10.133.{i}.0/24")],
            )
        })
        .collect();
    let d = desired_peers(&cfg_with(""), &snaps(&[("west", nodes)]));
    for (i, (ep, want)) in cases.iter().enumerate() {
        let got = skipped_reason(&d, "west", &format!("n{i}"));
        match want {
            Some(what) => assert!(
                got.is_some_and(|r| r.contains(what) && r.contains("endpoint")),
                "{ep}: want skipped as {what}, got {got:?}"
            ),
            None => {
                assert!(got.is_none(), "{ep}: want accepted, got {got:?}");
                assert!(
                    d.peers.contains_key(&PublicKey([100 + i as u8; 32])),
                    "{ep}"
                );
            }
        }
    }
}

#[test]
fn endpoint_cidrs_allowlist_applies_to_announced_endpoints_only() {
    let c = cfg_with(
        r#"endpoint_cidrs = ["198.51.100.0/24", "2001:db8:1::/48"]
[[remote.peers]]
public_key = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
endpoint = "203.0.113.7:51820"
allowed_ips = ["10.140.200.0/24"]"#,
    );
    let s = snaps(&[(
        "north",
        vec![
            node(
                "in4",
                Some(key(1)),
                Some("198.51.100.4:51820"),
                &["10.140.1.0/24"],
            ),
            node(
                "in6",
                Some(key(2)),
                Some("[2001:db8:1::4]:51820"),
                &["10.140.2.0/24"],
            ),
            node(
                "out",
                Some(key(3)),
                Some("192.0.2.4:51820"),
                &["10.140.3.0/24"],
            ),
        ],
    )]);
    let d = desired_peers(&c, &s);
    assert!(d.peers.contains_key(&PublicKey([1; 32])), "{d:?}");
    assert!(d.peers.contains_key(&PublicKey([2; 32])), "{d:?}");
    assert!(skipped_reason(&d, "north", "out")
        .is_some_and(|r| r.contains("192.0.2.4:51820") && r.contains("endpoint_cidrs")));
    // The static peer's endpoint is the operator's and lies outside the list: kept.
    assert!(d
        .peers
        .values()
        .any(|p| p.node == "static-0" && p.from_config));
}

#[test]
fn own_addresses_and_own_key_are_skipped_when_settled() {
    let s = snaps(&[(
        "west",
        vec![
            node(
                "self-ep",
                Some(key(1)),
                Some("192.0.2.10:51820"),
                &["10.133.1.0/24"],
            ),
            node(
                "mapped",
                Some(key(2)),
                Some("[::ffff:192.0.2.10]:51820"),
                &["10.133.2.0/24"],
            ),
            node(
                "self-key",
                Some(key(3)),
                Some("192.0.2.99:51820"),
                &["10.133.3.0/24"],
            ),
            node(
                "fine",
                Some(key(4)),
                Some("192.0.2.98:51820"),
                &["10.133.4.0/24"],
            ),
        ],
    )]);
    let own: BTreeSet<IpAddr> = ["192.0.2.10".parse().expect("ip")].into();
    let current = BTreeMap::new();
    let facts = NodeFacts {
        local_key: Some(PublicKey([3; 32])),
        own_addrs: &own,
        current: &current,
    };
    let d = desired_peers_on(&cfg(), &s, &facts);
    assert!(skipped_reason(&d, "west", "self-ep").is_some_and(|r| r.contains("own addresses")));
    assert!(skipped_reason(&d, "west", "mapped").is_some_and(|r| r.contains("own addresses")));
    assert!(skipped_reason(&d, "west", "self-key").is_some_and(|r| r.contains("this node's own")));
    assert!(d.peers.contains_key(&PublicKey([4; 32])));
    // The static peer (198.51.100.7) stays; settling again changes nothing.
    assert_eq!(d.peers.len(), 2, "{d:?}");
    assert_eq!(d.settle(&facts), d);
}

fn device_peer(nets: &[&str]) -> CurrentPeer {
    CurrentPeer {
        endpoint: Some("192.0.2.1:51820".parse().expect("addr")),
        allowed_ips: nets.iter().map(|n| n.parse().expect("net")).collect(),
        keepalive: Some(25),
        last_handshake: None,
    }
}

/// One table row: which claimant of key 9 the device has (by allowed IPs), which clusters claim
/// it, and who must end up with it.
#[test]
fn a_programmed_key_stays_with_its_peer_and_newcomers_are_refused() {
    let k = PublicKey([9; 32]);
    let west_a = (
        "west",
        node("a", Some(key(9)), Some("192.0.2.1:1"), &["10.133.1.0/24"]),
    );
    let north_x = (
        "north",
        node("x", Some(key(9)), Some("192.0.2.4:1"), &["10.140.0.0/24"]),
    );
    let west_b = (
        "west",
        node("b", Some(key(9)), Some("192.0.2.2:1"), &["10.133.2.0/24"]),
    );
    type Row<'a> = (
        &'a str,
        Option<&'a [&'a str]>,
        Vec<(&'a str, Node)>,
        Option<(&'a str, &'a str)>,
    );
    let rows: Vec<Row> = vec![
        (
            "west programmed, north copies",
            Some(&["10.133.1.0/24"]),
            vec![west_a.clone(), north_x.clone()],
            Some(("west", "a")),
        ),
        (
            "north programmed, west copies",
            Some(&["10.140.0.0/24"]),
            vec![west_a.clone(), north_x.clone()],
            Some(("north", "x")),
        ),
        (
            "same cluster, a programmed",
            Some(&["10.133.1.0/24"]),
            vec![west_a.clone(), west_b.clone()],
            Some(("west", "a")),
        ),
        (
            "nobody programmed",
            None,
            vec![west_a.clone(), north_x.clone()],
            None,
        ),
        (
            "device has it for a node that left",
            Some(&["10.133.7.0/24"]),
            vec![west_a.clone(), north_x.clone()],
            None,
        ),
        (
            "only a newcomer, old owner gone",
            Some(&["10.133.7.0/24"]),
            vec![north_x.clone()],
            Some(("north", "x")),
        ),
    ];
    for (name, programmed, claims, want) in rows {
        let current: BTreeMap<PublicKey, CurrentPeer> = programmed
            .map(|nets| (k, device_peer(nets)))
            .into_iter()
            .collect();
        let own = BTreeSet::new();
        let facts = NodeFacts {
            local_key: None,
            own_addrs: &own,
            current: &current,
        };
        // Both orders of the snapshots' contents and of the clusters give one result.
        let mut results = Vec::new();
        for rev in [false, true] {
            let mut by_cluster: BTreeMap<&str, Vec<Node>> = BTreeMap::new();
            let mut claims = claims.clone();
            if rev {
                claims.reverse();
            }
            for (c, n) in claims {
                by_cluster.entry(c).or_default().push(n);
            }
            let items: Vec<(&str, Vec<Node>)> = by_cluster.into_iter().collect();
            let d = desired_peers_on(&cfg_with(""), &snaps(&items), &facts);
            results.push(d);
        }
        assert_eq!(
            results[0].peers, results[1].peers,
            "{name}: order changed the outcome"
        );
        let d = &results[0];
        match want {
            Some((c, n)) => {
                let p = d
                    .peers
                    .get(&k)
                    .unwrap_or_else(|| panic!("{name}: key not given: {d:?}"));
                assert_eq!((p.cluster.as_str(), p.node.as_str()), (c, n), "{name}");
                for (oc, on) in claims.iter().map(|(c, n)| (*c, n.name.as_str())) {
                    if (oc, on) != (c, n) {
                        assert!(
                            skipped_reason(d, oc, on).is_some_and(|r| r.contains(&format!(
                                "already programmed for node {n} of cluster {c}"
                            ))),
                            "{name}: {oc}/{on} must be refused as a newcomer: {d:?}"
                        );
                    }
                }
            }
            None => {
                assert!(!d.peers.contains_key(&k), "{name}: {d:?}");
                for (oc, on) in claims.iter().map(|(c, n)| (*c, n.name.as_str())) {
                    assert!(
                        skipped_reason(d, oc, on).is_some_and(|r| r.contains("refusing all")),
                        "{name}: {oc}/{on}: {d:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn static_peers_win_a_shared_key_and_held_peers_keep_theirs() {
    // key(42) is not the static peer's; the static peer's key is copied by a north node.
    let static_key = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=".to_string();
    let s = snaps(&[(
        "north",
        vec![node(
            "copy",
            Some(static_key.clone()),
            Some("192.0.2.4:1"),
            &["10.140.0.0/24"],
        )],
    )]);
    let d = desired_peers_on(&cfg(), &s, &no_facts());
    let k = PublicKey::from_base64(&static_key).expect("key");
    assert_eq!(d.peers[&k].node, "static-0");
    assert!(skipped_reason(&d, "north", "copy")
        .is_some_and(|r| r.contains("static peer static-0 of cluster west")));

    // The device has key 9 for a west peer; west has not listed (held); north claims key 9.
    let k9 = PublicKey([9; 32]);
    let current: BTreeMap<PublicKey, CurrentPeer> = [(k9, device_peer(&["10.133.1.0/24"]))].into();
    let own = BTreeSet::new();
    let facts = NodeFacts {
        local_key: None,
        own_addrs: &own,
        current: &current,
    };
    let mut d = desired_peers(
        &cfg_with(""),
        &snaps(&[(
            "north",
            vec![node(
                "x",
                Some(key(9)),
                Some("192.0.2.4:1"),
                &["10.140.0.0/24"],
            )],
        )]),
    );
    d.held = crate::model::Held {
        cidrs: vec![("west".into(), "10.132.0.0/14".parse().expect("net"))],
    };
    let d = d.settle(&facts);
    assert!(d.peers.is_empty(), "{d:?}");
    assert!(skipped_reason(&d, "north", "x")
        .is_some_and(|r| r.contains("cluster west, which has not listed yet")));
    let diff = PeerDiff::compute(
        &current,
        &d,
        &BTreeMap::new(),
        &KeepaliveHolds::default(),
        SystemTime::now(),
    );
    assert!(diff.is_empty(), "the held peer must stay as it is: {diff}");
}

#[test]
fn only_the_lower_key_turns_keepalive_on_at_once() {
    let d = desired_with(&[
        (1, "192.0.2.1:1", &["10.133.1.0/24"]),
        (3, "192.0.2.3:1", &["10.133.3.0/24"]),
    ]);
    let holds = KeepaliveHolds::new(PublicKey([2; 32]));
    let now = SystemTime::now();
    let diff = PeerDiff::compute(&BTreeMap::new(), &d, &BTreeMap::new(), &holds, now);
    let after: Vec<Option<Duration>> = diff
        .changes
        .iter()
        .map(|c| match c {
            PeerChange::Add {
                keepalive_after, ..
            } => *keepalive_after,
            other => panic!("unexpected {other}"),
        })
        .collect();
    // Peer 1 has the lower key: it initiates, we wait. Peer 3 has the higher key: we initiate.
    let wait = after[0].expect("held for the lower-keyed peer");
    assert!(
        wait >= Duration::from_secs(1) && wait < Duration::from_secs(2),
        "{wait:?}"
    );
    assert_eq!(after[1], None);
    assert!(diff.to_string().contains("keepalive=25 from +"), "{diff}");
    // Deterministic, and different for another pair.
    assert_eq!(holds.delay(&PublicKey([1; 32])), wait);
    assert_ne!(
        KeepaliveHolds::new(PublicKey([7; 32])).delay(&PublicKey([1; 32])),
        wait
    );

    // Applied with keepalive off: no keepalive change while held, then one.
    let mut cur = as_current(&d);
    cur.get_mut(&PublicKey([1; 32])).expect("peer").keepalive = None;
    let mut holds = holds;
    holds.until.insert(PublicKey([1; 32]), now + wait);
    let last: BTreeMap<_, _> = d.peers.iter().map(|(k, p)| (*k, p.endpoint)).collect();
    assert!(PeerDiff::compute(&cur, &d, &last, &holds, now).is_empty());
    assert_eq!(holds.next_due(), Some(now + wait));
    let diff = PeerDiff::compute(&cur, &d, &last, &holds, now + wait);
    assert!(
        matches!(&diff.changes[..], [PeerChange::Update { key, keepalive: Some(Some(25)), endpoint: None, allowed_ips: None }] if *key == PublicKey([1; 32])),
        "{diff}"
    );

    // A new process finds the peer with keepalive still off and no record of the hold: it holds
    // again (nothing sent), then turns keepalive on once that hold is due.
    let fresh = KeepaliveHolds::new(PublicKey([2; 32]));
    let diff = PeerDiff::compute(&cur, &d, &last, &fresh, now);
    assert!(diff.is_empty(), "{diff}");
    assert_eq!(diff.held, vec![(PublicKey([1; 32]), wait)]);
    // The lower key turns a missing keepalive on at once.
    let lower = KeepaliveHolds::new(PublicKey([0; 32]));
    let diff = PeerDiff::compute(&cur, &d, &last, &lower, now);
    assert!(diff.held.is_empty() && diff.changes.len() == 1, "{diff}");
}

#[test]
fn keepalive_values_that_defeat_the_handshake_timers_warn() {
    for k in [0u16, 16, 25, 60] {
        assert_eq!(keepalive_warning(k), None, "{k}");
    }
    for k in [1u16, 4, 5, 10, 15] {
        let w = keepalive_warning(k).unwrap_or_else(|| panic!("{k} must warn"));
        assert!(
            w.contains(&format!("persistent_keepalive = {k}")) && w.contains("above 15"),
            "{w}"
        );
        assert_eq!(w.contains("lockstep"), k == 5, "{w}");
    }
}
