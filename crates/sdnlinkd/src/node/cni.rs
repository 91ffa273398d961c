//! What the host's network plugin means for sdnlinkd's routes, as far as the host's links tell.
//! sdnlinkd's routes live in the host routing table; a plugin whose pod egress bypasses it never
//! reaches them. OVN-Kubernetes does in its default shared gateway mode (OVS sends pod egress
//! straight out of `br-ex`) and does not in local gateway mode (`routingViaHost: true`), where
//! egress enters the host through the management port. Both modes create that port, so its
//! presence is a reason to warn, not proof of a fault: the mode lives in the cluster's operator
//! config, which the daemon's RBAC does not read.

/// OVN-Kubernetes' management port on every node.
pub const OVN_MANAGEMENT_PORT: &str = "ovn-k8s-mp0";

/// A warning for the operator when `links` (host interface names) show a plugin whose pod
/// egress may bypass the host routing table.
pub fn routing_warning<S: AsRef<str>>(links: &[S]) -> Option<String> {
    links
        .iter()
        .any(|l| l.as_ref() == OVN_MANAGEMENT_PORT)
        .then(|| {
            format!(
                "OVN-Kubernetes on this node ({OVN_MANAGEMENT_PORT}): pods reach sdnlinkd's routes only \
                 in local gateway mode; check `oc get network.operator cluster -o \
                 jsonpath='{{.spec.defaultNetwork.ovnKubernetesConfig.gatewayConfig.routingViaHost}}'` \
                 is true (README, \"On OpenShift\")"
            )
        })
}

/// The host's interface names (this process's network namespace, per /sys/class/net).
pub fn host_links() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.filter_map(|e| e.ok().and_then(|e| e.file_name().into_string().ok()))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_ovn_management_port_warns_and_the_warning_names_the_setting() {
        assert_eq!(routing_warning(&["lo", "eth0", "tun0", "br0"]), None);
        assert_eq!(routing_warning::<&str>(&[]), None);
        let w = routing_warning(&["lo", "br-ex", "ovn-k8s-mp0"]).expect("OVN-Kubernetes");
        assert!(
            w.contains("ovn-k8s-mp0") && w.contains("gatewayConfig.routingViaHost"),
            "{w}"
        );
        assert!(w.contains("jsonpath='{.spec."), "{w}");
    }
}
