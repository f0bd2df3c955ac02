#!/usr/bin/env python3
"""Two builds of the programs compared on the same topologies and the same
maps: for each topology, `A up -t FILE` loads A's programs, the workloads
run, `B up -t FILE` loads B's, they run again (the order alternating by
round). Prints `from_pod` ns/run (BPF statistics on) per workload and the
median of the per-topology, per-round ratios B/A with their range.

Why several topologies: where the kernel puts a topology's maps and a
program's JIT image decides which of the ten or so cache lines a frame
needs collide with the kernel's own in the caches. The same program differs
by up to ±10 % from one topology to the next, persistently, which is more
than most single changes to the program are worth; one topology says
little. Give it five or more, each made afresh.

usage: swap_ab.py ROUNDS SECONDS VETHCTL_A VETHCTL_B TOPOLOGY_FILE...
(2-pod topologies with pods a and b, e.g. copies of proftc.toml with their
own names and ranges, brought up by A first if they are not up; left up:
`vethctl down -n NAME` when done. As root; sockperf and iperf3 installed;
CPUs 0 and 1. One run at a time, and no benchmark beside it: it switches
kernel.bpf_stats_enabled and uses port 11111.)
"""
import statistics
import subprocess
import sys
import time

from vethtopo import address_of_b, runs

WORKLOADS = ("tcp_rr", "udp_rr", "flood")


def sh(*args):
    return subprocess.run(args, capture_output=True, text=True)


def topology_name(path):
    for line in open(path):
        if line.startswith("name"):
            return line.split('"')[1]
    sys.exit(f"{path}: no name")


def ns_per_run(topology, server, client):
    program = f"/sys/fs/bpf/vethctl/{topology}/from_pod"
    srv = subprocess.Popen(["ip", "netns", "exec", f"{topology}-b", *server],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        before = runs(program)
        sh("ip", "netns", "exec", f"{topology}-a", *client)
        after = runs(program)
    finally:
        srv.kill()
        srv.wait()
    return (after[0] - before[0]) / max(1, after[1] - before[1])


def workloads(topology, ip, seconds):
    def sockperf(transport):
        return (["taskset", "-c", "1", "sockperf", "sr", *transport, "-i", ip, "-p", "11111"],
                ["taskset", "-c", "1", "sockperf", "pp", *transport, "-i", ip, "-p", "11111",
                 "-m", "64", "-t", str(seconds)])
    flood = (["taskset", "-c", "0", "iperf3", "-s", "-1", "-B", ip],
             ["taskset", "-c", "1", "iperf3", "-c", ip, "-u", "-b", "0", "-l", "64",
              "-t", str(seconds)])
    return {
        "tcp_rr": ns_per_run(topology, *sockperf(["--tcp"])),
        "udp_rr": ns_per_run(topology, *sockperf([])),
        "flood": ns_per_run(topology, *flood),
    }


def main():
    if len(sys.argv) < 6:
        sys.exit(__doc__)
    rounds, seconds = int(sys.argv[1]), int(sys.argv[2])
    builds = {"A": sys.argv[3], "B": sys.argv[4]}
    files = sys.argv[5:]
    names = [topology_name(f) for f in files]
    for path in files:
        if sh(builds["A"], "up", "-t", path).returncode:
            sys.exit(f"{builds['A']} up -t {path} failed")
    addresses = {n: address_of_b(builds["A"], n) for n in names}
    stats = sh("sysctl", "-n", "kernel.bpf_stats_enabled").stdout.strip() or "0"
    sh("sysctl", "-w", "kernel.bpf_stats_enabled=1")
    ratios = {w: [] for w in WORKLOADS}
    values = {(b, w): [] for b in builds for w in WORKLOADS}
    try:
        for r in range(rounds):
            for path, topology in zip(files, names):
                got = {}
                for build in ("A", "B") if r % 2 == 0 else ("B", "A"):
                    loaded = sh(builds[build], "up", "-t", path)
                    if loaded.returncode:
                        sys.exit(f"{builds[build]} up -t {path}: {loaded.stderr}")
                    got[build] = workloads(topology, addresses[topology], seconds)
                for w in WORKLOADS:
                    ratios[w].append(got["B"][w] / got["A"][w])
                    for build in builds:
                        values[(build, w)].append(got[build][w])
                print(f"round {r + 1} {topology}: " + "  ".join(
                    f"{w} {got['A'][w]:.0f} -> {got['B'][w]:.0f}" for w in WORKLOADS), flush=True)
    finally:
        sh("sysctl", "-w", f"kernel.bpf_stats_enabled={stats}")
    for w in WORKLOADS:
        q = sorted(ratios[w])
        print(f"{w:7} A {statistics.median(values[('A', w)]):6.1f} ns/run  "
              f"B {statistics.median(values[('B', w)]):6.1f} ns/run  "
              f"B/A median {statistics.median(q):.3f} ({q[0]:.3f}-{q[-1]:.3f}, n={len(q)})")


if __name__ == "__main__":
    main()
