//! `cargo xtask bench checks`: what the security checks cost per packet.
//!
//! The programs themselves, loaded privately (never attached) with the
//! checks compiled in and out, run with `BPF_PROG_TEST_RUN` on the same
//! 64-byte UDP frame from one pod to another, which both redirect; beside
//! them the limit+map reference on the same frames, for `from_pod ÷
//! limit+map` without traffic (issue 19); rounds rotate the variants. The measuring program is `program-cost` in the
//! tests package (it needs the eBPF object, which xtask must not build
//! before set-up has installed the toolchain). No packet is sent anywhere.

use anyhow::{bail, Result};

use crate::{cmd, setup};

pub fn run(rounds: usize) -> Result<()> {
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    setup::run(setup::Needs::Everything)?;
    let dir = cmd::target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let out = dir.join("checks.json");
    cmd::run(cmd::cargo().args([
        "run",
        "--release",
        "-q",
        "-p",
        "veth-tests",
        "--bin",
        "program-cost",
        "--",
        &rounds.to_string(),
        &out.display().to_string(),
    ]))
}
