#!/bin/bash
# Runs inside the verification VM as a oneshot unit (systemd is PID 1 there): installs the DEB
# with systemd running and drives the REAL daemon through the shipped, unmodified unit with
# daemon.toml (one remote cluster, a static peer, tunnel and proxy on auto): start (READY),
# dataplane as the host sees it, DNS, status, reload (valid and invalid), watchdog, restart
# without flapping, a kill -9 answered from the fd store, stop leaving the dataplane, purge
# leaving nothing. Prints
# "SHIP-VERIFY: N passed, M failed" on the console and powers off.
passed=0 failed=0
ns=sdnlink
say() { echo "$*" >/dev/ttyS0; }
res() { if [ "$1" = PASS ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi; say "$1 $2"; }
check() { local what="$1"; shift; if "$@" >/tmp/check.log 2>&1; then res PASS "$what"; else res FAIL "$what"; sed 's/^/    /' /tmp/check.log | head -30 >/dev/ttyS0; fi; }
info() { say "INFO $1"; shift; "$@" 2>&1 | sed 's/^/    /' | head -40 >/dev/ttyS0; }
# The host's view: PID 1's mount namespace, not whatever this unit runs in.
host() { nsenter --mount=/proc/1/ns/mnt -- "$@"; }
prop() { systemctl show -p "$1" --value sdnlinkd; }
journal_tail() { journalctl -u sdnlinkd -o cat --no-pager | tail -n 25 | sed 's/^/    journal: /' >/dev/ttyS0; }
# Everything sdnlinkd programs that a restart must not touch, as one comparable text.
dataplane() {
    stat -L -c 'netns inode %i' /run/netns/$ns
    ip -o link show sdnlink0 | cut -d: -f1,2
    ip -n $ns -o link show | cut -d: -f1,2
    ip -n $ns -o addr show | awk '{print $2, $4}'
    ip route show proto 245
    ip -n $ns route show proto 245
    ip netns exec $ns wg show sdnlink-wg peers
    ip netns exec $ns wg show sdnlink-wg listen-port
}

export ns
export -f host dataplane

say "SHIP-VERIFY: real daemon; systemd $(systemctl --version | head -n1 | cut -d' ' -f2), kernel $(uname -r)"
check "dpkg -i with systemd running" dpkg -i /root/sdnlinkd.deb
check "postinst applied sysctl.d (ip_forward=1)" test "$(cat /proc/sys/net/ipv4/ip_forward)" = 1
check "unit enabled, not started" bash -c \
    '[ "$(systemctl is-enabled sdnlinkd)" = enabled ] && ! systemctl is-active --quiet sdnlinkd'
check "modules-load.d loaded ip_vs and wireguard" bash -c 'lsmod | grep -q "^ip_vs " && lsmod | grep -q "^wireguard "'
check "systemd-analyze verify" bash -c '[ -z "$(systemd-analyze verify sdnlinkd.service 2>&1)" ]'
check "exposure <= 3.0 (online)" bash -c \
    "systemd-analyze security sdnlinkd.service | tail -n1 | tee /dev/stderr | awk '/Overall exposure/ { exit !(\$(NF-1) + 0 <= 3.0) }'"

install -m 0644 /usr/local/lib/sdnlink-verify/daemon.toml /etc/sdnlink/sdnlink.toml
check "sdnlinkd check-config" sdnlinkd check-config

# ---- start ------------------------------------------------------------------------------------
check "systemctl start sdnlinkd (returns after READY=1)" timeout 170 systemctl start sdnlinkd
check "active (running)" bash -c '[ "$(systemctl is-active sdnlinkd)" = active ]'
[ "$(systemctl is-active sdnlinkd)" = active ] || journal_tail
info "StatusText: $(prop StatusText)" true
pid="$(prop MainPID)"
# A sandbox denial the daemon survives (a sysctl, a socket option) shows up only as a warning.
check "first start logged no warning or error" bash -c \
    "out=\$(journalctl -u sdnlinkd -p warning -o cat --no-pager); echo \"\$out\"; [ -z \"\$out\" ]"
check "namespace visible from the host mount namespace" bash -c "ip netns list | grep -qw $ns"
check "  ... and from PID 1's (nsenter)" bash -c "nsenter --mount=/proc/1/ns/mnt -- ip netns list | grep -qw $ns"
check "ip -n $ns addr: transit .2/30 and DNS /32 on eth0" bash -c \
    "ip -n $ns -o addr show dev eth0 | tee /dev/stderr | grep -q 169.254.100.2/30 &&
     ip -n $ns -o addr show | grep -q 169.254.20.53/32"
info "ip -n $ns addr" ip -n $ns -br addr
check "host routes proto 245: remote pod + service CIDRs, DNS /32 via sdnlink0" bash -c \
    "r=\$(ip route show proto 245); echo \"\$r\";
     grep -q '^10.132.0.0/14 .*dev sdnlink0' <<<\"\$r\" && grep -q '^172.31.0.0/16 .*dev sdnlink0' <<<\"\$r\" &&
     grep -q '^169.254.20.53 .*dev sdnlink0' <<<\"\$r\""
check "namespace routes proto 245: peer subnet via sdnlink-wg, local pods via eth0" bash -c \
    "r=\$(ip -n $ns route show proto 245); echo \"\$r\";
     grep -q '^10.132.0.0/23 dev sdnlink-wg' <<<\"\$r\" && grep -q '^10.128.0.0/14 .*dev eth0' <<<\"\$r\""
check "kernel WireGuard in the namespace (tunnel auto), no wireguard-go" bash -c \
    "ip -n $ns -d link show sdnlink-wg | tee /dev/stderr | grep -qw wireguard && ! pidof wireguard-go"
check "wg show in the namespace: the static peer, its allowed IPs and endpoint" bash -c \
    "ip netns exec $ns wg show sdnlink-wg | tee /dev/stderr | grep -q 'peer: xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=' &&
     ip netns exec $ns wg show sdnlink-wg allowed-ips | grep -q '10.132.0.0/23' &&
     ip netns exec $ns wg show sdnlink-wg endpoints | grep -q '198.51.100.7:51820' &&
     [ \"\$(ip netns exec $ns wg show sdnlink-wg listen-port)\" = 51820 ]"
check "0600 private key in the 0700 state directory" bash -c \
    '[ "$(stat -c %a /var/lib/sdnlink)" = 700 ] && [ "$(stat -c %a /var/lib/sdnlink/private.key)" = 600 ]'
check "namespace sysctls: forwarding=1, vs.conntrack=0 (IPVS)" bash -c \
    "[ \"\$(ip netns exec $ns cat /proc/sys/net/ipv4/ip_forward)\" = 1 ] &&
     [ \"\$(ip netns exec $ns cat /proc/sys/net/ipv4/vs/conntrack)\" = 0 ]"
check "ipvsadm -Ln in the namespace (proxy auto = IPVS)" bash -c \
    "ip netns exec $ns ipvsadm -Ln && sdnlinkd status --json | grep -i '\"ipvs\"'"
info "nft list ruleset in the namespace" ip netns exec $ns nft list ruleset
check "dig @169.254.20.53 dns-version.cluster.west TXT (from the host)" bash -c \
    "dig +time=3 +tries=2 @169.254.20.53 dns-version.cluster.west TXT | tee /dev/stderr |
     grep -q '^dns-version\.cluster\.west\..*IN[[:space:]]*TXT[[:space:]]*\"'"
check "dig: an unknown name in cluster.west is NXDOMAIN" bash -c \
    "dig +time=3 +tries=1 @169.254.20.53 nope.cluster.west A | tee /dev/stderr | grep -q 'status: NXDOMAIN'"
check "sdnlinkd status" sdnlinkd status
info "sdnlinkd status" sdnlinkd status

# ---- reload -----------------------------------------------------------------------------------
check "systemctl reload (valid config)" bash -c "systemctl reload sdnlinkd && [ \"\$(systemctl is-active sdnlinkd)\" = active ]"
cp /etc/sdnlink/sdnlink.toml /root/good.toml
# The remote pod CIDR now overlaps the local one: a config the daemon must refuse.
sed -i 's|^pod_cidrs = \["10.132.0.0/14"\]|pod_cidrs = ["10.128.0.0/16", "10.132.0.0/14"]|' /etc/sdnlink/sdnlink.toml
check "systemctl reload (invalid config) exits non-zero" bash -c '! systemctl reload sdnlinkd'
check "  ... and says why (overlap) in the journal" bash -c \
    "journalctl -u sdnlinkd -o cat --no-pager | tail -n 20 | tee /dev/stderr | grep -qi 'overlap'"
check "  ... daemon kept running, same PID" bash -c \
    "[ \"\$(systemctl is-active sdnlinkd)\" = active ] && [ \"\$(systemctl show -p MainPID --value sdnlinkd)\" = $pid ]"
# SIGHUP straight to the daemon: its own validation, not the CLI's, must refuse the file.
systemctl kill -s HUP --kill-who=main sdnlinkd
sleep 3
check "SIGHUP with the invalid config: STATUS= says why, still active" bash -c \
    "s=\$(systemctl show -p StatusText --value sdnlinkd); echo \"\$s\";
     grep -qi 'invalid\|overlap\|refused\|rejected' <<<\"\$s\" && [ \"\$(systemctl is-active sdnlinkd)\" = active ]"
cp /root/good.toml /etc/sdnlink/sdnlink.toml
check "systemctl reload (config fixed)" systemctl reload sdnlinkd
check "routes unchanged after the reloads" bash -c "ip route show proto 245 | grep -q '^10.132.0.0/14 .*dev sdnlink0'"

# ---- watchdog ---------------------------------------------------------------------------------
wd="$(prop WatchdogUSec)"
say "INFO watchdog $wd; waiting 65 s (> 2 x WatchdogSec)"
sleep 65
check "watchdog did not fire over 2 x WatchdogSec (same PID, no restarts)" bash -c \
    "[ \"\$(systemctl show -p MainPID --value sdnlinkd)\" = $pid ] && [ \"\$(systemctl show -p NRestarts --value sdnlinkd)\" = 0 ] &&
     ! journalctl -u sdnlinkd --no-pager | grep -i 'watchdog timeout'"

# ---- restart: no flap -------------------------------------------------------------------------
dataplane >/root/before 2>&1
ip -o monitor link address route >/root/monitor 2>&1 &
mon=$!
ip netns exec $ns ip -o monitor link address route >/root/monitor-ns 2>&1 &
monns=$!
sleep 1
check "systemctl restart" timeout 170 systemctl restart sdnlinkd
sleep 2
# A marker route added and removed in each namespace after the restart: proves the monitors saw
# deletions at all, so an empty "Deleted" list below means something.
ip route add 192.0.2.98/32 dev sdnlink0 proto static && ip route del 192.0.2.98/32 dev sdnlink0
ip -n $ns route add 192.0.2.99/32 dev eth0 proto static && ip -n $ns route del 192.0.2.99/32 dev eth0
sleep 1
kill $mon $monns 2>/dev/null
dataplane >/root/after 2>&1
check "restart: new PID, active" bash -c \
    "[ \"\$(systemctl is-active sdnlinkd)\" = active ] && [ \"\$(systemctl show -p MainPID --value sdnlinkd)\" != $pid ]"
check "restart: namespace, links (same ifindex), addresses, routes, peers identical" diff /root/before /root/after
check "restart: no link/address/route deleted meanwhile (ip monitor, host and namespace)" bash -c \
    "cat /root/monitor /root/monitor-ns; grep -q '^Deleted 192.0.2.98 ' /root/monitor &&
     grep -q '^Deleted 192.0.2.99 ' /root/monitor-ns && ! grep -h '^Deleted' /root/monitor /root/monitor-ns | grep -v '^Deleted 192.0.2.9[89] '"

# ---- crash: kill -9, Restart=on-failure, the DNS sockets from the fd store -----------------------
check "fd store holds the DNS stub's sockets (NFileDescriptorStore >= 2)" bash -c \
    '[ "$(systemctl show -p NFileDescriptorStore --value sdnlinkd)" -ge 2 ]'
pid="$(prop MainPID)"
restarts="$(prop NRestarts)"
systemctl kill -s KILL --kill-who=main sdnlinkd
# Asked while no daemon runs (RestartSec=2s): a closed socket would answer with ICMP port
# unreachable at once; a socket the fd store kept queues the query for the next process.
dig +time=10 +tries=1 @169.254.20.53 dns-version.cluster.west TXT >/root/crash-dig 2>&1
check "kill -9: the query asked while the daemon was down is answered" bash -c \
    "cat /root/crash-dig; grep -q 'status: NOERROR' /root/crash-dig"
check "kill -9: restarted by Restart=on-failure (new PID, one more restart)" bash -c \
    "[ \"\$(systemctl is-active sdnlinkd)\" = active ] && [ \"\$(systemctl show -p MainPID --value sdnlinkd)\" != $pid ] &&
     [ \"\$(systemctl show -p NRestarts --value sdnlinkd)\" = $((restarts + 1)) ]"
check "kill -9: the new process serves DNS on the kept sockets (journal)" bash -c \
    "journalctl -u sdnlinkd -o cat --no-pager | grep -q 'DNS stub answers on the sockets systemd kept'"

# ---- stop -------------------------------------------------------------------------------------
dataplane >/root/before 2>&1
check "systemctl stop" systemctl stop sdnlinkd
check "stop: dataplane left in place (namespace, links, routes, peers)" bash -c \
    "dataplane >/root/after 2>&1; diff /root/before /root/after"
check "stop: namespace still pinned for the host" bash -c "host ip netns list | grep -qw $ns"

# ---- purge ------------------------------------------------------------------------------------
check "dpkg --purge (prerm runs sdnlinkd cleanup)" dpkg --purge sdnlinkd
check "purged: no namespace, no sdnlink0, no proto 245 route, no wireguard device" bash -c \
    "! ip netns list | grep -qw $ns && [ ! -e /run/netns/$ns ] && ! ip link show sdnlink0 2>/dev/null &&
     [ -z \"\$(ip route show proto 245)\" ] && ! ip link show type wireguard | grep -q . && ! pidof wireguard-go"
check "purged: unit, config, state, runtime dir gone" bash -c \
    '! systemctl cat sdnlinkd >/dev/null 2>&1 && [ ! -e /etc/sdnlink ] && [ ! -e /var/lib/sdnlink ] && [ ! -e /run/sdnlink ] && [ ! -e /usr/bin/sdnlinkd ]'

# ---- again with userspace WireGuard (wireguard-go, a child kept by KillMode=process) and the
# nftables proxy: the sandbox paths the kernel backends above do not take (/dev/net/tun,
# /run/wireguard, exec of wireguard-go, nft in the namespace) ------------------------------------
check "userspace+nftables: dpkg -i" dpkg -i /root/sdnlinkd.deb
sed -e 's/^mode = "auto"/mode = "userspace"/' -e 's/^backend = "auto"/backend = "nftables"/' \
    /usr/local/lib/sdnlink-verify/daemon.toml >/etc/sdnlink/sdnlink.toml
check "userspace+nftables: systemctl start (READY)" timeout 170 systemctl start sdnlinkd
[ "$(systemctl is-active sdnlinkd)" = active ] || journal_tail
info "StatusText: $(prop StatusText)" true
check "userspace+nftables: proxy is nftables" bash -c "systemctl show -p StatusText --value sdnlinkd | grep -q 'proxy nftables'"
check "userspace+nftables: wireguard-go runs, its TUN link is in the namespace" bash -c \
    "pidof wireguard-go && [ -S /run/wireguard/sdnlink-wg.sock ] && ip -n $ns -d link show sdnlink-wg | tee /dev/stderr | grep -qw tun"
check "userspace+nftables: wg show over the UAPI socket has the static peer" bash -c \
    "wg show sdnlink-wg | tee /dev/stderr | grep -q 'peer: xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg='"
check "userspace+nftables: namespace route via the tunnel" bash -c "ip -n $ns route show proto 245 | grep -q '^10.132.0.0/23 dev sdnlink-wg'"
check "userspace+nftables: the daemon's nft table in the namespace" bash -c \
    "ip netns exec $ns nft list tables | tee /dev/stderr | grep -qw sdnlink"
wg_pid="$(pidof -s wireguard-go)"
dataplane >/root/before 2>&1
check "userspace+nftables: systemctl restart" timeout 170 systemctl restart sdnlinkd
dataplane >/root/after 2>&1
check "userspace+nftables: restart keeps the same wireguard-go" test "$(pidof -s wireguard-go)" = "$wg_pid"
check "userspace+nftables: restart keeps namespace, links, addresses, routes, peers" diff /root/before /root/after
check "userspace+nftables: dpkg --purge" dpkg --purge sdnlinkd
check "userspace+nftables purged: no wireguard-go, namespace, sdnlink0, proto 245 route" bash -c \
    "! pidof wireguard-go && [ ! -e /run/netns/$ns ] && ! ip link show sdnlink0 2>/dev/null && [ -z \"\$(ip route show proto 245)\" ]"

[ "$failed" -eq 0 ] || journal_tail

say "SHIP-VERIFY: $passed passed, $failed failed"
systemctl poweroff --force
