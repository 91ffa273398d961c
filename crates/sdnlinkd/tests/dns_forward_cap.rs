//! Forwarding holds at most `dns.max_forwards_in_flight` queries (one socket each); more are
//! answered SERVFAIL at once and counted. Alone in its test binary: it counts the process's
//! open file descriptors, which another test's runtime would change.

use hickory_proto::op::{Message, ResponseCode};
use sdnlinkd::dns::{DnsServer, ZoneData};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod dns_common;
use dns_common::{config_with, query};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_is_capped_and_holds_one_socket_per_query_in_flight() {
    // An upstream that never answers: every forwarded query waits for its timeout.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let cfg = config_with(
        "max_forwards_in_flight = 4",
        &silent.local_addr().expect("addr").to_string(),
    )
    .expect("valid");
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let tcp = tokio::net::TcpListener::bind(udp.local_addr().expect("addr"))
        .await
        .expect("bind tcp");
    let zones = Arc::new(ZoneData::build(&cfg, &Default::default()));
    let server = DnsServer::from_sockets(&cfg, vec![udp], vec![tcp], zones).expect("serve");
    let client = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("client");
    let before = open_fds();
    let started = Instant::now();
    for i in 0..200u16 {
        client
            .send_to(
                &query(i, &format!("h{i}.example.org.")),
                server.local_addr(),
            )
            .await
            .expect("send");
    }
    // 196 over the cap come back at once, SERVFAIL, long before the upstream timeout.
    let mut buf = vec![0u8; 4096];
    let mut early = Vec::new();
    while early.len() < 196 {
        let n = tokio::time::timeout(Duration::from_secs(1), client.recv(&mut buf))
            .await
            .expect("over-cap answers come at once")
            .expect("recv");
        early.push(Message::from_vec(&buf[..n]).expect("decodes"));
    }
    assert!(started.elapsed() < sdnlinkd::dns::UPSTREAM_TIMEOUT);
    assert!(early
        .iter()
        .all(|m| m.metadata.response_code == ResponseCode::ServFail));
    let during = open_fds();
    assert!(
        during <= before + 4,
        "{during} fds while 4 queries wait, {before} before: one socket per query in flight"
    );
    assert_eq!(server.status().forwards_over_cap, 196);
    // The four in flight end with the upstream's timeout, also SERVFAIL.
    for _ in 0..4 {
        let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
            .await
            .expect("the waiting queries end")
            .expect("recv");
        let m = Message::from_vec(&buf[..n]).expect("decodes");
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    }
    let st = server.status();
    assert_eq!(st.upstream_errors, 4, "{st:?}");
    assert_eq!(st.forwarded, 4);
    server.shutdown().await.expect("shutdown");
    assert!(open_fds() <= before, "the forwarding sockets are closed");
}
