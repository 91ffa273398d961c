//! Starts, watches and stops the real `sdnlinkd` processes of the lab's nodes.
//!
//! Each daemon is spawned with `setns(CLONE_NEWNET)` into its node namespace between fork and
//! exec, and nothing else: `ip netns exec` would also give it a private mount namespace, and the
//! namespace it pins under /run/netns would then be invisible to the lab and to `ip netns`
//! (docs/design.md, "the netns trap").

use super::fdstore::FdStore;
use super::topology::{Node, Topology};
use super::LabError;
use command_fds::{CommandFdExt, FdMapping};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sdnlinkd::netns::NETNS_RUN_DIR;
use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The daemon's notify socket in its node directory (served by [`FdStore`]).
pub const NOTIFY_SOCKET: &str = "notify.sock";

/// The `sdnlinkd` binary: `explicit`, else the one next to the running executable. Under
/// `cargo run` (which builds only the lab binary) it first has cargo bring `sdnlinkd` up to
/// date in the same profile, so the lab never tests a stale daemon.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, LabError> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => {
            let exe = std::env::current_exe()
                .map_err(|e| LabError::io("locating the running executable", e))?;
            if let Some(cargo) = std::env::var_os("CARGO") {
                build_daemon(Path::new(&cargo), &exe)?;
            }
            exe.with_file_name("sdnlinkd")
        }
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(LabError::NoDaemon(path))
    }
}

fn build_daemon(cargo: &Path, exe: &Path) -> Result<(), LabError> {
    // The daemon is a crate of its own: building the lab does not build its binary.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdnlinkd/Cargo.toml");
    let mut cmd = Command::new(cargo);
    // `cargo run` sets these for the program it runs; a nested build that sees them
    // fingerprints build scripts differently and rebuilds half the dependency tree each time.
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("CARGO_PKG_")
            || matches!(
                k.as_ref(),
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "LD_LIBRARY_PATH"
            )
        {
            cmd.env_remove(&key);
        }
    }
    cmd.args(["build", "--quiet", "--bin", "sdnlinkd", "--manifest-path"])
        .arg(&manifest)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // The profile of the running lab binary is the name of its directory (target/<profile>).
    match exe
        .parent()
        .and_then(|d| d.file_name())
        .and_then(|n| n.to_str())
    {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
    }
    let status = cmd
        .status()
        .map_err(|e| LabError::io(format!("running {}", cargo.display()), e))?;
    if status.success() {
        Ok(())
    } else {
        Err(LabError::Command {
            cmd: format!(
                "cargo build --bin sdnlinkd --manifest-path {}",
                manifest.display()
            ),
            status: status.to_string(),
            stderr: "see cargo's output above".into(),
        })
    }
}

/// Starts `sdnlinkd run --config <node config>` inside the node namespace, in its own session
/// (so it outlives an `up` that returns, and a Ctrl-C to the lab does not reach it), logging to
/// `daemon.log` in the node directory. Returns its pid.
///
/// Like systemd it gives the daemon a notify socket (`NOTIFY_SOCKET`, served by `store`) and
/// passes back what the daemon's fd store holds: mapped to fds 3.. with `LISTEN_FDS` and
/// `LISTEN_FDNAMES`; `LISTEN_PID` must be the daemon's own pid, which only the child knows, so
/// a shell sets it and then execs the daemon in its place (same pid).
pub fn spawn(
    daemon: &Path,
    plan: &Topology,
    node: &Node,
    store: &FdStore,
) -> Result<u32, LabError> {
    let ns_path = Path::new(NETNS_RUN_DIR).join(&node.netns);
    let ns = File::open(&ns_path).map_err(|e| LabError::io(format!("{}", ns_path.display()), e))?;
    let log_path = plan.node_dir(node).join("daemon.log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| LabError::io(format!("{}", log_path.display()), e))?;
    let log2 = log.try_clone().map_err(|e| LabError::io("daemon log", e))?;
    let passed = store.passed(&node.name)?;
    let mut cmd = if passed.is_empty() {
        Command::new(daemon)
    } else {
        let mut sh = Command::new("/bin/sh");
        sh.arg("-c")
            .arg("export LISTEN_PID=$$; exec \"$0\" \"$@\"")
            .arg(daemon);
        sh
    };
    cmd.arg("run")
        .arg("--config")
        .arg(plan.node_config_path(node))
        .env("RUST_LOG", "info")
        .env("NOTIFY_SOCKET", plan.node_dir(node).join(NOTIFY_SOCKET))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    // SAFETY: between fork and exec only async-signal-safe calls happen: setns(2) and setsid(2)
    // are plain system calls; `ns` was opened before the fork.
    // Registered before the fd mappings: pre_exec closures run in registration order, and the
    // mappings dup2(2) the stored descriptors onto 3, 4, ..., which the namespace's own
    // descriptor may be numbered; setns(2) on the socket dup'ed over it fails with EINVAL
    // (a lab run failed that way: "starting sdnlinkd: Invalid argument").
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    if !passed.is_empty() {
        let names: Vec<&str> = passed.iter().map(|(n, _)| n.as_str()).collect();
        cmd.env("LISTEN_FDS", passed.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"));
        let mappings = passed
            .into_iter()
            .enumerate()
            .map(|(i, (_, fd))| FdMapping {
                parent_fd: fd,
                child_fd: 3 + i as i32,
            })
            .collect();
        cmd.fd_mappings(mappings).map_err(|e| LabError::Daemon {
            node: node.name.clone(),
            reason: format!("passing the stored descriptors: {e}"),
        })?;
    }
    let child = cmd.spawn().map_err(|e| {
        LabError::io(
            format!("starting {} for {}", daemon.display(), node.name),
            e,
        )
    })?;
    Ok(child.id())
}

/// Whether `pid` is alive and runs `sdnlinkd` with `config` (guards against pid reuse: never
/// signal a process the lab did not start).
pub fn is_ours(pid: u32, config: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let config = config.as_os_str().as_encoded_bytes();
    let is_zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true);
    !is_zombie && cmdline.split(|b| *b == 0).any(|arg| arg == config)
}

/// Whether the daemon `pid` the lab started still runs; if not, how it ended.
///
/// The lab's own child is judged by `waitpid(2)`, not by [`is_ours`]: `Command::spawn` returns
/// once the exec has closed its close-on-exec pipe, which the kernel does before the new
/// program's argument area is set up, so `/proc/PID/cmdline` of a child that has just started
/// can still read empty. An unreaped child's pid cannot be reused, so `StillAlive` is proof
/// enough. A daemon started by another lab process (`ECHILD`) falls back to [`is_ours`].
pub fn alive(pid: u32, config: &Path) -> Result<(), String> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, code)) => Err(format!("pid {pid} exited with status {code}")),
        Ok(WaitStatus::Signaled(_, sig, _)) => Err(format!("pid {pid} was killed by {sig}")),
        Ok(_) => Ok(()),
        Err(_) if is_ours(pid, config) => Ok(()),
        Err(_) => Err(format!(
            "pid {pid} no longer runs sdnlinkd with this config"
        )),
    }
}

/// Reaps `pid` if it is our child (ignored otherwise), so it does not linger as a zombie.
fn reap(pid: u32) {
    let _ = nix::sys::wait::waitpid(
        Pid::from_raw(pid as i32),
        Some(nix::sys::wait::WaitPidFlag::WNOHANG),
    );
}

/// Sends `signal` to the daemon `pid` if it is still ours.
pub fn signal(pid: u32, config: &Path, signal: Signal) -> Result<bool, LabError> {
    if !is_ours(pid, config) {
        return Ok(false);
    }
    kill(Pid::from_raw(pid as i32), signal)
        .map_err(|e| LabError::io(format!("kill -{signal} {pid}"), e.into()))?;
    Ok(true)
}

/// SIGTERM, wait up to `grace`, then SIGKILL. Returns whether it had to SIGKILL.
pub fn stop(pid: u32, config: &Path, grace: Duration) -> Result<bool, LabError> {
    if !signal(pid, config, Signal::SIGTERM)? {
        reap(pid);
        return Ok(false);
    }
    let start = Instant::now();
    while start.elapsed() < grace {
        reap(pid);
        if !is_ours(pid, config) {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    signal(pid, config, Signal::SIGKILL)?;
    std::thread::sleep(Duration::from_millis(100));
    reap(pid);
    Ok(true)
}

/// SIGKILL (a crash) and wait up to `grace` until the process is gone.
pub fn kill_and_wait(pid: u32, config: &Path, grace: Duration) -> Result<(), LabError> {
    signal(pid, config, Signal::SIGKILL)?;
    let start = Instant::now();
    while start.elapsed() < grace {
        reap(pid);
        if !is_ours(pid, config) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(LabError::Daemon {
        node: config.display().to_string(),
        reason: format!("pid {pid} still runs {grace:?} after SIGKILL"),
    })
}

/// Runs `sdnlinkd --config <cfg> ARGS` in the lab's own namespace (the control socket is a
/// path, reachable from anywhere).
pub fn cli(daemon: &Path, config: &Path, args: &[&str]) -> Result<String, LabError> {
    let out = Command::new(daemon)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .map_err(|e| LabError::io(format!("running {}", daemon.display()), e))?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: format!("sdnlinkd --config {} {}", config.display(), args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `sdnlinkd --config <cfg> status --json`, parsed.
pub fn status(daemon: &Path, config: &Path) -> Result<serde_json::Value, LabError> {
    let text = cli(daemon, config, &["status", "--json"])?;
    serde_json::from_str(&text).map_err(|e| LabError::Daemon {
        node: config.display().to_string(),
        reason: format!("status --json is not JSON ({e}): {text}"),
    })
}

/// Whether a status document says the daemon is ready: an explicit `ready: true`, or a
/// `state`/`phase` of `ready`/`running`, and no cluster still `starting`.
pub fn status_is_ready(v: &serde_json::Value) -> bool {
    let explicit = v.get("ready").and_then(|r| r.as_bool());
    let state = ["state", "phase"]
        .iter()
        .find_map(|k| v.get(*k).and_then(|s| s.as_str()))
        .map(|s| matches!(s.to_ascii_lowercase().as_str(), "ready" | "running"));
    let starting = v.to_string().contains("\"starting\"");
    match (explicit, state) {
        (Some(r), _) => r && !starting,
        (None, Some(s)) => s && !starting,
        (None, None) => false,
    }
}

/// The last `lines` lines of the daemon's log (next to its config).
pub fn log_tail(config: &Path, lines: usize) -> String {
    let log = config.with_file_name("daemon.log");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Polls `status --json` until it reports ready or `timeout` passes; returns the time taken.
pub fn wait_ready(
    daemon: &Path,
    config: &Path,
    pid: u32,
    timeout: Duration,
) -> Result<Duration, LabError> {
    let start = Instant::now();
    let mut last = String::from("no answer yet");
    while start.elapsed() < timeout {
        if let Err(ended) = alive(pid, config) {
            return Err(LabError::Daemon {
                node: config.display().to_string(),
                reason: format!(
                    "exited before it was ready: {ended} (last status: {last}); daemon.log ends:\n{}",
                    log_tail(config, 15)
                ),
            });
        }
        match status(daemon, config) {
            Ok(v) if status_is_ready(&v) => return Ok(start.elapsed()),
            Ok(v) => last = v.to_string(),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Err(LabError::Daemon {
        node: config.display().to_string(),
        reason: format!(
            "not ready after {timeout:?}; last status: {last}; daemon.log ends:\n{}",
            log_tail(config, 15)
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn readiness_from_status_documents() {
        assert!(status_is_ready(&json!({"ready": true})));
        assert!(!status_is_ready(&json!({"ready": false})));
        assert!(status_is_ready(&json!({"state": "Running"})));
        assert!(!status_is_ready(
            &json!({"ready": true, "clusters": {"west": {"state": "starting"}}})
        ));
        assert!(!status_is_ready(&json!({"something": 1})));
    }

    #[test]
    fn a_process_is_ours_only_with_our_config_argument() {
        let me = std::process::id();
        assert!(!is_ours(me, Path::new("/nonexistent/sdnlink.toml")));
        assert!(!is_ours(u32::MAX, Path::new("/x")));
    }

    #[test]
    fn a_child_is_alive_from_the_moment_spawn_returns_until_it_ends() {
        // Right after spawn /proc/PID/cmdline often still reads empty; `alive` must not care.
        for _ in 0..20 {
            let mut child = Command::new("sleep").arg("5").spawn().expect("sleep runs");
            let pid = child.id();
            assert_eq!(alive(pid, Path::new("/not/in/its/cmdline")), Ok(()));
            child.kill().expect("our child");
            let (ended, _) = crate::checks::eventually(Duration::from_secs(5), || {
                match alive(pid, Path::new("/x")) {
                    Ok(()) => Err("still alive".to_string()),
                    Err(e) => Ok(e),
                }
            });
            assert_eq!(ended, Ok(format!("pid {pid} was killed by SIGKILL")));
            // Already reaped by `alive`: this only keeps the `Child` from looking forgotten.
            let _ = child.wait();
        }
        let mut child = Command::new("sh")
            .args(["-c", "exit 3"])
            .spawn()
            .expect("sh runs");
        let pid = child.id();
        let (ended, _) = crate::checks::eventually(Duration::from_secs(5), || {
            match alive(pid, Path::new("/x")) {
                Ok(()) => Err("still alive".to_string()),
                Err(e) => Ok(e),
            }
        });
        assert_eq!(ended, Ok(format!("pid {pid} exited with status 3")));
        let _ = child.wait();
    }
}
