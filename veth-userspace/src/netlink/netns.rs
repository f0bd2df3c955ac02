//! Named network namespaces, compatible with `ip netns`: a namespace is kept
//! alive by a bind mount of its nsfs inode at `/run/netns/<name>`.

use std::{
    fs::{self, File, OpenOptions},
    future::Future,
    io,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context, Result};
use nix::{
    mount::{mount, umount2, MntFlags, MsFlags},
    sched::{setns, unshare, CloneFlags},
    sys::statfs::{statfs, FsType},
};

pub const NETNS_RUN_DIR: &str = "/run/netns";
/// `NSFS_MAGIC` from linux/magic.h: the filesystem of namespace files.
const NSFS_MAGIC: FsType = FsType(0x6e73_6673);

/// Where namespace `name` is: `/run/netns/<name>` for one of ours (made
/// unique per node in the shared /run/netns: `/run/netns/<node>-<name>`
/// when a node namespace made it, see [`crate::node`]), the name itself
/// for a runtime's namespace given by absolute path (CNI's `CNI_NETNS`,
/// see [`crate::model::Pod::netns_is_ours`]).
pub fn path(name: &str) -> PathBuf {
    if name.starts_with('/') {
        PathBuf::from(name)
    } else {
        Path::new(NETNS_RUN_DIR).join(kernel_name(name))
    }
}

/// The name under /run/netns of our namespace `name` on this node, as
/// `ip netns` shows it (a runtime's path stays as it is).
pub fn kernel_name(name: &str) -> String {
    if name.starts_with('/') {
        return name.to_string();
    }
    format!("{}{name}", crate::node::current().netns_prefix())
}

/// Names of the named namespaces that start with `prefix` (names under
/// /run/netns, whichever node made them).
pub fn list(prefix: &str) -> Result<Vec<String>> {
    let entries = match fs::read_dir(NETNS_RUN_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).context(format!("listing {NETNS_RUN_DIR}")),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    Ok(names)
}

/// True if `/run/netns/<name>` holds a live namespace (not just an empty
/// file left by a crash between creating the file and mounting over it).
pub fn exists(name: &str) -> bool {
    statfs(&path(name)).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC)
}

/// Why `name` (a runtime's path) cannot hold a pod's interface: no
/// namespace there, a namespace of another kind (`/proc/self/ns/pid`), or
/// the network namespace this process runs in — the node's, where the
/// pod side would take the node's default route.
pub fn check_pod_netns(name: &str) -> std::result::Result<(), String> {
    use std::os::{fd::AsRawFd, unix::fs::MetadataExt};
    const FIX: &str = "pass the path of the pod's network namespace";
    match statfs(&path(name)) {
        Ok(s) if s.filesystem_type() == NSFS_MAGIC => {}
        Ok(_) => {
            return Err(format!(
                "not a network namespace (no nsfs file there); {FIX}"
            ))
        }
        Err(nix::errno::Errno::ENOENT) => return Err(format!("does not exist; {FIX}")),
        // `/proc/<pid>/ns/net` of a process the plugin may not trace.
        Err(e @ (nix::errno::Errno::EACCES | nix::errno::Errno::EPERM)) => {
            return Err(format!(
                "cannot be opened ({e}: the plugin may not look into that process's \
                 namespaces); {FIX}"
            ))
        }
        Err(e) => return Err(format!("cannot be looked at ({e}); {FIX}")),
    }
    let file = File::open(path(name)).map_err(|e| format!("cannot be opened: {e}"))?;
    // SAFETY: NS_GET_NSTYPE reads nothing from user memory; the fd is ours.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), libc::NS_GET_NSTYPE) };
    if kind != libc::CLONE_NEWNET {
        return Err(format!(
            "a namespace of another kind, not a network namespace; {FIX}"
        ));
    }
    let (target, own) = (file.metadata(), fs::metadata("/proc/self/ns/net"));
    if let (Ok(target), Ok(own)) = (target, own) {
        if (target.dev(), target.ino()) == (own.dev(), own.ino()) {
            return Err(format!(
                "the node's own network namespace (the one the plugin runs in), not a pod's; {FIX}"
            ));
        }
    }
    Ok(())
}

/// The inode of the live namespace named `name`: the same namespace keeps
/// it, a recreated one gets another.
pub fn inode(name: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    exists(name).then(|| fs::metadata(path(name)).ok().map(|m| m.ino()))?
}

/// Creates the namespace if it does not exist yet.
pub fn create(name: &str) -> Result<()> {
    if exists(name) {
        return Ok(());
    }
    let target = path(name);
    // unshare(CLONE_NEWNET) moves only the calling thread: do it on a
    // thread of its own, which ends right after pinning the namespace.
    on_host_mounts(&format!("netns-new-{name}"), move || {
        make_run_dir_shared()?;
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&target)
            .with_context(|| format!("creating {}", target.display()))?;
        unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .context("bind-mounting the new namespace")
    })
    .with_context(|| format!("creating network namespace {name:?}"))
}

/// Removes the namespace's name; the namespace goes away with its last
/// user. Missing namespaces are fine (idempotent `down`).
pub fn delete(name: &str) -> Result<()> {
    let target = path(name);
    on_host_mounts(&format!("netns-del-{name}"), move || {
        match umount2(&target, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(e).with_context(|| format!("unmounting {}", target.display())),
        }
        match fs::remove_file(&target) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", target.display())),
        }
    })
}

/// Runs `f` on a thread of its own in the host's mount namespace, where
/// the bind mounts that keep our namespaces alive must be made and
/// removed: under `ip netns exec` the process has a mount namespace of its
/// own, a slave of the host's, so its mounts would neither reach the host
/// nor outlive it (see [`crate::node`]). On the host, just a thread.
fn on_host_mounts<F>(label: &str, f: F) -> Result<()>
where
    F: FnOnce() -> Result<()> + Send + 'static,
{
    let host_mounts =
        match crate::node::current().host_mount_ns() {
            Some(path) => Some(File::open(&path).with_context(|| {
                format!("opening the host's mount namespace {}", path.display())
            })?),
            None => None,
        };
    std::thread::Builder::new()
        .name(label.chars().take(15).collect())
        .spawn(move || -> Result<()> {
            if let Some(ns) = host_mounts {
                // setns(CLONE_NEWNS) refuses a thread that shares its
                // filesystem context (root, cwd) with others.
                unshare(CloneFlags::CLONE_FS).context("unshare(CLONE_FS)")?;
                setns(ns.as_fd(), CloneFlags::CLONE_NEWNS)
                    .context("entering the host's mount namespace")?;
            }
            f()
        })?
        .join()
        .map_err(|_| anyhow!("namespace thread panicked"))?
}

/// Makes this whole process act for node `name` (a namespace under
/// /run/netns made with `ip netns add`), as `ip netns exec NAME` would:
/// the node's network namespace, and a mount namespace of our own (a
/// slave of the host's) with that namespace's `/sys`. Must run while the
/// process has one thread (first thing in `main`): namespaces belong to
/// threads, and threads made later inherit them. Then [`crate::node`]
/// finds the node as a command run under `ip netns exec` does.
pub fn enter_node(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        bail!("--node {name:?}: give the name of a namespace under {NETNS_RUN_DIR} (as `ip netns list` shows it)");
    }
    // Not `path`: it names namespaces after the node, which is not known
    // before we are in it.
    let target = Path::new(NETNS_RUN_DIR).join(name);
    if !statfs(&target).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC) {
        bail!("--node {name:?}: no network namespace {}; make it with `ip netns add {name}` (see `ip netns list`)", target.display());
    }
    let ns = File::open(&target).with_context(|| format!("opening {}", target.display()))?;
    setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering network namespace {name:?}"))?;
    unshare(CloneFlags::CLONE_NEWNS)
        .context("unshare(CLONE_NEWNS) (is the process still single-threaded?)")?;
    // Our mounts must not reach the host; the host's still reach us
    // (namespaces the node makes, see `create`).
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .context("making / a slave mount")?;
    // A sysfs mounted now shows the node's interfaces in /sys/class/net.
    match umount2("/sys", MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
        Err(e) => return Err(e).context("unmounting the host's /sys"),
    }
    mount(
        Some(name),
        "/sys",
        Some("sysfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .context("mounting the node's /sys")
}

/// Opens a namespace, e.g. to hand its fd to the kernel (`IFLA_NET_NS_FD`).
pub fn open(name: &str) -> Result<File> {
    if !exists(name) {
        bail!("network namespace {name:?} does not exist");
    }
    File::open(path(name)).with_context(|| format!("opening network namespace {name:?}"))
}

/// Runs `f` on a fresh OS thread that has entered namespace `name`, and
/// returns its result. Sockets `f` opens belong to that namespace.
pub fn on_thread<T, F>(name: &str, f: F) -> Result<std::thread::JoinHandle<Result<T>>>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let ns = open(name)?;
    let label = name.to_string();
    std::thread::Builder::new()
        .name(format!("netns-{name}"))
        .spawn(move || {
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering network namespace {label:?}"))?;
            f()
        })
        .context("spawning a namespace thread")
}

/// Runs async netlink work inside namespace `name`: a dedicated thread
/// enters it, opens an rtnetlink connection there and drives `f` on a
/// current-thread runtime. The caller's runtime threads never change
/// namespace.
pub async fn run_in<T, F, Fut>(name: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(rtnetlink::Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    on_thread(name, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let result = runtime.block_on(async move {
            let (connection, handle, _) =
                rtnetlink::new_connection().context("opening rtnetlink")?;
            tokio::spawn(connection);
            f(handle).await
        });
        let _ = tx.send(result);
        Ok(())
    })?;
    rx.await
        .map_err(|_| anyhow!("namespace thread for {name:?} ended without a result"))?
}

/// Makes /run/netns a shared mount point, as `ip netns add` does, so that
/// namespaces created here are visible in mount namespaces made later.
fn make_run_dir_shared() -> Result<()> {
    fs::create_dir_all(NETNS_RUN_DIR).with_context(|| format!("creating {NETNS_RUN_DIR}"))?;
    let shared = || {
        mount(
            Some("none"),
            NETNS_RUN_DIR,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => Ok(()),
        // Not a mount point yet: bind it onto itself first.
        Err(nix::errno::Errno::EINVAL) => {
            mount(
                Some(NETNS_RUN_DIR),
                NETNS_RUN_DIR,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .context("bind-mounting /run/netns")?;
            shared().context("making /run/netns shared")
        }
        Err(e) => Err(e).context("making /run/netns shared"),
    }
}
