//! `cargo xtask image`: the node image the DaemonSet runs, built here
//! without pulling anything. `podman build` FROM scratch copies a root
//! filesystem assembled from this machine: vethctl and veth-cni (release),
//! the reference plugins the conflist chains (Debian's
//! containernetworking-plugins), exactly the shared libraries `ldd` says
//! they load, and the licences and copyright files of all of it. Every file
//! and the image's creation time carry the commit's time, so the same
//! binaries give the same image ID. The image is saved as an OCI archive
//! (`target/image/vethctl.oci.tar`) for `ctr images import` on nodes and
//! for the tests, which load it into a podman of their own.

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::cmd;

/// The repository part of the image's name; the tag is the version (what
/// the DaemonSet manifest names) and `VERSION-COMMIT` (what was built).
pub const REPOSITORY: &str = "localhost/vethctl";

/// The reference plugins the image carries for `install-cni
/// --plugins-from`: `loopback` (containerd runs it for every pod), the
/// default chain (`portmap`, `bandwidth`) and `host-local` for
/// `--ipam host-local`.
const PLUGINS: &[&str] = &["loopback", "portmap", "bandwidth", "host-local"];
const DEBIAN_PLUGIN_DIR: &str = "/usr/lib/cni";
/// Where the image keeps them (as Debian does): `--plugins-from` this.
const IMAGE_PLUGIN_DIR: &str = "usr/lib/cni";

pub fn run() -> Result<()> {
    // podman and containernetworking-plugins come with the tests' packages.
    crate::setup::run(crate::setup::Needs::Everything)?;
    let built = build()?;
    println!(
        "built {} and {} ({}), saved as {} ({:.1} MB)",
        built.tags[0],
        built.tags[1],
        built.id,
        built.archive.display(),
        fs::metadata(&built.archive)?.len() as f64 / 1e6
    );
    Ok(())
}

pub struct Built {
    pub tags: [String; 2],
    pub id: String,
    pub archive: PathBuf,
}

pub fn build() -> Result<Built> {
    cmd::run(cmd::cargo().args(["build", "--release", "-q", "-p", "veth-userspace", "--bins"]))?;
    let release = cmd::target_dir().join("release");
    let vethctl = release.join("vethctl");
    let (version, commit) = version_of(&vethctl)?;
    let epoch = commit_time()?;
    let dir = cmd::target_dir().join("image");
    let context = dir.join("context");
    if context.exists() {
        fs::remove_dir_all(&context).with_context(|| format!("removing {}", context.display()))?;
    }
    let rootfs = context.join("rootfs");
    assemble(&rootfs, &[vethctl, release.join("veth-cni")])?;
    fs::write(
        context.join("Containerfile"),
        containerfile(&version, &commit),
    )?;
    let tags = [
        format!("{REPOSITORY}:{version}"),
        format!("{REPOSITORY}:{version}-{commit}"),
    ];
    cmd::run(
        Command::new("podman")
            .args([
                "build",
                "--pull=never",
                "--layers=false",
                "--timestamp",
                &epoch,
            ])
            .args(["-t", &tags[0], "-t", &tags[1], "-f"])
            .arg(context.join("Containerfile"))
            .arg(&context),
    )?;
    let archive = dir.join("vethctl.oci.tar");
    let _ = fs::remove_file(&archive);
    cmd::run(
        Command::new("podman")
            .args(["save", "-q", "--format", "oci-archive", "-o"])
            .arg(&archive)
            .arg(&tags[0]),
    )?;
    let id = cmd::output(
        Command::new("podman")
            .args(["image", "inspect", "--format", "{{.Id}}"])
            .arg(&tags[0]),
    )?;
    Ok(Built {
        tags,
        id: id.trim().chars().take(12).collect(),
        archive,
    })
}

/// The version and commit `vethctl --version` reports (the commit is
/// "unknown" outside a git checkout: then the tag is the version alone).
fn version_of(vethctl: &Path) -> Result<(String, String)> {
    let text = cmd::output(Command::new(vethctl).arg("--version"))?;
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(|v| v.trim().to_string())
    };
    let version = field("vethctl ").context("`vethctl --version` names no version")?;
    let commit = field("commit: ").unwrap_or_else(|| "unknown".into());
    Ok((version, commit))
}

/// Seconds since the epoch of the checked-out commit (0 outside git): the
/// time of every file in the image and of the image itself.
fn commit_time() -> Result<String> {
    let time = cmd::probe(
        Command::new("git")
            .args(["log", "-1", "--format=%ct"])
            .current_dir(cmd::workspace_root()),
    );
    Ok(time
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "0".into()))
}

fn containerfile(version: &str, commit: &str) -> String {
    format!(
        r#"# Written by `cargo xtask image`: a root filesystem from this machine, nothing pulled.
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin
LABEL org.opencontainers.image.title="vethctl" \
      org.opencontainers.image.description="vethctl and veth-cni: an eBPF pod dataplane and its CNI plugin" \
      org.opencontainers.image.version="{version}" \
      org.opencontainers.image.revision="{commit}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"
ENTRYPOINT ["/usr/local/bin/vethctl"]
CMD ["--help"]
"#
    )
}

/// The image's root filesystem: our binaries in /usr/local/bin, the
/// reference plugins in /usr/lib/cni, the libraries all of them load at
/// the paths they are loaded from, licences under /usr/share/doc.
fn assemble(rootfs: &Path, ours: &[PathBuf]) -> Result<()> {
    let mut binaries = Vec::new();
    for binary in ours {
        let name = binary.file_name().context("binary without a name")?;
        binaries.push(copy(binary, &rootfs.join("usr/local/bin").join(name))?);
    }
    let mut system_files = BTreeSet::new();
    for plugin in PLUGINS {
        let source = Path::new(DEBIAN_PLUGIN_DIR).join(plugin);
        if !source.is_file() {
            bail!(
                "{} is missing: install Debian's containernetworking-plugins (`cargo xtask setup`)",
                source.display()
            );
        }
        binaries.push(copy(&source, &rootfs.join(IMAGE_PLUGIN_DIR).join(plugin))?);
        system_files.insert(source);
    }
    for library in libraries_of(&binaries)? {
        let inside = rootfs.join(library.strip_prefix("/").unwrap_or(&library));
        copy(&library, &inside)?;
        system_files.insert(library);
    }
    licences(rootfs, &system_files)?;
    // A pod's namespace is recorded as /var/run/netns/… (containerd's
    // path): the agent finds it through the host's /run mounted in.
    fs::create_dir_all(rootfs.join("var"))?;
    fs::create_dir_all(rootfs.join("run"))?;
    std::os::unix::fs::symlink("../run", rootfs.join("var/run"))?;
    let tmp = rootfs.join("tmp");
    fs::create_dir_all(&tmp)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777))?;
    Ok(())
}

/// Copies `from` (following links) to `to`, creating its directory; keeps
/// the mode.
fn copy(from: &Path, to: &Path) -> Result<PathBuf> {
    fs::create_dir_all(to.parent().context("no parent")?)?;
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(to.to_path_buf())
}

/// The shared libraries (and the dynamic loader) `ldd` resolves for
/// `binaries`, as absolute paths on this machine.
fn libraries_of(binaries: &[PathBuf]) -> Result<BTreeSet<PathBuf>> {
    let mut libraries = BTreeSet::new();
    for binary in binaries {
        let text = cmd::output(Command::new("ldd").arg(binary))?;
        for line in text.lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x…)"; linux-vdso has no file.
            let path = line
                .split("=>")
                .last()
                .and_then(|rest| rest.split_whitespace().next())
                .filter(|p| p.starts_with('/'));
            if line.contains("not found") {
                bail!("{}: {}", binary.display(), line.trim());
            }
            libraries.extend(path.map(PathBuf::from));
        }
    }
    Ok(libraries)
}

/// Our two licences, and the copyright file of each Debian package a file
/// of the image comes from (`dpkg -S`).
fn licences(rootfs: &Path, system_files: &BTreeSet<PathBuf>) -> Result<()> {
    let doc = rootfs.join("usr/share/doc");
    for licence in ["LICENSE-MIT", "LICENSE-APACHE"] {
        copy(
            &cmd::workspace_root().join(licence),
            &doc.join("vethctl").join(licence),
        )?;
    }
    let mut packages = BTreeSet::new();
    for file in system_files {
        let owner = cmd::output(Command::new("dpkg").arg("-S").arg(file))
            .with_context(|| format!("which Debian package holds {}", file.display()))?;
        for line in owner.lines() {
            let package = line.split(':').next().unwrap_or_default().trim();
            packages.extend(package.split(", ").map(str::to_string));
        }
    }
    for package in packages.iter().filter(|p| !p.is_empty()) {
        let copyright = Path::new("/usr/share/doc").join(package).join("copyright");
        if copyright.is_file() {
            copy(&copyright, &doc.join(package).join("copyright"))?;
        }
    }
    Ok(())
}
