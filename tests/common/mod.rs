//! Helpers shared by the root tests that build throwaway namespaces.

// Every test crate that includes this module compiles all of it; not every one uses each helper.
#![allow(dead_code)]

use std::process::Command;

/// Runs a setup command (`ip`, `nft`, ...) and returns its stdout; fails the test, with its
/// stderr, if it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("spawning {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Namespaces pinned under /run/netns whose name starts with `prefix`, sorted.
pub fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Deletes the namespaces a killed earlier run of a test left behind (`prefix` is that test's
/// own), so the test starts from the same state whatever ran before it. Returns their names.
pub fn remove_leftover_namespaces(prefix: &str) -> Vec<String> {
    let found = namespaces_with_prefix(prefix);
    for n in &found {
        let _ = Command::new("ip").args(["netns", "del", n]).output();
    }
    found
}
