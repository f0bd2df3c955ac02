//! The command line as an operator meets it: the kernel check, `--version`,
//! `status --check`, tables within 80 columns, `uninstall-cni`, completions
//! and the man page.

use std::process::Command;

use veth_tests::{require_root, vethctl_bin, TestTopology};

/// `setarch --uname-2.6` makes the real kernel report a 2.6 release to the
/// process (the UNAME26 personality): vethctl refuses before doing anything,
/// naming the hooks the kernel lacks, and a fresh `up` leaves nothing.
#[test]
fn an_old_kernel_is_refused_with_the_hooks_it_lacks() {
    require_root();
    let t = TestTopology::new(&["a", "b"]);
    let arch = String::from_utf8(Command::new("uname").arg("-m").output().unwrap().stdout).unwrap();
    let out = Command::new("setarch")
        .args([arch.trim(), "--uname-2.6"])
        .arg(vethctl_bin())
        .args(["up", "-t"])
        .arg(&t.file)
        .output()
        .expect("running setarch");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("this kernel is Linux 2.6."), "{stderr}");
    assert!(stderr.contains("needs Linux 6.6 or newer"), "{stderr}");
    assert!(stderr.contains("TCX links"), "{stderr}");
    assert!(
        stderr.contains("bpf_redirect_peer") && stderr.contains("needs 5.10"),
        "{stderr}"
    );
    assert_eq!(t.leftovers(), Vec::<String>::new());
    // Commands that do not touch the kernel still run there.
    let out = Command::new("setarch")
        .args([arch.trim(), "--uname-2.6"])
        .arg(vethctl_bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
}

/// `--version` names the commit HEAD is at and the SHA-256 of the very
/// object vethctl loads.
#[test]
fn version_names_commit_object_and_minimum_kernel() {
    use sha2::{Digest, Sha256};
    let out = Command::new(vethctl_bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let head = String::from_utf8(head.stdout).unwrap();
    assert!(
        text.contains(&format!("\ncommit: {}\n", head.trim())),
        "{text}"
    );
    let sha: String = Sha256::digest(veth_userspace::dataplane::object())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        text.contains(&format!("\nbpf object: sha256 {}\n", &sha[..12])),
        "{text}"
    );
    assert!(text.ends_with("minimum kernel: Linux 6.6\n"), "{text}");
    let short = Command::new(vethctl_bin()).arg("-V").output().unwrap();
    let short = String::from_utf8(short.stdout).unwrap();
    assert_eq!(
        short,
        format!(
            "vethctl {} (commit {})\n",
            veth_userspace::version::VERSION,
            head.trim()
        )
    );
}

fn text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `status` ends with a count by state; `--check` passes while every pod is
/// ready and fails with status 5, naming the pod, once a veth goes down.
#[test]
fn status_summarises_and_check_fails_on_a_pod_not_ready() {
    require_root();
    let t = TestTopology::new(&["a", "b"]);
    t.up();
    let out = t.vethctl(&["status", "--check"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.ends_with("\n2 pods: 2 ready\n"), "{stdout}");

    let veth = t.pod("a").host_veth.clone();
    veth_tests::run("ip", &["link", "set", "dev", &veth, "down"]);
    let out = t.vethctl(&["status", "--check"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(5), "{stdout}{stderr}");
    assert!(stdout.ends_with("\n2 pods: 1 ready, 1 down\n"), "{stdout}");
    assert!(
        stderr.contains(&format!("1 pod not ready: {}/a (down)", t.name())),
        "{stderr}"
    );
    // Without --check the same state is reported, not failed.
    assert!(t.vethctl(&["status"]).status.success());
    // JSON stays JSON; --check still decides the status.
    let out = t.vethctl(&["status", "--json", "--check"]);
    assert_eq!(out.status.code(), Some(5));
    serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("JSON");
}

/// One pod is "1 pod", not "1 pods".
#[test]
fn one_pod_is_singular() {
    require_root();
    let t = TestTopology::new(&["solo"]);
    let out = t.vethctl(&["up"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains(" is up: 1 pod, mode tc"), "{stdout}");
    let (stdout, _) = text(&t.vethctl(&["status"]));
    assert!(stdout.ends_with("\n1 pod: 1 ready\n"), "{stdout}");
}

fn uninstall(bin: &std::path::Path, conf: &std::path::Path) -> std::process::Output {
    let (bin, conf) = (bin.to_str().unwrap(), conf.to_str().unwrap());
    veth_tests::vethctl(
        &["uninstall-cni", "--bin-dir", bin, "--conf-dir", conf],
        &[],
        None,
    )
}

/// `uninstall-cni` removes what `install-cni` wrote, but not while the
/// network has a pod (its DEL needs the plugin), and never a file that only
/// has the name: nothing at all is removed then.
#[test]
fn uninstall_cni_removes_only_its_own_files_and_waits_for_pods() {
    use veth_tests::cni::{plugin_bin, CniNet, Pod};
    let net = CniNet::builtin("tc");
    let (bin, conf) = (
        veth_tests::TempDir::new("uninstall-bin"),
        veth_tests::TempDir::new("uninstall-conf"),
    );
    let plugin_file = bin.path().join("veth-cni");
    let list_file = conf.path().join("10-vethctl.conflist");
    let install = veth_tests::vethctl(
        &[
            "install-cni",
            "--name",
            &net.name,
            "--subnet",
            &net.block.cidr.to_string(),
            "--chain",
            "",
            "--plugin",
            plugin_bin().to_str().unwrap(),
            "--bin-dir",
            bin.path().to_str().unwrap(),
            "--conf-dir",
            conf.path().to_str().unwrap(),
        ],
        &[],
        None,
    );
    veth_tests::expect_success(&install, "install-cni");

    let pod = Pod::new();
    let result = net.add(&pod);
    let out = uninstall(bin.path(), conf.path());
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("still has 1 pod: drain the node first"),
        "{stderr}"
    );
    assert!(plugin_file.exists() && list_file.exists());

    net.del(&pod, Some(&result));
    let out = uninstall(bin.path(), conf.path());
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.starts_with("removed "), "{stdout}");
    assert!(!plugin_file.exists() && !list_file.exists());
    // Again: nothing there, nothing to do.
    assert!(uninstall(bin.path(), conf.path()).status.success());

    // Files that merely carry the names stay, both of them.
    std::fs::write(&plugin_file, "#!/bin/sh\nexec /usr/lib/cni/bridge\n").unwrap();
    std::fs::write(
        &list_file,
        "{\"name\": \"x\", \"plugins\": [{\"type\": \"bridge\"}]}\n",
    )
    .unwrap();
    let out = uninstall(bin.path(), conf.path());
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("was not written by `vethctl install-cni`"),
        "{stderr}"
    );
    assert!(plugin_file.exists() && list_file.exists());
    // Our plugin beside a foreign list: still nothing goes.
    std::fs::copy(plugin_bin(), &plugin_file).unwrap();
    assert_eq!(uninstall(bin.path(), conf.path()).status.code(), Some(3));
    assert!(plugin_file.exists() && list_file.exists());
}

/// Completion scripts come from the clap definitions: every command is in
/// them, and bash and zsh parse theirs.
#[test]
fn completions_cover_every_command_and_parse() {
    for (shell, interpreter) in [("bash", "bash"), ("zsh", "zsh"), ("fish", "fish")] {
        let out = Command::new(vethctl_bin())
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8(out.stdout).unwrap();
        for command in ["up", "status", "uninstall-cni", "completions", "man"] {
            assert!(script.contains(command), "{shell}: {command}");
        }
        if Command::new("sh")
            .args(["-c", &format!("command -v {interpreter}")])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            let dir = veth_tests::TempDir::new("vethctl-completions");
            let file = dir.path().join(shell);
            std::fs::write(&file, &script).unwrap();
            let check = Command::new(interpreter)
                .arg("-n")
                .arg(&file)
                .output()
                .unwrap();
            assert!(
                check.status.success(),
                "{shell}: {}",
                String::from_utf8_lossy(&check.stderr)
            );
        }
    }
    let out = Command::new(vethctl_bin())
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

/// The man page documents every subcommand and option, and man renders it.
#[test]
fn the_man_page_documents_every_command() {
    let out = Command::new(vethctl_bin()).arg("man").output().unwrap();
    assert!(out.status.success());
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.starts_with(".ie"), "roff");
    for section in [
        "VETHCTL UP",
        "VETHCTL STATUS",
        "VETHCTL UNINSTALL-CNI",
        "VETHCTL AGENT",
    ] {
        assert!(page.contains(&format!(".SH \"{section}\"")), "{section}");
    }
    assert!(page.contains("\\-\\-check"), "status --check is documented");
    let has_man = Command::new("sh").args(["-c", "command -v man"]).output();
    if has_man.is_ok_and(|o| o.status.success()) {
        let dir = veth_tests::TempDir::new("vethctl-man");
        let file = dir.path().join("vethctl.1");
        std::fs::write(&file, &page).unwrap();
        let shown = Command::new("man")
            .arg("-l")
            .arg(&file)
            .env("MANWIDTH", "80")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&shown.stdout);
        assert!(
            shown.status.success() && text.contains("VETHCTL UNINSTALL-CNI"),
            "{text}"
        );
    }
}

/// `stats --watch` into a pipe writes plain tables one after another, with
/// no clear-screen codes.
#[test]
fn watch_into_a_pipe_is_plain_text() {
    require_root();
    let t = TestTopology::new(&["a", "b"]);
    t.up();
    let out = t.vethctl(&["stats", "--watch", "--interval", "0.1", "--count", "2"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(!stdout.contains('\x1b'), "{stdout:?}");
    assert_eq!(stdout.matches("TOPOLOGY").count(), 2, "{stdout}");
    assert!(
        stdout.contains("\n\nTOPOLOGY") || stdout.contains("\n\n"),
        "{stdout}"
    );
}

/// `status --json` has both families of the network: pod ranges and node
/// addresses; an IPv4-only topology has `null` for IPv6.
#[test]
fn status_json_has_both_families() {
    require_root();
    let t = TestTopology::dual_stack("tc", &["a"]);
    t.up();
    let top = &t.status();
    let (cidr6, node6) = (
        t.topology.pod_cidr6.expect("dual stack").to_string(),
        t.topology.host_address6.expect("dual stack").to_string(),
    );
    assert_eq!(top["pod_cidr6"], cidr6.as_str(), "{top}");
    assert_eq!(top["host_address6"], node6.as_str(), "{top}");
    for output in ["table", "wide"] {
        let (table, _) = text(&t.vethctl(&["status", "-o", output]));
        assert!(table.contains(&format!(" {cidr6}")), "{table}");
        assert!(table.contains(&format!(" {node6} (on lo)")), "{table}");
    }

    let v4 = TestTopology::new(&["b"]);
    v4.up();
    let top = &v4.status();
    assert!(
        top["pod_cidr6"].is_null() && top["host_address6"].is_null(),
        "{top}"
    );
}

/// `plan --json` lists the steps of a fresh `up` with their kind, fields
/// and text, and none once the topology is up.
#[test]
fn plan_json_lists_steps_and_none_after_up() {
    require_root();
    let t = TestTopology::new(&["a", "b"]);
    let out = t.vethctl(&["plan", "--json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let plan: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(plan["topology"], t.name());
    assert_eq!(plan["mode"], "tc");
    let steps = plan["steps"].as_array().unwrap();
    let veth = steps
        .iter()
        .find(|s| s["step"] == "create_veth" && s["pod"] == "a")
        .unwrap_or_else(|| panic!("no create_veth for a: {stdout}"));
    assert_eq!(veth["host_veth"], t.pod("a").host_veth.as_str());
    assert!(veth["text"].as_str().unwrap().contains("a"), "{veth}");
    assert!(
        steps.iter().any(|s| s["step"] == "load_programs"),
        "{stdout}"
    );
    // The text form lists the same steps.
    let (table, _) = text(&t.vethctl(&["plan"]));
    assert_eq!(table.lines().count(), steps.len() + 1, "{table}");
    t.up();
    let (stdout, _) = text(&t.vethctl(&["plan", "--json"]));
    let plan: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let kinds: Vec<&str> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["step"].as_str())
        .collect();
    assert_eq!(kinds, ["enable_forwarding", "sync_dataplane"], "{stdout}");
}

/// The default tables of `status`, `stats` and `stats --watch` fit 80
/// columns for a dual-stack topology of three pods with the longest names
/// it allows and traffic counted; `-o wide` has the columns left out, and
/// `-o json` is `--json`.
#[test]
fn tables_fit_80_columns_and_wide_has_the_rest() {
    require_root();
    let t = TestTopology::dual_stack("tc", &["gateway", "backend", "payment"]);
    t.up();
    let (a, b) = (t.pod("gateway"), t.pod("payment"));
    assert_eq!(veth_tests::ping(&a.netns, b.ipv4, 2), 2);
    assert_eq!(
        veth_tests::ping(&a.netns, b.ipv6.expect("dual stack"), 2),
        2
    );
    let shown = |args: &[&str]| {
        let out = t.vethctl(args);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{args:?}: {stderr}");
        stdout
    };
    let watch = ["stats", "--watch", "--interval", "0.1", "--count", "1"];
    for args in [&["status"][..], &["stats"], &watch] {
        let table = shown(args);
        let widest = table.lines().map(|l| l.chars().count()).max().unwrap_or(0);
        assert!(widest <= 80, "{args:?} is {widest} columns:\n{table}");
        assert!(table.contains("payment"), "{args:?}:\n{table}");
    }
    let wide = |command: &[&str], columns: &[&str]| {
        let args: Vec<&str> = command.iter().chain(&["-o", "wide"]).copied().collect();
        let table = shown(&args);
        for column in columns {
            assert!(table.contains(column), "{args:?} lacks {column}:\n{table}");
        }
        let (fit, _) = text(&t.vethctl(command));
        assert!(!fit.contains(columns[0]), "{command:?}:\n{fit}");
    };
    wide(
        &["status"],
        &["POD MAC", "NETNS", "HOST SIDE", "PROGRAMS", &a.host_veth],
    );
    wide(&["stats"], &["REDIRECTED BYTES", "HOST VETH", &a.host_veth]);
    wide(&watch, &["REDIRECTED PKT/S", "HOST VETH", &a.host_veth]);
    let json: serde_json::Value = serde_json::from_str(&shown(&["status", "-o", "json"])).unwrap();
    assert_eq!(json["topologies"][0]["pods"].as_array().unwrap().len(), 3);
    let both = t.vethctl(&["stats", "-o", "wide", "--json"]);
    assert_eq!(both.status.code(), Some(2), "-o and --json conflict");
}
