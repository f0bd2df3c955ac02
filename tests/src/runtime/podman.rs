//! Podman (Debian's 4.3) with its CNI backend, on configuration files of
//! the test's own (`CONTAINERS_CONF`, `CONTAINERS_STORAGE_CONF`): storage,
//! run root, temporary files, events and locks in one unique directory;
//! CNI plugins and network configs from the test's dirs. Containers run a
//! busybox root filesystem (`--rootfs DIR:O`), so no image is needed.
//! Dropping it removes every container and everything it left.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::PathBuf,
    process::{Command, Output, Stdio},
    sync::Mutex,
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::{
    cni::{CniBinDir, CniConfDir, CNI_RESULTS_DIR},
    image::busybox_rootfs,
    mounts_under,
    netns::netns_mounted,
    remove_cgroup, unmount_all,
};
use crate::{unique_name, TempDir};

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Podman on configuration files of its own. It holds clones of the CNI
/// dirs it was made with, so its plugins outlive its last DEL.
pub struct Podman {
    dir: TempDir,
    rootfs: PathBuf,
    conf: PathBuf,
    storage_conf: PathBuf,
    /// Containers run under this cgroup, removed when dropped.
    cgroup_parent: String,
    seen: Mutex<Seen>,
    bin: CniBinDir,
    cni_conf: CniConfDir,
    /// Whether podman ran with our configuration: a failed start is cleaned
    /// up quietly, so its error is what the test reports.
    works: bool,
}

#[derive(Default)]
struct Seen {
    ids: BTreeSet<String>,
    netns: BTreeSet<PathBuf>,
}

/// A running container.
#[derive(Clone, Debug)]
pub struct Container {
    pub name: String,
    pub id: String,
    /// Its address on the network it was started on.
    pub ip: IpAddr,
    /// Its network namespace (`NetworkSettings.SandboxKey`), e.g.
    /// `/run/netns/netns-…`.
    pub netns: PathBuf,
}

impl Podman {
    /// Podman on the plugins of `bin` and the conflists of `conf` (a
    /// conflist's `name` is a network for `--network`).
    pub fn new(bin: &CniBinDir, conf: &CniConfDir) -> Result<Podman> {
        let dir = TempDir::new("vethctl-podman");
        let rootfs = dir.path().join("rootfs");
        busybox_rootfs(&rootfs)?;
        let mut podman = Podman {
            conf: dir.path().join("containers.conf"),
            storage_conf: dir.path().join("storage.conf"),
            rootfs,
            cgroup_parent: format!("/vethctl-{}", unique_name()),
            seen: Mutex::default(),
            bin: bin.clone(),
            cni_conf: conf.clone(),
            works: false,
            dir,
        };
        for sub in ["storage", "run", "tmp", "volumes", "runc"] {
            std::fs::create_dir_all(podman.dir.path().join(sub))?;
        }
        // Podman has no setting for runc's state directory (it would be
        // /run/runc): a wrapper hands runc ours on every call, whoever calls
        // it (podman, conmon, the cleanup process).
        let wrapper = podman.dir.path().join("runc-wrapper");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec /usr/sbin/runc --root {} \"$@\"\n",
                podman.dir.path().join("runc").display()
            ),
        )?;
        std::fs::set_permissions(
            &wrapper,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        std::fs::write(&podman.conf, podman.containers_conf())?;
        std::fs::write(&podman.storage_conf, podman.storage_conf_toml())?;
        let version = podman
            .command()
            .args(["version", "--format", "{{.Client.Version}}"])
            .output()
            .context("running podman (install Debian's podman: `cargo xtask setup`)")?;
        if !version.status.success() {
            bail!(
                "podman does not run with our configuration: {}",
                String::from_utf8_lossy(&version.stderr)
            );
        }
        podman.works = true;
        Ok(podman)
    }

    fn containers_conf(&self) -> String {
        let d = self.dir.path().display();
        let (bin, conf) = (self.bin.path().display(), self.cni_conf.path().display());
        format!(
            r#"[containers]
# The defaults exceed this machine's limits (EPERM).
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
log_driver = "k8s-file"

[network]
network_backend = "cni"
cni_plugin_dirs = ["{bin}"]
network_config_dir = "{conf}"

[engine]
# crun here fails with "cgroups in hybrid mode not supported".
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{d}/events.log"
tmp_dir = "{d}/tmp"
volume_path = "{d}/volumes"
# Locks in tmp_dir instead of the shared memory segment /dev/shm/libpod_lock.
lock_type = "file"

[engine.runtimes]
runc = ["{d}/runc-wrapper"]
"#
        )
    }

    fn storage_conf_toml(&self) -> String {
        let d = self.dir.path().display();
        format!(
            r#"[storage]
driver = "overlay"
graphroot = "{d}/storage"
runroot = "{d}/run"
"#
        )
    }

    /// `podman` with our configuration and a clean environment (podman
    /// hands its environment to the plugins); add arguments and run.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.env_clear()
            .env("PATH", PATH)
            .env("TMPDIR", self.dir.path().join("tmp"))
            .env("CONTAINERS_CONF", &self.conf)
            .env("CONTAINERS_STORAGE_CONF", &self.storage_conf)
            .stdin(Stdio::null());
        cmd
    }

    /// `podman ARGS` run to completion.
    pub fn output(&self, args: &[&str]) -> Output {
        self.command()
            .args(args)
            .output()
            .expect("running podman (install Debian's podman: `cargo xtask setup`)")
    }

    /// `podman ARGS`, which must succeed: its stdout.
    pub fn podman(&self, args: &[&str]) -> Result<String> {
        let out = self.output(args);
        if !out.status.success() {
            bail!(
                "podman {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `podman run -d --name NAME --network NETWORK --rootfs ROOTFS:O
    /// /bin/sleep 3600`, then its address and network namespace.
    pub fn run(&self, name: &str, network: &str) -> Result<Container> {
        self.run_with(name, network, &[])
    }

    /// [`Self::run`] with extra `podman run` options (e.g. `["-p",
    /// "18080:8080"]`) before the root filesystem.
    pub fn run_with(&self, name: &str, network: &str, options: &[&str]) -> Result<Container> {
        let rootfs = format!("{}:O", self.rootfs.display());
        let mut args = vec![
            "run",
            "-d",
            "--name",
            name,
            "--network",
            network,
            "--cgroup-parent",
            &self.cgroup_parent,
        ];
        args.extend_from_slice(options);
        args.extend_from_slice(&["--rootfs", &rootfs, "/bin/sleep", "3600"]);
        let id = self.podman(&args)?.trim().to_string();
        self.seen.lock().unwrap().ids.insert(id.clone());
        let inspect = self.inspect(name)?;
        let netns = PathBuf::from(
            inspect["NetworkSettings"]["SandboxKey"]
                .as_str()
                .filter(|k| !k.is_empty())
                .with_context(|| format!("container {name} has no SandboxKey"))?,
        );
        self.seen.lock().unwrap().netns.insert(netns.clone());
        let ip = inspect["NetworkSettings"]["Networks"][network]["IPAddress"]
            .as_str()
            .and_then(|ip| ip.parse().ok())
            .with_context(|| format!("container {name} has no address on {network}"))?;
        Ok(Container {
            name: name.to_string(),
            id,
            ip,
            netns,
        })
    }

    /// `podman inspect NAME` (the container's object).
    pub fn inspect(&self, name: &str) -> Result<Value> {
        let text = self.podman(&["inspect", "--type", "container", name])?;
        let all: Value = serde_json::from_str(&text).context("podman inspect JSON")?;
        Ok(all[0].clone())
    }

    /// The network namespace of container `name`.
    pub fn netns(&self, name: &str) -> Result<PathBuf> {
        let inspect = self.inspect(name)?;
        inspect["NetworkSettings"]["SandboxKey"]
            .as_str()
            .filter(|k| !k.is_empty())
            .map(PathBuf::from)
            .with_context(|| format!("container {name} has no SandboxKey"))
    }

    /// `podman rm -f -t 0 NAME` (the plugins get their DEL).
    pub fn rm_f(&self, name: &str) -> Result<()> {
        self.podman(&["rm", "-f", "-t", "0", name]).map(drop)
    }

    /// Names of the containers podman knows.
    pub fn containers(&self) -> Result<Vec<String>> {
        Ok(self
            .podman(&["ps", "-a", "--format", "{{.Names}}"])?
            .lines()
            .map(str::to_string)
            .collect())
    }

    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    /// runc's state directory for our containers (one entry per container
    /// runc knows).
    pub fn runc_root(&self) -> PathBuf {
        self.dir.path().join("runc")
    }

    /// Network namespaces and cached CNI results of containers that are
    /// gone (their `rm` should have removed them).
    pub fn leftovers(&self) -> Vec<String> {
        let (ids, netns) = {
            let seen = self.seen.lock().unwrap();
            (seen.ids.clone(), seen.netns.clone())
        };
        let live: BTreeSet<PathBuf> = self
            .containers()
            .unwrap_or_default()
            .iter()
            .filter_map(|name| self.netns(name).ok())
            .collect();
        let mut left = Vec::new();
        for ns in netns.iter().filter(|ns| !live.contains(*ns)) {
            if ns.exists() {
                left.push(format!("netns {}", ns.display()));
            }
        }
        let live_ids: BTreeSet<String> = self
            .podman(&["ps", "-a", "--no-trunc", "--format", "{{.ID}}"])
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        for id in ids.iter().filter(|id| !live_ids.contains(*id)) {
            left.extend(
                cached_results_of(id)
                    .iter()
                    .map(|p| format!("cached CNI result {}", p.display())),
            );
        }
        left
    }
}

fn cached_results_of(id: &str) -> Vec<PathBuf> {
    std::fs::read_dir(CNI_RESULTS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(&format!("-{id}-")))
        .map(|e| e.path())
        .collect()
}

impl Drop for Podman {
    fn drop(&mut self) {
        let mut problems = Vec::new();
        if self.works {
            if let Err(e) = self.podman(&["rm", "-a", "-f", "-t", "0"]) {
                problems.push(e.to_string());
            }
        }
        let seen = std::mem::take(&mut *self.seen.lock().unwrap());
        for ns in &seen.netns {
            if netns_mounted(ns) {
                problems.push(format!("netns {} still mounted", ns.display()));
                unmount_all(ns);
            }
            if ns.exists() {
                problems.push(format!("netns {} left", ns.display()));
                let _ = std::fs::remove_file(ns);
            }
        }
        for id in &seen.ids {
            for file in cached_results_of(id) {
                problems.push(format!("cached CNI result {}", file.display()));
                let _ = std::fs::remove_file(file);
            }
        }
        // The storage driver keeps its home mounted (a private bind mount)
        // after the last container: ours to remove, not a problem.
        if !mounts_under(self.dir.path()).is_empty() {
            unmount_all(self.dir.path());
        }
        let cgroups = remove_cgroup(&self.cgroup_parent);
        if !cgroups.is_empty() {
            problems.push(format!("cgroups still in use: {cgroups:?}"));
        }
        if !problems.is_empty() {
            let message = format!("podman did not clean up by itself: {problems:#?}");
            if std::thread::panicking() || !self.works {
                eprintln!("{message}");
            } else {
                panic!("{message}");
            }
        }
    }
}
