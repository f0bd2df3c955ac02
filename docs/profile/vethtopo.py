#!/usr/bin/env python3
"""What the profile scripts share: the address of pod b of a 2-pod
topology (pods a and b), a pinned program's `bpftool prog show` and its run
statistics (kernel BPF statistics: total ns and runs, 0 0 while they are
off).

swap_ab.py and prog_lines.py import it; the shell scripts run it:
  vethtopo.py address VETHCTL NAME   prints pod b's IPv4 address
  vethtopo.py runs PINNED_PROGRAM    prints "RUN_TIME_NS RUN_COUNT"
"""
import json
import subprocess
import sys


def address_of_b(vethctl, topology):
    """Pod b's IPv4 address, from `VETHCTL status -n TOPOLOGY --json`."""
    out = subprocess.run([vethctl, "status", "-n", topology, "--json"],
                         capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{vethctl} status -n {topology}: {out.stderr.strip()}")
    pods = json.loads(out.stdout)["topologies"][0]["pods"]
    try:
        return next(p["ipv4"] for p in pods if p["name"] == "b")
    except StopIteration:
        sys.exit(f"topology {topology} has no pod b: the profile scripts need pods a and b")


def program_info(pinned_program):
    """`bpftool prog show` of the program pinned at PINNED_PROGRAM."""
    out = subprocess.run(["bpftool", "-j", "prog", "show", "pinned", pinned_program],
                         capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"no program pinned at {pinned_program} (is its topology up?): "
                 f"{(out.stderr or out.stdout).strip()}")
    return json.loads(out.stdout)


def runs(pinned_program):
    """(run_time_ns, run_cnt) of the program pinned at PINNED_PROGRAM."""
    info = program_info(pinned_program)
    return info.get("run_time_ns", 0), info.get("run_cnt", 0)


def main():
    match sys.argv[1:]:
        case ["address", vethctl, topology]:
            print(address_of_b(vethctl, topology))
        case ["runs", pinned_program]:
            print(*runs(pinned_program))
        case _:
            sys.exit(__doc__)


if __name__ == "__main__":
    main()
