//! `sdnlink-lab`: the whole mission on one machine. Several clusters, each node a network
//! namespace running the real `sdnlinkd`, pods behind the nodes, a simulated API server per
//! cluster, and end-to-end checks. Run as root.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use sdnlink_lab::checks::{self, Outcome};
use sdnlink_lab::control::{self, Request};
use sdnlink_lab::manifests;
use sdnlink_lab::prereq;
use sdnlink_lab::run::{self, Lab, Options, State};
use sdnlink_lab::topology::{Proxy, Topology, Tunnel};
use sdnlink_lab::vm as lab_vm;
use sdnlink_lab::LabError;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "sdnlink-lab",
    about = "Builds a multi-cluster lab of network namespaces running sdnlinkd and checks it end to end",
    long_about = "Without a command: bring the lab up, run every check (one PASS/FAIL line each), \
                  tear it down, and exit 0 only if all passed."
)]
struct Cli {
    /// Number of clusters (2 nodes each).
    #[arg(long, global = true, default_value_t = 2)]
    clusters: usize,
    /// Manifest directory, one subdirectory per cluster (default: tests/lab of the crate).
    #[arg(long, global = true)]
    manifests: Option<PathBuf>,
    /// The sdnlinkd binary (default: next to this executable).
    #[arg(long, global = true)]
    daemon: Option<PathBuf>,
    /// Run the lab inside a QEMU VM with a Debian kernel (IPVS, kernel WireGuard).
    #[arg(long, global = true)]
    vm: bool,
    /// WireGuard implementation (default: userspace on the host, kernel in the VM).
    #[arg(long, global = true, value_enum)]
    tunnel: Option<Tunnel>,
    /// Service proxy (default: nftables on the host, ipvs in the VM).
    #[arg(long, global = true, value_enum)]
    proxy: Option<Proxy>,
    /// Prefix of every namespace and interface name (to run beside another lab).
    #[arg(long, global = true, default_value = run::PREFIX)]
    prefix: String,
    /// Benchmark scale: SERVICESxENDPOINTS extra Services per cluster (e.g. 10000x10), with
    /// the default manifests, generated under the state root. A benchmark, not a CI run.
    #[arg(long, global = true)]
    scale: Option<manifests::Scale>,
    /// Clusters made OpenShift SDN-shaped: Nodes without pod CIDRs, each node's subnet in a
    /// network.openshift.io/v1 HostSubnet (comma-separated, or `none`).
    #[arg(long, global = true, value_delimiter = ',', default_value = "west")]
    openshift: Vec<String>,
    /// Install missing prerequisites with apt-get instead of stopping with what to install.
    #[arg(long, global = true)]
    install_deps: bool,
    /// VM kernel image (non-Debian hosts).
    #[arg(long, global = true)]
    kernel: Option<PathBuf>,
    /// VM kernel modules directory (non-Debian hosts).
    #[arg(long, global = true)]
    modules: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Bring the lab up and leave it running; prints how to enter each namespace.
    Up {
        /// Only namespaces, pods and the upstream DNS server: no API servers, no daemons.
        #[arg(long)]
        topology_only: bool,
    },
    /// Remove a lab brought up with `up` (exactly what it created, also after restarts).
    Down,
    /// Stop one node's daemon of a lab brought up with `up` (SIGTERM, or SIGKILL with --kill),
    /// start it again exactly as the lab starts it and wait until it is ready.
    Restart {
        /// Node name, e.g. east-n1.
        node: String,
        /// kill -9 (a crash) instead of SIGTERM.
        #[arg(long)]
        kill: bool,
    },
    /// Set a fault on one cluster's API server of a lab brought up with `up`:
    /// unreachable (connections refused, open ones cut), hang (accepts, never answers),
    /// gone (410 Gone to every watch; relists get new resourceVersions), forbidden (403),
    /// ok (undo).
    Api {
        /// Cluster name, e.g. west.
        cluster: String,
        /// unreachable | hang | gone | forbidden | ok
        fault: String,
    },
    /// Reload one node's daemon of a lab brought up with `up` (`sdnlinkd reload`), after
    /// replacing its config with FILE when given.
    Reload {
        node: String,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run the kernel-feature (#[ignore]d) tests inside the QEMU VM.
    VmTest,
    /// Write the default manifests for --clusters clusters into DIR/<cluster>/ and the hostile
    /// manifest set of the hostile-manifests check into DIR/hostile/<cluster>/.
    Manifests {
        #[arg(long)]
        out: PathBuf,
    },
    /// Internal: the process that holds a lab brought up with `up`.
    #[command(name = "__hold", hide = true)]
    Hold {
        #[arg(long)]
        topology_only: bool,
    },
}

fn default_manifests() -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lab");
    if crate_dir.is_dir() {
        return crate_dir;
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("lab")))
        .filter(|d| d.is_dir())
        .unwrap_or(crate_dir)
}

fn options(cli: &Cli) -> Options {
    Options {
        clusters: cli.clusters,
        prefix: cli.prefix.clone(),
        state_root: PathBuf::from(run::STATE_ROOT),
        manifests: cli.manifests.clone().unwrap_or_else(default_manifests),
        daemon: cli.daemon.clone(),
        tunnel: cli.tunnel.unwrap_or(if cli.vm {
            Tunnel::Kernel
        } else {
            Tunnel::Userspace
        }),
        proxy: cli
            .proxy
            .unwrap_or(if cli.vm { Proxy::Ipvs } else { Proxy::Nftables }),
        openshift: cli.openshift.clone(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sdnlink-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Stops with one line naming what is missing (or installs it with `--install-deps`) before
/// anything is built.
fn prerequisites(cli: &Cli, opts: &Options) -> Result<()> {
    let vm = cli.vm || matches!(cli.command, Some(Cmd::VmTest));
    let needs = prereq::Needs {
        tunnel: opts.tunnel,
        ipvs: opts.proxy == Proxy::Ipvs,
        vm,
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    let gone = prereq::missing(needs, |p| prereq::on_path(p, &path));
    if gone.is_empty() {
        return Ok(());
    }
    if !cli.install_deps {
        bail!("{}", prereq::message(&gone));
    }
    let pkgs = prereq::packages(&gone);
    eprintln!("sdnlink-lab: installing {}", pkgs.join(" "));
    let update = std::process::Command::new("apt-get")
        .args(["update", "-qq"])
        .status()
        .context("running apt-get update")?;
    let install = std::process::Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&pkgs)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get install")?;
    let still = prereq::missing(needs, |p| prereq::on_path(p, &path));
    if !update.success() || !install.success() || !still.is_empty() {
        bail!(
            "apt-get install {} failed ({install}); still {}",
            pkgs.join(" "),
            prereq::message(&still)
        );
    }
    Ok(())
}

/// The directory of generated manifests for `--scale`.
fn scale_dir(opts: &Options) -> PathBuf {
    opts.state_root
        .join(format!("{}scale-manifests", opts.prefix))
}

/// Writes the default manifests plus `scale.yaml` per cluster and points `opts` at them.
fn scale_manifests(opts: &mut Options, scale: manifests::Scale) -> Result<()> {
    let plan = opts.plan()?;
    let root = scale_dir(opts);
    for c in &plan.clusters {
        let dir = c.manifest_dir(&root);
        std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
        let mut files = manifests::cluster_files(c);
        files.push(("scale.yaml".into(), manifests::scale_yaml(c, scale)));
        for (file, text) in files {
            std::fs::write(dir.join(&file), text)
                .with_context(|| dir.join(&file).display().to_string())?;
        }
    }
    opts.manifests = root;
    Ok(())
}

fn real_main(cli: Cli) -> Result<ExitCode> {
    let mut opts = options(&cli);
    if matches!(cli.command, None | Some(Cmd::Up { .. }) | Some(Cmd::VmTest)) {
        prerequisites(&cli, &opts)?;
    }
    if let (Some(scale), None | Some(Cmd::Up { .. })) = (cli.scale, &cli.command) {
        if !cli.vm {
            scale_manifests(&mut opts, scale)?;
        }
    }
    let opts = opts;

    match &cli.command {
        Some(Cmd::Manifests { out }) => {
            // Both shapes of every cluster: plain in DIR/<cluster>/, OpenShift SDN-shaped in
            // DIR/openshift/<cluster>/, whichever --openshift picks at run time.
            let plan = opts.plan()?;
            let names: Vec<String> = plan.clusters.iter().map(|c| c.name.clone()).collect();
            let openshift = plan.clone().with_openshift(&names)?;
            for (c, o) in plan.clusters.iter().zip(&openshift.clusters) {
                let plain = sdnlink_lab::topology::Cluster {
                    openshift: false,
                    ..c.clone()
                };
                for (dir, cluster) in [
                    (out.join(&c.name), &plain),
                    (out.join("openshift").join(&c.name), o),
                ] {
                    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
                    for (file, text) in manifests::cluster_files(cluster) {
                        std::fs::write(dir.join(&file), text)
                            .with_context(|| dir.join(&file).display().to_string())?;
                    }
                }
                let dir = out.join("hostile").join(&c.name);
                std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
                for (file, text) in manifests::hostile::files(c) {
                    std::fs::write(dir.join(&file), text)
                        .with_context(|| dir.join(&file).display().to_string())?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Cmd::VmTest) => vm_test(&cli, &opts),
        None if cli.vm => vm_lab(&cli, &opts),
        Some(_) if cli.vm => {
            bail!("--vm runs the whole lab (no command); `up`/`down` are host-only")
        }
        Some(Cmd::Up { topology_only }) => up(&cli, &opts, *topology_only),
        Some(Cmd::Down) => down(&opts),
        Some(Cmd::Restart { node, kill }) => to_holder(
            &opts,
            &Request::Restart {
                node: node.clone(),
                kill: *kill,
            },
        ),
        Some(Cmd::Api { cluster, fault }) => to_holder(
            &opts,
            &Request::Api {
                cluster: cluster.clone(),
                fault: fault.clone(),
            },
        ),
        Some(Cmd::Reload { node, config }) => {
            let config = match config {
                Some(p) => {
                    Some(std::fs::read_to_string(p).with_context(|| p.display().to_string())?)
                }
                None => None,
            };
            to_holder(
                &opts,
                &Request::Reload {
                    node: node.clone(),
                    config,
                },
            )
        }
        Some(Cmd::Hold { topology_only }) => hold(&opts, *topology_only),
        None => {
            let code = all(&opts);
            if cli.scale.is_some() {
                let _ = std::fs::remove_dir_all(scale_dir(&opts));
            }
            Ok(code)
        }
    }
}

fn vm_kernel(cli: &Cli) -> Result<Option<sdnlink_lab::qemu::Kernel>> {
    let paths = match (&cli.kernel, &cli.modules) {
        (Some(k), Some(m)) => Some((k.as_path(), m.as_path())),
        (None, None) => None,
        _ => bail!("--kernel and --modules go together"),
    };
    Ok(lab_vm::kernel(paths)?)
}

/// `--vm`: this executable runs the same lab inside the VM; its lines are printed here.
fn vm_lab(cli: &Cli, opts: &Options) -> Result<ExitCode> {
    let daemon = sdnlink_lab::daemon::locate(opts.daemon.as_deref())?;
    let me = std::env::current_exe()?;
    match lab_vm::run_lab(opts, &me, &daemon, vm_kernel(cli)?) {
        Ok(out) => {
            print!("{}", out.output);
            println!(
                "(VM: {:?} tunnel, {:?} proxy, {:.0}s, exit {})",
                opts.tunnel,
                opts.proxy,
                out.elapsed.as_secs_f64(),
                out.exit_code
            );
            Ok(if out.exit_code == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Err(e) => {
            println!("FAIL vm {e}");
            println!("0 passed, 1 failed");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `vm-test`: the #[ignore]d kernel-feature tests (`root_*`) of every integration test built
/// next to this executable (`cargo test --release --no-run` builds them), inside the VM.
fn vm_test(cli: &Cli, opts: &Options) -> Result<ExitCode> {
    let me = std::env::current_exe()?;
    let deps = me
        .parent()
        .map(|d| d.join("deps"))
        .context("executable without a directory")?;
    // The kernel-only tests are the daemon crate's.
    let tests_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdnlinkd/tests");
    let bins = lab_vm::kernel_test_binaries(&deps, &tests_dir)?;
    if bins.is_empty() {
        bail!(
            "no test binary with ignored root_ tests in {}; run `cargo test --release --no-run` first",
            deps.display()
        );
    }
    for b in &bins {
        println!("vm-test: {}", b.display());
    }
    let daemon = sdnlink_lab::daemon::locate(opts.daemon.as_deref()).ok();
    let out = lab_vm::run_kernel_tests(&bins, daemon.as_deref(), vm_kernel(cli)?)?;
    print!("{}", out.output);
    println!(
        "(VM: {:.0}s, exit {})",
        out.elapsed.as_secs_f64(),
        out.exit_code
    );
    Ok(if out.exit_code == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Lines of each daemon's log printed after a failed check (before `down` removes them).
const DAEMON_LOG_LINES: usize = 200;

/// No command: up, every check, down.
fn all(opts: &Options) -> ExitCode {
    let (mut passed, mut failed) = (0usize, 0usize);
    let failures = std::cell::Cell::new(0usize);
    let mut emit = |o: Outcome| {
        if o.pass {
            passed += 1;
        } else {
            failed += 1;
            failures.set(failed);
        }
        println!("{o}");
    };
    let started = Instant::now();
    match Lab::up(opts) {
        Ok(mut lab) => {
            emit(Outcome {
                name: "up".into(),
                pass: true,
                detail: format!(
                    "{} clusters, {} daemons ready in {:.1}s ({:?} tunnel, {:?} proxy)",
                    lab.plan.clusters.len(),
                    lab.daemons.len(),
                    started.elapsed().as_secs_f64(),
                    lab.plan.tunnel,
                    lab.plan.proxy
                ),
            });
            checks::all(&mut lab, &mut emit);
            if failures.get() > 0 {
                print!("{}", lab.daemon_logs(DAEMON_LOG_LINES));
                print!("{}", lab.kernel_counters());
            }
            let problems = lab.down();
            emit(down_outcome(problems));
        }
        Err(e) => {
            emit(Outcome {
                name: "up".into(),
                pass: false,
                detail: e.to_string(),
            });
            // Lab::up removed its namespaces when it failed; anything the daemons left is in
            // the state file.
            if let Ok(plan) = opts.plan() {
                if plan.state_file().exists() {
                    let problems =
                        run::down_from_state(&plan).unwrap_or_else(|e| vec![e.to_string()]);
                    emit(down_outcome(problems));
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn down_outcome(problems: Vec<String>) -> Outcome {
    Outcome {
        name: "down".into(),
        pass: problems.is_empty(),
        detail: if problems.is_empty() {
            "every daemon stopped and cleaned up, every namespace removed".into()
        } else {
            problems.join("; ")
        },
    }
}

/// `up`: starts a holder process (it owns the servers) and waits until it reports the lab up.
fn up(cli: &Cli, opts: &Options, topology_only: bool) -> Result<ExitCode> {
    let plan = opts.plan()?;
    if plan.state_file().exists() {
        bail!(LabError::AlreadyUp(plan.state_file()));
    }
    std::fs::create_dir_all(&opts.state_root)?;
    let log_path = run::holder_log(&opts.state_root, &opts.prefix);
    let log = std::fs::File::create(&log_path).with_context(|| log_path.display().to_string())?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("--clusters")
        .arg(cli.clusters.to_string())
        .arg("--prefix")
        .arg(&opts.prefix)
        .arg("--manifests")
        .arg(&opts.manifests)
        .arg("--tunnel")
        .arg(format!("{:?}", opts.tunnel).to_lowercase())
        .arg("--proxy")
        .arg(format!("{:?}", opts.proxy).to_lowercase())
        .arg("--openshift")
        .arg(opts.openshift_arg());
    if let Some(d) = &opts.daemon {
        cmd.arg("--daemon").arg(d);
    }
    cmd.arg("__hold");
    if topology_only {
        cmd.arg("--topology-only");
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid(2) is async-signal-safe; the holder must outlive this process and its
    // terminal's Ctrl-C.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd.spawn().context("starting the lab holder process")?;
    let ready = ready_file(&plan);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(600) {
        if let Ok(text) = std::fs::read_to_string(&ready) {
            print!("{text}");
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!("the lab holder exited ({status}) before the lab was up:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    bail!("the lab was not up after 600s; see {}", log_path.display())
}

fn ready_file(plan: &Topology) -> PathBuf {
    plan.state_dir.join("ready")
}

/// `__hold`: brings the lab up, waits for SIGTERM/SIGINT/SIGHUP, tears it down.
fn hold(opts: &Options, topology_only: bool) -> Result<ExitCode> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    // Blocked before any thread exists so every thread inherits the mask and sigwait below
    // is the only receiver.
    set.thread_block()?;
    let lab = if topology_only {
        Lab::topology(opts)?
    } else {
        Lab::up(opts)?
    };
    let state_dir = lab.plan.state_dir.clone();
    let description = lab.describe();
    let ready = ready_file(&lab.plan);
    let shared = std::sync::Arc::new(std::sync::Mutex::new(Some(lab)));
    control::serve(&control::socket_path(&state_dir), shared.clone())?;
    std::fs::write(ready, description)?;
    let sig = set.wait()?;
    eprintln!("sdnlink-lab holder: {sig}, tearing down");
    // Waits for a request in progress (a restart) to finish.
    let lab = shared
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .context("the lab was already taken")?;
    let problems = lab.down();
    for p in &problems {
        eprintln!("down: {p}");
    }
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `restart`, `api`, `reload`: one request to the holder of the lab, its answer printed.
fn to_holder(opts: &Options, req: &Request) -> Result<ExitCode> {
    let plan = opts.plan()?;
    if !plan.state_file().exists() {
        bail!(LabError::NotUp(plan.state_file()));
    }
    let reply = control::send(&plan.state_dir, req)?;
    if reply.ok {
        println!("{}", reply.message);
        Ok(ExitCode::SUCCESS)
    } else {
        bail!("{}", reply.message)
    }
}

/// `down`.
fn down(opts: &Options) -> Result<ExitCode> {
    let plan = opts.plan()?;
    let state = State::load(&plan.state_file());
    if let Err(LabError::NotUp(p)) = &state {
        println!("no lab is up ({} does not exist)", p.display());
        return Ok(ExitCode::SUCCESS);
    }
    let problems = run::down_from_state(&plan)?;
    for p in &problems {
        println!("down: {p}");
    }
    if problems.is_empty() {
        run::remove_holder_log(&opts.state_root, &opts.prefix);
    }
    // The generated manifests of `up --scale`, if any.
    let _ = std::fs::remove_dir_all(scale_dir(opts));
    println!("lab removed");
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
