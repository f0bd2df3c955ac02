//! Prometheus exposition of the pinned counters: a snapshot is taken at
//! scrape time (so counters survive agent restarts and never go backwards
//! while a pair exists) and encoded with the prometheus-client crate.

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
use veth_common::{DropReason, Verdicts};

use crate::{
    dataplane::{self, Pins, ProgramStats, HOOKS},
    netlink::Host,
    observe::{host_ifindexes, pair_stats, TopologyStats},
    state::{self, StateDir},
};

/// Everything one scrape reports.
#[derive(Clone, Debug, Default)]
pub struct MetricsSnapshot {
    pub topologies: Vec<TopologyMetrics>,
    /// Recorded topologies whose description could not be read.
    pub unreadable: Vec<String>,
    /// Whether program run-time statistics are being collected.
    pub bpf_stats: bool,
    /// How long gathering this snapshot took.
    pub gather_time: Duration,
}

#[derive(Clone, Debug)]
pub struct TopologyMetrics {
    pub stats: TopologyStats,
    /// Pods whose host-side veth exists.
    pub pods: u64,
    /// Host-side veths with our program pinned at each hook.
    pub attached: BTreeMap<&'static str, u64>,
    pub programs: Vec<ProgramStats>,
}

type Labels = Vec<(&'static str, String)>;

impl Collector for MetricsSnapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut packets: Vec<(Labels, u64)> = Vec::new();
        let mut bytes: Vec<(Labels, u64)> = Vec::new();
        let mut drops: Vec<(Labels, u64)> = Vec::new();
        let mut pods: Vec<(Labels, u64)> = Vec::new();
        let mut unknown_veth: Vec<(Labels, u64)> = Vec::new();
        let mut attached: Vec<(Labels, u64)> = Vec::new();
        let mut runs: Vec<(Labels, u64)> = Vec::new();
        let mut run_seconds: Vec<(Labels, f64)> = Vec::new();

        for t in &self.topologies {
            let topology = t.stats.name.clone();
            pods.push((vec![("topology", topology.clone())], t.pods));
            unknown_veth.push((
                vec![("topology", topology.clone())],
                t.stats.unknown_veth_drops,
            ));
            for (hook, n) in &t.attached {
                attached.push((
                    vec![("topology", topology.clone()), ("hook", hook.to_string())],
                    *n,
                ));
            }
            for pair in &t.stats.pairs {
                for (direction, v) in [("from_pod", &pair.from_pod), ("to_pod", &pair.to_pod)] {
                    for (path, p, b) in paths(v) {
                        let labels = pod_labels(
                            &topology,
                            pair,
                            [
                                ("direction", direction.to_string()),
                                ("path", path.to_string()),
                            ],
                        );
                        packets.push((labels.clone(), p));
                        bytes.push((labels, b));
                    }
                }
                for reason in DropReason::ALL {
                    let labels =
                        pod_labels(&topology, pair, [("reason", reason.name().to_string())]);
                    drops.push((labels, pair.drops.get(reason.name()).copied().unwrap_or(0)));
                }
            }
            if self.bpf_stats {
                for p in &t.programs {
                    let labels = vec![
                        ("topology", topology.clone()),
                        ("program", p.program.to_string()),
                    ];
                    runs.push((labels.clone(), p.run_count));
                    run_seconds.push((labels, p.run_time_ns as f64 / 1e9));
                }
            }
        }

        counter_family(
            &mut encoder,
            "veth_pair_packets",
            "Packets per pair and direction, by path: redirect (bpf_redirect_peer between pods), host (through the host stack), drop (dropped by the program)",
            &packets,
        )?;
        counter_family(
            &mut encoder,
            "veth_pair_bytes",
            "Bytes (skb->len) per pair, direction and path",
            &bytes,
        )?;
        counter_family(
            &mut encoder,
            "veth_pair_drops",
            "Packets dropped by the program, by reason",
            &drops,
        )?;
        counter_family(
            &mut encoder,
            "veth_unknown_veth_drops",
            "Frames dropped because they came from a veth that runs the topology's program but has no pod",
            &unknown_veth,
        )?;
        gauge_family(
            &mut encoder,
            "veth_pods",
            "Pods of the topology whose veth pair exists",
            &pods,
        )?;
        gauge_family(
            &mut encoder,
            "veth_attached_programs",
            "Host-side veths with the topology's program attached, by TCX hook",
            &attached,
        )?;
        if self.bpf_stats {
            counter_family(
                &mut encoder,
                "veth_program_runs",
                "Program runs (while BPF statistics are enabled)",
                &runs,
            )?;
            counter_family(
                &mut encoder,
                "veth_program_run_seconds",
                "Time spent in the program (while BPF statistics are enabled)",
                &run_seconds,
            )?;
        }
        let unreadable: Vec<(Labels, u64)> = self
            .unreadable
            .iter()
            .map(|name| (vec![("topology", name.clone())], 1))
            .collect();
        gauge_family(
            &mut encoder,
            "veth_topology_unreadable",
            "1 for a recorded topology whose description this vethctl cannot read (its series are missing)",
            &unreadable,
        )?;
        let gather = ConstGauge::new(self.gather_time.as_secs_f64());
        gather.encode(encoder.encode_descriptor(
            "veth_scrape_gather_seconds",
            "Time this scrape took to read the maps and the kernel",
            None,
            gather.metric_type(),
        )?)?;
        Ok(())
    }
}

/// `topology`, `namespace` (a Kubernetes pod's only), `pod`, then `more`.
fn pod_labels<const N: usize>(
    topology: &str,
    pair: &crate::observe::PairStats,
    more: [(&'static str, String); N],
) -> Vec<(&'static str, String)> {
    let mut labels = vec![("topology", topology.to_string())];
    labels.extend(pair.namespace.clone().map(|ns| ("namespace", ns)));
    labels.push(("pod", pair.pod.clone()));
    labels.extend(more);
    labels
}

/// (path label, packets, bytes) of one direction.
fn paths(v: &Verdicts) -> [(&'static str, u64, u64); 3] {
    [
        ("redirect", v.redirected_packets, v.redirected_bytes),
        ("host", v.passed_packets, v.passed_bytes),
        ("drop", v.dropped_packets, v.dropped_bytes),
    ]
}

fn counter_family<N>(
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

fn gauge_family(
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

/// Reads every recorded topology's counters, links, pins and program
/// statistics. A topology whose maps are gone (a crashed `up`) is reported
/// without pairs rather than failing the scrape.
pub async fn gather(host: &Host, bpf_stats: bool) -> anyhow::Result<MetricsSnapshot> {
    let started = Instant::now();
    let mut topologies = Vec::new();
    let mut unreadable = Vec::new();
    for name in state::recorded_topologies()? {
        // One unreadable topology (e.g. recorded by a newer vethctl) must
        // not blank the metrics of all the others.
        let topology = match StateDir::new(&name).load() {
            Ok(Some(topology)) => crate::endpoint::with_endpoints(topology),
            Ok(None) => continue,
            Err(e) => {
                eprintln!("vethctl agent: skipping topology {name:?}: {e:#}");
                unreadable.push(name);
                continue;
            }
        };
        let ifindexes = host_ifindexes(host, &topology).await?;
        let counters = dataplane::read_counters(&name).unwrap_or_default();
        let pins = Pins::new(&name);
        let present: Vec<&str> = topology
            .pods
            .iter()
            .map(|p| p.host_veth.as_str())
            .filter(|veth| ifindexes.contains_key(*veth))
            .collect();
        let attached = HOOKS
            .iter()
            .map(|&hook| {
                let n = present
                    .iter()
                    .filter(|v| pins.link(v, hook).exists())
                    .count();
                (hook.name(), n as u64)
            })
            .collect();
        topologies.push(TopologyMetrics {
            stats: pair_stats(&topology, &ifindexes, &counters),
            pods: present.len() as u64,
            attached,
            programs: dataplane::program_stats(&name),
        });
    }
    Ok(MetricsSnapshot {
        topologies,
        unreadable,
        bpf_stats,
        gather_time: started.elapsed(),
    })
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
                },
                pods: 1,
                attached: BTreeMap::from([("ingress", 1), ("egress", 1)]),
                programs: vec![ProgramStats {
                    program: "from_pod",
                    id: 3,
                    run_count: 12,
                    run_time_ns: 1_500,
                }],
            }],
            unreadable: Vec::new(),
            bpf_stats: false,
            gather_time: Duration::from_millis(2),
        }
    }

    #[test]
    fn exposition_has_conventional_names_and_labels() {
        let text = encode(snapshot());
        assert!(text.contains("# TYPE veth_pair_packets counter"), "{text}");
        assert!(text.contains(
            "veth_pair_packets_total{topology=\"demo\",pod=\"web\",direction=\"from_pod\",path=\"redirect\"} 10"
        ), "{text}");
        assert!(text.contains(
            "veth_pair_bytes_total{topology=\"demo\",pod=\"web\",direction=\"from_pod\",path=\"redirect\"} 980"
        ), "{text}");
        assert!(text.contains(
            "veth_pair_packets_total{topology=\"demo\",pod=\"web\",direction=\"from_pod\",path=\"host\"} 2"
        ), "{text}");
        assert!(
            text.contains(
                "veth_pair_drops_total{topology=\"demo\",pod=\"web\",reason=\"redirect_failed\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("veth_pods{topology=\"demo\"} 1"), "{text}");
        assert!(
            text.contains("veth_attached_programs{topology=\"demo\",hook=\"ingress\"} 1"),
            "{text}"
        );
        assert!(
            !text.contains("veth_program_runs"),
            "only with BPF stats on: {text}"
        );
        assert!(text.trim_end().ends_with("# EOF"));
    }

    #[test]
    fn an_unreadable_topology_is_a_gauge_beside_the_others_series() {
        let mut s = snapshot();
        s.unreadable = vec!["broken".into()];
        let text = encode(s);
        assert!(
            text.contains("# TYPE veth_topology_unreadable gauge"),
            "{text}"
        );
        assert!(
            text.contains("veth_topology_unreadable{topology=\"broken\"} 1"),
            "{text}"
        );
        assert!(text.contains("veth_pods{topology=\"demo\"} 1"), "{text}");
        // Nothing unreadable: no series at all (not a 0 per topology).
        assert!(!encode(snapshot()).contains("veth_topology_unreadable{"));
    }

    #[test]
    fn program_stats_appear_when_enabled() {
        let mut s = snapshot();
        s.bpf_stats = true;
        let text = encode(s);
        assert!(
            text.contains("veth_program_runs_total{topology=\"demo\",program=\"from_pod\"} 12"),
            "{text}"
        );
        assert!(
            text.contains(
                "veth_program_run_seconds_total{topology=\"demo\",program=\"from_pod\"} 0.0000015"
            ),
            "{text}"
        );
    }
}
