//! `vethctl bench` measures a user's own topology and shows which path the
//! traffic took.

use veth_tests::{expect_success, TestTopology};

#[test]
fn bench_measures_between_two_pods_and_counts_the_path() {
    let t = TestTopology::new(&["a", "b"]);
    t.up();
    let out = t.vethctl(&[
        "bench",
        "--client",
        "a",
        "--server",
        "b",
        "--rounds",
        "1",
        "--seconds",
        "1",
        "--workloads",
        "udp_rr,udp_64b_rate",
        "--json",
    ]);
    expect_success(&out, "vethctl bench");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bench JSON");
    assert_eq!(report["mode"], "tc");
    for result in report["results"].as_array().expect("results[]") {
        assert!(
            result["median"].as_f64().unwrap_or(0.0) > 0.0,
            "traffic flowed: {result}"
        );
    }
    let frames = &report["client_frames"];
    let redirected = frames["redirected"].as_u64().unwrap();
    assert!(
        redirected > 1000,
        "the client's frames were redirected: {frames}"
    );
    assert!(
        frames["passed"].as_u64().unwrap() < redirected / 100,
        "almost nothing took the host path: {frames}"
    );

    let bad = t.vethctl(&["bench", "--client", "a", "--server", "nope"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("--server") && err.contains("nope"), "{err}");
}
