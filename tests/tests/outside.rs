//! Pods reach "the outside" through the node with source NAT, in every mode.
//!
//! The outside is a namespace this test makes, joined to the host by a veth
//! playing the uplink; it has no route back to the pods, so an answer only
//! arrives if the node masqueraded the pod's traffic.

use std::process::Command;

use veth_tests::{outside::Outside, run, AddressBlock, TestTopology};

fn ping_ok(netns: &str, dst: &str) -> bool {
    Command::new("ip")
        .args([
            "netns", "exec", netns, "ping", "-c", "2", "-i", "0.1", "-W", "2", dst,
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn pods_reach_the_outside_through_nat_in_every_mode() {
    veth_tests::require_root();
    let name = veth_tests::unique_name();
    let pods_block = AddressBlock::reserve(&name);
    let outside_block = AddressBlock::reserve(&format!("{name}o"));
    let base = pods_block.cidr.trim_end_matches(".0/24");
    let third: u32 = base.rsplit('.').next().unwrap().parse().unwrap();
    let text = format!(
        "name = \"{name}\"\nmode = \"tc\"\npod_cidr = \"{}\"\npod_cidr6 = \"fd00:1:{third:x}::/64\"\n\
         [[pods]]\nname = \"a\"\n[[pods]]\nname = \"b\"\n",
        pods_block.cidr
    );
    let t = TestTopology::from_text(&text);
    let outside = Outside::new(&name, &outside_block);
    t.up();
    let a = t.pod("a").clone();

    for mode in ["tc", "routed", "bridge", "pair", "xdp", "tc"] {
        let out = t.vethctl(&["mode", "set", mode]);
        veth_tests::expect_success(&out, &format!("mode set {mode}"));
        assert!(
            ping_ok(&a.netns, &outside.addr4),
            "{mode}: a reaches the outside over IPv4"
        );
        assert!(
            ping_ok(&a.netns, &outside.addr6),
            "{mode}: a reaches the outside over IPv6"
        );
        let (peer4, echo) = outside.connect_from(&a.netns, &outside.addr4);
        assert_eq!(echo, b"hello", "{mode}: TCP round trip");
        assert_eq!(
            peer4.to_string(),
            outside.host4,
            "{mode}: the outside sees the node (masquerade)"
        );
        let (peer6, _) = outside.connect_from(&a.netns, &outside.addr6);
        assert_eq!(
            peer6.to_string(),
            outside.host6,
            "{mode}: IPv6 masqueraded too"
        );
    }

    let table = run(
        "nft",
        &["list", "table", "inet", &format!("vethctl_{name}")],
    );
    assert!(table.contains("masquerade"), "{table}");
    t.down();
    let gone = Command::new("nft")
        .args(["list", "table", "inet", &format!("vethctl_{name}")])
        .output()
        .unwrap();
    assert!(!gone.status.success(), "down removes the nf_tables table");
}
