//! Root test of `sdnlink-lab up` / `down` as processes: `up` returns with the lab held by a
//! background process, a second `up` refuses naming `sdnlink-lab down`, `down` removes exactly
//! what `up` created. Uses its own prefix (`labc-`) so it never meets a user's lab.

// The daemon crate's root-test helpers (leftover namespaces of an aborted run).
#[path = "../../sdnlinkd/tests/common/mod.rs"]
mod common;
use std::process::Command;

const PREFIX: &str = "labc-";

fn lab(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sdnlink-lab"))
        .args(["--prefix", PREFIX])
        .args(args)
        .output()
        .expect("running sdnlink-lab")
}

fn namespaces() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(PREFIX))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Runs `down` even when an assertion fails half-way.
struct Down;
impl Drop for Down {
    fn drop(&mut self) {
        let _ = lab(&["down"]);
    }
}

#[test]
fn root_lab_cli_up_refuses_twice_and_down_removes_everything() {
    // What a killed earlier run left: its holder process and state go with `down` (a no-op
    // without state), stray namespaces directly.
    let _ = lab(&["down"]);
    common::remove_leftover_namespaces(PREFIX);
    assert!(
        namespaces().is_empty(),
        "a previous {PREFIX} lab is still up"
    );
    let _guard = Down;
    let up = lab(&["up", "--topology-only"]);
    let stdout = String::from_utf8_lossy(&up.stdout);
    assert!(
        up.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(
        stdout.contains(&format!("ip netns exec {PREFIX}east-n1-p1 ")),
        "{stdout}"
    );
    // 1 underlay + 2 clusters x 2 nodes x (1 node + 2 pods).
    assert_eq!(namespaces().len(), 13, "{:?}", namespaces());

    let again = lab(&["up", "--topology-only"]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("sdnlink-lab down"), "{err}");
    assert_eq!(
        namespaces().len(),
        13,
        "the refused up touched the running lab"
    );

    let down = lab(&["down"]);
    assert!(
        down.status.success(),
        "{}{}",
        String::from_utf8_lossy(&down.stdout),
        String::from_utf8_lossy(&down.stderr)
    );
    assert_eq!(namespaces(), Vec::<String>::new());
    assert!(!std::path::Path::new("/run/sdnlink-lab/labc").exists());
    assert!(!std::path::Path::new("/run/sdnlink-lab/labc-holder.log").exists());
}

/// A fresh machine without one prerequisite: the lab stops before building anything, with one
/// line naming the program and the exact apt-get command, and a non-zero exit. Not root: it
/// creates nothing.
#[test]
fn lab_without_nft_names_it_and_the_apt_get_line_and_builds_nothing() {
    let bin = tempfile::tempdir().expect("tempdir");
    // Every other prerequisite is present (as /bin/true), so the message is the same on any
    // machine.
    for tool in ["ip", "wg", "wireguard-go", "ipvsadm", "apt-get", "dpkg"] {
        std::os::unix::fs::symlink("/bin/true", bin.path().join(tool)).expect("symlink");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_sdnlink-lab"))
        .args(["--prefix", "labp-"])
        .env("PATH", bin.path())
        // Under `cargo run` the lab builds the daemon first; the check must come before that.
        .env("CARGO", bin.path().join("cargo-that-must-not-run"))
        .output()
        .expect("running sdnlink-lab");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exit 0 without nft: {stderr}");
    assert_eq!(
        stderr.trim_end(),
        "sdnlink-lab: missing nft: run `apt-get install -y nftables` (or pass --install-deps)"
    );
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!std::path::Path::new("/run/sdnlink-lab/labp").exists());
    assert!(!std::path::Path::new("/run/netns/labp-underlay").exists());
}
