//! Counting verdicts into the per-CPU pair counters.
use veth_common::{verdict, DropReason, PairCounters, Verdicts};

use crate::maps::{PAIR_COUNTERS, UNDERLAY_COUNTERS};

/// 1 unless the topology turned counting off (`counters = false`). A
/// `.rodata` global: userspace sets it at load time, the map is frozen, and
/// the verifier removes the counting code entirely when it is 0.
#[unsafe(no_mangle)]
static COUNTERS_ENABLED: u8 = 1;

/// Which half of a pair's counters a verdict belongs to.
#[derive(Clone, Copy)]
pub enum Direction {
    FromPod,
    ToPod,
}

/// What happened to a frame.
#[derive(Clone, Copy)]
pub enum Verdict {
    /// To another pod of this node.
    Redirected,
    /// Sent to another node (from a pod), or received from one (to a pod).
    Remote,
    Passed,
    Dropped(DropReason),
}

impl Verdict {
    /// The trace encoding: (`veth_common::verdict` value, drop reason).
    #[inline(always)]
    pub fn code(self) -> (u8, u8) {
        match self {
            Verdict::Redirected => (verdict::REDIRECTED, 0),
            // Its peer ifindex is 0: `vethctl trace` names the node from
            // the destination address.
            Verdict::Remote => (verdict::REMOTE, 0),
            Verdict::Passed => (verdict::PASSED, 0),
            Verdict::Dropped(reason) => (verdict::DROPPED, reason as u8),
        }
    }
}

/// Counts one frame of `bytes` for the pair in `slot`.
#[inline(always)]
pub fn count(slot: u32, direction: Direction, verdict: Verdict, bytes: u64) {
    if counting() {
        add(PAIR_COUNTERS.get_ptr_mut(slot), direction, verdict, bytes);
    }
}

/// Counts one frame from the underlay or the tunnel device that belongs
/// to no pod.
#[inline(always)]
pub fn count_underlay(verdict: Verdict, bytes: u64) {
    if counting() {
        add(
            UNDERLAY_COUNTERS.get_ptr_mut(0),
            Direction::ToPod,
            verdict,
            bytes,
        );
    }
}

#[inline(always)]
fn counting() -> bool {
    // SAFETY: a plain read of a static; volatile so the compiler keeps the
    // load and the loader's value is what counts.
    unsafe { core::ptr::read_volatile(&COUNTERS_ENABLED) != 0 }
}

#[inline(always)]
fn add(counters: Option<*mut PairCounters>, direction: Direction, verdict: Verdict, bytes: u64) {
    let Some(counters) = counters else {
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
        Verdict::Remote => {
            half.remote_packets += 1;
            half.remote_bytes += bytes;
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
