//! The DaemonSet manifest (`packaging/kubernetes/vethctl.yaml`) read as
//! kubelet reads it and turned into `podman run` arguments, so that a test
//! runs the image exactly as the manifest says and the two cannot drift.
//! Every field of the pod and of its containers is either translated or
//! named as one without a podman equivalent (scheduling, API access);
//! anything else is refused, so a field added to the manifest must be
//! added here too.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;

pub fn manifest_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging/kubernetes/vethctl.yaml")
}

/// Pod fields kubelet acts on that podman has no counterpart for, or that
/// only the API server uses.
const POD_FIELDS_WITHOUT_PODMAN: &[&str] = &[
    "serviceAccountName",
    "automountServiceAccountToken",
    "priorityClassName",
    "nodeSelector",
    "tolerations",
    "terminationGracePeriodSeconds",
];
/// Container fields the test checks itself (probes) or that change nothing
/// in how the container runs here (a local image; no limits set).
const CONTAINER_FIELDS_WITHOUT_PODMAN: &[&str] = &[
    "name",
    "imagePullPolicy",
    "ports",
    "livenessProbe",
    "readinessProbe",
    "resources",
];

/// The manifest's documents, as JSON values.
pub struct Manifest {
    pub documents: Vec<Value>,
}

impl Manifest {
    pub fn load() -> Result<Manifest> {
        let path = manifest_path();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let documents = serde_yaml::Deserializer::from_str(&text)
            .map(Value::deserialize)
            .collect::<Result<Vec<Value>, _>>()
            .with_context(|| format!("{} is not YAML", path.display()))?;
        Ok(Manifest { documents })
    }

    /// The one document of `kind`.
    pub fn kind(&self, kind: &str) -> Result<&Value> {
        let mut found = self.documents.iter().filter(|d| d["kind"] == kind);
        match (found.next(), found.next()) {
            (Some(d), None) => Ok(d),
            _ => bail!("the manifest must hold exactly one {kind}"),
        }
    }

    /// The DaemonSet's pod spec.
    pub fn pod(&self) -> Result<&Value> {
        Ok(&self.kind("DaemonSet")?["spec"]["template"]["spec"])
    }

    /// The container named `name` (init containers included).
    pub fn container(&self, name: &str) -> Result<&Value> {
        let pod = self.pod()?;
        ["initContainers", "containers"]
            .iter()
            .filter_map(|list| pod[list].as_array())
            .flatten()
            .find(|c| c["name"] == name)
            .with_context(|| format!("the DaemonSet has no container {name:?}"))
    }

    /// The ConfigMap's data.
    pub fn config(&self) -> Result<BTreeMap<String, String>> {
        let data = self.kind("ConfigMap")?["data"].clone();
        serde_json::from_value(data).context("the ConfigMap's data: strings")
    }
}

/// What differs on the test's node from a real one, as an operator would
/// change it: the ConfigMap's values, and where host paths are.
#[derive(Default)]
pub struct Node {
    /// ConfigMap keys replaced (the network's name and range).
    pub config: BTreeMap<String, String>,
    /// Host paths replaced (the runtime's CNI directories).
    pub host_paths: BTreeMap<String, PathBuf>,
}

/// A `podman run` of one container of the pod.
#[derive(Debug)]
pub struct PodmanRun {
    pub container: String,
    /// Options before the image.
    pub options: Vec<String>,
    pub image: String,
    /// The container's arguments, `$(VAR)` expanded as kubelet does.
    pub args: Vec<String>,
}

impl PodmanRun {
    /// `podman run` arguments after `run`: OPTIONS IMAGE ARGS.
    pub fn argv(&self) -> Vec<String> {
        let mut argv = self.options.clone();
        argv.push(self.image.clone());
        argv.extend(self.args.iter().cloned());
        argv
    }

    /// Replaces the argument `old`, which must be there.
    pub fn replace_arg(&mut self, old: &str, new: &str) {
        let arg = self
            .args
            .iter_mut()
            .find(|a| *a == old)
            .unwrap_or_else(|| panic!("{}: no argument {old:?}", self.container));
        *arg = new.to_string();
    }
}

/// The `podman run` of each container of the pod, init containers first,
/// in order.
pub fn podman_runs(manifest: &Manifest, node: &Node) -> Result<Vec<PodmanRun>> {
    let pod = manifest.pod()?;
    let pod_options = pod_options(pod)?;
    let mut config = manifest.config()?;
    config.extend(node.config.clone());
    let volumes = volumes(pod, node)?;
    let mut runs = Vec::new();
    for list in ["initContainers", "containers"] {
        for container in pod[list].as_array().into_iter().flatten() {
            let mut run = container_run(container, &config, &volumes)?;
            run.options.splice(0..0, pod_options.iter().cloned());
            runs.push(run);
        }
    }
    Ok(runs)
}

fn pod_options(pod: &Value) -> Result<Vec<String>> {
    let mut options = Vec::new();
    for (key, value) in pod.as_object().context("the pod spec: a map")? {
        match key.as_str() {
            "hostNetwork" if value == true => options.push("--network=host".into()),
            "hostPID" if value == true => options.push("--pid=host".into()),
            "initContainers" | "containers" | "volumes" => {}
            k if POD_FIELDS_WITHOUT_PODMAN.contains(&k) => {}
            other => bail!("pod field {other}: {value} has no translation to podman"),
        }
    }
    Ok(options)
}

/// Volume name → host path (replaced per [`Node::host_paths`]).
fn volumes(pod: &Value, node: &Node) -> Result<BTreeMap<String, PathBuf>> {
    let mut volumes = BTreeMap::new();
    for volume in pod["volumes"].as_array().into_iter().flatten() {
        let name = volume["name"].as_str().context("a volume without a name")?;
        let path = volume["hostPath"]["path"]
            .as_str()
            .with_context(|| format!("volume {name}: only hostPath volumes are translated"))?;
        let host = node
            .host_paths
            .get(path)
            .cloned()
            .unwrap_or_else(|| PathBuf::from(path));
        volumes.insert(name.to_string(), host);
    }
    Ok(volumes)
}

/// What kubelet does with the host paths before it starts the pod: makes
/// a DirectoryOrCreate one, checks a Directory one.
pub fn prepare_host_paths(manifest: &Manifest, node: &Node) -> Result<()> {
    let pod = manifest.pod()?;
    let hosts = volumes(pod, node)?;
    for volume in pod["volumes"].as_array().into_iter().flatten() {
        let name = volume["name"].as_str().unwrap_or_default();
        let host = &hosts[name];
        match volume["hostPath"]["type"].as_str() {
            Some("DirectoryOrCreate") => std::fs::create_dir_all(host)
                .with_context(|| format!("volume {name}: creating {}", host.display()))?,
            Some("Directory") if host.is_dir() => {}
            Some("Directory") => bail!("volume {name}: {} is not a directory", host.display()),
            other => bail!("volume {name}: hostPath type {other:?} is not translated"),
        }
    }
    Ok(())
}

fn container_run(
    c: &Value,
    config: &BTreeMap<String, String>,
    volumes: &BTreeMap<String, PathBuf>,
) -> Result<PodmanRun> {
    let name = c["name"].as_str().context("a container without a name")?;
    let env = env(c, config).with_context(|| format!("container {name}"))?;
    let strings = |key: &str| -> Vec<String> {
        c[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|s| expand(s, &env))
            .collect()
    };
    let mut run = PodmanRun {
        container: name.to_string(),
        options: vec!["--pull=never".into()],
        image: c["image"].as_str().context("no image")?.to_string(),
        args: strings("args"),
    };
    for (key, value) in c.as_object().context("a container: a map")? {
        match key.as_str() {
            "image" | "args" | "env" => {}
            "command" => run.options.push(format!(
                "--entrypoint={}",
                serde_json::to_string(&strings("command"))?
            )),
            "securityContext" => {
                for (k, v) in value.as_object().into_iter().flatten() {
                    match (k.as_str(), v) {
                        ("privileged", Value::Bool(true)) => {
                            run.options.push("--privileged".into())
                        }
                        ("privileged", Value::Bool(false)) => {}
                        _ => bail!("container {name}: securityContext.{k} is not translated"),
                    }
                }
            }
            "volumeMounts" => {
                for mount in value.as_array().into_iter().flatten() {
                    run.options.push(volume_option(mount, volumes)?);
                }
            }
            k if CONTAINER_FIELDS_WITHOUT_PODMAN.contains(&k) => {}
            other => bail!("container {name}: field {other} has no translation to podman"),
        }
    }
    for (k, v) in &env {
        run.options.push(format!("--env={k}={v}"));
    }
    Ok(run)
}

/// `--volume=HOST:PATH[:ro,rslave]` for a volumeMount.
fn volume_option(mount: &Value, volumes: &BTreeMap<String, PathBuf>) -> Result<String> {
    let name = mount["name"]
        .as_str()
        .context("a volumeMount without a name")?;
    let host = volumes
        .get(name)
        .with_context(|| format!("volumeMount {name}: no such volume"))?;
    let path = mount["mountPath"].as_str().context("no mountPath")?;
    let mut flags = Vec::new();
    if mount["readOnly"] == true {
        flags.push("ro");
    }
    match mount["mountPropagation"].as_str() {
        None | Some("None") => {}
        Some("HostToContainer") => flags.push("rslave"),
        Some("Bidirectional") => flags.push("rshared"),
        Some(other) => bail!("volumeMount {name}: mountPropagation {other}"),
    }
    let mut option = format!("--volume={}:{path}", host.display());
    if !flags.is_empty() {
        option = format!("{option}:{}", flags.join(","));
    }
    Ok(option)
}

/// The container's environment: values and ConfigMap keys.
fn env(c: &Value, config: &BTreeMap<String, String>) -> Result<Vec<(String, String)>> {
    let mut env = Vec::new();
    for var in c["env"].as_array().into_iter().flatten() {
        let name = var["name"]
            .as_str()
            .context("an env entry without a name")?;
        let value = if let Some(v) = var["value"].as_str() {
            v.to_string()
        } else if let Some(key) = var["valueFrom"]["configMapKeyRef"]["key"].as_str() {
            config
                .get(key)
                .cloned()
                .with_context(|| format!("env {name}: the ConfigMap has no key {key:?}"))?
        } else {
            bail!("env {name}: only value and configMapKeyRef are translated");
        };
        env.push((name.to_string(), value));
    }
    Ok(env)
}

/// Kubernetes' `$(VAR)` expansion in command and args: a variable the
/// container defines is replaced, `$$` is a `$`, anything else stays.
fn expand(text: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
            continue;
        }
        let var = rest
            .strip_prefix("$(")
            .and_then(|r| r.split_once(')'))
            .and_then(|(name, after)| env.iter().find(|(n, _)| n == name).map(|(_, v)| (v, after)));
        match var {
            Some((value, after)) => {
                out.push_str(value);
                rest = after;
            }
            None => {
                out.push('$');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// `(host, path, port)` of a container's HTTP probe.
pub fn http_probe(container: &Value, probe: &str) -> Result<(String, String, u16)> {
    let get = &container[probe]["httpGet"];
    let host = get["host"].as_str().unwrap_or("").to_string();
    let path = get["path"].as_str().context("probe without a path")?;
    let port = get["port"].as_u64().context("probe port: a number")?;
    Ok((host, path.to_string(), u16::try_from(port)?))
}

/// The host path a mount of `container` at `mount_path` comes from.
pub fn host_path_of(manifest: &Manifest, container: &str, mount_path: &Path) -> Option<String> {
    let c = manifest.container(container).ok()?;
    let mount = c["volumeMounts"]
        .as_array()?
        .iter()
        .find(|m| m["mountPath"].as_str() == mount_path.to_str())?;
    manifest.pod().ok()?["volumes"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == mount["name"])?["hostPath"]["path"]
        .as_str()
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubelet() {
        let env = vec![("A".to_string(), "x".to_string())];
        assert_eq!(expand("--n=$(A)", &env), "--n=x");
        assert_eq!(expand("$$(A) $(B) $", &env), "$(A) $(B) $");
        assert_eq!(expand("$(A)$(A)", &env), "xx");
    }
}
