//! nftables backend at scale, on the host kernel (root, `nft` installed):
//! full sync of S services x E endpoints into an empty namespace and one endpoint change, each
//! against `nft -f` of the same ruleset text in the same run.
//!
//! `cargo bench --profile dev --bench nft_sync` (S=10000, E=10; override with
//! `SDNLINK_BENCH_SERVICES` / `SDNLINK_BENCH_ENDPOINTS`). Uses the namespace `sdnt-nf-bench`.

use sdnlinkd::model::{Protocol, ServiceKey};
use sdnlinkd::netns::NetNs;
use sdnlinkd::proxy::nft::ruleset::{full_transaction, incremental_transaction, Observed};
use sdnlinkd::proxy::nft::NftBackend;
use sdnlinkd::proxy::{DesiredProxy, Destination, ProxyBackend, VirtualKey, VirtualService};
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::{Duration, Instant};

const NS: &str = "sdnt-nf-bench";

struct NsGuard;

impl Drop for NsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", NS]).output();
    }
}

fn env_or(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn v4(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(n))
}

/// ClusterIPs from 10.97.0.0/16 upward, endpoints from 10.1.0.0/16 upward.
fn desired(services: u32, endpoints: u32, extra: bool) -> DesiredProxy {
    let mut d = DesiredProxy::default();
    for i in 0..services {
        let key = VirtualKey {
            vip: v4(0x0a61_0000 + i + 1),
            protocol: Protocol::Tcp,
            port: 80,
        };
        let mut dests: std::collections::BTreeSet<Destination> = (0..endpoints)
            .map(|j| Destination {
                addr: v4(0x0a01_0000 + i * endpoints + j + 1),
                port: 8080,
            })
            .collect();
        if extra && i == services / 2 {
            dests.insert(Destination {
                addr: v4(0x0a7f_0001),
                port: 8080,
            });
        }
        d.services.insert(
            key,
            VirtualService {
                key,
                cluster: "east".into(),
                service: ServiceKey {
                    namespace: "bench".into(),
                    name: format!("s{i}"),
                },
                port_name: String::new(),
                scheduler: "rr".into(),
                affinity_timeout: None,
                destinations: dests,
            },
        );
    }
    d
}

fn nft_file(path: &std::path::Path) -> Duration {
    let t = Instant::now();
    let out = Command::new("ip")
        .args(["netns", "exec", NS, "nft", "-f"])
        .arg(path)
        .output()
        .expect("spawning nft");
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "nft -f: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn delete_table() {
    let out = Command::new("ip")
        .args(["netns", "exec", NS, "nft", "delete table inet sdnlink"])
        .output()
        .expect("spawning nft");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn main() {
    let services = env_or("SDNLINK_BENCH_SERVICES", 10_000);
    let endpoints = env_or("SDNLINK_BENCH_ENDPOINTS", 10);
    let _ = Command::new("ip").args(["netns", "del", NS]).output();
    let st = Command::new("ip")
        .args(["netns", "add", NS])
        .status()
        .expect("ip netns add");
    assert!(st.success(), "ip netns add {NS}");
    let _guard = NsGuard;
    let ns = NetNs::open(NS).expect("bench namespace");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let d0 = desired(services, endpoints, false);
    let d1 = desired(services, endpoints, true);

    // Baseline: nft -f of the very same text our full sync sends into an empty namespace.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("full.nft");
    let t = Instant::now();
    let text = full_transaction(&d0, &Observed::default());
    let render = t.elapsed();
    std::fs::write(&file, text.text()).expect("write ruleset");
    let baseline = nft_file(&file);
    delete_table();

    let mut b = NftBackend::new(ns);
    let t = Instant::now();
    let full = rt.block_on(b.sync(&d0, true)).expect("full sync");
    let full_time = t.elapsed();

    let t = Instant::now();
    let inc = rt.block_on(b.sync(&d1, false)).expect("incremental sync");
    let inc_time = t.elapsed();
    assert!(!inc.full, "endpoint change must be incremental");

    // Baseline for the change: nft -f of the reverse change (remove that endpoint again) as a
    // file, then the change itself again, so the committed state stays true.
    let dir2 = dir.path().join("change.nft");
    std::fs::write(&dir2, incremental_transaction(&d1, &d0).text()).expect("write change");
    let change_baseline = nft_file(&dir2);
    std::fs::write(&dir2, incremental_transaction(&d0, &d1).text()).expect("write change");
    nft_file(&dir2);

    let t = Instant::now();
    let resync = rt.block_on(b.sync(&d1, true)).expect("full resync");
    let resync_time = t.elapsed();

    // Second baseline after the backend's runs, to bracket the load of a shared machine.
    delete_table();
    let baseline2 = nft_file(&file);

    println!(
        "nft_sync: {services} services x {endpoints} endpoints, ruleset {} commands, {} bytes",
        text.commands(),
        text.text().len()
    );
    println!(
        "  render full transaction (pure)      {:>10.1} ms",
        render.as_secs_f64() * 1e3
    );
    println!(
        "  baseline nft -f same ruleset         {:>10.1} ms",
        baseline.as_secs_f64() * 1e3
    );
    println!(
        "  backend full sync, empty namespace   {:>10.1} ms  ({} ops)  ratio {:.2}x baseline",
        full_time.as_secs_f64() * 1e3,
        full.operations,
        full_time.as_secs_f64() / baseline.as_secs_f64()
    );
    println!(
        "  backend one endpoint added           {:>10.1} ms  ({} ops); nft -f of the reverse change {:.1} ms",
        inc_time.as_secs_f64() * 1e3,
        inc.operations,
        change_baseline.as_secs_f64() * 1e3
    );
    println!(
        "  backend full resync, populated table {:>10.1} ms  ({} ops)",
        resync_time.as_secs_f64() * 1e3,
        resync.operations
    );
    println!(
        "  baseline nft -f again, after the runs {:>9.1} ms",
        baseline2.as_secs_f64() * 1e3
    );
}
