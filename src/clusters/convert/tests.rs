use super::*;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use serde_json::json;

/// An object as the watch delivers it.
fn dynamic<T: serde::Serialize>(o: &T) -> DynamicObject {
    serde_json::from_value(serde_json::to_value(o).expect("test object serializes"))
        .expect("test object is a DynamicObject")
}

/// [`super::service`] on typed test objects.
fn service(
    svc: &core::Service,
    slices: &[&discovery::EndpointSlice],
    trust: Trust<'_>,
) -> Converted<Service> {
    let slices: Vec<DynamicObject> = slices.iter().map(|s| dynamic(*s)).collect();
    let refs: Vec<&DynamicObject> = slices.iter().collect();
    super::service(&dynamic(svc), &refs, trust)
}

/// [`node_record`] then [`super::node`] on a typed test Node.
fn node(n: &core::Node, host_subnets: &[&HostSubnet], trust: Trust<'_>) -> Converted<Node> {
    let rec = node_record(&dynamic(n), trust);
    let mut skips = rec.skips;
    let Some(rec) = rec.value else {
        return Converted { value: None, skips };
    };
    let out = super::node(&rec, host_subnets, trust);
    skips.extend(out.skips);
    Converted {
        value: out.value,
        skips,
    }
}

fn nets(s: &[&str]) -> Vec<IpNet> {
    s.iter().map(|n| n.parse().expect("test CIDR")).collect()
}

struct Cidrs {
    pod: Vec<IpNet>,
    svc: Vec<IpNet>,
}

fn cidrs() -> Cidrs {
    Cidrs {
        pod: nets(&["10.128.0.0/14", "fd00:10::/56"]),
        svc: nets(&["172.30.0.0/16", "fd00:30::/112"]),
    }
}

impl Cidrs {
    fn trust(&self) -> Trust<'_> {
        Trust {
            pod_cidrs: &self.pod,
            service_cidrs: &self.svc,
        }
    }
}

fn svc(v: serde_json::Value) -> core::Service {
    serde_json::from_value(v).expect("test Service")
}

fn slice(v: serde_json::Value) -> discovery::EndpointSlice {
    serde_json::from_value(v).expect("test EndpointSlice")
}

fn web() -> core::Service {
    svc(json!({
        "metadata": {"namespace": "shop", "name": "web"},
        "spec": {
            "clusterIP": "172.30.1.10", "clusterIPs": ["172.30.1.10"],
            "ports": [
                {"name": "http", "port": 80, "targetPort": "http-alt"},
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353}
            ],
            "sessionAffinity": "ClientIP"
        }
    }))
}

fn web_slice(
    name: &str,
    addrs: &[&str],
    ready: Option<bool>,
    terminating: Option<bool>,
) -> discovery::EndpointSlice {
    let eps: Vec<serde_json::Value> = addrs
        .iter()
        .map(|a| {
            let mut cond = serde_json::Map::new();
            if let Some(r) = ready {
                cond.insert("ready".into(), r.into());
            }
            if let Some(t) = terminating {
                cond.insert("terminating".into(), t.into());
            }
            json!({"addresses": [a], "conditions": cond, "hostname": format!("h-{}", a.replace('.', "-"))})
        })
        .collect();
    slice(json!({
        "metadata": {"namespace": "shop", "name": name, "labels": {LABEL_SERVICE_NAME: "web"}},
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": [
            {"name": "http", "port": 8080, "protocol": "TCP"},
            {"name": "dns", "port": 5353, "protocol": "UDP"}
        ]
    }))
}

#[test]
fn named_target_port_resolves_through_slice_ports() {
    let c = cidrs();
    let s = web_slice("web-a", &["10.128.0.5"], None, None);
    let out = service(&web(), &[&s], c.trust());
    assert!(out.skips.is_empty(), "{:?}", out.skips);
    let v = out.value.expect("service kept");
    assert_eq!(
        v.kind,
        ServiceKind::ClusterIp(vec!["172.30.1.10".parse().unwrap()])
    );
    assert_eq!(v.ports[0].target_port, TargetPort::Name("http-alt".into()));
    assert_eq!(v.ports[1].target_port, TargetPort::Number(5353));
    assert_eq!(v.ports[1].protocol, Protocol::Udp);
    assert_eq!(v.client_ip_affinity, Some(DEFAULT_AFFINITY_TIMEOUT));
    let ep = &v.endpoints[0];
    let http = ep
        .ports
        .iter()
        .find(|p| p.name == v.ports[0].name)
        .expect("named port");
    assert_eq!(http.port, 8080);
    assert_eq!(ep.hostname.as_deref(), Some("h-10-128-0-5"));
}

#[test]
fn several_slices_merge_sorted_and_deduplicated() {
    let c = cidrs();
    let a = web_slice("web-b", &["10.128.0.9", "10.128.0.5"], None, None);
    let b = web_slice("web-a", &["10.128.0.7", "10.128.0.5"], None, None);
    let one = service(&web(), &[&a, &b], c.trust()).value.expect("kept");
    let two = service(&web(), &[&b, &a], c.trust()).value.expect("kept");
    assert_eq!(one, two, "order of slices must not matter");
    let addrs: Vec<String> = one
        .endpoints
        .iter()
        .map(|e| e.addresses[0].to_string())
        .collect();
    assert_eq!(addrs, ["10.128.0.5", "10.128.0.7", "10.128.0.9"]);
}

#[test]
fn readiness_serving_terminating() {
    let c = cidrs();
    let absent = web_slice("a", &["10.128.0.1"], None, None);
    let not_ready = web_slice("b", &["10.128.0.2"], Some(false), None);
    let term = web_slice("c", &["10.128.0.3"], Some(false), Some(true));
    let mut term_serving = term.clone();
    term_serving.metadata.name = Some("d".into());
    term_serving.endpoints[0].addresses = vec!["10.128.0.4".into()];
    term_serving.endpoints[0]
        .conditions
        .as_mut()
        .unwrap()
        .serving = Some(true);
    let v = service(
        &web(),
        &[&absent, &not_ready, &term, &term_serving],
        c.trust(),
    )
    .value
    .expect("kept");
    let f = |e: &Endpoint| (e.ready, e.serving, e.terminating);
    assert_eq!(
        f(&v.endpoints[0]),
        (true, true, false),
        "absent means ready and serving"
    );
    assert_eq!(f(&v.endpoints[1]), (false, false, false));
    assert_eq!(f(&v.endpoints[2]), (false, false, true));
    assert_eq!(f(&v.endpoints[3]), (false, true, true));
}

#[test]
fn headless_and_external_name() {
    let c = cidrs();
    let h = svc(json!({"metadata": {"namespace": "db", "name": "pg"},
        "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}}));
    let s = slice(
        json!({"metadata": {"namespace": "db", "name": "pg-1", "labels": {LABEL_SERVICE_NAME: "pg"}},
        "addressType": "IPv4", "endpoints": [{"addresses": ["10.129.1.1"], "hostname": "pg-0"}],
        "ports": [{"port": 5432}]}),
    );
    let v = service(&h, &[&s], c.trust()).value.expect("kept");
    assert_eq!(v.kind, ServiceKind::Headless);
    assert_eq!(v.ports[0].name, "");
    assert_eq!(v.endpoints[0].hostname.as_deref(), Some("pg-0"));

    let e = svc(json!({"metadata": {"namespace": "x", "name": "ext"},
        "spec": {"type": "ExternalName", "externalName": "db.example.com."}}));
    let v = service(&e, &[&s], c.trust()).value.expect("kept");
    assert_eq!(v.kind, ServiceKind::ExternalName("db.example.com".into()));
    assert!(v.endpoints.is_empty());
}

#[test]
fn dual_stack_cluster_ips_and_v6_slices() {
    let c = cidrs();
    let s = svc(json!({"metadata": {"namespace": "a", "name": "ds"},
        "spec": {"clusterIP": "172.30.0.5", "clusterIPs": ["172.30.0.5", "fd00:30::5"], "ports": [{"port": 80}]}}));
    let v6 = slice(
        json!({"metadata": {"namespace": "a", "name": "ds-v6", "labels": {LABEL_SERVICE_NAME: "ds"}},
        "addressType": "IPv6", "endpoints": [{"addresses": ["fd00:10::7"]}], "ports": [{"port": 80}]}),
    );
    let v4 = slice(
        json!({"metadata": {"namespace": "a", "name": "ds-v4", "labels": {LABEL_SERVICE_NAME: "ds"}},
        "addressType": "IPv4", "endpoints": [{"addresses": ["10.130.0.7"]}], "ports": [{"port": 80}]}),
    );
    let out = service(&s, &[&v6, &v4], c.trust());
    assert!(out.skips.is_empty(), "{:?}", out.skips);
    let v = out.value.expect("kept");
    assert_eq!(
        v.kind,
        ServiceKind::ClusterIp(vec![
            "172.30.0.5".parse().unwrap(),
            "fd00:30::5".parse().unwrap()
        ])
    );
    assert_eq!(v.endpoints.len(), 2);
    assert!(v.endpoints.iter().any(|e| e.addresses[0].is_ipv6()));
}

#[test]
fn trust_drops_out_of_cidr_cluster_ip_and_endpoints() {
    let c = cidrs();
    let mut hostile = web();
    hostile.spec.as_mut().unwrap().cluster_ips = Some(vec!["10.96.0.1".into()]);
    let out = service(&hostile, &[], c.trust());
    assert_eq!(out.value, None);
    assert_eq!(
        out.skips[0].reason,
        SkipReason::ClusterIpOutsideServiceCidrs
    );

    // One family inside, one outside: keep the inside one, count the other.
    let mut half = web();
    half.spec.as_mut().unwrap().cluster_ips = Some(vec!["172.30.1.10".into(), "fd99::1".into()]);
    let out = service(&half, &[], c.trust());
    assert_eq!(out.skips.len(), 1);
    assert_eq!(
        out.value.expect("kept").kind,
        ServiceKind::ClusterIp(vec!["172.30.1.10".parse().unwrap()])
    );

    let s = web_slice("w", &["10.128.0.5", "192.168.1.1", "127.0.0.1"], None, None);
    let out = service(&web(), &[&s], c.trust());
    let v = out.value.expect("kept");
    assert_eq!(v.endpoints.len(), 1);
    assert_eq!(v.endpoints[0].addresses[0].to_string(), "10.128.0.5");
    assert_eq!(
        out.skips
            .iter()
            .filter(|s| s.reason == SkipReason::EndpointOutsidePodCidrs)
            .count(),
        2
    );
}

#[test]
fn malformed_objects_are_skipped_not_panicking() {
    let c = cidrs();
    let cases = [
        json!({"metadata": {"namespace": "a", "name": "x"}, "spec": {"clusterIP": "not-an-ip", "ports": [{"port": 80}]}}),
        json!({"metadata": {"namespace": "a", "name": "x"}, "spec": {"clusterIP": "172.30.0.1", "ports": [{"port": 70000}]}}),
        json!({"metadata": {"namespace": "a", "name": "x"}, "spec": {"clusterIP": "172.30.0.1", "ports": [{"port": 80, "protocol": "ICMP"}]}}),
        json!({"metadata": {"namespace": "a", "name": "x"}, "spec": {"clusterIP": "172.30.0.1", "ports": [{"port": 80, "targetPort": 0}]}}),
        json!({"metadata": {"namespace": "a", "name": "x"}, "spec": {"type": "ExternalName"}}),
        json!({"metadata": {"namespace": "a", "name": "x"}, "spec": {"ports": [{"port": 80}]}}),
        json!({"metadata": {"name": "x"}, "spec": {"clusterIP": "172.30.0.1"}}),
        json!({"metadata": {"namespace": "a", "name": "x"}}),
    ];
    for case in cases {
        let out = service(&svc(case.clone()), &[], c.trust());
        assert_eq!(out.value, None, "{case}");
        assert_eq!(out.skips[0].reason, SkipReason::Malformed, "{case}");
    }
    let bad_addr = slice(
        json!({"metadata": {"namespace": "shop", "name": "s", "labels": {LABEL_SERVICE_NAME: "web"}},
        "addressType": "IPv4", "endpoints": [{"addresses": ["10.128.0.300"]}, {"addresses": ["fd00:10::1"]}, {"addresses": ["10.128.0.2"]}],
        "ports": [{"name": "http", "port": 8080}]}),
    );
    let out = service(&web(), &[&bad_addr], c.trust());
    assert_eq!(out.value.expect("service kept").endpoints.len(), 1);
    assert_eq!(
        out.skips
            .iter()
            .filter(|s| s.reason == SkipReason::Malformed)
            .count(),
        2
    );
    let bad_port = slice(
        json!({"metadata": {"namespace": "shop", "name": "s", "labels": {LABEL_SERVICE_NAME: "web"}},
        "addressType": "IPv4", "endpoints": [{"addresses": ["10.128.0.2"]}], "ports": [{"name": "http", "port": 0}]}),
    );
    let out = service(&web(), &[&bad_port], c.trust());
    assert!(out.value.expect("service kept").endpoints.is_empty());
    assert_eq!(out.skips[0].reason, SkipReason::Malformed);
}

#[test]
fn nodes_with_pod_cidrs_host_subnets_and_annotations() {
    let c = cidrs();
    let n: core::Node = serde_json::from_value(json!({
        "metadata": {"name": "w1", "annotations": {ANNOTATION_PUBLIC_KEY: "k", ANNOTATION_ENDPOINT: "192.0.2.1:51820"}},
        "spec": {"podCIDR": "10.128.2.0/24", "podCIDRs": ["10.128.2.0/24", "fd00:10:0:2::/64"]}
    })).expect("test node");
    let hs = HostSubnet {
        host: "w1".into(),
        subnet: "10.129.4.0/23".into(),
    };
    let out = node(&n, &[&hs], c.trust());
    assert!(out.skips.is_empty(), "{:?}", out.skips);
    let v = out.value.expect("kept");
    assert_eq!(
        v.pod_cidrs,
        nets(&["10.128.2.0/24", "10.129.4.0/23", "fd00:10:0:2::/64"])
    );
    assert_eq!(v.wireguard_public_key.as_deref(), Some("k"));
    assert_eq!(v.wireguard_endpoint.as_deref(), Some("192.0.2.1:51820"));

    let hostile: core::Node = serde_json::from_value(json!({
        "metadata": {"name": "evil"},
        "spec": {"podCIDRs": ["0.0.0.0/0", "10.0.0.0/8", "garbage", "10.131.0.0/24"]}
    }))
    .expect("test node");
    let out = node(&hostile, &[], c.trust());
    assert_eq!(out.value.expect("kept").pod_cidrs, nets(&["10.131.0.0/24"]));
    let reasons: Vec<SkipReason> = out.skips.iter().map(|s| s.reason).collect();
    assert_eq!(
        reasons,
        [
            SkipReason::NodeSubnetOutsidePodCidrs,
            SkipReason::NodeSubnetOutsidePodCidrs,
            SkipReason::Malformed
        ]
    );
}
