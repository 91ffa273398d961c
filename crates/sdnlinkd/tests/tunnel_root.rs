//! Root tests of the tunnel: two throwaway "nodes", each a host namespace plus an sdnlinkd
//! namespace, joined by a veth underlay. The userspace backend (wireguard-go) runs on the host
//! kernel; the kernel backend needs the wireguard module and runs in the QEMU VM harness.
//! Needs root and the Debian packages wireguard-go, wireguard-tools, iproute2, iputils-ping.

use sdnlinkd::config::{parse_str, Config};
use sdnlinkd::netns::NetNs;
use sdnlinkd::tunnel::{self, DesiredPeers, PrivateKey, Tunnel};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const POD1: &str = "10.132.1.1";
const POD2: &str = "10.136.2.1";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn wg_go_pid(iface: &str) -> Option<i32> {
    let s = UnixStream::connect(format!("/var/run/wireguard/{iface}.sock")).ok()?;
    nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::PeerCredentials)
        .ok()
        .map(|c| c.pid())
}

/// Deletes the test's namespaces and stops the wireguard-go processes serving its interfaces,
/// even when the test fails.
struct Lab {
    tag: String,
    mode: &'static str,
    /// Holds the key files; `None` in an owner process, which uses its parent's folder.
    tmp: Option<tempfile::TempDir>,
    dir: std::path::PathBuf,
}

impl Lab {
    fn ns(&self, what: &str) -> String {
        format!("sdnt-t2-{}-{what}", self.tag)
    }
    fn wg(&self, n: u8) -> String {
        format!("sdnt-t2-{}w{n}", self.tag)
    }
    fn teardown(&self) {
        for n in [1, 2] {
            if let Some(pid) = wg_go_pid(&self.wg(n)) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        for what in ["h1", "s1", "h2", "s2"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(what)])
                .output();
        }
    }

    /// Node n: host namespace hn with underlay 192.168.250.n/24, sdnlinkd namespace sn with the
    /// pod address on lo.
    fn new(tag: &str, mode: &'static str) -> Lab {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        let tmp = tempfile::tempdir().expect("tempdir");
        let lab = Lab {
            tag: tag.into(),
            mode,
            dir: tmp.path().to_path_buf(),
            tmp: Some(tmp),
        };
        lab.teardown();
        for what in ["h1", "s1", "h2", "s2"] {
            ip(&["netns", "add", &lab.ns(what)]);
        }
        let (u1, u2) = (format!("sdnt-t2-{tag}u1"), format!("sdnt-t2-{tag}u2"));
        ip(&[
            "-n",
            &lab.ns("h1"),
            "link",
            "add",
            &u1,
            "type",
            "veth",
            "peer",
            "name",
            &u2,
            "netns",
            &lab.ns("h2"),
        ]);
        for (n, u, pod) in [(1, &u1, POD1), (2, &u2, POD2)] {
            let h = lab.ns(&format!("h{n}"));
            let s = lab.ns(&format!("s{n}"));
            ip(&[
                "-n",
                &h,
                "addr",
                "add",
                &format!("192.168.250.{n}/24"),
                "dev",
                u,
            ]);
            ip(&["-n", &h, "link", "set", u, "up"]);
            ip(&["-n", &h, "link", "set", "lo", "up"]);
            ip(&["-n", &s, "link", "set", "lo", "up"]);
            ip(&["-n", &s, "addr", "add", &format!("{pod}/32"), "dev", "lo"]);
        }
        lab
    }

    /// Node n's config: local cluster of its pod, the other node as a static peer.
    fn config(&self, n: u8, peer_key: Option<&str>) -> Config {
        let (local, lpods, remote, rpods, rsvc, lsvc) = if n == 1 {
            (
                "east",
                "10.132.0.0/14",
                "west",
                "10.136.0.0/14",
                "172.31.0.0/16",
                "172.30.0.0/16",
            )
        } else {
            (
                "west",
                "10.136.0.0/14",
                "east",
                "10.132.0.0/14",
                "172.30.0.0/16",
                "172.31.0.0/16",
            )
        };
        let other = 3 - n;
        let peer_subnet = if n == 1 {
            "10.136.2.0/24"
        } else {
            "10.132.1.0/24"
        };
        let peers = peer_key
            .map(|k| {
                format!(
                    "[[remote.peers]]\npublic_key = \"{k}\"\nendpoint = \"192.168.250.{other}:51820\"\nallowed_ips = [\"{peer_subnet}\"]\n"
                )
            })
            .unwrap_or_default();
        let key_file = self.dir.join(format!("key{n}"));
        parse_str(&format!(
            r#"
[local]
name = "{local}"
pod_cidrs = ["{lpods}"]
service_cidrs = ["{lsvc}"]
# Explicit upstreams: a VM or container may have no /etc/resolv.conf.
[dns]
upstreams = ["192.0.2.53:53"]
[tunnel]
interface = "{wg}"
mode = "{mode}"
private_key_file = "{key}"
persistent_keepalive = 5
[[remote]]
name = "{remote}"
pod_cidrs = ["{rpods}"]
service_cidrs = ["{rsvc}"]
{peers}
"#,
            wg = self.wg(n),
            key = key_file.display(),
            mode = self.mode,
        ))
        .expect("test config is valid")
    }

    fn key(&self, n: u8) -> PrivateKey {
        tunnel::load_or_create(&self.dir.join(format!("key{n}"))).expect("key file")
    }

    fn netns(&self, what: &str) -> NetNs {
        NetNs::open(&self.ns(what)).expect("open test namespace")
    }

    /// What the node plumbing does in the daemon: route the peer's subnet via the tunnel.
    fn route(&self, n: u8, subnet: &str) {
        let (s, wg, src) = (
            self.ns(&format!("s{n}")),
            self.wg(n),
            if n == 1 { POD1 } else { POD2 },
        );
        ip(&["-n", &s, "route", "replace", subnet, "dev", &wg, "src", src]);
    }

    fn ping(&self, n: u8, to: &str) -> bool {
        let src = if n == 1 { POD1 } else { POD2 };
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(&format!("s{n}")),
                "ping",
                "-c1",
                "-W1",
                "-I",
                src,
                to,
            ])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// `wg show` and links of both nodes, for failure messages.
    fn diag(&self) -> String {
        let mut out = String::new();
        for n in [1u8, 2] {
            for args in [
                vec!["wg".to_string(), "show".into(), self.wg(n)],
                vec![
                    "ip".into(),
                    "-n".into(),
                    self.ns(&format!("s{n}")),
                    "-d".into(),
                    "link".into(),
                    "show".into(),
                    self.wg(n),
                ],
                vec![
                    "ip".into(),
                    "-n".into(),
                    self.ns(&format!("s{n}")),
                    "route".into(),
                ],
            ] {
                if let Ok(o) = Command::new(&args[0]).args(&args[1..]).output() {
                    out.push_str(&format!(
                        "$ {}\n{}{}\n",
                        args.join(" "),
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    ));
                }
            }
        }
        out
    }

    /// Retries cover a lost first handshake: wireguard-go learns that its moved link is up by
    /// polling once a second (its cross-namespace "hack listener"), and a handshake initiation
    /// sent before that is only retried after REKEY_TIMEOUT (5 s).
    fn ping_within(&self, n: u8, to: &str, tries: usize) -> bool {
        let start = std::time::Instant::now();
        let ok = (0..tries).any(|_| self.ping(n, to));
        eprintln!("ping {to} from node {n}: {ok} after {:?}", start.elapsed());
        ok
    }

    async fn start(&self, n: u8, peer: u8) -> (Tunnel, DesiredPeers) {
        let peer_pub = self.key(peer).public_key().to_base64();
        let cfg = self.config(n, Some(&peer_pub));
        let t = Tunnel::ensure(
            &cfg,
            self.netns(&format!("h{n}")),
            self.netns(&format!("s{n}")),
            self.key(n),
        )
        .await
        .expect("ensure tunnel");
        let desired = tunnel::desired_peers(&cfg, &Default::default());
        assert_eq!(desired.peers.len(), 1, "{desired:?}");
        (t, desired)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // An owner process works in its parent's lab; the parent tears it down.
        if self.tmp.is_some() {
            self.teardown();
        }
    }
}

fn has_wireguard_go() -> bool {
    Path::new("/usr/bin/wireguard-go").exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_userspace_tunnel_passes_traffic_peer_removal_stops_it_and_device_comes_back() {
    assert!(has_wireguard_go(), "install the wireguard-go package");
    traffic_removal_recreation(Lab::new("a", "userspace"), tunnel::Backend::Userspace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs kernel WireGuard: runs in the QEMU VM harness"]
async fn root_kernel_tunnel_passes_traffic_peer_removal_stops_it_and_device_comes_back() {
    traffic_removal_recreation(Lab::new("k", "kernel"), tunnel::Backend::Kernel).await;
}

/// Whether this kernel can create a WireGuard link (probed in a throwaway namespace).
fn kernel_has_wireguard() -> bool {
    let ns = "sdnt-t2-probe";
    let _ = Command::new("ip").args(["netns", "del", ns]).output();
    ip(&["netns", "add", ns]);
    let ok = Command::new("ip")
        .args(["-n", ns, "link", "add", "sdnt-t2-pr", "type", "wireguard"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let _ = Command::new("ip").args(["netns", "del", ns]).output();
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_auto_mode_picks_what_the_kernel_has() {
    let expected = if kernel_has_wireguard() {
        tunnel::Backend::Kernel
    } else {
        tunnel::Backend::Userspace
    };
    let lab = Lab::new("d", "auto");
    let (t1, _) = lab.start(1, 2).await;
    assert_eq!(t1.backend(), expected);
    // The probe must not leave a kernel link behind in the host namespace.
    let host_link = Command::new("ip")
        .args(["-n", &lab.ns("h1"), "link", "show", &lab.wg(1)])
        .output()
        .expect("ip");
    assert!(
        !host_link.status.success(),
        "device must live only in the sdnlinkd namespace"
    );
}

async fn traffic_removal_recreation(lab: Lab, backend: tunnel::Backend) {
    let (mut t1, d1) = lab.start(1, 2).await;
    let (mut t2, d2) = lab.start(2, 1).await;
    assert_eq!(t1.backend(), backend);

    let r1 = t1.sync(&d1, true).await.expect("sync 1");
    let r2 = t2.sync(&d2, false).await.expect("sync 2");
    let per = backend.messages_per_update();
    assert_eq!((r1.added, r1.messages), (1, per), "{r1:?}");
    assert_eq!((r2.added, r2.messages), (1, per), "{r2:?}");
    assert_eq!(d1.routes(), vec!["10.136.2.0/24".parse().expect("net")]);
    lab.route(1, "10.136.2.0/24");
    lab.route(2, "10.132.1.0/24");
    assert!(
        lab.ping_within(1, POD2, 20),
        "pod 1 -> pod 2 over the tunnel\n{}",
        lab.diag()
    );
    assert!(lab.ping(2, POD1), "pod 2 -> pod 1 over the tunnel");

    // The UDP socket is on the host side: it listens in h1, not in s1.
    let ss = |ns: &str| {
        let o = Command::new("ip")
            .args(["netns", "exec", ns, "ss", "-uln"])
            .output()
            .expect("ss");
        String::from_utf8_lossy(&o.stdout).contains(":51820")
    };
    assert!(
        !ss(&lab.ns("s1")),
        "no listen socket in the sdnlinkd namespace"
    );
    if backend == tunnel::Backend::Userspace {
        assert!(
            ss(&lab.ns("h1")),
            "wireguard-go listens in the host namespace"
        );
    }

    let st = t1.status().await;
    assert_eq!(st.error, None);
    assert_eq!(st.peers.len(), 1);
    let p = &st.peers[0];
    assert_eq!(p.cluster.as_deref(), Some("west"));
    assert!(
        p.latest_handshake_age_secs.is_some() && p.rx_bytes > 0 && p.tx_bytes > 0,
        "{p:?}"
    );
    let json = serde_json::to_string(&st).expect("status serializes");
    assert!(json.contains(&lab.key(1).public_key().to_base64()));
    let private = std::fs::read_to_string(lab.dir.join("key1")).expect("key file");
    assert!(
        !json.contains(private.trim()),
        "status must never carry the private key"
    );
    assert!(!format!("{t1:?}").contains(private.trim()));

    // Nothing changed: an incremental and a full sync send nothing.
    let again = t1.sync(&d1, false).await.expect("sync");
    assert_eq!(again.messages, 0, "{again:?}");
    let full = t1.sync(&d1, true).await.expect("full sync");
    assert_eq!((full.messages, full.recreated), (0, false), "{full:?}");

    // Removing the peer costs one message and stops the traffic to its subnet.
    let removed = t1
        .sync(&DesiredPeers::default(), false)
        .await
        .expect("remove");
    assert_eq!((removed.removed, removed.messages), (1, per), "{removed:?}");
    assert!(
        !lab.ping_within(1, POD2, 2),
        "traffic must stop without the peer"
    );

    // Deleted out of band: the next full sync re-creates the device and its peer.
    ip(&["-n", &lab.ns("s1"), "link", "del", &lab.wg(1)]);
    let rebuilt = t1.sync(&d1, true).await.expect("full sync after delete");
    assert!(rebuilt.recreated && rebuilt.added == 1, "{rebuilt:?}");
    lab.route(1, "10.136.2.0/24");
    assert!(
        lab.ping_within(1, POD2, 20),
        "traffic back after re-creation\n{}",
        lab.diag()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_userspace_restart_keeps_tcp_stream() {
    assert!(has_wireguard_go(), "install the wireguard-go package");
    restart_keeps_tcp_stream(Lab::new("b", "userspace")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs kernel WireGuard: runs in the QEMU VM harness"]
async fn root_kernel_restart_keeps_tcp_stream() {
    restart_keeps_tcp_stream(Lab::new("r", "kernel")).await;
}

async fn restart_keeps_tcp_stream(lab: Lab) {
    let (mut t1, d1) = lab.start(1, 2).await;
    let (mut t2, d2) = lab.start(2, 1).await;
    t1.sync(&d1, true).await.expect("sync 1");
    t2.sync(&d2, true).await.expect("sync 2");
    lab.route(1, "10.136.2.0/24");
    lab.route(2, "10.132.1.0/24");
    assert!(lab.ping_within(1, POD2, 20), "tunnel up\n{}", lab.diag());

    let s2 = lab.netns("s2");
    let addr: SocketAddr = format!("{POD2}:7000").parse().expect("addr");
    let listener = s2
        .run(move || TcpListener::bind(addr))
        .expect("ns")
        .expect("bind");
    let echo = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 64];
        loop {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut conn = lab
        .netns("s1")
        .run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
        .expect("ns")
        .expect("connect over the tunnel");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut roundtrip = |msg: &[u8]| {
        conn.write_all(msg).expect("write");
        let mut got = vec![0u8; msg.len()];
        conn.read_exact(&mut got).expect("echo");
        assert_eq!(got, msg);
    };
    roundtrip(b"before restart");

    // "Restart": the daemon's Tunnel goes away (wireguard-go is not its child to kill) and a new
    // one adopts the device.
    let pid_before = wg_go_pid(&lab.wg(1));
    drop(t1);
    roundtrip(b"while the daemon is down");
    let cfg = lab.config(1, Some(&lab.key(2).public_key().to_base64()));
    let mut t1 = Tunnel::ensure(&cfg, lab.netns("h1"), lab.netns("s1"), lab.key(1))
        .await
        .expect("adopt");
    let r = t1.sync(&d1, true).await.expect("sync after restart");
    assert_eq!(
        (r.messages, r.recreated),
        (0, false),
        "adoption must not touch the device: {r:?}"
    );
    assert_eq!(t1.messages_sent(), 0, "same key and port: nothing set");
    assert_eq!(
        wg_go_pid(&lab.wg(1)),
        pid_before,
        "same wireguard-go process"
    );
    roundtrip(b"after restart");
    drop(conn);
    echo.join().expect("echo thread");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_userspace_cleanup_is_idempotent() {
    assert!(has_wireguard_go(), "install the wireguard-go package");
    let lab = Lab::new("c", "userspace");
    let (t1, _) = lab.start(1, 2).await;
    let pid = wg_go_pid(&lab.wg(1)).expect("wireguard-go answers");
    drop(t1);
    let cfg = lab.config(1, None);
    let (h, s) = (lab.netns("h1"), lab.netns("s1"));
    let rep = tunnel::cleanup_in(&cfg, &h, Some(&s))
        .await
        .expect("cleanup");
    assert_eq!(rep.stopped_pid, Some(pid), "{rep}");
    assert_eq!(wg_go_pid(&lab.wg(1)), None);
    // wireguard-go is this test process's child (the dropped Tunnel started it): its reaper
    // thread must collect it, so it leaves no `<defunct>` entry behind.
    let gone = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    assert!(
        gone,
        "wireguard-go {pid} was not reaped (zombie or still running)"
    );
    let links = Command::new("ip")
        .args(["-n", &lab.ns("s1"), "link", "show", &lab.wg(1)])
        .output()
        .expect("ip");
    assert!(!links.status.success(), "link must be gone");
    let again = tunnel::cleanup_in(&cfg, &h, Some(&s))
        .await
        .expect("cleanup again");
    assert_eq!(again.to_string(), "nothing to remove");
}

/// Set in the owner processes of [`root_userspace_adopts_after_kill9_ten_times`]:
/// `<tag>|<key folder>` of the parent's lab.
const OWNER_ENV: &str = "SDNT_T2_OWNER";
const OWNER_READY: &str = "SDNT-T2-OWNER-READY";

/// The device owner as a real process (this test binary re-run as the owner role), so that it
/// can be killed with SIGKILL like a crashed daemon. Killed and reaped on drop.
struct Owner(std::process::Child);

impl Owner {
    /// Starts an owner that ensures and fully syncs node 1's tunnel, and waits for its report:
    /// (wireguard-go pid, messages the sync sent, whether it re-created the device).
    fn start(lab: &Lab) -> (Owner, i32, u64, bool) {
        use std::io::BufRead as _;
        let exe = std::env::current_exe().expect("test binary path");
        let mut child = Command::new(exe)
            .args([
                "--exact",
                "root_userspace_adopts_after_kill9_ten_times",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(OWNER_ENV, format!("{}|{}", lab.tag, lab.dir.display()))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start owner process");
        let stdout = child.stdout.take().expect("piped stdout");
        let owner = Owner(child);
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.expect("read owner output");
            // libtest prints "test <name> ... " without a newline before the test runs.
            if let Some((_, rest)) = line.split_once(OWNER_READY) {
                let f: Vec<&str> = rest.split_whitespace().collect();
                assert_eq!(f.len(), 3, "owner report {line:?}");
                return (
                    owner,
                    f[0].parse().expect("pid"),
                    f[1].parse().expect("messages"),
                    f[2] == "true",
                );
            }
        }
        panic!("owner process exited before it was ready");
    }

    fn kill9(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Running, not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, r)| !r.starts_with('Z') && !r.starts_with('X'))
        })
        .unwrap_or(false)
}

/// The owner role: adopt (or create) node 1's device, report, then wait to be killed.
async fn owner_role(spec: &str) -> ! {
    let (tag, dir) = spec.split_once('|').expect("owner spec");
    let lab = Lab {
        tag: tag.into(),
        mode: "userspace",
        tmp: None,
        dir: dir.into(),
    };
    let (mut t, d) = lab.start(1, 2).await;
    let r = t.sync(&d, true).await.expect("owner sync");
    let pid = wg_go_pid(&lab.wg(1)).expect("wireguard-go answers");
    println!("{OWNER_READY} {pid} {} {}", r.messages, r.recreated);
    std::io::stdout().flush().expect("flush");
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

/// A crashed daemon (SIGKILL, no clean-up) is replaced ten times; every new owner adopts the
/// same wireguard-go without touching the device, and a TCP stream between the two nodes' pods
/// carries data across every replacement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_userspace_adopts_after_kill9_ten_times() {
    if let Ok(spec) = std::env::var(OWNER_ENV) {
        owner_role(&spec).await;
    }
    assert!(has_wireguard_go(), "install the wireguard-go package");
    let lab = Lab::new("k", "userspace");
    let (owner, wg_pid, _, _) = Owner::start(&lab);
    let (mut t2, d2) = lab.start(2, 1).await;
    t2.sync(&d2, true).await.expect("sync 2");
    lab.route(1, "10.136.2.0/24");
    lab.route(2, "10.132.1.0/24");
    assert!(lab.ping_within(1, POD2, 20), "tunnel up\n{}", lab.diag());

    let addr: SocketAddr = format!("{POD2}:7001").parse().expect("addr");
    let listener = lab
        .netns("s2")
        .run(move || TcpListener::bind(addr))
        .expect("ns")
        .expect("bind");
    let echo = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 64];
        while let Ok(n) = c.read(&mut buf) {
            if n == 0 || c.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let mut conn = lab
        .netns("s1")
        .run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
        .expect("ns")
        .expect("connect over the tunnel");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut roundtrip = |msg: &[u8]| {
        conn.write_all(msg).expect("write");
        let mut got = vec![0u8; msg.len()];
        conn.read_exact(&mut got).expect("echo");
        assert_eq!(got, msg);
    };
    roundtrip(b"first owner");

    let mut owner = owner;
    for round in 1..=10 {
        owner.kill9();
        assert!(
            alive(wg_pid),
            "round {round}: wireguard-go died with its owner"
        );
        roundtrip(format!("owner {round} dead").as_bytes());
        let (next, pid, messages, recreated) = Owner::start(&lab);
        owner = next;
        assert_eq!(
            pid, wg_pid,
            "round {round}: the same wireguard-go is adopted"
        );
        assert_eq!(
            (messages, recreated),
            (0, false),
            "round {round}: adoption must not touch the device"
        );
        roundtrip(format!("owner {round} adopted").as_bytes());
    }
    assert!(alive(wg_pid), "wireguard-go still runs");
    drop(owner);
    drop(conn);
    echo.join().expect("echo thread");
}

/// A wireguard-go answering our interface's control socket from another network namespace (the
/// socket path is shared by all namespaces) is never adopted: ensure fails naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_userspace_refuses_wireguard_go_of_another_namespace() {
    assert!(has_wireguard_go(), "install the wireguard-go package");
    let lab = Lab::new("o", "userspace");
    // Node 2's host namespace stands for "another node": its wireguard-go serves node 1's name.
    let foreign = Owner(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.ns("h2"),
                "wireguard-go",
                "-f",
                &lab.wg(1),
            ])
            .env("WG_PROCESS_FOREGROUND", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start foreign wireguard-go"),
    );
    let pid = i32::try_from(foreign.0.id()).expect("pid fits");
    let answered = (0..250).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        wg_go_pid(&lab.wg(1)) == Some(pid)
    });
    assert!(answered, "foreign wireguard-go did not open its socket");
    let cfg = lab.config(1, None);
    let err = Tunnel::ensure(&cfg, lab.netns("h1"), lab.netns("s1"), lab.key(1))
        .await
        .expect_err("a wireguard-go of another namespace must not be adopted");
    let msg = err.to_string();
    assert!(
        msg.contains(&lab.wg(1)) && msg.contains(&pid.to_string()),
        "error must name the interface and pid: {msg}"
    );
    assert!(alive(pid), "the foreign wireguard-go is left alone");
    drop(foreign);
}

/// Whether node 1's host namespace still has the link `name` (and of which kind).
fn host_link_details(lab: &Lab) -> Option<String> {
    let out = Command::new("ip")
        .args(["-n", &lab.ns("h1"), "-d", "link", "show", &lab.wg(1)])
        .output()
        .expect("ip");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A host link with the tunnel's name that sdnlinkd did not create is someone else's: ensure
/// fails naming it and leaves it in the host namespace, and cleanup never deletes it. The
/// persistent TUN is the dangerous case for the userspace backend (TUNSETIFF on an existing TUN
/// attaches to it); the veth stands for any other link; both modes check before creating, so
/// the kernel mode runs here without the module.
async fn refuses_foreign_host_link(tag: &str, mode: &'static str) {
    for kind in ["tun", "veth"] {
        let lab = Lab::new(&format!("{tag}{}", &kind[..1]), mode);
        let h1 = lab.ns("h1");
        if kind == "tun" {
            ip(&["-n", &h1, "tuntap", "add", "dev", &lab.wg(1), "mode", "tun"]);
        } else {
            ip(&[
                "-n",
                &h1,
                "link",
                "add",
                &lab.wg(1),
                "type",
                "veth",
                "peer",
                "name",
                "sdnt-t2-fpeer",
            ]);
        }
        let before = host_link_details(&lab).expect("foreign link created");
        let cfg = lab.config(1, None);
        let err = Tunnel::ensure(&cfg, lab.netns("h1"), lab.netns("s1"), lab.key(1))
            .await
            .expect_err("a foreign host link must not be taken over");
        let msg = err.to_string();
        assert!(
            matches!(err, tunnel::TunnelError::ForeignHost { .. })
                && msg.contains(&lab.wg(1))
                && msg.contains("not sdnlinkd's"),
            "{mode}/{kind}: error must name the foreign link: {msg}"
        );
        assert_eq!(
            host_link_details(&lab).as_deref(),
            Some(before.as_str()),
            "{mode}/{kind}: the foreign link must stay as it was in the host namespace"
        );
        let in_ns = Command::new("ip")
            .args(["-n", &lab.ns("s1"), "link", "show", &lab.wg(1)])
            .output()
            .expect("ip");
        assert!(
            !in_ns.status.success(),
            "{mode}/{kind}: nothing moved into the namespace"
        );
        assert_eq!(
            wg_go_pid(&lab.wg(1)),
            None,
            "{mode}/{kind}: no wireguard-go started"
        );

        let rep = tunnel::cleanup_in(&cfg, &lab.netns("h1"), Some(&lab.netns("s1")))
            .await
            .expect("cleanup");
        assert!(rep.deleted_links.is_empty(), "{mode}/{kind}: {rep}");
        assert!(
            rep.kept_foreign.len() == 1 && rep.kept_foreign[0].contains(&lab.wg(1)),
            "{mode}/{kind}: cleanup must report the link it left alone: {rep}"
        );
        assert!(
            host_link_details(&lab).is_some(),
            "{mode}/{kind}: cleanup deleted a foreign link"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_userspace_refuses_and_keeps_a_foreign_host_link() {
    assert!(has_wireguard_go(), "install the wireguard-go package");
    refuses_foreign_host_link("fu", "userspace").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_kernel_mode_refuses_and_keeps_a_foreign_host_link() {
    refuses_foreign_host_link("fk", "kernel").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_auto_mode_refuses_and_keeps_a_foreign_host_link() {
    refuses_foreign_host_link("fa", "auto").await;
}

/// Our own leftover (created and marked, not yet moved when the daemon stopped) is adopted and
/// moved; cleanup of a host leftover deletes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_userspace_own_marked_host_link_is_not_foreign() {
    assert!(has_wireguard_go(), "install the wireguard-go package");
    let lab = Lab::new("m", "userspace");
    let h1 = lab.ns("h1");
    ip(&["-n", &h1, "tuntap", "add", "dev", &lab.wg(1), "mode", "tun"]);
    let mark = tunnel::device::ownership_mark(&lab.ns("s1"));
    ip(&["-n", &h1, "link", "set", &lab.wg(1), "alias", &mark]);
    let cfg = lab.config(1, None);
    let rep = tunnel::cleanup_in(&cfg, &lab.netns("h1"), Some(&lab.netns("s1")))
        .await
        .expect("cleanup");
    assert_eq!(
        rep.deleted_links,
        vec![format!("{h1}/{}", lab.wg(1))],
        "{rep}"
    );
    assert!(rep.kept_foreign.is_empty(), "{rep}");
    assert!(host_link_details(&lab).is_none());
    // A device it creates carries the mark in its namespace.
    let (t1, _) = lab.start(1, 2).await;
    let out = Command::new("ip")
        .args(["-n", &lab.ns("s1"), "-d", "link", "show", &lab.wg(1)])
        .output()
        .expect("ip");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&mark),
        "created link carries the mark: {text}"
    );
    drop(t1);
}

/// Status reports the daemon's own device only: `wg show all` sees every wireguard-go of the
/// host (their sockets in /var/run/wireguard are shared by all namespaces), status sees node
/// 1's peer only; once a wireguard-go of another namespace serves node 1's socket, status
/// reports an error instead of that process's peers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_userspace_status_reports_own_device_only() {
    assert!(has_wireguard_go(), "install the wireguard-go package");
    let lab = Lab::new("s", "userspace");
    let (mut t1, d1) = lab.start(1, 2).await;
    let (mut t2, d2) = lab.start(2, 1).await;
    t1.sync(&d1, true).await.expect("sync 1");
    t2.sync(&d2, true).await.expect("sync 2");
    let all = Command::new("wg")
        .args(["show", "all", "peers"])
        .output()
        .expect("wg");
    let all = String::from_utf8_lossy(&all.stdout);
    assert!(
        all.contains(&lab.wg(1)) && all.contains(&lab.wg(2)),
        "{all}"
    );
    let st = t1.status().await;
    assert_eq!(st.error, None);
    assert_eq!(st.interface, lab.wg(1));
    let keys: Vec<String> = st.peers.iter().map(|p| p.public_key.to_base64()).collect();
    assert_eq!(keys, vec![lab.key(2).public_key().to_base64()], "{st:?}");

    // Our wireguard-go dies; another namespace's one takes over the socket name.
    let ours = wg_go_pid(&lab.wg(1)).expect("ours answers");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(ours),
        nix::sys::signal::Signal::SIGKILL,
    );
    let gone = (0..250).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        wg_go_pid(&lab.wg(1)).is_none()
    });
    assert!(gone, "our wireguard-go still answers");
    let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", lab.wg(1)));
    let foreign = Owner(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.ns("h2"),
                "wireguard-go",
                "-f",
                &lab.wg(1),
            ])
            .env("WG_PROCESS_FOREGROUND", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start foreign wireguard-go"),
    );
    let pid = i32::try_from(foreign.0.id()).expect("pid fits");
    let answered = (0..250).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        wg_go_pid(&lab.wg(1)) == Some(pid)
    });
    assert!(answered, "foreign wireguard-go did not open its socket");
    let foreign_peer = PrivateKey::generate().public_key().to_base64();
    let set = Command::new("wg")
        .args([
            "set",
            &lab.wg(1),
            "peer",
            &foreign_peer,
            "allowed-ips",
            "10.99.0.0/24",
        ])
        .output()
        .expect("wg set");
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    let st = t1.status().await;
    assert!(
        st.peers.is_empty(),
        "another namespace's peers must not show: {st:?}"
    );
    let err = st.error.unwrap_or_default();
    assert!(
        err.contains(&pid.to_string()) && err.contains("another network namespace"),
        "{err}"
    );
    drop(foreign);
    // SIGKILL leaves the socket file behind; nobody answers it any more.
    let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", lab.wg(1)));
}
