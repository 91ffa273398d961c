//! Bringing the whole lab up and down, and the state file that lets a later `sdnlink-lab down`
//! remove exactly what `up` created.

use super::api::{Access, LabApi};
use super::daemon;
use super::net::{self, Created};
use super::servers::Servers;
use super::topology::{Proxy, Topology, Tunnel, FORWARDED_ADDR, FORWARDED_NAME, POD_PORT};
use super::LabError;
use sdnlink_simapi::Fault;
use sdnlinkd::netns::NetNs;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default root of the lab's state directories.
pub const STATE_ROOT: &str = "/run/sdnlink-lab";
/// Default prefix of the lab's namespace and interface names.
pub const PREFIX: &str = "lab-";
/// How long a daemon gets to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a daemon gets to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What to build.
#[derive(Clone, Debug)]
pub struct Options {
    pub clusters: usize,
    pub prefix: String,
    pub state_root: PathBuf,
    /// One subdirectory per cluster name.
    pub manifests: PathBuf,
    /// `sdnlinkd` binary; `None`: next to the running executable.
    pub daemon: Option<PathBuf>,
    pub tunnel: Tunnel,
    pub proxy: Proxy,
    /// Clusters made OpenShift SDN-shaped (their manifests come from `openshift/<cluster>/`).
    pub openshift: Vec<String>,
}

impl Options {
    /// The plan these options describe.
    pub fn plan(&self) -> Result<Topology, LabError> {
        Ok(Topology::new(
            self.clusters,
            &self.prefix,
            &self.state_root,
            self.tunnel,
            self.proxy,
        )?
        .with_openshift(&self.openshift)?)
    }

    /// `--openshift` as a child lab process takes it (`none` for an empty list).
    pub fn openshift_arg(&self) -> String {
        if self.openshift.is_empty() {
            "none".into()
        } else {
            self.openshift.join(",")
        }
    }
}

/// One running daemon, as recorded in the state file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DaemonState {
    pub node: String,
    /// The node's namespace (cleanup runs there).
    pub node_netns: String,
    pub pid: u32,
    pub config: PathBuf,
}

/// The state file: what `up` created, for `down`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    /// The process holding the lab's servers (`sdnlink-lab up`), if any.
    pub holder_pid: Option<u32>,
    /// Namespaces the lab created, oldest first.
    pub namespaces: Vec<String>,
    /// Namespaces the daemons create (removed by `sdnlinkd cleanup`; the lab removes leftovers
    /// because it started those daemons).
    pub daemon_namespaces: Vec<String>,
    /// WireGuard control sockets the daemons' userspace devices create.
    pub wg_sockets: Vec<PathBuf>,
    pub daemon_bin: Option<PathBuf>,
    pub daemons: Vec<DaemonState>,
}

impl State {
    /// Reads the state file.
    pub fn load(path: &Path) -> Result<State, LabError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                LabError::NotUp(path.to_path_buf())
            } else {
                LabError::io(format!("{}", path.display()), e)
            }
        })?;
        serde_json::from_str(&text).map_err(|e| LabError::State {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// Writes the state file atomically.
    pub fn save(&self, path: &Path) -> Result<(), LabError> {
        let text = serde_json::to_string_pretty(self).map_err(|e| LabError::State {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).map_err(|e| LabError::io(format!("{}", tmp.display()), e))?;
        std::fs::rename(&tmp, path).map_err(|e| LabError::io(format!("{}", path.display()), e))
    }
}

/// What [`Lab::restart_daemon`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restarted {
    pub old_pid: u32,
    pub pid: u32,
    /// From the signal until the old process was gone.
    pub stopped: Duration,
    /// From the new start until `status --json` said ready.
    pub ready: Duration,
}

/// A lab that is up. Dropping it without [`Lab::down`] still removes the namespaces.
pub struct Lab {
    pub plan: Topology,
    pub opts: Options,
    pub daemon_bin: Option<PathBuf>,
    pub apis: Vec<LabApi>,
    pub daemons: Vec<DaemonState>,
    created: Option<Created>,
    servers: Servers,
    /// The daemons' notify sockets and fd stores (what systemd is to them on a node).
    pub fd_store: super::fdstore::FdStore,
    /// Runs the API servers; dropped after them.
    rt: Option<tokio::runtime::Runtime>,
    state: State,
}

impl Lab {
    /// Builds the topology, pod servers and upstream DNS only (no API servers, no daemons).
    /// Refuses when a lab with this prefix is up.
    pub fn topology(opts: &Options) -> Result<Lab, LabError> {
        let plan = opts.plan()?;
        if plan.state_file().exists() {
            return Err(LabError::AlreadyUp(plan.state_file()));
        }
        std::fs::create_dir_all(&plan.state_dir)
            .map_err(|e| LabError::io(format!("{}", plan.state_dir.display()), e))?;
        let created = net::create(&plan)?;
        let state = State {
            holder_pid: Some(std::process::id()),
            namespaces: created.namespaces().to_vec(),
            ..State::default()
        };
        // From here on a failure drops `lab`, which removes the namespaces and the state.
        let mut lab = Lab {
            plan,
            opts: opts.clone(),
            daemon_bin: None,
            apis: Vec::new(),
            daemons: Vec::new(),
            created: Some(created),
            servers: Servers::default(),
            fd_store: Default::default(),
            rt: None,
            state,
        };
        lab.state.save(&lab.plan.state_file())?;
        for (_, pod) in lab.plan.pods() {
            lab.servers.start_pod(&pod.netns, &pod.name, POD_PORT)?;
        }
        lab.servers.start_upstream_dns(
            &lab.plan.underlay_netns,
            lab.plan.upstream_dns(),
            FORWARDED_NAME,
            FORWARDED_ADDR,
        )?;
        Ok(lab)
    }

    /// The whole lab: topology, API servers, node configs and one daemon per node, each
    /// waited for until `status --json` says ready.
    pub fn up(opts: &Options) -> Result<Lab, LabError> {
        let daemon_bin = daemon::locate(opts.daemon.as_deref())?;
        let mut lab = Lab::topology(opts)?;
        lab.daemon_bin = Some(daemon_bin.clone());
        lab.state.daemon_bin = Some(daemon_bin.clone());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("lab-api")
            .enable_all()
            .build()
            .map_err(|e| LabError::io("starting the API servers' runtime", e))?;
        for c in &lab.plan.clusters {
            let dir = c.manifest_dir(&opts.manifests);
            lab.apis.push(LabApi::start(&lab.plan, c, &dir, &rt)?);
        }
        lab.rt = Some(rt);
        let nodes: Vec<_> = lab.plan.nodes().cloned().collect();
        for node in &nodes {
            let dir = lab.plan.node_dir(node);
            std::fs::create_dir_all(&dir)
                .map_err(|e| LabError::io(format!("{}", dir.display()), e))?;
            for api in &lab.apis {
                let path = lab.plan.kubeconfig_path(node, &api.cluster);
                let access = if api.cluster == lab.plan.clusters[node.cluster].name {
                    Access::Local
                } else {
                    Access::Remote
                };
                write_private(&path, &api.kubeconfig_yaml(access))?;
            }
            write_private(
                &lab.plan.node_config_path(node),
                &lab.plan.node_config(node),
            )?;
            lab.state.daemon_namespaces.push(node.daemon_netns.clone());
            lab.state
                .wg_sockets
                .push(Path::new("/var/run/wireguard").join(format!("{}.sock", node.wg_if)));
        }
        lab.state.save(&lab.plan.state_file())?;
        for node in &nodes {
            lab.fd_store.listen(
                &node.name,
                &lab.plan.node_dir(node).join(daemon::NOTIFY_SOCKET),
            )?;
            let pid = daemon::spawn(&daemon_bin, &lab.plan, node, &lab.fd_store)?;
            lab.daemons.push(DaemonState {
                node: node.name.clone(),
                node_netns: node.netns.clone(),
                pid,
                config: lab.plan.node_config_path(node),
            });
            lab.state.daemons = lab.daemons.clone();
            lab.state.save(&lab.plan.state_file())?;
        }
        for d in &lab.daemons {
            daemon::wait_ready(&daemon_bin, &d.config, d.pid, READY_TIMEOUT)?;
        }
        Ok(lab)
    }

    fn node(&self, node: &str) -> Result<super::topology::Node, LabError> {
        self.plan
            .nodes()
            .find(|n| n.name == node)
            .cloned()
            .ok_or_else(|| LabError::Daemon {
                node: node.to_string(),
                reason: format!(
                    "no such node (nodes: {})",
                    self.plan
                        .nodes()
                        .map(|n| n.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
    }

    fn daemon_of(&self, node: &str) -> Result<(DaemonState, PathBuf), LabError> {
        let bin = self.daemon_bin.clone().ok_or_else(|| LabError::Daemon {
            node: node.to_string(),
            reason: "the lab runs no daemons (--topology-only)".into(),
        })?;
        let d = self
            .daemons
            .iter()
            .find(|d| d.node == node)
            .cloned()
            .ok_or_else(|| LabError::Daemon {
                node: node.to_string(),
                reason: "no daemon recorded for this node".into(),
            })?;
        Ok((d, bin))
    }

    /// Stops `node`'s daemon (`kill`: SIGKILL, as a crash; else SIGTERM as systemd stops it),
    /// waits until it is gone, starts it again exactly as `up` does, records the new pid in the
    /// state (so `down` stops it) and waits until `status --json` says ready.
    pub fn restart_daemon(&mut self, node: &str, kill: bool) -> Result<Restarted, LabError> {
        self.restart_daemon_with(node, kill, || Ok(()))
    }

    /// [`Lab::restart_daemon`], running `while_down` after the old process is gone and before
    /// the new one starts (to change what the daemon finds on disk, as a crash might leave it).
    pub fn restart_daemon_with(
        &mut self,
        node: &str,
        kill: bool,
        while_down: impl FnOnce() -> Result<(), LabError>,
    ) -> Result<Restarted, LabError> {
        let n = self.node(node)?;
        let (d, bin) = self.daemon_of(node)?;
        let started = std::time::Instant::now();
        if kill {
            daemon::kill_and_wait(d.pid, &d.config, STOP_GRACE)?;
        } else {
            daemon::stop(d.pid, &d.config, STOP_GRACE)?;
            self.fd_store.clear(node);
        }
        let stopped = started.elapsed();
        while_down()?;
        let pid = daemon::spawn(&bin, &self.plan, &n, &self.fd_store)?;
        self.set_daemon_pid(node, pid)?;
        let ready = daemon::wait_ready(&bin, &d.config, pid, READY_TIMEOUT)?;
        Ok(Restarted {
            old_pid: d.pid,
            pid,
            stopped,
            ready,
        })
    }

    /// Injects `fault` into `cluster`'s API server (`Fault::None` undoes it).
    pub fn set_api_fault(&self, cluster: &str, fault: Fault) -> Result<(), LabError> {
        self.apis
            .iter()
            .find(|a| a.cluster == cluster)
            .ok_or_else(|| LabError::Api(format!("no API server for cluster {cluster}")))?
            .set_fault(fault)
    }

    /// `cluster`'s API server.
    pub fn api(&self, cluster: &str) -> Result<&LabApi, LabError> {
        self.apis
            .iter()
            .find(|a| a.cluster == cluster)
            .ok_or_else(|| LabError::Api(format!("no API server for cluster {cluster}")))
    }

    /// Writes `config` as `node`'s daemon config without telling the daemon (the next restart
    /// or reload reads it).
    pub fn write_node_config(&self, node: &str, config: &str) -> Result<(), LabError> {
        write_private_atomic(&self.plan.node_config_path(&self.node(node)?), config)
    }

    /// The daemon config `node` runs with (as on disk).
    pub fn node_config(&self, node: &str) -> Result<String, LabError> {
        let path = self.plan.node_config_path(&self.node(node)?);
        std::fs::read_to_string(&path).map_err(|e| LabError::io(format!("{}", path.display()), e))
    }

    /// Writes `config` as `node`'s daemon config and runs `sdnlinkd reload`; returns its
    /// output. If the reload fails the previous file is put back (the daemon keeps running the
    /// old config, and a later restart starts with it) and the error carries the reason.
    pub fn reload_daemon(&self, node: &str, config: &str) -> Result<String, LabError> {
        let n = self.node(node)?;
        let (d, bin) = self.daemon_of(node)?;
        let path = self.plan.node_config_path(&n);
        let old = self.node_config(node)?;
        write_private_atomic(&path, config)?;
        match daemon::cli(&bin, &d.config, &["reload"]) {
            Ok(out) => Ok(out),
            Err(e) => {
                write_private_atomic(&path, &old)?;
                Err(e)
            }
        }
    }

    /// Replaces the recorded pid of `node`'s daemon (after a restart).
    pub fn set_daemon_pid(&mut self, node: &str, pid: u32) -> Result<(), LabError> {
        for d in self.daemons.iter_mut().filter(|d| d.node == node) {
            d.pid = pid;
        }
        self.state.daemons = self.daemons.clone();
        self.state.save(&self.plan.state_file())
    }

    /// The last `lines` lines of every daemon's log, each under a header naming its node: what
    /// a failed run prints before `down` removes the logs (inside the VM the guest's files are
    /// gone with it, so the console is the only way out).
    pub fn daemon_logs(&self, lines: usize) -> String {
        let mut s = String::new();
        for d in &self.daemons {
            s.push_str(&format!(
                "--- {} daemon.log (pid {}, last {lines} lines) ---\n{}\n",
                d.node,
                d.pid,
                daemon::log_tail(&d.config, lines)
            ));
        }
        s
    }

    /// The packet-loss counters of every node's two namespaces that are not zero, and the
    /// kernel log's tail: what a failed run prints beside the daemon logs, so a lost packet
    /// can be placed (IP or TCP discards, conntrack drops, IPVS or WireGuard messages) after
    /// the VM that saw it is gone.
    pub fn kernel_counters(&self) -> String {
        let mut s = String::new();
        for node in self.plan.nodes() {
            for netns in [&node.netns, &node.daemon_netns] {
                let text = NetNs::open(netns)
                    .map_err(|e| e.to_string())
                    .and_then(|ns| ns.run(loss_counters).map_err(|e| e.to_string()));
                match text {
                    Ok(t) => s.push_str(&format!("--- counters in {netns}: {t}\n")),
                    Err(e) => s.push_str(&format!("--- counters in {netns}: {e}\n")),
                }
            }
        }
        let dmesg = std::process::Command::new("dmesg")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_else(|e| format!("dmesg: {e}"));
        let lines: Vec<&str> = dmesg.lines().collect();
        s.push_str("--- dmesg (last 30 lines) ---\n");
        for l in &lines[lines.len().saturating_sub(30)..] {
            s.push_str(l);
            s.push('\n');
        }
        s
    }

    /// How to enter each namespace, for `up`.
    pub fn describe(&self) -> String {
        let mut s = String::from("lab is up; enter a namespace with:\n");
        s.push_str(&format!(
            "  underlay (API servers, upstream DNS): ip netns exec {} bash\n",
            self.plan.underlay_netns
        ));
        for c in &self.plan.clusters {
            s.push_str(&format!(
                "cluster {} (pods {}, services {}, API https://{}):\n",
                c.name, c.pod_cidr, c.service_cidr, c.api_addr
            ));
            for n in &c.nodes {
                s.push_str(&format!(
                    "  node {:<9} ip netns exec {} bash   (daemon: ip netns exec {} bash; config {})\n",
                    n.name,
                    n.netns,
                    n.daemon_netns,
                    self.plan.node_config_path(n).display()
                ));
                for p in &n.pods {
                    s.push_str(&format!(
                        "    pod {:<12} {:<12} ip netns exec {} bash\n",
                        p.name, p.addr, p.netns
                    ));
                }
            }
        }
        if !self.daemons.is_empty() {
            let (n, c) = (&self.plan.clusters[0].nodes[0], &self.plan.clusters[1]);
            s.push_str("reproduce faults (add --prefix when not the default):\n");
            s.push_str(&format!(
                "  sdnlink-lab restart {} [--kill]      stop (kill -9) and restart one daemon, wait until ready\n",
                n.name
            ));
            s.push_str(&format!(
                "  sdnlink-lab api {} unreachable|hang|gone|forbidden|ok   fault one cluster's API server; ok undoes\n",
                c.name
            ));
            s.push_str(&format!(
                "  sdnlink-lab reload {} [--config FILE]  sdnlinkd reload, optionally with a new config\n",
                n.name
            ));
            s.push_str(
                "kubectl against a simulated API server (get, create, apply, edit, patch, delete of\n  Services, EndpointSlices, Nodes; from a node namespace, which reaches the underlay):\n",
            );
            s.push_str(&format!(
                "  ip netns exec {} kubectl --kubeconfig {} get svc -A\n",
                n.netns,
                self.plan.kubeconfig_path(n, &c.name).display()
            ));
        }
        for api in &self.apis {
            for r in api.refused() {
                s.push_str(&format!(
                    "refused manifest document ({}): {r}\n",
                    api.cluster
                ));
            }
        }
        s.push_str("remove it with: sdnlink-lab down\n");
        s
    }

    /// Stops everything and removes every namespace; returns what could not be removed.
    pub fn down(mut self) -> Vec<String> {
        self.teardown()
    }

    fn teardown(&mut self) -> Vec<String> {
        let Some(created) = self.created.take() else {
            return Vec::new();
        };
        self.servers.stop();
        self.apis.clear();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        // Daemons first (they need their node namespaces for cleanup), then the namespaces.
        let mut problems = teardown_state(&self.state);
        // After the daemons: the stored DNS sockets hold their namespaces' network stacks.
        self.fd_store.stop();
        for (ns, e) in net::delete_namespaces(&created.disarm()) {
            problems.push(format!("deleting {ns}: {e}"));
        }
        if let Err(e) = std::fs::remove_dir_all(&self.plan.state_dir) {
            problems.push(format!("removing {}: {e}", self.plan.state_dir.display()));
        }
        problems
    }
}

impl Drop for Lab {
    /// A lab dropped without [`Lab::down`] (an error half-way through `up`, a panic in a
    /// test) is torn down all the same.
    fn drop(&mut self) {
        for p in self.teardown() {
            eprintln!("sdnlink-lab teardown: {p}");
        }
    }
}

fn write_private(path: &Path, text: &str) -> Result<(), LabError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| LabError::io(format!("{}", path.display()), e))?;
    f.write_all(text.as_bytes())
        .map_err(|e| LabError::io(format!("{}", path.display()), e))
}

/// [`write_private`] to a temporary file renamed over `path` (a daemon reading it never sees
/// half a file).
fn write_private_atomic(path: &Path, text: &str) -> Result<(), LabError> {
    let tmp = path.with_extension("toml.tmp");
    write_private(&tmp, text)?;
    std::fs::rename(&tmp, path).map_err(|e| LabError::io(format!("{}", path.display()), e))
}

/// Runs `sdnlinkd cleanup --config CFG` inside the node namespace (it removes the veth and
/// routes it made there and its own namespace).
fn cleanup(bin: &Path, d: &DaemonState) -> Result<(), LabError> {
    let ns = NetNs::open(&d.node_netns)?;
    let bin = bin.to_path_buf();
    let config = d.config.clone();
    // A child forked from the namespace worker thread starts in that namespace.
    let out = ns
        .run(move || {
            std::process::Command::new(&bin)
                .arg("cleanup")
                .arg("--config")
                .arg(&config)
                .output()
        })?
        .map_err(|e| LabError::io("running sdnlinkd cleanup", e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LabError::Command {
            cmd: format!("sdnlinkd cleanup --config {}", d.config.display()),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Stops the daemons (SIGTERM, then `sdnlinkd cleanup`), then deletes every namespace in the
/// state. Returns the problems met (each also means something was left or forced).
pub fn teardown_state(state: &State) -> Vec<String> {
    let mut problems = Vec::new();
    for d in &state.daemons {
        match daemon::stop(d.pid, &d.config, STOP_GRACE) {
            Ok(true) => problems.push(format!("{}: daemon ignored SIGTERM, killed", d.node)),
            Ok(false) => {}
            Err(e) => problems.push(format!("{}: {e}", d.node)),
        }
        if let Some(bin) = &state.daemon_bin {
            if let Err(e) = cleanup(bin, d) {
                problems.push(format!("{}: {e}", d.node));
            }
        }
    }
    for ns in &state.daemon_namespaces {
        if net::netns_exists(ns) {
            problems.push(format!("cleanup left namespace {ns}; deleted it"));
        }
    }
    for (ns, e) in net::delete_namespaces(&state.daemon_namespaces) {
        problems.push(format!("deleting {ns}: {e}"));
    }
    for (ns, e) in net::delete_namespaces(&state.namespaces) {
        problems.push(format!("deleting {ns}: {e}"));
    }
    for sock in &state.wg_sockets {
        if sock.exists() {
            problems.push(format!(
                "{} still exists (a wireguard-go the daemon started is still running)",
                sock.display()
            ));
        }
    }
    problems
}

/// `sdnlink-lab down`: asks the holder process to tear the lab down; when it is gone, tears
/// down from the state file directly.
pub fn down_from_state(plan: &Topology) -> Result<Vec<String>, LabError> {
    let path = plan.state_file();
    let state = State::load(&path)?;
    if let Some(pid) = state.holder_pid.filter(|p| is_holder(*p)) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(120) && is_holder(pid) {
            std::thread::sleep(Duration::from_millis(200));
        }
        if !path.exists() {
            return Ok(Vec::new());
        }
    }
    let problems = teardown_state(&State::load(&path).unwrap_or(state));
    std::fs::remove_dir_all(&plan.state_dir)
        .map_err(|e| LabError::io(format!("{}", plan.state_dir.display()), e))?;
    Ok(problems)
}

/// Removes the holder's log and the state root when nothing else is in it.
pub fn remove_holder_log(state_root: &Path, prefix: &str) {
    let _ = std::fs::remove_file(holder_log(state_root, prefix));
    // Fails (and keeps the directory) while another lab's files are in it.
    let _ = std::fs::remove_dir(state_root);
}

/// The log of the holder process of `sdnlink-lab up`.
pub fn holder_log(state_root: &Path, prefix: &str) -> PathBuf {
    state_root.join(format!("{prefix}holder.log"))
}

/// Whether `pid` is a live `sdnlink-lab` holder process.
fn is_holder(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.split(|b| *b == 0).any(|a| a == b"__hold"))
        .unwrap_or(false)
}

/// Non-zero loss-related counters of the calling thread's namespace (`/proc/thread-self/net`).
fn loss_counters() -> String {
    let read =
        |f: &str| std::fs::read_to_string(format!("/proc/thread-self/net/{f}")).unwrap_or_default();
    summarize_losses(&read("snmp"), &read("netstat"), &read("stat/nf_conntrack"))
}

/// The loss-related counters that are not zero, as `Group.Name=value` pairs, from the texts of
/// `snmp` and `netstat` (pairs of `Group: names` and `Group: values` lines) and of
/// `stat/nf_conntrack` (a header of names, then one line of hexadecimal columns per CPU).
fn summarize_losses(snmp: &str, netstat: &str, conntrack: &str) -> String {
    let lossy = |name: &str| {
        [
            "Drop", "Discard", "Err", "NoRoute", "Fail", "Retrans", "Timeout", "Overflow", "Abort",
        ]
        .iter()
        .any(|w| name.contains(w))
    };
    let mut out = Vec::new();
    for text in [snmp, netstat] {
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.chunks(2) {
            let [names, values] = pair else { continue };
            let (group, names) = names.split_once(':').unwrap_or(("?", names));
            let values = values.split_once(':').map_or(*values, |v| v.1);
            for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
                if v != "0" && lossy(n) {
                    out.push(format!("{group}.{n}={v}"));
                }
            }
        }
    }
    let mut lines = conntrack.lines();
    if let Some(header) = lines.next() {
        let names: Vec<&str> = header.split_whitespace().collect();
        let mut sums = vec![0u64; names.len()];
        for l in lines {
            for (i, v) in l.split_whitespace().enumerate() {
                if let (Some(sum), Ok(v)) = (sums.get_mut(i), u64::from_str_radix(v, 16)) {
                    *sum += v;
                }
            }
        }
        for (n, v) in names.iter().zip(sums) {
            if v != 0 && (n.contains("drop") || n.contains("fail") || *n == "invalid") {
                out.push(format!("conntrack.{n}={v}"));
            }
        }
    }
    out.join(" ")
}

#[cfg(test)]
mod loss_tests {
    use super::summarize_losses;

    #[test]
    fn only_nonzero_loss_counters_are_named() {
        let snmp = "Ip: Forwarding InDiscards OutNoRoutes InReceives\nIp: 1 3 0 900\nTcp: RetransSegs InErrs\nTcp: 2 0\n";
        let netstat = "TcpExt: ListenDrops TCPTimeouts\nTcpExt: 0 5\n";
        let ct = "entries clashres found new invalid ignore delete delete_list insert insert_failed drop early_drop\n00000010 00000000 00000000 00000000 00000001 00000000 00000000 00000000 00000000 00000002 00000000 00000000\n00000010 00000000 00000000 00000000 00000001 00000000 00000000 00000000 00000000 00000000 00000003 00000000\n";
        assert_eq!(
            summarize_losses(snmp, netstat, ct),
            "Ip.InDiscards=3 Tcp.RetransSegs=2 TcpExt.TCPTimeouts=5 conntrack.invalid=2 conntrack.insert_failed=2 conntrack.drop=3"
        );
        assert_eq!(summarize_losses("", "", ""), "");
    }
}
