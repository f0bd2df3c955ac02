//! Prometheus exposition of the pinned counters: a snapshot is taken at
//! scrape time (so counters survive agent restarts and never go backwards
//! while a pair exists) and encoded with the prometheus-client crate.
//!
//! Every family starts with `vethctl_`, and every series that says what
//! the program did with a frame uses the words of `stats --json`, `trace`
//! and the tables: `verdict="redirected|passed|dropped"`. Drop reasons are
//! kept per network (a few series per node); per pod only when asked
//! (`agent --per-pod-drops`), since most of them stay 0.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use veth_common::{DropReason, PairCounters, Verdicts};

use crate::{
    dataplane::{self, Hook, Pins, ProgramStats, HOOKS},
    model::Topology,
    netlink::{links::LinkState, Host},
    observe::{
        k8s_names, mapped_endpoints, pair_stats,
        passes::{Pass, PassStats},
        EndpointState, TopologyStats,
    },
    state::{self, StateDir},
    version as build_info,
};

/// What a scrape includes beyond the defaults.
#[derive(Clone, Copy, Debug, Default)]
pub struct MetricsOptions {
    /// Program run-time statistics are being collected: report them.
    pub bpf_stats: bool,
    /// Drop reasons per pod as well as per network.
    pub per_pod_drops: bool,
}

/// Everything one scrape reports.
#[derive(Clone, Debug, Default)]
pub struct MetricsSnapshot {
    pub topologies: Vec<TopologyMetrics>,
    /// Recorded topologies whose description could not be read.
    pub unreadable: Vec<String>,
    pub options: MetricsOptions,
    /// The agent's passes over the endpoints (empty outside the agent).
    pub passes: Vec<(Pass, PassStats)>,
    /// How long gathering this snapshot took.
    pub gather_time: Duration,
}

#[derive(Clone, Debug)]
pub struct TopologyMetrics {
    pub stats: TopologyStats,
    /// Pods whose host-side veth exists.
    pub pods: u64,
    /// Host-side veths running the topology's program at each hook, as a
    /// pinned link or as a `clsact` filter.
    pub attached: BTreeMap<&'static str, u64>,
    /// Every pod's endpoint state, as `status` judges it.
    pub endpoints: Vec<PodEndpoint>,
    /// Drops by reason over the whole network (its pods, and frames from
    /// veths without a pod).
    pub drops: BTreeMap<&'static str, u64>,
    pub programs: Vec<ProgramStats>,
}

/// One pod's endpoint state.
#[derive(Clone, Debug)]
pub struct PodEndpoint {
    pub namespace: Option<String>,
    pub pod: String,
    pub state: EndpointState,
}

type Labels = Vec<(&'static str, String)>;
type Series<N> = Vec<(Labels, N)>;

impl Collector for MetricsSnapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut encoder;
        encode_build_info(e)?;
        self.encode_pairs(e)?;
        self.encode_drops(e)?;
        self.encode_endpoints(e)?;
        self.encode_programs(e)?;
        self.encode_passes(e)?;
        crate::etcd::sync_state::encode(e)?;
        let unreadable: Series<u64> = self
            .unreadable
            .iter()
            .map(|name| (vec![("topology", name.clone())], 1))
            .collect();
        gauge_family(
            e,
            "vethctl_topology_unreadable",
            "1 for a recorded topology whose description this vethctl cannot read (its series are missing)",
            &unreadable,
        )?;
        float_gauge_family(
            e,
            "vethctl_scrape_gather_seconds",
            "Time this scrape took to read the maps and the kernel",
            &[(Vec::new(), self.gather_time.as_secs_f64())],
        )
    }
}

fn encode_build_info(e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let labels = vec![
        ("version", build_info::VERSION.to_string()),
        ("commit", build_info::COMMIT.to_string()),
        ("bpf_object", build_info::bpf_object_digest()),
    ];
    gauge_family(
        e,
        "vethctl_build_info",
        "Always 1: the vethctl version, the commit it was built from and a digest of its eBPF object",
        &[(labels, 1)],
    )
}

impl MetricsSnapshot {
    fn topology_labels(&self) -> impl Iterator<Item = (&TopologyMetrics, Labels)> {
        self.topologies
            .iter()
            .map(|t| (t, vec![("topology", t.stats.name.clone())]))
    }

    fn encode_pairs(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (mut packets, mut bytes) = (Vec::new(), Vec::new());
        for t in &self.topologies {
            for pair in &t.stats.pairs {
                for (direction, v) in [("from_pod", &pair.from_pod), ("to_pod", &pair.to_pod)] {
                    for (verdict, p, b) in verdicts(v) {
                        let labels = pod_labels(
                            &t.stats.name,
                            pair.namespace.as_deref(),
                            &pair.pod,
                            [("direction", direction), ("verdict", verdict)],
                        );
                        packets.push((labels.clone(), p));
                        bytes.push((labels, b));
                    }
                }
            }
        }
        counter_family(
            e,
            "vethctl_pair_packets",
            "Packets per pair and direction, by verdict: redirected (to another pod of the node by the \
             program: bpf_redirect_peer in mode tc, a DEVMAP redirect in mode xdp), remote (by the \
             programs across nodes, cross_node ebpf or ebpf-vxlan: from_pod sent to another node, \
             to_pod received from one), passed (to the host stack), dropped (by the program)",
            &packets,
        )?;
        counter_family(
            e,
            "vethctl_pair_bytes",
            "Bytes (skb->len, or the XDP frame's length) per pair, direction and verdict",
            &bytes,
        )
    }

    fn encode_drops(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut network: Series<u64> = Vec::new();
        for (t, labels) in self.topology_labels() {
            for reason in DropReason::ALL {
                let name = reason.name();
                let mut labels = labels.clone();
                labels.push(("reason", name.to_string()));
                network.push((labels, t.drops.get(name).copied().unwrap_or(0)));
            }
        }
        counter_family(
            e,
            "vethctl_drops",
            "Packets the programs dropped in the network, by reason (unknown_veth: from a veth \
             that runs the program but has no pod)",
            &network,
        )?;
        if !self.options.per_pod_drops {
            return Ok(());
        }
        let mut per_pod: Series<u64> = Vec::new();
        for t in &self.topologies {
            for pair in &t.stats.pairs {
                for reason in DropReason::ALL {
                    let labels = pod_labels(
                        &t.stats.name,
                        pair.namespace.as_deref(),
                        &pair.pod,
                        [("reason", reason.name())],
                    );
                    per_pod.push((labels, pair.drops.get(reason.name()).copied().unwrap_or(0)));
                }
            }
        }
        counter_family(
            e,
            "vethctl_pair_drops",
            "Packets the program dropped per pod, by reason (agent --per-pod-drops)",
            &per_pod,
        )
    }

    fn encode_endpoints(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (mut pods, mut by_state, mut ready, mut attached) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (t, labels) in self.topology_labels() {
            pods.push((labels.clone(), t.pods));
            for state in EndpointState::ALL {
                let n = t.endpoints.iter().filter(|p| p.state == state).count();
                let mut labels = labels.clone();
                labels.push(("state", state.name().to_string()));
                by_state.push((labels, n as u64));
            }
            for p in &t.endpoints {
                let labels = pod_labels(&t.stats.name, p.namespace.as_deref(), &p.pod, []);
                ready.push((labels, u64::from(p.state == EndpointState::Ready)));
            }
            for (hook, n) in &t.attached {
                let mut labels = labels.clone();
                labels.push(("hook", hook.to_string()));
                attached.push((labels, *n));
            }
        }
        gauge_family(
            e,
            "vethctl_pods",
            "Pods of the topology whose veth pair exists",
            &pods,
        )?;
        gauge_family(
            e,
            "vethctl_endpoints",
            "Pods by endpoint state, as `vethctl status` shows it: ready, down (veth or eth0 down: \
             frames go to the host stack), stale (the maps name another device), unmapped (veth \
             without map entries), missing (neither)",
            &by_state,
        )?;
        gauge_family(
            e,
            "vethctl_endpoint_ready",
            "1 if frames for the pod are redirected to its veth, which is up",
            &ready,
        )?;
        gauge_family(
            e,
            "vethctl_attached_programs",
            "Host-side veths running the topology's program at the hook, as a pinned TCX or XDP \
             link or as a clsact filter (a runtime's pods)",
            &attached,
        )
    }

    fn encode_programs(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if !self.options.bpf_stats {
            return Ok(());
        }
        let (mut runs, mut seconds) = (Vec::new(), Vec::new());
        for (t, labels) in self.topology_labels() {
            for p in &t.programs {
                let mut labels = labels.clone();
                labels.push(("program", p.program.to_string()));
                runs.push((labels.clone(), p.run_count));
                seconds.push((labels, p.run_time_ns as f64 / 1e9));
            }
        }
        counter_family(
            e,
            "vethctl_program_runs",
            "Program runs (while BPF statistics are enabled)",
            &runs,
        )?;
        counter_family(
            e,
            "vethctl_program_run_seconds",
            "Time spent in the program (while BPF statistics are enabled)",
            &seconds,
        )
    }

    fn encode_passes(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let label = |pass: &Pass| vec![("pass", pass.name().to_string())];
        let runs: Series<u64> = self
            .passes
            .iter()
            .map(|(p, s)| (label(p), s.runs))
            .collect();
        let errors: Series<u64> = self
            .passes
            .iter()
            .map(|(p, s)| (label(p), s.errors))
            .collect();
        let last: Series<f64> = self
            .passes
            .iter()
            .filter_map(|(p, s)| Some((label(p), s.last_success?)))
            .collect();
        counter_family(
            e,
            "vethctl_agent_passes",
            "The agent's passes over the endpoints: reconcile (every endpoint against a link \
             dump, periodically) and link_event (the links named by the rtnetlink events since the last pass)",
            &runs,
        )?;
        counter_family(
            e,
            "vethctl_agent_pass_errors",
            "The agent's passes that failed in part or in all (the agent's log says why)",
            &errors,
        )?;
        float_gauge_family(
            e,
            "vethctl_agent_last_success_timestamp_seconds",
            "When a pass of this kind last succeeded in full (Unix time)",
            &last,
        )
    }
}

/// `topology`, `namespace` (a Kubernetes pod's only), `pod`, then `more`.
fn pod_labels<const N: usize>(
    topology: &str,
    namespace: Option<&str>,
    pod: &str,
    more: [(&'static str, &str); N],
) -> Labels {
    let mut labels = vec![("topology", topology.to_string())];
    labels.extend(namespace.map(|ns| ("namespace", ns.to_string())));
    labels.push(("pod", pod.to_string()));
    labels.extend(more.into_iter().map(|(k, v)| (k, v.to_string())));
    labels
}

/// (verdict label, packets, bytes) of one direction, in the words of
/// [`Verdicts`]' fields.
fn verdicts(v: &Verdicts) -> [(&'static str, u64, u64); 4] {
    [
        ("redirected", v.redirected_packets, v.redirected_bytes),
        ("remote", v.remote_packets, v.remote_bytes),
        ("passed", v.passed_packets, v.passed_bytes),
        ("dropped", v.dropped_packets, v.dropped_bytes),
    ]
}

pub(crate) fn counter_family<N>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, N)],
) -> Result<(), std::fmt::Error>
where
    N: Copy
        + prometheus_client::encoding::EncodeCounterValue
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    ConstCounter<N>: EncodeMetric,
{
    if series.is_empty() {
        return Ok(());
    }
    let kind = ConstCounter::new(series[0].1).metric_type();
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in series {
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

pub(crate) fn gauge_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    if series.is_empty() {
        return Ok(());
    }
    let kind = ConstGauge::new(0i64).metric_type();
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in series {
        let value = i64::try_from(*value).unwrap_or(i64::MAX);
        ConstGauge::new(value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

pub(crate) fn float_gauge_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, f64)],
) -> Result<(), std::fmt::Error> {
    if series.is_empty() {
        return Ok(());
    }
    let kind = ConstGauge::new(0f64).metric_type();
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in series {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// Reads every recorded topology's counters, links, pins and program
/// statistics. A topology whose maps are gone (a crashed `up`) is reported
/// without pairs rather than failing the scrape.
/// Reads the maps of every recorded topology within `scope`.
pub async fn gather(
    host: &Host,
    options: MetricsOptions,
    scope: &state::Scope,
) -> anyhow::Result<MetricsSnapshot> {
    let started = Instant::now();
    // One dump for all topologies.
    let links: BTreeMap<String, LinkState> = host
        .links()
        .await?
        .into_iter()
        .map(|l| (l.name.clone(), l))
        .collect();
    let mut topologies = Vec::new();
    let mut unreadable = Vec::new();
    for name in scope.recorded()? {
        // One unreadable topology (e.g. recorded by a newer vethctl) must
        // not blank the metrics of all the others.
        match StateDir::new(&name).load() {
            Ok(Some(topology)) => {
                let topology = crate::endpoint::with_endpoints(topology);
                topologies.push(topology_metrics(host, &topology, &links).await);
            }
            Ok(None) => {}
            Err(e) => {
                eprintln!("vethctl agent: skipping topology {name:?}: {e:#}");
                unreadable.push(name);
            }
        }
    }
    Ok(MetricsSnapshot {
        topologies,
        unreadable,
        options,
        passes: Vec::new(),
        gather_time: started.elapsed(),
    })
}

async fn topology_metrics(
    host: &Host,
    topology: &Topology,
    links: &BTreeMap<String, LinkState>,
) -> TopologyMetrics {
    let name = &topology.name;
    let ifindexes: BTreeMap<String, u32> = topology
        .pods
        .iter()
        .filter_map(|p| Some((p.host_veth.clone(), links.get(&p.host_veth)?.ifindex)))
        .collect();
    let counters = dataplane::read_counters(name).unwrap_or_default();
    let mapped = mapped_endpoints(name);
    let endpoints = topology
        .pods
        .iter()
        .map(|pod| {
            let (namespace, name) = k8s_names(pod);
            let state = EndpointState::of_pod(&mapped, pod, links.get(&pod.host_veth));
            PodEndpoint {
                namespace,
                pod: name,
                state,
            }
        })
        .collect();
    TopologyMetrics {
        stats: pair_stats(topology, &ifindexes, &counters),
        pods: ifindexes.len() as u64,
        attached: attached_counts(host, topology, &ifindexes).await,
        endpoints,
        drops: network_drops(&counters),
        programs: dataplane::program_stats(name),
    }
}

/// Per hook, the topology's veths that run its program there: a pinned
/// link, or (a runtime's pods, at the TC hooks of the mode) a `clsact`
/// filter running the pinned program.
async fn attached_counts(
    host: &Host,
    topology: &Topology,
    veths: &BTreeMap<String, u32>,
) -> BTreeMap<&'static str, u64> {
    let pins = Pins::new(&topology.name);
    let mut counts = BTreeMap::new();
    for hook in HOOKS {
        let filter = match hook {
            _ if !Hook::for_mode(topology.mode).contains(&hook) => None,
            Hook::Ingress => Some(true),
            Hook::Egress => Some(false),
            Hook::Xdp => None,
        };
        let program = dataplane::pinned_program_stats(&topology.name, hook.program()).map(|p| p.id);
        let mut n = 0;
        for (veth, &ifindex) in veths {
            let attached = pins.link(veth, hook).exists()
                || match (filter, program) {
                    (Some(ingress), Some(id)) => host
                        .bpf_filter_programs(ifindex, ingress)
                        .await
                        .contains(&id),
                    _ => false,
                };
            n += u64::from(attached);
        }
        counts.insert(hook.name(), n);
    }
    counts
}

/// Drops by reason over every slot of the network's counters.
fn network_drops(counters: &BTreeMap<u32, PairCounters>) -> BTreeMap<&'static str, u64> {
    DropReason::ALL
        .iter()
        .map(|&reason| {
            let n = counters
                .values()
                .map(|c| c.drop_reasons[reason as usize])
                .sum();
            (reason.name(), n)
        })
        .collect()
}

/// One scrape's OpenMetrics exposition: the networks within `scope` and,
/// on a lab's machine, every node of the labs within it (see
/// [`super::lab_metrics`]). `passes` are the agent's.
pub async fn exposition(
    host: &Host,
    options: MetricsOptions,
    scope: &state::Scope,
    passes: Vec<(Pass, PassStats)>,
) -> anyhow::Result<String> {
    let mut snapshot = gather(host, options, scope).await?;
    snapshot.passes = passes;
    let own = encode(snapshot);
    let mut labs = crate::lab::recorded_labs();
    labs.retain(|lab| scope.includes(lab));
    if labs.is_empty() {
        return Ok(own);
    }
    let nodes = super::lab_metrics::of_labs(&labs, options.per_pod_drops).await;
    Ok(super::lab_metrics::merge(&own, &nodes))
}

/// The text exposition (OpenMetrics) of a snapshot.
pub fn encode(snapshot: MetricsSnapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

/// Content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Content type of [`to_text_format`]'s output.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// True if a scraper's `Accept` header takes OpenMetrics (Prometheus
/// does); others (curl, `promtool check metrics`) get the older text
/// format, as the Go client serves them.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// [`encode`]'s OpenMetrics in the Prometheus text format 0.0.4: a
/// counter family is named with its `_total` there, and there is no
/// `# EOF`. Our families have no units, exemplars or `_created` series,
/// so nothing else differs.
pub fn to_text_format(openmetrics: &str) -> String {
    let counters: std::collections::BTreeSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines().filter(|l| *l != "# EOF") {
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out += renamed.as_deref().unwrap_or(line);
        out.push('\n');
    }
    out
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::PairStats;

    fn snapshot() -> MetricsSnapshot {
        let from_pod = Verdicts {
            redirected_packets: 10,
            redirected_bytes: 980,
            passed_packets: 2,
            ..Verdicts::default()
        };
        let pair = PairStats {
            pod: "web".into(),
            namespace: None,
            host_veth: "demo-web".into(),
            host_ifindex: 7,
            total: from_pod,
            from_pod,
            to_pod: Verdicts::default(),
            drops: BTreeMap::from([("redirect_failed", 1)]),
        };
        MetricsSnapshot {
            topologies: vec![TopologyMetrics {
                stats: TopologyStats {
                    name: "demo".into(),
                    pairs: vec![pair],
                    unknown_veth_drops: 0,
                    underlay_drops: 0,
                    across_nodes: false,
                },
                pods: 1,
                attached: BTreeMap::from([("ingress", 1), ("egress", 1)]),
                endpoints: vec![
                    PodEndpoint {
                        namespace: None,
                        pod: "web".into(),
                        state: EndpointState::Ready,
                    },
                    PodEndpoint {
                        namespace: Some("prod".into()),
                        pod: "api".into(),
                        state: EndpointState::Down,
                    },
                ],
                drops: BTreeMap::from([("redirect_failed", 1), ("unknown_veth", 3)]),
                programs: vec![ProgramStats {
                    program: "from_pod",
                    id: 3,
                    run_count: 12,
                    run_time_ns: 1_500,
                }],
            }],
            unreadable: Vec::new(),
            options: MetricsOptions::default(),
            passes: Vec::new(),
            gather_time: Duration::from_millis(2),
        }
    }

    fn has(text: &str, line: &str) {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }

    #[test]
    fn exposition_has_conventional_names_and_labels() {
        let text = encode(snapshot());
        has(&text, "# TYPE vethctl_pair_packets counter");
        has(&text, "vethctl_pair_packets_total{topology=\"demo\",pod=\"web\",direction=\"from_pod\",verdict=\"redirected\"} 10");
        has(&text, "vethctl_pair_bytes_total{topology=\"demo\",pod=\"web\",direction=\"from_pod\",verdict=\"redirected\"} 980");
        has(&text, "vethctl_pair_packets_total{topology=\"demo\",pod=\"web\",direction=\"from_pod\",verdict=\"passed\"} 2");
        has(&text, "vethctl_pair_packets_total{topology=\"demo\",pod=\"web\",direction=\"to_pod\",verdict=\"dropped\"} 0");
        has(&text, "vethctl_pods{topology=\"demo\"} 1");
        has(
            &text,
            "vethctl_attached_programs{topology=\"demo\",hook=\"ingress\"} 1",
        );
        assert!(
            !text.contains("vethctl_program_runs"),
            "only with BPF stats on: {text}"
        );
        assert!(text.trim_end().ends_with("# EOF"));
        let families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .collect();
        assert!(
            families.iter().all(|f| f.starts_with("vethctl_")),
            "one prefix: {families:?}"
        );
    }

    #[test]
    fn build_info_names_version_commit_and_object() {
        let text = encode(snapshot());
        has(
            &text,
            &format!(
                "vethctl_build_info{{version=\"{}\",commit=\"{}\",bpf_object=\"{}\"}} 1",
                build_info::VERSION,
                build_info::COMMIT,
                build_info::bpf_object_digest()
            ),
        );
    }

    #[test]
    fn drop_reasons_are_per_network_unless_asked_per_pod() {
        let text = encode(snapshot());
        has(
            &text,
            "vethctl_drops_total{topology=\"demo\",reason=\"redirect_failed\"} 1",
        );
        has(
            &text,
            "vethctl_drops_total{topology=\"demo\",reason=\"unknown_veth\"} 3",
        );
        let per_network = text
            .lines()
            .filter(|l| l.starts_with("vethctl_drops_total{"))
            .count();
        assert_eq!(per_network, DropReason::ALL.len(), "every reason, 0 or not");
        assert!(!text.contains("vethctl_pair_drops"), "{text}");

        let mut s = snapshot();
        s.options.per_pod_drops = true;
        let text = encode(s);
        has(
            &text,
            "vethctl_pair_drops_total{topology=\"demo\",pod=\"web\",reason=\"redirect_failed\"} 1",
        );
        has(
            &text,
            "vethctl_pair_drops_total{topology=\"demo\",pod=\"web\",reason=\"spoofed_mac\"} 0",
        );
    }

    #[test]
    fn endpoint_states_are_counted_per_network_and_shown_per_pod() {
        let text = encode(snapshot());
        has(
            &text,
            "vethctl_endpoints{topology=\"demo\",state=\"ready\"} 1",
        );
        has(
            &text,
            "vethctl_endpoints{topology=\"demo\",state=\"down\"} 1",
        );
        has(
            &text,
            "vethctl_endpoints{topology=\"demo\",state=\"stale\"} 0",
        );
        has(
            &text,
            "vethctl_endpoint_ready{topology=\"demo\",pod=\"web\"} 1",
        );
        has(
            &text,
            "vethctl_endpoint_ready{topology=\"demo\",namespace=\"prod\",pod=\"api\"} 0",
        );
    }

    #[test]
    fn agent_passes_have_errors_and_last_success() {
        let mut s = snapshot();
        s.passes = vec![
            (
                Pass::Reconcile,
                PassStats {
                    runs: 5,
                    errors: 1,
                    last_success: Some(1_700_000_000.5),
                },
            ),
            (Pass::LinkEvent, PassStats::default()),
        ];
        let text = encode(s);
        has(&text, "vethctl_agent_passes_total{pass=\"reconcile\"} 5");
        has(
            &text,
            "vethctl_agent_pass_errors_total{pass=\"reconcile\"} 1",
        );
        has(
            &text,
            "vethctl_agent_pass_errors_total{pass=\"link_event\"} 0",
        );
        has(
            &text,
            "vethctl_agent_last_success_timestamp_seconds{pass=\"reconcile\"} 1700000000.5",
        );
        assert!(
            !text.contains("vethctl_agent_last_success_timestamp_seconds{pass=\"link_event\"}"),
            "no success yet, no timestamp: {text}"
        );
    }

    #[test]
    fn an_unreadable_topology_is_a_gauge_beside_the_others_series() {
        let mut s = snapshot();
        s.unreadable = vec!["broken".into()];
        let text = encode(s);
        has(&text, "# TYPE vethctl_topology_unreadable gauge");
        has(&text, "vethctl_topology_unreadable{topology=\"broken\"} 1");
        has(&text, "vethctl_pods{topology=\"demo\"} 1");
        // Nothing unreadable: no series at all (not a 0 per topology).
        assert!(!encode(snapshot()).contains("vethctl_topology_unreadable{"));
    }

    #[test]
    fn program_stats_appear_when_enabled() {
        let mut s = snapshot();
        s.options.bpf_stats = true;
        let text = encode(s);
        has(
            &text,
            "vethctl_program_runs_total{topology=\"demo\",program=\"from_pod\"} 12",
        );
        has(
            &text,
            "vethctl_program_run_seconds_total{topology=\"demo\",program=\"from_pod\"} 0.0000015",
        );
    }

    #[test]
    fn the_text_format_names_counters_with_their_total() {
        let text = to_text_format(&encode(snapshot()));
        has(&text, "# TYPE vethctl_pair_packets_total counter");
        assert!(
            text.contains("# HELP vethctl_pair_packets_total Packets"),
            "{text}"
        );
        has(&text, "# TYPE vethctl_pods gauge");
        has(&text, "vethctl_pods{topology=\"demo\"} 1");
        assert!(!text.contains("# EOF"), "{text}");
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        )));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(None));
    }
}
