//! The desired proxy state: a pure function of the config and the clusters' snapshots.
//!
//! Rules follow kube-proxy so that a remote Service behaves here as it does inside its own
//! cluster:
//! - only ClusterIP Services are proxied (headless and ExternalName have no virtual IP);
//! - one virtual service per (ClusterIP, protocol, port), one ClusterIP per family;
//! - destinations are the ready endpoints; when none is ready, the serving-but-terminating ones
//!   are used instead (KEP-1669 "ProxyTerminatingEndpoints"), so a rolling update of the last
//!   pod does not drop connections;
//! - an endpoint's port is found in its EndpointSlice's ports by the Service port's name (the
//!   slice carries the resolved `targetPort`); a slice without port information falls back to a
//!   numeric `targetPort`, and a named `targetPort` that cannot be resolved drops the endpoint;
//! - the endpoint's address must be of the ClusterIP's family (kube-proxy uses the first one).

use super::{DesiredProxy, Destination, VirtualKey, VirtualService};
use crate::config::Config;
use crate::model::{Endpoint, Service, ServiceKind, ServicePort, Snapshots, TargetPort};
use std::collections::BTreeSet;
use std::net::IpAddr;

/// Computes every virtual service of every remote cluster. The local cluster's snapshot (and
/// any snapshot of a cluster that is not a configured remote) is ignored: local Services are
/// the local CNI's business. Deterministic: iteration is over ordered maps only, and when two
/// Services claim the same (ClusterIP, protocol, port), the first in (cluster, namespace, name)
/// order wins.
pub fn desired_proxy(cfg: &Config, snapshots: &Snapshots) -> DesiredProxy {
    let mut out = DesiredProxy::default();
    for (cluster, snapshot) in snapshots {
        if *cluster == cfg.local.name || cfg.remote(cluster).is_none() {
            continue;
        }
        for service in snapshot.services.values() {
            let ServiceKind::ClusterIp(ips) = &service.kind else {
                continue;
            };
            for &vip in ips {
                for port in &service.ports {
                    if port.port == 0 {
                        continue;
                    }
                    let key = VirtualKey {
                        vip,
                        protocol: port.protocol,
                        port: port.port,
                    };
                    out.services.entry(key).or_insert_with(|| VirtualService {
                        key,
                        cluster: cluster.clone(),
                        service: service.key.clone(),
                        port_name: port.name.clone(),
                        scheduler: cfg.proxy.scheduler,
                        affinity_timeout: service.client_ip_affinity,
                        destinations: destinations(service, port, vip),
                    });
                }
            }
        }
    }
    out
}

/// Ready endpoints, or serving-but-terminating ones when none is ready, at the resolved port.
fn destinations(service: &Service, port: &ServicePort, vip: IpAddr) -> BTreeSet<Destination> {
    let ready: BTreeSet<Destination> = service
        .endpoints
        .iter()
        .filter(|e| e.ready)
        .filter_map(|e| destination(e, port, vip))
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    service
        .endpoints
        .iter()
        .filter(|e| e.serving && e.terminating)
        .filter_map(|e| destination(e, port, vip))
        .collect()
}

fn destination(endpoint: &Endpoint, port: &ServicePort, vip: IpAddr) -> Option<Destination> {
    let addr = *endpoint
        .addresses
        .iter()
        .find(|a| a.is_ipv4() == vip.is_ipv4())?;
    let port = if endpoint.ports.is_empty() {
        match port.target_port {
            TargetPort::Number(n) if n != 0 => n,
            _ => return None,
        }
    } else {
        endpoint
            .ports
            .iter()
            .find(|p| p.name == port.name && p.protocol == port.protocol)
            .map(|p| p.port)
            .filter(|&p| p != 0)?
    };
    Some(Destination { addr, port })
}

#[cfg(test)]
pub(crate) mod tests {
    //! IP plan of these tests:
    //! - local cluster `home`: pods 10.0.0.0/16, services 10.96.0.0/16
    //! - remote `east`: pods 10.1.0.0/16 + fd01::/64, services 10.97.0.0/16 + fd97::/108
    //! - remote `west`: pods 10.2.0.0/16, services 10.98.0.0/16
    //! - ClusterIPs: east web 10.97.0.10 (+ fd97::10), east dns 10.97.0.53,
    //!   west api 10.98.0.20; home svc 10.96.0.5 (must never appear)
    //! - endpoints: east 10.1.0.x / fd01::x, west 10.2.0.x, home 10.0.0.x

    use super::*;
    use crate::config::*;
    use crate::model::*;
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Duration;

    pub(crate) fn ip(s: &str) -> IpAddr {
        s.parse().expect("test literal")
    }

    fn net(s: &str) -> ipnet::IpNet {
        s.parse().expect("test literal")
    }

    /// A Config built by hand (the loader is another engineer's work).
    pub(crate) fn test_config(scheduler: &str) -> Config {
        let remote = |name: &str, pods: &[&str], svcs: &[&str]| RemoteCluster {
            name: name.into(),
            kubeconfig: None,
            pod_cidrs: pods.iter().map(|p| net(p)).collect(),
            service_cidrs: svcs.iter().map(|p| net(p)).collect(),
            endpoint_cidrs: vec![],
            peers: vec![],
        };
        Config {
            log_level: "info".into(),
            resync_interval: Duration::from_secs(300),
            control_socket: "/run/sdnlink/control.sock".into(),
            state_dir: "/var/lib/sdnlink".into(),
            config_dir: "/etc/sdnlink".into(),
            local: LocalCluster {
                name: "home".into(),
                pod_cidrs: vec![net("10.0.0.0/16")],
                service_cidrs: vec![net("10.96.0.0/16")],
                node_name: "node1".into(),
                kubeconfig: None,
            },
            namespace: NamespaceConfig {
                name: "sdnlink".into(),
                host_interface: "sdnlink0".into(),
                interface: "eth0".into(),
                transit_cidr: "169.254.77.0/30".parse().expect("test literal"),
                mtu: 1500,
                route_protocol: 77,
            },
            tunnel: TunnelConfig {
                interface: "sdnlink-wg".into(),
                listen_port: 51820,
                private_key_file: "/etc/sdnlink/private.key".into(),
                endpoint: None,
                mode: TunnelMode::Auto,
                persistent_keepalive: 25,
                mtu: 1420,
                userspace_binary: "/usr/bin/wireguard-go".into(),
            },
            proxy: ProxyConfig {
                backend: ProxyBackendKind::Nftables,
                scheduler: scheduler.parse().expect("a scheduler name"),
                drain_grace: Duration::from_secs(30),
            },
            dns: DnsConfig {
                enabled: true,
                address: ip("169.254.77.53"),
                port: 53,
                upstreams: vec![],
                all_zone: true,
                ttl: 5,
                cache_size: 1000,
                log_queries: false,
                max_forwards_in_flight: 256,
            },
            sync: SyncConfig {
                startup_grace: Duration::from_secs(60),
                min_interval: Duration::from_millis(100),
                max_delay: Duration::from_millis(1000),
                max_objects_per_cluster: 100_000,
                max_bytes_per_cluster: 256 << 20,
                api_timeout: Duration::from_secs(60),
            },
            metrics: Default::default(),
            remote: vec![
                remote(
                    "east",
                    &["10.1.0.0/16", "fd01::/64"],
                    &["10.97.0.0/16", "fd97::/108"],
                ),
                remote("west", &["10.2.0.0/16"], &["10.98.0.0/16"]),
            ],
        }
    }

    pub(crate) fn ep(addrs: &[&str], ready: bool, serving: bool, terminating: bool) -> Endpoint {
        Endpoint {
            addresses: addrs.iter().map(|a| ip(a)).collect(),
            ready,
            serving,
            terminating,
            hostname: None,
            node_name: None,
            ports: Vec::new().into(),
        }
    }

    pub(crate) fn with_ports(mut e: Endpoint, ports: &[(&str, Protocol, u16)]) -> Endpoint {
        e.ports = ports
            .iter()
            .map(|(n, p, port)| EndpointPort {
                name: (*n).into(),
                protocol: *p,
                port: *port,
            })
            .collect();
        e
    }

    pub(crate) fn sport(
        name: &str,
        protocol: Protocol,
        port: u16,
        target: TargetPort,
    ) -> ServicePort {
        ServicePort {
            name: name.into(),
            protocol,
            port,
            target_port: target,
        }
    }

    pub(crate) fn svc(
        ns: &str,
        name: &str,
        kind: ServiceKind,
        ports: Vec<ServicePort>,
        endpoints: Vec<Endpoint>,
    ) -> Service {
        Service {
            key: ServiceKey {
                namespace: ns.into(),
                name: name.into(),
            },
            kind,
            ports,
            client_ip_affinity: None,
            endpoints,
        }
    }

    pub(crate) fn snapshots(clusters: Vec<(&str, Vec<Service>)>) -> Snapshots {
        clusters
            .into_iter()
            .map(|(c, services)| {
                let snap = ClusterSnapshot {
                    services: services.into_iter().map(|s| (s.key.clone(), s)).collect(),
                    nodes: BTreeMap::new(),
                };
                (c.to_string(), Arc::new(snap))
            })
            .collect()
    }

    fn key(vip: &str, protocol: Protocol, port: u16) -> VirtualKey {
        VirtualKey {
            vip: ip(vip),
            protocol,
            port,
        }
    }

    fn dests(list: &[(&str, u16)]) -> BTreeSet<Destination> {
        list.iter()
            .map(|(a, p)| Destination {
                addr: ip(a),
                port: *p,
            })
            .collect()
    }

    use Protocol::{Tcp, Udp};
    use TargetPort::{Name, Number};

    fn cip(ips: &[&str]) -> ServiceKind {
        ServiceKind::ClusterIp(ips.iter().map(|a| ip(a)).collect())
    }

    /// One row: a snapshot set, and the expected (key -> destinations) of the result.
    struct Case {
        name: &'static str,
        snaps: Snapshots,
        want: Vec<(VirtualKey, Vec<(&'static str, u16)>)>,
    }

    fn cases() -> Vec<Case> {
        let web_ports = || vec![sport("http", Tcp, 80, Name("web".into()))];
        vec![
            Case {
                name: "ready endpoints at the port matched by name",
                snaps: snapshots(vec![(
                    "east",
                    vec![svc(
                        "default",
                        "web",
                        cip(&["10.97.0.10"]),
                        web_ports(),
                        vec![
                            with_ports(ep(&["10.1.0.1"], true, true, false), &[("http", Tcp, 8080)]),
                            with_ports(ep(&["10.1.0.2"], true, true, false), &[("http", Tcp, 8081)]),
                            with_ports(ep(&["10.1.0.3"], false, false, false), &[("http", Tcp, 8080)]),
                        ],
                    )],
                )]),
                want: vec![(key("10.97.0.10", Tcp, 80), vec![("10.1.0.1", 8080), ("10.1.0.2", 8081)])],
            },
            Case {
                name: "terminating-but-serving only when nothing is ready",
                snaps: snapshots(vec![(
                    "east",
                    vec![
                        svc(
                            "default",
                            "a",
                            cip(&["10.97.0.11"]),
                            vec![sport("", Tcp, 80, Number(8080))],
                            vec![ep(&["10.1.0.1"], false, true, true), ep(&["10.1.0.2"], false, false, true)],
                        ),
                        svc(
                            "default",
                            "b",
                            cip(&["10.97.0.12"]),
                            vec![sport("", Tcp, 80, Number(8080))],
                            vec![ep(&["10.1.0.1"], false, true, true), ep(&["10.1.0.3"], true, true, false)],
                        ),
                    ],
                )]),
                want: vec![
                    (key("10.97.0.11", Tcp, 80), vec![("10.1.0.1", 8080)]),
                    (key("10.97.0.12", Tcp, 80), vec![("10.1.0.3", 8080)]),
                ],
            },
            Case {
                name: "headless, ExternalName and local cluster get nothing; no endpoints stays empty",
                snaps: snapshots(vec![
                    (
                        "east",
                        vec![
                            svc("default", "hl", ServiceKind::Headless, web_ports(), vec![ep(&["10.1.0.1"], true, true, false)]),
                            svc("default", "ext", ServiceKind::ExternalName("example.org".into()), web_ports(), vec![]),
                            svc("default", "empty", cip(&["10.97.0.13"]), web_ports(), vec![]),
                        ],
                    ),
                    (
                        "home",
                        vec![svc(
                            "default",
                            "local",
                            cip(&["10.96.0.5"]),
                            vec![sport("", Tcp, 80, Number(80))],
                            vec![ep(&["10.0.0.1"], true, true, false)],
                        )],
                    ),
                    (
                        "unknown",
                        vec![svc(
                            "default",
                            "x",
                            cip(&["10.99.0.5"]),
                            vec![sport("", Tcp, 80, Number(80))],
                            vec![ep(&["10.9.0.1"], true, true, false)],
                        )],
                    ),
                ]),
                want: vec![(key("10.97.0.13", Tcp, 80), vec![])],
            },
            Case {
                name: "dual stack: each ClusterIP gets endpoints of its own family",
                snaps: snapshots(vec![(
                    "east",
                    vec![svc(
                        "default",
                        "web",
                        cip(&["10.97.0.10", "fd97::10"]),
                        vec![sport("", Tcp, 80, Number(8080))],
                        vec![ep(&["10.1.0.1"], true, true, false), ep(&["fd01::1"], true, true, false)],
                    )],
                )]),
                want: vec![
                    (key("10.97.0.10", Tcp, 80), vec![("10.1.0.1", 8080)]),
                    (key("fd97::10", Tcp, 80), vec![("fd01::1", 8080)]),
                ],
            },
            Case {
                name: "multi-port: TCP and UDP on the same port are separate, ports matched by name and protocol",
                snaps: snapshots(vec![(
                    "east",
                    vec![svc(
                        "kube-system",
                        "dns",
                        cip(&["10.97.0.53"]),
                        vec![sport("dns", Udp, 53, Name("dns".into())), sport("dns-tcp", Tcp, 53, Name("dns-tcp".into()))],
                        vec![with_ports(
                            ep(&["10.1.0.7"], true, true, false),
                            &[("dns", Udp, 5353), ("dns-tcp", Tcp, 5354)],
                        )],
                    )],
                )]),
                want: vec![
                    (key("10.97.0.53", Tcp, 53), vec![("10.1.0.7", 5354)]),
                    (key("10.97.0.53", Udp, 53), vec![("10.1.0.7", 5353)]),
                ],
            },
            Case {
                name: "named targetPort without slice ports, or a slice without that port, drops the endpoint",
                snaps: snapshots(vec![(
                    "west",
                    vec![svc(
                        "default",
                        "api",
                        cip(&["10.98.0.20"]),
                        web_ports(),
                        vec![
                            ep(&["10.2.0.1"], true, true, false),
                            with_ports(ep(&["10.2.0.2"], true, true, false), &[("metrics", Tcp, 9090)]),
                            with_ports(ep(&["10.2.0.3"], true, true, false), &[("http", Udp, 8080)]),
                            with_ports(ep(&["10.2.0.4"], true, true, false), &[("http", Tcp, 8443)]),
                        ],
                    )],
                )]),
                want: vec![(key("10.98.0.20", Tcp, 80), vec![("10.2.0.4", 8443)])],
            },
        ]
    }

    #[test]
    fn table_of_cases() {
        let cfg = test_config("rr");
        for case in cases() {
            let got = desired_proxy(&cfg, &case.snaps);
            let got_keys: Vec<_> = got.services.keys().copied().collect();
            let want_keys: Vec<_> = case.want.iter().map(|(k, _)| *k).collect();
            assert_eq!(got_keys, want_keys, "case {:?}: keys", case.name);
            for (k, d) in &case.want {
                assert_eq!(
                    got.services[k].destinations,
                    dests(d),
                    "case {:?}: {}",
                    case.name,
                    k
                );
            }
        }
    }

    #[test]
    fn scheduler_affinity_and_origin_are_carried() {
        let mut s = svc(
            "shop",
            "cart",
            cip(&["10.97.0.30"]),
            vec![sport("http", Tcp, 80, Number(8080))],
            vec![ep(&["10.1.0.9"], true, true, false)],
        );
        s.client_ip_affinity = Some(600);
        let got = desired_proxy(&test_config("sh"), &snapshots(vec![("east", vec![s])]));
        let vs = &got.services[&key("10.97.0.30", Tcp, 80)];
        assert_eq!(vs.scheduler.name(), "sh");
        assert_eq!(vs.affinity_timeout, Some(600));
        assert_eq!(vs.cluster, "east");
        assert_eq!(vs.service.to_string(), "shop/cart");
        assert_eq!(vs.port_name, "http");
    }

    #[test]
    fn deterministic_and_first_claim_wins() {
        // Two clusters claiming one VIP cannot pass config validation (service CIDRs may not
        // overlap), but the function must still be deterministic if a snapshot lies.
        let mk = |name: &str, addr: &str| {
            svc(
                "default",
                name,
                cip(&["10.97.0.40"]),
                vec![sport("", Tcp, 80, Number(80))],
                vec![ep(&[addr], true, true, false)],
            )
        };
        let snaps = snapshots(vec![(
            "east",
            vec![mk("b", "10.1.0.2"), mk("a", "10.1.0.1")],
        )]);
        let cfg = test_config("rr");
        let first = desired_proxy(&cfg, &snaps);
        assert_eq!(first, desired_proxy(&cfg, &snaps));
        let vs = &first.services[&key("10.97.0.40", Tcp, 80)];
        assert_eq!(vs.service.name, "a");
        assert_eq!(vs.destinations, dests(&[("10.1.0.1", 80)]));
    }
}
