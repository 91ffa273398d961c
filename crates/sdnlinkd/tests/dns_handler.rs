//! Handler tests without sockets: build zone data from a config and snapshots, give the handler
//! a raw request, decode the raw answer it returns.

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{LowerName, Name, RData, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use sdnlinkd::config::{self, Config};
use sdnlinkd::dns::{answer_local_bytes, DnsHandler, Transport, ZoneData};
use sdnlinkd::model::*;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

const CFG: &str = r#"
[local]
name = "east"
pod_cidrs = ["10.128.0.0/14"]
service_cidrs = ["172.30.0.0/16"]
node_name = "node-1"
[dns]
address = "169.254.20.53"
port = 53
upstreams = ["169.254.20.53:53"]
ttl = 7
[[remote]]
name = "west"
pod_cidrs = ["10.132.0.0/14", "fd00:132::/64"]
service_cidrs = ["172.31.0.0/16", "fd00:31::/112"]
[[remote]]
name = "north"
pod_cidrs = ["10.136.0.0/14"]
service_cidrs = ["172.29.0.0/16"]
"#;

/// The DNS address itself is the only upstream: anything forwarded is refused as a loop, so
/// these tests see exactly which names the stub treats as not its own.
fn config() -> Config {
    let mut cfg = config::parse_str(CFG).expect("test config is valid");
    cfg.local.kubeconfig = Some(PathBuf::from("/nonexistent/east.kubeconfig"));
    // Validation drops our own address from the upstreams; put it back to exercise the loop
    // guard of the stub itself.
    cfg.dns.upstreams = vec![SocketAddr::new(cfg.dns.address, cfg.dns.port)];
    cfg
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("literal address")
}

fn key(ns: &str, name: &str) -> ServiceKey {
    ServiceKey {
        namespace: ns.into(),
        name: name.into(),
    }
}

fn port(name: &str, proto: Protocol, port: u16) -> ServicePort {
    ServicePort {
        name: name.into(),
        protocol: proto,
        port,
        target_port: TargetPort::Number(port),
    }
}

fn ep(addr: &str, host: Option<&str>, ready: bool, ports: &[(&str, u16)]) -> Endpoint {
    Endpoint {
        addresses: vec![ip(addr)],
        ready,
        serving: ready,
        terminating: false,
        hostname: host.map(String::from),
        node_name: None,
        ports: ports
            .iter()
            .map(|(n, p)| EndpointPort {
                name: n.to_string(),
                protocol: Protocol::Tcp,
                port: *p,
            })
            .collect(),
    }
}

fn svc(
    ns: &str,
    name: &str,
    kind: ServiceKind,
    ports: Vec<ServicePort>,
    eps: Vec<Endpoint>,
) -> Service {
    Service {
        key: key(ns, name),
        kind,
        ports,
        client_ip_affinity: None,
        endpoints: eps,
    }
}

fn snap(services: Vec<Service>) -> Arc<ClusterSnapshot> {
    Arc::new(ClusterSnapshot {
        services: services.into_iter().map(|s| (s.key.clone(), s)).collect(),
        nodes: Default::default(),
    })
}

fn snapshots() -> Snapshots {
    let mut s = Snapshots::new();
    s.insert(
        "east".into(),
        snap(vec![
            svc(
                "default",
                "web",
                ServiceKind::ClusterIp(vec![ip("172.30.0.10")]),
                vec![
                    port("http", Protocol::Tcp, 80),
                    port("dns", Protocol::Udp, 53),
                ],
                vec![],
            ),
            svc(
                "default",
                "db",
                ServiceKind::Headless,
                vec![port("pg", Protocol::Tcp, 5432)],
                vec![
                    ep("10.128.0.5", Some("db-0"), true, &[("pg", 15432)]),
                    ep("10.128.0.6", None, true, &[("pg", 15432)]),
                    ep("10.128.0.7", Some("db-2"), false, &[("pg", 15432)]),
                ],
            ),
            svc(
                "default",
                "ext",
                ServiceKind::ExternalName("example.org".into()),
                vec![],
                vec![],
            ),
            svc(
                "default",
                "alias",
                ServiceKind::ExternalName("web.default.svc.cluster.west".into()),
                vec![],
                vec![],
            ),
            svc(
                "default",
                "empty",
                ServiceKind::Headless,
                vec![],
                vec![ep("10.128.0.9", None, false, &[])],
            ),
        ]),
    );
    let big: Vec<Endpoint> = (0..100)
        .map(|i| ep(&format!("10.132.1.{}", i + 1), None, true, &[("pg", 5432)]))
        .collect();
    s.insert(
        "west".into(),
        snap(vec![
            svc(
                "default",
                "web",
                ServiceKind::ClusterIp(vec![ip("172.31.0.10"), ip("fd00:31::10")]),
                vec![port("http", Protocol::Tcp, 8080)],
                vec![],
            ),
            svc(
                "default",
                "db",
                ServiceKind::Headless,
                vec![port("pg", Protocol::Tcp, 5432)],
                vec![ep("10.132.0.5", Some("db-0"), true, &[("pg", 5432)])],
            ),
            svc(
                "default",
                "big",
                ServiceKind::Headless,
                vec![port("pg", Protocol::Tcp, 5432)],
                big,
            ),
        ]),
    );
    s
}

fn handler_with(cfg: &Config, snaps: &Snapshots) -> DnsHandler {
    let zones = Arc::new(ZoneData::build(cfg, snaps));
    let us = SocketAddr::new(cfg.dns.address, cfg.dns.port);
    DnsHandler::standalone(zones, cfg.dns.upstreams.clone(), us, 16)
}

fn handler() -> DnsHandler {
    handler_with(&config(), &snapshots())
}

struct Ask<'a> {
    name: &'a str,
    rtype: RecordType,
    proto: Transport,
    edns: Option<u16>,
}

fn q(name: &str, rtype: RecordType) -> Ask<'_> {
    Ask {
        name,
        rtype,
        proto: Transport::Udp,
        edns: Some(1232),
    }
}

fn query_bytes(a: &Ask<'_>) -> Vec<u8> {
    let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_ascii(a.name).expect("test name"),
        a.rtype,
    ));
    if let Some(size) = a.edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().expect("encode query")
}

async fn send_raw(h: &DnsHandler, raw: Vec<u8>, proto: Transport) -> (Option<Message>, usize) {
    let src: SocketAddr = "10.128.3.3:5353".parse().expect("literal");
    match h.answer(&raw, src, proto).await {
        Some(bytes) => (Some(strict(&bytes)), bytes.len()),
        None => (None, 0),
    }
}

/// Decodes an answer strictly: every section as its count says, no byte left over (hickory's
/// `Message::from_vec` alone ignores trailing bytes such as half a record).
fn strict(bytes: &[u8]) -> Message {
    let mut d = BinDecoder::new(bytes);
    let m = Message::read(&mut d).expect("response decodes");
    assert!(d.is_empty(), "{} bytes after the last record", d.len());
    m
}

async fn ask(h: &DnsHandler, a: Ask<'_>) -> Message {
    send_raw(h, query_bytes(&a), a.proto)
        .await
        .0
        .expect("a response was sent")
}

fn addrs(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

fn soa_only(m: &Message) -> bool {
    m.answers.is_empty()
        && m.authorities.len() == 1
        && matches!(m.authorities[0].data, RData::SOA(_))
}

#[tokio::test]
async fn clusterip_a_aaaa_ttl_and_authority() {
    let h = handler();
    let m = ask(&h, q("web.default.svc.cluster.east.", RecordType::A)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert_eq!(addrs(&m), vec![ip("172.30.0.10")]);
    assert_eq!(m.answers[0].ttl, 7);
    let m = ask(&h, q("web.default.svc.cluster.west.", RecordType::AAAA)).await;
    assert_eq!(addrs(&m), vec![ip("fd00:31::10")]);
    // OPT echoed because the query had one (RFC 6891 7).
    assert!(m.edns.is_some());
}

#[tokio::test]
async fn case_insensitive_names() {
    let h = handler();
    let m = ask(&h, q("WeB.DEFAULT.Svc.Cluster.EAST.", RecordType::A)).await;
    assert_eq!(addrs(&m), vec![ip("172.30.0.10")]);
    let m = ask(
        &h,
        q("_HTTP._Tcp.web.default.svc.cluster.east.", RecordType::SRV),
    )
    .await;
    assert_eq!(m.answers.len(), 1);
}

#[tokio::test]
async fn nodata_and_nxdomain_carry_soa() {
    let h = handler();
    let m = ask(&h, q("web.default.svc.cluster.east.", RecordType::AAAA)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(soa_only(&m), "NODATA with SOA: {m:?}");
    assert_eq!(
        m.authorities[0].name,
        Name::from_ascii("cluster.east.").expect("literal")
    );
    let m = ask(&h, q("nope.default.svc.cluster.east.", RecordType::A)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(soa_only(&m));
    // Empty non-terminals exist (RFC 8020): NODATA, not NXDOMAIN.
    for ent in [
        "default.svc.cluster.east.",
        "svc.cluster.east.",
        "_tcp.web.default.svc.cluster.east.",
        "pod.cluster.east.",
        "pod.cluster.north.",
        "pod.cluster.all.",
    ] {
        let m = ask(&h, q(ent, RecordType::A)).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{ent}");
        assert!(soa_only(&m), "{ent}");
    }
    // The apex answers its SOA.
    let m = ask(&h, q("cluster.north.", RecordType::SOA)).await;
    assert_eq!(m.answers.len(), 1);
}

#[tokio::test]
async fn dns_version_txt_in_every_zone() {
    let h = handler();
    for zone in [
        "cluster.east.",
        "cluster.west.",
        "cluster.north.",
        "cluster.all.",
    ] {
        let m = ask(&h, q(&format!("dns-version.{zone}"), RecordType::TXT)).await;
        let RData::TXT(txt) = &m.answers[0].data else {
            panic!("not TXT: {m:?}")
        };
        assert_eq!(txt.to_string(), "1.0.1", "{zone}");
    }
}

fn srvs(m: &Message) -> Vec<(u16, String)> {
    let mut v: Vec<(u16, String)> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((s.port, s.target.to_string())),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn srv_for_named_ports() {
    let h = handler();
    let m = ask(
        &h,
        q("_http._tcp.web.default.svc.cluster.east.", RecordType::SRV),
    )
    .await;
    assert_eq!(
        srvs(&m),
        vec![(80, "web.default.svc.cluster.east.".to_string())]
    );
    let m = ask(
        &h,
        q("_dns._udp.web.default.svc.cluster.east.", RecordType::SRV),
    )
    .await;
    assert_eq!(
        srvs(&m),
        vec![(53, "web.default.svc.cluster.east.".to_string())]
    );
    // Wrong protocol label: no such name.
    let m = ask(
        &h,
        q("_dns._tcp.web.default.svc.cluster.east.", RecordType::SRV),
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    // Headless: one SRV per ready endpoint, endpoint port, target the endpoint's name.
    let m = ask(
        &h,
        q("_pg._tcp.db.default.svc.cluster.east.", RecordType::SRV),
    )
    .await;
    assert_eq!(
        srvs(&m),
        vec![
            (15432, "10-128-0-6.db.default.svc.cluster.east.".to_string()),
            (15432, "db-0.db.default.svc.cluster.east.".to_string()),
        ]
    );
}

#[tokio::test]
async fn headless_ready_endpoints_and_hostnames() {
    let h = handler();
    let m = ask(&h, q("db.default.svc.cluster.east.", RecordType::A)).await;
    assert_eq!(addrs(&m), vec![ip("10.128.0.5"), ip("10.128.0.6")]);
    let m = ask(&h, q("db-0.db.default.svc.cluster.east.", RecordType::A)).await;
    assert_eq!(addrs(&m), vec![ip("10.128.0.5")]);
    let m = ask(
        &h,
        q("10-128-0-6.db.default.svc.cluster.east.", RecordType::A),
    )
    .await;
    assert_eq!(addrs(&m), vec![ip("10.128.0.6")]);
    // Not ready: no record under its hostname.
    let m = ask(&h, q("db-2.db.default.svc.cluster.east.", RecordType::A)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    // A headless service without ready endpoints does not exist (docs/design.md).
    let m = ask(&h, q("empty.default.svc.cluster.east.", RecordType::A)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
}

fn ptr_target(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::PTR(p) => Some(p.0.to_string()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn ptr_for_clusterips_and_endpoints() {
    let h = handler();
    let m = ask(&h, q("10.0.30.172.in-addr.arpa.", RecordType::PTR)).await;
    assert_eq!(ptr_target(&m), vec!["web.default.svc.cluster.east."]);
    let m = ask(&h, q("5.0.128.10.in-addr.arpa.", RecordType::PTR)).await;
    assert_eq!(ptr_target(&m), vec!["db-0.db.default.svc.cluster.east."]);
    let v6 = Name::from(ip("fd00:31::10")).to_string();
    let m = ask(&h, q(&v6, RecordType::PTR)).await;
    assert_eq!(ptr_target(&m), vec!["web.default.svc.cluster.west."]);
    // Unused address in our service CIDR: NXDOMAIN from us.
    let m = ask(&h, q("99.0.30.172.in-addr.arpa.", RecordType::PTR)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(soa_only(&m));
    // Under the rounded apex (10.in-addr.arpa) but outside every CIDR: not ours, forwarded
    // (and refused here, the only upstream being ourselves).
    let m = ask(&h, q("1.0.0.10.in-addr.arpa.", RecordType::PTR)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
}

#[tokio::test]
async fn externalname_cname() {
    let h = handler();
    let m = ask(&h, q("ext.default.svc.cluster.east.", RecordType::A)).await;
    assert_eq!(m.answers.len(), 1);
    let RData::CNAME(c) = &m.answers[0].data else {
        panic!("not CNAME: {m:?}")
    };
    assert_eq!(c.0.to_string(), "example.org.");
    // A target in our own zones is followed one step, as CoreDNS does, because stub resolvers
    // do not chase a bare CNAME.
    let m = ask(&h, q("alias.default.svc.cluster.east.", RecordType::A)).await;
    assert!(matches!(m.answers[0].data, RData::CNAME(_)));
    assert_eq!(addrs(&m), vec![ip("172.31.0.10")]);
    let m = ask(&h, q("alias.default.svc.cluster.east.", RecordType::TXT)).await;
    assert_eq!(m.answers.len(), 1, "only the CNAME for other types");
}

#[tokio::test]
async fn pod_form_inside_pod_cidrs_only() {
    let h = handler();
    let m = ask(&h, q("10-128-3-4.any-ns.pod.cluster.east.", RecordType::A)).await;
    assert_eq!(addrs(&m), vec![ip("10.128.3.4")]);
    let m = ask(
        &h,
        q("fd00-132--7.default.pod.cluster.west.", RecordType::AAAA),
    )
    .await;
    assert_eq!(addrs(&m), vec![ip("fd00:132::7")]);
    let m = ask(
        &h,
        q("10-128-3-4.any-ns.pod.cluster.east.", RecordType::AAAA),
    )
    .await;
    assert!(soa_only(&m));
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    // Another cluster's pod address is not a pod of east.
    let m = ask(&h, q("10-132-0-1.default.pod.cluster.east.", RecordType::A)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let m = ask(&h, q("10-132-0-1.default.pod.cluster.all.", RecordType::A)).await;
    assert_eq!(addrs(&m), vec![ip("10.132.0.1")]);
}

#[tokio::test]
async fn cluster_all_merges_in_config_order() {
    let h = handler();
    let m = ask(&h, q("web.default.svc.cluster.all.", RecordType::A)).await;
    assert_eq!(addrs(&m), vec![ip("172.30.0.10"), ip("172.31.0.10")]);
    let m = ask(&h, q("web.default.svc.cluster.all.", RecordType::AAAA)).await;
    assert_eq!(addrs(&m), vec![ip("fd00:31::10")]);
    let m = ask(&h, q("db.default.svc.cluster.all.", RecordType::A)).await;
    assert_eq!(
        addrs(&m),
        vec![ip("10.128.0.5"), ip("10.128.0.6"), ip("10.132.0.5")]
    );
    let m = ask(
        &h,
        q("_http._tcp.web.default.svc.cluster.all.", RecordType::SRV),
    )
    .await;
    assert_eq!(
        srvs(&m),
        vec![
            (80, "web.default.svc.cluster.east.".to_string()),
            (8080, "web.default.svc.cluster.west.".to_string()),
        ]
    );
    let m = ask(
        &h,
        q("_pg._tcp.db.default.svc.cluster.all.", RecordType::SRV),
    )
    .await;
    assert_eq!(srvs(&m).len(), 3);
    // Only in west: still answered.
    let mut big = q("big.default.svc.cluster.all.", RecordType::A);
    big.edns = Some(4096);
    let m = ask(&h, big).await;
    assert_eq!(m.answers.len(), 100);
    let m = ask(&h, q("nowhere.default.svc.cluster.all.", RecordType::A)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(soa_only(&m));
    let m = ask(&h, q("empty.default.svc.cluster.all.", RecordType::A)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    // ExternalName only: exists, no data.
    let m = ask(&h, q("ext.default.svc.cluster.all.", RecordType::A)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(soa_only(&m));
}

#[tokio::test]
async fn cluster_all_keeps_a_degraded_clusters_last_snapshot_and_drops_absent_ones() {
    let cfg = config();
    let mut snaps = snapshots();
    // The daemon keeps a degraded cluster's last snapshot in the map: still answered.
    let h = handler_with(&cfg, &snaps);
    let m = ask(&h, q("web.default.svc.cluster.all.", RecordType::A)).await;
    assert_eq!(m.answers.len(), 2);
    // A cluster without a snapshot contributes nothing; its zone still exists.
    snaps.remove("west");
    h.update(Arc::new(ZoneData::build(&cfg, &snaps)));
    let m = ask(&h, q("web.default.svc.cluster.all.", RecordType::A)).await;
    assert_eq!(addrs(&m), vec![ip("172.30.0.10")]);
    let m = ask(&h, q("web.default.svc.cluster.west.", RecordType::A)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
}

#[tokio::test]
async fn all_zone_off_and_local_without_kubeconfig_are_not_ours() {
    let mut cfg = config();
    cfg.dns.all_zone = false;
    cfg.local.kubeconfig = None;
    let h = handler_with(&cfg, &snapshots());
    for name in [
        "web.default.svc.cluster.all.",
        "web.default.svc.cluster.east.",
    ] {
        let m = ask(&h, q(name, RecordType::A)).await;
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::Refused,
            "{name} forwarded"
        );
    }
    let m = ask(&h, q("web.default.svc.cluster.west.", RecordType::A)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    let st = h.status();
    assert_eq!(st.loops_refused, 2);
    assert_eq!(st.answers.get("REFUSED"), Some(&2));
    assert_eq!(st.answers.get("NOERROR"), Some(&1));
    assert_eq!(st.queries, 3);
    assert!(st.zones.contains(&"cluster.west.".to_string()));
    assert!(!st.zones.contains(&"cluster.all.".to_string()));
}

#[tokio::test]
async fn truncation_without_and_with_edns_and_tcp_in_full() {
    let h = handler();
    let name = "big.default.svc.cluster.west.";
    let (m, len) = send_raw(
        &h,
        query_bytes(&Ask {
            name,
            rtype: RecordType::A,
            proto: Transport::Udp,
            edns: None,
        }),
        Transport::Udp,
    )
    .await;
    let m = m.expect("answered");
    assert!(m.metadata.truncation, "TC set without EDNS");
    assert!(len <= 512, "{len} bytes");
    assert!(m.answers.len() < 100);
    let (m, len) = send_raw(
        &h,
        query_bytes(&Ask {
            name,
            rtype: RecordType::A,
            proto: Transport::Udp,
            edns: Some(1232),
        }),
        Transport::Udp,
    )
    .await;
    let m = m.expect("answered");
    assert!(
        m.metadata.truncation && len <= 1232,
        "1232 advertised: {len}"
    );
    let (m, len) = send_raw(
        &h,
        query_bytes(&Ask {
            name,
            rtype: RecordType::A,
            proto: Transport::Udp,
            edns: Some(4096),
        }),
        Transport::Udp,
    )
    .await;
    let m = m.expect("answered");
    assert!(!m.metadata.truncation && len > 1232 && len <= 4096);
    assert_eq!(m.answers.len(), 100);
    let (m, _) = send_raw(
        &h,
        query_bytes(&Ask {
            name,
            rtype: RecordType::A,
            proto: Transport::Tcp,
            edns: None,
        }),
        Transport::Tcp,
    )
    .await;
    let m = m.expect("answered");
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 100);
}

#[tokio::test]
async fn bad_requests() {
    let h = handler();
    // Two questions: FORMERR (RFC 9619).
    let mut m = Message::new(7, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(
        Name::from_ascii("a.cluster.east.").expect("n"),
        RecordType::A,
    ));
    m.add_query(Query::query(
        Name::from_ascii("b.cluster.east.").expect("n"),
        RecordType::A,
    ));
    let (r, _) = send_raw(&h, m.to_vec().expect("enc"), Transport::Udp).await;
    assert_eq!(
        r.expect("answered").metadata.response_code,
        ResponseCode::FormErr
    );
    // UPDATE: not implemented.
    let mut m = Message::new(8, MessageType::Query, OpCode::Update);
    m.add_query(Query::query(
        Name::from_ascii("cluster.east.").expect("n"),
        RecordType::SOA,
    ));
    let (r, _) = send_raw(&h, m.to_vec().expect("enc"), Transport::Udp).await;
    assert_eq!(
        r.expect("answered").metadata.response_code,
        ResponseCode::NotImp
    );
    // A response sent to us is not answered (no reflection loops).
    let mut m = Message::new(9, MessageType::Response, OpCode::Query);
    m.add_query(Query::query(
        Name::from_ascii("cluster.east.").expect("n"),
        RecordType::SOA,
    ));
    let (r, _) = send_raw(&h, m.to_vec().expect("enc"), Transport::Udp).await;
    assert!(r.is_none());
}

#[test]
fn local_bytes_path_survives_garbage() {
    let zones = ZoneData::build(&config(), &snapshots());
    let good = query_bytes(&q("web.default.svc.cluster.east.", RecordType::A));
    let out = answer_local_bytes(&zones, &good).expect("answered");
    let m = Message::from_vec(&out).expect("decodes");
    assert_eq!(addrs(&m), vec![ip("172.30.0.10")]);
    // Every truncation and single-byte corruption of a valid query: no panic, and whatever is
    // answered decodes.
    let mut seed = 0x9e3779b97f4a7c15u64;
    for cut in 0..good.len() {
        let _ = answer_local_bytes(&zones, &good[..cut]);
    }
    for i in 0..good.len() {
        for _ in 0..32 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut b = good.clone();
            b[i] = seed as u8;
            if let Some(out) = answer_local_bytes(&zones, &b) {
                Message::from_vec(&out).expect("our answer decodes");
            }
        }
    }
}

#[test]
fn build_is_pure_and_indexes_ten_thousand_services() {
    let cfg = config();
    let a = ZoneData::build(&cfg, &snapshots());
    let b = ZoneData::build(&cfg, &snapshots());
    assert_eq!(a.record_count(), b.record_count());
    assert_eq!(a.zone_names(), b.zone_names());
    let mut big = Snapshots::new();
    // East is watched (a kubeconfig): listed and empty, so its zone is served.
    big.insert("east".into(), snap(vec![]));
    big.insert(
        "west".into(),
        snap(
            (0..10_000u32)
                .map(|i| {
                    let ip = IpAddr::from([172, 31, (i / 250) as u8, (i % 250) as u8 + 1]);
                    svc(
                        &format!("ns{}", i % 50),
                        &format!("svc{i}"),
                        ServiceKind::ClusterIp(vec![ip]),
                        vec![port("http", Protocol::Tcp, 80)],
                        vec![],
                    )
                })
                .collect(),
        ),
    );
    let z = ZoneData::build(&cfg, &big);
    // A + PTR + SRV per service in west and again A + SRV in cluster.all, plus 4 TXT.
    assert_eq!(z.record_count(), 10_000 * 5 + 4);
    let name = "svc9999.ns49.svc.cluster.west.".parse().expect("name");
    match z.lookup(&name, RecordType::A) {
        sdnlinkd::dns::Lookup::Answer(r) => assert_eq!(r.len(), 1),
        other => panic!("{other:?}"),
    }
}

/// `config()` with west watched too (a kubeconfig): east and west must list before their
/// zones can deny a name; north (static peers only) never lists and is authoritative.
fn watched_config() -> Config {
    let mut cfg = config();
    cfg.remote[0].kubeconfig = Some(PathBuf::from("/nonexistent/west.kubeconfig"));
    cfg
}

async fn rcode(h: &DnsHandler, name: &str, rtype: RecordType) -> ResponseCode {
    ask(h, q(name, rtype)).await.metadata.response_code
}

#[tokio::test]
async fn an_unknown_cluster_answers_servfail_in_its_zone_and_reverse_zones() {
    let cfg = watched_config();
    let mut snaps = snapshots();
    snaps.remove("east");
    let h = handler_with(&cfg, &snaps);
    for (name, t) in [
        ("web.default.svc.cluster.east.", RecordType::A),
        ("nope.default.svc.cluster.east.", RecordType::A),
        ("default.svc.cluster.east.", RecordType::A),
        ("cluster.east.", RecordType::SOA),
        ("dns-version.cluster.east.", RecordType::TXT),
        ("10-128-3-4.any-ns.pod.cluster.east.", RecordType::A),
        // East's service and pod CIDRs in the reverse zones.
        ("10.0.30.172.in-addr.arpa.", RecordType::PTR),
        ("99.0.30.172.in-addr.arpa.", RecordType::PTR),
        ("30.172.in-addr.arpa.", RecordType::SOA),
        ("5.0.128.10.in-addr.arpa.", RecordType::PTR),
    ] {
        let m = ask(&h, q(name, t)).await;
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail, "{name}");
        assert!(m.answers.is_empty() && m.authorities.is_empty(), "{name}");
    }
    // West listed: authoritative, positive and negative, forward and reverse.
    let m = ask(&h, q("web.default.svc.cluster.west.", RecordType::A)).await;
    assert_eq!(addrs(&m), vec![ip("172.31.0.10")]);
    assert_eq!(
        rcode(&h, "nope.default.svc.cluster.west.", RecordType::A).await,
        ResponseCode::NXDomain
    );
    let m = ask(&h, q("10.0.31.172.in-addr.arpa.", RecordType::PTR)).await;
    assert_eq!(ptr_target(&m), vec!["web.default.svc.cluster.west."]);
    assert_eq!(
        rcode(&h, "99.0.31.172.in-addr.arpa.", RecordType::PTR).await,
        ResponseCode::NXDomain
    );
    // North never lists (no kubeconfig): its empty zone is the truth.
    assert_eq!(
        rcode(&h, "web.default.svc.cluster.north.", RecordType::A).await,
        ResponseCode::NXDomain
    );
    // cluster.all: what the known clusters have is answered from them alone.
    let m = ask(&h, q("web.default.svc.cluster.all.", RecordType::A)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addrs(&m), vec![ip("172.31.0.10")]);
    let m = ask(&h, q("db.default.svc.cluster.all.", RecordType::A)).await;
    assert_eq!(addrs(&m), vec![ip("10.132.0.5")]);
    // A name found nowhere may exist in east: SERVFAIL, not NXDOMAIN. `empty` is east's.
    for name in [
        "nowhere.default.svc.cluster.all.",
        "empty.default.svc.cluster.all.",
        "ext.default.svc.cluster.all.",
    ] {
        assert_eq!(
            rcode(&h, name, RecordType::A).await,
            ResponseCode::ServFail,
            "{name}"
        );
    }
    // The pod form answers from config for any cluster's pod CIDRs.
    let m = ask(&h, q("10-128-3-4.any-ns.pod.cluster.all.", RecordType::A)).await;
    assert_eq!(addrs(&m), vec![ip("10.128.3.4")]);
    assert_eq!(h.status().answers.get("SERVFAIL"), Some(&13));
}

#[tokio::test]
async fn unknown_then_known_empty_then_known_with_the_record() {
    let cfg = watched_config();
    let mut snaps = snapshots();
    snaps.remove("west");
    // Before west's first list (what `DnsServer::start` serves: no snapshot at all).
    let h = handler_with(&cfg, &Snapshots::new());
    for name in [
        "web.default.svc.cluster.west.",
        "web.default.svc.cluster.east.",
        "web.default.svc.cluster.all.",
    ] {
        assert_eq!(
            rcode(&h, name, RecordType::A).await,
            ResponseCode::ServFail,
            "{name}"
        );
    }
    // East listed, west not yet.
    h.update(Arc::new(ZoneData::build(&cfg, &snaps)));
    assert_eq!(
        rcode(&h, "web.default.svc.cluster.west.", RecordType::A).await,
        ResponseCode::ServFail
    );
    assert_eq!(
        rcode(&h, "big.default.svc.cluster.all.", RecordType::A).await,
        ResponseCode::ServFail
    );
    // West listed empty: authoritative NXDOMAIN.
    snaps.insert("west".into(), snap(vec![]));
    h.update(Arc::new(ZoneData::build(&cfg, &snaps)));
    let m = ask(&h, q("web.default.svc.cluster.west.", RecordType::A)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(soa_only(&m));
    let m = ask(&h, q("big.default.svc.cluster.all.", RecordType::A)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(
        rcode(&h, "10.0.31.172.in-addr.arpa.", RecordType::PTR).await,
        ResponseCode::NXDomain
    );
    // West lists the Service.
    snaps.insert(
        "west".into(),
        snap(vec![svc(
            "default",
            "web",
            ServiceKind::ClusterIp(vec![ip("172.31.0.10")]),
            vec![],
            vec![],
        )]),
    );
    h.update(Arc::new(ZoneData::build(&cfg, &snaps)));
    let m = ask(&h, q("web.default.svc.cluster.west.", RecordType::A)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addrs(&m), vec![ip("172.31.0.10")]);
    let m = ask(&h, q("10.0.31.172.in-addr.arpa.", RecordType::PTR)).await;
    assert_eq!(ptr_target(&m), vec!["web.default.svc.cluster.west."]);
    let m = ask(&h, q("web.default.svc.cluster.all.", RecordType::A)).await;
    assert_eq!(addrs(&m), vec![ip("172.30.0.10"), ip("172.31.0.10")]);
}

#[tokio::test]
async fn truncated_answers_hold_whole_records_for_every_size_limit() {
    let h = handler();
    let names = [
        ("big.default.svc.cluster.west.", RecordType::A),
        ("_pg._tcp.big.default.svc.cluster.west.", RecordType::SRV),
        ("big.default.svc.cluster.all.", RecordType::A),
        ("_pg._tcp.big.default.svc.cluster.all.", RecordType::SRV),
    ];
    let mut truncated = 0;
    for (name, rtype) in names {
        let full = ask(
            &h,
            Ask {
                name,
                rtype,
                proto: Transport::Tcp,
                edns: None,
            },
        )
        .await;
        assert_eq!(full.answers.len(), 100, "{name} over TCP is complete");
        assert!(!full.metadata.truncation);
        for edns in [
            None,
            Some(0),
            Some(511),
            Some(512),
            Some(600),
            Some(1232),
            Some(1400),
            Some(2048),
            Some(4096),
            Some(8192),
            Some(65535),
        ] {
            let limit = edns.map_or(512, |e: u16| usize::from(e.clamp(512, 4096)));
            let raw = query_bytes(&Ask {
                name,
                rtype,
                proto: Transport::Udp,
                edns,
            });
            let src: SocketAddr = "10.128.3.3:5353".parse().expect("literal");
            let bytes = h.answer(&raw, src, Transport::Udp).await.expect("answered");
            let m = strict(&bytes);
            let what = format!("{name} {rtype} EDNS {edns:?}: {} bytes", bytes.len());
            assert!(bytes.len() <= limit, "{what}");
            assert_eq!(m.edns.is_some(), edns.is_some(), "OPT kept: {what}");
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{what}");
            // Whole records, the first ones of the full answer, in order.
            assert_eq!(m.answers[..], full.answers[..m.answers.len()], "{what}");
            assert_eq!(
                m.metadata.truncation,
                m.answers.len() < 100,
                "TC exactly when records are missing: {what}"
            );
            if m.metadata.truncation {
                truncated += 1;
                assert!(m.authorities.is_empty(), "{what}");
            }
            if !m.answers.is_empty() {
                // The first answer's owner is a pointer to the question's name at offset 12.
                let at = 12 + raw[12..].iter().position(|b| *b == 0).expect("root") + 1 + 4;
                assert_eq!(&bytes[at..at + 2], &[0xC0, 0x0C], "{what}");
            }
        }
    }
    assert!(truncated >= 20, "{truncated} of the cases were truncated");
}

/// Mixed case, as resolvers using the 0x20 bit send it (the answer must echo it).
fn mixed_case(name: &str) -> String {
    name.chars()
        .enumerate()
        .map(|(i, c)| {
            if i % 2 == 0 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

#[tokio::test]
async fn the_rendered_fast_path_answers_exactly_as_hickory_does() {
    let h = handler();
    let v6 = Name::from(ip("fd00:31::10")).to_string();
    let names = [
        "web.default.svc.cluster.east.",
        "web.default.svc.cluster.west.",
        "_http._tcp.web.default.svc.cluster.east.",
        "_dns._udp.web.default.svc.cluster.east.",
        "_tcp.web.default.svc.cluster.east.",
        "db.default.svc.cluster.east.",
        "db-0.db.default.svc.cluster.east.",
        "10-128-0-6.db.default.svc.cluster.east.",
        "_pg._tcp.db.default.svc.cluster.east.",
        "big.default.svc.cluster.west.",
        "_pg._tcp.big.default.svc.cluster.west.",
        "big.default.svc.cluster.all.",
        "_pg._tcp.big.default.svc.cluster.all.",
        "ext.default.svc.cluster.east.",
        "alias.default.svc.cluster.east.",
        "default.svc.cluster.east.",
        "svc.cluster.east.",
        "cluster.east.",
        "cluster.all.",
        "dns-version.cluster.west.",
        "pod.cluster.east.",
        "10-128-3-4.any-ns.pod.cluster.east.",
        "web.default.svc.cluster.all.",
        "db.default.svc.cluster.all.",
        "ext.default.svc.cluster.all.",
        "nope.default.svc.cluster.east.",
        "10.0.30.172.in-addr.arpa.",
        "5.0.128.10.in-addr.arpa.",
        "99.0.30.172.in-addr.arpa.",
        "30.172.in-addr.arpa.",
        &v6,
    ];
    let types = [
        RecordType::A,
        RecordType::AAAA,
        RecordType::SRV,
        RecordType::PTR,
        RecordType::TXT,
        RecordType::SOA,
        RecordType::CNAME,
        RecordType::MX,
        RecordType::NS,
    ];
    let src: SocketAddr = "10.128.3.3:5353".parse().expect("literal");
    let mut compared = 0;
    for name in names {
        for spelled in [name.to_string(), mixed_case(name)] {
            for rtype in types {
                for edns in [None, Some(512), Some(1232), Some(4096)] {
                    for proto in [Transport::Udp, Transport::Tcp] {
                        let raw = query_bytes(&Ask {
                            name: &spelled,
                            rtype,
                            proto,
                            edns,
                        });
                        let fast = h.answer(&raw, src, proto).await.expect("answered");
                        let slow = h
                            .answer_without_fast_path(&raw, src, proto)
                            .await
                            .expect("answered");
                        let what = format!("{spelled} {rtype} {edns:?} {proto:?}");
                        let (mut f, mut s) = (strict(&fast), strict(&slow));
                        if f.metadata.truncation {
                            // hickory compresses only names spelled as the question is, so for
                            // a mixed-case question it fits fewer records than the rendered
                            // answer, which always points at the question: both are whole
                            // records, the first ones of the same answer.
                            assert!(s.answers.len() <= f.answers.len(), "{what}");
                            f.answers.truncate(s.answers.len());
                        }
                        assert_eq!(f.answers.len(), s.answers.len(), "{what}");
                        for (a, b) in f.answers.iter_mut().zip(s.answers.iter_mut()) {
                            // Owner names compare without case (RFC 4343).
                            assert_eq!(LowerName::new(&a.name), LowerName::new(&b.name), "{what}");
                            a.name = b.name.clone();
                        }
                        assert_eq!(f, s, "{what}");
                        // The client's spelling comes back in the question.
                        assert_eq!(&fast[12..12 + spelled.len()], &slow[12..12 + spelled.len()]);
                        assert_eq!(
                            f.queries[0].name.to_ascii(),
                            spelled,
                            "{what}: question echoed as sent"
                        );
                        compared += 1;
                    }
                }
            }
        }
    }
    let st = h.status();
    assert!(compared > 2000);
    // Most of these are answered from the rendered index (positive and NODATA answers); the
    // rest (NXDOMAIN, CNAME, the pod form) went through hickory both times.
    assert!(
        st.fast_path > compared as u64 / 2,
        "{} of {compared} from the fast path",
        st.fast_path
    );
}

/// A headless Service whose slices repeat each other's addresses: each address is one record
/// of the RRset (RFC 2181 section 5), and the build stays linear in the endpoints (it was
/// quadratic: every record was compared with the whole set before it).
#[test]
fn headless_service_with_repeated_endpoints_serves_each_address_once() {
    let cfg = config();
    let eps = |copies: usize| -> Vec<Endpoint> {
        (0..copies)
            .flat_map(|_| 0..100_000u32)
            .map(|i| {
                let a = IpAddr::from([10, 132 + (i >> 16) as u8, (i >> 8) as u8, i as u8]);
                ep(&a.to_string(), None, true, &[("http", 80)])
            })
            .collect()
    };
    let build = |copies: usize| {
        let mut s = Snapshots::new();
        s.insert("east".into(), snap(vec![]));
        let big = svc(
            "bench",
            "big",
            ServiceKind::Headless,
            vec![port("http", Protocol::Tcp, 80)],
            eps(copies),
        );
        s.insert("west".into(), snap(vec![big]));
        ZoneData::build(&cfg, &s)
    };
    let once = build(1);
    let twice = build(2);
    assert_eq!(twice.record_count(), once.record_count());
    let name = "big.bench.svc.cluster.west.".parse().expect("name");
    match twice.lookup(&name, RecordType::A) {
        sdnlinkd::dns::Lookup::Answer(r) => assert_eq!(r.len(), 100_000),
        other => panic!("{other:?}"),
    }
}
