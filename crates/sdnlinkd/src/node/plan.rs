//! The pure diff between desired and observed node state.

use super::desired::{NodeDesired, RouteSpec};
use ipnet::IpNet;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Which network namespace an operation acts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Host,
    Ns,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Host => "host",
            Side::Ns => "namespace",
        })
    }
}

/// State of one of our links.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LinkState {
    pub mtu: u32,
    pub up: bool,
}

/// What the kernel holds of what we own (our veth, the addresses on it, routes with our
/// protocol number in the main tables). Also the committed state of incremental syncs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Observed {
    /// Host end of our veth, if it exists (existence implies ownership was checked).
    pub host_link: Option<LinkState>,
    /// Namespace end of our veth.
    pub ns_link: Option<LinkState>,
    /// Whether `lo` in the namespace is up (local delivery to the VIPs and the DNS address).
    pub ns_lo_up: bool,
    /// Whether the tunnel interface exists in the namespace.
    pub tunnel_present: bool,
    pub host_addrs: BTreeSet<IpNet>,
    pub ns_addrs: BTreeSet<IpNet>,
    pub host_routes: BTreeMap<IpNet, RouteSpec>,
    pub ns_routes: BTreeMap<IpNet, RouteSpec>,
}

/// One kernel operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum NodeOp {
    /// A veth pair whose peer is created directly inside the namespace.
    CreateVeth {
        host: String,
        ns: String,
        namespace: String,
        mtu: u32,
    },
    SetLink {
        side: Side,
        name: String,
        mtu: Option<u32>,
        up: bool,
    },
    AddAddr {
        side: Side,
        dev: String,
        addr: IpNet,
    },
    DelAddr {
        side: Side,
        dev: String,
        addr: IpNet,
    },
    AddRoute {
        side: Side,
        dst: IpNet,
        spec: RouteSpec,
        protocol: u8,
    },
    /// Replaces one of our routes whose gateway or device changed.
    ReplaceRoute {
        side: Side,
        dst: IpNet,
        spec: RouteSpec,
        protocol: u8,
    },
    DelRoute {
        side: Side,
        dst: IpNet,
        spec: RouteSpec,
        protocol: u8,
    },
}

impl NodeOp {
    /// Whether the operation takes something away (an address or a route).
    pub fn is_removal(&self) -> bool {
        matches!(self, NodeOp::DelAddr { .. } | NodeOp::DelRoute { .. })
    }
}

fn pfx(side: &Side) -> &'static str {
    match side {
        Side::Host => "host",
        Side::Ns => "ns",
    }
}

fn route_words(dst: &IpNet, spec: &RouteSpec, protocol: u8) -> String {
    match spec.via {
        Some(v) => format!("{dst} via {v} dev {} proto {protocol}", spec.dev),
        None => format!("{dst} dev {} proto {protocol}", spec.dev),
    }
}

/// One line in `ip` command syntax, prefixed by the namespace it acts in.
impl fmt::Display for NodeOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeOp::CreateVeth {
                host,
                ns,
                namespace,
                mtu,
            } => write!(
                f,
                "host: ip link add {host} mtu {mtu} type veth peer name {ns} netns {namespace}"
            ),
            NodeOp::SetLink {
                side,
                name,
                mtu,
                up,
            } => {
                write!(f, "{}: ip link set {name}", pfx(side))?;
                if let Some(m) = mtu {
                    write!(f, " mtu {m}")?;
                }
                f.write_str(if *up { " up" } else { " down" })
            }
            NodeOp::AddAddr { side, dev, addr } => {
                write!(f, "{}: ip addr add {addr} dev {dev}", pfx(side))
            }
            NodeOp::DelAddr { side, dev, addr } => {
                write!(f, "{}: ip addr del {addr} dev {dev}", pfx(side))
            }
            NodeOp::AddRoute {
                side,
                dst,
                spec,
                protocol,
            } => write!(
                f,
                "{}: ip route add {}",
                pfx(side),
                route_words(dst, spec, *protocol)
            ),
            NodeOp::ReplaceRoute {
                side,
                dst,
                spec,
                protocol,
            } => write!(
                f,
                "{}: ip route replace {}",
                pfx(side),
                route_words(dst, spec, *protocol)
            ),
            NodeOp::DelRoute {
                side,
                dst,
                spec,
                protocol,
            } => write!(
                f,
                "{}: ip route del {}",
                pfx(side),
                route_words(dst, spec, *protocol)
            ),
        }
    }
}

/// The namespace routes that can be installed now: those through the tunnel interface wait
/// until it exists (the kernel refuses a route on a missing device).
fn effective_ns_routes<'a>(
    desired: &'a NodeDesired,
    observed: &Observed,
) -> impl Iterator<Item = (&'a IpNet, &'a RouteSpec)> {
    let tunnel_ok = observed.tunnel_present;
    desired
        .ns_routes
        .iter()
        .filter(move |(_, s)| tunnel_ok || s.dev != desired.tunnel_interface)
}

/// Desired namespace routes skipped because the tunnel interface does not exist yet.
pub fn skipped_routes(desired: &NodeDesired, observed: &Observed) -> Vec<IpNet> {
    if observed.tunnel_present {
        return Vec::new();
    }
    desired
        .ns_routes
        .iter()
        .filter(|(_, s)| s.dev == desired.tunnel_interface)
        .map(|(d, _)| *d)
        .collect()
}

fn diff_addrs(
    ops: &mut Vec<NodeOp>,
    dels: &mut Vec<NodeOp>,
    side: Side,
    dev: &str,
    want: &BTreeSet<IpNet>,
    have: &BTreeSet<IpNet>,
) {
    for a in have.difference(want) {
        dels.push(NodeOp::DelAddr {
            side,
            dev: dev.to_string(),
            addr: *a,
        });
    }
    for a in want.difference(have) {
        ops.push(NodeOp::AddAddr {
            side,
            dev: dev.to_string(),
            addr: *a,
        });
    }
}

fn diff_routes<'a>(
    ops: &mut Vec<NodeOp>,
    dels: &mut Vec<NodeOp>,
    side: Side,
    protocol: u8,
    want: impl Iterator<Item = (&'a IpNet, &'a RouteSpec)>,
    have: &BTreeMap<IpNet, RouteSpec>,
) {
    let want: BTreeMap<&IpNet, &RouteSpec> = want.collect();
    for (dst, spec) in have {
        if !want.contains_key(dst) {
            dels.push(NodeOp::DelRoute {
                side,
                dst: *dst,
                spec: spec.clone(),
                protocol,
            });
        }
    }
    for (dst, spec) in want {
        match have.get(dst) {
            None => ops.push(NodeOp::AddRoute {
                side,
                dst: *dst,
                spec: spec.clone(),
                protocol,
            }),
            Some(h) if h != spec => ops.push(NodeOp::ReplaceRoute {
                side,
                dst: *dst,
                spec: spec.clone(),
                protocol,
            }),
            Some(_) => {}
        }
    }
}

/// The operations that turn `observed` into `desired`, in a safe order: deletions of routes
/// and addresses first, then links, addresses, routes. Empty when nothing differs. Pure.
pub fn plan(desired: &NodeDesired, observed: &Observed) -> Vec<NodeOp> {
    let mut dels = Vec::new();
    let mut ops = Vec::new();

    if observed.host_link.is_none() || observed.ns_link.is_none() {
        ops.push(NodeOp::CreateVeth {
            host: desired.host_interface.clone(),
            ns: desired.interface.clone(),
            namespace: desired.namespace.clone(),
            mtu: desired.mtu,
        });
    }
    for (side, name, link) in [
        (Side::Host, &desired.host_interface, observed.host_link),
        (Side::Ns, &desired.interface, observed.ns_link),
    ] {
        let (mtu_ok, up) = match link {
            Some(l) => (l.mtu == desired.mtu, l.up),
            None => (false, false),
        };
        if !mtu_ok || !up {
            ops.push(NodeOp::SetLink {
                side,
                name: name.clone(),
                mtu: (!mtu_ok).then_some(desired.mtu),
                up: true,
            });
        }
    }
    if !observed.ns_lo_up {
        ops.push(NodeOp::SetLink {
            side: Side::Ns,
            name: "lo".into(),
            mtu: None,
            up: true,
        });
    }

    // A (re)created veth starts without addresses or routes.
    let fresh = observed.host_link.is_none() || observed.ns_link.is_none();
    let empty_a = BTreeSet::new();
    let empty_r = BTreeMap::new();
    let (ha, na, hr, nr) = if fresh {
        (&empty_a, &empty_a, &empty_r, &empty_r)
    } else {
        (
            &observed.host_addrs,
            &observed.ns_addrs,
            &observed.host_routes,
            &observed.ns_routes,
        )
    };
    diff_addrs(
        &mut ops,
        &mut dels,
        Side::Host,
        &desired.host_interface,
        &desired.host_addrs,
        ha,
    );
    diff_addrs(
        &mut ops,
        &mut dels,
        Side::Ns,
        &desired.interface,
        &desired.ns_addrs,
        na,
    );
    // Routes through other devices (the tunnel) survive a veth re-creation.
    let nr_kept: BTreeMap<IpNet, RouteSpec>;
    let nr = if fresh {
        nr_kept = routes_not_via(&observed.ns_routes, &desired.interface);
        &nr_kept
    } else {
        nr
    };
    let hr_kept: BTreeMap<IpNet, RouteSpec>;
    let hr = if fresh {
        hr_kept = routes_not_via(&observed.host_routes, &desired.host_interface);
        &hr_kept
    } else {
        hr
    };
    diff_routes(
        &mut ops,
        &mut dels,
        Side::Host,
        desired.protocol,
        desired.host_routes.iter(),
        hr,
    );
    diff_routes(
        &mut ops,
        &mut dels,
        Side::Ns,
        desired.protocol,
        effective_ns_routes(desired, observed),
        nr,
    );

    // Route deletions before address deletions: a route's gateway needs its subnet.
    dels.sort_by_key(|op| !matches!(op, NodeOp::DelRoute { .. }));
    dels.extend(ops);
    dels
}

/// Applies one successfully executed operation to a state (the committed state after a sync).
pub fn apply_to_observed(obs: &mut Observed, op: &NodeOp, desired: &NodeDesired) {
    match op {
        NodeOp::CreateVeth { mtu, .. } => {
            let l = Some(LinkState {
                mtu: *mtu,
                up: false,
            });
            obs.host_link = l;
            obs.ns_link = l;
            obs.host_addrs.clear();
            obs.ns_addrs.clear();
            obs.host_routes
                .retain(|_, s| s.dev != desired.host_interface);
            obs.ns_routes.retain(|_, s| s.dev != desired.interface);
        }
        NodeOp::SetLink {
            side,
            name,
            mtu,
            up,
            ..
        } => {
            let link = match side {
                Side::Host if *name == desired.host_interface => &mut obs.host_link,
                Side::Ns if *name == desired.interface => &mut obs.ns_link,
                Side::Ns if name == "lo" => {
                    obs.ns_lo_up = *up;
                    return;
                }
                _ => return,
            };
            if let Some(l) = link {
                l.up = *up;
                if let Some(m) = mtu {
                    l.mtu = *m;
                }
            }
        }
        NodeOp::AddAddr { side, addr, .. } => {
            match side {
                Side::Host => obs.host_addrs.insert(*addr),
                Side::Ns => obs.ns_addrs.insert(*addr),
            };
        }
        NodeOp::DelAddr { side, addr, .. } => {
            match side {
                Side::Host => obs.host_addrs.remove(addr),
                Side::Ns => obs.ns_addrs.remove(addr),
            };
        }
        NodeOp::AddRoute {
            side, dst, spec, ..
        }
        | NodeOp::ReplaceRoute {
            side, dst, spec, ..
        } => {
            match side {
                Side::Host => obs.host_routes.insert(*dst, spec.clone()),
                Side::Ns => obs.ns_routes.insert(*dst, spec.clone()),
            };
        }
        NodeOp::DelRoute { side, dst, .. } => {
            match side {
                Side::Host => obs.host_routes.remove(dst),
                Side::Ns => obs.ns_routes.remove(dst),
            };
        }
    }
}

/// The routes of `routes` through a device other than `dev`: those a re-creation of `dev`
/// leaves in place.
fn routes_not_via(routes: &BTreeMap<IpNet, RouteSpec>, dev: &str) -> BTreeMap<IpNet, RouteSpec> {
    routes
        .iter()
        .filter(|(_, s)| s.dev != dev)
        .map(|(d, s)| (*d, s.clone()))
        .collect()
}
