//! Table tests of the two pure halves of a tunnel sync: a change turned into the one message
//! that carries it, and a change the device accepted turned into the committed state.

use super::*;
use crate::tunnel::DesiredPeer;
use std::time::UNIX_EPOCH;

fn k(n: u8) -> PublicKey {
    PublicKey([n; 32])
}

fn net(s: &str) -> IpNet {
    s.parse().expect("test CIDR")
}

fn ep(s: &str) -> SocketAddr {
    s.parse().expect("test endpoint")
}

fn peer(endpoint: Option<&str>, nets: &[&str], keepalive: Option<u16>) -> DesiredPeer {
    DesiredPeer {
        cluster: "west".into(),
        node: "w1".into(),
        endpoint: endpoint.map(ep),
        allowed_ips: nets.iter().map(|n| net(n)).collect(),
        keepalive,
        from_config: false,
    }
}

fn current(endpoint: Option<&str>, nets: &[&str], keepalive: Option<u16>) -> CurrentPeer {
    CurrentPeer {
        endpoint: endpoint.map(ep),
        allowed_ips: nets.iter().map(|n| net(n)).collect(),
        keepalive,
        last_handshake: None,
    }
}

fn desired(peers: Vec<(PublicKey, DesiredPeer)>) -> DesiredPeers {
    DesiredPeers {
        peers: peers.into_iter().collect(),
        ..DesiredPeers::default()
    }
}

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_000_000)
}

#[test]
fn each_change_becomes_one_message_with_only_its_fields() {
    let wg = |n: u8| k(n).to_wg();
    let table: Vec<(&str, PeerChange, PeerConfigBuilder)> = vec![
        (
            "add: endpoint, keepalive at once, allowed IPs replaced",
            PeerChange::Add {
                key: k(1),
                peer: peer(
                    Some("192.0.2.1:51820"),
                    &["10.1.0.0/24", "10.9.0.0/16"],
                    Some(25),
                ),
                keepalive_after: None,
            },
            PeerConfigBuilder::new(&wg(1))
                .set_endpoint(ep("192.0.2.1:51820"))
                .set_persistent_keepalive_interval(25)
                .replace_allowed_ips()
                .add_allowed_ip("10.1.0.0".parse().expect("ip"), 24)
                .add_allowed_ip("10.9.0.0".parse().expect("ip"), 16),
        ),
        (
            "add with a held keepalive: sent off",
            PeerChange::Add {
                key: k(2),
                peer: peer(None, &["10.2.0.0/24"], Some(25)),
                keepalive_after: Some(Duration::from_millis(1500)),
            },
            PeerConfigBuilder::new(&wg(2))
                .set_persistent_keepalive_interval(0)
                .replace_allowed_ips()
                .add_allowed_ip("10.2.0.0".parse().expect("ip"), 24),
        ),
        (
            "add without keepalive: explicitly off (an adopted key may have one)",
            PeerChange::Add {
                key: k(3),
                peer: peer(Some("192.0.2.3:51820"), &["10.3.0.0/24"], None),
                keepalive_after: None,
            },
            PeerConfigBuilder::new(&wg(3))
                .set_endpoint(ep("192.0.2.3:51820"))
                .set_persistent_keepalive_interval(0)
                .replace_allowed_ips()
                .add_allowed_ip("10.3.0.0".parse().expect("ip"), 24),
        ),
        (
            "update of the endpoint alone leaves allowed IPs and keepalive untouched",
            PeerChange::Update {
                key: k(4),
                endpoint: Some(ep("192.0.2.44:51820")),
                allowed_ips: None,
                keepalive: None,
            },
            PeerConfigBuilder::new(&wg(4)).set_endpoint(ep("192.0.2.44:51820")),
        ),
        (
            "update of the allowed IPs replaces them",
            PeerChange::Update {
                key: k(5),
                endpoint: None,
                allowed_ips: Some(vec![net("10.5.0.0/24")]),
                keepalive: None,
            },
            PeerConfigBuilder::new(&wg(5))
                .replace_allowed_ips()
                .add_allowed_ip("10.5.0.0".parse().expect("ip"), 24),
        ),
        (
            "update turning keepalive off sends 0",
            PeerChange::Update {
                key: k(6),
                endpoint: None,
                allowed_ips: None,
                keepalive: Some(None),
            },
            PeerConfigBuilder::new(&wg(6)).set_persistent_keepalive_interval(0),
        ),
        (
            "remove",
            PeerChange::Remove { key: k(7) },
            PeerConfigBuilder::new(&wg(7)).remove(),
        ),
    ];
    for (what, change, want) in table {
        assert_eq!(change.builder(), want, "{what}");
    }
}

#[test]
fn an_accepted_change_updates_exactly_what_it_touched() {
    let base = || {
        let mut c = Committed::new(k(9));
        c.peers.insert(
            k(1),
            current(Some("192.0.2.1:51820"), &["10.1.0.0/24"], Some(25)),
        );
        c.last_set.insert(k(1), Some(ep("192.0.2.1:51820")));
        c.peers.insert(k(2), current(None, &["10.2.0.0/24"], None));
        c.holds.until.insert(k(2), now() + Duration::from_secs(1));
        c
    };
    type Edit = fn(&mut Committed);
    let table: Vec<(&str, PeerChange, Edit)> = vec![
        (
            "add: the peer as sent, and the endpoint we set",
            PeerChange::Add {
                key: k(3),
                peer: peer(Some("192.0.2.3:51820"), &["10.3.0.0/24"], Some(25)),
                keepalive_after: None,
            },
            |c| {
                c.peers.insert(
                    k(3),
                    current(Some("192.0.2.3:51820"), &["10.3.0.0/24"], Some(25)),
                );
                c.last_set.insert(k(3), Some(ep("192.0.2.3:51820")));
            },
        ),
        (
            "add with a held keepalive: committed off, hold until now + delay",
            PeerChange::Add {
                key: k(10),
                peer: peer(None, &["10.10.0.0/24"], Some(25)),
                keepalive_after: Some(Duration::from_millis(1200)),
            },
            |c| {
                c.peers
                    .insert(k(10), current(None, &["10.10.0.0/24"], None));
                c.last_set.insert(k(10), None);
                c.holds
                    .until
                    .insert(k(10), now() + Duration::from_millis(1200));
            },
        ),
        (
            "update of the endpoint: the device shows it; what we set is settled by finish",
            PeerChange::Update {
                key: k(1),
                endpoint: Some(ep("192.0.2.11:51820")),
                allowed_ips: None,
                keepalive: None,
            },
            |c| {
                if let Some(p) = c.peers.get_mut(&k(1)) {
                    p.endpoint = Some(ep("192.0.2.11:51820"));
                }
            },
        ),
        (
            "update of the keepalive ends its hold",
            PeerChange::Update {
                key: k(2),
                endpoint: None,
                allowed_ips: None,
                keepalive: Some(Some(25)),
            },
            |c| {
                if let Some(p) = c.peers.get_mut(&k(2)) {
                    p.keepalive = Some(25);
                }
                c.holds.until.remove(&k(2));
            },
        ),
        (
            "update of the allowed IPs replaces them",
            PeerChange::Update {
                key: k(1),
                endpoint: None,
                allowed_ips: Some(vec![net("10.1.0.0/24"), net("10.11.0.0/24")]),
                keepalive: None,
            },
            |c| {
                if let Some(p) = c.peers.get_mut(&k(1)) {
                    p.allowed_ips = [net("10.1.0.0/24"), net("10.11.0.0/24")].into();
                }
            },
        ),
        (
            "update of a peer not committed changes nothing",
            PeerChange::Update {
                key: k(8),
                endpoint: Some(ep("192.0.2.8:51820")),
                allowed_ips: None,
                keepalive: None,
            },
            |_| {},
        ),
        (
            "remove forgets the peer, the endpoint we set and its hold",
            PeerChange::Remove { key: k(2) },
            |c| {
                c.peers.remove(&k(2));
                c.holds.until.remove(&k(2));
            },
        ),
    ];
    for (what, change, edit) in table {
        let mut got = base();
        change.apply_to(&mut got, now());
        let mut want = base();
        edit(&mut want);
        assert_eq!(got, want, "{what}");
    }
}

#[test]
fn finish_records_what_we_asked_for_and_drops_holds_of_gone_peers() {
    let mut c = Committed::new(k(9));
    // Adopted after a restart: the device shows a roamed endpoint, nothing set by us yet.
    c.peers.insert(
        k(1),
        current(Some("198.51.100.7:40000"), &["10.1.0.0/24"], Some(25)),
    );
    c.holds.until.insert(k(5), now());
    let want = desired(vec![
        (
            k(1),
            peer(Some("192.0.2.1:51820"), &["10.1.0.0/24"], Some(25)),
        ),
        // Desired but not on the device (its add failed): nothing recorded for it.
        (
            k(2),
            peer(Some("192.0.2.2:51820"), &["10.2.0.0/24"], Some(25)),
        ),
    ]);
    c.finish(&want);
    assert_eq!(
        c.last_set,
        BTreeMap::from([(k(1), Some(ep("192.0.2.1:51820")))])
    );
    assert!(c.holds.until.is_empty(), "{:?}", c.holds.until);
    // The roamed endpoint is kept: the next diff does not re-set it.
    assert!(c
        .diff(&want, now())
        .changes
        .iter()
        .all(|ch| *ch.key() != k(1)));
}

#[test]
fn applying_a_diff_converges_and_a_created_device_forgets_everything() {
    let mut c = Committed::new(k(0x80));
    c.peers.insert(
        k(1),
        current(Some("192.0.2.1:51820"), &["10.1.0.0/24"], None),
    );
    c.peers.insert(k(4), current(None, &["10.4.0.0/24"], None));
    let want = desired(vec![
        (
            k(1),
            peer(
                Some("192.0.2.10:51820"),
                &["10.1.0.0/24", "10.21.0.0/24"],
                None,
            ),
        ),
        // Lower than the local key: the peer initiates, our keepalive is held.
        (
            k(2),
            peer(Some("192.0.2.2:51820"), &["10.2.0.0/24"], Some(25)),
        ),
        // Higher than the local key: we initiate, keepalive at once.
        (
            k(0xf0),
            peer(Some("192.0.2.240:51820"), &["10.240.0.0/24"], Some(25)),
        ),
    ]);
    let diff = c.diff(&want, now());
    assert_eq!(diff.changes.len(), 4, "{diff}");
    c.hold(&diff.held, now());
    for change in diff.changes {
        change.apply_to(&mut c, now());
    }
    c.finish(&want);
    assert!(c.diff(&want, now()).is_empty(), "{}", c.diff(&want, now()));
    assert_eq!(
        c.routes(),
        [
            "10.1.0.0/24",
            "10.2.0.0/24",
            "10.21.0.0/24",
            "10.240.0.0/24"
        ]
        .map(net)
    );
    assert!(c.holds.holds(&k(2), now()));
    assert!(!c.holds.holds(&k(0xf0), now()));
    // Once the hold is due, the next diff turns the keepalive on.
    let later = now() + Duration::from_secs(3);
    let due = c.diff(&want, later);
    assert_eq!(
        due.changes,
        vec![PeerChange::Update {
            key: k(2),
            endpoint: None,
            allowed_ips: None,
            keepalive: Some(Some(25)),
        }]
    );
    c.device_created();
    assert!(c.peers.is_empty() && c.last_set.is_empty());
    assert_eq!(c.diff(&want, later).changes.len(), 3);
}
