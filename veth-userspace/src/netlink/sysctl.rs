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

/// IPv6 on or off on the host-namespace link `ifname` (off: no addresses,
/// no routes, no neighbour discovery on it).
pub fn set_ipv6(ifname: &str, on: bool) -> Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6");
    // A kernel without IPv6 has nothing to turn off.
    if !std::path::Path::new(&path).exists() {
        return if on {
            Err(anyhow::anyhow!(
                "{path} is missing: this kernel has no IPv6"
            ))
        } else {
            Ok(())
        };
    }
    write(&path, if on { "0" } else { "1" })
}

/// On a link of ours (the bridge): when its first IPv4 address of a subnet
/// is removed, the next one takes its place instead of going with it, so a
/// node address can be replaced by a new one in the same subnet.
pub fn promote_secondaries(ifname: &str) -> Result<()> {
    write(
        &format!("/proc/sys/net/ipv4/conf/{ifname}/promote_secondaries"),
        "1",
    )
}

/// Whether removing the first IPv4 address of a subnet on `ifname` leaves
/// the others of that subnet in place.
pub fn promotes_secondaries(ifname: &str) -> bool {
    ["all", ifname].iter().any(|dev| {
        fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{dev}/promote_secondaries"))
            .is_ok_and(|v| v.trim() == "1")
    })
}

/// Receive packet steering on a host-namespace device: `on` spreads flows
/// over every CPU, one CPU per flow; off leaves each frame on the CPU that
/// sent it (the kernel's default).
pub fn set_rps(ifname: &str, on: bool) -> Result<()> {
    let mask = if on {
        // SAFETY: sysconf has no preconditions.
        let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.max(1);
        cpu_mask(cpus as usize)
    } else {
        "0".to_string()
    };
    let queues = format!("/sys/class/net/{ifname}/queues");
    let entries = fs::read_dir(&queues).with_context(|| format!("listing {queues}"))?;
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with("rx-") {
            let path = entry.path().join("rps_cpus");
            write(&path.to_string_lossy(), &mask)?;
        }
    }
    Ok(())
}

/// The `rps_cpus` mask of CPUs 0..n: hex, in comma-separated 32-bit groups
/// as the kernel prints it (e.g. "ff,ffffffff" for 40 CPUs).
pub fn cpu_mask(n: usize) -> String {
    let mut groups = Vec::new();
    let mut left = n;
    while left > 0 {
        let bits = left.min(32);
        groups.push(format!("{:x}", (u64::from(u32::MAX) >> (32 - bits))));
        left -= bits;
    }
    if groups.is_empty() {
        return "0".into();
    }
    groups.reverse();
    let first = groups.remove(0);
    std::iter::once(first)
        .chain(groups.into_iter().map(|g| format!("{g:0>8}")))
        .collect::<Vec<_>>()
        .join(",")
}

/// Compares as the kernel prints a value back: a mask reads as
/// "00000003" or "ff,ffffffff".
fn same_value(current: &str, wanted: &str) -> bool {
    let norm = |v: &str| {
        let v = v.trim().replace(',', "");
        let v = v.trim_start_matches('0');
        v.to_string()
    };
    current.trim() == wanted || norm(current) == norm(wanted)
}

fn write(path: &str, value: &str) -> Result<()> {
    if fs::read_to_string(path).is_ok_and(|v| same_value(&v, value)) {
        return Ok(());
    }
    fs::write(path, value).with_context(|| format!("setting {path} to {value}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_masks_cover_every_cpu_in_32_bit_groups() {
        assert_eq!(cpu_mask(1), "1");
        assert_eq!(cpu_mask(2), "3");
        assert_eq!(cpu_mask(32), "ffffffff");
        assert_eq!(cpu_mask(40), "ff,ffffffff");
        assert_eq!(cpu_mask(33), "1,ffffffff");
        assert_eq!(cpu_mask(0), "0");
    }

    #[test]
    fn masks_compare_as_the_kernel_prints_them() {
        assert!(same_value("00000003\n", "3"));
        assert!(same_value("000000ff,ffffffff", "ff,ffffffff"));
        assert!(same_value("00000000", "0"));
        assert!(!same_value("00000001", "3"));
        assert!(same_value("1\n", "1"));
    }
}
