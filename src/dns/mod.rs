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
mod zone;

pub use forward::{ForwardError, FORWARD_DEADLINE, UPSTREAM_TIMEOUT};
pub use handler::{
    answer_local_bytes, decide, Clients, Decision, DnsHandler, DnsStatus, Transport,
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
    /// Binds UDP and TCP at `dns.address:dns.port` inside `ns` and starts serving zones built
    /// from no snapshot: every watched cluster is unknown, so its names answer SERVFAIL until
    /// [`DnsServer::update`] brings data for it (zone module docs, "Unknown clusters").
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
        DnsServer::from_sockets(cfg, vec![udp], vec![tcp], zones)
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

    /// Stops receiving queries and waits for the ones in flight.
    pub async fn shutdown(self) -> Result<(), DnsError> {
        self.serving.shutdown().await;
        Ok(())
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
