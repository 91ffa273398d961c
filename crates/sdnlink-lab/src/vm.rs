//! The lab and the kernel-only tests inside the QEMU VM (`crate::qemu`): a Debian kernel with
//! IPVS and WireGuard modules, which this host's kernel lacks (docs/kernel-facts.md).

use super::run::Options;
use super::topology::Tunnel;
use super::LabError;
use crate::qemu::{self, Kernel, VmOutcome, VmSpec};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Guest directory of the manifests.
const GUEST_MANIFESTS: &str = "/lab-manifests";

fn vm_err(e: qemu::VmError) -> LabError {
    LabError::Vm(e.to_string())
}

/// The kernel: `--kernel/--modules` when given, else the cached Debian cloud kernel.
pub fn kernel(paths: Option<(&Path, &Path)>) -> Result<Option<Kernel>, LabError> {
    paths
        .map(|(k, m)| Kernel::from_paths(k, m).map_err(vm_err))
        .transpose()
}

/// Host programs the lab and the daemon run, present on this host, that go into the guest.
fn tools(tunnel: Tunnel) -> Vec<PathBuf> {
    let mut names = vec!["ip", "nft", "ipvsadm", "wg"];
    if tunnel == Tunnel::Userspace {
        names.push("wireguard-go");
    }
    names
        .into_iter()
        .filter_map(|n| {
            ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
                .iter()
                .map(|d| Path::new(d).join(n))
                .find(|p| p.is_file())
        })
        .collect()
}

/// Runs `lab_bin` (this executable) inside the VM with the same options; its PASS/FAIL lines
/// are in the outcome's output.
pub fn run_lab(
    opts: &Options,
    lab_bin: &Path,
    daemon_bin: &Path,
    kernel: Option<Kernel>,
) -> Result<VmOutcome, LabError> {
    let mut files = Vec::new();
    for entry in walk(&opts.manifests)? {
        let rel = entry
            .strip_prefix(&opts.manifests)
            .map_err(|e| LabError::Vm(e.to_string()))?;
        files.push((entry.clone(), Path::new(GUEST_MANIFESTS).join(rel)));
    }
    let mut binaries = vec![lab_bin.to_path_buf(), daemon_bin.to_path_buf()];
    binaries.extend(tools(opts.tunnel));
    let lab_bin = std::fs::canonicalize(lab_bin)
        .map_err(|e| LabError::io(format!("{}", lab_bin.display()), e))?;
    let daemon_bin = std::fs::canonicalize(daemon_bin)
        .map_err(|e| LabError::io(format!("{}", daemon_bin.display()), e))?;
    let command = format!(
        "mkdir -p /var/run /var/lib\n'{}' --clusters {} --prefix '{}' --manifests {GUEST_MANIFESTS} --daemon '{}' --tunnel {} --proxy {} --openshift '{}'\n",
        lab_bin.display(),
        opts.clusters,
        opts.prefix,
        daemon_bin.display(),
        format!("{:?}", opts.tunnel).to_lowercase(),
        format!("{:?}", opts.proxy).to_lowercase(),
        opts.openshift_arg(),
    );
    let mut modules: Vec<String> = qemu::DEFAULT_MODULES
        .iter()
        .map(|m| m.to_string())
        .collect();
    // The underlay is a bridge; the Debian kernel builds it as a module.
    modules.push("bridge".into());
    let spec = VmSpec {
        kernel,
        files,
        binaries,
        command,
        modules,
        // Four daemons, their wireguard devices and the lab itself, next to the unpacked
        // initramfs (which lives in guest RAM).
        memory_mb: memory_for(&[&lab_bin, &daemon_bin], 1536),
        timeout: Duration::from_secs(1800),
        ..VmSpec::default()
    };
    qemu::run(&spec).map_err(vm_err)
}

/// Guest memory for a payload: the initramfs is unpacked into guest RAM (twice while the
/// kernel unpacks it), so debug-built binaries of a few hundred MB need room beyond `base`.
fn memory_for(binaries: &[&Path], base: u32) -> u32 {
    let bytes: u64 = binaries
        .iter()
        .filter_map(|b| std::fs::metadata(b).ok())
        .map(|m| m.len())
        .sum();
    let mb = u32::try_from(bytes / (1024 * 1024)).unwrap_or(u32::MAX / 4);
    base.saturating_add(mb.saturating_mul(2)).max(1536)
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>, LabError> {
    let mut out = Vec::new();
    let entries =
        std::fs::read_dir(dir).map_err(|e| LabError::io(format!("{}", dir.display()), e))?;
    for e in entries {
        let p = e
            .map_err(|e| LabError::io(format!("{}", dir.display()), e))?
            .path();
        if p.is_dir() {
            out.extend(walk(&p)?);
        } else {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Integration-test binaries of this package under `deps` that hold `#[ignore]`d `root_`
/// tests (the kernel-feature tests; benchmarks are named `bench_`), newest build per test.
pub fn kernel_test_binaries(deps: &Path, tests_dir: &Path) -> Result<Vec<PathBuf>, LabError> {
    let mut out = Vec::new();
    let sources = std::fs::read_dir(tests_dir)
        .map_err(|e| LabError::io(format!("{}", tests_dir.display()), e))?;
    let mut names: Vec<String> = sources
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let p = e.path();
            (p.extension()? == "rs").then(|| p.file_stem()?.to_str().map(str::to_string))?
        })
        .collect();
    names.sort();
    for name in names {
        let Some(bin) = newest(deps, &name) else {
            continue;
        };
        let listed = std::process::Command::new(&bin)
            .args(["--list", "--ignored", "root_"])
            .output()
            .map_err(|e| LabError::io(format!("{} --list", bin.display()), e))?;
        if String::from_utf8_lossy(&listed.stdout)
            .lines()
            .any(|l| l.ends_with(": test"))
        {
            out.push(bin);
        }
    }
    Ok(out)
}

fn newest(deps: &Path, name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let prefix = format!("{name}-");
    std::fs::read_dir(deps)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let p = e.path();
            let n = p.file_name()?.to_str()?.to_string();
            let md = e.metadata().ok()?;
            let hash = n.strip_prefix(&prefix)?;
            (hash.chars().all(|c| c.is_ascii_hexdigit()) && md.permissions().mode() & 0o111 != 0)
                .then_some((md.modified().ok()?, p))
        })
        .max()
        .map(|(_, p)| p)
}

/// Runs the kernel-feature tests inside the VM.
pub fn run_kernel_tests(
    binaries: &[PathBuf],
    daemon_bin: Option<&Path>,
    kernel: Option<Kernel>,
) -> Result<VmOutcome, LabError> {
    let mut payload: Vec<&Path> = binaries.iter().map(PathBuf::as_path).collect();
    payload.extend(daemon_bin);
    let mut spec = VmSpec {
        kernel,
        memory_mb: memory_for(&payload, 1024),
        timeout: Duration::from_secs(1800),
        ..VmSpec::default()
    };
    spec.binaries.extend(tools(Tunnel::Userspace));
    if let Some(d) = daemon_bin {
        spec.binaries.push(d.to_path_buf());
    }
    qemu::run_test_binaries(binaries, Some("root_"), spec).map_err(vm_err)
}
