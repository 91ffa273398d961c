//! Root tests: the stub on real UDP and TCP sockets inside a throwaway network namespace, a
//! client inside that namespace, and a local upstream in the host namespace (where the stub's
//! forwarding sockets live).

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use sdnlinkd::config::{self, Config};
use sdnlinkd::dns::{DnsServer, ZoneData};
use sdnlinkd::model::*;
use sdnlinkd::netns::NetNs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const DNS_ADDR: &str = "169.254.20.53";

/// A namespace named with this engineer's prefix, deleted on drop even when the test fails.
struct TestNs {
    name: String,
}

fn ip_cmd(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("run ip");
    assert!(st.success(), "ip {args:?} failed");
}

impl TestNs {
    fn new(tag: &str) -> TestNs {
        let name = format!("sdnt-dn-{tag}-{}", std::process::id());
        // A leftover of a crashed earlier run with the same pid.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        ip_cmd(&["netns", "add", &name]);
        let ns = TestNs { name };
        ip_cmd(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ip_cmd(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{DNS_ADDR}/32"),
            "dev",
            "lo",
        ]);
        ns
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn config(upstreams: Vec<SocketAddr>) -> Config {
    let mut cfg = config::parse_str(&format!(
        r#"
[local]
name = "east"
pod_cidrs = ["10.128.0.0/14"]
service_cidrs = ["172.30.0.0/16"]
node_name = "node-1"
[dns]
address = "{DNS_ADDR}"
port = 53
upstreams = ["192.0.2.1"]
ttl = 5
[[remote]]
name = "west"
pod_cidrs = ["10.132.0.0/14"]
service_cidrs = ["172.31.0.0/16"]
"#
    ))
    .expect("test config is valid");
    cfg.dns.upstreams = upstreams;
    cfg
}

fn snapshots() -> Snapshots {
    let eps = (0..100)
        .map(|i| Endpoint {
            addresses: vec![IpAddr::from([10, 132, 1, i + 1])],
            ready: true,
            serving: true,
            terminating: false,
            hostname: None,
            node_name: None,
            ports: vec![EndpointPort {
                name: "pg".into(),
                protocol: Protocol::Tcp,
                port: 5432,
            }]
            .into(),
        })
        .collect();
    let svcs = [
        Service {
            key: ServiceKey {
                namespace: "default".into(),
                name: "web".into(),
            },
            kind: ServiceKind::ClusterIp(vec![IpAddr::from([172, 31, 0, 10])]),
            ports: vec![],
            client_ip_affinity: None,
            endpoints: vec![],
        },
        Service {
            key: ServiceKey {
                namespace: "default".into(),
                name: "big".into(),
            },
            kind: ServiceKind::Headless,
            ports: vec![ServicePort {
                name: "pg".into(),
                protocol: Protocol::Tcp,
                port: 5432,
                target_port: TargetPort::Number(5432),
            }],
            client_ip_affinity: None,
            endpoints: eps,
        },
    ];
    let svcs: Vec<Service> = svcs
        .into_iter()
        .chain([Service {
            key: ServiceKey {
                namespace: "default".into(),
                name: "ext".into(),
            },
            kind: ServiceKind::ExternalName("www.example.org".into()),
            ports: vec![],
            client_ip_affinity: None,
            endpoints: vec![],
        }])
        .collect();
    let mut s = Snapshots::new();
    s.insert(
        "west".into(),
        Arc::new(ClusterSnapshot {
            services: svcs.into_iter().map(|s| (s.key.clone(), s)).collect(),
            nodes: Default::default(),
        }),
    );
    s
}

fn query(name: &str, rtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(rand_id(), MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), rtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().expect("encode")
}

fn rand_id() -> u16 {
    static N: AtomicUsize = AtomicUsize::new(1);
    N.fetch_add(1, Ordering::Relaxed) as u16
}

fn server_addr() -> SocketAddr {
    SocketAddr::new(DNS_ADDR.parse().expect("literal"), 53)
}

/// A UDP exchange from inside the namespace; `None` when nothing came back in 6 s.
async fn udp(ns: &NetNs, bytes: Vec<u8>) -> Option<Vec<u8>> {
    udp_wait(ns, bytes, Duration::from_secs(6)).await
}

async fn udp_wait(ns: &NetNs, bytes: Vec<u8>, wait: Duration) -> Option<Vec<u8>> {
    ns.run_async(move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("client bind");
        s.set_read_timeout(Some(wait)).expect("timeout");
        s.send_to(&bytes, server_addr()).expect("send");
        let mut buf = vec![0u8; 65535];
        let n = s.recv(&mut buf).ok()?;
        buf.truncate(n);
        Some(buf)
    })
    .await
    .expect("namespace worker")
}

async fn tcp(ns: &NetNs, bytes: Vec<u8>) -> Vec<u8> {
    ns.run_async(move || {
        let mut s = std::net::TcpStream::connect(server_addr()).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(6)))
            .expect("timeout");
        let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&bytes);
        s.write_all(&out).expect("write");
        let mut len = [0u8; 2];
        s.read_exact(&mut len).expect("read len");
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut buf).expect("read body");
        buf
    })
    .await
    .expect("namespace worker")
}

fn decode(b: &[u8]) -> Message {
    Message::from_vec(b).expect("response decodes")
}

/// A fake upstream resolver in the host namespace: `*.example.org A` answers 192.0.2.7 with
/// TTL 300; `many.example.org` has 60 A records, and over UDP answers TC only, forcing TCP.
struct Upstream {
    addr: SocketAddr,
    udp_queries: Arc<AtomicUsize>,
    tcp_queries: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn upstream_answer(req: &Message, udp: bool) -> Message {
    let mut resp = Message::new(req.metadata.id, MessageType::Response, OpCode::Query);
    resp.metadata.recursion_available = true;
    resp.queries = req.queries.clone();
    let q = &req.queries[0];
    let name = q.name.to_ascii().to_ascii_lowercase();
    if name == "many.example.org." {
        if udp {
            resp.metadata.truncation = true;
        } else {
            for i in 0..60u8 {
                resp.answers.push(Record::from_rdata(
                    q.name.clone(),
                    300,
                    RData::A(Ipv4Addr::new(192, 0, 2, i).into()),
                ));
            }
        }
    } else if name.ends_with(".example.org.") && q.query_type == RecordType::A {
        resp.answers.push(Record::from_rdata(
            q.name.clone(),
            300,
            RData::A(Ipv4Addr::new(192, 0, 2, 7).into()),
        ));
    } else {
        resp.metadata.response_code = ResponseCode::NXDomain;
    }
    resp
}

async fn start_upstream() -> Upstream {
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = udp.local_addr().expect("addr");
    let tcp = tokio::net::TcpListener::bind(addr).await.expect("bind tcp");
    let udp_queries = Arc::new(AtomicUsize::new(0));
    let tcp_queries = Arc::new(AtomicUsize::new(0));
    let uq = udp_queries.clone();
    let t1 = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, from)) = udp.recv_from(&mut buf).await {
            let Ok(req) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            uq.fetch_add(1, Ordering::Relaxed);
            let resp = upstream_answer(&req, true).to_vec().expect("encode");
            let _ = udp.send_to(&resp, from).await;
        }
    });
    let tq = tcp_queries.clone();
    let t2 = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = tcp.accept().await {
            let tq = tq.clone();
            tokio::spawn(async move {
                let Ok(n) = s.read_u16().await else { return };
                let mut buf = vec![0u8; n as usize];
                if s.read_exact(&mut buf).await.is_err() {
                    return;
                }
                let Ok(req) = Message::from_vec(&buf) else {
                    return;
                };
                tq.fetch_add(1, Ordering::Relaxed);
                let resp = upstream_answer(&req, false).to_vec().expect("encode");
                let mut out = (resp.len() as u16).to_be_bytes().to_vec();
                out.extend_from_slice(&resp);
                let _ = s.write_all(&out).await;
            });
        }
    });
    Upstream {
        addr,
        udp_queries,
        tcp_queries,
        tasks: vec![t1, t2],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_serves_zones_over_udp_and_tcp() {
    let tns = TestNs::new("z");
    let ns = NetNs::open(&tns.name).expect("open namespace");
    let cfg = config(vec![]);
    let zones = Arc::new(ZoneData::build(&cfg, &snapshots()));
    let server = DnsServer::start(&cfg, &ns, zones).await.expect("start");

    let r = decode(
        &udp(
            &ns,
            query("WEB.default.svc.cluster.west.", RecordType::A, None),
        )
        .await
        .expect("udp answer"),
    );
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(r.answers.len(), 1);
    let r = decode(
        &tcp(
            &ns,
            query("web.default.svc.cluster.west.", RecordType::A, None),
        )
        .await,
    );
    assert_eq!(r.answers.len(), 1);
    let r = decode(
        &udp(
            &ns,
            query("nope.default.svc.cluster.west.", RecordType::A, None),
        )
        .await
        .expect("udp"),
    );
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert!(matches!(r.authorities[0].data, RData::SOA(_)));

    // 100 endpoints: truncated at 512 without EDNS, complete over TCP and with a large EDNS.
    let raw = udp(
        &ns,
        query("big.default.svc.cluster.west.", RecordType::A, None),
    )
    .await
    .expect("udp");
    let r = decode(&raw);
    assert!(
        r.metadata.truncation && raw.len() <= 512,
        "{} bytes",
        raw.len()
    );
    let r = decode(
        &tcp(
            &ns,
            query("big.default.svc.cluster.west.", RecordType::A, None),
        )
        .await,
    );
    assert!(!r.metadata.truncation);
    assert_eq!(r.answers.len(), 100);
    let raw = udp(
        &ns,
        query("big.default.svc.cluster.west.", RecordType::A, Some(4096)),
    )
    .await
    .expect("udp");
    assert_eq!(decode(&raw).answers.len(), 100);
    let r = decode(
        &tcp(
            &ns,
            query(
                "_pg._tcp.big.default.svc.cluster.west.",
                RecordType::SRV,
                None,
            ),
        )
        .await,
    );
    assert_eq!(r.answers.len(), 100);

    // Malformed: a header claiming a question that is not there gets FORMERR; a runt is
    // dropped; the server keeps serving.
    let mut bad = vec![0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    bad.extend_from_slice(&[0x05, b'a']);
    let r = decode(&udp(&ns, bad).await.expect("FORMERR answer"));
    assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
    assert!(udp_wait(&ns, vec![1, 2, 3], Duration::from_millis(500))
        .await
        .is_none());
    let r = decode(
        &udp(
            &ns,
            query("web.default.svc.cluster.west.", RecordType::A, None),
        )
        .await
        .expect("udp"),
    );
    assert_eq!(r.answers.len(), 1);

    // Updates are visible at once.
    server.update(Arc::new(ZoneData::build(&cfg, &Snapshots::new())));
    let r = decode(
        &udp(
            &ns,
            query("web.default.svc.cluster.west.", RecordType::A, None),
        )
        .await
        .expect("udp"),
    );
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);

    let st = server.status();
    // Nine well-formed queries reached the handler; the bad two never did.
    assert_eq!(st.queries, 9, "{st:?}");
    assert!(st.answers.get("NXDOMAIN").copied().unwrap_or(0) >= 2);
    assert!(
        !st.answers.contains_key("FORMERR"),
        "hickory answers FORMERR before our handler"
    );
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_forwards_to_upstream_with_cache_and_tcp_retry() {
    let tns = TestNs::new("f");
    let ns = NetNs::open(&tns.name).expect("open namespace");
    let up = start_upstream().await;
    let cfg = config(vec![up.addr]);
    let no_snapshots = Arc::new(ZoneData::build(&cfg, &Default::default()));
    let server = DnsServer::start(&cfg, &ns, no_snapshots)
        .await
        .expect("start");

    let r = decode(
        &udp(&ns, query("www.example.org.", RecordType::A, None))
            .await
            .expect("udp"),
    );
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(!r.metadata.authoritative);
    assert_eq!(r.answers.len(), 1);
    assert_eq!(up.udp_queries.load(Ordering::Relaxed), 1);
    // Second time: from the cache, TTL not above the upstream's.
    let r = decode(
        &udp(&ns, query("WWW.example.org.", RecordType::A, None))
            .await
            .expect("udp"),
    );
    assert_eq!(r.answers.len(), 1);
    assert!(r.answers[0].ttl <= 300);
    assert_eq!(
        up.udp_queries.load(Ordering::Relaxed),
        1,
        "served from cache"
    );
    // The upstream truncates: the stub retries over TCP, then truncates for our UDP client.
    let raw = udp(&ns, query("many.example.org.", RecordType::A, None))
        .await
        .expect("udp");
    assert!(decode(&raw).metadata.truncation);
    assert_eq!(up.tcp_queries.load(Ordering::Relaxed), 1);
    let r = decode(&tcp(&ns, query("many.example.org.", RecordType::A, None)).await);
    assert_eq!(r.answers.len(), 60);
    // ExternalName: the CNAME, and its target's address from the upstream (here cached).
    server.update(Arc::new(ZoneData::build(&cfg, &snapshots())));
    let r = decode(
        &udp(
            &ns,
            query("ext.default.svc.cluster.west.", RecordType::A, None),
        )
        .await
        .expect("udp"),
    );
    assert!(r.metadata.authoritative);
    assert!(matches!(r.answers[0].data, RData::CNAME(_)));
    assert!(matches!(r.answers[1].data, RData::A(a) if a.0 == Ipv4Addr::new(192, 0, 2, 7)));
    // NXDOMAIN passes through.
    let r = decode(
        &udp(&ns, query("nothing.invalid.", RecordType::A, None))
            .await
            .expect("udp"),
    );
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);

    let st = server.status();
    assert_eq!(st.cache_hits, 3, "{st:?}");
    assert!(st.forwarded >= 3);
    assert_eq!(st.upstream_errors, 0);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_unreachable_upstream_gives_servfail_and_loops_are_refused() {
    let tns = TestNs::new("u");
    let ns = NetNs::open(&tns.name).expect("open namespace");
    // One upstream that never answers (a bound socket nobody reads) and one closed port.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let closed = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.local_addr().expect("addr")
    };
    let cfg = config(vec![closed, silent.local_addr().expect("addr")]);
    let no_snapshots = Arc::new(ZoneData::build(&cfg, &Default::default()));
    let server = DnsServer::start(&cfg, &ns, no_snapshots)
        .await
        .expect("start");
    let started = std::time::Instant::now();
    let r = decode(
        &udp(&ns, query("www.example.org.", RecordType::A, None))
            .await
            .expect("an answer, not silence"),
    );
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    assert!(started.elapsed() < Duration::from_secs(6));
    assert_eq!(server.status().upstream_errors, 1);

    // Reload with ourselves as the only upstream: refused, never sent.
    server.set_upstreams(vec![server_addr()]);
    let r = decode(
        &udp(&ns, query("www.example.org.", RecordType::A, None))
            .await
            .expect("udp"),
    );
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    assert_eq!(server.status().loops_refused, 1);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_start_answers_servfail_for_watched_clusters_until_the_first_update() {
    let tns = TestNs::new("s");
    let ns = NetNs::open(&tns.name).expect("open namespace");
    let mut cfg = config(vec![]);
    cfg.remote[0].kubeconfig = Some("/nonexistent/west.kubeconfig".into());
    let no_snapshots = Arc::new(ZoneData::build(&cfg, &Default::default()));
    let server = DnsServer::start(&cfg, &ns, no_snapshots)
        .await
        .expect("start");
    for name in [
        "web.default.svc.cluster.west.",
        "nope.default.svc.cluster.west.",
    ] {
        let r = decode(
            &udp(&ns, query(name, RecordType::A, None))
                .await
                .expect("udp answer"),
        );
        assert_eq!(r.metadata.response_code, ResponseCode::ServFail, "{name}");
    }
    server.update(Arc::new(ZoneData::build(&cfg, &snapshots())));
    let r = decode(
        &udp(
            &ns,
            query("web.default.svc.cluster.west.", RecordType::A, None),
        )
        .await
        .expect("udp"),
    );
    assert_eq!(r.answers.len(), 1);
    let r = decode(
        &udp(
            &ns,
            query("nope.default.svc.cluster.west.", RecordType::A, None),
        )
        .await
        .expect("udp"),
    );
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    server.shutdown().await.expect("shutdown");
}
