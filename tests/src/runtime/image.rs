//! What the runtimes run, made here because no registry is reachable: the
//! pod sandbox ("pause") image for containerd as an OCI image archive, and
//! a busybox root filesystem for `podman run --rootfs`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The sandbox image's name: what `ctr images import` records (from the
/// index annotation `io.containerd.image.name`) and what containerd's
/// `sandbox_image` must say exactly, so RunPodSandbox never tries to pull.
pub const PAUSE_IMAGE: &str = "localhost/vethctl-tests/pause:1";

/// The pause program: sleeps until SIGTERM or SIGINT (then exits 0),
/// reaping children as a pid 1 should.
const PAUSE_C: &str = r#"
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void quit(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, 0, WNOHANG) > 0) {} }

int main(void) {
    struct sigaction q = {0}, r = {0};
    q.sa_handler = quit;
    sigaction(SIGTERM, &q, 0);
    sigaction(SIGINT, &q, 0);
    r.sa_handler = reap;
    r.sa_flags = SA_NOCLDSTOP;
    sigaction(SIGCHLD, &r, 0);
    for (;;) pause();
}
"#;

/// Compiles the pause program into `dir/pause`, statically linked (gcc and
/// libc6-dev's libc.a), so the image needs nothing else.
pub fn build_pause_binary(dir: &Path) -> Result<PathBuf> {
    let source = dir.join("pause.c");
    let binary = dir.join("pause");
    std::fs::write(&source, PAUSE_C)?;
    let out = Command::new("cc")
        .args(["-static", "-Os", "-s", "-o"])
        .arg(&binary)
        .arg(&source)
        .output()
        .context("running cc (install gcc and libc6-dev)")?;
    if !out.status.success() {
        bail!(
            "building the pause binary failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(binary)
}

/// Writes a one-layer OCI image archive (`oci-layout`, `index.json`,
/// `blobs/sha256/…`) named [`PAUSE_IMAGE`] holding `/pause` as entrypoint,
/// to `dir/pause.oci.tar`; builds the binary first.
pub fn build_pause_image(dir: &Path) -> Result<PathBuf> {
    let binary = build_pause_binary(dir)?;
    let program = std::fs::read(&binary)?;

    let mut layer = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_size(program.len() as u64);
    header.set_mode(0o755);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    layer.append_data(&mut header, "pause", program.as_slice())?;
    let layer = layer.into_inner()?;

    let (os, architecture) = ("linux", go_arch());
    let config = json!({
        "architecture": architecture,
        "os": os,
        "config": {"Entrypoint": ["/pause"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [digest(&layer)]},
    });
    let config = serde_json::to_vec(&config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", &layer)],
    });
    let manifest = serde_json::to_vec(&manifest)?;
    let mut entry = descriptor("application/vnd.oci.image.manifest.v1+json", &manifest);
    entry["platform"] = json!({"architecture": architecture, "os": os});
    entry["annotations"] = json!({
        "io.containerd.image.name": PAUSE_IMAGE,
        "org.opencontainers.image.ref.name": PAUSE_IMAGE.rsplit(':').next(),
    });
    let index = json!({"schemaVersion": 2, "manifests": [entry]});

    let path = dir.join("pause.oci.tar");
    let mut archive = tar::Builder::new(std::fs::File::create(&path)?);
    let mut add = |name: String, data: &[u8]| -> Result<()> {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        archive.append_data(&mut header, name, data)?;
        Ok(())
    };
    add("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add("index.json".into(), &serde_json::to_vec(&index)?)?;
    for blob in [&layer, &config, &manifest] {
        add(format!("blobs/sha256/{}", sha256_hex(blob)), blob)?;
    }
    archive.into_inner()?;
    Ok(path)
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `sha256(data)` in hex (containerd also names shim sockets this way).
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn digest(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

fn descriptor(media_type: &str, data: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": digest(data), "size": data.len()})
}

/// Debian's static busybox (busybox-static).
pub const BUSYBOX: &str = "/bin/busybox";

/// Applets linked in a busybox root filesystem.
const APPLETS: &[&str] = &[
    "sh", "sleep", "ping", "ip", "nc", "cat", "ls", "echo", "ifconfig", "hostname",
];

/// A minimal root filesystem in `dir`: `/bin/busybox` with the [`APPLETS`]
/// as symlinks, and the directories a runtime mounts over.
pub fn busybox_rootfs(dir: &Path) -> Result<()> {
    let is_static = std::fs::read(BUSYBOX).is_ok_and(|elf| is_static_elf(&elf));
    if !is_static {
        bail!("{BUSYBOX} is missing or not static: install busybox-static (`cargo xtask setup`)");
    }
    for sub in ["bin", "dev", "etc", "proc", "sys", "tmp", "run", "var"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    std::fs::copy(BUSYBOX, dir.join("bin/busybox"))?;
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet))?;
    }
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n")?;
    std::fs::write(dir.join("etc/group"), "root:x:0:\n")?;
    Ok(())
}

/// Whether `elf` is a 64-bit little-endian ELF executable without a
/// program interpreter (`PT_INTERP`): one that runs in an empty root.
fn is_static_elf(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return false;
    }
    let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).all(|i| {
        let at = phoff + i * phentsize;
        elf.get(at..at + 4)
            .is_some_and(|t| u32::from_le_bytes(t.try_into().unwrap()) != PT_INTERP)
    })
}
