//! The CNI protocol for `veth-cni`: parsing, validation, version handling,
//! result rendering and dispatch, with no networking and no side effects.
//!
//! It speaks CNI spec 1.1.0 — ADD, DEL, CHECK, STATUS, GC and VERSION — and
//! answers configurations of cniVersion 0.3.1, 0.4.0, 1.0.0 and 1.1.0 in
//! their own version. The thin `veth-cni` binary reads its variables and
//! stdin, hands them to [`run`] with an implementation of [`Plugin`] over
//! the dataplane library, and writes what [`Output`] says.
//!
//! - [`env`](mod@env): the `CNI_*` variables, per verb; `CNI_ARGS` parsed;
//!   `CNI_CONTAINERID`/`CNI_IFNAME`/`CNI_NETNS` path tricks refused.
//! - [`config`]: the network configuration on stdin: our keys (`mode`, `mtu`,
//!   `ipam`), the spec's (`runtimeConfig` in both capitalisations,
//!   `prevResult`, GC's `cni.dev/valid-attachments`), everything else kept.
//! - [`version`]: the versions we speak, which one a request is answered in
//!   (`cniVersions` honoured, never newer than `cniVersion`), VERSION.
//! - [`logging`]: the plugin's `logFile` and `logLevel` keys.
//! - [`result`]: the ADD result, rendered field by field per version and
//!   parsed back from any of them.
//! - [`error`]: the spec's error result and codes as one typed error.
//! - [`dispatch`]: [`Request`], [`Plugin`], [`run`].
//!
//! # Why not the `cni-plugin` crate
//! `cni-plugin` 0.2.1 (the latest on crates.io; read from its source) was
//! evaluated first. It does not fit:
//! - no STATUS or GC: its `Command` is ADD, DEL, CHECK and VERSION, and its
//!   configuration has no `cni.dev/valid-attachments`;
//! - versions: it supports `0.4.0` and `^1.0.0` (no 0.3.1; 1.1.0 accepted only
//!   by the semver caret, without the 1.1.0 fields), ignores `cniVersions`,
//!   renders one result shape whatever the version (no `ips[].version` in
//!   0.4.0 results), and writes every error as cniVersion 1.0.0;
//! - it reads `std::env` and stdin itself and its reply path calls
//!   `process::exit` and `expect`s on the stdout write, so neither the
//!   per-verb rules nor the no-panic guarantee can be tested with given input;
//! - it ignores `CNI_ARGS` on purpose (we need the Kubernetes identity), does
//!   not validate `CNI_IFNAME`, and refuses upper-case container ids, which
//!   the spec allows;
//! - its `runtimeConfig.portMappings` entries only take `hostPort`: the
//!   `HostPort` containerd 1.6 sends fails to parse;
//! - it brings regex, semver 0.11, ipnetwork 0.17, simplelog, which and
//!   thiserror 1 next to the workspace's thiserror 2.
//!
//! The protocol is small (the Go reference's `skel`, `types`, `types/040`,
//! `types/100` and `version` packages), so this crate implements it after
//! those packages and the spec texts, and says where it departs from them.
//!
//! # Not covered
//! - Spec 0.1.0/0.2.0 configurations and results (`ip4`/`ip6` results): code 1.
//! - INIT, FINALIZE and other post-1.1.0 proposals; `CNI_NETNS_OVERRIDE`.
//! - Conflists: the runtime splits them; a plugin only ever sees one
//!   plugin's configuration.
//! - The `IP` key of `CNI_ARGS` and the `args`/`runtimeConfig.ips` requests
//!   for specific addresses: kept (in [`CniArgs::unknown`] with
//!   `IgnoreUnknown`, in [`NetConf::other`], [`RuntimeConfig::other`]), not
//!   interpreted.
//! - Whether `CNI_NETNS` really is a network namespace, and everything else
//!   that needs the system, is the plugin's.

pub mod config;
pub mod dispatch;
pub mod env;
pub mod error;
pub mod logging;
pub mod result;
pub mod version;

pub use config::{
    Bandwidth, BuiltinIpam, DelegatedIpam, GcAttachment, Ipam, Mode, NetConf, PortMapping,
    Protocol, RuntimeConfig, RuntimeDns, BUILTIN_IPAM_TYPE,
};
pub use dispatch::{read_stdin, run, Output, Plugin, Request, MAX_STDIN_BYTES};
pub use env::{Attachment, CniArgs, Command, ContainerId, Environment, IfName};
pub use error::{CniError, ErrorReply};
pub use logging::{LogConfig, LogLevel};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use version::{negotiate, version_reply, CniVersion};
