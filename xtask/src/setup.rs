//! `cargo xtask setup`: makes a fresh Debian 12 machine able to build and run the
//! project. Every step checks first, so a set-up machine costs only a few probes.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::cmd;

/// Building and the demo (`cargo xtask build`, `cargo xtask demo`):
/// everything except `llvm-NN-dev`, whose NN is only known once `rustc-web`
/// is in.
const PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    // The demo: pods' namespaces, ping and a TCP transfer between them;
    // its hints show a map with bpftool.
    "iproute2",
    "iputils-ping",
    "iperf3",
    "bpftool",
    // protoc: etcd-client (vethctl's etcd client) and the tests' k8s-cri
    // generate their gRPC code from .proto files at build time; etcd's
    // import protobuf's own (descriptor.proto, struct.proto), which
    // libprotobuf-dev puts where protoc looks (/usr/include).
    "protobuf-compiler",
    "libprotobuf-dev",
];

/// Only the tests and benchmarks (`cargo xtask test`, `bench`, `setup`).
const TEST_PACKAGES: &[&str] = &[
    "ethtool",
    "tcpdump",
    "sockperf",
    "procps",
    "util-linux",
    "prometheus",
    "nftables",
    // rsvg-convert: the benchmark chart as PNG, from its SVG.
    "librsvg2-bin",
    // The runtime tests (tests/src/runtime): a private containerd driven
    // over CRI and podman with its CNI backend, both on runc, with the
    // reference CNI plugins (/usr/lib/cni; portmap needs iptables).
    "containerd",
    "runc",
    "podman",
    "containernetworking-plugins",
    "iptables",
    // The podman containers' root filesystem (a static /bin/busybox).
    "busybox-static",
    // The pod sandbox ("pause") binary, linked statically with glibc's libc.a.
    "gcc",
    "libc6-dev",
    // systemd-analyze: tests/tests/packaging.rs verifies the agent's unit
    // (it needs no systemd as PID 1).
    "systemd",
    // The clusters kept in etcd (tests/tests/etcd_cluster.rs): each test
    // runs etcd as a private process, never the package's service.
    "etcd-server",
];

/// What a task needs installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// Building and `cargo xtask demo`.
    Demo,
    /// The tests and benchmarks as well.
    Everything,
}

/// Debian's rustc, which builds the eBPF crate; bpf-linker must share its LLVM.
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const BPF_LINKER_VERSION: &str = "0.13.0";
const BPFFS: &str = "/sys/fs/bpf";

pub fn run(needs: Needs) -> Result<()> {
    ensure_root()?;
    let llvm = ensure_packages(needs)?;
    ensure_bpf_linker(llvm)?;
    ensure_bpffs()
}

fn ensure_root() -> Result<()> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    // The line is "Uid: real effective saved fs"; privileges follow the effective one.
    let euid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .context("no Uid line in /proc/self/status")?;
    if euid != "0" {
        bail!("this task must run as root: it installs packages, loads eBPF programs and mounts bpffs");
    }
    Ok(())
}

/// Installs missing packages and returns the LLVM major of Debian's rustc.
fn ensure_packages(needs: Needs) -> Result<u32> {
    let mut apt = Apt::default();
    apt.install_missing(PACKAGES)?;
    if needs == Needs::Everything {
        let had_etcd = is_installed("etcd-server");
        apt.install_missing(TEST_PACKAGES)?;
        if !had_etcd {
            stop_packaged_etcd()?;
        }
    }
    let llvm = debian_llvm_major()?;
    apt.install_missing(&[format!("llvm-{llvm}-dev")])?;
    eprintln!("ok: debian packages (rustc-web on LLVM {llvm})");
    Ok(llvm)
}

/// etcd-server alone, for `cargo xtask demo --etcd` (the tests' set-up
/// installs it with the rest of their packages).
pub fn ensure_etcd() -> Result<()> {
    if is_installed("etcd-server") {
        return Ok(());
    }
    Apt::default().install_missing(&["etcd-server"])?;
    stop_packaged_etcd()
}

/// Where systemd runs, etcd-server's package enables and starts a system
/// etcd on port 2379 with a data dir of its own; the tests start theirs,
/// and nobody asked for that one. (Without systemd as PID 1 the package
/// starts nothing.) Only done right after installing it here, so an etcd
/// the machine already ran is left alone.
fn stop_packaged_etcd() -> Result<()> {
    if !Path::new("/run/systemd/system").exists() {
        return Ok(());
    }
    eprintln!("stopping: the etcd.service that etcd-server's package started");
    cmd::run(Command::new("systemctl").args(["disable", "--now", "etcd.service"]))
}

#[derive(Default)]
struct Apt {
    index_updated: bool,
}

impl Apt {
    fn install_missing<S: AsRef<str>>(&mut self, packages: &[S]) -> Result<()> {
        let missing: Vec<&str> = packages
            .iter()
            .map(AsRef::as_ref)
            .filter(|package| !is_installed(package))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        eprintln!("installing: {}", missing.join(" "));
        // A fresh machine has no package index; refreshing it once per run is enough.
        if !self.index_updated {
            cmd::run(Command::new("apt-get").arg("update"))?;
            self.index_updated = true;
        }
        cmd::run(
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    }
}

fn is_installed(package: &str) -> bool {
    cmd::probe(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|status| status.contains("install ok installed"))
}

/// Read rather than hard-coded: a security update of rustc-web can move it to a
/// newer LLVM, and bpf-linker has to follow.
fn debian_llvm_major() -> Result<u32> {
    let info = cmd::output(Command::new(DEBIAN_RUSTC).arg("-vV"))?;
    let version = info
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version:"))
        .with_context(|| format!("`{DEBIAN_RUSTC} -vV` does not report an LLVM version"))?;
    let major = version.trim().split('.').next().unwrap_or_default();
    major
        .parse()
        .with_context(|| format!("unexpected LLVM version `{}`", version.trim()))
}

fn ensure_bpf_linker(llvm: u32) -> Result<()> {
    let cargo_home = cargo_home()?;
    if bpf_linker_matches(&cargo_home, llvm) {
        eprintln!("ok: bpf-linker {BPF_LINKER_VERSION} (LLVM {llvm})");
        return Ok(());
    }
    eprintln!("installing: bpf-linker {BPF_LINKER_VERSION} for LLVM {llvm} (takes about a minute)");
    cmd::run(
        cmd::cargo()
            .arg("install")
            .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"))
            .args(["--locked", "--force", "--no-default-features"])
            .arg("--features")
            .arg(format!("llvm-{llvm}"))
            // Pinned so the binary lands where the check above looks for it.
            .arg("--root")
            .arg(&cargo_home)
            // Without it the build finds Debian's default llvm-config (LLVM 14).
            .env("LLVM_PREFIX", format!("/usr/lib/llvm-{llvm}")),
    )
}

fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home));
    }
    let home = env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

fn bpf_linker_matches(cargo_home: &Path, llvm: u32) -> bool {
    // Running it also proves that the libLLVM it links against is still installed.
    let runs = cmd::probe(Command::new(cargo_home.join("bin/bpf-linker")).arg("--version"))
        .is_some_and(|version| version.contains(BPF_LINKER_VERSION));
    runs && installed_with_feature(cargo_home, &format!("llvm-{llvm}"))
}

/// `bpf-linker --version` does not say which LLVM it was built for, but
/// `cargo install` records the features it used in `.crates2.json`; reading that
/// also recognises a bpf-linker installed by hand, without a stamp file of our own.
fn installed_with_feature(cargo_home: &Path, feature: &str) -> bool {
    let Ok(text) = fs::read_to_string(cargo_home.join(".crates2.json")) else {
        return false;
    };
    let Ok(record) = serde_json::from_str::<Value>(&text) else {
        return false;
    };
    let key_prefix = format!("bpf-linker {BPF_LINKER_VERSION} ");
    record["installs"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(key, _)| key.starts_with(&key_prefix))
        .any(|(_, install)| {
            install["features"]
                .as_array()
                .is_some_and(|features| features.iter().any(|f| f == feature))
        })
}

fn ensure_bpffs() -> Result<()> {
    if bpffs_mounted()? {
        eprintln!("ok: bpffs at {BPFFS}");
        return Ok(());
    }
    eprintln!("mounting: bpffs at {BPFFS}");
    fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
    cmd::run(Command::new("mount").args(["-t", "bpf", "bpffs", BPFFS]))
}

fn bpffs_mounted() -> Result<bool> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    // Fields: source, mount point, fs type, ...
    Ok(mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some(BPFFS) && fields.next() == Some("bpf")
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_installs_what_it_runs_and_nothing_twice() {
        let mut all: Vec<&str> = PACKAGES.iter().chain(TEST_PACKAGES).copied().collect();
        all.sort();
        let before = all.len();
        all.dedup();
        assert_eq!(before, all.len(), "a package in both lists");
        // demo.rs runs ip, ping, iperf3 and shows bpftool.
        for demo in ["iproute2", "iputils-ping", "iperf3", "bpftool"] {
            assert!(PACKAGES.contains(&demo), "{demo}");
        }
        // vethctl's etcd client is generated by protoc at build time.
        assert!(PACKAGES.contains(&"protobuf-compiler") && PACKAGES.contains(&"libprotobuf-dev"));
        for test_only in ["containerd", "podman", "prometheus", "gcc", "etcd-server"] {
            assert!(!PACKAGES.contains(&test_only), "{test_only}");
        }
    }
}
