//! `run` end to end: every verb, each version, the runtimes' real inputs, and
//! bad input, against a recording fake plugin.

use std::cell::RefCell;
use std::path::Path;

use serde_json::{json, Value};
use veth_cni_protocol::*;

const ID: &str = "5d2b6fc1a7e0c5c4f2e3a9b8d7c6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8";
const NETNS: &str = "/var/run/netns/cni-8a9f0c1e-2b3d-4e5f-8a9b-0c1d2e3f4a5b";

/// What the fake does when called.
#[derive(Default)]
enum Behaviour {
    #[default]
    Succeed,
    Fail(CniError),
    Panic,
    BadResult,
}

#[derive(Default)]
struct Fake {
    behaviour: Behaviour,
    calls: RefCell<Vec<Request>>,
}

impl Fake {
    fn failing(e: CniError) -> Self {
        Fake {
            behaviour: Behaviour::Fail(e),
            ..Default::default()
        }
    }

    fn call(&self, req: &Request) -> Result<(), CniError> {
        self.calls.borrow_mut().push(req.clone());
        match &self.behaviour {
            Behaviour::Succeed | Behaviour::BadResult => Ok(()),
            Behaviour::Fail(e) => Err(e.clone()),
            Behaviour::Panic => panic!("fake plugin exploded"),
        }
    }

    fn verbs(&self) -> Vec<Command> {
        self.calls.borrow().iter().map(|r| r.command()).collect()
    }
}

/// veth-cni's result for a pod: host veth, pod eth0, one address each family.
fn pod_result(req: &Request) -> CniResult {
    let a = req.attachment().unwrap();
    CniResult {
        interfaces: vec![
            Interface {
                name: "vc5d2b6fc1a7e0".into(),
                mac: Some("ee:ee:ee:ee:ee:ee".into()),
                ..Default::default()
            },
            Interface {
                name: a.ifname.to_string(),
                mac: Some("02:00:0a:f4:01:05".into()),
                mtu: Some(1500),
                sandbox: Some(req.netns().unwrap().display().to_string()),
                ..Default::default()
            },
        ],
        ips: vec![
            IpConfig {
                address: "10.244.1.5/32".parse().unwrap(),
                gateway: Some("169.254.1.1".parse().unwrap()),
                interface: Some(1),
            },
            IpConfig {
                address: "fd00:10:244:1::5/128".parse().unwrap(),
                gateway: None,
                interface: Some(1),
            },
        ],
        routes: vec![Route::new(
            "0.0.0.0/0".parse().unwrap(),
            Some("169.254.1.1".parse().unwrap()),
        )],
        dns: Dns::default(),
    }
}

impl Plugin for Fake {
    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        self.call(req)?;
        let mut r = pod_result(req);
        if matches!(self.behaviour, Behaviour::BadResult) {
            r.ips[0].interface = Some(7);
        }
        Ok(r)
    }
    fn del(&self, req: &Request) -> Result<(), CniError> {
        self.call(req)
    }
    fn check(&self, req: &Request) -> Result<(), CniError> {
        self.call(req)
    }
    fn status(&self, req: &Request) -> Result<(), CniError> {
        self.call(req)
    }
    fn gc(&self, req: &Request) -> Result<(), CniError> {
        self.call(req)
    }
}

fn vars(command: &str) -> Vec<(String, String)> {
    [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", ID),
        ("CNI_NETNS", NETNS),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
        (
            "CNI_ARGS",
            "K8S_POD_UID=3f1c;IgnoreUnknown=1;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=5d2b;K8S_POD_NAMESPACE=default",
        ),
        // containerd passes its own environment too.
        ("PATH", "/usr/bin"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn set(mut vars: Vec<(String, String)>, key: &str, value: Option<&str>) -> Vec<(String, String)> {
    vars.retain(|(k, _)| k != key);
    if let Some(v) = value {
        vars.push((key.to_string(), v.to_string()));
    }
    vars
}

/// containerd 1.6's stdin: the plugin entry, name and cniVersion injected.
fn conf(version: &str) -> Value {
    json!({
        "cniVersion": version,
        "name": "k8s-pod-network",
        "type": "veth-cni",
        "mode": "tc",
        "ipam": {"type": "veth-builtin", "subnet": "10.244.1.0/24"},
        "capabilities": {"portMappings": true}
    })
}

fn with(mut v: Value, key: &str, x: Value) -> Value {
    v[key] = x;
    v
}

fn prev(version: CniVersion) -> Value {
    let req = Request::from_vars(vars("ADD"), conf("1.0.0").to_string().as_bytes()).unwrap();
    pod_result(&req).to_value(version)
}

/// The configuration each verb gets from a runtime, in `version`.
fn stdin_for(command: &str, version: CniVersion) -> Vec<u8> {
    let c = conf(version.as_str());
    let c = match command {
        "CHECK" | "DEL" => with(c, "prevResult", prev(version)),
        "GC" => with(
            c,
            "cni.dev/valid-attachments",
            json!([{"containerID": ID, "ifname": "eth0"}]),
        ),
        "VERSION" => json!({"cniVersion": version.as_str()}),
        _ => c,
    };
    c.to_string().into_bytes()
}

fn json_out(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Assert an error result with `code`, and return its message.
fn assert_error(out: &Output, code: u32) -> String {
    assert_eq!(
        out.exit_code,
        1,
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v = json_out(out);
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys.len(), 4, "{v}");
    for k in ["cniVersion", "code", "msg", "details"] {
        assert!(v.get(k).is_some(), "{k} missing in {v}");
    }
    assert_eq!(v["code"], json!(code), "{v}");
    assert!(!v["msg"].as_str().unwrap().is_empty());
    v["msg"].as_str().unwrap().to_string()
}

#[test]
fn every_verb_in_every_version() {
    for version in CniVersion::ALL {
        for command in ["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION"] {
            let fake = Fake::default();
            let out = run(vars(command), &stdin_for(command, version), &fake);
            let allowed = match command {
                "CHECK" => version.has_check(),
                "STATUS" | "GC" => version.has_status_and_gc(),
                _ => true,
            };
            let what = format!("{command} {version}");
            if !allowed {
                let msg = assert_error(&out, 1);
                assert!(
                    msg.starts_with(&format!("{command} needs cniVersion")),
                    "{what}: {msg}"
                );
                assert_eq!(
                    json_out(&out)["cniVersion"],
                    json!(version.as_str()),
                    "{what}"
                );
                assert!(fake.verbs().is_empty(), "{what}");
                continue;
            }
            assert_eq!(
                out.exit_code,
                0,
                "{what}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
            match command {
                "ADD" => {
                    let v = json_out(&out);
                    assert_eq!(v["cniVersion"], json!(version.as_str()), "{what}");
                    assert_eq!(v["interfaces"][1]["name"], json!("eth0"));
                    assert_eq!(v["interfaces"][1]["sandbox"], json!(NETNS));
                    assert_eq!(v["ips"][0]["address"], json!("10.244.1.5/32"));
                    assert_eq!(v["ips"][0]["interface"], json!(1));
                    let ip_version = v["ips"][1].get("version").cloned();
                    let mtu = v["interfaces"][1].get("mtu").cloned();
                    if version.ips_have_version() {
                        assert_eq!(ip_version, Some(json!("6")), "{what}");
                    } else {
                        assert_eq!(ip_version, None, "{what}");
                    }
                    if version == CniVersion::V1_1_0 {
                        assert_eq!(mtu, Some(json!(1500)), "{what}");
                    } else {
                        assert_eq!(mtu, None, "{what}");
                    }
                    // Our result is the next plugin's prevResult (portmap,
                    // bandwidth): it reads back the same.
                    let back = CniResult::parse(&out.stdout, version, "prevResult").unwrap();
                    assert_eq!(back.render(version), out.stdout, "{what}");
                }
                "VERSION" => {
                    assert_eq!(
                        json_out(&out),
                        json!({"cniVersion": version.as_str(), "supportedVersions": ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
                    );
                }
                _ => assert!(
                    out.stdout.is_empty(),
                    "{what}: {:?}",
                    String::from_utf8_lossy(&out.stdout)
                ),
            }
            let calls = fake.calls.borrow();
            if command == "VERSION" {
                assert!(calls.is_empty());
                continue;
            }
            assert_eq!(calls.len(), 1, "{what}");
            let req = &calls[0];
            assert_eq!(req.command().as_str(), command);
            assert_eq!(req.version(), version);
            assert_eq!(req.config.name, "k8s-pod-network");
            assert_eq!(
                req.stdin,
                stdin_for(command, version),
                "delegation needs stdin verbatim"
            );
            match command {
                "ADD" | "DEL" | "CHECK" => {
                    let a = req.attachment().unwrap();
                    assert_eq!(a.container_id.as_str(), ID);
                    assert_eq!(a.ifname.as_str(), "eth0");
                    assert_eq!(req.netns().unwrap(), Path::new(NETNS));
                    assert_eq!(a.args.k8s_pod().as_deref(), Some("default/web-0"));
                    assert_eq!(a.args.pod_uid.as_deref(), Some("3f1c"));
                }
                _ => assert_eq!(req.attachment().unwrap_err().code(), 4),
            }
            if command == "CHECK" {
                assert_eq!(req.config.prev_result.as_ref().unwrap().ips.len(), 2);
            }
            if command == "GC" {
                let valid = req.config.valid_attachments.as_ref().unwrap();
                assert_eq!(
                    valid,
                    &vec![GcAttachment {
                        container_id: ID.into(),
                        ifname: "eth0".into()
                    }]
                );
            }
        }
    }
}

#[test]
fn containerd_lifecycle_one_add_two_dels() {
    let fake = Fake::default();
    let add = run(vars("ADD"), conf("1.0.0").to_string().as_bytes(), &fake);
    assert_eq!(add.exit_code, 0);
    let result: Value = json_out(&add);
    // First StopPodSandbox: CNI_NETNS and prevResult.
    let first = run(
        vars("DEL"),
        with(conf("1.0.0"), "prevResult", result)
            .to_string()
            .as_bytes(),
        &fake,
    );
    assert_eq!((first.exit_code, first.stdout.len()), (0, 0));
    // Later Stops and RemovePodSandbox: CNI_NETNS="" and no prevResult.
    let later = run(
        set(vars("DEL"), "CNI_NETNS", Some("")),
        conf("1.0.0").to_string().as_bytes(),
        &fake,
    );
    assert_eq!((later.exit_code, later.stdout.len()), (0, 0));
    assert!(later.stderr.is_empty(), "{:?}", later.stderr);
    let calls = fake.calls.borrow();
    assert_eq!(calls.len(), 3);
    assert!(calls[1].config.prev_result.is_some());
    assert_eq!(calls[1].netns().unwrap(), Path::new(NETNS));
    assert!(calls[2].config.prev_result.is_none());
    assert_eq!(calls[2].attachment().unwrap().netns, None);
    assert_eq!(calls[2].netns().unwrap_err().code(), 4);
}

#[test]
fn podman_version_probe_then_add() {
    // podman: VERSION with only CNI_COMMAND (plus its own environment).
    let fake = Fake::default();
    let out = run(
        [("CNI_COMMAND", "VERSION"), ("HOME", "/root")],
        br#"{"cniVersion":"1.0.0"}"#,
        &fake,
    );
    assert_eq!(out.exit_code, 0);
    assert_eq!(json_out(&out)["cniVersion"], json!("1.0.0"));
    let add_vars = set(
        set(
            vars("ADD"),
            "CNI_ARGS",
            Some("IgnoreUnknown=1;K8S_POD_NAME=box"),
        ),
        "CNI_NETNS",
        Some("/run/netns/netns-3c1e"),
    );
    let out = run(add_vars, conf("1.0.0").to_string().as_bytes(), &fake);
    assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stdout));
    let calls = fake.calls.borrow();
    let a = calls[0].attachment().unwrap();
    assert_eq!(a.args.pod_name.as_deref(), Some("box"));
    assert_eq!(a.args.pod_namespace, None);
}

#[test]
fn cni_versions_negotiation() {
    // (cniVersion, cniVersions, answered in)
    let table: &[(Option<&str>, &[&str], &str)] = &[
        (Some("1.0.0"), &["1.0.0", "1.1.0"], "1.0.0"),
        (Some("1.1.0"), &["1.0.0", "1.1.0"], "1.1.0"),
        (None, &["0.4.0", "1.0.0"], "1.0.0"),
        (Some("1.5.0"), &["0.3.1", "1.0.0", "1.5.0"], "1.0.0"),
    ];
    for (version, versions, want) in table {
        let mut c = with(conf("x"), "cniVersions", json!(versions));
        match version {
            Some(v) => c["cniVersion"] = json!(v),
            None => {
                c.as_object_mut().unwrap().remove("cniVersion");
            }
        }
        let out = run(vars("ADD"), c.to_string().as_bytes(), &Fake::default());
        assert_eq!(out.exit_code, 0, "{c}");
        assert_eq!(json_out(&out)["cniVersion"], json!(want), "{c}");
    }
    // No version in common: code 1, in the version asked for.
    let out = run(
        vars("ADD"),
        conf("2.0.0").to_string().as_bytes(),
        &Fake::default(),
    );
    let msg = assert_error(&out, 1);
    assert!(msg.contains("\"2.0.0\""), "{msg}");
    assert_eq!(json_out(&out)["cniVersion"], json!("2.0.0"));
}

#[test]
fn runtime_config_capitalisations_reach_the_plugin_alike() {
    let containerd = json!({"portMappings": [{"HostPort": 18080, "ContainerPort": 8080, "Protocol": "tcp", "HostIP": ""}],
        "bandwidth": {"IngressRate": 1000, "IngressBurst": 2000}, "dns": {"Servers": null, "Searches": ["svc.cluster.local"], "Options": []}});
    let lower = json!({"portMappings": [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp", "hostIP": ""}],
        "bandwidth": {"ingressRate": 1000, "ingressBurst": 2000}, "dns": {"servers": [], "searches": ["svc.cluster.local"], "options": []}});
    let mut seen = Vec::new();
    for rc in [containerd, lower] {
        let fake = Fake::default();
        let out = run(
            vars("ADD"),
            with(conf("1.0.0"), "runtimeConfig", rc)
                .to_string()
                .as_bytes(),
            &fake,
        );
        assert_eq!(out.exit_code, 0);
        seen.push(fake.calls.borrow()[0].config.runtime_config.clone());
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[0].port_mappings[0].host_port, 18080);
    assert_eq!(
        seen[0].bandwidth.as_ref().unwrap().ingress_burst,
        Some(2000)
    );
}

#[test]
fn malformed_json_for_every_verb() {
    let inputs: &[&[u8]] = &[
        b"",
        b"{",
        b"{\"cniVersion\": \"1.0.0\", ",
        b"[1,2]",
        b"\"conf\"",
        b"\xff\xfe",
        b"{\"a\":1}}",
        b"nul",
    ];
    for command in ["ADD", "DEL", "CHECK", "STATUS", "GC"] {
        for input in inputs {
            let fake = Fake::default();
            let out = run(vars(command), input, &fake);
            assert_error(&out, 6);
            assert_eq!(
                json_out(&out)["cniVersion"],
                json!("1.0.0"),
                "fallback version"
            );
            assert!(fake.verbs().is_empty());
        }
    }
    // VERSION does not care what is on stdin.
    for input in inputs {
        let out = run(vars("VERSION"), input, &Fake::default());
        assert_eq!(out.exit_code, 0);
        assert_eq!(json_out(&out)["cniVersion"], json!("1.1.0"));
    }
}

#[test]
fn deeply_nested_json_is_an_error_not_a_stack_overflow() {
    let deep = format!(
        "{{\"name\": {}1{} }}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let out = run(vars("ADD"), deep.as_bytes(), &Fake::default());
    assert_error(&out, 6);
}

#[test]
fn missing_and_bad_variables() {
    let stdin = conf("0.4.0").to_string();
    // (vars, code, message start)
    let table: Vec<(Vec<(String, String)>, &str)> = vec![
        (vec![], "CNI_COMMAND \"\": not set"),
        (
            set(vars("ADD"), "CNI_COMMAND", Some("add")),
            "CNI_COMMAND \"add\": unknown command",
        ),
        (
            set(vars("ADD"), "CNI_NETNS", None),
            "CNI_NETNS is required for ADD",
        ),
        (
            set(vars("CHECK"), "CNI_NETNS", Some("")),
            "CNI_NETNS is required for CHECK",
        ),
        (
            set(vars("DEL"), "CNI_IFNAME", None),
            "CNI_IFNAME is required for DEL",
        ),
        (
            set(vars("DEL"), "CNI_CONTAINERID", Some("")),
            "CNI_CONTAINERID is required for DEL",
        ),
        (
            set(vars("GC"), "CNI_PATH", None),
            "CNI_PATH is required for GC",
        ),
        (
            set(vars("ADD"), "CNI_ARGS", Some("K8S_POD_NAME=a;EVIL=1")),
            "CNI_ARGS \"K8S_POD_NAME=a;EVIL=1\": unknown key(s) [\"EVIL\"]",
        ),
    ];
    for (v, want) in table {
        let fake = Fake::default();
        let out = run(v.clone(), stdin.as_bytes(), &fake);
        let msg = assert_error(&out, 4);
        assert!(msg.starts_with(want), "{v:?}: {msg}");
        // The version is the configuration's even though the variables failed.
        assert_eq!(json_out(&out)["cniVersion"], json!("0.4.0"));
        assert!(fake.verbs().is_empty());
    }
}

#[test]
fn path_tricks_are_refused() {
    let stdin = conf("1.0.0").to_string();
    let table: &[(&str, &str, &str)] = &[
        (
            "CNI_CONTAINERID",
            "../../../etc/passwd",
            "CNI_CONTAINERID \"../../../etc/passwd\": not a valid container id",
        ),
        (
            "CNI_CONTAINERID",
            "abc/../../x",
            "CNI_CONTAINERID \"abc/../../x\": not a valid container id",
        ),
        (
            "CNI_CONTAINERID",
            "a b",
            "CNI_CONTAINERID \"a b\": not a valid container id",
        ),
        (
            "CNI_CONTAINERID",
            ".hidden",
            "CNI_CONTAINERID \".hidden\": not a valid container id",
        ),
        (
            "CNI_IFNAME",
            "eth0/../x",
            "CNI_IFNAME \"eth0/../x\": not a valid interface name (1-15 bytes",
        ),
        (
            "CNI_IFNAME",
            "..",
            "CNI_IFNAME \"..\": not a valid interface name",
        ),
        (
            "CNI_IFNAME",
            "eth0:1",
            "CNI_IFNAME \"eth0:1\": not a valid interface name",
        ),
        (
            "CNI_IFNAME",
            "averyveryverylongname",
            "CNI_IFNAME \"averyveryverylongname\": not a valid interface name",
        ),
        (
            "CNI_IFNAME",
            "eth 0",
            "CNI_IFNAME \"eth 0\": not a valid interface name",
        ),
        (
            "CNI_NETNS",
            "relative/netns",
            "CNI_NETNS \"relative/netns\": not an absolute path",
        ),
        (
            "CNI_NETNS",
            "/var/run/netns/../../../etc/shadow",
            "CNI_NETNS \"/var/run/netns/../../../etc/shadow\": must not contain '..'",
        ),
    ];
    for (var, value, want) in table {
        let verbs: &[&str] = match *var {
            "CNI_NETNS" => &["ADD", "CHECK"],
            _ => &["ADD", "DEL", "CHECK"],
        };
        for verb in verbs {
            let fake = Fake::default();
            let stdin = if *verb == "CHECK" {
                with(conf("1.0.0"), "prevResult", json!({})).to_string()
            } else {
                stdin.clone()
            };
            let out = run(set(vars(verb), var, Some(value)), stdin.as_bytes(), &fake);
            let msg = assert_error(&out, 4);
            assert!(msg.starts_with(want), "{verb} {var}={value}: {msg}");
            assert!(
                fake.verbs().is_empty(),
                "{verb} {var}={value}: the plugin must not run"
            );
        }
    }
    // A DEL with a bad namespace path goes ahead without it, and says so.
    let fake = Fake::default();
    let out = run(
        set(vars("DEL"), "CNI_NETNS", Some("../x")),
        stdin.as_bytes(),
        &fake,
    );
    assert_eq!(out.exit_code, 0);
    assert_eq!(out.stderr.len(), 1);
    assert!(
        out.stderr[0].starts_with("warning: CNI_NETNS \"../x\""),
        "{:?}",
        out.stderr
    );
    assert_eq!(fake.calls.borrow()[0].attachment().unwrap().netns, None);
}

#[test]
fn invalid_configs() {
    // (patch key, value, code, message start)
    let table: Vec<(&str, Value, u32, &str)> = vec![
        (
            "mode",
            json!("pair"),
            7,
            "mode: \"pair\" cannot be used by a CNI plugin: pair mode joins two named pods",
        ),
        ("mode", json!("ebpf"), 7, "mode: \"ebpf\" is not a mode"),
        ("mtu", json!(100), 7, "mtu: 100 is out of range"),
        (
            "name",
            json!("../../etc"),
            7,
            "name: \"../../etc\" is not a network name",
        ),
        (
            "ipam",
            json!({"type": "../../bin/sh"}),
            7,
            "ipam.type: \"../../bin/sh\" is not a plugin name",
        ),
        (
            "ipam",
            json!({"type": "veth-builtin", "subnet": "10.0.0.0/31"}),
            7,
            "ipam.subnet: \"10.0.0.0/31\" is too small",
        ),
        (
            "runtimeConfig",
            json!({"portMappings": [{"HostPort": 70000, "ContainerPort": 80}]}),
            7,
            "runtimeConfig.portMappings[0].hostPort: 70000 is not a port",
        ),
        (
            "prevResult",
            json!({"ips": [{"address": "x"}]}),
            6,
            "cannot decode prevResult",
        ),
        (
            "cniVersion",
            json!("0.1.0"),
            1,
            "cniVersion \"0.1.0\" is not supported",
        ),
    ];
    for (key, value, code, want) in table {
        let fake = Fake::default();
        let out = run(
            vars("ADD"),
            with(conf("1.0.0"), key, value.clone())
                .to_string()
                .as_bytes(),
            &fake,
        );
        let msg = assert_error(&out, code);
        assert!(msg.starts_with(want), "{key}={value}: {msg}");
        assert!(fake.verbs().is_empty());
        // DEL of the same configuration still runs (nothing was made), bar
        // what identifies the network and the protocol version.
        let fake = Fake::default();
        let out = run(
            vars("DEL"),
            with(conf("1.0.0"), key, value.clone())
                .to_string()
                .as_bytes(),
            &fake,
        );
        if key == "name" || key == "cniVersion" {
            assert_error(&out, code);
        } else {
            assert_eq!(
                out.exit_code,
                0,
                "DEL {key}={value}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
            assert_eq!(out.stderr.len(), 1, "{:?}", out.stderr);
            assert!(
                out.stderr[0].ends_with("DEL goes ahead without it"),
                "{:?}",
                out.stderr
            );
        }
    }
}

#[test]
fn plugin_errors_are_written_in_the_requests_version() {
    let errors = vec![
        CniError::UnknownContainer {
            container_id: ID.into(),
            reason: "no such pod".into(),
        },
        CniError::invalid_env("CNI_NETNS", NETNS, "not a network namespace"),
        CniError::Io {
            what: "endpoint record".into(),
            reason: "disk full".into(),
        },
        CniError::TryAgainLater {
            reason: "the network is being reloaded".into(),
        },
        CniError::NotAvailable {
            reason: "the dataplane is not loaded; run `vethctl agent`".into(),
        },
        CniError::LimitedConnectivity {
            reason: "programs detached".into(),
        },
        CniError::internal("netlink: operation not permitted"),
        CniError::Plugin {
            code: 120,
            msg: "address pool exhausted".into(),
            details: "10.244.1.0/24".into(),
        },
        CniError::from_delegated(
            "host-local",
            ErrorReply {
                cni_version: String::new(),
                code: 11,
                msg: "busy".into(),
                details: String::new(),
            },
        ),
    ];
    for version in CniVersion::ALL {
        for command in ["ADD", "DEL", "CHECK", "STATUS", "GC"] {
            let allowed = match command {
                "CHECK" => version.has_check(),
                "STATUS" | "GC" => version.has_status_and_gc(),
                _ => true,
            };
            if !allowed {
                continue;
            }
            for e in &errors {
                let fake = Fake::failing(e.clone());
                let out = run(vars(command), &stdin_for(command, version), &fake);
                let msg = assert_error(&out, e.code());
                assert_eq!(msg, e.to_string());
                let v = json_out(&out);
                assert_eq!(v["cniVersion"], json!(version.as_str()));
                assert_eq!(v["details"], json!(e.details()));
            }
        }
    }
}

#[test]
fn a_panicking_plugin_still_answers_in_json() {
    for command in ["ADD", "DEL", "STATUS"] {
        let fake = Fake {
            behaviour: Behaviour::Panic,
            ..Default::default()
        };
        let out = run(
            vars(command),
            &stdin_for(command, CniVersion::V1_1_0),
            &fake,
        );
        let msg = assert_error(&out, 999);
        assert!(msg.contains("fake plugin exploded"), "{msg}");
        assert!(
            out.stderr
                .iter()
                .any(|l| l.starts_with(&format!("panic in {command}"))),
            "{:?}",
            out.stderr
        );
    }
}

#[test]
fn an_inconsistent_add_result_is_not_written() {
    let fake = Fake {
        behaviour: Behaviour::BadResult,
        ..Default::default()
    };
    let out = run(vars("ADD"), conf("1.0.0").to_string().as_bytes(), &fake);
    let msg = assert_error(&out, 999);
    assert!(msg.contains("ips[0].interface is 7"), "{msg}");
}

#[test]
fn gc_and_status_inputs_from_libcni() {
    // libcni sets the attachment variables to "" for GC and STATUS.
    let gc_vars = vec![
        ("CNI_COMMAND", "GC"),
        ("CNI_CONTAINERID", ""),
        ("CNI_NETNS", ""),
        ("CNI_IFNAME", ""),
        ("CNI_ARGS", ""),
        ("CNI_PATH", "/opt/cni/bin"),
    ];
    let stdin = with(
        with(conf("1.1.0"), "cni.dev/valid-attachments", Value::Null),
        "cni.dev/attachments",
        Value::Null,
    );
    let fake = Fake::default();
    let out = run(gc_vars.clone(), stdin.to_string().as_bytes(), &fake);
    assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        fake.calls.borrow()[0].config.valid_attachments,
        Some(vec![])
    );
    // Without the list GC would remove everything: refused, plugin not run.
    let fake = Fake::default();
    let out = run(gc_vars, conf("1.1.0").to_string().as_bytes(), &fake);
    let msg = assert_error(&out, 7);
    assert!(
        msg.starts_with("cni.dev/valid-attachments: missing"),
        "{msg}"
    );
    assert!(fake.verbs().is_empty());

    let fake = Fake::default();
    let out = run(
        [("CNI_COMMAND", "STATUS")],
        conf("1.1.0").to_string().as_bytes(),
        &fake,
    );
    assert_eq!((out.exit_code, out.stdout.len()), (0, 0));
    assert_eq!(fake.verbs(), vec![Command::Status]);
}

#[test]
fn stdin_is_read_and_taken_only_up_to_the_limit() {
    // An endless stdin is read no further than one byte past the limit.
    let stdin = read_stdin(std::io::repeat(b' '));
    assert_eq!(stdin.len(), MAX_STDIN_BYTES + 1);
    let fake = Fake::default();
    let out = run(vars("ADD"), &stdin, &fake);
    let msg = assert_error(&out, 6);
    assert!(msg.contains("larger than 1048576 bytes"), "{msg}");
    // Whitespace up to the limit is still a configuration's.
    let mut padded = conf("1.0.0").to_string().into_bytes();
    padded.resize(MAX_STDIN_BYTES, b' ');
    let out = run(vars("ADD"), &padded, &fake);
    assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stdout));
}
