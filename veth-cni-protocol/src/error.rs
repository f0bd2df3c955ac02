//! The spec's error result and its codes, as one typed error.
//!
//! Every failure the plugin reports is a [`CniError`]. Its [`code`](CniError::code)
//! is the spec's well-known code (section 5, "Error"), its `Display` is the
//! one-line message that goes into `msg` — it names the field or variable and
//! says what would fix it — and [`details`](CniError::details) carries the
//! longer context (the decoder's position, the versions on offer, a delegated
//! plugin's own details). libcni shows both to the user as `msg; details`.

use serde::{Deserialize, Serialize};

/// Spec code 1: incompatible CNI version.
pub const CODE_INCOMPATIBLE_VERSION: u32 = 1;
/// Spec code 2: unsupported field in the network configuration.
pub const CODE_UNSUPPORTED_FIELD: u32 = 2;
/// Spec code 3: container unknown or does not exist (the runtime need not DEL).
pub const CODE_UNKNOWN_CONTAINER: u32 = 3;
/// Spec code 4: invalid or missing environment variables.
pub const CODE_INVALID_ENVIRONMENT: u32 = 4;
/// Spec code 5: I/O failure.
pub const CODE_IO_FAILURE: u32 = 5;
/// Spec code 6: failed to decode content.
pub const CODE_DECODING_FAILURE: u32 = 6;
/// Spec code 7: invalid network configuration.
pub const CODE_INVALID_CONFIG: u32 = 7;
/// Spec code 11: a transient condition; the runtime should retry later.
pub const CODE_TRY_AGAIN_LATER: u32 = 11;
/// Spec code 50 (STATUS): the plugin cannot service ADD requests.
pub const CODE_NOT_AVAILABLE: u32 = 50;
/// Spec code 51 (STATUS): not available, and existing pods may have limited connectivity.
pub const CODE_LIMITED_CONNECTIVITY: u32 = 51;
/// An internal failure of the plugin (a kernel call failed, a record could
/// not be written, something not ours in the way, a bug): 999, libcni's
/// `ErrInternal`, which runtimes know (the spec leaves 100+ to plugins).
pub const CODE_INTERNAL: u32 = 999;
/// The first code the spec leaves to plugins.
pub const FIRST_PLUGIN_CODE: u32 = 100;

/// A failure, as the spec's error result will report it.
///
/// The variants follow the spec's codes; [`CniError::Plugin`] carries our own
/// codes (100 and up) and [`CniError::Delegated`] passes a delegated plugin's
/// error (an IPAM plugin's) through with its own code, as section 4 asks
/// ("error should be returned by the upper plugin").
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CniError {
    /// Code 1. `message` names the version asked for and the ones on offer.
    #[error("{message}")]
    IncompatibleVersion { message: String, details: String },

    /// Code 2. The spec requires the key and value in the message.
    #[error("unsupported field {field:?} = {value}: {reason}")]
    UnsupportedField {
        field: String,
        value: String,
        reason: String,
    },

    /// Code 3. The runtime need not clean anything up after this one.
    #[error("container {container_id:?} is unknown: {reason}")]
    UnknownContainer {
        container_id: String,
        reason: String,
    },

    /// Code 4, one variable with a bad value.
    #[error("{var} {value:?}: {reason}")]
    InvalidEnv {
        var: &'static str,
        value: String,
        reason: String,
    },

    /// Code 4, required variables that are unset or empty.
    #[error("{} required for {command} but not set (or empty)", list_vars(vars))]
    MissingEnv {
        command: &'static str,
        vars: Vec<&'static str>,
    },

    /// Code 5.
    #[error("I/O failure: {what}: {reason}")]
    Io { what: String, reason: String },

    /// Code 6. `what` names the document (stdin, `prevResult`, a delegated
    /// plugin's output).
    #[error("cannot decode {what}: {reason}")]
    Decode { what: String, reason: String },

    /// Code 7. `field` is the configuration key, dotted for nested ones
    /// (`ipam.subnet`, `runtimeConfig.portMappings[0].hostPort`).
    #[error("{field}: {reason}")]
    InvalidConfig { field: String, reason: String },

    /// Code 11.
    #[error("try again later: {reason}")]
    TryAgainLater { reason: String },

    /// Code 50 (STATUS).
    #[error("plugin not available: {reason}")]
    NotAvailable { reason: String },

    /// Code 51 (STATUS).
    #[error("plugin not available and existing pods may have limited connectivity: {reason}")]
    LimitedConnectivity { reason: String },

    /// A delegated plugin's error result, passed through with its code.
    #[error("{plugin}: {msg}")]
    Delegated {
        plugin: String,
        code: u32,
        msg: String,
        details: String,
    },

    /// Our own failures, codes 100 and up ([`CODE_INTERNAL`] when nothing
    /// more specific applies). A code below 100 is reported as 100.
    #[error("{msg}")]
    Plugin {
        code: u32,
        msg: String,
        details: String,
    },
}

fn list_vars(vars: &[&str]) -> String {
    match vars {
        [one] => format!("{one} is"),
        many => format!("{} are", many.join(", ")),
    }
}

impl CniError {
    /// The spec's error code for this failure (never 0).
    pub fn code(&self) -> u32 {
        match self {
            CniError::IncompatibleVersion { .. } => CODE_INCOMPATIBLE_VERSION,
            CniError::UnsupportedField { .. } => CODE_UNSUPPORTED_FIELD,
            CniError::UnknownContainer { .. } => CODE_UNKNOWN_CONTAINER,
            CniError::InvalidEnv { .. } | CniError::MissingEnv { .. } => CODE_INVALID_ENVIRONMENT,
            CniError::Io { .. } => CODE_IO_FAILURE,
            CniError::Decode { .. } => CODE_DECODING_FAILURE,
            CniError::InvalidConfig { .. } => CODE_INVALID_CONFIG,
            CniError::TryAgainLater { .. } => CODE_TRY_AGAIN_LATER,
            CniError::NotAvailable { .. } => CODE_NOT_AVAILABLE,
            CniError::LimitedConnectivity { .. } => CODE_LIMITED_CONNECTIVITY,
            // A delegated plugin that reports code 0 still failed.
            CniError::Delegated { code, .. } => (*code).max(1),
            CniError::Plugin { code, .. } => (*code).max(FIRST_PLUGIN_CODE),
        }
    }

    /// The longer description for the `details` key (may be empty).
    pub fn details(&self) -> String {
        match self {
            CniError::IncompatibleVersion { details, .. }
            | CniError::Delegated { details, .. }
            | CniError::Plugin { details, .. } => details.clone(),
            CniError::MissingEnv { command, .. } => format!(
                "the container runtime sets the CNI_* variables; for {command} the spec requires {}",
                required_list(command)
            ),
            _ => String::new(),
        }
    }

    /// The error result for this failure, in protocol version `cni_version`.
    pub fn to_reply(&self, cni_version: &str) -> ErrorReply {
        ErrorReply {
            cni_version: cni_version.to_string(),
            code: self.code(),
            msg: self.to_string(),
            details: self.details(),
        }
    }

    /// Code 7 for `field`.
    pub fn invalid_config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        CniError::InvalidConfig {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Code 4 for `var` holding `value`.
    pub fn invalid_env(
        var: &'static str,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        CniError::InvalidEnv {
            var,
            value: value.into(),
            reason: reason.into(),
        }
    }

    /// Code 6 for the document `what`.
    pub fn decode(what: impl Into<String>, reason: impl Into<String>) -> Self {
        CniError::Decode {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// Code 999: an internal failure.
    pub fn internal(msg: impl Into<String>) -> Self {
        CniError::Plugin {
            code: CODE_INTERNAL,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// The error a delegated plugin (`plugin`, e.g. `host-local`) reported,
    /// to pass through with its own code.
    pub fn from_delegated(plugin: impl Into<String>, reply: ErrorReply) -> Self {
        CniError::Delegated {
            plugin: plugin.into(),
            code: reply.code,
            msg: reply.msg,
            details: reply.details,
        }
    }
}

fn required_list(command: &str) -> &'static str {
    match command {
        "ADD" | "CHECK" => "CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS and CNI_IFNAME",
        "DEL" => "CNI_COMMAND, CNI_CONTAINERID and CNI_IFNAME",
        "GC" => "CNI_COMMAND and CNI_PATH",
        _ => "CNI_COMMAND",
    }
}

/// The spec's error result: `{"cniVersion", "code", "msg", "details"}`.
///
/// It also parses a delegated plugin's error output; libcni's Go type has no
/// `cniVersion`, so that key may be absent there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    pub code: u32,
    #[serde(default)]
    pub msg: String,
    #[serde(default)]
    pub details: String,
}

impl ErrorReply {
    /// The JSON bytes to write on stdout (with a final newline).
    pub fn render(&self) -> Vec<u8> {
        // Serializing a struct of strings and an integer cannot fail.
        let mut out = serde_json::to_vec(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Parse a plugin's error output (for delegated plugins).
    pub fn parse(bytes: &[u8]) -> Result<Self, CniError> {
        serde_json::from_slice(bytes)
            .map_err(|e| CniError::decode("a delegated plugin's error result", e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_maps_to_its_spec_code() {
        let s = String::new;
        let table: Vec<(CniError, u32)> = vec![
            (
                CniError::IncompatibleVersion {
                    message: s(),
                    details: s(),
                },
                1,
            ),
            (
                CniError::UnsupportedField {
                    field: s(),
                    value: s(),
                    reason: s(),
                },
                2,
            ),
            (
                CniError::UnknownContainer {
                    container_id: s(),
                    reason: s(),
                },
                3,
            ),
            (CniError::invalid_env("CNI_IFNAME", "x", "y"), 4),
            (
                CniError::MissingEnv {
                    command: "ADD",
                    vars: vec!["CNI_NETNS"],
                },
                4,
            ),
            (
                CniError::Io {
                    what: s(),
                    reason: s(),
                },
                5,
            ),
            (CniError::decode("stdin", "eof"), 6),
            (CniError::invalid_config("mode", "bad"), 7),
            (CniError::TryAgainLater { reason: s() }, 11),
            (CniError::NotAvailable { reason: s() }, 50),
            (CniError::LimitedConnectivity { reason: s() }, 51),
            (CniError::internal("boom"), 999),
            (
                CniError::Plugin {
                    code: 104,
                    msg: s(),
                    details: s(),
                },
                104,
            ),
            // A code below 100 is not ours to use: reported as 100.
            (
                CniError::Plugin {
                    code: 7,
                    msg: s(),
                    details: s(),
                },
                100,
            ),
            (
                CniError::Delegated {
                    plugin: "host-local".into(),
                    code: 11,
                    msg: s(),
                    details: s(),
                },
                11,
            ),
            (
                CniError::Delegated {
                    plugin: "host-local".into(),
                    code: 0,
                    msg: s(),
                    details: s(),
                },
                1,
            ),
        ];
        for (err, code) in table {
            assert_eq!(err.code(), code, "{err:?}");
            assert_ne!(err.to_reply("1.0.0").code, 0);
        }
    }

    #[test]
    fn messages_name_the_thing_and_the_fix() {
        let table: Vec<(CniError, &str)> = vec![
            (
                CniError::invalid_env(
                    "CNI_IFNAME",
                    "eth0/../x",
                    "not a valid interface name (1-15 bytes, no '/', ':' or whitespace)",
                ),
                r#"CNI_IFNAME "eth0/../x": not a valid interface name (1-15 bytes, no '/', ':' or whitespace)"#,
            ),
            (
                CniError::MissingEnv {
                    command: "ADD",
                    vars: vec!["CNI_NETNS", "CNI_IFNAME"],
                },
                "CNI_NETNS, CNI_IFNAME are required for ADD but not set (or empty)",
            ),
            (
                CniError::MissingEnv {
                    command: "GC",
                    vars: vec!["CNI_PATH"],
                },
                "CNI_PATH is required for GC but not set (or empty)",
            ),
            (
                CniError::invalid_config("ipam.subnet", "not a CIDR"),
                "ipam.subnet: not a CIDR",
            ),
            (
                CniError::UnsupportedField {
                    field: "mode".into(),
                    value: "\"pair\"".into(),
                    reason: "x".into(),
                },
                "unsupported field \"mode\" = \"pair\": x",
            ),
        ];
        for (err, want) in table {
            assert_eq!(err.to_string(), want);
        }
    }

    #[test]
    fn reply_has_the_spec_keys() {
        let reply = CniError::invalid_config("mtu", "out of range").to_reply("0.4.0");
        let v: serde_json::Value = serde_json::from_slice(&reply.render()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "cniVersion": "0.4.0",
                "code": 7,
                "msg": "mtu: out of range",
                "details": ""
            })
        );
        let missing = CniError::MissingEnv {
            command: "DEL",
            vars: vec!["CNI_IFNAME"],
        };
        assert!(missing.details().contains("CNI_CONTAINERID and CNI_IFNAME"));
    }

    #[test]
    fn delegated_errors_pass_through() {
        // libcni's Go type has no cniVersion; details may be absent too.
        let reply = ErrorReply::parse(br#"{"code": 11, "msg": "no free address"}"#).unwrap();
        let err = CniError::from_delegated("host-local", reply);
        assert_eq!(err.code(), 11);
        assert_eq!(err.to_string(), "host-local: no free address");
        assert!(ErrorReply::parse(b"not json").is_err());
        assert_eq!(ErrorReply::parse(b"{}").unwrap_err().code(), 6);
    }
}
