//! The per-cluster store (`sdnlinkd::clusters::state::ClusterState`) fed directly with watch
//! events, as kube-runtime's watcher hands them over: objects shaped as a real API server sends
//! them (uid, resourceVersion, managedFields, a `kubectl` last-applied annotation, ownerRefs),
//! decoded from JSON bytes into `DynamicObject` outside the timed store steps.
//!
//! 1. Memory: one store holding 10k Services x 10 endpoints (one EndpointSlice each) and then
//!    10k x 1: heap bytes the store keeps (its records and the snapshot it hands out), counted by
//!    a global allocator, per Service and per endpoint; the peer is the JSON the API server sent
//!    for the same objects (bytes on the wire), and RSS is printed beside it.
//! 2. Time: 10k Services (one slice of 10 endpoints each) plus one headless Service with 100
//!    EndpointSlices x 1,000 endpoints. The initial list, then event batches (each batch: the
//!    events, then one `snapshot()` as the daemon's reconcile takes it). For every batch: the
//!    longest single store step (one `handle` or the `snapshot`, each a hold of the cluster's
//!    mutex) and the batch total; the peer is the time serde_json takes to decode the same
//!    events' bytes into `DynamicObject` (work the watcher does anyway, outside the mutex).
//!
//! `cargo bench --bench cluster_store` (release; no root, no network).
//! `SDNLINK_BENCH_SERVICES=N` for another size.

use kube::core::DynamicObject;
use kube::runtime::watcher::Event;
use sdnlinkd::clusters::state::{ClusterState, Kind};
use serde_json::{json, Value};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` came from `alloc` with this layout.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `p` came from `alloc` with layout `l`.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

const POD_BASE: u32 = 10 << 24 | 128 << 16; // 10.128.0.0/14
const SVC_BASE: u32 = 172 << 24 | 30 << 16; // 172.30.0.0/16

fn ip(n: u32) -> String {
    std::net::Ipv4Addr::from(n).to_string()
}

fn managed(manager: &str) -> Value {
    json!([{"manager": manager, "operation": "Update", "apiVersion": "v1",
        "time": "2025-01-10T10:00:00Z", "fieldsType": "FieldsV1",
        "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                     "f:spec": {"f:ports": {".": {}, "k:{\"port\":80,\"protocol\":\"TCP\"}": {".": {}, "f:name": {}, "f:port": {}, "f:protocol": {}, "f:targetPort": {}}},
                                "f:selector": {}, "f:sessionAffinity": {}, "f:type": {}}}}])
}

fn service(ns: &str, name: &str, cluster_ip: Option<u32>, rv: u64) -> String {
    let spec_ip = cluster_ip.map_or("None".to_string(), ip);
    let last_applied = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}], "selector": {"app": name}}})
    .to_string();
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "uid": format!("5d1c6a3e-0000-4000-8000-{rv:012}"),
            "resourceVersion": rv.to_string(), "creationTimestamp": "2025-01-10T10:00:00Z",
            "labels": {"app": name},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": last_applied},
            "managedFields": managed("kubectl-client-side-apply")},
        "spec": {"clusterIP": spec_ip, "clusterIPs": [spec_ip], "type": "ClusterIP",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
            "selector": {"app": name}, "sessionAffinity": "None",
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster"},
        "status": {"loadBalancer": {}}})
    .to_string()
}

fn slice(ns: &str, svc: &str, name: &str, first_ip: u32, n: usize, rv: u64) -> String {
    let eps: Vec<Value> = (0..n)
        .map(|i| {
            let a = first_ip + i as u32;
            json!({"addresses": [ip(a)],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": format!("node-{}", a % 200),
                "targetRef": {"kind": "Pod", "namespace": ns, "name": format!("{svc}-{a:x}"),
                              "uid": format!("8c2f7d10-0000-4000-8000-{a:012}")},
                "zone": "zone-a"})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "uid": format!("7a4b9c2d-0000-4000-8000-{rv:012}"),
            "resourceVersion": rv.to_string(), "creationTimestamp": "2025-01-10T10:00:00Z",
            "generateName": format!("{svc}-"),
            "labels": {"kubernetes.io/service-name": svc, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2025-01-10T10:00:00Z"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": svc, "uid": "5d1c6a3e", "controller": true, "blockOwnerDeletion": true}],
            "managedFields": managed("kube-controller-manager")},
        "addressType": "IPv4", "endpoints": eps,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
    .to_string()
}

fn decode(wire: &str) -> DynamicObject {
    serde_json::from_str(wire).expect("bench object decodes")
}

fn store() -> ClusterState {
    let pod = vec!["10.128.0.0/14".parse().expect("literal")];
    let svc = vec!["172.30.0.0/16".parse().expect("literal")];
    ClusterState::new("west", &pod, &svc, 1_000_000)
}

/// Lists `wire` objects of each kind into `s`; returns the wall time of the store steps only.
fn list(s: &mut ClusterState, kinds: &[(Kind, &[String])]) -> Duration {
    let mut spent = Duration::ZERO;
    for (kind, objs) in kinds {
        let t = Instant::now();
        s.handle(*kind, Ok(Event::Init));
        spent += t.elapsed();
        for w in objs.iter() {
            let o = decode(w);
            let t = Instant::now();
            s.handle(*kind, Ok(Event::InitApply(o)));
            spent += t.elapsed();
        }
        let t = Instant::now();
        s.handle(*kind, Ok(Event::InitDone));
        spent += t.elapsed();
    }
    for kind in [Kind::Node, Kind::HostSubnet] {
        if !kinds.iter().any(|(k, _)| *k == kind) {
            s.handle(kind, Ok(Event::Init));
            s.handle(kind, Ok(Event::InitDone));
        }
    }
    let t = Instant::now();
    let _ = s.snapshot();
    spent + t.elapsed()
}

struct Population {
    services: Vec<String>,
    slices: Vec<String>,
    endpoints: usize,
}

fn population(n: usize, per: usize, headless: Option<(usize, usize)>) -> Population {
    let mut services = Vec::with_capacity(n + 1);
    let mut slices = Vec::with_capacity(n + 100);
    let mut rv = 1;
    let mut next_ip = POD_BASE;
    for i in 0..n {
        let name = format!("svc-{i}");
        services.push(service("bench", &name, Some(SVC_BASE + 1 + i as u32), rv));
        slices.push(slice(
            "bench",
            &name,
            &format!("{name}-abcde"),
            next_ip,
            per,
            rv + 1,
        ));
        next_ip += per as u32;
        rv += 2;
    }
    let mut endpoints = n * per;
    if let Some((k, m)) = headless {
        services.push(service("bench", "big", None, rv));
        for j in 0..k {
            slices.push(slice(
                "bench",
                "big",
                &format!("big-{j:03}"),
                next_ip,
                m,
                rv + 1 + j as u64,
            ));
            next_ip += m as u32;
        }
        endpoints += k * m;
    }
    Population {
        services,
        slices,
        endpoints,
    }
}

fn memory(n: usize, per: usize) -> (isize, u64, usize, usize) {
    let pop = population(n, per, None);
    let wire: usize = pop
        .services
        .iter()
        .chain(&pop.slices)
        .map(String::len)
        .sum();
    let before = live();
    let rss_before = rss_kib();
    let mut s = store();
    list(
        &mut s,
        &[
            (Kind::Service, &pop.services),
            (Kind::EndpointSlice, &pop.slices),
        ],
    );
    let snap = s.snapshot();
    assert_eq!(snap.services.len(), n, "every Service in the snapshot");
    let held = live() - before;
    let rss = rss_kib().saturating_sub(rss_before);
    drop(snap);
    drop(s);
    (held, rss, wire, pop.endpoints)
}

struct Batch {
    name: &'static str,
    events: Vec<(Kind, bool, String)>,
}

fn run_batch(s: &mut ClusterState, b: &Batch) -> (Duration, Duration, Duration) {
    let mut longest = Duration::ZERO;
    let mut total = Duration::ZERO;
    let mut decode_time = Duration::ZERO;
    for (kind, delete, wire) in &b.events {
        let t = Instant::now();
        let o = decode(wire);
        decode_time += t.elapsed();
        let ev = if *delete {
            Event::Delete(o)
        } else {
            Event::Apply(o)
        };
        let t = Instant::now();
        s.handle(*kind, Ok(ev));
        let d = t.elapsed();
        longest = longest.max(d);
        total += d;
    }
    let t = Instant::now();
    let snap = s.snapshot();
    let d = t.elapsed();
    longest = longest.max(d);
    total += d;
    drop(snap);
    (longest, total, decode_time)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let n: usize = std::env::var("SDNLINK_BENCH_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);

    println!("== memory: one store, {n} Services x 10 and x 1 endpoints ==");
    let (h10, rss10, wire10, e10) = memory(n, 10);
    let (h1, _, _, e1) = memory(n, 1);
    let per_ep = (h10 - h1) as f64 / (e10 - e1) as f64;
    let per_svc = (h1 as f64 - per_ep * e1 as f64) / n as f64;
    println!(
        "  {n} x 10: store holds {:.1} MiB (RSS +{:.1} MiB); the API server sent {:.1} MiB of JSON: {:.3}x the wire bytes",
        h10 as f64 / 1048576.0,
        rss10 as f64 / 1024.0,
        wire10 as f64 / 1048576.0,
        h10 as f64 / wire10 as f64
    );
    println!("  per Service (with its slice, without endpoints): {per_svc:.0} B; per endpoint: {per_ep:.0} B");

    println!(
        "== time: {n} Services x 10 endpoints + one headless Service with 100 slices x 1000 =="
    );
    let pop = population(n, 10, Some((100, 1000)));
    let mut s = store();
    let t_decode = Instant::now();
    for w in pop.services.iter().chain(&pop.slices) {
        drop(decode(w));
    }
    let decode_list = t_decode.elapsed();
    let allocs = ALLOCS.load(Ordering::Relaxed);
    let spent = list(
        &mut s,
        &[
            (Kind::Service, &pop.services),
            (Kind::EndpointSlice, &pop.slices),
        ],
    );
    let allocs = ALLOCS.load(Ordering::Relaxed) - allocs;
    println!(
        "  initial list of {} objects, {} endpoints: store {} (decoding the same JSON: {}; ratio {:.2}); {} allocations incl. decoding",
        pop.services.len() + pop.slices.len(),
        pop.endpoints,
        ms(spent),
        ms(decode_list),
        spent.as_secs_f64() / decode_list.as_secs_f64(),
        allocs
    );

    let big_ip = POD_BASE + (n * 10) as u32;
    let mut rv = 10_000_000u64;
    let mut next = || {
        rv += 1;
        rv
    };
    let batches = vec![
        Batch {
            name: "one endpoint of one small Service moves",
            events: vec![(
                Kind::EndpointSlice,
                false,
                slice(
                    "bench",
                    "svc-7",
                    "svc-7-abcde",
                    POD_BASE + 70 + 1,
                    10,
                    next(),
                ),
            )],
        },
        Batch {
            name: "one slice of the headless Service changes",
            events: vec![(
                Kind::EndpointSlice,
                false,
                slice("bench", "big", "big-042", big_ip + 42_000 + 1, 1000, next()),
            )],
        },
        Batch {
            name: "all 100 slices of the headless Service change (rollout)",
            events: (0..100)
                .map(|j| {
                    (
                        Kind::EndpointSlice,
                        false,
                        slice(
                            "bench",
                            "big",
                            &format!("big-{j:03}"),
                            big_ip + j * 1000 + 2,
                            1000,
                            next(),
                        ),
                    )
                })
                .collect(),
        },
        Batch {
            name: "1000 Services deleted",
            events: (0..1000)
                .map(|i| {
                    let name = format!("svc-{i}");
                    (
                        Kind::Service,
                        true,
                        service("bench", &name, Some(SVC_BASE + 1 + i as u32), next()),
                    )
                })
                .collect(),
        },
        Batch {
            name: "1000 Services created again",
            events: (0..1000)
                .map(|i| {
                    let name = format!("svc-{i}");
                    (
                        Kind::Service,
                        false,
                        service("bench", &name, Some(SVC_BASE + 1 + i as u32), next()),
                    )
                })
                .collect(),
        },
    ];
    let mut worst = Duration::ZERO;
    for b in &batches {
        let (longest, total, dec) = run_batch(&mut s, b);
        worst = worst.max(longest);
        println!(
            "  {:<58} {:>5} events: longest step {:>10}, batch {:>10} (decoding: {}; ratio {:.2})",
            b.name,
            b.events.len(),
            ms(longest),
            ms(total),
            ms(dec),
            total.as_secs_f64() / dec.as_secs_f64()
        );
    }
    println!(
        "  longest store step of any batch after the initial list: {} (goal < 100 ms)",
        ms(worst)
    );
}
