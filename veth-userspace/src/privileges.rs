//! What each command needs from the kernel, checked before it starts: a
//! command run without it would half-work (`status` showing every pod
//! down, an agent logging permission errors) instead of saying so.
//!
//! The sets were found by running each command under `setpriv` with one
//! capability less at a time (kernel 6.18). Beyond them, every command
//! reads `/run/vethctl` and the pins under `/sys/fs/bpf/vethctl`, which
//! are root's and private (0700 directories, 0600 files): it runs as uid 0,
//! or holds CAP_DAC_OVERRIDE.

use std::fmt;

/// The capabilities vethctl's commands use (numbers from
/// `linux/capability.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capability {
    DacOverride = 1,
    NetAdmin = 12,
    SysAdmin = 21,
}

impl Capability {
    fn bit(self) -> u64 {
        1 << (self as u32)
    }

    pub fn name(self) -> &'static str {
        match self {
            Capability::DacOverride => "CAP_DAC_OVERRIDE",
            Capability::NetAdmin => "CAP_NET_ADMIN",
            Capability::SysAdmin => "CAP_SYS_ADMIN",
        }
    }
}

/// Reading state, pins and maps: `stats`, `trace`, the agent. Map lookups
/// and updates through a pinned map need only the pin's file permission
/// (since Linux 6.5; older kernels also ask CAP_BPF for them while
/// unprivileged BPF is disabled), link and address dumps nothing.
pub const READ: &[Capability] = &[];
/// `status`: aya's feature probes, TCX program queries and program lookups
/// by id (without it every endpoint shows `down`).
pub const INSPECT: &[Capability] = &[Capability::SysAdmin];
/// Making and changing things (`up`, `down`, `mode set`, `plan`, `bench`,
/// `veth-cni`): links, addresses, routes, nf_tables, sysctls
/// (CAP_NET_ADMIN); namespaces, mounts under /run/netns, loading programs
/// (CAP_SYS_ADMIN, which covers CAP_BPF and CAP_PERFMON).
pub const CHANGE: &[Capability] = &[Capability::NetAdmin, Capability::SysAdmin];
/// `agent --bpf-stats`: BPF_ENABLE_STATS.
pub const BPF_STATS: &[Capability] = &[Capability::SysAdmin];

/// What this process holds.
#[derive(Clone, Copy, Debug)]
pub struct Held {
    pub uid_root: bool,
    /// The effective set (`CapEff`).
    pub effective: u64,
}

impl Held {
    /// This process's effective uid and capabilities.
    pub fn current() -> Held {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        Held {
            uid_root: nix::unistd::geteuid().is_root(),
            // Unreadable: nothing is assumed held, and the message says what is needed.
            effective: effective_caps(&status).unwrap_or(0),
        }
    }

    /// What of `needs` (plus file access to vethctl's state) is missing.
    pub fn missing(&self, needs: &[Capability]) -> Vec<Capability> {
        let mut missing: Vec<Capability> = needs
            .iter()
            .copied()
            .filter(|c| self.effective & c.bit() == 0)
            .collect();
        if !self.uid_root && self.effective & Capability::DacOverride.bit() == 0 {
            missing.push(Capability::DacOverride);
        }
        missing
    }
}

/// The `CapEff` line of a `/proc/<pid>/status` text.
pub fn effective_caps(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// A command refused for want of privileges.
#[derive(Debug, thiserror::Error)]
pub struct Missing {
    pub command: String,
    pub needs: &'static [Capability],
    pub missing: Vec<Capability>,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = |caps: &[Capability]| {
            caps.iter()
                .map(|c| c.name())
                .collect::<Vec<_>>()
                .join(" + ")
        };
        let access = "/run/vethctl and the pins are root's and private";
        if self.needs.is_empty() {
            write!(
                f,
                "{} needs uid 0 or CAP_DAC_OVERRIDE ({access})",
                self.command
            )?;
        } else {
            write!(
                f,
                "{} needs root, or {} and, when not uid 0, CAP_DAC_OVERRIDE ({access})",
                self.command,
                names(self.needs)
            )?;
        }
        write!(
            f,
            "; this process lacks {} (run it as root, or see docs/security.md)",
            names(&self.missing)
        )
    }
}

/// Refuses to go on unless this process holds what `command` needs.
pub fn require(command: &str, needs: &'static [Capability]) -> Result<(), Missing> {
    check(&Held::current(), command, needs)
}

/// [`require`] for `held` (pure).
pub fn check(held: &Held, command: &str, needs: &'static [Capability]) -> Result<(), Missing> {
    let missing = held.missing(needs);
    if missing.is_empty() {
        return Ok(());
    }
    Err(Missing {
        command: command.to_string(),
        needs,
        missing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tvethctl\nCapInh:\t0000000000000000\nCapPrm:\t0000000000201000\n\
                          CapEff:\t0000000000201000\nCapBnd:\t000001ffffffffff\n";

    #[test]
    fn reads_the_effective_set() {
        assert_eq!(effective_caps(STATUS), Some(0x201000));
        assert_eq!(effective_caps("CapPrm:\t00\n"), None);
        assert_eq!(effective_caps("CapEff:\tzz\n"), None);
    }

    #[test]
    fn names_what_is_missing() {
        let net_and_sys = Held {
            uid_root: true,
            effective: effective_caps(STATUS).unwrap(),
        };
        assert!(check(&net_and_sys, "vethctl up", CHANGE).is_ok());
        let nobody = Held {
            uid_root: false,
            ..net_and_sys
        };
        let err = check(&nobody, "vethctl up", CHANGE).unwrap_err();
        assert_eq!(err.missing, vec![Capability::DacOverride]);
        let bare = Held {
            uid_root: false,
            effective: 0,
        };
        let err = check(&bare, "vethctl status", INSPECT).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(
                "vethctl status needs root, or CAP_SYS_ADMIN and, when not uid 0, CAP_DAC_OVERRIDE"
            ),
            "{text}"
        );
        assert!(
            text.contains("lacks CAP_SYS_ADMIN + CAP_DAC_OVERRIDE"),
            "{text}"
        );
        let root_without_caps = Held {
            uid_root: true,
            effective: 0,
        };
        assert!(check(&root_without_caps, "vethctl stats", READ).is_ok());
        assert!(check(&root_without_caps, "vethctl status", INSPECT).is_err());
    }
}
