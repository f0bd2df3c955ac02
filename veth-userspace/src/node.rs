//! Which node this process runs on, and where that node keeps its state,
//! pins and pod namespaces.
//!
//! On a real machine the node is the host: nothing here changes a path. In
//! the lab a network namespace plays a node, and an operator runs commands
//! for it with `ip netns exec NODE vethctl …`. That gives the process a
//! mount namespace of its own with a fresh `/sys` (no bpffs: pins made
//! there would vanish with the process and detach the programs), while
//! `/run` stays the host's. So a node keys its state by its network
//! namespace's cookie, pins on the host's bpffs, and names its pods'
//! namespaces after itself in the one shared `/run/netns`.

use std::{
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use anyhow::{Context, Result};

/// Where the host keeps vethctl's state, as it always has.
pub const HOST_STATE_ROOT: &str = "/run/vethctl";
/// Where the host mounts bpffs.
pub const HOST_BPFFS: &str = "/sys/fs/bpf";
/// Below the host's roots, one directory per node namespace. Not a valid
/// network name (those are lowercase letters and digits), so it never
/// meets a network's own directory; bpffs refuses '.', hence '_'.
const NODES_DIR: &str = "_nodes";
/// In a node's state root: the node namespace's name, for people (and so
/// that the node's pod namespace names never change once chosen).
pub const NAME_FILE: &str = "netns";

/// The node this process acts for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// `SO_NETNS_COOKIE` of the network namespace: unique for the boot.
    pub cookie: u64,
    place: Place,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Place {
    /// The host's network namespace: today's paths and names.
    Host,
    /// A network namespace playing a node.
    Namespace {
        /// Its name under /run/netns (`n<cookie>` when it has none).
        name: String,
        /// `/proc/<pid>` of a process in the host's namespaces, when this
        /// process does not share the host's mounts (`ip netns exec`).
        host: Option<PathBuf>,
    },
}

/// The node of this process, found once (a process never changes node:
/// namespace work happens on threads of its own, see `netlink::netns`).
pub fn current() -> &'static Node {
    static NODE: OnceLock<Node> = OnceLock::new();
    NODE.get_or_init(|| Node::resolve().unwrap_or_else(|_| Node::host(0)))
}

impl Node {
    fn host(cookie: u64) -> Node {
        Node {
            cookie,
            place: Place::Host,
        }
    }

    fn resolve() -> Result<Node> {
        // Kernels before 5.14 have no cookie: the nsfs inode is as unique
        // while the namespace lives, and falling back to the host's paths
        // from inside a node would let it act on the host's networks.
        let cookie = netns_cookie().or_else(|e| {
            ns_id(Path::new("/proc/self/ns/net"))
                .map(|(_, inode)| inode)
                .ok_or(e)
        })?;
        let Some(host) = host_process() else {
            return Ok(Node::host(cookie));
        };
        if same_ns(&host.join("ns/net"), Path::new("/proc/self/ns/net")) {
            return Ok(Node::host(cookie));
        }
        let shares_mounts = same_ns(&host.join("ns/mnt"), Path::new("/proc/self/ns/mnt"));
        let root = node_root(cookie);
        let name = match fs::read_to_string(root.join(NAME_FILE)) {
            Ok(name) if !name.trim().is_empty() => name.trim().to_string(),
            _ => {
                let name = own_netns_name().unwrap_or_else(|| format!("n{cookie}"));
                // Best effort: a read-only command needs no record, and
                // the next one finds the same name again.
                let _ = crate::state::write_atomically(&root, NAME_FILE, name.as_bytes());
                name
            }
        };
        Ok(Node {
            cookie,
            place: Place::Namespace {
                name,
                host: (!shares_mounts).then_some(host),
            },
        })
    }

    /// True on the host itself (not a node namespace).
    pub fn is_host(&self) -> bool {
        self.place == Place::Host
    }

    /// The node namespace's name (`None` on the host).
    pub fn name(&self) -> Option<&str> {
        match &self.place {
            Place::Host => None,
            Place::Namespace { name, .. } => Some(name),
        }
    }

    /// Where this node's state, locks and ledgers live: `/run/vethctl` on
    /// the host, `/run/vethctl/_nodes/<boot>-<cookie>` for a node namespace.
    pub fn state_root(&self) -> PathBuf {
        match self.place {
            Place::Host => PathBuf::from(HOST_STATE_ROOT),
            Place::Namespace { .. } => node_root(self.cookie),
        }
    }

    /// The host's bpffs as this process reaches it: through the host's
    /// root when `ip netns exec` gave us a `/sys` of our own, so that pins
    /// outlive the process.
    pub fn bpffs(&self) -> PathBuf {
        match &self.place {
            Place::Namespace {
                host: Some(host), ..
            } => host.join("root").join(HOST_BPFFS.trim_start_matches('/')),
            _ => PathBuf::from(HOST_BPFFS),
        }
    }

    /// Where this node's networks are pinned, one directory each:
    /// `<bpffs>/vethctl` on the host, `<bpffs>/vethctl/_nodes/<boot>-<cookie>`
    /// for a node namespace.
    pub fn pins_root(&self) -> PathBuf {
        let root = self.bpffs().join("vethctl");
        match self.place {
            Place::Host => root,
            Place::Namespace { .. } => root.join(NODES_DIR).join(node_key(self.cookie)),
        }
    }

    /// Put before the names of the pod namespaces this node makes in the
    /// shared /run/netns: empty on the host, `<node>-` for a node.
    pub fn netns_prefix(&self) -> String {
        match self.name() {
            None => String::new(),
            Some(name) => format!("{name}-"),
        }
    }

    /// `path` as people on the host see it: a pin reached through the
    /// host's root (see [`Node::bpffs`]) shown at its place on the host.
    pub fn shown(&self, path: &Path) -> PathBuf {
        match &self.place {
            Place::Namespace {
                host: Some(host), ..
            } => match path.strip_prefix(host.join("root")) {
                Ok(inside) => Path::new("/").join(inside),
                Err(_) => path.to_path_buf(),
            },
            _ => path.to_path_buf(),
        }
    }

    /// The host's mount namespace, when this process is not in it (mounts
    /// made here would not reach the host, nor outlive us).
    pub fn host_mount_ns(&self) -> Option<PathBuf> {
        match &self.place {
            Place::Namespace {
                host: Some(host), ..
            } => Some(host.join("ns/mnt")),
            _ => None,
        }
    }

    /// The default lock file of this node's agent.
    pub fn agent_lock(&self) -> PathBuf {
        self.state_root().join("agent.lock")
    }

    /// After the last network of a node namespace is gone: removes its
    /// state root if nothing but locks and its name are left there, so a
    /// deleted node leaves nothing in /run/vethctl. The host keeps its root.
    pub fn forget_if_empty(&self) -> Result<()> {
        if self.is_host() {
            return Ok(());
        }
        crate::state::remove_node_root_if_idle(&self.state_root())?;
        let pins = self.pins_root();
        match fs::remove_dir(&pins) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // Another network's pins are still there.
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("removing {}", pins.display())),
        }
        // The last node gone: `_nodes` itself, where empty (another node
        // still there keeps it).
        for root in [self.state_root(), pins] {
            if let Some(nodes) = root.parent() {
                let _ = fs::remove_dir(nodes);
            }
        }
        Ok(())
    }
}

/// Removes what a node namespace named `name` left on this machine after
/// the namespace itself went without `vethctl down` (`ip netns del`, the
/// lab's "machine died"): the state roots that record that name, their
/// pins on the host's bpffs, and the node's pod namespaces
/// (`<name>-…`). Call it only when no namespace of that name exists: a
/// live node's objects are its own `down`'s to remove. Returns what it
/// removed, for the caller to say.
pub fn forget_dead(name: &str) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let roots = Path::new(HOST_STATE_ROOT).join(NODES_DIR);
    let keys: Vec<String> = match fs::read_dir(&roots) {
        Ok(entries) => entries
            .flatten()
            .filter(|e| {
                fs::read_to_string(e.path().join(NAME_FILE)).is_ok_and(|n| n.trim() == name)
            })
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("listing {}", roots.display())),
    };
    let pins = current().bpffs().join("vethctl").join(NODES_DIR);
    for key in keys {
        for dir in [pins.join(&key), roots.join(&key)] {
            match fs::remove_dir_all(&dir) {
                Ok(()) => removed.push(dir),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
            }
        }
    }
    for pod in crate::netlink::netns::list(&format!("{name}-"))? {
        crate::netlink::netns::delete(&pod)?;
        removed.push(crate::netlink::netns::path(&pod));
    }
    Ok(removed)
}

fn node_root(cookie: u64) -> PathBuf {
    Path::new(HOST_STATE_ROOT)
        .join(NODES_DIR)
        .join(node_key(cookie))
}

/// A node's directory name: the cookie, which is unique only within one
/// boot, after the boot's id, because `/run` is not always a tmpfs (it is
/// a plain directory on some machines, this one included) and a directory
/// left from before a reboot must never be taken for a new namespace's.
fn node_key(cookie: u64) -> String {
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let boot: String = boot
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(8)
        .collect();
    format!("{boot}-{cookie}")
}

/// `SO_NETNS_COOKIE` of this thread's network namespace.
fn netns_cookie() -> Result<u64> {
    use std::os::fd::AsRawFd;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")
        .or_else(|_| std::net::UdpSocket::bind("[::1]:0"))
        .context("opening a socket to learn the network namespace's cookie")?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("getsockopt(SO_NETNS_COOKIE)");
    }
    Ok(cookie)
}

/// `/proc/<pid>` of a process in the host's namespaces: pid 1, or, where
/// pid 1 is hidden from us (some sandboxes deny even root its
/// /proc/1/ns), the kernel's own kthreadd (pid 2 of the initial pid
/// namespace, always in the initial namespaces). `None` when neither can
/// be read: then nothing tells a node from the host, and we act as the host.
fn host_process() -> Option<PathBuf> {
    let readable = |pid: &Path| fs::metadata(pid.join("ns/net")).is_ok();
    let init = PathBuf::from("/proc/1");
    if readable(&init) {
        return Some(init);
    }
    let kthreadd = PathBuf::from("/proc/2");
    let is_kthreadd =
        fs::read_to_string(kthreadd.join("comm")).is_ok_and(|c| c.trim() == "kthreadd");
    (is_kthreadd && readable(&kthreadd)).then_some(kthreadd)
}

fn ns_id(path: &Path) -> Option<(u64, u64)> {
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

fn same_ns(a: &Path, b: &Path) -> bool {
    matches!((ns_id(a), ns_id(b)), (Some(a), Some(b)) if a == b)
}

/// The first name (sorted) under /run/netns bound to our network namespace.
fn own_netns_name() -> Option<String> {
    let own = ns_id(Path::new("/proc/self/ns/net"))?;
    let mut names: Vec<String> = fs::read_dir(crate::netlink::netns::NETNS_RUN_DIR)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    names.into_iter().find(|name| {
        ns_id(&Path::new(crate::netlink::netns::NETNS_RUN_DIR).join(name)) == Some(own)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_namespace(host: Option<&str>) -> Node {
        Node {
            cookie: 42,
            place: Place::Namespace {
                name: "n1".into(),
                host: host.map(PathBuf::from),
            },
        }
    }

    #[test]
    fn the_host_keeps_todays_paths() {
        let node = Node::host(1);
        assert_eq!(node.state_root(), Path::new("/run/vethctl"));
        assert_eq!(node.pins_root(), Path::new("/sys/fs/bpf/vethctl"));
        assert_eq!(node.netns_prefix(), "");
        assert_eq!(node.agent_lock(), Path::new("/run/vethctl/agent.lock"));
        assert_eq!(node.host_mount_ns(), None);
    }

    #[test]
    fn a_node_keeps_its_own_under_the_hosts_roots() {
        let node = in_namespace(Some("/proc/2"));
        let key = node_key(42);
        assert!(key.ends_with("-42") && key.len() == 8 + 3, "{key}");
        assert_eq!(
            node.state_root(),
            Path::new("/run/vethctl/_nodes").join(&key)
        );
        assert_eq!(
            node.pins_root(),
            Path::new("/proc/2/root/sys/fs/bpf/vethctl/_nodes").join(&key)
        );
        assert_eq!(node.netns_prefix(), "n1-");
        assert_eq!(node.host_mount_ns(), Some(PathBuf::from("/proc/2/ns/mnt")));
        assert_eq!(
            node.shown(&node.pins_root()),
            Path::new("/sys/fs/bpf/vethctl/_nodes").join(&key)
        );
        let shared = in_namespace(None);
        assert_eq!(
            shared.pins_root(),
            Path::new("/sys/fs/bpf/vethctl/_nodes").join(&key)
        );
        assert_eq!(shared.host_mount_ns(), None);
    }
}
