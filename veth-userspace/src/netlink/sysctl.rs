//! Kernel settings under /proc/sys/net of the host namespace.

use std::fs;

use anyhow::{Context, Result};

/// Turns on IPv4 (and IPv6) forwarding, host-wide, as every CNI does: pods
/// reach beyond the node, and in the kernel-path modes each other, through
/// the host's forwarding. Not undone by `down`: other users may rely on it.
pub fn enable_forwarding(ipv6: bool) -> Result<()> {
    write("/proc/sys/net/ipv4/ip_forward", "1")?;
    if ipv6 {
        write("/proc/sys/net/ipv6/conf/all/forwarding", "1")?;
    }
    Ok(())
}

/// No IPv6 duplicate address detection on `ifname`, in the namespace of the
/// calling thread (/proc/sys/net follows the thread's namespace).
pub fn disable_dad(ifname: &str) -> Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{ifname}/accept_dad");
    // IPv6 may be disabled on this kernel or interface: nothing to do then.
    if !std::path::Path::new(&path).exists() {
        return Ok(());
    }
    write(&path, "0")
}

fn write(path: &str, value: &str) -> Result<()> {
    if fs::read_to_string(path).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    fs::write(path, value).with_context(|| format!("setting {path} to {value}"))
}
