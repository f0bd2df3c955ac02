//! The agent's record of its own passes over the endpoints (the periodic
//! reconcile, and the look at the links that events named): how many ran, how
//! many failed, and when one last succeeded. Process-wide, because the
//! watcher writes it and the metrics endpoint reads it, and reset only by
//! a restart (counters in Prometheus's sense).

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

/// A kind of pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// Every mapped pod checked against one link dump.
    Reconcile,
    /// The links named by the rtnetlink events since the last pass, looked
    /// up (events that arrive during a pass are folded into the next).
    LinkEvent,
}

impl Pass {
    pub const ALL: [Pass; 2] = [Pass::Reconcile, Pass::LinkEvent];

    pub fn name(self) -> &'static str {
        match self {
            Pass::Reconcile => "reconcile",
            Pass::LinkEvent => "link_event",
        }
    }
}

struct Record {
    runs: AtomicU64,
    errors: AtomicU64,
    /// Unix time in milliseconds; 0 before the first success.
    last_success_ms: AtomicU64,
}

static RECORDS: [Record; 2] = [
    Record {
        runs: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        last_success_ms: AtomicU64::new(0),
    },
    Record {
        runs: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        last_success_ms: AtomicU64::new(0),
    },
];

fn record(pass: Pass) -> &'static Record {
    &RECORDS[pass as usize]
}

/// Notes one finished pass and whether all of it succeeded.
pub fn finished(pass: Pass, ok: bool) {
    let r = record(pass);
    r.runs.fetch_add(1, Ordering::Relaxed);
    if ok {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        r.last_success_ms.store(now, Ordering::Relaxed);
    } else {
        r.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// One pass kind's figures at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PassStats {
    pub runs: u64,
    pub errors: u64,
    /// Seconds since the epoch of the last success, if any.
    pub last_success: Option<f64>,
}

/// Every pass kind's figures, in [`Pass::ALL`]'s order.
pub fn snapshot() -> Vec<(Pass, PassStats)> {
    Pass::ALL
        .iter()
        .map(|&pass| {
            let r = record(pass);
            let ms = r.last_success_ms.load(Ordering::Relaxed);
            let stats = PassStats {
                runs: r.runs.load(Ordering::Relaxed),
                errors: r.errors.load(Ordering::Relaxed),
                last_success: (ms > 0).then(|| ms as f64 / 1e3),
            };
            (pass, stats)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_count_and_successes_stamp() {
        let before = snapshot()[1].1;
        finished(Pass::LinkEvent, false);
        let failed = snapshot()[1].1;
        assert_eq!(failed.runs, before.runs + 1);
        assert_eq!(failed.errors, before.errors + 1);
        finished(Pass::LinkEvent, true);
        let ok = snapshot()[1].1;
        assert_eq!(ok.errors, failed.errors);
        assert!(ok.last_success.is_some_and(|t| t > 1.7e9), "{ok:?}");
    }
}
