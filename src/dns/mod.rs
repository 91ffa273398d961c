//! The DNS stub: authoritative for `cluster.<name>` of every connected cluster, `cluster.all`
//! and the reverse zones of their CIDRs; forwards every other name to the upstream resolvers.
//!
//! - [`ZoneData::build`] computes all records as one immutable value (pure).
//! - [`DnsServer`] serves UDP and TCP sockets bound inside sdnlinkd's namespace (the server
//!   module); [`DnsServer::update`] swaps the zone data atomically (`arc-swap`), so lookups
//!   never wait for an update. hickory parses requests and encodes answers.
//! - Forwarding sockets are opened from tokio workers, which stay in the host namespace.
//! - Undecodable messages get FORMERR when their header decodes, nothing when shorter than a
//!   header; UDP answers are limited to 512 bytes without EDNS (TC set) or to the advertised
//!   size with EDNS; TCP answers are complete.

mod forward;
mod handler;
mod server;
mod wire;
mod zone;

pub use forward::{ask, ForwardError, FORWARD_DEADLINE, UPSTREAM_TIMEOUT};
pub use handler::{
    answer_local_bytes, decide, Clients, Decision, DnsHandler, DnsStatus, Transport, ORIGIN_NAMES,
    RCODE_NAMES,
};
pub use zone::{dashed, Lookup, ZoneData, ALL_ZONE, SCHEMA_VERSION};

use crate::config::Config;
use crate::netns::NetNs;
use server::{ServeOptions, Serving};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

/// Errors of the DNS subsystem.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("binding the DNS {proto} socket at {addr} in namespace {ns}: {source}")]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        ns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    ResolvConf {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The running stub resolver.
pub struct DnsServer {
    serving: Serving,
    handler: DnsHandler,
    local: SocketAddr,
}

impl DnsServer {
    /// Binds UDP and TCP at `dns.address:dns.port` inside `ns` and serves `zones` from the
    /// first query on (a daemon restarted after a crash passes its persisted snapshots: zones
    /// built from no snapshot would answer SERVFAIL for every watched cluster until
    /// [`DnsServer::update`], zone module docs, "Unknown clusters").
    pub async fn start(
        cfg: &Config,
        ns: &NetNs,
        zones: Arc<ZoneData>,
    ) -> Result<DnsServer, DnsError> {
        let addr = SocketAddr::new(cfg.dns.address, cfg.dns.port);
        let bind_err = |proto, source| DnsError::Bind {
            proto,
            addr,
            ns: ns.name().to_string(),
            source,
        };
        let bound = ns
            .run_async(move || bind_std(addr, sockets_per_server()))
            .await
            .map_err(|e| bind_err("UDP", std::io::Error::other(e)))?
            .map_err(|e| bind_err("UDP and TCP", e))?;
        let (udp, tcp) = to_tokio(bound).map_err(|e| bind_err("UDP", e))?;
        DnsServer::from_sockets(cfg, udp, tcp, zones)
    }

    /// Serves on already bound sockets (the benchmark binds in the host namespace).
    pub fn from_sockets(
        cfg: &Config,
        udp: Vec<tokio::net::UdpSocket>,
        tcp: Vec<tokio::net::TcpListener>,
        zones: Arc<ZoneData>,
    ) -> Result<DnsServer, DnsError> {
        let dns = &cfg.dns;
        let configured = SocketAddr::new(dns.address, dns.port);
        let local = match udp.first() {
            Some(s) => s.local_addr().map_err(|source| DnsError::Bind {
                proto: "UDP",
                addr: configured,
                ns: "?".into(),
                source,
            })?,
            None => configured,
        };
        let handler = DnsHandler::from_config(cfg, zones, local);
        let serving = Serving::spawn(
            handler.clone(),
            udp,
            tcp,
            ServeOptions {
                log_queries: dns.log_queries,
                max_in_flight: dns.max_forwards_in_flight,
            },
        );
        Ok(DnsServer {
            serving,
            handler,
            local,
        })
    }

    /// The UDP address the server answers on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Swaps in new zone data; queries in flight finish on the old one.
    pub fn update(&self, zones: Arc<ZoneData>) {
        self.handler.update(zones);
    }

    /// Replaces the upstream resolvers (on reload). Our own address is never used.
    pub fn set_upstreams(&self, upstreams: Vec<SocketAddr>) {
        self.handler.set_upstreams(upstreams);
    }

    /// Counters for `sdnlinkd status`.
    pub fn status(&self) -> DnsStatus {
        self.handler.status()
    }

    /// A handle that reads the counters without the server (for status served outside the
    /// reconcile task).
    pub fn status_handle(&self) -> DnsHandler {
        self.handler.clone()
    }

    /// Stops receiving queries and waits for the ones in flight.
    pub async fn shutdown(self) -> Result<(), DnsError> {
        self.serving.shutdown().await;
        Ok(())
    }
}

/// Whether an interface of `ns` holds `ip`, so the stub can bind it now. A bind alone does not
/// tell: in a namespace that has no local routing table yet, `inet_bind` takes any address for
/// a broadcast one, accepts it, and then sends its replies from the route's source instead,
/// which resolvers ignore.
pub async fn address_present(ns: &NetNs, ip: IpAddr) -> bool {
    ns.run_async(move || {
        nix::ifaddrs::getifaddrs().is_ok_and(|mut addrs| {
            addrs.any(|a| {
                a.address.is_some_and(|s| {
                    s.as_sockaddr_in().map(|v4| IpAddr::V4(v4.ip())) == Some(ip)
                        || s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())) == Some(ip)
                })
            })
        })
    })
    .await
    .unwrap_or(false)
}

/// UDP sockets per server: one per core the process may run on (its CPU affinity, so a
/// `taskset` benchmark gets one), each with its own receive loop; the kernel spreads clients
/// over them by address hash (SO_REUSEPORT, socket(7)).
fn sockets_per_server() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 16)
}

type StdSockets = (Vec<std::net::UdpSocket>, std::net::TcpListener);

/// Binds `n` UDP sockets sharing `addr` (SO_REUSEPORT, set before bind as socket(7) requires)
/// and one TCP listener, in the calling thread's namespace.
fn bind_std(addr: SocketAddr, n: usize) -> std::io::Result<StdSockets> {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};
    use std::os::fd::AsRawFd;
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
    let sa = SockaddrStorage::from(addr);
    let mut udp = Vec::with_capacity(n);
    for _ in 0..n {
        let fd = socket::socket(family, SockType::Datagram, flags, None)?;
        socket::setsockopt(&fd, sockopt::ReusePort, &true)?;
        socket::bind(fd.as_raw_fd(), &sa)?;
        udp.push(std::net::UdpSocket::from(fd));
    }
    let fd = socket::socket(family, SockType::Stream, flags, None)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    socket::bind(fd.as_raw_fd(), &sa)?;
    socket::listen(
        &fd,
        socket::Backlog::new(1024).unwrap_or(socket::Backlog::MAXCONN),
    )?;
    Ok((udp, std::net::TcpListener::from(fd)))
}

fn to_tokio(
    (udp, tcp): StdSockets,
) -> std::io::Result<(Vec<tokio::net::UdpSocket>, Vec<tokio::net::TcpListener>)> {
    let udp = udp
        .into_iter()
        .map(tokio::net::UdpSocket::from_std)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((udp, vec![tokio::net::TcpListener::from_std(tcp)?]))
}

/// The server's sockets at `addr` in the current namespace, as [`DnsServer::start`] binds them
/// inside sdnlinkd's (for the benchmark and tests in the host namespace). Needs a tokio
/// runtime.
pub fn bind_sockets(
    addr: SocketAddr,
) -> std::io::Result<(Vec<tokio::net::UdpSocket>, Vec<tokio::net::TcpListener>)> {
    to_tokio(bind_std(addr, sockets_per_server())?)
}

/// The `nameserver` entries of a resolv.conf, port 53, in file order; an IPv6 zone suffix
/// (`fe80::1%eth0`) is dropped since a scoped address cannot be a `SocketAddr` here.
pub fn resolv_conf_nameservers(path: &Path) -> Result<Vec<SocketAddr>, DnsError> {
    let text = std::fs::read_to_string(path).map_err(|source| DnsError::ResolvConf {
        path: path.display().to_string(),
        source,
    })?;
    Ok(parse_resolv_conf(&text))
}

fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(addr) = words.next() else { continue };
        let addr = addr.split('%').next().unwrap_or(addr);
        if let Ok(ip) = addr.parse::<IpAddr>() {
            let sa = SocketAddr::new(ip, 53);
            if !out.contains(&sa) {
                out.push(sa);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_parsing() {
        let text = "# comment\nsearch example.com\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\n\
                    nameserver bogus\nnameserver 10.0.0.2\noptions ndots:5\n";
        let got = parse_resolv_conf(text);
        assert_eq!(
            got,
            vec![
                "10.0.0.2:53".parse::<SocketAddr>().expect("literal"),
                "[fe80::1]:53".parse().expect("literal"),
            ]
        );
    }
}
