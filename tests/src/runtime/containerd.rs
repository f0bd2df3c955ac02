//! A private containerd (Debian's 1.6) for one test: its own config, root,
//! state, socket, runc root and CNI dirs, a locally built pause image, and a
//! CRI client standing in for kubelet. Dropping it removes every sandbox,
//! stops containerd and its shims, unmounts what they mounted and removes
//! what they left, so nothing remains in `ip netns`, `ip link` or /run.

use std::{
    collections::BTreeSet,
    fs::OpenOptions,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{
    cni::{CniBinDir, CniConfDir, CNI_RESULTS_DIR},
    cri::{CriClient, PodSpec, PodStatus, Status},
    image::{build_pause_image, sha256_hex, PAUSE_IMAGE},
    mounts_under,
    netns::netns_mounted,
    processes_with_arg, remove_cgroup, unmount_all,
};
use crate::{unique_name, TempDir};

/// The CRI namespace of containerd (where kubelet's pods live).
pub const K8S_NAMESPACE: &str = "k8s.io";

/// Where containerd's shims put their sockets, whatever the config says.
const SHIM_SOCKET_DIR: &str = "/run/containerd/s";

/// The environment containerd runs with. It hands its environment to every
/// CNI plugin, so it gets only what it and the plugins need: `PATH` (shims,
/// and `iptables` for `portmap`) and `TMPDIR` (temporary mounts while
/// unpacking an image go there: our dir, not /tmp).
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How [`Containerd::start_with`] starts an instance.
#[derive(Clone, Debug)]
pub struct ContainerdOptions {
    /// `overlayfs` (default) or `native`.
    pub snapshotter: String,
    /// Wait in [`Containerd::start_with`] until CRI `Status` says
    /// NetworkReady (a conflist is in the conf dir); with false only
    /// RuntimeReady is awaited.
    pub wait_network_ready: bool,
    /// How long start-up may take.
    pub start_timeout: Duration,
}

impl Default for ContainerdOptions {
    fn default() -> Self {
        ContainerdOptions {
            snapshotter: "overlayfs".into(),
            wait_network_ready: true,
            start_timeout: Duration::from_secs(30),
        }
    }
}

/// A running private containerd and its CRI client. It holds clones of the
/// CNI dirs it was started on, so its plugins outlive its last DEL.
pub struct Containerd {
    dir: TempDir,
    socket: PathBuf,
    config: PathBuf,
    log: PathBuf,
    runc_root: PathBuf,
    process: Option<Child>,
    cri: CriClient,
    /// Pods are started under this cgroup (an absolute path in every
    /// hierarchy, e.g. `/vethctl-t1a2b03`), removed when dropped: runc
    /// leaves a pod's parent cgroup behind.
    cgroup_parent: String,
    /// Sandboxes seen and their network namespaces, for the clean-up.
    seen: Mutex<Seen>,
    bin: CniBinDir,
    conf: CniConfDir,
    options: ContainerdOptions,
    /// Whether containerd ever answered: a failed start is cleaned up
    /// quietly, so its error is what the test reports.
    served: bool,
}

#[derive(Default)]
struct Seen {
    sandboxes: BTreeSet<String>,
    netns: BTreeSet<PathBuf>,
}

impl Containerd {
    /// Starts containerd on `bin` and `conf` with the default options (and
    /// waits for NetworkReady, so `conf` must hold a conflist).
    pub fn start(bin: &CniBinDir, conf: &CniConfDir) -> Result<Containerd> {
        Containerd::start_with(bin, conf, ContainerdOptions::default())
    }

    pub fn start_with(
        bin: &CniBinDir,
        conf: &CniConfDir,
        options: ContainerdOptions,
    ) -> Result<Containerd> {
        let dir = TempDir::new("vethctl-containerd");
        let socket = dir.path().join("containerd.sock");
        let runc_root = dir.path().join("runc");
        let mut containerd = Containerd {
            config: dir.path().join("config.toml"),
            log: dir.path().join("containerd.log"),
            cri: CriClient::new(&socket),
            socket,
            runc_root,
            process: None,
            cgroup_parent: format!("/vethctl-{}", unique_name()),
            seen: Mutex::default(),
            bin: bin.clone(),
            conf: conf.clone(),
            options,
            served: false,
            dir,
        };
        std::fs::create_dir_all(containerd.dir.path().join("tmp"))?;
        std::fs::write(&containerd.config, containerd.config_toml())?;
        let image = build_pause_image(containerd.dir.path())?;
        containerd.spawn()?;
        containerd.wait_ready(false)?;
        containerd.served = true;
        containerd.import(&image)?;
        if containerd.options.wait_network_ready {
            containerd.wait_ready(true)?;
        }
        Ok(containerd)
    }

    fn config_toml(&self) -> String {
        let d = self.dir.path().display();
        let snapshotter = &self.options.snapshotter;
        let (bin, conf) = (self.bin.path().display(), self.conf.path().display());
        let (socket, runc) = (self.socket.display(), self.runc_root.display());
        format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # Root here lacks CAP_SYS_RESOURCE: without it runc fails with "can't get
  # final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  # Port 0: a free port each (the default 10010 would collide).
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  enable_cdi = false

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "{snapshotter}"
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  # crun here fails with "cgroups in hybrid mode not supported".
  BinaryName = "/usr/sbin/runc"
  Root = "{runc}"
  SystemdCgroup = false

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{bin}"
  conf_dir = "{conf}"
  max_conf_num = 1
"#
        )
    }

    fn spawn(&mut self) -> Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&self.config)
            .env_clear()
            .env("PATH", PATH)
            .env("TMPDIR", self.dir.path().join("tmp"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd (install Debian's containerd: `cargo xtask setup`)")?;
        self.process = Some(child);
        Ok(())
    }

    /// Waits until CRI `Status` reports RuntimeReady (and NetworkReady if
    /// `network`).
    fn wait_ready(&mut self, network: bool) -> Result<()> {
        let deadline = Instant::now() + self.options.start_timeout;
        loop {
            if let Some(child) = self.process.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.process = None;
                    bail!(
                        "containerd exited ({status}) while starting; its log ends:\n{}",
                        self.log_tail(30)
                    );
                }
            }
            let last = match self.cri.conditions() {
                Ok(conditions) => {
                    let ready = |t: &str| conditions.get(t).is_some_and(|c| c.0);
                    if ready("RuntimeReady") && (!network || ready("NetworkReady")) {
                        return Ok(());
                    }
                    format!("{conditions:?}")
                }
                Err(status) => format!("{}: {}", status.code(), status.message()),
            };
            if Instant::now() > deadline {
                bail!(
                    "containerd at {} was not {} within {:?} (last status: {last}); its log ends:\n{}",
                    self.socket.display(),
                    if network { "NetworkReady" } else { "RuntimeReady" },
                    self.options.start_timeout,
                    self.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (up to the start timeout) until CRI `Status` says NetworkReady,
    /// e.g. after writing the first conflist into the conf dir.
    pub fn wait_network_ready(&mut self) -> Result<()> {
        self.wait_ready(true)
    }

    fn import(&self, archive: &Path) -> Result<()> {
        let out = self
            .ctr()
            .args([
                "images",
                "import",
                "--snapshotter",
                &self.options.snapshotter,
            ])
            .arg(archive)
            .output()
            .context("running ctr")?;
        if !out.status.success() {
            bail!(
                "ctr images import {} failed: {}{}; containerd's log ends:\n{}",
                archive.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail(20)
            );
        }
        Ok(())
    }

    /// `ctr --address SOCKET -n k8s.io` (add arguments and run).
    pub fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.socket)
            .args(["-n", K8S_NAMESPACE])
            .env_clear()
            .env("PATH", PATH);
        cmd
    }

    /// The CRI client (kubelet's view) for calls the helpers below lack.
    /// Sandboxes made through it directly are cleaned up too.
    pub fn cri(&self) -> &CriClient {
        &self.cri
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// containerd's pid (None while it is stopped).
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Child::id)
    }

    pub fn bin_dir(&self) -> &CniBinDir {
        &self.bin
    }

    pub fn conf_dir(&self) -> &CniConfDir {
        &self.conf
    }

    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    /// The last `lines` lines of containerd's log (stdout and stderr of
    /// every run of this instance).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// `RunPodSandbox` as kubelet sends it (under this instance's cgroup
    /// parent); returns the pod's status.
    pub fn run_pod(&self, spec: &PodSpec) -> Result<PodStatus, Status> {
        let id = self
            .cri
            .run_pod_sandbox(spec.to_config(&self.cgroup_parent))?;
        self.seen.lock().unwrap().sandboxes.insert(id.clone());
        self.pod_status(&id)
    }

    /// `PodSandboxStatus{verbose}` (and the netns remembered for clean-up).
    pub fn pod_status(&self, id: &str) -> Result<PodStatus, Status> {
        let status = self.cri.pod_sandbox_status(id)?;
        let mut seen = self.seen.lock().unwrap();
        seen.sandboxes.insert(id.to_string());
        if let Some(netns) = &status.netns {
            seen.netns.insert(netns.clone());
        }
        Ok(status)
    }

    pub fn stop_pod(&self, id: &str) -> Result<(), Status> {
        self.cri.stop_pod_sandbox(id)
    }

    pub fn remove_pod(&self, id: &str) -> Result<(), Status> {
        self.cri.remove_pod_sandbox(id)
    }

    /// Stops and removes the pod, as kubelet does when it is deleted.
    pub fn delete_pod(&self, id: &str) -> Result<(), Status> {
        self.stop_pod(id)?;
        self.remove_pod(id)
    }

    /// Every sandbox, with its status.
    pub fn pods(&self) -> Result<Vec<PodStatus>, Status> {
        self.cri
            .list_pod_sandbox()?
            .iter()
            .map(|p| self.pod_status(&p.id))
            .collect()
    }

    /// Stops containerd (SIGTERM, SIGKILL after 10 s); the shims and pods
    /// keep running, as on a node whose containerd restarts.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.process.take() {
            terminate(&mut child, Duration::from_secs(10));
        }
    }

    /// Stops containerd and starts it again with the same config and
    /// directories; returns once it is ready again (NetworkReady, if the
    /// options ask for it). Pods keep running throughout.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()?;
        self.wait_ready(self.options.wait_network_ready)
    }

    /// What this instance left on the machine, by name: its processes, the
    /// mounts under its directory, the network namespaces and shim sockets
    /// of its sandboxes, its cached CNI results and its cgroups. Empty once
    /// dropped; meant for checks before that, e.g. after deleting pods.
    pub fn leftovers(&self) -> Vec<String> {
        let (sandboxes, netns) = {
            let seen = self.seen.lock().unwrap();
            (seen.sandboxes.clone(), seen.netns.clone())
        };
        let mut left = Vec::new();
        for pid in processes_with_arg(&self.socket.to_string_lossy()) {
            if Some(pid) != self.pid() {
                left.push(format!(
                    "process {pid} (a shim of {})",
                    self.socket.display()
                ));
            }
        }
        for netns in &netns {
            // A pod that still exists legitimately has one.
            if netns.exists() && !self.netns_in_use(netns) {
                left.push(format!("netns {}", netns.display()));
            }
        }
        left.extend(self.sandbox_leftovers(&sandboxes, false));
        left
    }

    /// Whether a sandbox that still exists uses `netns`.
    fn netns_in_use(&self, netns: &Path) -> bool {
        self.pods()
            .map(|pods| pods.iter().any(|p| p.netns.as_deref() == Some(netns)))
            .unwrap_or(false)
    }

    /// Shim sockets and cached CNI results of gone sandboxes (`remove`: and
    /// deletes them).
    fn sandbox_leftovers(&self, ids: &BTreeSet<String>, remove: bool) -> Vec<String> {
        let live: BTreeSet<String> = if remove {
            BTreeSet::new()
        } else {
            self.cri
                .list_pod_sandbox()
                .map(|pods| pods.into_iter().map(|p| p.id).collect())
                .unwrap_or_default()
        };
        let mut left = Vec::new();
        for id in ids.iter().filter(|id| !live.contains(*id)) {
            let socket = self.shim_socket(id);
            if socket.exists() {
                left.push(format!("shim socket {}", socket.display()));
                if remove {
                    let _ = std::fs::remove_file(&socket);
                }
            }
            for entry in std::fs::read_dir(CNI_RESULTS_DIR)
                .into_iter()
                .flatten()
                .flatten()
            {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .contains(&format!("-{id}-"))
                {
                    left.push(format!("cached CNI result {}", entry.path().display()));
                    if remove {
                        let _ = std::fs::remove_file(entry.path());
                    }
                }
            }
        }
        left
    }

    /// containerd 1.6 names a shim's socket after
    /// `sha256(<grpc address>/<namespace>/<id>)` under /run/containerd/s.
    fn shim_socket(&self, id: &str) -> PathBuf {
        let key = format!("{}/{K8S_NAMESPACE}/{id}", self.socket.display());
        Path::new(SHIM_SOCKET_DIR).join(sha256_hex(key.as_bytes()))
    }

    /// Removes every sandbox through CRI, as kubelet would (the plugins get
    /// their DELs); errors are reported, not fatal.
    fn remove_all_pods(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let pods = match self.pods() {
            Ok(pods) => pods,
            Err(e) => return vec![format!("listing sandboxes: {}", e.message())],
        };
        for pod in pods {
            if let Err(e) = self.delete_pod(&pod.id) {
                problems.push(format!(
                    "removing sandbox {} ({}): {}",
                    pod.name,
                    pod.id,
                    e.message()
                ));
            }
        }
        problems
    }

    /// The last resort after CRI could not remove everything: runc kills and
    /// deletes the containers, the shims are killed.
    fn force_cleanup(&self) {
        let runc = |args: &[&str]| {
            Command::new("runc")
                .arg("--root")
                .arg(&self.runc_root)
                .args(args)
                .output()
        };
        if let Ok(out) = runc(&["list", "-q"]) {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = runc(&["delete", "--force", id]);
            }
        }
        for pid in processes_with_arg(&self.socket.to_string_lossy()) {
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// SIGTERM, then SIGKILL after `grace`; reaps the child.
pub(crate) fn terminate(child: &mut Child, grace: Duration) {
    // SAFETY: kill has no memory preconditions; the child is not reaped yet.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let mut problems = Vec::new();
        if self.served {
            if self.process.is_none() {
                // Stopped by the test: start it once more to remove the pods
                // properly (the plugins' DELs, the netns).
                if self.spawn().is_ok() {
                    let _ = self.wait_ready(false);
                }
            }
            problems.extend(self.remove_all_pods());
        }
        // Pods removed outside run_pod/pod_status are known by id only.
        let ids = self.seen.lock().unwrap().sandboxes.clone();
        self.stop();
        // Shims exit once their sandbox is deleted; give them a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !processes_with_arg(&self.socket.to_string_lossy()).is_empty()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !processes_with_arg(&self.socket.to_string_lossy()).is_empty() {
            problems.push(format!("shims of {} still running", self.socket.display()));
            self.force_cleanup();
        }
        let netns: Vec<PathBuf> = self.seen.lock().unwrap().netns.iter().cloned().collect();
        for ns in netns {
            if netns_mounted(&ns) {
                problems.push(format!("netns {} still mounted", ns.display()));
                unmount_all(&ns);
            }
            if ns.exists() {
                problems.push(format!("netns {} left", ns.display()));
                let _ = std::fs::remove_file(&ns);
            }
        }
        let mounts = mounts_under(self.dir.path());
        if !mounts.is_empty() {
            problems.push(format!("mounts left: {mounts:?}"));
            unmount_all(self.dir.path());
        }
        // The ids of sandboxes gone now: every shim socket and cached result
        // of them is a leftover.
        let leftovers = self.sandbox_leftovers(&ids, true);
        problems.extend(leftovers);
        let cgroups = remove_cgroup(&self.cgroup_parent);
        if !cgroups.is_empty() {
            problems.push(format!("cgroups still in use: {cgroups:?}"));
        }
        if !problems.is_empty() {
            let message = format!(
                "containerd at {} did not clean up by itself: {problems:#?}\ncontainerd's log ends:\n{}",
                self.socket.display(),
                self.log_tail(30)
            );
            if std::thread::panicking() || !self.served {
                eprintln!("{message}");
            } else {
                panic!("{message}");
            }
        }
    }
}
