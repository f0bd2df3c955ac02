//! Bad topology files fail with the field and the fix, and create nothing.

use veth_tests::{leftovers, unique_name, vethctl};
use veth_userspace::model::Topology;

/// Runs `up` on `text`; returns stderr after checking that it failed and
/// that nothing named after the topology exists.
fn up_fails(name: &str, text: &str) -> String {
    let file = std::env::temp_dir().join(format!("vethctl-bad-{name}.toml"));
    std::fs::write(&file, text).unwrap();
    let out = vethctl(&["up"], &[], Some(&file));
    std::fs::remove_file(&file).unwrap();
    assert!(!out.status.success(), "up must refuse:\n{text}");
    // What would have been created, had the file been accepted.
    let would_be = Topology::from_toml(&format!(
        "name = \"{name}\"\npod_cidr = \"198.18.0.0/24\"\n"
    ))
    .unwrap();
    assert_eq!(leftovers(&would_be), Vec::<String>::new());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn unknown_field_is_named() {
    veth_tests::require_root();
    let name = unique_name();
    let err = up_fails(
        &name,
        &format!("name = \"{name}\"\npod_cidr = \"198.18.0.0/24\"\n[[pods]]\nname = \"a\"\nip = \"198.18.0.9\"\n"),
    );
    assert!(err.contains("line 5, column 1"), "{err}");
    assert!(err.contains("unknown field `ip`"), "{err}");
    assert!(err.contains("ipv4"), "suggests the valid field: {err}");
}

#[test]
fn overlapping_addresses_are_named() {
    veth_tests::require_root();
    let name = unique_name();
    let err = up_fails(
        &name,
        &format!(
            "name = \"{name}\"\npod_cidr = \"198.18.0.0/24\"\n[[pods]]\nname = \"a\"\nipv4 = \"198.18.0.9\"\n\
             [[pods]]\nname = \"b\"\nipv4 = \"198.18.0.9\"\n"
        ),
    );
    assert!(err.contains("pods[1].ipv4"), "{err}");
    assert!(err.contains("already used by pods[0] (\"a\")"), "{err}");
}

#[test]
fn too_long_interface_name_is_named() {
    veth_tests::require_root();
    let name = unique_name();
    let err = up_fails(
        &name,
        &format!("name = \"{name}\"\npod_cidr = \"198.18.0.0/24\"\n[[pods]]\nname = \"frontend-cache\"\n"),
    );
    assert!(err.contains("pods[0].name"), "{err}");
    assert!(err.contains("Linux allows 15"), "{err}");
    assert!(err.contains("at most 7 characters"), "{err}");
}

#[test]
fn bad_name_on_the_command_line_is_refused() {
    veth_tests::require_root();
    let out = vethctl(&["down", "--name", "Not-Valid"], &[], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("name: topology name \"Not-Valid\" is not allowed"),
        "{err}"
    );
}

#[test]
fn a_topology_overlapping_one_that_is_up_is_refused() {
    let first = veth_tests::TestTopology::new(&["a"]);
    first.up();
    let name = unique_name();
    let err = up_fails(
        &name,
        &format!(
            "name = \"{name}\"\npod_cidr = \"{}\"\n[[pods]]\nname = \"a\"\n",
            first.topology.pod_cidr
        ),
    );
    assert!(err.contains("pod_cidr"), "{err}");
    assert!(
        err.contains(&format!("of topology {:?}, which is up", first.name())),
        "{err}"
    );
}
