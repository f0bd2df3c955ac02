#!/usr/bin/env python3
"""Where a BPF program's time goes, by source line: the samples of a
`perf record -e cpu-clock` that fell in the program's JIT image, mapped to
the source line the compiler's line info gives for them (by the xlated instruction where
each line record starts), and the samples of
the kernel functions it calls (map lookups, the unclone prologue's pull,
the redirect).

The jited image's line info comes from the kernel (BPF_OBJ_GET_INFO_BY_FD:
the address of each line record in the image); the source text from
`bpftool prog dump xlated linum`. Neither needs a disassembler, which this
machine's bpftool lacks.

usage: prog_lines.py PERF_DATA PINNED_PROGRAM [NS_PER_RUN] [--cpu N]
  PINNED_PROGRAM  e.g. /sys/fs/bpf/vethctl/proftc/from_pod (still loaded:
                  the image must be the one perf sampled)
  NS_PER_RUN      the program's run_time_ns / run_cnt over the recording
                  (BPF statistics on), which includes the calls: the samples
                  of the program and of its callees are then scaled to sum
                  to it. Without it, shares in % of those samples.
Record with the program under load, e.g. (as root):
  perf record -e cpu-clock -F 10000 -C 1 -g -o x.perf.data -- sleep 10
"""
import argparse
import bisect
import collections
import ctypes
import os
import re
import struct
import subprocess
import sys

from vethtopo import program_info

SYS_BPF = 321  # x86-64
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
# What a program of ours calls on its hot path, and the helpers' insides.
CALLEES = [
    "dev_map_hash_lookup_elem", "dev_map_lookup_elem", "bpf_skb_pull_data",
    "skb_ensure_writable", "pskb_expand_head", "bpf_redirect_peer", "bpf_check_mtu",
    "htab_map_hash", "__htab_map_lookup_elem", "bpf_ringbuf_reserve",
]

libc = ctypes.CDLL(None, use_errno=True)


def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 128)
    if libc.syscall(SYS_BPF, cmd, buf, 128) < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def line_addresses(prog_id):
    """(jited offset, xlated instruction) of each line record, sorted."""
    fd = libc.syscall(SYS_BPF, BPF_PROG_GET_FD_BY_ID,
                      ctypes.create_string_buffer(struct.pack("<I", prog_id), 128), 128)
    if fd < 0:
        sys.exit(f"program {prog_id}: {os.strerror(ctypes.get_errno())}")

    def info(buf):
        bpf(BPF_OBJ_GET_INFO_BY_FD, struct.pack("<IIQ", fd, len(buf), ctypes.addressof(buf)))

    first = ctypes.create_string_buffer(256)
    info(first)
    (count,) = struct.unpack_from("<I", first, 148)  # nr_line_info
    (functions,) = struct.unpack_from("<I", first, 104)  # nr_jited_ksyms
    lines = ctypes.create_string_buffer(count * 16)
    jited = ctypes.create_string_buffer(count * 8)
    ksyms = ctypes.create_string_buffer(functions * 8)
    lengths = ctypes.create_string_buffer(functions * 4)
    second = ctypes.create_string_buffer(256)
    struct.pack_into("<II", second, 104, functions, functions)
    struct.pack_into("<QQ", second, 112, ctypes.addressof(ksyms), ctypes.addressof(lengths))
    struct.pack_into("<I", second, 148, count)
    struct.pack_into("<Q", second, 152, ctypes.addressof(lines))
    struct.pack_into("<Q", second, 160, ctypes.addressof(jited))
    struct.pack_into("<III", second, 168, count, 16, 8)
    info(second)
    os.close(fd)
    # The line records cover every function of the program (the main one
    # and its subprograms, each an image of its own); perf's offsets are
    # from the main one's symbol, its first.
    (start,) = struct.unpack_from("<Q", ksyms, 0)
    (length,) = struct.unpack_from("<I", lengths, 0)
    records = []
    for i in range(count):
        (insn,) = struct.unpack_from("<I", lines, i * 16)
        (address,) = struct.unpack_from("<Q", jited, i * 8)
        if start <= address < start + length:
            records.append((address - start, insn))
    return sorted(records)


def sources(pinned):
    """xlated instruction -> the source line bpftool prints above it."""
    out = subprocess.run(["bpftool", "prog", "dump", "xlated", "pinned", pinned, "linum"],
                         capture_output=True, text=True, check=True).stdout
    by_insn, current = {}, "?"
    for line in out.splitlines():
        if line.startswith(";"):
            text, _, where = line[1:].partition("[file:")
            m = re.search(r"([^/]+) line_num:(\d+)", where)
            current = f"{m.group(1)}:{m.group(2)}  {text.strip()}" if m else text.strip()
            continue
        m = re.match(r"\s*(\d+):", line)
        if m:
            by_insn[int(m.group(1))] = current
    return by_insn


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", metavar="PERF_DATA")
    parser.add_argument("pinned", metavar="PINNED_PROGRAM")
    parser.add_argument("ns_per_run", metavar="NS_PER_RUN", type=float, nargs="?")
    parser.add_argument("--cpu", help="only the samples of this CPU")
    args = parser.parse_args()
    data, pinned, ns_per_run, cpu = args.data, args.pinned, args.ns_per_run, args.cpu
    show = program_info(pinned)
    name = show["name"]
    records = line_addresses(show["id"])
    offsets = [a for a, _ in records]
    by_insn = sources(pinned)
    command = ["perf", "script", "-i", data, "-F", "ip,sym,symoff", "-G"]
    if cpu is not None:
        command += ["-C", cpu]
    script = subprocess.run(command, capture_output=True, text=True).stdout
    own, callees = collections.Counter(), collections.Counter()
    for line in script.splitlines():
        m = re.search(r"\s(\S+)\+0x([0-9a-f]+)$", line.strip())
        if not m:
            continue
        symbol = m.group(1)
        if re.fullmatch(rf"bpf_prog_[0-9a-f]+_{re.escape(name)}", symbol):
            i = bisect.bisect_right(offsets, int(m.group(2), 16)) - 1
            own[records[max(i, 0)][1]] += 1
        elif symbol in CALLEES:
            callees[symbol] += 1
    total = sum(own.values()) + sum(callees.values())
    if total == 0:
        sys.exit(f"no samples of {name} in {data}")
    unit = "ns/run" if ns_per_run else "%"
    scale = (ns_per_run if ns_per_run else 100.0) / total

    print(f"{name}: {total} samples ({sum(own.values())} in the program), in {unit}")
    for symbol, n in callees.most_common():
        print(f"{n * scale:7.1f}  [call] {symbol}")
    # By line record: the same source line (a map lookup's helper stub, a
    # wrapping_sub) stands at several places; the xlated instruction where
    # the record starts tells them apart (`bpftool prog dump xlated`).
    for insn, n in own.most_common(40):
        print(f"{n * scale:7.1f}  insn {insn:5}  {by_insn.get(insn, '?')[:130]}")


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:
        sys.stderr.close()
