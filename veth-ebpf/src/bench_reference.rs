//! Benchmark references, never attached by vethctl: what a path costs when
//! a program does (almost) nothing. `cargo xtask bench paths` attaches them
//! to a two-pod topology of its own (TCX ingress of both host-side veths)
//! to show how far every path is from what the kernel allows on the
//! machine. They check nothing: never put them in front of a real pod.
use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC},
    btf_maps::{HashMap, PerCpuArray},
    helpers::generated::bpf_redirect_peer,
    macros::{btf_map, classifier},
    programs::TcContext,
};

/// Host-side ifindexes of the two pods, set at load time: frames arriving
/// on one go to the other's pod.
#[unsafe(no_mangle)]
static BENCH_HOST_A: u32 = 0;
#[unsafe(no_mangle)]
static BENCH_HOST_B: u32 = 0;

/// `bench_limit_map`'s one lookup: host-side ifindex -> the other pod's.
#[btf_map]
static BENCH_PEERS: HashMap<u32, u32, 2> = HashMap::new();

/// `bench_limit_map`'s one counter: frames redirected, per CPU.
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
    if let Some(frames) = BENCH_FRAMES.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of a per-CPU map; programs run with
        // migration disabled, so nothing else writes it concurrently.
        unsafe { *frames += 1 };
    }
    redirect(target)
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
