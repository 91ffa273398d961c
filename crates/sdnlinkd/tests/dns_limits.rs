//! Who the stub answers: only the local cluster's pods and
//! the host get answers (REFUSED for anyone else, such as a remote pod whose node routes our
//! DNS address into its tunnel). The forwarding cap is tested in tests/dns_forward_cap.rs, a
//! binary of its own because it counts the process's open file descriptors.

use hickory_proto::op::{Message, ResponseCode};
use sdnlinkd::dns::{DnsHandler, Transport, ZoneData};
use std::net::SocketAddr;
use std::sync::Arc;

mod dns_common;
use dns_common::{config_with, query};

#[tokio::test]
async fn only_local_pods_and_the_host_are_answered() {
    let cfg = config_with("", "192.0.2.1").expect("valid");
    let zones = Arc::new(ZoneData::build(&cfg, &Default::default()));
    let h = DnsHandler::from_config(&cfg, zones, "169.254.20.53:53".parse().expect("literal"));
    let ask = |src: &str| {
        let h = h.clone();
        let src: SocketAddr = src.parse().expect("literal");
        async move {
            let out = h
                .answer(
                    &query(7, "web.default.svc.cluster.west."),
                    src,
                    Transport::Udp,
                )
                .await
                .expect("an answer");
            Message::from_vec(&out)
                .expect("decodes")
                .metadata
                .response_code
        }
    };
    for allowed in [
        "10.128.3.3:5353",        // a local pod
        "[fd00:128::5]:5353",     // a local pod, IPv6
        "169.254.100.1:40000",    // the host (the veth's transit address)
        "169.254.20.53:40000",    // inside the namespace
        "127.0.0.1:40000",        // inside the namespace, loopback
        "[fe80::1]:40000",        // the host's veth end, IPv6
        "[::ffff:10.128.0.9]:53", // a local pod through a dual-stack socket
    ] {
        assert_eq!(ask(allowed).await, ResponseCode::NXDomain, "{allowed}");
    }
    for refused in [
        "10.132.0.5:5353",  // a remote pod (through the tunnel)
        "172.31.0.10:5353", // a remote ClusterIP
        "192.0.2.1:53",     // anywhere else
        "[fd00:132::1]:53",
    ] {
        assert_eq!(ask(refused).await, ResponseCode::Refused, "{refused}");
    }
    let st = h.status();
    assert_eq!(st.clients_refused, 4, "{st:?}");
    assert_eq!(st.answers.get("REFUSED"), Some(&4));
    assert_eq!(st.forwarded, 0, "nothing forwarded for a refused client");
    // A malformed message from an outsider gets nothing, not even FORMERR.
    let runt_header = [
        0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 5, b'a',
    ];
    let outsider: SocketAddr = "10.132.0.5:5353".parse().expect("literal");
    assert!(h
        .answer(&runt_header, outsider, Transport::Udp)
        .await
        .is_none());
    let pod: SocketAddr = "10.128.3.3:5353".parse().expect("literal");
    assert!(h.answer(&runt_header, pod, Transport::Udp).await.is_some());
}

#[test]
fn the_cap_must_be_positive() {
    let err = config_with("max_forwards_in_flight = 0", "192.0.2.1").expect_err("refused");
    assert!(err.contains("dns.max_forwards_in_flight = 0"), "{err}");
    assert!(err.contains("1 to 65536"), "{err}");
}

/// The receive loop takes bursts (recvmmsg) and answers them in bursts (sendmmsg): 4 clients
/// with 24 queries each in flight get all of their 250 answers, each to its own ID and client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_over_udp_are_answered_in_full() {
    use sdnlinkd::model::*;
    let mut cfg = config_with("", "192.0.2.1").expect("valid");
    cfg.dns.address = "127.0.0.1".parse().expect("literal");
    let web = Service {
        key: ServiceKey {
            namespace: "default".into(),
            name: "web".into(),
        },
        kind: ServiceKind::ClusterIp(vec!["172.31.0.10".parse().expect("literal")]),
        ports: vec![],
        client_ip_affinity: None,
        endpoints: vec![],
    };
    let mut snaps = Snapshots::new();
    snaps.insert(
        "west".into(),
        Arc::new(ClusterSnapshot {
            services: [(web.key.clone(), web)].into_iter().collect(),
            nodes: Default::default(),
        }),
    );
    let zones = Arc::new(ZoneData::build(&cfg, &snaps));
    let (udp, tcp) =
        sdnlinkd::dns::bind_sockets("127.0.0.1:0".parse().expect("literal")).expect("bind");
    let server = sdnlinkd::dns::DnsServer::from_sockets(&cfg, udp, tcp, zones).expect("serve");
    let to = server.local_addr();
    let mut clients = Vec::new();
    for c in 0..4u16 {
        clients.push(tokio::spawn(async move {
            let s = tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind");
            // At most 24 in flight per client: more could overflow a socket's receive buffer
            // (UDP drops by design), which is not what this test is about.
            let mut seen = std::collections::BTreeSet::new();
            let mut buf = vec![0u8; 4096];
            let mut sent = 0u16;
            while seen.len() < 250 {
                while sent < 250 && usize::from(sent) < seen.len() + 24 {
                    let name = if sent % 2 == 0 {
                        "web.default.svc.cluster.west."
                    } else {
                        "WEB.default.svc.cluster.west."
                    };
                    s.send_to(&query(c * 1000 + sent, name), to)
                        .await
                        .expect("send");
                    sent += 1;
                }
                let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.recv(&mut buf))
                    .await
                    .expect("every answer within 5 s")
                    .expect("recv");
                let m = Message::from_vec(&buf[..n]).expect("decodes");
                assert_eq!(m.metadata.response_code, ResponseCode::NoError);
                assert_eq!(m.answers.len(), 1);
                assert_eq!(m.metadata.id / 1000, c, "an answer to this client");
                seen.insert(m.metadata.id);
            }
            seen.len()
        }));
    }
    for c in clients {
        assert_eq!(c.await.expect("client"), 250);
    }
    let st = server.status();
    assert_eq!(st.queries, 1000, "{st:?}");
    assert_eq!(st.fast_path, 1000, "answered from the rendered index");
    server.shutdown().await.expect("shutdown");
}
