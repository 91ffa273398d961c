//! The desired state of every subsystem as one value: a pure function of the config, the
//! clusters' snapshots and what is held for clusters that have not listed yet.

use crate::config::Config;
use crate::model::{Held, Snapshots};
use crate::node::NodeExtras;
use crate::proxy::DesiredProxy;
use crate::tunnel::DesiredPeers;
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// What one sync asks of the tunnel and the proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub peers: DesiredPeers,
    pub proxy: DesiredProxy,
}

impl Desired {
    /// Peers and virtual services from `snapshots`; `held` = (pod CIDRs, service CIDRs) of the
    /// remotes that have not listed in this run, whose kernel objects the subsystems keep.
    pub fn compute(cfg: &Config, snapshots: &Snapshots, held: (Held, Held)) -> Desired {
        let mut peers = crate::tunnel::desired_peers(cfg, snapshots);
        let mut proxy = crate::proxy::desired::desired_proxy(cfg, snapshots);
        peers.held = held.0;
        proxy.held = held.1;
        Desired { peers, proxy }
    }

    /// The clusters held in this sync.
    pub fn held_clusters(&self) -> Vec<String> {
        let names: BTreeSet<&str> = self
            .peers
            .held
            .cidrs
            .iter()
            .chain(&self.proxy.held.cidrs)
            .map(|(n, _)| n.as_str())
            .collect();
        names.into_iter().map(str::to_string).collect()
    }

    /// The node's extras once the tunnel and the proxy have synced: routes for the subnets the
    /// device's peers have, and (for a backend that needs them) the VIPs of the desired services
    /// plus those the backend still serves (draining, or kept for a held cluster), and the
    /// namespace sysctls the backend needs.
    pub fn node_extras(
        &self,
        tunnel_routes: Vec<IpNet>,
        needs_vips: bool,
        lingering: BTreeSet<IpAddr>,
        ns_sysctls: BTreeMap<String, String>,
    ) -> NodeExtras {
        NodeExtras {
            ns_sysctls,
            tunnel_routes,
            vips: if needs_vips {
                let mut v = self.proxy.vips();
                v.extend(lingering);
                v
            } else {
                Default::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ClusterSnapshot, Node, Service, ServiceKey, ServiceKind};
    use std::sync::Arc;

    #[test]
    fn held_cidrs_reach_both_subsystems_and_unknown_clusters_add_nothing() {
        let cfg = crate::proxy::desired::tests::test_config("rr");
        let svc = Service {
            key: ServiceKey {
                namespace: "ns".into(),
                name: "web".into(),
            },
            kind: ServiceKind::ClusterIp(vec!["10.97.0.10".parse().expect("literal")]),
            ports: vec![crate::model::ServicePort {
                name: String::new(),
                protocol: crate::model::Protocol::Tcp,
                port: 80,
                target_port: crate::model::TargetPort::Number(8080),
            }],
            client_ip_affinity: None,
            endpoints: vec![],
        };
        let east = ClusterSnapshot {
            services: [(svc.key.clone(), svc)].into(),
            nodes: [(
                "e1".to_string(),
                Node {
                    name: "e1".into(),
                    pod_cidrs: vec!["10.1.1.0/24".parse().expect("literal")],
                    wireguard_public_key: Some(
                        "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=".into(),
                    ),
                    wireguard_endpoint: Some("192.0.2.1:51820".into()),
                },
            )]
            .into(),
        };
        // east listed; west is unknown (absent) and held.
        let snaps: Snapshots = [("east".to_string(), Arc::new(east))].into();
        let held = (
            Held {
                cidrs: vec![("west".into(), "10.2.0.0/16".parse().expect("literal"))],
            },
            Held {
                cidrs: vec![("west".into(), "10.98.0.0/16".parse().expect("literal"))],
            },
        );
        let d = Desired::compute(&cfg, &snaps, held);
        assert_eq!(d.peers.peers.len(), 1);
        assert_eq!(d.proxy.services.len(), 1);
        assert_eq!(d.held_clusters(), ["west"]);
        assert_eq!(d.peers.held.cidrs.len(), 1);
        assert_eq!(d.proxy.held.cidrs.len(), 1);
        let lingering: BTreeSet<IpAddr> = ["10.98.0.7".parse().expect("literal")].into();
        let x = d.node_extras(vec![], true, lingering.clone(), BTreeMap::new());
        assert_eq!(x.vips.len(), 2, "desired VIP plus the held one");
        assert!(d
            .node_extras(vec![], false, lingering, BTreeMap::new())
            .vips
            .is_empty());
    }
}
