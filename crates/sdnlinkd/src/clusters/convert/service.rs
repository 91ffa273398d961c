//! Service conversion into its record, and its assembly with the endpoints of its slices
//! into the snapshot Service.

use super::fields::{as_obj, data, field, opt_arr, opt_int, opt_obj, opt_str, port_u16, Bad};
use super::names::{is_dns1035_label, is_dns1123_label, is_dns1123_subdomain, namespaced};
use super::slice::{merge_endpoints, slice_record, SliceRecord};
use super::{
    in_any, shown, Converted, Interner, Skip, SkipReason, Trust, DEFAULT_AFFINITY_TIMEOUT,
    MAX_CLUSTER_IPS, MAX_SERVICE_PORTS,
};
use crate::model::{Protocol, Service, ServiceKey, ServiceKind, ServicePort, TargetPort};
use kube::core::DynamicObject;
use serde_json::Value;
use std::net::IpAddr;

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
