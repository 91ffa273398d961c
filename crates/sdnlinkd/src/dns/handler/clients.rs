//! The sources the stub answers: the local cluster's pods and this host, never the tunnel.

use ipnet::IpNet;

/// The sources the stub answers (issue: a remote node must not get answers or recursion from
/// us by routing our DNS address into its tunnel).
#[derive(Clone, Debug)]
pub enum Clients {
    /// Every source (a handler used without the daemon's config).
    Any,
    /// Only sources inside these networks; others get REFUSED.
    Only(Vec<IpNet>),
}

impl Clients {
    /// The local cluster's pods and this host, as the config places them:
    /// - `local.pod_cidrs`: pods reach the DNS address through the host's route into the
    ///   namespace with their own address (routed, not masqueraded);
    /// - `namespace.transit_cidr`: the host's route to the DNS address has no preferred source,
    ///   so the kernel picks the veth's own address, the transit CIDR's host end;
    /// - IPv6 link-local (`fe80::/10`): the host end of the veth when the DNS address is IPv6
    ///   (never forwarded, so no pod or tunnel source carries it);
    /// - the DNS address itself and loopback: clients inside sdnlinkd's namespace.
    ///
    /// Sources from the tunnel are remote pod addresses: WireGuard accepts a packet from a peer
    /// only when its source lies in that peer's allowed IPs, which the trust rules keep inside
    /// the remote's pod CIDRs, so none of the above can arrive through it.
    pub fn from_config(cfg: &crate::config::Config) -> Clients {
        let mut nets = cfg.local.pod_cidrs.clone();
        nets.push(IpNet::V4(cfg.namespace.transit_cidr));
        nets.push(IpNet::from(cfg.dns.address));
        for n in ["fe80::/10", "127.0.0.0/8", "::1/128"] {
            nets.push(n.parse().expect("literal network"));
        }
        Clients::Only(nets)
    }

    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        match self {
            Clients::Any => true,
            Clients::Only(nets) => {
                let ip = ip.to_canonical();
                nets.iter().any(|n| n.contains(&ip))
            }
        }
    }
}
