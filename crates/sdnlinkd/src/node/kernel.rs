//! Kernel side: observe our links, addresses and routes over rtnetlink, and execute
//! [`NodeOp`]s idempotently ("already exists" / "already gone" are success).

use super::desired::{NodeDesired, RouteSpec};
use super::plan::{LinkState, NodeOp, Observed, Side};
use super::NodeError;
use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType, RouteVia,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

/// Negative errno of a netlink error, as a positive errno.
pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NodeError {
    let what = what.into();
    move |source| NodeError::Netlink { what, source }
}

/// What we read of one link.
#[derive(Clone, Debug)]
pub(crate) struct LinkFacts {
    pub index: u32,
    pub kind: Option<InfoKind>,
    /// IFLA_LINK: for a veth, the peer's ifindex (in the peer's namespace).
    pub peer_index: Option<u32>,
    /// IFLA_LINK_NETNSID: set when the peer lives in another namespace.
    pub link_netnsid: Option<i32>,
    pub mtu: u32,
    pub up: bool,
}

fn link_facts(m: &LinkMessage) -> LinkFacts {
    let mut f = LinkFacts {
        index: m.header.index,
        kind: None,
        peer_index: None,
        link_netnsid: None,
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::Mtu(v) => f.mtu = *v,
            LinkAttribute::Link(v) => f.peer_index = Some(*v),
            LinkAttribute::LinkNetNsId(v) => f.link_netnsid = Some(*v),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        f.kind = Some(k.clone());
                    }
                }
            }
            _ => {}
        }
    }
    f
}

/// The link named `name`, or None.
pub(crate) async fn get_link(h: &Handle, name: &str) -> Result<Option<LinkFacts>, NodeError> {
    let mut s = h.link().get().match_name(name.to_string()).execute();
    match s.try_next().await {
        Ok(Some(m)) => Ok(Some(link_facts(&m))),
        Ok(None) => Ok(None),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(nl(format!("reading link {name}"))(e)),
    }
}

/// Checks that host `host_name` and namespace `ns_name` are the two ends of one veth pair.
/// Returns (host, ns) facts when they are; `Foreign` naming the offender otherwise.
pub(crate) fn check_ownership(
    host_name: &str,
    ns_name: &str,
    namespace: &str,
    host: Option<LinkFacts>,
    ns: Option<LinkFacts>,
) -> Result<Option<(LinkFacts, LinkFacts)>, NodeError> {
    let foreign = |side, name: &str, why: String| NodeError::Foreign {
        side,
        name: name.to_string(),
        why,
    };
    match (host, ns) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(foreign(
            Side::Host,
            host_name,
            format!("no peer {ns_name:?} in namespace {namespace:?}"),
        )),
        (None, Some(_)) => Err(foreign(
            Side::Ns,
            ns_name,
            format!("its veth peer {host_name:?} is not in the host namespace"),
        )),
        (Some(h), Some(n)) => {
            if h.kind != Some(InfoKind::Veth) {
                return Err(foreign(
                    Side::Host,
                    host_name,
                    format!("kind {:?}, not veth", h.kind),
                ));
            }
            if n.kind != Some(InfoKind::Veth) {
                return Err(foreign(
                    Side::Ns,
                    ns_name,
                    format!("kind {:?}, not veth", n.kind),
                ));
            }
            // A veth reports its peer's ifindex in IFLA_LINK and, across namespaces,
            // IFLA_LINK_NETNSID; both ends pointing at each other is the pair.
            if h.link_netnsid.is_none()
                || h.peer_index != Some(n.index)
                || n.peer_index != Some(h.index)
            {
                return Err(foreign(
                    Side::Host,
                    host_name,
                    format!("a veth whose peer is not {ns_name:?} in namespace {namespace:?}"),
                ));
            }
            Ok(Some((h, n)))
        }
    }
}

fn is_link_local_v6(a: &IpAddr) -> bool {
    matches!(a, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

/// Addresses on link `index`, without kernel-made IPv6 link-local ones (`keep` lists the
/// link-local addresses that are ours).
async fn dump_addrs(
    h: &Handle,
    index: u32,
    keep: &BTreeSet<IpNet>,
) -> Result<BTreeSet<IpNet>, NodeError> {
    let mut out = BTreeSet::new();
    let mut s = h.address().get().set_link_index_filter(index).execute();
    while let Some(m) = s.try_next().await.map_err(nl("dumping addresses"))? {
        if m.header.index != index {
            continue;
        }
        if let Some(n) = address_net(&m) {
            // The kernel adds fe80::/64 to every IPv6-enabled link; it is not ours.
            if !is_link_local_v6(&n.addr()) || keep.contains(&n) {
                out.insert(n);
            }
        }
    }
    Ok(out)
}

/// The address (with its prefix length) an address message is about.
pub(crate) fn address_net(m: &AddressMessage) -> Option<IpNet> {
    // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer on p2p links).
    let local = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let ip = local.or_else(|| {
        m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })?;
    IpNet::new(ip, m.header.prefix_len).ok()
}

pub(crate) fn route_table(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(m.header.table as u32)
}

/// The destination of a route message (RTA_DST, or the default route without it).
pub(crate) fn route_dst(m: &RouteMessage) -> Option<IpNet> {
    let dst = m
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(v)) => Some(IpAddr::from(*v)),
            RouteAttribute::Destination(RouteAddress::Inet6(v)) => Some(IpAddr::from(*v)),
            _ => None,
        })
        .unwrap_or(match m.header.address_family {
            AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        });
    IpNet::new(dst, m.header.destination_prefix_length).ok()
}

/// Our routes (main table, our protocol) by destination, with the device named through `names`.
pub(crate) async fn dump_routes(
    h: &Handle,
    protocol: u8,
    names: &BTreeMap<u32, String>,
) -> Result<Vec<(IpNet, RouteSpec, RouteMessage)>, NodeError> {
    let mut out = Vec::new();
    for req in [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ] {
        let mut s = h.route().get(req).execute();
        while let Some(m) = s.try_next().await.map_err(nl("dumping routes"))? {
            if m.header.protocol != RouteProtocol::from(protocol)
                || route_table(&m) != RouteHeader::RT_TABLE_MAIN as u32
                || m.header.kind != RouteType::Unicast
            {
                continue;
            }
            let mut via: Option<IpAddr> = None;
            let mut oif: Option<u32> = None;
            for a in &m.attributes {
                match a {
                    RouteAttribute::Gateway(RouteAddress::Inet(v)) => via = Some((*v).into()),
                    RouteAttribute::Gateway(RouteAddress::Inet6(v)) => via = Some((*v).into()),
                    RouteAttribute::Via(RouteVia::Inet(v)) => via = Some((*v).into()),
                    RouteAttribute::Via(RouteVia::Inet6(v)) => via = Some((*v).into()),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            let Some(net) = route_dst(&m) else {
                continue;
            };
            let dev = oif
                .and_then(|i| names.get(&i).cloned())
                .unwrap_or_else(|| format!("if{}", oif.unwrap_or(0)));
            out.push((net, RouteSpec { dev, via }, m));
        }
    }
    Ok(out)
}

pub(crate) async fn link_names(h: &Handle) -> Result<BTreeMap<u32, String>, NodeError> {
    let mut out = BTreeMap::new();
    let mut s = h.link().get().execute();
    while let Some(m) = s.try_next().await.map_err(nl("dumping links"))? {
        for a in &m.attributes {
            if let LinkAttribute::IfName(n) = a {
                out.insert(m.header.index, n.clone());
            }
        }
    }
    Ok(out)
}

/// Reads what we own from both namespaces. Fails with [`NodeError::Foreign`] when one of our
/// names is taken by an object that is not our veth pair.
pub async fn observe(
    host: &Handle,
    ns: &Handle,
    desired: &NodeDesired,
) -> Result<Observed, NodeError> {
    Ok(observe_indexed(host, ns, desired).await?.0)
}

/// [`observe`], with the interface indexes of the links read (for the netlink event filter).
pub(crate) async fn observe_indexed(
    host: &Handle,
    ns: &Handle,
    desired: &NodeDesired,
) -> Result<(Observed, Ifindexes), NodeError> {
    let h = get_link(host, &desired.host_interface).await?;
    let n = get_link(ns, &desired.interface).await?;
    let pair = check_ownership(
        &desired.host_interface,
        &desired.interface,
        &desired.namespace,
        h,
        n,
    )?;
    let mut obs = Observed::default();
    let mut idx = Ifindexes::default();
    if let Some((h, n)) = &pair {
        obs.host_link = Some(LinkState {
            mtu: h.mtu,
            up: h.up,
        });
        obs.ns_link = Some(LinkState {
            mtu: n.mtu,
            up: n.up,
        });
        idx.host_veth = Some(h.index);
        idx.ns_veth = Some(n.index);
        obs.host_addrs = dump_addrs(host, h.index, &desired.host_addrs).await?;
        obs.ns_addrs = dump_addrs(ns, n.index, &desired.ns_addrs).await?;
    }
    let lo = get_link(ns, "lo").await?;
    obs.ns_lo_up = lo.as_ref().is_some_and(|l| l.up);
    idx.ns_lo = lo.map(|l| l.index);
    let tunnel = get_link(ns, &desired.tunnel_interface).await?;
    obs.tunnel_present = tunnel.is_some();
    idx.tunnel = tunnel.map(|l| l.index);
    let hn = link_names(host).await?;
    let nn = link_names(ns).await?;
    obs.host_routes = dump_routes(host, desired.protocol, &hn)
        .await?
        .into_iter()
        .map(|(d, s, _)| (d, s))
        .collect();
    obs.ns_routes = dump_routes(ns, desired.protocol, &nn)
        .await?
        .into_iter()
        .map(|(d, s, _)| (d, s))
        .collect();
    Ok((obs, idx))
}

/// Interface indexes of the links the plumbing owns or depends on, as last read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Ifindexes {
    pub host_veth: Option<u32>,
    pub ns_veth: Option<u32>,
    pub ns_lo: Option<u32>,
    pub tunnel: Option<u32>,
}

/// Builds a route message for (dst, spec) with our protocol in the main table.
pub(crate) fn route_message(
    dst: &IpNet,
    oif: u32,
    via: Option<IpAddr>,
    protocol: u8,
) -> Result<RouteMessage, NodeError> {
    fn bad<E: std::fmt::Debug>(dst: &IpNet) -> impl FnOnce(E) -> NodeError + '_ {
        move |e| NodeError::Io {
            what: format!("building route {dst}"),
            source: std::io::Error::other(format!("{e:?}")),
        }
    }
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.network(), dst.prefix_len())
        .map_err(bad(dst))?
        .output_interface(oif)
        .protocol(RouteProtocol::from(protocol));
    match (dst, via) {
        (_, None) => {}
        (IpNet::V4(_), Some(g @ IpAddr::V4(_))) | (IpNet::V6(_), Some(g @ IpAddr::V6(_))) => {
            b = b.gateway(g).map_err(bad(dst))?;
        }
        // An IPv6 route via the IPv4 transit next hop: RTA_VIA (Linux >= 5.2).
        (IpNet::V6(_), Some(IpAddr::V4(g))) => {
            b.get_mut()
                .attributes
                .push(RouteAttribute::Via(RouteVia::Inet(g)));
        }
        (IpNet::V4(_), Some(IpAddr::V6(g))) => {
            b.get_mut()
                .attributes
                .push(RouteAttribute::Via(RouteVia::Inet6(g)));
        }
    }
    Ok(b.build())
}

/// Interface indexes the executor needs, resolved once per sync.
#[derive(Default)]
pub(crate) struct Indexes {
    map: BTreeMap<(Side, String), u32>,
}

impl Indexes {
    async fn get(
        &mut self,
        side: Side,
        name: &str,
        host: &Handle,
        ns: &Handle,
    ) -> Result<u32, NodeError> {
        if let Some(i) = self.map.get(&(side, name.to_string())) {
            return Ok(*i);
        }
        let h = match side {
            Side::Host => host,
            Side::Ns => ns,
        };
        let l = get_link(h, name).await?.ok_or_else(|| NodeError::Io {
            what: format!("{side} interface {name:?}"),
            source: std::io::Error::from_raw_os_error(libc::ENODEV),
        })?;
        self.map.insert((side, name.to_string()), l.index);
        Ok(l.index)
    }

    fn forget(&mut self) {
        self.map.clear();
    }
}

fn ok_if(r: Result<(), rtnetlink::Error>, ok: &[i32]) -> Result<(), rtnetlink::Error> {
    match r {
        Err(e) if errno(&e).is_some_and(|c| ok.contains(&c)) => Ok(()),
        r => r,
    }
}

/// Executes one operation. `ns_fd` is the namespace the veth peer is created in.
pub(crate) async fn execute(
    op: &NodeOp,
    host: &Handle,
    ns: &Handle,
    ns_file: &std::fs::File,
    idx: &mut Indexes,
) -> Result<(), NodeError> {
    let what = op.to_string();
    let handle = |side: Side| match side {
        Side::Host => host,
        Side::Ns => ns,
    };
    match op {
        NodeOp::CreateVeth {
            host: hname,
            ns: nname,
            mtu,
            ..
        } => {
            // The peer is created directly in the namespace (IFLA_NET_NS_FD in the peer's
            // message), so its name never has to be free in the host (where eth0 usually is).
            let peer = LinkUnspec::new_with_name(nname)
                .mtu(*mtu)
                .setns_by_fd(ns_file.as_raw_fd())
                .build();
            let msg = LinkVeth::new(hname, nname)
                .mtu(*mtu)
                .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                .build();
            idx.forget();
            match host.link().add(msg).execute().await {
                Ok(()) => Ok(()),
                Err(e) if errno(&e) == Some(libc::EOPNOTSUPP) => Err(NodeError::NoVeth {
                    host: hname.clone(),
                    ns: nname.clone(),
                    source: e,
                }),
                Err(e) => Err(nl(what)(e)),
            }
        }
        NodeOp::SetLink {
            side,
            name,
            mtu,
            up,
        } => {
            let i = idx.get(*side, name, host, ns).await?;
            let mut b = LinkUnspec::new_with_index(i);
            if let Some(m) = mtu {
                b = b.mtu(*m);
            }
            b = if *up { b.up() } else { b.down() };
            handle(*side)
                .link()
                .set(b.build())
                .execute()
                .await
                .map_err(nl(what))
        }
        NodeOp::AddAddr { side, dev, addr } => {
            let i = idx.get(*side, dev, host, ns).await?;
            let mut req = handle(*side)
                .address()
                .add(i, addr.addr(), addr.prefix_len());
            if addr.addr().is_ipv6() {
                // Without DAD the address (a next hop, a VIP) is usable at once instead of
                // staying tentative for about a second; on our own veth nobody else owns it.
                req.message_mut()
                    .attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
            let r = req.execute().await;
            ok_if(r, &[libc::EEXIST]).map_err(nl(what))
        }
        NodeOp::DelAddr { side, dev, addr } => {
            let i = match idx.get(*side, dev, host, ns).await {
                Ok(i) => i,
                // The link is gone, and its addresses with it.
                Err(_) => return Ok(()),
            };
            let mut m = AddressMessage::default();
            m.header.index = i;
            m.header.prefix_len = addr.prefix_len();
            m.header.family = match addr {
                IpNet::V4(_) => AddressFamily::Inet,
                IpNet::V6(_) => AddressFamily::Inet6,
            };
            m.attributes.push(AddressAttribute::Local(addr.addr()));
            m.attributes.push(AddressAttribute::Address(addr.addr()));
            let r = handle(*side).address().del(m).execute().await;
            ok_if(r, &[libc::EADDRNOTAVAIL, libc::ENODEV, libc::ENOENT]).map_err(nl(what))
        }
        NodeOp::AddRoute {
            side,
            dst,
            spec,
            protocol,
        }
        | NodeOp::ReplaceRoute {
            side,
            dst,
            spec,
            protocol,
        } => {
            let i = idx.get(*side, &spec.dev, host, ns).await?;
            let m = route_message(dst, i, spec.via, *protocol)?;
            let req = handle(*side).route().add(m);
            let replace = matches!(op, NodeOp::ReplaceRoute { .. });
            let r = if replace {
                req.replace().execute().await
            } else {
                req.execute().await
            };
            match r {
                // Add is exclusive: EEXIST means a route to dst that we did not observe as ours
                // (the observed state holds every route with our protocol).
                Err(e) if errno(&e) == Some(libc::EEXIST) => Err(NodeError::ForeignRoute {
                    side: *side,
                    dst: *dst,
                    protocol: *protocol,
                }),
                r => r.map_err(nl(what)),
            }
        }
        NodeOp::DelRoute {
            side,
            dst,
            spec,
            protocol,
        } => {
            let Ok(i) = idx.get(*side, &spec.dev, host, ns).await else {
                // The device is gone, and its routes with it.
                return Ok(());
            };
            let m = route_message(dst, i, spec.via, *protocol)?;
            let r = handle(*side).route().del(m).execute().await;
            ok_if(r, &[libc::ESRCH, libc::ENOENT, libc::ENODEV]).map_err(nl(what))
        }
    }
}

/// Writes the sysctls whose value differs, from the calling thread (which must be in the
/// namespace: /proc/sys/net resolves against the caller's network namespace). Returns the
/// changed ones as `path old -> new`. Entries under net/ipv4/vs/ are skipped while IPVS is not
/// loaded (the directory appears with the ip_vs module).
pub(crate) fn write_sysctls(want: &BTreeMap<String, String>) -> Result<Vec<String>, NodeError> {
    let mut changed = Vec::new();
    for (k, v) in want {
        let path = std::path::Path::new("/proc/sys").join(k);
        let cur = match std::fs::read_to_string(&path) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && k.starts_with("net/ipv4/vs/") => {
                continue
            }
            Err(source) => {
                return Err(NodeError::Sysctl {
                    path: k.replace('/', "."),
                    source,
                })
            }
        };
        if cur.trim() == v {
            continue;
        }
        std::fs::write(&path, v).map_err(|source| NodeError::Sysctl {
            path: k.replace('/', "."),
            source,
        })?;
        changed.push(format!("{} {} -> {}", k.replace('/', "."), cur.trim(), v));
    }
    Ok(changed)
}
