//! The desired node state, computed from config alone (plus the tunnel's routes and the proxy's
//! VIPs): a pure value, no kernel access.

use crate::config::Config;
use ipnet::IpNet;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};

/// IPv6 next hop on the host end of the veth (fe80::1), used when any CIDR is IPv6.
pub const V6_HOST_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// IPv6 next hop on the namespace end of the veth (fe80::2).
pub const V6_NS_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);

/// Inputs from other subsystems.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeExtras {
    /// Remote node pod subnets, routed in the namespace through `tunnel.interface`.
    pub tunnel_routes: Vec<IpNet>,
    /// Service VIPs: a /32 (/128) each on the namespace interface.
    pub vips: BTreeSet<IpAddr>,
    /// Namespace sysctls the proxy backend needs (IPVS: `net/ipv4/vs/*`).
    pub ns_sysctls: BTreeMap<String, String>,
}

/// Where a route points: an interface and an optional gateway.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct RouteSpec {
    pub dev: String,
    pub via: Option<IpAddr>,
}

/// Everything the node plumbing owns, as it should be.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeDesired {
    /// Network namespace name (/run/netns/<name>).
    pub namespace: String,
    /// Host end of the veth pair.
    pub host_interface: String,
    /// Namespace end of the veth pair.
    pub interface: String,
    pub mtu: u32,
    /// Route protocol number marking our routes.
    pub protocol: u8,
    /// The WireGuard interface inside the namespace (routes through it wait for it to exist).
    pub tunnel_interface: String,
    /// Addresses on the host end.
    pub host_addrs: BTreeSet<IpNet>,
    /// Addresses on the namespace end: transit, DNS /32, VIP /32s.
    pub ns_addrs: BTreeSet<IpNet>,
    /// Host routes (main table) by destination.
    pub host_routes: BTreeMap<IpNet, RouteSpec>,
    /// Namespace routes (main table) by destination.
    pub ns_routes: BTreeMap<IpNet, RouteSpec>,
    /// Host sysctls (path under /proc/sys -> value).
    pub host_sysctls: BTreeMap<String, String>,
    /// Namespace sysctls; those under `net/ipv4/vs/` only apply when IPVS is loaded.
    pub ns_sysctls: BTreeMap<String, String>,
}

fn host_net(a: IpAddr) -> IpNet {
    IpNet::from(a)
}

impl NodeDesired {
    /// Computes the desired node state. Pure.
    pub fn from_config(cfg: &Config, extras: &NodeExtras) -> NodeDesired {
        let ns = &cfg.namespace;
        let prefix = ns.transit_cidr.prefix_len();
        let (host_t, ns_t) = crate::config::transit_addrs(ns.transit_cidr);
        let net = |a: std::net::Ipv4Addr| {
            IpNet::V4(ipnet::Ipv4Net::new(a, prefix).expect("prefix comes from a valid Ipv4Net"))
        };

        let any_v6 = cfg
            .local
            .pod_cidrs
            .iter()
            .chain(&cfg.local.service_cidrs)
            .chain(
                cfg.remote
                    .iter()
                    .flat_map(|r| r.pod_cidrs.iter().chain(&r.service_cidrs)),
            )
            .any(|c| matches!(c, IpNet::V6(_)));

        let mut host_addrs = BTreeSet::from([net(host_t)]);
        let mut ns_addrs = BTreeSet::from([net(ns_t)]);
        if any_v6 {
            // IPv6 routes cannot use an IPv4 next hop (the kernel refuses RTA_VIA for IPv6), and
            // kernel-made link-local addresses change with the veth's MAC: fixed link-local
            // addresses on both ends are the IPv6 next hops.
            host_addrs.insert(IpNet::V6(
                ipnet::Ipv6Net::new(V6_HOST_LL, 64).expect("64 is a valid prefix"),
            ));
            ns_addrs.insert(IpNet::V6(
                ipnet::Ipv6Net::new(V6_NS_LL, 64).expect("64 is a valid prefix"),
            ));
        }
        if cfg.dns.enabled {
            ns_addrs.insert(host_net(cfg.dns.address));
        }
        ns_addrs.extend(extras.vips.iter().copied().map(host_net));

        let to_ns = |c: &IpNet| RouteSpec {
            dev: ns.host_interface.clone(),
            via: Some(match c {
                IpNet::V4(_) => IpAddr::V4(ns_t),
                IpNet::V6(_) => IpAddr::V6(V6_NS_LL),
            }),
        };
        let mut host_routes = BTreeMap::new();
        for r in &cfg.remote {
            for c in r.pod_cidrs.iter().chain(&r.service_cidrs) {
                host_routes.insert(c.trunc(), to_ns(c));
            }
        }
        if cfg.dns.enabled {
            let dns = host_net(cfg.dns.address);
            host_routes.insert(dns, to_ns(&dns));
        }

        let to_host = |c: &IpNet| RouteSpec {
            dev: ns.interface.clone(),
            via: Some(match c {
                IpNet::V4(_) => IpAddr::V4(host_t),
                IpNet::V6(_) => IpAddr::V6(V6_HOST_LL),
            }),
        };
        let mut ns_routes = BTreeMap::new();
        for c in &cfg.local.pod_cidrs {
            ns_routes.insert(c.trunc(), to_host(c));
        }
        for c in &extras.tunnel_routes {
            ns_routes.insert(
                c.trunc(),
                RouteSpec {
                    dev: cfg.tunnel.interface.clone(),
                    via: None,
                },
            );
        }

        let s = |k: String, v: &str| (k, v.to_string());
        // rp_filter: the kernel uses max(conf/all, conf/<dev>), so 2 (loose, RFC 3704) on the
        // device is enough; strict mode would drop replies that return over the veth while the
        // source was routed into the tunnel.
        let mut host_sysctls = BTreeMap::from([
            s("net/ipv4/ip_forward".into(), "1"),
            s(
                format!("net/ipv4/conf/{}/rp_filter", ns.host_interface),
                "2",
            ),
        ]);
        let mut ns_sysctls = BTreeMap::from([
            s("net/ipv4/ip_forward".into(), "1"),
            s(format!("net/ipv4/conf/{}/rp_filter", ns.interface), "2"),
        ]);
        if any_v6 {
            host_sysctls.insert("net/ipv6/conf/all/forwarding".into(), "1".into());
            ns_sysctls.insert("net/ipv6/conf/all/forwarding".into(), "1".into());
        }
        for (k, v) in &extras.ns_sysctls {
            ns_sysctls.insert(k.clone(), v.clone());
        }

        NodeDesired {
            namespace: ns.name.clone(),
            host_interface: ns.host_interface.clone(),
            interface: ns.interface.clone(),
            mtu: ns.mtu,
            protocol: ns.route_protocol,
            tunnel_interface: cfg.tunnel.interface.clone(),
            host_addrs,
            ns_addrs,
            host_routes,
            ns_routes,
            host_sysctls,
            ns_sysctls,
        }
    }
}
