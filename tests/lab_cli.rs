//! Root test of `sdnlink-lab up` / `down` as processes: `up` returns with the lab held by a
//! background process, a second `up` refuses naming `sdnlink-lab down`, `down` removes exactly
//! what `up` created. Uses its own prefix (`labc-`) so it never meets a user's lab.

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
