#!/usr/bin/env python3
"""CPU 1's samples per symbol, as ns per received packet, for two sets of
flood.sh profiles, and their difference, largest first.
usage: per_packet.py BASE_PPS 'base1.perf.data base2...' OTHER_PPS 'other1...'
(the packets/s are the means flood.sh printed; 5 s of 4 kHz cpu-clock per
profile)."""
import collections, re, subprocess, sys

def per_packet(files, pps):
    counts = collections.Counter()
    for f in files.split():
        out = subprocess.run(["perf", "report", "-i", f, "--no-children", "--sort", "sym", "-n",
                              "-C", "1", "--stdio", "-g", "none"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            m = re.match(r'\s+[\d.]+%\s+(\d+)\s+\[.\]\s+(.*)', line)
            if m:
                counts[m.group(2).strip()] += int(m.group(1))
    seconds = 5 * len(files.split())
    return {s: n * 250_000 / (seconds * pps) for s, n in counts.items()}

base = per_packet(sys.argv[2], float(sys.argv[1]))
other = per_packet(sys.argv[4], float(sys.argv[3]))
print(f"ns per packet on CPU 1: base {sum(base.values()):.0f}, other {sum(other.values()):.0f}")
rows = sorted(((other.get(s, 0) - base.get(s, 0), s) for s in set(base) | set(other)), reverse=True)
for d, s in rows[:25]:
    print(f"{s[:60]:60} {base.get(s, 0):8.1f} {other.get(s, 0):8.1f} {d:+8.1f}")
