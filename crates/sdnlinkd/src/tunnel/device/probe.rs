//! The read-only device view behind `sdnlinkd status`.

use super::*;
use crate::netns::NetNs;
use crate::tunnel::keys::PublicKey;
use crate::tunnel::{SkippedPeer, TunnelError};
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::io;
use std::time::SystemTime;
use wireguard_control::InterfaceName;

impl Tunnel {
    /// A read-only handle for status that reads the device through `ns` (a handle on the
    /// namespace the device is read from, see [`Tunnel::status_namespace`]), with the names of
    /// the last sync.
    pub fn probe(&self, ns: NetNs) -> TunnelProbe {
        TunnelProbe {
            ns,
            wg_name: self.wg_name,
            backend: self.backend,
            iface: self.iface.clone(),
            public: self.public,
            listen_port: self.listen_port,
            names: self.names.clone(),
            skipped: self.skipped.clone(),
        }
    }
}

/// A read-only view of the tunnel for `sdnlinkd status`, independent of the reconcile task.
#[derive(Clone)]
pub struct TunnelProbe {
    ns: NetNs,
    wg_name: InterfaceName,
    backend: Backend,
    iface: String,
    public: PublicKey,
    listen_port: u16,
    names: BTreeMap<PublicKey, (String, String)>,
    skipped: Vec<SkippedPeer>,
}

impl TunnelProbe {
    /// Reads the device and reports it (on the probe's namespace thread).
    pub async fn status(&self) -> TunnelStatus {
        let (name, backend) = (self.wg_name, self.backend);
        let mut status = TunnelStatus {
            backend: self.backend,
            interface: self.iface.clone(),
            public_key: self.public,
            listen_port: self.listen_port,
            peers: Vec::new(),
            skipped: self.skipped.clone(),
            error: None,
        };
        // A socket of our name served from another namespace is not our device (the probe's
        // namespace is the host one for the userspace backend).
        let foreign = match backend {
            Backend::Userspace => foreign_socket_owner(&self.iface, &self.ns),
            Backend::Kernel => None,
        };
        if let Some(pid) = foreign {
            let iface = self.iface.clone();
            status.error = Some(TunnelError::OtherNamespace { iface, pid }.to_string());
            return status;
        }
        let read = self
            .ns
            .run_async(move || {
                if backend == Backend::Userspace && !socket_answers(&name.to_string()) {
                    return Err(io::Error::from_raw_os_error(libc::ENODEV));
                }
                wireguard_control::Device::get(&name, backend.wg())
            })
            .await;
        let dev = match read {
            Ok(Ok(dev)) => dev,
            Ok(Err(source)) => {
                let e = TunnelError::Device {
                    op: "read device",
                    iface: self.iface.clone(),
                    backend,
                    source,
                };
                status.error = Some(e.to_string());
                return status;
            }
            Err(e) => {
                status.error = Some(e.to_string());
                return status;
            }
        };
        if let Some(p) = dev.listen_port {
            status.listen_port = p;
        }
        let now = SystemTime::now();
        for p in dev.peers {
            let key = PublicKey(p.config.public_key.0);
            let names = self.names.get(&key);
            status.peers.push(PeerStatus {
                public_key: key,
                cluster: names.map(|n| n.0.clone()),
                node: names.map(|n| n.1.clone()),
                endpoint: p.config.endpoint,
                allowed_ips: p
                    .config
                    .allowed_ips
                    .iter()
                    .filter_map(|a| IpNet::new(a.address, a.cidr).ok())
                    .collect(),
                latest_handshake_age_secs: p
                    .stats
                    .last_handshake_time
                    .map(|t| now.duration_since(t).map(|d| d.as_secs()).unwrap_or(0)),
                rx_bytes: p.stats.rx_bytes,
                tx_bytes: p.stats.tx_bytes,
            });
        }
        status.peers.sort_by_key(|p| p.public_key);
        status
    }
}
