//! Root tests of the lab's topology (no daemons): namespaces, pod servers, routing inside a
//! cluster, the upstream DNS server, and that `down` leaves nothing behind. Each test uses its
//! own name prefix so they run in parallel with each other and with other labs.

// The daemon crate's root-test helpers (leftover namespaces of an aborted run).
#[path = "../../sdnlinkd/tests/common/mod.rs"]
mod common;
use common::remove_leftover_namespaces;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use sdnlink_lab::checks::Pods;
use sdnlink_lab::dns;
use sdnlink_lab::net::netns_exists;
use sdnlink_lab::run::{Lab, Options};
use sdnlink_lab::topology::{Proxy, Tunnel, FORWARDED_ADDR, FORWARDED_NAME, POD_PORT};
use sdnlink_lab::LabError;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

fn options(prefix: &str, root: &Path) -> Options {
    Options {
        clusters: 2,
        prefix: prefix.into(),
        state_root: root.to_path_buf(),
        manifests: Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lab"),
        daemon: None,
        tunnel: Tunnel::Userspace,
        proxy: Proxy::Nftables,
        openshift: Vec::new(),
    }
}

fn leftover_namespaces(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn root_lab_topology_serves_pods_and_down_leaves_nothing() {
    let root = tempfile::tempdir().expect("temp dir");
    let prefix = "labt-";
    remove_leftover_namespaces(prefix);
    let opts = options(prefix, root.path());
    let lab = Lab::topology(&opts).expect("topology up");
    let plan = lab.plan.clone();
    for ns in plan.lab_namespaces() {
        assert!(netns_exists(&ns), "{ns} missing");
    }
    assert!(plan.state_file().exists());

    let pods = Pods::open(&plan).expect("pod namespaces");
    let east = &plan.clusters[0];
    let west = &plan.clusters[1];
    let p1 = &east.nodes[0].pods[0];
    let p2 = &east.nodes[0].pods[1];
    let other_node = &east.nodes[1].pods[1];

    // Inside one node: the node routes its pods.
    let to = SocketAddr::from((p2.addr, POD_PORT));
    assert_eq!(pods.tcp(p1, to).as_deref(), Ok(p2.name.as_str()));
    assert_eq!(pods.udp(p1, to).as_deref(), Ok(p2.name.as_str()));
    // Across nodes of one cluster: over the underlay, as the CNI would.
    let to = SocketAddr::from((other_node.addr, POD_PORT));
    assert_eq!(pods.tcp(p1, to).as_deref(), Ok(other_node.name.as_str()));
    assert_eq!(pods.udp(p1, to).as_deref(), Ok(other_node.name.as_str()));
    // Across clusters there is no path without sdnlinkd: the checks can only pass through it.
    let to = SocketAddr::from((west.nodes[0].pods[0].addr, POD_PORT));
    assert!(
        pods.tcp(p1, to).is_err(),
        "cross-cluster traffic without a daemon"
    );

    // The upstream DNS server answers from a node namespace (where the daemon forwards from).
    let node_ns = &east.nodes[1].netns;
    let m = dns::query(
        node_ns,
        plan.upstream_dns(),
        FORWARDED_NAME,
        RecordType::A,
        Duration::from_secs(2),
    )
    .expect("upstream answers");
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m
        .answers
        .iter()
        .any(|r| matches!(&r.data, RData::A(a) if a.0 == FORWARDED_ADDR)));
    let m = dns::query(
        node_ns,
        plan.upstream_dns(),
        "nothing.lab.test.",
        RecordType::A,
        Duration::from_secs(2),
    )
    .expect("upstream answers");
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);

    let problems = lab.down();
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(leftover_namespaces(prefix), Vec::<String>::new());
    assert!(!plan.state_dir.exists());
}

#[test]
fn root_lab_refuses_a_second_lab_and_cleans_up_on_drop() {
    let root = tempfile::tempdir().expect("temp dir");
    let prefix = "labu-";
    remove_leftover_namespaces(prefix);
    let opts = options(prefix, root.path());
    {
        let lab = Lab::topology(&opts).expect("topology up");
        match Lab::topology(&opts) {
            Err(LabError::AlreadyUp(p)) => assert_eq!(p, lab.plan.state_file()),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a second lab with the same prefix came up"),
        }
        // The first lab is untouched by the refused second one.
        for ns in lab.plan.lab_namespaces() {
            assert!(netns_exists(&ns), "{ns} missing");
        }
        // Dropped without down (as on a panic): the namespaces still go.
    }
    assert_eq!(leftover_namespaces(prefix), Vec::<String>::new());
}
