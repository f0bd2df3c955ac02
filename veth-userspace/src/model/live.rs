//! A cluster's keys as an agent following them knows them: read once,
//! then kept current by the watch's events (pure; talking to etcd is
//! [`crate::etcd::sync`]). Records are kept by the name in their key, and
//! records this version cannot read are kept apart, named, so that they
//! are reported as left out instead of vanishing.

use std::collections::BTreeMap;

use ipnet::IpNet;

use super::registry::{Entry, Family, Keys, NodeRecord, RangeRecord};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Live {
    /// The live node records, by the name in their key.
    pub nodes: BTreeMap<String, NodeRecord>,
    /// Node keys whose value is not a record: name, and why.
    pub unreadable: BTreeMap<String, String>,
    /// Who holds each range, by the range keys.
    pub held: BTreeMap<IpNet, String>,
}

impl Live {
    /// The keys of one read.
    pub fn of(keys: &Keys, entries: impl IntoIterator<Item = Entry>) -> Live {
        let mut live = Live::default();
        for (key, value, _, _) in entries {
            live.put(keys, &key, &value);
        }
        live
    }

    /// A key written: its record replaces what the key held.
    pub fn put(&mut self, keys: &Keys, key: &str, value: &[u8]) {
        self.delete(keys, key);
        if let Some(name) = key.strip_prefix(&keys.nodes()) {
            match serde_json::from_slice::<NodeRecord>(value) {
                Ok(record) => drop(self.nodes.insert(name.to_string(), record)),
                Err(e) => drop(self.unreadable.insert(name.to_string(), e.to_string())),
            }
        } else if let Some(range) = range_of(keys, key) {
            // An unreadable range record holds nothing here: a node
            // naming that range is left out.
            if let Ok(r) = serde_json::from_slice::<RangeRecord>(value) {
                self.held.insert(range, r.node);
            }
        }
    }

    /// A key deleted (or its lease ended).
    pub fn delete(&mut self, keys: &Keys, key: &str) {
        if let Some(name) = key.strip_prefix(&keys.nodes()) {
            self.nodes.remove(name);
            self.unreadable.remove(name);
        } else if let Some(range) = range_of(keys, key) {
            self.held.remove(&range);
        }
    }
}

fn range_of(keys: &Keys, key: &str) -> Option<IpNet> {
    [Family::V4, Family::V6]
        .into_iter()
        .find_map(|f| keys.range_of(key, f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_keep_the_view_current() {
        let k = Keys::new("lab");
        let range: IpNet = "10.244.1.0/24".parse().unwrap();
        let record = br#"{"name":"n2","agent":{"boot":"b","netns":1,"pid":2,"started":"t"},
            "address":"10.9.0.2","pod_cidr":"10.244.1.0/24"}"#;
        let entries: Vec<Entry> = vec![
            (k.settings(), b"name = \"lab\"".to_vec(), 1, 0),
            (k.range(range), br#"{"node":"n2"}"#.to_vec(), 2, 0),
            (k.node("n2"), record.to_vec(), 3, 0),
            (k.node("bad"), b"{".to_vec(), 4, 0),
        ];
        let mut live = Live::of(&k, entries);
        assert_eq!(live.held[&range], "n2");
        assert_eq!(
            live.nodes["n2"].pod_cidr.unwrap().to_string(),
            "10.244.1.0/24"
        );
        assert!(live.unreadable.contains_key("bad"));
        live.put(&k, &k.node("n2"), b"garbage");
        assert!(!live.nodes.contains_key("n2") && live.unreadable.contains_key("n2"));
        live.delete(&k, &k.node("n2"));
        live.delete(&k, &k.range(range));
        assert!(live.unreadable.len() == 1 && live.held.is_empty());
    }
}
