//! `sdnlinkd cleanup`: the device and its wireguard-go go, foreign links stay.

use super::*;
use crate::config::Config;
use crate::netns::NetNs;
use crate::tunnel::TunnelError;
use rtnetlink::packet_route::link::InfoKind;

/// `sdnlinkd cleanup`: removes the device of `cfg.tunnel.interface` from the host namespace and
/// from sdnlinkd's namespace (when it still exists), and stops the wireguard-go serving it.
pub async fn cleanup(cfg: &Config) -> Result<CleanupReport, TunnelError> {
    let host = NetNs::current()?;
    let ns = NetNs::open(&cfg.namespace.name).ok();
    cleanup_in(cfg, &host, ns.as_ref()).await
}

/// Removes the device: stops the wireguard-go process serving `cfg.tunnel.interface` (found
/// through its control socket's peer credentials, so no pid file is needed) and deletes the link
/// from `ns` and the host namespace. Idempotent: "already gone" is success.
pub async fn cleanup_in(
    cfg: &Config,
    host: &NetNs,
    ns: Option<&NetNs>,
) -> Result<CleanupReport, TunnelError> {
    let mut report = CleanupReport::default();
    let iface = cfg.tunnel.interface.as_str();
    let sock = socket_path(iface);
    let hh = rtnl(host).await?;
    let nsh = match ns {
        Some(n) => Some(rtnl(n).await?),
        None => None,
    };
    let mark = ownership_mark(ns.map_or(cfg.namespace.name.as_str(), |n| n.name()));
    let host_link = find_link(&hh, iface).await?;
    let ns_link = match &nsh {
        Some(h) => find_link(h, iface).await?,
        None => None,
    };
    let host_foreign = host_link
        .as_ref()
        .filter(|l| l.alias.as_deref() != Some(mark.as_str()));
    if let Some(l) = host_foreign {
        report.kept_foreign.push(foreign_host(iface, l).to_string());
    }
    // The wireguard-go behind the socket serves a host link of that name that is not ours,
    // unless our namespace has the device: then it is ours.
    let ours_served = host_foreign.is_none() || ns_link.is_some();
    if ours_served {
        report.stopped_pid = stop_userspace(iface, &cfg.tunnel.userspace_binary, host).await;
    }
    let deletable = |l: &Link| matches!(l.kind, Some(InfoKind::Wireguard) | Some(InfoKind::Tun));
    let mut targets: Vec<(&rtnetlink::Handle, &NetNs, u32)> = Vec::new();
    if let Some(l) = host_link
        .as_ref()
        .filter(|l| host_foreign.is_none() && deletable(l))
    {
        targets.push((&hh, host, l.index));
    }
    if let (Some(h), Some(n), Some(l)) = (&nsh, ns, ns_link.as_ref().filter(|l| deletable(l))) {
        // Our namespace holds only what sdnlinkd put there.
        targets.push((h, n, l.index));
    }
    for (h, space, idx) in targets {
        match h.link().del(idx).execute().await {
            Ok(()) => report
                .deleted_links
                .push(format!("{}/{iface}", space.name())),
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::ENODEV => {}
            Err(e) => {
                return Err(TunnelError::Netlink {
                    op: "delete link",
                    iface: iface.to_string(),
                    source: nl_io(e),
                })
            }
        }
    }
    if !socket_answers(iface) {
        let _ = std::fs::remove_file(&sock);
    }
    Ok(report)
}
