//! The two interface features mode xdp depends on, set with the ethtool
//! ioctl on a socket of the calling thread's namespace.
//!
//! XDP frames redirected into a veth are received by its peer's NAPI poll,
//! which exists only while GRO (or an XDP program) is on for the peer: the
//! pod's `eth0` gets GRO. And a frame that went through XDP has lost the
//! "checksum still to be filled in" state of locally sent TCP/UDP, so pods
//! must compute checksums in software: tx checksum offload off.

use std::os::fd::{AsRawFd, OwnedFd};

use anyhow::{bail, Context, Result};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;
const ETHTOOL_GGRO: u32 = 0x2b;
const ETHTOOL_SGRO: u32 = 0x2c;

/// `struct ethtool_value`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ifreq` with `ifr_data`, padded to the kernel's size.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: *mut EthtoolValue,
    _pad: [u8; 16],
}

/// Sets GRO and tx checksum offload of `ifname` (a no-op where already so).
pub fn set_offloads(ifname: &str, gro: bool, tx_checksum: bool) -> Result<()> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("opening a socket for ethtool")?;
    for (get, set, on, what) in [
        (ETHTOOL_GGRO, ETHTOOL_SGRO, gro, "GRO"),
        (
            ETHTOOL_GTXCSUM,
            ETHTOOL_STXCSUM,
            tx_checksum,
            "tx checksum offload",
        ),
    ] {
        let current =
            ethtool(&sock, ifname, get, 0).with_context(|| format!("{ifname}: reading {what}"))?;
        if current != u32::from(on) {
            let state = if on { "on" } else { "off" };
            ethtool(&sock, ifname, set, u32::from(on))
                .with_context(|| format!("{ifname}: turning {what} {state}"))?;
        }
    }
    Ok(())
}

fn ethtool(sock: &OwnedFd, ifname: &str, cmd: u32, data: u32) -> Result<u32> {
    if ifname.len() >= libc::IFNAMSIZ {
        bail!("interface name {ifname:?} is too long");
    }
    let mut value = EthtoolValue { cmd, data };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut value,
        _pad: [0; 16],
    };
    req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
    // SAFETY: SIOCETHTOOL with a valid ifreq whose data points at a live
    // ethtool_value; the kernel reads and writes only those.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &mut req) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(value.data)
}
