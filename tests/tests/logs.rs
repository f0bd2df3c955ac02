//! What operators read: the agent's log lines (timestamp, level,
//! `--log-level`), `veth-cni`'s log file (`logFile`, `logLevel`), and a
//! change blocked on a lock saying so.

use std::{
    net::{Ipv4Addr, SocketAddr},
    os::unix::fs::PermissionsExt,
    process::{Command, Stdio},
    time::Duration,
};

use veth_tests::{
    cni::{exec, CniNet, Pod},
    expect_success, free_port, http_get, lines_of, run, vethctl_bin, wait_until, Agent, ChildGuard,
    TempDir, TestTopology,
};

/// `2026-12-06T21:19:23.123Z INFO  rest`: the level and what follows.
fn level_and_text(line: &str) -> Option<(&str, &str)> {
    let (stamp, rest) = line.split_once(' ')?;
    let b = stamp.as_bytes();
    let stamped = b.len() == 24
        && b[23] == b'Z'
        && [4, 7].iter().all(|&i| b[i] == b'-')
        && b[10] == b'T'
        && [13, 16].iter().all(|&i| b[i] == b':')
        && b[19] == b'.'
        && stamp
            .chars()
            .enumerate()
            .all(|(i, c)| [4, 7, 10, 13, 16, 19, 23].contains(&i) || c.is_ascii_digit());
    let (level, text) = rest.split_once(' ')?;
    stamped.then_some((level, text.trim_start()))
}

/// Runs an agent with `args` until it has served `/healthz`, stops it, and
/// returns all it wrote on stderr.
fn agent_lines(args: &[&str], env: &[(&str, &str)]) -> Vec<String> {
    let lock_dir = TempDir::new("vethctl-logs-agent");
    let lock = Agent::lock_file_in(&lock_dir);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let listen = addr.to_string();
    let mut cmd = Command::new(vethctl_bin());
    cmd.args(["agent", "--listen", &listen, "--lock-file", &lock])
        .args(args)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut agent = ChildGuard::spawn("vethctl agent", &mut cmd);
    let said = lines_of(agent.take_stderr());
    wait_until(Duration::from_secs(30), "the agent answers", || {
        http_get(addr, "/healthz").is_ok_and(|(code, _)| code == 200)
    });
    agent.signal(libc::SIGTERM);
    let status = agent.wait_timeout(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let mut lines = Vec::new();
    while let Ok(line) = said.recv_timeout(Duration::from_secs(5)) {
        lines.push(line);
    }
    lines
}

/// Every line of the agent has an RFC 3339 UTC timestamp and a level; its
/// start and stop are info lines, which `--log-level warn` (and
/// `RUST_LOG=warn`) hide.
#[test]
fn agent_lines_carry_time_and_level_and_warn_hides_info() {
    let lines = agent_lines(&[], &[]);
    for line in &lines {
        assert!(level_and_text(line).is_some(), "not stamped: {line:?}");
    }
    let info: Vec<&str> = lines
        .iter()
        .filter_map(|l| level_and_text(l))
        .filter(|(level, _)| *level == "INFO")
        .map(|(_, text)| text)
        .collect();
    assert!(
        info.iter()
            .any(|t| t.starts_with("vethctl agent: serving http://"))
            && info.contains(&"vethctl agent: stopped"),
        "{lines:#?}"
    );

    for (args, env) in [
        (&["--log-level", "warn"][..], &[][..]),
        (&[][..], &[("RUST_LOG", "warn")][..]),
    ] {
        let lines = agent_lines(args, env);
        assert!(
            lines
                .iter()
                .all(|l| level_and_text(l).is_some_and(|(level, _)| level != "INFO")),
            "{args:?} {env:?}: {lines:#?}"
        );
    }
}

/// A `--log-level` that is no level is refused, naming the accepted ones.
#[test]
fn agent_refuses_an_unknown_level() {
    let out = Command::new(vethctl_bin())
        .args(["agent", "--log-level", "loud"])
        .output()
        .expect("running vethctl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("error, warn, info or debug"), "{stderr}");
}

/// With `logFile` the plugin writes its lines there, each with the
/// timestamp, level, command and short container id; the file is made
/// 0600 in a directory made 0700.
#[test]
fn cni_writes_its_log_file() {
    let net = CniNet::builtin("tc");
    let dir = TempDir::new("vethctl-cni-log");
    let file = dir.path().join("made/cni.log");
    let mut conf = net.conf("1.0.0");
    conf["logFile"] = file.display().to_string().into();
    conf["logLevel"] = "info".into();
    let pod = Pod::new();
    net.add_with(&pod, &conf, &[]);
    let short: String = pod.id.chars().take(12).collect();
    let text = std::fs::read_to_string(&file).expect("the log file");
    let done = format!("ADD {short}: network {:?}: done", net.name);
    assert!(
        text.lines()
            .any(|l| level_and_text(l) == Some(("INFO", done.as_str()))),
        "{text}"
    );
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(file.parent().unwrap()), 0o700);

    // Appended, by DEL too; debug lines stay out at info.
    net.run(&net.vars("DEL", &pod), &conf).expect_ok("DEL");
    let text = std::fs::read_to_string(&file).expect("the log file");
    assert!(text.contains(&format!("INFO  ADD {short}")), "{text}");
    assert!(text.contains(&format!("INFO  DEL {short}")), "{text}");
    assert!(!text.contains("DEBUG"), "{text}");
}

/// A `logLevel` that is no level is code 7 naming the key and the levels;
/// a log file that cannot be opened does not fail the ADD.
#[test]
fn cni_log_settings_are_checked_and_never_fail_an_add() {
    let net = CniNet::builtin("tc");
    let pod = Pod::new();
    let mut conf = net.conf("1.0.0");
    conf["logLevel"] = "loud".into();
    exec(&net.vars("ADD", &pod), conf.to_string().as_bytes()).expect_error(
        7,
        &["logLevel", "error, warn, info or debug"],
        "ADD with a bad logLevel",
    );

    let mut conf = net.conf("1.0.0");
    // /proc takes no new files.
    conf["logFile"] = "/proc/self/cni.log".into();
    conf["logLevel"] = "debug".into();
    let reply = net.run(&net.vars("ADD", &pod), &conf);
    reply.expect_ok("ADD with an unusable logFile");
    assert!(
        reply.stderr.contains("logFile /proc/self/cni.log"),
        "{}",
        reply.stderr
    );
}

/// A second `up` blocked on the network's lock says what it waits for and
/// who holds it, then goes ahead once it is free.
#[test]
fn up_blocked_on_the_lock_says_so() {
    let t = TestTopology::new(&["a", "b"]);
    t.up();
    let lock = format!("/run/vethctl/.locks/{}", t.name());
    let mut holder = ChildGuard::spawn(
        "flock",
        Command::new("flock")
            .args(["--exclusive", &lock, "sleep", "3"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_until(Duration::from_secs(5), "flock holds the lock", || {
        !Command::new("flock")
            .args(["--nonblock", &lock, "true"])
            .status()
            .expect("running flock")
            .success()
    });
    let out = t.vethctl(&["up"]);
    expect_success(&out, "vethctl up after the lock is free");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "vethctl: waiting for the lock of network {:?} held by another vethctl (PID {})",
            t.name(),
            holder.id()
        )),
        "{stderr}"
    );
    // Piped: no progress counter.
    assert!(!stderr.contains("pods wired"), "{stderr}");
    let _ = holder.wait_timeout(Duration::from_secs(5));
}

/// On a terminal, `up` counts the pods it wires.
#[test]
fn up_on_a_terminal_counts_pods() {
    let t = TestTopology::new(&["a", "b", "c"]);
    let cmd = format!(
        "{} up --repair --topology {}",
        vethctl_bin().display(),
        t.file.display()
    );
    t.up();
    // `script` gives vethctl a terminal and copies what it wrote.
    let typescript = run(
        "script",
        &["--quiet", "--return", "--command", &cmd, "/dev/null"],
    );
    assert!(typescript.contains("pods wired 3/3"), "{typescript:?}");
}
