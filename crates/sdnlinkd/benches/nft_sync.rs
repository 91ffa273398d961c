//! nftables backend at scale, on the host kernel (root, `nft` installed), each figure against a
//! peer run on the same machine in the same run:
//! (a) an idle full resync (the kernel already matches): kernel writes, CPU time; against
//!     `nft -f` rewriting the whole table (what every resync did before it compared);
//! (b) the full sync into an empty table: against `nft -f` of the same ruleset as nft lists it
//!     (the canonical restore file), and of the exact text the backend sends;
//! (c) one endpoint added: commands and CPU time, against `nft -f` of an equally small change.
//!
//! CPU time is user + system of this process and of the `nft` children (getrusage), so a busy
//! neighbour on a shared machine does not count; wall time is printed too. Each figure is the
//! median of `SDNLINK_BENCH_ROUNDS` (default 3) interleaved rounds.
//!
//! `cargo bench --bench nft_sync` (S=10000, E=10; override with `SDNLINK_BENCH_SERVICES` /
//! `SDNLINK_BENCH_ENDPOINTS`), under `flock /tmp/sdnlink-kernel.lock` on shared machines. Uses
//! the namespace `sdnt-nf-bench`.

use sdnlinkd::model::{Protocol, ServiceKey};
use sdnlinkd::netns::NetNs;
use sdnlinkd::proxy::nft::ruleset::{
    full_transaction, incremental_transaction, parse_listing, TARGET,
};
use sdnlinkd::proxy::nft::table::Table;
use sdnlinkd::proxy::nft::{generation, FullRead, NftBackend};
use sdnlinkd::proxy::{DesiredProxy, Destination, VirtualKey, VirtualService};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
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
                scheduler: sdnlinkd::proxy::Scheduling::RoundRobin,
                affinity_timeout: None,
                destinations: dests,
            },
        );
    }
    d
}

/// CPU time (user + system) of this process and its waited-for children.
fn cpu() -> Duration {
    let get = |who| {
        // SAFETY: getrusage only writes the struct it is given.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::getrusage(who, &mut ru) };
        assert_eq!(rc, 0, "getrusage");
        let tv = |t: libc::timeval| {
            Duration::from_secs(u64::try_from(t.tv_sec).expect("non-negative"))
                + Duration::from_micros(u64::try_from(t.tv_usec).expect("non-negative"))
        };
        tv(ru.ru_utime) + tv(ru.ru_stime)
    };
    get(libc::RUSAGE_SELF) + get(libc::RUSAGE_CHILDREN)
}

#[derive(Clone, Copy)]
struct Cost {
    cpu: Duration,
    wall: Duration,
}

fn measure<T>(f: impl FnOnce() -> T) -> (T, Cost) {
    let (c, w) = (cpu(), Instant::now());
    let out = f();
    (
        out,
        Cost {
            cpu: cpu() - c,
            wall: w.elapsed(),
        },
    )
}

fn median(mut v: Vec<Cost>) -> Cost {
    v.sort_by_key(|c| c.cpu);
    let cpu = v[v.len() / 2].cpu;
    v.sort_by_key(|c| c.wall);
    Cost {
        cpu,
        wall: v[v.len() / 2].wall,
    }
}

/// `nft ARGS`, spawned from the namespace's thread exactly as the backend spawns it.
fn nft(ns: &NetNs, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let out = ns
        .run(move || Command::new("nft").args(&args).output())
        .expect("namespace worker")
        .expect("spawning nft");
    assert!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn nft_file(ns: &NetNs, path: &Path) -> Cost {
    let p = path.to_str().expect("utf-8 temp path").to_string();
    measure(|| nft(ns, &["-f", &p])).1
}

fn delete_table(ns: &NetNs) {
    nft(ns, &["add", "table", "inet", "sdnlink"]);
    nft(ns, &["delete", "table", "inet", "sdnlink"]);
}

fn generation_of(ns: &NetNs) -> u32 {
    ns.run(generation::current)
        .expect("namespace worker")
        .expect("nf_tables generation")
}

fn step(what: &str, c: Cost) {
    eprintln!(
        "  step {what}: {:.0} ms CPU, {:.0} ms wall",
        ms(c.cpu),
        ms(c.wall)
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

fn main() {
    let services = env_or("SDNLINK_BENCH_SERVICES", 10_000);
    let endpoints = env_or("SDNLINK_BENCH_ENDPOINTS", 10);
    let rounds = env_or("SDNLINK_BENCH_ROUNDS", 3).max(1);
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
    let dir = tempfile::tempdir().expect("tempdir");

    let d0 = desired(services, endpoints, false);
    let d1 = desired(services, endpoints, true);

    let (creation, render) = measure(|| full_transaction(&d0, &Table::default()));
    let ours = dir.path().join("ours.nft");
    std::fs::write(&ours, creation.text()).expect("write ruleset");

    // The canonical ruleset file: what nft lists for the table the backend builds.
    let mut b = NftBackend::new(ns.clone());
    step(
        "first full sync",
        measure(|| rt.block_on(b.full_sync(&d0)).expect("full sync")).1,
    );
    let listing = dir.path().join("listing.nft");
    std::fs::write(&listing, nft(&ns, &["list", "table", "inet", "sdnlink"]))
        .expect("write listing");
    let rewrite = dir.path().join("rewrite.nft");
    std::fs::write(
        &rewrite,
        format!("flush table {TARGET}\n{}", creation.text()),
    )
    .expect("write rewrite");
    let json = nft(&ns, &["-j", "-p", "list", "table", "inet", "sdnlink"]);
    let (_, parse) = measure(|| parse_listing(&json).expect("listing parses"));

    // (b) full sync into an empty table, interleaved with its peers.
    let (mut full, mut peer_listing, mut peer_ours) = (vec![], vec![], vec![]);
    let mut full_commands = 0;
    for _ in 0..rounds {
        step("delete table", measure(|| delete_table(&ns)).1);
        peer_listing.push(nft_file(&ns, &listing));
        step("nft -f listing", peer_listing[peer_listing.len() - 1]);
        delete_table(&ns);
        peer_ours.push(nft_file(&ns, &ours));
        step("nft -f ours", peer_ours[peer_ours.len() - 1]);
        delete_table(&ns);
        let mut fresh = NftBackend::new(ns.clone());
        let ((n, read), c) = measure(|| rt.block_on(fresh.full_sync(&d0)).expect("full sync"));
        assert_eq!(read, FullRead::Listing);
        step("backend full sync", c);
        full_commands = n;
        full.push(c);
        b = fresh;
    }

    // (a) idle full resyncs, interleaved with the rewrite they replace.
    let (mut idle_gen, mut idle_list, mut peer_rewrite) = (vec![], vec![], vec![]);
    for _ in 0..rounds {
        peer_rewrite.push(nft_file(&ns, &rewrite));
        step("nft -f rewrite", peer_rewrite[peer_rewrite.len() - 1]);
        // The rewrite was a commit: the first resync lists, compares and writes nothing.
        let before = generation_of(&ns);
        let ((n, read), c) = measure(|| rt.block_on(b.full_sync(&d0)).expect("idle resync"));
        assert_eq!((n, read), (0, FullRead::Listing));
        step("idle resync, listing", c);
        idle_list.push(c);
        let ((n, read), c) = measure(|| rt.block_on(b.full_sync(&d0)).expect("idle resync"));
        assert_eq!((n, read), (0, FullRead::Generation));
        idle_gen.push(c);
        assert_eq!(
            generation_of(&ns),
            before,
            "an idle resync committed a transaction"
        );
    }

    // (c) one endpoint added, against nft -f of the same small change.
    let change = dir.path().join("change.nft");
    let back = dir.path().join("back.nft");
    let tx = incremental_transaction(&d0, &d1);
    std::fs::write(&change, tx.text()).expect("write change");
    std::fs::write(&back, incremental_transaction(&d1, &d0).text()).expect("write change");
    let (mut inc, mut peer_change) = (vec![], vec![]);
    let mut inc_commands = 0;
    for _ in 0..rounds {
        let (r, c) = measure(|| {
            use sdnlinkd::proxy::ProxyBackend;
            rt.block_on(b.sync(&d1, false)).expect("incremental sync")
        });
        step("backend endpoint change", c);
        assert!(!r.full, "an endpoint change is incremental");
        inc_commands = r.operations;
        inc.push(c);
        // The peer: back to d0 and the same change again, both by nft -f; then the backend
        // goes back to d0 itself, so its committed state stays what the kernel holds.
        nft_file(&ns, &back);
        peer_change.push(nft_file(&ns, &change));
        use sdnlinkd::proxy::ProxyBackend;
        let r = rt
            .block_on(b.sync(&d0, false))
            .expect("incremental sync back");
        assert!(!r.full && r.operations > 0);
    }

    let (full, peer_listing, peer_ours) = (median(full), median(peer_listing), median(peer_ours));
    let (idle_gen, idle_list, peer_rewrite) =
        (median(idle_gen), median(idle_list), median(peer_rewrite));
    let (inc, peer_change) = (median(inc), median(peer_change));
    println!(
        "nft_sync: {services} services x {endpoints} endpoints, {rounds} rounds (medians), \
         creation {} commands / {} objects, {:.1} MB",
        creation.commands(),
        creation.objects(),
        creation.text().len() as f64 / 1e6
    );
    println!(
        "  pure: render {:.1} ms, parse the JSON listing ({:.1} MB) {:.1} ms",
        ms(render.cpu),
        json.len() as f64 / 1e6,
        ms(parse.cpu)
    );
    println!("  (a) idle full resync: 0 commits (nf_tables generation unchanged), 0 commands");
    println!(
        "      generation unchanged: {:>8.1} ms CPU ({:.1} ms wall) = {:.4}x nft -f rewrite of the table ({:.0} ms CPU)",
        ms(idle_gen.cpu),
        ms(idle_gen.wall),
        ratio(idle_gen.cpu, peer_rewrite.cpu),
        ms(peer_rewrite.cpu)
    );
    println!(
        "      listing compared:     {:>8.1} ms CPU ({:.1} ms wall) = {:.2}x nft -f rewrite of the table",
        ms(idle_list.cpu),
        ms(idle_list.wall),
        ratio(idle_list.cpu, peer_rewrite.cpu)
    );
    println!(
        "  (b) full sync into an empty table: {:.0} ms CPU ({:.0} ms wall), {full_commands} commands",
        ms(full.cpu),
        ms(full.wall)
    );
    println!(
        "      = {:.2}x CPU ({:.2}x wall) nft -f of the listed ruleset ({:.0} ms CPU, {:.0} ms wall)",
        ratio(full.cpu, peer_listing.cpu),
        ratio(full.wall, peer_listing.wall),
        ms(peer_listing.cpu),
        ms(peer_listing.wall)
    );
    println!(
        "      = {:.2}x CPU ({:.2}x wall) nft -f of the backend's own text ({:.0} ms CPU)",
        ratio(full.cpu, peer_ours.cpu),
        ratio(full.wall, peer_ours.wall),
        ms(peer_ours.cpu)
    );
    println!(
        "  (c) one endpoint added: {inc_commands} commands ({} objects), {:.1} ms CPU ({:.1} ms wall) \
         = {:.2}x CPU nft -f of the same change ({:.1} ms CPU, {:.1} ms wall)",
        tx.objects(),
        ms(inc.cpu),
        ms(inc.wall),
        ratio(inc.cpu, peer_change.cpu),
        ms(peer_change.cpu),
        ms(peer_change.wall)
    );
}
