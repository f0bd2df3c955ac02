//! `up` and `down` are idempotent and survive crashes.

use veth_tests::{counter, expect_success, ping, vethctl, TestTopology};
use veth_userspace::apply::CRASH_AFTER_STEPS_ENV;

#[test]
fn up_twice_and_down_twice_leave_nothing_and_keep_counters() {
    let mut t = TestTopology::new(&["a", "b"]);
    t.up();
    let (a, b) = (t.pod("a").clone(), t.pod("b").clone());
    assert_eq!(ping(&a.netns, b.ipv4, 5), 5);
    let first = counter(&t.stats()["a"], "from_pod", "redirected_packets");
    assert!(first >= 5);

    t.up();
    assert_eq!(
        ping(&a.netns, b.ipv4, 5),
        5,
        "still forwarding after a second up"
    );
    let second = counter(&t.stats()["a"], "from_pod", "redirected_packets");
    assert!(
        second >= first + 5,
        "counters survive up: {first} then {second}"
    );

    t.down();
    assert_eq!(t.leftovers(), Vec::<String>::new());
    t.down();
    assert_eq!(t.leftovers(), Vec::<String>::new());
    t.keep_on_drop();
}

/// A crash at any point of `up` is cleaned by `down`, and finished by `up`.
#[test]
fn crash_during_up_is_cleaned_by_down_or_finished_by_up() {
    let mut t = TestTopology::new(&["a", "b"]);
    // Plan of a fresh up: address, (netns, veth, configure) x2, dataplane.
    for crash_after in 1..=7 {
        let n = crash_after.to_string();
        let out = vethctl(&["up"], &[(CRASH_AFTER_STEPS_ENV, &n)], Some(&t.file));
        assert!(
            !out.status.success(),
            "up with a crash after {n} steps must fail"
        );

        if crash_after % 2 == 0 {
            expect_success(&vethctl(&["down"], &[], Some(&t.file)), "down after crash");
            assert_eq!(t.leftovers(), Vec::<String>::new(), "crash after {n} steps");
        } else {
            t.up();
            let (a, b) = (t.pod("a"), t.pod("b"));
            assert_eq!(
                ping(&a.netns, b.ipv4, 3),
                3,
                "up finished a crash after {n} steps"
            );
            t.down();
            assert_eq!(t.leftovers(), Vec::<String>::new());
        }
    }
    t.keep_on_drop();
}

/// A real SIGKILL in the middle of `up`, wherever it lands.
#[test]
fn down_after_killed_up_leaves_nothing() {
    let mut t = TestTopology::new(&["a", "b", "c", "d"]);
    for delay_ms in [5u64, 30, 80] {
        let mut child = std::process::Command::new(veth_tests::vethctl_bin())
            .arg("up")
            .arg("--topology")
            .arg(&t.file)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        t.down();
        assert_eq!(
            t.leftovers(),
            Vec::<String>::new(),
            "killed after {delay_ms} ms"
        );
    }
    t.keep_on_drop();
}

/// Removing a pod from the file and running `up` removes just that pod.
#[test]
fn up_removes_pods_that_left_the_file() {
    let t = TestTopology::new(&["a", "b", "c"]);
    t.up();
    let c = t.pod("c").clone();
    let text = std::fs::read_to_string(&t.file).unwrap();
    let without_c = text.replace("\n[[pods]]\nname = \"c\"\n", "");
    std::fs::write(&t.file, without_c).unwrap();
    t.up();
    assert!(
        !veth_userspace::netlink::netns::exists(&c.netns),
        "c's namespace removed"
    );
    let links = veth_tests::run("ip", &["-o", "link", "show"]);
    assert!(
        !links.contains(&format!(" {}@", c.host_veth)),
        "c's veth removed"
    );
    let (a, b) = (t.pod("a"), t.pod("b"));
    assert_eq!(ping(&a.netns, b.ipv4, 3), 3, "the others still talk");
    assert!(!t.stats().contains_key("c"));
}
