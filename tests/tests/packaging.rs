//! What ships besides the binaries: the systemd unit of the agent.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use veth_tests::{cni::CniNet, free_port, http_get, vethctl_bin, wait_until, ChildGuard, TempDir};
use veth_userspace::privileges;

fn unit_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd/vethctl-agent.service")
}

fn unit() -> String {
    std::fs::read_to_string(unit_path()).expect("the unit file")
}

/// The values of `key=` lines in the unit.
fn values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .collect()
}

/// `systemd-analyze verify` (no systemd as PID 1 needed) finds nothing,
/// not even a warning, with the binary where ExecStart says (here: the
/// test build of vethctl).
#[test]
fn the_unit_verifies() {
    let dir = TempDir::new("vethctl-unit");
    let file = dir.path().join("vethctl-agent.service");
    let text = unit().replace("/usr/local/bin/vethctl", vethctl_bin().to_str().unwrap());
    std::fs::write(&file, text).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&file)
        .output()
        .expect("systemd-analyze (Debian package systemd; `cargo xtask setup`)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.trim(), "", "warnings from systemd-analyze verify");
}

/// The unit grants exactly what `vethctl agent --cni-conf` checks for.
#[test]
fn the_unit_grants_what_the_agent_checks_for() {
    let unit = unit();
    let mut needed: Vec<&str> = privileges::CHANGE.iter().map(|c| c.name()).collect();
    needed.sort();
    for key in ["CapabilityBoundingSet", "AmbientCapabilities"] {
        let granted = values(&unit, key);
        assert_eq!(granted.len(), 1, "{key}");
        let mut granted: Vec<&str> = granted[0].split_whitespace().collect();
        granted.sort();
        assert_eq!(granted, needed, "{key}");
    }
    let exec = values(&unit, "ExecStart");
    assert_eq!(
        exec,
        ["/usr/local/bin/vethctl agent --cni-conf /etc/cni/net.d/10-vethctl.conflist"]
    );
}

/// The agent runs as the unit has it — uid 0 holding only the unit's
/// capabilities, no new privileges — and brings its CNI network up and
/// serves metrics.
#[test]
fn the_agent_runs_with_only_the_units_capabilities() {
    let net = CniNet::builtin("tc");
    let dir = TempDir::new("vethctl-unit-conf");
    let conf = dir.path().join("10-vethctl.conflist");
    let list = serde_json::json!({
        "cniVersion": "1.0.0", "name": net.name,
        "plugins": [{"type": "veth-cni", "mode": "tc", "ipam": net.ipam_conf()}],
    });
    std::fs::write(&conf, list.to_string()).unwrap();
    let caps: Vec<String> = privileges::CHANGE
        .iter()
        .map(|c| format!("+{}", c.name().trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let set = format!("-all,{}", caps.join(","));
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _agent = ChildGuard::spawn(
        "vethctl agent under the unit's capabilities",
        Command::new("setpriv")
            .args(["--no-new-privs", "--inh-caps", &set, "--ambient-caps", &set])
            .args(["--bounding-set", &set])
            .arg(vethctl_bin())
            .args(["agent", "--cni-conf", conf.to_str().unwrap()])
            .args(["--listen", &addr.to_string()])
            // Its own lock: the node's agent may run meanwhile.
            .arg("--lock-file")
            .arg(dir.path().join("agent.lock"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_until(Duration::from_secs(20), "metrics served", || {
        http_get(addr, "/metrics").is_ok_and(|(code, body)| code == 200 && body.contains(&net.name))
    });
    let status = net.vethctl_status();
    assert_eq!(status["mode"], "tc", "{status}");
}
