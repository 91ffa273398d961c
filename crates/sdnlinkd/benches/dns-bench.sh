#!/bin/sh
# Queries/s of the sdnlinkd DNS stub against unbound, NSD, Knot and dnsmasq serving the same
# records, same machine, same run. The records (written by benches/dns/serve.rs): 10,000
# ClusterIP services in cluster.west and a headless service with 100 endpoints and a named port.
# Two loads:
#   A    - A queries spread over the 10,000 services, over UDP;
#   SRV  - the 100-record SRV answer of the headless service, over TCP (it does not fit a
#          4096-byte UDP answer, so over UDP every server would send a truncated one).
# Every server is pinned to one core (taskset -c $SERVER_CPU) and dnsperf to another
# (-c 4 -q 200, on $CLIENT_CPU). Each load runs ROUNDS interleaved rounds of SECS seconds over
# all servers; the median of each server's rounds is reported, with sdnlinkd's ratio to it.
# Before measuring, every server must give the same answer records as sdnlinkd.
#
# Installs nothing. Needs (Debian 12): apt-get install unbound nsd knot dnsmasq dnsperf dnsutils
# Usage: benches/dns-bench.sh [seconds per round, default 8] [rounds, default 3]
# Run it as root (the peers drop privileges otherwise) on an otherwise idle machine.
set -eu
cd "$(dirname "$0")/.."
SECS=${1:-8}
ROUNDS=${2:-3}
SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
PROFILE=${PROFILE:-release}
IP=127.0.0.1
OURS=5301 UNBOUND=5302 NSD=5303 KNOT=5304 DNSMASQ=5305
for tool in taskset dnsperf dig unbound nsd knotd dnsmasq; do
    command -v "$tool" >/dev/null || {
        echo "missing $tool: apt-get install unbound nsd knot dnsmasq dnsperf dnsutils" >&2
        exit 1
    }
done
OUT=$(mktemp -d /tmp/sdnlink-dns-bench.XXXXXX)
PIDS=""
cleanup() {
    for p in $PIDS; do kill "$p" 2>/dev/null || true; done
    for p in $PIDS; do wait "$p" 2>/dev/null || true; done
    rm -rf "$OUT"
}
trap cleanup EXIT INT TERM

BIN=$(cargo build --profile "$PROFILE" --bench dns-serve --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*dns_serve[^"]*\)".*/\1/p' | tail -1)
[ -x "$BIN" ] || { echo "build of the dns-serve bench failed" >&2; exit 1; }

start() { # name command...: runs a server on SERVER_CPU, remembers its pid
    name=$1; shift
    taskset -c "$SERVER_CPU" "$@" >"$OUT/$name.log" 2>&1 &
    PIDS="$PIDS $!"
}

start sdnlinkd "$BIN" "$IP:$OURS" "$OUT"
i=0
until grep -q "serving on" "$OUT/sdnlinkd.log" 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 600 ] || { cat "$OUT/sdnlinkd.log"; exit 1; }; sleep 0.1
done

cat >"$OUT/unbound.conf" <<EOF
server:
  interface: $IP@$UNBOUND
  port: $UNBOUND
  num-threads: 1
  do-daemonize: no
  chroot: ""
  username: ""
  directory: "$OUT"
  pidfile: "$OUT/unbound.pid"
  use-syslog: no
  logfile: ""
  verbosity: 0
  access-control: 127.0.0.0/8 allow
  edns-buffer-size: 4096
  max-udp-size: 4096
  incoming-num-tcp: 64
include: "$OUT/unbound-records.conf"
remote-control:
  control-enable: no
EOF
start unbound unbound -d -c "$OUT/unbound.conf"

cat >"$OUT/nsd.conf" <<EOF
server:
  ip-address: $IP@$NSD
  server-count: 1
  tcp-count: 64
  username: ""
  chroot: ""
  zonesdir: "$OUT"
  database: ""
  zonelistfile: "$OUT/nsd.zonelist"
  xfrdfile: "$OUT/nsd.xfrd"
  xfrdir: "$OUT"
  pidfile: "$OUT/nsd.pid"
  logfile: "$OUT/nsd.log"
  verbosity: 0
  ipv4-edns-size: 4096
remote-control:
  control-enable: no
zone:
  name: cluster.west
  zonefile: cluster.west.zone
EOF
start nsd nsd -d -c "$OUT/nsd.conf"

mkdir -p "$OUT/knot"
cat >"$OUT/knot.conf" <<EOF
server:
  rundir: "$OUT/knot"
  listen: $IP@$KNOT
  udp-workers: 1
  tcp-workers: 1
  background-workers: 1
  udp-max-payload: 4096
database:
  storage: "$OUT/knot"
log:
  - target: stderr
    any: error
zone:
  - domain: cluster.west
    storage: "$OUT"
    file: cluster.west.zone
EOF
start knot knotd -c "$OUT/knot.conf"

start dnsmasq dnsmasq --keep-in-foreground --conf-file="$OUT/dnsmasq.conf" \
    --listen-address=$IP --bind-interfaces --port=$DNSMASQ --user=root \
    --pid-file="$OUT/dnsmasq.pid"

SERVERS="sdnlinkd:$OURS unbound:$UNBOUND nsd:$NSD knot:$KNOT dnsmasq:$DNSMASQ"
answer() { # port name type [dig options]: the sorted answer records
    port=$1 name=$2 type=$3; shift 3
    dig +short +norecurse "$@" -p "$port" @$IP "$name" "$type" | sort
}
# Wait for every server to answer, then check the answers against sdnlinkd's.
for s in $SERVERS; do
    port=${s#*:} i=0
    until [ -n "$(answer "$port" svc700.ns0.svc.cluster.west A +time=1 +tries=1)" ]; do
        i=$((i + 1))
        [ $i -lt 60 ] || { echo "${s%%:*} does not answer:" >&2; cat "$OUT/${s%%:*}.log" >&2; exit 1; }
        sleep 0.5
    done
done
for q in "svc700.ns0.svc.cluster.west A" "svc9995.ns45.svc.cluster.west A" \
    "_pg._tcp.hl100.default.svc.cluster.west SRV +tcp" "hl100.default.svc.cluster.west A +tcp"; do
    set -- $q
    want=$(answer $OURS "$@")
    [ -n "$want" ] || { echo "sdnlinkd gives no answer to $q" >&2; exit 1; }
    for s in $SERVERS; do
        got=$(answer "${s#*:}" "$@")
        [ "$got" = "$want" ] || { echo "${s%%:*} answers $q differently:" >&2; echo "$got" | head -3 >&2; exit 1; }
    done
    echo "check: $q -> $(echo "$want" | wc -l) records, identical from every server"
done

qps() { # port datafile mode
    taskset -c "$CLIENT_CPU" dnsperf -s $IP -p "$1" -d "$2" -m "$3" -l "$SECS" -c 4 -q 200 2>&1 |
        awk '/Queries per second/ {print int($4)}'
}
median() { tr ' ' '\n' | grep . | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

echo "each server on CPU $SERVER_CPU, dnsperf -c 4 -q 200 on CPU $CLIENT_CPU, $ROUNDS rounds of ${SECS}s, medians ($PROFILE build)"
for load in "A:a:udp" "SRV-100-TCP:srv:tcp"; do
    label=${load%%:*} rest=${load#*:}
    file="$OUT/queries-${rest%%:*}.txt" mode=${rest#*:}
    for s in $SERVERS; do eval "R_${s%%:*}=''"; done
    r=0
    while [ $r -lt "$ROUNDS" ]; do
        for s in $SERVERS; do
            v=$(qps "${s#*:}" "$file" "$mode")
            eval "R_${s%%:*}=\"\$R_${s%%:*} $v\""
        done
        r=$((r + 1))
    done
    eval "ours=\$(echo \$R_sdnlinkd | median)"
    line="$label:"
    for s in $SERVERS; do
        n=${s%%:*}
        eval "m=\$(echo \$R_$n | median)"
        if [ "$n" = sdnlinkd ]; then
            line="$line  sdnlinkd $m q/s"
        else
            ratio=$(awk -v a="$ours" -v b="$m" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')
            line="$line | $n $m (x$ratio)"
        fi
    done
    echo "$line"
done
