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
    // Plan of a fresh up: forwarding, masquerade, address, (netns, veth,
    // configure) x2, load, sync, attach.
    for crash_after in 1..=11 {
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

/// Link and program ids at every hook of every pod, from `status --json`.
fn attachments(status: &serde_json::Value) -> std::collections::BTreeMap<String, String> {
    status["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["attached"].to_string(),
            )
        })
        .collect()
}

/// Adding a pod wires that pod only: the others keep their links and the
/// programs are not reloaded, and a second `up` changes nothing at all.
#[test]
fn adding_a_pod_leaves_the_others_alone() {
    let mut t = TestTopology::new(&["a", "b"]);
    t.up();
    let before = attachments(&t.status());
    let text = std::fs::read_to_string(&t.file).unwrap() + "\n[[pods]]\nname = \"c\"\n";
    t.rewrite(&text);

    let plan = t.vethctl(&["plan"]);
    expect_success(&plan, "vethctl plan");
    let plan = String::from_utf8_lossy(&plan.stdout).to_string();
    assert!(plan.contains("configure pod c") && plan.contains("attach programs for pod c"));
    assert!(
        !plan.contains("pod a") && !plan.contains("pod b") && !plan.contains("load"),
        "only c is planned: {plan}"
    );

    t.up();
    let after = attachments(&t.status());
    for pod in ["a", "b"] {
        assert_eq!(before[pod], after[pod], "{pod}'s links and programs stayed");
    }
    let (a, b, c) = (t.pod("a"), t.pod("b"), t.pod("c"));
    assert_eq!(ping(&a.netns, c.ipv4, 3), 3, "a -> new c");
    assert_eq!(ping(&c.netns, b.ipv4, 3), 3, "new c -> b");
    assert!(counter(&t.stats()["c"], "from_pod", "redirected_packets") >= 3);

    t.up();
    assert_eq!(
        after,
        attachments(&t.status()),
        "a second up changed nothing"
    );
}

/// A pod whose host-side veth was deleted behind vethctl's back is wired
/// again by the next `up`, on its new veth.
#[test]
fn up_rewires_a_pod_whose_veth_was_deleted() {
    let t = TestTopology::new(&["a", "b"]);
    t.up();
    let (a, b) = (t.pod("a").clone(), t.pod("b").clone());
    veth_tests::run("ip", &["link", "del", &a.host_veth]);
    assert_eq!(ping(&b.netns, a.ipv4, 1), 0, "a is cut off");
    t.up();
    assert_eq!(ping(&b.netns, a.ipv4, 3), 3, "b -> a after up");
    assert_eq!(ping(&a.netns, b.ipv4, 3), 3, "a -> b after up");
}

/// `rps = true` steers every host-side veth's flows over all CPUs; turning
/// it off again (another `up`) restores the kernel default.
#[test]
fn rps_is_set_on_host_veths_and_cleared_again() {
    let mut t = TestTopology::new(&["a", "b"]);
    let rps_of = |veth: &str| {
        std::fs::read_to_string(format!("/sys/class/net/{veth}/queues/rx-0/rps_cpus"))
            .unwrap()
            .trim()
            .replace(',', "")
    };
    let text = std::fs::read_to_string(&t.file).unwrap();
    t.rewrite(&text.replacen("mode = \"tc\"\n", "mode = \"tc\"\nrps = true\n", 1));
    t.up();
    for pod in ["a", "b"] {
        let mask = rps_of(&t.pod(pod).host_veth);
        assert!(
            !mask.trim_start_matches('0').is_empty(),
            "{pod}: rps_cpus set ({mask})"
        );
    }
    let (a, b) = (t.pod("a").clone(), t.pod("b").clone());
    assert_eq!(ping(&a.netns, b.ipv4, 3), 3, "traffic flows with rps");
    t.rewrite(&text);
    t.up();
    assert_eq!(
        rps_of(&a.host_veth).trim_start_matches('0'),
        "",
        "rps off again"
    );
}

/// A map pinned with another layout (as an older vethctl would leave it) is
/// made afresh, with a note, instead of failing the programs' verification.
#[test]
fn a_map_pinned_with_another_layout_is_made_afresh() {
    let t = TestTopology::new(&["a", "b"]);
    let pins = veth_userspace::dataplane::Pins::new(t.name());
    std::fs::create_dir_all(pins.root()).unwrap();
    let pods = pins.map("PODS");
    veth_tests::run(
        "bpftool",
        &[
            "map",
            "create",
            &pods.to_string_lossy(),
            "type",
            "hash",
            "key",
            "4",
            "value",
            "28",
            "entries",
            "64",
            "name",
            "PODS",
        ],
    );
    let out = t.vethctl(&["up"]);
    expect_success(&out, "vethctl up over an old map");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("map PODS") && err.contains("afresh"), "{err}");
    let (a, b) = (t.pod("a"), t.pod("b"));
    assert_eq!(ping(&a.netns, b.ipv4, 3), 3, "forwarding works");
    assert!(counter(&t.stats()["a"], "from_pod", "redirected_packets") >= 3);
}
