//! TC egress of the host-side veth: frames the host stack sends into the pod.
//! Redirected frames enter the pod without passing here, so this only counts
//! (and traces).
use aya_ebpf::{bindings::TC_ACT_UNSPEC, macros::classifier, programs::TcContext};
use veth_common::hook;

use crate::{
    counters::{count, Direction, Verdict},
    deliver::slot_of,
    trace::maybe_emit,
};

#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    // SAFETY: the context pointer is valid for the duration of the program.
    let egress_ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let bytes = u64::from(ctx.len());
    if let Some(slot) = slot_of(egress_ifindex) {
        count(slot, Direction::ToPod, Verdict::Passed, bytes);
    }
    maybe_emit(&ctx, hook::TO_POD, egress_ifindex, 0, Verdict::Passed);
    TC_ACT_UNSPEC
}
