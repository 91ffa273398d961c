//! The default manifests (tests/lab/<cluster>/*.yaml) as a function of the plan, so their pod
//! addresses and node subnets always match the topology. `sdnlink-lab manifests --out DIR`
//! rewrites them; a test keeps the checked-in copies equal to this output.

use super::plan::{Cluster, Pod, K8S_NAMESPACE, POD_PORT};
use std::net::Ipv4Addr;

/// Services every cluster serves (names are the same in every cluster so `cluster.all` merges).
pub mod svc {
    /// TCP and UDP, all pods of the cluster: load balancing and pod-name answers.
    pub const ECHO: &str = "echo";
    /// ClientIP affinity, all pods.
    pub const STICKY: &str = "sticky";
    /// Endpoints scaled down and up by the churn check.
    pub const CHURN: &str = "churn";
    /// `clusterIP: None`.
    pub const HEADLESS: &str = "headless";
    /// `type: ExternalName` to the upstream's test name.
    pub const EXTERNAL: &str = "ext";
    /// ClusterIP outside the cluster's service CIDR: must never be programmed.
    pub const HOSTILE: &str = "hostile";
}

/// Service port every proxied lab Service exposes.
pub const SERVICE_PORT: u16 = 80;

/// ClusterIP of a lab service in `cluster` (the `.0.N` addresses of its service CIDR).
pub fn cluster_ip(cluster: &Cluster, name: &str) -> Option<Ipv4Addr> {
    let o = cluster.service_cidr.network().octets();
    let last = match name {
        svc::ECHO => 10,
        svc::STICKY => 11,
        svc::CHURN => 12,
        // Outside every lab service CIDR (10.110-10.140/16): the trust rule must drop it.
        svc::HOSTILE => return Some(Ipv4Addr::new(10, 250, o[1], 10)),
        _ => return None,
    };
    Some(Ipv4Addr::new(o[0], o[1], 0, last))
}

/// The files of one cluster's manifest directory: (file name, YAML).
pub fn cluster_files(cluster: &Cluster) -> Vec<(String, String)> {
    vec![
        ("nodes.yaml".into(), nodes_yaml(cluster)),
        ("services.yaml".into(), services_yaml(cluster)),
        ("endpointslices.yaml".into(), slices_yaml(cluster)),
    ]
}

fn nodes_yaml(cluster: &Cluster) -> String {
    let mut s = String::new();
    for n in &cluster.nodes {
        s.push_str(&format!(
            "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: {}\n  labels:\n    kubernetes.io/hostname: {}\nspec:\n  podCIDR: {}\n  podCIDRs:\n  - {}\n",
            n.name, n.name, n.pod_subnet, n.pod_subnet
        ));
    }
    s
}

fn service_header(name: &str) -> String {
    format!("---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {K8S_NAMESPACE}\nspec:\n")
}

fn port(name: &str, proto: &str, port: u16, target: u16) -> String {
    format!("  - name: {name}\n    protocol: {proto}\n    port: {port}\n    targetPort: {target}\n")
}

fn services_yaml(cluster: &Cluster) -> String {
    let ip = |n| {
        cluster_ip(cluster, n)
            .expect("every proxied lab service has a ClusterIP")
            .to_string()
    };
    let mut s = String::new();
    s.push_str(&service_header(svc::ECHO));
    s.push_str(&format!(
        "  type: ClusterIP\n  clusterIP: {}\n  clusterIPs:\n  - {}\n  ports:\n",
        ip(svc::ECHO),
        ip(svc::ECHO)
    ));
    s.push_str(&port("tcp", "TCP", SERVICE_PORT, POD_PORT));
    s.push_str(&port("udp", "UDP", SERVICE_PORT, POD_PORT));
    s.push_str(&service_header(svc::STICKY));
    s.push_str(&format!(
        "  type: ClusterIP\n  clusterIP: {}\n  clusterIPs:\n  - {}\n  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 600\n  ports:\n",
        ip(svc::STICKY), ip(svc::STICKY)
    ));
    s.push_str(&port("tcp", "TCP", SERVICE_PORT, POD_PORT));
    s.push_str(&service_header(svc::CHURN));
    s.push_str(&format!(
        "  type: ClusterIP\n  clusterIP: {}\n  clusterIPs:\n  - {}\n  ports:\n",
        ip(svc::CHURN),
        ip(svc::CHURN)
    ));
    s.push_str(&port("tcp", "TCP", SERVICE_PORT, POD_PORT));
    s.push_str(&service_header(svc::HEADLESS));
    s.push_str("  clusterIP: None\n  clusterIPs:\n  - None\n  ports:\n");
    s.push_str(&port("tcp", "TCP", POD_PORT, POD_PORT));
    s.push_str(&service_header(svc::EXTERNAL));
    s.push_str("  type: ExternalName\n  externalName: forwarded.lab.test\n");
    s.push_str("# Hostile: its ClusterIP lies outside this cluster's service CIDR.\n");
    s.push_str(&service_header(svc::HOSTILE));
    s.push_str(&format!(
        "  type: ClusterIP\n  clusterIP: {}\n  clusterIPs:\n  - {}\n  ports:\n",
        ip(svc::HOSTILE),
        ip(svc::HOSTILE)
    ));
    s.push_str(&port("tcp", "TCP", SERVICE_PORT, POD_PORT));
    s
}

/// An EndpointSlice of service `service` holding `pods` (all ready), with the TCP port and,
/// when `udp`, the UDP port.
pub fn endpoint_slice_yaml(service: &str, pods: &[(&str, &Pod)], udp: bool) -> String {
    let mut s = format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-lab\n  namespace: {K8S_NAMESPACE}\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: IPv4\nendpoints:\n"
    );
    if pods.is_empty() {
        s.truncate(s.len() - 1);
        s.push_str(" []\n");
    }
    for (node, pod) in pods {
        s.push_str(&format!(
            "- addresses:\n  - {}\n  hostname: {}\n  nodeName: {}\n  conditions:\n    ready: true\n    serving: true\n    terminating: false\n",
            pod.addr, pod.name, node
        ));
    }
    s.push_str(&format!(
        "ports:\n- name: tcp\n  protocol: TCP\n  port: {POD_PORT}\n"
    ));
    if udp {
        s.push_str(&format!(
            "- name: udp\n  protocol: UDP\n  port: {POD_PORT}\n"
        ));
    }
    s
}

fn slices_yaml(cluster: &Cluster) -> String {
    let pods: Vec<(&str, &Pod)> = cluster
        .nodes
        .iter()
        .flat_map(|n| n.pods.iter().map(move |p| (n.name.as_str(), p)))
        .collect();
    let mut s = String::new();
    s.push_str(&endpoint_slice_yaml(svc::ECHO, &pods, true));
    s.push_str(&endpoint_slice_yaml(svc::STICKY, &pods, false));
    s.push_str(&endpoint_slice_yaml(svc::CHURN, &pods, false));
    s.push_str(&endpoint_slice_yaml(svc::HEADLESS, &pods, false));
    s.push_str(&endpoint_slice_yaml(svc::HOSTILE, &pods, false));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::plan::{Plan, Proxy, Tunnel};
    use std::path::Path;

    fn plan() -> Plan {
        Plan::new(
            crate::lab::plan::CLUSTER_NAMES.len(),
            "lab-",
            Path::new("/run/sdnlink-lab"),
            Tunnel::Userspace,
            Proxy::Nftables,
        )
        .expect("valid lab parameters")
    }

    fn docs(yaml: &str) -> Vec<serde_yaml::Value> {
        yaml.split("\n---\n")
            .map(|d| d.trim_start_matches("---\n"))
            .filter(|d| !d.trim().is_empty())
            .map(|d| serde_yaml::from_str(d).expect("generated YAML parses"))
            .collect()
    }

    #[test]
    fn cluster_ips_lie_in_their_service_cidr_except_the_hostile_one() {
        let p = plan();
        for c in &p.clusters {
            for name in [svc::ECHO, svc::STICKY, svc::CHURN] {
                let ip = cluster_ip(c, name).expect("proxied service");
                assert!(c.service_cidr.contains(&ip), "{name} {ip}");
            }
            let hostile = cluster_ip(c, svc::HOSTILE).expect("hostile service");
            assert!(p
                .clusters
                .iter()
                .all(|o| !o.service_cidr.contains(&hostile) && !o.pod_cidr.contains(&hostile)));
        }
    }

    #[test]
    fn manifests_use_the_plans_pod_addresses_and_node_subnets() {
        let p = plan();
        for c in &p.clusters {
            let files = cluster_files(c);
            let nodes = docs(&files[0].1);
            assert_eq!(nodes.len(), c.nodes.len());
            for (doc, node) in nodes.iter().zip(&c.nodes) {
                assert_eq!(doc["metadata"]["name"].as_str(), Some(node.name.as_str()));
                assert_eq!(
                    doc["spec"]["podCIDRs"][0].as_str(),
                    Some(node.pod_subnet.to_string().as_str())
                );
            }
            let services = docs(&files[1].1);
            assert_eq!(services.len(), 6);
            let slices = docs(&files[2].1);
            let want: Vec<String> = c
                .nodes
                .iter()
                .flat_map(|n| n.pods.iter().map(|p| p.addr.to_string()))
                .collect();
            for slice in &slices {
                let got: Vec<String> = slice["endpoints"]
                    .as_sequence()
                    .expect("endpoints list")
                    .iter()
                    .map(|e| e["addresses"][0].as_str().unwrap_or_default().to_string())
                    .collect();
                assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn empty_slice_is_valid_yaml_with_no_endpoints() {
        let y = endpoint_slice_yaml(svc::CHURN, &[], false);
        let d = docs(&y);
        assert_eq!(d[0]["endpoints"].as_sequence().map(|s| s.len()), Some(0));
    }

    #[test]
    fn checked_in_default_manifests_match_the_plan() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lab");
        for c in &plan().clusters {
            for (file, text) in cluster_files(c) {
                let path = root.join(&c.name).join(&file);
                let on_disk = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert_eq!(
                    on_disk,
                    text,
                    "{} is stale: run `sdnlink-lab manifests --out tests/lab`",
                    path.display()
                );
            }
        }
    }
}
