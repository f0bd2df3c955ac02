//! TC egress of the host-side veth: frames the host stack sends into the pod.
//! Redirected frames enter the pod without passing here, so this only counts.
use aya_ebpf::{bindings::TC_ACT_UNSPEC, macros::classifier, programs::TcContext};

use crate::counters::{count, Direction, Verdict};

#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    // SAFETY: the context pointer is valid for the duration of the program.
    let egress_ifindex = unsafe { (*ctx.skb.skb).ifindex };
    count(
        egress_ifindex,
        Direction::ToPod,
        Verdict::Passed,
        u64::from(ctx.len()),
    );
    TC_ACT_UNSPEC
}
