//! The pods of a node of a cluster kept in etcd that its agent runs
//! itself (`vethctl agent --pods FILE`), beside the runtime's CNI pods:
//! FILE holds `[[pods]]` entries written as a cluster file's
//! `[[nodes.pods]]`, and they become this node's `[[nodes.pods]]` in the
//! cluster file the agent makes from the node records, so they get their
//! addresses from the range the node leased and are wired by the same
//! `up` as every file pod. Pure: the agent reads the file.

use serde::Deserialize;

use super::{cluster::Cluster, invalid, registry::Settings, ModelError, PodFile};

/// Who the pods are checked on before a range is leased: the settings'
/// rules with one stand-in node, as `cluster init` checks the settings.
const PROBE_NODE: &str = "probe";

/// What a pods file may hold.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PodsFile {
    #[serde(default)]
    #[allow(dead_code)] // Checked here for the file's lines; copied as written.
    pods: Vec<PodFile>,
}

/// A node's own pods (none without `--pods`).
#[derive(Clone, Debug, Default)]
pub struct FilePods {
    pods: Option<toml_edit::ArrayOfTables>,
}

impl FilePods {
    /// The pods of `text` (a pods file), checked by the cluster file's
    /// rules for a node of the cluster of `settings`; errors name the
    /// field as the pods file has it (`pods[1].name`).
    pub fn from_toml(text: &str, settings: &Settings) -> Result<FilePods, ModelError> {
        // The pods' fields and the file's keys, with this file's lines.
        let _: PodsFile =
            toml::from_str(text).map_err(|e| super::toml_error(text, &e, "pods file"))?;
        let doc: toml_edit::DocumentMut = text
            .parse()
            .map_err(|e| invalid("pods file", format!("{e}")))?;
        let Some(pods) = doc.get("pods").and_then(|p| p.as_array_of_tables()) else {
            return Ok(FilePods::default());
        };
        let mut pods = pods.clone();
        for pod in pods.iter_mut() {
            // Placed by this file's lines, they would be written among
            // other tables of the cluster file they are added to.
            pod.set_position(None);
        }
        refuse_fixed_addresses(&pods)?;
        let pods = FilePods { pods: Some(pods) };
        let probe = node_table(PROBE_NODE, &pods);
        let mut cluster: toml_edit::DocumentMut = settings
            .text
            .parse()
            .map_err(|e| invalid("settings", format!("{e}")))?;
        cluster["nodes"] = toml_edit::Item::ArrayOfTables(std::iter::once(probe).collect());
        Cluster::from_toml(&cluster.to_string()).map_err(|e| {
            let suffix = format!(" (in node \"{PROBE_NODE}\")");
            let field = e.field.strip_prefix("nodes[0].").unwrap_or(&e.field);
            let field = field.strip_suffix(&suffix).unwrap_or(field).to_string();
            ModelError { field, ..e }
        })?;
        Ok(pods)
    }

    pub fn is_empty(&self) -> bool {
        self.pods.as_ref().is_none_or(|p| p.is_empty())
    }

    /// How many pods.
    pub fn len(&self) -> usize {
        self.pods.as_ref().map_or(0, |p| p.len())
    }

    /// `cluster` (a cluster file's text) with these pods as node `node`'s
    /// (in place of any it had).
    pub fn add_to(&self, cluster: &str, node: &str) -> Result<String, ModelError> {
        let Some(pods) = &self.pods else {
            return Ok(cluster.to_string());
        };
        let mut doc: toml_edit::DocumentMut = cluster
            .parse()
            .map_err(|e| invalid("cluster file", format!("{e}")))?;
        let mine = doc
            .get_mut("nodes")
            .and_then(|n| n.as_array_of_tables_mut())
            .and_then(|nodes| {
                nodes
                    .iter_mut()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(node))
            })
            .ok_or_else(|| invalid("nodes", format!("the cluster file has no node {node:?}")))?;
        mine["pods"] = toml_edit::Item::ArrayOfTables(pods.clone());
        Ok(doc.to_string())
    }
}

/// A node's range is the one its agent leases: a pod's fixed address
/// could only be right by chance.
fn refuse_fixed_addresses(pods: &toml_edit::ArrayOfTables) -> Result<(), ModelError> {
    for (i, pod) in pods.iter().enumerate() {
        if let Some(key) = ["ipv4", "ipv6"].into_iter().find(|k| pod.contains_key(k)) {
            return Err(invalid(
                format!("pods[{i}].{key}"),
                "the node's pod range is the one its agent leases, not known before: omit it \
                 (the pod gets the lowest free address of that range)",
            ));
        }
    }
    Ok(())
}

/// A `[[nodes]]` entry named `name` with `pods`.
fn node_table(name: &str, pods: &FilePods) -> toml_edit::Table {
    let mut t = toml_edit::Table::new();
    t["name"] = toml_edit::value(name);
    if let Some(p) = &pods.pods {
        t["pods"] = toml_edit::Item::ArrayOfTables(p.clone());
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: &str = "name = \"lab\"\nmode = \"tc\"\ncross_node = \"vxlan\"\n\
                            cluster_cidr = \"10.244.0.0/16\"\n";

    fn settings() -> Settings {
        Settings::from_toml(SETTINGS).unwrap()
    }

    fn refused(text: &str) -> ModelError {
        FilePods::from_toml(text, &settings()).unwrap_err()
    }

    #[test]
    fn pods_become_the_nodes_own_in_the_cluster_file() {
        let pods = FilePods::from_toml(
            "[[pods]]\nname = \"web\"\n[[pods]]\nname = \"db\"\n",
            &settings(),
        )
        .unwrap();
        assert_eq!(pods.len(), 2);
        let text = format!(
            "{SETTINGS}[underlay]\nvni = 7\n[[nodes]]\nname = \"n1\"\n\
             [[nodes]]\nname = \"n2\"\npod_cidr = \"10.244.3.0/24\"\n[[nodes]]\nname = \"n3\"\n"
        );
        let cluster = Cluster::from_toml(&pods.add_to(&text, "n2").unwrap()).unwrap();
        let (part, _) = cluster.node_part("n2").unwrap();
        let pods: Vec<String> = part
            .pods
            .iter()
            .map(|p| format!("{} {}", p.name, p.ipv4))
            .collect();
        assert_eq!(pods, ["web 10.244.3.2", "db 10.244.3.3"]);
        assert!(cluster.node_part("n1").unwrap().0.pods.is_empty());
        assert!(cluster.node_part("n3").unwrap().0.pods.is_empty());
        assert!(pods_of_nobody_change_nothing(&text));
    }

    fn pods_of_nobody_change_nothing(text: &str) -> bool {
        let none = FilePods::from_toml("# no pods\n", &settings()).unwrap();
        none.is_empty() && none.add_to(text, "n1").unwrap() == text
    }

    #[test]
    fn bad_pods_are_refused_naming_the_field() {
        let cases = [
            ("[[pods]]\nname = \"Web\"\n", "pods[0].name"),
            (
                "[[pods]]\nname = \"a\"\n[[pods]]\nname = \"a\"\n",
                "pods[1].name",
            ),
            ("[[pods]]\nname = \"a\"\nmtu = 9000\n", "pods[0].mtu"),
            (
                "[[pods]]\nname = \"a\"\nipv4 = \"10.244.0.9\"\n",
                "pods[0].ipv4",
            ),
            ("mode = \"bridge\"\n", "line 1, column 1"),
            ("pods = 3\n", "line 1, column 8"),
            (
                "[[pods]]\nname = \"a\"\ncolour = \"red\"\n",
                "line 3, column 1",
            ),
            ("[[pods]\n", "line 1, column"),
        ];
        for (text, field) in cases {
            let e = refused(text);
            assert!(e.field.starts_with(field), "{text:?}: {e:?}");
        }
    }
}
