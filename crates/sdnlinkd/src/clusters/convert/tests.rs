use super::*;
use crate::model::{Endpoint, Node, Protocol, Service, ServiceKind, TargetPort};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use kube::core::DynamicObject;
use serde_json::json;
use std::sync::Arc;

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

fn obj(v: serde_json::Value) -> DynamicObject {
    serde_json::from_value(v).expect("test object")
}

fn named_svc(ns: &str, name: &str) -> DynamicObject {
    obj(json!({"metadata": {"namespace": ns, "name": name},
        "spec": {"clusterIP": "172.30.0.1", "ports": [{"name": "http", "port": 80}]}}))
}

fn reason_of(skips: &[Skip]) -> Option<SkipReason> {
    skips.first().map(|s| s.reason)
}

#[test]
fn service_names_are_dns_1035_labels_and_namespaces_dns_1123_labels() {
    let c = cidrs();
    let long63 = format!("a{}", "b".repeat(62));
    let long64 = format!("a{}", "b".repeat(63));
    for (ns, name) in [
        ("shop", "web"),
        ("0ns", "w-1"),
        (long63.as_str(), long63.as_str()),
    ] {
        let out = service_record(&named_svc(ns, name), c.trust());
        assert!(out.value.is_some(), "{ns}/{name}: {:?}", out.skips);
    }
    let bad_names = [
        "a.b",           // a dot would add a label under another record
        "1web",          // DNS-1035: starts with a letter
        "Web",           // lower case only
        "web-",          // ends with a letter or digit
        "we_b",          // no underscore
        long64.as_str(), // at most 63 characters
        "",
    ];
    for name in bad_names {
        let out = service_record(&named_svc("shop", name), c.trust());
        assert_eq!(out.value, None, "{name:?}");
        assert_eq!(
            reason_of(&out.skips),
            Some(SkipReason::InvalidServiceName),
            "{name:?}"
        );
    }
    for ns in ["a.b", "Shop", "-x", long64.as_str()] {
        let out = service_record(&named_svc(ns, "web"), c.trust());
        assert_eq!(out.value, None, "{ns:?}");
        assert_eq!(
            reason_of(&out.skips),
            Some(SkipReason::InvalidNamespace),
            "{ns:?}"
        );
    }
    // Slices of a namespace the API server would refuse are refused too.
    let s = obj(
        json!({"metadata": {"namespace": "a.b", "name": "s", "labels": {LABEL_SERVICE_NAME: "web"}},
        "addressType": "IPv4", "endpoints": [{"addresses": ["10.128.0.1"]}]}),
    );
    let out = slice_record(&s, c.trust(), &mut Interner::default());
    assert_eq!(reason_of(&out.skips), Some(SkipReason::InvalidNamespace));
}

#[test]
fn endpoint_hostnames_port_names_external_names_and_node_names_follow_the_api_rules() {
    let c = cidrs();
    let slice_with = |ep: serde_json::Value, port_name: &str| {
        obj(
            json!({"metadata": {"namespace": "shop", "name": "s", "labels": {LABEL_SERVICE_NAME: "web"}},
            "addressType": "IPv4", "endpoints": [ep, {"addresses": ["10.128.0.9"], "hostname": "ok-0"}],
            "ports": [{"name": port_name, "port": 8080}]}),
        )
    };
    let mut intern = Interner::default();
    // A hostname with a dot would answer for a name under another record: the endpoint goes.
    for host in ["web.evil", "UP", "x".repeat(64).as_str()] {
        let out = slice_record(
            &slice_with(
                json!({"addresses": ["10.128.0.1"], "hostname": host}),
                "http",
            ),
            c.trust(),
            &mut intern,
        );
        let v = out.value.expect("slice kept");
        assert_eq!(v.endpoints.len(), 1, "{host}");
        assert_eq!(v.endpoints[0].hostname(), Some("ok-0"));
        assert_eq!(
            reason_of(&out.skips),
            Some(SkipReason::InvalidEndpointHostname),
            "{host}"
        );
    }
    // A bad nodeName only loses the node name (it is not served anywhere).
    let out = slice_record(
        &slice_with(
            json!({"addresses": ["10.128.0.1"], "nodeName": "Node_1"}),
            "http",
        ),
        c.trust(),
        &mut intern,
    );
    assert_eq!(out.value.expect("kept").endpoints.len(), 2);
    assert_eq!(reason_of(&out.skips), Some(SkipReason::InvalidNodeName));
    // A slice port name that is not a label: the slice contributes nothing.
    let out = slice_record(
        &slice_with(json!({"addresses": ["10.128.0.1"]}), "_http._tcp"),
        c.trust(),
        &mut intern,
    );
    assert!(out.value.expect("kept").endpoints.is_empty());
    assert_eq!(reason_of(&out.skips), Some(SkipReason::InvalidPortName));
    // Service port names (SRV labels) and named targetPorts.
    for (ports, want) in [
        (
            json!([{"name": "a.b", "port": 80}]),
            SkipReason::InvalidPortName,
        ),
        (
            json!([{"name": "http", "port": 80, "targetPort": "a.b"}]),
            SkipReason::InvalidPortName,
        ),
        (
            json!([{"name": "http", "port": 80, "targetPort": "sixteen-chars-xx"}]),
            SkipReason::InvalidPortName,
        ),
    ] {
        let s = obj(json!({"metadata": {"namespace": "shop", "name": "web"},
            "spec": {"clusterIP": "172.30.0.1", "ports": ports}}));
        let out = service_record(&s, c.trust());
        assert_eq!(out.value, None, "{ports}");
        assert_eq!(reason_of(&out.skips), Some(want), "{ports}");
    }
    // ExternalName: a DNS-1123 subdomain (a trailing dot is fine).
    let ext = |name: &str| {
        obj(json!({"metadata": {"namespace": "x", "name": "ext"},
            "spec": {"type": "ExternalName", "externalName": name}}))
    };
    assert!(service_record(&ext("db.example.com."), c.trust())
        .value
        .is_some());
    for bad in ["db example.com", "DB.example.com", "a..b", "-a.b"] {
        let out = service_record(&ext(bad), c.trust());
        assert_eq!(
            reason_of(&out.skips),
            Some(SkipReason::InvalidExternalName),
            "{bad}"
        );
    }
    // Node names: DNS-1123 subdomains of at most 253 characters.
    let n =
        |name: &str| obj(json!({"metadata": {"name": name}, "spec": {"podCIDR": "10.128.2.0/24"}}));
    let ok = format!(
        "{}.{}.{}.{}",
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(61)
    );
    assert_eq!(ok.len(), 253);
    assert!(node_record(&n(&ok), c.trust()).value.is_some());
    for bad in [format!("{ok}x"), "w1/evil".into(), "W1".into(), "".into()] {
        let out = node_record(&n(&bad), c.trust());
        assert_eq!(out.value, None, "{bad}");
        assert_eq!(
            reason_of(&out.skips),
            Some(SkipReason::InvalidNodeName),
            "{bad}"
        );
    }
}

#[test]
fn api_server_limits_on_ports_endpoints_and_addresses() {
    let c = cidrs();
    let mut intern = Interner::default();
    let ports = |n: usize| -> Vec<serde_json::Value> {
        (0..n)
            .map(|i| json!({"name": format!("p{i}"), "port": 1000 + i}))
            .collect()
    };
    let svc = |n: usize| {
        obj(json!({"metadata": {"namespace": "shop", "name": "web"},
            "spec": {"clusterIP": "172.30.0.1", "ports": ports(n)}}))
    };
    assert_eq!(
        service_record(&svc(MAX_SERVICE_PORTS), c.trust())
            .value
            .expect("at the limit")
            .service
            .ports
            .len(),
        100
    );
    let out = service_record(&svc(MAX_SERVICE_PORTS + 1), c.trust());
    assert_eq!(
        (out.value, reason_of(&out.skips).expect("a reason")),
        (None, SkipReason::TooManyPorts)
    );

    let slice = |eps: usize, ports_n: usize, addrs: usize| {
        let eps: Vec<serde_json::Value> = (0..eps)
            .map(|i| {
                let a: Vec<String> = (0..addrs)
                    .map(|j| format!("10.128.{}.{}", i / 250, 1 + (i + j) % 250))
                    .collect();
                json!({"addresses": a})
            })
            .collect();
        obj(
            json!({"metadata": {"namespace": "shop", "name": "s", "labels": {LABEL_SERVICE_NAME: "web"}},
            "addressType": "IPv4", "endpoints": eps, "ports": ports(ports_n)}),
        )
    };
    let out = slice_record(&slice(MAX_SLICE_ENDPOINTS, 1, 1), c.trust(), &mut intern);
    assert_eq!(out.value.expect("at the limit").endpoints.len(), 1000);
    let out = slice_record(
        &slice(MAX_SLICE_ENDPOINTS + 1, 1, 1),
        c.trust(),
        &mut intern,
    );
    assert_eq!(
        (out.value, reason_of(&out.skips).expect("a reason")),
        (None, SkipReason::TooManyEndpoints)
    );
    let out = slice_record(&slice(1, MAX_SLICE_PORTS, 1), c.trust(), &mut intern);
    assert_eq!(out.value.expect("at the limit").ports.len(), 100);
    let out = slice_record(&slice(1, MAX_SLICE_PORTS + 1, 1), c.trust(), &mut intern);
    assert_eq!(
        (out.value, reason_of(&out.skips).expect("a reason")),
        (None, SkipReason::TooManyPorts)
    );
    // An endpoint with more addresses than the API admits is dropped; the others stay.
    let mut s = slice(2, 1, 1);
    s.data["endpoints"][0]["addresses"] = json!((0..=MAX_ENDPOINT_ADDRESSES)
        .map(|i| format!("10.129.0.{}", i + 1))
        .collect::<Vec<_>>());
    let out = slice_record(&s, c.trust(), &mut intern);
    assert_eq!(out.value.expect("kept").endpoints.len(), 1);
    assert_eq!(reason_of(&out.skips), Some(SkipReason::TooManyAddresses));
}

#[test]
fn records_keep_only_what_the_daemon_uses() {
    let c = cidrs();
    let big = "x".repeat(100_000);
    let n = obj(json!({"metadata": {"name": "w1",
            "annotations": {ANNOTATION_PUBLIC_KEY: "k", "kubectl.kubernetes.io/last-applied-configuration": big.clone()},
            "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}]},
        "spec": {"podCIDR": "10.128.2.0/24"}, "status": {"images": [{"names": [big.clone()]}]}}));
    let rec = node_record(&n, c.trust()).value.expect("kept");
    assert_eq!(
        rec,
        NodeRecord {
            name: "w1".into(),
            pod_cidrs: nets(&["10.128.2.0/24"]),
            public_key: Some("k".into()),
            endpoint: None
        }
    );
    // Our own annotations are bounded too.
    let n = obj(json!({"metadata": {"name": "w1", "annotations": {ANNOTATION_ENDPOINT: big}}}));
    let out = node_record(&n, c.trust());
    assert_eq!(out.value.expect("kept").endpoint, None);
    assert_eq!(reason_of(&out.skips), Some(SkipReason::Malformed));
    // Endpoints of one slice share one port list and one copy of each node name.
    let s = obj(
        json!({"metadata": {"namespace": "shop", "name": "s", "labels": {LABEL_SERVICE_NAME: "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.128.0.1"], "nodeName": "n1"}, {"addresses": ["10.128.0.2"], "nodeName": "n1"}],
        "ports": [{"name": "http", "port": 8080}]}),
    );
    let mut intern = Interner::default();
    let a = slice_record(&s, c.trust(), &mut intern)
        .value
        .expect("kept");
    let b = slice_record(&s, c.trust(), &mut intern)
        .value
        .expect("kept");
    assert!(Arc::ptr_eq(&a.ports, &b.ports));
    let (n1, n2) = (
        a.endpoints[0].node_name.clone(),
        b.endpoints[1].node_name.clone(),
    );
    assert!(Arc::ptr_eq(&n1.expect("node"), &n2.expect("node")));
    let merged = merge_endpoints([&a]);
    assert!(Arc::ptr_eq(&merged[0].ports, &merged[1].ports));
}

#[test]
fn interner_forgets_what_no_record_uses() {
    let mut i = Interner::default();
    let keep = i.str("kept");
    for n in 0..5000 {
        drop(i.str(&format!("node-{n}")));
    }
    assert!(i.len() < 2100, "swept as it grows: {}", i.len());
    assert!(
        Arc::ptr_eq(&keep, &i.str("kept")),
        "a used entry survives a sweep"
    );
}

#[test]
fn remote_values_in_details_are_cut_short() {
    let c = cidrs();
    let long = "9".repeat(10_000);
    let s = obj(json!({"metadata": {"namespace": "shop", "name": "web"},
        "spec": {"clusterIP": long, "ports": [{"port": 80}]}}));
    let out = service_record(&s, c.trust());
    assert_eq!(reason_of(&out.skips), Some(SkipReason::Malformed));
    assert!(
        out.skips[0].detail.len() < 200,
        "{}",
        out.skips[0].detail.len()
    );
}
