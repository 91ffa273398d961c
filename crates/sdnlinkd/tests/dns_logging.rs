//! Quiet logs (issue: a busy node's journal must not grow per DNS query): 1,000 queries through
//! a real server on loopback, with a subscriber capturing every line at info, write fewer than
//! 5 lines; with `dns.log_queries` they write one line each. A failing upstream is logged once
//! per upstream and kind of failure, not per query.

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use sdnlinkd::config::{self, Config};
use sdnlinkd::dns::{DnsServer, ZoneData};
use sdnlinkd::model::*;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Every formatted line the subscriber writes.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("test mutex").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn take(&self) -> Vec<String> {
        let mut b = self.0.lock().expect("test mutex");
        let text = String::from_utf8_lossy(&b).into_owned();
        b.clear();
        text.lines().map(String::from).collect()
    }
}

fn config(upstream: SocketAddr, log_queries: bool) -> Config {
    let mut cfg = config::parse_str(&format!(
        r#"
[local]
name = "east"
pod_cidrs = ["10.128.0.0/14"]
service_cidrs = ["172.30.0.0/16"]
node_name = "node-1"
[dns]
upstreams = ["{upstream}"]
log_queries = {log_queries}
[[remote]]
name = "west"
pod_cidrs = ["10.132.0.0/14"]
service_cidrs = ["172.31.0.0/16"]
"#
    ))
    .expect("test config is valid");
    // West watched and absent (SERVFAIL path); east's local zone served from its snapshot.
    cfg.remote[0].kubeconfig = Some("/nonexistent/west.kubeconfig".into());
    cfg.local.kubeconfig = Some("/nonexistent/east.kubeconfig".into());
    cfg
}

fn snapshots() -> Snapshots {
    let web = Service {
        key: ServiceKey {
            namespace: "default".into(),
            name: "web".into(),
        },
        kind: ServiceKind::ClusterIp(vec![IpAddr::from([172, 30, 0, 10])]),
        ports: vec![],
        client_ip_affinity: None,
        endpoints: vec![],
    };
    let mut s = Snapshots::new();
    s.insert(
        "east".into(),
        Arc::new(ClusterSnapshot {
            services: [(web.key.clone(), web)].into_iter().collect(),
            nodes: Default::default(),
        }),
    );
    s
}

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_ascii(name).expect("name"),
        RecordType::A,
    ));
    m.to_vec().expect("encode")
}

/// Sends `n` queries (cycling over answered, NXDOMAIN, SERVFAIL-unknown and forwarded names)
/// one at a time and returns the response codes seen.
async fn drive(server: SocketAddr, n: u16) -> Vec<ResponseCode> {
    let names = [
        "web.default.svc.cluster.east.",
        "nope.default.svc.cluster.east.",
        "web.default.svc.cluster.west.",
        "www.example.org.",
    ];
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("client bind");
    let mut codes = Vec::new();
    let mut buf = vec![0u8; 4096];
    for i in 0..n {
        sock.send_to(&query(i, names[usize::from(i) % names.len()]), server)
            .await
            .expect("send");
        let got = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
            .await
            .expect("an answer within 5 s")
            .expect("recv");
        let m = Message::from_vec(&buf[..got]).expect("answer decodes");
        assert_eq!(m.metadata.id, i);
        codes.push(m.metadata.response_code);
    }
    codes
}

async fn serve(cfg: &Config) -> DnsServer {
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let tcp = tokio::net::TcpListener::bind(udp.local_addr().expect("addr"))
        .await
        .expect("bind tcp");
    let zones = Arc::new(ZoneData::build(cfg, &snapshots()));
    DnsServer::from_sockets(cfg, vec![udp], vec![tcp], zones).expect("serve")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_queries_log_nothing_per_query_unless_asked() {
    let lines = Lines::default();
    let writer = lines.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();
    // An upstream that refuses every query: a closed UDP port (ICMP port unreachable).
    let closed = std::net::UdpSocket::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");

    let cfg = config(closed, false);
    let server = serve(&cfg).await;
    let codes = drive(server.local_addr(), 1000).await;
    for (rc, want) in [
        (ResponseCode::NoError, 250),
        (ResponseCode::NXDomain, 250),
        (ResponseCode::ServFail, 500),
    ] {
        assert_eq!(codes.iter().filter(|c| **c == rc).count(), want, "{rc}");
    }
    let st = server.status();
    assert_eq!(st.upstream_errors, 250, "{st:?}");
    server.shutdown().await.expect("shutdown");
    let quiet = lines.take();
    assert!(
        quiet.len() < 5,
        "{} lines for 1,000 queries: {quiet:#?}",
        quiet.len()
    );
    // The refusing upstream was worth exactly one line.
    let upstream = quiet
        .iter()
        .filter(|l| l.contains("DNS upstream failing"))
        .count();
    assert_eq!(upstream, 1, "{quiet:#?}");

    let cfg = config(closed, true);
    let server = serve(&cfg).await;
    drive(server.local_addr(), 1000).await;
    server.shutdown().await.expect("shutdown");
    let loud = lines.take();
    let per_query: Vec<&String> = loud.iter().filter(|l| l.contains("dns query")).collect();
    assert_eq!(per_query.len(), 1000, "one line per query");
    assert!(per_query[0].contains("INFO"), "{}", per_query[0]);
    for (line, want) in [
        (per_query[0], "web.default.svc.cluster.east."),
        (per_query[0], "No Error"),
        (per_query[2], "Server Failure"),
        (per_query[3], "www.example.org."),
    ] {
        assert!(line.contains(want), "{want} in {line}");
    }
}
