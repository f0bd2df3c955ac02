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
