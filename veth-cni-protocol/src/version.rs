//! Protocol versions: which ones we speak, which one a request gets, and the
//! VERSION answer.
//!
//! # Which version a request is answered in
//! The runtime selects the version (spec section 1, "Version considerations":
//! the highest of `cniVersion` and `cniVersions` that it supports) and writes
//! it into the request's `cniVersion` (section 3: "`cniVersion`: the protocol
//! version selected by the runtime"; libcni's `buildOneConfig` injects it).
//! The runtime then parses our result in that version, and refuses a newer
//! one: containerd 1.6 (libcni 1.1.2) fails every pod on a 1.1.0 result
//! ("unsupported CNI result version"), see ../shared/RUNTIMES.md.
//!
//! So [`negotiate`] honours `cniVersions` as "the highest version both we and
//! the configuration support", **capped at `cniVersion`** when that is set:
//! - `cniVersion` we support → exactly that version (whatever `cniVersions`
//!   offers above it: an old runtime that ignores `cniVersions` asked for
//!   `cniVersion`);
//! - `cniVersion` we do not support (a future `1.2.0`) → the highest version
//!   in `cniVersions` we support that is not newer than it (libcni converts an
//!   older result up to the version it asked for);
//! - no `cniVersion` → the highest common version in `cniVersions`;
//! - nothing in common → code 1.

use crate::error::CniError;

/// The name the plugin reports itself by in messages.
pub const PLUGIN_NAME: &str = "veth-cni";

/// A CNI specification version this crate speaks.
///
/// Ordered oldest first, so `a < b` compares versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    /// 0.3.1: rich results, `ips[].version`.
    V0_3_1,
    /// 0.4.0: adds CHECK and `prevResult` on DEL; results as 0.3.1.
    V0_4_0,
    /// 1.0.0: drops `ips[].version`; configurations are lists.
    V1_0_0,
    /// 1.1.0: STATUS, GC, `cniVersions`; interface `mtu`/`socketPath`/`pciID`,
    /// route `mtu`/`advmss`/`priority`/`table`/`scope`.
    V1_1_0,
}

impl CniVersion {
    /// Every version we answer, oldest first (what VERSION reports).
    pub const ALL: [CniVersion; 4] = [
        CniVersion::V0_3_1,
        CniVersion::V0_4_0,
        CniVersion::V1_0_0,
        CniVersion::V1_1_0,
    ];

    /// The newest version we implement.
    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    /// The version every runtime in the field understands (libcni 1.1.x,
    /// in containerd 1.6 and podman 4.3, stops at 1.0.0). Used for the
    /// `cniVersion` of an error written before any version is known.
    pub const FALLBACK: CniVersion = CniVersion::V1_0_0;

    /// The version string, e.g. `"1.0.0"`.
    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    /// The version named exactly `s`, if we speak it.
    pub fn parse(s: &str) -> Option<CniVersion> {
        CniVersion::ALL.into_iter().find(|v| v.as_str() == s)
    }

    fn number(self) -> (u64, u64, u64) {
        match self {
            CniVersion::V0_3_1 => (0, 3, 1),
            CniVersion::V0_4_0 => (0, 4, 0),
            CniVersion::V1_0_0 => (1, 0, 0),
            CniVersion::V1_1_0 => (1, 1, 0),
        }
    }

    /// Results of this version carry `ips[].version` (`"4"`/`"6"`).
    pub fn ips_have_version(self) -> bool {
        self < CniVersion::V1_0_0
    }

    /// The 1.1.0 result fields (interface `mtu`, `socketPath`, `pciID`; route
    /// `mtu`, `advmss`, `priority`, `table`, `scope`) exist in this version.
    pub fn has_1_1_fields(self) -> bool {
        self >= CniVersion::V1_1_0
    }

    /// CHECK exists (0.4.0 and later).
    pub fn has_check(self) -> bool {
        self >= CniVersion::V0_4_0
    }

    /// STATUS and GC exist (1.1.0 and later).
    pub fn has_status_and_gc(self) -> bool {
        self >= CniVersion::V1_1_0
    }
}

impl std::fmt::Display for CniVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A version string as libcni's `ParseVersion` reads it: one to three
/// dot-separated decimal numbers (`"1"`, `"1.1"`, `"1.1.0"`); `None` if it is
/// not one.
pub fn parse_version_number(s: &str) -> Option<(u64, u64, u64)> {
    let mut parts = [0u64; 3];
    for (i, part) in s.split('.').enumerate() {
        if i == 3 || part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        parts[i] = part.parse().ok()?;
    }
    Some((parts[0], parts[1], parts[2]))
}

/// libcni's wording for the details of code 1.
fn incompatible_details(requested: Option<&str>) -> String {
    let all: Vec<&str> = CniVersion::ALL.iter().map(|v| v.as_str()).collect();
    format!(
        "config is {:?}, plugin supports {:?}",
        requested.unwrap_or("0.1.0"),
        all
    )
}

const VERSION_FIX: &str = "speaks 0.3.1, 0.4.0, 1.0.0 and 1.1.0: set \"cniVersion\" to one \
     of them (\"1.0.0\" for containerd 1.6 and podman 4.3)";

/// The version a request with this `cniVersion` and `cniVersions` is answered
/// in (see the module documentation for the rule).
pub fn negotiate(
    cni_version: Option<&str>,
    cni_versions: &[String],
) -> Result<CniVersion, CniError> {
    let requested = cni_version.filter(|s| !s.is_empty());
    let cap = match requested {
        Some(s) => Some(
            parse_version_number(s).ok_or_else(|| CniError::IncompatibleVersion {
                message: format!(
                    "cniVersion {s:?} is not a version number; {PLUGIN_NAME} {VERSION_FIX}"
                ),
                details: incompatible_details(Some(s)),
            })?,
        ),
        None => None,
    };
    let best = requested
        .into_iter()
        .chain(cni_versions.iter().map(String::as_str))
        .filter_map(CniVersion::parse)
        .filter(|v| cap.is_none_or(|cap| v.number() <= cap))
        .max();
    best.ok_or_else(|| {
        let message = match requested {
            None if cni_versions.is_empty() => format!(
                "cniVersion is missing (a configuration without one is 0.1.0); \
                 {PLUGIN_NAME} {VERSION_FIX}"
            ),
            None => format!(
                "none of cniVersions {cni_versions:?} is supported: {PLUGIN_NAME} {VERSION_FIX}"
            ),
            Some(v) if cni_versions.is_empty() => {
                format!("cniVersion {v:?} is not supported: {PLUGIN_NAME} {VERSION_FIX}")
            }
            Some(v) => format!(
                "neither cniVersion {v:?} nor a version up to it in cniVersions \
                 {cni_versions:?} is supported: {PLUGIN_NAME} {VERSION_FIX}"
            ),
        };
        CniError::IncompatibleVersion {
            message,
            details: incompatible_details(requested),
        }
    })
}

/// The VERSION answer: `{"cniVersion": ..., "supportedVersions": [...]}`.
///
/// `cniVersion` echoes the one on stdin (the spec: "the value of `cniVersion`
/// specified on input"; libcni sends `{"cniVersion": "<its version>"}`) when
/// it is a version number, and is [`CniVersion::LATEST`] otherwise — like the
/// reference plugins' skel, VERSION never fails on what is on stdin.
pub fn version_reply(stdin: &[u8]) -> Vec<u8> {
    let echoed = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|s| parse_version_number(s).is_some());
    let reply = serde_json::json!({
        "cniVersion": echoed.as_deref().unwrap_or(CniVersion::LATEST.as_str()),
        "supportedVersions": CniVersion::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>(),
    });
    let mut out = serde_json::to_vec(&reply).unwrap_or_default();
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use CniVersion::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parse_and_order() {
        for v in CniVersion::ALL {
            assert_eq!(CniVersion::parse(v.as_str()), Some(v));
            assert_eq!(v.to_string(), v.as_str());
        }
        for bad in [
            "", "1.0", "1", "0.3.0", "0.2.0", "1.2.0", "v1.0.0", "1.0.0 ",
        ] {
            assert_eq!(CniVersion::parse(bad), None, "{bad:?}");
        }
        assert!(V0_3_1 < V0_4_0 && V0_4_0 < V1_0_0 && V1_0_0 < V1_1_0);
        assert!(V0_3_1.ips_have_version() && V0_4_0.ips_have_version());
        assert!(!V1_0_0.ips_have_version() && !V1_1_0.ips_have_version());
        assert!(!V0_3_1.has_check() && V0_4_0.has_check());
        assert!(!V1_0_0.has_status_and_gc() && V1_1_0.has_status_and_gc());
        assert!(!V1_0_0.has_1_1_fields() && V1_1_0.has_1_1_fields());
    }

    #[test]
    fn version_numbers_as_libcni_reads_them() {
        let table = [
            ("1.1.0", Some((1, 1, 0))),
            ("0.3.1", Some((0, 3, 1))),
            ("1", Some((1, 0, 0))),
            ("1.2", Some((1, 2, 0))),
            ("10.20.30", Some((10, 20, 30))),
            ("", None),
            ("1.0.0.0", None),
            ("1..0", None),
            ("a.b.c", None),
            ("1.0.0-rc1", None),
            ("-1.0.0", None),
            ("99999999999999999999999.0.0", None),
        ];
        for (s, want) in table {
            assert_eq!(parse_version_number(s), want, "{s:?}");
        }
    }

    #[test]
    fn negotiation_table() {
        // (cniVersion, cniVersions, expected)
        let table: &[(Option<&str>, &[&str], Option<CniVersion>)] = &[
            // The four versions alone.
            (Some("0.3.1"), &[], Some(V0_3_1)),
            (Some("0.4.0"), &[], Some(V0_4_0)),
            (Some("1.0.0"), &[], Some(V1_0_0)),
            (Some("1.1.0"), &[], Some(V1_1_0)),
            // install-cni's conflist, read by containerd 1.6 which ignores
            // cniVersions: answer 1.0.0, never newer than asked.
            (Some("1.0.0"), &["1.0.0", "1.1.0"], Some(V1_0_0)),
            // A runtime that negotiated 1.1.0 from the same list.
            (Some("1.1.0"), &["1.0.0", "1.1.0"], Some(V1_1_0)),
            // A future runtime asking 1.2.0: the best we have below it.
            (Some("1.2.0"), &["1.0.0", "1.1.0", "1.2.0"], Some(V1_1_0)),
            (Some("2.0.0"), &["0.4.0"], Some(V0_4_0)),
            // No cniVersion: the highest in common.
            (None, &["0.3.1", "1.0.0", "9.9.9"], Some(V1_0_0)),
            (Some(""), &["0.4.0", "1.1.0"], Some(V1_1_0)),
            // Nothing in common.
            (Some("0.2.0"), &[], None),
            (Some("0.3.0"), &["0.3.1"], None), // 0.3.1 is newer than asked
            (Some("1.2.0"), &[], None),
            (Some("2.0.0"), &["3.0.0"], None),
            (None, &[], None),
            (Some(""), &[], None),
            (None, &["junk", "1.0"], None),
            // Malformed cniVersion.
            (Some("one"), &["1.0.0"], None),
            (Some("1.0.0-rc"), &[], None),
        ];
        for (version, versions, want) in table {
            let got = negotiate(*version, &strings(versions));
            match (want, got) {
                (Some(w), Ok(g)) => assert_eq!(*w, g, "{version:?} {versions:?}"),
                (None, Err(e)) => {
                    assert_eq!(e.code(), 1, "{version:?} {versions:?}");
                    assert!(e.to_string().contains("\"1.0.0\""), "{e}");
                    assert!(
                        e.to_string().contains("0.3.1, 0.4.0, 1.0.0 and 1.1.0"),
                        "{e}"
                    );
                    assert!(
                        e.details()
                            .ends_with(r#"plugin supports ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]"#),
                        "{}",
                        e.details()
                    );
                }
                (w, g) => panic!("{version:?} {versions:?}: want {w:?}, got {g:?}"),
            }
        }
    }

    #[test]
    fn negotiation_messages_name_what_was_asked() {
        let e = negotiate(None, &[]).unwrap_err().to_string();
        assert!(e.starts_with("cniVersion is missing"), "{e}");
        let e = negotiate(Some("0.2.0"), &[]).unwrap_err().to_string();
        assert!(
            e.starts_with("cniVersion \"0.2.0\" is not supported: veth-cni speaks"),
            "{e}"
        );
        let e = negotiate(Some("x"), &[]).unwrap_err().to_string();
        assert!(e.contains("not a version number"), "{e}");
        let e = negotiate(Some("2.0.0"), &strings(&["3.0.0"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"3.0.0\""), "{e}");
    }

    #[test]
    fn version_reply_table() {
        let table: &[(&[u8], &str)] = &[
            // What libcni 1.1.x (containerd 1.6, podman 4.3) sends.
            (br#"{"cniVersion":"1.0.0"}"#, "1.0.0"),
            (br#"{"cniVersion":"1.1.0"}"#, "1.1.0"),
            (br#"{"cniVersion":"0.3.1","name":"x"}"#, "0.3.1"),
            // The spec echoes even a version we do not speak.
            (br#"{"cniVersion":"0.2.0"}"#, "0.2.0"),
            // Nothing usable: our latest.
            (b"", "1.1.0"),
            (b"{", "1.1.0"),
            (br#"{"cniVersion": 1}"#, "1.1.0"),
            (br#"{"cniVersion": "evil\nline"}"#, "1.1.0"),
            (b"[]", "1.1.0"),
        ];
        for (stdin, want) in table {
            let out: serde_json::Value = serde_json::from_slice(&version_reply(stdin)).unwrap();
            assert_eq!(
                out,
                serde_json::json!({
                    "cniVersion": want,
                    "supportedVersions": ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]
                }),
                "{}",
                String::from_utf8_lossy(stdin)
            );
        }
    }
}
