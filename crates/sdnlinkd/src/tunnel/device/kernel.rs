//! Links over rtnetlink: finding, creating, marking and moving the device, and the host
//! namespace's addresses.

use super::*;
use crate::netns::NetNs;
use crate::tunnel::TunnelError;
use futures::TryStreamExt as _;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::{LinkUnspec, LinkWireguard};
use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd as _;
use wireguard_control::DeviceUpdate;

/// The error for a host link with the tunnel's name that sdnlinkd did not create.
pub(super) fn foreign_host(iface: &str, link: &Link) -> TunnelError {
    let kind = link
        .kind
        .as_ref()
        .map(|k| format!("{k:?}").to_lowercase())
        .unwrap_or_else(|| "unknown".into());
    TunnelError::ForeignHost {
        iface: iface.to_string(),
        why: match &link.alias {
            Some(a) => format!("kind {kind}, alias {a:?}"),
            None => format!("kind {kind}, no sdnlinkd mark"),
        },
    }
}

pub(super) fn nl_io(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

/// An rtnetlink handle whose socket lives in `ns`. `NetNs::rtnetlink` builds the tokio socket on
/// the namespace worker thread, which has no tokio runtime, and panics there (killing the worker);
/// entering the caller's runtime on the worker first registers the socket with its reactor.
pub(super) async fn rtnl(ns: &NetNs) -> Result<rtnetlink::Handle, TunnelError> {
    let rt = tokio::runtime::Handle::current();
    let made = ns
        .run_async(move || {
            let _guard = rt.enter();
            rtnetlink::new_connection()
        })
        .await?;
    let (conn, handle, _) = made.map_err(|source| TunnelError::Netlink {
        op: "open rtnetlink socket",
        iface: ns.name().to_string(),
        source,
    })?;
    tokio::spawn(conn);
    Ok(handle)
}

/// A link found by name: index, kind and alias (IFLA_IFALIAS, where sdnlinkd marks the links it
/// creates in the host namespace).
#[derive(Clone, Debug)]
pub(super) struct Link {
    pub(super) index: u32,
    pub(super) kind: Option<InfoKind>,
    pub(super) alias: Option<String>,
}

/// The alias sdnlinkd gives a tunnel link it creates in the host namespace, before moving it into
/// `ns`: the only proof that a host link with the tunnel's name is ours (a link keeps its alias
/// across namespaces).
pub fn ownership_mark(ns: &str) -> String {
    format!("sdnlinkd tunnel of netns {ns}")
}

/// The link named `name` in the namespace behind `handle`.
pub(super) async fn find_link(
    handle: &rtnetlink::Handle,
    name: &str,
) -> Result<Option<Link>, TunnelError> {
    let res = handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await;
    match res {
        Ok(Some(msg)) => Ok(Some(Link {
            index: msg.header.index,
            kind: link_kind(&msg),
            alias: msg.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfAlias(s) => Some(s.clone()),
                _ => None,
            }),
        })),
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(TunnelError::Netlink {
            op: "get link",
            iface: name.to_string(),
            source: nl_io(e),
        }),
    }
}

pub(super) fn link_kind(msg: &LinkMessage) -> Option<InfoKind> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k.clone()),
            _ => None,
        }),
        _ => None,
    })
}

/// What creating a kernel WireGuard link did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum KernelLink {
    Created,
    /// A link with the name exists already (someone else's, unless it carries our mark).
    Exists,
    /// The kernel has no WireGuard support (no module: EOPNOTSUPP from rtnl_newlink's missing
    /// link ops).
    Unsupported,
}

/// Creates a kernel WireGuard link in the namespace behind `handle`.
pub(super) async fn create_kernel_link(
    handle: &rtnetlink::Handle,
    name: &str,
) -> Result<KernelLink, TunnelError> {
    match handle
        .link()
        .add(LinkWireguard::new(name).build())
        .execute()
        .await
    {
        Ok(()) => Ok(KernelLink::Created),
        Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::EEXIST => {
            Ok(KernelLink::Exists)
        }
        Err(rtnetlink::Error::NetlinkError(m))
            if [-libc::EOPNOTSUPP, -libc::ENODEV, -libc::ENOENT].contains(&m.raw_code()) =>
        {
            Ok(KernelLink::Unsupported)
        }
        Err(e) => Err(TunnelError::Netlink {
            op: "create wireguard link",
            iface: name.to_string(),
            source: nl_io(e),
        }),
    }
}

impl Tunnel {
    /// Every address of the host namespace (where the WireGuard socket lives), broadcast
    /// addresses included, and the advertised endpoint's address: a remote that announces one of
    /// them as its endpoint would have this node send handshakes to itself.
    pub(super) async fn host_addrs(&self) -> Result<BTreeSet<IpAddr>, TunnelError> {
        use rtnetlink::packet_route::address::AddressAttribute;
        let hh = rtnl(&self.host).await?;
        let mut stream = hh.address().get().execute();
        let mut out: BTreeSet<IpAddr> = self
            .advertised
            .map(|e| e.ip().to_canonical())
            .into_iter()
            .collect();
        loop {
            match stream.try_next().await {
                Ok(Some(msg)) => {
                    for a in msg.attributes {
                        match a {
                            AddressAttribute::Address(ip) | AddressAttribute::Local(ip) => {
                                out.insert(ip.to_canonical());
                            }
                            AddressAttribute::Broadcast(ip) => {
                                out.insert(IpAddr::V4(ip));
                            }
                            _ => {}
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(TunnelError::Netlink {
                        op: "list host addresses",
                        iface: self.iface.clone(),
                        source: nl_io(e),
                    })
                }
            }
        }
        Ok(out)
    }

    /// The host link with the tunnel's name, if any, provided sdnlinkd made it (it carries our
    /// mark); any other is someone else's and is never moved, configured or deleted.
    pub(super) async fn own_host_link(
        &self,
        hh: &rtnetlink::Handle,
    ) -> Result<Option<Link>, TunnelError> {
        let Some(link) = find_link(hh, &self.iface).await? else {
            return Ok(None);
        };
        let mark = ownership_mark(self.ns.name());
        if link.alias.as_deref() == Some(mark.as_str()) {
            Ok(Some(link))
        } else {
            Err(foreign_host(&self.iface, &link))
        }
    }

    /// Marks the link just created in the host namespace as ours.
    pub(super) async fn created_in_host(&self, hh: &rtnetlink::Handle) -> Result<(), TunnelError> {
        let Some(link) = find_link(hh, &self.iface).await? else {
            return Err(TunnelError::Netlink {
                op: "find the new link in the host namespace",
                iface: self.iface.clone(),
                source: io::Error::from_raw_os_error(libc::ENODEV),
            });
        };
        self.mark_host_link(hh, link.index).await
    }

    /// Marks the host link `index` as ours (see [`ownership_mark`]).
    pub(super) async fn mark_host_link(
        &self,
        hh: &rtnetlink::Handle,
        index: u32,
    ) -> Result<(), TunnelError> {
        let mut msg = LinkUnspec::new_with_index(index).build();
        msg.attributes
            .push(LinkAttribute::IfAlias(ownership_mark(self.ns.name())));
        hh.link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| TunnelError::Netlink {
                op: "mark link as sdnlinkd's (alias)",
                iface: self.iface.clone(),
                source: nl_io(e),
            })
    }

    /// Auto mode: an existing device decides; otherwise creating the kernel link in the host
    /// namespace is the probe (and, when it works, the device).
    pub(super) async fn probe_backend(&self) -> Result<Backend, TunnelError> {
        let nsh = rtnl(&self.ns).await?;
        if let Some(link) = find_link(&nsh, &self.iface).await? {
            return Ok(if link.kind == Some(InfoKind::Wireguard) {
                Backend::Kernel
            } else {
                Backend::Userspace
            });
        }
        let hh = rtnl(&self.host).await?;
        if let Some(link) = self.own_host_link(&hh).await? {
            // Our own leftover, created but not yet moved when the daemon stopped.
            return Ok(if link.kind == Some(InfoKind::Wireguard) {
                Backend::Kernel
            } else {
                Backend::Userspace
            });
        }
        if socket_answers(&self.iface) {
            return Ok(Backend::Userspace);
        }
        match create_kernel_link(&hh, &self.iface).await? {
            KernelLink::Created => {
                self.created_in_host(&hh).await?;
                Ok(Backend::Kernel)
            }
            KernelLink::Exists => match find_link(&hh, &self.iface).await? {
                Some(link) => Err(foreign_host(&self.iface, &link)),
                None => Ok(Backend::Userspace),
            },
            KernelLink::Unsupported => Ok(Backend::Userspace),
        }
    }

    /// Makes sure the device exists in the namespace, is up with our MTU, key and port.
    /// Returns true when it had to be created or moved.
    pub(super) async fn ensure_device(&mut self) -> Result<bool, TunnelError> {
        let nsh = rtnl(&self.ns).await?;
        let mut created = false;
        let index = match find_link(&nsh, &self.iface).await? {
            Some(Link {
                index: idx, kind, ..
            }) => {
                let ours = match self.backend {
                    Backend::Kernel => kind == Some(InfoKind::Wireguard),
                    Backend::Userspace => kind == Some(InfoKind::Tun) && self.adoptable()?,
                };
                if !ours {
                    return Err(TunnelError::Foreign {
                        iface: self.iface.clone(),
                        ns: self.ns.name().to_string(),
                        backend: self.backend,
                    });
                }
                idx
            }
            None => {
                created = true;
                let hh = rtnl(&self.host).await?;
                // A host link with our name that we did not make is someone else's device:
                // never moved into our namespace (this errors out naming it).
                let leftover = self.own_host_link(&hh).await?;
                match self.backend {
                    Backend::Kernel if leftover.is_some() => {}
                    Backend::Kernel => match create_kernel_link(&hh, &self.iface).await? {
                        KernelLink::Created => self.created_in_host(&hh).await?,
                        KernelLink::Exists => {
                            // Appeared since we looked: someone else's.
                            return Err(match find_link(&hh, &self.iface).await? {
                                Some(link) => foreign_host(&self.iface, &link),
                                None => TunnelError::Netlink {
                                    op: "create wireguard link (kernel backend)",
                                    iface: self.iface.clone(),
                                    source: io::Error::from_raw_os_error(libc::EEXIST),
                                },
                            });
                        }
                        KernelLink::Unsupported => {
                            return Err(TunnelError::Netlink {
                                op: "create wireguard link (kernel backend)",
                                iface: self.iface.clone(),
                                source: io::Error::from_raw_os_error(libc::EOPNOTSUPP),
                            });
                        }
                    },
                    Backend::Userspace => {
                        if self.adoptable()? && leftover.is_none() {
                            // Its link was deleted out of band and it has not exited yet: a
                            // wireguard-go without a TUN is useless, start a fresh one.
                            let _ = stop_userspace(&self.iface, &self.userspace_binary, &self.host)
                                .await;
                            self.reap_child();
                        }
                        self.ensure_userspace_process().await?;
                        if leftover.is_none() {
                            self.created_in_host(&hh).await?;
                        }
                    }
                }
                let Some(Link { index: hidx, .. }) = self.own_host_link(&hh).await? else {
                    return Err(TunnelError::Netlink {
                        op: "find the new link in the host namespace",
                        iface: self.iface.clone(),
                        source: io::Error::from_raw_os_error(libc::ENODEV),
                    });
                };
                let fd = self.ns.file().as_raw_fd();
                hh.link()
                    .set(LinkUnspec::new_with_index(hidx).setns_by_fd(fd).build())
                    .execute()
                    .await
                    .map_err(|e| TunnelError::Netlink {
                        op: "move link into the namespace",
                        iface: self.iface.clone(),
                        source: nl_io(e),
                    })?;
                tracing::info!(interface = %self.iface, backend = %self.backend, ns = %self.ns.name(),
                    "created WireGuard device and moved it into the namespace");
                match find_link(&nsh, &self.iface).await? {
                    Some(link) => link.index,
                    None => {
                        return Err(TunnelError::Netlink {
                            op: "find the moved link in the namespace",
                            iface: self.iface.clone(),
                            source: io::Error::from_raw_os_error(libc::ENODEV),
                        })
                    }
                }
            }
        };
        nsh.link()
            .set(LinkUnspec::new_with_index(index).mtu(self.mtu).up().build())
            .execute()
            .await
            .map_err(|e| TunnelError::Netlink {
                op: "set MTU and up",
                iface: self.iface.clone(),
                source: nl_io(e),
            })?;

        let dev = self.get_device().await?;
        let mut update = DeviceUpdate::new();
        let mut needed = false;
        if dev.public_key.as_ref().map(|k| k.0) != Some(self.public.0) {
            update = update.set_private_key(self.key.to_wg());
            needed = true;
        }
        if dev.listen_port != Some(self.listen_port) {
            update = update.set_listen_port(self.listen_port);
            needed = true;
        }
        // `dev` holds the private key: it goes out of scope here, never into a log.
        drop(dev);
        if needed {
            self.apply(update, "set key and listen port").await?;
        }
        if self.backend == Backend::Userspace {
            self.ensure_userspace_up(&nsh, index).await?;
        }
        if created {
            self.state.device_created();
        }
        Ok(created)
    }
}
