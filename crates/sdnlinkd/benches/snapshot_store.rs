//! Size and cost of one persisted snapshot (`src/clusters/persist.rs`) at 10,000 Services of 10
//! endpoints each, against peers on the same machine in the same run:
//! - save vs `cp` + `sync` of the same file (the durable-write floor a program pays anyway);
//! - save vs writing the same bytes in-process with fsync + rename + directory fsync;
//! - load vs `std::fs::read` of the file, and vs Python's `json.loads` of the same body.
//!
//! No root needed. `cargo bench --bench snapshot_store`; `SDNLINK_BENCH_SERVICES=N`,
//! `SDNLINK_BENCH_ENDPOINTS=M` for another size, `SDNLINK_BENCH_DIR` for another file system
//! (default: a temporary directory under /var/tmp, which is on disk rather than tmpfs).

use sdnlinkd::clusters::persist::{SnapshotStore, DEFAULT_MAX_BYTES, HEADER_LEN};
use sdnlinkd::model::{
    ClusterSnapshot, Endpoint, EndpointPort, Node, Protocol, Service, ServiceKey, ServiceKind,
    ServicePort, TargetPort,
};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const REPS: usize = 7;
const NODES: usize = 200;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Services shaped like a typical application's: one IPv4 ClusterIP, a named and a numbered
/// port, endpoints with one address, a node name and two resolved ports.
fn snapshot(services: usize, endpoints: usize) -> ClusterSnapshot {
    let port = |name: &str, port| EndpointPort {
        name: name.into(),
        protocol: Protocol::Tcp,
        port,
    };
    let mut snap = ClusterSnapshot::default();
    let mut pod: u32 = u32::from(Ipv4Addr::new(10, 132, 0, 10));
    for i in 0..services {
        let key = ServiceKey {
            namespace: format!("team-{}", i % 50),
            name: format!("service-{i}"),
        };
        let vip = u32::from(Ipv4Addr::new(172, 31, 0, 0)) + 10 + i as u32;
        let eps = (0..endpoints)
            .map(|e| {
                pod += 1;
                Endpoint {
                    addresses: vec![IpAddr::V4(Ipv4Addr::from(pod))],
                    ready: true,
                    serving: true,
                    terminating: false,
                    hostname: None,
                    node_name: Some(format!("node-{}", (i + e) % NODES).into()),
                    ports: vec![port("http", 8080), port("metrics", 9090)].into(),
                }
            })
            .collect();
        let svc = Service {
            key: key.clone(),
            kind: ServiceKind::ClusterIp(vec![IpAddr::V4(Ipv4Addr::from(vip))]),
            ports: vec![
                ServicePort {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    port: 80,
                    target_port: TargetPort::Name("http".into()),
                },
                ServicePort {
                    name: "metrics".into(),
                    protocol: Protocol::Tcp,
                    port: 9090,
                    target_port: TargetPort::Number(9090),
                },
            ],
            client_ip_affinity: None,
            endpoints: eps,
        };
        snap.services.insert(key, svc);
    }
    for n in 0..NODES {
        let node = Node {
            name: format!("node-{n}"),
            pod_cidrs: vec![format!("10.{}.{}.0/24", 132 + n / 256, n % 256)
                .parse()
                .expect("valid subnet")],
            wireguard_public_key: Some("mQ0mr0PDtG8HdXFlGLUkrYd0WGOnDpYSk0Sp5Y5u+2A=".into()),
            wireguard_endpoint: Some(format!("192.0.2.{}:51820", n % 250 + 1)),
        };
        snap.nodes.insert(node.name.clone(), node);
    }
    snap
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn time<T>(mut f: impl FnMut() -> T) -> Duration {
    median(
        (0..REPS)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(f());
                t.elapsed()
            })
            .collect(),
    )
}

/// What a careful program pays to replace a file durably, without encoding anything.
fn raw_save(dir: &Path, bytes: &[u8]) {
    let tmp = dir.join("raw.tmp");
    let mut f = std::fs::File::create(&tmp).expect("create");
    f.write_all(bytes).expect("write");
    f.sync_all().expect("fsync");
    std::fs::rename(&tmp, dir.join("raw.snap")).expect("rename");
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .expect("fsync dir");
}

fn main() {
    let services = env("SDNLINK_BENCH_SERVICES", 10_000);
    let endpoints = env("SDNLINK_BENCH_ENDPOINTS", 10);
    let base = std::env::var("SDNLINK_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let tmp = tempfile::tempdir_in(&base).expect("temp dir");
    let store = SnapshotStore::new(tmp.path(), DEFAULT_MAX_BYTES);
    let snap = snapshot(services, endpoints);
    println!(
        "snapshot: {services} services x {endpoints} endpoints, {NODES} nodes; median of {REPS}; files under {base}"
    );

    let report = store.save("west", &snap).expect("save");
    let bytes = std::fs::read(&report.path).expect("read");
    println!(
        "file: {} bytes ({:.2} MiB), {:.0} bytes per endpoint; DEFAULT_MAX_BYTES = {} MiB ({:.1}x this)",
        report.bytes,
        report.bytes as f64 / (1 << 20) as f64,
        report.bytes as f64 / (services * endpoints).max(1) as f64,
        DEFAULT_MAX_BYTES >> 20,
        DEFAULT_MAX_BYTES as f64 / report.bytes as f64,
    );

    let save = time(|| store.save("west", &snap).expect("save"));
    let raw = time(|| raw_save(tmp.path(), &bytes));
    let dst = tmp.path().join("cp.snap");
    let cp = time(|| {
        let ok = Command::new("sh")
            .arg("-c")
            .arg("cp \"$1\" \"$2\" && sync \"$2\"")
            .arg("sh")
            .arg(&report.path)
            .arg(&dst)
            .status()
            .map(|s| s.success());
        assert_eq!(ok.ok(), Some(true), "cp + sync");
    });
    println!(
        "save: {} | in-process write+fsync+rename {} (save {:.2}x) | cp+sync {} (save {:.2}x)",
        ms(save),
        ms(raw),
        save.as_secs_f64() / raw.as_secs_f64(),
        ms(cp),
        save.as_secs_f64() / cp.as_secs_f64(),
    );

    let load = time(|| {
        let back = store.load("west").expect("load").expect("file");
        assert_eq!(back.services.len(), services);
        back
    });
    let read = time(|| std::fs::read(&report.path).expect("read"));
    let body_at = HEADER_LEN + "west".len();
    let script = format!(
        "import json,sys,time\nb=open(sys.argv[1],'rb').read()[{body_at}:]\nts=[]\nfor _ in range({REPS}):\n t=time.perf_counter(); json.loads(b); ts.append(time.perf_counter()-t)\nts.sort(); print(ts[len(ts)//2])"
    );
    let python = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .arg(&report.path)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .map(Duration::from_secs_f64);
    let python = match python {
        Some(p) => format!(
            "python3 json.loads of the body {} (load {:.2}x)",
            ms(p),
            load.as_secs_f64() / p.as_secs_f64()
        ),
        None => "python3 not available: no json.loads peer".into(),
    };
    println!(
        "load: {} | fs::read {} (load {:.1}x) | {python}",
        ms(load),
        ms(read),
        load.as_secs_f64() / read.as_secs_f64(),
    );
}
