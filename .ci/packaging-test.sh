#!/usr/bin/env bash
# Packaging tests (issue 9), called by .ci/run after the build: builds the DEB and RPM with
# packaging/build.sh, installs the DEB on this machine and checks files, modes, conffiles, the
# enable symlink, upgrade and purge; inspects and lints the RPM and runs its scriptlets against
# stubs; verifies the systemd unit and its security exposure; validates the Vagrantfile.
# Prints one PASS/FAIL line per check and "N passed, M failed"; exits non-zero on any failure.
#
# Needs root (dpkg -i). Installs its own tools. SDNLINK_PKG_BINARY=PATH packages an already
# built binary instead of running `cargo build --release` (packaging/build.sh --binary).
# SDNLINK_PKG_VM=1 also runs packaging/vm-verify.sh: the real daemon under the shipped unit with
# systemd as PID 1, in QEMU (several minutes; SDNLINK_VM_MODE=probe runs the sandbox probe).
set -uo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
export DEBIAN_FRONTEND=noninteractive
MAX_EXPOSURE="3.0"

passed=0 failed=0
work="$(mktemp -d /tmp/sdnlink-pkgtest.XXXXXX)"
we_installed=0
# On any exit: if this script installed sdnlinkd (it refuses to run when it was there before),
# purge it and what its checks created, so a failed run leaves the machine as it found it.
cleanup() {
    if [ "$we_installed" = 1 ]; then
        dpkg_locked --purge sdnlinkd >/dev/null 2>&1
        rm -rf /etc/sdnlink /var/lib/sdnlink /run/sdnlink
    fi
    rm -rf "$work"
}
trap cleanup EXIT
# dpkg with the frontend lock waited for: other sessions on this machine may be running apt-get.
dpkg_locked() {
    local i out rc
    for i in $(seq 120); do
        out="$(dpkg "$@" 2>&1)"; rc=$?
        grep -q 'frontend lock\|lock was locked' <<<"$out" || { printf '%s\n' "$out"; return "$rc"; }
        sleep 5
    done
    printf '%s\n' "$out"; return "$rc"
}
log="$work/log"
pass() { passed=$((passed + 1)); echo "PASS $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }
# check NAME CMD...: passes when CMD succeeds; shows its output when it does not.
check() {
    local name="$1"; shift
    if "$@" >"$log" 2>&1; then pass "$name"; else fail "$name"; sed 's/^/    /' "$log" | head -n 40; fi
}
finish() { echo "$passed passed, $failed failed"; [ "$failed" -eq 0 ]; exit $?; }
die() { fail "$*"; finish; }

# ---- tools ---------------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "must run as root (dpkg -i)"
tools=(rpm rpmlint vagrant systemd binutils dpkg-dev iproute2 nftables man-db)
missing=()
for p in "${tools[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "packaging-test: installing ${missing[*]}"
    apt_install() { apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >"$log" 2>&1; }
    apt_install || { apt-get -o DPkg::Lock::Timeout=600 update -qq && apt_install; } \
        || { cat "$log"; die "apt-get install ${missing[*]}"; }
fi

# ---- build ---------------------------------------------------------------------------------
build_args=()
[ -n "${SDNLINK_PKG_BINARY:-}" ] && build_args=(--binary "$SDNLINK_PKG_BINARY")
bash packaging/build.sh "${build_args[@]}" || die "packaging/build.sh"
target="${CARGO_TARGET_DIR:-$repo/target}"
case "$target" in /*) ;; *) target="$repo/$target" ;; esac
shopt -s nullglob
debs=("$target"/packages/sdnlinkd_*.deb)
rpms=("$target"/packages/sdnlinkd-*.rpm)
shopt -u nullglob
[ "${#debs[@]}" -eq 1 ] && [ "${#rpms[@]}" -eq 1 ] || die "expected one .deb and one .rpm in $target/packages"
deb="${debs[0]}" rpm="${rpms[0]}"
pass "one command built $(basename "$deb") and $(basename "$rpm")"

# ---- the unit --------------------------------------------------------------------------------
exposure_ok() {
    local unit="$1" score
    systemd-analyze security --offline=true --no-pager "$unit" >"$work/security" 2>&1
    score="$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' "$work/security")"
    echo "exposure of $unit: ${score:-none} (limit $MAX_EXPOSURE)"
    [ -n "$score" ] && awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s <= m) }'
}
check "unit source: systemd-analyze security exposure <= $MAX_EXPOSURE" exposure_ok systemd/sdnlinkd.service
grep -o 'exposure of .*' "$log" | sed 's/^/    /'

# ---- DEB, statically ----------------------------------------------------------------------------
dpkg-deb -c "$deb" | awk '{ print $1, $2, $6 }' >"$work/deb-contents"
deb_has() { grep -qxF -- "$1 $2 ./$3" "$work/deb-contents" || { echo "missing: $1 $2 /$3"; cat "$work/deb-contents"; return 1; }; }
deb_files_ok() {
    deb_has -rwxr-xr-x 0/0 usr/bin/sdnlinkd &&
        deb_has -rw-r--r-- 0/0 etc/sdnlink/sdnlink.toml &&
        deb_has -rw-r--r-- 0/0 usr/lib/systemd/system/sdnlinkd.service &&
        deb_has -rw-r--r-- 0/0 usr/lib/tmpfiles.d/sdnlinkd.conf &&
        deb_has -rw-r--r-- 0/0 usr/lib/sysctl.d/60-sdnlinkd.conf &&
        deb_has -rw-r--r-- 0/0 usr/lib/modules-load.d/sdnlinkd.conf &&
        deb_has -rw-r--r-- 0/0 usr/share/doc/sdnlinkd/README.md &&
        deb_has -rw-r--r-- 0/0 usr/share/doc/sdnlinkd/rbac.yaml &&
        deb_has -rw-r--r-- 0/0 usr/share/doc/sdnlinkd/copyright &&
        deb_has -rw-r--r-- 0/0 usr/share/man/man1/sdnlinkd.1.gz &&
        deb_has -rw-r--r-- 0/0 usr/share/bash-completion/completions/sdnlinkd &&
        deb_has -rw-r--r-- 0/0 usr/share/zsh/vendor-completions/_sdnlinkd &&
        deb_has -rw-r--r-- 0/0 usr/share/fish/vendor_completions.d/sdnlinkd.fish
}
check "deb: files and modes" deb_files_ok
# The shipped page renders (man's own parser, warnings are errors) and names every subcommand
# the binary has; the bash completion loads in bash and completes a subcommand.
man_ok() {
    dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/share/man/man1/sdnlinkd.1.gz | gunzip >"$work/sdnlinkd.1" &&
        ! man --warnings -l "$work/sdnlinkd.1" 2>&1 >/dev/null | grep . &&
        for sub in status reload cleanup check-config pubkey completions man; do
            grep -q -- "$(sed 's/-/\\\\-/g' <<<"$sub")" "$work/sdnlinkd.1" || { echo "man page lacks $sub"; return 1; }
        done
}
check "deb: man page renders and lists the subcommands" man_ok
bash_completion_ok() {
    dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/share/bash-completion/completions/sdnlinkd >"$work/completion.bash" &&
        bash -c "source '$work/completion.bash' && COMP_WORDS=(sdnlinkd sta) COMP_CWORD=1 && _sdnlinkd sdnlinkd sta sdnlinkd && printf '%s\n' \"\${COMPREPLY[@]}\"" | grep -qx status
}
check "deb: bash completion completes 'sta' to status" bash_completion_ok
check "deb: the lab binary is not packaged" bash -c "! grep -q sdnlink-lab '$work/deb-contents'"
check "deb: /usr/bin/sdnlinkd is stripped" bash -c \
    "dpkg-deb --fsys-tarfile '$deb' | tar -xO ./usr/bin/sdnlinkd >'$work/bin' && ! readelf -S --wide '$work/bin' | grep -qE '\.debug_(info|line|str) '"
check "deb: conffiles = /etc/sdnlink/sdnlink.toml" bash -c \
    "[ \"\$(dpkg-deb -I '$deb' conffiles)\" = /etc/sdnlink/sdnlink.toml ]"
check "deb: Depends iproute2, nftables" bash -c \
    "dpkg-deb -f '$deb' Depends | grep -qw iproute2 && dpkg-deb -f '$deb' Depends | grep -qw nftables"
check "deb: Recommends wireguard-tools, ipvsadm" bash -c \
    "dpkg-deb -f '$deb' Recommends | grep -qw wireguard-tools && dpkg-deb -f '$deb' Recommends | grep -qw ipvsadm"
mkdir -p "$work/control" && dpkg-deb -e "$deb" "$work/control"
check "deb: maintainer scripts parse (sh -n)" bash -c \
    "for s in postinst prerm postrm; do sh -n '$work/control/'\$s || exit 1; done"
check "deb: prerm runs 'sdnlinkd cleanup' on remove" grep -q '/usr/bin/sdnlinkd cleanup' "$work/control/prerm"
check "deb: postrm removes /etc/sdnlink and /var/lib/sdnlink on purge" \
    grep -q 'rm -rf /etc/sdnlink /var/lib/sdnlink' "$work/control/postrm"

# ---- DEB on this machine ----------------------------------------------------------------------
# Never clobber a real installation or an admin's config on the machine running the tests.
dpkg-query -W -f='${Status}' sdnlinkd 2>/dev/null | grep -q 'installed' && die "sdnlinkd is already installed here"
[ -e /etc/sdnlink ] || [ -e /var/lib/sdnlink ] && die "/etc/sdnlink or /var/lib/sdnlink exists already"
# The maintainer scripts run `sdnlinkd cleanup`; point it at throwaway names (config layering
# SDNLINK_<SECTION>__<KEY>) so it cannot touch anything another test or a real daemon owns.
export SDNLINK_NAMESPACE__NAME=shipt-pkg SDNLINK_NAMESPACE__HOST_INTERFACE=shipt-pkg0 \
    SDNLINK_TUNNEL__INTERFACE=shipt-pkg-wg
snapshot() {
    find /etc /usr /var/lib /opt /run/sdnlink -xdev \
        \( -path /var/lib/dpkg -o -path /var/lib/apt -o -path /var/lib/ucf \) -prune -o -print 2>/dev/null | sort
}
snapshot >"$work/before"
forward_before="$(cat /proc/sys/net/ipv4/ip_forward)"

we_installed=1
check "deb: dpkg -i" dpkg_locked -i "$deb"
installed_ok() {
    local f mode owner want got
    while read -r mode owner f; do
        want="$mode $owner"
        got="$(stat -c '%a %U:%G' "$f" 2>&1)"
        [ "$got" = "$want" ] || { echo "$f: $got, want $want"; return 1; }
    done <<'LIST'
755 root:root /usr/bin/sdnlinkd
644 root:root /etc/sdnlink/sdnlink.toml
644 root:root /usr/lib/systemd/system/sdnlinkd.service
644 root:root /usr/lib/tmpfiles.d/sdnlinkd.conf
644 root:root /usr/lib/sysctl.d/60-sdnlinkd.conf
644 root:root /usr/lib/modules-load.d/sdnlinkd.conf
LIST
}
check "deb installed: files and modes" installed_ok
check "deb installed: dpkg records the conffile" bash -c \
    "dpkg-query -W -f='\${Conffiles}\n' sdnlinkd | grep -q '^ /etc/sdnlink/sdnlink.toml [0-9a-f]\{32\}'"
enabled_ok() {
    local link=/etc/systemd/system/multi-user.target.wants/sdnlinkd.service
    [ -L "$link" ] || { echo "no $link"; return 1; }
    case "$(readlink "$link")" in
        /lib/systemd/system/sdnlinkd.service | /usr/lib/systemd/system/sdnlinkd.service) ;;
        *) echo "$link -> $(readlink "$link")"; return 1 ;;
    esac
    [ -e "$link" ] && [ "$(systemctl is-enabled sdnlinkd.service 2>&1)" = enabled ]
}
check "deb installed: unit enabled (multi-user.target.wants symlink)" enabled_ok
if [ ! -d /run/systemd/system ]; then
    check "deb installed: host sysctls untouched where systemd is not running" \
        test "$(cat /proc/sys/net/ipv4/ip_forward)" = "$forward_before"
fi
verify_ok() {
    systemd-analyze verify /usr/lib/systemd/system/sdnlinkd.service >"$work/verify" 2>&1
    local rc=$?
    cat "$work/verify"
    [ "$rc" -eq 0 ] && [ ! -s "$work/verify" ]
}
check "deb installed: systemd-analyze verify is clean" verify_ok
check "deb installed: exposure <= $MAX_EXPOSURE" exposure_ok /usr/lib/systemd/system/sdnlinkd.service

echo "# edited by packaging-test" >>/etc/sdnlink/sdnlink.toml
check "deb: upgrade (dpkg -i again)" dpkg_locked -i "$deb"
check "deb upgrade: the admin's config edit survives" grep -qx '# edited by packaging-test' /etc/sdnlink/sdnlink.toml
check "deb upgrade: no .dpkg-new/.dpkg-dist beside it" bash -c "! ls /etc/sdnlink/*.dpkg-* 2>/dev/null | grep -q ."

check "deb: dpkg -r" dpkg_locked -r sdnlinkd
removed_ok() {
    [ ! -e /usr/bin/sdnlinkd ] || { echo "/usr/bin/sdnlinkd still there"; return 1; }
    [ -f /etc/sdnlink/sdnlink.toml ] || { echo "conffile gone before purge"; return 1; }
    dpkg-query -W -f='${Status}' sdnlinkd | grep -q 'config-files'
}
check "deb removed: binary gone, conffile kept until purge" removed_ok
# What the admin and the daemon add beside the package; purge must take these too.
mkdir -p /etc/sdnlink/sdnlink.d /var/lib/sdnlink
touch /etc/sdnlink/sdnlink.d/50-local.toml /etc/sdnlink/west.kubeconfig /var/lib/sdnlink/private.key
check "deb: dpkg --purge" dpkg_locked --purge sdnlinkd
purged_ok() {
    local p
    for p in /etc/sdnlink /var/lib/sdnlink /run/sdnlink /usr/bin/sdnlinkd \
        /etc/systemd/system/multi-user.target.wants/sdnlinkd.service; do
        [ ! -e "$p" ] && [ ! -L "$p" ] || { echo "left behind: $p"; return 1; }
    done
    ! dpkg-query -W -f='${Status}' sdnlinkd 2>/dev/null | grep -q 'installed\|config-files'
}
check "deb purged: nothing of sdnlinkd left" purged_ok
snapshot_same() {
    snapshot >"$work/after"
    comm -13 "$work/before" "$work/after" >"$work/added"
    comm -23 "$work/before" "$work/after" >"$work/gone"
    # Other engineers may apt-get install while this runs: files a package owns are theirs.
    local p bad=0
    while read -r p; do
        dpkg-query -S "$p" >/dev/null 2>&1 && [[ "$p" != *sdnlink* ]] && continue
        echo "left behind: $p"; bad=1
    done <"$work/added"
    while read -r p; do echo "removed: $p"; bad=1; done <"$work/gone"
    return "$bad"
}
check "deb purged: file list of /etc /usr /var/lib /opt equals the one before install" snapshot_same

# ---- RPM -------------------------------------------------------------------------------------------
check "rpm: rpm -qip" rpm -qip "$rpm"
check "rpm: config files = /etc/sdnlink/sdnlink.toml, %config(noreplace)" bash -c \
    "[ \"\$(rpm -qp --configfiles '$rpm')\" = /etc/sdnlink/sdnlink.toml ] &&
     rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' '$rpm' | grep -qx 'cn /etc/sdnlink/sdnlink.toml'"
rpm -qp --qf '[%{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILENAMES}\n]' "$rpm" >"$work/rpm-files"
rpm_files_ok() {
    local line
    for line in "-rwxr-xr-x root:root /usr/bin/sdnlinkd" \
        "-rw-r--r-- root:root /etc/sdnlink/sdnlink.toml" \
        "-rw-r--r-- root:root /usr/lib/systemd/system/sdnlinkd.service" \
        "-rw-r--r-- root:root /usr/lib/systemd/system-preset/80-sdnlinkd.preset" \
        "-rw-r--r-- root:root /usr/lib/tmpfiles.d/sdnlinkd.conf" \
        "-rw-r--r-- root:root /usr/lib/sysctl.d/60-sdnlinkd.conf" \
        "-rw-r--r-- root:root /usr/lib/modules-load.d/sdnlinkd.conf" \
        "-rw-r--r-- root:root /usr/share/doc/sdnlinkd/README.md" \
        "-rw-r--r-- root:root /usr/share/doc/sdnlinkd/rbac.yaml" \
        "-rw-r--r-- root:root /usr/share/man/man1/sdnlinkd.1.gz" \
        "-rw-r--r-- root:root /usr/share/bash-completion/completions/sdnlinkd" \
        "-rw-r--r-- root:root /usr/share/zsh/site-functions/_sdnlinkd" \
        "-rw-r--r-- root:root /usr/share/fish/vendor_completions.d/sdnlinkd.fish"; do
        grep -qxF -- "$line" "$work/rpm-files" || { echo "missing: $line"; cat "$work/rpm-files"; return 1; }
    done
    ! grep -q sdnlink-lab "$work/rpm-files"
}
check "rpm: files and modes, no lab binary" rpm_files_ok
check "rpm: Requires iproute, nftables, util-linux, /bin/sh" bash -c \
    "r=\$(rpm -qp --requires '$rpm'); for d in iproute nftables util-linux /bin/sh; do grep -qw -- \"\$d\" <<<\"\$r\" || exit 1; done"
check "rpm: Recommends wireguard-tools, ipvsadm" bash -c \
    "r=\$(rpm -qp --recommends '$rpm'); grep -qw wireguard-tools <<<\"\$r\" && grep -qw ipvsadm <<<\"\$r\""
check "rpm: --scripts lists all three scriptlets" bash -c \
    "s=\$(rpm -qp --scripts '$rpm'); for w in 'postinstall scriptlet' 'preuninstall scriptlet' 'postuninstall scriptlet'; do grep -q \"\$w\" <<<\"\$s\" || exit 1; done"

# The scriptlets, run against stubs: systemctl and sdnlinkd record their arguments, and every
# path they could change on this host is redirected into $work.
mkdir -p "$work/stub" "$work/root/var/lib/sdnlink" "$work/root/run/sdnlink"
cat >"$work/stub/systemctl" <<STUB
#!/bin/sh
echo "systemctl \$*" >>"$work/calls"
STUB
cat >"$work/stub/sdnlinkd" <<STUB
#!/bin/sh
echo "sdnlinkd \$*" >>"$work/calls"
STUB
chmod +x "$work/stub/systemctl" "$work/stub/sdnlinkd"
scriptlet() { # scriptlet TAG ARG: runs the RPM's %TAG scriptlet with $1=ARG, prints the calls
    rpm -qp --qf "%{$1}" "$rpm" |
        sed -e "s#/usr/bin/sdnlinkd#$work/stub/sdnlinkd#g" -e "s#/run/systemd/system#$work/root/run/systemd/system#g" \
            -e "s#/var/lib/sdnlink#$work/root/var/lib/sdnlink#g" -e "s#/run/sdnlink#$work/root/run/sdnlink#g" \
            >"$work/scriptlet"
    : >"$work/calls"
    PATH="$work/stub:$PATH" sh -e "$work/scriptlet" "$2" || return 1
    cat "$work/calls"
}
scriptlet_does() { # scriptlet_does TAG ARG EXPECTED-CALLS (newline separated, in order)
    local got
    got="$(scriptlet "$1" "$2")" || { echo "%$1 $2 failed"; return 1; }
    [ "$got" = "$3" ] || { printf 'calls of %%%s %s:\n%s\nwant:\n%s\n' "$1" "$2" "$got" "$3"; return 1; }
}
check "rpm %post on install: preset" scriptlet_does POSTIN 1 "systemctl --no-reload preset sdnlinkd.service"
check "rpm %post on upgrade: no preset (keeps the admin's choice)" scriptlet_does POSTIN 2 ""
check "rpm %preun on erase: disable --now, then sdnlinkd cleanup" scriptlet_does PREUN 0 \
    "systemctl --no-reload disable --now sdnlinkd.service
sdnlinkd cleanup"
check "rpm %preun on upgrade: nothing stopped or cleaned" scriptlet_does PREUN 1 ""
check "rpm %postun on upgrade: try-restart" scriptlet_does POSTUN 1 "systemctl try-restart sdnlinkd.service"
erase_cleans() {
    touch "$work/root/var/lib/sdnlink/private.key"
    scriptlet_does POSTUN 0 "" && [ ! -e "$work/root/var/lib/sdnlink" ] && [ ! -e "$work/root/run/sdnlink" ]
}
check "rpm %postun on erase: /var/lib/sdnlink and /run/sdnlink removed, no restart" erase_cleans
check "rpm: rpmlint with packaging/rpmlint.toml" rpmlint -c packaging/rpmlint.toml "$rpm"

# ---- Vagrant ---------------------------------------------------------------------------------
check "vagrant: scripts parse (bash -n)" bash -c 'for f in vagrant/scripts/*.sh; do bash -n "$f" || exit 1; done'
for n in 1 2; do
    check "vagrant: validate --ignore-provider ($n node(s) per cluster)" env -C vagrant \
        SDNLINK_LAB_NODES="$n" VAGRANT_HOME="$work/vagrant-home" VAGRANT_DOTFILE_PATH="$work/vagrant-dot" \
        vagrant validate --ignore-provider
done

# ---- systemd as PID 1 (opt-in: about 4 minutes, and the Debian mirror on the first run) ---------
if [ "${SDNLINK_PKG_VM:-0}" = 1 ]; then
    # The real daemon under the shipped unit (SDNLINK_VM_MODE=probe: the sandbox probe instead).
    # Its per-check PASS/FAIL lines from inside the VM are shown indented.
    check "vm-verify (${SDNLINK_VM_MODE:-daemon}): DEB, unit and daemon under systemd 252 in a VM" \
        bash packaging/vm-verify.sh "$deb"
    grep -E '^(PASS|FAIL|INFO) ' "$log" | sed 's/^/    /'
    tail -n1 "$log" | sed 's/^/    /'
fi

finish
