//! The daemon end to end on the host kernel (root): lifecycle, adoption, repair, cleanup,
//! systemd notifications. Everything happens inside a throwaway "host" namespace so the
//! machine's real network is never touched; the daemon is started with `setns` into it only
//! (no private mount namespace), exactly as the lab starts it.
//!
//! Needs root, iproute2 and wireguard-go (the userspace tunnel) and nft.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// Names carry the test process id so runs from several checkouts never collide (interface
// names stay within the kernel's 15 bytes: "dm" + at most 7 digits + suffix).
static HOST: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("sdnt-dm{}-host", std::process::id()));
static NS: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("sdnt-dm{}-ns", std::process::id()));
static VETH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("dm{}v", std::process::id()));
static WG: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("dm{}wg", std::process::id()));
const PROTO: &str = "245";

/// Both tests use the same namespace names; run them one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn in_host(args: &[&str]) -> String {
    let mut v = vec!["ip", "netns", "exec", HOST.as_str()];
    v.extend_from_slice(args);
    sh(&v)
}

/// What the host namespace looks like (links without counters, addresses, our routes) and
/// whether our namespace exists.
fn host_state() -> String {
    let netns = sh(&["ip", "netns", "list"])
        .lines()
        .filter(|l| l.starts_with(NS.as_str()))
        .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "netns: {netns}\nlinks:\n{}\naddrs:\n{}\nroutes:\n{}",
        in_host(&["ip", "-br", "link"]),
        in_host(&["ip", "-br", "addr"]),
        in_host(&["ip", "route", "show", "proto", PROTO])
    )
}

/// `state` without what a re-created veth legitimately changes: the peer's ifindex (`@ifN`),
/// the MAC address, the derived IPv6 link-local address, and the listing order (by ifindex).
fn normalized(state: &str) -> String {
    let mut lines: Vec<String> = state
        .lines()
        .map(|l| {
            l.split_whitespace()
                .filter(|t| !(t.len() == 17 && t.matches(':').count() == 5))
                .filter(|t| !t.starts_with("fe80::"))
                .map(|t| t.split("@if").next().unwrap_or(t))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    lines.sort();
    lines.join("\n")
}

fn ns_state() -> String {
    let mut v = vec!["ip", "netns", "exec", NS.as_str()];
    let mut out = String::new();
    for cmd in [
        &["ip", "-br", "addr"][..],
        &["ip", "route", "show", "proto", PROTO][..],
    ] {
        v.truncate(4);
        v.extend_from_slice(cmd);
        out.push_str(&sh(&v));
    }
    out
}

struct Lab {
    dir: tempfile::TempDir,
    /// Daemons started, killed on drop: a live daemon would re-pin its namespace after the
    /// cleanup removed it.
    pids: std::cell::RefCell<Vec<u32>>,
}

impl Lab {
    fn new() -> Lab {
        // Leftovers of a killed earlier run with the same pid.
        for n in [NS.as_str(), HOST.as_str()] {
            let _ = Command::new("ip")
                .args(["netns", "del", n])
                .stderr(Stdio::null())
                .status();
        }
        let ok = Command::new("ip")
            .args(["netns", "add", HOST.as_str()])
            .status()
            .expect("ip netns add");
        assert!(ok.success());
        in_host(&["ip", "link", "set", "lo", "up"]);
        Lab {
            dir: tempfile::tempdir().expect("tempdir"),
            pids: Default::default(),
        }
    }

    fn config(&self) -> PathBuf {
        let d = self.dir.path();
        let cfg = format!(
            r#"
log_level = "debug"
resync_interval = 2
control_socket = "{d}/control.sock"
state_dir = "{d}/state"
[local]
name = "east"
node_name = "node-1"
pod_cidrs = ["10.128.0.0/14"]
service_cidrs = ["172.30.0.0/16"]
[namespace]
name = "{ns}"
host_interface = "{veth}"
transit_cidr = "169.254.100.0/30"
route_protocol = {PROTO}
[tunnel]
interface = "{wg}"
listen_port = 51999
private_key_file = "{d}/key/private.key"
mode = "userspace"
[proxy]
backend = "nftables"
[dns]
address = "169.254.20.53"
upstreams = ["192.0.2.53"]
[sync]
startup_grace = 1
[[remote]]
name = "west"
pod_cidrs = ["10.132.0.0/14"]
service_cidrs = ["172.31.0.0/16"]
[[remote.peers]]
public_key = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
endpoint = "198.51.100.7:51820"
allowed_ips = ["10.132.0.0/23"]
"#,
            d = d.display(),
            ns = *NS,
            veth = *VETH,
            wg = *WG,
        );
        let p = d.join("sdnlink.toml");
        std::fs::write(&p, cfg).expect("write config");
        p
    }

    /// A notify socket drained by a thread into a shared list, as systemd would: an unread
    /// socket fills up and the daemon drops what does not fit.
    fn notify_socket(&self) -> (PathBuf, Notes) {
        let p = self.dir.path().join(format!(
            "notify-{}.sock",
            NOTIFY_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&p);
        let s = UnixDatagram::bind(&p).expect("bind notify socket");
        let notes = Notes::default();
        let sink = notes.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.recv(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.0.lock().unwrap_or_else(|e| e.into_inner()).push(m);
            }
        });
        (p, notes)
    }

    fn spawn(&self, cfg: &Path, notify: &Path) -> Child {
        let host = std::fs::File::open(format!("/run/netns/{}", *HOST)).expect("host ns");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sdnlinkd"));
        cmd.arg("--config")
            .arg(cfg)
            .arg("run")
            .env("NOTIFY_SOCKET", notify)
            .env("WATCHDOG_USEC", "4000000")
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.path().join("daemon.log"))
                    .expect("log file"),
            ));
        let fd = host.as_raw_fd();
        // SAFETY: only async-signal-safe calls (setns) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn sdnlinkd");
        self.pids.borrow_mut().push(child.id());
        child
    }

    /// Runs `sdnlinkd --config cfg ARGS` in the host namespace. Not through `ip netns exec`:
    /// that gives the child a private mount namespace, where unmounting our /run/netns pin
    /// would not reach the real one.
    fn tool(&self, cfg: &Path, args: &[&str]) -> std::process::Output {
        let host = std::fs::File::open(format!("/run/netns/{}", *HOST)).expect("host ns");
        let fd = host.as_raw_fd();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sdnlinkd"));
        cmd.arg("--config").arg(cfg).args(args);
        // SAFETY: only async-signal-safe calls (setns) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.output().expect("run tool")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for pid in self.pids.borrow().iter() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let cfg = self.dir.path().join("sdnlink.toml");
        if cfg.exists() {
            let _ = self.tool(&cfg, &["cleanup"]);
        }
        let _ = Command::new("ip")
            .args(["netns", "del", NS.as_str()])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", HOST.as_str()])
            .status();
    }
}

static NOTIFY_SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Notifications received so far, in order.
#[derive(Clone, Default)]
struct Notes(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

/// Waits until a notification not yet consumed contains `want`; `seen` collects everything
/// consumed so far (for messages and ordering checks).
fn wait_for(notes: &Notes, want: &str, within: Duration, seen: &mut Vec<String>) -> bool {
    let end = Instant::now() + within;
    loop {
        let fresh: Vec<String> = {
            let all = notes.0.lock().unwrap_or_else(|e| e.into_inner());
            all[seen.len().min(all.len())..].to_vec()
        };
        for m in fresh {
            let hit = m.contains(want);
            seen.push(m);
            if hit {
                return true;
            }
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The interfaces served by running wireguard-go processes of this test (their last argument).
fn userspace_tunnels() -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_wg_go = args.first().is_some_and(|a| a.ends_with("wireguard-go"));
        match args.last() {
            Some(iface) if is_wg_go && iface.starts_with(WG.as_str()) => found.push(iface.clone()),
            _ => {}
        }
    }
    found.sort();
    found
}

fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn root_daemon_lifecycle_adopt_repair_cleanup() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let lab = Lab::new();
    let cfg = lab.config();
    let before = host_state();

    let (np, ns) = lab.notify_socket();
    let mut daemon = lab.spawn(&cfg, &np);
    let mut seen = Vec::new();
    assert!(
        wait_for(&ns, "READY=1", Duration::from_secs(60), &mut seen),
        "no READY=1; got {seen:?}\nlog:\n{}",
        lab.log()
    );
    // STATUS= lines came before READY, and READY only once the namespace is in place.
    assert!(
        seen.iter().any(|m| m.contains("STATUS=starting")),
        "{seen:?}"
    );
    let up = host_state();
    assert!(up.contains(&format!("netns: {}", *NS)), "{up}");
    assert!(up.contains(VETH.as_str()), "{up}");
    for want in ["10.132.0.0/14", "172.31.0.0/16", "169.254.20.53"] {
        assert!(up.contains(want), "host route to {want} missing:\n{up}");
    }
    let inside = ns_state();
    assert!(inside.contains("169.254.100.2/30"), "{inside}");
    assert!(inside.contains("169.254.20.53/32"), "{inside}");
    assert!(inside.contains("10.128.0.0/14"), "{inside}");
    assert!(
        inside.contains("10.132.0.0/23"),
        "route via tunnel missing:\n{inside}"
    );
    // The watchdog is petted from the loop.
    assert!(
        wait_for(&ns, "WATCHDOG=1", Duration::from_secs(10), &mut seen),
        "{seen:?}"
    );

    // status over the control socket.
    let st = lab.tool(&cfg, &["status", "--json"]);
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).expect("status json");
    assert_eq!(v["phase"], "ready", "{v}");

    // kill -9 and restart: nothing changes.
    daemon.kill().expect("kill -9");
    let _ = daemon.wait();
    let after_kill = host_state();
    assert_eq!(
        up, after_kill,
        "a killed daemon must leave the dataplane in place"
    );
    let (np2, ns2) = lab.notify_socket();
    let mut daemon = lab.spawn(&cfg, &np2);
    let mut seen2 = Vec::new();
    assert!(
        wait_for(&ns2, "READY=1", Duration::from_secs(60), &mut seen2),
        "{seen2:?}\n{}",
        lab.log()
    );
    assert_eq!(up, host_state(), "restart must adopt without changes");
    assert_eq!(inside, ns_state(), "restart must adopt without changes");

    // Out-of-band deletion of the veth comes back (netlink event or resync, 2 s here).
    in_host(&["ip", "link", "del", VETH.as_str()]);
    assert!(!host_state().contains(VETH.as_str()));
    assert!(
        wait_until(Duration::from_secs(15), || normalized(&host_state())
            == normalized(&up)),
        "veth not restored:\n{}\nlog:\n{}",
        host_state(),
        lab.log()
    );
    assert!(
        wait_until(Duration::from_secs(15), || normalized(&ns_state())
            == normalized(&inside)),
        "namespace not restored:\n{}\nexpected:\n{}",
        normalized(&ns_state()),
        normalized(&inside)
    );

    // An invalid reload keeps the running config and says why.
    let good = std::fs::read_to_string(&cfg).expect("read");
    std::fs::write(&cfg, good.replace("name = \"west\"", "name = \"all\"")).expect("write");
    let r = lab.tool(&cfg, &["reload"]);
    assert!(!r.status.success(), "an invalid reload must fail");
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("reserved for the merged cluster.all zone"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    std::fs::write(&cfg, &good).expect("write");
    let r = lab.tool(&cfg, &["reload"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(
        wait_for(&ns2, "RELOADING=1", Duration::from_secs(5), &mut seen2),
        "{seen2:?}"
    );

    // The TCP MSS clamp names the tunnel interface.
    let mss = || {
        sh(&[
            "ip",
            "netns",
            "exec",
            NS.as_str(),
            "nft",
            "list",
            "table",
            "inet",
            "sdnlink-mss",
        ])
    };
    assert!(mss().contains(&format!("oifname \"{}\"", *WG)), "{}", mss());

    // Renaming the tunnel interface replaces the device: nothing of the old one stays behind.
    let wg2 = format!("{}x", *WG);
    std::fs::write(
        &cfg,
        good.replace(
            &format!("interface = \"{}\"", *WG),
            &format!("interface = \"{wg2}\""),
        ),
    )
    .expect("write");
    let r = lab.tool(&cfg, &["reload"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let links = sh(&["ip", "-n", NS.as_str(), "-br", "link"]);
    let names: Vec<&str> = links
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        names.contains(&wg2.as_str()) && !names.contains(&WG.as_str()),
        "want {wg2} instead of {}:\n{links}",
        *WG
    );
    assert_eq!(
        userspace_tunnels(),
        vec![wg2.clone()],
        "exactly one wireguard-go, serving the new interface"
    );
    assert!(
        ns_state().contains(&format!("10.132.0.0/23 dev {wg2}")),
        "{}",
        ns_state()
    );
    assert!(mss().contains(&format!("oifname \"{wg2}\"")), "{}", mss());

    // SIGTERM: STOPPING=1, dataplane stays.
    let before_term = host_state();
    let pid = nix::unistd::Pid::from_raw(daemon.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    assert!(
        wait_for(&ns2, "STOPPING=1", Duration::from_secs(10), &mut seen2),
        "{seen2:?}"
    );
    let status = daemon.wait().expect("wait");
    assert!(
        status.success(),
        "exit after SIGTERM: {status:?}\n{}",
        lab.log()
    );
    assert_eq!(
        before_term,
        host_state(),
        "SIGTERM must leave the dataplane in place"
    );

    // cleanup returns the host to exactly its previous state; twice is fine.
    let c = lab.tool(&cfg, &["cleanup"]);
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    assert_eq!(before, host_state());
    let c = lab.tool(&cfg, &["cleanup"]);
    assert!(
        c.status.success(),
        "second cleanup: {}",
        String::from_utf8_lossy(&c.stderr)
    );
    assert_eq!(before, host_state());
}

#[test]
fn root_invalid_config_exits_before_ready() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let lab = Lab::new();
    let cfg = lab.config();
    let text = std::fs::read_to_string(&cfg).expect("read");
    std::fs::write(&cfg, text.replace("10.132.0.0/14", "10.128.0.0/14")).expect("write");
    let (np, ns) = lab.notify_socket();
    let mut child = lab.spawn(&cfg, &np);
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(2));
    let mut seen = Vec::new();
    assert!(!wait_for(
        &ns,
        "READY=1",
        Duration::from_millis(500),
        &mut seen
    ));
    assert!(
        lab.log().contains("overlaps"),
        "the reason must be logged: {}",
        lab.log()
    );
    // Nothing was created.
    assert!(!sh(&["ip", "netns", "list"]).contains(NS.as_str()));
}
