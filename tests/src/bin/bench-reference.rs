//! Attaches a benchmark reference program (`limit` or `limit+map`, see
//! `veth_userspace::dataplane::reference`) at TCX ingress of two host-side
//! veths of a topology the caller made, prints `id <program id>`, and keeps
//! it attached until its stdin closes; nothing is pinned, so the program
//! detaches when this process exits, however it exits.
//!
//! `cargo xtask bench paths` runs this for its "limit" paths.
//! Usage: bench-reference <limit|limit+map> <HOST_VETH_A> <HOST_VETH_B>

use std::io::{Read, Write};

use anyhow::{bail, Context, Result};
use veth_userspace::dataplane::reference::{Reference, ReferenceProgram};

fn ifindex(name: &str) -> Result<u32> {
    let path = format!("/sys/class/net/{name}/ifindex");
    std::fs::read_to_string(&path)
        .with_context(|| format!("no interface {name:?} ({path})"))?
        .trim()
        .parse()
        .with_context(|| format!("reading {path}"))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [reference, a, b] = args.as_slice() else {
        bail!("usage: bench-reference <limit|limit+map> <HOST_VETH_A> <HOST_VETH_B>");
    };
    let reference = Reference::from_path(reference)
        .with_context(|| format!("unknown reference {reference:?}: limit or limit+map"))?;
    let mut program = ReferenceProgram::load(reference, ifindex(a)?, ifindex(b)?)?;
    program.attach(a)?;
    program.attach(b)?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "id {}", program.id()?)?;
    stdout.flush()?;
    // Until the benchmark closes our stdin (or exits).
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    Ok(())
}
