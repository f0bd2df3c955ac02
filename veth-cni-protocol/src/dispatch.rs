//! One invocation end to end, without side effects: variables and stdin in,
//! stdout bytes and an exit code out.
//!
//! [`run`] answers VERSION itself, parses and validates everything else into
//! a [`Request`], calls the [`Plugin`] for the verb, and writes the result in
//! the request's version or the spec's error JSON. It never panics on its
//! input, and a panic inside the plugin becomes an error result (code 999)
//! rather than an empty stdout, which libcni would report as "netplugin
//! failed with no error message".
//!
//! The thin `veth-cni` binary is then:
//!
//! ```no_run
//! # use veth_cni_protocol::*;
//! # struct Veth;
//! # impl Plugin for Veth {
//! #     fn add(&self, _: &Request) -> Result<CniResult, CniError> { unimplemented!() }
//! #     fn del(&self, _: &Request) -> Result<(), CniError> { Ok(()) }
//! #     fn check(&self, _: &Request) -> Result<(), CniError> { Ok(()) }
//! #     fn status(&self, _: &Request) -> Result<(), CniError> { Ok(()) }
//! #     fn gc(&self, _: &Request) -> Result<(), CniError> { Ok(()) }
//! # }
//! use std::io::Write;
//! let stdin = read_stdin(std::io::stdin()); // at most MAX_STDIN_BYTES + 1
//! let out = run(std::env::vars_os(), &stdin, &Veth);
//! for line in &out.stderr {
//!     eprintln!("veth-cni: {line}");
//! }
//! let _ = std::io::stdout().write_all(&out.stdout);
//! std::process::exit(out.exit_code);
//! ```

use std::ffi::OsStr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use crate::config::NetConf;
use crate::env::{Attachment, Command, Environment};
use crate::error::CniError;
use crate::result::CniResult;
use crate::version::{negotiate, parse_version_number, version_reply, CniVersion};

/// The most stdin a configuration may take: 1 MiB (Kubernetes nodes' are
/// a few hundred bytes; a `prevResult` with many interfaces a few KiB).
pub const MAX_STDIN_BYTES: usize = 1 << 20;

/// Stdin, read up to one byte more than [`MAX_STDIN_BYTES`] (so that [`run`]
/// tells a larger one apart and refuses it) — never without bound: 100 MB
/// on stdin were read whole before. An I/O error leaves what was read
/// (empty: code 6).
pub fn read_stdin(input: impl std::io::Read) -> Vec<u8> {
    use std::io::Read;
    let mut stdin = Vec::new();
    let _ = input
        .take(MAX_STDIN_BYTES as u64 + 1)
        .read_to_end(&mut stdin);
    stdin
}

/// Everything one invocation brings: the variables, the parsed
/// configuration, and stdin as received (a delegated plugin gets exactly
/// these bytes, spec section 4).
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub env: Environment,
    pub config: NetConf,
    pub stdin: Vec<u8>,
}

impl Request {
    /// Parse stdin for the verb in `env`.
    pub fn new(env: Environment, stdin: &[u8]) -> Result<Request, CniError> {
        let config = NetConf::parse(stdin, env.command)?;
        Ok(Request {
            env,
            config,
            stdin: stdin.to_vec(),
        })
    }

    /// Read the variables and parse stdin.
    pub fn from_vars<I, K, V>(vars: I, stdin: &[u8]) -> Result<Request, CniError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        Request::new(Environment::from_vars(vars)?, stdin)
    }

    pub fn command(&self) -> Command {
        self.env.command
    }

    /// The version results and errors are written in.
    pub fn version(&self) -> CniVersion {
        self.config.cni_version
    }

    /// The attachment of an ADD, DEL or CHECK (code 4 for other verbs, which
    /// have none).
    pub fn attachment(&self) -> Result<&Attachment, CniError> {
        self.env.attachment.as_ref().ok_or(CniError::MissingEnv {
            command: self.env.command.as_str(),
            vars: vec!["CNI_CONTAINERID", "CNI_IFNAME"],
        })
    }

    /// `CNI_NETNS`: always there for ADD and CHECK; for DEL it may be gone.
    pub fn netns(&self) -> Result<&Path, CniError> {
        self.attachment()?
            .netns
            .as_deref()
            .ok_or(CniError::MissingEnv {
                command: self.env.command.as_str(),
                vars: vec!["CNI_NETNS"],
            })
    }

    /// What a best-effort DEL or GC went ahead without, for the log.
    pub fn warnings(&self) -> impl Iterator<Item = &str> {
        self.env
            .warnings
            .iter()
            .chain(&self.config.warnings)
            .map(String::as_str)
    }
}

/// What the dataplane does for each verb. VERSION is answered by [`run`].
pub trait Plugin {
    /// Attach the pod; the result is rendered in the request's version.
    fn add(&self, req: &Request) -> Result<CniResult, CniError>;
    /// Detach; must succeed when things are already gone (best-effort, and
    /// called with neither `CNI_NETNS` nor `prevResult` by containerd).
    fn del(&self, req: &Request) -> Result<(), CniError>;
    /// Compare what is there with `req.config.prev_result` (always set).
    fn check(&self, req: &Request) -> Result<(), CniError>;
    /// Ready for ADDs? Codes 50/51 when not.
    fn status(&self, req: &Request) -> Result<(), CniError>;
    /// Remove every attachment not in `req.config.valid_attachments` (always
    /// set) and pass the list on to a delegated IPAM.
    fn gc(&self, req: &Request) -> Result<(), CniError>;
}

/// What to write and how to exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// A result, a VERSION answer, an error result, or nothing (a successful
    /// DEL, CHECK, STATUS or GC).
    pub stdout: Vec<u8>,
    /// 0 on success, 1 on error (as the reference plugins; the code is in
    /// the JSON).
    pub exit_code: i32,
    /// Lines for stderr: what a best-effort DEL or GC skipped, a panic.
    pub stderr: Vec<String>,
}

impl Output {
    fn error(err: &CniError, version: &str, stderr: Vec<String>) -> Output {
        Output {
            stdout: err.to_reply(version).render(),
            exit_code: 1,
            stderr,
        }
    }
}

/// The version an error is reported in before the request is parsed: the
/// negotiated one if stdin allows, else `cniVersion` as given if it is a
/// version number, else [`CniVersion::FALLBACK`].
fn error_version(stdin: &[u8]) -> String {
    let Ok(serde_json::Value::Object(obj)) = serde_json::from_slice(stdin) else {
        return CniVersion::FALLBACK.as_str().to_string();
    };
    let requested = obj.get("cniVersion").and_then(|v| v.as_str());
    let versions: Vec<String> = obj
        .get("cniVersions")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    match (negotiate(requested, &versions), requested) {
        (Ok(v), _) => v.as_str().to_string(),
        (Err(_), Some(r)) if parse_version_number(r).is_some() => r.to_string(),
        _ => CniVersion::FALLBACK.as_str().to_string(),
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

/// Run one invocation: parse `vars` and `stdin`, call `plugin`, and say what
/// to write and how to exit.
pub fn run<I, K, V, P>(vars: I, stdin: &[u8], plugin: &P) -> Output
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
    P: Plugin + ?Sized,
{
    let env = match Environment::from_vars(vars) {
        Ok(env) => env,
        Err(e) => return Output::error(&e, &error_version(stdin), Vec::new()),
    };
    if stdin.len() > MAX_STDIN_BYTES {
        let e = CniError::decode(
            "stdin",
            format!(
                "larger than {MAX_STDIN_BYTES} bytes (stopped after reading {}); a network \
                 configuration is a small JSON document: check what the runtime sends",
                stdin.len()
            ),
        );
        return Output::error(&e, CniVersion::FALLBACK.as_str(), Vec::new());
    }
    if env.command == Command::Version {
        return Output {
            stdout: version_reply(stdin),
            exit_code: 0,
            stderr: Vec::new(),
        };
    }
    let req = match Request::new(env, stdin) {
        Ok(req) => req,
        Err(e) => return Output::error(&e, &error_version(stdin), Vec::new()),
    };
    let mut stderr: Vec<String> = req.warnings().map(|w| format!("warning: {w}")).collect();
    let version = req.version();

    let outcome = catch_unwind(AssertUnwindSafe(|| match req.command() {
        Command::Add => plugin.add(&req).and_then(|result| {
            result.validate()?;
            Ok(result.render(version))
        }),
        Command::Del => plugin.del(&req).map(|()| Vec::new()),
        Command::Check => plugin.check(&req).map(|()| Vec::new()),
        Command::Status => plugin.status(&req).map(|()| Vec::new()),
        Command::Gc => plugin.gc(&req).map(|()| Vec::new()),
        // Answered above.
        Command::Version => Ok(version_reply(stdin)),
    }));
    let outcome = outcome.unwrap_or_else(|payload| {
        let msg = panic_message(payload.as_ref());
        stderr.push(format!("panic in {}: {msg}", req.command()));
        Err(CniError::internal(format!(
            "{} failed unexpectedly in {}: {msg}",
            crate::version::PLUGIN_NAME,
            req.command()
        )))
    });
    match outcome {
        Ok(stdout) => Output {
            stdout,
            exit_code: 0,
            stderr,
        },
        Err(e) => Output::error(&e, version.as_str(), stderr),
    }
}
