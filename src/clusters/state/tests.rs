use super::*;
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
