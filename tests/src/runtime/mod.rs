//! Real container runtimes driven by the tests: a private containerd
//! spoken to over CRI (as kubelet does) and podman with its CNI backend,
//! both on CNI directories of the test's own. Everything is uniquely named
//! and removed when dropped, also when a test panics.
//!
//! ```no_run
//! use veth_tests::runtime::{cni::*, containerd::Containerd, cri::PodSpec, netns::expect_ping};
//! let net = TestNetwork::reserve(); // declared first: dropped last
//! let bin = CniBinDir::with_reference_plugins().unwrap();
//! let conf = CniConfDir::new();
//! conf.write("10-net.conflist", &net.bridge_conflist()).unwrap();
//! let containerd = Containerd::start(&bin, &conf).unwrap();
//! let a = containerd.run_pod(&PodSpec::new("a")).unwrap();
//! let b = containerd.run_pod(&PodSpec::new("b")).unwrap();
//! expect_ping(a.netns(), b.ip(), 3);
//! ```

pub mod cni;
pub mod containerd;
pub mod cri;
pub mod image;
pub mod netns;
pub mod podman;

use std::path::{Path, PathBuf};

/// Whether the test runs as root; prints why the test is skipped if not.
/// The runtime tests call it first and return when it is false.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    eprintln!(
        "SKIPPED {test}: it starts containerd and podman, which needs root \
         (run `sudo cargo xtask test`)"
    );
    false
}

/// Pids of the processes with `arg` as one of their arguments (exactly).
pub fn processes_with_arg(arg: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline.split(|b| *b == 0).any(|a| a == arg.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

/// Mount points at or below `dir` (deepest last), from our mountinfo.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|p| p.starts_with(&dir))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match octal {
            Some(v) if bytes[i] == b'\\' => {
                out.push(v);
                i += 4;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Unmounts (lazily) everything at or below `dir`, deepest first.
pub fn unmount_all(dir: &Path) {
    let mut mounts = mounts_under(dir);
    mounts.reverse();
    for mount in mounts {
        let Ok(c) = std::ffi::CString::new(mount.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: a valid NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// The cgroup hierarchies mounted under /sys/fs/cgroup (each v1
/// controller's and the unified one), deduplicated.
fn cgroup_hierarchies() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.path().canonicalize().ok())
        .filter(|p| p.is_dir())
        .collect();
    roots.sort();
    roots.dedup();
    if roots.is_empty() || Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        roots.push(PathBuf::from("/sys/fs/cgroup"));
    }
    roots
}

/// Where cgroup `path` (absolute, e.g. `/vethctl-t1a2b03`) exists.
pub fn cgroup_dirs(path: &str) -> Vec<PathBuf> {
    let rel = path.trim_start_matches('/');
    cgroup_hierarchies()
        .into_iter()
        .map(|h| h.join(rel))
        .filter(|p| !rel.is_empty() && p.is_dir())
        .collect()
}

/// Removes cgroup `path` and the cgroups below it in every hierarchy,
/// waiting up to 5 s for their last processes to go (conmon and shims exit
/// a moment after their container); returns the directories still there.
pub fn remove_cgroup(path: &str) -> Vec<PathBuf> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        remove_cgroup_once(path);
        let left = cgroup_dirs(path);
        if left.is_empty() || std::time::Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn remove_cgroup_once(path: &str) {
    fn rmdir_tree(dir: &Path) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                rmdir_tree(&entry.path());
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    for dir in cgroup_dirs(path) {
        rmdir_tree(&dir);
    }
}
