//! The only place that touches aya: loading the programs, pinning them and
//! their maps under `/sys/fs/bpf/vethctl/<topology>/`, attaching them to
//! host-side veths with TCX, writing endpoints and reading counters.
//!
//! Everything is pinned, so forwarding goes on after `vethctl` exits and the
//! next `vethctl` finds (and reuses) the same maps: counters survive `up`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

pub mod cross_node;
pub mod health;
pub mod lab;
pub mod reference;

use crate::model::{Mode, TcAttach};
use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{Array, DevMapHash, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues},
    programs::{
        links::FdLink,
        tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcAttachType, TcError, TcHandle},
        ProgramError, SchedClassifier, Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use nix::{
    mount::{mount, MsFlags},
    sys::statfs::{statfs, FsType},
};
use veth_common::{
    endpoint_hint_v4, endpoint_hint_v6, ipv4_key,
    names::{
        GLOBAL_COUNTERS_ENABLED, GLOBAL_REDIRECT_ENABLED, MAP_CROSS_NODE, MAP_DEVMAP,
        MAP_ENDPOINTS, MAP_ENDPOINTS6, MAP_ENDPOINT_HINTS, MAP_NODES, MAP_PAIR_COUNTERS, MAP_PODS,
        MAP_REMOTE_ROUTES, MAP_REMOTE_ROUTES6, MAP_SLOTS, MAP_SLOT_HINTS, MAP_TRACE_CONFIG,
        MAP_TRACE_EVENTS, MAP_TRACE_IDLE, MAP_UNDERLAY_COUNTERS, PROG_FROM_POD, PROG_FROM_TUNNEL,
        PROG_FROM_UNDERLAY, PROG_TO_POD, PROG_XDP_FROM_POD,
    },
    slot_hint_index, Endpoint, PairCounters, PodIdentity, TraceConfig, UNKNOWN_VETH_SLOT,
};

/// The eBPF object, built by build.rs from the veth-ebpf crate.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/veth-ebpf.o"));

/// The eBPF object this vethctl loads, for tests and benchmarks that run
/// its programs privately (`BPF_PROG_TEST_RUN`), never attached.
pub fn object() -> &'static [u8] {
    OBJECT
}

pub const BPFFS: &str = crate::node::HOST_BPFFS;
/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: FsType = FsType(0xcafe_4a11);

/// A pod as the dataplane maps know it.
#[derive(Clone, Debug)]
pub struct PodEntry {
    pub host_ifindex: u32,
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<std::net::Ipv6Addr>,
    pub mac: [u8; 6],
    pub gateway_mac: [u8; 6],
    pub mtu: u32,
    /// The pod's frames always take the host stack (see
    /// [`PodIdentity::host_path`]).
    pub host_path: bool,
}

impl PodEntry {
    fn endpoint(&self, slot: u32) -> Endpoint {
        Endpoint {
            host_ifindex: self.host_ifindex,
            pod_mac: self.mac,
            gateway_mac: self.gateway_mac,
            slot,
            mtu: self.mtu,
        }
    }

    fn identity(&self) -> PodIdentity {
        PodIdentity {
            ipv4: self.ipv4.octets(),
            ipv6: self.ipv6.map_or([0; 16], |v6| v6.octets()),
            mac: self.mac,
            // `up` has just set the veth up; `vethctl agent` follows it.
            ready: 1,
            has_ipv6: u8::from(self.ipv6.is_some()),
            host_path: u8::from(self.host_path),
            host_ifindex: self.host_ifindex,
            mtu: self.mtu,
            gateway_mac: self.gateway_mac,
        }
    }
}

/// Which slot (index into `PODS` and `PAIR_COUNTERS`) each host-side veth
/// gets: pods that have one keep it (and their counters); new pods get the
/// lowest free ones.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SlotPlan {
    pub kept: BTreeMap<u32, u32>,
    pub new: BTreeMap<u32, u32>,
    /// Slots of veths no longer wanted, by their old ifindex.
    pub freed: BTreeMap<u32, u32>,
}

impl SlotPlan {
    pub fn slot(&self, ifindex: u32) -> Option<u32> {
        self.kept
            .get(&ifindex)
            .or_else(|| self.new.get(&ifindex))
            .copied()
    }
}

pub fn assign_slots(
    existing: &BTreeMap<u32, u32>,
    wanted: &BTreeSet<u32>,
    capacity: u32,
) -> Result<SlotPlan> {
    let mut plan = SlotPlan::default();
    for (&ifindex, &slot) in existing {
        if wanted.contains(&ifindex) && slot < capacity {
            plan.kept.insert(ifindex, slot);
        } else {
            plan.freed.insert(ifindex, slot);
        }
    }
    let taken: BTreeSet<u32> = plan.kept.values().copied().collect();
    let mut free = (0..capacity).filter(|s| !taken.contains(s));
    for &ifindex in wanted.iter().filter(|i| !plan.kept.contains_key(i)) {
        let slot = free
            .next()
            .ok_or_else(|| anyhow!("more than {capacity} pods in one topology"))?;
        plan.new.insert(ifindex, slot);
    }
    Ok(plan)
}

/// Every map, pinned by its name in the topology's pin directory.
const PINNED_MAPS: [&str; 19] = [
    MAP_DEVMAP,
    MAP_ENDPOINTS,
    MAP_ENDPOINTS6,
    MAP_SLOTS,
    MAP_SLOT_HINTS,
    MAP_ENDPOINT_HINTS,
    MAP_PODS,
    MAP_PAIR_COUNTERS,
    MAP_TRACE_CONFIG,
    MAP_TRACE_IDLE,
    MAP_TRACE_EVENTS[0],
    MAP_TRACE_EVENTS[1],
    MAP_TRACE_EVENTS[2],
    MAP_TRACE_EVENTS[3],
    MAP_REMOTE_ROUTES,
    MAP_REMOTE_ROUTES6,
    MAP_NODES,
    MAP_CROSS_NODE,
    MAP_UNDERLAY_COUNTERS,
];

/// Every program, pinned by its name in the topology's pin directory.
const PROGRAMS: [&str; 5] = [
    PROG_FROM_POD,
    PROG_TO_POD,
    PROG_XDP_FROM_POD,
    PROG_FROM_UNDERLAY,
    PROG_FROM_TUNNEL,
];

/// Every hook a host-side veth can get, with the program for each.
pub const HOOKS: [Hook; 3] = [Hook::Ingress, Hook::Egress, Hook::Xdp];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// TCX at host-side veth ingress: frames from the pod.
    Ingress,
    /// TCX at host-side veth egress: frames from the host stack into the pod.
    Egress,
    /// XDP at the host-side veth (mode xdp, instead of `Ingress`).
    Xdp,
}

impl Hook {
    /// The hooks of a mode: XDP replaces TC ingress in mode xdp (both would
    /// count the frames XDP passes); egress always counts.
    pub fn for_mode(mode: Mode) -> &'static [Hook] {
        match mode {
            Mode::Xdp => &[Hook::Xdp, Hook::Egress],
            _ => &[Hook::Ingress, Hook::Egress],
        }
    }

    pub fn program(self) -> &'static str {
        match self {
            Hook::Ingress => PROG_FROM_POD,
            Hook::Egress => PROG_TO_POD,
            Hook::Xdp => PROG_XDP_FROM_POD,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Hook::Ingress => "ingress",
            Hook::Egress => "egress",
            Hook::Xdp => "xdp",
        }
    }

    fn attach_type(self) -> Option<TcAttachType> {
        match self {
            Hook::Ingress => Some(TcAttachType::Ingress),
            Hook::Egress => Some(TcAttachType::Egress),
            Hook::Xdp => None,
        }
    }
}

/// Where a topology's objects are pinned.
#[derive(Clone, Debug)]
pub struct Pins {
    root: PathBuf,
}

impl Pins {
    pub fn new(topology: &str) -> Pins {
        Pins {
            root: crate::node::current().pins_root().join(topology),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// [`Pins::root`] where people on the host find it (bpftool, ls).
    pub fn shown_root(&self) -> PathBuf {
        crate::node::current().shown(&self.root)
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn program(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    /// Links of the node's own devices (underlay, tunnel), apart from the
    /// host-side veths' (`links/` lists pods' veths only), e.g.
    /// `node-links/eth0/ingress`.
    pub fn node_link(&self, device: &str) -> PathBuf {
        self.root.join("node-links").join(device).join("ingress")
    }

    /// The node's devices with a pinned link.
    pub fn node_link_devices(&self) -> Result<Vec<String>> {
        let dir = self.root.join("node-links");
        match fs::read_dir(&dir) {
            Ok(entries) => Ok(entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e).with_context(|| format!("listing {}", dir.display())),
        }
    }

    /// One directory per host-side veth (bpffs refuses '.' in names).
    fn veth_links_dir(&self, host_veth: &str) -> PathBuf {
        self.links_dir().join(host_veth)
    }

    /// e.g. `links/demo-web/ingress`.
    pub fn link(&self, host_veth: &str, hook: Hook) -> PathBuf {
        self.veth_links_dir(host_veth).join(hook.name())
    }

    /// Host-side veths that have at least one pinned link.
    pub fn linked_veths(&self) -> Result<BTreeSet<String>> {
        let entries = match fs::read_dir(self.links_dir()) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
            Err(e) => return Err(e).context("listing pinned links"),
        };
        Ok(entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect())
    }

    pub fn exist(&self) -> bool {
        self.root.exists()
    }

    /// Every program is pinned (a crash can leave only some).
    pub fn programs_exist(&self) -> bool {
        PROGRAMS.iter().all(|name| self.program(name).exists())
    }

    /// Unpins everything: links detach, programs and maps are freed once
    /// no process holds them. Missing pins are fine.
    pub fn remove_all(&self) -> Result<()> {
        match fs::remove_dir_all(&self.root) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing pins {}", self.root.display())),
        }
    }

    /// Unpins (and so detaches) the links of one host-side veth.
    pub fn remove_links(&self, host_veth: &str) -> Result<()> {
        let dir = self.veth_links_dir(host_veth);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
        }
    }
}

fn remove_file_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Mounts bpffs at /sys/fs/bpf if it is not there (fresh machines). A node
/// namespace pins on the host's bpffs (see [`crate::node`]), which it
/// cannot mount from its own mount namespace: the host must have it.
pub fn ensure_bpffs() -> Result<()> {
    let bpffs = crate::node::current().bpffs();
    if statfs(&bpffs).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC) {
        return Ok(());
    }
    if bpffs != Path::new(BPFFS) {
        anyhow::bail!(
            "the host has no bpffs at {BPFFS} (seen from this node namespace as {}); \
             mount it on the host: `mount -t bpf bpffs {BPFFS}`",
            bpffs.display()
        );
    }
    fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
    mount(
        Some("bpffs"),
        BPFFS,
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mounting bpffs at {BPFFS} (try `mount -t bpf bpffs {BPFFS}`)"))
}

/// Identifies the programs `load_programs` would pin: the object this
/// vethctl carries and the settings folded into it. Equal digests mean the
/// pinned programs can stay, and so can every link to them.
pub fn programs_digest(counters: bool, redirect: bool) -> String {
    crate::applied::digest(&(OBJECT, counters, redirect))
}

/// Loads the programs, reusing the topology's pinned maps if they exist
/// (creating and pinning them otherwise), and pins the programs in place of
/// older ones. Links to older programs keep running them until replaced.
/// `counters: false` compiles counting out of the programs; `redirect:
/// false` leaves `from_pod` only counting (kernel-path modes).
/// Returns the maps that were pinned with another layout (by another
/// vethctl) and were made afresh.
pub fn load_programs(topology: &str, counters: bool, redirect: bool) -> Result<Vec<String>> {
    ensure_bpffs()?;
    let pins = Pins::new(topology);
    fs::create_dir_all(pins.links_dir())
        .with_context(|| format!("creating {}", pins.links_dir().display()))?;
    let replaced = unpin_incompatible_maps(&pins)?;
    let mut loader = EbpfLoader::new();
    for map in PINNED_MAPS {
        loader.map_pin_path(map, pins.map(map));
    }
    let mut ebpf = loader
        .override_global(GLOBAL_COUNTERS_ENABLED, &u8::from(counters), true)
        .override_global(GLOBAL_REDIRECT_ENABLED, &u8::from(redirect), true)
        .load(OBJECT)
        .context("loading the eBPF object (are you root?)")?;
    for name in [
        PROG_FROM_POD,
        PROG_TO_POD,
        PROG_FROM_UNDERLAY,
        PROG_FROM_TUNNEL,
    ] {
        let prog = classifier(&mut ebpf, name)?;
        prog.load()
            .with_context(|| format!("loading program {name} into the kernel"))?;
    }
    program::<Xdp>(&mut ebpf, PROG_XDP_FROM_POD)?
        .load()
        .with_context(|| format!("loading program {PROG_XDP_FROM_POD} into the kernel"))?;
    for name in PROGRAMS {
        let prog = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the object"))?;
        let path = pins.program(name);
        remove_file_if_present(&path)?;
        prog.pin(&path)
            .with_context(|| format!("pinning program {name} at {}", path.display()))?;
    }
    let _lock = trace_lock(topology)?;
    let mut take = |name: &str| {
        ebpf.take_map(name)
            .ok_or_else(|| anyhow!("map {name} missing from the object"))
    };
    let config = aya::maps::Array::try_from(take(MAP_TRACE_CONFIG)?)?;
    let mut idle = aya::maps::Array::try_from(take(MAP_TRACE_IDLE)?)?;
    mark_trace_idle(&config, &mut idle, true)?;
    Ok(replaced)
}

/// Unpins the maps whose pinned layout differs from this vethctl's object
/// (see [`incompatible_maps`]), so that loading makes them afresh: the
/// loader would reuse them as they are, and the programs would then fail
/// verification. Programs still attached keep their old maps until their
/// links are replaced.
fn unpin_incompatible_maps(pins: &Pins) -> Result<Vec<String>> {
    let replaced = incompatible_maps(pins)?;
    for name in &replaced {
        remove_file_if_present(&pins.map(name))?;
    }
    Ok(replaced)
}

/// Whether every map pinned for `topology` has the layout this vethctl's
/// programs use (a map not pinned yet is made by the next load). False
/// after an upgrade that changed a layout, until the next program load
/// makes those maps afresh: until then nothing of this vethctl can read or
/// write them ("invalid key size").
pub fn maps_current(topology: &str) -> bool {
    incompatible_maps(&Pins::new(topology)).is_ok_and(|maps| maps.is_empty())
}

/// The pinned maps whose type, key size, value size or size differ from
/// this vethctl's object.
fn incompatible_maps(pins: &Pins) -> Result<Vec<String>> {
    let mut changed = Vec::new();
    for (name, wanted) in object_layouts()? {
        let path = pins.map(name);
        if !path.exists() {
            continue;
        }
        let same = aya::maps::MapInfo::from_pin(&path).is_ok_and(|pinned| {
            pinned.map_type().is_ok_and(|t| t as u32 == wanted.map_type)
                && pinned.key_size() == wanted.key_size
                && pinned.value_size() == wanted.value_size
                && pinned.max_entries() == wanted.max_entries
        });
        if !same {
            changed.push(name.to_string());
        }
    }
    Ok(changed)
}

/// What a map of the object looks like to the kernel.
#[derive(Clone, Copy)]
struct MapLayout {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
}

/// The layouts of the pinned maps as this vethctl's object has them,
/// parsed once per process (every ADD asks).
fn object_layouts() -> Result<&'static [(&'static str, MapLayout)]> {
    static LAYOUTS: std::sync::OnceLock<Vec<(&'static str, MapLayout)>> =
        std::sync::OnceLock::new();
    if let Some(layouts) = LAYOUTS.get() {
        return Ok(layouts);
    }
    let object = aya_obj::Object::parse(OBJECT).context("parsing the eBPF object")?;
    let layouts = PINNED_MAPS
        .iter()
        .filter_map(|&name| {
            let map = object.maps.get(name)?;
            Some((
                name,
                MapLayout {
                    map_type: map.map_type(),
                    key_size: map.key_size(),
                    value_size: map.value_size(),
                    max_entries: map.max_entries(),
                },
            ))
        })
        .collect();
    Ok(LAYOUTS.get_or_init(|| layouts))
}

/// Serializes slot choice between concurrent endpoint changes (CNI ADDs).
const SLOTS_LOCK: &str = ".slots.lock";

/// Most attaches in flight at once.
const ATTACH_THREADS: usize = 64;

/// Priority and handle of our `cls_bpf` filters ([`TcAttach::Clsact`]): fixed,
/// so attaching again replaces the program in place (atomically: frames
/// see the old program or the new one) and removing takes ours only.
const CLSACT_PRIORITY: u16 = 1;
const CLSACT_HANDLE: TcHandle = TcHandle::new(0, 1);

/// Attaches `hooks` to every veth of `host_veths` (TC hooks the way `tc`
/// says), then takes their other hooks away. TCX attaches run
/// concurrently: each waits for an RCU grace period (the kernel swaps the
/// hook's program array, then `synchronize_rcu`), ~10 ms here, and
/// concurrent waiters share one, so one pod costs about one grace period
/// and many pods barely more. `clsact` filters wait for none.
pub fn attach_all(
    topology: &str,
    host_veths: &[String],
    hooks: &[Hook],
    tc: TcAttach,
) -> Result<()> {
    let pins = Pins::new(topology);
    for veth in host_veths {
        let dir = pins.veth_links_dir(veth);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let work: Vec<(&str, Hook)> = host_veths
        .iter()
        .flat_map(|veth| hooks.iter().map(move |&hook| (veth.as_str(), hook)))
        .collect();
    let threads = match tc {
        TcAttach::Tcx => ATTACH_THREADS,
        TcAttach::Clsact => 1,
    };
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..work.len().min(threads))
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    let mut dataplane = Dataplane::open(topology)?;
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&(veth, hook)) = work.get(i) else {
                            return Ok(());
                        };
                        dataplane.attach(veth, hook, tc)?;
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().map_err(|_| anyhow!("an attach thread panicked"))?)
    })?;
    // Only now that the new hooks run: the hooks of another mode, and a TC
    // hook's TCX link where a filter took over (an endpoint an older
    // vethctl attached). Topology pods never have our filters.
    for veth in host_veths {
        for hook in HOOKS {
            let wanted = hooks.contains(&hook);
            if !wanted || (tc == TcAttach::Clsact && hook != Hook::Xdp) {
                unpin_link(&pins.link(veth, hook))?;
            }
            if let (false, TcAttach::Clsact, Some(t)) = (wanted, tc, hook.attach_type()) {
                detach_filter(veth, t)?;
            }
        }
    }
    Ok(())
}

/// The errno of a failed netlink request of aya's.
fn netlink_errno(e: &ProgramError) -> Option<i32> {
    match e {
        ProgramError::NetlinkError(e) | ProgramError::TcError(TcError::NetlinkError(e)) => {
            e.raw_os_error()
        }
        _ => None,
    }
}

/// Removes our filter at the `attach_type` hook of `host_veth`, if there.
fn detach_filter(host_veth: &str, attach_type: TcAttachType) -> Result<()> {
    use aya::programs::Link as _;
    let context = || format!("removing the {attach_type:?} filter of {host_veth}");
    let link = match SchedClassifierLink::attached(
        host_veth,
        attach_type,
        CLSACT_PRIORITY,
        CLSACT_HANDLE,
        None,
    ) {
        Ok(link) => link,
        // The veth is gone, and its filters with it.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(context),
    };
    match link.detach() {
        Ok(()) => Ok(()),
        // No such filter (ENOENT), or no clsact qdisc to hold one (EINVAL).
        Err(e) if matches!(netlink_errno(&e), Some(libc::ENOENT | libc::EINVAL)) => Ok(()),
        Err(e) => Err(e).with_context(context),
    }
}

/// The map pinned as `name` under `pins`.
fn open_map(pins: &Pins, name: &str) -> Result<MapData> {
    let path = pins.map(name);
    MapData::from_pin(&path).with_context(|| format!("opening map {}", path.display()))
}

/// Takes one endpoint out of the maps (a CNI DEL): its slot first (the
/// programs stop using it at once), then its identity, its addresses
/// where they still name its veth, its DEVMAP entry. Whatever is
/// already gone is fine. Opens the maps only: a DEL needs no program.
pub fn remove_endpoint(
    topology: &str,
    host_ifindex: u32,
    ipv4: Ipv4Addr,
    ipv6: Option<std::net::Ipv6Addr>,
    lock_dir: &Path,
) -> Result<()> {
    let pins = Pins::new(topology);
    let _lock = crate::state::lock_file(&lock_dir.join(SLOTS_LOCK), true)?;
    let mut slots = HashMap::<_, u32, u32>::try_from(Map::HashMap(open_map(&pins, MAP_SLOTS)?))?;
    let mut identities = Array::<_, PodIdentity>::try_from(Map::Array(open_map(&pins, MAP_PODS)?))?;
    // The slot entry goes last, so that a DEL killed halfway leaves it to
    // find the identity by. Without one (that, or an ADD killed between
    // the identity and the slot): the identities naming this veth in
    // slots nobody holds, which a lookup by slot never found again.
    let owned: Vec<u32> = match slots.get(&host_ifindex, 0).ok() {
        Some(slot) => vec![slot],
        None => orphans_of(&slots, &identities, host_ifindex),
    };
    // Maps pinned before there were hints have none to clear.
    let mut hints =
        open_map(&pins, MAP_SLOT_HINTS).and_then(|m| Ok(Array::try_from(Map::Array(m))?));
    let mut endpoint_hints =
        open_map(&pins, MAP_ENDPOINT_HINTS).and_then(|m| Ok(Array::try_from(Map::Array(m))?));
    for slot in owned {
        identities
            .set(slot, PodIdentity::default(), 0)
            .context("clearing a freed slot")?;
        if let Ok(hints) = hints.as_mut() {
            clear_slot_hint(hints, host_ifindex, slot)?;
        }
        if let Ok(hints) = endpoint_hints.as_mut() {
            clear_endpoint_hints(hints, ipv4, ipv6, slot)?;
        }
    }
    let mut v4 =
        HashMap::<_, u32, Endpoint>::try_from(Map::HashMap(open_map(&pins, MAP_ENDPOINTS)?))?;
    let key = ipv4_key(ipv4.octets());
    if v4
        .get(&key, 0)
        .is_ok_and(|e| e.host_ifindex == host_ifindex)
    {
        ignore_missing(v4.remove(&key)).context("removing the IPv4 endpoint")?;
    }
    if let Some(ipv6) = ipv6 {
        let mut v6 = HashMap::<_, [u8; 16], Endpoint>::try_from(Map::HashMap(open_map(
            &pins,
            MAP_ENDPOINTS6,
        )?))?;
        let key = ipv6.octets();
        if v6
            .get(&key, 0)
            .is_ok_and(|e| e.host_ifindex == host_ifindex)
        {
            ignore_missing(v6.remove(&key)).context("removing the IPv6 endpoint")?;
        }
    }
    // Not through aya's DevMapHash, which first probes the kernel's
    // features (a dozen program and map loads: ~2 ms of every DEL).
    delete_u32_key(&open_map(&pins, MAP_DEVMAP)?, host_ifindex)
        .context("removing a DEVMAP entry")?;
    ignore_missing(slots.remove(&host_ifindex)).context("removing a slot")
}

/// Points the programs' slot hint for `host_ifindex` at `slot` (after its
/// `SLOTS` entry is written: a hint is taken only as a shortcut to it).
/// A pod whose hint another veth with the same index took keeps working,
/// through `SLOTS`.
fn set_slot_hint(hints: &mut Array<MapData, u32>, host_ifindex: u32, slot: u32) -> Result<()> {
    let index = slot_hint_index(host_ifindex);
    if hints.get(&index, 0).ok() != Some(slot + 1) {
        hints
            .set(index, slot + 1, 0)
            .context("writing a slot hint")?;
    }
    Ok(())
}

/// Clears the slot hint of `host_ifindex` if it points at `slot` (with
/// the slot's identity: the programs check a hint against it anyway).
fn clear_slot_hint(hints: &mut Array<MapData, u32>, host_ifindex: u32, slot: u32) -> Result<()> {
    let index = slot_hint_index(host_ifindex);
    if hints.get(&index, 0).ok() == Some(slot + 1) {
        hints.set(index, 0, 0).context("clearing a slot hint")?;
    }
    Ok(())
}

/// Clears the endpoint hints of a pod's addresses that point at `slot`
/// (with the slot's identity: the programs check a hint against it anyway).
fn clear_endpoint_hints(
    hints: &mut Array<MapData, u32>,
    ipv4: Ipv4Addr,
    ipv6: Option<std::net::Ipv6Addr>,
    slot: u32,
) -> Result<()> {
    let mut at = vec![endpoint_hint_v4(ipv4.octets())];
    at.extend(ipv6.map(|a| endpoint_hint_v6(&a.octets())));
    for index in at {
        if hints.get(&index, 0).ok() == Some(slot + 1) {
            hints
                .set(index, 0, 0)
                .context("clearing an endpoint hint")?;
        }
    }
    Ok(())
}

/// The slots whose identity names `host_ifindex` and that no veth holds
/// in SLOTS (what a crash between the two writes leaves).
fn orphans_of(
    slots: &HashMap<MapData, u32, u32>,
    identities: &Array<MapData, PodIdentity>,
    host_ifindex: u32,
) -> Vec<u32> {
    let held: BTreeSet<u32> = slots
        .iter()
        .filter_map(|e| e.ok())
        .map(|(_, s)| s)
        .collect();
    (0..identities.len())
        .filter(|slot| !held.contains(slot))
        .filter(|slot| {
            identities
                .get(slot, 0)
                .is_ok_and(|i| i.host_ifindex == host_ifindex)
        })
        .collect()
}

/// Deletes `key` from a map whose keys are u32 with the bpf syscall
/// (`BPF_MAP_DELETE_ELEM`); a missing key is fine.
fn delete_u32_key(map: &MapData, key: u32) -> io::Result<()> {
    use std::os::fd::{AsFd, AsRawFd};
    // `union bpf_attr` for the map element commands: map_fd, then (8-byte
    // aligned) key, value and flags.
    #[repr(C)]
    struct Attr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let attr = Attr {
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        _pad: 0,
        key: &key as *const u32 as u64,
        value: 0,
        flags: 0,
    };
    const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
    // SAFETY: `attr` and the key it points at outlive the call, which
    // reads `size_of::<Attr>()` bytes of it and writes nothing.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_DELETE_ELEM,
            &attr as *const Attr,
            std::mem::size_of::<Attr>(),
        )
    };
    match r {
        0 => Ok(()),
        _ => match io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            e => Err(e),
        },
    }
}

/// Unpins the link pinned at `path` and detaches it before returning. Only
/// removing the pin would leave the detach to a kernel worker
/// (`bpf_link_put` defers the release when a pin drops the last
/// reference), so an XDP program could still be redirecting after `up`
/// went on to reset the offloads mode xdp needs (seen as lost datagrams
/// and UDP checksum errors after `mode set` from xdp). With an fd of its
/// own held across the unpin, the close drops the last reference
/// (`bpf_link_put_direct`), which detaches at once. Missing pins are fine.
fn unpin_link(path: &Path) -> Result<()> {
    match aya::programs::links::PinnedLink::from_pin(path) {
        Ok(pinned) => {
            let link = pinned
                .unpin()
                .with_context(|| format!("removing {}", path.display()))?;
            drop(link);
            Ok(())
        }
        // Not there, or not a link: nothing to detach.
        Err(_) => remove_file_if_present(path),
    }
}

/// The pinned programs and maps of one topology, opened from bpffs.
pub struct Dataplane {
    pins: Pins,
    from_pod: PinnedProgram<SchedClassifier>,
    to_pod: PinnedProgram<SchedClassifier>,
    xdp: Xdp,
}

struct PinnedProgram<P> {
    program: P,
    id: u32,
}

impl Dataplane {
    /// Opens what [`load_programs`] pinned.
    pub fn open(topology: &str) -> Result<Dataplane> {
        let pins = Pins::new(topology);
        let open_classifier = |name: &str| -> Result<PinnedProgram<SchedClassifier>> {
            let path = pins.program(name);
            let program = SchedClassifier::from_pin(&path)
                .with_context(|| format!("opening program {}", path.display()))?;
            let id = program.info()?.id();
            Ok(PinnedProgram { program, id })
        };
        let xdp_path = pins.program(PROG_XDP_FROM_POD);
        Ok(Dataplane {
            from_pod: open_classifier(PROG_FROM_POD)?,
            to_pod: open_classifier(PROG_TO_POD)?,
            xdp: Xdp::from_pin(&xdp_path, aya_obj::programs::XdpAttachType::Interface)
                .with_context(|| format!("opening program {}", xdp_path.display()))?,
            pins,
        })
    }

    pub fn pins(&self) -> &Pins {
        &self.pins
    }

    fn map(&self, name: &str) -> Result<MapData> {
        open_map(&self.pins, name)
    }

    /// Attaches the hook's program to `host_veth`: a pinned TCX link or XDP
    /// link, or our `clsact` filter. A TCX hook that already runs the
    /// pinned program keeps its link; one running an older program gets
    /// the new link before the old one is unpinned, and a filter has its
    /// program replaced in place, so frames never miss the program.
    fn attach(&mut self, host_veth: &str, hook: Hook, tc: TcAttach) -> Result<()> {
        let path = self.pins.link(host_veth, hook);
        let context = || {
            format!(
                "attaching {} to {host_veth} {}",
                hook.program(),
                hook.name()
            )
        };
        let link: FdLink = match hook.attach_type() {
            Some(attach_type) => {
                let prog = match hook {
                    Hook::Egress => &mut self.to_pod,
                    _ => &mut self.from_pod,
                };
                if tc == TcAttach::Clsact {
                    return attach_filter(&mut prog.program, host_veth, attach_type)
                        .with_context(context);
                }
                if path.exists() && tcx_runs(host_veth, attach_type, prog.id) {
                    return Ok(());
                }
                let id = prog
                    .program
                    .attach(host_veth, attach_type)
                    .with_context(context)?;
                prog.program
                    .take_link(id)?
                    .try_into()
                    .map_err(|e| anyhow!("{host_veth} {}: not a TCX link: {e}", hook.name()))?
            }
            None => {
                // A device has one XDP link: swap the program in the pinned
                // one (atomic, the pin stays valid) rather than attach a
                // second, which the kernel refuses (EBUSY).
                if replace_xdp_program(&mut self.xdp, &path) {
                    return Ok(());
                }
                remove_file_if_present(&path)?;
                // Native mode: veth runs XDP in its NAPI poll.
                let id = self
                    .xdp
                    .attach(host_veth, XdpMode::Driver)
                    .with_context(context)?;
                self.xdp
                    .take_link(id)?
                    .try_into()
                    .map_err(|e| anyhow!("{host_veth} xdp: not a BPF link: {e}"))?
            }
        };
        // The link replaced, held until the new one is pinned: dropping
        // the last reference detaches it at once (see `unpin_link`).
        let replaced = aya::programs::links::PinnedLink::from_pin(&path)
            .ok()
            .map(FdLink::from);
        remove_file_if_present(&path)?;
        link.pin(&path)
            .with_context(|| format!("pinning link at {}", path.display()))?;
        drop(replaced);
        Ok(())
    }

    /// Makes the DEVMAP hold exactly these host-side veths.
    pub fn sync_devmap(&mut self, ifindexes: &BTreeSet<u32>) -> Result<()> {
        let mut devmap = DevMapHash::<_>::try_from(Map::DevMapHash(self.map(MAP_DEVMAP)?))?;
        let present: BTreeSet<u32> = devmap.keys().filter_map(|k| k.ok()).collect();
        for stale in present.difference(ifindexes) {
            ignore_missing(devmap.remove(*stale)).context("removing a stale DEVMAP entry")?;
        }
        // An entry is always its own ifindex: only missing ones are written.
        for &ifindex in ifindexes.difference(&present) {
            devmap
                .insert(ifindex, ifindex, None, 0)
                .map_err(|e| anyhow!("writing DEVMAP entry {ifindex}: {e}"))?;
        }
        Ok(())
    }

    /// Gives every pod a slot, with its identity and (for a new slot) zeroed
    /// counters, then makes the endpoint maps (IPv4 and IPv6) hold exactly
    /// what `pods` describe. Slots of pods that are gone are cleared first:
    /// an endpoint is only used while its slot still names its ifindex and
    /// address, so stale endpoints are inert at once.
    pub fn sync_pods(&mut self, pods: &[PodEntry]) -> Result<()> {
        let mut slots = HashMap::<_, u32, u32>::try_from(Map::HashMap(self.map(MAP_SLOTS)?))?;
        let existing: BTreeMap<u32, u32> = slots.iter().filter_map(|e| e.ok()).collect();
        let wanted: BTreeSet<u32> = pods.iter().map(|p| p.host_ifindex).collect();
        let plan = assign_slots(&existing, &wanted, UNKNOWN_VETH_SLOT)?;
        let mut identities = Array::<_, PodIdentity>::try_from(Map::Array(self.map(MAP_PODS)?))?;
        let mut counters = PerCpuArray::<_, PairCounters>::try_from(Map::PerCpuArray(
            self.map(MAP_PAIR_COUNTERS)?,
        ))?;
        let mut hints = Array::<_, u32>::try_from(Map::Array(self.map(MAP_SLOT_HINTS)?))?;
        let mut endpoint_hints =
            Array::<_, u32>::try_from(Map::Array(self.map(MAP_ENDPOINT_HINTS)?))?;
        for (&ifindex, &slot) in &plan.freed {
            let old = identities.get(&slot, 0).ok();
            identities
                .set(slot, PodIdentity::default(), 0)
                .context("clearing a freed slot")?;
            clear_slot_hint(&mut hints, ifindex, slot)?;
            if let Some(old) = old {
                let ipv6 = (old.has_ipv6 != 0).then(|| std::net::Ipv6Addr::from(old.ipv6));
                clear_endpoint_hints(&mut endpoint_hints, Ipv4Addr::from(old.ipv4), ipv6, slot)?;
            }
            ignore_missing(slots.remove(&ifindex)).context("removing a stale slot")?;
        }
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?;
        for (&ifindex, &slot) in &plan.new {
            let zero = PairCounters {
                host_ifindex: ifindex,
                ..PairCounters::default()
            };
            counters
                .set(slot, PerCpuValues::try_from(vec![zero; cpus])?, 0)
                .context("zeroing a new slot's counters")?;
        }
        let mut v4 = BTreeMap::new();
        let mut v6 = BTreeMap::new();
        for pod in pods {
            let slot = plan
                .slot(pod.host_ifindex)
                .expect("every wanted pod has a slot");
            // Unchanged entries are not rewritten: adding one pod writes
            // that pod's entries only.
            if identities.get(&slot, 0).ok() != Some(pod.identity()) {
                identities
                    .set(slot, pod.identity(), 0)
                    .context("writing a pod identity")?;
            }
            v4.insert(ipv4_key(pod.ipv4.octets()), pod.endpoint(slot));
            if let Some(ipv6) = pod.ipv6 {
                v6.insert(ipv6.octets(), pod.endpoint(slot));
            }
        }
        // Last: from here on the programs count and check the new pods.
        for (ifindex, slot) in &plan.new {
            slots.insert(ifindex, slot, 0).context("writing a slot")?;
        }
        // After the slots (every pod's: maps pinned before there were
        // hints have none).
        for pod in pods {
            if let Some(slot) = plan.slot(pod.host_ifindex) {
                set_slot_hint(&mut hints, pod.host_ifindex, slot)?;
            }
        }
        self.sync_hash(MAP_ENDPOINTS, v4)?;
        self.sync_hash(MAP_ENDPOINTS6, v6)?;
        for pod in pods {
            if let Some(slot) = plan.slot(pod.host_ifindex) {
                self.hint_endpoint(pod, slot)?;
            }
        }
        Ok(())
    }

    /// Points the programs' endpoint hints of `pod`'s addresses at `slot`;
    /// called after the slot's identity (which carries what a redirect to
    /// it needs) and the addresses' `ENDPOINTS` entries are written (a hint
    /// is a shortcut to them). An address whose hint another pod's took
    /// keeps working, through `ENDPOINTS`.
    fn hint_endpoint(&mut self, pod: &PodEntry, slot: u32) -> Result<()> {
        let mut hints = Array::<_, u32>::try_from(Map::Array(self.map(MAP_ENDPOINT_HINTS)?))?;
        let mut at = vec![endpoint_hint_v4(pod.ipv4.octets())];
        at.extend(pod.ipv6.map(|a| endpoint_hint_v6(&a.octets())));
        for index in at {
            if hints.get(&index, 0).ok() != Some(slot + 1) {
                hints
                    .set(index, slot + 1, 0)
                    .context("writing an endpoint hint")?;
            }
        }
        Ok(())
    }

    /// Puts one endpoint into the maps and leaves every other alone (a CNI
    /// ADD): its slot (the one its veth has, else the lowest free one) with
    /// its identity and, for a new slot, zeroed counters; its addresses; its
    /// DEVMAP entry. The slot goes in last, so the programs only ever see a
    /// complete endpoint. Concurrent callers are serialized by a lock file
    /// in `lock_dir` while a slot is picked. Returns the slot.
    pub fn put_endpoint(&mut self, pod: &PodEntry, lock_dir: &Path) -> Result<u32> {
        let _lock = crate::state::lock_file(&lock_dir.join(SLOTS_LOCK), true)?;
        let mut slots = HashMap::<_, u32, u32>::try_from(Map::HashMap(self.map(MAP_SLOTS)?))?;
        let existing: BTreeMap<u32, u32> = slots.iter().filter_map(|e| e.ok()).collect();
        let slot = match existing.get(&pod.host_ifindex) {
            Some(&slot) => slot,
            None => {
                let taken: BTreeSet<u32> = existing.values().copied().collect();
                let slot = (0..UNKNOWN_VETH_SLOT)
                    .find(|s| !taken.contains(s))
                    .ok_or_else(|| anyhow!("all {UNKNOWN_VETH_SLOT} endpoint slots are in use"))?;
                let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?;
                let zero = PairCounters {
                    host_ifindex: pod.host_ifindex,
                    ..PairCounters::default()
                };
                let mut counters = PerCpuArray::<_, PairCounters>::try_from(Map::PerCpuArray(
                    self.map(MAP_PAIR_COUNTERS)?,
                ))?;
                counters
                    .set(slot, PerCpuValues::try_from(vec![zero; cpus])?, 0)
                    .context("zeroing a new slot's counters")?;
                slot
            }
        };
        let mut identities = Array::<_, PodIdentity>::try_from(Map::Array(self.map(MAP_PODS)?))?;
        identities
            .set(slot, pod.identity(), 0)
            .context("writing a pod identity")?;
        let mut v4 = HashMap::<_, u32, Endpoint>::try_from(Map::HashMap(self.map(MAP_ENDPOINTS)?))?;
        v4.insert(ipv4_key(pod.ipv4.octets()), pod.endpoint(slot), 0)
            .context("writing the IPv4 endpoint")?;
        if let Some(ipv6) = pod.ipv6 {
            let mut v6 = HashMap::<_, [u8; 16], Endpoint>::try_from(Map::HashMap(
                self.map(MAP_ENDPOINTS6)?,
            ))?;
            v6.insert(ipv6.octets(), pod.endpoint(slot), 0)
                .context("writing the IPv6 endpoint")?;
        }
        let mut devmap = DevMapHash::<_>::try_from(Map::DevMapHash(self.map(MAP_DEVMAP)?))?;
        devmap
            .insert(pod.host_ifindex, pod.host_ifindex, None, 0)
            .map_err(|e| anyhow!("writing DEVMAP entry {}: {e}", pod.host_ifindex))?;
        slots
            .insert(pod.host_ifindex, slot, 0)
            .context("writing a slot")?;
        let mut hints = Array::<_, u32>::try_from(Map::Array(self.map(MAP_SLOT_HINTS)?))?;
        set_slot_hint(&mut hints, pod.host_ifindex, slot)?;
        self.hint_endpoint(pod, slot)?;
        Ok(slot)
    }

    /// Makes a hash map hold exactly `wanted`.
    fn sync_hash<K: aya::Pod + Ord, V: aya::Pod + PartialEq>(
        &mut self,
        name: &str,
        wanted: BTreeMap<K, V>,
    ) -> Result<()> {
        let mut hash = HashMap::<_, K, V>::try_from(Map::HashMap(self.map(name)?))?;
        let stale: Vec<K> = hash
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !wanted.contains_key(k))
            .collect();
        for key in stale {
            ignore_missing(hash.remove(&key))
                .with_context(|| format!("removing a stale entry of {name}"))?;
        }
        for (key, value) in wanted {
            if hash.get(&key, 0).ok().as_ref() == Some(&value) {
                continue;
            }
            hash.insert(key, value, 0)
                .with_context(|| format!("writing {name}"))?;
        }
        Ok(())
    }
}

fn ignore_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// Attaches `program` as our direct-action filter at the `attach_type`
/// hook of `host_veth` (its `clsact` qdisc made first), or replaces the
/// program of the filter already there. The filter stays when this
/// process exits: it belongs to the veth, and goes with it.
fn attach_filter(
    program: &mut SchedClassifier,
    host_veth: &str,
    attach_type: TcAttachType,
) -> Result<()> {
    match aya::programs::tc::qdisc_add_clsact(host_veth) {
        Ok(()) => {}
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(e).context("adding the clsact qdisc"),
    }
    let options = || {
        TcAttachOptions::Netlink(NlOptions {
            priority: CLSACT_PRIORITY,
            handle: CLSACT_HANDLE,
            classid: None,
        })
    };
    let id = match program.attach_with_options(host_veth, attach_type, options()) {
        Ok(id) => id,
        Err(e) if netlink_errno(&e) == Some(libc::EEXIST) => {
            let ours = SchedClassifierLink::attached(
                host_veth,
                attach_type,
                CLSACT_PRIORITY,
                CLSACT_HANDLE,
                None,
            )?;
            program.attach_to_link(ours)?
        }
        Err(e) => return Err(e.into()),
    };
    // Dropping the link would remove the filter.
    std::mem::forget(program.take_link(id)?);
    Ok(())
}

/// True if `prog_id` is attached at this TCX hook of `host_veth`.
fn tcx_runs(host_veth: &str, attach_type: TcAttachType, prog_id: u32) -> bool {
    SchedClassifier::query_tcx(host_veth, attach_type)
        .is_ok_and(|(_, progs)| progs.iter().any(|p| p.id() == prog_id))
}

/// Puts `prog` into the XDP link pinned at `path`, if there is one that is
/// still attached; false if there is none (or it died with its device).
fn replace_xdp_program(prog: &mut Xdp, path: &Path) -> bool {
    let Ok(pinned) = aya::programs::links::PinnedLink::from_pin(path) else {
        return false;
    };
    let Ok(link) = aya::programs::xdp::XdpLink::try_from(FdLink::from(pinned)) else {
        return false;
    };
    prog.attach_to_link(link).is_ok()
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    program(ebpf, name)
}

fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the object"))?
        .try_into()
        .with_context(|| format!("program {name} has an unexpected type"))
}

/// The key under which [`read_counters`] reports what was counted for veths
/// without a pod (no device has ifindex 0).
pub const UNKNOWN_VETH_IFINDEX: u32 = 0;

/// The key under which [`read_counters`] reports the node's cross-node
/// counters: frames from the underlay or tunnel device that belong to no
/// pod (no device has this ifindex: the kernel's are below 2^31).
pub const UNDERLAY_IFINDEX: u32 = u32::MAX;

/// Per-pair counters of a topology, summed over CPUs, by host ifindex, the
/// unknown-veth counters under [`UNKNOWN_VETH_IFINDEX`] and the underlay's
/// under [`UNDERLAY_IFINDEX`].
/// Reads the pinned maps, so it works from any process while the topology
/// is up.
pub fn read_counters(topology: &str) -> Result<BTreeMap<u32, PairCounters>> {
    let pins = Pins::new(topology);
    let open = |name: &str| {
        let path = pins.map(name);
        MapData::from_pin(&path).with_context(|| {
            format!(
                "opening {} (is topology {topology:?} up? try `vethctl up`)",
                path.display()
            )
        })
    };
    let slots = HashMap::<_, u32, u32>::try_from(Map::HashMap(open(MAP_SLOTS)?))?;
    let counters =
        PerCpuArray::<_, PairCounters>::try_from(Map::PerCpuArray(open(MAP_PAIR_COUNTERS)?))?;
    let mut sums = BTreeMap::new();
    for entry in slots.iter() {
        let (ifindex, slot) = entry.context("reading pod slots")?;
        let per_cpu = counters.get(&slot, 0).context("reading pair counters")?;
        sums.insert(ifindex, sum_per_cpu(per_cpu.iter()));
    }
    let unknown = counters
        .get(&UNKNOWN_VETH_SLOT, 0)
        .context("reading unknown-veth counters")?;
    sums.insert(UNKNOWN_VETH_IFINDEX, sum_per_cpu(unknown.iter()));
    // Pinned by every vethctl that has cross-node programs.
    if pins.map(MAP_UNDERLAY_COUNTERS).exists() {
        sums.insert(
            UNDERLAY_IFINDEX,
            cross_node::read_underlay_counters(topology)?,
        );
    }
    Ok(sums)
}

/// Sums one pair's per-CPU values.
pub fn sum_per_cpu<'a>(values: impl Iterator<Item = &'a PairCounters>) -> PairCounters {
    values.fold(PairCounters::default(), |mut sum, v| {
        sum.accumulate(v);
        sum
    })
}

/// Kernel run-time statistics of a pinned program. `run_count` and
/// `run_time_ns` only grow while BPF statistics are enabled
/// (`kernel.bpf_stats_enabled`, or `vethctl agent --bpf-stats`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProgramStats {
    pub program: &'static str,
    pub id: u32,
    pub run_count: u64,
    pub run_time_ns: u64,
}

/// Statistics of the topology's pinned programs (none if it is not up).
pub fn program_stats(topology: &str) -> Vec<ProgramStats> {
    [PROG_FROM_POD, PROG_TO_POD]
        .into_iter()
        .filter_map(|program| pinned_program_stats(topology, program))
        .collect()
}

/// Statistics of one pinned program of the topology (`from_pod`, `to_pod`
/// or `xdp_from_pod`), if it is pinned.
pub fn pinned_program_stats(topology: &str, program: &'static str) -> Option<ProgramStats> {
    let pin = Pins::new(topology).program(program);
    let info = aya::programs::ProgramInfo::from_pin(pin).ok()?;
    Some(ProgramStats {
        program,
        id: info.id(),
        run_count: info.run_count(),
        run_time_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
    })
}

/// Turns on the kernel's per-program run time and count for as long as the
/// returned fd is open. Costs two clock reads per program run.
/// Whether the kernel collects program run-time statistics now (the
/// sysctl, or someone holding them on as `enable_bpf_stats` does).
pub fn bpf_stats_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|v| v.trim() == "1")
}

pub fn enable_bpf_stats() -> Result<std::os::fd::OwnedFd> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enabling BPF run-time statistics")
}

/// A `vethctl trace` listener: its own entry of the topology's trace
/// switches and its own ring buffer. The caller makes sure no other live
/// session uses the same `index` (see `state::claim_trace_session`).
pub struct TraceSession {
    config: aya::maps::Array<MapData, TraceConfig>,
    /// The programs' "no session is on" flag; `None` for programs loaded
    /// before there was one (they look at every switch anyway).
    idle: Option<aya::maps::Array<MapData, u32>>,
    topology: String,
    index: u32,
    pub events: aya::maps::RingBuf<MapData>,
}

impl TraceSession {
    pub fn open(topology: &str, index: usize) -> Result<TraceSession> {
        let pins = Pins::new(topology);
        let ring = *MAP_TRACE_EVENTS
            .get(index)
            .with_context(|| format!("no trace session {index}"))?;
        let open = |name: &str| {
            MapData::from_pin(pins.map(name)).with_context(|| {
                format!(
                    "opening {} (is topology {topology:?} up?)",
                    pins.map(name).display()
                )
            })
        };
        let config = aya::maps::Array::try_from(Map::Array(open(MAP_TRACE_CONFIG)?))?;
        let idle = match MapData::from_pin(pins.map(MAP_TRACE_IDLE)) {
            Ok(map) => Some(aya::maps::Array::try_from(Map::Array(map))?),
            Err(_) => None,
        };
        let mut events = aya::maps::RingBuf::try_from(Map::RingBuf(open(ring)?))?;
        // What a killed earlier session left unread is not ours.
        while events.next().is_some() {}
        Ok(TraceSession {
            config,
            idle,
            topology: topology.to_string(),
            index: index as u32,
            events,
        })
    }

    /// Switches this session's tracing on (or renews it) until `until_ns`
    /// on the monotonic clock; `sample_every == 0` switches it off. Then
    /// clears the programs' "no session is on" flag, or sets it if every
    /// session is off.
    pub fn set(&mut self, config: TraceConfig) -> Result<()> {
        let _lock = trace_lock(&self.topology)?;
        self.config
            .set(self.index, config, 0)
            .context("writing the trace switch")?;
        match self.idle.as_mut() {
            Some(idle) => mark_trace_idle(&self.config, idle, config.sample_every == 0),
            None => Ok(()),
        }
    }
}

/// Serializes the trace switches' flag between the topology's sessions
/// and program loads, so that one ending (or a load) and another starting
/// cannot cross and leave the flag set under a running session.
fn trace_lock(topology: &str) -> Result<Option<fs::File>> {
    let dir = crate::state::StateDir::new(topology);
    if !dir.exists() {
        return Ok(None);
    }
    crate::state::lock_file(&dir.path().join(".trace.lock"), true)
}

/// Sets the programs' "no session is on" flag if `may_be_idle` and every
/// session is off (switched off, or past its deadline: a killed one),
/// else clears it. The caller holds [`trace_lock`].
fn mark_trace_idle(
    config: &aya::maps::Array<MapData, TraceConfig>,
    idle: &mut aya::maps::Array<MapData, u32>,
    may_be_idle: bool,
) -> Result<()> {
    let all_off = may_be_idle && {
        let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?;
        let since_boot = std::time::Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32);
        let now = u64::try_from(since_boot.as_nanos()).unwrap_or(u64::MAX);
        (0..veth_common::TRACE_SESSIONS as u32).all(|i| {
            config
                .get(&i, 0)
                .is_ok_and(|c| c.sample_every == 0 || c.until_ns <= now)
        })
    };
    idle.set(0, u32::from(all_off), 0)
        .context("writing the trace flag")
}

impl std::os::fd::AsRawFd for TraceSession {
    /// The ring buffer's fd: readable when events are waiting.
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.events.as_raw_fd()
    }
}

impl Drop for TraceSession {
    fn drop(&mut self) {
        let _ = self.set(TraceConfig::default());
    }
}

/// What is attached at one hook of a host-side veth.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Attachment {
    pub hook: &'static str,
    /// Our pinned link (and its program) at this hook, if present.
    pub link_id: Option<u32>,
    pub program_id: Option<u32>,
    /// Every program the kernel reports at this TCX hook, ours included.
    pub tcx_program_ids: Vec<u32>,
    /// Every program of a BPF filter under this hook's `clsact` qdisc
    /// (where a runtime endpoint's programs are), for a TC hook without a
    /// pinned link; filled in by `observe`, which speaks rtnetlink.
    pub filter_program_ids: Vec<u32>,
}

/// What is attached to `host_veth`, from our pins and from the kernel.
pub fn attachments(topology: &str, host_veth: &str) -> Vec<Attachment> {
    let pins = Pins::new(topology);
    HOOKS
        .iter()
        .map(|&hook| {
            let pinned = aya::programs::links::PinnedLink::from_pin(pins.link(host_veth, hook))
                .ok()
                .and_then(|l| FdLink::from(l).info().ok());
            let tcx_program_ids = hook
                .attach_type()
                .and_then(|t| SchedClassifier::query_tcx(host_veth, t).ok())
                .map(|(_, progs)| progs.iter().map(|p| p.id()).collect())
                .unwrap_or_default();
            Attachment {
                hook: hook.name(),
                link_id: pinned.as_ref().map(|l| l.id()),
                program_id: pinned.as_ref().map(|l| l.program_id()),
                tcx_program_ids,
                filter_program_ids: Vec::new(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_cpu_values_are_summed_field_by_field() {
        let mut a = PairCounters::default();
        a.from_pod.redirected_packets = 3;
        a.from_pod.redirected_bytes = 300;
        a.to_pod.passed_packets = 1;
        a.drop_reasons[0] = 2;
        let mut b = PairCounters::default();
        b.from_pod.redirected_packets = 4;
        b.from_pod.redirected_bytes = 400;
        b.to_pod.passed_packets = 5;
        b.drop_reasons[0] = 1;
        let sum = sum_per_cpu([a, b, PairCounters::default()].iter());
        assert_eq!(sum.from_pod.redirected_packets, 7);
        assert_eq!(sum.from_pod.redirected_bytes, 700);
        assert_eq!(sum.to_pod.passed_packets, 6);
        assert_eq!(sum.drop_reasons[0], 3);
        assert_eq!(sum.from_pod.passed_packets, 0);
    }

    #[test]
    fn slots_are_kept_reused_and_freed() {
        let existing = BTreeMap::from([(10, 0), (11, 1), (12, 2)]);
        let wanted = BTreeSet::from([10, 12, 20, 21]);
        let plan = assign_slots(&existing, &wanted, 8).unwrap();
        assert_eq!(plan.kept, BTreeMap::from([(10, 0), (12, 2)]));
        assert_eq!(plan.freed, BTreeMap::from([(11, 1)]));
        assert_eq!(
            plan.new,
            BTreeMap::from([(20, 1), (21, 3)]),
            "lowest free first"
        );
        assert_eq!(plan.slot(21), Some(3));
        assert_eq!(plan.slot(11), None);
        let full = assign_slots(&BTreeMap::new(), &BTreeSet::from([1, 2, 3]), 2);
        assert!(full.is_err(), "more pods than slots is an error");
    }

    #[test]
    fn pins_are_per_topology() {
        let pins = Pins::new("demo");
        assert_eq!(pins.root(), Path::new("/sys/fs/bpf/vethctl/demo"));
        assert_eq!(
            pins.link("demo-web", Hook::Ingress),
            Path::new("/sys/fs/bpf/vethctl/demo/links/demo-web/ingress")
        );
        assert_eq!(
            pins.map(MAP_PAIR_COUNTERS),
            Path::new("/sys/fs/bpf/vethctl/demo/PAIR_COUNTERS")
        );
    }
}
