//! The oldest kernel vethctl runs on, and what each hook needs from it.
//! Checked before a command touches the kernel, so an old kernel gets one
//! clear sentence instead of a verifier log or an `EINVAL` from deep
//! inside `up`.

use std::fmt;

/// A kernel version as `uname -r` starts: `6.6.0-14-amd64` is 6.6.0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl KernelVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> KernelVersion {
        KernelVersion {
            major,
            minor,
            patch,
        }
    }

    /// Parses a release string (`uname -r`): up to three dot-separated
    /// numbers, each ending at the first character that is not a digit
    /// (`6.18.44-fc-v1272`, `5.15.0-91-generic`, `6.6`, `6.8.0+`).
    /// `None` when it does not start with `MAJOR.MINOR`.
    pub fn parse(release: &str) -> Option<KernelVersion> {
        let mut numbers = [0u32; 3];
        let mut rest = release.trim();
        for (i, slot) in numbers.iter_mut().enumerate() {
            let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            if digits == 0 {
                // Major and minor are required; the patch level is not.
                return (i == 2).then(|| KernelVersion::new(numbers[0], numbers[1], 0));
            }
            *slot = rest[..digits].parse().ok()?;
            rest = &rest[digits..];
            if i < 2 {
                match rest.strip_prefix('.') {
                    Some(r) => rest = r,
                    None if i == 1 => break,
                    None => return None,
                }
            }
        }
        Some(KernelVersion::new(numbers[0], numbers[1], numbers[2]))
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)?;
        if self.patch != 0 {
            write!(f, ".{}", self.patch)?;
        }
        Ok(())
    }
}

/// One kernel feature vethctl uses, and the release that brought it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub since: KernelVersion,
    /// The feature, and what of vethctl uses it.
    pub what: &'static str,
}

/// What vethctl needs, newest first. README's "Requirements" lists the same.
pub const REQUIREMENTS: &[Requirement] = &[
    Requirement {
        since: KernelVersion::new(6, 6, 0),
        what: "TCX links (the eBPF modes' programs at the host-side veths, pinned so they \
               keep running without vethctl)",
    },
    Requirement {
        since: KernelVersion::new(5, 12, 0),
        what: "bpf_check_mtu (the MTU check before a redirect)",
    },
    Requirement {
        since: KernelVersion::new(5, 10, 0),
        what: "bpf_redirect_peer (mode tc: into the destination pod's namespace)",
    },
    Requirement {
        since: KernelVersion::new(5, 8, 0),
        what: "BPF ring buffers (`vethctl trace`)",
    },
    Requirement {
        since: KernelVersion::new(5, 4, 0),
        what: "DEVMAP_HASH (mode xdp: the redirect targets)",
    },
];

/// The oldest kernel every requirement is met on.
pub fn minimum() -> KernelVersion {
    REQUIREMENTS
        .iter()
        .map(|r| r.since)
        .max()
        .unwrap_or(KernelVersion::new(0, 0, 0))
}

/// Refusal on a kernel that is too old: names the kernel, each hook it
/// lacks, and the fix.
#[derive(Debug, thiserror::Error)]
#[error(
    "this kernel is Linux {release}; vethctl needs Linux {minimum} or newer: {}; upgrade the \
     kernel (Debian 12: bookworm-backports' linux-image-amd64)",
    .unmet.iter().map(|r| format!("{} needs {}", r.what, r.since)).collect::<Vec<_>>().join(", ")
)]
pub struct TooOld {
    pub release: String,
    pub minimum: KernelVersion,
    pub unmet: Vec<Requirement>,
}

/// Checks `release` (pure). A release that cannot be parsed is let
/// through: vethctl cannot tell, and the kernel will refuse what it lacks.
pub fn check_release(release: &str) -> Result<(), TooOld> {
    let Some(version) = KernelVersion::parse(release) else {
        return Ok(());
    };
    let unmet: Vec<Requirement> = REQUIREMENTS
        .iter()
        .filter(|r| version < r.since)
        .copied()
        .collect();
    if unmet.is_empty() {
        return Ok(());
    }
    Err(TooOld {
        release: release.trim().to_string(),
        minimum: minimum(),
        unmet,
    })
}

/// The running kernel's release, as `uname(2)` reports it (personality
/// included: `setarch --uname-2.6` makes it report 2.6).
pub fn release() -> Option<String> {
    // SAFETY: uname fills the zeroed struct it is given; its fields are
    // NUL-terminated.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut name) } != 0 {
        return None;
    }
    let bytes: Vec<u8> = name
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8(bytes).ok()
}

/// Checks the running kernel.
pub fn check() -> Result<(), TooOld> {
    match release() {
        Some(release) => check_release(&release),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_distributions_report() {
        let v = KernelVersion::new;
        assert_eq!(KernelVersion::parse("6.18.44-fc-v1272"), Some(v(6, 18, 44)));
        assert_eq!(KernelVersion::parse("5.15.0-91-generic"), Some(v(5, 15, 0)));
        assert_eq!(KernelVersion::parse("6.1.0-18-amd64\n"), Some(v(6, 1, 0)));
        assert_eq!(KernelVersion::parse("6.6"), Some(v(6, 6, 0)));
        assert_eq!(KernelVersion::parse("6.8.0+"), Some(v(6, 8, 0)));
        assert_eq!(KernelVersion::parse("6.10-rc3"), Some(v(6, 10, 0)));
        assert_eq!(KernelVersion::parse("2.6.78-fc-v1272"), Some(v(2, 6, 78)));
        for bad in ["", "6", "six.1", "6.x", "-6.6", "99999999999.1"] {
            assert_eq!(KernelVersion::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(KernelVersion::new(6, 10, 0) > KernelVersion::new(6, 6, 0));
        assert!(KernelVersion::new(5, 15, 200) < KernelVersion::new(6, 0, 0));
        assert_eq!(KernelVersion::new(6, 6, 0).to_string(), "6.6");
        assert_eq!(KernelVersion::new(5, 15, 3).to_string(), "5.15.3");
    }

    #[test]
    fn the_minimum_is_tcx() {
        assert_eq!(minimum(), KernelVersion::new(6, 6, 0));
        assert!(check_release("6.6.0-1-amd64").is_ok());
        assert!(check_release("6.18.44").is_ok());
        assert!(check_release("not a version").is_ok());
    }

    #[test]
    fn an_old_kernel_is_told_which_hooks_it_lacks() {
        let e = check_release("5.10.0-28-amd64").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("Linux 5.10.0-28-amd64"), "{text}");
        assert!(text.contains("Linux 6.6 or newer"), "{text}");
        assert!(text.contains("TCX links"), "{text}");
        assert!(text.contains("bpf_check_mtu"), "{text}");
        // Met on 5.10: not named.
        assert!(!text.contains("bpf_redirect_peer"), "{text}");
        assert_eq!(e.unmet.len(), 2);
        let e = check_release("6.1.0").unwrap_err();
        assert_eq!(e.unmet.len(), 1);
        assert!(e.to_string().contains("upgrade the kernel"));
    }
}
