//! What ships besides the binaries: the systemd unit of the agent, the
//! DaemonSet manifest and the node image it runs.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use veth_tests::{
    cni::CniNet,
    counter,
    daemonset::{self, Manifest, Node, PodmanRun},
    expect_success, free_port, http_get,
    runtime::{
        cni::{CniBinDir, CniConfDir},
        containerd::Containerd,
        cri::PodSpec,
        netns::expect_ping,
        podman::Podman,
        root_or_skip,
    },
    vethctl, vethctl_bin, wait_until, ChildGuard, TempDir,
};
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

/// With the drop-in of a cluster node (packaging/systemd/
/// vethctl-agent.service.d/cluster.conf) the unit verifies as cleanly,
/// and the agent it starts takes every flag the drop-in gives it.
#[test]
fn the_cluster_drop_in_verifies_and_names_real_flags() {
    let dir = TempDir::new("vethctl-unit-cluster");
    let bin = vethctl_bin();
    let bin = bin.to_str().unwrap();
    std::fs::write(
        dir.path().join("vethctl-agent.service"),
        unit().replace("/usr/local/bin/vethctl", bin),
    )
    .unwrap();
    let drop_in =
        std::fs::read_to_string(unit_path().with_file_name("vethctl-agent.service.d/cluster.conf"))
            .expect("packaging/systemd/vethctl-agent.service.d/cluster.conf");
    let drop_ins = dir.path().join("vethctl-agent.service.d");
    std::fs::create_dir(&drop_ins).unwrap();
    std::fs::write(
        drop_ins.join("cluster.conf"),
        drop_in.replace("/usr/local/bin/vethctl", bin),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("vethctl-agent.service"))
        .output()
        .expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.trim(), "", "warnings from systemd-analyze verify");
    let exec = values(&drop_in, "ExecStart");
    assert_eq!(exec[0], "", "the drop-in resets the unit's ExecStart first");
    let help = vethctl(&["agent", "--help"], &[], None);
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in exec[1].split_whitespace().filter(|w| w.starts_with("--")) {
        assert!(help.contains(flag), "`vethctl agent` has no {flag}");
    }
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

// ---------------------------------------------------------------------------
// The DaemonSet (packaging/kubernetes/vethctl.yaml) and the image.

fn manifest() -> Manifest {
    Manifest::load().expect("the DaemonSet manifest")
}

/// `--flag=VALUE` of a container's arguments.
fn flag(run: &PodmanRun, name: &str) -> String {
    let prefix = format!("{name}=");
    run.args
        .iter()
        .find_map(|a| a.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{}: no {name}=… argument: {:?}", run.container, run.args))
        .to_string()
}

/// The runs of the manifest on a node whose CNI dirs are elsewhere (the
/// translation itself touches nothing).
fn runs(manifest: &Manifest, node: &Node) -> (PodmanRun, PodmanRun) {
    let mut runs = daemonset::podman_runs(manifest, node).expect("translating the manifest");
    assert_eq!(runs.len(), 2, "one init container and the agent: {runs:?}");
    let agent = runs.pop().unwrap();
    let init = runs.pop().unwrap();
    assert_eq!(
        (init.container.as_str(), agent.container.as_str()),
        ("install-cni", "agent")
    );
    (init, agent)
}

/// A line of `vethctl --version` after `prefix` ("vethctl ", "commit: ").
fn version_field(prefix: &str) -> String {
    let out = Command::new(vethctl_bin())
        .arg("--version")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("`vethctl --version` has no {prefix:?} line"))
        .to_string()
}

/// The manifest against the image, the CLI and the systemd unit: every
/// field translates to podman; both containers run the image `cargo xtask
/// image` tags with vethctl's version; the agent reads the list the init
/// container writes, from the same host directory; the probes ask the
/// agent's listener for /healthz and /readyz; the agent gets the node's
/// paths the unit makes writable, at the same place.
#[test]
fn the_daemonset_agrees_with_the_image_the_cli_and_the_unit() {
    let manifest = manifest();
    let (init, agent) = runs(&manifest, &Node::default());
    let version = version_field("vethctl ");
    for run in [&init, &agent] {
        assert_eq!(run.image, format!("localhost/vethctl:{version}"));
    }
    assert_eq!(init.args[0], "install-cni");
    assert_eq!(agent.args[0], "agent");
    // What the init container writes is what the agent reads.
    let conf_dir = flag(&init, "--conf-dir");
    let conf_host = daemonset::host_path_of(&manifest, "install-cni", Path::new(&conf_dir));
    assert_eq!(conf_host.as_deref(), Some("/etc/cni/net.d"));
    let cni_conf = PathBuf::from(flag(&agent, "--cni-conf"));
    assert_eq!(
        cni_conf.file_name().unwrap(),
        "10-vethctl.conflist",
        "install-cni's default --conf-file"
    );
    let agent_conf_dir = cni_conf.parent().unwrap();
    assert_eq!(
        daemonset::host_path_of(&manifest, "agent", agent_conf_dir),
        conf_host
    );
    let bin_dir = flag(&init, "--bin-dir");
    assert_eq!(
        daemonset::host_path_of(&manifest, "install-cni", Path::new(&bin_dir)).as_deref(),
        Some("/opt/cni/bin")
    );
    // The probes: loopback (where the agent listens), its port, its paths.
    let listen: SocketAddr = flag(&agent, "--listen").parse().unwrap();
    let container = manifest.container("agent").unwrap();
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let (host, p, port) = daemonset::http_probe(container, probe).unwrap();
        assert_eq!(
            (host.as_str(), p.as_str(), port),
            ("127.0.0.1", path, listen.port()),
            "{probe}"
        );
        assert_eq!(
            listen.ip().to_string(),
            host,
            "{probe} asks where the agent listens"
        );
    }
    // The node's paths the systemd unit gives the agent, here too.
    let unit = unit();
    let mut node_paths: Vec<String> = values(&unit, "ReadWritePaths")
        .iter()
        .flat_map(|v| {
            v.split_whitespace()
                .map(|p| p.trim_start_matches('-').to_string())
        })
        .collect();
    node_paths.extend(
        values(&unit, "RuntimeDirectory")
            .iter()
            .map(|d| format!("/run/{d}")),
    );
    assert_eq!(node_paths.len(), 3, "{node_paths:?}");
    for path in &node_paths {
        assert_eq!(
            daemonset::host_path_of(&manifest, "agent", Path::new(path)).as_ref(),
            Some(path),
            "the agent mounts the node's {path} at {path}"
        );
    }
    assert!(agent.options.contains(&"--privileged".to_string()));
    for option in ["--network=host", "--pid=host"] {
        assert!(
            init.options.contains(&option.to_string())
                && agent.options.contains(&option.to_string())
        );
    }
}

/// The archive `cargo xtask image` writes (target/image/vethctl.oci.tar).
fn image_archive() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).expect("target directory");
    let archive = target.join("image/vethctl.oci.tar");
    assert!(
        archive.is_file(),
        "{} is missing: build the image first (`cargo xtask image`)",
        archive.display()
    );
    archive
}

/// Removes a file when dropped.
struct RemoveFile(PathBuf);

impl Drop for RemoveFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `podman run ARGV` of our podman, which must succeed: its stdout.
fn podman_run(podman: &Podman, options: &[&str], run: &PodmanRun) -> String {
    let mut args = vec![
        "run".to_string(),
        format!("--cgroup-parent={}", podman.cgroup_parent()),
    ];
    args.extend(options.iter().map(|o| o.to_string()));
    args.extend(run.argv());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    podman
        .podman(&args)
        .unwrap_or_else(|e| panic!("{} container: {e:#}", run.container))
}

/// Waits up to `timeout` for the agent's `path` to answer 200; its logs
/// on failure. `/readyz` covers every topology on the node: one of another
/// test running at the same time (or of another vethctl build, which this
/// one cannot read) may keep it at 503 here. That is accepted only when
/// every problem it names is another topology's, never `ours`.
fn expect_answer(podman: &Podman, name: &str, addr: SocketAddr, path: &str, ours: &str) {
    let timeout = Duration::from_secs(30);
    let deadline = Instant::now() + timeout;
    loop {
        let answer = http_get(addr, path);
        match &answer {
            Ok((200, _)) => return,
            Ok((503, body)) if Instant::now() > deadline && only_others(body, ours) => {
                eprintln!("{path}: 503 for other topologies on this machine only:\n{body}");
                return;
            }
            _ if Instant::now() > deadline => {
                let logs = podman.output(&["logs", name]);
                panic!(
                    "{path} of the agent in the image did not answer 200 within {timeout:?} \
                     ({answer:?}); its log:\n{}{}",
                    String::from_utf8_lossy(&logs.stdout),
                    String::from_utf8_lossy(&logs.stderr)
                );
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Whether each problem line of a /readyz body names a topology or CNI
/// network that is not `ours`.
fn only_others(body: &str, ours: &str) -> bool {
    let quoted = format!("{ours:?}");
    body.lines().skip(1).all(|line| {
        let named = ["topology \"", "CNI network \""]
            .iter()
            .any(|p| line.starts_with(p));
        named && !line.contains(&quoted)
    })
}

/// The image run as the DaemonSet runs it, on a node whose runtime is a
/// private containerd: its init container installs veth-cni, loopback,
/// portmap and bandwidth and the list into the runtime's (test-private)
/// CNI directories; the agent, from the image, brings the network up and
/// answers /healthz and /readyz; two pods containerd starts over CRI get
/// networked by the installed plugin and ping each other through the
/// redirect, and the agent in the container counts them; then the
/// uninstall from the image as docs/install.md has it: `uninstall-cni` takes only our
/// plugin and list, `down` the whole network. The podman
/// arguments come from the manifest; what the test changes is what an
/// operator would (the ConfigMap's network and range, where the CNI
/// directories are) plus the agent's port and lock file, so that it runs
/// beside a node's own agent.
#[test]
fn the_image_runs_as_the_daemonset_and_networks_a_containerd_pod() {
    if !root_or_skip("the_image_runs_as_the_daemonset_and_networks_a_containerd_pod") {
        return;
    }
    let archive = image_archive();
    // Declared first, dropped last: `vethctl down` and the check that
    // nothing of the network is left, once pods and agent are gone.
    let net = CniNet::builtin("tc");
    let lock = RemoveFile(PathBuf::from(format!(
        "/run/vethctl/{}.agent.lock",
        net.name
    )));
    let bin = CniBinDir::empty();
    let conf = CniConfDir::new();
    let manifest = manifest();
    let node = Node {
        config: [
            ("network", &net.name),
            ("subnet", &net.block.cidr),
            ("mode", &net.mode),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        host_paths: [
            ("/opt/cni/bin".to_string(), bin.path().to_path_buf()),
            ("/etc/cni/net.d".to_string(), conf.path().to_path_buf()),
        ]
        .into(),
    };
    let (init, mut agent) = runs(&manifest, &node);
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    agent.replace_arg(
        &format!("--listen={}", flag(&agent, "--listen")),
        &format!("--listen={addr}"),
    );
    agent.args.push(format!("--lock-file={}", lock.0.display()));
    daemonset::prepare_host_paths(&manifest, &node).expect("the host paths");

    // Its own storage: the image goes with it.
    let podman = Podman::new(&bin, &conf).expect("podman");
    podman
        .podman(&["load", "-q", "-i", archive.to_str().unwrap()])
        .expect("podman load of the image archive");
    let revision = podman
        .podman(&[
            "image",
            "inspect",
            "--format",
            "{{index .Labels \"org.opencontainers.image.revision\"}}",
            &agent.image,
        ])
        .expect("the manifest's image is in the archive");
    assert_eq!(
        revision.trim(),
        version_field("commit: "),
        "the image is of another commit than this build: `cargo xtask image` rebuilds it"
    );

    let init_name = format!("{}-install-cni", net.name);
    let out = podman_run(&podman, &["--rm", &format!("--name={init_name}")], &init);
    assert!(out.contains("installed"), "install-cni: {out}");
    for plugin in ["veth-cni", "loopback", "portmap", "bandwidth"] {
        let file = bin.path().join(plugin);
        assert!(
            file.is_file() && !file.is_symlink(),
            "{plugin} copied into the bin dir"
        );
    }
    let list: serde_json::Value = serde_json::from_slice(
        &std::fs::read(conf.path().join("10-vethctl.conflist")).expect("the list written"),
    )
    .unwrap();
    assert_eq!(list["name"], net.name.as_str());

    let agent_name = format!("{}-agent", net.name);
    podman_run(&podman, &["-d", &format!("--name={agent_name}")], &agent);
    expect_answer(&podman, &agent_name, addr, "/healthz", &net.name);
    expect_answer(&podman, &agent_name, addr, "/readyz", &net.name);
    let status = net.vethctl_status();
    assert_eq!(
        status["mode"], "tc",
        "the agent in the image brought the network up: {status}"
    );

    let containerd = Containerd::start(&bin, &conf).expect("containerd on the installed CNI");
    // What docs/install.md has a node do with the archive: containerd knows it
    // by the manifest's name.
    let import = containerd
        .ctr()
        .args(["images", "import", archive.to_str().unwrap()])
        .output()
        .unwrap();
    expect_success(&import, "ctr images import");
    let images = containerd
        .ctr()
        .args(["images", "ls", "-q"])
        .output()
        .unwrap();
    let images = String::from_utf8_lossy(&images.stdout).into_owned();
    assert!(images.lines().any(|l| l == agent.image), "{images}");
    let a = containerd
        .run_pod(&PodSpec::new("a").namespace("web"))
        .expect("pod a");
    let b = containerd
        .run_pod(&PodSpec::new("b").namespace("web"))
        .expect("pod b");
    expect_ping(a.netns(), b.ip(), 3);
    expect_ping(b.netns(), a.ip(), 3);
    let stats = vethctl(&["stats", "-n", &net.name, "--json"], &[], None);
    expect_success(&stats, "vethctl stats");
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    let pairs = stats["topologies"][0]["pairs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(pairs.len(), 2, "{stats}");
    for pair in &pairs {
        assert!(
            counter(pair, "from_pod", "redirected_packets") >= 6,
            "pings redirected: {pair}"
        );
    }
    let (code, metrics) = http_get(addr, "/metrics").expect("the agent's metrics");
    assert_eq!(code, 200);
    for pod in ["a", "b"] {
        let series = format!("topology=\"{}\",namespace=\"web\",pod=\"{pod}\"", net.name);
        assert!(
            metrics.contains(&series),
            "the agent in the image counts pod {pod}: {metrics}"
        );
    }
    containerd.delete_pod(&a.id).expect("removing a");
    containerd.delete_pod(&b.id).expect("removing b");
    assert_eq!(containerd.leftovers(), Vec::<String>::new());
    drop(containerd);
    podman.rm_f(&agent_name).expect("stopping the agent");

    // Uninstall as docs/install.md says: the init container's mounts, and the
    // network's records (pods left?) from the node's /run/vethctl.
    let mut uninstall = init;
    uninstall.args = vec![
        "uninstall-cni".into(),
        format!("--bin-dir={}", flag(&uninstall, "--bin-dir")),
        format!("--conf-dir={}", flag(&uninstall, "--conf-dir")),
    ];
    uninstall
        .options
        .push("--volume=/run/vethctl:/run/vethctl".into());
    let out = podman_run(&podman, &["--rm"], &uninstall);
    assert!(out.contains("removed"), "uninstall-cni: {out}");
    let mut left: Vec<String> = std::fs::read_dir(bin.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["bandwidth", "loopback", "portmap"],
        "the reference plugins stay"
    );
    assert!(!conf.path().join("10-vethctl.conflist").exists());
    // And the network goes with `down` run as the agent runs; the network's
    // guard then finds nothing of it left (pins, links, state, addresses).
    let mut down = agent;
    down.args = vec!["down".into(), "-n".into(), net.name.clone()];
    let out = podman_run(&podman, &["--rm"], &down);
    assert!(out.contains("is down"), "vethctl down: {out}");
    assert!(!Path::new("/sys/fs/bpf/vethctl").join(&net.name).exists());
    assert_eq!(podman.containers().unwrap(), Vec::<String>::new());
}
