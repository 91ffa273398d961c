//! Zone data covering every record form the stub serves (ClusterIP v4/v6, headless with and
//! without hostnames, ExternalName, pods, reverse, cluster.all) and answers too large for UDP
//! (a headless service with 100 endpoints): shared by the libFuzzer target
//! (fuzz_targets/dns_query.rs) and the stable mutation test (tests/dns_mutation.rs).

use sdnlinkd::dns::ZoneData;
use sdnlinkd::model::*;
use std::net::IpAddr;
use std::sync::Arc;

/// Remote cluster "west" with services web (ClusterIP 172.31.0.10, fd00:31::10), db (headless:
/// 10.132.0.5 as db-0, fd00:132::5), ext (ExternalName example.org) and big (headless,
/// 10.132.1.1-100 as big-0..99, port pg), all in `default`.
/// East (local, watched) has listed and is empty, so every zone is known and the rendered fast
/// path is on.
pub fn zone_data() -> ZoneData {
    build(true)
}

/// The same with east not listed yet: its zone and reverse zones answer SERVFAIL, and every
/// query takes the hickory path.
#[allow(dead_code)]
pub fn zone_data_with_unknown() -> ZoneData {
    build(false)
}

fn build(east_listed: bool) -> ZoneData {
    let mut cfg = sdnlinkd::config::parse_str(
        r#"
[local]
name = "east"
pod_cidrs = ["10.128.0.0/14"]
service_cidrs = ["172.30.0.0/16"]
node_name = "fuzz"
[dns]
upstreams = ["192.0.2.1"]
[[remote]]
name = "west"
pod_cidrs = ["10.132.0.0/14", "fd00:132::/64"]
service_cidrs = ["172.31.0.0/16", "fd00:31::/112"]
"#,
    )
    .expect("fuzz config is valid");
    cfg.local.kubeconfig = Some("/nonexistent".into());
    let ep = |ip: IpAddr, host: Option<&str>| Endpoint {
        addresses: vec![ip],
        ready: true,
        serving: true,
        terminating: false,
        hostname: host.map(String::from),
        node_name: None,
        ports: vec![EndpointPort {
            name: "pg".into(),
            protocol: Protocol::Tcp,
            port: 5432,
        }]
        .into(),
    };
    let port = ServicePort {
        name: "pg".into(),
        protocol: Protocol::Tcp,
        port: 5432,
        target_port: TargetPort::Number(5432),
    };
    let svc = |name: &str, kind: ServiceKind, endpoints: Vec<Endpoint>| Service {
        key: ServiceKey {
            namespace: "default".into(),
            name: name.into(),
        },
        kind,
        ports: vec![port.clone()],
        client_ip_affinity: None,
        endpoints,
    };
    let west = vec![
        svc(
            "web",
            ServiceKind::ClusterIp(vec![
                "172.31.0.10".parse().expect("ip"),
                "fd00:31::10".parse().expect("ip"),
            ]),
            vec![],
        ),
        svc(
            "db",
            ServiceKind::Headless,
            vec![
                ep("10.132.0.5".parse().expect("ip"), Some("db-0")),
                ep("fd00:132::5".parse().expect("ip"), None),
            ],
        ),
        svc(
            "ext",
            ServiceKind::ExternalName("example.org".into()),
            vec![],
        ),
        svc(
            "big",
            ServiceKind::Headless,
            (0..100u8)
                .map(|i| ep(IpAddr::from([10, 132, 1, i + 1]), Some(&format!("big-{i}"))))
                .collect(),
        ),
    ];
    let mut snaps = Snapshots::new();
    snaps.insert(
        "west".into(),
        Arc::new(ClusterSnapshot {
            services: west.into_iter().map(|s| (s.key.clone(), s)).collect(),
            nodes: Default::default(),
        }),
    );
    if east_listed {
        snaps.insert("east".into(), Arc::new(ClusterSnapshot::default()));
    }
    ZoneData::build(&cfg, &snaps)
}
