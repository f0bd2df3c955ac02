//! Metrics of a lab's nodes on the lab's machine: each node asked as its
//! operator would (`vethctl --node NS metrics --openmetrics`), its series
//! labelled with its `node` and merged into this machine's exposition, so
//! one scrape of the machine's agent (or one `vethctl metrics`) shows
//! every node.

use std::collections::BTreeMap;

use crate::model::cluster::node_netns;

/// Every node of the labs `labs`: (node, its OpenMetrics exposition, or
/// `None` when it could not be asked), asked all at once (with
/// `--per-pod-drops` if `per_pod_drops`).
pub async fn of_labs(labs: &[String], per_pod_drops: bool) -> Vec<(String, Option<String>)> {
    let mut asked = Vec::new();
    for lab in labs {
        let Ok(cluster) = crate::lab::recorded_cluster(lab) else {
            continue;
        };
        for node in &cluster.nodes {
            let ns = node_netns(&cluster.name, &node.name);
            asked.push((node.name.clone(), tokio::spawn(ask(ns, per_pod_drops))));
        }
    }
    let mut out = Vec::new();
    for (node, task) in asked {
        out.push((node, task.await.ok().flatten()));
    }
    out
}

/// One node's exposition.
async fn ask(ns: String, per_pod_drops: bool) -> Option<String> {
    let exe = std::env::current_exe().ok()?;
    let output = tokio::process::Command::new(exe)
        .args(["--node", &ns, "metrics", "--openmetrics"])
        .args(per_pod_drops.then_some("--per-pod-drops"))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .ok()?;
    if !output.status.success() {
        eprintln!(
            "vethctl: metrics of node namespace {ns:?}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        return None;
    }
    String::from_utf8(output.stdout).ok()
}

/// One metric family of an exposition: its `# HELP`/`# TYPE` lines and
/// its samples.
#[derive(Default)]
struct Family {
    meta: Vec<String>,
    samples: Vec<String>,
}

/// `own` (this machine's OpenMetrics exposition) with every node's series
/// added, labelled `node`, each family's samples together as the format
/// requires, and a gauge `vethctl_lab_node_scraped` saying which nodes
/// answered.
pub fn merge(own: &str, nodes: &[(String, Option<String>)]) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    add(&mut order, &mut families, own, None);
    for (node, text) in nodes {
        if let Some(text) = text {
            add(&mut order, &mut families, text, Some(node));
        }
    }
    let mut out = String::new();
    for name in &order {
        let family = &families[name];
        for line in family.meta.iter().chain(&family.samples) {
            out += line;
            out.push('\n');
        }
    }
    out += "# HELP vethctl_lab_node_scraped Whether the lab's node answered this scrape (1) or not (0)\n";
    out += "# TYPE vethctl_lab_node_scraped gauge\n";
    for (node, text) in nodes {
        let up = u8::from(text.is_some());
        out += &format!(
            "vethctl_lab_node_scraped{{node=\"{}\"}} {up}\n",
            escape(node)
        );
    }
    out += "# EOF\n";
    out
}

/// Adds the families of `text`, its samples labelled `node` if given; a
/// family already there keeps its `# HELP`/`# TYPE` lines.
fn add(
    order: &mut Vec<String>,
    families: &mut BTreeMap<String, Family>,
    text: &str,
    node: Option<&str>,
) {
    let mut new_here = std::collections::BTreeSet::new();
    let mut current: Option<String> = None;
    for line in text.lines().filter(|l| !l.is_empty() && *l != "# EOF") {
        if let Some(rest) = line.strip_prefix("# ") {
            // `# HELP name …`, `# TYPE name …`, `# UNIT name …`.
            let name = rest.split(' ').nth(1).unwrap_or_default().to_string();
            if !families.contains_key(&name) {
                order.push(name.clone());
                new_here.insert(name.clone());
            }
            let family = families.entry(name.clone()).or_default();
            if new_here.contains(&name) {
                family.meta.push(line.to_string());
            }
            current = Some(name);
            continue;
        }
        let Some(family) = current.as_ref().and_then(|n| families.get_mut(n)) else {
            continue;
        };
        family.samples.push(match node {
            Some(node) => with_label(line, "node", node),
            None => line.to_string(),
        });
    }
}

/// A sample line with `key="value"` as its first label.
fn with_label(sample: &str, key: &str, value: &str) -> String {
    let label = format!("{key}=\"{}\"", escape(value));
    match sample.find(['{', ' ']) {
        Some(i) if sample.as_bytes()[i] == b'{' => {
            let rest = &sample[i + 1..];
            let sep = if rest.starts_with('}') { "" } else { "," };
            format!("{}{{{label}{sep}{rest}", &sample[..i])
        }
        Some(i) => format!("{}{{{label}}}{}", &sample[..i], &sample[i..]),
        None => sample.to_string(),
    }
}

/// A label value as the exposition format writes it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: &str = "# HELP vethctl_build_info Build\n# TYPE vethctl_build_info gauge\n\
                       vethctl_build_info{version=\"1\"} 1\n# EOF\n";
    const NODE: &str = "# HELP vethctl_build_info Build\n# TYPE vethctl_build_info gauge\n\
                        vethctl_build_info{version=\"1\"} 1\n\
                        # HELP vethctl_pods Pods\n# TYPE vethctl_pods gauge\n\
                        vethctl_pods{topology=\"lab\"} 2\nvethctl_up 1\n# EOF\n";

    #[test]
    fn node_series_join_their_family_labelled_with_the_node() {
        let merged = merge(
            OWN,
            &[
                ("n1".into(), Some(NODE.into())),
                ("n2".into(), None),
                ("n3".into(), Some(NODE.into())),
            ],
        );
        let expected = "# HELP vethctl_build_info Build\n# TYPE vethctl_build_info gauge\n\
            vethctl_build_info{version=\"1\"} 1\n\
            vethctl_build_info{node=\"n1\",version=\"1\"} 1\n\
            vethctl_build_info{node=\"n3\",version=\"1\"} 1\n\
            # HELP vethctl_pods Pods\n# TYPE vethctl_pods gauge\n\
            vethctl_pods{node=\"n1\",topology=\"lab\"} 2\nvethctl_up{node=\"n1\"} 1\n\
            vethctl_pods{node=\"n3\",topology=\"lab\"} 2\nvethctl_up{node=\"n3\"} 1\n\
            # HELP vethctl_lab_node_scraped Whether the lab's node answered this scrape (1) or not (0)\n\
            # TYPE vethctl_lab_node_scraped gauge\n\
            vethctl_lab_node_scraped{node=\"n1\"} 1\nvethctl_lab_node_scraped{node=\"n2\"} 0\n\
            vethctl_lab_node_scraped{node=\"n3\"} 1\n# EOF\n";
        assert_eq!(merged, expected);
    }

    #[test]
    fn labels_are_added_to_every_form_of_sample() {
        assert_eq!(with_label("m{} 1", "node", "a"), "m{node=\"a\"} 1");
        assert_eq!(with_label("m 1", "node", "a\"b"), "m{node=\"a\\\"b\"} 1");
        assert_eq!(
            with_label("m{x=\"1\"} 2", "node", "a"),
            "m{node=\"a\",x=\"1\"} 2"
        );
    }
}
