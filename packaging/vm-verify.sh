#!/usr/bin/env bash
# Checks the DEB and the unit where systemd is PID 1, which this machine's containers are not:
# boots a Debian 12 root file system (debootstrap, systemd 252, Debian's cloud kernel with
# WireGuard and IPVS) under QEMU TCG, installs the package there and, by default, runs the REAL
# daemon under the shipped unit, unmodified (vm-verify/verify-daemon.sh with daemon.toml: start
# to READY, the dataplane as the host sees it, DNS, status, reload, watchdog, restart without
# flapping, stop, purge). See packaging/README.md.
#
#   bash packaging/vm-verify.sh [PATH.deb]      # default: the newest target/packages/*.deb
#   SDNLINK_VM_MODE=probe bash packaging/vm-verify.sh [PATH.deb]
#       the sandbox probe (vm-verify/probe.sh) in place of the daemon: each kind of access the
#       daemon needs, and that the sandbox denies mount, module loading, writes to /usr.
#
# SDNLINK_VM_CONSOLE=PATH keeps the VM's whole console log there.
# Root. Needs debootstrap, qemu-system-x86 and e2fsprogs (installed when missing) and, for the
# first run, the Debian mirror (the root file system is cached in $SDNLINK_VM_CACHE).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
deb="${1:-$(ls -t "$target"/packages/sdnlinkd_*.deb 2>/dev/null | head -n1)}"
[ -f "$deb" ] || { echo "vm-verify: no .deb (run bash packaging/build.sh first)" >&2; exit 1; }
cache="${SDNLINK_VM_CACHE:-/var/cache/sdnlinkd-vm-verify}"
rootfs="$cache/rootfs"
mirror="${SDNLINK_VM_MIRROR:-http://deb.debian.org/debian}"
mode="${SDNLINK_VM_MODE:-daemon}"
case "$mode" in
    daemon) payload=verify-daemon.sh ;;
    probe) payload=verify.sh ;;
    *) echo "vm-verify: SDNLINK_VM_MODE must be daemon or probe, not $mode" >&2; exit 2 ;;
esac
# What the checks inside the VM call besides the package's own dependencies.
guest_tools="wireguard-tools,ipvsadm,bind9-dnsutils"

for tool in debootstrap:debootstrap qemu-system-x86_64:qemu-system-x86 mkfs.ext4:e2fsprogs; do
    command -v "${tool%%:*}" >/dev/null ||
        apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${tool#*:}"
done

if [ ! -x "$rootfs/lib/systemd/systemd" ]; then
    rm -rf "$rootfs.new" && mkdir -p "$cache"
    debootstrap --variant=minbase \
        --include=systemd,systemd-sysv,udev,dbus,kmod,procps,iproute2,nftables,wireguard-go,netcat-openbsd,initramfs-tools,linux-image-cloud-amd64,$guest_tools \
        bookworm "$rootfs.new" "$mirror"
    mv "$rootfs.new" "$rootfs"
fi

# A cache made before the real-daemon checks lacks wg, ipvsadm and dig.
if [ ! -x "$rootfs/usr/bin/wg" ] || [ ! -x "$rootfs/usr/sbin/ipvsadm" ] || [ ! -x "$rootfs/usr/bin/dig" ]; then
    chroot "$rootfs" apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive chroot "$rootfs" apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends ${guest_tools//,/ }
fi

# A login prompt on the serial console would interleave with the result lines.
ln -sf /dev/null "$rootfs/etc/systemd/system/serial-getty@ttyS0.service"

# The verification payload: small, replaced on every run.
install -d "$rootfs/usr/local/lib/sdnlink-verify"
install -m 0755 "$repo/packaging/vm-verify/probe.sh" "$repo/packaging/vm-verify/verify.sh" \
    "$repo/packaging/vm-verify/verify-daemon.sh" "$rootfs/usr/local/lib/sdnlink-verify/"
install -m 0644 "$repo/packaging/vm-verify/probe.conf" "$repo/packaging/vm-verify/daemon.toml" \
    "$rootfs/usr/local/lib/sdnlink-verify/"
sed "s|/usr/local/lib/sdnlink-verify/verify.sh|/usr/local/lib/sdnlink-verify/$payload|" \
    "$repo/packaging/vm-verify/ship-verify.service" >"$rootfs/etc/systemd/system/ship-verify.service"
ln -sf /etc/systemd/system/ship-verify.service "$rootfs/etc/systemd/system/multi-user.target.wants/"
install -m 0644 "$deb" "$rootfs/root/sdnlinkd.deb"
# Left by an earlier run that died before its purge.
chroot "$rootfs" dpkg --purge sdnlinkd >/dev/null 2>&1 || true

work="$(mktemp -d /tmp/sdnlink-vm-verify.XXXXXX)"
trap 'rm -rf "$work"' EXIT
mkfs.ext4 -q -F -L root -d "$rootfs" "$work/root.img" 2G
kernel="$(ls "$rootfs"/boot/vmlinuz-* | head -n1)"
initrd="$(ls "$rootfs"/boot/initrd.img-* | head -n1)"
# KVM hangs on these machines (see docs/kernel-facts.md): TCG.
timeout 1200 qemu-system-x86_64 -accel tcg,thread=multi -smp 2 -cpu max -m 1024 -nographic \
    -no-reboot -kernel "$kernel" -initrd "$initrd" \
    -drive "file=$work/root.img,format=raw,if=virtio" \
    -append "root=/dev/vda rw console=ttyS0 quiet panic=-1 systemd.show_status=false" \
    </dev/null | tee "$work/console.log" | grep --line-buffered -E '^(PASS|FAIL|INFO|    |SHIP-VERIFY)' || true
[ -z "${SDNLINK_VM_CONSOLE:-}" ] || cp "$work/console.log" "$SDNLINK_VM_CONSOLE"
line="$(grep -a 'SHIP-VERIFY: [0-9]* passed' "$work/console.log" | tail -n1 | tr -d '\r')"
[ -n "$line" ] || { echo "vm-verify: no result line; console:" >&2; tail -n 40 "$work/console.log" >&2; exit 1; }
echo "${line#SHIP-VERIFY: }"
[[ "$line" == *" 0 failed"* ]]
