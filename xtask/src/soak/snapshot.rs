//! What the network has, counted so that the start and the end can be
//! compared (leaks), and the agent's footprint. Read from outside with
//! `ip` and `bpftool`, as a person would look.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::Ipv4Addr,
    path::Path,
    process::Command,
};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::cmd;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Snapshot {
    /// Files under the network's state directory, its lock and its pins,
    /// by kind (`record`, `lock`, `pin`, `state`).
    pub files: BTreeMap<String, BTreeSet<String>>,
    /// Entries of each pinned hash map (arrays have a fixed size).
    pub map_entries: BTreeMap<String, usize>,
    /// Host links carrying the network's mark (alias `vethctl:<net>`).
    pub marked_links: BTreeSet<String>,
    /// Endpoint ids holding addresses in the network's pool.
    pub pool_addresses: BTreeSet<String>,
    /// Host routes into the pod range (routed mode's /32s), besides the
    /// range's own.
    pub host_routes: BTreeSet<String>,
}

/// One thing there at the end that was not there at the start.
#[derive(Clone, Debug, Serialize)]
pub struct Leak {
    pub kind: String,
    pub what: String,
}

pub fn take(network: &str, cidr: (Ipv4Addr, u8)) -> Result<Snapshot> {
    let state = Path::new("/run/vethctl").join(network);
    let pins = Path::new("/sys/fs/bpf/vethctl").join(network);
    let mut snap = Snapshot::default();
    let mut add = |kind: &str, path: &Path| {
        snap.files
            .entry(kind.to_string())
            .or_default()
            .insert(path.display().to_string());
    };
    for path in walk(&state) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let kind = if name.contains("lock") {
            "lock"
        } else if path.parent().is_some_and(|p| p.ends_with("endpoints")) {
            "record"
        } else {
            "state"
        };
        add(kind, &path);
    }
    let lock = Path::new("/run/vethctl/.locks").join(network);
    if lock.exists() {
        add("lock", &lock);
    }
    let pin_files = walk(&pins);
    for path in &pin_files {
        add("pin", path);
    }
    for path in &pin_files {
        if let Some(n) = hash_map_entries(path) {
            snap.map_entries.insert(path.display().to_string(), n);
        }
    }
    for path in walk(&state)
        .into_iter()
        .filter(|p| p.ends_with("addresses.json"))
    {
        let pool: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap_or_default())
            .unwrap_or_default();
        if let Some(offsets) = pool["offsets"].as_object() {
            snap.pool_addresses.extend(offsets.keys().cloned());
        }
    }
    snap.marked_links = marked_links(network)?;
    snap.host_routes = host_routes(cidr)?;
    Ok(snap)
}

/// Host links carrying the network's mark (alias `vethctl:<net>`).
fn marked_links(network: &str) -> Result<BTreeSet<String>> {
    let links: Value = serde_json::from_str(&cmd::output(
        Command::new("ip").args(["-j", "link", "show"]),
    )?)?;
    let mark = format!("vethctl:{network}");
    Ok(links
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["ifalias"].as_str() == Some(&mark))
        .map(|l| l["ifname"].as_str().unwrap_or("?").to_string())
        .collect())
}

/// Host routes (any table) into `cidr`, besides the range's own.
fn host_routes(cidr: (Ipv4Addr, u8)) -> Result<BTreeSet<String>> {
    let routes: Value = serde_json::from_str(&cmd::output(
        Command::new("ip").args(["-j", "-4", "route", "show", "table", "all"]),
    )?)?;
    let own = format!("{}/{}", cidr.0, cidr.1);
    let mut found = BTreeSet::new();
    for route in routes.as_array().into_iter().flatten() {
        let dst = route["dst"].as_str().unwrap_or_default();
        let addr = dst
            .split('/')
            .next()
            .and_then(|a| a.parse::<Ipv4Addr>().ok());
        if addr.is_some_and(|a| within(a, cidr)) && dst != own {
            found.insert(format!(
                "{dst} dev {} table {}",
                route["dev"].as_str().unwrap_or("-"),
                route["table"].as_str().unwrap_or("main")
            ));
        }
    }
    Ok(found)
}

fn within(addr: Ipv4Addr, (net, len): (Ipv4Addr, u8)) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(addr) & mask == u32::from(net) & mask
}

/// Every file below `dir` (none if it is missing).
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Entries of the hash map pinned at `path`; `None` for anything else.
fn hash_map_entries(path: &Path) -> Option<usize> {
    let show = cmd::probe(
        Command::new("bpftool")
            .args(["-j", "map", "show", "pinned"])
            .arg(path),
    )?;
    let kind: Value = serde_json::from_str(&show).ok()?;
    if !kind["type"].as_str()?.contains("hash") {
        return None;
    }
    let dump = cmd::probe(
        Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(path),
    )?;
    Some(serde_json::from_str::<Value>(&dump).ok()?.as_array()?.len())
}

/// What `end` has that `start` had not.
pub fn leaks(start: &Snapshot, end: &Snapshot) -> Vec<Leak> {
    let mut leaks = Vec::new();
    let mut new = |kind: &str, before: &BTreeSet<String>, after: &BTreeSet<String>| {
        for what in after.difference(before) {
            leaks.push(Leak {
                kind: kind.into(),
                what: what.clone(),
            });
        }
    };
    let none = BTreeSet::new();
    for (kind, after) in &end.files {
        new(kind, start.files.get(kind).unwrap_or(&none), after);
    }
    new("link", &start.marked_links, &end.marked_links);
    new("address", &start.pool_addresses, &end.pool_addresses);
    new("route", &start.host_routes, &end.host_routes);
    for (map, &n) in &end.map_entries {
        let before = start.map_entries.get(map).copied().unwrap_or(0);
        if n > before {
            leaks.push(Leak {
                kind: "map entry".into(),
                what: format!("{map}: {before} → {n} entries"),
            });
        }
    }
    leaks
}

/// What is left of the network after `down`: anything is a leak.
pub fn after_down(network: &str, cidr: (Ipv4Addr, u8)) -> Result<Vec<Leak>> {
    Ok(leaks(&Snapshot::default(), &take(network, cidr)?))
}

/// The agent's resident memory (kB) and open fds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Footprint {
    pub rss_kb: u64,
    pub fds: u64,
}

pub fn footprint(pid: u32) -> Result<Footprint> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (has the agent exited?)"))?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let fds = fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
    Ok(Footprint { rss_kb, fds })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaks_are_what_the_end_has_and_the_start_had_not() {
        let mut start = Snapshot::default();
        start.marked_links.insert("vc1".into());
        start.map_entries.insert("ENDPOINTS".into(), 2);
        start
            .files
            .entry("record".into())
            .or_default()
            .insert("a".into());
        let mut end = start.clone();
        assert!(leaks(&start, &end).is_empty());
        end.marked_links.insert("vc2".into());
        end.map_entries.insert("ENDPOINTS".into(), 3);
        end.files
            .entry("lock".into())
            .or_default()
            .insert("l".into());
        let kinds: Vec<String> = leaks(&start, &end).into_iter().map(|l| l.kind).collect();
        assert_eq!(kinds, ["lock", "link", "map entry"]);
        // Fewer entries at the end (a map remade) is no leak.
        end.map_entries.insert("ENDPOINTS".into(), 1);
        assert_eq!(leaks(&start, &end).len(), 2);
    }

    #[test]
    fn routes_are_judged_by_the_pod_range() {
        let cidr = ("198.19.240.0".parse().unwrap(), 21);
        assert!(within("198.19.247.9".parse().unwrap(), cidr));
        assert!(!within("198.19.248.1".parse().unwrap(), cidr));
    }
}
