//! Benchmark references, never attached by vethctl: what a path costs when
//! a program does (almost) nothing, and when it does only what routing a
//! frame to a local pod takes (`limit+rewrite`). `cargo xtask bench paths`
//! attaches each to a two-pod topology of its own (TCX ingress of both
//! host-side veths) to show how far every path is from what the kernel
//! allows on the machine. They check nothing: never put them in front of a
//! real pod.
use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC},
    btf_maps::{HashMap, PerCpuArray},
    helpers::generated::bpf_redirect_peer,
    macros::{btf_map, classifier},
    programs::TcContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};
use veth_common::BenchRoute;

use crate::packet::{decrement_ttl, load_mac, ptr_at, store_mac, Frame, ETH_P_IP_BE};

/// Host-side ifindexes of the two pods, set at load time: frames arriving
/// on one go to the other's pod.
#[unsafe(no_mangle)]
static BENCH_HOST_A: u32 = 0;
#[unsafe(no_mangle)]
static BENCH_HOST_B: u32 = 0;

/// `bench_limit_map`'s one lookup: host-side ifindex -> the other pod's.
#[btf_map]
static BENCH_PEERS: HashMap<u32, u32, 2> = HashMap::new();

/// The one counter of `bench_limit_map` and `bench_limit_rewrite`: frames
/// redirected, per CPU.
#[btf_map]
static BENCH_FRAMES: PerCpuArray<u64, 1> = PerCpuArray::new();

/// "limit": every frame straight into the other pod with
/// `bpf_redirect_peer`, nothing read but the ingress ifindex.
#[classifier]
// The TC_ACT_* bindings are u32 for the bpf target and i32 on the host.
#[allow(clippy::unnecessary_cast)]
pub fn bench_limit(ctx: TcContext) -> i32 {
    // SAFETY: the context pointer is valid for the duration of the program;
    // the statics are plain reads, volatile so the loader's values count.
    let (ingress, a, b) = unsafe {
        (
            (*ctx.skb.skb).ifindex,
            core::ptr::read_volatile(&BENCH_HOST_A),
            core::ptr::read_volatile(&BENCH_HOST_B),
        )
    };
    redirect(if ingress == a { b } else { a })
}

/// "limit+map": the same, the target found with one hash lookup and the
/// frame counted in one per-CPU counter, the least a real dataplane does.
#[classifier]
#[allow(clippy::unnecessary_cast)]
pub fn bench_limit_map(ctx: TcContext) -> i32 {
    // SAFETY: the context pointer is valid for the duration of the program.
    let ingress = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: a u32 value, copied out at once.
    let Some(target) = (unsafe { BENCH_PEERS.get(ingress) }).copied() else {
        return TC_ACT_UNSPEC as i32;
    };
    count_frame();
    redirect(target)
}

/// `bench_limit_rewrite`'s one lookup: host-side ifindex -> the route.
#[btf_map]
static BENCH_ROUTES: HashMap<u32, BenchRoute, 2> = HashMap::new();

/// "limit+rewrite": limit+map (one lookup, one counter) plus what every
/// local redirect that routes does and limit+map does not, with no check
/// of the source: the Ethernet and IPv4 headers read, the MACs and the
/// TTL and checksum written as `from_pod` writes them (which makes the
/// verifier add its unclone prologue), the MTU test and the `DEVMAP`
/// proof that the target is still the device that was wired. The floor
/// under `from_pod` for the same frame: what is left between the two is
/// the source's identity and the checks, the second counter and the
/// trace switch.
#[classifier]
#[allow(clippy::unnecessary_cast)]
pub fn bench_limit_rewrite(ctx: TcContext) -> i32 {
    // SAFETY: the context pointer is valid for the duration of the program.
    let ingress = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: a read-only map lookup.
    let Some(route) = (unsafe { BENCH_ROUTES.get(ingress) }) else {
        return TC_ACT_UNSPEC as i32;
    };
    let (Some(eth), Some(ip)) = (
        ptr_at::<TcContext, EthHdr>(&ctx, 0),
        ptr_at::<TcContext, Ipv4Hdr>(&ctx, EthHdr::LEN),
    ) else {
        return TC_ACT_UNSPEC as i32;
    };
    let target = route.target_ifindex;
    // SAFETY: bounds-checked headers; the program is the only writer of
    // the frame at this hook.
    unsafe {
        let ttl = (*ip).ttl;
        if (*eth).ether_type != ETH_P_IP_BE
            || ttl <= 1
            || !ctx.fits_mtu_of(target, REWRITE_MTU)
            || !ctx.claim_target(target)
        {
            return TC_ACT_UNSPEC as i32;
        }
        store_mac(&raw mut (*eth).dst_addr, load_mac(&route.dst_mac));
        store_mac(&raw mut (*eth).src_addr, load_mac(&route.src_mac));
        decrement_ttl(ip, ttl);
    }
    count_frame();
    redirect(target)
}

/// The MTU `bench_limit_rewrite` tests frames against (the topology's).
const REWRITE_MTU: u32 = 1500;

#[inline(always)]
fn count_frame() {
    if let Some(frames) = BENCH_FRAMES.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of a per-CPU map; programs run with
        // migration disabled, so nothing else writes it concurrently.
        unsafe { *frames += 1 };
    }
}

#[inline(always)]
#[allow(clippy::unnecessary_cast)]
fn redirect(target: u32) -> i32 {
    // SAFETY: plain helper call; flags must be 0.
    if unsafe { bpf_redirect_peer(target, 0) } == i64::from(TC_ACT_REDIRECT) {
        TC_ACT_REDIRECT as i32
    } else {
        TC_ACT_SHOT as i32
    }
}
