#!/bin/bash
# Runs inside the verification VM as a oneshot unit (systemd is PID 1 there): installs the DEB
# with systemd running, starts sdnlinkd.service with the probe (probe.conf) under the unit's
# sandbox, stops and restarts it, purges the package. Prints "SHIP-VERIFY: N passed, M failed"
# on the console and powers off.
passed=0 failed=0
say() { echo "$*" >/dev/ttyS0; }
res() { if [ "$1" = PASS ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi; say "$1 $2"; }
check() { local what="$1"; shift; if "$@" >/tmp/check.log 2>&1; then res PASS "$what"; else res FAIL "$what"; sed 's/^/    /' /tmp/check.log | head -20 >/dev/ttyS0; fi; }
wait_for() { local i; for i in $(seq 60); do "$@" && return 0; sleep 1; done; return 1; }
probe_results() {
    wait_for grep -q DONE /run/sdnlink/probe.result || { res FAIL "probe finished"; return; }
    while read -r status rest; do
        case "$status" in PASS | FAIL) res "$status" "$1: $rest" ;; esac
    done </run/sdnlink/probe.result
    grep -q '^FAIL' /run/sdnlink/probe.result && sed 's/^/    probe.log: /' /run/sdnlink/probe.log >/dev/ttyS0
}

say "SHIP-VERIFY: systemd $(systemctl --version | head -n1 | cut -d' ' -f2), kernel $(uname -r)"
check "dpkg -i with systemd running" dpkg -i /root/sdnlinkd.deb
check "postinst applied sysctl.d (ip_forward=1)" test "$(cat /proc/sys/net/ipv4/ip_forward)" = 1
check "postinst ran tmpfiles (/run/wireguard)" test -d /run/wireguard
check "unit enabled, not started" bash -c \
    '[ "$(systemctl is-enabled sdnlinkd)" = enabled ] && ! systemctl is-active --quiet sdnlinkd'
check "modules-load.d loaded ip_vs and wireguard" bash -c 'lsmod | grep -q "^ip_vs " && lsmod | grep -q "^wireguard "'
check "systemd-analyze verify" bash -c '[ -z "$(systemd-analyze verify sdnlinkd.service 2>&1)" ]'
check "exposure <= 3.0 (online)" bash -c \
    "systemd-analyze security sdnlinkd.service | tee /dev/stderr | awk '/Overall exposure/ { exit !(\$(NF-1) + 0 <= 3.0) }'"

mkdir -p /etc/systemd/system/sdnlinkd.service.d
cp /usr/local/lib/sdnlink-verify/probe.conf /etc/systemd/system/sdnlinkd.service.d/
systemctl daemon-reload
check "systemctl start sdnlinkd (probe under the unit's sandbox)" systemctl start sdnlinkd
probe_results "first start"
# Diagnostic: does an ExecStartPre=+ command run in PID 1's mount namespace?
say "INFO ExecStartPre=+ mount namespace vs PID 1's: $(tr '\n' ' ' </run/sdnlink-verify-mntns)"
wg_pid="$(pidof -s wireguard-go)"
check "systemctl stop sdnlinkd" systemctl stop sdnlinkd
check "after stop: namespace pin still there for the host" bash -c \
    'ip netns list | grep -qw shipt && ip netns exec shipt ip link show shiptwg'
check "after stop: wireguard-go survived (KillMode=process)" kill -0 "$wg_pid"
check "after stop: /run/sdnlink kept" test -d /run/sdnlink
check "restart: adopts what the first run left" systemctl start sdnlinkd
probe_results "restart"
check "restart: the same wireguard-go" test "$(pidof -s wireguard-go)" = "$wg_pid"

systemctl stop sdnlinkd
rm -rf /etc/systemd/system/sdnlinkd.service.d
kill "$wg_pid" 2>/dev/null; ip netns del shipt 2>/dev/null; ip link del shipt0 2>/dev/null
check "dpkg --purge with systemd running" dpkg --purge sdnlinkd
check "purged: unit, config, state gone" bash -c \
    '! systemctl cat sdnlinkd >/dev/null 2>&1 && [ ! -e /etc/sdnlink ] && [ ! -e /var/lib/sdnlink ]'

say "SHIP-VERIFY: $passed passed, $failed failed"
systemctl poweroff --force
