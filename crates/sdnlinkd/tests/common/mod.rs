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

/// `nft monitor` running in a namespace: every nf_tables change committed there, as nft prints
/// it (one line per object, then `# new generation N by process P (nft)` per transaction).
/// Windows of its output are cut by marker transactions, so a test never depends on timing:
/// [`NftMonitor::start`] returns once the monitor has printed a first marker, and
/// [`NftMonitor::lines_until_marker`] returns everything printed before the next one.
#[allow(dead_code)] // used by the nftables tests only
pub struct NftMonitor {
    ns: String,
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    markers: u32,
}

#[allow(dead_code)]
impl NftMonitor {
    pub fn start(ns: &str) -> NftMonitor {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "nft", "monitor"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawning nft monitor");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut m = NftMonitor {
            ns: ns.to_string(),
            child,
            lines: rx,
            markers: 0,
        };
        // The monitor subscribes some time after it starts: commit markers until one shows.
        loop {
            m.markers += 1;
            let name = format!("sdnt-mon-{}", m.markers);
            sh(&[
                "ip", "netns", "exec", ns, "nft", "add", "table", "ip", &name,
            ]);
            let shown = std::iter::from_fn(|| {
                m.lines
                    .recv_timeout(std::time::Duration::from_millis(200))
                    .ok()
            })
            .any(|l| l == format!("add table ip {name}"));
            if shown {
                m.skip_generation_line();
                return m;
            }
            assert!(m.markers < 50, "nft monitor never printed a marker");
        }
    }

    fn skip_generation_line(&mut self) {
        let l = self.next_line();
        assert!(l.starts_with("# new generation"), "after a marker: {l:?}");
    }

    fn next_line(&mut self) -> String {
        self.lines
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("nft monitor printed nothing for 10 s after a marker transaction")
    }

    /// Everything the monitor printed since the last marker, up to a new one.
    pub fn lines_until_marker(&mut self) -> Vec<String> {
        self.markers += 1;
        let name = format!("sdnt-mon-{}", self.markers);
        sh(&[
            "ip", "netns", "exec", &self.ns, "nft", "add", "table", "ip", &name,
        ]);
        let marker = format!("add table ip {name}");
        let mut got = Vec::new();
        loop {
            let l = self.next_line();
            if l == marker {
                break;
            }
            got.push(l);
        }
        self.skip_generation_line();
        got
    }
}

impl Drop for NftMonitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
