//! Running external programs so that every failure names the command that failed.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Renders a command roughly as a user would type it, for messages.
pub fn display(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Runs a command with the terminal's stdout/stderr, failing unless it exits with 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{}`", display(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(cmd));
    }
    Ok(())
}

/// Runs a command and returns its stdout; stderr stays on the terminal so the
/// reason for a failure is visible.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("could not start `{}`", display(cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed ({})", display(cmd), out.status);
    }
    String::from_utf8(out.stdout)
        .with_context(|| format!("`{}` printed non-UTF-8 output", display(cmd)))
}

/// Stdout of a command that is allowed to be missing or to fail: for checks
/// whose negative answer just means "needs installing".
pub fn probe(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The cargo that runs this xtask (the rustup one), not Debian's `/usr/bin/cargo`,
/// which only the eBPF build uses. Runs from the workspace root so that
/// `cargo xtask` works from any subdirectory.
pub fn cargo() -> Command {
    let program = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(program);
    cmd.current_dir(workspace_root());
    cmd
}

pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
}

/// Builds `bin` of the tests package in release (the benchmarks' helper
/// programs live there: xtask must not build the eBPF object itself) and
/// returns its path.
pub fn build_tests_bin(bin: &str) -> anyhow::Result<PathBuf> {
    run(cargo().args(["build", "--release", "-q", "-p", "veth-tests", "--bin", bin]))?;
    Ok(target_dir().join("release").join(bin))
}

pub fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}
