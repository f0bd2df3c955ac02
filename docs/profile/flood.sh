#!/bin/bash
# Profiles a 64-byte UDP flood from pod a to pod b of topology NAME (a
# topology file with pods a and b, see proftc.toml and profpair.toml
# here): brings it up unless it is up, runs iperf3 (server pinned to CPU 0, client to
# CPU 1) for 9 s, records `perf record -e cpu-clock -a -g` for 5 s of it
# into NAME.perf.data, and prints the packets/s received. Leaves the
# topology up (`vethctl down -n NAME` when done). As root.
#   usage: flood.sh NAME [TOPOLOGY_FILE]
set -euo pipefail
T=$1; FILE=${2:-$(dirname "$0")/$T.toml}
V=${VETHCTL:-vethctl}
HERE=$(dirname "$0")
$V status -n "$T" >/dev/null 2>&1 || $V up -t "$FILE" >/dev/null
IP=$(python3 "$HERE/vethtopo.py" address "$V" "$T")
ip netns exec "$T-b" taskset -c 0 iperf3 -s -1 -B "$IP" >/dev/null 2>&1 &
sleep 0.5
ip netns exec "$T-a" taskset -c 1 iperf3 -c "$IP" -u -b 0 -l 64 -t 9 -J > "$T.iperf.json" &
sleep 2
perf record -e cpu-clock -a -g -o "$T.perf.data" -- sleep 5 >/dev/null 2>&1
wait
python3 -c "import json; s=json.load(open('$T.iperf.json'))['end']['sum']; print('$T', round((s['packets']-s['lost_packets'])/9), 'packets/s received')"
