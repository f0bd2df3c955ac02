//! What `vethctl --version` reports: which build this is, down to the eBPF
//! object it loads, and the oldest kernel it runs on.

use sha2::{Digest, Sha256};

/// The crate version (`0.1.0`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit the build is from (12 hex digits), or "unknown" when it
/// was built outside a git checkout (set by build.rs).
pub const COMMIT: &str = env!("VETHCTL_GIT_COMMIT");

/// The first 12 hex digits of the SHA-256 of the embedded eBPF object: two
/// builds with the same digest load the same programs, whatever their
/// commits. `sha256sum` of the object in `target/ebpf/` gives the same.
pub fn bpf_object_digest() -> String {
    short_sha256(crate::dataplane::object())
}

fn short_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `-V`: the version and commit on one line.
pub fn short() -> String {
    format!("{VERSION} (commit {COMMIT})")
}

/// `--version`: one fact per line, easy to paste into a bug report.
pub fn long() -> String {
    format!(
        "{VERSION}\ncommit: {COMMIT}\nbpf object: sha256 {}\nminimum kernel: Linux {}",
        bpf_object_digest(),
        crate::kernel::minimum()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_the_sha256_prefix() {
        // sha256("abc") = ba7816bf8f01cfea414140de5dae2223...
        assert_eq!(short_sha256(b"abc"), "ba7816bf8f01");
        assert_eq!(bpf_object_digest().len(), 12);
    }

    #[test]
    fn long_names_every_fact() {
        let text = long();
        assert!(text.starts_with(VERSION));
        for line in [
            "\ncommit: ",
            "\nbpf object: sha256 ",
            "\nminimum kernel: Linux 6.6",
        ] {
            assert!(text.contains(line), "{text}");
        }
    }
}
