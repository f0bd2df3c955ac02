//! What this vethctl is: its version, the commit it was built from and a
//! digest of the eBPF object it carries (`vethctl_build_info`). Two nodes
//! with equal digests run the same programs whatever their versions say.

/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit the binary was built from (`VETHCTL_COMMIT` at build time,
/// else git's short hash, else "unknown").
pub const COMMIT: &str = env!("VETHCTL_COMMIT");

/// A short digest of the embedded eBPF object: FNV-1a 64 over its bytes,
/// stable across builds and machines (unlike std's hasher).
pub fn bpf_object_digest() -> String {
    format!("{:016x}", fnv1a64(crate::dataplane::object()))
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_is_fnv1a_of_the_object() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(bpf_object_digest().len(), 16);
        assert!(!COMMIT.is_empty());
    }
}
