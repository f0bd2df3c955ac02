//! The dataplane programs. Built for `bpfel-unknown-none` by veth-userspace's
//! build.rs; on the host it compiles to an empty binary so that clippy and the
//! unit tests of the pure helpers run with the rest of the workspace.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod bench_reference;
mod control;
mod counters;
mod cross_node;
mod deliver;
mod from_node;
mod from_pod;
mod maps;
mod packet;
mod to_pod;
mod trace;
mod xdp_from_pod;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path; this is never called.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
