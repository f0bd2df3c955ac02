//! What the churn does next (pure). The churned pods' population climbs
//! through plateaus — 10, 100, 500 and 1,000 live pods, those within
//! `--max-pods` (and `--max-pods` itself) — and at each plateau churns:
//! a random live pod is deleted and a new one added, as many times as the
//! cycles allow; at the end every pod is deleted. A cycle is one pod added
//! and deleted, so the cycles are the ADDs handed out. The mode changes
//! and the one map-layout change are spread over the first 90 % of them.

/// The plateaus, in live churned pods.
pub const LEVELS: [usize; 4] = [10, 100, 500, 1000];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// A new pod: make its namespace, ADD it, probe it.
    Add,
    /// DEL a random live pod that no step is working on.
    Del,
    /// Nothing to hand out until a step in flight ends.
    Wait,
    /// Every cycle added and deleted.
    Done,
}

#[derive(Debug)]
pub struct Schedule {
    levels: Vec<usize>,
    churn_per_level: usize,
    cycles: usize,
    phase: usize,
    churned: usize,
    adds: usize,
}

impl Schedule {
    pub fn new(cycles: usize, max_pods: usize) -> Schedule {
        let top = max_pods.min(cycles).max(1);
        let mut levels: Vec<usize> = LEVELS.iter().copied().filter(|&l| l < top).collect();
        levels.push(top);
        Schedule {
            churn_per_level: (cycles - top.min(cycles)) / levels.len(),
            levels,
            cycles,
            phase: 0,
            churned: 0,
            adds: 0,
        }
    }

    pub fn levels(&self) -> &[usize] {
        &self.levels
    }

    /// The plateau (live churned pods) being churned at: its count holds
    /// while pods are deleted and added; `None` while climbing or at the
    /// end.
    pub fn plateau(&self) -> Option<usize> {
        (self.churned > 0)
            .then(|| self.levels.get(self.phase).copied())
            .flatten()
    }

    /// ADDs handed out so far.
    pub fn adds(&self) -> usize {
        self.adds
    }

    /// The next step, given the `population` (pods being added or live and
    /// not being deleted), how many of them could be deleted now, and how
    /// many steps are in flight. Call it under the same lock that records
    /// the step's pod, so the next call sees it.
    pub fn next(&mut self, population: usize, deletable: usize, in_flight: usize) -> Step {
        let del = || if deletable > 0 { Step::Del } else { Step::Wait };
        loop {
            let Some(&level) = self.levels.get(self.phase) else {
                return match (population, in_flight) {
                    (0, 0) => Step::Done,
                    (0, _) => Step::Wait,
                    _ => del(),
                };
            };
            if population < level && self.adds < self.cycles {
                self.adds += 1;
                return Step::Add;
            }
            if population > level {
                return del();
            }
            let last = self.phase + 1 == self.levels.len();
            let quota = if last {
                usize::MAX
            } else {
                self.churn_per_level
            };
            if self.churned < quota && self.adds < self.cycles {
                if deletable == 0 {
                    return Step::Wait;
                }
                self.churned += 1;
                return Step::Del;
            }
            self.phase += 1;
            self.churned = 0;
        }
    }
}

/// A disturbance during the churn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `vethctl mode set MODE` of the network.
    Mode(&'static str),
    /// Every pinned map of the network given another layout, as a vethctl
    /// of another build would leave them.
    MapLayout,
}

impl Event {
    pub fn label(&self) -> String {
        match self {
            Event::Mode(m) => format!("mode set {m}"),
            Event::MapLayout => "map layouts changed".into(),
        }
    }
}

/// The modes a CNI network accepts, walked from the configuration's (tc)
/// back to it. Never routed <-> bridge directly: that transition can drop a
/// frame or two in any order of steps (`br_add_if` hands the veth's frames
/// to the bridge before the port forwards; docs/design.md, "What a change
/// costs running traffic"), which the soak's zero-loss target would count
/// against the CNI path.
pub const MODE_WALK: [&str; 5] = ["xdp", "routed", "tc", "bridge", "tc"];
/// The configuration's mode, which the network is set back to at the end.
pub const CONFIGURED_MODE: &str = "tc";

/// The events and the ADD count at which each starts: a mode change every
/// ~100 cycles (at least one walk through every mode), the map-layout
/// change halfway, all within the first 90 % of the cycles.
pub fn events(cycles: usize) -> Vec<(usize, Event)> {
    let walks = (cycles / 100).div_ceil(MODE_WALK.len()).max(1);
    let mut list: Vec<Event> = (0..walks * MODE_WALK.len())
        .map(|i| Event::Mode(MODE_WALK[i % MODE_WALK.len()]))
        .collect();
    list.insert(list.len() / 2, Event::MapLayout);
    let span = cycles * 9 / 10;
    let n = list.len();
    list.into_iter()
        .enumerate()
        .map(|(i, e)| ((i + 1) * span / (n + 1), e))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a schedule with steps finishing at once; returns the highest
    /// population and the ADD and DEL counts.
    fn walk(cycles: usize, max_pods: usize) -> (usize, usize, usize, Vec<usize>) {
        let mut s = Schedule::new(cycles, max_pods);
        let (mut population, mut adds, mut dels, mut top) = (0usize, 0, 0, 0);
        let mut seen = Vec::new();
        loop {
            match s.next(population, population, 0) {
                Step::Add => {
                    population += 1;
                    adds += 1;
                }
                Step::Del => {
                    population -= 1;
                    dels += 1;
                }
                Step::Wait => panic!("nothing in flight, yet told to wait"),
                Step::Done => break,
            }
            top = top.max(population);
            if seen.last() != Some(&population) {
                seen.push(population);
            }
        }
        (top, adds, dels, seen)
    }

    #[test]
    fn every_cycle_is_added_and_deleted_through_the_plateaus() {
        let (top, adds, dels, seen) = walk(2000, 1000);
        assert_eq!((top, adds, dels), (1000, 2000, 2000));
        for level in LEVELS {
            assert!(seen.contains(&level), "{level}");
        }
        assert_eq!(Schedule::new(2000, 1000).levels(), &LEVELS);
    }

    #[test]
    fn a_quick_run_churns_at_10_and_at_its_maximum() {
        let s = Schedule::new(100, 40);
        assert_eq!(s.levels(), &[10, 40]);
        let (top, adds, dels, _) = walk(100, 40);
        assert_eq!((top, adds, dels), (40, 100, 100));
        // Fewer cycles than pods: the maximum is the cycles.
        assert_eq!(walk(5, 1000).0, 5);
    }

    #[test]
    fn the_plateau_is_named_only_while_its_count_holds() {
        let mut s = Schedule::new(5, 3);
        for population in 0..3 {
            assert_eq!(s.next(population, population, 0), Step::Add);
            assert_eq!(s.plateau(), None, "climbing");
        }
        assert_eq!(s.next(3, 3, 0), Step::Del);
        assert_eq!(s.plateau(), Some(3), "churning");
        assert_eq!(s.next(2, 2, 0), Step::Add);
        assert_eq!(s.plateau(), Some(3));
        assert_eq!(s.next(3, 3, 0), Step::Del);
        assert_eq!(s.next(2, 2, 0), Step::Add);
        // Every cycle handed out: the pods go, the count falls.
        assert_eq!(s.next(3, 3, 0), Step::Del);
        assert_eq!(s.plateau(), None, "deleting every pod");
    }

    #[test]
    fn nothing_deletable_means_wait_and_the_end_waits_for_steps_in_flight() {
        let mut s = Schedule::new(3, 10);
        assert_eq!(s.next(0, 0, 0), Step::Add);
        assert_eq!(s.next(1, 0, 1), Step::Add);
        assert_eq!(s.next(2, 0, 2), Step::Add);
        assert_eq!(s.next(3, 0, 3), Step::Wait);
        assert_eq!(s.next(3, 1, 2), Step::Del);
        assert_eq!(s.next(0, 0, 1), Step::Wait);
        assert_eq!(s.next(0, 0, 0), Step::Done);
    }

    #[test]
    fn events_walk_every_mode_back_to_tc_with_one_layout_change() {
        let quick = events(100);
        assert_eq!(quick.len(), 6);
        assert_eq!(quick.last().unwrap().1, Event::Mode("tc"));
        assert_eq!(
            quick.iter().filter(|(_, e)| *e == Event::MapLayout).count(),
            1
        );
        assert!(quick.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(quick.iter().all(|(at, _)| *at > 0 && *at <= 90));
        let long = events(2000);
        assert_eq!(long.len(), 21);
        let modes: Vec<&str> = long
            .iter()
            .filter_map(|(_, e)| match e {
                Event::Mode(m) => Some(*m),
                Event::MapLayout => None,
            })
            .collect();
        assert!(
            std::iter::once(CONFIGURED_MODE)
                .chain(modes.iter().copied())
                .collect::<Vec<_>>()
                .windows(2)
                .all(|w| !matches!((w[0], w[1]), ("routed", "bridge") | ("bridge", "routed"))),
            "{modes:?}"
        );
        assert_eq!(long.last().unwrap().1, Event::Mode("tc"));
    }
}
