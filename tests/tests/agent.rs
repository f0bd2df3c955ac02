//! The agent as a node's supervisor sees it: `/healthz` while it runs,
//! `/readyz` only while the dataplane can take pods, and one agent per
//! node.

use std::{
    net::{Ipv4Addr, SocketAddr},
    process::{Command, Stdio},
    time::Duration,
};

use veth_common::names::{MAP_ENDPOINTS, PROG_FROM_POD};
use veth_tests::{
    cni::CniNet, free_port, http_get, lines_of, wait_until, Agent, ChildGuard, TempDir,
    TestTopology,
};
use veth_userspace::{dataplane::Pins, state::AGENT_LOCK};

/// `/healthz` answers while the agent runs; `/readyz` answers 200 while a
/// topology's programs are pinned and its maps agree with its veths, 503
/// naming the topology and what is wrong when its programs are gone or a
/// pod's endpoint is missing from the maps, and 200 again once `up` has
/// repaired it.
#[test]
fn healthz_says_alive_and_readyz_follows_the_dataplane() {
    let t = TestTopology::new(&["a", "b"]);
    t.up();
    let agent = Agent::start();
    assert_eq!(
        http_get(agent.addr, "/healthz").expect("GET /healthz"),
        (200, "ok\n".to_string())
    );
    // Other tests' topologies come and go on this node meanwhile: only
    // what /readyz says of ours counts.
    let about_ours = |body: &str| {
        body.lines()
            .filter(|l| l.contains(&format!("{:?}", t.name())))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let (code, body) = http_get(agent.addr, "/readyz").expect("GET /readyz");
    assert!(about_ours(&body).is_empty(), "{code}: {body}");

    let pins = Pins::new(t.name());
    let program = pins.program(PROG_FROM_POD);
    std::fs::remove_file(&program).expect("unpinning from_pod");
    let (code, body) = http_get(agent.addr, "/readyz").expect("GET /readyz");
    assert_eq!(code, 503, "{body}");
    let ours = about_ours(&body);
    assert!(
        ours.len() == 1 && ours[0].contains("programs are not loaded"),
        "{body}"
    );
    assert_eq!(
        http_get(agent.addr, "/healthz").expect("GET /healthz").0,
        200,
        "alive all the same"
    );

    t.up();
    let (code, body) = http_get(agent.addr, "/readyz").expect("GET /readyz");
    assert!(about_ours(&body).is_empty(), "{code}: {body}");

    // The maps lose b's endpoint while its veth stays: unmapped.
    let key: Vec<String> = t.pod("b").ipv4.octets().iter().map(u8::to_string).collect();
    let endpoints = pins.map(MAP_ENDPOINTS).display().to_string();
    let out = Command::new("bpftool")
        .args(["map", "delete", "pinned", &endpoints, "key"])
        .args(&key)
        .output()
        .expect("running bpftool");
    assert!(out.status.success(), "{out:?}");
    let (code, body) = http_get(agent.addr, "/readyz").expect("GET /readyz");
    assert_eq!(code, 503, "{body}");
    assert_eq!(
        about_ours(&body),
        [format!(
            "topology {:?}: pod \"b\" is unmapped in the maps",
            t.name()
        )],
        "{body}"
    );
    t.up();
    let (code, body) = http_get(agent.addr, "/readyz").expect("GET /readyz");
    assert!(about_ours(&body).is_empty(), "{code}: {body}");
}

/// An agent started with `--cni-conf` brings its network up and is ready
/// while the network is; once the network is taken down, `/readyz` answers
/// 503 naming it.
#[test]
fn readyz_wants_the_cni_networks_up() {
    let net = CniNet::builtin("tc");
    let dir = TempDir::new("vethctl-agent-conf");
    let list = dir.path().join("10-veth.conflist");
    let conf = net.conf("1.0.0");
    let text = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": net.name,
        "plugins": [conf],
    });
    std::fs::write(&list, text.to_string()).expect("writing the configuration list");
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let agent = Agent::start_with(addr, &["--cni-conf", &list.display().to_string()])
        .unwrap_or_else(|e| panic!("{e}"));
    let ours = |body: &str| {
        body.lines()
            .filter(|l| l.contains(&format!("{:?}", net.name)))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let (code, body) = http_get(agent.addr, "/readyz").expect("GET /readyz");
    assert!(ours(&body).is_empty(), "{code}: {body}");

    let out = veth_tests::vethctl(&["down", "-n", &net.name], &[], None);
    assert!(out.status.success(), "{out:?}");
    let (code, body) = http_get(agent.addr, "/readyz").expect("GET /readyz");
    assert_eq!(code, 503, "{body}");
    let ours = ours(&body);
    assert!(
        ours.len() == 1 && ours[0].contains("CNI network") && ours[0].contains("is not up"),
        "{body}"
    );
}

/// A second agent with the same lock refuses to start and names the
/// first's PID; once the first stops, its lock file is gone and another
/// agent starts.
#[test]
fn a_second_agent_refuses_naming_the_first() {
    let lock_dir = TempDir::new("vethctl-agent-lock");
    let lock = Agent::lock_file_in(&lock_dir);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let mut first = ChildGuard::vethctl(
        &["agent", "--listen", &addr.to_string(), "--lock-file", &lock],
        Stdio::null(),
        Stdio::piped(),
    );
    let said = lines_of(first.take_stderr());
    wait_until(Duration::from_secs(30), "the first agent serves", || {
        said.recv_timeout(Duration::from_millis(100))
            .is_ok_and(|l| l.contains("serving"))
    });
    assert_eq!(
        std::fs::read_to_string(&lock)
            .expect("the lock file")
            .trim(),
        first.id().to_string()
    );

    let second_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let mut second = ChildGuard::vethctl(
        &[
            "agent",
            "--listen",
            &second_addr.to_string(),
            "--lock-file",
            &lock,
        ],
        Stdio::null(),
        Stdio::piped(),
    );
    let second_said = lines_of(second.take_stderr());
    let status = second.wait_timeout(Duration::from_secs(10));
    let message = all_lines(&second_said);
    assert!(
        status.is_some_and(|s| s.code() == Some(1)),
        "{status:?}: {message:?}"
    );
    let message = message.join("\n");
    assert!(
        message.contains(&format!("another vethctl agent (PID {})", first.id()))
            && message.contains(&lock),
        "{message}"
    );
    assert!(
        http_get(second_addr, "/healthz").is_err(),
        "the second never served"
    );

    first.signal(libc::SIGTERM);
    assert!(first
        .wait_timeout(Duration::from_secs(10))
        .is_some_and(|s| s.success()));
    assert!(
        !std::path::Path::new(&lock).exists(),
        "a stopped agent leaves no lock file"
    );
    if let Err(e) = Agent::start_with(second_addr, &[]) {
        panic!("after the first stopped: {e}");
    }
}

/// Everything a child wrote, up to the end of its output.
fn all_lines(lines: &std::sync::mpsc::Receiver<String>) -> Vec<String> {
    let mut all = Vec::new();
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(5)) {
        all.push(line);
    }
    all
}

/// Without `--lock-file` the lock is the node's: /run/vethctl/agent.lock.
#[test]
fn the_default_lock_is_the_nodes() {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let mut agent = ChildGuard::vethctl(
        &["agent", "--listen", &addr.to_string()],
        Stdio::null(),
        Stdio::piped(),
    );
    let said = lines_of(agent.take_stderr());
    wait_until(Duration::from_secs(30), "the agent serves", || {
        said.recv_timeout(Duration::from_millis(100))
            .is_ok_and(|l| l.contains("serving"))
    });
    assert_eq!(
        std::fs::read_to_string(AGENT_LOCK)
            .expect("the node's lock file")
            .trim(),
        agent.id().to_string()
    );
    let mut second = ChildGuard::vethctl(
        &["agent", "--listen", &format!("127.0.0.1:{}", free_port())],
        Stdio::null(),
        Stdio::piped(),
    );
    let second_said = lines_of(second.take_stderr());
    assert_eq!(
        second
            .wait_timeout(Duration::from_secs(10))
            .and_then(|s| s.code()),
        Some(1)
    );
    let message = all_lines(&second_said);
    assert!(
        message
            .join("\n")
            .contains(&format!("(PID {})", agent.id())),
        "{message:?}"
    );
    agent.signal(libc::SIGTERM);
    assert!(agent.wait_timeout(Duration::from_secs(10)).is_some());
    assert!(!std::path::Path::new(AGENT_LOCK).exists());
}
