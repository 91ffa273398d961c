//! IP plan: remote ClusterIPs 10.97.0.0/16 (east) and 10.98.0.0/16 (west), fd97::/108;
//! endpoints 10.1.0.0/16 (east), 10.2.0.0/16 (west), fd01::/64.
//!
//! `testdata/listing-before.json` is what nft 1.0.6 (Debian 12) printed for
//! `nft -j -p list table inet sdnlink` after `nft -f testdata/full.nft` in an empty namespace:
//! the real kernel's view of [`before`], the input of the parser and diff tests.

use super::*;
use crate::model::{Held, Protocol, ServiceKey};
use crate::proxy::nft::table::Table;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test literal")
}

fn vs(
    vip: &str,
    proto: Protocol,
    port: u16,
    sched: &str,
    aff: Option<u32>,
    dests: &[(&str, u16)],
) -> VirtualService {
    VirtualService {
        key: VirtualKey {
            vip: ip(vip),
            protocol: proto,
            port,
        },
        cluster: "east".into(),
        service: ServiceKey {
            namespace: "default".into(),
            name: "x".into(),
        },
        port_name: String::new(),
        scheduler: sched.parse().expect("a scheduler name"),
        affinity_timeout: aff,
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

use Protocol::{Tcp, Udp};

/// The table-driven desired state behind the golden files.
fn before() -> DesiredProxy {
    desired(vec![
        vs(
            "10.97.0.10",
            Tcp,
            80,
            "rr",
            None,
            &[("10.1.0.1", 8080), ("10.1.0.2", 8080)],
        ),
        vs("10.97.0.53", Udp, 53, "rr", None, &[("10.1.0.7", 5353)]),
        vs(
            "10.97.0.30",
            Tcp,
            80,
            "rr",
            Some(600),
            &[("10.1.0.9", 8080), ("10.1.0.10", 8080)],
        ),
        vs(
            "10.98.0.20",
            Tcp,
            443,
            "sh",
            None,
            &[("10.2.0.4", 8443), ("10.2.0.5", 8443)],
        ),
        vs("fd97::10", Tcp, 80, "rr", Some(10800), &[("fd01::1", 8080)]),
        vs("10.97.0.13", Tcp, 80, "rr", None, &[]),
        vs("fd97::13", Udp, 53, "rr", None, &[]),
        vs("10.97.0.14", Tcp, 80, "rr", None, &[("10.1.0.14", 80)]),
    ])
}

/// `before` after churn: an endpoint removed, one added under affinity, a service gone, a
/// service gaining its first endpoint, another losing its last.
fn after() -> DesiredProxy {
    desired(vec![
        vs("10.97.0.10", Tcp, 80, "rr", None, &[("10.1.0.2", 8080)]),
        vs("10.97.0.53", Udp, 53, "rr", None, &[("10.1.0.7", 5353)]),
        vs(
            "10.97.0.30",
            Tcp,
            80,
            "rr",
            Some(600),
            &[("10.1.0.9", 8080), ("10.1.0.10", 8080), ("10.1.0.11", 8080)],
        ),
        vs("fd97::10", Tcp, 80, "rr", Some(10800), &[("fd01::1", 8080)]),
        vs("10.97.0.13", Tcp, 80, "rr", None, &[("10.1.0.13", 80)]),
        vs("fd97::13", Udp, 53, "rr", None, &[]),
        vs("10.97.0.14", Tcp, 80, "rr", None, &[]),
    ])
}

fn testdata(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/proxy/nft/testdata")
        .join(name)
}

/// Compares with a golden file; `SDNLINK_UPDATE_GOLDEN=1` rewrites it (review the diff).
fn golden(name: &str, got: &str) {
    let path = testdata(name);
    if std::env::var_os("SDNLINK_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, got).expect("writing golden file");
    }
    let want = std::fs::read_to_string(&path).expect("golden file exists");
    assert_eq!(got, want, "golden {name} differs");
}

/// The kernel's table of [`before`], as nft listed it.
fn listed() -> Table {
    let json = std::fs::read_to_string(testdata("listing-before.json")).expect("golden listing");
    parse_listing(&json).expect("a real listing parses")
}

/// A key of a verdict map (`index` None) or of an endpoint map (`proto` ignored).
fn key(vip: &str, proto: u8, port: u16, index: Option<u32>) -> ElemKey {
    ElemKey {
        addr: ip(vip),
        proto: if index.is_some() { None } else { Some(proto) },
        port,
        index,
    }
}

#[test]
fn golden_full_transaction_into_an_absent_table() {
    golden(
        "full.nft",
        full_transaction(&before(), &Table::default()).text(),
    );
}

#[test]
fn kernel_listing_of_the_desired_table_needs_no_transaction() {
    let t = listed();
    let tx = full_transaction(&before(), &t);
    assert!(tx.is_empty(), "{}", tx.text());
    assert_eq!(t, {
        // The listing has no comment and no rule texts; everything compared is equal.
        let mut d = desired_table(&before());
        d.decl = String::new();
        d
    });
}

#[test]
fn golden_incremental_transaction() {
    golden(
        "incremental.nft",
        incremental_transaction(&before(), &after()).text(),
    );
}

#[test]
fn incremental_is_the_full_diff_restricted_to_changed_services() {
    let inc = incremental_transaction(&before(), &after());
    let full = full_transaction(&after(), &desired_table(&before()));
    assert_eq!(inc.text(), full.text());
}

#[test]
fn incremental_of_identical_states_is_empty() {
    assert!(incremental_transaction(&before(), &before()).is_empty());
    // Names that are not in the kernel do not count as changes.
    let mut renamed = before();
    for v in renamed.services.values_mut() {
        v.cluster = "other".into();
        v.port_name = "http".into();
    }
    assert!(incremental_transaction(&before(), &renamed).is_empty());
}

#[test]
fn drift_deleted_service_element_is_re_added_alone() {
    let mut t = listed();
    t.elements
        .get_mut("service-ips")
        .expect("map")
        .items
        .remove(&key("10.97.0.10", 6, 80, None));
    let tx = full_transaction(&before(), &t);
    assert_eq!(
        tx.text(),
        "add element inet sdnlink service-ips {\n\t10.97.0.10 . 6 . 80 : goto pick4-tcp-random-2\n}\n"
    );
    assert_eq!((tx.commands(), tx.objects()), (1, 1));
}

#[test]
fn drift_changed_and_stray_endpoint_elements_are_replaced_and_removed() {
    let mut t = listed();
    let items = &mut t.elements.get_mut("endpoints-tcp").expect("map").items;
    items.insert(
        key("10.97.0.10", 6, 80, Some(1)),
        ElemValue::Target(ip("10.1.0.99"), 8080),
    );
    items.insert(
        key("10.97.0.10", 6, 80, Some(7)),
        ElemValue::Target(ip("10.1.0.98"), 8080),
    );
    let tx = full_transaction(&before(), &t);
    assert_eq!(
        tx.text(),
        "delete element inet sdnlink endpoints-tcp {\n\t10.97.0.10 . 80 . 1,\n\t10.97.0.10 . 80 . 7\n}\n\
         add element inet sdnlink endpoints-tcp {\n\t10.97.0.10 . 80 . 1 : 10.1.0.2 . 8080\n}\n"
    );
}

#[test]
fn drift_deleted_chain_is_recreated_with_its_rules() {
    let mut t = listed();
    // The kernel deletes a chain only once nothing points at it: 10.97.0.14's element first.
    t.chains.remove("pick4-tcp-random-1");
    t.elements
        .get_mut("service-ips")
        .expect("map")
        .items
        .remove(&key("10.97.0.14", 6, 80, None));
    let tx = full_transaction(&before(), &t);
    assert_eq!(
        tx.text(),
        "add chain inet sdnlink pick4-tcp-random-1\n\
         add rule inet sdnlink pick4-tcp-random-1 dnat ip to ip daddr . tcp dport . numgen random mod 1 map @endpoints-tcp\n\
         add element inet sdnlink service-ips {\n\t10.97.0.14 . 6 . 80 : goto pick4-tcp-random-1\n}\n"
    );
}

#[test]
fn drift_edited_rule_rewrites_its_chain_only() {
    let mut t = listed();
    let c = t.chains.get_mut("pick4-tcp-hash-2").expect("chain");
    c.rules[0].expr = serde_json::json!([{"accept": null}]);
    let tx = full_transaction(&before(), &t);
    assert_eq!(
        tx.text(),
        "flush chain inet sdnlink pick4-tcp-hash-2\n\
         add rule inet sdnlink pick4-tcp-hash-2 dnat ip to ip daddr . tcp dport . jhash ip saddr mod 2 seed 0x0 map @endpoints-tcp\n"
    );
}

#[test]
fn drift_base_chain_with_another_hook_is_recreated() {
    let mut t = listed();
    t.chains
        .get_mut("nat-output")
        .and_then(|c| c.base.as_mut())
        .expect("base chain")
        .prio = 0;
    let tx = full_transaction(&before(), &t);
    assert_eq!(
        tx.text(),
        "flush chain inet sdnlink nat-output\n\
         delete chain inet sdnlink nat-output\n\
         add chain inet sdnlink nat-output { type nat hook output priority -100; policy accept; }\n\
         add rule inet sdnlink nat-output jump services\n"
    );
}

#[test]
fn drift_deleted_set_is_re_added() {
    let mut t = listed();
    t.sets.remove("aff-10.97.0.30-tcp-80-10.1.0.9-8080");
    let tx = full_transaction(&before(), &t);
    assert_eq!(
        tx.text(),
        "add set inet sdnlink aff-10.97.0.30-tcp-80-10.1.0.9-8080 { type ipv4_addr; flags dynamic,timeout; timeout 600s; }\n"
    );
}

#[test]
fn drift_changed_set_is_replaced_with_the_rules_that_use_it() {
    let mut t = listed();
    t.sets
        .get_mut("aff-fd97__10-tcp-80-fd01__1-8080")
        .expect("set")
        .timeout = Some(60);
    let tx = full_transaction(&before(), &t);
    assert_eq!(
        tx.text(),
        "flush chain inet sdnlink ep-fd97__10-tcp-80-fd01__1-8080\n\
         flush chain inet sdnlink svc-fd97__10-tcp-80\n\
         delete set inet sdnlink aff-fd97__10-tcp-80-fd01__1-8080\n\
         add set inet sdnlink aff-fd97__10-tcp-80-fd01__1-8080 { type ipv6_addr; flags dynamic,timeout; timeout 10800s; }\n\
         add rule inet sdnlink ep-fd97__10-tcp-80-fd01__1-8080 update @aff-fd97__10-tcp-80-fd01__1-8080 { ip6 saddr }\n\
         add rule inet sdnlink ep-fd97__10-tcp-80-fd01__1-8080 meta l4proto tcp dnat ip6 to [fd01::1]:8080\n\
         add rule inet sdnlink svc-fd97__10-tcp-80 ip6 saddr @aff-fd97__10-tcp-80-fd01__1-8080 goto ep-fd97__10-tcp-80-fd01__1-8080\n\
         add rule inet sdnlink svc-fd97__10-tcp-80 goto ep-fd97__10-tcp-80-fd01__1-8080\n"
    );
}

#[test]
fn drift_deleted_map_is_re_added_with_its_elements() {
    let mut t = listed();
    t.sets.remove("no-endpoint-services6");
    t.elements.remove("no-endpoint-services6");
    let tx = full_transaction(&before(), &t);
    assert_eq!(
        tx.text(),
        "add map inet sdnlink no-endpoint-services6 { type ipv6_addr . inet_proto . inet_service : verdict; }\n\
         add element inet sdnlink no-endpoint-services6 {\n\tfd97::13 . 17 . 53 : goto reject-chain\n}\n"
    );
}

#[test]
fn drift_stale_objects_of_ours_are_deleted_after_their_references() {
    let mut t = listed();
    let json = r#"{"nftables": [
        {"chain": {"family": "inet", "table": "sdnlink", "name": "svc-10.97.0.99-tcp-80", "handle": 90}},
        {"set": {"family": "inet", "name": "aff-10.97.0.99-tcp-80-10.1.0.99-80", "table": "sdnlink", "type": "ipv4_addr", "handle": 91, "flags": ["timeout"], "timeout": 60}},
        {"rule": {"family": "inet", "table": "sdnlink", "chain": "svc-10.97.0.99-tcp-80", "handle": 92, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@aff-10.97.0.99-tcp-80-10.1.0.99-80"}}, {"accept": null}]}}]}"#;
    let stale = parse_listing(json).expect("valid");
    t.chains.extend(stale.chains);
    t.sets.extend(stale.sets);
    t.elements
        .get_mut("service-ips")
        .expect("map")
        .items
        .insert(
            key("10.97.0.99", 6, 80, None),
            ElemValue::Goto("svc-10.97.0.99-tcp-80".into()),
        );
    let tx = full_transaction(&before(), &t);
    assert_eq!(
        tx.text(),
        "delete element inet sdnlink service-ips {\n\t10.97.0.99 . 6 . 80\n}\n\
         flush chain inet sdnlink svc-10.97.0.99-tcp-80\n\
         delete set inet sdnlink aff-10.97.0.99-tcp-80-10.1.0.99-80\n\
         delete chain inet sdnlink svc-10.97.0.99-tcp-80\n"
    );
}

#[test]
fn one_endpoint_change_at_scale_costs_constant_commands() {
    let big = |extra: bool| {
        let mut list = Vec::new();
        for i in 0..10_000u32 {
            let vip = format!("10.97.{}.{}", i / 250, i % 250 + 1);
            let mut d: Vec<(String, u16)> = (0..10)
                .map(|j| (format!("10.1.{}.{}", i / 250, j + 1), 8080))
                .collect();
            if extra && i == 4321 {
                d.push(("10.1.200.200".into(), 8080));
            }
            let refs: Vec<(&str, u16)> = d.iter().map(|(a, p)| (a.as_str(), *p)).collect();
            list.push(vs(&vip, Tcp, 80, "rr", None, &refs));
        }
        desired(list)
    };
    let tx = incremental_transaction(&big(false), &big(true));
    // The service's element now jumps to the 11-endpoint chain (delete and add), plus one
    // endpoint element: proportional to that service's change, independent of the 10k other
    // services, and within the 12 commands of the rule-per-endpoint layout this replaced.
    assert_eq!(tx.commands(), 3, "{}", tx.text());
    assert!(tx.commands() <= 12);
    let back = incremental_transaction(&big(true), &big(false));
    assert_eq!(back.commands(), 3, "{}", back.text());
    assert!(back.commands() <= 11);
}

#[test]
fn names_are_deterministic_and_v6_safe() {
    let k = VirtualKey {
        vip: ip("fd97::10"),
        protocol: Udp,
        port: 53,
    };
    let d = Destination {
        addr: ip("fd01::1"),
        port: 5353,
    };
    assert_eq!(service_chain(&k), "svc-fd97__10-udp-53");
    assert_eq!(endpoint_chain(&k, &d), "ep-fd97__10-udp-53-fd01__1-5353");
    assert_eq!(affinity_set(&k, &d), "aff-fd97__10-udp-53-fd01__1-5353");
}

#[test]
fn listing_parses_only_our_table() {
    let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
        {"table": {"family": "inet", "name": "sdnlink", "handle": 1}},
        {"chain": {"family": "inet", "table": "sdnlink", "name": "nat-output", "handle": 8, "type": "nat", "hook": "output", "prio": -100, "policy": "accept"}},
        {"chain": {"family": "inet", "table": "sdnlink", "name": "svc-a", "handle": 9}},
        {"chain": {"family": "inet", "table": "other", "name": "svc-b", "handle": 3}},
        {"chain": {"family": "ip", "table": "sdnlink", "name": "svc-c", "handle": 3}},
        {"set": {"family": "inet", "name": "aff-x", "table": "sdnlink", "type": "ipv4_addr", "flags": ["timeout"], "timeout": 10800}},
        {"set": {"family": "inet", "name": "foreign", "table": "other", "type": "ipv4_addr"}}]}"#;
    let o = parse_listing(json).expect("valid json");
    assert_eq!(o.chains.len(), 2);
    let b = o.chains["nat-output"].base.as_ref().expect("base chain");
    assert_eq!(
        (b.kind.as_str(), b.hook.as_str(), b.prio),
        ("nat", "output", -100)
    );
    assert_eq!(o.chains["svc-a"].base, None);
    assert_eq!(o.sets.len(), 1);
    assert_eq!(
        (o.sets["aff-x"].key.as_str(), o.sets["aff-x"].timeout),
        ("ipv4_addr", Some(10800))
    );
    assert_eq!(
        parse_listing("").expect("empty is no table"),
        Table::default()
    );
}

/// The services as the kernel can tell them: no names, the scheduler reduced to `rr`/`sh`.
fn as_kernel_sees(d: &DesiredProxy) -> Vec<VirtualService> {
    d.services
        .values()
        .map(|v| VirtualService {
            cluster: String::new(),
            service: ServiceKey {
                namespace: String::new(),
                name: String::new(),
            },
            port_name: String::new(),
            scheduler: if consistent(&v.scheduler) {
                Scheduling::SourceHash
            } else {
                Scheduling::RoundRobin
            },
            ..v.clone()
        })
        .collect()
}

#[test]
fn services_read_back_from_the_listing() {
    let mut got = table_services(&listed());
    got.sort_by_key(|v| v.key);
    assert_eq!(got, as_kernel_sees(&before()));
}

#[test]
fn services_read_back_from_a_table_of_the_rule_per_endpoint_layout() {
    // What an earlier sdnlinkd wrote: the DNAT cascade inside the service chain.
    let json = r#"{"nftables": [
        {"table": {"family": "inet", "name": "sdnlink", "handle": 1}},
        {"map": {"family": "inet", "name": "service-ips", "table": "sdnlink", "type": ["ipv4_addr", "inet_proto", "inet_service"], "handle": 1, "map": "verdict",
          "elem": [[{"concat": ["10.98.0.10", "tcp", 80]}, {"goto": {"target": "svc-10.98.0.10-tcp-80"}}]]}},
        {"chain": {"family": "inet", "table": "sdnlink", "name": "svc-10.98.0.10-tcp-80", "handle": 14}},
        {"rule": {"family": "inet", "table": "sdnlink", "chain": "svc-10.98.0.10-tcp-80", "handle": 33, "expr": [{"match": {"op": "==", "left": {"numgen": {"mode": "random", "mod": 2, "offset": 0}}, "right": 0}}, {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}, {"dnat": {"family": "ip", "addr": "10.2.0.1", "port": 8080}}]}},
        {"rule": {"family": "inet", "table": "sdnlink", "chain": "svc-10.98.0.10-tcp-80", "handle": 34, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}, {"dnat": {"family": "ip", "addr": "10.2.0.2", "port": 8080}}]}}]}"#;
    let got = table_services(&parse_listing(json).expect("valid"));
    assert_eq!(
        got,
        as_kernel_sees(&desired(vec![vs(
            "10.98.0.10",
            Tcp,
            80,
            "rr",
            None,
            &[("10.2.0.1", 8080), ("10.2.0.2", 8080)]
        )]))
    );
}

/// `before` as desired while west (10.98.0.0/16) has not listed: its persisted snapshot lost
/// a Service and an endpoint the kernel still has.
#[test]
fn held_cluster_keeps_its_services_and_endpoints_in_a_full_sync() {
    let t = listed();
    let mut d = before();
    d.services.remove(&VirtualKey {
        vip: ip("10.98.0.20"),
        protocol: Tcp,
        port: 443,
    });
    d.services.remove(&VirtualKey {
        vip: ip("10.97.0.14"),
        protocol: Tcp,
        port: 80,
    });
    d.held = Held {
        cidrs: vec![("west".into(), "10.98.0.0/16".parse().expect("literal"))],
    };
    let adopted = d.adopting(table_services(&t)).expect("west is held");
    let tx = full_transaction(&adopted, &t);
    // East listed: its removed Service goes. West's stays whole.
    assert_eq!(
        tx.text(),
        "delete element inet sdnlink endpoints-tcp {\n\t10.97.0.14 . 80 . 0\n}\n\
         delete element inet sdnlink service-ips {\n\t10.97.0.14 . 6 . 80\n}\n"
    );

    // The persisted snapshot has the Service with one endpoint only, and a new one: the
    // union is kept, the new endpoint is added.
    let mut d2 = d.clone();
    d2.services.insert(
        VirtualKey {
            vip: ip("10.98.0.20"),
            protocol: Tcp,
            port: 443,
        },
        vs(
            "10.98.0.20",
            Tcp,
            443,
            "sh",
            None,
            &[("10.2.0.5", 8443), ("10.2.0.6", 8443)],
        ),
    );
    let adopted = d2.adopting(table_services(&t)).expect("west is held");
    let got: Vec<String> = adopted.services[&VirtualKey {
        vip: ip("10.98.0.20"),
        protocol: Tcp,
        port: 443,
    }]
        .destinations
        .iter()
        .map(|d| d.addr.to_string())
        .collect();
    assert_eq!(got, ["10.2.0.4", "10.2.0.5", "10.2.0.6"]);
    let tx = full_transaction(&adopted, &t);
    assert!(
        !tx.text()
            .contains("delete element inet sdnlink endpoints-tcp {\n\t10.98"),
        "no endpoint of the held cluster is removed:\n{}",
        tx.text()
    );
    assert!(
        tx.text().contains(
            "add element inet sdnlink endpoints-tcp {\n\t10.98.0.20 . 443 . 2 : 10.2.0.6 . 8443\n}"
        ),
        "{}",
        tx.text()
    );
}

#[test]
fn held_cluster_keeps_its_services_in_an_incremental_sync() {
    let committed = before();
    let mut d = before();
    d.services.remove(&VirtualKey {
        vip: ip("10.98.0.20"),
        protocol: Tcp,
        port: 443,
    });
    d.held = Held {
        cidrs: vec![("west".into(), "10.98.0.0/16".parse().expect("literal"))],
    };
    let adopted = d
        .adopting(committed.services.values().cloned())
        .expect("west is held");
    assert!(incremental_transaction(&committed, &adopted).is_empty());
    // Without the hold the same desired state deletes it.
    d.held = Held::default();
    assert!(!incremental_transaction(&committed, &d).is_empty());
}
