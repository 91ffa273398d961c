//! Pure tests of the IPVS codec and plan.
//!
//! Golden bytes are derived by hand from the uapi layout (`include/uapi/linux/ip_vs.h`):
//! every attribute is `struct nlattr { u16 nla_len; u16 nla_type; }` + value padded to 4,
//! native (little-endian here) integers except ports (`__be16`), addresses as the 16-byte
//! `union nf_inet_addr`, flags as `struct ip_vs_flags { u32 flags; u32 mask; }`. The comment
//! on each names the `ipvsadm` command that sends the same request.
//!
//! IP plan of the plan tests: VIPs 10.96.0.10 and 10.96.0.11 (owned), 10.99.0.1 (foreign);
//! endpoints 10.244.1.1-3 on port 8080.

use super::message::*;
use super::nlas::*;
use super::plan::*;
use crate::model::{Protocol, ServiceKey};
use crate::proxy::{DesiredProxy, Destination, Scheduling, VirtualKey, VirtualService};
use netlink_packet_core::{
    Emitable, NetlinkHeader, NetlinkMessage, NetlinkPayload, ParseableParametrized, NLM_F_ACK,
    NLM_F_REQUEST,
};
use netlink_packet_generic::{GenlHeader, GenlMessage};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

fn emit(m: &IpvsMessage) -> Vec<u8> {
    let mut b = vec![0u8; m.buffer_len()];
    m.emit(&mut b);
    b
}

fn parse(cmd: u8, b: &[u8]) -> IpvsMessage {
    IpvsMessage::parse_with_param(b, GenlHeader { cmd, version: 1 }).expect("golden bytes parse")
}

fn round_trip(m: &IpvsMessage, golden: &[u8]) {
    assert_eq!(emit(m), golden, "emit of {m:?}");
    assert_eq!(&parse(u8::from(m.cmd), golden), m, "parse of golden bytes");
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test literal")
}

/// Service identity 10.96.0.10:80/tcp: AF, PROTOCOL, ADDR (16 bytes), PORT (be16).
const SVC_ID_V4_TCP_80: &[u8] = &[
    0x06, 0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, // AF = AF_INET (2)
    0x06, 0x00, 0x02, 0x00, 0x06, 0x00, 0x00, 0x00, // PROTOCOL = IPPROTO_TCP (6)
    0x14, 0x00, 0x03, 0x00, 10, 96, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // ADDR
    0x06, 0x00, 0x04, 0x00, 0x00, 0x50, 0x00, 0x00, // PORT = 80 big-endian
];

fn id_v4() -> ServiceId {
    ServiceId {
        addr: ip("10.96.0.10"),
        protocol: IPPROTO_TCP,
        port: 80,
    }
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

#[test]
fn new_service_golden() {
    // ipvsadm -A -t 10.96.0.10:80 -s rr
    let m = IpvsMessage::new_service(&Service {
        id: id_v4(),
        scheduler: "rr".into(),
        flags: 0,
        timeout: 0,
        netmask: u32::MAX,
    });
    let golden = cat(&[
        &[0x54, 0x00, 0x01, 0x80], // IPVS_CMD_ATTR_SERVICE | NLA_F_NESTED, len 84
        SVC_ID_V4_TCP_80,
        &[0x07, 0x00, 0x06, 0x00, b'r', b'r', 0x00, 0x00], // SCHED_NAME "rr\0"
        &[0x0c, 0x00, 0x07, 0x00, 0, 0, 0, 0, 0x05, 0, 0, 0], // FLAGS 0, mask PERSISTENT|ONEPACKET
        &[0x08, 0x00, 0x08, 0x00, 0, 0, 0, 0],             // TIMEOUT 0
        &[0x08, 0x00, 0x09, 0x00, 0xff, 0xff, 0xff, 0xff], // NETMASK 255.255.255.255
    ]);
    round_trip(&m, &golden);
    assert_eq!(m.cmd, IpvsCmd::NewService);
}

#[test]
fn set_service_v6_udp_persistent_golden() {
    // ipvsadm -E -u [fd00::1]:53 -s sh -p 10800
    let m = IpvsMessage::set_service(&Service {
        id: ServiceId {
            addr: ip("fd00::1"),
            protocol: IPPROTO_UDP,
            port: 53,
        },
        scheduler: "sh".into(),
        flags: IP_VS_SVC_F_PERSISTENT,
        timeout: 10800,
        netmask: 128,
    });
    let golden = cat(&[
        &[0x54, 0x00, 0x01, 0x80],
        &[0x06, 0x00, 0x01, 0x00, 0x0a, 0x00, 0x00, 0x00], // AF_INET6 (10)
        &[0x06, 0x00, 0x02, 0x00, 0x11, 0x00, 0x00, 0x00], // IPPROTO_UDP (17)
        &[
            0x14, 0x00, 0x03, 0x00, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
        ],
        &[0x06, 0x00, 0x04, 0x00, 0x00, 0x35, 0x00, 0x00], // 53
        &[0x07, 0x00, 0x06, 0x00, b's', b'h', 0x00, 0x00],
        &[0x0c, 0x00, 0x07, 0x00, 1, 0, 0, 0, 0x05, 0, 0, 0], // PERSISTENT
        &[0x08, 0x00, 0x08, 0x00, 0x30, 0x2a, 0, 0],          // 10800 s
        &[0x08, 0x00, 0x09, 0x00, 128, 0, 0, 0],              // IPv6: prefix length
    ]);
    round_trip(&m, &golden);
    assert_eq!(u8::from(m.cmd), IPVS_CMD_SET_SERVICE);
}

#[test]
fn del_service_sctp_and_get_dests_golden() {
    // ipvsadm -D --sctp-service 10.96.0.10:80
    let id = ServiceId {
        protocol: IPPROTO_SCTP,
        ..id_v4()
    };
    let mut id_bytes = SVC_ID_V4_TCP_80.to_vec();
    id_bytes[12] = 132; // IPPROTO_SCTP
    let golden = cat(&[&[0x30, 0x00, 0x01, 0x80], &id_bytes]);
    round_trip(&IpvsMessage::del_service(&id), &golden);
    // ipvsadm -L -t 10.96.0.10:80 dumps with GET_DEST carrying the same identity nest.
    let g = IpvsMessage::get_dests(&id);
    round_trip(&g, &golden);
    assert_eq!(u8::from(g.cmd), IPVS_CMD_GET_DEST);
}

#[test]
fn new_set_del_dest_golden() {
    // ipvsadm -a -t 10.96.0.10:80 -r 10.251.1.2:8080 -m -w 1
    let d = Dest {
        addr: ip("10.251.1.2"),
        port: 8080,
        fwd: FwdMethod::Masq,
        weight: 1,
        active_conns: 0,
        inactive_conns: 0,
    };
    let dest_id: &[u8] = &[
        0x06, 0x00, 0x0b, 0x00, 0x02, 0x00, 0x00, 0x00, // ADDR_FAMILY AF_INET
        0x14, 0x00, 0x01, 0x00, 10, 251, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // ADDR
        0x06, 0x00, 0x02, 0x00, 0x1f, 0x90, 0x00, 0x00, // PORT 8080 big-endian
    ];
    let svc_nest = cat(&[&[0x30, 0x00, 0x01, 0x80], SVC_ID_V4_TCP_80]);
    let full = |fwd: u8, weight: u8| {
        cat(&[
            &svc_nest,
            &[0x48, 0x00, 0x02, 0x80], // IPVS_CMD_ATTR_DEST | NLA_F_NESTED, len 72
            dest_id,
            &[0x08, 0x00, 0x03, 0x00, fwd, 0, 0, 0], // FWD_METHOD
            &[0x08, 0x00, 0x04, 0x00, weight, 0, 0, 0], // WEIGHT
            &[0x08, 0x00, 0x05, 0x00, 0, 0, 0, 0],   // U_THRESH
            &[0x08, 0x00, 0x06, 0x00, 0, 0, 0, 0],   // L_THRESH
        ])
    };
    round_trip(&IpvsMessage::new_dest(&id_v4(), &d), &full(0, 1));
    // ipvsadm -e -t 10.96.0.10:80 -r 10.251.1.2:8080 -i -w 0  (tunnel, drained)
    let t = Dest {
        fwd: FwdMethod::Tunnel,
        weight: 0,
        ..d.clone()
    };
    round_trip(&IpvsMessage::set_dest(&id_v4(), &t), &full(2, 0));
    // ipvsadm -e ... -g (route) encodes IP_VS_CONN_F_DROUTE = 3
    let r = Dest {
        fwd: FwdMethod::Route,
        ..d.clone()
    };
    assert_eq!(
        &emit(&IpvsMessage::new_dest(&id_v4(), &r))[48 + 4 + 36 + 4..48 + 4 + 36 + 5],
        &[3]
    );
    // ipvsadm -d -t 10.96.0.10:80 -r 10.251.1.2:8080
    let del = cat(&[&svc_nest, &[0x28, 0x00, 0x02, 0x80], dest_id]);
    round_trip(&IpvsMessage::del_dest(&id_v4(), d.addr, d.port), &del);
}

#[test]
fn get_service_and_get_info_requests_are_bare() {
    // ipvsadm -L -n (dump) and ipvsadm --version (GET_INFO): no attributes at all.
    assert!(emit(&IpvsMessage::get_services()).is_empty());
    assert!(emit(&IpvsMessage::get_info()).is_empty());
    assert_eq!(u8::from(IpvsMessage::get_info().cmd), IPVS_CMD_GET_INFO);
}

#[test]
fn get_info_reply_parses_info_attributes_not_command_attributes() {
    // Kernel reply to GET_INFO (sent as SET_INFO by ip_vs_genl_get_cmd): VERSION 0x010201
    // (1.2.1), CONN_TAB_SIZE 4096. Type 1 would be IPVS_CMD_ATTR_SERVICE in other commands.
    let b = [
        0x08, 0x00, 0x01, 0x00, 0x01, 0x02, 0x01, 0x00, 0x08, 0x00, 0x02, 0x00, 0x00, 0x10, 0x00,
        0x00,
    ];
    let m = parse(IPVS_CMD_SET_INFO, &b);
    assert_eq!(m.cmd, IpvsCmd::SetInfo);
    assert_eq!(
        m.attrs,
        vec![
            IpvsAttr::Info(InfoAttr::Version(0x010201)),
            IpvsAttr::Info(InfoAttr::ConnTabSize(4096))
        ]
    );
    assert_eq!(emit(&m), b);
}

#[test]
fn kernel_service_dump_entry_with_stats_and_unknown_attrs() {
    // What ip_vs_genl_fill_service puts in a GET_SERVICE dump entry (nests without
    // NLA_F_NESTED, as nla_nest_start_noflag writes them), plus an attribute type 42 that a
    // future kernel might add.
    let stats: &[u8] = &[
        0x08, 0x00, 0x01, 0x00, 5, 0, 0, 0, // CONNS u32 5
        0x0c, 0x00, 0x04, 0x00, 0x00, 0x10, 0, 0, 0, 0, 0, 0, // INBYTES u64 4096
    ];
    let stats64: &[u8] = &[0x0c, 0x00, 0x01, 0x00, 5, 0, 0, 0, 0, 0, 0, 0]; // CONNS u64 5
    let inner = cat(&[
        SVC_ID_V4_TCP_80,
        &[0x08, 0x00, 0x06, 0x00, b'w', b'l', b'c', 0x00],
        &[
            0x0c, 0x00, 0x07, 0x00, 0x03, 0, 0, 0, 0xff, 0xff, 0xff, 0xff,
        ], // PERSISTENT|HASHED
        &[0x08, 0x00, 0x08, 0x00, 0x2c, 0x01, 0, 0], // 300
        &[0x08, 0x00, 0x09, 0x00, 0xff, 0xff, 0xff, 0xff],
        &[0x18, 0x00, 0x0a, 0x00],
        stats,
        &[0x10, 0x00, 0x0c, 0x00],
        stats64,
        &[0x08, 0x00, 0x2a, 0x00, 1, 2, 3, 4],
    ]);
    let b = cat(&[&[(inner.len() + 4) as u8, 0x00, 0x01, 0x00], &inner]);
    let m = parse(IPVS_CMD_NEW_SERVICE, &b);
    let attrs = m.service_attrs().expect("service nest");
    assert!(attrs.contains(&SvcAttr::Stats(vec![
        StatsAttr::Conns(Counter::U32(5)),
        StatsAttr::InBytes(Counter::U64(4096))
    ])));
    assert!(attrs.contains(&SvcAttr::Stats64(vec![StatsAttr::Conns(Counter::U64(5))])));
    assert!(matches!(attrs.last(), Some(SvcAttr::Other(_))));
    let s = Service::from_attrs(attrs).expect("address service");
    assert_eq!(s.id, id_v4());
    assert_eq!(
        (s.scheduler.as_str(), s.flags, s.timeout, s.netmask),
        ("wlc", 3, 300, u32::MAX)
    );
    // Re-emitting keeps every byte except the nested flag we always set on nests.
    let mut expect = b.clone();
    expect[3] |= 0x80;
    let stats_at = 4 + SVC_ID_V4_TCP_80.len() + 8 + 12 + 8 + 8;
    expect[stats_at + 3] |= 0x80;
    expect[stats_at + 0x18 + 3] |= 0x80;
    assert_eq!(emit(&m), expect);
}

#[test]
fn kernel_dest_dump_entry_parses_counters() {
    let inner = cat(&[
        &[
            0x14, 0x00, 0x01, 0x00, 10, 244, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
        &[0x06, 0x00, 0x02, 0x00, 0x1f, 0x90, 0x00, 0x00],
        &[0x08, 0x00, 0x03, 0x00, 0, 0, 0, 0],
        &[0x08, 0x00, 0x04, 0x00, 0, 0, 0, 0],
        &[0x08, 0x00, 0x07, 0x00, 3, 0, 0, 0], // ACTIVE_CONNS
        &[0x08, 0x00, 0x08, 0x00, 9, 0, 0, 0], // INACT_CONNS
        &[0x08, 0x00, 0x09, 0x00, 1, 0, 0, 0], // PERSIST_CONNS
        &[0x06, 0x00, 0x0b, 0x00, 0x02, 0x00, 0x00, 0x00],
        &[0x05, 0x00, 0x0d, 0x00, 0x01, 0, 0, 0], // TUN_TYPE
        &[0x06, 0x00, 0x0e, 0x00, 0x17, 0xc1, 0, 0], // TUN_PORT 6081
        &[0x06, 0x00, 0x0f, 0x00, 0x01, 0x00, 0, 0], // TUN_FLAGS
    ]);
    let b = cat(&[&[(inner.len() + 4) as u8, 0x00, 0x02, 0x80], &inner]);
    let m = parse(IPVS_CMD_NEW_DEST, &b);
    assert_eq!(emit(&m), b, "dest nest round-trips byte for byte");
    let attrs = m.dest_attrs().expect("dest nest");
    assert!(attrs.contains(&DestAttr::TunPort(6081)));
    assert!(attrs.contains(&DestAttr::TunType(1)));
    let d = Dest::from_attrs(attrs, AF_INET).expect("dest");
    assert_eq!(
        (
            d.addr,
            d.port,
            d.weight,
            d.active_conns,
            d.inactive_conns,
            d.fwd
        ),
        (ip("10.244.1.1"), 8080, 0, 3, 9, FwdMethod::Masq)
    );
}

#[test]
fn fwmark_services_are_not_address_services() {
    let attrs = vec![
        SvcAttr::AddressFamily(AF_INET),
        SvcAttr::Fwmark(7),
        SvcAttr::Protocol(0),
    ];
    assert_eq!(Service::from_attrs(&attrs), None);
}

#[test]
fn truncated_attribute_is_a_decode_error() {
    // FLAGS with 4 bytes instead of 8.
    let b = [0x0c, 0x00, 0x01, 0x80, 0x08, 0x00, 0x07, 0x00, 0, 0, 0, 0];
    assert!(IpvsMessage::parse_with_param(&b[..], GenlHeader { cmd: 1, version: 1 }).is_err());
}

#[test]
fn netlink_framing_of_a_pipelined_request() {
    // The full datagram of `ipvsadm -D -t 10.96.0.10:80` with family id 0x23, seq 7.
    let mut genl = GenlMessage::from_payload(IpvsMessage::del_service(&id_v4()));
    genl.set_resolved_family_id(0x23);
    let mut hdr = NetlinkHeader::default();
    hdr.flags = NLM_F_REQUEST | NLM_F_ACK;
    hdr.sequence_number = 7;
    let mut msg = NetlinkMessage::new(hdr, NetlinkPayload::InnerMessage(genl));
    msg.finalize();
    let mut b = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut b);
    let golden = cat(&[
        &[
            0x44, 0, 0, 0, 0x23, 0x00, 0x05, 0x00, 7, 0, 0, 0, 0, 0, 0, 0,
        ], // nlmsghdr
        &[IPVS_CMD_DEL_SERVICE, IPVS_GENL_VERSION, 0, 0], // genlmsghdr
        &[0x30, 0x00, 0x01, 0x80],
        SVC_ID_V4_TCP_80,
    ]);
    assert_eq!(b, golden);
    let back = NetlinkMessage::<GenlMessage<IpvsMessage>>::deserialize(&b).expect("parses");
    match back.payload {
        NetlinkPayload::InnerMessage(g) => {
            assert_eq!(g.payload, IpvsMessage::del_service(&id_v4()))
        }
        other => panic!("unexpected {other:?}"),
    }
}

// ---- plan ----

fn key(vip: &str, port: u16) -> VirtualKey {
    VirtualKey {
        vip: ip(vip),
        protocol: Protocol::Tcp,
        port,
    }
}

fn dst(last: u8) -> Destination {
    Destination {
        addr: IpAddr::from([10, 244, 1, last]),
        port: 8080,
    }
}

fn vs(k: VirtualKey, dests: &[u8], affinity: Option<u32>) -> VirtualService {
    VirtualService {
        key: k,
        cluster: "b".into(),
        service: ServiceKey {
            namespace: "ns".into(),
            name: "web".into(),
        },
        port_name: String::new(),
        scheduler: Scheduling::RoundRobin,
        affinity_timeout: affinity,
        destinations: dests.iter().map(|d| dst(*d)).collect(),
    }
}

fn desired(list: Vec<VirtualService>) -> DesiredProxy {
    DesiredProxy {
        services: list.into_iter().map(|v| (v.key, v)).collect(),
        ..Default::default()
    }
}

/// The table the desired state programs (every destination active).
fn table_of(d: &DesiredProxy, weights: &[(u8, u32)]) -> Table {
    d.services
        .iter()
        .map(|(k, v)| {
            let mut dests: BTreeMap<Destination, DestState> = v
                .destinations
                .iter()
                .map(|x| {
                    (
                        *x,
                        DestState {
                            weight: ACTIVE_WEIGHT,
                            fwd: FwdMethod::Masq,
                        },
                    )
                })
                .collect();
            for (last, w) in weights {
                dests.insert(
                    dst(*last),
                    DestState {
                        weight: *w,
                        fwd: FwdMethod::Masq,
                    },
                );
            }
            (
                *k,
                TableService {
                    service: wanted_service(v),
                    dests,
                },
            )
        })
        .collect()
}

fn lines(p: &Plan) -> Vec<String> {
    p.to_string().lines().map(str::to_string).collect()
}

#[test]
fn plan_table() {
    let k = key("10.96.0.10", 80);
    let owned: BTreeSet<IpAddr> = [ip("10.96.0.10"), ip("10.96.0.11")].into();
    let now = Instant::now();
    let grace = Duration::from_secs(60);
    let two = desired(vec![vs(k, &[1, 2], None)]);
    let one = desired(vec![vs(k, &[1], None)]);
    struct Case {
        name: &'static str,
        desired: DesiredProxy,
        observed: Table,
        drains: Drains,
        expect: Vec<&'static str>,
        drains_after: usize,
    }
    let draining = |since: Instant| Drains::from([((k, dst(2)), since)]);
    let cases = vec![
        Case {
            name: "empty table: create service then its destinations",
            desired: two.clone(),
            observed: Table::new(),
            drains: Drains::new(),
            expect: vec![
                "add-service 10.96.0.10:80/tcp sched=rr",
                "add-dest 10.96.0.10:80/tcp -> 10.244.1.1:8080 weight=1",
                "add-dest 10.96.0.10:80/tcp -> 10.244.1.2:8080 weight=1",
            ],
            drains_after: 0,
        },
        Case {
            name: "in sync: nothing",
            desired: two.clone(),
            observed: table_of(&two, &[]),
            drains: Drains::new(),
            expect: vec![],
            drains_after: 0,
        },
        Case {
            name: "removed endpoint: weight 0 first (kubernetes 57841)",
            desired: one.clone(),
            observed: table_of(&two, &[]),
            drains: Drains::new(),
            expect: vec!["edit-dest 10.96.0.10:80/tcp -> 10.244.1.2:8080 weight=0"],
            drains_after: 1,
        },
        Case {
            name: "draining within the grace: nothing",
            desired: one.clone(),
            observed: table_of(&one, &[(2, 0)]),
            drains: draining(now - Duration::from_secs(10)),
            expect: vec![],
            drains_after: 1,
        },
        Case {
            name: "drained past the grace: delete",
            desired: one.clone(),
            observed: table_of(&one, &[(2, 0)]),
            drains: draining(now - Duration::from_secs(61)),
            expect: vec!["del-dest 10.96.0.10:80/tcp -> 10.244.1.2:8080"],
            drains_after: 0,
        },
        Case {
            name: "weight 0 found after a restart: the drain starts now",
            desired: one.clone(),
            observed: table_of(&one, &[(2, 0)]),
            drains: Drains::new(),
            expect: vec![],
            drains_after: 1,
        },
        Case {
            name: "endpoint back while draining, or left at 0 (kubernetes 92019): weight 1",
            desired: two.clone(),
            observed: table_of(&one, &[(2, 0)]),
            drains: draining(now),
            expect: vec!["edit-dest 10.96.0.10:80/tcp -> 10.244.1.2:8080 weight=1"],
            drains_after: 0,
        },
        Case {
            name: "affinity added: edit the service",
            desired: desired(vec![vs(k, &[1, 2], Some(10800))]),
            observed: table_of(&two, &[]),
            drains: Drains::new(),
            expect: vec!["edit-service 10.96.0.10:80/tcp sched=rr persistent=10800s"],
            drains_after: 0,
        },
        Case {
            name: "service gone on an owned VIP: its destinations drain; foreign VIP: untouched",
            desired: DesiredProxy::default(),
            observed: {
                let mut t = table_of(&two, &[]);
                t.extend(table_of(
                    &desired(vec![vs(key("10.99.0.1", 80), &[1], None)]),
                    &[],
                ));
                t
            },
            drains: Drains::new(),
            expect: vec![
                "edit-dest 10.96.0.10:80/tcp -> 10.244.1.1:8080 weight=0",
                "edit-dest 10.96.0.10:80/tcp -> 10.244.1.2:8080 weight=0",
            ],
            drains_after: 2,
        },
        Case {
            name: "service gone, one destination still within the grace: nothing",
            desired: DesiredProxy::default(),
            observed: table_of(&two, &[(1, 0), (2, 0)]),
            drains: Drains::from([
                ((k, dst(1)), now - Duration::from_secs(61)),
                ((k, dst(2)), now - Duration::from_secs(10)),
            ]),
            expect: vec![],
            drains_after: 1,
        },
        Case {
            name: "service gone and drained past the grace: delete it whole",
            desired: DesiredProxy::default(),
            observed: table_of(&two, &[(1, 0), (2, 0)]),
            drains: Drains::from([
                ((k, dst(1)), now - Duration::from_secs(61)),
                ((k, dst(2)), now - Duration::from_secs(61)),
            ]),
            expect: vec!["del-service 10.96.0.10:80/tcp"],
            drains_after: 0,
        },
        Case {
            name: "service gone without destinations: delete",
            desired: DesiredProxy::default(),
            observed: table_of(&desired(vec![vs(k, &[], None)]), &[]),
            drains: Drains::new(),
            expect: vec!["del-service 10.96.0.10:80/tcp"],
            drains_after: 0,
        },
    ];
    for c in cases {
        let p = plan(&c.desired, &c.observed, &owned, &c.drains, now, grace);
        assert_eq!(lines(&p), c.expect, "case: {}", c.name);
        assert_eq!(p.drains.len(), c.drains_after, "drains, case: {}", c.name);
    }
}

#[test]
fn immediate_removal_deletes_a_gone_service_without_draining() {
    let k = key("10.96.0.10", 80);
    let owned: BTreeSet<IpAddr> = [ip("10.96.0.10")].into();
    let observed = table_of(&desired(vec![vs(k, &[1, 2], None)]), &[]);
    let p = plan_with(
        &DesiredProxy::default(),
        &observed,
        &owned,
        &Drains::new(),
        Instant::now(),
        Duration::from_secs(60),
        Removal::Immediate,
    );
    assert_eq!(lines(&p), vec!["del-service 10.96.0.10:80/tcp"]);
    assert!(p.drains.is_empty());
}

#[test]
fn services_of_a_held_cluster_are_adopted_not_drained() {
    // 10.96.0.10 belongs to a cluster that has not listed yet; 10.97.0.10 to one that has.
    let held_k = key("10.96.0.10", 80);
    let gone_k = key("10.97.0.10", 80);
    let owned: BTreeSet<IpAddr> = [ip("10.96.0.10"), ip("10.97.0.10")].into();
    let mut observed = table_of(
        &desired(vec![vs(held_k, &[1, 2], Some(30)), vs(gone_k, &[3], None)]),
        &[],
    );
    // A destination already draining keeps draining.
    if let Some(t) = observed.get_mut(&held_k) {
        t.dests.insert(
            dst(9),
            DestState {
                weight: 0,
                fwd: FwdMethod::Masq,
            },
        );
    }
    let mut d = desired(vec![]);
    d.held = crate::model::Held {
        cidrs: vec![("west".into(), "10.96.0.0/16".parse().expect("net"))],
    };
    let adopted = d
        .adopting(table_services(&observed))
        .expect("one service is held");
    assert_eq!(adopted.services[&held_k].affinity_timeout, Some(30));
    let now = Instant::now();
    let drains: Drains = [((held_k, dst(9)), now)].into();
    let p = plan(
        &adopted,
        &observed,
        &owned,
        &drains,
        now,
        Duration::from_secs(60),
    );
    assert_eq!(
        lines(&p),
        vec!["edit-dest 10.97.0.10:80/tcp -> 10.244.1.3:8080 weight=0"],
        "{p}"
    );
    assert!(
        p.drains.contains_key(&(held_k, dst(9))),
        "the old drain goes on"
    );
}

#[test]
fn kernel_hashed_flag_does_not_cause_an_edit() {
    let k = key("10.96.0.10", 80);
    let d = desired(vec![vs(k, &[1], Some(60))]);
    let mut t = table_of(&d, &[]);
    if let Some(s) = t.get_mut(&k) {
        s.service.flags |= IP_VS_SVC_F_HASHED;
    }
    let p = plan(
        &d,
        &t,
        &BTreeSet::new(),
        &Drains::new(),
        Instant::now(),
        Duration::ZERO,
    );
    assert!(p.ops.is_empty(), "{p}");
}

#[test]
fn applying_a_plan_to_the_model_converges() {
    let owned: BTreeSet<IpAddr> = [ip("10.96.0.10"), ip("10.96.0.11")].into();
    let d = desired(vec![
        vs(key("10.96.0.10", 80), &[1, 2, 3], None),
        vs(key("10.96.0.11", 443), &[2], Some(30)),
    ]);
    let now = Instant::now();
    let mut t = Table::new();
    let p = plan(&d, &t, &owned, &Drains::new(), now, Duration::ZERO);
    assert_eq!(p.ops.len(), 2 + 4);
    for op in &p.ops {
        op.apply_to(&mut t);
    }
    assert_eq!(t, table_of(&d, &[]));
    let again = plan(&d, &t, &owned, &p.drains, now, Duration::ZERO);
    assert!(again.ops.is_empty(), "{again}");
}

#[test]
fn one_endpoint_change_is_one_message_at_scale() {
    let owned: BTreeSet<IpAddr> = (0..2000u32)
        .map(|i| IpAddr::from([10, 96, (i >> 8) as u8, i as u8]))
        .collect();
    let d = desired(
        owned
            .iter()
            .map(|v| {
                vs(
                    VirtualKey {
                        vip: *v,
                        protocol: Protocol::Tcp,
                        port: 80,
                    },
                    &[1, 2, 3],
                    None,
                )
            })
            .collect(),
    );
    let t = table_of(&d, &[]);
    let mut changed = d.clone();
    let first = *changed.services.keys().next().expect("services");
    if let Some(v) = changed.services.get_mut(&first) {
        v.destinations.insert(dst(9));
    }
    let p = plan(
        &changed,
        &t,
        &owned,
        &Drains::new(),
        Instant::now(),
        Duration::ZERO,
    );
    assert_eq!(p.ops.len(), 1, "{p}");
}

#[test]
fn kernel_release_comparison_for_conn_reuse_mode() {
    assert!(super::kernel_at_least("6.1.0-27-cloud-amd64", 5, 9));
    assert!(super::kernel_at_least("5.9.0", 5, 9));
    assert!(!super::kernel_at_least("5.4.0-150-generic", 5, 9));
    assert!(!super::kernel_at_least("4.19.0", 5, 9));
    // kubernetes 81775: mode 1 delays port-reusing reconnects by a second before 5.9.
    let reuse = |r: &str| super::namespace_sysctls(r)["net/ipv4/vs/conn_reuse_mode"].clone();
    assert_eq!(reuse("5.4.0-150-generic"), "0");
    assert_eq!(reuse("6.1.0-27-cloud-amd64"), "1");
    assert_eq!(reuse(""), "0");
}

#[test]
fn every_scheduling_has_a_kernel_name_and_comes_back_from_it() {
    for s in Scheduling::ALL {
        assert_eq!(scheduling_of(sched_name(s)), Some(s), "{s:?}");
        // `proxy.scheduler` takes the kernel's own names.
        assert_eq!(sched_name(s), s.name(), "{s:?}");
        assert_eq!(s.name().parse::<Scheduling>(), Ok(s));
    }
    assert_eq!(scheduling_of("nope"), None);
    assert!("nope".parse::<Scheduling>().is_err());
}
