//! The plugin's own logging keys, after Calico's plugin:
//! `"logFile": "/var/log/vethctl/cni.log"` (an absolute path; absent: no
//! file) and `"logLevel"`: `"error"` (the default), `"warn"`, `"info"` or
//! `"debug"`, any case. The plugin writes the file; this crate only reads
//! and checks the keys (code 7 naming the key on a bad value).

use std::path::PathBuf;

use serde_json::Value;

use crate::error::CniError;

/// How much is logged, least first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    #[default]
    Error,
    Warn,
    Info,
    Debug,
}

impl LogLevel {
    pub const ALL: [LogLevel; 4] = [
        LogLevel::Error,
        LogLevel::Warn,
        LogLevel::Info,
        LogLevel::Debug,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        }
    }

    /// A level by name, any case; `"warning"` too (Calico's spelling).
    pub fn parse(s: &str) -> Option<LogLevel> {
        let s = s.trim().to_ascii_lowercase();
        if s == "warning" {
            return Some(LogLevel::Warn);
        }
        LogLevel::ALL.into_iter().find(|l| l.as_str() == s)
    }

    /// "error, warn, info or debug", for messages.
    pub fn choices() -> String {
        let names: Vec<&str> = LogLevel::ALL.iter().map(|l| l.as_str()).collect();
        format!(
            "{} or {}",
            names[..names.len() - 1].join(", "),
            names[names.len() - 1]
        )
    }
}

impl std::fmt::Display for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `logFile` and `logLevel` of a network configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogConfig {
    pub file: Option<PathBuf>,
    pub level: LogLevel,
}

pub const LOG_FILE_KEY: &str = "logFile";
pub const LOG_LEVEL_KEY: &str = "logLevel";

pub fn parse_log_level(v: &Value) -> Result<LogLevel, CniError> {
    let accepted = format!("use {}", LogLevel::choices());
    match v.as_str() {
        Some(s) => LogLevel::parse(s).ok_or_else(|| {
            CniError::invalid_config(
                LOG_LEVEL_KEY,
                format!("{s:?} is not a log level; {accepted}"),
            )
        }),
        None => Err(CniError::invalid_config(
            LOG_LEVEL_KEY,
            format!("{v} is not a log level name; {accepted}"),
        )),
    }
}

pub fn parse_log_file(v: &Value) -> Result<PathBuf, CniError> {
    let bad = |why: &str| CniError::invalid_config(LOG_FILE_KEY, why.to_string());
    let s = v
        .as_str()
        .ok_or_else(|| bad("expected a string: the log file's absolute path"))?;
    let path = PathBuf::from(s);
    if !path.is_absolute() || s.ends_with('/') {
        return Err(bad(&format!(
            "{s:?} is not an absolute file path; use one such as \"/var/log/vethctl/cni.log\" \
             (plugins run in the runtime's working directory)"
        )));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn levels_by_name_any_case() {
        assert_eq!(LogLevel::parse("INFO"), Some(LogLevel::Info));
        assert_eq!(LogLevel::parse("warning"), Some(LogLevel::Warn));
        assert_eq!(LogLevel::parse("debug"), Some(LogLevel::Debug));
        assert_eq!(LogLevel::parse("verbose"), None);
        assert!(LogLevel::Debug > LogLevel::Info && LogLevel::Warn > LogLevel::Error);
    }

    #[test]
    fn bad_level_is_code_7_naming_key_and_choices() {
        for v in [json!("loud"), json!(3)] {
            let e = parse_log_level(&v).unwrap_err();
            assert_eq!(e.code(), 7);
            let msg = e.to_string();
            assert!(msg.contains("logLevel"), "{msg}");
            assert!(msg.contains("error, warn, info or debug"), "{msg}");
        }
    }

    #[test]
    fn log_file_must_be_an_absolute_file_path() {
        assert_eq!(
            parse_log_file(&json!("/var/log/vethctl/cni.log")).unwrap(),
            PathBuf::from("/var/log/vethctl/cni.log")
        );
        for v in [json!("cni.log"), json!("/var/log/"), json!(true)] {
            let e = parse_log_file(&v).unwrap_err();
            assert_eq!(e.code(), 7);
            assert!(e.to_string().contains("logFile"));
        }
    }
}
