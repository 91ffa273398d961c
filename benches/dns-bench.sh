#!/bin/sh
# Queries/s of the sdnlinkd DNS stub against dnsmasq serving the same records, same machine,
# same run: an A query spread over 10,000 ClusterIP services, and an SRV query on a headless
# service with 100 endpoints (EDNS 0, so the 100 SRV records fit in one UDP answer).
#
# Needs: dnsperf, dnsmasq (Debian packages dnsperf, dnsmasq-base). Usage:
#   benches/dns-bench.sh [seconds per run, default 10]
# PROFILE=release for optimized figures (default dev: the shared CI machine builds debug).
set -eu
cd "$(dirname "$0")/.."
SECS=${1:-10}
PROFILE=${PROFILE:-dev}
OURS=127.0.0.1:5301
DNSMASQ_PORT=5302
OUT=$(mktemp -d /tmp/sdnt-dn-bench.XXXXXX)
PIDS=""
cleanup() { for p in $PIDS; do kill "$p" 2>/dev/null || true; done; rm -rf "$OUT"; }
trap cleanup EXIT INT TERM

BIN=$(cargo build --profile "$PROFILE" --bench dns-serve --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*dns_serve[^"]*\)".*/\1/p' | tail -1)
[ -x "$BIN" ] || { echo "build of the dns-serve bench failed" >&2; exit 1; }

"$BIN" "$OURS" "$OUT" 2>"$OUT/serve.log" &
PIDS="$PIDS $!"
i=0
until grep -q "serving on" "$OUT/serve.log" 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 600 ] || { cat "$OUT/serve.log"; exit 1; }; sleep 0.1
done
dnsmasq --keep-in-foreground --conf-file="$OUT/dnsmasq.conf" --listen-address=127.0.0.1 \
    --bind-interfaces --port=$DNSMASQ_PORT --user=root --pid-file="$OUT/dnsmasq.pid" \
    2>"$OUT/dnsmasq.log" &
PIDS="$PIDS $!"
sleep 1

# Same answers from both before measuring.
for q in "svc700.ns0.svc.cluster.west A" "_pg._tcp.hl100.default.svc.cluster.west SRV"; do
    set -- $q
    a=$(dig +short +bufsize=4096 -p 5301 @127.0.0.1 "$1" "$2" | sort | md5sum)
    b=$(dig +short +bufsize=4096 -p $DNSMASQ_PORT @127.0.0.1 "$1" "$2" | sort | md5sum)
    n=$(dig +short +bufsize=4096 -p 5301 @127.0.0.1 "$1" "$2" | wc -l)
    [ "$a" = "$b" ] || { echo "answers differ for $q" >&2; exit 1; }
    echo "check: $q -> $n records, identical from both servers"
done

qps() { # port datafile
    dnsperf -s 127.0.0.1 -p "$1" -d "$2" -l "$SECS" -c 4 -q 200 -e 2>&1 |
        awk '/Queries per second/ {print $4} /Queries lost/ {lost=$3} END {}'
}
printf '%-34s %12s %12s %7s\n' "query ($PROFILE build, ${SECS}s each)" "sdnlinkd q/s" "dnsmasq q/s" ratio
for kind in a srv; do
    ours=$(qps 5301 "$OUT/queries-$kind.txt")
    theirs=$(qps $DNSMASQ_PORT "$OUT/queries-$kind.txt")
    ratio=$(awk -v a="$ours" -v b="$theirs" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')
    case $kind in a) label="A, 10k ClusterIP services";; srv) label="SRV, headless 100 endpoints";; esac
    printf '%-34s %12s %12s %7s\n' "$label" "$ours" "$theirs" "$ratio"
done
