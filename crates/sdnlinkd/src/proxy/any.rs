//! The backend chosen at start. The trait has async methods, so it cannot be a trait object;
//! this enum dispatches to the one in use.

use super::{ipvs, nft, DesiredProxy, ProxyBackend, ProxyError, SyncReport};
use crate::config::{Config, ProxyBackendKind};
use crate::netns::NetNs;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Instant;

/// The proxy backend in use.
pub enum AnyProxy {
    Ipvs(ipvs::IpvsBackend),
    Nft(nft::NftBackend),
}

impl AnyProxy {
    /// `proxy.backend`: IPVS when asked or (auto) when the kernel has it, else nftables.
    pub fn choose(cfg: &Config, ns: &NetNs) -> Result<AnyProxy, ProxyError> {
        let use_ipvs = match cfg.proxy.backend {
            ProxyBackendKind::Ipvs => true,
            ProxyBackendKind::Nftables => false,
            ProxyBackendKind::Auto => {
                let ok = ipvs::ipvs_available(ns);
                tracing::info!(
                    backend = if ok { "ipvs" } else { "nftables" },
                    "proxy.backend = auto: IPVS {}",
                    if ok {
                        "is available"
                    } else {
                        "is not in this kernel"
                    }
                );
                ok
            }
        };
        if use_ipvs {
            Ok(AnyProxy::Ipvs(ipvs::IpvsBackend::from_config(
                ns.clone(),
                cfg,
            )?))
        } else {
            Ok(AnyProxy::Nft(nft::NftBackend::new(ns.clone())))
        }
    }
}

impl ProxyBackend for AnyProxy {
    fn name(&self) -> &'static str {
        match self {
            AnyProxy::Ipvs(b) => b.name(),
            AnyProxy::Nft(b) => b.name(),
        }
    }

    fn needs_vips(&self) -> bool {
        match self {
            AnyProxy::Ipvs(b) => b.needs_vips(),
            AnyProxy::Nft(b) => b.needs_vips(),
        }
    }

    fn lingering_vips(&self, d: &DesiredProxy) -> BTreeSet<IpAddr> {
        match self {
            AnyProxy::Ipvs(b) => b.lingering_vips(d),
            AnyProxy::Nft(b) => b.lingering_vips(d),
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        match self {
            AnyProxy::Ipvs(b) => b.next_deadline(),
            AnyProxy::Nft(b) => b.next_deadline(),
        }
    }

    fn sysctls(&self) -> BTreeMap<String, String> {
        match self {
            AnyProxy::Ipvs(b) => b.sysctls(),
            AnyProxy::Nft(b) => b.sysctls(),
        }
    }

    async fn sync(&mut self, d: &DesiredProxy, full: bool) -> Result<SyncReport, ProxyError> {
        match self {
            AnyProxy::Ipvs(b) => b.sync(d, full).await,
            AnyProxy::Nft(b) => b.sync(d, full).await,
        }
    }

    async fn plan_full(&self, d: &DesiredProxy) -> Result<String, ProxyError> {
        match self {
            AnyProxy::Ipvs(b) => b.plan_full(d).await,
            AnyProxy::Nft(b) => b.plan_full(d).await,
        }
    }

    async fn cleanup(&mut self) -> Result<(), ProxyError> {
        match self {
            AnyProxy::Ipvs(b) => b.cleanup().await,
            AnyProxy::Nft(b) => b.cleanup().await,
        }
    }
}
