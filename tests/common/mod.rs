//! Helpers shared by the root tests that build throwaway namespaces.

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
