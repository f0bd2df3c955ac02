//! The one-line verdict below `vethctl status` (`3 pods: 2 ready, 1 down`)
//! and what `status --check` fails on: any pod not ready, or a topology that
//! cannot be read.

use std::fmt;

use super::{EndpointState, StatusReport};

/// Every state, in the order the summary names them.
const STATES: [EndpointState; 5] = EndpointState::ALL;

/// Names shown when `--check` fails; the rest are counted.
const NAMED: usize = 10;

/// `n` things: `1 pod`, `3 pods`, `0 pods`.
pub fn count(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// Pods of a status report by endpoint state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub pods: usize,
    /// Pods per state, in [`STATES`] order.
    pub by_state: [usize; STATES.len()],
    /// `topology/pod (state)` of every pod that is not ready.
    pub not_ready: Vec<String>,
    /// Names of topologies that cannot be read.
    pub unreadable: Vec<String>,
}

impl Summary {
    pub fn of(report: &StatusReport) -> Summary {
        let mut summary = Summary {
            unreadable: report.unreadable.iter().map(|u| u.name.clone()).collect(),
            ..Summary::default()
        };
        for t in &report.topologies {
            for p in &t.pods {
                summary.pods += 1;
                let i = STATES.iter().position(|s| *s == p.endpoint).unwrap_or(0);
                summary.by_state[i] += 1;
                if p.endpoint != EndpointState::Ready {
                    let name = p.k8s.as_ref().unwrap_or(&p.name);
                    summary
                        .not_ready
                        .push(format!("{}/{name} ({})", t.name, p.endpoint.name()));
                }
            }
        }
        summary
    }

    /// Whether every pod is ready and every topology readable.
    pub fn all_ready(&self) -> bool {
        self.not_ready.is_empty() && self.unreadable.is_empty()
    }

    /// What `status --check` says when it fails: which pods and topologies.
    pub fn problems(&self) -> String {
        let mut parts = Vec::new();
        if !self.not_ready.is_empty() {
            let mut names = self.not_ready[..self.not_ready.len().min(NAMED)].join(", ");
            if self.not_ready.len() > NAMED {
                names += &format!(" and {} more", self.not_ready.len() - NAMED);
            }
            parts.push(format!(
                "{} not ready: {names}",
                count(self.not_ready.len(), "pod", "pods")
            ));
        }
        if !self.unreadable.is_empty() {
            parts.push(format!(
                "{} cannot be read: {}",
                count(self.unreadable.len(), "topology", "topologies"),
                self.unreadable.join(", ")
            ));
        }
        parts.join("; ")
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", count(self.pods, "pod", "pods"))?;
        let states: Vec<String> = STATES
            .iter()
            .zip(self.by_state)
            .filter(|(_, n)| *n > 0)
            .map(|(s, n)| format!("{n} {}", s.name()))
            .collect();
        if !states.is_empty() {
            write!(f, ": {}", states.join(", "))?;
        }
        if !self.unreadable.is_empty() {
            write!(f, "; {} unreadable", self.unreadable.len())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::{PodStatus, TopologyStatus, Unreadable};

    fn pod(name: &str, endpoint: EndpointState) -> PodStatus {
        PodStatus {
            name: name.into(),
            k8s: None,
            netns: String::new(),
            ipv4: String::new(),
            ipv6: None,
            pod_ifname: "eth0".into(),
            pod_ifindex: None,
            pod_mac: String::new(),
            host_veth: String::new(),
            host_ifindex: None,
            host_mac: None,
            node: None,
            pair: None,
            up: true,
            endpoint,
            attached: Vec::new(),
        }
    }

    fn report(pods: Vec<PodStatus>) -> StatusReport {
        StatusReport {
            nodes: Vec::new(),
            cluster: None,
            topologies: vec![TopologyStatus {
                name: "demo".into(),
                mode: "tc".into(),
                pod_cidr: String::new(),
                pod_cidr6: None,
                host_address: String::new(),
                host_address6: None,
                pin_dir: String::new(),
                pods,
            }],
            unreadable: Vec::new(),
        }
    }

    #[test]
    fn counts_by_state_and_says_one_pod() {
        use EndpointState::*;
        let all = Summary::of(&report(vec![
            pod("a", Ready),
            pod("b", Ready),
            pod("c", Ready),
        ]));
        assert_eq!(all.to_string(), "3 pods: 3 ready");
        assert!(all.all_ready());
        let one = Summary::of(&report(vec![pod("a", Ready)]));
        assert_eq!(one.to_string(), "1 pod: 1 ready");
        let mixed = Summary::of(&report(vec![
            pod("a", Missing),
            pod("b", Ready),
            pod("c", Down),
        ]));
        assert_eq!(mixed.to_string(), "3 pods: 1 ready, 1 down, 1 missing");
        assert!(!mixed.all_ready());
        assert_eq!(
            mixed.problems(),
            "2 pods not ready: demo/a (missing), demo/c (down)"
        );
        assert_eq!(Summary::of(&report(Vec::new())).to_string(), "0 pods");
    }

    #[test]
    fn an_unreadable_topology_fails_the_check() {
        let mut r = report(vec![pod("a", EndpointState::Ready)]);
        r.unreadable.push(Unreadable {
            name: "old".into(),
            path: String::new(),
            error: String::new(),
            fix: String::new(),
        });
        let s = Summary::of(&r);
        assert_eq!(s.to_string(), "1 pod: 1 ready; 1 unreadable");
        assert!(!s.all_ready());
        assert_eq!(s.problems(), "1 topology cannot be read: old");
    }

    #[test]
    fn long_lists_are_cut() {
        let pods = (0..13)
            .map(|i| pod(&format!("p{i}"), EndpointState::Down))
            .collect();
        let s = Summary::of(&report(pods));
        assert!(
            s.problems().ends_with("demo/p9 (down) and 3 more"),
            "{}",
            s.problems()
        );
        assert_eq!(count(2, "pod", "pods"), "2 pods");
    }
}
