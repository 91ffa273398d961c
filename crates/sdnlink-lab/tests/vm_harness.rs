//! The VM harness itself: boots the Debian cloud kernel under QEMU (needs root only for the
//! cache under /var/cache; needs qemu-system-x86, busybox-static, cpio, kmod and apt access
//! to fetch the kernel on first use).

use sdnlink_lab::qemu::{self, VmSpec};
use std::time::Duration;

#[test]
#[ignore = "boots a QEMU VM as root: `cargo test --test vm_harness -- --ignored` (.ci/run runs it)"]
fn vm_boots_and_reports_exit_code_and_output() {
    let spec = VmSpec {
        command: "echo payload-says-hi; cat /proc/net/ip_vs | head -1; \
                  test -d /sys/module/wireguard && echo wg-loaded; exit 7"
            .into(),
        timeout: Duration::from_secs(300),
        ..VmSpec::default()
    };
    let out = qemu::run(&spec).expect("the VM boots and prints the result marker");
    assert_eq!(out.exit_code, 7, "console:\n{}", out.console);
    assert!(
        out.output.contains("payload-says-hi"),
        "output: {}",
        out.output
    );
    // /proc/net/ip_vs exists only when ip_vs.ko loaded: proves the module tree and depmod.
    assert!(
        out.output.contains("IP Virtual Server"),
        "output: {}",
        out.output
    );
    assert!(out.output.contains("wg-loaded"), "output: {}", out.output);
}

#[test]
fn result_marker_is_parsed_from_a_console_transcript() {
    let console = "boot noise\n\x1bc\x1b[2JSDNLINK_VM_BEGIN\nline one\nline two\nSDNLINK_VM_RESULT rc=3\nreboot: Power down\n";
    let out = qemu::parse_outcome(console, Duration::ZERO).expect("markers present");
    assert_eq!(out.exit_code, 3);
    assert_eq!(out.output, "line one\nline two\n");
    assert!(qemu::parse_outcome("no markers here\n", Duration::ZERO).is_err());
}
