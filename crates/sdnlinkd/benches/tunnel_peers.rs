//! Peer-sync cost on a real device: 1,000 peers applied to an empty device, then one peer
//! changed on the 1,000-peer device (incremental sync), then a full resync. Prints wall time and
//! the number of configuration messages (UAPI `set` requests for userspace, netlink requests for
//! kernel) for each step.
//!
//! Needs root. `cargo bench --profile dev --bench tunnel_peers` (debug build, as this machine's
//! rules ask); `SDNLINK_BENCH_MODE=kernel` inside the VM; `SDNLINK_BENCH_PEERS=N` for another
//! size.

use sdnlinkd::config::parse_str;
use sdnlinkd::model::{ClusterSnapshot, Node, Snapshots};
use sdnlinkd::netns::NetNs;
use sdnlinkd::tunnel::{self, PrivateKey, Tunnel};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

const H: &str = "sdnt-tn-bench-h";
const S: &str = "sdnt-tn-bench-s";
const IFACE: &str = "sdnt-tn-bench";

struct Guard;
impl Drop for Guard {
    fn drop(&mut self) {
        for ns in [S, H] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn snapshot(n: usize, changed: Option<usize>) -> Snapshots {
    let nodes = (0..n)
        .map(|i| {
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            let port = if Some(i) == changed { 51821 } else { 51820 };
            let node = Node {
                name: format!("node-{i}"),
                pod_cidrs: vec![format!("10.{}.{}.0/24", 132 + i / 256, i % 256)
                    .parse()
                    .expect("valid subnet")],
                wireguard_public_key: Some(tunnel::PublicKey(key).to_base64()),
                wireguard_endpoint: Some(format!("192.0.2.{}:{port}", i % 250 + 1)),
            };
            (node.name.clone(), node)
        })
        .collect();
    let snap = ClusterSnapshot {
        nodes,
        ..Default::default()
    };
    [("west".to_string(), Arc::new(snap))].into()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("SDNLINK_BENCH_PEERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
        .min(1024);
    let mode = std::env::var("SDNLINK_BENCH_MODE").unwrap_or_else(|_| "userspace".into());
    drop(Guard); // leftovers of an interrupted run
    let _guard = Guard;
    for ns in [H, S] {
        let ok = Command::new("ip")
            .args(["netns", "add", ns])
            .status()
            .map(|s| s.success());
        assert_eq!(ok.ok(), Some(true), "ip netns add {ns} (needs root)");
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let key_file = tmp.path().join("key");
    let cfg = parse_str(&format!(
        r#"
[local]
name = "east"
pod_cidrs = ["10.128.0.0/14"]
service_cidrs = ["172.30.0.0/16"]
# Explicit upstreams: a VM or container may have no /etc/resolv.conf.
[dns]
upstreams = ["192.0.2.53:53"]
[tunnel]
interface = "{IFACE}"
mode = "{mode}"
private_key_file = "{}"
[[remote]]
name = "west"
pod_cidrs = ["10.132.0.0/14"]
service_cidrs = ["172.31.0.0/16"]
"#,
        key_file.display()
    ))
    .expect("bench config");
    let key: PrivateKey = tunnel::load_or_create(&key_file).expect("key");
    let host = NetNs::open(H).expect("host ns");
    let ns = NetNs::open(S).expect("ns");
    let mut t = Tunnel::ensure(&cfg, host.clone(), ns.clone(), key)
        .await
        .expect("ensure");

    let t0 = Instant::now();
    let desired = tunnel::desired_peers(&cfg, &snapshot(n, None));
    let desired_time = t0.elapsed();
    assert_eq!(desired.peers.len(), n, "{:?}", desired.skipped.first());

    let t0 = Instant::now();
    let r = t.sync(&desired, false).await.expect("initial sync");
    let initial = t0.elapsed();
    assert_eq!(r.added, n);

    let changed = tunnel::desired_peers(&cfg, &snapshot(n, Some(n / 2)));
    let t0 = Instant::now();
    let one = t.sync(&changed, false).await.expect("one change");
    let one_time = t0.elapsed();
    assert_eq!(one.updated, 1);

    let t0 = Instant::now();
    let full = t.sync(&changed, true).await.expect("full resync");
    let full_time = t0.elapsed();

    println!(
        "tunnel_peers backend={} peers={n} (debug build)",
        t.backend()
    );
    println!("  desired_peers({n} nodes):          {desired_time:?}");
    println!(
        "  apply {n} peers to empty device:   {initial:?}, {} messages",
        r.messages
    );
    println!(
        "  one peer changed (incremental):    {one_time:?}, {} messages",
        one.messages
    );
    println!(
        "  full resync, no drift ({n} read):  {full_time:?}, {} messages",
        full.messages
    );

    tunnel::cleanup_in(&cfg, &host, Some(&ns))
        .await
        .expect("cleanup");
}
