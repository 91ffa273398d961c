//! ClusterSet against the simulated API server: real TLS, real kube-rs watches.

use sdnlink_simapi::{Fault, SimApi};
use sdnlinkd::clusters::{ClusterSet, ClustersError, ANNOTATION_ENDPOINT, ANNOTATION_PUBLIC_KEY};
use sdnlinkd::config::{self, Config};
use sdnlinkd::model::{ClusterSnapshot, ServiceKey, ServiceKind, SyncState, TargetPort};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

const TOKEN: &str = "sim-token-7f3a";
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/clusters");

fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind a loopback port")
}

/// Copies fixture sub-directories into one fresh manifests directory.
fn manifests(tmp: &Path, sets: &[&str]) -> PathBuf {
    let dir = tmp.join(format!("manifests-{}", sets.join("-")));
    std::fs::create_dir_all(&dir).expect("create manifests dir");
    for set in sets {
        for f in std::fs::read_dir(Path::new(FIXTURES).join(set)).expect("fixture dir") {
            let f = f.expect("fixture entry").path();
            let name = format!(
                "{set}-{}",
                f.file_name().expect("file name").to_string_lossy()
            );
            std::fs::copy(&f, dir.join(name)).expect("copy fixture");
        }
    }
    dir
}

fn write_kubeconfig(tmp: &Path, name: &str, sim: &SimApi) -> PathBuf {
    let p = tmp.join(format!("{name}.kubeconfig"));
    std::fs::write(&p, sim.kubeconfig_yaml(&sim.url())).expect("write kubeconfig");
    p
}

/// A simulated API server for "east" loaded with the fixture `sets`, and a kubeconfig for it
/// (in the returned temporary directory, which must outlive the test).
fn serve_east(sets: &[&str]) -> (tempfile::TempDir, SimApi, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = manifests(tmp.path(), sets);
    let sim = SimApi::start(listener(), Some(&dir), TOKEN).expect("simapi");
    let kc = write_kubeconfig(tmp.path(), "east", &sim);
    (tmp, sim, kc)
}

/// Remote "east" (pod 10.132.0.0/14, services 172.31.0.0/16) watched through `kubeconfig`;
/// optionally the local cluster "here" watched too.
fn config_for(east: &Path, local: Option<&Path>, cap: usize) -> Config {
    config::parse_str(&config_toml(east, local, cap)).unwrap_or_else(|e| panic!("test config: {e}"))
}

fn config_toml(east: &Path, local: Option<&Path>, cap: usize) -> String {
    let local_kc = local
        .map(|p| format!("kubeconfig = {:?}\n", p.display().to_string()))
        .unwrap_or_default();
    let toml = format!(
        r#"
[local]
name = "here"
pod_cidrs = ["10.128.0.0/14"]
service_cidrs = ["172.30.0.0/16"]
node_name = "here-1"
{local_kc}
[dns]
upstreams = ["192.0.2.53:53"]
[sync]
max_objects_per_cluster = {cap}

[[remote]]
name = "east"
kubeconfig = {east:?}
pod_cidrs = ["10.132.0.0/14"]
service_cidrs = ["172.31.0.0/16"]
"#,
        east = east.display().to_string()
    );
    toml
}

async fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn east(set: &ClusterSet) -> std::sync::Arc<ClusterSnapshot> {
    set.snapshots()
        .get("east")
        .cloned()
        .expect("east is watched")
}

fn key(ns: &str, name: &str) -> ServiceKey {
    ServiceKey {
        namespace: ns.into(),
        name: name.into(),
    }
}

fn state_of(set: &ClusterSet, name: &str) -> SyncState {
    set.status()
        .into_iter()
        .find(|c| c.name == name)
        .map(|c| c.state)
        .expect("cluster in status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_list_converts_the_fixtures() {
    let (_tmp, sim, kc) = serve_east(&["east"]);
    let set = ClusterSet::start(&config_for(&kc, None, 1000), None).expect("start");
    wait_until("east to list", 30, || set.all_listed()).await;

    let s = east(&set);
    assert_eq!(s.services.len(), 3);
    let web = &s.services[&key("shop", "web")];
    assert_eq!(
        web.kind,
        ServiceKind::ClusterIp(vec!["172.31.10.10".parse().unwrap()])
    );
    assert_eq!(
        web.ports[0].target_port,
        TargetPort::Name("http-alt".into())
    );
    assert_eq!(web.endpoints.len(), 2);
    assert!(web
        .endpoints
        .iter()
        .all(|e| e.ports.iter().any(|p| p.name == "http" && p.port == 8080)));
    let db = &s.services[&key("shop", "db")];
    assert_eq!(db.kind, ServiceKind::Headless);
    assert_eq!(db.endpoints[0].hostname.as_deref(), Some("db-0"));
    assert_eq!(
        s.services[&key("shop", "search")].kind,
        ServiceKind::ExternalName("search.example.com".into())
    );
    assert_eq!(s.nodes.len(), 2);
    assert_eq!(
        s.nodes["east-1"].wireguard_endpoint.as_deref(),
        Some("192.0.2.11:51820")
    );
    assert_eq!(
        s.nodes["east-2"].pod_cidrs,
        vec!["10.132.2.0/24".parse().unwrap()]
    );

    let st = set.status();
    let e = st.iter().find(|c| c.name == "east").expect("east status");
    assert_eq!(e.state, SyncState::Current);
    assert_eq!(
        (
            e.objects.services,
            e.objects.endpoint_slices,
            e.objects.nodes
        ),
        (3, 2, 2)
    );
    assert!(e.skipped.is_empty(), "{:?}", e.skipped);
    // The local cluster has no kubeconfig here: not watched, and not in the snapshots.
    assert!(!set.snapshots().contains_key("here"));
    set.shutdown();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_out_of_cidr_objects_never_reach_the_snapshot() {
    let (_tmp, sim, kc) = serve_east(&["east", "hostile"]);
    let set = ClusterSet::start(&config_for(&kc, None, 1000), None).expect("start");
    wait_until("east to list", 30, || set.all_listed()).await;

    let check = |s: &ClusterSnapshot| {
        assert!(!s
            .services
            .contains_key(&key("kube-system", "kube-dns-hijack")));
        assert!(!s.services.contains_key(&key("shop", "broken")));
        for svc in s.services.values() {
            for e in &svc.endpoints {
                for a in &e.addresses {
                    assert!(
                        a.to_string().starts_with("10.13"),
                        "{a} reached the snapshot"
                    );
                }
            }
        }
        assert!(s
            .nodes
            .values()
            .all(|n| n.pod_cidrs.iter().all(|c| c.prefix_len() >= 14)));
    };
    check(&east(&set));
    assert_eq!(east(&set).services[&key("shop", "web")].endpoints.len(), 2);
    assert!(east(&set).nodes["evil-node"].pod_cidrs.is_empty());
    let st = set.status();
    let e = st.iter().find(|c| c.name == "east").expect("east status");
    assert_eq!(
        e.skipped.get("endpoint_outside_pod_cidrs"),
        Some(&2),
        "{:?}",
        e.skipped
    );

    // Hostile changes at runtime are filtered the same way.
    sim.apply_yaml(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  clusterIP: 8.8.8.8\n  ports: [{name: http, port: 80}]\n",
    )
    .expect("apply");
    wait_until("hostile web to be dropped", 20, || {
        !east(&set).services.contains_key(&key("shop", "web"))
    })
    .await;
    check(&east(&set));

    let st = set.status();
    let e = st.iter().find(|c| c.name == "east").expect("east status");
    assert_eq!(
        e.skipped.get("cluster_ip_outside_service_cidrs"),
        Some(&2),
        "{:?}",
        e.skipped
    );
    assert_eq!(
        e.skipped.get("node_subnet_outside_pod_cidrs"),
        Some(&1),
        "{:?}",
        e.skipped
    );
    assert_eq!(e.skipped.get("malformed"), Some(&1), "{:?}", e.skipped);
    assert_eq!(e.state, SyncState::Current);
    set.shutdown();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openshift_host_subnets_add_node_subnets() {
    let (_tmp, sim, kc) = serve_east(&["east", "openshift"]);
    let set = ClusterSet::start(&config_for(&kc, None, 1000), None).expect("start");
    wait_until("east to list", 30, || set.all_listed()).await;
    wait_until("the HostSubnet to be merged", 20, || {
        east(&set).nodes["east-2"].pod_cidrs.len() == 2
    })
    .await;
    assert_eq!(
        east(&set).nodes["east-2"].pod_cidrs,
        vec![
            "10.132.2.0/24".parse().unwrap(),
            "10.133.0.0/23".parse().unwrap()
        ]
    );
    let st = set.status();
    assert_eq!(
        st.iter()
            .find(|c| c.name == "east")
            .map(|c| c.objects.host_subnets),
        Some(1)
    );
    sim.delete("HostSubnet", "", "east-2");
    wait_until("the HostSubnet removal", 20, || {
        east(&set).nodes["east-2"].pod_cidrs.len() == 1
    })
    .await;
    set.shutdown();
    sim.shutdown().await;
}

/// Deterministic pseudo-random sequence (xorshift), so a failure replays identically.
struct Rng(u64);
impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_of_1000_changes_converges_to_a_fresh_list() {
    let (_tmp, sim, kc) = serve_east(&["east"]);
    let cfg = config_for(&kc, None, 10_000);
    let follower = ClusterSet::start(&cfg, None).expect("start");
    wait_until("east to list", 30, || follower.all_listed()).await;

    let mut rng = Rng(0x5eed_1234_abcd);
    for i in 0..1000u64 {
        let n = rng.next(40);
        match rng.next(6) {
            0 => {
                let ip = format!("172.31.2.{}", n + 1);
                sim.apply_yaml(&format!(
                    "apiVersion: v1\nkind: Service\nmetadata: {{name: s{n}, namespace: churn}}\nspec:\n  clusterIP: {ip}\n  ports: [{{name: p, port: {}, targetPort: p}}]\n",
                    1000 + i % 50
                ))
                .expect("apply service");
            }
            1 | 2 => {
                let eps: Vec<String> = (0..=rng.next(4))
                    .map(|k| {
                        format!(
                            "  - addresses: [10.132.{n}.{}]\n    conditions: {{ready: {}}}\n",
                            k + 1,
                            i % 3 != 0
                        )
                    })
                    .collect();
                sim.apply_yaml(&format!(
                    "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: s{n}-{}\n  namespace: churn\n  labels: {{kubernetes.io/service-name: s{n}}}\naddressType: IPv4\nports: [{{name: p, port: {}}}]\nendpoints:\n{}",
                    i % 2,
                    8000 + i % 7,
                    eps.concat()
                ))
                .expect("apply slice");
            }
            3 => {
                sim.delete("EndpointSlice", "churn", &format!("s{n}-{}", i % 2));
            }
            4 => {
                sim.delete("Service", "churn", &format!("s{n}"));
            }
            _ => {
                sim.apply_yaml(&format!(
                    "apiVersion: v1\nkind: Node\nmetadata:\n  name: churn-{n}\n  annotations: {{{ANNOTATION_PUBLIC_KEY}: key{i}}}\nspec:\n  podCIDRs: [10.134.{n}.0/24]\n"
                ))
                .expect("apply node");
            }
        }
    }

    let fresh = ClusterSet::start(&cfg, None).expect("start a fresh watcher");
    wait_until("the fresh list", 30, || fresh.all_listed()).await;
    let want = east(&fresh);
    assert!(want.services.len() > 3, "churn produced services");
    wait_until("the follower to converge on the fresh list", 60, || {
        *east(&follower) == *want
    })
    .await;
    assert_eq!(state_of(&follower, "east"), SyncState::Current);
    follower.shutdown();
    fresh.shutdown();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_expired_versions_relists_and_drops_objects_deleted_in_the_gap() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = manifests(tmp.path(), &["east"]);
    let l = listener();
    let addr = l.local_addr().expect("addr");
    let sim = SimApi::start(l, Some(&dir), TOKEN).expect("simapi");
    let ca = sim.ca();
    let kc = write_kubeconfig(tmp.path(), "east", &sim);
    let set = ClusterSet::start(&config_for(&kc, None, 1000), None).expect("start");
    wait_until("east to list", 30, || set.all_listed()).await;
    assert!(east(&set).services.contains_key(&key("shop", "db")));

    // The API server goes away: the last good snapshot stays, the status says degraded.
    sim.shutdown().await;
    wait_until("degraded", 30, || {
        matches!(state_of(&set, "east"), SyncState::Degraded { .. })
    })
    .await;
    assert!(east(&set).services.contains_key(&key("shop", "db")));

    // While it is down, the headless Service and its slice are deleted.
    let services = dir.join("east-services.yaml");
    let text = std::fs::read_to_string(&services).expect("read");
    let kept: Vec<&str> = text
        .split("\n---\n")
        .filter(|d| !d.contains("name: db\n"))
        .collect();
    std::fs::write(&services, kept.join("\n---\n")).expect("write");
    let slices = dir.join("east-endpointslices.yaml");
    let text = std::fs::read_to_string(&slices).expect("read");
    let kept: Vec<&str> = text
        .split("\n---\n")
        .filter(|d| !d.contains("name: db-xyz34"))
        .collect();
    std::fs::write(&slices, kept.join("\n---\n")).expect("write");

    // Same port, same CA: every resourceVersion the client holds is now too old (410).
    let l = TcpListener::bind(addr).expect("rebind the same port");
    let sim = SimApi::start_with_ca(l, Some(&dir), TOKEN, ca).expect("restart simapi");
    wait_until("the relist to drop shop/db", 60, || {
        !east(&set).services.contains_key(&key("shop", "db"))
    })
    .await;
    wait_until("current again", 60, || {
        state_of(&set, "east") == SyncState::Current
    })
    .await;
    assert!(east(&set).services.contains_key(&key("shop", "web")));

    // Changes after the restart flow through the new watches.
    sim.delete("Service", "shop", "search");
    wait_until("the delete after restart", 30, || {
        !east(&set).services.contains_key(&key("shop", "search"))
    })
    .await;
    set.shutdown();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_forces_a_410_relist_that_keeps_the_snapshot_right() {
    let (_tmp, sim, kc) = serve_east(&["east"]);
    let set = ClusterSet::start(&config_for(&kc, None, 1000), None).expect("start");
    wait_until("east to list", 30, || set.all_listed()).await;
    let before = east(&set);
    let changed = set.changed();

    sim.compact();
    sim.delete("Node", "", "east-2");
    tokio::time::timeout(Duration::from_secs(30), changed.notified())
        .await
        .expect("a change notification");
    wait_until("east-2 gone", 30, || {
        !east(&set).nodes.contains_key("east-2")
    })
    .await;
    wait_until("current", 30, || {
        state_of(&set, "east") == SyncState::Current
    })
    .await;
    assert_eq!(east(&set).services, before.services);
    set.shutdown();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_shows_degraded_with_the_reason_and_recovers() {
    let (_tmp, sim, kc) = serve_east(&["east"]);
    sim.set_token("rotated-token");
    let set = ClusterSet::start(&config_for(&kc, None, 1000), None).expect("start");
    // Never listed and nothing persisted: unknown (not empty), with the reason.
    wait_until("unknown with a reason", 30, || {
        matches!(
            state_of(&set, "east"),
            SyncState::Unknown { reason: Some(_) }
        )
    })
    .await;
    let SyncState::Unknown {
        reason: Some(reason),
    } = state_of(&set, "east")
    else {
        unreachable!("checked just above")
    };
    assert!(reason.contains("401"), "reason: {reason}");
    assert!(!set.all_listed());
    assert!(
        !set.snapshots().contains_key("east"),
        "an unknown cluster has no snapshot to serve"
    );
    let (pods, svcs) = set.held(&config_for(&kc, None, 1000));
    assert!(!pods.is_empty() && !svcs.is_empty(), "its CIDRs are held");

    sim.set_token(TOKEN);
    wait_until("recovery after the token is accepted again", 90, || {
        set.all_listed()
    })
    .await;
    assert_eq!(state_of(&set, "east"), SyncState::Current);
    assert_eq!(east(&set).services.len(), 3);
    set.shutdown();
    sim.shutdown().await;
}

/// Waits for east to show degraded (returning the reason), checks the snapshot was kept, then
/// clears the fault and waits for it to be current again with the same snapshot.
async fn degraded_keeps_snapshot_then_recovers(
    set: &ClusterSet,
    sim: &SimApi,
    good: &ClusterSnapshot,
) -> String {
    wait_until("degraded", 30, || {
        matches!(state_of(set, "east"), SyncState::Degraded { .. })
    })
    .await;
    let SyncState::Degraded { reason, .. } = state_of(set, "east") else {
        unreachable!("checked just above")
    };
    assert_eq!(*east(set), *good, "nothing withdrawn while the API fails");
    assert!(set.all_listed(), "listed once stays true");
    sim.set_fault(Fault::None);
    wait_until("current again", 90, || {
        state_of(set, "east") == SyncState::Current
    })
    .await;
    assert_eq!(*east(set), *good);
    reason
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_after_a_good_list_keeps_the_snapshot_and_shows_degraded() {
    let (_tmp, sim, kc) = serve_east(&["east"]);
    let set = ClusterSet::start(&config_for(&kc, None, 1000), None).expect("start");
    wait_until("east to list", 30, || set.all_listed()).await;
    let good = east(&set);

    // Every new request is now denied; compaction makes the watches reconnect and relist.
    sim.set_fault(Fault::Forbidden);
    sim.compact();
    let reason = degraded_keeps_snapshot_then_recovers(&set, &sim, &good).await;
    assert!(reason.contains("403"), "reason: {reason}");
    set.shutdown();
    sim.shutdown().await;
}

/// A wedged API server (accepts, never answers) shows as degraded once the watches' periodic
/// end (half of `sync.api_timeout`) and the silent re-watch (`sync.api_timeout`) have passed,
/// not after kube's default 295 s read timeout; the 30 s bound below would fail with that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_api_server_shows_degraded_within_the_api_timeout_and_recovers() {
    let (_tmp, sim, kc) = serve_east(&["east"]);
    let mut cfg = config_for(&kc, None, 1000);
    cfg.sync.api_timeout = Duration::from_secs(4);
    let set = ClusterSet::start(&cfg, None).expect("start");
    wait_until("east to list", 30, || set.all_listed()).await;
    let good = east(&set);

    // Idle but healthy watches (no change for three watch periods) stay current.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(state_of(&set, "east"), SyncState::Current);

    sim.set_fault(Fault::Hang);
    let reason = degraded_keeps_snapshot_then_recovers(&set, &sim, &good).await;
    assert!(!reason.is_empty(), "a degraded state says why");
    set.shutdown();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_cap_protects_the_node() {
    let (_tmp, sim, kc) = serve_east(&["east"]);
    // 7 objects in the fixtures, cap 5.
    let set = ClusterSet::start(&config_for(&kc, None, 5), None).expect("start");
    wait_until("east to list", 30, || set.all_listed()).await;
    let st = set.status();
    let e = st.iter().find(|c| c.name == "east").expect("east");
    let held = e.objects.services + e.objects.endpoint_slices + e.objects.nodes;
    assert_eq!(held, 5);
    assert_eq!(e.skipped.get("object_cap"), Some(&2), "{:?}", e.skipped);
    set.shutdown();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_node_patches_the_local_node_only_when_changed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let east_sim = SimApi::start(listener(), Some(&manifests(tmp.path(), &["east"])), TOKEN)
        .expect("east simapi");
    let local_dir = tmp.join_local();
    let local_sim =
        SimApi::start(listener(), Some(&local_dir), "local-token").expect("local simapi");
    let east_kc = write_kubeconfig(tmp.path(), "east", &east_sim);
    let local_kc = write_kubeconfig(tmp.path(), "here", &local_sim);
    let set = ClusterSet::start(&config_for(&east_kc, Some(&local_kc), 1000), None).expect("start");
    wait_until("both to list", 30, || set.all_listed()).await;

    let key_b64 = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
    let ep = "198.51.100.7:51820".parse().expect("endpoint");
    // The publisher runs in its own task: publish() only hands the values over.
    set.publish(key_b64, Some(ep));
    wait_until("the Node to carry the key", 30, || {
        local_sim.get_node("here-1").expect("node")["metadata"]["annotations"]
            [ANNOTATION_PUBLIC_KEY]
            == key_b64
    })
    .await;
    let node = local_sim.get_node("here-1").expect("node");
    assert_eq!(
        node["metadata"]["annotations"][ANNOTATION_ENDPOINT],
        "198.51.100.7:51820"
    );
    assert_eq!(
        node["metadata"]["annotations"]["keep"], "me",
        "other annotations survive"
    );
    // The local cluster is watched too: its snapshot sees the published annotations.
    wait_until("the local snapshot to show the key", 30, || {
        set.snapshots()["here"].nodes["here-1"]
            .wireguard_public_key
            .as_deref()
            == Some(key_b64)
    })
    .await;
    let st = set
        .publish_status()
        .expect("a local kubeconfig has a publisher");
    assert_eq!((st.state, st.patches), ("published", 1), "{st:?}");
    // Asking again for the same values, and other changes of the local cluster, patch nothing:
    // the publisher compares with what the watch shows.
    set.publish(key_b64, Some(ep));
    local_sim
        .apply_yaml("apiVersion: v1\nkind: Service\nmetadata: {namespace: x, name: y}\nspec: {clusterIP: None}\n")
        .expect("apply");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        set.publish_status().expect("publisher").patches,
        1,
        "no patch when unchanged"
    );
    // Someone removes the annotation: it comes back.
    local_sim
        .apply_yaml("apiVersion: v1\nkind: Node\nmetadata: {name: here-1, annotations: {keep: me}}\nspec: {podCIDRs: [10.128.4.0/24]}\n")
        .expect("apply");
    wait_until("the key to be published again", 30, || {
        local_sim.get_node("here-1").expect("node")["metadata"]["annotations"]
            [ANNOTATION_PUBLIC_KEY]
            == key_b64
    })
    .await;
    set.publish(key_b64, None);
    wait_until("the endpoint annotation to go", 30, || {
        local_sim.get_node("here-1").expect("node")["metadata"]["annotations"]
            .get(ANNOTATION_ENDPOINT)
            .is_none()
    })
    .await;
    assert_eq!(set.publish_status().expect("publisher").patches, 3);
    set.shutdown();
    east_sim.shutdown().await;
    local_sim.shutdown().await;
}

trait LocalManifests {
    fn join_local(&self) -> PathBuf;
}

impl LocalManifests for tempfile::TempDir {
    /// The local cluster: one Node `here-1` with an unrelated annotation.
    fn join_local(&self) -> PathBuf {
        let d = self.path().join("local");
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(
            d.join("node.yaml"),
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: here-1\n  annotations: {keep: me}\nspec:\n  podCIDRs: [10.128.4.0/24]\n",
        )
        .expect("write");
        d
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_and_auth_provider_kubeconfigs_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (mech, user) in [
        ("exec", "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: /bin/sh\n      args: [-c, 'touch /tmp/pwned']\n"),
        ("auth-provider", "    auth-provider:\n      name: oidc\n      config: {}\n"),
    ] {
        // Config validation refuses these too; ClusterSet checks again because the file may
        // be replaced after the config was loaded (reload reads it anew).
        let kc = tmp.path().join(format!("{mech}.kubeconfig"));
        std::fs::write(
            &kc,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'https://127.0.0.1:1'}\nusers:\n- name: u\n  user: {token: t}\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\ncurrent-context: c\n",
        )
        .expect("write");
        let cfg = config_for(&kc, None, 1000);
        std::fs::write(
            &kc,
            format!("apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: 'https://127.0.0.1:1'}}\nusers:\n- name: u\n  user:\n{user}contexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n"),
        )
        .expect("write");
        match ClusterSet::start(&cfg, None) {
            Err(ClustersError::RefusedAuth { mechanism, user, .. }) => {
                assert_eq!(mechanism, mech);
                assert_eq!(user, "u");
            }
            Err(e) => panic!("{mech}: wrong error {e}"),
            Ok(_) => panic!("{mech}: kubeconfig accepted"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_unchanged_watches_and_serves_a_changed_one_until_it_relists() {
    let (_tmp, sim, kc) = serve_east(&["east"]);
    let cfg = config_for(&kc, None, 1000);
    let mut set = ClusterSet::start(&cfg, None).expect("start");
    wait_until("east to list", 30, || set.all_listed()).await;
    let before = east(&set);
    assert!(!before.services.is_empty());

    // Only the object cap changed: the watch and its snapshot are untouched.
    let r = set.reconfigure(&config_for(&kc, None, 999));
    assert_eq!(r.kept, ["east"], "{r}");
    assert!(r.restarted.is_empty() && r.added.is_empty() && r.removed.is_empty());
    assert!(
        std::sync::Arc::ptr_eq(&before, &east(&set)),
        "same snapshot value"
    );
    assert_eq!(state_of(&set, "east"), SyncState::Current);

    // The API server hangs, and a reload changes the watch settings (sync.api_timeout): the
    // new watch cannot list, so the old snapshot is served, warm, and east stays held.
    sim.set_fault(Fault::Hang);
    let mut changed = cfg.clone();
    changed.sync.api_timeout = Duration::from_secs(4);
    let r = set.reconfigure(&changed);
    assert_eq!(r.restarted, ["east"], "{r}");
    assert!(
        matches!(state_of(&set, "east"), SyncState::Warm { .. }),
        "{:?}",
        state_of(&set, "east")
    );
    assert_eq!(*east(&set), *before, "the old snapshot keeps being served");
    let (pods, _) = set.held(&changed);
    assert!(
        !pods.is_empty(),
        "nothing of east is withdrawn until it lists"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(*east(&set), *before);

    // The server answers again: the new watch lists and east is current.
    sim.set_fault(Fault::None);
    wait_until("east to list again", 60, || set.all_listed()).await;
    assert_eq!(state_of(&set, "east"), SyncState::Current);
    assert_eq!(*east(&set), *before);
    assert!(set.held(&changed).0.is_empty());

    // east leaves the config: exactly its snapshot goes.
    let listed_generation = set.generation();
    let mut gone = changed.clone();
    gone.remote.clear();
    let r = set.reconfigure(&gone);
    assert_eq!(r.removed, ["east"], "{r}");
    assert!(set.snapshots().is_empty());
    assert!(set.status().is_empty());

    // And comes back: unknown until it lists.
    let r = set.reconfigure(&changed);
    assert_eq!(r.added, ["east"], "{r}");
    wait_until("east to list after being added", 30, || set.all_listed()).await;
    assert_eq!(*east(&set), *before);
    assert_ne!(
        set.generation(),
        listed_generation,
        "a new store is a new snapshot, whatever its generation counter says"
    );
    set.shutdown();
    sim.shutdown().await;
}

/// A kubeconfig for `sim` whose user reads its token from `token_file` (as written).
fn token_file_kubeconfig(path: &Path, sim: &SimApi, token_file: &str) {
    let yaml = sim.kubeconfig_yaml(&sim.url()).replace(
        &format!("token: {TOKEN}"),
        &format!("tokenFile: {token_file:?}"),
    );
    assert!(yaml.contains("tokenFile"), "{yaml}");
    std::fs::write(path, yaml).expect("write kubeconfig");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_file_inside_the_config_directory_is_read() {
    let (tmp, sim, _) = serve_east(&["east"]);
    let etc = tmp.path().join("etc");
    std::fs::create_dir_all(etc.join("east")).expect("mkdir");
    std::fs::write(etc.join("east/token"), TOKEN).expect("write token");
    // Relative to the kubeconfig's directory, as kubectl reads it.
    let kc = etc.join("east/kubeconfig");
    token_file_kubeconfig(&kc, &sim, "token");
    let cfg =
        config::parse_str_in(&config_toml(&kc, None, 1000), &etc).expect("config check accepts it");
    // A kubeconfig outside the config directory may use a token file inside it.
    let outside_kc = tmp.path().join("elsewhere.kubeconfig");
    token_file_kubeconfig(
        &outside_kc,
        &sim,
        &etc.join("east/token").display().to_string(),
    );
    config::parse_str_in(&config_toml(&outside_kc, None, 1000), &etc)
        .expect("inside the config directory");

    let set = ClusterSet::start(&cfg, None).expect("start");
    wait_until("east to list with the token from the file", 30, || {
        set.all_listed()
    })
    .await;
    assert!(!east(&set).services.is_empty());
    set.shutdown();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_file_outside_the_config_directory_is_refused_at_check_and_at_load() {
    let (tmp, sim, _) = serve_east(&["east"]);
    let etc = tmp.path().join("etc");
    std::fs::create_dir_all(etc.join("east")).expect("mkdir");
    let secret = tmp.path().join("secret");
    std::fs::write(&secret, "root-only secret").expect("write secret");
    std::fs::write(etc.join("shared-token"), TOKEN).expect("write token");
    std::os::unix::fs::symlink(&secret, etc.join("east/link")).expect("symlink");
    let kc = etc.join("east/kubeconfig");
    let cases = [
        ("absolute path outside", secret.display().to_string()),
        ("symlink inside pointing out", "link".to_string()),
        ("relative path climbing out", "../../secret".to_string()),
        // The kubeconfig lives in etc/east, so its token must too.
        (
            "beside the kubeconfig's directory",
            "../shared-token".to_string(),
        ),
    ];
    for (what, tf) in cases {
        // What config check says.
        token_file_kubeconfig(&kc, &sim, &tf);
        let err = config::parse_str_in(&config_toml(&kc, None, 1000), &etc)
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted by config check"))
            .to_string();
        for want in [
            format!("remote[0].kubeconfig = {:?}", kc.display().to_string()),
            "user \"sim\"".to_string(),
            format!("tokenFile {tf:?}"),
            "move the token file there or write the token inline".to_string(),
        ] {
            assert!(err.contains(&want), "{what}: {want:?} missing from: {err}");
        }
        // What the daemon says when the file changed after the config was loaded.
        std::fs::write(&kc, sim.kubeconfig_yaml(&sim.url())).expect("write good kubeconfig");
        let cfg =
            config::parse_str_in(&config_toml(&kc, None, 1000), &etc).expect("good kubeconfig");
        token_file_kubeconfig(&kc, &sim, &tf);
        match ClusterSet::start(&cfg, None) {
            Err(e @ ClustersError::RefusedTokenFile { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(&kc.display().to_string()), "{what}: {msg}");
                assert!(
                    msg.contains("outside") || msg.contains("cannot be read"),
                    "{what}: {msg}"
                );
            }
            Err(e) => panic!("{what}: wrong error {e}"),
            Ok(_) => panic!("{what}: token file accepted at load"),
        }
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_the_api_down_serves_the_persisted_snapshot() {
    use sdnlinkd::clusters::persist::{SnapshotStore, DEFAULT_MAX_BYTES};
    let (tmp, sim, kc) = serve_east(&["east"]);
    let cfg = config_for(&kc, None, 1000);
    let state = tmp.path().join("state");
    let store = || SnapshotStore::new(&state, DEFAULT_MAX_BYTES);
    let set = ClusterSet::start(&cfg, Some(store())).expect("start");
    wait_until("east to list", 30, || set.all_listed()).await;
    let good = east(&set);
    let file = store().path_of("east");
    wait_until("the snapshot to be written after the list", 30, || {
        store().load("east").ok().flatten().as_ref() == Some(&*good)
    })
    .await;
    set.shutdown();

    // Every API server is down at start: the persisted snapshot is served at once.
    sim.shutdown().await;
    let set = ClusterSet::start(&cfg, Some(store())).expect("restart");
    assert!(
        matches!(
            state_of(&set, "east"),
            SyncState::Warm {
                source: sdnlinkd::model::WarmSource::Persisted { .. },
                ..
            }
        ),
        "{:?}",
        state_of(&set, "east")
    );
    assert_eq!(*east(&set), *good);
    assert!(set.all_known() && !set.all_listed());
    assert!(
        !set.held(&cfg).1.is_empty(),
        "warm is still held: nothing is withdrawn"
    );
    set.shutdown();

    // A corrupt file is ignored (one warning), never half-used: the cluster is unknown.
    let mut bytes = std::fs::read(&file).expect("snapshot file");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&file, &bytes).expect("corrupt it");
    let set = ClusterSet::start(&cfg, Some(store())).expect("restart with a corrupt file");
    assert!(matches!(state_of(&set, "east"), SyncState::Unknown { .. }));
    assert!(!set.snapshots().contains_key("east"));
    set.shutdown();

    // A cluster that left the config while the daemon was down loses its file.
    std::fs::write(&file, "junk").expect("write");
    let mut without = cfg.clone();
    without.remote.clear();
    let set = ClusterSet::start(&without, Some(store())).expect("start without east");
    assert!(!file.exists(), "{} should be gone", file.display());
    set.shutdown();
}

/// A Service named `name` in `shop` whose annotation carries `pad` bytes: the store keeps
/// none of it (only sdnlinkd's annotations), so only the response bound can refuse it.
fn padded_service(name: &str, ip: &str, pad: usize) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: shop
  annotations:
    example.com/pad: "{}"
spec:
  type: ClusterIP
  clusterIP: {ip}
  ports:
  - name: http
    port: 80
    protocol: TCP
"#,
        "x".repeat(pad)
    )
}

/// Every API response body is bounded (src/clusters/body_limit.rs): a watch event longer than
/// any API object can be, and a list page over `sync.max_bytes_per_cluster`, are refused;
/// the cluster shows degraded with the reason and keeps what it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_responses_are_refused_and_the_snapshot_kept() {
    let (_tmp, sim, kc) = serve_east(&["east"]);
    let mut cfg = config_for(&kc, None, 1000);
    cfg.sync.max_bytes_per_cluster = 1 << 20;
    let set = ClusterSet::start(&cfg, None).expect("start");
    wait_until("east to list", 30, || set.all_listed()).await;
    let good = east(&set);

    // One event over 4 MiB on the open watch. Its DELETED event is as large, so the watch,
    // which resumes from the last version it took, only gets past it by relisting: on a real
    // API server once etcd compacts (every 5 minutes by default), here at once.
    sim.apply_yaml(&padded_service("huge", "172.31.9.1", 5 << 20))
        .expect("apply the huge Service");
    let reason =
        degraded_keeps_snapshot_then_recovers_after(&set, &good, "watch event of over", || {
            assert!(sim.delete("Service", "shop", "huge"), "huge was there");
            sim.compact();
        })
        .await;
    assert!(
        reason.contains("watch event of over 4194304 bytes"),
        "{reason}"
    );
    assert!(!east(&set).services.contains_key(&key("shop", "huge")));

    // Two Services of 700 kB each: every event fits, so they are held...
    for (n, ip) in [("wide-a", "172.31.9.2"), ("wide-b", "172.31.9.3")] {
        sim.apply_yaml(&padded_service(n, ip, 700 << 10))
            .expect("apply a wide Service");
    }
    wait_until("both wide Services", 30, || {
        let s = east(&set);
        s.services.contains_key(&key("shop", "wide-a"))
            && s.services.contains_key(&key("shop", "wide-b"))
    })
    .await;
    let wide = east(&set);
    // ...but a relist answers them in one page of over 1 MiB.
    sim.compact();
    let reason =
        degraded_keeps_snapshot_then_recovers_after(&set, &wide, "response body of over", || {
            assert!(sim.delete("Service", "shop", "wide-b"), "wide-b was there");
        })
        .await;
    assert!(
        reason.contains("response body of over 1048576 bytes")
            && reason.contains("sync.max_bytes_per_cluster"),
        "{reason}"
    );
    assert!(!east(&set).services.contains_key(&key("shop", "wide-b")));
    assert!(east(&set).services.contains_key(&key("shop", "wide-a")));
    set.shutdown();
    sim.shutdown().await;
}

/// Waits until east is degraded for a reason containing `why`, checks it still serves `good`,
/// runs `mend`, waits for it to be current again and returns the degraded reason.
async fn degraded_keeps_snapshot_then_recovers_after(
    set: &ClusterSet,
    good: &ClusterSnapshot,
    why: &str,
    mend: impl FnOnce(),
) -> String {
    wait_until(&format!("degraded for {why:?}"), 30, || {
        matches!(state_of(set, "east"), SyncState::Degraded { reason, .. } if reason.contains(why))
    })
    .await;
    let SyncState::Degraded { reason, .. } = state_of(set, "east") else {
        unreachable!("checked just above")
    };
    assert_eq!(
        *east(set),
        *good,
        "nothing withdrawn while responses are refused"
    );
    mend();
    wait_until("current again", 90, || {
        state_of(set, "east") == SyncState::Current
    })
    .await;
    reason
}
