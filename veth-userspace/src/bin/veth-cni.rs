//! `veth-cni`: the CNI plugin. Container runtimes run it with the `CNI_*`
//! variables and the network configuration on stdin; everything is in the
//! library ([`veth_userspace::cni`] over [`veth_cni_protocol::run`]).

use std::io::{Read, Write};

fn main() {
    let mut stdin = Vec::new();
    // An unreadable stdin stays empty: the protocol answers code 6.
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let out = veth_cni_protocol::run(std::env::vars_os(), &stdin, &veth_userspace::cni::VethCni);
    for line in &out.stderr {
        eprintln!("veth-cni: {line}");
    }
    // The runtime reads stdout; if it went away there is no one to tell.
    let _ = std::io::stdout().write_all(&out.stdout);
    let _ = std::io::stdout().flush();
    std::process::exit(out.exit_code);
}
