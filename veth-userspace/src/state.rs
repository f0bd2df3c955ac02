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

use crate::model::Topology;

pub const STATE_ROOT: &str = "/run/vethctl";
const TOPOLOGY_FILE: &str = "topology.toml";
const LOCK_FILE: &str = ".lock";

/// `/run/vethctl/<topology>/`.
#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn new(topology: &str) -> StateDir {
        StateDir {
            dir: Path::new(STATE_ROOT).join(topology),
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

    /// Records the description `up` is converging to. Written before any
    /// kernel object is made, so a crashed `up` is still visible.
    pub fn save(&self, topology_text: &str) -> Result<()> {
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let tmp = self.dir.join(format!(".{TOPOLOGY_FILE}.tmp"));
        fs::write(&tmp, topology_text).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, self.dir.join(TOPOLOGY_FILE))
            .with_context(|| format!("saving state in {}", self.dir.display()))
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

    /// The recorded topology, if this topology was brought up.
    pub fn load(&self) -> Result<Option<Topology>> {
        let path = self.dir.join(TOPOLOGY_FILE);
        let Some(text) = self.load_text()? else {
            return Ok(None);
        };
        Topology::from_toml(&text)
            .map(Some)
            .with_context(|| format!("{} is not a valid topology", path.display()))
    }

    pub fn remove(&self) -> Result<()> {
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", self.dir.display())),
        }
    }
}

/// Names of the topologies with recorded state, sorted.
pub fn recorded_topologies() -> Result<Vec<String>> {
    let entries = match fs::read_dir(STATE_ROOT) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {STATE_ROOT}")),
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
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock on an fd we own; never blocks.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
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
}

pub fn lock() -> Result<Lock> {
    fs::create_dir_all(STATE_ROOT).with_context(|| format!("creating {STATE_ROOT}"))?;
    let path = Path::new(STATE_ROOT).join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on an fd we own; blocks until the lock is ours.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("locking {}", path.display()));
    }
    Ok(Lock { _file: file })
}
