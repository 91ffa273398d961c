//! What the node plumbing owns and still wants, as a value the netlink event task matches every
//! notification against ([`concerns_us`]). Only a change to one of these objects asks for a
//! repair: other software's churn (a CNI adding and removing pod veths and routes on every pod
//! start and stop) costs nothing, and sdnlinkd's own withdrawals never echo back as repairs.

use super::desired::NodeDesired;
use super::kernel::{address_net, route_dst, route_table, Ifindexes};
use super::plan::{Observed, Side};
use arc_swap::ArcSwap;
use ipnet::IpNet;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{RouteHeader, RouteProtocol, RouteType};
use rtnetlink::packet_route::RouteNetlinkMessage;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

/// What a link is to the plumbing, which says what change to it matters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkRole {
    /// One end of our veth: must exist, stay up, keep its name and this MTU.
    Veth { mtu: u32 },
    /// The namespace's `lo`: must stay up (local delivery to the VIPs and the DNS address).
    Loopback,
    /// The tunnel interface: routes through it go with it. Its own settings are the tunnel's
    /// business, so only its deletion matters here.
    Tunnel,
}

/// One link the plumbing depends on, by interface index (names can be reused by others; an
/// index is not reused while the kernel runs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedLink {
    pub index: u32,
    pub name: String,
    pub role: LinkRole,
}

/// What the plumbing owns and wants in one namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnedSide {
    /// Links by index: our veth end, and in the namespace `lo` and the tunnel.
    pub links: Vec<OwnedLink>,
    /// Addresses on our veth end (the link with role [`LinkRole::Veth`]).
    pub addrs: BTreeSet<IpNet>,
    /// Our routes (main table, our protocol): destination -> device name.
    pub routes: BTreeMap<IpNet, String>,
}

impl OwnedSide {
    fn link(&self, index: u32) -> Option<&OwnedLink> {
        self.links.iter().find(|l| l.index == index)
    }

    fn veth(&self) -> Option<&OwnedLink> {
        self.links
            .iter()
            .find(|l| matches!(l.role, LinkRole::Veth { .. }))
    }
}

/// Everything whose out-of-band change asks for a repair: the objects that are both desired
/// and installed after the last sync.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owned {
    /// Route protocol number marking our routes.
    pub protocol: u8,
    pub host: OwnedSide,
    pub ns: OwnedSide,
}

impl Owned {
    /// The objects of `desired` that `observed` holds, with the link indexes `idx`. Pure.
    pub(crate) fn wanted(desired: &NodeDesired, observed: &Observed, idx: &Ifindexes) -> Owned {
        let veth = |index: Option<u32>, present: bool, name: &str| {
            index.filter(|_| present).map(|index| OwnedLink {
                index,
                name: name.to_string(),
                role: LinkRole::Veth { mtu: desired.mtu },
            })
        };
        let mut host = OwnedSide {
            links: veth(
                idx.host_veth,
                observed.host_link.is_some(),
                &desired.host_interface,
            )
            .into_iter()
            .collect(),
            addrs: desired
                .host_addrs
                .intersection(&observed.host_addrs)
                .copied()
                .collect(),
            routes: desired
                .host_routes
                .iter()
                .filter(|(d, _)| observed.host_routes.contains_key(d))
                .map(|(d, s)| (*d, s.dev.clone()))
                .collect(),
        };
        let mut ns = OwnedSide {
            links: veth(idx.ns_veth, observed.ns_link.is_some(), &desired.interface)
                .into_iter()
                .collect(),
            addrs: desired
                .ns_addrs
                .intersection(&observed.ns_addrs)
                .copied()
                .collect(),
            routes: desired
                .ns_routes
                .iter()
                .filter(|(d, _)| observed.ns_routes.contains_key(d))
                .map(|(d, s)| (*d, s.dev.clone()))
                .collect(),
        };
        if let Some(index) = idx.ns_lo {
            ns.links.push(OwnedLink {
                index,
                name: "lo".into(),
                role: LinkRole::Loopback,
            });
        }
        if let Some(index) = idx.tunnel.filter(|_| observed.tunnel_present) {
            ns.links.push(OwnedLink {
                index,
                name: desired.tunnel_interface.clone(),
                role: LinkRole::Tunnel,
            });
        }
        host.links.sort_by_key(|l| l.index);
        ns.links.sort_by_key(|l| l.index);
        Owned {
            protocol: desired.protocol,
            host,
            ns,
        }
    }

    fn side(&self, side: Side) -> &OwnedSide {
        match side {
            Side::Host => &self.host,
            Side::Ns => &self.ns,
        }
    }
}

/// Why a notification concerns us: the first owned object a burst changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    LinkDeleted {
        side: Side,
        name: String,
        index: u32,
    },
    LinkChanged {
        side: Side,
        name: String,
        /// What changed: `down`, `mtu 1400 (want 1500)`, `renamed to x`.
        change: String,
    },
    AddressDeleted {
        side: Side,
        dev: String,
        addr: IpNet,
    },
    RouteDeleted {
        side: Side,
        dst: IpNet,
        protocol: u8,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::LinkDeleted { side, name, index } => {
                write!(f, "{side} link {name} (ifindex {index}) deleted")
            }
            Reason::LinkChanged { side, name, change } => {
                write!(f, "{side} link {name}: {change}")
            }
            Reason::AddressDeleted { side, dev, addr } => {
                write!(f, "{side} address {addr} on {dev} deleted")
            }
            Reason::RouteDeleted {
                side,
                dst,
                protocol,
            } => write!(f, "{side} route {dst} proto {protocol} deleted"),
        }
    }
}

fn link_change(link: &OwnedLink, m: &LinkMessage) -> Option<String> {
    if let Some(name) = m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n),
        _ => None,
    }) {
        if *name != link.name && link.role != LinkRole::Tunnel {
            return Some(format!("renamed to {name}"));
        }
    }
    match link.role {
        LinkRole::Tunnel => None,
        LinkRole::Loopback => (!m.header.flags.contains(LinkFlags::Up)).then(|| "down".into()),
        LinkRole::Veth { mtu: want } => {
            if !m.header.flags.contains(LinkFlags::Up) {
                return Some("down".into());
            }
            m.attributes.iter().find_map(|a| match a {
                LinkAttribute::Mtu(mtu) if *mtu != want => Some(format!("mtu {mtu} (want {want})")),
                _ => None,
            })
        }
    }
}

/// Whether a notification from the namespace `side` changed an object in `owned`, and which.
/// A link moved to another namespace counts as deleted: the kernel sends RTM_DELLINK in the
/// namespace it leaves (net/core/dev.c, `__dev_change_net_namespace`). Pure.
pub fn concerns_us(side: Side, msg: &RouteNetlinkMessage, owned: &Owned) -> Option<Reason> {
    let o = owned.side(side);
    match msg {
        RouteNetlinkMessage::DelLink(m) => o.link(m.header.index).map(|l| Reason::LinkDeleted {
            side,
            name: l.name.clone(),
            index: l.index,
        }),
        RouteNetlinkMessage::NewLink(m) => {
            let l = o.link(m.header.index)?;
            link_change(l, m).map(|change| Reason::LinkChanged {
                side,
                name: l.name.clone(),
                change,
            })
        }
        RouteNetlinkMessage::DelAddress(m) => {
            let veth = o.veth().filter(|v| v.index == m.header.index)?;
            let addr = address_net(m).filter(|a| o.addrs.contains(a))?;
            Some(Reason::AddressDeleted {
                side,
                dev: veth.name.clone(),
                addr,
            })
        }
        RouteNetlinkMessage::DelRoute(m) => {
            if m.header.protocol != RouteProtocol::from(owned.protocol)
                || route_table(m) != RouteHeader::RT_TABLE_MAIN as u32
                || m.header.kind != RouteType::Unicast
            {
                return None;
            }
            let dst = route_dst(m).filter(|d| o.routes.contains_key(d))?;
            Some(Reason::RouteDeleted {
                side,
                dst,
                protocol: owned.protocol,
            })
        }
        _ => None,
    }
}

/// A shared, cheaply readable [`Owned`]: the plumbing publishes it around every sync, the
/// event task reads it per notification, and the daemon can name the tunnel link.
#[derive(Clone, Debug, Default)]
pub struct OwnedHandle(Arc<ArcSwap<Owned>>);

impl OwnedHandle {
    /// The current value.
    pub fn load(&self) -> Arc<Owned> {
        self.0.load_full()
    }

    pub(crate) fn store(&self, owned: Owned) {
        self.0.store(Arc::new(owned));
    }

    /// Names the tunnel link (its ifindex in sdnlinkd's namespace, `None` for none) until the
    /// next sync reads it again. The daemon calls it with the new index after creating the
    /// tunnel, and with `None` before it deletes the tunnel itself (a reload replacing the
    /// device), so that deletion, and the routes the kernel drops with the link, do not come
    /// back as a repair.
    pub fn set_tunnel(&self, name: &str, index: Option<u32>) {
        self.0.rcu(|cur| {
            let mut o = Owned::clone(cur);
            let old: Vec<String> =
                o.ns.links
                    .iter()
                    .filter(|l| l.role == LinkRole::Tunnel)
                    .map(|l| l.name.clone())
                    .collect();
            o.ns.links.retain(|l| l.role != LinkRole::Tunnel);
            if index.is_none() {
                o.ns.routes
                    .retain(|_, dev| dev.as_str() != name && !old.contains(dev));
            }
            if let Some(index) = index {
                o.ns.links.push(OwnedLink {
                    index,
                    name: name.to_string(),
                    role: LinkRole::Tunnel,
                });
                o.ns.links.sort_by_key(|l| l.index);
            }
            o
        });
    }
}
