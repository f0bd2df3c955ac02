//! The `CNI_*` environment variables: which a verb needs, and what a valid
//! value is.
//!
//! Read from a provided list of variables, never from the process, so every
//! rule is a table test. As in the reference plugins' skel, a variable set to
//! the empty string counts as unset (containerd sends `CNI_NETNS=""` on its
//! second DEL; libcni sets every variable, empty, for GC and STATUS).
//!
//! | variable          | ADD, CHECK | DEL      | GC       | STATUS   | VERSION |
//! |-------------------|------------|----------|----------|----------|---------|
//! | `CNI_COMMAND`     | required   | required | required | required | required |
//! | `CNI_CONTAINERID` | required   | required | ignored  | ignored  | ignored |
//! | `CNI_NETNS`       | required   | optional | ignored  | ignored  | ignored |
//! | `CNI_IFNAME`      | required   | required | ignored  | ignored  | ignored |
//! | `CNI_ARGS`        | optional   | optional | ignored  | ignored  | ignored |
//! | `CNI_PATH`        | optional   | optional | required | optional | ignored |
//!
//! That is the spec's table (section 2). The reference skel also requires
//! `CNI_PATH` for ADD, CHECK, DEL and STATUS; we follow the spec, and the
//! plugin asks for it ([`Environment::require_path`]) only when it delegates.
//!
//! DEL is best-effort (the spec: "plugins should always complete a DEL action
//! without error to the fullest extent possible"), so a DEL whose `CNI_NETNS`
//! or `CNI_ARGS` is unusable goes ahead without them and says so in
//! [`Environment::warnings`]. The container id and interface name identify
//! what to remove, so they are checked for every verb that uses them: they
//! end up in names and paths, and path tricks are refused.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};

use crate::error::CniError;

/// `CNI_COMMAND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    /// Every verb of spec 1.1.0.
    pub const ALL: [Command; 6] = [
        Command::Add,
        Command::Del,
        Command::Check,
        Command::Status,
        Command::Gc,
        Command::Version,
    ];

    /// The verb as `CNI_COMMAND` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }

    /// The verb spelled exactly `s` (upper case, as the spec and skel).
    pub fn parse(s: &str) -> Option<Command> {
        Command::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// ADD, DEL and CHECK work on one attachment (container id + ifname).
    pub fn has_attachment(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }

    /// DEL and GC must get as far as they can rather than fail on a detail.
    pub fn is_best_effort(self) -> bool {
        matches!(self, Command::Del | Command::Gc)
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `CNI_CONTAINERID`: non-empty, an ASCII letter or digit, then letters,
/// digits, `_`, `.` or `-` (the spec's rule, libcni's `cniValidNameChars`),
/// at most [`CONTAINER_ID_MAX`] bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerId(String);

/// What the spec allows in a container id or a network name.
pub(crate) fn is_cni_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The longest container id taken. The spec sets no limit, but the id ends
/// up in file names (the plugin's record of an attachment is
/// `<ifname>@<container id>.json`, written as `.<that>.tmp` first), which
/// the kernel limits to 255 bytes: a longer id failed every ADD halfway
/// and every DEL. Runtimes use 64 (containerd, CRI-O, podman).
pub const CONTAINER_ID_MAX: usize = 200;

impl ContainerId {
    /// Validate a container id.
    pub fn new(value: &str) -> Result<Self, CniError> {
        if value.len() > CONTAINER_ID_MAX {
            return Err(CniError::invalid_env(
                "CNI_CONTAINERID",
                format!("{}...", &value[..value.floor_char_boundary(32)]),
                format!(
                    "{} bytes long; a container id has at most {CONTAINER_ID_MAX} (runtimes use 64)",
                    value.len()
                ),
            ));
        }
        if is_cni_name(value) {
            Ok(ContainerId(value.to_string()))
        } else {
            Err(CniError::invalid_env(
                "CNI_CONTAINERID",
                value,
                "not a valid container id (an ASCII letter or digit, then letters, digits, \
                 '_', '.' or '-')",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ContainerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `CNI_IFNAME`: a name the kernel accepts for a link (`dev_valid_name`):
/// 1-15 bytes, not `.` or `..`, no `/`, `:` or whitespace. We also refuse
/// control characters, which the kernel allows but no runtime sends and which
/// would garble `ip link` and our logs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IfName(String);

/// The longest interface name the kernel takes (`IFNAMSIZ` - 1).
pub const IFNAME_MAX: usize = 15;

/// Whether the kernel (and libcni's `ValidateInterfaceName`) accepts `s` as a
/// link name, control characters aside (see [`IfName`]).
pub fn is_valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= IFNAME_MAX
        && s != "."
        && s != ".."
        // The kernel's isspace() also takes byte 0xA0 (Latin-1 no-break space).
        && !s.bytes().any(|b| b == 0xA0)
        && !s
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}

impl IfName {
    /// Validate an interface name.
    pub fn new(value: &str) -> Result<Self, CniError> {
        if is_valid_ifname(value) {
            Ok(IfName(value.to_string()))
        } else {
            Err(CniError::invalid_env(
                "CNI_IFNAME",
                value,
                "not a valid interface name (1-15 bytes, not '.' or '..', no '/', ':', \
                 whitespace or control characters)",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for IfName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The longest path the kernel resolves (`PATH_MAX`).
const PATH_MAX: usize = 4096;

/// `CNI_NETNS`: an absolute path without `..` (`/var/run/netns/cni-…`,
/// `/run/netns/netns-…`, `/proc/<pid>/ns/net`). Whether it really is a
/// network namespace is for the plugin to find out when it opens it.
pub fn validate_netns(value: &str) -> Result<PathBuf, CniError> {
    let path = Path::new(value);
    let reason = if !path.is_absolute() {
        "not an absolute path; the runtime passes the path of the pod's network namespace, \
         like /var/run/netns/cni-<uuid>"
    } else if path.components().any(|c| c == Component::ParentDir) {
        "must not contain '..'"
    } else if value.len() >= PATH_MAX {
        "longer than PATH_MAX"
    } else {
        return Ok(path.to_path_buf());
    };
    Err(CniError::invalid_env("CNI_NETNS", value, reason))
}

/// `CNI_ARGS`, parsed: `K=V;K=V` in any order, as the reference plugins'
/// `types.LoadArgs` reads it.
///
/// - Known keys: `K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `K8S_POD_UID`,
///   `K8S_POD_INFRA_CONTAINER_ID` (kept, an empty value is as unset) and
///   `IgnoreUnknown` (`1`/`true`/`0`/`false`, any case).
/// - Any other key is an error unless `IgnoreUnknown` is true, wherever it
///   stands in the list; ignored ones are kept in [`CniArgs::unknown`].
/// - Every pair has exactly one `=` (a key with an empty value is fine). Empty
///   pairs (`A=1;;B=2`, a trailing `;`) are skipped, where libcni refuses them.
/// - A key given twice: the last one counts (as libcni).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub pod_uid: Option<String>,
    pub pod_infra_container_id: Option<String>,
    pub ignore_unknown: bool,
    /// Keys we do not know, kept when `IgnoreUnknown` allowed them.
    pub unknown: BTreeMap<String, String>,
}

impl CniArgs {
    /// Parse the value of `CNI_ARGS`.
    pub fn parse(value: &str) -> Result<Self, CniError> {
        let bad = |reason: String| CniError::invalid_env("CNI_ARGS", value, reason);
        let mut args = CniArgs::default();
        for pair in value.split(';').filter(|p| !p.is_empty()) {
            let mut kv = pair.split('=');
            let (Some(key), Some(val), None) = (kv.next(), kv.next(), kv.next()) else {
                return Err(bad(format!(
                    "pair {pair:?} is not KEY=VALUE (pairs are separated by ';', one '=' each)"
                )));
            };
            if key.is_empty() {
                return Err(bad(format!("pair {pair:?} has an empty key")));
            }
            let some = |v: &str| (!v.is_empty()).then(|| v.to_string());
            match key {
                "K8S_POD_NAMESPACE" => args.pod_namespace = some(val),
                "K8S_POD_NAME" => args.pod_name = some(val),
                "K8S_POD_UID" => args.pod_uid = some(val),
                "K8S_POD_INFRA_CONTAINER_ID" => args.pod_infra_container_id = some(val),
                "IgnoreUnknown" => {
                    args.ignore_unknown = match val.to_ascii_lowercase().as_str() {
                        "1" | "true" => true,
                        "0" | "false" => false,
                        _ => {
                            return Err(bad(format!(
                                "IgnoreUnknown={val:?} is not a boolean (use 1, true, 0 or false)"
                            )))
                        }
                    }
                }
                _ => {
                    args.unknown.insert(key.to_string(), val.to_string());
                }
            }
        }
        if !args.ignore_unknown && !args.unknown.is_empty() {
            let keys: Vec<&str> = args.unknown.keys().map(String::as_str).collect();
            return Err(bad(format!(
                "unknown key(s) {keys:?}; {} knows K8S_POD_NAMESPACE, K8S_POD_NAME, \
                 K8S_POD_UID, K8S_POD_INFRA_CONTAINER_ID and IgnoreUnknown (add \
                 IgnoreUnknown=1 to pass others)",
                crate::version::PLUGIN_NAME
            )));
        }
        Ok(args)
    }

    /// The Kubernetes names, if given, as Kubernetes allows them: the
    /// namespace a DNS-1123 label (at most 63 of `[a-z0-9-]`, alphanumeric
    /// at both ends), the pod name a DNS-1123 subdomain (at most 253, such
    /// labels joined by dots). They are shown to people (status tables,
    /// metrics labels), so nothing else gets through: no escape sequences,
    /// no newlines.
    pub fn validate_k8s_names(&self) -> Result<(), CniError> {
        let checks = [
            ("K8S_POD_NAMESPACE", &self.pod_namespace, 63, false),
            ("K8S_POD_NAME", &self.pod_name, 253, true),
        ];
        for (key, value, max, dots) in checks {
            let Some(value) = value else { continue };
            if let Err(reason) = dns1123(value, max, dots) {
                return Err(CniError::invalid_env(
                    "CNI_ARGS",
                    format!("{key}={value}"),
                    format!(
                        "{key} {reason}; Kubernetes names are {} (lower-case letters, digits \
                         and '-'{}, a letter or digit at each end, at most {max} characters)",
                        if dots {
                            "DNS-1123 subdomains"
                        } else {
                            "DNS-1123 labels"
                        },
                        if dots { ", labels joined by '.'" } else { "" },
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `namespace/name` of the Kubernetes pod, when both are known.
    pub fn k8s_pod(&self) -> Option<String> {
        Some(format!(
            "{}/{}",
            self.pod_namespace.as_deref()?,
            self.pod_name.as_deref()?
        ))
    }
}

/// Why `name` is not a DNS-1123 label (`dots`: subdomain) of at most
/// `max` characters.
fn dns1123(name: &str, max: usize, dots: bool) -> Result<(), String> {
    if name.len() > max {
        return Err(format!("is {} characters long", name.len()));
    }
    let labels: Vec<&str> = if dots {
        name.split('.').collect()
    } else {
        vec![name]
    };
    for label in labels {
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(format!("holds {c:?}"));
        }
        let alnum = |c: Option<char>| c.is_some_and(|c| c != '-');
        if !alnum(label.chars().next()) || !alnum(label.chars().last()) {
            return Err(format!(
                "has {}",
                if label.is_empty() {
                    "an empty label".to_string()
                } else {
                    format!("{label:?}, which does not start and end with a letter or digit")
                }
            ));
        }
    }
    Ok(())
}

/// The attachment ADD, DEL and CHECK work on: the spec's
/// `(CNI_CONTAINERID, CNI_IFNAME)` plus the namespace and `CNI_ARGS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub container_id: ContainerId,
    pub ifname: IfName,
    /// Always set for ADD and CHECK; for DEL it may be gone (containerd's
    /// later DELs send `CNI_NETNS=""`).
    pub netns: Option<PathBuf>,
    pub args: CniArgs,
}

/// The validated `CNI_*` variables of one invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Environment {
    pub command: Command,
    /// `Some` exactly for ADD, DEL and CHECK.
    pub attachment: Option<Attachment>,
    /// `CNI_PATH`, split on `:`, empty entries dropped.
    pub path: Vec<PathBuf>,
    /// What a best-effort DEL went ahead without, for the plugin's log.
    pub warnings: Vec<String>,
}

/// The variables this module reads.
const VARS: [&str; 6] = [
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_ARGS",
    "CNI_PATH",
];

/// The `CNI_*` variables that are set and not empty (empty is unset, as
/// in the reference skel).
type Found = BTreeMap<&'static str, String>;

/// The `CNI_*` variables of `vars`; one that is not UTF-8 is code 4.
fn cni_vars<I, K, V>(vars: I) -> Result<Found, CniError>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let mut found = Found::new();
    for (key, value) in vars {
        let Some(name) = VARS.iter().find(|n| OsStr::new(n) == key.as_ref()) else {
            continue;
        };
        let value = value.as_ref();
        let Some(value) = value.to_str() else {
            return Err(CniError::invalid_env(
                name,
                value.to_string_lossy(),
                "not valid UTF-8",
            ));
        };
        found.insert(name, value.to_string());
    }
    found.retain(|_, v| !v.is_empty());
    Ok(found)
}

/// `CNI_COMMAND`, and that the variables `command` needs are set.
fn command_of(found: &Found) -> Result<Command, CniError> {
    let Some(command) = found.get("CNI_COMMAND") else {
        return Err(CniError::invalid_env(
            "CNI_COMMAND",
            "",
            "not set; the runtime sets ADD, DEL, CHECK, STATUS, GC or VERSION",
        ));
    };
    let command = Command::parse(command).ok_or_else(|| {
        CniError::invalid_env(
            "CNI_COMMAND",
            command,
            "unknown command; expected ADD, DEL, CHECK, STATUS, GC or VERSION",
        )
    })?;
    let required: &[&'static str] = match command {
        Command::Add | Command::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
        Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME"],
        Command::Gc => &["CNI_PATH"],
        Command::Status | Command::Version => &[],
    };
    let missing: Vec<&'static str> = required
        .iter()
        .copied()
        .filter(|v| !found.contains_key(v))
        .collect();
    if !missing.is_empty() {
        return Err(CniError::MissingEnv {
            command: command.as_str(),
            vars: missing,
        });
    }
    Ok(command)
}

/// The attachment of ADD, DEL or CHECK. Checked for DEL too (these name
/// what gets removed), except what DEL goes ahead without, noted in
/// `warnings`: a namespace or `CNI_ARGS` that cannot be used.
fn attachment_of(
    found: &Found,
    command: Command,
    warnings: &mut Vec<String>,
) -> Result<Attachment, CniError> {
    let get = |name: &str| found.get(name).map(String::as_str);
    let container_id = ContainerId::new(get("CNI_CONTAINERID").unwrap_or_default())?;
    let ifname = IfName::new(get("CNI_IFNAME").unwrap_or_default())?;
    let netns = match get("CNI_NETNS").map(validate_netns) {
        None => None,
        Some(Ok(path)) => Some(path),
        Some(Err(e)) if command == Command::Del => {
            warnings.push(format!("{e}; DEL goes ahead without the namespace"));
            None
        }
        Some(Err(e)) => return Err(e),
    };
    let args = match get("CNI_ARGS").map(CniArgs::parse) {
        None => CniArgs::default(),
        Some(Ok(args)) => args,
        Some(Err(e)) if command == Command::Del => {
            warnings.push(format!("{e}; DEL goes ahead without them"));
            CniArgs::default()
        }
        Some(Err(e)) => return Err(e),
    };
    Ok(Attachment {
        container_id,
        ifname,
        netns,
        args,
    })
}

impl Environment {
    /// Read and validate the `CNI_*` variables from `vars` (for example
    /// `std::env::vars_os()`); other variables are ignored. A `CNI_*` value
    /// that is not UTF-8 is an error (code 4), never a panic.
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self, CniError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let found = cni_vars(vars)?;
        let command = command_of(&found)?;
        let mut warnings = Vec::new();
        let attachment = if command.has_attachment() {
            Some(attachment_of(&found, command, &mut warnings)?)
        } else {
            None
        };
        let path = match command {
            Command::Version => Vec::new(),
            _ => found
                .get("CNI_PATH")
                .map(String::as_str)
                .unwrap_or_default()
                .split(':')
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect(),
        };
        Ok(Environment {
            command,
            attachment,
            path,
            warnings,
        })
    }

    /// `CNI_PATH`, for a plugin about to run a delegated plugin: code 4 when
    /// it is empty.
    pub fn require_path(&self) -> Result<&[PathBuf], CniError> {
        if self.path.is_empty() {
            return Err(CniError::MissingEnv {
                command: self.command.as_str(),
                vars: vec!["CNI_PATH"],
            });
        }
        Ok(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const NETNS: &str = "/var/run/netns/cni-1c5e1f4a-9f2e-4b7c-8e1d-3f0c2a9b8d7e";

    fn env(pairs: &[(&str, &str)]) -> Result<Environment, CniError> {
        Environment::from_vars(pairs.iter().map(|(k, v)| (*k, *v)))
    }

    fn full(command: &str) -> Vec<(&str, &str)> {
        vec![
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", ID),
            ("CNI_NETNS", NETNS),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ]
    }

    fn without<'a>(mut vars: Vec<(&'a str, &'a str)>, name: &str) -> Vec<(&'a str, &'a str)> {
        vars.retain(|(k, _)| *k != name);
        vars
    }

    fn with<'a>(
        mut vars: Vec<(&'a str, &'a str)>,
        name: &'a str,
        value: &'a str,
    ) -> Vec<(&'a str, &'a str)> {
        vars.retain(|(k, _)| *k != name);
        vars.push((name, value));
        vars
    }

    #[test]
    fn commands_round_trip() {
        for c in Command::ALL {
            assert_eq!(Command::parse(c.as_str()), Some(c));
            assert_eq!(c.to_string(), c.as_str());
        }
        for bad in ["", "add", "Add", "INIT", "FINALIZE", " ADD", "ADD\n"] {
            assert_eq!(Command::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn required_variables_per_verb() {
        // (verb, variable removed, error expected)
        let table: &[(&str, &str, bool)] = &[
            ("ADD", "CNI_CONTAINERID", true),
            ("ADD", "CNI_NETNS", true),
            ("ADD", "CNI_IFNAME", true),
            ("ADD", "CNI_PATH", false),
            ("CHECK", "CNI_CONTAINERID", true),
            ("CHECK", "CNI_NETNS", true),
            ("CHECK", "CNI_IFNAME", true),
            ("CHECK", "CNI_PATH", false),
            ("DEL", "CNI_CONTAINERID", true),
            ("DEL", "CNI_NETNS", false),
            ("DEL", "CNI_IFNAME", true),
            ("DEL", "CNI_PATH", false),
            ("GC", "CNI_PATH", true),
            ("GC", "CNI_CONTAINERID", false),
            ("GC", "CNI_NETNS", false),
            ("GC", "CNI_IFNAME", false),
            ("STATUS", "CNI_PATH", false),
            ("STATUS", "CNI_CONTAINERID", false),
            ("STATUS", "CNI_IFNAME", false),
            ("VERSION", "CNI_PATH", false),
            ("VERSION", "CNI_CONTAINERID", false),
        ];
        for &(verb, var, fails) in table {
            for value in [None, Some("")] {
                let vars = match value {
                    None => without(full(verb), var),
                    Some(v) => with(full(verb), var, v),
                };
                let got = env(&vars);
                if fails {
                    let e = got.expect_err(&format!("{verb} without {var}"));
                    assert_eq!(e.code(), 4);
                    assert_eq!(
                        e,
                        CniError::MissingEnv {
                            command: Command::parse(verb).unwrap().as_str(),
                            vars: vec![VARS.iter().copied().find(|v| *v == var).unwrap()],
                        }
                    );
                } else {
                    assert!(got.is_ok(), "{verb} without {var}: {got:?}");
                }
            }
        }
    }

    #[test]
    fn every_missing_variable_is_named_at_once() {
        let e = env(&[("CNI_COMMAND", "ADD")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME are required for ADD but not set (or empty)"
        );
    }

    #[test]
    fn verbs_without_an_attachment_need_nothing_else() {
        for verb in ["VERSION", "STATUS"] {
            let e = env(&[("CNI_COMMAND", verb)]).unwrap();
            assert_eq!(e.attachment, None);
            assert!(e.path.is_empty());
        }
        // libcni sets every variable, empty, for GC and STATUS; garbage in
        // the ones a verb ignores is not looked at.
        let e = env(&[
            ("CNI_COMMAND", "GC"),
            ("CNI_CONTAINERID", ""),
            ("CNI_NETNS", ""),
            ("CNI_IFNAME", "bad/name"),
            ("CNI_ARGS", "garbage"),
            ("CNI_PATH", "/opt/cni/bin::/usr/lib/cni"),
        ])
        .unwrap();
        assert_eq!(e.attachment, None);
        assert_eq!(
            e.path,
            vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
        );
        assert!(e.require_path().is_ok());
        let status = env(&[("CNI_COMMAND", "STATUS")]).unwrap();
        assert_eq!(status.require_path().unwrap_err().code(), 4);
    }

    #[test]
    fn command_errors() {
        let e = env(&[]).unwrap_err();
        assert_eq!(e.code(), 4);
        assert!(
            e.to_string().starts_with("CNI_COMMAND \"\": not set"),
            "{e}"
        );
        let e = env(&[("CNI_COMMAND", "INIT")]).unwrap_err();
        assert_eq!(e.to_string(), "CNI_COMMAND \"INIT\": unknown command; expected ADD, DEL, CHECK, STATUS, GC or VERSION");
    }

    #[test]
    fn containerd_add_and_both_dels() {
        let add = env(&with(
            full("ADD"),
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1",
        ))
        .unwrap();
        let a = add.attachment.unwrap();
        assert_eq!(a.container_id.as_str(), ID);
        assert_eq!(a.ifname.as_str(), "eth0");
        assert_eq!(a.netns.as_deref(), Some(Path::new(NETNS)));
        assert_eq!(a.args.k8s_pod().as_deref(), Some("default/web-0"));
        assert_eq!(add.path, vec![PathBuf::from("/opt/cni/bin")]);

        // First Stop: everything. Later ones: CNI_NETNS="".
        let del = env(&with(full("DEL"), "CNI_NETNS", "")).unwrap();
        assert_eq!(del.attachment.unwrap().netns, None);
        assert!(del.warnings.is_empty());
    }

    #[test]
    fn container_ids() {
        let (longest, too_long) = (
            "a".repeat(CONTAINER_ID_MAX),
            "a".repeat(CONTAINER_ID_MAX + 1),
        );
        let table = [
            (ID, true),
            ("a", true),
            ("Z9", true),
            ("web-0_1.2", true),
            ("0", true),
            ("", false), // (as unset: MissingEnv, see above)
            ("-a", false),
            ("_a", false),
            (".a", false),
            ("..", false),
            ("../etc", false),
            ("a/b", false),
            ("a b", false),
            ("a\tb", false),
            ("a:b", false),
            ("a;b", false),
            ("é", false),
            ("a\u{0}b", false),
            ("a\nb", false),
            (longest.as_str(), true),
            (too_long.as_str(), false),
        ];
        for (id, ok) in table {
            assert_eq!(ContainerId::new(id).is_ok(), ok, "{id:?}");
            if !id.is_empty() {
                let got = env(&with(full("ADD"), "CNI_CONTAINERID", id));
                assert_eq!(got.is_ok(), ok, "{id:?}");
                if !ok {
                    let e = got.unwrap_err();
                    assert_eq!(e.code(), 4);
                    assert!(e.to_string().starts_with("CNI_CONTAINERID "), "{e}");
                }
                // DEL checks it too.
                assert_eq!(
                    env(&with(full("DEL"), "CNI_CONTAINERID", id)).is_ok(),
                    ok,
                    "{id:?}"
                );
            }
        }
    }

    #[test]
    fn interface_names() {
        let table = [
            ("eth0", true),
            ("e", true),
            ("net1", true),
            ("abcdefghijklmno", true), // 15 bytes
            ("a.b-c_d@e", true),
            ("..a", true),
            ("é", true),                 // the kernel takes UTF-8 names
            ("abcdefghijklmnop", false), // 16 bytes
            ("ééééééééé", false),        // 18 bytes
            (".", false),
            ("..", false),
            ("eth0/../x", false),
            ("/", false),
            ("a:1", false),
            ("a b", false),
            (" eth0", false),
            ("eth0\n", false),
            ("a\tb", false),
            ("a\u{a0}b", false),   // no-break space
            ("a\u{2003}b", false), // em space
            ("\u{e0}", false),     // 'à' is C3 A0: the kernel sees 0xA0 as a space
            ("a\u{1}b", false),
            ("a\u{7f}", false),
        ];
        for (name, ok) in table {
            assert_eq!(is_valid_ifname(name), ok, "{name:?}");
            let got = env(&with(full("ADD"), "CNI_IFNAME", name));
            assert_eq!(got.is_ok(), ok, "{name:?}");
            if !ok {
                let e = got.unwrap_err();
                assert_eq!(e.code(), 4);
                assert!(e
                    .to_string()
                    .starts_with(&format!("CNI_IFNAME {name:?}: not a valid interface name")));
            }
            assert_eq!(
                env(&with(full("DEL"), "CNI_IFNAME", name)).is_ok(),
                ok,
                "DEL {name:?}"
            );
            assert_eq!(
                env(&with(full("CHECK"), "CNI_IFNAME", name)).is_ok(),
                ok,
                "CHECK {name:?}"
            );
        }
        assert!(!is_valid_ifname(""));
    }

    #[test]
    fn namespaces() {
        let long = format!("/{}", "a".repeat(PATH_MAX));
        let table = [
            (NETNS, true),
            ("/run/netns/netns-3e5c", true),
            ("/proc/1234/ns/net", true),
            ("/var/run/netns/./x", true),
            ("var/run/netns/x", false),
            ("./x", false),
            ("x", false),
            ("/var/run/netns/../../etc/passwd", false),
            ("/..", false),
            (long.as_str(), false),
        ];
        for (netns, ok) in table {
            let got = env(&with(full("ADD"), "CNI_NETNS", netns));
            assert_eq!(got.is_ok(), ok, "{netns:?}");
            if !ok {
                let e = got.unwrap_err();
                assert_eq!(e.code(), 4);
                assert!(e.to_string().starts_with("CNI_NETNS "), "{e}");
                assert!(env(&with(full("CHECK"), "CNI_NETNS", netns)).is_err());
                // A DEL goes ahead without it.
                let del = env(&with(full("DEL"), "CNI_NETNS", netns)).unwrap();
                assert_eq!(del.attachment.unwrap().netns, None);
                assert_eq!(del.warnings.len(), 1);
                assert!(
                    del.warnings[0].contains("DEL goes ahead"),
                    "{:?}",
                    del.warnings
                );
            }
        }
    }

    #[test]
    fn cni_args_table() {
        let ok = |ns: Option<&str>,
                  name: Option<&str>,
                  uid: Option<&str>,
                  infra: Option<&str>,
                  ignore: bool,
                  unknown: &[(&str, &str)]| CniArgs {
            pod_namespace: ns.map(str::to_string),
            pod_name: name.map(str::to_string),
            pod_uid: uid.map(str::to_string),
            pod_infra_container_id: infra.map(str::to_string),
            ignore_unknown: ignore,
            unknown: unknown
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let all = ok(
            Some("default"),
            Some("web-0"),
            Some("u-1"),
            Some("abc"),
            true,
            &[],
        );
        let table: Vec<(&str, Result<CniArgs, &str>)> = vec![
            ("", Ok(CniArgs::default())),
            // containerd's keys in several orders: the same answer.
            ("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1", Ok(all.clone())),
            ("K8S_POD_UID=u-1;K8S_POD_NAME=web-0;IgnoreUnknown=1;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_NAMESPACE=default", Ok(all.clone())),
            ("K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;IgnoreUnknown=1", Ok(all.clone())),
            // podman.
            ("IgnoreUnknown=1;K8S_POD_NAME=box", Ok(ok(None, Some("box"), None, None, true, &[]))),
            // No IgnoreUnknown needed for known keys.
            ("K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=dns", Ok(ok(Some("kube-system"), Some("dns"), None, None, false, &[]))),
            // Unknown keys: allowed by IgnoreUnknown wherever it stands.
            ("IP=10.0.0.9;IgnoreUnknown=true", Ok(ok(None, None, None, None, true, &[("IP", "10.0.0.9")]))),
            ("IgnoreUnknown=TRUE;FOO=bar", Ok(ok(None, None, None, None, true, &[("FOO", "bar")]))),
            ("IgnoreUnknown=True;FOO=", Ok(ok(None, None, None, None, true, &[("FOO", "")]))),
            ("FOO=bar", Err("unknown key(s) [\"FOO\"]")),
            ("FOO=bar;IgnoreUnknown=0", Err("unknown key(s)")),
            ("FOO=bar;IgnoreUnknown=false", Err("unknown key(s)")),
            ("k8s_pod_name=x", Err("unknown key(s) [\"k8s_pod_name\"]")), // keys are case-sensitive
            ("IgnoreUnknown=yes", Err("IgnoreUnknown=\"yes\" is not a boolean")),
            ("IgnoreUnknown=", Err("is not a boolean")),
            // Pairs.
            ("K8S_POD_NAME", Err("pair \"K8S_POD_NAME\" is not KEY=VALUE")),
            ("K8S_POD_NAME=a=b", Err("is not KEY=VALUE")),
            ("=x", Err("empty key")),
            ("K8S_POD_NAME=;K8S_POD_NAMESPACE=ns", Ok(ok(Some("ns"), None, None, None, false, &[]))),
            ("K8S_POD_NAME=a;;K8S_POD_NAME=b;", Ok(ok(None, Some("b"), None, None, false, &[]))),
            (";", Ok(CniArgs::default())),
        ];
        for (input, want) in table {
            let got = CniArgs::parse(input);
            match want {
                Ok(want) => assert_eq!(got.as_ref(), Ok(&want), "{input:?}"),
                Err(fragment) => {
                    let e = got.expect_err(input);
                    assert_eq!(e.code(), 4);
                    let msg = e.to_string();
                    assert!(msg.starts_with(&format!("CNI_ARGS {input:?}: ")), "{msg}");
                    assert!(msg.contains(fragment), "{input:?}: {msg}");
                }
            }
        }
        assert_eq!(all.k8s_pod().as_deref(), Some("default/web-0"));
        assert_eq!(ok(None, Some("x"), None, None, false, &[]).k8s_pod(), None);
    }

    #[test]
    fn kubernetes_names_follow_kubernetes_rules() {
        let args = |ns: &str, name: &str| CniArgs {
            pod_namespace: Some(ns.to_string()),
            pod_name: Some(name.to_string()),
            ..CniArgs::default()
        };
        let long_label = "a".repeat(63);
        let long_name = [long_label.as_str(); 4].join(".");
        assert_eq!(long_name.len(), 255);
        for (ns, name) in [
            ("default", "web-0"),
            ("kube-system", "coredns-5d78c9869d-abcde"),
            (long_label.as_str(), &long_name[..253]),
            ("a", "a.b.c"),
        ] {
            assert_eq!(args(ns, name).validate_k8s_names(), Ok(()), "{ns}/{name}");
        }
        for (ns, name, fragment) in [
            ("default", "web\u{1b}[31m", "K8S_POD_NAME holds '\\u{1b}'"),
            ("default", "web\nroot", "K8S_POD_NAME holds '\\n'"),
            ("Default", "web", "K8S_POD_NAMESPACE holds 'D'"),
            ("a.b", "web", "K8S_POD_NAMESPACE holds '.'"),
            (
                &"a".repeat(64),
                "web",
                "K8S_POD_NAMESPACE is 64 characters long",
            ),
            ("default", &long_name, "K8S_POD_NAME is 255 characters long"),
            ("default", "-web", "does not start and end"),
            ("default", "web.", "an empty label"),
            ("default", "a..b", "an empty label"),
        ] {
            let e = args(ns, name).validate_k8s_names().unwrap_err();
            assert_eq!(e.code(), 4, "{e}");
            let msg = e.to_string();
            assert!(msg.starts_with("CNI_ARGS "), "{msg}");
            assert!(msg.contains(fragment), "{ns}/{name}: {msg}");
            assert!(
                !msg.contains('\u{1b}') && !msg.contains('\n'),
                "escaped: {msg}"
            );
        }
    }

    #[test]
    fn bad_cni_args_fail_add_and_check_but_not_del() {
        for verb in ["ADD", "CHECK"] {
            let e = env(&with(full(verb), "CNI_ARGS", "FOO=bar")).unwrap_err();
            assert_eq!(e.code(), 4);
        }
        let del = env(&with(full("DEL"), "CNI_ARGS", "FOO=bar")).unwrap();
        assert_eq!(del.attachment.unwrap().args, CniArgs::default());
        assert_eq!(del.warnings.len(), 1);
    }

    #[test]
    fn non_utf8_is_an_error_not_a_panic() {
        use std::ffi::OsString;
        use std::os::unix::ffi::OsStringExt;
        let bad = OsString::from_vec(vec![b'e', 0xff, b'0']);
        let vars: Vec<(OsString, OsString)> = vec![
            ("CNI_COMMAND".into(), "ADD".into()),
            ("CNI_CONTAINERID".into(), ID.into()),
            ("CNI_NETNS".into(), NETNS.into()),
            ("CNI_IFNAME".into(), bad.clone()),
            // Not ours: never looked at.
            ("HOME".into(), bad),
        ];
        let e = Environment::from_vars(vars).unwrap_err();
        assert_eq!(e.code(), 4);
        assert!(e.to_string().starts_with("CNI_IFNAME "), "{e}");
        assert!(e.to_string().contains("not valid UTF-8"), "{e}");
    }
}
