//! A cluster node's part as a CNI network: a configuration whose `name`
//! is the network `vethctl up -t CLUSTER --cluster-node N` brought up on
//! this node adds endpoints to that network as it is (its mode, its node
//! pod range, its cross-node maps and routes, which already cover the
//! whole range), never converging it to the configuration: the file owns
//! the network, the runtime only its endpoints.

use veth_cni_protocol::{CniError, NetConf};

use crate::{
    dataplane::Pins,
    model::Topology,
    state::{self, StateDir},
};

use super::network;

/// The node's part named by `config`, up, and the network's lock held
/// shared for the endpoint work; `None` when the network is no cluster
/// node's part (a CNI network, a one-node topology, or none yet).
pub fn up_part(config: &NetConf) -> Result<Option<(Topology, state::Lock)>, CniError> {
    // Looked at before the lock, which would make the state directory of
    // a network that does not exist; loaded again under it, as an `up` of
    // the node may have changed it.
    if recorded_part(&config.name)?.is_none() {
        return Ok(None);
    }
    let lock = super::shared_lock(&config.name)?;
    let Some(part) = recorded_part(&config.name)? else {
        return Ok(None);
    };
    if !Pins::new(&part.name).programs_exist() {
        return Err(CniError::TryAgainLater {
            reason: format!(
                "cluster node network {:?} is recorded but its programs are not pinned; bring \
                 the node's part up again (`vethctl up -t CLUSTER.toml --cluster-node NODE`)",
                part.name
            ),
        });
    }
    matches(config, &part)?;
    Ok(Some((part, lock)))
}

/// The recorded description of network `name`, if it is a cluster node's
/// part (a `[node]` table, not written by veth-cni).
pub fn recorded_part(name: &str) -> Result<Option<Topology>, CniError> {
    let state = StateDir::new(name);
    match state.load_text().map_err(super::failed)? {
        Some(text) if !network::made_by_cni(&text) => {}
        _ => return Ok(None),
    }
    // An unreadable record is no node's part that we can tell: the CNI
    // path's recovery (a record rebuilt from what carries the network's
    // mark) handles it, as it did before nodes took CNI pods.
    let Ok(topology) = state.load() else {
        return Ok(None);
    };
    Ok(topology.filter(|t| t.node.is_some()))
}

/// A configuration naming a cluster node's part on this node describes
/// it as it is (what `install-cni` checks before writing the list).
pub fn check(config: &NetConf) -> Result<(), CniError> {
    match recorded_part(&config.name)? {
        Some(part) => matches(config, &part),
        None => Ok(()),
    }
}

/// The configuration describes the node's network as the cluster file
/// made it: its pod ranges and mode. Anything else would hand out
/// addresses of another node's range, or wire endpoints unlike the node's
/// pods.
fn matches(config: &NetConf, part: &Topology) -> Result<(), CniError> {
    let ranges = network::ranges(config.ipam.as_ref())?;
    let node = part.node.as_ref().map_or("?", |n| n.name.as_str());
    let fix = |key: &str, what: &str, wanted: String| {
        CniError::invalid_config(
            key,
            format!(
                "{what}, but network {:?} is node {node:?}'s part of a cluster, whose {} is \
                 {wanted}: give the node's (`vethctl status -n {}` shows it; `install-cni` \
                 without --subnet writes it)",
                part.name,
                key.trim_start_matches("ipam."),
                part.name
            ),
        )
    };
    let key4 = ranges.keys.key("pod_cidr").to_string();
    if ranges.v4 != part.pod_cidr {
        return Err(fix(
            &key4,
            &ranges.v4.to_string(),
            part.pod_cidr.to_string(),
        ));
    }
    if ranges.v6.is_some() && ranges.v6 != part.pod_cidr6 {
        let key6 = ranges.keys.key("pod_cidr6").to_string();
        let wanted = part.pod_cidr6.map_or("none".to_string(), |n| n.to_string());
        let given = ranges.v6.map(|n| n.to_string()).unwrap_or_default();
        return Err(fix(&key6, &given, wanted));
    }
    let mode = network::mode(config);
    if mode != part.mode {
        return Err(fix("mode", mode.name(), part.mode.name().to_string()));
    }
    Ok(())
}

/// The MTU of an endpoint of `network` the configuration gives none for:
/// a cluster node's pods' (less VXLAN's overhead when it encapsulates).
pub fn default_mtu(network: &Topology) -> u32 {
    network
        .node
        .as_ref()
        .map_or(crate::model::DEFAULT_MTU, |n| n.pod_mtu())
}
