//! Validation: every rule is checked and every failure collected, each message naming the key,
//! the value, and what would be valid.

use super::raw::*;
use super::types::*;
use super::{resolv_conf_nameservers, ConfigError};
use crate::proxy::Scheduling;
use base64::Engine;
use ipnet::{IpNet, Ipv4Net};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// Linux `IFNAMSIZ` is 16 including the terminating NUL.
const IFNAMSIZ_MAX: usize = 15;

struct V {
    errors: Vec<String>,
    /// Where a kubeconfig's `tokenFile` may lie.
    config_dir: PathBuf,
}

impl V {
    fn err(&mut self, msg: String) {
        self.errors.push(msg);
    }

    fn cidr(&mut self, key: &str, value: &str) -> Option<IpNet> {
        match IpNet::from_str(value) {
            Ok(net) if net.trunc() != net => {
                self.err(format!(
                    "{key} = {value:?}: host bits are set; did you mean {:?}?",
                    net.trunc().to_string()
                ));
                None
            }
            Ok(net) => Some(net),
            Err(_) => {
                self.err(format!(
                    "{key} = {value:?}: not a CIDR (expected address/prefix, e.g. \"10.128.0.0/14\" or \"fd00:10::/48\")"
                ));
                None
            }
        }
    }

    fn cidrs(&mut self, key: &str, values: &[String], required: bool) -> Vec<IpNet> {
        if required && values.is_empty() {
            self.err(format!(
                "{key} is empty: give at least one CIDR, e.g. [\"10.128.0.0/14\"]"
            ));
        }
        values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| self.cidr(&format!("{key}[{i}]"), v))
            .collect()
    }

    fn socket_addr(&mut self, key: &str, value: &str) -> Option<SocketAddr> {
        match SocketAddr::from_str(value) {
            Ok(a) if a.port() == 0 => {
                self.err(format!("{key} = {value:?}: port 0 is not a valid port"));
                None
            }
            Ok(a) => Some(a),
            Err(_) => {
                self.err(format!(
                    "{key} = {value:?}: not an address:port (expected e.g. \"203.0.113.10:51820\" or \"[2001:db8::1]:51820\")"
                ));
                None
            }
        }
    }

    fn label(&mut self, key: &str, value: &str) {
        if !is_dns_label(value) {
            self.err(format!(
                "{key} = {value:?}: not a DNS label (1-63 characters a-z, 0-9 and '-', starting and ending with a letter or digit)"
            ));
        }
    }

    fn ifname(&mut self, key: &str, value: &str) {
        if value.is_empty()
            || value.len() > IFNAMSIZ_MAX
            || value == "."
            || value == ".."
            || value
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace())
        {
            self.err(format!(
                "{key} = {value:?}: not a valid interface name (1-{IFNAMSIZ_MAX} bytes, no '/', ':' or spaces)"
            ));
        }
    }

    fn kubeconfig(&mut self, key: &str, value: &str) -> Option<PathBuf> {
        let path = PathBuf::from(value);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                self.err(format!(
                    "{key} = {value:?}: cannot read the kubeconfig ({e}); create it or remove the key"
                ));
                return None;
            }
        };
        match serde_yaml::from_str::<serde_yaml::Value>(&text) {
            Ok(doc) => {
                for user in doc
                    .get("users")
                    .and_then(|u| u.as_sequence())
                    .into_iter()
                    .flatten()
                {
                    let name = user.get("name").and_then(|n| n.as_str()).unwrap_or("?");
                    let spec = user.get("user");
                    for bad in ["exec", "auth-provider"] {
                        if spec.and_then(|s| s.get(bad)).is_some() {
                            self.err(format!(
                                "{key} = {value:?}: user {name:?} uses `{bad}`, which would run a program as root; use a bearer token or a client certificate instead"
                            ));
                        }
                    }
                    let token_file = spec
                        .and_then(|s| s.get("tokenFile"))
                        .and_then(|t| t.as_str());
                    if let Some(problem) = token_file.and_then(|t| {
                        crate::clusters::token_file_problem(&path, t, Some(&self.config_dir))
                    }) {
                        self.err(format!("{key} = {value:?}: user {name:?}: {problem}"));
                    }
                }
            }
            Err(e) => self.err(format!(
                "{key} = {value:?}: not a valid kubeconfig YAML ({e})"
            )),
        }
        Some(path)
    }
}

/// RFC 1123 label, lower case (cluster names become DNS zone labels).
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn enum_value<T: Copy>(v: &mut V, key: &str, value: &str, options: &[(&str, T)]) -> Option<T> {
    match options.iter().find(|(n, _)| *n == value) {
        Some((_, t)) => Some(*t),
        None => {
            let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
            v.err(format!(
                "{key} = {value:?}: expected one of {}",
                names.join(", ")
            ));
            None
        }
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

/// Validates `raw`, read from a main file in `config_dir` (where kubeconfig token files may lie).
pub(super) fn validate(raw: RawConfig, config_dir: &Path) -> Result<Config, ConfigError> {
    let mut v = V {
        errors: Vec::new(),
        config_dir: config_dir.to_path_buf(),
    };

    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&raw.log_level) {
        v.err(format!(
            "log_level = {:?}: {e} (expected e.g. \"info\", \"debug\" or \"sdnlinkd=debug,info\")",
            raw.log_level
        ));
    }
    if !(2..=3600).contains(&raw.sync.api_timeout) {
        v.err(format!(
            "sync.api_timeout = {}: expected 2..=3600 seconds (how long a silent API server is tolerated before its cluster shows degraded; default 60)",
            raw.sync.api_timeout
        ));
    }
    if raw.sync.max_bytes_per_cluster < 1 << 20 {
        v.err(format!(
            "sync.max_bytes_per_cluster = {}: expected at least 1048576 (1 MiB); the default {} (256 MiB) holds about 80,000 Services with 10 endpoints each",
            raw.sync.max_bytes_per_cluster, DEFAULT_MAX_BYTES_PER_CLUSTER
        ));
    }
    if raw.sync.max_objects_per_cluster == 0 {
        v.err("sync.max_objects_per_cluster = 0: must be at least 1 (default 200000)".into());
    }
    if !Path::new(&raw.state_dir).is_absolute() {
        v.err(format!(
            "state_dir = {:?}: must be an absolute path (where the last good cluster snapshots are kept; default \"/var/lib/sdnlink\")",
            raw.state_dir
        ));
    }
    if raw.resync_interval == 0 {
        v.err("resync_interval = 0: must be at least 1 second (default 30)".into());
    }

    // --- clusters -------------------------------------------------------------------------
    if raw.local.name.is_empty() {
        v.err(
            "local.name is missing: give this cluster's name, a DNS label such as \"east\"".into(),
        );
    } else {
        v.label("local.name", &raw.local.name);
    }
    let local_pods = v.cidrs("local.pod_cidrs", &raw.local.pod_cidrs, true);
    let local_svcs = v.cidrs("local.service_cidrs", &raw.local.service_cidrs, false);
    let node_name = raw.local.node_name.clone().unwrap_or_else(hostname);
    if node_name.is_empty() {
        v.err("local.node_name is empty and the host name is unknown: set local.node_name".into());
    }
    let local_kube = raw
        .local
        .kubeconfig
        .as_deref()
        .and_then(|k| v.kubeconfig("local.kubeconfig", k));

    let mut names: Vec<(String, String)> = Vec::new(); // (name, key)
    if !raw.local.name.is_empty() {
        names.push((raw.local.name.clone(), "local.name".into()));
    }
    let mut remotes = Vec::new();
    let mut static_keys: Vec<(String, String)> = Vec::new(); // (public key, config key)
    for (i, r) in raw.remote.iter().enumerate() {
        let key = format!("remote[{i}]");
        if r.name.is_empty() {
            v.err(format!(
                "{key}.name is missing: give the remote cluster's name, a DNS label"
            ));
        } else {
            v.label(&format!("{key}.name"), &r.name);
            if let Some((_, other)) = names.iter().find(|(n, _)| *n == r.name) {
                v.err(format!(
                    "{key}.name = {:?}: already used by {other}; cluster names must be unique",
                    r.name
                ));
            }
            names.push((r.name.clone(), format!("{key}.name")));
        }
        let pods = v.cidrs(&format!("{key}.pod_cidrs"), &r.pod_cidrs, true);
        let svcs = v.cidrs(&format!("{key}.service_cidrs"), &r.service_cidrs, false);
        let endpoint_cidrs = v.cidrs(&format!("{key}.endpoint_cidrs"), &r.endpoint_cidrs, false);
        let kube = r
            .kubeconfig
            .as_deref()
            .and_then(|k| v.kubeconfig(&format!("{key}.kubeconfig"), k));
        let mut peers = Vec::new();
        for (j, p) in r.peers.iter().enumerate() {
            let pkey = format!("{key}.peers[{j}]");
            match base64::engine::general_purpose::STANDARD.decode(p.public_key.trim()) {
                Ok(b) if b.len() == 32 => {
                    if let Some((_, other)) =
                        static_keys.iter().find(|(k, _)| *k == p.public_key.trim())
                    {
                        v.err(format!(
                            "{pkey}.public_key = {:?}: already used by {other}; a WireGuard key belongs to one peer",
                            p.public_key
                        ));
                    }
                    static_keys.push((p.public_key.trim().to_string(), pkey.clone()));
                }
                _ => v.err(format!(
                    "{pkey}.public_key = {:?}: not a WireGuard key (base64 of 32 bytes, as `wg pubkey` prints)",
                    p.public_key
                )),
            }
            let endpoint = p
                .endpoint
                .as_deref()
                .and_then(|e| v.socket_addr(&format!("{pkey}.endpoint"), e));
            let allowed = v.cidrs(&format!("{pkey}.allowed_ips"), &p.allowed_ips, true);
            for (k, a) in allowed.iter().enumerate() {
                if !pods.iter().any(|pc| pc.contains(a)) {
                    v.err(format!(
                        "{pkey}.allowed_ips[{k}] = {:?}: outside {key}.pod_cidrs {:?}; a peer may only route that cluster's pod addresses",
                        a.to_string(),
                        r.pod_cidrs
                    ));
                }
            }
            peers.push(StaticPeer {
                public_key: p.public_key.trim().to_string(),
                endpoint,
                allowed_ips: allowed,
            });
        }
        remotes.push(RemoteCluster {
            name: r.name.clone(),
            kubeconfig: kube,
            pod_cidrs: pods,
            service_cidrs: svcs,
            endpoint_cidrs,
            peers,
        });
    }
    if let Some((_, key)) = names.iter().find(|(n, _)| n == "all") {
        v.err(format!(
            "{key} = \"all\": reserved for the merged cluster.all zone; choose another name"
        ));
    }

    // --- namespace ------------------------------------------------------------------------
    let ns = &raw.namespace;
    if ns.name.is_empty()
        || ns.name.contains('/')
        || ns.name == "."
        || ns.name == ".."
        || ns.name.len() > 200
    {
        v.err(format!(
            "namespace.name = {:?}: not a usable namespace name (a file name under /run/netns)",
            ns.name
        ));
    }
    v.ifname("namespace.host_interface", &ns.host_interface);
    v.ifname("namespace.interface", &ns.interface);
    let transit = match Ipv4Net::from_str(&ns.transit_cidr) {
        Ok(n) if n.prefix_len() > 31 => {
            v.err(format!(
                "namespace.transit_cidr = {:?}: needs two addresses; use a /30 or /31",
                ns.transit_cidr
            ));
            None
        }
        Ok(n) if n.trunc() != n => {
            v.err(format!(
                "namespace.transit_cidr = {:?}: host bits are set; did you mean {:?}?",
                ns.transit_cidr,
                n.trunc().to_string()
            ));
            None
        }
        Ok(n) => Some(n),
        Err(_) => {
            v.err(format!(
                "namespace.transit_cidr = {:?}: not an IPv4 CIDR (expected e.g. \"169.254.100.0/30\")",
                ns.transit_cidr
            ));
            None
        }
    };
    if !(576..=65535).contains(&ns.mtu) {
        v.err(format!("namespace.mtu = {}: expected 576..=65535", ns.mtu));
    }
    if ns.route_protocol < 4 {
        v.err(format!(
            "namespace.route_protocol = {}: 0-3 are the kernel's own (unspec, redirect, kernel, boot); pick an unused number such as 245",
            ns.route_protocol
        ));
    }

    // --- tunnel ---------------------------------------------------------------------------
    let t = &raw.tunnel;
    v.ifname("tunnel.interface", &t.interface);
    if t.interface == ns.interface || t.interface == ns.host_interface {
        v.err(format!(
            "tunnel.interface = {:?}: same name as a veth end; choose a distinct name",
            t.interface
        ));
    }
    if t.listen_port == 0 {
        v.err("tunnel.listen_port = 0: give a UDP port, e.g. 51820".into());
    }
    let endpoint = t
        .endpoint
        .as_deref()
        .and_then(|e| v.socket_addr("tunnel.endpoint", e));
    let mode = enum_value(
        &mut v,
        "tunnel.mode",
        &t.mode,
        &[
            ("kernel", TunnelMode::Kernel),
            ("userspace", TunnelMode::Userspace),
            ("auto", TunnelMode::Auto),
        ],
    );
    if !(576..=65535).contains(&t.mtu) {
        v.err(format!("tunnel.mtu = {}: expected 576..=65535", t.mtu));
    }
    let key_file = PathBuf::from(&t.private_key_file);
    if t.private_key_file.is_empty() || !key_file.is_absolute() {
        v.err(format!(
            "tunnel.private_key_file = {:?}: must be an absolute path",
            t.private_key_file
        ));
    } else if let Ok(meta) = std::fs::metadata(&key_file) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            v.err(format!(
                "tunnel.private_key_file = {:?}: mode {mode:04o} lets group or others read the private key; run `chmod 600 {}`",
                t.private_key_file, t.private_key_file
            ));
        }
    }

    // --- proxy ----------------------------------------------------------------------------
    let backend = enum_value(
        &mut v,
        "proxy.backend",
        &raw.proxy.backend,
        &[
            ("ipvs", ProxyBackendKind::Ipvs),
            ("nftables", ProxyBackendKind::Nftables),
            ("auto", ProxyBackendKind::Auto),
        ],
    );
    let scheduler = match raw.proxy.scheduler.parse::<Scheduling>() {
        Ok(s) => s,
        Err(()) => {
            let names: Vec<&str> = Scheduling::ALL.iter().map(|s| s.name()).collect();
            v.err(format!(
                "proxy.scheduler = {:?}: not an IPVS scheduler; expected one of {}",
                raw.proxy.scheduler,
                names.join(", ")
            ));
            Scheduling::RoundRobin
        }
    };

    // --- dns ------------------------------------------------------------------------------
    let d = &raw.dns;
    let dns_addr = match IpAddr::from_str(&d.address) {
        Ok(a) => Some(a),
        Err(_) => {
            v.err(format!(
                "dns.address = {:?}: not an IP address (expected e.g. \"169.254.20.53\")",
                d.address
            ));
            None
        }
    };
    if d.port == 0 {
        v.err("dns.port = 0: give a port, normally 53".into());
    }
    if d.max_forwards_in_flight == 0 || d.max_forwards_in_flight > 65536 {
        v.err(format!(
            "dns.max_forwards_in_flight = {}: give 1 to 65536 (default 256); each holds one socket",
            d.max_forwards_in_flight
        ));
    }
    let mut upstreams: Vec<SocketAddr> = Vec::new();
    for (i, u) in d.upstreams.iter().enumerate() {
        let key = format!("dns.upstreams[{i}]");
        // A bare address means port 53.
        if let Ok(ip) = IpAddr::from_str(u) {
            upstreams.push(SocketAddr::new(ip, 53));
        } else if let Some(a) = v.socket_addr(&key, u) {
            upstreams.push(a);
        }
    }
    if d.enabled && d.upstreams.is_empty() {
        match resolv_conf_nameservers(Path::new(&d.resolv_conf)) {
            Ok(list) => upstreams = list,
            Err(e) => v.err(format!(
                "dns.upstreams is empty and dns.resolv_conf = {:?} cannot be read ({e}); list upstream resolvers in dns.upstreams",
                d.resolv_conf
            )),
        }
    }
    if let Some(own) = dns_addr {
        // Forwarding to ourselves would loop every query until it times out.
        upstreams.retain(|u| !(u.ip() == own && u.port() == d.port));
    }

    // --- overlaps -------------------------------------------------------------------------
    let mut ranges: Vec<(String, IpNet)> = Vec::new();
    for (i, n) in local_pods.iter().enumerate() {
        ranges.push((format!("local.pod_cidrs[{i}] {n}"), *n));
    }
    for (i, n) in local_svcs.iter().enumerate() {
        ranges.push((format!("local.service_cidrs[{i}] {n}"), *n));
    }
    for (ri, r) in remotes.iter().enumerate() {
        for (i, n) in r.pod_cidrs.iter().enumerate() {
            ranges.push((format!("remote[{ri}].pod_cidrs[{i}] {n}"), *n));
        }
        for (i, n) in r.service_cidrs.iter().enumerate() {
            ranges.push((format!("remote[{ri}].service_cidrs[{i}] {n}"), *n));
        }
    }
    if let Some(t) = transit {
        ranges.push((format!("namespace.transit_cidr {t}"), IpNet::V4(t)));
    }
    if let (Some(a), true) = (dns_addr, d.enabled) {
        ranges.push((format!("dns.address {a}"), IpNet::from(a)));
    }
    for i in 0..ranges.len() {
        for j in i + 1..ranges.len() {
            if overlaps(&ranges[i].1, &ranges[j].1) {
                v.err(format!(
                    "{} overlaps {}: pod CIDRs, service CIDRs, the transit CIDR and the DNS address must all be disjoint",
                    ranges[i].0, ranges[j].0
                ));
            }
        }
    }

    let metrics_listen = match raw.metrics.listen.trim() {
        "" => None,
        l => v.socket_addr("metrics.listen", l),
    };

    if !v.errors.is_empty() {
        return Err(ConfigError(v.errors));
    }
    // Every Option below is Some when no error was recorded.
    let (Some(transit), Some(mode), Some(backend), Some(dns_addr)) =
        (transit, mode, backend, dns_addr)
    else {
        return Err(ConfigError(vec!["internal: validation incomplete".into()]));
    };
    Ok(Config {
        log_level: raw.log_level,
        resync_interval: Duration::from_secs(raw.resync_interval),
        control_socket: PathBuf::from(raw.control_socket),
        state_dir: PathBuf::from(raw.state_dir),
        config_dir: config_dir.to_path_buf(),
        local: LocalCluster {
            name: raw.local.name,
            pod_cidrs: local_pods,
            service_cidrs: local_svcs,
            node_name,
            kubeconfig: local_kube,
        },
        namespace: NamespaceConfig {
            name: ns.name.clone(),
            host_interface: ns.host_interface.clone(),
            interface: ns.interface.clone(),
            transit_cidr: transit,
            mtu: ns.mtu,
            route_protocol: ns.route_protocol,
        },
        tunnel: TunnelConfig {
            interface: t.interface.clone(),
            listen_port: t.listen_port,
            private_key_file: key_file,
            endpoint,
            mode,
            persistent_keepalive: t.persistent_keepalive,
            mtu: t.mtu,
            userspace_binary: PathBuf::from(&t.userspace_binary),
        },
        proxy: ProxyConfig {
            backend,
            scheduler,
            drain_grace: Duration::from_secs(raw.proxy.drain_grace),
        },
        dns: DnsConfig {
            enabled: d.enabled,
            address: dns_addr,
            port: d.port,
            upstreams,
            all_zone: d.all_zone,
            ttl: d.ttl,
            cache_size: d.cache_size,
            log_queries: d.log_queries,
            max_forwards_in_flight: d.max_forwards_in_flight,
        },
        sync: SyncConfig {
            startup_grace: Duration::from_secs(raw.sync.startup_grace),
            min_interval: Duration::from_millis(raw.sync.min_interval_ms),
            max_delay: Duration::from_millis(raw.sync.max_delay_ms.max(raw.sync.min_interval_ms)),
            max_objects_per_cluster: raw.sync.max_objects_per_cluster,
            max_bytes_per_cluster: raw.sync.max_bytes_per_cluster,
            api_timeout: Duration::from_secs(raw.sync.api_timeout),
        },
        metrics: MetricsConfig {
            listen: metrics_listen,
        },
        remote: remotes,
    })
}
