//! The real-kernel VM harness: boots a Debian cloud kernel under QEMU (TCG) with an initramfs
//! holding busybox, the kernel's whole module tree and a payload, runs one command and returns
//! its exit code and output.
//!
//! Why this shape (see docs/kernel-facts.md): the host kernel has no IPVS and no WireGuard
//! module and cannot load modules; a Debian kernel boots under `-accel tcg` in about 5 s (KVM
//! hangs here); the cloud kernel has no 9p, so everything travels in the initramfs; a partial
//! module tree misses crypto dependencies of wireguard, so the whole tree goes in, with
//! `depmod` run on it.
//!
//! Cache: `$SDNLINK_LAB_CACHE`, else `/var/cache/sdnlink-lab`. It holds the downloaded kernel
//! package (`linux-image-<ver>-cloud-amd64_*.deb`), its extraction `kernel-<ver>/`, and
//! `base-<ver>.cpio.gz` (busybox + modules + depmod output), built once per kernel version.
//! Each run appends a small payload archive to the base one (the kernel unpacks concatenated
//! compressed cpio archives in order).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Line printed before the payload command runs.
pub const BEGIN_MARKER: &str = "SDNLINK_VM_BEGIN";
/// Prefix of the line carrying the payload's exit code: `SDNLINK_VM_RESULT rc=<n>`.
pub const RESULT_MARKER: &str = "SDNLINK_VM_RESULT rc=";

/// Modules loaded before the payload runs (missing ones are reported on the console, not
/// fatal: a custom kernel may have them built in).
pub const DEFAULT_MODULES: &[&str] = &[
    "ip_vs",
    "ip_vs_rr",
    "ip_vs_wrr",
    "ip_vs_sh",
    "ip_vs_mh",
    "ip_vs_lc",
    "ip_vs_wlc",
    "wireguard",
    "veth",
    "tun",
    "nf_tables",
    "nft_ct",
    "nft_nat",
    "nft_numgen",
    "nft_fib_inet",
    "nft_masq",
    "nft_chain_nat",
    "nf_conntrack",
    "sch_netem",
];

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("kernel not found: {0}")]
    Kernel(String),
    #[error("VM timed out after {0:?} (console kept in the outcome of the error)")]
    Timeout(Duration, String),
    #[error("VM ended without the result marker; console tail:\n{0}")]
    NoResult(String),
}

fn io_ctx(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmError {
    let context = context.into();
    move |source| VmError::Io { context, source }
}

/// A kernel image and its module tree (`.../lib/modules/<version>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kernel {
    pub vmlinuz: PathBuf,
    pub modules_dir: PathBuf,
    /// The module tree's directory name (`uname -r` of the kernel).
    pub version: String,
}

impl Kernel {
    /// The `--kernel PATH --modules DIR` override (DIR = `lib/modules/<version>`).
    pub fn from_paths(vmlinuz: &Path, modules_dir: &Path) -> Result<Kernel, VmError> {
        if !vmlinuz.is_file() {
            return Err(VmError::Kernel(format!(
                "{} is not a file",
                vmlinuz.display()
            )));
        }
        let version = modules_dir
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|_| modules_dir.is_dir())
            .ok_or_else(|| {
                VmError::Kernel(format!(
                    "{} is not a lib/modules/<version> directory",
                    modules_dir.display()
                ))
            })?
            .to_string();
        Ok(Kernel {
            vmlinuz: vmlinuz.to_path_buf(),
            modules_dir: modules_dir.to_path_buf(),
            version,
        })
    }
}

/// The cache directory (`$SDNLINK_LAB_CACHE` or `/var/cache/sdnlink-lab`).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("SDNLINK_LAB_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/sdnlink-lab"))
}

fn run_cmd(cmd: &mut Command) -> Result<String, VmError> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(io_ctx(format!("running {shown}")))?;
    if !out.status.success() {
        return Err(VmError::Command {
            command: shown,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The versioned Debian cloud kernel package that `linux-image-cloud-amd64` depends on.
pub fn cloud_kernel_package() -> Result<String, VmError> {
    let out = run_cmd(Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]))?;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-cloud-amd64"))
        .map(str::to_string)
        .ok_or_else(|| VmError::Kernel(format!("no kernel package in `apt-cache depends`: {out}")))
}

/// The cached Debian cloud kernel, downloaded (`apt-get download`) and extracted
/// (`dpkg -x`) on first use.
pub fn fetch_kernel() -> Result<Kernel, VmError> {
    let cache = cache_dir();
    std::fs::create_dir_all(&cache).map_err(io_ctx(format!("creating {}", cache.display())))?;
    let pkg = cloud_kernel_package()?;
    let version = pkg.trim_start_matches("linux-image-").to_string();
    let root = cache.join(format!("kernel-{version}"));
    let vmlinuz = root.join(format!("boot/vmlinuz-{version}"));
    let modules = root.join(format!("lib/modules/{version}"));
    if !vmlinuz.is_file() || !modules.is_dir() {
        let deb = find_deb(&cache, &pkg)?;
        let deb = match deb {
            Some(d) => d,
            None => {
                run_cmd(
                    Command::new("apt-get")
                        .arg("download")
                        .arg(&pkg)
                        .current_dir(&cache),
                )?;
                find_deb(&cache, &pkg)?.ok_or_else(|| {
                    VmError::Kernel(format!("apt-get download {pkg} left no .deb"))
                })?
            }
        };
        let tmp = cache.join(format!("kernel-{version}.partial"));
        let _ = std::fs::remove_dir_all(&tmp);
        run_cmd(Command::new("dpkg").arg("-x").arg(&deb).arg(&tmp))?;
        let _ = std::fs::remove_dir_all(&root);
        std::fs::rename(&tmp, &root).map_err(io_ctx("placing the extracted kernel"))?;
    }
    Kernel::from_paths(&vmlinuz, &modules)
}

fn find_deb(dir: &Path, pkg: &str) -> Result<Option<PathBuf>, VmError> {
    let rd = std::fs::read_dir(dir).map_err(io_ctx(format!("reading {}", dir.display())))?;
    Ok(rd.filter_map(Result::ok).map(|e| e.path()).find(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb"))
    }))
}

static SCRATCH: AtomicU32 = AtomicU32::new(0);

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Result<Scratch, VmError> {
        let p = std::env::temp_dir().join(format!(
            "sdnlink-vm-{tag}-{}-{}",
            std::process::id(),
            SCRATCH.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).map_err(io_ctx(format!("creating {}", p.display())))?;
        Ok(Scratch(p))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `find . | cpio -o -H newc | gzip -1 > out`, run in `dir`.
fn pack(dir: &Path, out: &Path) -> Result<(), VmError> {
    let script = format!(
        "find . -print0 | cpio --null -o -H newc --quiet | gzip -1 > '{}'",
        out.display()
    );
    run_cmd(Command::new("sh").arg("-c").arg(script).current_dir(dir)).map(|_| ())
}

fn copy_into(root: &Path, host: &Path, guest: &Path) -> Result<(), VmError> {
    let rel = guest.strip_prefix("/").unwrap_or(guest);
    let dst = root.join(rel);
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent)
            .map_err(io_ctx(format!("creating {}", parent.display())))?;
    }
    // `cp -aL` keeps modes and resolves symlinks (library names are often symlinks).
    run_cmd(Command::new("cp").arg("-aL").arg(host).arg(&dst)).map(|_| ())
}

/// The shared libraries (and the loader) `ldd` names for a binary; empty for static ones.
pub fn shared_libraries(bin: &Path) -> Result<Vec<PathBuf>, VmError> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .map_err(io_ctx("running ldd"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

/// The cached base archive for `kernel`: busybox, the whole module tree and depmod's index.
pub fn base_initramfs(kernel: &Kernel) -> Result<PathBuf, VmError> {
    let cache = cache_dir();
    std::fs::create_dir_all(&cache).map_err(io_ctx(format!("creating {}", cache.display())))?;
    // Keyed by the module tree's path too, so a `--modules` override gets its own archive.
    let key = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        kernel.modules_dir.hash(&mut h);
        h.finish()
    };
    let out = cache.join(format!("base-{}-{key:016x}.cpio.gz", kernel.version));
    if out.is_file() {
        return Ok(out);
    }
    let s = Scratch::new("base")?;
    let root = &s.0;
    for d in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "etc",
        "lib/modules",
    ] {
        std::fs::create_dir_all(root.join(d)).map_err(io_ctx("initramfs layout"))?;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            VmError::Kernel("busybox not found (apt-get install busybox-static)".into())
        })?;
    copy_into(root, &busybox, Path::new("/bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).map_err(io_ctx("bin/sh link"))?;
    std::os::unix::fs::symlink("/run", root.join("var_run_tmp")).map_err(io_ctx("var/run link"))?;
    std::fs::create_dir_all(root.join("var")).map_err(io_ctx("var"))?;
    std::fs::rename(root.join("var_run_tmp"), root.join("var/run")).map_err(io_ctx("var/run"))?;
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")
        .map_err(io_ctx("etc/passwd"))?;
    run_cmd(
        Command::new("cp")
            .arg("-a")
            .arg(&kernel.modules_dir)
            .arg(root.join("lib/modules").join(&kernel.version)),
    )?;
    run_cmd(
        Command::new("depmod")
            .arg("-b")
            .arg(root)
            .arg(&kernel.version),
    )?;
    let tmp = out.with_extension("partial");
    pack(root, &tmp)?;
    std::fs::rename(&tmp, &out).map_err(io_ctx("placing the base initramfs"))?;
    Ok(out)
}

/// What to run in the VM.
#[derive(Clone, Debug)]
pub struct VmSpec {
    /// `None`: the cached Debian cloud kernel ([`fetch_kernel`]).
    pub kernel: Option<Kernel>,
    /// Files copied in: (host path, guest path).
    pub files: Vec<(PathBuf, PathBuf)>,
    /// Programs copied in at their host path, with the shared libraries `ldd` names.
    pub binaries: Vec<PathBuf>,
    /// Shell command (busybox sh) run as the payload; its exit code is the outcome's.
    pub command: String,
    /// Modules to load first (defaults: [`DEFAULT_MODULES`]).
    pub modules: Vec<String>,
    pub memory_mb: u32,
    pub cpus: u32,
    pub timeout: Duration,
    /// Echo the console to stderr while it runs.
    pub echo: bool,
}

impl Default for VmSpec {
    fn default() -> Self {
        VmSpec {
            kernel: None,
            files: vec![],
            binaries: vec![],
            command: "true".into(),
            modules: DEFAULT_MODULES.iter().map(|s| s.to_string()).collect(),
            memory_mb: 1024,
            cpus: 2,
            timeout: Duration::from_secs(600),
            echo: std::env::var_os("SDNLINK_VM_ECHO").is_some(),
        }
    }
}

/// What the VM run produced.
#[derive(Clone, Debug)]
pub struct VmOutcome {
    /// The payload command's exit code.
    pub exit_code: i32,
    /// The payload's output (console lines between the markers).
    pub output: String,
    /// The whole console.
    pub console: String,
    pub elapsed: Duration,
}

fn init_script(spec: &VmSpec) -> String {
    format!(
        r#"#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /dev/pts /dev/shm /run/netns /root
mount -t devpts devpts /dev/pts
for m in {modules}; do modprobe "$m" 2>/dev/null || echo "sdnlink-vm: modprobe $m failed"; done
ip link set lo up
echo {BEGIN_MARKER}
cd /payload
sh /payload/command.sh
echo "{RESULT_MARKER}$?"
sync
poweroff -f
"#,
        modules = spec.modules.join(" ")
    )
}

/// Boots the VM, runs `spec.command`, returns its exit code and output.
pub fn run(spec: &VmSpec) -> Result<VmOutcome, VmError> {
    let kernel = match &spec.kernel {
        Some(k) => k.clone(),
        None => fetch_kernel()?,
    };
    let base = base_initramfs(&kernel)?;
    let s = Scratch::new("payload")?;
    let root = s.0.join("root");
    std::fs::create_dir_all(root.join("payload")).map_err(io_ctx("payload dir"))?;
    let mut seen = BTreeSet::new();
    for b in &spec.binaries {
        let b = std::fs::canonicalize(b).map_err(io_ctx(format!("binary {}", b.display())))?;
        for p in std::iter::once(b.clone()).chain(shared_libraries(&b)?) {
            if seen.insert(p.clone()) {
                copy_into(&root, &p, &p)?;
            }
        }
    }
    for (host, guest) in &spec.files {
        copy_into(&root, host, guest)?;
    }
    let init = root.join("init");
    std::fs::write(&init, init_script(spec)).map_err(io_ctx("writing /init"))?;
    std::fs::write(root.join("payload/command.sh"), &spec.command).map_err(io_ctx("command"))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))
        .map_err(io_ctx("chmod /init"))?;
    let payload = s.0.join("payload.cpio.gz");
    pack(&root, &payload)?;
    let initrd = s.0.join("initrd.gz");
    {
        let mut out = std::fs::File::create(&initrd).map_err(io_ctx("initrd"))?;
        for part in [&base, &payload] {
            let mut f = std::fs::File::open(part).map_err(io_ctx("initrd part"))?;
            std::io::copy(&mut f, &mut out).map_err(io_ctx("initrd concat"))?;
        }
        out.flush().map_err(io_ctx("initrd flush"))?;
    }
    boot(spec, &kernel, &initrd)
}

fn boot(spec: &VmSpec, kernel: &Kernel, initrd: &Path) -> Result<VmOutcome, VmError> {
    let start = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-nographic",
            "-no-reboot",
        ])
        .args([
            "-smp",
            &spec.cpus.to_string(),
            "-m",
            &spec.memory_mb.to_string(),
        ])
        .args(["-nic", "none", "-monitor", "none", "-serial", "stdio"])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1 rdinit=/init"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_ctx(
            "starting qemu-system-x86_64 (apt-get install qemu-system-x86)",
        ))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| VmError::Kernel("qemu stdout".into()))?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let echo = spec.echo;
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).replace('\r', "");
                    if echo {
                        eprint!("{line}");
                    }
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut console = String::new();
    let deadline = start + spec.timeout;
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            timed_out = true;
            break;
        }
        match rx.recv_timeout(left.min(Duration::from_millis(500))) {
            Ok(line) => console.push_str(&line),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if let Ok(Some(_)) = child.try_wait() {
                    // Drain what is left.
                    while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                        console.push_str(&line);
                    }
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    if timed_out {
        let _ = child.kill();
    }
    let _ = child.wait();
    let _ = reader.join();
    if timed_out {
        return Err(VmError::Timeout(spec.timeout, tail(&console)));
    }
    parse_outcome(&console, start.elapsed())
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Extracts the payload output and exit code from a console transcript.
pub fn parse_outcome(console: &str, elapsed: Duration) -> Result<VmOutcome, VmError> {
    let mut output = String::new();
    let mut inside = false;
    for line in console.lines() {
        // The serial console may prefix the line with terminal escapes (SeaBIOS clears the
        // screen), so match the end of the line.
        if line.trim_end().ends_with(BEGIN_MARKER) {
            inside = true;
            continue;
        }
        if let Some(rc) = line
            .find(RESULT_MARKER)
            .map(|i| &line[i + RESULT_MARKER.len()..])
        {
            let exit_code = rc.trim().parse().unwrap_or(-1);
            return Ok(VmOutcome {
                exit_code,
                output,
                console: console.to_string(),
                elapsed,
            });
        }
        if inside {
            output.push_str(line);
            output.push('\n');
        }
    }
    Err(VmError::NoResult(tail(console)))
}

/// Runs Rust test binaries inside the VM with `--ignored --test-threads=1` (plus `filter`
/// when given), one after the other; the exit code is the first failing binary's (or 0).
/// The guest has `ip` (iproute2) and `ipvsadm` when the host has them.
pub fn run_test_binaries(
    binaries: &[PathBuf],
    filter: Option<&str>,
    mut spec: VmSpec,
) -> Result<VmOutcome, VmError> {
    let mut cmd = String::from("export RUST_BACKTRACE=1\nrc=0\n");
    for b in binaries {
        let b = std::fs::canonicalize(b).map_err(io_ctx(format!("test binary {}", b.display())))?;
        let mut line = format!("'{}' --ignored --test-threads=1 --nocapture", b.display());
        if let Some(f) = filter {
            line.push_str(&format!(" '{f}'"));
        }
        cmd.push_str(&format!("{line} || {{ r=$?; [ $rc -eq 0 ] && rc=$r; }}\n"));
        spec.binaries.push(b);
    }
    cmd.push_str("exit $rc\n");
    for tool in [
        "/usr/sbin/ip",
        "/usr/sbin/ipvsadm",
        "/usr/bin/ip",
        "/sbin/ipvsadm",
    ] {
        let p = PathBuf::from(tool);
        if p.is_file() && !spec.binaries.contains(&p) {
            spec.binaries.push(p);
        }
    }
    spec.command = cmd;
    run(&spec)
}

/// Test binaries of this package's integration test `name` in the target directory that
/// holds the running executable (`target/<profile>/deps/<name>-<hash>`), newest first.
pub fn find_test_binary(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent()?;
    let prefix = format!("{name}-");
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(deps)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let p = e.path();
            let n = p.file_name()?.to_str()?.to_string();
            let md = e.metadata().ok()?;
            use std::os::unix::fs::PermissionsExt;
            if !(n.starts_with(&prefix) && !n.contains('.') && md.permissions().mode() & 0o111 != 0)
            {
                return None;
            }
            Some((md.modified().ok()?, p))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}
