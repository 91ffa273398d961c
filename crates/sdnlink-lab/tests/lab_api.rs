//! Root test: the lab's API servers (SimApi in the underlay namespace) answer a node namespace
//! that uses the kubeconfig the lab generates, with the default manifests loaded.

// The daemon crate's root-test helpers (leftover namespaces of an aborted run).
#[path = "../../sdnlinkd/tests/common/mod.rs"]
mod common;
use common::remove_leftover_namespaces;
use sdnlink_lab::api::{Access, LabApi};
use sdnlink_lab::kubeprobe;
use sdnlink_lab::run::{Lab, Options};
use sdnlink_lab::topology::{Proxy, Tunnel};
use std::path::Path;

#[test]
fn root_lab_api_servers_answer_nodes_with_the_generated_kubeconfig() {
    let root = tempfile::tempdir().expect("temp dir");
    let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lab");
    remove_leftover_namespaces("laba-");
    let opts = Options {
        clusters: 2,
        prefix: "laba-".into(),
        state_root: root.path().to_path_buf(),
        manifests: manifests.clone(),
        daemon: None,
        tunnel: Tunnel::Userspace,
        proxy: Proxy::Nftables,
        openshift: Vec::new(),
    };
    let lab = Lab::topology(&opts).expect("topology up");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let apis: Vec<LabApi> = lab
        .plan
        .clusters
        .iter()
        .map(|c| LabApi::start(&lab.plan, c, &manifests.join(&c.name), &rt).expect("API server"))
        .collect();
    for (c, api) in lab.plan.clusters.iter().zip(&apis) {
        let kubeconfig = api.kubeconfig_yaml(Access::Local);
        // Every node of every cluster reaches every API server over the underlay.
        for node in lab.plan.nodes() {
            let (status, body) = kubeprobe::get(&node.netns, &kubeconfig, "/api/v1/nodes")
                .unwrap_or_else(|e| panic!("{} -> {}: {e}", node.name, api.url));
            assert_eq!(status, 200, "{body}");
            let v: serde_json::Value = serde_json::from_str(&body).expect("JSON NodeList");
            let mut names: Vec<&str> = v["items"]
                .as_array()
                .expect("items")
                .iter()
                .filter_map(|n| n["metadata"]["name"].as_str())
                .collect();
            names.sort();
            let want: Vec<&str> = c.nodes.iter().map(|n| n.name.as_str()).collect();
            assert_eq!(names, want);
        }
        // The token is what admits the request.
        let forged = kubeconfig.replace("token: ", "token: x");
        let (status, _) = kubeprobe::get(&c.nodes[0].netns, &forged, "/api/v1/nodes")
            .expect("the server answers");
        assert_eq!(status, 401);
        // The hostile Service is served (the daemon, not the server, must refuse it); the
        // local role lists Services but does not get one by name.
        let (status, body) = kubeprobe::get(
            &c.nodes[0].netns,
            &kubeconfig,
            "/api/v1/namespaces/lab/services",
        )
        .expect("list services");
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains("\"hostile\"") && body.contains("10.250."),
            "{body}"
        );
        // The remote ServiceAccount holds packaging/rbac.yaml's sdnlinkd-remote role: it lists
        // but may not get one object, and the 403 names the verb and the resource.
        let remote = api.kubeconfig_yaml(Access::Remote);
        let (status, _) =
            kubeprobe::get(&c.nodes[0].netns, &remote, "/api/v1/services").expect("list services");
        assert_eq!(status, 200);
        let (status, body) = kubeprobe::get(
            &c.nodes[0].netns,
            &remote,
            "/api/v1/namespaces/lab/services/hostile",
        )
        .expect("GET hostile");
        assert_eq!(status, 403, "{body}");
        assert!(
            body.contains(
                "User \\\"system:serviceaccount:sdnlink:sdnlinkd-remote\\\" cannot get resource \\\"services\\\""
            ),
            "{body}"
        );
    }
    assert_eq!(
        apis.iter().map(LabApi::denials).sum::<u64>(),
        apis.len() as u64
    );
    drop(apis);
    let problems = lab.down();
    assert!(problems.is_empty(), "{problems:?}");
}
