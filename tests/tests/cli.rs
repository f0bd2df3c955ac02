//! The command line as an operator meets it: the kernel check, `--version`,
//! `status --check`, `uninstall-cni`, completions and the man page.

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
