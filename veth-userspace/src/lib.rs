//! vethctl: pods (network namespaces) and their veth pairs, wired by an eBPF
//! redirect dataplane. Data flows one way: description ([`model`]) → plan
//! ([`plan`]) → kernel ([`netlink`], [`dataplane`], driven by [`apply`]) →
//! [`observe`].

pub mod agent;
pub mod applied;
pub mod apply;
pub mod bench;
pub mod cli;
pub mod cni;
pub mod crossnode;
pub mod dataplane;
pub mod endpoint;
pub mod error;
pub mod etcd;
pub mod http_server;
pub mod ipam;
pub mod kernel;
pub mod lab;
pub mod lock_wait;
pub mod logging;
pub mod model;
pub mod netlink;
pub mod node;
pub mod observe;
pub mod plan;
pub mod preflight;
pub mod privileges;
pub mod progress;
pub mod recover;
pub mod state;
pub mod version;
pub mod watch;

pub use error::Error;
