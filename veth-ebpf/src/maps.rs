//! Every map of the dataplane, in one place. BTF-defined so that the kernel
//! knows key and value types and `bpftool map dump` prints named fields.
use aya_ebpf::{
    btf_maps::{Array, DevMapHash, HashMap, LpmTrie, PerCpuArray, RingBuf},
    macros::btf_map,
};
use veth_common::{
    CrossNodeConfig, Endpoint, KnownNode, PairCounters, PodIdentity, RemoteRoute, TraceConfig,
    TraceEvent, MAX_ENDPOINTS, MAX_NODES, MAX_PAIRS, MAX_REMOTE_ROUTES, TRACE_RING_BYTES,
    TRACE_SESSIONS,
};

/// Pods the programs may redirect to: IPv4 (`ipv4_key`) -> endpoint.
#[btf_map]
pub static ENDPOINTS: HashMap<u32, Endpoint, MAX_ENDPOINTS> = HashMap::new();

/// Pods the programs may redirect to: IPv6 address -> endpoint.
#[btf_map]
pub static ENDPOINTS6: HashMap<[u8; 16], Endpoint, MAX_ENDPOINTS> = HashMap::new();

/// Host-side veth ifindex -> slot: the one hash lookup a frame's source
/// needs; everything else about a pod is an array entry at its slot, which
/// the verifier inlines into a bounds check and an add.
#[btf_map]
pub static SLOTS: HashMap<u32, u32, MAX_PAIRS> = HashMap::new();

/// `slot_hint_index(ifindex)` -> slot + 1 (0: none): the source's slot
/// without a hash lookup (see `deliver::slot_of`).
#[btf_map]
pub static SLOT_HINTS: Array<u32, { veth_common::SLOT_HINTS }> = Array::new();

/// An address's hint (`endpoint_hint_v4`/`_v6`) -> slot + 1 (0: none): a
/// destination without a hash lookup (see `deliver::hinted_pod`).
#[btf_map]
pub static ENDPOINT_HINTS: Array<u32, { veth_common::ENDPOINT_HINTS }> = Array::new();

/// Slot -> the addresses its pod owns, its host-side ifindex, and what a
/// destination found by its hint is redirected with (MACs, MTU).
#[btf_map]
pub static PODS: Array<PodIdentity, MAX_PAIRS> = Array::new();

/// Per-pair counters by slot. Userspace zeroes a slot when it gives it to
/// a pod; frames of a veth without a slot count in `UNKNOWN_VETH_SLOT`.
#[btf_map]
pub static PAIR_COUNTERS: PerCpuArray<PairCounters, MAX_PAIRS> = PerCpuArray::new();

/// One [`TraceConfig`] per trace session, written by `vethctl trace` while
/// it listens.
#[btf_map]
pub static TRACE_CONFIG: Array<TraceConfig, TRACE_SESSIONS> = Array::new();

/// Not 0 while no trace session is on: frames then skip the sessions'
/// switches. Set by `up` when it loads the programs and by `vethctl trace`
/// when it ends the last session; cleared by `vethctl trace` when it
/// switches a session on. 0 (a map made afresh) looks at every switch.
#[btf_map]
pub static TRACE_IDLE: Array<u32, 1> = Array::new();

/// Sampled [`veth_common::TraceEvent`]s, one ring per trace session: a ring
/// buffer has one reader, so sessions sharing one stole each other's events.
#[btf_map]
pub static TRACE_EVENTS_0: RingBuf<TraceEvent, TRACE_RING_BYTES> = RingBuf::new();
#[btf_map]
pub static TRACE_EVENTS_1: RingBuf<TraceEvent, TRACE_RING_BYTES> = RingBuf::new();
#[btf_map]
pub static TRACE_EVENTS_2: RingBuf<TraceEvent, TRACE_RING_BYTES> = RingBuf::new();
#[btf_map]
pub static TRACE_EVENTS_3: RingBuf<TraceEvent, TRACE_RING_BYTES> = RingBuf::new();

/// Host-side veths by ifindex: the targets of `bpf_redirect_map` in mode
/// xdp, and in every mode the proof that a redirect target is still the
/// device `up` wired (the kernel removes a device's entries when it goes).
#[btf_map]
pub static DEVMAP: DevMapHash<MAX_PAIRS> = DevMapHash::new();

/// Other nodes' pod ranges, this node's own and the cluster's (IPv4): the
/// prefix -> node cache that decides, for a destination that is not a
/// local endpoint, whether it is another node's (Cilium's ipcache).
#[btf_map]
pub static REMOTE_ROUTES: LpmTrie<[u8; 4], RemoteRoute, MAX_REMOTE_ROUTES> = LpmTrie::new();

/// The same for IPv6.
#[btf_map]
pub static REMOTE_ROUTES6: LpmTrie<[u8; 16], RemoteRoute, MAX_REMOTE_ROUTES> = LpmTrie::new();

/// Known nodes by underlay address (IPv4 mapped into IPv6): the sources
/// the underlay and tunnel programs accept frames for pods from.
#[btf_map]
pub static NODES: HashMap<[u8; 16], KnownNode, MAX_NODES> = HashMap::new();

/// How this node reaches the others (one entry).
#[btf_map]
pub static CROSS_NODE: Array<CrossNodeConfig, 1> = Array::new();

/// Frames from the underlay or the tunnel device that belong to no pod
/// (dropped ones, whose destination is no endpoint).
#[btf_map]
pub static UNDERLAY_COUNTERS: PerCpuArray<PairCounters, 1> = PerCpuArray::new();
