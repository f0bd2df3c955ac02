//! Types shared by the eBPF programs and the userspace loader.
//!
//! Everything here is `#[repr(C)]` with explicit padding so that the kernel
//! side, the userspace side and bpftool (through BTF) agree on one layout.
#![cfg_attr(not(test), no_std)]

/// Names of programs and maps inside the eBPF object, and of their pins.
pub mod names {
    /// TC program at ingress of every host-side veth: frames the pod sent.
    pub const PROG_FROM_POD: &str = "from_pod";
    /// TC program at egress of every host-side veth: frames the host stack
    /// sends into the pod (redirected frames never pass there).
    pub const PROG_TO_POD: &str = "to_pod";
    /// XDP program at the host-side veth (mode xdp): frames from the pod.
    pub const PROG_XDP_FROM_POD: &str = "xdp_from_pod";
    /// Mode xdp: DEVMAP_HASH of host-side veths, redirect targets.
    pub const MAP_DEVMAP: &str = "DEVMAP";
    /// Hash map: pod IPv4 address -> [`crate::Endpoint`].
    pub const MAP_ENDPOINTS: &str = "ENDPOINTS";
    /// Hash map: pod IPv6 address (16 bytes) -> [`crate::Endpoint`].
    pub const MAP_ENDPOINTS6: &str = "ENDPOINTS6";
    /// Hash map: host-side veth ifindex -> the pod's slot, the index of its
    /// entries in [`MAP_PODS`] and [`MAP_PAIR_COUNTERS`].
    pub const MAP_SLOTS: &str = "SLOTS";
    /// Array of [`crate::SLOT_HINTS`] u32: at `ifindex % SLOT_HINTS`, the
    /// slot + 1 of the pod behind that host-side veth (0: none). A hint
    /// only: the programs take it if the slot's identity names the veth,
    /// else they ask [`MAP_SLOTS`].
    pub const MAP_SLOT_HINTS: &str = "SLOT_HINTS";
    /// Array of [`crate::ENDPOINT_HINTS`] u32: at
    /// [`crate::endpoint_hint_v4`] / [`crate::endpoint_hint_v6`] of a pod's
    /// address, its slot + 1 (0: none). A hint only: the programs take it
    /// if the slot's identity owns the address, else they ask
    /// [`MAP_ENDPOINTS`] / [`MAP_ENDPOINTS6`].
    pub const MAP_ENDPOINT_HINTS: &str = "ENDPOINT_HINTS";
    /// Array: slot -> [`crate::PodIdentity`]: who may send from behind that
    /// veth (anti-spoofing), and who an endpoint's slot must still belong
    /// to before anything is redirected to it.
    pub const MAP_PODS: &str = "PODS";
    /// Per-CPU array: slot -> [`crate::PairCounters`] (each names its
    /// host-side ifindex, so a bpftool dump reads on its own).
    pub const MAP_PAIR_COUNTERS: &str = "PAIR_COUNTERS";
    /// Array of [`crate::TRACE_SESSIONS`] [`crate::TraceConfig`]s: one per
    /// `vethctl trace` session, whether and what it traces.
    pub const MAP_TRACE_CONFIG: &str = "TRACE_CONFIG";
    /// Array of one u32: not 0 while no trace session is on (the programs
    /// then skip [`MAP_TRACE_CONFIG`]; 0 looks at every session's switch).
    pub const MAP_TRACE_IDLE: &str = "TRACE_IDLE";
    /// Ring buffers of [`crate::TraceEvent`]s, one per trace session (a
    /// ring buffer has one reader: sessions sharing one steal each other's
    /// events).
    pub const MAP_TRACE_EVENTS: [&str; crate::TRACE_SESSIONS] = [
        "TRACE_EVENTS_0",
        "TRACE_EVENTS_1",
        "TRACE_EVENTS_2",
        "TRACE_EVENTS_3",
    ];
    /// `.rodata` global (u8): 0 compiles counting out of the programs at
    /// load time (the verifier drops the dead branch).
    pub const GLOBAL_COUNTERS_ENABLED: &str = "COUNTERS_ENABLED";
    /// `.rodata` global (u8): 1 in mode tc, where `from_pod` redirects; 0
    /// in the kernel-path modes, where it checks and counts, then passes.
    pub const GLOBAL_REDIRECT_ENABLED: &str = "REDIRECT_ENABLED";
    /// `.rodata` global (u8): 1 (always, in vethctl) checks every frame a
    /// pod sends. Only `cargo xtask bench checks` loads a private,
    /// never-attached copy with 0, to measure what the checks cost.
    pub const GLOBAL_CHECKS_ENABLED: &str = "CHECKS_ENABLED";
    /// Benchmark reference, never attached by vethctl: a TCX program that
    /// only `bpf_redirect_peer`s every frame to the other of two pods
    /// ("limit" in `cargo xtask bench paths`).
    pub const PROG_BENCH_LIMIT: &str = "bench_limit";
    /// Benchmark reference: [`PROG_BENCH_LIMIT`] plus one hash lookup
    /// ([`MAP_BENCH_PEERS`]) and one per-CPU counter ([`MAP_BENCH_FRAMES`]).
    pub const PROG_BENCH_LIMIT_MAP: &str = "bench_limit_map";
    /// Benchmark reference: [`PROG_BENCH_LIMIT_MAP`] plus what any local
    /// redirect that routes must do besides checking the source: read the
    /// headers, rewrite the MACs and TTL (so the verifier's unclone
    /// prologue), test the MTU and prove the target alive in `DEVMAP`.
    pub const PROG_BENCH_LIMIT_REWRITE: &str = "bench_limit_rewrite";
    /// Hash map (u32 -> u32): host-side ifindex -> the other pod's.
    pub const MAP_BENCH_PEERS: &str = "BENCH_PEERS";
    /// Hash map (u32 -> [`crate::BenchRoute`]): host-side ifindex -> where
    /// [`PROG_BENCH_LIMIT_REWRITE`] sends its frames, and their MACs.
    pub const MAP_BENCH_ROUTES: &str = "BENCH_ROUTES";
    /// Per-CPU array of one u64: frames `bench_limit_map` or
    /// [`PROG_BENCH_LIMIT_REWRITE`] redirected.
    pub const MAP_BENCH_FRAMES: &str = "BENCH_FRAMES";
    /// `.rodata` globals (u32): the two host-side ifindexes of
    /// [`PROG_BENCH_LIMIT`].
    pub const GLOBAL_BENCH_HOST_A: &str = "BENCH_HOST_A";
    pub const GLOBAL_BENCH_HOST_B: &str = "BENCH_HOST_B";

    /// TC ingress of the node's underlay interface (cross-node `ebpf`):
    /// frames from other nodes for local pods, handed over with
    /// `bpf_redirect_peer` if their source is a known node.
    pub const PROG_FROM_UNDERLAY: &str = "from_underlay";
    /// TC ingress of the node's collect-metadata VXLAN device (cross-node
    /// `ebpf-vxlan`): decapsulated frames, checked by tunnel key.
    pub const PROG_FROM_TUNNEL: &str = "from_tunnel";
    /// LPM trie: IPv4 prefix -> [`crate::RemoteRoute`] (Cilium's ipcache):
    /// other nodes' pod ranges, this node's own, and the cluster range.
    pub const MAP_REMOTE_ROUTES: &str = "REMOTE_ROUTES";
    /// LPM trie: IPv6 prefix -> [`crate::RemoteRoute`].
    pub const MAP_REMOTE_ROUTES6: &str = "REMOTE_ROUTES6";
    /// Hash map: a known node's underlay address ([`crate::node_key`]) ->
    /// [`crate::KnownNode`].
    pub const MAP_NODES: &str = "NODES";
    /// Array of one [`crate::CrossNodeConfig`]: how this node reaches others.
    pub const MAP_CROSS_NODE: &str = "CROSS_NODE";
    /// Per-CPU array of one [`crate::PairCounters`]: frames from the
    /// underlay or the tunnel device that belong to no pod.
    pub const MAP_UNDERLAY_COUNTERS: &str = "UNDERLAY_COUNTERS";
}

/// Upper bound of pods (endpoints) per topology.
pub const MAX_ENDPOINTS: usize = 16384;
/// Upper bound of pairs with counters per topology (the last slot of
/// `PAIR_COUNTERS` is [`UNKNOWN_VETH_SLOT`]).
pub const MAX_PAIRS: usize = 16384;

/// Entries of the slot hints (`names::MAP_SLOT_HINTS`), a power of two:
/// four per pair, so that two live pods' ifindexes rarely share one.
pub const SLOT_HINTS: usize = 4 * MAX_PAIRS;
const _: () = assert!(SLOT_HINTS.is_power_of_two());

/// Where a host-side veth's slot hint is.
#[inline(always)]
pub fn slot_hint_index(host_ifindex: u32) -> u32 {
    host_ifindex & (SLOT_HINTS as u32 - 1)
}

/// Entries of the endpoint hints (`names::MAP_ENDPOINT_HINTS`): the low 16
/// bits of an IPv4 address, then of an IPv6 one.
pub const ENDPOINT_HINTS: usize = 2 << 16;

/// Where the endpoint hint of an IPv4 address (network-order bytes) is.
#[inline(always)]
pub fn endpoint_hint_v4(octets: [u8; 4]) -> u32 {
    u32::from(u16::from_be_bytes([octets[2], octets[3]]))
}

/// Where the endpoint hint of an IPv6 address is.
#[inline(always)]
pub fn endpoint_hint_v6(octets: &[u8; 16]) -> u32 {
    1 << 16 | u32::from(u16::from_be_bytes([octets[14], octets[15]]))
}

/// The slot of `PAIR_COUNTERS` (never given to a pod) that counts frames
/// arriving on a veth that runs our program but has no slot: a pod being
/// removed, or a veth someone attached our pinned program to. They are
/// dropped: nothing is forwarded unchecked.
pub const UNKNOWN_VETH_SLOT: u32 = MAX_PAIRS as u32 - 1;

/// Concurrent `vethctl trace` sessions per topology, each with its own
/// selection and ring buffer.
pub const TRACE_SESSIONS: usize = 4;

/// A pod the programs may redirect to, keyed by its IPv4 address
/// (see [`ipv4_key`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// ifindex of the pod's host-side veth; `bpf_redirect_peer` to it lands
    /// the frame on the pod's `eth0` inside the pod's namespace.
    pub host_ifindex: u32,
    /// MAC of the pod's `eth0`: the new destination MAC.
    pub pod_mac: [u8; 6],
    /// MAC the pod knows its gateway by (its host-side veth): the new source
    /// MAC, so the frame looks routed by the node, as in the host path.
    pub gateway_mac: [u8; 6],
    /// The pod's slot in `PODS` and `PAIR_COUNTERS`.
    pub slot: u32,
    /// MTU of the pod's `eth0`: a frame that fits needs no helper call.
    pub mtu: u32,
}

/// The MAC every host-side veth carries, as in Calico: pods resolve their
/// gateway (169.254.1.1) to it through a permanent neighbour entry.
pub const GATEWAY_MAC: [u8; 6] = [0xee; 6];

/// Map key for an IPv4 address: the four octets as they sit in the packet.
#[inline(always)]
pub fn ipv4_key(octets: [u8; 4]) -> u32 {
    u32::from_ne_bytes(octets)
}

/// The IPv6 link-local address (fe80::/64) a kernel gives an interface
/// with this MAC by default (`addr_gen_mode` 0, EUI-64: the MAC with its
/// universal/local bit flipped and ff:fe in the middle, RFC 4291 app. A).
/// The programs let a pod send from this address only.
#[inline(always)]
pub fn eui64_link_local(mac: [u8; 6]) -> [u8; 16] {
    let [a, b, c, d, e, f] = mac;
    [
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        a ^ 0x02,
        b,
        c,
        0xff,
        0xfe,
        d,
        e,
        f,
    ]
}

/// The addresses a pod owns, in its slot, and what a frame redirected to
/// it needs (its MACs and MTU, as in its [`Endpoint`]): a destination found
/// by its endpoint hint is redirected from this one value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodIdentity {
    pub ipv4: [u8; 4],
    /// All zero when the pod has no IPv6 address.
    pub ipv6: [u8; 16],
    pub mac: [u8; 6],
    /// 1 while the pod may receive redirected frames: its veth exists and
    /// is up. `up` sets it; `vethctl agent` clears it within milliseconds
    /// of the veth going down or away (frames then go to the host stack,
    /// which answers "unreachable").
    pub ready: u8,
    /// 1 if `ipv6` holds the pod's address (saves the programs comparing 16
    /// bytes with zero per frame).
    pub has_ipv6: u8,
    /// 1 if the pod's frames, from it and to it, always take the host
    /// stack, never a redirect: it has hostPorts (the replies of connections
    /// the node DNATed to it must pass the node's conntrack to be un-NATed)
    /// or bandwidth limits (shaped by qdiscs on its host-side veth, which a
    /// redirect would skip).
    pub host_path: u8,
    /// The host-side veth the slot belongs to; 0 for a free slot.
    pub host_ifindex: u32,
    /// MTU of the pod's `eth0` ([`Endpoint::mtu`]).
    pub mtu: u32,
    /// The MAC the pod knows its gateway by ([`Endpoint::gateway_mac`]).
    pub gateway_mac: [u8; 6],
}

/// Why a program dropped a frame. Indexes [`PairCounters::drop_reasons`].
/// Values are stable (bpftool dumps and recorded counters use them).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The redirect helper refused the redirect.
    RedirectFailed = 0,
    /// The frame's source MAC is not the pod's.
    SpoofedMac = 1,
    /// IPv4 source address is not the pod's.
    SpoofedIpv4 = 2,
    /// IPv6 source address is not the pod's: neither its global address
    /// nor its own link-local one (EUI-64 of its MAC), nor `::` on a
    /// duplicate address detection solicitation or an MLD report.
    SpoofedIpv6 = 3,
    /// ARP sender (hardware or protocol address) is not the pod's.
    SpoofedArp = 4,
    /// An 802.1Q / 802.1ad tag, in the frame or taken out of it by the
    /// kernel: pods do not send tagged frames, and a tag hides the packet.
    VlanTagged = 5,
    /// IPv4 header that is cut short, not version 4, shorter than 20 bytes,
    /// or whose total length does not fit the frame.
    MalformedIpv4 = 6,
    /// IPv6 header that is cut short, not version 6, or whose payload
    /// length does not fit the frame.
    MalformedIpv6 = 7,
    /// ARP that is cut short or not Ethernet/IPv4 ARP.
    MalformedArp = 8,
    /// Neither IPv4, IPv6 nor ARP (including 802.3 length frames).
    UnsupportedEthertype = 9,
    /// Shorter than an Ethernet header.
    Truncated = 10,
    /// The veth runs our program but has no pod (slot): see
    /// [`UNKNOWN_VETH_SLOT`].
    UnknownVeth = 11,
    /// An ICMPv6 router advertisement or redirect, or an ICMP redirect:
    /// pods are not routers, and on a shared bridge such a message would
    /// reroute other pods' traffic. Also a router solicitation behind a
    /// Fragment header (RFC 6980 forbids fragmented neighbour discovery).
    RouterMessage = 12,
    /// An IPv6 neighbour advertisement for an address that is not the
    /// pod's (its global address or its own link-local one), a duplicate
    /// address detection solicitation for such an address, or a neighbour
    /// solicitation or advertisement behind a Fragment header (RFC 6980).
    SpoofedNeighbour = 13,
    /// A GSO packet whose segments are larger than the pod's MTU (only
    /// a raw socket with `PACKET_VNET_HDR` makes one): the kernel forwards
    /// such a packet whole, past every MTU on the way.
    OversizedGso = 14,
    /// An IPv4 packet with a loose or strict source route option (LSRR,
    /// SSRR): it asks whoever forwards it to route it by the pod's say.
    Ipv4SourceRoute = 15,
    /// A frame from the underlay (or the tunnel device) for a pod range
    /// whose source is not a known node: neither a node's underlay address
    /// nor (native routing) inside a remote node's pod range; for VXLAN, an
    /// outer source that is not a node, or no tunnel metadata at all.
    UnknownNode = 16,
    /// A VXLAN frame whose VNI is not this network's.
    WrongVni = 17,
    /// A frame from a pod for the cluster range that no node has (a node
    /// removed, or not known yet): never left to the node's default route.
    NoRemoteRoute = 18,
    /// IPv6 over an IPv4-only underlay: the node's FIB has no route or no
    /// resolved neighbour towards the remote node's underlay address.
    NoUnderlayRoute = 19,
}

/// Number of slots in [`PairCounters::drop_reasons`]: room for every
/// reason (checked at compile time below, so no reason ever shares a slot)
/// and a few more. Growing it changes the map value, which `up` handles as
/// a layout change (the pinned counters are made afresh).
pub const DROP_REASON_SLOTS: usize = 24;

// Every reason has its own slot: the programs index by the code.
const _: () = {
    let mut i = 0;
    while i < DropReason::ALL.len() {
        assert!((DropReason::ALL[i] as usize) < DROP_REASON_SLOTS);
        assert!(DropReason::ALL[i] as usize == i);
        i += 1;
    }
};

impl DropReason {
    pub const ALL: [DropReason; 20] = [
        DropReason::RedirectFailed,
        DropReason::SpoofedMac,
        DropReason::SpoofedIpv4,
        DropReason::SpoofedIpv6,
        DropReason::SpoofedArp,
        DropReason::VlanTagged,
        DropReason::MalformedIpv4,
        DropReason::MalformedIpv6,
        DropReason::MalformedArp,
        DropReason::UnsupportedEthertype,
        DropReason::Truncated,
        DropReason::UnknownVeth,
        DropReason::RouterMessage,
        DropReason::SpoofedNeighbour,
        DropReason::OversizedGso,
        DropReason::Ipv4SourceRoute,
        DropReason::UnknownNode,
        DropReason::WrongVni,
        DropReason::NoRemoteRoute,
        DropReason::NoUnderlayRoute,
    ];

    /// Stable name used in CLI, JSON and metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::RedirectFailed => "redirect_failed",
            DropReason::SpoofedMac => "spoofed_mac",
            DropReason::SpoofedIpv4 => "spoofed_ipv4",
            DropReason::SpoofedIpv6 => "spoofed_ipv6",
            DropReason::SpoofedArp => "spoofed_arp",
            DropReason::VlanTagged => "vlan_tagged",
            DropReason::MalformedIpv4 => "malformed_ipv4",
            DropReason::MalformedIpv6 => "malformed_ipv6",
            DropReason::MalformedArp => "malformed_arp",
            DropReason::UnsupportedEthertype => "unsupported_ethertype",
            DropReason::Truncated => "truncated",
            DropReason::UnknownVeth => "unknown_veth",
            DropReason::RouterMessage => "router_message",
            DropReason::SpoofedNeighbour => "spoofed_neighbour",
            DropReason::OversizedGso => "oversized_gso",
            DropReason::Ipv4SourceRoute => "ipv4_source_route",
            DropReason::UnknownNode => "unknown_node",
            DropReason::WrongVni => "wrong_vni",
            DropReason::NoRemoteRoute => "no_remote_route",
            DropReason::NoUnderlayRoute => "no_underlay_route",
        }
    }

    /// The reason with this trace/counter code, if any.
    pub fn from_code(code: u32) -> Option<DropReason> {
        DropReason::ALL.iter().copied().find(|r| *r as u32 == code)
    }
}

/// What the programs decided for the frames of one direction of one pair.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize))]
pub struct Verdicts {
    /// Sent with `bpf_redirect_peer` between pods of this node, bypassing
    /// bridge and host stack.
    pub redirected_packets: u64,
    pub redirected_bytes: u64,
    /// Across nodes, by the programs (cross-node `ebpf`, `ebpf-vxlan`):
    /// from the pod, sent to another node; to the pod, received from one.
    pub remote_packets: u64,
    pub remote_bytes: u64,
    /// Left to the host stack (`TC_ACT_OK`).
    pub passed_packets: u64,
    pub passed_bytes: u64,
    /// Dropped by the program (`TC_ACT_SHOT`).
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
}

impl Verdicts {
    /// Adds `other` into `self`; counters wrap like the kernel's u64s.
    pub fn accumulate(&mut self, other: &Verdicts) {
        self.redirected_packets = self
            .redirected_packets
            .wrapping_add(other.redirected_packets);
        self.redirected_bytes = self.redirected_bytes.wrapping_add(other.redirected_bytes);
        self.remote_packets = self.remote_packets.wrapping_add(other.remote_packets);
        self.remote_bytes = self.remote_bytes.wrapping_add(other.remote_bytes);
        self.passed_packets = self.passed_packets.wrapping_add(other.passed_packets);
        self.passed_bytes = self.passed_bytes.wrapping_add(other.passed_bytes);
        self.dropped_packets = self.dropped_packets.wrapping_add(other.dropped_packets);
        self.dropped_bytes = self.dropped_bytes.wrapping_add(other.dropped_bytes);
    }
}

/// Counters of one pod's veth pair, one value per CPU in the map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PairCounters {
    /// The host-side veth these count for, written by userspace when the
    /// slot is given to a pod (programs never write it).
    pub host_ifindex: u32,
    pub _pad: u32,
    /// Frames the pod sent (seen at host-side veth ingress).
    pub from_pod: Verdicts,
    /// Frames delivered into the pod: redirected from other pods, or passed
    /// by the host stack (seen at host-side veth egress).
    pub to_pod: Verdicts,
    /// Dropped packets by [`DropReason`], both directions.
    pub drop_reasons: [u64; DROP_REASON_SLOTS],
}

impl PairCounters {
    /// Adds `other` into `self` (used to sum the per-CPU values).
    pub fn accumulate(&mut self, other: &PairCounters) {
        if self.host_ifindex == 0 {
            self.host_ifindex = other.host_ifindex;
        }
        self.from_pod.accumulate(&other.from_pod);
        self.to_pod.accumulate(&other.to_pod);
        for (sum, add) in self.drop_reasons.iter_mut().zip(other.drop_reasons.iter()) {
            *sum = sum.wrapping_add(*add);
        }
    }
}

/// Most entries of each remote-route trie (IPv4, IPv6): a few per node.
pub const MAX_REMOTE_ROUTES: usize = 16384;
/// Most known nodes (underlay addresses, IPv4 and IPv6 together).
pub const MAX_NODES: usize = 8192;

/// What a prefix of [`names::MAP_REMOTE_ROUTES`] is.
pub mod route_kind {
    /// Another node's pod range: send to that node.
    pub const REMOTE: u32 = 1;
    /// This node's own pod range: its endpoints are in `ENDPOINTS`; other
    /// addresses there (the node's own) are the host stack's.
    pub const LOCAL: u32 = 2;
    /// The cluster range outside every node's range: nobody has it; from a
    /// pod, dropped (`no_remote_route`).
    pub const UNROUTABLE: u32 = 3;
}

/// Value of the `limit+rewrite` benchmark reference's one lookup: the
/// other pod's host-side veth and the MACs its frames are written with
/// (those they already carry: the two pods know each other's MAC, and
/// what is measured is the stores, which cost the same whatever they
/// write).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BenchRoute {
    pub target_ifindex: u32,
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
}

/// Value of the remote-route tries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteRoute {
    /// A [`route_kind`] value.
    pub kind: u32,
    /// The remote node's IPv4 underlay address (0.0.0.0: none).
    pub node_ipv4: [u8; 4],
    /// The remote node's IPv6 underlay address (all zero: none). Native
    /// IPv6 frames need it for `bpf_redirect_neigh`, else a FIB lookup of
    /// the IPv4 one.
    pub node_ipv6: [u8; 16],
}

/// Value of [`names::MAP_NODES`]: a node whose frames the underlay and
/// tunnel programs accept, under each of its underlay addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KnownNode {
    /// The node's IPv4 underlay address (0.0.0.0: none).
    pub ipv4: [u8; 4],
    /// The node's IPv6 underlay address (all zero: none).
    pub ipv6: [u8; 16],
}

/// Key of [`names::MAP_NODES`] for an IPv4 address: mapped into IPv6
/// (`::ffff:a.b.c.d`), so one map holds both families.
#[inline(always)]
pub fn node_key_v4(octets: [u8; 4]) -> [u8; 16] {
    let [a, b, c, d] = octets;
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d]
}

/// [`CrossNodeConfig::mode`] values.
pub mod cross_node_mode {
    /// Frames for other nodes are the kernel's and nothing checks what
    /// comes from the underlay (a single node; a cluster node on its way
    /// out of a cluster).
    pub const KERNEL: u32 = 0;
    /// Native routing by the programs (`ebpf`).
    pub const NATIVE: u32 = 1;
    /// Collect-metadata VXLAN by the programs (`ebpf-vxlan`).
    pub const TUNNEL: u32 = 2;
    /// The kernel routes (`host-gw`); `from_underlay` only checks: a frame
    /// for a pod range passes on to the host stack if a known node sent
    /// it, else it is dropped.
    pub const GUARD: u32 = 3;
    /// The kernel's VXLAN device (`vxlan`); `from_underlay` checks as in
    /// [`GUARD`] and also UDP frames to [`crate::CrossNodeConfig::port`]:
    /// outer source a known node, VNI ours.
    pub const GUARD_VXLAN: u32 = 4;
}

/// The only entry of [`names::MAP_CROSS_NODE`]. A map value rather than a
/// load-time global: switching between the kernel path and the programs'
/// is one map write, with no program reload.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrossNodeConfig {
    /// A [`cross_node_mode`] value.
    pub mode: u32,
    /// The node's underlay interface (its `eth0`).
    pub underlay_ifindex: u32,
    /// The collect-metadata VXLAN device (`ebpf-vxlan`), else 0.
    pub tunnel_ifindex: u32,
    /// This network's VXLAN network identifier.
    pub vni: u32,
    /// This network's VXLAN UDP port (host order; checked in
    /// [`cross_node_mode::GUARD_VXLAN`]).
    pub port: u32,
}

/// MAC of every collect-metadata VXLAN device vethctl makes. Frames sent
/// through the tunnel to a node with an IPv4 underlay address carry that
/// node's [`vtep_mac`] as their inner destination instead, which a kernel
/// VXLAN device (`cross_node = "vxlan"`, a node not yet switched to
/// `ebpf-vxlan`) takes as its own; `from_tunnel` takes any. To a node
/// with only IPv6 underlay addresses they carry this one. (The inner
/// source is [`GATEWAY_MAC`]: a VXLAN device drops frames whose inner
/// source is its own MAC.)
pub const TUNNEL_MAC: [u8; 6] = [0x0e, 0xee, 0xee, 0xee, 0xee, 0xee];

/// MAC of a node's kernel VXLAN device: locally administered, from its
/// IPv4 underlay address.
pub const fn vtep_mac(underlay: [u8; 4]) -> [u8; 6] {
    let [a, b, c, d] = underlay;
    [0x0e, 0x58, a, b, c, d]
}

/// Size of each trace session's ring buffer in bytes (a power of two, page
/// multiple).
pub const TRACE_RING_BYTES: usize = 1 << 18;

/// What one trace session wants. Written by `vethctl trace` into its own
/// entry of `TRACE_CONFIG` while it listens.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceConfig {
    /// Emit about one event per this many frames; 0 turns tracing off (the
    /// only cost then is reading this value).
    pub sample_every: u32,
    /// Only frames of the pair with this host-side ifindex (either end of a
    /// redirect); 0 for all pairs.
    pub ifindex: u32,
    /// `bpf_ktime_get_ns()` after which tracing stops by itself. The
    /// listener keeps moving it forward, so a killed listener costs nothing
    /// a few seconds later.
    pub until_ns: u64,
}

/// Where a traced frame was seen.
pub mod hook {
    pub const FROM_POD: u8 = 0;
    pub const TO_POD: u8 = 1;
}

/// What happened to a traced frame.
pub mod verdict {
    pub const REDIRECTED: u8 = 0;
    pub const PASSED: u8 = 1;
    pub const DROPPED: u8 = 2;
    /// Sent to another node by the programs (cross_node ebpf, ebpf-vxlan).
    pub const REMOTE: u8 = 3;
}

/// How many of a traced frame's first bytes an event carries: Ethernet
/// (14) and IPv6 (40) leave 74 bytes for IPv6 extension headers and the
/// TCP/UDP ports or ICMP type, enough for hop-by-hop, routing, fragment and
/// destination options headers together. A power of two: the programs
/// bound the copy's length with a mask the verifier can follow.
pub const TRACE_HEADER_BYTES: usize = 128;
const _: () = assert!(TRACE_HEADER_BYTES.is_power_of_two());

/// One sampled frame, as the programs saw it: what they decided, and the
/// frame's first bytes, which `vethctl trace` decodes (the programs parse
/// nothing for tracing, so decoding IPv6 extension headers costs the
/// kernel side no instructions and no verifier complexity).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub timestamp_ns: u64,
    /// Host-side ifindex of the pair whose program saw the frame.
    pub ifindex: u32,
    /// For a redirect: host-side ifindex of the destination pod; else 0.
    pub peer_ifindex: u32,
    /// `skb->len` (XDP: the frame's length).
    pub len: u32,
    /// [`hook`] value.
    pub hook: u8,
    /// [`verdict`] value.
    pub verdict: u8,
    /// [`DropReason`] for dropped frames.
    pub reason: u8,
    pub _pad: u8,
    /// How many bytes of `headers` are the frame's: `min(len,
    /// TRACE_HEADER_BYTES)`, 0 if they could not be read.
    pub captured: u16,
    pub _pad2: u16,
    pub _pad3: u32,
    /// The frame's first `captured` bytes, from the Ethernet header on.
    pub headers: [u8; TRACE_HEADER_BYTES],
}

// No holes: the programs write every byte before the headers.
const _: () = assert!(core::mem::size_of::<TraceEvent>() == 32 + TRACE_HEADER_BYTES);

// Arrays this long have no derived Default.
impl Default for TraceEvent {
    fn default() -> Self {
        TraceEvent {
            timestamp_ns: 0,
            ifindex: 0,
            peer_ifindex: 0,
            len: 0,
            hook: 0,
            verdict: 0,
            reason: 0,
            _pad: 0,
            captured: 0,
            _pad2: 0,
            _pad3: 0,
            headers: [0; TRACE_HEADER_BYTES],
        }
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, #[repr(C)], no padding holes, any bit pattern valid.
    unsafe impl aya::Pod for crate::Endpoint {}
    unsafe impl aya::Pod for crate::PodIdentity {}
    unsafe impl aya::Pod for crate::PairCounters {}
    unsafe impl aya::Pod for crate::TraceConfig {}
    unsafe impl aya::Pod for crate::TraceEvent {}
    unsafe impl aya::Pod for crate::RemoteRoute {}
    unsafe impl aya::Pod for crate::KnownNode {}
    unsafe impl aya::Pod for crate::CrossNodeConfig {}
    unsafe impl aya::Pod for crate::BenchRoute {}
}
