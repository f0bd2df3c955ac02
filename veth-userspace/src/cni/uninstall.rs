//! `vethctl uninstall-cni`: takes back what `install-cni` put on the node,
//! the plugin binary and the configuration list, and nothing else. A file
//! goes only when its content proves it ours (the plugin's marker, a list
//! in the form `install-cni` writes that names our plugin), never for its
//! name; nothing goes while pods are still attached to the network, since
//! their DEL would then find no plugin and the runtime could not remove
//! them.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde_json::Value;

use super::install::{read_list, PLUGIN_TYPE};

/// Bytes every `veth-cni` binary carries ([`super::main`] keeps them in),
/// so an installed plugin can be told from another file of that name.
pub const PLUGIN_MARKER: &[u8] = b"vethctl-cni-plugin:1f0d6c9e-veth-cni-marker";

/// Where to look.
#[derive(Clone, Debug)]
pub struct UninstallOptions {
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    pub conf_file: String,
}

/// What one of the two files is.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// Not there (removed before, or never installed).
    Absent,
    /// Ours; for the list, with its network name.
    Ours { network: Option<String> },
}

/// The plugin at `path`: ours when it carries [`PLUGIN_MARKER`].
pub fn plugin(path: &Path) -> Result<Found> {
    let bytes = match fs::read(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Absent),
        other => other.with_context(|| format!("reading {}", path.display()))?,
    };
    if !contains(&bytes, PLUGIN_MARKER) {
        return Err(foreign(
            path,
            "it is not a veth-cni plugin (its content lacks veth-cni's marker)",
        ));
    }
    Ok(Found::Ours { network: None })
}

/// The list at `path`: ours when its text is exactly what `install-cni`
/// writes (pretty JSON, one trailing newline) and its first plugin is ours.
pub fn list(path: &Path) -> Result<Found> {
    if !path.exists() {
        return Ok(Found::Absent);
    }
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value = read_list(path).map_err(|_| foreign(path, "it is not JSON"))?;
    judge_list(&text, &value).map_err(|why| foreign(path, why))
}

/// [`list`] on text already read (pure).
pub fn judge_list(text: &str, value: &Value) -> Result<Found, &'static str> {
    if value["plugins"][0]["type"] != PLUGIN_TYPE {
        return Err("its first plugin is not veth-cni");
    }
    let written = serde_json::to_string_pretty(value).unwrap_or_default() + "\n";
    if written != text {
        return Err("it was changed since install-cni wrote it");
    }
    Ok(Found::Ours {
        network: value["name"].as_str().map(str::to_string),
    })
}

fn foreign(path: &Path, why: &str) -> anyhow::Error {
    crate::Error::Conflict(format!(
        "{} was not written by `vethctl install-cni` ({why}): left in place, and nothing was \
         removed; remove it yourself if it is no longer wanted, or point --bin-dir, --conf-dir \
         or --conf-file at the files install-cni wrote",
        path.display()
    ))
    .into()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Refuses while the network still has pods: removing the plugin would
/// leave their DEL nothing to run.
fn no_pods_attached(network: &str) -> Result<()> {
    let state = crate::state::StateDir::new(network);
    // Records that cannot be read must not pass for none.
    match fs::read_dir(state.path()) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "cannot tell whether network {network:?} still has pods: reading {} \
                     (run as root)",
                    state.path().display()
                )
            })
        }
        Ok(_) => {}
    }
    let pods = crate::endpoint::Store::new(network).records().len();
    if pods > 0 {
        return Err(crate::Error::Conflict(format!(
            "network {network:?} still has {}: drain the node first (`kubectl drain`, or remove \
             the pods through the runtime) so the runtime can still run veth-cni for their DEL; \
             nothing was removed",
            crate::observe::summary::count(pods, "pod", "pods")
        ))
        .into());
    }
    Ok(())
}

/// Removes the list, then the plugin, when both are ours (or absent) and
/// the network has no pods; returns what was removed. Checks everything
/// before removing anything.
pub fn uninstall(o: &UninstallOptions) -> Result<Vec<PathBuf>> {
    let list_path = o.conf_dir.join(&o.conf_file);
    let plugin_path = o.bin_dir.join(PLUGIN_TYPE);
    let found_list = list(&list_path)?;
    let found_plugin = plugin(&plugin_path)?;
    if let Found::Ours {
        network: Some(network),
    } = &found_list
    {
        no_pods_attached(network)?;
    }
    let mut removed = Vec::new();
    // The list first: the runtime stops starting pods on the network
    // before its plugin goes.
    for (found, path) in [(found_list, list_path), (found_plugin, plugin_path)] {
        if found != Found::Absent {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            removed.push(path);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_is_ours_only_as_written_and_naming_our_plugin() {
        let value = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "vethnet",
            "plugins": [{"type": "veth-cni", "mode": "tc"}, {"type": "portmap"}],
        });
        let text = serde_json::to_string_pretty(&value).unwrap() + "\n";
        assert_eq!(
            judge_list(&text, &value),
            Ok(Found::Ours {
                network: Some("vethnet".into())
            })
        );
        let edited = text.replace("\"tc\"", "\"tc\" ");
        assert!(judge_list(&edited, &value).is_err());
        let mut theirs = value.clone();
        theirs["plugins"][0]["type"] = "bridge".into();
        let text = serde_json::to_string_pretty(&theirs).unwrap() + "\n";
        assert_eq!(
            judge_list(&text, &theirs),
            Err("its first plugin is not veth-cni")
        );
    }

    #[test]
    fn finds_the_marker_anywhere() {
        let mut bytes = vec![0u8; 100];
        bytes.extend_from_slice(PLUGIN_MARKER);
        assert!(contains(&bytes, PLUGIN_MARKER));
        assert!(!contains(&bytes[..110], PLUGIN_MARKER));
    }
}
