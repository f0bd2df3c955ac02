//! What a container runtime does around a CNI plugin, and nothing more:
//! pod network namespaces kept alive by bind mounts of their nsfs files in
//! a directory of our own (containerd's `/var/run/netns/cni-<uuid>`), and
//! the plugin executed with a clean environment, the `CNI_*` variables and
//! the configuration on stdin.

use std::{
    ffi::CString,
    fs,
    io::{Read, Write},
    os::unix::{ffi::OsStrExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Where Debian's reference plugins are; `CNI_PATH` for every plugin
/// (veth-cni finds `host-local` there).
pub const CNI_PATH: &str = "/usr/lib/cni";
/// The interface name every runtime asks for.
pub const IFNAME: &str = "eth0";

/// A new network namespace, bound at `path` (an empty file is made first).
pub fn make_netns(path: &Path) -> Result<()> {
    fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let target = CString::new(path.as_os_str().as_bytes())?;
    // unshare moves only the calling thread: a thread of its own, which
    // ends right after (the mount keeps the namespace).
    std::thread::spawn(move || -> Result<()> {
        // SAFETY: plain syscalls with valid, NUL-terminated arguments.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error()).context("unshare(CLONE_NEWNET)");
            }
            let source = c"/proc/thread-self/ns/net";
            if libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ) != 0
            {
                return Err(std::io::Error::last_os_error()).context("bind-mounting the namespace");
            }
        }
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
    .with_context(|| format!("making network namespace {}", path.display()))
}

/// Unmounts (the namespace goes once nothing else holds it) and removes.
pub fn remove_netns(path: &Path) {
    if let Ok(target) = CString::new(path.as_os_str().as_bytes()) {
        // SAFETY: a plain syscall with a valid path.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
    let _ = fs::remove_file(path);
}

/// The interfaces in the namespace at `path` other than `lo`: what a DEL
/// left behind.
pub fn interfaces_besides_lo(path: &Path) -> Result<Vec<String>> {
    let path = path.to_path_buf();
    std::thread::spawn(move || -> Result<Vec<String>> {
        let ns = fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: a plain syscall on a live fd, on this short-lived thread.
        if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("entering {}", path.display()));
        }
        let dev = fs::read_to_string("/proc/thread-self/net/dev")?;
        Ok(dev
            .lines()
            .skip(2)
            .filter_map(|l| Some(l.split(':').next()?.trim().to_string()))
            .filter(|name| name != "lo")
            .collect())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
}

/// One attachment, as the runtime identifies it.
#[derive(Clone, Debug)]
pub struct Attachment {
    pub container_id: String,
    pub netns: PathBuf,
    pub pod_name: String,
}

impl Attachment {
    /// containerd's `CNI_ARGS` for a pod.
    fn args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench-cni;K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            self.pod_name,
            self.container_id,
            &self.container_id[..32]
        )
    }
}

/// A 64-hex sandbox id, as containerd makes them, unique per run, plugin,
/// concurrency, round and pod.
pub fn container_id(run: u32, plugin: usize, parallel: usize, round: usize, pod: usize) -> String {
    format!(
        "{run:08x}{:08x}{:016x}{:032x}",
        0xbc_u32 << 24,
        ((plugin as u64) << 48) | ((parallel as u64) << 32) | round as u64,
        pod
    )
}

/// What one execution gave.
pub struct Outcome {
    pub elapsed: Duration,
    /// CPU time of the plugin and the children it waited for.
    pub cpu: Duration,
    pub stdout: Vec<u8>,
}

/// Runs `binary` for `command` on `attachment` with `config` on stdin;
/// fails with the plugin's error result and stderr unless it exits 0.
/// The plugin runs in a process group of its own, so Ctrl-C at the
/// terminal stops the benchmark between executions, never in the middle
/// of one.
pub fn run(
    binary: &Path,
    command: &str,
    attachment: &Attachment,
    config: &Value,
) -> Result<Outcome> {
    execute(Command::new(binary), binary, command, attachment, config)
}

/// [`run`] under `strace -f -T -ttt`, its output to `trace`.
pub fn run_traced(
    binary: &Path,
    trace: &Path,
    command: &str,
    attachment: &Attachment,
    config: &Value,
) -> Result<Outcome> {
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-T", "-ttt", "-qq", "-o"])
        .arg(trace)
        .arg(binary);
    execute(cmd, binary, command, attachment, config)
}

fn execute(
    cmd: Command,
    binary: &Path,
    command: &str,
    attachment: &Attachment,
    config: &Value,
) -> Result<Outcome> {
    let done = run_killable(cmd, binary, command, attachment, config, None)?;
    if done.status != 0 {
        bail!("{}", done.failure(binary, command, attachment));
    }
    Ok(done.outcome)
}

/// How one execution ended, whatever its exit.
pub struct Finished {
    /// The wait status (0: exited with 0; 9: killed by SIGKILL).
    pub status: i32,
    pub outcome: Outcome,
    pub stderr: Vec<u8>,
}

impl Finished {
    /// Whether SIGKILL ended it.
    pub fn killed(&self) -> bool {
        libc::WIFSIGNALED(self.status) && libc::WTERMSIG(self.status) == libc::SIGKILL
    }

    /// What a failed execution said, for messages.
    pub fn failure(&self, binary: &Path, command: &str, attachment: &Attachment) -> String {
        format!(
            "{} {command} of {} in {} failed (wait status {:#x}): {} {}",
            binary.display(),
            attachment.container_id,
            attachment.netns.display(),
            self.status,
            String::from_utf8_lossy(&self.outcome.stdout).trim(),
            String::from_utf8_lossy(&self.stderr).trim()
        )
    }
}

/// Runs `cmd` (the plugin, or a tracer around it) as [`run`] does, but
/// also returns a failed execution; with `kill_after` the plugin gets
/// SIGKILL that long after its start (as a node's crash or an OOM kill
/// would; a plugin done by then is not touched).
pub fn run_killable(
    mut cmd: Command,
    binary: &Path,
    command: &str,
    attachment: &Attachment,
    config: &Value,
    kill_after: Option<Duration>,
) -> Result<Finished> {
    let stdin = serde_json::to_vec(config)?;
    cmd.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &attachment.container_id)
        .env("CNI_NETNS", &attachment.netns)
        .env("CNI_IFNAME", IFNAME)
        .env("CNI_PATH", CNI_PATH)
        .env("CNI_ARGS", attachment.args())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    if let Some(after) = kill_after {
        kill_later(child.id(), after)?;
    }
    if let Some(mut input) = child.stdin.take() {
        // A plugin that exits without reading is judged by its exit.
        let _ = input.write_all(&stdin);
    }
    // Read in turn: plugins write a few lines to stderr at most, never
    // enough to fill the pipe while we wait on stdout.
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    if let Some(mut out) = child.stdout.take() {
        out.read_to_end(&mut stdout)?;
    }
    if let Some(mut err) = child.stderr.take() {
        err.read_to_end(&mut stderr)?;
    }
    let (status, cpu) = wait4(child.id())?;
    Ok(Finished {
        status,
        outcome: Outcome {
            elapsed: started.elapsed(),
            cpu,
            stdout,
        },
        stderr,
    })
}

/// SIGKILL to `pid` after `after`, through a pidfd taken now (the child
/// is not reaped yet), so a pid reused after its exit is never hit.
fn kill_later(pid: u32, after: Duration) -> Result<()> {
    // SAFETY: a plain syscall; the fd it returns is ours to close.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("pidfd_open of the plugin");
    }
    let fd = fd as libc::c_int;
    std::thread::spawn(move || {
        std::thread::sleep(after);
        // SAFETY: signals the process the pidfd names (ESRCH once it
        // exited), then closes the fd we own.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd,
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            );
            libc::close(fd);
        }
    });
    Ok(())
}

/// Reaps `pid`: its wait status and the CPU time (user + system) it and
/// the children it waited for (the IPAM plugin) used.
fn wait4(pid: u32) -> Result<(i32, Duration)> {
    let mut status = 0;
    // SAFETY: wait4 fills the status and the rusage we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
        if r == pid as libc::pid_t {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).context("waiting for the plugin");
        }
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok((status, tv(usage.ru_utime) + tv(usage.ru_stime)))
}

/// `config` with `prevResult` set, as libcni sends DEL after an ADD.
pub fn with_prev_result(config: &Value, result: &[u8]) -> Result<Value> {
    let prev: Value = serde_json::from_slice(result).context("the ADD result is not JSON")?;
    let mut config = config.clone();
    config
        .as_object_mut()
        .context("a configuration is an object")?
        .insert("prevResult".into(), prev);
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_are_64_hex_and_distinct() {
        let a = container_id(0x1234, 0, 1, 0, 7);
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, container_id(0x1234, 1, 1, 0, 7));
        assert_ne!(a, container_id(0x1234, 0, 8, 0, 7));
        assert_ne!(a, container_id(0x1234, 0, 1, 1, 7));
        let attachment = Attachment {
            container_id: a,
            netns: "/x".into(),
            pod_name: "p".into(),
        };
        assert!(attachment.args().starts_with("IgnoreUnknown=1;"));
    }

    #[test]
    fn prev_result_is_added() {
        let config = serde_json::json!({"cniVersion": "1.0.0", "name": "n", "type": "t"});
        let del = with_prev_result(&config, br#"{"cniVersion":"1.0.0","ips":[]}"#).unwrap();
        assert_eq!(del["prevResult"]["ips"], serde_json::json!([]));
        assert!(with_prev_result(&config, b"not json").is_err());
    }
}
