//! Leveled, timestamped log lines over the `log` facade: the agent's on
//! stderr, `veth-cni`'s in the file its configuration names. One line per
//! record: an RFC 3339 UTC timestamp, the level, a per-process prefix (the
//! CNI command and short container id) and the message. Writes never fail
//! the caller, never panic (`eprintln!` does when stderr is gone).

use std::{
    fs::File,
    io::Write,
    path::Path,
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
};

use log::LevelFilter;
use veth_cni_protocol::{LogConfig, LogLevel};

/// The default level of `vethctl agent`.
pub const AGENT_DEFAULT: LogLevel = LogLevel::Info;

pub fn filter(level: LogLevel) -> LevelFilter {
    match level {
        LogLevel::Error => LevelFilter::Error,
        LogLevel::Warn => LevelFilter::Warn,
        LogLevel::Info => LevelFilter::Info,
        LogLevel::Debug => LevelFilter::Debug,
    }
}

/// The level `RUST_LOG` asks for: env_logger's syntax, of which we read a
/// bare level (`debug`) or one for this program (`vethctl=debug`,
/// `veth_userspace=debug`), the last one winning; `trace` is `debug`.
/// `Err` names what it could not read.
pub fn level_from_rust_log(value: &str) -> Result<Option<LogLevel>, String> {
    let mut level = None;
    for directive in value.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let (target, name) = match directive.split_once('=') {
            Some((target, name)) => (Some(target.trim()), name),
            None => (None, directive),
        };
        if matches!(target, Some(t) if !matches!(t, "vethctl" | "veth_userspace" | "veth-cni")) {
            continue;
        }
        let parsed = match name.trim().to_ascii_lowercase().as_str() {
            "trace" => Some(LogLevel::Debug),
            other => LogLevel::parse(other),
        };
        level = Some(parsed.ok_or_else(|| {
            format!(
                "RUST_LOG: {directive:?} is not a log level; use {}",
                LogLevel::choices()
            )
        })?);
    }
    Ok(level)
}

/// `at` as RFC 3339 in UTC with milliseconds: `2026-12-06T21:19:23.123Z`.
pub fn rfc3339(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 as a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// One log line, newline included.
pub fn format_line(at: SystemTime, level: log::Level, prefix: &str, message: &str) -> String {
    format!("{} {level:<5} {prefix}{message}\n", rfc3339(at))
}

struct Logger {
    stderr: LevelFilter,
    /// The log file and the level it takes.
    file: Option<(Mutex<File>, LevelFilter)>,
    prefix: String,
}

impl log::Log for Logger {
    fn enabled(&self, meta: &log::Metadata) -> bool {
        meta.level() <= self.stderr || matches!(&self.file, Some((_, l)) if meta.level() <= *l)
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format_line(
            SystemTime::now(),
            record.level(),
            &self.prefix,
            &record.args().to_string(),
        );
        if record.level() <= self.stderr {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
        if let Some((file, level)) = &self.file {
            if record.level() <= *level {
                let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
                let _ = file.write_all(line.as_bytes());
            }
        }
    }

    fn flush(&self) {}
}

fn install(logger: Logger) {
    let max = match &logger.file {
        Some((_, level)) => logger.stderr.max(*level),
        None => logger.stderr,
    };
    // Only the first logger of a process counts (tests may ask twice).
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(max);
    }
}

/// `vethctl agent`'s logger: stderr, at `flag` (`--log-level`), else what
/// `RUST_LOG` says, else info. An unreadable `RUST_LOG` is said and
/// ignored.
pub fn init_agent(flag: Option<LogLevel>) {
    let from_env = match std::env::var("RUST_LOG") {
        Ok(value) => level_from_rust_log(&value).unwrap_or_else(|e| {
            let _ = writeln!(std::io::stderr(), "vethctl agent: {e}; ignored");
            None
        }),
        Err(_) => None,
    };
    install(Logger {
        stderr: filter(flag.or(from_env).unwrap_or(AGENT_DEFAULT)),
        file: None,
        prefix: String::new(),
    });
}

/// `veth-cni`'s logger: errors on stderr (which runtimes capture), and
/// with `logFile` every line at `logLevel` in that file, each line with
/// `command` and the short `container_id`. A file that cannot be opened
/// is said on stderr and the plugin goes on without it.
pub fn init_cni(config: &LogConfig, command: &str, container_id: Option<&str>) {
    let file = config.file.as_deref().and_then(|path| {
        open_log_file(path)
            .map_err(|e| {
                let _ = writeln!(
                    std::io::stderr(),
                    "veth-cni: logFile {}: {e}; logging to stderr only",
                    path.display()
                );
            })
            .ok()
    });
    let id: String = container_id.unwrap_or("-").chars().take(12).collect();
    install(Logger {
        stderr: LevelFilter::Error,
        file: file.map(|f| (Mutex::new(f), filter(config.level))),
        prefix: format!("{command} {id}: "),
    });
}

/// Opens `path` to append, made 0600 if new, its directory 0700 if we
/// make it. Non-blocking: a FIFO or a stalled file system must not hold
/// up an ADD.
fn open_log_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.exists()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
}

/// A message for whoever watches, from code shared by the CLI and the
/// daemons: a warning in the log of a process that has one, else a line
/// on stderr.
pub fn notice(message: &str) {
    if log::max_level() == LevelFilter::Off {
        let _ = writeln!(std::io::stderr(), "vethctl: {message}");
    } else {
        log::warn!("{message}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let at = UNIX_EPOCH + Duration::from_millis(1_796_592_363_123);
        assert_eq!(rfc3339(at), "2026-12-06T21:26:03.123Z");
        // A leap day, and the day after the end of a century.
        let at = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(at), "2000-02-29T00:00:00.000Z");
        let at = UNIX_EPOCH + Duration::from_secs(4_107_542_399);
        assert_eq!(rfc3339(at), "2100-02-28T23:59:59.000Z");
    }

    #[test]
    fn a_line_has_time_level_prefix_and_message() {
        let line = format_line(UNIX_EPOCH, log::Level::Warn, "ADD 0123456789ab: ", "hi");
        assert_eq!(
            line,
            "1970-01-01T00:00:00.000Z WARN  ADD 0123456789ab: hi\n"
        );
    }

    #[test]
    fn rust_log_levels() {
        assert_eq!(level_from_rust_log("debug"), Ok(Some(LogLevel::Debug)));
        assert_eq!(level_from_rust_log("WARN"), Ok(Some(LogLevel::Warn)));
        assert_eq!(
            level_from_rust_log("info,hyper=trace,vethctl=error"),
            Ok(Some(LogLevel::Error))
        );
        assert_eq!(level_from_rust_log("hyper=debug"), Ok(None));
        assert_eq!(level_from_rust_log(""), Ok(None));
        assert_eq!(level_from_rust_log("trace"), Ok(Some(LogLevel::Debug)));
        let e = level_from_rust_log("loud").unwrap_err();
        assert!(e.contains("error, warn, info or debug"), "{e}");
    }

    #[test]
    fn levels_map_onto_the_facade() {
        assert_eq!(filter(LogLevel::Error), LevelFilter::Error);
        assert_eq!(filter(LogLevel::Debug), LevelFilter::Debug);
    }
}
