//! `veth-cni`: the dataplane as a CNI plugin, over [`veth_cni_protocol`]
//! (the protocol, pure) and [`crate::endpoint`] (the work).
//!
//! One node network per configuration `name` ([`network::network`]): the
//! first ADD (or `vethctl agent --cni-conf`) brings it up — programs
//! loaded and pinned, node address, masquerade, unreachable routes — under
//! the global lock and the network's, exclusively; every ADD and DEL after
//! that holds only the network's lock, shared, and does endpoint work, so
//! many run at once. A configuration
//! that changes (another mode) converges the network, and its endpoints
//! with it, on the next ADD.

pub mod cluster_node;
pub mod install;
pub mod ipam;
pub mod network;
pub mod node_lease;
pub mod uninstall;

use std::{collections::BTreeSet, net::IpAddr};

use ipnet::IpNet;
use veth_cni_protocol::{
    CniError, CniResult, CniVersion, Dns, Interface, IpConfig, NetConf, Plugin, Request, Route,
};

use crate::{
    apply,
    dataplane::Pins,
    endpoint::{self, wire, AddressSource, EndpointError, Record, Store},
    model::{format_mac, gateway_ipv6, K8sPod, Mode, ModelError, TcAttach, Topology, GATEWAY_IPV4},
    netlink::Host,
    preflight, privileges,
    state::{self, StateDir},
};

/// The plugin.
pub struct VethCni;

/// The `veth-cni` binary: reads stdin, runs the verb in the `CNI_*`
/// variables, writes the result or error, and exits with its code. A
/// function here so that the integration tests' copy of the binary runs
/// exactly this code.
pub fn main() -> ! {
    use std::io::Write;
    // Keeps the marker in the binary: `uninstall-cni` looks for it.
    std::hint::black_box(uninstall::PLUGIN_MARKER);
    let stdin = veth_cni_protocol::read_stdin(std::io::stdin());
    let out = veth_cni_protocol::run(std::env::vars_os(), &stdin, &VethCni);
    for line in &out.stderr {
        eprintln!("veth-cni: {line}");
        log::warn!("{line}");
    }
    // The runtime reads stdout; if it went away there is no one to tell.
    let _ = std::io::stdout().write_all(&out.stdout);
    let _ = std::io::stdout().flush();
    std::process::exit(out.exit_code);
}

impl Plugin for VethCni {
    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        logged(req, || {
            privileged()?;
            block_on(add(req))
        })
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        logged(req, || {
            privileged()?;
            block_on(del(req))
        })
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        logged(req, || {
            privileged()?;
            block_on(check(req))
        })
    }

    fn status(&self, req: &Request) -> Result<(), CniError> {
        logged(req, || {
            privileges::require("veth-cni", privileges::CHANGE).map_err(|e| {
                CniError::NotAvailable {
                    reason: e.to_string(),
                }
            })?;
            status(req)
        })
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        logged(req, || {
            privileged()?;
            block_on(gc(req))
        })
    }
}

/// Runs a verb's `work` with the log its configuration asks for, the
/// start and the outcome logged.
fn logged<T>(req: &Request, work: impl FnOnce() -> Result<T, CniError>) -> Result<T, CniError> {
    let attachment = req.env.attachment.as_ref();
    let id = attachment.map(|a| a.container_id.to_string());
    crate::logging::init_cni(&req.config.log, req.command().as_str(), id.as_deref());
    let name = &req.config.name;
    match attachment {
        Some(a) => log::debug!(
            "network {name:?}: ifname {} netns {}",
            a.ifname,
            a.netns
                .as_deref()
                .unwrap_or(std::path::Path::new("-"))
                .display()
        ),
        None => log::debug!("network {name:?}"),
    }
    let outcome = work();
    match &outcome {
        Ok(_) => log::info!("network {name:?}: done"),
        Err(e) => log::error!("network {name:?}: failed (code {}): {e}", e.code()),
    }
    outcome
}

/// Our code for "run without the privileges it needs" (the runtime runs
/// plugins as root; a plugin run by hand may not be).
pub const CODE_PRIVILEGES: u32 = 101;

/// Refuses, before anything is touched, to run without what ADD, DEL,
/// CHECK and GC need; then closes up state an older vethctl left open.
fn privileged() -> Result<(), CniError> {
    privileges::require("veth-cni", privileges::CHANGE).map_err(|e| CniError::Plugin {
        code: CODE_PRIVILEGES,
        msg: e.to_string(),
        details: String::new(),
    })?;
    state::secure_state_root().map_err(failed)
}

fn block_on<T>(
    work: impl std::future::Future<Output = Result<T, CniError>>,
) -> Result<T, CniError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::internal(format!("starting the runtime: {e}")))?
        .block_on(work)
}

/// Our failures as the spec's error result: the chain in `msg` (runtimes
/// show it), the kind as the code.
fn cni_error(e: EndpointError) -> CniError {
    match e {
        EndpointError::InvalidConfig { field, message } => CniError::invalid_config(field, message),
        EndpointError::InvalidNetns { path, reason } => {
            CniError::invalid_env("CNI_NETNS", path, reason)
        }
        EndpointError::TryAgain(reason) => CniError::TryAgainLater { reason },
        EndpointError::Conflict(msg) => CniError::internal(msg),
        EndpointError::Failed(e) => CniError::internal(format!("{e:#}")),
    }
}

/// `e` as a CNI error of its kind (a refused description is code 7).
fn failed(e: anyhow::Error) -> CniError {
    cni_error(EndpointError::from(e))
}

/// Network `name`'s lock, shared: endpoint work of many ADDs and DELs at
/// once, none during a change of the whole network.
fn shared_lock(name: &str) -> Result<state::Lock, CniError> {
    state::network_lock(name, state::Hold::Shared, true)
        .map_err(failed)?
        .ok_or_else(|| CniError::internal("a blocking lock returned without the lock"))
}

/// How a network stands against the description `source` of its
/// configuration.
enum Standing {
    /// Up as `source` describes it, its programs pinned and its maps in
    /// this vethctl's layouts (after an upgrade that changed one, the
    /// first ADD remakes them, as `up` does).
    Current,
    /// Up as `source` describes it but in another mode (`vethctl mode
    /// set`), its endpoints being rewired for that mode now: endpoint work
    /// wires for the network as recorded (this topology), and the first
    /// ADD after the rewire converges the network back. Converging it now
    /// would wait for the whole rewire.
    ModeSet(Box<Topology>),
    /// Its endpoints being rewired onto or off its bridge. Endpoint work
    /// waits for the rewire to end: a pod wired for the new mode does not
    /// reach those not rewired yet, on-link through the bridge or routed
    /// around it (run beside such a rewire, 5 of 2,000 pods in `cargo
    /// xtask soak` found their neighbour unanswering for over 3 s).
    AcrossBridge,
    /// Anything else (not up, another configuration, a rewire abandoned):
    /// brought up again.
    Stale,
}

fn standing(network: &Topology, source: &str) -> Standing {
    let name = &network.name;
    let state = StateDir::new(name);
    let Ok(Some(recorded)) = state.load_text() else {
        return Standing::Stale;
    };
    if !Pins::new(name).programs_exist()
        || !crate::dataplane::maps_current(name)
        || state::rewire_abandoned(name).unwrap_or(true)
    {
        return Standing::Stale;
    }
    if state.rewire_across_bridge() && state::rewire_running(name).unwrap_or(false) {
        return Standing::AcrossBridge;
    }
    if recorded == source {
        return Standing::Current;
    }
    let mode_set = Topology::from_toml(&recorded)
        .ok()
        .and_then(|t| crate::model::with_mode(source, t.mode).ok())
        .filter(|(_, text)| *text == recorded);
    match mode_set {
        Some((topology, _)) if state::rewire_running(name).unwrap_or(false) => {
            Standing::ModeSet(Box::new(topology))
        }
        _ => Standing::Stale,
    }
}

/// How long an ADD waits for another change of its network to end before
/// it answers "try again later".
const WAIT_FOR_A_CHANGE: std::time::Duration = std::time::Duration::from_secs(300);

/// Brings the network up (or converges it to a changed configuration)
/// unless it is current, and returns the network endpoint work wires for
/// (see [`Standing`]) with the shared lock it holds.
async fn ensure_network(
    host: &Host,
    config: &NetConf,
    network: &Topology,
    source: &str,
    ipam: &AddressSource,
) -> Result<(Topology, state::Lock), CniError> {
    let deadline = std::time::Instant::now() + WAIT_FOR_A_CHANGE;
    let mut converged = 0;
    loop {
        let shared = shared_lock(&network.name)?;
        match standing(network, source) {
            Standing::Current => return Ok((network.clone(), shared)),
            Standing::ModeSet(recorded) => return Ok((*recorded, shared)),
            Standing::AcrossBridge => {
                drop(shared);
                // Held for as long as the rewire runs.
                drop(state::rewire_lock(&network.name, true).map_err(failed)?);
                continue;
            }
            Standing::Stale => drop(shared),
        }
        // A change running (its rewire lock held) may be bringing the
        // network to this very configuration (another ADD converging it):
        // wait until it has recorded that, not behind its whole endpoint
        // rewire (every ADD that found the network stale queued there).
        let Some(rewire) = state::rewire_lock(&network.name, false).map_err(failed)? else {
            if std::time::Instant::now() > deadline {
                return Err(still_changing(
                    &network.name,
                    "another change of it is running",
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        };
        if converged == 3 {
            return Err(still_changing(
                &network.name,
                "it keeps changing under this ADD (another configuration of the same name?)",
            ));
        }
        converged += 1;
        converge(host, config, network, source, ipam, rewire).await?;
    }
}

fn still_changing(name: &str, why: &str) -> CniError {
    CniError::TryAgainLater {
        reason: format!("network {name:?}: {why}"),
    }
}

/// Brings the network up as `source` describes it, holding its `rewire`
/// lock (see [`state::rewire_lock`]), unless it became current meanwhile.
async fn converge(
    host: &Host,
    config: &NetConf,
    network: &Topology,
    source: &str,
    ipam: &AddressSource,
    rewire: state::Lock,
) -> Result<(), CniError> {
    {
        // Checked under the exclusive lock: beside an `up` in progress
        // (another ADD bringing the network up), its objects made so
        // far looked like someone else's (concurrent first ADDs on a
        // fresh node failed with code 7).
        let _exclusive = state::lock().map_err(failed)?;
        // This ADD holds the rewire lock: a rewire owed now is its own to
        // do. (`standing`'s probe would meet that lock, take the rewire
        // for running, and call a network whose record is the
        // configuration's current: with a converging ADD killed half way
        // through its rewire, every later ADD converged three times without
        // doing it and answered "try again later", until a `mode set`.)
        let owed = StateDir::new(&network.name).rewire_owed();
        if !owed && matches!(standing(network, source), Standing::Current) {
            return Ok(());
        }
        recover_record(host, network, ipam).await?;
        refuse_foreign_topology(&network.name)?;
        preflight::check(host, network).await.map_err(|e| {
            match e.downcast_ref::<ModelError>() {
                // A range that clashes: in the configuration's words.
                Some(clash) => network::keys(config).error(clash),
                None => failed(e),
            }
        })?;
    }
    apply::up_with_rewire_lock(network, source, apply::UpOptions::default(), rewire)
        .await
        .map_err(|e| failed(e.context(format!("bringing network {:?} up", network.name))))?;
    Ok(())
}

/// A network whose record (`/run/vethctl/<name>`) is gone gets it back
/// from what carries its mark in the kernel ([`crate::recover`]), its
/// endpoints' addresses taken in the pool again, before anything decides
/// what is the network's own.
async fn recover_record(
    host: &Host,
    network: &Topology,
    ipam: &AddressSource,
) -> Result<(), CniError> {
    let _network =
        state::network_lock(&network.name, state::Hold::Exclusive, true).map_err(failed)?;
    let rebuilt = crate::recover::rebuild_if_lost(host, &network.name, ipam.clone())
        .await
        .map_err(failed)?;
    for record in rebuilt.map(|r| r.endpoints).unwrap_or_default() {
        if record.addresses == AddressSource::Builtin {
            ipam::pool(network)
                .claim(&record.key(), record.ipv4)
                .map_err(failed)?;
        }
    }
    Ok(())
}

/// Where a configuration's addresses come from.
fn address_source(ipam: Option<&veth_cni_protocol::Ipam>) -> AddressSource {
    match ipam {
        Some(veth_cni_protocol::Ipam::Delegated(d)) => AddressSource::Delegated {
            plugin: d.plugin.clone(),
        },
        _ => AddressSource::Builtin,
    }
}

/// Brings up the network of a configuration list (`vethctl agent
/// --cni-conf`), so that its programs are loaded before the first pod
/// starts; returns its name. A network that is current is left alone.
pub async fn bring_up(list: &serde_json::Value) -> anyhow::Result<String> {
    let conf = install::validate(list)?;
    let (network, source) = network::network(&conf).map_err(|e| anyhow::anyhow!("{e}"))?;
    if cluster_node::up_part(&conf)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .is_some()
    {
        // A cluster node's part: `up --cluster-node` brought it up.
        return Ok(network.name);
    }
    let host = Host::connect()?;
    ensure_network(
        &host,
        &conf,
        &network,
        &source,
        &address_source(conf.ipam.as_ref()),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(network.name)
}

/// A topology of this name that veth-cni did not make (brought up from a
/// file): converging it to the configuration would remove its pods.
fn refuse_foreign_topology(name: &str) -> Result<(), CniError> {
    match StateDir::new(name).load_text().map_err(failed)? {
        Some(text) if !network::made_by_cni(&text) => Err(CniError::invalid_config(
            "name",
            format!(
                "{name:?} is a vethctl topology that was not made by veth-cni (`vethctl status \
                 -n {name}`); this ADD would replace it with the configuration's network and \
                 remove its pods: give the configuration another name, or take the topology \
                 down first (`vethctl down -n {name}`)"
            ),
        )),
        _ => Ok(()),
    }
}

/// The Kubernetes pod of an ADD, its names checked against Kubernetes'
/// rules: they are shown (`vethctl status`, metrics labels, traces), and a
/// name with escape sequences or newlines rewrote what a terminal showed.
fn k8s_of(req: &Request) -> Result<Option<K8sPod>, CniError> {
    let args = &req.attachment()?.args;
    args.validate_k8s_names()?;
    let Some(name) = args.pod_name.clone() else {
        return Ok(None);
    };
    Ok(Some(K8sPod {
        namespace: args.pod_namespace.clone().unwrap_or_default(),
        name,
        uid: args.pod_uid.clone().unwrap_or_default(),
    }))
}

async fn add(req: &Request) -> Result<CniResult, CniError> {
    let attachment = req.attachment()?;
    let netns = req.netns()?.to_str().unwrap_or_default().to_string();
    let (network, source) = network::network(&req.config)?;
    // A cluster node's pods only while it holds its lease: before anything
    // is touched or an address taken.
    node_lease::require_held(&req.config)?;
    let k8s = k8s_of(req)?;
    // The chained `bandwidth` plugin shapes what leaves the pod with the
    // `ingress` qdisc of its host veth, which a `clsact` qdisc excludes.
    let tc_attach = match req.config.runtime_config.bandwidth {
        Some(_) => TcAttach::Tcx,
        None => network::tc_attach(&req.config)?,
    };
    let host = Host::connect().map_err(failed)?;
    let ipam = address_source(req.config.ipam.as_ref());
    let (network, _lock) = match cluster_node::up_part(&req.config)? {
        Some(part) => part,
        None => ensure_network(&host, &req.config, &network, &source, &ipam).await?,
    };
    let (container_id, ifname) = (attachment.container_id.as_str(), attachment.ifname.as_str());
    let key = endpoint::key(container_id, ifname);
    let store = Store::new(&network.name);
    let _attachment = store.lock(&key).map_err(failed)?;
    let mut record = Record {
        container_id: container_id.to_string(),
        ifname: ifname.to_string(),
        netns,
        host_veth: endpoint::host_veth_name(&network.name, container_id, ifname),
        host_ifindex: None,
        ipv4: std::net::Ipv4Addr::UNSPECIFIED,
        ipv6: None,
        mtu: req
            .config
            .mtu
            .unwrap_or_else(|| cluster_node::default_mtu(&network)),
        k8s,
        addresses: AddressSource::Builtin,
        host_path: !req.config.runtime_config.port_mappings.is_empty()
            || req.config.runtime_config.bandwidth.is_some(),
        tc_attach,
    };
    if let Some(existing) = store.load(container_id, ifname).map_err(failed)? {
        if let Some(same) = existing_attachment(&host, &network, &existing, &record).await? {
            return Ok(result(req, &network, &same));
        }
    }
    let (addresses, addresses_from) = ipam::allocate(req, &network, &key)?;
    (record.ipv4, record.ipv6, record.addresses) =
        (addresses.ipv4, addresses.ipv6, addresses_from.clone());
    let outcome = match refuse_taken(&network, &key, &addresses, &addresses_from) {
        Ok(()) => wire::add(&host, &network, &mut record)
            .await
            .map_err(cni_error),
        Err(e) => Err(e),
    };
    if let Err(e) = outcome {
        release_unowned(req, &store, &record, &key);
        return Err(e);
    }
    Ok(result(req, &network, &record))
}

/// After a failed ADD: the attachment's addresses go back only if no
/// record owns them (the undo took this ADD's record away, or there was
/// none). A record still there is an endpoint made before, whose
/// addresses this ADD must not free.
fn release_unowned(req: &Request, store: &Store, record: &Record, key: &str) {
    match store.load(&record.container_id, &record.ifname) {
        Ok(None) => {
            if let Err(undo) = ipam::release(req, &req.config.name, key, &record.addresses) {
                log::error!("giving {key}'s addresses back after a failed ADD: {undo}");
            }
        }
        Ok(Some(_)) => {}
        Err(e) => log::error!("keeping {key}'s addresses after a failed ADD: {e:#}"),
    }
}

/// An ADD of an attachment that has a record (a runtime retrying, or two
/// ADDs of one container id, which [`Store::lock`] runs one after the
/// other). Another namespace is refused: the spec makes an attachment
/// `(container id, ifname)` one interface in one namespace, and taking
/// it over deleted the first pod's interface (unless that namespace is
/// gone). The same namespace and
/// request, with the endpoint as recorded, is answered from the record
/// (the same result, nothing touched); anything else (a crashed ADD, a
/// changed configuration) is made again.
async fn existing_attachment(
    host: &Host,
    network: &Topology,
    existing: &Record,
    wanted: &Record,
) -> Result<Option<Record>, CniError> {
    // A namespace that is gone took the first pod's interface with it:
    // nothing is left to protect, and the endpoint is made again.
    let alive = crate::netlink::netns::exists(&existing.netns);
    if alive && !same_namespace(&existing.netns, &wanted.netns) {
        return Err(CniError::invalid_env(
            "CNI_NETNS",
            wanted.netns.clone(),
            format!(
                "container {:?} already has interface {} in network {:?}, in namespace {}; an                  attachment (container id, interface name) is one interface in one namespace:                  DEL it first, or give this one another container id or CNI_IFNAME",
                existing.container_id, existing.ifname, network.name, existing.netns
            ),
        ));
    }
    let same_request = existing.mtu == wanted.mtu
        && existing.k8s == wanted.k8s
        && existing.host_path == wanted.host_path
        && existing.tc_attach == wanted.tc_attach;
    if same_request && wire::check(host, network, existing).await.is_ok() {
        return Ok(Some(existing.clone()));
    }
    Ok(None)
}

/// Whether two namespace paths are one namespace (the same path, or two
/// paths of one nsfs inode: `/var/run/netns/x` and `/run/netns/x`).
fn same_namespace(a: &str, b: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let id = |p: &str| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    a == b || id(a).is_some_and(|a| Some(a) == id(b))
}

/// Addresses a delegated IPAM handed out that the network already uses
/// (a `static` address given twice, a host-local whose dataDir was lost):
/// another pod's would take its map entry and host route, the node's its
/// traffic. The built-in pool never does this. Checked against the
/// records; two such ADDs at the very same moment are not caught.
fn refuse_taken(
    network: &Topology,
    key: &str,
    addresses: &ipam::Addresses,
    source: &AddressSource,
) -> Result<(), CniError> {
    let plugin = match source {
        AddressSource::Delegated { plugin } => plugin.as_str(),
        AddressSource::Builtin => return Ok(()),
    };
    let ours: Vec<IpAddr> = std::iter::once(IpAddr::V4(addresses.ipv4))
        .chain(addresses.ipv6.map(IpAddr::V6))
        .collect();
    let node: Vec<IpAddr> = std::iter::once(IpAddr::V4(network.host_address))
        .chain(network.host_address6.map(IpAddr::V6))
        .collect();
    if let Some(ip) = ours.iter().find(|ip| node.contains(ip)) {
        return Err(CniError::invalid_config(
            "ipam",
            format!(
                "{plugin} gave {ip}, the node's own address in network {:?}; configure it to \
                 leave that address out (host-local: give the range that gateway)",
                network.name
            ),
        ));
    }
    for other in Store::new(&network.name).records() {
        let theirs = [Some(IpAddr::V4(other.ipv4)), other.ipv6.map(IpAddr::V6)];
        if let Some(ip) = ours.iter().find(|ip| theirs.contains(&Some(**ip))) {
            if other.key() != key {
                return Err(CniError::invalid_config(
                    "ipam",
                    format!(
                        "{plugin} gave {ip}, which endpoint {} of network {:?} already has; \
                         two pods with one address take each other's traffic: fix the IPAM \
                         configuration (an address given twice, or a dataDir that lost its \
                         reservations)",
                        other.key(),
                        network.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// What an ADD made, for the runtime and the plugins chained after us
/// (`portmap` takes the pod's addresses, `bandwidth` the host interface).
pub fn result(req: &Request, network: &Topology, record: &Record) -> CniResult {
    let pod = record.pod();
    let bridged = network.mode == Mode::Bridge;
    let mut ips = vec![IpConfig {
        address: IpNet::new(
            IpAddr::V4(record.ipv4),
            if bridged {
                network.pod_cidr.prefix_len()
            } else {
                32
            },
        )
        .expect("a valid prefix length"),
        gateway: Some(IpAddr::V4(if bridged {
            network.host_address
        } else {
            GATEWAY_IPV4
        })),
        interface: Some(1),
    }];
    let mut routes = vec![Route::new("0.0.0.0/0".parse().expect("a CIDR"), None)];
    if let Some(v6) = record.ipv6 {
        let prefix = network.pod_cidr6.map_or(128, |n| n.prefix_len());
        ips.push(IpConfig {
            address: IpNet::new(IpAddr::V6(v6), if bridged { prefix } else { 128 })
                .expect("a valid prefix length"),
            gateway: if bridged {
                network.host_address6.map(IpAddr::V6)
            } else {
                Some(IpAddr::V6(gateway_ipv6()))
            },
            interface: Some(1),
        });
        routes.push(Route::new("::/0".parse().expect("a CIDR"), None));
    }
    let dns = match (&req.config.dns, &req.config.runtime_config.dns) {
        (Some(dns), _) => dns.clone(),
        (None, Some(rt)) => Dns {
            nameservers: rt.servers.clone(),
            domain: None,
            search: rt.searches.clone(),
            options: rt.options.clone(),
        },
        (None, None) => Dns::default(),
    };
    CniResult {
        interfaces: vec![
            Interface {
                name: record.host_veth.clone(),
                mac: Some(format_mac(&pod.gateway_mac)),
                ..Interface::default()
            },
            Interface {
                name: record.ifname.clone(),
                mac: Some(format_mac(&pod.mac)),
                mtu: Some(record.mtu),
                sandbox: Some(record.netns.clone()),
                ..Interface::default()
            },
        ],
        ips,
        routes,
        dns,
    }
}

async fn del(req: &Request) -> Result<(), CniError> {
    let attachment = req.attachment()?;
    let name = req.config.name.clone();
    let (container_id, ifname) = (attachment.container_id.as_str(), attachment.ifname.as_str());
    let key = endpoint::key(container_id, ifname);
    // A name that cannot be a network's: nothing of ours exists for it.
    let valid = crate::model::validate_topology_name(&name).is_ok();
    let _locks = if valid {
        let network = shared_lock(&name)?;
        // Not for a network that is not up: the lock would make its state
        // directory.
        let attachment = match StateDir::new(&name).exists() {
            true => Some(Store::new(&name).lock(&key).map_err(failed)?),
            false => None,
        };
        Some((network, attachment))
    } else {
        None
    };
    let record = if valid {
        match Store::new(&name).load(container_id, ifname) {
            Ok(Some(record)) => Some(record),
            // A record rebuilt from the kernel ([`crate::recover`]) is
            // keyed by its host veth, whose name the attachment gives.
            Ok(None) => crate::recover::recovered_endpoint(
                &name,
                &endpoint::host_veth_name(&name, container_id, ifname),
            ),
            // An unreadable record must not block the pod's removal
            // forever: what the attachment's names point at goes instead.
            Err(e) => {
                log::warn!("{e:#}; removing what the attachment's names point at");
                let host = Host::connect().map_err(failed)?;
                Some(stand_in(&host, req, &name).await.map_err(failed)?)
            }
        }
    } else {
        None
    };
    if let Some(record) = &record {
        let host = Host::connect().map_err(failed)?;
        wire::remove(&host, &name, record).await.map_err(failed)?;
    }
    // Addresses are given back even without a record (an ADD that crashed
    // between allocating and recording): both ways are idempotent.
    let source = match (&record, &req.config.ipam) {
        (Some(r), _) => Some(r.addresses.clone()),
        (None, Some(veth_cni_protocol::Ipam::Delegated(d))) => Some(AddressSource::Delegated {
            plugin: d.plugin.clone(),
        }),
        (None, Some(_)) => Some(AddressSource::Builtin),
        (None, None) => None,
    };
    if let Some(source) = source {
        if crate::model::validate_topology_name(&name).is_ok()
            || !matches!(source, AddressSource::Builtin)
        {
            let key = record.as_ref().map_or(key, Record::key);
            ipam::release(req, &name, &key, &source)?;
        }
    }
    Ok(())
}

/// The record of `req`'s attachment as far as its names and the
/// configuration tell, for a DEL whose record cannot be read: the host
/// side by its name (its ifindex only if it carries the network's mark;
/// [`wire::remove`] deletes nothing else), the addresses' source from the
/// configuration. The record file itself goes with it.
async fn stand_in(host: &Host, req: &Request, network: &str) -> anyhow::Result<Record> {
    let attachment = req.attachment()?;
    let (container_id, ifname) = (attachment.container_id.as_str(), attachment.ifname.as_str());
    let host_veth = endpoint::host_veth_name(network, container_id, ifname);
    let mut host_ifindex = None;
    if let Some(link) = host.link(&host_veth).await? {
        let mark = state::link_mark(network);
        if host.alias(link.ifindex).await?.as_deref() == Some(mark.as_str()) {
            host_ifindex = Some(link.ifindex);
        }
    }
    Ok(Record {
        container_id: container_id.to_string(),
        ifname: ifname.to_string(),
        netns: String::new(),
        host_veth,
        host_ifindex,
        ipv4: std::net::Ipv4Addr::UNSPECIFIED,
        ipv6: None,
        mtu: 0,
        k8s: None,
        addresses: match &req.config.ipam {
            Some(veth_cni_protocol::Ipam::Delegated(d)) => AddressSource::Delegated {
                plugin: d.plugin.clone(),
            },
            _ => AddressSource::Builtin,
        },
        host_path: false,
        // Unused: DEL deletes the veth, and its filters go with it.
        tc_attach: TcAttach::default(),
    })
}

async fn check(req: &Request) -> Result<(), CniError> {
    let attachment = req.attachment()?;
    let (network, _) = network::network(&req.config)?;
    let (network, _lock) = match cluster_node::up_part(&req.config)? {
        Some(part) => part,
        None => (network, shared_lock(&req.config.name)?),
    };
    let record = Store::new(&network.name)
        .load(attachment.container_id.as_str(), attachment.ifname.as_str())
        .map_err(failed)?
        .ok_or_else(|| CniError::UnknownContainer {
            container_id: attachment.container_id.to_string(),
            reason: format!(
                "network {:?} has no endpoint for interface {}",
                network.name, attachment.ifname
            ),
        })?;
    if let Some(prev) = &req.config.prev_result {
        let listed: BTreeSet<IpAddr> = prev.ips.iter().map(|ip| ip.address.addr()).collect();
        let ours = std::iter::once(IpAddr::V4(record.ipv4)).chain(record.ipv6.map(IpAddr::V6));
        for ip in ours {
            if !listed.contains(&ip) {
                return Err(CniError::internal(format!(
                    "prevResult does not list {ip}, the address of {}",
                    record.key()
                )));
            }
        }
    }
    let host = Host::connect().map_err(failed)?;
    wire::check(&host, &network, &record)
        .await
        .map_err(cni_error)?;
    if let Some(veth_cni_protocol::Ipam::Delegated(d)) = &req.config.ipam {
        ipam::exec(req, &d.plugin, "CHECK", &[])?;
    }
    Ok(())
}

/// Ready for ADDs (the privileges were checked): on a cluster node, its
/// lease held ([`node_lease`]); once the network is up, its programs still
/// pinned (without them its pods are not forwarded: code 51).
fn status(req: &Request) -> Result<(), CniError> {
    // A configuration every ADD would refuse (a name too long for a
    // network, no IPv4 range) is refused here too, not reported ready.
    network::network(&req.config)?;
    node_lease::require_held(&req.config)?;
    let name = &req.config.name;
    let state = StateDir::new(name);
    if state.exists() && !Pins::new(name).programs_exist() {
        let endpoints = Store::new(name).records().len();
        let reason = format!(
            "network {name:?} is recorded but its eBPF programs are not pinned under {} \
             (bpffs remounted?); run `vethctl up --repair -n {name}` or let the next ADD load them",
            Pins::new(name).shown_root().display()
        );
        return Err(if endpoints > 0 {
            CniError::LimitedConnectivity { reason }
        } else {
            CniError::NotAvailable { reason }
        });
    }
    Ok(())
}

/// Removes every endpoint of the network that the runtime no longer lists,
/// gives back their addresses, and passes the list on to a delegated IPAM.
async fn gc(req: &Request) -> Result<(), CniError> {
    let name = req.config.name.clone();
    let valid: BTreeSet<String> = req
        .config
        .valid_attachments
        .iter()
        .flatten()
        .map(|a| endpoint::key(&a.container_id, &a.ifname))
        .collect();
    if crate::model::validate_topology_name(&name).is_err() {
        return Ok(());
    }
    // Exclusive: an ADD in flight is not in the runtime's list yet.
    let _lock = state::network_lock(&name, state::Hold::Exclusive, true).map_err(failed)?;
    let host = Host::connect().map_err(failed)?;
    let store = Store::new(&name);
    let (records, unreadable) = store.all().map_err(failed)?;
    for (path, e) in &unreadable {
        log::warn!("skipping {}: {e:#}", path.display());
    }
    // A record rebuilt from the kernel is the attachment whose host veth
    // it has.
    let valid_veths: BTreeSet<String> = req
        .config
        .valid_attachments
        .iter()
        .flatten()
        .map(|a| endpoint::host_veth_name(&name, &a.container_id, &a.ifname))
        .collect();
    let mut kept = BTreeSet::new();
    for record in records {
        if valid.contains(&record.key()) || valid_veths.contains(&record.host_veth) {
            kept.insert(record.key());
            continue;
        }
        // Its lock goes with the record (see `Store::lock`).
        let _attachment = store.lock(&record.key()).map_err(failed)?;
        wire::remove(&host, &name, &record).await.map_err(failed)?;
        if let AddressSource::Delegated { plugin } = &record.addresses {
            // Each gone attachment's DEL first: a plugin without GC (before
            // CNI 1.1.0) still frees it.
            let vars = [
                ("CNI_CONTAINERID", record.container_id.as_str()),
                ("CNI_IFNAME", record.ifname.as_str()),
                ("CNI_NETNS", ""),
            ];
            if let Err(e) = ipam::exec(req, plugin, "DEL", &vars) {
                log::warn!("{plugin} DEL of {}: {e}", record.key());
            }
        }
    }
    ipam::release_builtin(&name, |key| valid.contains(key) || kept.contains(key))?;
    if let Some(veth_cni_protocol::Ipam::Delegated(d)) = &req.config.ipam {
        // A plugin from before GC (Debian's host-local 1.1.1) fails it
        // ("missing containerID"): the DELs above did its part.
        let versions = ipam::supported_versions(req, &d.plugin)?;
        if versions.iter().any(|v| v == CniVersion::V1_1_0.as_str()) {
            ipam::exec(req, &d.plugin, "GC", &[])?;
        } else {
            log::info!(
                "{} speaks {versions:?}, which have no GC; the DELs of the attachments gone \
                 freed their addresses",
                d.plugin
            );
        }
    }
    Ok(())
}
