//! The DNS stub: authoritative for `cluster.<name>` of every connected cluster, `cluster.all`
//! and the reverse zones of their CIDRs; forwards every other name to the upstream resolvers.
//!
//! - [`ZoneData::build`] computes all records as one immutable value (pure).
//! - [`DnsServer`] runs hickory-server on UDP and TCP sockets bound inside sdnlinkd's namespace;
//!   [`DnsServer::update`] swaps the zone data atomically (`arc-swap`), so lookups never wait
//!   for an update.
//! - Forwarding sockets are opened from tokio workers, which stay in the host namespace.
//! - hickory-server itself answers FORMERR to undecodable messages, drops messages shorter than
//!   a header, and truncates UDP answers to 512 bytes without EDNS (TC set) or to the
//!   advertised size with EDNS; TCP answers are complete.

mod forward;
mod handler;
mod zone;

pub use forward::{ForwardError, FORWARD_DEADLINE, UPSTREAM_TIMEOUT};
pub use handler::{answer_local_bytes, decide, Decision, DnsHandler, DnsStatus};
pub use zone::{dashed, Lookup, ZoneData, ALL_ZONE, SCHEMA_VERSION};

use crate::config::{Config, DnsConfig};
use crate::netns::NetNs;
use hickory_server::Server;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Idle time after which hickory closes a client's TCP connection.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 32;

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
    #[error("DNS server stopped with an error: {0}")]
    Server(String),
}

/// The running stub resolver.
pub struct DnsServer {
    server: Server<DnsHandler>,
    handler: DnsHandler,
    local: SocketAddr,
}

impl DnsServer {
    /// Binds UDP and TCP at `dns.address:dns.port` inside `ns` and starts serving empty zones
    /// (call [`DnsServer::update`] with the first [`ZoneData`]).
    pub async fn start(cfg: &Config, ns: &NetNs) -> Result<DnsServer, DnsError> {
        let addr = SocketAddr::new(cfg.dns.address, cfg.dns.port);
        let bind_err = |proto, source| DnsError::Bind {
            proto,
            addr,
            ns: ns.name().to_string(),
            source,
        };
        let udp = ns.bind_udp(addr).await.map_err(|e| bind_err("UDP", e))?;
        let tcp = ns.bind_tcp(addr).await.map_err(|e| bind_err("TCP", e))?;
        let zones = Arc::new(ZoneData::build(cfg, &Default::default()));
        DnsServer::from_sockets(&cfg.dns, udp, tcp, zones)
    }

    /// Serves on already bound sockets (the benchmark binds in the host namespace).
    pub fn from_sockets(
        dns: &DnsConfig,
        udp: tokio::net::UdpSocket,
        tcp: tokio::net::TcpListener,
        zones: Arc<ZoneData>,
    ) -> Result<DnsServer, DnsError> {
        let local = udp.local_addr().map_err(|source| DnsError::Bind {
            proto: "UDP",
            addr: SocketAddr::new(dns.address, dns.port),
            ns: "?".into(),
            source,
        })?;
        let handler = DnsHandler::standalone(zones, dns.upstreams.clone(), local, dns.cache_size);
        let mut server = Server::new(handler.clone());
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
        Ok(DnsServer {
            server,
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

    /// Stops accepting queries and waits for the ones in flight.
    pub async fn shutdown(mut self) -> Result<(), DnsError> {
        self.server
            .shutdown_gracefully()
            .await
            .map_err(|e| DnsError::Server(e.to_string()))
    }
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
