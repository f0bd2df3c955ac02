//! `cargo xtask test`: the same gate CI runs, in order of speed so that the
//! cheap checks fail first: fmt, clippy, the node image (which a test
//! runs), the tests, the benchmarks' quick modes (paths, cross-node, cluster
//! scale), the CNI soak's, and the cluster-through-etcd demo (up, then
//! down).

use std::process::Command;

use anyhow::Result;

use crate::{cmd, setup};

struct Step {
    name: &'static str,
    command: Command,
}

enum Outcome {
    Passed,
    Failed,
    Skipped,
}

pub fn run(test_args: &[String]) -> Result<()> {
    setup::run(setup::Needs::Everything)?;
    let mut failure = None;
    let mut outcomes = Vec::new();
    for mut step in steps(test_args) {
        let outcome = if failure.is_some() {
            Outcome::Skipped
        } else {
            println!("\n==> {}: {}", step.name, cmd::display(&step.command));
            match cmd::run(&mut step.command) {
                Ok(()) => Outcome::Passed,
                Err(err) => {
                    failure = Some(err);
                    Outcome::Failed
                }
            }
        };
        outcomes.push((step.name, outcome));
    }
    print_summary(&outcomes);
    failure.map_or(Ok(()), Err)
}

fn steps(test_args: &[String]) -> Vec<Step> {
    let mut fmt = cmd::cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);

    let mut clippy = cmd::cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);

    // The node image the packaging test runs as the DaemonSet does
    // (target/image/vethctl.oci.tar).
    let mut image = Command::new(std::env::current_exe().unwrap_or_else(|_| "xtask".into()));
    image.arg("image");

    let mut test = cmd::cargo();
    test.args(["test", "--workspace"]);
    // The extra arguments are for the test binaries (e.g. --nocapture), not for cargo.
    if !test_args.is_empty() {
        test.arg("--").args(test_args);
    }

    // The benchmark's short mode: every path must carry traffic (never a
    // verdict on timings).
    let mut bench = Command::new(std::env::current_exe().unwrap_or_else(|_| "xtask".into()));
    bench.args(["bench", "paths", "--quick"]);

    // The same across nodes: every cross-node mode must carry traffic
    // (about 30 s on the 2-core test machine, labs included).
    let mut cross_node = Command::new(std::env::current_exe().unwrap_or_else(|_| "xtask".into()));
    cross_node.args(["bench", "cross-node", "--quick"]);

    // A cluster of 100 simulated nodes in a private etcd, one real agent:
    // fails on a real error (a node never wired), never on timing.
    let mut cluster_scale =
        Command::new(std::env::current_exe().unwrap_or_else(|_| "xtask".into()));
    cluster_scale.args(["bench", "cluster-scale", "--quick"]);

    // The CNI path under churn, short: fails on correctness (pods cut off,
    // duplicate addresses, leaks, stuck pods, lost datagrams), never on
    // timing.
    let mut soak = Command::new(std::env::current_exe().unwrap_or_else(|_| "xtask".into()));
    soak.args(["soak", "--quick"]);

    // The README's cluster through etcd in one command, then taken away
    // (the demo takes itself away when it fails).
    let mut demo_etcd = Command::new(std::env::current_exe().unwrap_or_else(|_| "xtask".into()));
    demo_etcd.args(["demo", "--etcd"]);
    let mut demo_etcd_down =
        Command::new(std::env::current_exe().unwrap_or_else(|_| "xtask".into()));
    demo_etcd_down.args(["demo", "--etcd", "--down"]);

    vec![
        Step {
            name: "fmt",
            command: fmt,
        },
        Step {
            name: "clippy",
            command: clippy,
        },
        Step {
            name: "image",
            command: image,
        },
        Step {
            name: "test",
            command: test,
        },
        Step {
            name: "bench",
            command: bench,
        },
        Step {
            name: "bench-xn",
            command: cross_node,
        },
        Step {
            name: "bench-scale",
            command: cluster_scale,
        },
        Step {
            name: "soak",
            command: soak,
        },
        Step {
            name: "demo-etcd",
            command: demo_etcd,
        },
        Step {
            name: "demo-etcd-down",
            command: demo_etcd_down,
        },
    ]
}

fn print_summary(outcomes: &[(&str, Outcome)]) {
    println!("\n==> summary");
    for (name, outcome) in outcomes {
        let label = match outcome {
            Outcome::Passed => "ok",
            Outcome::Failed => "FAILED",
            Outcome::Skipped => "skipped",
        };
        println!("  {name:<14} {label}");
    }
}
