//! What `up` leaves in /run/vethctl: the topology description each topology
//! was brought up with (so `status`, `stats` and `down` need no file), and a
//! lock that serializes changes.

use std::{
    fs::{self, File, OpenOptions},
    io,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use crate::model::{Assigned, Topology};

/// The host's state root; a node namespace has its own, see [`root`].
pub const STATE_ROOT: &str = crate::node::HOST_STATE_ROOT;
const TOPOLOGY_FILE: &str = "topology.toml";
/// The addresses pods were given, so that they keep them (see
/// [`Topology::from_toml_keeping`]).
const ADDRESSES_FILE: &str = "pod-addresses.json";
const LOCK_FILE: &str = ".lock";
/// The endpoints are owed a rewire (see [`StateDir::owe_rewire`]).
const REWIRE_OWED_FILE: &str = "rewire-owed";
/// What [`REWIRE_OWED_FILE`] holds when the rewire crosses a bridge.
const ACROSS_BRIDGE: &[u8] = b"across-bridge\n";

/// This node's state root: [`STATE_ROOT`] on the host (see [`crate::node`]).
pub fn root() -> PathBuf {
    crate::node::current().state_root()
}

/// `/run/vethctl/<topology>/`.
#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn new(topology: &str) -> StateDir {
        StateDir {
            dir: root().join(topology),
        }
    }

    /// A state directory elsewhere (tests).
    pub fn at(dir: &Path) -> StateDir {
        StateDir {
            dir: dir.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn exists(&self) -> bool {
        self.dir.exists()
    }

    /// Where the recorded description is: `/run/vethctl/<topology>/topology.toml`.
    pub fn topology_path(&self) -> PathBuf {
        self.dir.join(TOPOLOGY_FILE)
    }

    /// Records the description `up` is converging to. Written before any
    /// kernel object is made, so a crashed `up` is still visible.
    pub fn save(&self, topology_text: &str) -> Result<()> {
        write_atomically(&self.dir, TOPOLOGY_FILE, topology_text.as_bytes())
    }

    /// The recorded description's text, if this topology was brought up.
    pub fn load_text(&self) -> Result<Option<String>> {
        let path = self.dir.join(TOPOLOGY_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// The recorded topology, if this topology was brought up, with the
    /// addresses its pods were given.
    pub fn load(&self) -> Result<Option<Topology>> {
        let path = self.dir.join(TOPOLOGY_FILE);
        let Some(text) = self.load_text()? else {
            return Ok(None);
        };
        Topology::from_toml_keeping(&text, &self.load_addresses()?)
            .map(Some)
            .with_context(|| format!("{} is not a valid topology", path.display()))
    }

    /// Records the addresses `up` gave the pods (atomically).
    pub fn save_addresses(&self, assigned: &Assigned) -> Result<()> {
        let json = serde_json::to_vec_pretty(assigned).context("encoding pod addresses")?;
        write_atomically(&self.dir, ADDRESSES_FILE, &json)
    }

    /// The addresses recorded by the last `up` (none before the first).
    pub fn load_addresses(&self) -> Result<Assigned> {
        let path = self.dir.join(ADDRESSES_FILE);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a valid address record", path.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Assigned::new()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Records that the runtime's endpoints are owed a rewire for the
    /// recorded description: written under the network's lock before the
    /// change that owes it is made, removed by whoever finishes the rewire.
    /// Left by a rewire that was killed, it tells the next change (or ADD)
    /// to do it (see [`rewire_lock`]).
    /// `across_bridge`: the rewire takes endpoints onto or off a bridge.
    pub fn owe_rewire(&self, across_bridge: bool) -> Result<()> {
        let text: &[u8] = if across_bridge { ACROSS_BRIDGE } else { b"" };
        write_atomically(&self.dir, REWIRE_OWED_FILE, text)
    }

    /// Whether a rewire of the endpoints is owed (see [`StateDir::owe_rewire`]).
    pub fn rewire_owed(&self) -> bool {
        self.dir.join(REWIRE_OWED_FILE).exists()
    }

    /// Whether the rewire owed takes endpoints onto or off a bridge.
    pub fn rewire_across_bridge(&self) -> bool {
        fs::read(self.dir.join(REWIRE_OWED_FILE)).is_ok_and(|text| text == ACROSS_BRIDGE)
    }

    /// The endpoints are rewired for the recorded description.
    pub fn rewire_done(&self) -> Result<()> {
        let path = self.dir.join(REWIRE_OWED_FILE);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }

    pub fn remove(&self) -> Result<()> {
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", self.dir.display())),
        }
    }
}

/// Writes `dir/name` whole or not at all (write a temporary file, then
/// rename it over the old one), private to its owner (see [`private_dir`]).
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    private_dir(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    private_file(&tmp, true)
        .and_then(|mut file| file.write_all(bytes))
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, dir.join(name)).with_context(|| format!("saving {}", dir.join(name).display()))
}

// ---------------------------------------------------------------------------
// Permissions: everything under /run/vethctl is its owner's alone.
//
// A lock file anyone can open is a lock anyone can hold (`flock` needs only
// a read-only descriptor): a local user would stall `mode set`, `down` and
// every CNI ADD. Records say which pods run where. So directories are made
// 0700 and files 0600 by the call that creates them (the umask can only
// take bits away), never chmod-ed after, so there is no moment at which
// another user could open them.

const PRIVATE_DIR_MODE: u32 = 0o700;
const PRIVATE_FILE_MODE: u32 = 0o600;

/// Creates `dir` and its missing parents, each 0700.
pub fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// Opens `path` for writing, creating it 0600 if it is missing (and
/// emptying it with `truncate`).
pub fn private_file(path: &Path, truncate: bool) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .truncate(truncate)
        .write(true)
        .mode(PRIVATE_FILE_MODE)
        .open(path)
}

/// Makes [`STATE_ROOT`] private, and, when an older
/// vethctl left it open to others, everything under it: directories 0700,
/// files 0600. Run at the start of every command that reads or writes
/// state. The root's mode tells the two apart: this vethctl never makes it
/// anything but 0700, so a private root needs no walk (one `stat` per
/// command), and once it is private nobody else can reach what is below,
/// whatever an older vethctl still running makes there.
pub fn secure_state_root() -> Result<()> {
    secure_tree(Path::new(STATE_ROOT))?;
    secure_tree(&root())
}

/// [`secure_state_root`] for `root` (tests use their own).
pub fn secure_tree(root: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::fs::PermissionsExt;
    let mode = match fs::symlink_metadata(root) {
        // Only its owner may change it (a non-root uid with
        // CAP_DAC_OVERRIDE may not); the owner's next command will.
        Ok(meta) if meta.is_dir() && meta.uid() != nix::unistd::geteuid().as_raw() => return Ok(()),
        Ok(meta) if meta.is_dir() => meta.permissions().mode(),
        // Made private when something is first written.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Ok(_) => anyhow::bail!(
            "{} is not a directory; vethctl keeps its state there: move it away",
            root.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("reading {}", root.display())),
    };
    if mode & 0o777 == PRIVATE_DIR_MODE {
        return Ok(());
    }
    // The root first: from then on nobody else gets in, while the walk
    // closes up what is below.
    set_mode(root, PRIVATE_DIR_MODE)?;
    close_below(root)
}

/// Sets every directory below `dir` to 0700 and every file to 0600.
/// Symbolic links are left alone (their own mode means nothing, and
/// following them could reach outside the tree).
fn close_below(dir: &Path) -> Result<()> {
    let entries = fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let path = entry.path();
        let kind = match entry.file_type() {
            Ok(kind) => kind,
            // Removed meanwhile.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        if kind.is_dir() {
            set_mode(&path, PRIVATE_DIR_MODE)?;
            close_below(&path)?;
        } else if kind.is_file() {
            set_mode(&path, PRIVATE_FILE_MODE)?;
        }
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match fs::set_permissions(path, fs::Permissions::from_mode(mode)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("making {} private", path.display())),
    }
}

/// The networks an agent keeps current and reports on: all that are
/// recorded, or only those named (`vethctl agent --network`), so that two
/// agents on one node (a lab's simulated nodes, tests) never act on each
/// other's networks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    only: Option<std::collections::BTreeSet<String>>,
}

impl Scope {
    /// Every recorded network, present and future.
    pub fn all() -> Scope {
        Scope::default()
    }

    /// Only the networks `names`; all of them when `names` is empty.
    pub fn only<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> Scope {
        let names: std::collections::BTreeSet<String> = names.into_iter().map(Into::into).collect();
        Scope {
            only: (!names.is_empty()).then_some(names),
        }
    }

    pub fn includes(&self, name: &str) -> bool {
        self.only.as_ref().is_none_or(|n| n.contains(name))
    }

    /// The recorded networks within the scope, sorted.
    pub fn recorded(&self) -> Result<Vec<String>> {
        let mut names = recorded_topologies()?;
        names.retain(|n| self.includes(n));
        Ok(names)
    }
}

/// Names of the topologies with recorded state, sorted.
pub fn recorded_topologies() -> Result<Vec<String>> {
    let root = root();
    let entries = match fs::read_dir(&root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", root.display())),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join(TOPOLOGY_FILE).exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

/// A trace session's claim on one of the topology's
/// [`veth_common::TRACE_SESSIONS`] entries, held until dropped (a killed
/// `trace` releases it with its file descriptors).
pub struct TraceClaim {
    pub index: usize,
    _file: File,
}

/// Claims the first trace session entry no live `trace` holds.
pub fn claim_trace_session(topology: &str) -> Result<TraceClaim> {
    let dir = StateDir::new(topology);
    if !dir.exists() {
        anyhow::bail!("topology {topology:?} is not up (start it with `vethctl up`)");
    }
    for index in 0..veth_common::TRACE_SESSIONS {
        let path = dir.path().join(format!(".trace-{index}.lock"));
        if let Some(file) = lock_file(&path, false)? {
            return Ok(TraceClaim { index, _file: file });
        }
    }
    anyhow::bail!(
        "topology {topology:?} already has {} trace sessions; stop one (or wait) and try again",
        veth_common::TRACE_SESSIONS
    )
}

/// An exclusive lock over all changes (`up`, `down`), held until dropped.
/// One lock for all topologies: changes are short, and the shared host
/// namespace (bpffs, /run/netns) is then never raced.
pub struct Lock {
    _file: File,
    /// A network lock's file, removed on release when the network is gone
    /// and nobody else holds or waits on it (see [`network_lock`]).
    network_file: Option<(PathBuf, PathBuf)>,
    /// An exclusive network lock's rewire lock, released after it.
    rewire: Option<Box<Lock>>,
}

impl Lock {
    /// Releases the network's lock and keeps only its rewire lock (see
    /// [`rewire_lock`]): endpoint work (ADD, DEL) goes on again while the
    /// holder rewires the endpoints, and the next change still waits.
    pub fn keep_rewire(mut self) -> Option<Lock> {
        self.rewire.take().map(|rewire| *rewire)
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        let Some((path, state_dir)) = &self.network_file else {
            return;
        };
        if state_dir.exists() {
            return;
        }
        // Only as the sole holder (a shared hold is upgraded, without
        // waiting): a lock file removed under another holder would let a
        // new taker lock a new file beside it.
        // SAFETY: flock on an fd we own.
        let sole =
            unsafe { libc::flock(self._file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        let same =
            fs::metadata(path).map(|m| m.ino()).ok() == self._file.metadata().map(|m| m.ino()).ok();
        if sole && same {
            let _ = fs::remove_file(path);
        }
    }
}

pub fn lock() -> Result<Lock> {
    use std::os::unix::fs::MetadataExt;
    let root = root();
    let path = root.join(LOCK_FILE);
    let what = "vethctl's node-wide lock";
    loop {
        private_dir(&root)?;
        let file = flock_file(&path, libc::LOCK_EX, Some(what))?
            .context("a blocking lock returned without the lock")?;
        // A node namespace's last `down` removes its root, lock file and
        // all (see [`remove_node_root_if_idle`]): a lock on a removed file
        // guards nothing, so take the one now at the path instead.
        if fs::metadata(&path).map(|m| m.ino()).ok() == Some(file.metadata()?.ino()) {
            return Ok(Lock {
                _file: file,
                network_file: None,
                rewire: None,
            });
        }
    }
}

/// Removes a node namespace's state root `root` when nothing is recorded
/// there any more (only the node-wide lock, the node's name and an empty
/// `.locks` are left) and nobody holds or awaits the node-wide lock.
pub fn remove_node_root_if_idle(root: &Path) -> Result<()> {
    const LEFT_BEHIND: [&str; 3] = [LOCK_FILE, NETWORK_LOCKS, crate::node::NAME_FILE];
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", root.display())),
    };
    let names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    if names.iter().any(|n| !LEFT_BEHIND.contains(&n.as_str())) {
        return Ok(());
    }
    let Some(_held) = lock_file(&root.join(LOCK_FILE), false)? else {
        return Ok(());
    };
    // Under the lock: a network lock file left means a network is being
    // worked on (its holder removes the file when the network is gone).
    if fs::remove_dir(root.join(NETWORK_LOCKS)).is_err_and(|e| e.kind() != io::ErrorKind::NotFound)
    {
        return Ok(());
    }
    for name in [crate::node::NAME_FILE, LOCK_FILE] {
        match fs::remove_file(root.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("removing {}", root.join(name).display()))
            }
        }
    }
    match fs::remove_dir(root) {
        Ok(()) => Ok(()),
        // Someone made state there meanwhile: it stays.
        Err(_) => Ok(()),
    }
}

/// How a network's lock is held: shared by work on one endpoint (a CNI
/// ADD or DEL, the agent's readiness updates), which many do at once;
/// exclusive by changes of the whole network (`up`, `down`, `mode set`,
/// GC), which wait for all of them, and they for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    Shared,
    Exclusive,
}

/// Where networks' locks live: beside, not inside, their state
/// directories, which `down` removes with everything in them.
const NETWORK_LOCKS: &str = ".locks";

fn network_lock_path(name: &str) -> PathBuf {
    root().join(NETWORK_LOCKS).join(name)
}

/// Network `name`'s lock, held as `hold`; without `wait`, `None` when it
/// cannot be had now. One network's changes never wait for another's.
/// Exclusive, it does not wait for an endpoint rewire (see
/// [`change_lock`]): what holds it alone (GC, rebuilding a lost record,
/// the agent's remap) works per endpoint, under its attachment lock.
pub fn network_lock(name: &str, hold: Hold, wait: bool) -> Result<Option<Lock>> {
    network_lock_with(name, hold, wait, None)
}

fn network_lock_with(
    name: &str,
    hold: Hold,
    wait: bool,
    rewire: Option<Lock>,
) -> Result<Option<Lock>> {
    let what = format!("the lock of network {name:?}");
    let taken = lock_network_file(
        name,
        &network_lock_path(name),
        &what,
        wait,
        |file, block| network_flock(file, hold, block),
    )?;
    Ok(taken.map(|mut lock| {
        lock.rewire = rewire.map(Box::new);
        lock
    }))
}

/// Network `name`'s rewire lock, exclusive: taken by every change of the
/// network ([`change_lock`]) before any other lock (so a change never
/// holds the node-wide lock while it waits for a rewire, and no two
/// lockers wait for each other), and kept after it, alone, by a change
/// that rewires the runtime's endpoints (`RewireEndpoints`, see
/// [`Lock::keep_rewire`]). ADDs and DELs then run beside the rewire, each
/// endpoint's under its attachment lock, instead of waiting behind all of
/// it (ADD p99 rose from ~0.5 s to 8.6 s at 1,000 endpoints in `cargo
/// xtask soak` while `mode set` and the converging ADDs rewired under the
/// network's lock); the next change waits for the rewire to end. A rewire
/// owed ([`StateDir::rewire_owed`]) whose lock is free was abandoned.
pub fn rewire_lock(name: &str, wait: bool) -> Result<Option<Lock>> {
    let what = format!("the endpoint rewire of network {name:?}");
    lock_network_file(name, &rewire_lock_path(name), &what, wait, |file, block| {
        flock(file, libc::LOCK_EX, block)
    })
}

fn rewire_lock_path(name: &str) -> PathBuf {
    root().join(NETWORK_LOCKS).join(format!("{name}.rewire"))
}

/// Where the rewire of a network's endpoints stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rewire {
    /// None owed.
    Done,
    /// A change is rewiring the endpoints now (it holds the rewire lock).
    Running,
    /// One is owed and nobody is doing it (its changer was killed): the
    /// next change must do it.
    Abandoned,
}

/// Where the rewire of network `name`'s endpoints stands, looked at once.
pub fn rewire(name: &str) -> Result<Rewire> {
    if !StateDir::new(name).rewire_owed() {
        return Ok(Rewire::Done);
    }
    Ok(match rewire_lock(name, false)? {
        Some(_) => Rewire::Abandoned,
        None => Rewire::Running,
    })
}

/// Whether network `name` owes its endpoints a rewire that nobody is
/// doing (its changer was killed): the next change must do it.
pub fn rewire_abandoned(name: &str) -> Result<bool> {
    Ok(rewire(name)? == Rewire::Abandoned)
}

/// Whether a change of network `name` is rewiring its endpoints now (and
/// so holds its rewire lock).
pub fn rewire_running(name: &str) -> Result<bool> {
    Ok(rewire(name)? == Rewire::Running)
}

/// Takes `take` on the lock file `path` of network `name` (made private
/// with its directory), as a [`Lock`] that removes the file when the
/// network is gone.
fn lock_network_file(
    name: &str,
    path: &Path,
    what: &str,
    wait: bool,
    take: impl Fn(&File, bool) -> io::Result<()>,
) -> Result<Option<Lock>> {
    use std::os::unix::fs::MetadataExt;
    if let Some(dir) = path.parent() {
        private_dir(dir)?;
    }
    loop {
        let Some(file) = lock_path(path, wait.then_some(what), &take)? else {
            return Ok(None);
        };
        // The last holder of a gone network's lock removes the file (see
        // `Lock`'s drop): a lock on a removed file guards nothing, so take
        // the one now at the path instead.
        let current = fs::metadata(path).map(|m| m.ino()).ok();
        if current == Some(file.metadata()?.ino()) {
            return Ok(Some(Lock {
                _file: file,
                network_file: Some((path.to_path_buf(), StateDir::new(name).path().to_path_buf())),
                rewire: None,
            }));
        }
    }
}

/// The locks a change of network `name` holds: the global one (the host
/// namespace is shared: other topologies' ranges, bpffs), then the
/// network's, exclusively (its rewire lock first, before the global one).
pub fn change_lock(name: &str) -> Result<(Lock, Lock)> {
    change_lock_marked(name, |_| {})
}

/// [`change_lock`], calling `mark` with what was awaited as each lock is
/// had (`--timings`).
pub fn change_lock_marked(name: &str, mark: impl Fn(&str)) -> Result<(Lock, Lock)> {
    let blocking = "a blocking lock returned without the lock";
    let rewire = rewire_lock(name, true)?.context(blocking)?;
    mark("wait for the network's endpoint rewire");
    let global = lock()?;
    mark("wait for the node-wide lock");
    let network =
        network_lock_with(name, Hold::Exclusive, true, Some(rewire))?.context(blocking)?;
    mark("wait for the network's lock");
    Ok((global, network))
}

/// The locks of a change of network `name` whose `rewire` lock is held
/// already: taken first by an ADD that converges the network (see
/// `cni::ensure_network`), or kept alone for a while by a change (see
/// [`Lock::keep_rewire`]).
pub fn change_lock_with(name: &str, rewire: Lock) -> Result<(Lock, Lock)> {
    let global = lock()?;
    let network = network_lock_with(name, Hold::Exclusive, true, Some(rewire))?
        .context("a blocking lock returned without the lock")?;
    Ok((global, network))
}

/// Opens (creating) `path` and takes an exclusive `flock` on it, held until
/// the file is dropped (or its process dies). With `wait`, blocks until
/// the lock is ours; without, `None` if someone else holds it.
pub fn lock_file(path: &Path, wait: bool) -> Result<Option<File>> {
    let what = format!("the lock {}", path.display());
    flock_file(path, libc::LOCK_EX, wait.then_some(what.as_str()))
}

/// Opens (creating) `path` and `flock`s it with `operation` (`LOCK_EX` or
/// `LOCK_SH`); see [`lock_file`]. `wait`: block, and after a second of it
/// say that `wait` (what the lock is) is awaited, and who holds it.
fn flock_file(path: &Path, operation: libc::c_int, wait: Option<&str>) -> Result<Option<File>> {
    lock_path(path, wait, |file, block| flock(file, operation, block))
}

/// Opens (creating) `path` and takes `take(file, block)`: first without
/// blocking (most locks are free, and only a real wait needs its
/// announcement, a thread), then, with `wait`, blocking.
fn lock_path(
    path: &Path,
    wait: Option<&str>,
    take: impl Fn(&File, bool) -> io::Result<()>,
) -> Result<Option<File>> {
    use std::os::unix::fs::OpenOptionsExt;
    // Readable too: a shared record lock (a network's turnstile) needs it.
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(PRIVATE_FILE_MODE)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let error = match take(&file, false) {
        Ok(()) => return Ok(Some(file)),
        Err(e) => e,
    };
    let blocked = error.raw_os_error() == Some(libc::EWOULDBLOCK);
    let result = match wait {
        Some(what) if blocked => {
            let _announce = crate::lock_wait::announce(&file, what);
            take(&file, true)
        }
        None if blocked => return Ok(None),
        _ => Err(error),
    };
    result
        .map(|()| Some(file))
        .with_context(|| format!("locking {}", path.display()))
}

fn flock(file: &File, operation: libc::c_int, block: bool) -> io::Result<()> {
    let operation = if block {
        operation
    } else {
        operation | libc::LOCK_NB
    };
    // SAFETY: flock on an fd we own.
    match unsafe { libc::flock(file.as_raw_fd(), operation) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// A network's lock, writers first. `flock` grants a shared hold whenever
/// no exclusive one is held, waiting or not: with ADDs and DELs
/// overlapping (8 at a time in `cargo xtask soak`) a change waiting for
/// the exclusive hold waited for a moment with none, 0.3–9 s with 500
/// endpoints (`mode set` took up to 47 s in the soak). So a turnstile
/// goes first: an OFD record lock on the file's first byte (kept apart
/// from `flock` by the kernel), which a change holds from before it waits
/// for the `flock` until it has it, and which endpoint work passes (holds
/// shared for as long as its own `flock` takes). New endpoint work waits
/// behind a waiting change, the work in progress ends, the change runs.
fn network_flock(file: &File, hold: Hold, block: bool) -> io::Result<()> {
    let (record, operation) = match hold {
        Hold::Shared => (libc::F_RDLCK, libc::LOCK_SH),
        Hold::Exclusive => (libc::F_WRLCK, libc::LOCK_EX),
    };
    turnstile(file, record, block)?;
    let locked = flock(file, operation, block);
    let _ = turnstile(file, libc::F_UNLCK, false);
    locked
}

/// Sets the OFD record lock `kind` on the file's first byte.
fn turnstile(file: &File, kind: libc::c_int, block: bool) -> io::Result<()> {
    // SAFETY: a zeroed `struct flock` is valid; the fields that matter are
    // set below (l_pid must be 0 for OFD locks).
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = 0;
    lock.l_len = 1;
    let command = if block {
        libc::F_OFD_SETLKW
    } else {
        libc::F_OFD_SETLK
    };
    // SAFETY: fcntl on an fd we own with a valid `struct flock`.
    match unsafe { libc::fcntl(file.as_raw_fd(), command, &lock) } {
        0 => Ok(()),
        _ => match io::Error::last_os_error() {
            // A conflicting record lock, as flock's EWOULDBLOCK.
            e if e.raw_os_error() == Some(libc::EACCES) => {
                Err(io::Error::from_raw_os_error(libc::EWOULDBLOCK))
            }
            e => Err(e),
        },
    }
}

/// Where `vethctl agent` on the host records that it runs: one agent per
/// node, since two would both act on every network (a node namespace's
/// agent uses [`crate::node::Node::agent_lock`]).
pub const AGENT_LOCK: &str = "/run/vethctl/agent.lock";

/// The running agent's hold on its lock file, which holds its PID; the
/// file goes when the agent stops (the lock, also when it is killed).
pub struct AgentLock {
    file: File,
    path: PathBuf,
}

impl AgentLock {
    /// Takes the agent lock at `path` (its directory made private if
    /// missing) and writes our PID into it; an error naming the PID of
    /// the agent that holds it.
    pub fn take(path: &Path) -> Result<AgentLock> {
        use std::io::Write;
        use std::os::unix::fs::MetadataExt;
        if let Some(dir) = path.parent() {
            private_dir(dir)?;
        }
        loop {
            let Some(mut file) = lock_file(path, false)? else {
                let holder = fs::read_to_string(path).unwrap_or_default();
                let holder = match holder.trim() {
                    "" => "PID unknown yet".to_string(),
                    pid => format!("PID {pid}"),
                };
                anyhow::bail!(
                    "another vethctl agent ({holder}) is running on this node: it holds {}. \
                     One agent per node; stop that one first (or, for a lab node of its own, \
                     give this one another --lock-file)",
                    path.display()
                );
            };
            // A stopping agent removes the file: a lock on the removed one
            // guards nothing, so take the one now at the path instead.
            if fs::metadata(path).map(|m| m.ino()).ok() != Some(file.metadata()?.ino()) {
                continue;
            }
            file.set_len(0)
                .and_then(|()| writeln!(file, "{}", std::process::id()))
                .with_context(|| format!("writing our PID into {}", path.display()))?;
            return Ok(AgentLock {
                file,
                path: path.to_path_buf(),
            });
        }
    }
}

impl Drop for AgentLock {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        // Only our own file: another agent may have taken over the path.
        let same = fs::metadata(&self.path).map(|m| m.ino()).ok()
            == self.file.metadata().map(|m| m.ino()).ok();
        if same {
            let _ = fs::remove_file(&self.path);
        }
    }
}

// ---------------------------------------------------------------------------
// The ledger: what a topology created, so that it removes only its own.

pub const LEDGER_FILE: &str = "ledger.json";

/// Every object a topology created, in `/run/vethctl/<topology>/ledger.json`.
///
/// vethctl deletes or changes only what is recorded here, never what merely
/// carries its name prefix: the node is shared with containerd (`cni-…`
/// namespaces), Docker (`br-…` bridges) and operators. An entry is written
/// (atomically) before its object is made, so a crash never leaves an
/// object of ours unrecorded; an entry whose object was never made is
/// harmless. Where the kernel lets an object carry a mark, the mark must be
/// there too before anything recorded but not confirmed (a crashed `up`) is
/// taken for ours: links carry the alias [`link_mark`], IPv4 node addresses
/// on lo the label `lo:<topology>`, unreachable routes vethctl's route
/// protocol, the nf_tables table its name and comment. Namespaces, IPv6
/// addresses and addresses on a bridge carry no mark: the ledger alone
/// proves them ours.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ledger {
    /// Named network namespaces.
    #[serde(default)]
    pub netns: std::collections::BTreeSet<String>,
    /// Host-namespace links, by the name they were made with.
    #[serde(default)]
    pub links: std::collections::BTreeMap<String, LedgerLink>,
    /// Addresses added to host interfaces (lo, the bridge).
    #[serde(default)]
    pub addresses: std::collections::BTreeSet<LedgerAddress>,
    /// Unreachable routes for the pod ranges.
    #[serde(default)]
    pub unreachable: std::collections::BTreeSet<ipnet::IpNet>,
    /// The nf_tables table `vethctl_<topology>`.
    #[serde(default)]
    pub nat_table: bool,
    /// `/sys/fs/bpf/vethctl/<topology>/`.
    #[serde(default)]
    pub pins: bool,
}

/// A link of the ledger.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LedgerLink {
    /// `veth` or `bridge`.
    pub kind: String,
    /// Set once the link exists: the proof that it is ours whatever it is
    /// called now (ifindexes are not reused while a link lives).
    pub ifindex: Option<u32>,
    /// The MAC it was made with, a mark the kernel applies atomically on
    /// creation (the alias can only follow a moment later).
    #[serde(default)]
    pub mac: Option<[u8; 6]>,
}

/// An address of the ledger: on `device` (as the ledger names the link).
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct LedgerAddress {
    pub device: String,
    pub address: std::net::IpAddr,
    pub prefix_len: u8,
}

impl std::fmt::Display for LedgerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} on {}", self.address, self.prefix_len, self.device)
    }
}

/// The alias (IFLA_IFALIAS) marking a link as made by topology `name`.
pub fn link_mark(topology: &str) -> String {
    format!("vethctl:{topology}")
}

impl Ledger {
    /// The topology's ledger; `None` if it has none (never up, or brought up
    /// by a vethctl without ledgers). An unreadable ledger is an error: what
    /// it would prove cannot be guessed.
    pub fn load(state: &StateDir) -> Result<Option<Ledger>> {
        let path = state.path().join(LEDGER_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        serde_json::from_str(&text).map(Some).with_context(|| {
            format!(
                "{} is unreadable, and it is what proves which objects are this topology's; \
                 restore it, or remove the topology's objects by hand and then the file",
                path.display()
            )
        })
    }

    /// Writes the ledger atomically (a new file renamed over the old).
    pub fn save(&self, state: &StateDir) -> Result<()> {
        write_atomically(state.path(), LEDGER_FILE, &serde_json::to_vec_pretty(self)?)
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self == &Ledger::default()
    }
}

#[cfg(test)]
mod permission_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn an_open_tree_is_closed_up_and_links_are_left_alone() {
        let root = std::env::temp_dir().join(format!("vethctl-perm-{}", std::process::id()));
        let open = |path: &Path, m: u32| {
            fs::set_permissions(path, fs::Permissions::from_mode(m)).unwrap();
        };
        fs::create_dir_all(root.join("net").join("endpoints")).unwrap();
        fs::write(root.join("net").join("topology.toml"), "x").unwrap();
        fs::write(root.join("net").join("endpoints").join("a.json"), "{}").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", root.join("link")).unwrap();
        let outside = mode(Path::new("/etc/hostname"));
        for (path, m) in [
            (root.clone(), 0o755),
            (root.join("net"), 0o777),
            (root.join("net").join("endpoints"), 0o755),
            (root.join("net").join("topology.toml"), 0o644),
            (root.join("net").join("endpoints").join("a.json"), 0o666),
        ] {
            open(&path, m);
        }
        secure_tree(&root).unwrap();
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join("net")), 0o700);
        assert_eq!(mode(&root.join("net").join("endpoints")), 0o700);
        assert_eq!(mode(&root.join("net").join("topology.toml")), 0o600);
        assert_eq!(
            mode(&root.join("net").join("endpoints").join("a.json")),
            0o600
        );
        assert_eq!(mode(Path::new("/etc/hostname")), outside, "not followed");
        // A private root is taken as closed up: nothing below is walked.
        open(&root.join("net").join("topology.toml"), 0o644);
        secure_tree(&root).unwrap();
        assert_eq!(mode(&root.join("net").join("topology.toml")), 0o644);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn what_vethctl_writes_is_private_whatever_the_umask() {
        let root = std::env::temp_dir().join(format!("vethctl-umask-{}", std::process::id()));
        let dir = root.join("a").join("b");
        // SAFETY: umask has no preconditions. Restored below; files other
        // tests of this process make meanwhile in their temporary
        // directories may come out wider, and none of them checks.
        let old = unsafe { libc::umask(0) };
        write_atomically(&dir, "record.json", b"{}").unwrap();
        let lock = lock_file(&dir.join(".lock"), false).unwrap();
        unsafe { libc::umask(old) };
        assert!(lock.is_some());
        for path in [root.clone(), root.join("a"), dir.clone()] {
            assert_eq!(mode(&path), 0o700, "{}", path.display());
        }
        assert_eq!(mode(&dir.join("record.json")), 0o600);
        assert_eq!(mode(&dir.join(".lock")), 0o600);
        fs::remove_dir_all(&root).unwrap();
    }
}

#[cfg(test)]
mod ledger_tests {
    use super::*;

    #[test]
    fn ledger_round_trips_and_refuses_garbage() {
        let dir = std::env::temp_dir().join(format!("vethctl-ledger-{}", std::process::id()));
        let state = StateDir::at(&dir);
        assert_eq!(Ledger::load(&state).unwrap(), None);
        let mut ledger = Ledger::default();
        assert!(ledger.is_empty());
        ledger.netns.insert("t-a".into());
        ledger.links.insert(
            "t-a".into(),
            LedgerLink {
                kind: "veth".into(),
                ifindex: Some(7),
                mac: None,
            },
        );
        ledger.addresses.insert(LedgerAddress {
            device: "lo".into(),
            address: "10.1.0.1".parse().unwrap(),
            prefix_len: 32,
        });
        ledger.unreachable.insert("fd00:1::/64".parse().unwrap());
        ledger.nat_table = true;
        ledger.save(&state).unwrap();
        assert_eq!(Ledger::load(&state).unwrap(), Some(ledger));
        fs::write(dir.join(LEDGER_FILE), "garbage").unwrap();
        let err = format!("{:#}", Ledger::load(&state).unwrap_err());
        assert!(err.contains("unreadable"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
