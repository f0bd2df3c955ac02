//! The built-in address allocator, the pool itself (no CNI in it: which
//! source an ADD's addresses come from is [`crate::cni::ipam`]'s choice).
//! A pool per network, keyed by endpoint id, so an endpoint keeps its
//! addresses for as long as it exists, however others come and go (the
//! lowest free address is handed out; a released one is free again). A CNI
//! ADD and a topology file's pods without fixed addresses both draw from it.
//!
//! The pool lives in one JSON file, rewritten atomically (write, then
//! rename) under an exclusive `flock`, so concurrent ADDs never hand out an
//! address twice and a crash never leaves a half-written pool. Dual-stack
//! endpoints get the same host offset in both families (`.5` and `::5`),
//! which keeps addresses readable.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::{self, File},
    io,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

const POOL_FILE: &str = "addresses.json";
const LOCK_FILE: &str = ".addresses.lock";

/// What a pool hands out addresses from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ranges {
    pub v4: Ipv4Net,
    pub v6: Option<Ipv6Net>,
    /// Host offsets never handed out (the node's own address, say), besides
    /// the network and broadcast offsets.
    pub reserved: BTreeSet<u32>,
}

/// One endpoint's addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
}

/// The pool's file: endpoint id -> host offset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Taken {
    offsets: BTreeMap<String, u32>,
}

impl Ranges {
    /// Offsets of `v4` that can be handed out, lowest first.
    fn usable(&self) -> impl Iterator<Item = u32> + '_ {
        let size = 1u64 << (32 - u32::from(self.v4.prefix_len()));
        // /31 and /32 have no network or broadcast address to skip.
        let (first, last) = if size <= 2 {
            (0, size - 1)
        } else {
            (1, size - 2)
        };
        (first..=last)
            .map(|o| o as u32)
            .filter(|o| !self.reserved.contains(o))
    }

    fn allocation(&self, offset: u32) -> Allocation {
        Allocation {
            ipv4: Ipv4Addr::from(u32::from(self.v4.network()) + offset),
            ipv6: self
                .v6
                .map(|v6| Ipv6Addr::from(u128::from(v6.network()) + u128::from(offset))),
        }
    }

    /// The host offset of `ipv4` in `v4`, if it is a usable one.
    fn offset_of(&self, ipv4: Ipv4Addr) -> Option<u32> {
        if !self.v4.contains(&ipv4) {
            return None;
        }
        let offset = u32::from(ipv4) - u32::from(self.v4.network());
        self.usable().any(|o| o == offset).then_some(offset)
    }
}

/// Pure: the offset `id` gets, given what is taken (its own if it has one).
fn pick(ranges: &Ranges, taken: &Taken, id: &str) -> Option<u32> {
    if let Some(&offset) = taken.offsets.get(id) {
        return Some(offset);
    }
    let used: BTreeSet<u32> = taken.offsets.values().copied().collect();
    ranges.usable().find(|o| !used.contains(o))
}

/// A network's pool of addresses, in `dir`.
#[derive(Clone, Debug)]
pub struct Pool {
    dir: PathBuf,
    ranges: Ranges,
}

impl Pool {
    pub fn new(dir: &Path, ranges: Ranges) -> Pool {
        Pool {
            dir: dir.to_path_buf(),
            ranges,
        }
    }

    /// The addresses of `id`: the ones it has, else the lowest free ones,
    /// recorded before they are returned.
    pub fn allocate(&self, id: &str) -> Result<Allocation> {
        self.update(|ranges, taken| {
            let offset = pick(ranges, taken, id).with_context(|| {
                format!(
                    "{} has no free address left for {id:?} ({} in use); use a larger prefix",
                    ranges.v4,
                    taken.offsets.len()
                )
            })?;
            taken.offsets.insert(id.to_string(), offset);
            Ok(ranges.allocation(offset))
        })
    }

    /// Gives `id` exactly `ipv4` (a fixed address from a topology file);
    /// an error names the endpoint that already has it.
    pub fn claim(&self, id: &str, ipv4: Ipv4Addr) -> Result<Allocation> {
        self.update(|ranges, taken| {
            let Some(offset) = ranges.offset_of(ipv4) else {
                bail!(
                    "{ipv4} is not a usable address of {} (nor reserved for the node); pick one \
                     inside it",
                    ranges.v4
                );
            };
            if let Some((other, _)) = taken
                .offsets
                .iter()
                .find(|(other, o)| **o == offset && other.as_str() != id)
            {
                bail!("{ipv4} is already used by {other:?}; pick another address");
            }
            taken.offsets.insert(id.to_string(), offset);
            Ok(ranges.allocation(offset))
        })
    }

    /// Frees `id`'s addresses; fine if it has none.
    pub fn release(&self, id: &str) -> Result<()> {
        self.update(|_, taken| {
            taken.offsets.remove(id);
            Ok(())
        })
    }

    /// Frees the addresses of every endpoint `keep` says no to (GC);
    /// returns their ids.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) -> Result<Vec<String>> {
        self.update(|_, taken| {
            let gone: Vec<String> = taken
                .offsets
                .keys()
                .filter(|id| !keep(id))
                .cloned()
                .collect();
            for id in &gone {
                taken.offsets.remove(id);
            }
            Ok(gone)
        })
    }

    /// Every allocation, by endpoint id.
    pub fn allocations(&self) -> Result<BTreeMap<String, Allocation>> {
        let _lock = self.lock()?;
        let taken = self.load()?;
        Ok(taken
            .offsets
            .into_iter()
            .map(|(id, offset)| (id, self.ranges.allocation(offset)))
            .collect())
    }

    /// Runs `change` on the pool under the lock and saves what it left.
    fn update<T>(&self, change: impl FnOnce(&Ranges, &mut Taken) -> Result<T>) -> Result<T> {
        let _lock = self.lock()?;
        let mut taken = self.load()?;
        let before = taken.clone();
        let result = change(&self.ranges, &mut taken)?;
        if taken != before {
            self.save(&taken)?;
        }
        Ok(result)
    }

    fn lock(&self) -> Result<File> {
        crate::state::private_dir(&self.dir)?;
        crate::state::lock_file(&self.dir.join(LOCK_FILE), true)?
            .context("a blocking lock returned without the lock")
    }

    fn load(&self) -> Result<Taken> {
        let path = self.dir.join(POOL_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not an address pool; move it away to start the pool afresh \
                     (endpoints then get new addresses)",
                    path.display()
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Taken::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn save(&self, taken: &Taken) -> Result<()> {
        crate::state::write_atomically(&self.dir, POOL_FILE, &serde_json::to_vec_pretty(taken)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(v4: &str, v6: Option<&str>, reserved: &[u32]) -> Ranges {
        Ranges {
            v4: v4.parse().unwrap(),
            v6: v6.map(|v| v.parse().unwrap()),
            reserved: reserved.iter().copied().collect(),
        }
    }

    fn temp_pool(r: Ranges) -> (Pool, PathBuf) {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vethctl-ipam-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        (Pool::new(&dir, r), dir)
    }

    #[test]
    fn lowest_free_skips_network_broadcast_and_reserved() {
        let r = ranges("10.1.0.0/29", None, &[1]);
        let taken = Taken::default();
        assert_eq!(pick(&r, &taken, "a"), Some(2));
        let full = Taken {
            offsets: (2..=6).map(|o| (format!("p{o}"), o)).collect(),
        };
        assert_eq!(
            pick(&r, &full, "new"),
            None,
            "a /29 has 6 hosts, 1 reserved"
        );
        assert_eq!(pick(&r, &full, "p4"), Some(4), "an id keeps its own");
        let tiny = ranges("10.1.0.8/31", None, &[]);
        assert_eq!(tiny.usable().collect::<Vec<_>>(), vec![0, 1]);
    }

    #[test]
    fn addresses_are_stable_when_others_go() {
        let (pool, dir) = temp_pool(ranges("10.1.0.0/24", Some("fd00:1::/64"), &[1]));
        let a = pool.allocate("a").unwrap();
        let b = pool.allocate("b").unwrap();
        let c = pool.allocate("c").unwrap();
        assert_eq!(a.ipv4, Ipv4Addr::new(10, 1, 0, 2));
        assert_eq!(c.ipv6, Some("fd00:1::4".parse().unwrap()), "same offset");
        pool.release("a").unwrap();
        assert_eq!(pool.allocate("b").unwrap(), b, "b keeps its address");
        assert_eq!(pool.allocate("c").unwrap(), c, "c keeps its address");
        let d = pool.allocate("d").unwrap();
        assert_eq!(d.ipv4, a.ipv4, "the lowest free address is reused");
        assert_eq!(pool.allocations().unwrap().len(), 3);
        pool.release("nobody").unwrap();
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn claims_are_checked() {
        let (pool, dir) = temp_pool(ranges("10.1.0.0/24", None, &[1]));
        pool.claim("a", Ipv4Addr::new(10, 1, 0, 9)).unwrap();
        let err = pool
            .claim("b", Ipv4Addr::new(10, 1, 0, 9))
            .unwrap_err()
            .to_string();
        assert!(err.contains("already used by \"a\""), "{err}");
        for bad in [[10, 1, 0, 0], [10, 1, 0, 1], [10, 1, 0, 255], [10, 2, 0, 5]] {
            assert!(pool.claim("b", Ipv4Addr::from(bad)).is_err(), "{bad:?}");
        }
        assert_eq!(pool.allocate("b").unwrap().ipv4, Ipv4Addr::new(10, 1, 0, 2));
        let gone = pool.retain(|id| id == "b").unwrap();
        assert_eq!(gone, vec!["a".to_string()]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn concurrent_allocations_never_share_an_address() {
        let (pool, dir) = temp_pool(ranges("10.1.0.0/24", None, &[1]));
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let pool = pool.clone();
                std::thread::spawn(move || pool.allocate(&format!("ep{i}")).unwrap())
            })
            .collect();
        let got: BTreeSet<Ipv4Addr> = handles
            .into_iter()
            .map(|h| h.join().unwrap().ipv4)
            .collect();
        assert_eq!(got.len(), 16, "16 distinct addresses");
        assert_eq!(pool.allocations().unwrap().len(), 16);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_corrupt_pool_is_named() {
        let (pool, dir) = temp_pool(ranges("10.1.0.0/24", None, &[]));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(POOL_FILE), "garbage").unwrap();
        let err = format!("{:#}", pool.allocate("a").unwrap_err());
        assert!(err.contains("is not an address pool"), "{err}");
        fs::remove_dir_all(dir).unwrap();
    }
}
