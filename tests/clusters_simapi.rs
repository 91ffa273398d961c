//! The simulated API server's protocol, checked with kube-rs's own client (no ClusterSet):
//! paging, watch events, bookmarks, 410 Gone, 401, discovery and merge patch.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{
    Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use sdnlinkd::clusters::simapi::SimApi;
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

const TOKEN: &str = "simapi-test-token";

async fn client(sim: &SimApi, token: &str) -> Client {
    let yaml = sim.kubeconfig_yaml(&sim.url()).replace(TOKEN, token);
    let kc = Kubeconfig::from_yaml(&yaml).expect("kubeconfig parses");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("client config");
    Client::try_from(cfg).expect("client")
}

fn start() -> SimApi {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clusters/east");
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    SimApi::start(l, Some(&dir), TOKEN).expect("simapi")
}

async fn next_event(
    w: &mut (impl futures::Stream<Item = kube::Result<WatchEvent<DynamicObject>>> + Unpin),
) -> WatchEvent<DynamicObject> {
    tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("an event within 10 s")
        .expect("stream open")
        .expect("event decodes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_watch_bookmarks_and_gone() {
    let sim = start();
    let c = client(&sim, TOKEN).await;
    let api: Api<DynamicObject> = Api::all_with(c.clone(), &ApiResource::erase::<Service>(&()));

    let p1 = api
        .list(&ListParams::default().limit(2))
        .await
        .expect("page 1");
    let cont = p1.metadata.continue_.clone().expect("a continue token");
    let p2 = api
        .list(&ListParams::default().limit(2).continue_token(&cont))
        .await
        .expect("page 2");
    assert_eq!(p1.items.len(), 2);
    assert_eq!(p2.items.len(), 1);
    assert!(p2.metadata.continue_.as_deref().unwrap_or("").is_empty());
    assert_eq!(p1.metadata.resource_version, p2.metadata.resource_version);
    let mut names: Vec<String> = p1
        .items
        .iter()
        .chain(&p2.items)
        .filter_map(|o| o.metadata.name.clone())
        .collect();
    names.sort();
    assert_eq!(names, ["db", "search", "web"]);
    let rv = p1.metadata.resource_version.clone().expect("list version");

    // A change after the list arrives on a watch from the list's version, then a bookmark
    // carrying a version at least as new.
    let mut w = api
        .watch(&WatchParams::default(), &rv)
        .await
        .expect("watch")
        .boxed();
    assert!(sim.delete("Service", "shop", "search"));
    let mut ev = next_event(&mut w).await;
    while matches!(ev, WatchEvent::Bookmark(_)) {
        ev = next_event(&mut w).await;
    }
    let deleted_rv = match ev {
        WatchEvent::Deleted(o) => {
            assert_eq!(o.metadata.name.as_deref(), Some("search"));
            o.metadata
                .resource_version
                .expect("version")
                .parse::<u64>()
                .expect("numeric")
        }
        other => panic!("expected Deleted, got {other:?}"),
    };
    match next_event(&mut w).await {
        WatchEvent::Bookmark(b) => {
            assert!(b.metadata.resource_version.parse::<u64>().expect("numeric") >= deleted_rv)
        }
        other => panic!("expected Bookmark, got {other:?}"),
    }
    // A watch from the old version replays the history.
    let mut replay = api
        .watch(&WatchParams::default(), &rv)
        .await
        .expect("watch")
        .boxed();
    assert!(matches!(
        next_event(&mut replay).await,
        WatchEvent::Deleted(_)
    ));

    // After compaction the old version has expired: 410 inside the stream, and the open
    // watch is closed so its client notices.
    sim.compact();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match w.try_next().await {
                Ok(Some(WatchEvent::Bookmark(_))) => continue,
                Ok(None) | Err(_) => return,
                Ok(Some(other)) => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "open watch closed by compaction");
    let mut w = api
        .watch(&WatchParams::default(), &rv)
        .await
        .expect("watch")
        .boxed();
    match next_event(&mut w).await {
        WatchEvent::Error(s) => assert_eq!(s.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_discovery_get_and_merge_patch() {
    let sim = start();
    let bad = client(&sim, "wrong").await;
    let nodes_bad: Api<Node> = Api::all(bad);
    match nodes_bad.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 401),
        other => panic!("expected 401, got {:?}", other.map(|l| l.items.len())),
    }

    let c = client(&sim, TOKEN).await;
    match c.list_api_group_resources("network.openshift.io/v1").await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 404),
        other => panic!("no HostSubnets loaded: expected 404, got {other:?}"),
    }
    sim.apply_yaml(
        "apiVersion: network.openshift.io/v1\nkind: HostSubnet\nmetadata: {name: east-1}\nhost: east-1\nsubnet: 10.132.1.0/24\n",
    )
    .expect("apply");
    let list = c
        .list_api_group_resources("network.openshift.io/v1")
        .await
        .expect("discovery after a HostSubnet exists");
    assert!(list.resources.iter().any(|r| r.name == "hostsubnets"));

    let nodes: Api<Node> = Api::all(c);
    let n = nodes.get("east-1").await.expect("get node");
    assert_eq!(
        n.spec.and_then(|s| s.pod_cidr).as_deref(),
        Some("10.132.1.0/24")
    );
    let patch = serde_json::json!({"metadata": {"annotations": {"a": "1", "sdnlink.io/wireguard-endpoint": null}}});
    let after = nodes
        .patch("east-1", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .expect("patch");
    let ann = after.metadata.annotations.expect("annotations");
    assert_eq!(ann.get("a").map(String::as_str), Some("1"));
    assert!(
        !ann.contains_key("sdnlink.io/wireguard-endpoint"),
        "null removes"
    );
    assert!(
        ann.contains_key("sdnlink.io/wireguard-public-key"),
        "others kept"
    );
    assert_eq!(
        sim.get_node("east-1").expect("node")["metadata"]["annotations"]["a"],
        "1"
    );
    match nodes.get("nope").await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 404),
        other => panic!("expected 404, got {:?}", other.map(|n| n.metadata.name)),
    }
    sim.shutdown().await;
}
