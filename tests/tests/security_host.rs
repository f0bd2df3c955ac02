//! What a local user without privileges can do to vethctl, and what
//! vethctl needs itself: its state under /run/vethctl is root's alone
//! (so nobody else can hold its locks or read its records), every command
//! says at once what it lacks, the agent runs with only the capability it
//! needs, and its HTTP server outlasts a flood of idle and slow clients.
//!
//! "Nobody" is uid/gid 65534 with no capabilities, made with `setpriv`.

use std::{
    collections::VecDeque,
    io::Write,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc::{Receiver, RecvTimeoutError},
        Arc,
    },
    time::{Duration, Instant},
};

use veth_tests::{
    bpftool_map_dump, cni::plugin_bin, free_port, http_get, lines_of, metric_value, ping,
    vethctl_bin, wait_until, Agent, ChildGuard, TempDir, TestTopology,
};
use veth_userspace::{dataplane::Pins, state::STATE_ROOT};

/// `setpriv` arguments that make the rest run as nobody holding exactly
/// `caps` (e.g. "+dac_override"; "" for none), inherited over exec.
fn as_nobody(caps: &str) -> Vec<String> {
    let set = if caps.is_empty() {
        "-all".to_string()
    } else {
        format!("-all,{caps}")
    };
    [
        "--reuid",
        "65534",
        "--regid",
        "65534",
        "--clear-groups",
        "--inh-caps",
        &set,
        "--ambient-caps",
        &set,
        "--bounding-set",
        &set,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Runs `program args` as nobody without capabilities.
fn nobody(program: &Path, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(as_nobody(""))
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running setpriv")
}

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Every directory and file at and below `dir` with its mode.
fn modes_below(dir: &Path) -> Vec<(PathBuf, u32, bool)> {
    let mut out = vec![(dir.to_path_buf(), mode_of(dir), true)];
    for entry in std::fs::read_dir(dir).expect("listing a state directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            out.extend(modes_below(&path));
        } else {
            out.push((path.clone(), mode_of(&path), false));
        }
    }
    out
}

/// What of the topology's state is open to others: (path, mode) pairs that
/// are not 0700 directories or 0600 files, the shared root and lock
/// files included.
fn open_state(name: &str) -> Vec<(PathBuf, u32)> {
    let root = Path::new(STATE_ROOT);
    let mut all = modes_below(&root.join(name));
    for path in [root.to_path_buf(), root.join(".locks")] {
        all.push((path.clone(), mode_of(&path), true));
    }
    for path in [root.join(".lock"), root.join(".locks").join(name)] {
        all.push((path.clone(), mode_of(&path), false));
    }
    all.into_iter()
        .filter(|(_, mode, dir)| *mode != if *dir { 0o700 } else { 0o600 })
        .map(|(path, mode, _)| (path, mode))
        .collect()
}

/// What nobody can do to topology `name`'s state: read its description,
/// and take its network lock (which would stall `mode set`, `down` and
/// CNI ADDs; `flock` needs only a read-only descriptor).
fn nobody_reaches(name: &str) -> Vec<String> {
    let root = Path::new(STATE_ROOT);
    let mut reached = Vec::new();
    let record = root.join(name).join("topology.toml");
    if nobody(Path::new("/bin/cat"), &[&record.to_string_lossy()])
        .status
        .success()
    {
        reached.push(format!("read {}", record.display()));
    }
    for lock in [root.join(".locks").join(name), root.join(".lock")] {
        let held = nobody(
            Path::new("/usr/bin/flock"),
            &["--nonblock", "--shared", &lock.to_string_lossy(), "true"],
        );
        if held.status.success() {
            reached.push(format!("locked {}", lock.display()));
        }
    }
    reached
}

/// The state `up` leaves is 0700/0600 even under umask 000, and nobody
/// can read it or hold its locks; a tree an older vethctl left open (0755
/// and 0644) is closed up by the next command.
#[test]
fn state_is_root_only_and_an_older_open_tree_is_closed_up() {
    let t = TestTopology::new(&["a", "b"]);
    let mut up = Command::new(vethctl_bin());
    up.args(["up", "--topology"]).arg(&t.file);
    // SAFETY: umask is async-signal-safe; the child then only execs.
    unsafe {
        use std::os::unix::process::CommandExt;
        up.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    let out = up.output().expect("running vethctl up");
    assert!(
        out.status.success(),
        "up: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The network lock is taken (and its file made) by what changes
    // endpoints: mode set.
    let out = t.vethctl(&["mode", "set", "routed"]);
    assert!(
        out.status.success(),
        "mode set: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert_eq!(
        open_state(t.name()),
        Vec::new(),
        "state made under umask 000"
    );
    assert_eq!(nobody_reaches(t.name()), Vec::<String>::new());

    // As an older vethctl left it.
    let root = Path::new(STATE_ROOT);
    let set = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    for (path, _, dir) in modes_below(&root.join(t.name())) {
        set(&path, if dir { 0o755 } else { 0o644 });
    }
    set(&root.join(".locks").join(t.name()), 0o644);
    set(&root.join(".locks"), 0o755);
    set(root, 0o755);
    let reached = nobody_reaches(t.name());
    assert!(
        reached.len() == 2,
        "the test itself: nobody reaches an open tree: {reached:?}"
    );
    let out = t.vethctl(&["status", "--json"]);
    assert!(
        out.status.success(),
        "status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(open_state(t.name()), Vec::new(), "closed up by status");
    assert_eq!(nobody_reaches(t.name()), Vec::<String>::new());
}

/// Without privileges, each command says what it needs and stops: no
/// half-working `status`, no agent logging permission errors forever; the
/// plugin answers with a CNI error (code 101; 50 for STATUS).
#[test]
fn commands_without_privileges_say_what_they_need() {
    let t = TestTopology::new(&["a"]);
    t.up();
    let expect = [
        (
            vec!["status"],
            "vethctl status needs root, or CAP_SYS_ADMIN",
        ),
        (
            vec!["stats"],
            "vethctl stats needs uid 0 or CAP_DAC_OVERRIDE",
        ),
        (
            vec!["down", "-n", t.name()],
            "vethctl down needs root, or CAP_NET_ADMIN + CAP_SYS_ADMIN",
        ),
        (
            vec!["agent", "--listen", "127.0.0.1:0"],
            "vethctl agent needs uid 0 or CAP_DAC_OVERRIDE",
        ),
    ];
    for (args, message) in expect {
        let started = Instant::now();
        let mut child = ChildGuard::spawn(
            "vethctl as nobody",
            Command::new("setpriv")
                .args(as_nobody(""))
                .arg(vethctl_bin())
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        );
        let stderr = lines_of(child.take_stderr());
        let status = child.wait_timeout(Duration::from_secs(10));
        // Everything it wrote, up to the end of its stderr.
        let mut said = Vec::new();
        while let Ok(line) = stderr.recv_timeout(Duration::from_secs(5)) {
            said.push(line);
        }
        assert!(
            status.is_some_and(|s| s.code() == Some(1)),
            "vethctl {args:?} as nobody: {status:?} after {:?}; said {said:?}",
            started.elapsed()
        );
        assert!(
            said.len() == 1 && said[0].contains(message) && said[0].contains("lacks"),
            "vethctl {args:?} as nobody said {said:?}"
        );
    }
    // The topology is untouched (down was refused).
    assert!(t.status()["pods"].as_array().is_some_and(|p| p.len() == 1));

    let config = format!(
        r#"{{"cniVersion":"1.1.0","name":"{}","type":"veth-cni","ipam":{{"type":"veth-builtin","subnet":"{}"}}}}"#,
        t.name(),
        t.topology.pod_cidr
    );
    for (command, code) in [("ADD", 101), ("DEL", 101), ("STATUS", 50)] {
        let mut plugin = Command::new("setpriv");
        plugin
            .args(as_nobody(""))
            .arg(plugin_bin())
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", "sechost1")
            .env("CNI_NETNS", "/run/netns/does-not-matter")
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/nonexistent")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = plugin.spawn().expect("running veth-cni");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(config.as_bytes())
            .expect("writing the configuration");
        let out = child.wait_with_output().expect("veth-cni output");
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{command}: {e}: {}", String::from_utf8_lossy(&out.stdout)));
        assert_eq!(answer["code"], code, "{command}: {answer}");
        let msg = answer["msg"].as_str().unwrap_or_default();
        assert!(
            msg.contains("needs root, or CAP_NET_ADMIN + CAP_SYS_ADMIN"),
            "{command}: {answer}"
        );
    }
}

/// An agent and its stderr, killed when dropped.
struct RunningAgent {
    addr: SocketAddr,
    child: ChildGuard,
    stderr: Receiver<String>,
    _lock_dir: TempDir,
}

impl RunningAgent {
    /// `prefix` (e.g. setpriv and its arguments) runs `vethctl agent`.
    fn start(prefix: &[String]) -> RunningAgent {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let mut command = match prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(vethctl_bin());
                c
            }
            None => Command::new(vethctl_bin()),
        };
        let lock_dir = TempDir::new("vethctl-agent-lock");
        command
            .args(["agent", "--listen", &addr.to_string()])
            .args(["--lock-file", &Agent::lock_file_in(&lock_dir)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = ChildGuard::spawn("vethctl agent", &mut command);
        let stderr = lines_of(child.take_stderr());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match stderr.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.contains("serving") => break,
                Ok(line) => eprintln!("agent: {line}"),
                Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(e) => panic!("agent on {addr} did not start: {e}"),
            }
        }
        RunningAgent {
            addr,
            child,
            stderr,
            _lock_dir: lock_dir,
        }
    }

    /// Lines the agent wrote since the last call.
    fn said(&self) -> Vec<String> {
        self.stderr.try_iter().collect()
    }

    /// CPU time (user + system) the agent has used.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("the agent's /proc stat");
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .expect("stat has a command")
            .1
            .split_whitespace()
            .collect();
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        let used: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_millis(used * 1000 / ticks)
    }

    /// A line of /proc/<pid>/status, e.g. "VmRSS" or "CapEff".
    fn status_field(&self, field: &str) -> String {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the agent's /proc status")
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!("{field}:"))
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_else(|| panic!("{field} in /proc status"))
    }

    fn rss_kib(&self) -> u64 {
        self.status_field("VmRSS")
            .trim_end_matches("kB")
            .trim()
            .parse()
            .expect("VmRSS in kB")
    }
}

/// The `ready` flag of the pod slot whose host veth is `ifindex`.
fn ready_in_map(t: &TestTopology, ifindex: u32) -> Option<u64> {
    bpftool_map_dump(&Pins::new(t.name()).map("PODS"))
        .iter()
        .find(|e| e["value"]["host_ifindex"] == ifindex)
        .and_then(|e| e["value"]["ready"].as_u64())
}

fn ifindex(name: &str) -> u32 {
    std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
        .expect("host veth ifindex")
        .trim()
        .parse()
        .expect("an ifindex")
}

/// The agent as nobody with CAP_DAC_OVERRIDE alone serves real counters
/// and follows link events: b's veth going down clears b's ready flag in
/// the maps, and coming up sets it again.
#[test]
fn agent_runs_as_nobody_with_only_dac_override() {
    let t = TestTopology::new(&["a", "b"]);
    t.up();
    let agent = RunningAgent::start(
        &std::iter::once("setpriv".to_string())
            .chain(as_nobody("+dac_override"))
            .collect::<Vec<_>>(),
    );
    assert_eq!(
        agent.status_field("Uid").split_whitespace().next(),
        Some("65534")
    );
    assert_eq!(
        u64::from_str_radix(&agent.status_field("CapEff"), 16),
        Ok(1 << 1)
    );

    let redirected = |text: &str| {
        metric_value(
            text,
            "vethctl_pair_packets_total",
            &[
                ("topology", t.name()),
                ("pod", "a"),
                ("direction", "from_pod"),
                ("verdict", "redirected"),
            ],
        )
        .unwrap_or_else(|| panic!("a's redirect counter in {text}"))
    };
    let scrape = || {
        let (code, body) = http_get(agent.addr, "/metrics").expect("scraping the agent");
        assert_eq!(code, 200, "{body}");
        body
    };
    let before = redirected(&scrape());
    let (a, b) = (t.pod("a").clone(), t.pod("b").clone());
    assert_eq!(ping(&a.netns, b.ipv4, 5), 5, "a -> b");
    let after = redirected(&scrape());
    assert_eq!(
        after - before,
        5.0,
        "5 echo requests redirected, as the agent reads them"
    );

    let b_ifindex = ifindex(&b.host_veth);
    assert_eq!(ready_in_map(&t, b_ifindex), Some(1));
    let link = |state: &str| {
        let out = Command::new("ip")
            .args(["-n", &b.netns, "link", "set", &b.ifname, state])
            .output()
            .expect("ip link set");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    link("down");
    wait_until(Duration::from_secs(5), "b not ready in the maps", || {
        ready_in_map(&t, b_ifindex) == Some(0)
    });
    link("up");
    wait_until(Duration::from_secs(5), "b ready again in the maps", || {
        ready_in_map(&t, b_ifindex) == Some(1)
    });
    let said = agent.said();
    assert!(
        !said
            .iter()
            .any(|l| l.contains("ermission") || l.contains("EPERM")),
        "the agent met a refusal: {said:?}"
    );
}

/// Clients that connect and send nothing, or one byte every 200 ms,
/// renewed as the agent sheds them, `clients` at a time, until `stop`.
fn flood(
    addr: SocketAddr,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut open: VecDeque<(TcpStream, bool)> = VecDeque::new();
        let mut made = 0;
        let mut last_drip = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if open.len() >= clients {
                open.pop_front();
            }
            if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                let _ = s.set_nonblocking(true);
                open.push_back((s, made % 2 == 1));
                made += 1;
            }
            if last_drip.elapsed() >= Duration::from_millis(200) {
                last_drip = Instant::now();
                for (s, slow) in open.iter_mut() {
                    if *slow {
                        let _ = s.write(b"G");
                    }
                }
            }
            // About 2,000 new connections a second.
            std::thread::sleep(Duration::from_micros(500));
        }
        made
    })
}

/// Scrapes every 200 ms for `duration`; returns the slowest answer and
/// the failures.
fn scrape_during(addr: SocketAddr, duration: Duration) -> (Duration, Vec<String>) {
    let end = Instant::now() + duration;
    let mut slowest = Duration::ZERO;
    let mut failures = Vec::new();
    while Instant::now() < end {
        let started = Instant::now();
        match http_get(addr, "/metrics") {
            Ok((200, body)) if body.contains("vethctl_pods") => {}
            Ok((code, body)) => failures.push(format!("{code}: {}", &body[..body.len().min(200)])),
            Err(e) => failures.push(e.to_string()),
        }
        slowest = slowest.max(started.elapsed());
        std::thread::sleep(Duration::from_millis(200));
    }
    (slowest, failures)
}

/// The slowest of a few scrapes with nothing else going on: what reading
/// every topology on this machine takes (other tests' too), which the
/// flood must not add more than a second to.
fn quiet_scrape_time(addr: SocketAddr) -> Duration {
    let (slowest, failures) = scrape_during(addr, Duration::from_secs(1));
    assert!(failures.is_empty(), "scrapes without a flood: {failures:?}");
    slowest
}

/// The agent's stderr, its CPU time and its RSS across `during`.
struct Footprint {
    cpu: Duration,
    rss_before: u64,
    rss_after: u64,
    said: Vec<String>,
}

fn footprint<T>(agent: &RunningAgent, during: impl FnOnce() -> T) -> (T, Footprint) {
    let _ = agent.said();
    let (cpu, rss_before) = (agent.cpu(), agent.rss_kib());
    let result = during();
    let footprint = Footprint {
        cpu: agent.cpu() - cpu,
        rss_before,
        rss_after: agent.rss_kib(),
        // The HTTP server's lines (the watcher's are about pods of other
        // tests on this machine), after the log line's time and level.
        said: agent
            .said()
            .into_iter()
            .filter(|l| {
                l.contains(" vethctl agent: accept") || l.contains(" vethctl agent: connection")
            })
            .collect(),
    };
    (result, footprint)
}

/// Raises this process's descriptor limit to its hard limit (the flood
/// holds thousands of sockets).
fn raise_nofile() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit on a struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
}

/// A few thousand idle and slow clients (far over the agent's cap) while a
/// scraper asks every 200 ms: no scrape takes a second longer than without
/// the flood, and the agent's CPU, memory and log stay small.
#[test]
fn agent_answers_scrapes_through_a_connection_flood() {
    raise_nofile();
    let t = TestTopology::new(&["a"]);
    t.up();
    let agent = RunningAgent::start(&[]);
    let quiet = quiet_scrape_time(agent.addr);
    let seconds = 8;
    let stop = Arc::new(AtomicBool::new(false));
    let ((made, (slowest, failures)), used) = footprint(&agent, || {
        let flooder = flood(agent.addr, 3000, stop.clone());
        std::thread::sleep(Duration::from_secs(1));
        let scrapes = scrape_during(agent.addr, Duration::from_secs(seconds));
        stop.store(true, Ordering::Relaxed);
        (flooder.join().expect("the flood"), scrapes)
    });
    let summary = format!(
        "{made} flood connections; slowest scrape {slowest:?} (without the flood {quiet:?}); \
         failures {failures:?}; agent CPU {:?} in {}s; RSS {} -> {} KiB; {} log lines: {:?}",
        used.cpu,
        seconds + 1,
        used.rss_before,
        used.rss_after,
        used.said.len(),
        used.said
    );
    eprintln!("{summary}");
    assert!(made > 3000, "the flood got going: {summary}");
    assert!(
        failures.is_empty() && slowest < quiet + Duration::from_secs(1),
        "{summary}"
    );
    // The flood makes connections as fast as the machine lets it (11k-12k
    // in 9 s here), so the agent's total CPU follows the flood's rate;
    // what must stay small is its cost per connection (0.40 ms here).
    assert!(
        used.cpu < Duration::from_micros(500) * made as u32,
        "CPU: {summary}"
    );
    assert!(
        used.rss_after < used.rss_before + 32 * 1024,
        "RSS: {summary}"
    );
    assert!(used.said.len() <= 10, "log: {summary}");
}

/// With its descriptor limit cut below what it holds plus its connection
/// cap (half the limit), the agent's accept fails with EMFILE under a
/// flood: it backs off (little CPU) and logs a line now and then, and
/// answers scrapes again once the flood is gone and its limit restored.
#[test]
fn agent_backs_off_when_out_of_descriptors() {
    raise_nofile();
    let t = TestTopology::new(&["a"]);
    t.up();
    let agent = RunningAgent::start(&[]);
    let quiet = quiet_scrape_time(agent.addr);
    let pid = agent.child.id().to_string();
    let prlimit = |limit: &str| {
        let out = Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={limit}")])
            .output()
            .expect("running prlimit");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // The soft limit only: raising a hard limit again needs
    // CAP_SYS_RESOURCE.
    let was = Command::new("prlimit")
        .args(["--pid", &pid, "--nofile", "--output=SOFT", "--noheadings"])
        .output()
        .expect("running prlimit");
    let was = format!("{}:", String::from_utf8_lossy(&was.stdout).trim());
    prlimit("24:");
    let seconds = 6;
    let stop = Arc::new(AtomicBool::new(false));
    let (made, used) = footprint(&agent, || {
        let flooder = flood(agent.addr, 3000, stop.clone());
        std::thread::sleep(Duration::from_secs(seconds));
        stop.store(true, Ordering::Relaxed);
        flooder.join().expect("the flood")
    });
    let summary = format!(
        "{made} flood connections; agent CPU {:?} in {seconds}s; RSS {} -> {} KiB; {} log \
         lines: {:?}",
        used.cpu,
        used.rss_before,
        used.rss_after,
        used.said.len(),
        used.said
    );
    eprintln!("{summary}");
    assert!(
        used.said.iter().any(|l| l.contains("Too many open files")),
        "the test itself: EMFILE was reached: {summary}"
    );
    assert!(used.said.len() <= 10, "log: {summary}");
    assert!(
        used.cpu < Duration::from_secs(seconds) / 2,
        "CPU: {summary}"
    );
    prlimit(&was);
    let (slowest, failures) = scrape_during(agent.addr, Duration::from_secs(2));
    assert!(
        failures.is_empty() && slowest < quiet + Duration::from_secs(1),
        "after the flood: slowest {slowest:?} (before it {quiet:?}), {failures:?}"
    );
}
