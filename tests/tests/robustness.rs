//! Operational safety (issue 10, findings 6, 8 and 10): what the kernel or
//! the host would refuse is refused before anything is made, with the
//! field and the fix; one unreadable state file affects only its own
//! topology; closed pipes, out-of-range options and endless input end in a
//! message or quietly, never in a panic.

use std::{path::PathBuf, time::Duration};

use serde_json::Value;
use veth_tests::{
    expect_success, leftovers, metric_value, require_root, run, unique_name, vethctl,
    vethctl_bounded, vethctl_into_closed_pipe, AddressBlock, Agent, DamagedFile, TestTopology,
    Undo,
};
use veth_userspace::model::Topology;

/// A topology file in the temp dir, removed when dropped.
struct File(PathBuf);

impl File {
    fn new(name: &str, text: &str) -> File {
        let path = std::env::temp_dir().join(format!("vethctl-robust-{name}.toml"));
        std::fs::write(&path, text).unwrap();
        File(path)
    }

    fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for File {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Whether the nf_tables table of topology `name` exists.
fn nat_table_exists(name: &str) -> bool {
    std::process::Command::new("nft")
        .args(["list", "table", "inet", &format!("vethctl_{name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// `plan` and then `up` of `text` (topology `name`) must both fail, naming
/// `field` and containing `words`, and leave nothing behind: no
/// namespace, link, address, pin, state or nf_tables table. Returns
/// `up`'s stderr. `plan` goes first: it makes nothing even where `up`
/// would have been let through.
fn refused(name: &str, text: &str, field: &str, words: &[&str]) -> String {
    let file = File::new(name, text);
    let mut last = String::new();
    for command in ["plan", "up"] {
        let out = vethctl(&[command, "-t", file.arg()], &[], None);
        let err = stderr(&out);
        assert!(
            !out.status.success(),
            "`{command}` must refuse {field}:\n{text}\nstdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        // 2: input vethctl refuses, as for clap's usage errors.
        assert_eq!(out.status.code(), Some(2), "{command}: {err}");
        assert!(!err.contains("panicked"), "{command}: {err}");
        assert!(err.contains(&format!("{field}: ")), "{command}: {err}");
        for word in words {
            assert!(err.contains(word), "{command}: {word:?} missing: {err}");
        }
        last = err;
    }
    let would_be = Topology::from_toml(&format!(
        "name = \"{name}\"\npod_cidr = \"198.18.0.0/24\"\n"
    ))
    .unwrap();
    assert_eq!(leftovers(&would_be), Vec::<String>::new(), "{text}");
    assert!(!nat_table_exists(name), "nf_tables table of {name} left");
    last
}

// ---------------------------------------------------------------------------
// Finding 8: validation.

#[test]
fn reserved_multicast_loopback_and_link_local_ranges_are_refused() {
    require_root();
    let name = unique_name();
    for (cidr, why) in [
        ("0.0.0.0/0", "unspecified"),
        ("127.0.0.0/24", "loopback"),
        ("224.0.0.0/24", "multicast"),
        ("169.254.1.0/24", "pods' own gateway"),
        ("240.0.0.0/24", "reserved"),
    ] {
        let text = format!("name = \"{name}\"\npod_cidr = \"{cidr}\"\n[[pods]]\nname = \"a\"\n");
        refused(&name, &text, "pod_cidr", &[why, "pick a private range"]);
    }
    for (cidr6, why) in [
        ("::/64", "unspecified"),
        ("::1/128", "loopback"),
        ("fe80::/64", "link-local"),
        ("ff00::/8", "multicast"),
    ] {
        let text = format!(
            "name = \"{name}\"\npod_cidr = \"198.18.0.0/24\"\npod_cidr6 = \"{cidr6}\"\n\
             [[pods]]\nname = \"a\"\n"
        );
        refused(&name, &text, "pod_cidr6", &[why, "unique local"]);
    }
}

#[test]
fn names_the_kernel_would_refuse_or_that_are_not_plain_interface_names_are_refused() {
    require_root();
    let name = unique_name();
    for bad in [
        "..",
        ".",
        "a\nb",
        "a b",
        "a/b",
        "a:b",
        "sixteen-chars-xx",
        "",
    ] {
        let quoted = format!("{bad:?}");
        let text = format!(
            "name = \"{name}\"\nmode = \"bridge\"\npod_cidr = \"198.18.0.0/24\"\n\
             bridge = {quoted}\n[[pods]]\nname = \"a\"\n"
        );
        refused(&name, &text, "bridge", &["ASCII letters, digits"]);
    }
    for bad in ["eth0; drop", "eth0\"", "eth*", "", "a\nb"] {
        let quoted = format!("{bad:?}");
        let text = format!(
            "name = \"{name}\"\npod_cidr = \"198.18.0.0/24\"\n[[pods]]\nname = \"a\"\n\
             [uplink]\ninterface = {quoted}\n"
        );
        let err = refused(&name, &text, "uplink.interface", &["e.g. \"eth0\""]);
        if bad == "eth0; drop" {
            assert!(err.contains("';'"), "names the character: {err}");
        }
    }
}

#[test]
fn ranges_the_host_already_uses_are_refused_before_anything_is_made() {
    require_root();
    let name = unique_name();
    let block = AddressBlock::reserve(&name);
    let base = block.cidr.trim_end_matches(".0/24").to_string();
    let net6 = block.cidr6.trim_end_matches("/64").to_string();
    let text = format!(
        "name = \"{name}\"\npod_cidr = \"{}\"\npod_cidr6 = \"{}\"\n[[pods]]\nname = \"a\"\n",
        block.cidr, block.cidr6
    );
    // A link of "someone else's", in this test's own block.
    let dummy = format!("vr{}", &name[1..]);
    let peer = format!("{dummy}p");
    let mut undo = Undo::default();
    run(
        "ip",
        &["link", "add", &dummy, "type", "veth", "peer", "name", &peer],
    );
    undo.ip(&["link", "del", &dummy]);

    // An address of the host inside the range (a /32: no prefix route).
    let addr = format!("{base}.77/32");
    run("ip", &["addr", "add", &addr, "dev", &dummy]);
    refused(
        &name,
        &text,
        "pod_cidr",
        &[&format!("the address {addr} that interface \"{dummy}\"")],
    );
    run("ip", &["addr", "del", &addr, "dev", &dummy]);

    // A route into the range, in a table of its own.
    run("ip", &["link", "set", &peer, "up"]);
    run("ip", &["link", "set", &dummy, "up"]);
    let route = format!("{base}.128/26");
    run(
        "ip",
        &["route", "add", &route, "dev", &dummy, "table", "77"],
    );
    refused(
        &name,
        &text,
        "pod_cidr",
        &[&format!("`{route} dev {dummy} table 77`")],
    );
    run(
        "ip",
        &["route", "del", &route, "dev", &dummy, "table", "77"],
    );

    // The IPv6 node address already on lo (finding 3's trap): it would be
    // adopted, then removed by `down`.
    let node6 = format!("{net6}1/128");
    run("ip", &["-6", "addr", "add", &node6, "dev", "lo"]);
    undo.ip(&["-6", "addr", "del", &node6, "dev", "lo"]);
    refused(
        &name,
        &text,
        "pod_cidr6",
        &[&format!("the address {node6} that interface \"lo\"")],
    );
    run("ip", &["-6", "addr", "del", &node6, "dev", "lo"]);

    // The host's own subnet: that of the interface of its default route.
    let default = run("ip", &["-o", "-4", "route", "show", "default"]);
    let words: Vec<&str> = default.split_whitespace().collect();
    if let Some(ifname) = words
        .iter()
        .position(|w| *w == "dev")
        .and_then(|i| words.get(i + 1))
    {
        let addrs = run(
            "ip",
            &["-o", "-4", "addr", "show", "dev", ifname, "scope", "global"],
        );
        if let Some(network) = addrs
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(network_of)
        {
            let text =
                format!("name = \"{name}\"\npod_cidr = \"{network}\"\n[[pods]]\nname = \"a\"\n");
            let file = File::new(&name, &text);
            let out = vethctl(&["plan", "-t", file.arg()], &[], None);
            let err = stderr(&out);
            assert!(
                !out.status.success(),
                "the host's own {network} on {ifname}"
            );
            assert!(err.contains(&format!("interface {ifname:?}")), "{err}");
        }
    }
}

/// `a.b.c.d/len` -> its network `a.b.c.0/len`, for prefixes of /8 to /30.
fn network_of(cidr: &str) -> Option<String> {
    let (addr, len) = cidr.split_once('/')?;
    let addr: std::net::Ipv4Addr = addr.parse().ok()?;
    let len: u32 = len.parse().ok()?;
    if !(8..=30).contains(&len) {
        return None;
    }
    let network = u32::from(addr) & (u32::MAX << (32 - len));
    Some(format!("{}/{len}", std::net::Ipv4Addr::from(network)))
}

#[test]
fn the_topologys_own_addresses_and_routes_are_not_a_clash() {
    // Dual stack in mode bridge (the bridge holds the node addresses with
    // the prefix, the kernel adds the prefix routes), then tc (host routes
    // and node addresses on lo): `up` again after each must pass.
    let mut t = TestTopology::dual_stack("bridge", &["a", "b"]);
    t.up();
    t.up();
    let text = std::fs::read_to_string(&t.file)
        .unwrap()
        .replace("mode = \"bridge\"", "mode = \"tc\"");
    t.rewrite(&text);
    t.up();
    t.up();
    let out = t.vethctl(&["plan"]);
    expect_success(&out, "vethctl plan of a topology that is up");
}

#[test]
fn input_files_are_bounded() {
    require_root();
    for command in ["plan", "up"] {
        let out = vethctl_bounded(
            &[command, "-t", "/dev/zero"],
            1 << 30,
            Duration::from_secs(10),
        )
        .unwrap_or_else(|| panic!("`vethctl {command} -t /dev/zero` still reading after 10 s"));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{command}: {err}");
        assert!(
            err.contains("topology file /dev/zero")
                && err.contains("larger than 1048576 bytes")
                && err.contains("check the path"),
            "{err}"
        );
    }
    let name = unique_name();
    let mut text = format!("name = \"{name}\"\npod_cidr = \"198.18.0.0/24\"\n");
    while text.len() <= 2 << 20 {
        text += "# a comment to make the file large enough to be refused\n";
    }
    let file = File::new(&name, &text);
    let out = vethctl(&["plan", "-t", file.arg()], &[], None);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("larger than 1048576 bytes"),
        "{}",
        stderr(&out)
    );
}

// ---------------------------------------------------------------------------
// Finding 10: no panics.

#[test]
fn a_closed_pipe_ends_every_report_quietly_with_success() {
    let t = TestTopology::dual_stack("tc", &["a", "b", "c"]);
    t.up();
    let file = t.file.to_str().unwrap();
    let name = t.name();
    for args in [
        vec!["status"],
        vec!["status", "--json"],
        vec!["stats"],
        vec!["stats", "--json"],
        vec!["status", "-n", name],
        vec!["stats", "--json", "-n", name],
        vec!["plan", "-t", file],
        vec!["up", "-t", file],
        vec![
            "stats",
            "--watch",
            "--json",
            "--interval",
            "0.1",
            "--count",
            "3",
            "-n",
            name,
        ],
        vec!["--help"],
    ] {
        let out = vethctl_into_closed_pipe(&args);
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "`vethctl {}` into a closed pipe: {}, stderr: {}",
            args.join(" "),
            out.status,
            stderr(&out)
        );
    }
    // The same through a real pipeline: `vethctl stats --json | head -1`.
    for command in ["stats --json", "status --json", "status"] {
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "{} {command} | head -1 >/dev/null; exit ${{PIPESTATUS[0]}}",
                veth_tests::vethctl_bin().display()
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "`vethctl {command} | head -1`: {}, stderr: {}",
            out.status,
            stderr(&out)
        );
    }
}

#[test]
fn out_of_range_options_are_refused_with_a_message() {
    require_root();
    for (args, words) in [
        (
            vec!["stats", "--watch", "--interval", "1e20"],
            vec!["--interval", "out of range", "86400"],
        ),
        (
            vec!["stats", "--watch", "--interval", "0"],
            vec!["--interval"],
        ),
        (
            vec!["stats", "--watch", "--interval=-1"],
            vec!["--interval"],
        ),
        (
            vec!["stats", "--watch", "--interval", "NaN"],
            vec!["--interval"],
        ),
        (
            vec!["stats", "--watch", "--interval", "inf"],
            vec!["--interval"],
        ),
        (
            vec!["stats", "--watch", "--interval", "1e-300"],
            vec!["--interval"],
        ),
        (vec!["stats", "--watch", "--count", "0"], vec!["--count"]),
        (vec!["trace", "--sample", "0"], vec!["--sample"]),
        (vec!["trace", "--count", "0"], vec!["--count"]),
        (
            vec!["trace", "--verdict", "redirect"],
            vec!["--verdict", "redirected, remote, passed, dropped"],
        ),
        (
            vec!["trace", "--drop-reason", "spoofed"],
            vec!["--drop-reason", "spoofed_ipv4", "router_message"],
        ),
        (
            vec!["trace", "--src-ip", "10.0.0.256"],
            vec!["--src-ip", "IP address", "CIDR"],
        ),
        (vec!["trace", "--ip", "fd00::/129"], vec!["--ip", "CIDR"]),
        (
            vec!["trace", "--dst-port", "65536"],
            vec!["--dst-port", "1 to 65535"],
        ),
        (
            vec!["trace", "--protocol", "sctp"],
            vec!["--protocol", "tcp, udp, icmp, icmpv6"],
        ),
        (vec!["bench", "--rounds", "0"], vec!["--rounds"]),
        (
            vec!["bench", "--seconds", "18446744073709551615"],
            vec!["--seconds"],
        ),
    ] {
        let out = vethctl(&args, &[], None);
        let err = stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(2),
            "`vethctl {}` must be refused as a usage error: {err}",
            args.join(" ")
        );
        assert!(!err.contains("panicked"), "{err}");
        for word in words {
            assert!(err.contains(word), "{word:?} missing: {err}");
        }
    }
}

// ---------------------------------------------------------------------------
// Finding 6: one unreadable state file affects only its topology.

#[test]
fn one_unreadable_state_file_affects_only_that_topology() {
    let good = TestTopology::new(&["a", "b"]);
    good.up();
    let bad = TestTopology::dual_stack("tc", &["a"]);
    bad.up();
    let path = PathBuf::from(format!("/run/vethctl/{}/topology.toml", bad.name()));
    let path_text = path.display().to_string();
    // Restored before `bad` is brought down (dropped first).
    let _damage = DamagedFile::append(&path, "\n[[[ this is not TOML\n");
    let fix = format!("vethctl down -n {}", bad.name());

    for command in ["status", "stats"] {
        let out = vethctl(&[command], &[], None);
        expect_success(&out, &format!("vethctl {command}"));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("topology {} ", good.name()))
                || text.contains(&format!("topology {}\n", good.name())),
            "{command} shows the readable topology: {text}"
        );
        let line = text
            .lines()
            .find(|l| l.starts_with("UNREADABLE") && l.contains(bad.name()))
            .unwrap_or_else(|| panic!("{command} reports the unreadable one: {text}"));
        assert!(line.contains(&path_text), "{line}");
        assert!(line.contains(&fix), "{line}");
        assert!(line.contains("line "), "says what is wrong: {line}");

        let out = vethctl(&[command, "--json"], &[], None);
        expect_success(&out, &format!("vethctl {command} --json"));
        let json: Value = serde_json::from_slice(&out.stdout).unwrap();
        let names: Vec<&str> = json["topologies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&good.name()), "{json}");
        assert!(!names.contains(&bad.name()), "{json}");
        let unreadable = json["unreadable"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == bad.name())
            .unwrap_or_else(|| panic!("{command} --json lists it: {json}"));
        assert_eq!(unreadable["path"], path_text.as_str());
        assert!(unreadable["fix"].as_str().unwrap().contains(&fix));

        // Selected by name, it is an error naming the file and the fix.
        let out = vethctl(&[command, "-n", bad.name()], &[], None);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(err.contains(&path_text) && err.contains(&fix), "{err}");
    }

    // `stats --watch` goes on for the others, warning about it.
    let out = vethctl(
        &[
            "stats",
            "--watch",
            "--json",
            "--interval",
            "0.1",
            "--count",
            "1",
        ],
        &[],
        None,
    );
    expect_success(&out, "vethctl stats --watch");
    assert!(stderr(&out).contains(&path_text), "{}", stderr(&out));

    // The agent keeps the others' series and exports the unreadable one.
    let agent = Agent::start();
    let metrics = agent.scrape();
    assert_eq!(
        metric_value(
            &metrics,
            "vethctl_topology_unreadable",
            &[("topology", bad.name())]
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, "vethctl_pods", &[("topology", good.name())]),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            "vethctl_topology_unreadable",
            &[("topology", good.name())]
        ),
        None
    );
}
