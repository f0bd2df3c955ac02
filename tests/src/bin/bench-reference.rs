//! Attaches a benchmark reference program (`limit`, `limit+map` or
//! `limit+rewrite`, see `veth_userspace::dataplane::reference`) at TCX
//! ingress of two host-side veths of a topology the caller made, prints
//! `id <program id>`, and keeps it attached until its stdin closes; nothing
//! is pinned, so the program detaches when this process exits, however it
//! exits.
//!
//! `cargo xtask bench paths` runs this for its "limit" paths.
//! Usage: bench-reference <REFERENCE> <HOST_VETH_A> <HOST_VETH_B> [<MAC_A> <MAC_B>]
//! (the pods' MACs, which `limit+rewrite` needs).

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

/// `aa:bb:cc:dd:ee:ff`.
fn mac(text: &str) -> Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|hex| u8::from_str_radix(hex, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("MAC {text:?}: expected aa:bb:cc:dd:ee:ff"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("MAC {text:?}: expected six bytes"))
}

const USAGE: &str =
    "usage: bench-reference <limit|limit+map|limit+rewrite> <HOST_VETH_A> <HOST_VETH_B> [<MAC_A> <MAC_B>]";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (reference, a, b, macs) = match args.as_slice() {
        [reference, a, b] => (reference, a, b, None),
        [reference, a, b, mac_a, mac_b] => (reference, a, b, Some([mac(mac_a)?, mac(mac_b)?])),
        _ => bail!("{USAGE}"),
    };
    let reference = Reference::from_path(reference)
        .with_context(|| format!("unknown reference {reference:?}: {USAGE}"))?;
    let mut program = ReferenceProgram::load(reference, ifindex(a)?, ifindex(b)?)?;
    match macs {
        Some(macs) => program.set_pod_macs(macs)?,
        None if reference == Reference::LimitRewrite => {
            bail!("limit+rewrite needs the pods' MACs: {USAGE}")
        }
        None => {}
    }
    program.attach(a)?;
    program.attach(b)?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "id {}", program.id()?)?;
    stdout.flush()?;
    // Until the benchmark closes our stdin (or exits).
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    Ok(())
}
