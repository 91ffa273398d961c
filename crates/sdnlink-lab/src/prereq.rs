//! The lab's prerequisites, checked before anything is built: the programs it and the daemons
//! run, found on `PATH`, each with the Debian package that provides it. What is missing is
//! named in one line with the exact `apt-get install` (or installed with `--install-deps`).

use super::topology::Tunnel;

/// A program the lab needs and the Debian package that ships it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tool {
    pub program: &'static str,
    pub package: &'static str,
}

const fn tool(program: &'static str, package: &'static str) -> Tool {
    Tool { program, package }
}

/// What a run needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Needs {
    pub tunnel: Tunnel,
    /// IPVS proxy (`ipvsadm` for the checks' listings).
    pub ipvs: bool,
    /// The run boots the QEMU VM (`--vm`, `vm-test`).
    pub vm: bool,
}

/// Every program `needs` calls for, in a stable order.
pub fn required(needs: Needs) -> Vec<Tool> {
    // ip: the topology; nft: the daemon's proxy, MSS clamp and the checks' listings; wg: the
    // fault checks' peer watcher; ping is not used.
    let mut v = vec![
        tool("ip", "iproute2"),
        tool("nft", "nftables"),
        tool("wg", "wireguard-tools"),
    ];
    if needs.tunnel == Tunnel::Userspace {
        v.push(tool("wireguard-go", "wireguard-go"));
    }
    if needs.ipvs || needs.vm {
        v.push(tool("ipvsadm", "ipvsadm"));
    }
    if needs.vm {
        v.extend([
            tool("qemu-system-x86_64", "qemu-system-x86"),
            tool("busybox", "busybox-static"),
            tool("cpio", "cpio"),
            tool("depmod", "kmod"),
            tool("modprobe", "kmod"),
            // The Debian cloud kernel is fetched with apt-get download and unpacked with dpkg.
            tool("apt-get", "apt"),
            tool("dpkg", "dpkg"),
        ]);
    }
    v
}

/// Whether `program` is an executable file in one of the `PATH` directories.
pub fn on_path(program: &str, path: &std::ffi::OsStr) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path).any(|d| {
        std::fs::metadata(d.join(program))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// The tools of `needs` that `present` does not find.
pub fn missing(needs: Needs, present: impl Fn(&str) -> bool) -> Vec<Tool> {
    required(needs)
        .into_iter()
        .filter(|t| !present(t.program))
        .collect()
}

/// The packages that provide `tools`, each once, in order.
pub fn packages(tools: &[Tool]) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = Vec::new();
    for t in tools {
        if !v.contains(&t.package) {
            v.push(t.package);
        }
    }
    v
}

/// The one line that says what is missing and how to install it.
pub fn message(tools: &[Tool]) -> String {
    let names: Vec<&str> = tools.iter().map(|t| t.program).collect();
    format!(
        "missing {}: run `apt-get install -y {}` (or pass --install-deps)",
        names.join(", "),
        packages(tools).join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_follow_the_tunnel_proxy_and_vm() {
        let host = Needs {
            tunnel: Tunnel::Userspace,
            ipvs: false,
            vm: false,
        };
        let names = |n| required(n).iter().map(|t| t.program).collect::<Vec<_>>();
        assert_eq!(names(host), ["ip", "nft", "wg", "wireguard-go"]);
        let kernel = Needs {
            tunnel: Tunnel::Kernel,
            ..host
        };
        assert!(!names(kernel).contains(&"wireguard-go"));
        let vm = Needs {
            tunnel: Tunnel::Kernel,
            ipvs: true,
            vm: true,
        };
        for p in ["qemu-system-x86_64", "busybox", "cpio", "depmod", "ipvsadm"] {
            assert!(names(vm).contains(&p), "{p}");
        }
    }

    #[test]
    fn one_line_names_what_is_missing_and_the_packages_once() {
        let needs = Needs {
            tunnel: Tunnel::Kernel,
            ipvs: false,
            vm: true,
        };
        let gone = missing(needs, |p| !matches!(p, "nft" | "depmod" | "modprobe"));
        let line = message(&gone);
        assert_eq!(
            line,
            "missing nft, depmod, modprobe: run `apt-get install -y nftables kmod` (or pass --install-deps)"
        );
        assert!(!line.contains('\n'));
        assert!(missing(needs, |_| true).is_empty());
    }

    #[test]
    fn path_lookup_needs_an_executable_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let exe = dir.path().join("tool");
        std::fs::write(&exe, "#!/bin/sh\n").expect("write");
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "").expect("write");
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let path = dir.path().as_os_str();
        assert!(on_path("tool", path));
        assert!(!on_path("plain", path));
        assert!(!on_path("absent", path));
    }
}
