//! Counting verdicts into the per-CPU pair counters.
use veth_common::{DropReason, PairCounters, Verdicts};

use crate::maps::PAIR_COUNTERS;

/// Which half of a pair's counters a verdict belongs to.
#[derive(Clone, Copy)]
pub enum Direction {
    FromPod,
    ToPod,
}

/// What happened to a frame.
#[derive(Clone, Copy)]
pub enum Verdict {
    Redirected,
    Passed,
    Dropped(DropReason),
}

/// Counts one frame of `bytes` for the pair whose host-side veth is
/// `ifindex`. Pairs unknown to userspace are not counted.
#[inline(always)]
pub fn count(ifindex: u32, direction: Direction, verdict: Verdict, bytes: u64) {
    let Some(counters) = PAIR_COUNTERS.get_ptr_mut(ifindex) else {
        return;
    };
    // SAFETY: the value is this CPU's slot of a per-CPU map and programs run
    // with migration disabled, so nothing else writes it concurrently.
    let counters: &mut PairCounters = unsafe { &mut *counters };
    let half: &mut Verdicts = match direction {
        Direction::FromPod => &mut counters.from_pod,
        Direction::ToPod => &mut counters.to_pod,
    };
    match verdict {
        Verdict::Redirected => {
            half.redirected_packets += 1;
            half.redirected_bytes += bytes;
        }
        Verdict::Passed => {
            half.passed_packets += 1;
            half.passed_bytes += bytes;
        }
        Verdict::Dropped(reason) => {
            half.dropped_packets += 1;
            half.dropped_bytes += bytes;
            if let Some(slot) = counters.drop_reasons.get_mut(reason as usize) {
                *slot += 1;
            }
        }
    }
}
