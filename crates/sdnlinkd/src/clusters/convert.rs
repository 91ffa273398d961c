//! Pure conversion of Kubernetes objects, as the watches deliver them, into compact records and
//! [`crate::model`] values, with the trust rules of docs/design.md applied at this boundary: a remote
//! cluster never gets a ClusterIP outside its service CIDRs, an endpoint outside its pod CIDRs,
//! a node subnet outside its pod CIDRs, a name the API server would refuse, or more ports or
//! endpoints than the API server admits into the snapshot. Only the fields the daemon uses are
//! read (never managedFields or foreign annotations), straight from the object's JSON. Nothing
//! here logs or panics: every dropped piece comes back as a [`Skip`] so the caller can log it
//! once and count it.

use crate::model::{
    Endpoint, EndpointPort, Node, Protocol, Service, ServiceKey, ServiceKind, ServicePort,
    TargetPort,
};
use ipnet::IpNet;
use kube::core::DynamicObject;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::mem::size_of;
use std::net::IpAddr;
use std::sync::Arc;

/// Node annotation holding the node's WireGuard public key (base64 of 32 bytes), written by the
/// node's own sdnlinkd through the local kubeconfig and read by the daemons of other clusters.
pub const ANNOTATION_PUBLIC_KEY: &str = "sdnlink.io/wireguard-public-key";
/// Node annotation holding the node's advertised WireGuard endpoint (`IP:port` or
/// `[IPv6]:port`); absent when the node is not reachable from outside (it then only dials out).
pub const ANNOTATION_ENDPOINT: &str = "sdnlink.io/wireguard-endpoint";
/// EndpointSlice label naming the Service the slice belongs to (set by the EndpointSlice
/// controller; slices without it are not attached to any Service, as in kube-proxy).
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// `sessionAffinityConfig.clientIP.timeoutSeconds` default of the Kubernetes API (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// EndpointSlice API limit (discovery/v1 `endpoints`: "a maximum of 1000 endpoints").
pub const MAX_SLICE_ENDPOINTS: usize = 1000;
/// EndpointSlice API limit (discovery/v1 `ports`: "a maximum of 100 ports").
pub const MAX_SLICE_PORTS: usize = 100;
/// EndpointSlice API limit (discovery/v1 `endpoints[].addresses`: "no more than 100").
pub const MAX_ENDPOINT_ADDRESSES: usize = 100;
/// The Service API sets no count of its own (only the object size), but the EndpointSlice
/// controller copies a Service's ports into each of its slices, which admit at most
/// [`MAX_SLICE_PORTS`]: ports beyond that can never have endpoints, so a Service with more is
/// refused whole rather than served in part.
pub const MAX_SERVICE_PORTS: usize = MAX_SLICE_PORTS;
/// Core API limit: `clusterIPs` holds at most one address per family.
const MAX_CLUSTER_IPS: usize = 2;
/// Core API limit: `podCIDRs` holds at most one CIDR per family. A few more are read (and
/// refused one by one by the CIDR rule) so a hostile list shows in the counts; a longer one is
/// refused whole.
const MAX_NODE_POD_CIDRS: usize = 16;
/// OpenShift SDN gives each node one HostSubnet; more naming one host are ignored past this.
pub const MAX_HOST_SUBNETS_PER_NODE: usize = 16;
/// Our annotations hold a 44-character key and an `address:port`; longer values are refused so
/// the store never keeps a remote's large annotation.
const MAX_ANNOTATION_VALUE: usize = 256;
/// Remote values quoted in log details are cut to this many characters.
const SHOWN_MAX: usize = 64;

/// Why a piece of a remote object was not taken into the snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// A ClusterIP outside the cluster's configured service CIDRs.
    ClusterIpOutsideServiceCidrs,
    /// An endpoint address outside the cluster's configured pod CIDRs.
    EndpointOutsidePodCidrs,
    /// A node pod subnet outside the cluster's configured pod CIDRs.
    NodeSubnetOutsidePodCidrs,
    /// The object (or a part of it) does not parse: bad IP, port out of range, missing field.
    Malformed,
    /// The cluster already has `sync.max_objects_per_cluster` objects.
    ObjectCap,
    /// The cluster's objects would take more than `sync.max_bytes_per_cluster`.
    ByteCap,
    /// A Service name that is not a DNS-1035 label (the API server's rule).
    InvalidServiceName,
    /// A namespace that is not a DNS-1123 label.
    InvalidNamespace,
    /// An endpoint hostname that is not a DNS-1123 label.
    InvalidEndpointHostname,
    /// A Service or EndpointSlice port name that is not a DNS-1123 label.
    InvalidPortName,
    /// An ExternalName that is not a DNS-1123 subdomain.
    InvalidExternalName,
    /// A Node name (or an endpoint's nodeName, a HostSubnet's host) that is not a DNS-1123
    /// subdomain.
    InvalidNodeName,
    /// A Service whose ClusterIP an older Service of the same cluster already claims.
    ClusterIpConflict,
    /// More ports than the API server admits (Service or EndpointSlice).
    TooManyPorts,
    /// An EndpointSlice with more endpoints than the API server admits.
    TooManyEndpoints,
    /// An endpoint with more addresses than the API server admits.
    TooManyAddresses,
}

impl SkipReason {
    /// The snake_case name used in status and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::ClusterIpOutsideServiceCidrs => "cluster_ip_outside_service_cidrs",
            SkipReason::EndpointOutsidePodCidrs => "endpoint_outside_pod_cidrs",
            SkipReason::NodeSubnetOutsidePodCidrs => "node_subnet_outside_pod_cidrs",
            SkipReason::Malformed => "malformed",
            SkipReason::ObjectCap => "object_cap",
            SkipReason::ByteCap => "byte_cap",
            SkipReason::InvalidServiceName => "invalid_service_name",
            SkipReason::InvalidNamespace => "invalid_namespace",
            SkipReason::InvalidEndpointHostname => "invalid_endpoint_hostname",
            SkipReason::InvalidPortName => "invalid_port_name",
            SkipReason::InvalidExternalName => "invalid_external_name",
            SkipReason::InvalidNodeName => "invalid_node_name",
            SkipReason::ClusterIpConflict => "cluster_ip_conflict",
            SkipReason::TooManyPorts => "too_many_ports",
            SkipReason::TooManyEndpoints => "too_many_endpoints",
            SkipReason::TooManyAddresses => "too_many_addresses",
        }
    }
}

/// One dropped piece, with a human-readable detail for the log line.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Skip {
    /// The counted category.
    pub reason: SkipReason,
    /// What exactly, naming the object (never credentials; remote values cut short).
    pub detail: String,
}

impl Skip {
    pub(crate) fn new(reason: SkipReason, detail: impl Into<String>) -> Skip {
        Skip {
            reason,
            detail: detail.into(),
        }
    }
}

/// The result of converting one object: the value (if anything is left of it) and what was
/// dropped on the way.
#[derive(Clone, Debug, PartialEq)]
pub struct Converted<T> {
    /// What is left of the object after the trust rules; `None` when nothing usable is.
    pub value: Option<T>,
    /// Everything dropped on the way.
    pub skips: Vec<Skip>,
}

impl<T> Converted<T> {
    fn refused(reason: SkipReason, detail: String) -> Converted<T> {
        Converted {
            value: None,
            skips: vec![Skip::new(reason, detail)],
        }
    }
}

/// The CIDRs a cluster's objects must lie in (from the config).
#[derive(Clone, Copy, Debug)]
pub struct Trust<'a> {
    /// Endpoint addresses and node subnets must lie in one of these.
    pub pod_cidrs: &'a [IpNet],
    /// ClusterIPs must lie in one of these.
    pub service_cidrs: &'a [IpNet],
}

fn in_any(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(&ip))
}

/// A remote value for a log line: quoted, and cut to [`SHOWN_MAX`] characters.
pub(crate) fn shown(s: &str) -> String {
    match s.char_indices().nth(SHOWN_MAX) {
        Some((i, _)) => format!("{:?}...", &s[..i]),
        None => format!("{s:?}"),
    }
}

/// RFC 1123 label as Kubernetes validates it (`IsDNS1123Label`): 1-63 of `a-z`, `0-9` and `-`,
/// starting and ending with a letter or digit. Namespaces, endpoint hostnames and port names.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// RFC 1035 label as Kubernetes validates it (`IsDNS1035Label`): a DNS-1123 label that starts
/// with a letter. Service names.
pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// RFC 1123 subdomain as Kubernetes validates it (`IsDNS1123Subdomain`): at most 253
/// characters of dot-separated DNS-1123 labels. Node names; ExternalNames (after the trailing
/// dot is trimmed).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// Shares equal strings and endpoint-port lists between records: the node name of every
/// endpoint on one node, the port list of every endpoint of a slice and of every slice with
/// the same ports. Entries no record uses any more are dropped when the table has doubled
/// since its last sweep, so the table stays proportional to what is held.
#[derive(Debug, Default)]
pub struct Interner {
    strs: HashSet<Arc<str>>,
    ports: HashSet<Arc<[EndpointPort]>>,
    sweep_at: usize,
}

impl Interner {
    /// The shared copy of `s`.
    pub fn str(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.strs.get(s) {
            return a.clone();
        }
        self.sweep();
        let a: Arc<str> = Arc::from(s);
        self.strs.insert(a.clone());
        a
    }

    /// The shared copy of `ports`.
    pub fn ports(&mut self, ports: Vec<EndpointPort>) -> Arc<[EndpointPort]> {
        if let Some(a) = self.ports.get(ports.as_slice()) {
            return a.clone();
        }
        self.sweep();
        let a: Arc<[EndpointPort]> = Arc::from(ports);
        self.ports.insert(a.clone());
        a
    }

    fn sweep(&mut self) {
        let len = self.strs.len() + self.ports.len();
        if len < self.sweep_at.max(1024) {
            return;
        }
        self.strs.retain(|a| Arc::strong_count(a) > 1);
        self.ports.retain(|a| Arc::strong_count(a) > 1);
        self.sweep_at = 2 * (self.strs.len() + self.ports.len());
    }

    /// Entries held (for tests and accounting).
    pub fn len(&self) -> usize {
        self.strs.len() + self.ports.len()
    }

    /// Whether nothing is interned.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A Service as the store keeps it: the snapshot value without endpoints, and the creation
/// time that orders Services claiming one ClusterIP.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceRecord {
    /// The snapshot value; `endpoints` is always empty here.
    pub service: Service,
    /// `metadata.creationTimestamp` in Unix seconds; `i64::MAX` when absent (loses every
    /// conflict).
    pub created: i64,
}

/// An EndpointSlice as the store keeps it: the Service it belongs to, its ports (once) and its
/// endpoints, already through the trust rules and sorted.
#[derive(Clone, Debug, PartialEq)]
pub struct SliceRecord {
    /// From the `kubernetes.io/service-name` label; `None` when absent or not a Service name.
    pub service: Option<ServiceKey>,
    /// The slice's ports, shared with every endpoint built from it.
    pub ports: Arc<[EndpointPort]>,
    /// Trusted endpoints, sorted as [`merge_endpoints`] orders them.
    pub endpoints: Vec<SliceEndpoint>,
}

const READY: u8 = 1;
const SERVING: u8 = 2;
const TERMINATING: u8 = 4;

/// One endpoint of a slice as the store keeps it: under half the size of a snapshot
/// [`Endpoint`] with its address allocation (one address inline, conditions in a byte, ports
/// kept once per slice, the rare parts boxed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    /// The lowest address.
    pub address: IpAddr,
    flags: u8,
    /// `nodeName`, shared by every endpoint on that node.
    pub node_name: Option<Arc<str>>,
    /// Further addresses and the hostname: the EndpointSlice controller writes one address,
    /// and only StatefulSet pods have a hostname.
    extra: Option<Box<EndpointExtra>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct EndpointExtra {
    more: Vec<IpAddr>,
    hostname: Option<String>,
}

impl SliceEndpoint {
    /// The lowest address and the others, sorted.
    pub fn addresses(&self) -> (IpAddr, &[IpAddr]) {
        (self.address, self.extra.as_ref().map_or(&[], |e| &e.more))
    }

    /// `hostname`, a DNS-1123 label.
    pub fn hostname(&self) -> Option<&str> {
        self.extra.as_ref().and_then(|e| e.hostname.as_deref())
    }

    /// Heap bytes of the boxed parts.
    pub fn extra_bytes(&self) -> usize {
        self.extra.as_ref().map_or(0, |e| {
            size_of::<EndpointExtra>()
                + e.more.capacity() * size_of::<IpAddr>()
                + e.hostname.as_ref().map_or(0, String::capacity)
        })
    }

    /// The snapshot endpoint, with the slice's `ports`.
    pub fn to_endpoint(&self, ports: &Arc<[EndpointPort]>) -> Endpoint {
        let (first, more) = self.addresses();
        let mut addresses = Vec::with_capacity(1 + more.len());
        addresses.push(first);
        addresses.extend_from_slice(more);
        Endpoint {
            addresses,
            ready: self.flags & READY != 0,
            serving: self.flags & SERVING != 0,
            terminating: self.flags & TERMINATING != 0,
            hostname: self.hostname().map(str::to_string),
            node_name: self.node_name.clone(),
            ports: ports.clone(),
        }
    }
}

/// A Node as the store keeps it: the pod subnets of its spec and our annotations.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeRecord {
    /// `metadata.name`.
    pub name: String,
    /// `spec.podCIDRs` (or `spec.podCIDR`) inside the pod CIDRs, truncated, in spec order.
    pub pod_cidrs: Vec<IpNet>,
    /// [`ANNOTATION_PUBLIC_KEY`], raw.
    pub public_key: Option<String>,
    /// [`ANNOTATION_ENDPOINT`], raw.
    pub endpoint: Option<String>,
}

/// OpenShift SDN's `HostSubnet` (network.openshift.io/v1): the pod subnet of one node lives
/// here instead of in `Node.spec.podCIDRs`. Only the fields sdnlinkd reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostSubnet {
    /// Name of the node this subnet belongs to.
    pub host: String,
    /// The node's pod subnet, a CIDR (checked when the node is converted).
    pub subnet: String,
}

/// A type error in the object's JSON: the whole object is unusable, as a typed client would
/// fail to decode it.
struct Bad(String);

fn field<'a>(o: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    o.get(name).filter(|v| !v.is_null())
}

fn opt_obj<'a>(
    o: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a Map<String, Value>>, Bad> {
    match field(o, name) {
        None => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(Bad(format!("{name} is not an object"))),
    }
}

fn opt_arr<'a>(o: &'a Map<String, Value>, name: &str) -> Result<&'a [Value], Bad> {
    match field(o, name) {
        None => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(Bad(format!("{name} is not a list"))),
    }
}

fn opt_str<'a>(o: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, Bad> {
    match field(o, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Bad(format!("{name} is not a string"))),
    }
}

fn opt_bool(o: &Map<String, Value>, name: &str) -> Result<Option<bool>, Bad> {
    match field(o, name) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(Bad(format!("{name} is not a boolean"))),
    }
}

fn opt_int(o: &Map<String, Value>, name: &str) -> Result<Option<i64>, Bad> {
    match field(o, name) {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| Bad(format!("{name} is not an integer"))),
    }
}

fn as_obj<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, Bad> {
    v.as_object()
        .ok_or_else(|| Bad(format!("{what} is not an object")))
}

fn data(o: &DynamicObject) -> Result<&Map<String, Value>, Bad> {
    as_obj(&o.data, "the object")
}

fn port_u16(p: i64) -> Option<u16> {
    u16::try_from(p).ok().filter(|p| *p != 0)
}

/// Namespace and name of a namespaced object, checked: `Err` is the refusal.
fn namespaced(o: &DynamicObject, kind: &str) -> Result<(String, String), Skip> {
    let (Some(ns), Some(name)) = (&o.metadata.namespace, &o.metadata.name) else {
        return Err(Skip::new(
            SkipReason::Malformed,
            format!("{kind} without metadata.namespace/name"),
        ));
    };
    if !is_dns1123_label(ns) {
        return Err(Skip::new(
            SkipReason::InvalidNamespace,
            format!(
                "{kind} {}: namespace {} is not a DNS-1123 label",
                shown(name),
                shown(ns)
            ),
        ));
    }
    Ok((ns.clone(), name.clone()))
}

/// Converts a Service object into its record (the snapshot value without endpoints).
pub fn service_record(o: &DynamicObject, trust: Trust<'_>) -> Converted<ServiceRecord> {
    let (namespace, name) = match namespaced(o, "Service") {
        Ok(k) => k,
        Err(s) => return Converted::refused(s.reason, s.detail),
    };
    if !is_dns1035_label(&name) {
        return Converted::refused(
            SkipReason::InvalidServiceName,
            format!(
                "Service {namespace}/{}: the name is not a DNS-1035 label",
                shown(&name)
            ),
        );
    }
    let key = ServiceKey { namespace, name };
    match service_spec(&key, o, trust) {
        Ok(c) => c,
        Err(Bad(why)) => Converted::refused(SkipReason::Malformed, format!("Service {key}: {why}")),
    }
}

fn service_spec(
    key: &ServiceKey,
    o: &DynamicObject,
    trust: Trust<'_>,
) -> Result<Converted<ServiceRecord>, Bad> {
    let refused =
        |reason, why: String| Ok(Converted::refused(reason, format!("Service {key}: {why}")));
    let Some(spec) = opt_obj(data(o)?, "spec")? else {
        return refused(SkipReason::Malformed, "no spec".into());
    };
    let raw_ports = opt_arr(spec, "ports")?;
    if raw_ports.len() > MAX_SERVICE_PORTS {
        return refused(
            SkipReason::TooManyPorts,
            format!("{} ports, more than {MAX_SERVICE_PORTS}", raw_ports.len()),
        );
    }
    let mut ports = Vec::with_capacity(raw_ports.len());
    for p in raw_ports {
        let p = as_obj(p, "a port")?;
        let pname = opt_str(p, "name")?.unwrap_or_default();
        if !pname.is_empty() && !is_dns1123_label(pname) {
            return refused(
                SkipReason::InvalidPortName,
                format!("port name {} is not a DNS-1123 label", shown(pname)),
            );
        }
        let raw_port = opt_int(p, "port")?.unwrap_or(0);
        let Some(port) = port_u16(raw_port) else {
            return refused(
                SkipReason::Malformed,
                format!("port {raw_port} out of range"),
            );
        };
        let proto = opt_str(p, "protocol")?;
        let Some(protocol) = Protocol::from_k8s(proto) else {
            return refused(
                SkipReason::Malformed,
                format!("unknown protocol {}", shown(proto.unwrap_or_default())),
            );
        };
        let target_port = match field(p, "targetPort") {
            None => TargetPort::Number(port),
            Some(Value::Number(n)) => match n.as_i64().and_then(port_u16) {
                Some(n) => TargetPort::Number(n),
                None => {
                    return refused(
                        SkipReason::Malformed,
                        format!("targetPort {n} out of range"),
                    )
                }
            },
            Some(Value::String(s)) if s.is_empty() => TargetPort::Number(port),
            Some(Value::String(s)) => match s.parse::<i64>() {
                // The API stores numeric strings as names only by mistake; kube-proxy treats
                // them as numbers, and so do we.
                Ok(n) => match port_u16(n) {
                    Some(n) => TargetPort::Number(n),
                    None => {
                        return refused(
                            SkipReason::Malformed,
                            format!("targetPort {n} out of range"),
                        )
                    }
                },
                Err(_) if is_dns1123_label(s) && s.len() <= 15 => TargetPort::Name(s.clone()),
                // A container port name is an IANA service name (at most 15 characters).
                Err(_) => {
                    return refused(
                        SkipReason::InvalidPortName,
                        format!("targetPort {} is not a port name", shown(s)),
                    )
                }
            },
            Some(_) => return Err(Bad("targetPort is neither a number nor a string".into())),
        };
        ports.push(ServicePort {
            name: pname.to_string(),
            protocol,
            port,
            target_port,
        });
    }

    let mut skips = Vec::new();
    let kind = if opt_str(spec, "type")? == Some("ExternalName") {
        let ext = opt_str(spec, "externalName")?.unwrap_or_default();
        let trimmed = ext.strip_suffix('.').unwrap_or(ext);
        if trimmed.is_empty() {
            return refused(
                SkipReason::Malformed,
                "ExternalName without externalName".into(),
            );
        }
        if !is_dns1123_subdomain(trimmed) {
            return refused(
                SkipReason::InvalidExternalName,
                format!("externalName {} is not a DNS-1123 subdomain", shown(ext)),
            );
        }
        ServiceKind::ExternalName(trimmed.to_string())
    } else {
        let ips = opt_arr(spec, "clusterIPs")?;
        let mut raw: Vec<&str> = Vec::with_capacity(ips.len().min(MAX_CLUSTER_IPS));
        if ips.len() > MAX_CLUSTER_IPS {
            return refused(
                SkipReason::Malformed,
                format!("{} clusterIPs, more than one per family", ips.len()),
            );
        }
        for v in ips {
            raw.push(
                v.as_str()
                    .ok_or_else(|| Bad("clusterIPs holds a non-string".into()))?,
            );
        }
        if raw.is_empty() {
            raw.extend(opt_str(spec, "clusterIP")?);
        }
        if raw.first() == Some(&"None") {
            ServiceKind::Headless
        } else if raw.iter().all(|s| s.is_empty()) {
            return refused(SkipReason::Malformed, "no clusterIP allocated".into());
        } else {
            let mut ips = Vec::with_capacity(raw.len());
            for s in raw {
                let Ok(ip) = s.parse::<IpAddr>() else {
                    return refused(SkipReason::Malformed, format!("bad clusterIP {}", shown(s)));
                };
                if in_any(trust.service_cidrs, ip) {
                    ips.push(ip);
                } else {
                    skips.push(Skip::new(
                        SkipReason::ClusterIpOutsideServiceCidrs,
                        format!("Service {key}: clusterIP {ip} outside the service CIDRs"),
                    ));
                }
            }
            if ips.is_empty() {
                return Ok(Converted { value: None, skips });
            }
            ServiceKind::ClusterIp(ips)
        }
    };

    let client_ip_affinity = if opt_str(spec, "sessionAffinity")? == Some("ClientIP") {
        let timeout = match opt_obj(spec, "sessionAffinityConfig")? {
            Some(c) => match opt_obj(c, "clientIP")? {
                Some(c) => opt_int(c, "timeoutSeconds")?,
                None => None,
            },
            None => None,
        };
        Some(
            timeout
                .and_then(|t| u32::try_from(t).ok())
                .filter(|t| (1..=86_400).contains(t))
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT),
        )
    } else {
        None
    };
    let created = o
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(i64::MAX, |t| t.0.as_second());
    Ok(Converted {
        value: Some(ServiceRecord {
            service: Service {
                key: key.clone(),
                kind,
                ports,
                client_ip_affinity,
                endpoints: Vec::new(),
            },
            created,
        }),
        skips,
    })
}

/// Converts an EndpointSlice object into its record; node names and port lists are shared
/// through `intern`.
pub fn slice_record(
    o: &DynamicObject,
    trust: Trust<'_>,
    intern: &mut Interner,
) -> Converted<SliceRecord> {
    let (ns, sname) = match namespaced(o, "EndpointSlice") {
        Ok(k) => k,
        Err(s) => return Converted::refused(s.reason, s.detail),
    };
    if !is_dns1123_subdomain(&sname) {
        return Converted::refused(
            SkipReason::Malformed,
            format!(
                "EndpointSlice {ns}/{}: the name is not a DNS-1123 subdomain",
                shown(&sname)
            ),
        );
    }
    let service = o
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_SERVICE_NAME))
        .filter(|n| is_dns1035_label(n))
        .map(|n| ServiceKey {
            namespace: ns.clone(),
            name: n.clone(),
        });
    let what = match &service {
        Some(k) => format!("EndpointSlice {ns}/{} of {k}", shown(&sname)),
        None => format!("EndpointSlice {ns}/{}", shown(&sname)),
    };
    match slice_body(&what, o, trust, intern) {
        Ok(Ok((ports, endpoints, skips))) => Converted {
            value: Some(SliceRecord {
                service,
                ports,
                endpoints,
            }),
            skips,
        },
        Ok(Err(skip)) => Converted::refused(skip.reason, skip.detail),
        Err(Bad(why)) => Converted::refused(SkipReason::Malformed, format!("{what}: {why}")),
    }
}

type SliceBody = Result<(Arc<[EndpointPort]>, Vec<SliceEndpoint>, Vec<Skip>), Skip>;

fn slice_body(
    what: &str,
    o: &DynamicObject,
    trust: Trust<'_>,
    intern: &mut Interner,
) -> Result<SliceBody, Bad> {
    let d = data(o)?;
    let raw_eps = opt_arr(d, "endpoints")?;
    let raw_ports = opt_arr(d, "ports")?;
    if raw_eps.len() > MAX_SLICE_ENDPOINTS {
        return Ok(Err(Skip::new(
            SkipReason::TooManyEndpoints,
            format!(
                "{what}: {} endpoints, more than {MAX_SLICE_ENDPOINTS}",
                raw_eps.len()
            ),
        )));
    }
    if raw_ports.len() > MAX_SLICE_PORTS {
        return Ok(Err(Skip::new(
            SkipReason::TooManyPorts,
            format!(
                "{what}: {} ports, more than {MAX_SLICE_PORTS}",
                raw_ports.len()
            ),
        )));
    }
    let address_type = opt_str(d, "addressType")?.unwrap_or_default();
    let want_v4 = match address_type {
        "IPv4" => true,
        "IPv6" => false,
        // FQDN slices are deprecated and never proxied by kube-proxy either.
        _ => return Ok(Ok((intern.ports(Vec::new()), Vec::new(), Vec::new()))),
    };
    let mut skips = Vec::new();
    let mut ports = Vec::with_capacity(raw_ports.len());
    for p in raw_ports {
        let p = as_obj(p, "a port")?;
        let name = opt_str(p, "name")?.unwrap_or_default();
        let port = opt_int(p, "port")?;
        let proto = opt_str(p, "protocol")?;
        if !name.is_empty() && !is_dns1123_label(name) {
            skips.push(Skip::new(
                SkipReason::InvalidPortName,
                format!("{what}: port name {} is not a DNS-1123 label", shown(name)),
            ));
            return Ok(Ok((intern.ports(Vec::new()), Vec::new(), skips)));
        }
        let (Some(port), Some(protocol)) = (port.and_then(port_u16), Protocol::from_k8s(proto))
        else {
            skips.push(Skip::new(
                SkipReason::Malformed,
                format!(
                    "{what}: bad port {} {:?}/{}",
                    shown(name),
                    port,
                    shown(proto.unwrap_or_default())
                ),
            ));
            return Ok(Ok((intern.ports(Vec::new()), Vec::new(), skips)));
        };
        ports.push(EndpointPort {
            name: name.to_string(),
            protocol,
            port,
        });
    }
    ports.sort();
    let ports = intern.ports(ports);

    let mut out = Vec::with_capacity(raw_eps.len());
    for ep in raw_eps {
        let ep = as_obj(ep, "an endpoint")?;
        let raw_addrs = opt_arr(ep, "addresses")?;
        let conditions = opt_obj(ep, "conditions")?;
        let (ready, serving, terminating) = match conditions {
            Some(c) => (
                opt_bool(c, "ready")?,
                opt_bool(c, "serving")?,
                opt_bool(c, "terminating")?,
            ),
            None => (None, None, None),
        };
        let hostname = opt_str(ep, "hostname")?;
        let node_name = opt_str(ep, "nodeName")?;
        if raw_addrs.len() > MAX_ENDPOINT_ADDRESSES {
            skips.push(Skip::new(
                SkipReason::TooManyAddresses,
                format!(
                    "{what}: an endpoint with {} addresses, more than {MAX_ENDPOINT_ADDRESSES}",
                    raw_addrs.len()
                ),
            ));
            continue;
        }
        if let Some(h) = hostname.filter(|h| !is_dns1123_label(h)) {
            skips.push(Skip::new(
                SkipReason::InvalidEndpointHostname,
                format!(
                    "{what}: endpoint hostname {} is not a DNS-1123 label",
                    shown(h)
                ),
            ));
            continue;
        }
        let mut addresses = Vec::with_capacity(raw_addrs.len().min(2));
        for a in raw_addrs {
            let a = a
                .as_str()
                .ok_or_else(|| Bad("an endpoint address is not a string".into()))?;
            match a.parse::<IpAddr>() {
                Ok(ip) if ip.is_ipv4() == want_v4 => {
                    if in_any(trust.pod_cidrs, ip) {
                        addresses.push(ip);
                    } else {
                        skips.push(Skip::new(
                            SkipReason::EndpointOutsidePodCidrs,
                            format!("{what}: endpoint {ip} outside the pod CIDRs"),
                        ));
                    }
                }
                _ => skips.push(Skip::new(
                    SkipReason::Malformed,
                    format!("{what}: bad {address_type} address {}", shown(a)),
                )),
            }
        }
        if addresses.is_empty() {
            continue;
        }
        addresses.sort();
        let node_name = match node_name {
            Some(n) if is_dns1123_subdomain(n) => Some(intern.str(n)),
            Some(n) => {
                skips.push(Skip::new(
                    SkipReason::InvalidNodeName,
                    format!(
                        "{what}: endpoint nodeName {} is not a DNS-1123 subdomain",
                        shown(n)
                    ),
                ));
                None
            }
            None => None,
        };
        // EndpointSlice API: absent `ready` means ready, absent `serving` follows `ready`.
        let ready = ready.unwrap_or(true);
        let mut flags = 0;
        if ready {
            flags |= READY;
        }
        if serving.unwrap_or(ready) {
            flags |= SERVING;
        }
        if terminating.unwrap_or(false) {
            flags |= TERMINATING;
        }
        let address = addresses[0];
        let extra = (addresses.len() > 1 || hostname.is_some()).then(|| {
            Box::new(EndpointExtra {
                more: addresses[1..].to_vec(),
                hostname: hostname.map(str::to_string),
            })
        });
        out.push(SliceEndpoint {
            address,
            flags,
            node_name,
            extra,
        });
    }
    // The order `sort_endpoints` gives the snapshot endpoints (the ports are the slice's own,
    // equal for all).
    out.sort_by(|a, b| (a.addresses(), a.hostname()).cmp(&(b.addresses(), b.hostname())));
    Ok(Ok((ports, out, skips)))
}

fn sort_endpoints(eps: &mut [Endpoint]) {
    // Stable: of two equal endpoints the one listed first (its slice's name sorts first) stays
    // first, and `merge_endpoints` keeps that one.
    eps.sort_by(|a, b| {
        (&a.addresses, &a.ports, &a.hostname).cmp(&(&b.addresses, &b.ports, &b.hostname))
    });
}

/// The endpoints of a Service from its slices, given in slice-name order: sorted, and an
/// endpoint present in two slices (the controller moving it) appears once.
pub fn merge_endpoints<'a>(slices: impl IntoIterator<Item = &'a SliceRecord>) -> Vec<Endpoint> {
    let slices: Vec<&SliceRecord> = slices.into_iter().collect();
    let mut out: Vec<Endpoint> = Vec::with_capacity(slices.iter().map(|s| s.endpoints.len()).sum());
    for s in &slices {
        out.extend(s.endpoints.iter().map(|e| e.to_endpoint(&s.ports)));
    }
    if slices.len() > 1 {
        sort_endpoints(&mut out);
        out.dedup_by(|a, b| a.addresses == b.addresses && a.ports == b.ports);
    }
    out
}

/// The snapshot Service of `rec` with the endpoints of its slices (in slice-name order).
pub fn assemble<'a>(
    rec: &ServiceRecord,
    slices: impl IntoIterator<Item = &'a SliceRecord>,
) -> Service {
    let mut s = rec.service.clone();
    if !matches!(s.kind, ServiceKind::ExternalName(_)) {
        s.endpoints = merge_endpoints(slices);
    }
    s
}

/// Converts a Service and the EndpointSlices that name it (label `kubernetes.io/service-name`)
/// into a snapshot Service: [`service_record`], [`slice_record`] and [`assemble`] in one.
///
/// Slices of several generations are merged; an endpoint present in two slices appears once.
/// Endpoints are sorted so the result does not depend on the order objects arrived in.
pub fn service(
    svc: &DynamicObject,
    slices: &[&DynamicObject],
    trust: Trust<'_>,
) -> Converted<Service> {
    let rec = service_record(svc, trust);
    let mut skips = rec.skips;
    let Some(rec) = rec.value else {
        return Converted { value: None, skips };
    };
    let mut intern = Interner::default();
    let mut named: Vec<(&str, SliceRecord)> = Vec::new();
    for s in slices {
        let c = slice_record(s, trust, &mut intern);
        skips.extend(c.skips);
        if let Some(v) = c.value {
            named.push((s.metadata.name.as_deref().unwrap_or_default(), v));
        }
    }
    named.sort_by(|a, b| a.0.cmp(b.0));
    Converted {
        value: Some(assemble(&rec, named.iter().map(|(_, s)| s))),
        skips,
    }
}

/// The Service an EndpointSlice object belongs to, from its label.
pub fn slice_service(slice: &DynamicObject) -> Option<ServiceKey> {
    let ns = slice.metadata.namespace.clone()?;
    let name = slice
        .metadata
        .labels
        .as_ref()?
        .get(LABEL_SERVICE_NAME)?
        .clone();
    Some(ServiceKey {
        namespace: ns,
        name,
    })
}

fn annotation(o: &DynamicObject, key: &str, skips: &mut Vec<Skip>, node: &str) -> Option<String> {
    let v = o.metadata.annotations.as_ref()?.get(key)?;
    if v.len() > MAX_ANNOTATION_VALUE {
        skips.push(Skip::new(
            SkipReason::Malformed,
            format!("Node {node}: annotation {key} is {} bytes long", v.len()),
        ));
        return None;
    }
    Some(v.clone())
}

/// Converts a Node object into its record: the spec's pod subnets inside the pod CIDRs, and our
/// two annotations (every other annotation is left behind).
pub fn node_record(o: &DynamicObject, trust: Trust<'_>) -> Converted<NodeRecord> {
    let Some(name) = o.metadata.name.clone() else {
        return Converted::refused(SkipReason::Malformed, "Node without metadata.name".into());
    };
    if !is_dns1123_subdomain(&name) {
        return Converted::refused(
            SkipReason::InvalidNodeName,
            format!(
                "Node {}: the name is not a DNS-1123 subdomain",
                shown(&name)
            ),
        );
    }
    let raw = match node_cidrs(o) {
        Ok(r) => r,
        Err(Bad(why)) => {
            return Converted::refused(SkipReason::Malformed, format!("Node {name}: {why}"))
        }
    };
    if raw.len() > MAX_NODE_POD_CIDRS {
        return Converted::refused(
            SkipReason::Malformed,
            format!("Node {name}: {} podCIDRs", raw.len()),
        );
    }
    let mut skips = Vec::new();
    let mut pod_cidrs = Vec::new();
    for s in raw {
        if let Some(net) = trusted_subnet(&name, s, trust, &mut skips) {
            if !pod_cidrs.contains(&net) {
                pod_cidrs.push(net);
            }
        }
    }
    let public_key = annotation(o, ANNOTATION_PUBLIC_KEY, &mut skips, &name);
    let endpoint = annotation(o, ANNOTATION_ENDPOINT, &mut skips, &name);
    Converted {
        value: Some(NodeRecord {
            name,
            pod_cidrs,
            public_key,
            endpoint,
        }),
        skips,
    }
}

fn node_cidrs(o: &DynamicObject) -> Result<Vec<&str>, Bad> {
    let Some(spec) = opt_obj(data(o)?, "spec")? else {
        return Ok(Vec::new());
    };
    let list = opt_arr(spec, "podCIDRs")?;
    if list.is_empty() {
        return Ok(opt_str(spec, "podCIDR")?.into_iter().collect());
    }
    list.iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| Bad("podCIDRs holds a non-string".into()))
        })
        .collect()
}

fn trusted_subnet(node: &str, s: &str, trust: Trust<'_>, skips: &mut Vec<Skip>) -> Option<IpNet> {
    let Ok(net) = s.parse::<IpNet>() else {
        skips.push(Skip::new(
            SkipReason::Malformed,
            format!("Node {node}: bad pod subnet {}", shown(s)),
        ));
        return None;
    };
    let net = net.trunc();
    if trust.pod_cidrs.iter().any(|p| p.contains(&net)) {
        Some(net)
    } else {
        skips.push(Skip::new(
            SkipReason::NodeSubnetOutsidePodCidrs,
            format!("Node {node}: pod subnet {net} outside the pod CIDRs"),
        ));
        None
    }
}

/// Converts a HostSubnet object (only `host` and `subnet` are read).
pub fn host_subnet(o: &DynamicObject) -> Converted<HostSubnet> {
    let name = o.metadata.name.as_deref().unwrap_or("<unnamed>");
    let parsed = data(o).and_then(|d| Ok((opt_str(d, "host")?, opt_str(d, "subnet")?)));
    if !is_dns1123_subdomain(name) {
        return Converted::refused(
            SkipReason::Malformed,
            format!(
                "HostSubnet {}: the name is not a DNS-1123 subdomain",
                shown(name)
            ),
        );
    }
    match parsed {
        Err(Bad(why)) => Converted::refused(
            SkipReason::Malformed,
            format!("HostSubnet {}: {why}", shown(name)),
        ),
        Ok((Some(host), _)) if !is_dns1123_subdomain(host) => Converted::refused(
            SkipReason::InvalidNodeName,
            format!(
                "HostSubnet {}: host {} is not a DNS-1123 subdomain",
                shown(name),
                shown(host)
            ),
        ),
        Ok((host, subnet)) => Converted {
            value: Some(HostSubnet {
                host: host.unwrap_or_default().to_string(),
                subnet: subnet.unwrap_or_default().to_string(),
            }),
            skips: Vec::new(),
        },
    }
}

/// The snapshot Node of `rec` with the subnets of the OpenShift HostSubnets naming it as
/// `host` (at most [`MAX_HOST_SUBNETS_PER_NODE`] are read). Subnets outside the pod CIDRs are
/// dropped; the node itself stays (its annotations still describe a peer, just with fewer
/// allowed IPs).
pub fn node(rec: &NodeRecord, host_subnets: &[&HostSubnet], trust: Trust<'_>) -> Converted<Node> {
    let mut skips = Vec::new();
    let mut pod_cidrs = rec.pod_cidrs.clone();
    for h in host_subnets.iter().take(MAX_HOST_SUBNETS_PER_NODE) {
        if let Some(net) = trusted_subnet(&rec.name, &h.subnet, trust, &mut skips) {
            if !pod_cidrs.contains(&net) {
                pod_cidrs.push(net);
            }
        }
    }
    if host_subnets.len() > MAX_HOST_SUBNETS_PER_NODE {
        skips.push(Skip::new(
            SkipReason::Malformed,
            format!(
                "Node {}: more than {MAX_HOST_SUBNETS_PER_NODE} HostSubnets name it; only the first {MAX_HOST_SUBNETS_PER_NODE} by name are read",
                rec.name,
            ),
        ));
    }
    pod_cidrs.sort();
    Converted {
        value: Some(Node {
            name: rec.name.clone(),
            pod_cidrs,
            wireguard_public_key: rec.public_key.clone(),
            wireguard_endpoint: rec.endpoint.clone(),
        }),
        skips,
    }
}

#[cfg(test)]
mod tests;
