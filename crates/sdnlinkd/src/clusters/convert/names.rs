//! The object-name rules of the Kubernetes API server (DNS-1123/1035 labels and subdomains),
//! and the namespace/name check every namespaced object passes.

use super::{shown, Skip, SkipReason};
use kube::core::DynamicObject;

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

/// Namespace and name of a namespaced object, checked: `Err` is the refusal.
pub(super) fn namespaced(o: &DynamicObject, kind: &str) -> Result<(String, String), Skip> {
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
