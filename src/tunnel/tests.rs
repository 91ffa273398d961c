use super::diff::{CurrentPeer, PeerChange, PeerDiff};
use super::*;
use crate::model::{ClusterSnapshot, Node};
use std::collections::BTreeMap;
use std::net::SocketAddr;
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
    let d = desired_peers(&cfg(), &s);
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
                    },
                )
            })
            .collect(),
        skipped: vec![],
        held: Default::default(),
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
    let diff = PeerDiff::compute(&as_current(&old), &new, &last, SystemTime::now());
    assert_eq!(diff.changes.len(), 3, "{diff}");
    assert!(
        matches!(&diff.changes[0], PeerChange::Update { key, endpoint: None, allowed_ips: Some(a), keepalive: None } if *key == PublicKey([2; 32]) && a.len() == 2)
    );
    assert!(matches!(&diff.changes[1], PeerChange::Remove { key } if *key == PublicKey([3; 32])));
    assert!(matches!(&diff.changes[2], PeerChange::Add { key, .. } if *key == PublicKey([4; 32])));
    assert!(PeerDiff::compute(&as_current(&new), &new, &last, SystemTime::now()).is_empty());
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
    let diff = PeerDiff::compute(&as_current(&old), &new, &last, SystemTime::now());
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
    let diff = PeerDiff::compute(&cur, &d, &last, SystemTime::now());
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
    assert!(PeerDiff::compute(&cur, &d, &last, SystemTime::now()).is_empty());
    // After a restart (no record) with a live session: leave it too.
    assert!(PeerDiff::compute(&cur, &d, &BTreeMap::new(), SystemTime::now()).is_empty());
    // No record and no live session: set the configured endpoint.
    let later = SystemTime::now() + Duration::from_secs(600);
    let diff = PeerDiff::compute(&cur, &d, &BTreeMap::new(), later);
    assert!(
        matches!(&diff.changes[..], [PeerChange::Update { endpoint: Some(e), .. }] if *e == "192.0.2.1:51820".parse::<SocketAddr>().expect("addr"))
    );
    // Our desired endpoint changed: set it even though the session is live.
    let d2 = desired_with(&[(1, "192.0.2.99:51820", &["10.133.1.0/24"])]);
    let diff = PeerDiff::compute(&cur, &d2, &last, SystemTime::now());
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
    let diff = PeerDiff::compute(&BTreeMap::new(), &d, &BTreeMap::new(), SystemTime::now());
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
