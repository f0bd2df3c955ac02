//! Builds the eBPF object (veth-ebpf) for `bpfel-unknown-none` and leaves it
//! in OUT_DIR for `include_bytes_aligned!`.
//!
//! The host toolchain (rustup) cannot build for BPF here: there is no
//! rust-src for build-std. Debian's rustc-web ships a prebuilt `core` for
//! bpfel-unknown-none instead, so the inner build uses /usr/bin/cargo and
//! /usr/bin/rustc explicitly (see ../shared/TOOLCHAIN.md and docs/install.md).

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const BPF_TARGET: &str = "bpfel-unknown-none";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.parent().unwrap().to_path_buf();
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());

    for dir in ["veth-ebpf/src", "veth-common/src"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    for file in [
        "veth-ebpf/Cargo.toml",
        "veth-common/Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(file).display());
    }

    emit_git_commit(&workspace);

    for tool in [DEBIAN_CARGO, DEBIAN_RUSTC] {
        if !Path::new(tool).exists() {
            fail(&format!(
                "{tool} is missing: the eBPF programs build with Debian's rustc-web. \
                 Run `cargo xtask setup` (as root) to install it."
            ));
        }
    }

    // A separate target dir: the outer cargo holds the lock on ours.
    let target_dir = workspace.join("target").join("ebpf");
    let mut cmd = Command::new(DEBIAN_CARGO);
    cmd.current_dir(&workspace)
        .args([
            "build",
            "-p",
            "veth-ebpf",
            "--release",
            "--target",
            BPF_TARGET,
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("RUSTC", DEBIAN_RUSTC)
        // aya-ebpf needs asm_experimental_arch; allow it for that crate only.
        .env("RUSTC_BOOTSTRAP", "aya_ebpf")
        .env("PATH", path_with_cargo_bin());
    // Settings of the outer (host) build must not leak into the BPF build.
    for var in [
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "RUSTDOCFLAGS",
    ] {
        cmd.env_remove(var);
    }
    for (key, _) in env::vars() {
        if key.starts_with("CARGO_PROFILE_") || key.starts_with("CARGO_FEATURE_") {
            cmd.env_remove(key);
        }
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| fail(&format!("running {DEBIAN_CARGO}: {e}")));
    if !status.success() {
        fail(
            "building veth-ebpf for bpfel-unknown-none failed (output above). If bpf-linker is \
             missing or built for another LLVM, run `cargo xtask setup` (as root).",
        );
    }
    let object = target_dir
        .join(BPF_TARGET)
        .join("release")
        .join("veth-ebpf");
    std::fs::copy(&object, out_dir.join("veth-ebpf.o"))
        .unwrap_or_else(|e| fail(&format!("copying {}: {e}", object.display())));
}

/// Sets `VETHCTL_GIT_COMMIT` for `vethctl --version`: the commit the build
/// is from, or "unknown" outside a git checkout (a source tarball) or
/// without git. Reruns when HEAD moves, so the commit is never stale.
fn emit_git_commit(workspace: &Path) {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .args(args)
            .current_dir(workspace)
            .output()
            .ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=VETHCTL_GIT_COMMIT={commit}");
    // HEAD itself (a branch switch) and the branch it points at (a commit);
    // in a worktree they live in different git directories.
    let mut watched = vec!["HEAD".to_string()];
    watched.extend(git(&["rev-parse", "--symbolic-full-name", "HEAD"]));
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--path-format=absolute", "--git-path", &name]) {
            if Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
}

/// PATH with ~/.cargo/bin, where `cargo install bpf-linker` puts the linker.
fn path_with_cargo_bin() -> String {
    let cargo_home = env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env::var("HOME").unwrap_or_default()).join(".cargo"));
    let bin = cargo_home.join("bin");
    match env::var("PATH") {
        Ok(path) => format!("{}:{path}", bin.display()),
        Err(_) => bin.display().to_string(),
    }
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}
