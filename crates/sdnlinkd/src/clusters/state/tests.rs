use super::*;
use crate::model::SyncState;
use kube::runtime::watcher;
use serde_json::json;

fn obj(v: serde_json::Value) -> DynamicObject {
    serde_json::from_value(v).expect("test object")
}

fn svc(name: &str, ip: &str) -> DynamicObject {
    obj(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "ns", "name": name, "resourceVersion": "1"},
        "spec": {"clusterIP": ip, "ports": [{"name": "p", "port": 80}]}}))
}

fn slice(name: &str, svc: &str, ip: &str) -> DynamicObject {
    obj(
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "ns", "name": name, "resourceVersion": "1",
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4", "endpoints": [{"addresses": [ip]}], "ports": [{"name": "p", "port": 8080}]}),
    )
}

fn state(cap: usize) -> ClusterState {
    let pod: Vec<IpNet> = vec!["10.132.0.0/14".parse().expect("cidr")];
    let svc: Vec<IpNet> = vec!["172.31.0.0/16".parse().expect("cidr")];
    ClusterState::new("east", &pod, &svc, cap)
}

fn key(name: &str) -> ServiceKey {
    ServiceKey {
        namespace: "ns".into(),
        name: name.into(),
    }
}

fn list(s: &mut ClusterState, kind: Kind, objs: Vec<DynamicObject>) -> bool {
    s.handle(kind, Ok(watcher::Event::Init));
    for o in objs {
        s.handle(kind, Ok(watcher::Event::InitApply(o)));
    }
    s.handle(kind, Ok(watcher::Event::InitDone))
}

#[test]
fn slice_before_its_service_attaches_when_the_service_arrives() {
    let mut s = state(100);
    assert!(!s.handle(
        Kind::EndpointSlice,
        Ok(watcher::Event::Apply(slice("a-1", "a", "10.132.0.1")))
    ));
    assert!(s.snapshot().services.is_empty());
    assert!(s.handle(
        Kind::Service,
        Ok(watcher::Event::Apply(svc("a", "172.31.0.1")))
    ));
    assert_eq!(s.snapshot().services[&key("a")].endpoints.len(), 1);
    // The slice moves to another Service: the first loses its endpoint.
    assert!(s.handle(
        Kind::EndpointSlice,
        Ok(watcher::Event::Apply(slice("a-1", "b", "10.132.0.1")))
    ));
    assert!(s.snapshot().services[&key("a")].endpoints.is_empty());
}

#[test]
fn unchanged_apply_does_not_report_a_change() {
    let mut s = state(100);
    assert!(s.handle(
        Kind::Service,
        Ok(watcher::Event::Apply(svc("a", "172.31.0.1")))
    ));
    let before = s.snapshot();
    assert!(!s.handle(
        Kind::Service,
        Ok(watcher::Event::Apply(svc("a", "172.31.0.1")))
    ));
    assert!(
        Arc::ptr_eq(&before, &s.snapshot()),
        "snapshot not rebuilt without a change"
    );
}

#[test]
fn relist_replaces_and_drops_what_vanished() {
    let mut s = state(100);
    list(
        &mut s,
        Kind::Service,
        vec![svc("a", "172.31.0.1"), svc("b", "172.31.0.2")],
    );
    assert_eq!(
        s.state(),
        SyncState::Unknown { reason: None },
        "other kinds not listed yet"
    );
    for k in [Kind::EndpointSlice, Kind::Node] {
        list(&mut s, k, vec![]);
    }
    s.host_subnets_absent();
    assert_eq!(s.state(), SyncState::Current);
    assert_eq!(s.snapshot().services.len(), 2);
    // A 410 then a relist without "b".
    let gone = kube::core::Status {
        code: 410,
        reason: "Expired".into(),
        ..Default::default()
    };
    s.handle(
        Kind::Service,
        Err(watcher::Error::WatchError(Box::new(gone))),
    );
    assert!(matches!(s.state(), SyncState::Degraded { ref reason, .. } if reason.contains("410")));
    assert!(list(&mut s, Kind::Service, vec![svc("a", "172.31.0.1")]));
    assert_eq!(
        s.snapshot().services.keys().cloned().collect::<Vec<_>>(),
        vec![key("a")]
    );
    assert_eq!(s.state(), SyncState::Current);
}

#[test]
fn cap_counts_all_kinds_and_frees_on_delete() {
    let mut s = state(2);
    s.handle(
        Kind::Service,
        Ok(watcher::Event::Apply(svc("a", "172.31.0.1"))),
    );
    s.handle(
        Kind::EndpointSlice,
        Ok(watcher::Event::Apply(slice("a-1", "a", "10.132.0.1"))),
    );
    assert!(!s.handle(
        Kind::Service,
        Ok(watcher::Event::Apply(svc("b", "172.31.0.2")))
    ));
    assert_eq!(s.skipped().get("object_cap"), Some(&1));
    // Updating a held object is not capped.
    assert!(s.handle(
        Kind::Service,
        Ok(watcher::Event::Apply(svc("a", "172.31.0.9")))
    ));
    s.handle(
        Kind::EndpointSlice,
        Ok(watcher::Event::Delete(slice("a-1", "a", "10.132.0.1"))),
    );
    assert!(s.handle(
        Kind::Service,
        Ok(watcher::Event::Apply(svc("b", "172.31.0.2")))
    ));
    assert!(s.skipped().is_empty(), "{:?}", s.skipped());
}

#[test]
fn malformed_update_removes_the_previous_version() {
    let mut s = state(100);
    s.handle(
        Kind::Service,
        Ok(watcher::Event::Apply(svc("a", "172.31.0.1"))),
    );
    let bad = obj(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "ns", "name": "a", "resourceVersion": "2"},
        "spec": {"clusterIP": "172.31.0.1", "ports": [{"port": "http"}]}}));
    assert!(s.handle(Kind::Service, Ok(watcher::Event::Apply(bad))));
    assert!(s.snapshot().services.is_empty());
    assert_eq!(s.skipped().get("malformed"), Some(&1));
    assert_eq!(s.counts().services, 0);
}

fn svc_at(name: &str, ip: &str, created: &str) -> DynamicObject {
    obj(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "ns", "name": name, "creationTimestamp": created},
        "spec": {"clusterIP": ip, "ports": [{"name": "p", "port": 80}]}}))
}

fn apply(s: &mut ClusterState, kind: Kind, o: DynamicObject) -> bool {
    s.handle(kind, Ok(watcher::Event::Apply(o)))
}

fn delete(s: &mut ClusterState, kind: Kind, o: DynamicObject) -> bool {
    s.handle(kind, Ok(watcher::Event::Delete(o)))
}

fn names(s: &mut ClusterState) -> Vec<String> {
    s.snapshot()
        .services
        .keys()
        .map(|k| k.name.clone())
        .collect()
}

#[test]
fn two_services_on_one_cluster_ip_the_oldest_wins_and_the_other_takes_over() {
    let mut s = state(100);
    assert!(apply(
        &mut s,
        Kind::Service,
        svc_at("young", "172.31.0.1", "2025-02-01T00:00:00Z")
    ));
    assert_eq!(names(&mut s), ["young"]);
    // An older claimant arrives: it owns the address, the younger one leaves the snapshot.
    assert!(apply(
        &mut s,
        Kind::Service,
        svc_at("old", "172.31.0.1", "2025-01-01T00:00:00Z")
    ));
    assert_eq!(names(&mut s), ["old"]);
    assert_eq!(s.skipped().get("cluster_ip_conflict"), Some(&1));
    assert_eq!(s.counts().services, 2, "the loser is held, only not served");
    // An unrelated change of the loser does not touch the snapshot.
    let before = s.snapshot();
    let mut moved = svc_at("young", "172.31.0.1", "2025-02-01T00:00:00Z");
    moved.data["spec"]["ports"][0]["port"] = json!(81);
    assert!(!apply(&mut s, Kind::Service, moved));
    assert!(Arc::ptr_eq(&before, &s.snapshot()));
    // The owner goes: the other takes over, with its current content.
    assert!(delete(
        &mut s,
        Kind::Service,
        svc_at("old", "172.31.0.1", "2025-01-01T00:00:00Z")
    ));
    assert_eq!(names(&mut s), ["young"]);
    assert_eq!(s.snapshot().services[&key("young")].ports[0].port, 81);
    assert!(s.skipped().is_empty(), "{:?}", s.skipped());
}

#[test]
fn conflict_ties_break_by_namespace_and_name_whatever_the_order() {
    for order in [["b", "a", "c"], ["c", "b", "a"], ["a", "c", "b"]] {
        let mut s = state(100);
        for n in order {
            apply(
                &mut s,
                Kind::Service,
                svc_at(n, "172.31.0.7", "2025-01-01T00:00:00Z"),
            );
        }
        assert_eq!(names(&mut s), ["a"], "{order:?}");
        assert_eq!(s.skipped().get("cluster_ip_conflict"), Some(&2));
        // A Service without a creation time loses to every dated one.
        apply(&mut s, Kind::Service, svc("undated", "172.31.0.7"));
        assert_eq!(names(&mut s), ["a"]);
        // The owner moves to another address: the next in line takes over the old one.
        assert!(apply(
            &mut s,
            Kind::Service,
            svc_at("a", "172.31.0.8", "2025-01-01T00:00:00Z")
        ));
        assert_eq!(names(&mut s), ["a", "b"]);
        assert_eq!(s.skipped().get("cluster_ip_conflict"), Some(&2));
    }
}

#[test]
fn a_dual_stack_service_that_loses_one_family_is_left_out_whole() {
    let pod: Vec<IpNet> = vec!["10.132.0.0/14".parse().expect("cidr")];
    let svc_cidrs: Vec<IpNet> = vec![
        "172.31.0.0/16".parse().expect("cidr"),
        "fd31::/112".parse().expect("cidr"),
    ];
    let mut s = ClusterState::new("east", &pod, &svc_cidrs, 100);
    let ds = obj(
        json!({"metadata": {"namespace": "ns", "name": "ds", "creationTimestamp": "2025-03-01T00:00:00Z"},
        "spec": {"clusterIPs": ["172.31.0.1", "fd31::1"], "ports": [{"port": 80}]}}),
    );
    apply(&mut s, Kind::Service, ds);
    apply(
        &mut s,
        Kind::Service,
        svc_at("v6", "fd31::1", "2025-01-01T00:00:00Z"),
    );
    assert_eq!(names(&mut s), ["v6"]);
    // A relist of the same objects converges to the same answer.
    list(
        &mut s,
        Kind::Service,
        vec![
            svc_at("v6", "fd31::1", "2025-01-01T00:00:00Z"),
            obj(
                json!({"metadata": {"namespace": "ns", "name": "ds", "creationTimestamp": "2025-03-01T00:00:00Z"},
            "spec": {"clusterIPs": ["172.31.0.1", "fd31::1"], "ports": [{"port": 80}]}}),
            ),
        ],
    );
    assert_eq!(names(&mut s), ["v6"]);
    assert_eq!(s.skipped().get("cluster_ip_conflict"), Some(&1));
}

#[test]
fn names_the_api_server_refuses_are_counted_per_reason_and_never_served() {
    let mut s = state(100);
    apply(&mut s, Kind::Service, svc("a.b", "172.31.0.1"));
    apply(&mut s, Kind::Service, svc("ok", "172.31.0.2"));
    let bad_ns = obj(json!({"metadata": {"namespace": "Ns", "name": "x"},
        "spec": {"clusterIP": "172.31.0.3", "ports": [{"port": 80}]}}));
    apply(&mut s, Kind::Service, bad_ns);
    let host = obj(
        json!({"metadata": {"namespace": "ns", "name": "ok-1", "labels": {"kubernetes.io/service-name": "ok"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.132.0.1"], "hostname": "x.ok"}, {"addresses": ["10.132.0.2"], "hostname": "pod-2"}],
        "ports": [{"name": "p", "port": 8080}]}),
    );
    apply(&mut s, Kind::EndpointSlice, host.clone());
    assert_eq!(names(&mut s), ["ok"]);
    assert_eq!(s.snapshot().services[&key("ok")].endpoints.len(), 1);
    let skipped = s.skipped();
    assert_eq!(skipped.get("invalid_service_name"), Some(&1));
    assert_eq!(skipped.get("invalid_namespace"), Some(&1));
    assert_eq!(skipped.get("invalid_endpoint_hostname"), Some(&1));
    // Applying the same objects again counts nothing twice.
    apply(&mut s, Kind::Service, svc("a.b", "172.31.0.1"));
    apply(&mut s, Kind::EndpointSlice, host.clone());
    assert_eq!(s.skipped(), skipped);
    // Deleting them uncounts them.
    delete(&mut s, Kind::Service, svc("a.b", "172.31.0.1"));
    delete(&mut s, Kind::EndpointSlice, host);
    assert_eq!(s.skipped().get("invalid_service_name"), None);
    assert_eq!(s.skipped().get("invalid_endpoint_hostname"), None);
}

fn slice_of(name: &str, svc: &str, n: usize, base: u32) -> DynamicObject {
    let eps: Vec<serde_json::Value> = (0..n)
        .map(|i| json!({"addresses": [std::net::Ipv4Addr::from((10u32 << 24) | (132 << 16) | (base + i as u32)).to_string()]}))
        .collect();
    obj(
        json!({"metadata": {"namespace": "ns", "name": name, "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4", "endpoints": eps, "ports": [{"name": "p", "port": 8080}]}),
    )
}

#[test]
fn byte_cap_refuses_a_relist_that_does_not_fit_and_keeps_the_last_good_snapshot() {
    let mut s = state(1000);
    s.set_max_bytes(64 << 10);
    list(&mut s, Kind::Service, vec![svc("a", "172.31.0.1")]);
    list(
        &mut s,
        Kind::EndpointSlice,
        vec![slice_of("a-1", "a", 10, 1)],
    );
    list(&mut s, Kind::Node, vec![]);
    s.host_subnets_absent();
    assert_eq!(s.state(), SyncState::Current);
    let good = s.snapshot();
    assert_eq!(good.services[&key("a")].endpoints.len(), 10);
    let held = s.counts().bytes;
    assert!(held > 0 && held < 64 << 10, "{held}");

    // A relist of slices that would take more than the cap: refused whole, nothing replaced.
    let big: Vec<DynamicObject> = (0..10)
        .map(|i| slice_of(&format!("a-{i}"), "a", 1000, 1000 * i + 20))
        .collect();
    assert!(!list(&mut s, Kind::EndpointSlice, big));
    assert!(
        Arc::ptr_eq(&good, &s.snapshot()),
        "the last good snapshot stays"
    );
    assert_eq!(s.counts().endpoint_slices, 1);
    assert_eq!(s.counts().bytes, held);
    assert_eq!(s.skipped().get("byte_cap"), Some(&1));
    assert!(s.over_cap());
    match s.state() {
        SyncState::Degraded { reason, .. } => {
            assert!(reason.contains("sync.max_bytes_per_cluster"), "{reason}");
            assert!(reason.contains("endpointslices"), "{reason}");
        }
        other => panic!("not degraded: {other:?}"),
    }
    // Watch events still apply, each against the cap: a small update goes in, a big one
    // leaves the held version as it is.
    assert!(apply(
        &mut s,
        Kind::EndpointSlice,
        slice_of("a-1", "a", 5, 1)
    ));
    assert_eq!(s.snapshot().services[&key("a")].endpoints.len(), 5);
    assert!(!apply(
        &mut s,
        Kind::EndpointSlice,
        slice_of("a-1", "a", 1000, 1)
    ));
    assert_eq!(s.snapshot().services[&key("a")].endpoints.len(), 5);
    assert_eq!(s.skipped().get("byte_cap"), Some(&2));
    // A relist that fits replaces everything and clears the refusals.
    assert!(list(
        &mut s,
        Kind::EndpointSlice,
        vec![slice_of("a-2", "a", 3, 1)]
    ));
    assert_eq!(s.snapshot().services[&key("a")].endpoints.len(), 3);
    assert_eq!(s.state(), SyncState::Current);
    assert!(!s.over_cap());
    assert!(s.skipped().is_empty(), "{:?}", s.skipped());
}

#[test]
fn object_cap_refuses_a_relist_whole_once_a_good_snapshot_exists() {
    let mut s = state(3);
    list(
        &mut s,
        Kind::Service,
        vec![svc("a", "172.31.0.1"), svc("b", "172.31.0.2")],
    );
    for k in [Kind::EndpointSlice, Kind::Node] {
        list(&mut s, k, vec![]);
    }
    s.host_subnets_absent();
    let good = s.snapshot();
    let four: Vec<DynamicObject> = (1..=4)
        .map(|i| svc(&format!("s{i}"), &format!("172.31.1.{i}")))
        .collect();
    assert!(!list(&mut s, Kind::Service, four));
    assert!(Arc::ptr_eq(&good, &s.snapshot()));
    assert_eq!(s.skipped().get("object_cap"), Some(&1));
    assert!(
        matches!(s.state(), SyncState::Degraded { ref reason, .. } if reason.contains("sync.max_objects_per_cluster"))
    );
}

#[test]
fn a_first_list_over_the_cap_keeps_serving_the_warm_snapshot() {
    let mut s = state(2);
    let warm = Arc::new(ClusterSnapshot::default());
    s.set_warm(warm.clone(), WarmSource::Reload);
    let three: Vec<DynamicObject> = (1..=3)
        .map(|i| svc(&format!("s{i}"), &format!("172.31.1.{i}")))
        .collect();
    list(&mut s, Kind::Service, three);
    for k in [Kind::EndpointSlice, Kind::Node] {
        list(&mut s, k, vec![]);
    }
    s.host_subnets_absent();
    assert!(!s.listed(), "the Service list was refused");
    assert!(Arc::ptr_eq(&warm, &s.served().expect("warm")));
    assert!(
        matches!(s.state(), SyncState::Warm { reason: Some(ref r), .. } if r.contains("sync.max_objects_per_cluster"))
    );
}

#[test]
fn lists_of_several_kinds_at_once_share_the_cap() {
    let mut s = state(5);
    // Interleaved as `select_all` delivers the watches' pages.
    for k in [Kind::Service, Kind::EndpointSlice, Kind::Node] {
        s.handle(k, Ok(watcher::Event::Init));
    }
    for i in 0..4 {
        s.handle(
            Kind::Service,
            Ok(watcher::Event::InitApply(svc(
                &format!("s{i}"),
                &format!("172.31.0.{}", i + 1),
            ))),
        );
        s.handle(
            Kind::EndpointSlice,
            Ok(watcher::Event::InitApply(slice(
                &format!("s{i}-1"),
                &format!("s{i}"),
                &format!("10.132.0.{}", i + 1),
            ))),
        );
    }
    for k in [Kind::Service, Kind::EndpointSlice, Kind::Node] {
        s.handle(k, Ok(watcher::Event::InitDone));
    }
    s.host_subnets_absent();
    let c = s.counts();
    assert_eq!(c.services + c.endpoint_slices + c.nodes, 5);
    assert_eq!(s.skipped().get("object_cap"), Some(&3));
}

#[test]
fn refusals_are_tracked_up_to_a_bound_then_only_counted() {
    let mut s = state(1_000_000);
    let n = MAX_TRACKED_REFUSALS + 50;
    for i in 0..n {
        apply(
            &mut s,
            Kind::Service,
            svc(&format!("bad.{i}"), "172.31.0.1"),
        );
    }
    assert_eq!(s.skipped().get("invalid_service_name"), Some(&(n as u64)));
    assert!(s.refused.len() <= MAX_TRACKED_REFUSALS);
    // A relist of the kind starts the count afresh.
    list(&mut s, Kind::Service, vec![svc("bad.0", "172.31.0.1")]);
    assert_eq!(s.skipped().get("invalid_service_name"), Some(&1));
}

#[test]
fn a_list_of_refused_objects_keeps_a_bounded_list_and_counts_the_rest() {
    let mut s = state(1_000_000);
    let n = MAX_TRACKED_REFUSALS + 50;
    s.handle(Kind::Service, Ok(watcher::Event::Init));
    for i in 0..n {
        let o = svc(&format!("bad.{i}"), "172.31.0.1");
        s.handle(Kind::Service, Ok(watcher::Event::InitApply(o)));
    }
    let st = &s.staging[&Kind::Service];
    assert_eq!(st.refused.len(), MAX_TRACKED_REFUSALS);
    assert_eq!(
        st.refused_more.get(&SkipReason::InvalidServiceName),
        Some(&50)
    );
    s.handle(Kind::Service, Ok(watcher::Event::InitDone));
    assert_eq!(s.skipped().get("invalid_service_name"), Some(&(n as u64)));
    assert!(s.refused.len() <= MAX_TRACKED_REFUSALS);
    // The next relist counts afresh, also what was past the bound.
    list(&mut s, Kind::Service, vec![svc("bad.0", "172.31.0.1")]);
    assert_eq!(s.skipped().get("invalid_service_name"), Some(&1));
}

#[test]
fn node_annotations_and_bytes_ignore_foreign_annotations() {
    let mut s = state(100);
    let node = |extra: &str| {
        obj(json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "w1", "annotations": {
                "sdnlink.io/wireguard-public-key": "k", "other.io/blob": extra}},
            "spec": {"podCIDR": "10.132.1.0/24"}}))
    };
    list(&mut s, Kind::Node, vec![node("x")]);
    let small = s.counts().bytes;
    assert!(
        !apply(&mut s, Kind::Node, node(&"y".repeat(200_000))),
        "nothing we use changed"
    );
    assert_eq!(s.counts().bytes, small);
    assert_eq!(
        s.node_annotations("w1"),
        Some(Some((Some("k".into()), None)))
    );
    assert_eq!(s.node_annotations("w2"), Some(None));
}

#[test]
fn host_subnets_follow_their_host_through_an_index() {
    let mut s = state(100);
    let node = |n: &str| obj(json!({"metadata": {"name": n}}));
    let hs = |name: &str, host: &str, subnet: &str| {
        obj(
            json!({"apiVersion": "network.openshift.io/v1", "kind": "HostSubnet",
            "metadata": {"name": name}, "host": host, "subnet": subnet}),
        )
    };
    apply(&mut s, Kind::Node, node("w1"));
    apply(&mut s, Kind::Node, node("w2"));
    assert!(apply(
        &mut s,
        Kind::HostSubnet,
        hs("h", "w1", "10.132.4.0/23")
    ));
    let cidrs = |s: &mut ClusterState, n: &str| s.snapshot().nodes[n].pod_cidrs.clone();
    assert_eq!(
        cidrs(&mut s, "w1"),
        vec!["10.132.4.0/23".parse::<IpNet>().expect("cidr")]
    );
    // The HostSubnet moves to w2: w1 loses the subnet, w2 gains it.
    assert!(apply(
        &mut s,
        Kind::HostSubnet,
        hs("h", "w2", "10.132.4.0/23")
    ));
    assert!(cidrs(&mut s, "w1").is_empty());
    assert_eq!(cidrs(&mut s, "w2").len(), 1);
    assert!(delete(
        &mut s,
        Kind::HostSubnet,
        hs("h", "w2", "10.132.4.0/23")
    ));
    assert!(cidrs(&mut s, "w2").is_empty());
    // A subnet outside the pod CIDRs is counted while it is there.
    apply(&mut s, Kind::HostSubnet, hs("evil", "w1", "0.0.0.0/0"));
    assert_eq!(s.skipped().get("node_subnet_outside_pod_cidrs"), Some(&1));
    delete(&mut s, Kind::HostSubnet, hs("evil", "w1", "0.0.0.0/0"));
    assert!(s.skipped().is_empty(), "{:?}", s.skipped());
}

#[test]
fn a_slice_change_rebuilds_only_its_service() {
    let mut s = state(100);
    apply(&mut s, Kind::Service, svc("a", "172.31.0.1"));
    apply(&mut s, Kind::Service, svc("b", "172.31.0.2"));
    apply(&mut s, Kind::EndpointSlice, slice_of("a-1", "a", 3, 1));
    apply(&mut s, Kind::EndpointSlice, slice_of("b-1", "b", 3, 100));
    let before = s.snapshot();
    drop(before);
    assert!(apply(
        &mut s,
        Kind::EndpointSlice,
        slice_of("a-2", "a", 2, 50)
    ));
    assert_eq!(s.dirty.len(), 1, "only a is rebuilt");
    let snap = s.snapshot();
    assert_eq!(snap.services[&key("a")].endpoints.len(), 5);
    assert_eq!(snap.services[&key("b")].endpoints.len(), 3);
}
