//! Random variables and stdin never make `run` panic, and it always answers
//! as the spec says: exit 0 with a result, a VERSION answer or nothing, or
//! exit 1 with an error result on stdout.

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use veth_cni_protocol::*;

struct Fixed;

fn fixed_result() -> CniResult {
    CniResult {
        interfaces: vec![Interface {
            name: "eth0".into(),
            ..Default::default()
        }],
        ips: vec![IpConfig {
            address: "10.244.1.5/24".parse().unwrap(),
            gateway: None,
            interface: Some(0),
        }],
        ..Default::default()
    }
}

impl Plugin for Fixed {
    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        // What a real plugin reads; none of it may panic.
        let _ = req.attachment()?;
        let _ = req.netns()?;
        let _: Vec<&str> = req.warnings().collect();
        Ok(fixed_result())
    }
    fn del(&self, req: &Request) -> Result<(), CniError> {
        let _ = req.attachment()?;
        Ok(())
    }
    fn check(&self, req: &Request) -> Result<(), CniError> {
        match &req.config.prev_result {
            Some(_) => Ok(()),
            None => Err(CniError::internal(
                "CHECK without prevResult reached the plugin",
            )),
        }
    }
    fn status(&self, _: &Request) -> Result<(), CniError> {
        Ok(())
    }
    fn gc(&self, req: &Request) -> Result<(), CniError> {
        match &req.config.valid_attachments {
            Some(_) => Ok(()),
            None => Err(CniError::internal(
                "GC without valid attachments reached the plugin",
            )),
        }
    }
}

fn var_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        prop::sample::select(vec![
            "ADD",
            "DEL",
            "CHECK",
            "STATUS",
            "GC",
            "VERSION",
            "add",
            "eth0",
            "..",
            ".",
            "eth0/../x",
            "/var/run/netns/cni-1",
            "/proc/1/ns/net",
            "../netns",
            "/a/../b",
            "abc123",
            "-x",
            "IgnoreUnknown=1;K8S_POD_NAME=a;K8S_POD_NAMESPACE=b",
            "K8S_POD_NAME=a=b",
            "X=1",
            "IgnoreUnknown=maybe",
            ";;;",
            "=",
            "/opt/cni/bin:/usr/lib/cni",
            "averyveryverylongname",
        ])
        .prop_map(str::to_string),
        "\\PC{0,24}",
        ".{0,8}",
    ]
}

fn vars() -> impl Strategy<Value = Vec<(String, String)>> {
    let key = prop_oneof![
        prop::sample::select(vec![
            "CNI_COMMAND",
            "CNI_CONTAINERID",
            "CNI_NETNS",
            "CNI_IFNAME",
            "CNI_ARGS",
            "CNI_PATH",
        ])
        .prop_map(str::to_string),
        "[A-Z_]{1,12}",
    ];
    let command = prop::sample::select(vec!["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION"]);
    (command, prop::collection::vec((key, var_value()), 0..8)).prop_map(|(command, mut rest)| {
        // Usually a real verb first; the random pairs may override it.
        rest.insert(0, ("CNI_COMMAND".into(), command.to_string()));
        rest
    })
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(|f| json!(f)),
        prop::sample::select(vec![
            "1.0.0",
            "1.1.0",
            "0.4.0",
            "0.3.1",
            "0.2.0",
            "2.0.0",
            "",
            "tc",
            "pair",
            "xdp",
            "host-local",
            "veth-builtin",
            "veth-cni",
            "10.244.1.0/24",
            "10.244.1.5/24",
            "fd00::/64",
            "fd00::5/64",
            "0.0.0.0/0",
            "10.0.0.1",
            "::1",
            "tcp",
            "UDP",
            "eth0",
            "4",
            "6",
            "../x",
        ])
        .prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
    ]
}

fn any_json() -> impl Strategy<Value = Value> {
    let keys = prop::sample::select(vec![
        "cniVersion",
        "cniVersions",
        "name",
        "type",
        "mode",
        "mtu",
        "ipam",
        "dns",
        "runtimeConfig",
        "prevResult",
        "cni.dev/valid-attachments",
        "cni.dev/attachments",
        "subnet",
        "subnet6",
        "portMappings",
        "PortMappings",
        "HostPort",
        "hostPort",
        "containerPort",
        "ContainerPort",
        "protocol",
        "hostIP",
        "HostIP",
        "bandwidth",
        "IngressRate",
        "egressBurst",
        "Servers",
        "searches",
        "interfaces",
        "ips",
        "routes",
        "address",
        "gateway",
        "interface",
        "version",
        "dst",
        "gw",
        "scope",
        "table",
        "mtu",
        "sandbox",
        "mac",
        "containerID",
        "ifname",
        "nameservers",
    ]);
    leaf().prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((keys.clone(), inner), 0..6).prop_map(|pairs| {
                Value::Object(
                    pairs
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect::<Map<_, _>>(),
                )
            }),
        ]
    })
}

/// A value for one of our keys: mostly plausible (so parsing gets far and
/// the plugin gets called), sometimes anything.
fn value_for(key: &'static str) -> BoxedStrategy<Value> {
    let port = prop_oneof![0u64..70_000, Just(80), Just(18080)].prop_map(Value::from);
    let plausible: BoxedStrategy<Value> = match key {
        "mode" => prop::sample::select(vec!["tc", "xdp", "routed", "bridge", "pair", "TC"]).prop_map(Value::from).boxed(),
        "mtu" => prop_oneof![1200u64..1600, Just(9000), Just(65536)].prop_map(Value::from).boxed(),
        "ipam" => prop_oneof![
            Just(json!({"type": "host-local", "ranges": [[{"subnet": "10.1.0.0/16"}]]})),
            (prop::sample::select(vec!["10.244.1.0/24", "10.0.0.0/31", "10.1.1.1/16", "fd00::/64", "x"]),
             prop::sample::select(vec!["fd00::/64", "fd00::1/64", "10.0.0.0/8", ""]))
                .prop_map(|(s, s6)| json!({"type": "veth-builtin", "subnet": s, "subnet6": s6})),
        ]
        .boxed(),
        "runtimeConfig" => prop::collection::vec(
            (any::<bool>(), port.clone(), port, prop::sample::select(vec!["tcp", "UDP", "sctp", "", "icmp"]),
             prop::sample::select(vec!["", "127.0.0.1", "::1", "nope"])),
            0..3,
        )
        .prop_map(|pms| {
            let list: Vec<Value> = pms
                .into_iter()
                .map(|(upper, h, c, p, ip)| if upper {
                    json!({"HostPort": h, "ContainerPort": c, "Protocol": p, "HostIP": ip})
                } else {
                    json!({"hostPort": h, "containerPort": c, "protocol": p, "hostIP": ip})
                })
                .collect();
            json!({"portMappings": list, "bandwidth": {"IngressRate": 1000}, "dns": {"Servers": null}})
        })
        .boxed(),
        "prevResult" => (prop::sample::select(vec!["0.3.1", "0.4.0", "1.0.0", "1.1.0", "0.2.0"]),
                         prop::sample::select(vec!["10.244.1.5/24", "fd00::5/64", "10.244.1.5"]),
                         prop::sample::select(vec![None, Some("4"), Some("6")]),
                         0usize..3)
            .prop_map(|(v, addr, family, index)| {
                let mut ip = json!({"address": addr, "interface": index});
                if let Some(f) = family {
                    ip["version"] = json!(f);
                }
                json!({"cniVersion": v, "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/x"}], "ips": [ip]})
            })
            .boxed(),
        "cni.dev/valid-attachments" => prop::collection::vec(
            (prop::sample::select(vec!["abc", "", "x/y"]), prop::sample::select(vec!["eth0", ""])),
            0..3,
        )
        .prop_map(|l| Value::Array(l.into_iter().map(|(c, i)| json!({"containerID": c, "ifname": i})).collect()))
        .boxed(),
        "cniVersions" => prop::collection::vec(prop::sample::select(vec!["0.3.1", "1.0.0", "1.1.0", "2.0.0", "x"]), 0..3)
            .prop_map(Value::from)
            .boxed(),
        _ => any_json().boxed(),
    };
    prop_oneof![3 => plausible, 1 => any_json()].boxed()
}

/// A configuration with random parts, so parsing gets past the first checks.
fn config_json() -> impl Strategy<Value = Vec<u8>> {
    let version = prop::sample::select(vec![
        "0.3.1", "0.4.0", "1.0.0", "1.1.0", "1.1.0", "1.2.0", "0.2.0",
    ]);
    let key = prop::sample::select(vec![
        "mode",
        "mtu",
        "ipam",
        "dns",
        "runtimeConfig",
        "prevResult",
        "prevResult",
        "cni.dev/valid-attachments",
        "cni.dev/valid-attachments",
        "cniVersions",
        "type",
        "name",
        "other",
    ]);
    let pairs = prop::collection::vec(key.prop_flat_map(|k| (Just(k), value_for(k))), 0..7);
    (version, pairs).prop_map(|(version, extra)| {
        let mut v = json!({"cniVersion": version, "name": "pods", "type": "veth-cni"});
        for (k, x) in extra {
            v[k] = x;
        }
        v.to_string().into_bytes()
    })
}

fn stdin() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        any_json().prop_map(|v| v.to_string().into_bytes()),
        config_json(),
        config_json(),
    ]
}

fn check_output(out: &Output) -> Result<(), TestCaseError> {
    prop_assert!(
        !out.stderr.iter().any(|l| l.starts_with("panic")),
        "panic inside run: {:?}",
        out.stderr
    );
    match out.exit_code {
        0 => {
            if !out.stdout.is_empty() {
                let v: Value = serde_json::from_slice(&out.stdout)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert!(v.get("cniVersion").and_then(Value::as_str).is_some());
                prop_assert!(v.get("code").is_none(), "success with an error body: {}", v);
            }
        }
        1 => {
            let reply =
                ErrorReply::parse(&out.stdout).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(reply.code > 0);
            prop_assert!(!reply.msg.is_empty());
            prop_assert!(!reply.cni_version.is_empty());
        }
        other => prop_assert!(false, "exit code {}", other),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1500,
        // Integration tests have no lib.rs next to them to persist into.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_input_never_panics(vars in vars(), stdin in stdin()) {
        let out = run(vars, &stdin, &Fixed);
        check_output(&out)?;
    }

    #[test]
    fn random_config_with_valid_variables(stdin in config_json(), verb in prop::sample::select(vec!["ADD", "DEL", "CHECK", "STATUS", "GC"])) {
        let vars = vec![
            ("CNI_COMMAND", verb),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/var/run/netns/cni-1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ];
        let out = run(vars, &stdin, &Fixed);
        check_output(&out)?;
        // What a runtime checks: an ADD result is in the version it asked for.
        if verb == "ADD" && out.exit_code == 0 {
            let conf: Value = serde_json::from_slice(&stdin).unwrap();
            let result: Value = serde_json::from_slice(&out.stdout).unwrap();
            if let Some(asked) = conf.get("cniVersion").and_then(Value::as_str).and_then(CniVersion::parse) {
                prop_assert_eq!(result["cniVersion"].as_str(), Some(asked.as_str()));
            }
        }
    }

    #[test]
    fn random_results_parse_or_fail_cleanly(v in any_json(), version in prop::sample::select(CniVersion::ALL.to_vec())) {
        if let Ok(r) = CniResult::from_value(&v, version, "prevResult") {
            // Whatever parses renders and parses back in every version.
            for out_version in CniVersion::ALL {
                let bytes = r.render(out_version);
                let back = CniResult::parse(&bytes, out_version, "x");
                prop_assert!(back.is_ok(), "{:?}", back);
            }
        }
    }

    #[test]
    fn random_cni_args_never_panic(s in "\\PC{0,40}") {
        let _ = CniArgs::parse(&s);
        let _ = IfName::new(&s);
        let _ = ContainerId::new(&s);
    }
}
