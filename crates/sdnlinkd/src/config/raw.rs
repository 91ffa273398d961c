//! The file schema exactly as written by an operator: strings where validation must be able to
//! name the bad value, so that every problem is reported at once instead of serde stopping at
//! the first. Built-in defaults live here.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub log_level: String,
    pub resync_interval: u64,
    pub control_socket: String,
    pub state_dir: String,
    pub local: RawLocal,
    pub namespace: RawNamespace,
    pub tunnel: RawTunnel,
    pub proxy: RawProxy,
    pub dns: RawDns,
    pub sync: RawSync,
    pub metrics: RawMetrics,
    pub remote: Vec<RawRemote>,
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            log_level: "info".into(),
            resync_interval: 30,
            control_socket: "/run/sdnlink/control.sock".into(),
            // The unit's StateDirectory=, the only place under /var that ProtectSystem=strict
            // lets the daemon write.
            state_dir: "/var/lib/sdnlink".into(),
            local: RawLocal::default(),
            namespace: RawNamespace::default(),
            tunnel: RawTunnel::default(),
            proxy: RawProxy::default(),
            dns: RawDns::default(),
            sync: RawSync::default(),
            metrics: RawMetrics::default(),
            remote: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLocal {
    pub name: String,
    pub pod_cidrs: Vec<String>,
    pub service_cidrs: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawNamespace {
    pub name: String,
    pub host_interface: String,
    pub interface: String,
    pub transit_cidr: String,
    pub mtu: u32,
    pub route_protocol: u8,
}

impl Default for RawNamespace {
    fn default() -> Self {
        RawNamespace {
            name: "sdnlink".into(),
            host_interface: "sdnlink0".into(),
            interface: "eth0".into(),
            transit_cidr: "169.254.100.0/30".into(),
            mtu: 1500,
            // Unassigned in /etc/iproute2/rt_protos (kernel reserves < 4, routing daemons use
            // 8..=192 sparsely); 0xf5 keeps clear of bird/zebra/babel/keepalived/dhcp/ra.
            route_protocol: 245,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTunnel {
    pub interface: String,
    pub listen_port: u16,
    pub private_key_file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    pub mode: String,
    pub persistent_keepalive: u16,
    pub mtu: u32,
    pub userspace_binary: String,
}

impl Default for RawTunnel {
    fn default() -> Self {
        RawTunnel {
            interface: "sdnlink-wg".into(),
            listen_port: 51820,
            private_key_file: "/var/lib/sdnlink/private.key".into(),
            endpoint: None,
            mode: "auto".into(),
            persistent_keepalive: 25,
            // 1500 minus the WireGuard overhead over IPv6 (40 + 8 + 32): what wg-quick uses.
            mtu: 1420,
            userspace_binary: "/usr/bin/wireguard-go".into(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawProxy {
    pub backend: String,
    pub scheduler: String,
    pub drain_grace: u64,
}

impl Default for RawProxy {
    fn default() -> Self {
        RawProxy {
            backend: "auto".into(),
            scheduler: "rr".into(),
            drain_grace: 30,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDns {
    pub enabled: bool,
    pub address: String,
    pub port: u16,
    pub upstreams: Vec<String>,
    pub all_zone: bool,
    pub ttl: u32,
    pub cache_size: usize,
    /// Where the default upstreams come from when `upstreams` is empty.
    pub resolv_conf: String,
    pub log_queries: bool,
    pub max_forwards_in_flight: usize,
}

impl Default for RawDns {
    fn default() -> Self {
        RawDns {
            enabled: true,
            address: "169.254.20.53".into(),
            port: 53,
            upstreams: Vec::new(),
            all_zone: true,
            ttl: 5,
            cache_size: 4096,
            resolv_conf: "/etc/resolv.conf".into(),
            log_queries: false,
            max_forwards_in_flight: 256,
        }
    }
}

/// `[metrics]`: `listen` empty (the default) serves no metrics.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMetrics {
    pub listen: String,
}

/// Default of `sync.max_bytes_per_cluster`: 256 MiB, about eight times what a cluster of
/// 10,000 Services with 10 endpoints each takes in the store.
pub const DEFAULT_MAX_BYTES_PER_CLUSTER: u64 = 256 << 20;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSync {
    pub startup_grace: u64,
    pub min_interval_ms: u64,
    pub max_delay_ms: u64,
    pub max_objects_per_cluster: usize,
    pub max_bytes_per_cluster: u64,
    pub api_timeout: u64,
}

impl Default for RawSync {
    fn default() -> Self {
        RawSync {
            startup_grace: 60,
            min_interval_ms: 200,
            max_delay_ms: 2000,
            max_objects_per_cluster: 200_000,
            max_bytes_per_cluster: DEFAULT_MAX_BYTES_PER_CLUSTER,
            api_timeout: 60,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRemote {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<String>,
    pub pod_cidrs: Vec<String>,
    pub service_cidrs: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub endpoint_cidrs: Vec<String>,
    pub peers: Vec<RawPeer>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPeer {
    pub public_key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    pub allowed_ips: Vec<String>,
}
