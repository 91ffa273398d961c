//! The desired node state, computed from config alone (plus the tunnel's routes and the proxy's
//! VIPs): a pure value, no kernel access.

use crate::config::{Config, ProxyBackendKind};
use ipnet::IpNet;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Inputs from other subsystems.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeExtras {
    /// Remote node pod subnets, routed in the namespace through `tunnel.interface`.
    pub tunnel_routes: Vec<IpNet>,
    /// Service VIPs: a /32 (/128) each on the namespace interface.
    pub vips: BTreeSet<IpAddr>,
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

        let host_addrs = BTreeSet::from([net(host_t)]);
        let mut ns_addrs = BTreeSet::from([net(ns_t)]);
        if cfg.dns.enabled {
            ns_addrs.insert(host_net(cfg.dns.address));
        }
        ns_addrs.extend(extras.vips.iter().copied().map(host_net));

        let to_ns = RouteSpec {
            dev: ns.host_interface.clone(),
            via: Some(IpAddr::V4(ns_t)),
        };
        let mut host_routes = BTreeMap::new();
        for r in &cfg.remote {
            for c in r.pod_cidrs.iter().chain(&r.service_cidrs) {
                host_routes.insert(c.trunc(), to_ns.clone());
            }
        }
        if cfg.dns.enabled {
            host_routes.insert(host_net(cfg.dns.address), to_ns.clone());
        }

        let to_host = RouteSpec {
            dev: ns.interface.clone(),
            via: Some(IpAddr::V4(host_t)),
        };
        let mut ns_routes = BTreeMap::new();
        for c in &cfg.local.pod_cidrs {
            ns_routes.insert(c.trunc(), to_host.clone());
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
        if cfg.proxy.backend != ProxyBackendKind::Nftables {
            // IPVS masquerade needs conntrack entries for the NAT'ed replies; the expire_* pair
            // drops connections to removed real servers instead of blackholing them (the
            // settings kube-proxy's IPVS mode applies, kubernetes issue 57841).
            ns_sysctls.insert("net/ipv4/vs/conntrack".into(), "1".into());
            ns_sysctls.insert("net/ipv4/vs/expire_nodest_conn".into(), "1".into());
            ns_sysctls.insert("net/ipv4/vs/expire_quiescent_template".into(), "1".into());
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
