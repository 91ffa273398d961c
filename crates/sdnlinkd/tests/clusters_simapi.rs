//! The simulated API server's protocol, checked with kube-rs's own client (no ClusterSet):
//! paging, watch events, bookmarks, 410 Gone, 401, discovery and merge patch.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{
    Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use sdnlink_simapi::SimApi;
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

    // The ClusterNetwork an operator reads the pod and service networks from, cluster-scoped.
    sim.apply_yaml(
        "apiVersion: network.openshift.io/v1\nkind: ClusterNetwork\nmetadata: {name: default}\nclusterNetworks:\n- {CIDR: 10.128.0.0/14, hostSubnetLength: 9}\nserviceNetwork: 172.30.0.0/16\n",
    )
    .expect("apply ClusterNetwork");
    let list = c
        .list_api_group_resources("network.openshift.io/v1")
        .await
        .expect("discovery");
    assert!(list
        .resources
        .iter()
        .any(|r| r.name == "clusternetworks" && !r.namespaced));
    let ar = kube::discovery::ApiResource {
        group: "network.openshift.io".into(),
        version: "v1".into(),
        api_version: "network.openshift.io/v1".into(),
        kind: "ClusterNetwork".into(),
        plural: "clusternetworks".into(),
    };
    let cns: Api<kube::api::DynamicObject> = Api::all_with(c.clone(), &ar);
    let cn = cns.get("default").await.expect("get ClusterNetwork");
    assert_eq!(cn.data["serviceNetwork"], "172.30.0.0/16");
    assert_eq!(cn.data["clusterNetworks"][0]["CIDR"], "10.128.0.0/14");

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

fn write(dir: &Path, file: &str, text: &str) {
    std::fs::write(dir.join(file), text).expect("write manifest");
}

/// A manifest directory with bad documents among good ones: each bad one is refused with its
/// file, document index, line and reason, and every other document loads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_documents_are_refused_one_by_one_and_the_rest_loads() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let good_node =
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nspec: {podCIDRs: [10.1.0.0/24]}\n";
    write(
        tmp.path(),
        "a.yaml",
        &format!(
            "{good_node}---\nkind: Node\nmetadata: {{name: no-version}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: s1, namespace: x}}\nspec: {{ports: [{{port: 80}}]}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{namespace: x}}\nspec: {{}}\n"
        ),
    );
    write(
        tmp.path(),
        "b.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: typed, namespace: x}\nspec: {ports: [{port: \"eighty\"}]}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: [broken\n---\napiVersion: v1\nkind: Node\nmetadata: {name: n2}\n",
    );
    write(tmp.path(), "c.yaml", "apiVersion: v1\nkind\n  : : nope\n");
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let sim = SimApi::start(l, Some(tmp.path()), TOKEN).expect("a bad document does not abort");
    assert_eq!(sim.object_count(), 3, "n1, s1 and n2 load");
    let refused = sim.refused();
    let lines: Vec<String> = refused.iter().map(|r| r.to_string()).collect();
    assert_eq!(refused.len(), 5, "{lines:#?}");
    let find = |file: &str, doc: usize| {
        refused
            .iter()
            .find(|r| r.file.ends_with(file) && r.document == doc)
            .unwrap_or_else(|| panic!("no refusal of {file} document {doc}: {lines:#?}"))
    };
    assert!(find("a.yaml", 2).reason.contains("missing apiVersion"));
    assert_eq!(find("a.yaml", 2).line, 6);
    assert!(find("a.yaml", 4).reason.contains("missing metadata.name"));
    assert!(find("b.yaml", 1).reason.contains("spec.ports[0].port"));
    assert!(find("b.yaml", 2).reason.starts_with("YAML syntax error"));
    assert!(find("c.yaml", 1).reason.starts_with("YAML syntax error"));
    // What a client sees is exactly what loaded.
    let c = client(&sim, TOKEN).await;
    let nodes: Api<Node> = Api::all(c);
    let mut names: Vec<String> = nodes
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    names.sort();
    assert_eq!(names, ["n1", "n2"]);
    // Runtime YAML is all or nothing.
    let e = sim
        .apply_yaml(&format!(
            "{good_node}---\napiVersion: v1\nkind: Node\nmetadata: {{}}\n"
        ))
        .expect_err("one refused document refuses the text");
    assert!(e.to_string().contains("document 2"), "{e}");
    sim.shutdown().await;
}

fn svc_json(name: &str, ip: &str, port: u16) -> serde_json::Value {
    serde_json::json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": port, "protocol": "TCP"}]}})
}

/// Create, update (409 on a stale version), the three patch types, delete, each seen by a
/// watch with its resourceVersion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_update_patch_delete_over_http_with_watch_events_and_conflicts() {
    use kube::api::{DeleteParams, PostParams};
    let sim = start();
    let c = client(&sim, TOKEN).await;
    let api: Api<Service> = Api::namespaced(c.clone(), "shop");
    let rv0 = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("list version");
    let dynapi: Api<DynamicObject> =
        Api::namespaced_with(c.clone(), "shop", &ApiResource::erase::<Service>(&()));
    let mut w = dynapi
        .watch(&WatchParams::default(), &rv0)
        .await
        .expect("watch")
        .boxed();

    let new: Service = serde_json::from_value(svc_json("api", "172.31.9.9", 80)).expect("svc");
    let created = api
        .create(&PostParams::default(), &new)
        .await
        .expect("create");
    let rv1 = created.metadata.resource_version.clone().expect("version");
    match api.create(&PostParams::default(), &new).await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (409, "AlreadyExists")),
        other => panic!(
            "expected 409 AlreadyExists, got {:?}",
            other.map(|s| s.metadata.name)
        ),
    }
    // A type error is refused with the field's path.
    let bad = serde_json::json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "bad", "namespace": "shop"}, "spec": {"ports": [{"port": "x"}]}});
    let pp = PostParams::default();
    let req = kube::core::Request::new("/api/v1/namespaces/shop/services")
        .create(&pp, serde_json::to_vec(&bad).expect("json"))
        .expect("request");
    match c.request::<Service>(req).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 400);
            assert!(s.message.contains("spec.ports[0].port"), "{}", s.message);
        }
        other => panic!("expected 400, got {:?}", other.map(|s| s.metadata.name)),
    }

    // Update from the version read: accepted; again from that (now stale) version: 409.
    let mut upd = created.clone();
    upd.spec
        .as_mut()
        .expect("spec")
        .ports
        .as_mut()
        .expect("ports")[0]
        .port = 81;
    let updated = api
        .replace("api", &PostParams::default(), &upd)
        .await
        .expect("update");
    let rv2 = updated.metadata.resource_version.clone().expect("version");
    assert!(rv2.parse::<u64>().expect("n") > rv1.parse::<u64>().expect("n"));
    match api.replace("api", &PostParams::default(), &upd).await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (409, "Conflict")),
        other => panic!(
            "expected 409 Conflict, got {:?}",
            other.map(|s| s.metadata.name)
        ),
    }

    // Strategic merge merges ports on `port`; JSON merge replaces the list; JSON patch edits.
    let smp = serde_json::json!({"spec": {"ports": [{"port": 443, "name": "https"}]}});
    let s = api
        .patch("api", &PatchParams::default(), &Patch::Strategic(&smp))
        .await
        .expect("strategic merge patch");
    let ports: Vec<i32> = s
        .spec
        .expect("spec")
        .ports
        .expect("ports")
        .iter()
        .map(|p| p.port)
        .collect();
    assert_eq!(ports, [81, 443]);
    let merge = serde_json::json!({"spec": {"ports": [{"port": 8443, "name": "alt"}]}});
    let s = api
        .patch("api", &PatchParams::default(), &Patch::Merge(&merge))
        .await
        .expect("merge patch");
    let ports: Vec<i32> = s
        .spec
        .expect("spec")
        .ports
        .expect("ports")
        .iter()
        .map(|p| p.port)
        .collect();
    assert_eq!(ports, [8443]);
    let ops: json_patch::Patch = serde_json::from_value(serde_json::json!([
        {"op": "replace", "path": "/spec/clusterIP", "value": "172.31.9.10"},
        {"op": "add", "path": "/metadata/labels", "value": {"app": "api"}}
    ]))
    .expect("json patch");
    let s = api
        .patch("api", &PatchParams::default(), &Patch::<()>::Json(ops))
        .await
        .expect("json patch");
    assert_eq!(
        s.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()),
        Some("172.31.9.10")
    );
    // A patch that names an old version conflicts.
    let stale = serde_json::json!({"metadata": {"resourceVersion": rv1}, "spec": {"clusterIP": "172.31.9.11"}});
    match api
        .patch("api", &PatchParams::default(), &Patch::Merge(&stale))
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 409),
        other => panic!("expected 409, got {:?}", other.map(|s| s.metadata.name)),
    }
    // A patch that breaks the schema is refused and changes nothing.
    let broken = serde_json::json!({"spec": {"ports": "none"}});
    match api
        .patch("api", &PatchParams::default(), &Patch::Merge(&broken))
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 422, "{}", s.message),
        other => panic!("expected 422, got {:?}", other.map(|s| s.metadata.name)),
    }
    // Label selectors filter lists.
    let labelled = api
        .list(&ListParams::default().labels("app=api"))
        .await
        .expect("list by label");
    assert_eq!(labelled.items.len(), 1);

    api.delete("api", &DeleteParams::default())
        .await
        .expect("delete");
    match api.get("api").await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 404),
        other => panic!("expected 404, got {:?}", other.map(|s| s.metadata.name)),
    }

    // The watch saw every change, in order, each with a newer version.
    let mut seen = Vec::new();
    let mut last = rv0.parse::<u64>().expect("n");
    while seen.len() < 5 {
        let (kind, o) = match next_event(&mut w).await {
            WatchEvent::Added(o) => ("ADDED", o),
            WatchEvent::Modified(o) => ("MODIFIED", o),
            WatchEvent::Deleted(o) => ("DELETED", o),
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(e) => panic!("watch error {e:?}"),
        };
        let rv = o
            .metadata
            .resource_version
            .expect("version")
            .parse::<u64>()
            .expect("n");
        assert!(rv > last, "{kind} at {rv} after {last}");
        last = rv;
        seen.push(kind);
    }
    assert_eq!(
        seen,
        ["ADDED", "MODIFIED", "MODIFIED", "MODIFIED", "MODIFIED"]
    );
    loop {
        match next_event(&mut w).await {
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Deleted(o) => {
                assert_eq!(o.metadata.name.as_deref(), Some("api"));
                break;
            }
            other => panic!("expected DELETED, got {other:?}"),
        }
    }
    sim.shutdown().await;
}

/// Leaving `Unreachable` also works for a listener bound to a port the caller chose (as the
/// lab binds its API servers), which keeps its port through the shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_undoes_on_an_explicit_port() {
    use sdnlink_simapi::Fault;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clusters/east");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let l = TcpListener::bind(("127.0.0.1", port)).expect("bind the chosen port");
    let sim = SimApi::start(l, Some(&dir), TOKEN).expect("simapi");
    let addr = sim.addr();
    for _ in 0..2 {
        sim.try_set_fault(Fault::Unreachable).expect("unreachable");
        let refused = std::net::TcpStream::connect(addr).expect_err("connection refused");
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
        sim.try_set_fault(Fault::None).expect("listening again");
        std::net::TcpStream::connect(addr).expect("listening again on the same address");
    }
    sim.shutdown().await;
}

/// `Unreachable` refuses connections and cuts open watches; `Gone` answers watches with 410
/// and relists show new versions; `ok` undoes each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_refuses_connections_and_gone_expires_every_version() {
    use sdnlink_simapi::Fault;
    let sim = start();
    let addr = sim.addr();
    let c = client(&sim, TOKEN).await;
    let api: Api<DynamicObject> = Api::all_with(c.clone(), &ApiResource::erase::<Service>(&()));
    let before = api.list(&ListParams::default()).await.expect("list");
    let rv = before.metadata.resource_version.clone().expect("version");
    let mut w = api
        .watch(&WatchParams::default(), &rv)
        .await
        .expect("watch")
        .boxed();

    sim.set_fault(Fault::Unreachable);
    assert_eq!(sim.fault(), Fault::Unreachable);
    let refused = std::net::TcpStream::connect(addr).expect_err("connection refused");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
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
    assert!(ended.is_ok(), "the open watch was cut");
    assert!(api.list(&ListParams::default()).await.is_err());

    sim.set_fault(Fault::None);
    std::net::TcpStream::connect(addr).expect("listening again on the same address");
    let c = client(&sim, TOKEN).await;
    let api: Api<DynamicObject> = Api::all_with(c, &ApiResource::erase::<Service>(&()));
    let again = api
        .list(&ListParams::default())
        .await
        .expect("list after undo");
    assert_eq!(again.items.len(), before.items.len());

    sim.set_fault(Fault::Gone);
    let mut w = api
        .watch(&WatchParams::default(), &rv)
        .await
        .expect("watch")
        .boxed();
    match next_event(&mut w).await {
        WatchEvent::Error(s) => assert_eq!(s.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }
    let relisted = api.list(&ListParams::default()).await.expect("relist");
    let new_rv = relisted.metadata.resource_version.clone().expect("version");
    assert!(new_rv.parse::<u64>().expect("n") > rv.parse::<u64>().expect("n"));
    let old: std::collections::BTreeMap<_, _> = before
        .items
        .iter()
        .map(|o| (o.metadata.name.clone(), o.metadata.resource_version.clone()))
        .collect();
    for o in &relisted.items {
        assert_ne!(
            old[&o.metadata.name], o.metadata.resource_version,
            "a new version for each object"
        );
    }
    // Even from the fresh list's version the watch is refused while the fault holds...
    let mut w = api
        .watch(&WatchParams::default(), &new_rv)
        .await
        .expect("watch")
        .boxed();
    assert!(matches!(next_event(&mut w).await, WatchEvent::Error(s) if s.code == 410));
    // ...and accepted once it is undone.
    sim.set_fault(Fault::None);
    let mut w = api
        .watch(&WatchParams::default(), &new_rv)
        .await
        .expect("watch")
        .boxed();
    assert!(sim.delete("Service", "shop", "web"));
    loop {
        match next_event(&mut w).await {
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Deleted(o) => {
                assert_eq!(o.metadata.name.as_deref(), Some("web"));
                break;
            }
            other => panic!("expected DELETED, got {other:?}"),
        }
    }
    sim.shutdown().await;
}

/// Runs `kubectl --kubeconfig KC ARGS` (the binary in `KUBECTL`, else `kubectl` on PATH).
async fn kubectl(kc: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let kc = kc.to_path_buf();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let stdin = stdin.map(str::to_string);
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let bin = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
        let mut child = std::process::Command::new(&bin)
            .arg("--kubeconfig")
            .arg(&kc)
            .args(&args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running {bin}: {e}"));
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .expect("piped stdin")
                .write_all(text.as_bytes())
                .expect("write stdin");
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().expect("kubectl output");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    })
    .await
    .expect("kubectl thread")
}

/// `kubectl` (Debian's kubernetes-client 1.20 in CI, `KUBECTL=...`) against the simulated
/// server: get, apply (create, then a change), patch, a stale replace (409) and delete, each
/// seen by the server. Needs kubectl: `.ci/run` installs it and runs this test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs kubectl (kubernetes-client); .ci/run runs it"]
async fn kubectl_gets_applies_patches_replaces_and_deletes() {
    let sim = start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let kc = tmp.path().join("kubeconfig");
    std::fs::write(&kc, sim.kubeconfig_yaml(&sim.url())).expect("kubeconfig");
    let (ok, out) = kubectl(&kc, &["get", "svc", "-A", "-o", "name"], None).await;
    assert!(ok, "{out}");
    for want in ["service/web", "service/db", "service/search"] {
        assert!(out.lines().any(|l| l.trim() == want), "{want} in {out}");
    }
    let (ok, out) = kubectl(&kc, &["get", "svc", "-A"], None).await;
    assert!(ok && out.contains("web"), "{out}");
    let manifest = "apiVersion: v1\nkind: Service\nmetadata:\n  name: api\n  namespace: shop\nspec:\n  clusterIP: 172.31.7.7\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n";
    let (ok, out) = kubectl(
        &kc,
        &["apply", "--validate=false", "-f", "-"],
        Some(manifest),
    )
    .await;
    assert!(ok, "{out}");
    let (ok, out) = kubectl(
        &kc,
        &["apply", "--validate=false", "-f", "-"],
        Some(&manifest.replace("port: 80\n", "port: 81\n")),
    )
    .await;
    assert!(ok, "{out}");
    let port = |sim: &SimApi| -> Option<i64> {
        let c = sim.object("Service", "shop", "api")?;
        c["spec"]["ports"][0]["port"].as_i64()
    };
    assert_eq!(port(&sim), Some(81), "apply changed the port");
    let (ok, out) = kubectl(
        &kc,
        &[
            "-n",
            "shop",
            "patch",
            "svc",
            "api",
            "-p",
            r#"{"metadata":{"labels":{"tier":"x"}}}"#,
        ],
        None,
    )
    .await;
    assert!(ok, "{out}");
    let (ok, out) = kubectl(
        &kc,
        &["-n", "shop", "get", "svc", "-l", "tier=x", "-o", "name"],
        None,
    )
    .await;
    assert!(ok && out.trim() == "service/api", "{out}");
    let stale = manifest.replace(
        "  namespace: shop\n",
        "  namespace: shop\n  resourceVersion: \"1\"\n",
    );
    let (ok, out) = kubectl(
        &kc,
        &["replace", "--validate=false", "-f", "-"],
        Some(&stale),
    )
    .await;
    assert!(
        !ok && out.contains("modified"),
        "a stale replace conflicts: {out}"
    );
    let (ok, out) = kubectl(&kc, &["-n", "shop", "delete", "svc", "api"], None).await;
    assert!(ok, "{out}");
    assert!(sim.object("Service", "shop", "api").is_none());
    sim.shutdown().await;
}
