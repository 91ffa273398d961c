#!/bin/bash
# Sandbox probe: runs as sdnlinkd.service's main process, under the unit's full hardening, and
# does each kind of thing the daemon does, the way it does it. Results go to
# /run/sdnlink/probe.result (one PASS/FAIL line each); then it stays up like the daemon.
# Note `nsenter --net` (setns with CLONE_NEWNET only), not `ip -n`/`ip netns exec`, which also
# unshare a mount namespace and remount /sys: the daemon never does that and the unit forbids it.
NS=shipt
out=/run/sdnlink/probe.result
: >"$out"
ok() { echo "PASS sandbox allows: $1" >>"$out"; }
no() { echo "FAIL sandbox allows: $1" >>"$out"; }
denied() { echo "PASS sandbox denies: $1" >>"$out"; }
leak() { echo "FAIL sandbox denies: $1" >>"$out"; }
try() { local what="$1"; shift; if "$@" >>/run/sdnlink/probe.log 2>&1; then ok "$what"; else no "$what"; fi; }
deny() { local what="$1"; shift; if "$@" >>/run/sdnlink/probe.log 2>&1; then leak "$what"; else denied "$what"; fi; }
inns() { nsenter --net="/run/netns/$NS" "$@"; }
# Adopting what a previous run left is success, as for the daemon ("already exists").
exists_ok() { local o; o="$("$@" 2>&1)" && return 0; grep -q 'File exists' <<<"$o"; }

try "open the namespace pinned by the unsandboxed ExecStartPre" test -e "/run/netns/$NS"
try "setns(CLONE_NEWNET) + rtnetlink inside the namespace" inns ip link set lo up
try "veth pair with one end moved into the namespace" \
    exists_ok ip link add shipt0 type veth peer name eth0 netns "$NS"
try "address + route inside the namespace" bash -c \
    "nsenter --net=/run/netns/$NS ip addr replace 169.254.100.2/30 dev eth0 &&
     nsenter --net=/run/netns/$NS ip link set eth0 up &&
     nsenter --net=/run/netns/$NS ip route replace 10.52.0.0/16 dev eth0 proto 245"
try "route with proto 245 in the host namespace" bash -c \
    "ip link set shipt0 up && ip route replace 10.53.0.0/16 dev shipt0 proto 245"
try "nftables ruleset inside the namespace (/usr/sbin/nft)" \
    inns nft -f - <<<$'table inet sdnlink_probe {\n  chain out {\n    type nat hook output priority -100;\n  }\n}'
try "wireguard-go child: /dev/net/tun and /run/wireguard" bash -c \
    "test -S /run/wireguard/shiptwg.sock || wireguard-go shiptwg"
try "WireGuard link moved into the namespace" bash -c \
    "inns_has() { nsenter --net=/run/netns/$NS ip link show shiptwg; }; inns_has || ip link set shiptwg netns $NS"
try "UDP :53 inside the namespace (CAP_NET_BIND_SERVICE)" bash -c \
    "timeout 1 nsenter --net=/run/netns/$NS nc -u -l -s 169.254.100.2 -p 53; [ \$? -eq 124 ]"
try "per-namespace sysctl (forwarding) inside the namespace" \
    inns sh -c 'echo 1 >/proc/sys/net/ipv4/conf/all/forwarding'
try "private key written 0600 under StateDirectory" bash -c \
    "echo secret >/var/lib/sdnlink/private.key && [ \"\$(stat -c %a /var/lib/sdnlink/private.key)\" = 600 ]"
try "reading /etc/sdnlink (ConfigurationDirectory)" test -r /etc/sdnlink/sdnlink.toml

deny "mount(2)" mount -t tmpfs none /tmp
deny "new mount namespace (RestrictNamespaces=net)" unshare -m true
deny "writing /usr (ProtectSystem=strict)" touch /usr/bin/sdnlink-probe
deny "writing /proc/sys outside net (ProtectKernelTunables)" bash -c 'echo 60 >/proc/sys/vm/swappiness'
deny "loading kernel modules" bash -c 'modprobe ip_vs_dh; lsmod | grep -q "^ip_vs_dh "'
deny "reading /root (ProtectHome)" ls /root
echo DONE >>"$out"
exec sleep infinity
