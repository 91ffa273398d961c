//! EndpointSlice conversion into its record (ports kept once, endpoints compact), and the
//! merge of a Service's slices into snapshot endpoints.

use super::fields::{as_obj, data, opt_arr, opt_bool, opt_int, opt_obj, opt_str, port_u16, Bad};
use super::names::{is_dns1035_label, is_dns1123_label, is_dns1123_subdomain, namespaced};
use super::{
    in_any, shown, Converted, Interner, Skip, SkipReason, Trust, LABEL_SERVICE_NAME,
    MAX_ENDPOINT_ADDRESSES, MAX_SLICE_ENDPOINTS, MAX_SLICE_PORTS,
};
use crate::model::{Endpoint, EndpointPort, Protocol, ServiceKey};
use kube::core::DynamicObject;
use std::mem::size_of;
use std::net::IpAddr;
use std::sync::Arc;

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
