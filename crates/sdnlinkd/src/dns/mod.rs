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
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
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
    /// Our own copies of the served sockets (for the fd store and for a reload that keeps the
    /// address); `None` for a server built from sockets it does not own (the benchmark).
    sockets: Option<DnsSockets>,
}

/// `FDNAME` of the stub's UDP sockets in systemd's fd store (notify module).
pub const FD_NAME_UDP: &str = "dns-udp";
/// `FDNAME` of the stub's TCP listener in systemd's fd store.
pub const FD_NAME_TCP: &str = "dns-tcp";

/// The stub's bound sockets: UDP ones sharing the address (SO_REUSEPORT) and one TCP listener.
/// The kernel queues what arrives at them for as long as any descriptor is open, so a copy
/// kept elsewhere (systemd's fd store, the next server of a reload) loses no query.
pub struct DnsSockets {
    udp: Vec<OwnedFd>,
    tcp: OwnedFd,
    addr: SocketAddr,
}

impl DnsSockets {
    /// Binds them at `addr` inside `ns`.
    pub async fn bind(ns: &NetNs, addr: SocketAddr) -> Result<DnsSockets, DnsError> {
        let bind_err = |proto, source| DnsError::Bind {
            proto,
            addr,
            ns: ns.name().to_string(),
            source,
        };
        let (udp, tcp) = ns
            .run_async(move || bind_std(addr, sockets_per_server()))
            .await
            .map_err(|e| bind_err("UDP", std::io::Error::other(e)))?
            .map_err(|e| bind_err("UDP and TCP", e))?;
        Ok(DnsSockets {
            udp: udp.into_iter().map(OwnedFd::from).collect(),
            tcp: OwnedFd::from(tcp),
            addr,
        })
    }

    /// Takes descriptors passed back by the fd store, if they are what [`DnsSockets::bind`]
    /// makes for `addr`: UDP sockets and one listening TCP socket bound there. Anything else
    /// (the config moved the stub, a store from another version) is refused with the reason.
    pub fn adopt(
        udp: Vec<OwnedFd>,
        tcp: Vec<OwnedFd>,
        addr: SocketAddr,
    ) -> Result<DnsSockets, String> {
        use nix::sys::socket::{getsockname, getsockopt, sockopt, SockType, SockaddrStorage};
        let check = |fd: &OwnedFd, want: SockType, what: &str| -> Result<(), String> {
            let ty = getsockopt(fd, sockopt::SockType).map_err(|e| format!("{what}: {e}"))?;
            if ty != want {
                return Err(format!("{what} is a {ty:?} socket"));
            }
            let local: SockaddrStorage =
                getsockname(fd.as_raw_fd()).map_err(|e| format!("{what}: {e}"))?;
            let local = local
                .as_sockaddr_in()
                .map(|a| SocketAddr::from(std::net::SocketAddrV4::from(*a)))
                .or_else(|| {
                    local
                        .as_sockaddr_in6()
                        .map(|a| SocketAddr::from(std::net::SocketAddrV6::from(*a)))
                });
            match local {
                Some(l) if l == addr => Ok(()),
                Some(l) => Err(format!(
                    "{what} is bound to {l}, the stub answers on {addr}"
                )),
                None => Err(format!("{what} is not an IP socket")),
            }
        };
        if udp.is_empty() || tcp.len() != 1 {
            return Err(format!(
                "{} UDP and {} TCP sockets stored, the stub needs at least one and exactly one",
                udp.len(),
                tcp.len()
            ));
        }
        for fd in &udp {
            check(fd, SockType::Datagram, "a stored UDP socket")?;
        }
        let mut tcp = tcp;
        let tcp = tcp.remove(0);
        check(&tcp, SockType::Stream, "the stored TCP socket")?;
        if !getsockopt(&tcp, sockopt::AcceptConn).unwrap_or(false) {
            return Err("the stored TCP socket is not listening".into());
        }
        Ok(DnsSockets { udp, tcp, addr })
    }

    /// Where they are bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The UDP sockets, for the fd store.
    pub fn udp_fds(&self) -> Vec<BorrowedFd<'_>> {
        self.udp.iter().map(|f| f.as_fd()).collect()
    }

    /// The TCP listener, for the fd store.
    pub fn tcp_fd(&self) -> BorrowedFd<'_> {
        self.tcp.as_fd()
    }

    /// Tokio sockets on new descriptors of the same sockets (dup(2)): ours stay open when the
    /// server that serves them stops.
    fn to_tokio(
        &self,
    ) -> std::io::Result<(Vec<tokio::net::UdpSocket>, Vec<tokio::net::TcpListener>)> {
        let udp = self
            .udp
            .iter()
            .map(|fd| {
                let s = std::net::UdpSocket::from(fd.try_clone()?);
                s.set_nonblocking(true)?;
                tokio::net::UdpSocket::from_std(s)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tcp = std::net::TcpListener::from(self.tcp.try_clone()?);
        tcp.set_nonblocking(true)?;
        Ok((udp, vec![tokio::net::TcpListener::from_std(tcp)?]))
    }
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
        let sockets = DnsSockets::bind(ns, addr).await?;
        DnsServer::serve(cfg, sockets, zones)
    }

    /// Serves on `sockets` (bound by [`DnsSockets::bind`], or kept from an earlier server or
    /// process), which the server keeps.
    pub fn serve(
        cfg: &Config,
        sockets: DnsSockets,
        zones: Arc<ZoneData>,
    ) -> Result<DnsServer, DnsError> {
        let (udp, tcp) = sockets.to_tokio().map_err(|source| DnsError::Bind {
            proto: "UDP and TCP",
            addr: sockets.addr,
            ns: "(kept sockets)".into(),
            source,
        })?;
        let mut server = DnsServer::from_sockets(cfg, udp, tcp, zones)?;
        server.sockets = Some(sockets);
        Ok(server)
    }

    /// Our copies of the served sockets.
    pub fn sockets(&self) -> Option<&DnsSockets> {
        self.sockets.as_ref()
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
            sockets: None,
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

    /// Stops receiving queries and waits for the ones in flight. Returns the sockets, still
    /// bound (queries that arrive now wait in their queues for the next server); dropping them
    /// closes them.
    pub async fn shutdown(self) -> Result<Option<DnsSockets>, DnsError> {
        self.serving.shutdown().await;
        Ok(self.sockets)
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

    /// The stub's sockets bound in this namespace at a free port on 127.0.0.1.
    fn bound() -> (Vec<OwnedFd>, Vec<OwnedFd>, SocketAddr) {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").expect("free port");
        let addr = probe.local_addr().expect("addr");
        drop(probe);
        let (udp, tcp) = bind_std(addr, 2).expect("bind");
        (
            udp.into_iter().map(OwnedFd::from).collect(),
            vec![OwnedFd::from(tcp)],
            addr,
        )
    }

    #[test]
    fn kept_sockets_are_adopted_only_when_they_are_the_stubs() {
        let (udp, tcp, addr) = bound();
        let kept = DnsSockets::adopt(udp, tcp, addr).expect("the stub's own sockets");
        assert_eq!(kept.addr(), addr);
        assert_eq!(kept.udp_fds().len(), 2);

        let (udp, tcp, addr) = bound();
        let moved = SocketAddr::new(addr.ip(), addr.port().wrapping_add(1).max(1));
        let e = DnsSockets::adopt(udp, tcp, moved)
            .err()
            .expect("another address is refused");
        assert!(
            e.contains(&addr.to_string()) && e.contains(&moved.to_string()),
            "{e}"
        );

        let (udp, tcp, addr) = bound();
        let e = DnsSockets::adopt(tcp, udp, addr)
            .err()
            .expect("swapped names are refused");
        assert!(e.contains("sockets stored") || e.contains("socket"), "{e}");

        let (udp, _, addr) = bound();
        let e = DnsSockets::adopt(udp, vec![], addr)
            .err()
            .expect("a missing listener is refused");
        assert!(e.contains("0 TCP"), "{e}");

        // A TCP socket bound there but not listening is not the stub's listener.
        let (udp, _, addr) = bound();
        let fd = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Inet,
            nix::sys::socket::SockType::Stream,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket");
        nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReuseAddr, &true)
            .expect("reuseaddr");
        nix::sys::socket::bind(
            fd.as_raw_fd(),
            &nix::sys::socket::SockaddrStorage::from(addr),
        )
        .expect("bind");
        let e = DnsSockets::adopt(udp, vec![fd], addr)
            .err()
            .expect("a listener that does not listen is refused");
        assert!(e.contains("not listening"), "{e}");
    }

    // Multi-threaded: the client below blocks its thread while the server answers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_on_kept_sockets_answers_what_was_queued_before_it_started() {
        let (udp, tcp, addr) = bound();
        let kept = DnsSockets::adopt(udp, tcp, addr).expect("adopt");
        // Asked while no server reads the sockets: the kernel queues it.
        let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("client");
        let mut q = hickory_proto::op::Message::query();
        q.metadata.id = 4242;
        q.add_query(hickory_proto::op::Query::query(
            hickory_proto::rr::Name::from_ascii("dns-version.cluster.west.").expect("name"),
            hickory_proto::rr::RecordType::TXT,
        ));
        let bytes = q.to_vec().expect("encode");
        // One source port hashes to one socket of the SO_REUSEPORT group; the server must
        // serve whichever it is.
        client.send_to(&bytes, addr).expect("send");
        let cfg = crate::config::parse_str(
            r#"
[local]
name = "east"
pod_cidrs = ["10.128.0.0/14"]
service_cidrs = ["172.30.0.0/16"]
[tunnel]
private_key_file = "/nonexistent/sdnt-dns/private.key"
[dns]
upstreams = ["192.0.2.53"]
[[remote]]
name = "west"
pod_cidrs = ["10.132.0.0/14"]
service_cidrs = ["172.31.0.0/16"]
"#,
        )
        .expect("test config is valid");
        let server = DnsServer::serve(
            &cfg,
            kept,
            Arc::new(ZoneData::build(&cfg, &Default::default())),
        )
        .expect("serve");
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 4096];
        let (n, _) = client
            .recv_from(&mut buf)
            .expect("the queued query is answered");
        let m = hickory_proto::op::Message::from_vec(&buf[..n]).expect("decode");
        assert_eq!(m.metadata.id, 4242);
        let kept = server
            .shutdown()
            .await
            .expect("shutdown")
            .expect("sockets kept");
        assert_eq!(kept.addr(), addr);
    }
}
