//! Runs the `#[ignore]`d IPVS tests of `crates/sdnlinkd/tests/ipvs_vm.rs` inside the QEMU VM (real Debian
//! kernel with ip_vs). `cargo test --test vm_ipvs` builds both test binaries first, so the
//! `ipvs_vm` binary next to this one is current.

use sdnlink_lab::qemu::{self, VmSpec};
use std::time::Duration;

fn run(filter: &str, timeout: Duration) -> qemu::VmOutcome {
    let bin = qemu::find_test_binary("ipvs_vm")
        .expect("tests/ipvs_vm.rs is built by the same cargo test");
    let spec = VmSpec {
        timeout,
        memory_mb: 1536,
        ..VmSpec::default()
    };
    qemu::run_test_binaries(&[bin], Some(filter), spec).expect("the VM runs the tests")
}

#[test]
#[ignore = "boots a QEMU VM as root: `sdnlink-lab vm-test` runs the same tests (.ci/run runs it)"]
fn vm_runs_the_ipvs_backend_tests() {
    let out = run("root_ipvs", Duration::from_secs(600));
    println!("{}", out.output);
    assert_eq!(
        out.exit_code, 0,
        "IPVS tests in the VM failed:\n{}",
        out.output
    );
    // The ignored tests really ran (a filter typo would run zero tests and pass).
    assert!(
        out.output.contains("test result: ok. 8 passed"),
        "{}",
        out.output
    );
}

#[test]
#[ignore = "benchmark in the QEMU VM (minutes): cargo test --test vm_ipvs -- --ignored --nocapture"]
fn vm_ipvs_bench() {
    let out = run("bench_ipvs", Duration::from_secs(1800));
    println!("{}", out.output);
    assert_eq!(out.exit_code, 0, "{}", out.output);
    assert!(
        out.output.contains("BENCH ipvs full sync"),
        "{}",
        out.output
    );
}
