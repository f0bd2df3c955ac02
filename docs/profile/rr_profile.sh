#!/bin/bash
# Profiles `from_pod` under same-CPU request/response (sockperf ping-pong,
# 64-byte messages, client and server both pinned to CPU 1) from pod a to
# pod b of topology NAME: brings it up from FILE unless it is up, measures
# the program's ns/run with BPF statistics on, records `perf record -e
# cpu-clock -F 10000 -C 1 -g` for 10 s into OUT.perf.data, and prints where
# the program's time goes by source line (prog_lines.py). Leaves the
# topology up (`vethctl down -n NAME` when done). As root; one run at a time,
# with no benchmark beside it (it switches kernel.bpf_stats_enabled and uses
# port 11111).
#   usage: rr_profile.sh NAME tcp|udp OUT [TOPOLOGY_FILE]
set -euo pipefail
T=$1; P=$2; OUT=$3; FILE=${4:-$(dirname "$0")/$T.toml}
V=${VETHCTL:-vethctl}
HERE=$(dirname "$0")
$V status -n "$T" >/dev/null 2>&1 || $V up -t "$FILE" >/dev/null
IP=$(python3 "$HERE/vethtopo.py" address "$V" "$T")
PROG=/sys/fs/bpf/vethctl/$T/from_pod
TR=(); [ "$P" = tcp ] && TR=(--tcp)
runs() { python3 "$HERE/vethtopo.py" runs "$PROG"; }
STATS=$(sysctl -n kernel.bpf_stats_enabled)
SERVER=
cleanup() {
    sysctl -qw kernel.bpf_stats_enabled="$STATS"
    [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null || true
}
trap cleanup EXIT
sysctl -qw kernel.bpf_stats_enabled=1
ip netns exec "$T-b" taskset -c 1 sockperf sr "${TR[@]}" -i "$IP" -p 11111 >/dev/null 2>&1 &
SERVER=$!
sleep 0.5
ip netns exec "$T-a" taskset -c 1 sockperf pp "${TR[@]}" -i "$IP" -p 11111 -m 64 -t 14 >/dev/null 2>&1 &
CLIENT=$!
sleep 2
read -r NS0 N0 < <(runs)
perf record -e cpu-clock -F 10000 -C 1 -g -o "$OUT.perf.data" -- sleep 10 >/dev/null 2>&1
read -r NS1 N1 < <(runs)
wait "$CLIENT"
NS_PER_RUN=$(python3 -c "print(round(($NS1 - $NS0) / max(1, $N1 - $N0), 1))")
echo "$T $P: from_pod $NS_PER_RUN ns/run (BPF statistics on) over $((N1 - N0)) runs"
python3 "$HERE/prog_lines.py" "$OUT.perf.data" "$PROG" "$NS_PER_RUN" --cpu 1
