//! Every map of the dataplane, in one place. BTF-defined so that the kernel
//! knows key and value types and `bpftool map dump` prints named fields.
use aya_ebpf::{
    btf_maps::{Array, DevMapHash, HashMap, PerCpuHashMap, RingBuf},
    macros::btf_map,
};
use veth_common::{
    Endpoint, PairCounters, PodIdentity, TraceConfig, TraceEvent, MAX_ENDPOINTS, MAX_PAIRS,
    TRACE_RING_BYTES,
};

/// Pods the programs may redirect to: IPv4 (`ipv4_key`) -> endpoint.
#[btf_map]
pub static ENDPOINTS: HashMap<u32, Endpoint, MAX_ENDPOINTS> = HashMap::new();

/// Pods the programs may redirect to: IPv6 address -> endpoint.
#[btf_map]
pub static ENDPOINTS6: HashMap<[u8; 16], Endpoint, MAX_ENDPOINTS> = HashMap::new();

/// Host-side veth ifindex -> the addresses its pod owns.
#[btf_map]
pub static PODS: HashMap<u32, PodIdentity, MAX_PAIRS> = HashMap::new();

/// Per-pair counters: host-side veth ifindex -> counters. Entries are made by
/// userspace before a program can see the pair, so the programs never insert
/// (a packet racing a `down` cannot resurrect a removed pair).
#[btf_map]
pub static PAIR_COUNTERS: PerCpuHashMap<u32, PairCounters, MAX_PAIRS> = PerCpuHashMap::new();

/// One [`TraceConfig`]: written by `vethctl trace` while it listens.
#[btf_map]
pub static TRACE_CONFIG: Array<TraceConfig, 1> = Array::new();

/// Sampled [`veth_common::TraceEvent`]s for `vethctl trace`.
#[btf_map]
pub static TRACE_EVENTS: RingBuf<TraceEvent, TRACE_RING_BYTES> = RingBuf::new();

/// Mode xdp: host-side veths by ifindex, the targets of `bpf_redirect_map`.
#[btf_map]
pub static DEVMAP: DevMapHash<MAX_PAIRS> = DevMapHash::new();
