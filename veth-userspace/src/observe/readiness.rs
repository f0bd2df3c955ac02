//! The agent's `/readyz`: is this node's dataplane able to take pods? Its
//! programs are loaded, its maps agree with the veths (no pod whose veth
//! the maps do not know, none redirected to a device that is not its
//! veth), the CNI networks the agent brought up are still up, and every
//! recorded topology can be read. Each problem is one line saying what is
//! wrong and where.

use std::collections::BTreeMap;

use anyhow::Result;

use crate::{
    dataplane::Pins,
    model::Topology,
    netlink::{links::LinkState, Host},
    observe::{mapped_endpoints, EndpointState},
    state::{self, StateDir},
};

/// What keeps the node from being ready; empty when it is.
pub async fn problems(host: &Host, cni_networks: &[String]) -> Result<Vec<String>> {
    let links: BTreeMap<String, LinkState> = host
        .links()
        .await?
        .into_iter()
        .map(|l| (l.name.clone(), l))
        .collect();
    let recorded = state::recorded_topologies()?;
    let mut problems: Vec<String> = cni_networks
        .iter()
        .filter(|n| !recorded.contains(n))
        .map(|n| format!("CNI network {n:?} is not up (its state is gone)"))
        .collect();
    for name in &recorded {
        match StateDir::new(name).load() {
            Ok(Some(topology)) => {
                let topology = crate::endpoint::with_endpoints(topology);
                problems.extend(topology_problems(&topology, &links));
            }
            Ok(None) => {}
            Err(e) => problems.push(format!("topology {name:?} cannot be read: {e:#}")),
        }
    }
    Ok(problems)
}

/// One topology's problems: its programs are not pinned, or a pod's
/// endpoint is stale or unmapped.
fn topology_problems(topology: &Topology, links: &BTreeMap<String, LinkState>) -> Vec<String> {
    let name = &topology.name;
    let pins = Pins::new(name);
    if !pins.programs_exist() {
        return vec![format!(
            "topology {name:?}: programs are not loaded (no pins under {}); `vethctl up` loads them",
            pins.shown_root().display()
        )];
    }
    let mapped = mapped_endpoints(name);
    topology
        .pods
        .iter()
        .filter_map(|pod| {
            let state = EndpointState::of_pod(&mapped, pod, links.get(&pod.host_veth));
            matches!(state, EndpointState::Stale | EndpointState::Unmapped).then(|| {
                format!(
                    "topology {name:?}: pod {:?} is {} in the maps",
                    pod.display_name(),
                    state.name()
                )
            })
        })
        .collect()
}
