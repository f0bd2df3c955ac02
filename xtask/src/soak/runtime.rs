//! What kubelet and containerd do around the plugin, with crashes: the
//! first execution of an ADD or a DEL (and the undo DEL after a failed
//! ADD) may be killed with SIGKILL at a random moment, retries are not;
//! an ADD that
//! fails (killed or not) is followed by DEL, retried until it succeeds,
//! and the ADD again; a pod's removal is containerd's two DELs (with
//! `CNI_NETNS` and `prevResult`, then with neither), each retried until it
//! succeeds. Retries are bounded: a pod past them is stuck (kubelet would
//! retry it forever), which the soak reports.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::Mutex,
    thread,
    time::Duration,
};

use anyhow::Result;
use serde::Serialize;
use serde_json::Value;

use super::report::OpSample;
use crate::bench::cni::{
    exec::{self, Attachment, Finished},
    summary::Verb,
};

/// ADDs of one pod (each failed one followed by DEL) before it is stuck.
const ADD_ATTEMPTS: usize = 3;
/// DELs of one form before the pod is stuck, waiting 100, 200, 400 ...
/// ms in between.
const DEL_ATTEMPTS: usize = 6;

/// Different failure messages kept.
const FAILURE_KINDS: usize = 20;
/// Characters of a failure message kept.
const MESSAGE_CHARS: usize = 300;

/// A tiny xorshift64* generator: reproducible runs from `--seed`.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// True with `percent` % probability.
    pub fn chance(&mut self, percent: f64) -> bool {
        ((self.next() % 10_000) as f64) < percent * 100.0
    }

    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// What the executions did, besides succeeding.
#[derive(Debug, Default, Serialize)]
pub struct Tally {
    /// SIGKILLs that hit a running plugin, by verb.
    pub add_killed: usize,
    pub del_killed: usize,
    /// SIGKILLs that came after the plugin had exited.
    pub kills_too_late: usize,
    /// Concurrent second ADDs of one id (a runtime retry racing the
    /// first), by pod.
    pub double_added: BTreeSet<String>,
    /// Failed executions that were not killed, by the plugin's message
    /// (the first [`FAILURE_KINDS`] different messages).
    pub failures: BTreeMap<String, usize>,
    pub failed_adds: usize,
    pub failed_dels: usize,
}

/// A pod the runtime gave up on, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Stuck {
    pub pod: String,
    pub what: String,
    pub error: String,
}

pub struct Runtime {
    pub binary: PathBuf,
    pub config: Value,
    pub kill_percent: f64,
    pub double_add_percent: f64,
    pub rng: Mutex<Rng>,
    pub tally: Mutex<Tally>,
    pub samples: Mutex<Vec<OpSample>>,
    /// Recent ADD and DEL times (ms), where random kills land.
    typical_ms: Mutex<[f64; 2]>,
}

/// What an ADD left: the result the runtime keeps, or why there is none.
pub enum Added {
    Result(Vec<u8>),
    /// Every attempt failed; the pod was DELed again.
    Stuck(Stuck),
    /// A twin ADD of the same id also succeeded, with other addresses.
    Twice {
        kept: Vec<u8>,
        other: Vec<u8>,
    },
}

fn index(verb: Verb) -> usize {
    match verb {
        Verb::Add => 0,
        Verb::Del => 1,
    }
}

impl Runtime {
    pub fn new(binary: &Path, config: Value, kill_percent: f64, seed: u64) -> Runtime {
        Runtime {
            binary: binary.to_path_buf(),
            config,
            kill_percent,
            double_add_percent: kill_percent / 2.0,
            rng: Mutex::new(Rng::new(seed)),
            tally: Mutex::new(Tally::default()),
            samples: Mutex::new(Vec::new()),
            typical_ms: Mutex::new([30.0, 30.0]),
        }
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When to kill this execution, if at all: uniform over 0–1.5× a
    /// recent execution's time, so most kills land mid-way.
    fn kill_after(&self, verb: Verb, allowed: bool) -> Option<Duration> {
        let mut rng = Self::lock(&self.rng);
        if !allowed || !rng.chance(self.kill_percent) {
            return None;
        }
        let typical = Self::lock(&self.typical_ms)[index(verb)];
        let ms = (rng.next() % 1000) as f64 / 1000.0 * 1.5 * typical;
        Some(Duration::from_secs_f64(ms / 1e3))
    }

    /// One execution; a success is timed under `live` pods unless killed.
    fn execute(
        &self,
        verb: Verb,
        a: &Attachment,
        config: &Value,
        live: usize,
        may_kill: bool,
    ) -> Result<Finished> {
        let kill = self.kill_after(verb, may_kill);
        let plugin = std::process::Command::new(&self.binary);
        let done = exec::run_killable(plugin, &self.binary, verb.name(), a, config, kill)?;
        let mut tally = Self::lock(&self.tally);
        if done.killed() {
            match verb {
                Verb::Add => tally.add_killed += 1,
                Verb::Del => tally.del_killed += 1,
            }
        } else if kill.is_some() {
            tally.kills_too_late += 1;
        }
        if done.status == 0 && !done.killed() {
            let ms = done.outcome.elapsed.as_secs_f64() * 1e3;
            let mut typical = Self::lock(&self.typical_ms);
            typical[index(verb)] = 0.9 * typical[index(verb)] + 0.1 * ms;
            Self::lock(&self.samples).push(OpSample { verb, live, ms });
        } else if !done.killed() {
            match verb {
                Verb::Add => tally.failed_adds += 1,
                Verb::Del => tally.failed_dels += 1,
            }
            let key = format!("{}: {}", verb.name(), said(&done));
            if tally.failures.len() < FAILURE_KINDS || tally.failures.contains_key(&key) {
                *tally.failures.entry(key).or_default() += 1;
            }
        }
        Ok(done)
    }

    /// ADD as a runtime drives it (see the module's comment); sometimes a
    /// second ADD of the same id runs at the same time.
    pub fn add(&self, a: &Attachment, live: usize) -> Result<Added> {
        let mut last_error = String::new();
        for attempt in 0..ADD_ATTEMPTS {
            let twin = attempt == 0 && Self::lock(&self.rng).chance(self.double_add_percent);
            let (done, other) = if twin {
                Self::lock(&self.tally)
                    .double_added
                    .insert(a.pod_name.clone());
                thread::scope(|s| {
                    let second = s.spawn(|| self.execute(Verb::Add, a, &self.config, live, false));
                    let first = self.execute(Verb::Add, a, &self.config, live, attempt == 0);
                    let second = second
                        .join()
                        .map_err(|_| anyhow::anyhow!("an ADD thread panicked"));
                    (first, second.and_then(|r| r))
                })
            } else {
                (
                    // Only the first attempt is killed, as for DEL: a pod
                    // whose every attempt the soak itself killed is no
                    // failure of the CNI path (it made one "stuck" pod in
                    // 2,000 at 8 % kills: 0.08³ per pod).
                    self.execute(Verb::Add, a, &self.config, live, attempt == 0),
                    Err(anyhow::anyhow!("no twin")),
                )
            };
            let done = done?;
            let other = other.ok().filter(|o| o.status == 0);
            match (done.status == 0, other) {
                (true, Some(o)) if ips(&o.outcome.stdout) != ips(&done.outcome.stdout) => {
                    return Ok(Added::Twice {
                        kept: done.outcome.stdout,
                        other: o.outcome.stdout,
                    })
                }
                (true, _) => return Ok(Added::Result(done.outcome.stdout)),
                (false, Some(o)) => return Ok(Added::Result(o.outcome.stdout)),
                (false, None) => {
                    last_error = if done.killed() {
                        "killed".into()
                    } else {
                        said(&done)
                    };
                    // The runtime undoes the failed ADD before it retries.
                    if let Some(stuck) =
                        self.del_until_done(a, &self.config, live, "DEL after a failed ADD")?
                    {
                        return Ok(Added::Stuck(stuck));
                    }
                }
            }
        }
        Ok(Added::Stuck(Stuck {
            pod: a.pod_name.clone(),
            what: format!("ADD failed {ADD_ATTEMPTS} times"),
            error: last_error,
        }))
    }

    /// containerd's removal of a pod: DEL with the namespace and the ADD's
    /// result, then DEL with neither, each until it succeeds.
    pub fn remove(&self, a: &Attachment, result: &[u8], live: usize) -> Result<Option<Stuck>> {
        let first = exec::with_prev_result(&self.config, result)?;
        if let Some(stuck) = self.del_until_done(a, &first, live, "DEL")? {
            return Ok(Some(stuck));
        }
        let later = Attachment {
            netns: PathBuf::new(),
            ..a.clone()
        };
        self.del_until_done(&later, &self.config, live, "second DEL (no netns)")
    }

    fn del_until_done(
        &self,
        a: &Attachment,
        config: &Value,
        live: usize,
        what: &str,
    ) -> Result<Option<Stuck>> {
        let mut error = String::new();
        for attempt in 0..DEL_ATTEMPTS {
            if attempt > 0 {
                thread::sleep(Duration::from_millis(100 << (attempt - 1)));
            }
            let done = self.execute(Verb::Del, a, config, live, attempt == 0)?;
            if done.status == 0 {
                return Ok(None);
            }
            error = if done.killed() {
                "killed".into()
            } else {
                said(&done)
            };
        }
        Ok(Some(Stuck {
            pod: a.pod_name.clone(),
            what: format!("{what} failed {DEL_ATTEMPTS} times"),
            error,
        }))
    }
}

/// What a failed execution said: the error result's `msg` (else its
/// output), cut at [`MESSAGE_CHARS`] (verifier logs run to kilobytes).
fn said(done: &Finished) -> String {
    let stdout = String::from_utf8_lossy(&done.outcome.stdout);
    let message = serde_json::from_str::<Value>(&stdout)
        .ok()
        .and_then(|v| v["msg"].as_str().map(str::to_string))
        .unwrap_or_else(|| {
            let out = stdout.trim();
            if out.is_empty() {
                String::from_utf8_lossy(&done.stderr).trim().to_string()
            } else {
                out.to_string()
            }
        });
    let short: String = message.chars().take(MESSAGE_CHARS).collect();
    if short.len() < message.len() {
        format!("{short} …")
    } else {
        short
    }
}

/// The addresses of an ADD result (`ips[].address`), for comparing two.
pub fn ips(result: &[u8]) -> Vec<String> {
    serde_json::from_slice::<Value>(result)
        .ok()
        .and_then(|v| {
            v["ips"].as_array().map(|ips| {
                ips.iter()
                    .filter_map(|ip| ip["address"].as_str().map(str::to_string))
                    .collect()
            })
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_read_from_a_result() {
        let r = br#"{"cniVersion":"1.0.0","ips":[{"address":"198.19.240.5/32","gateway":"169.254.1.1"}]}"#;
        assert_eq!(ips(r), vec!["198.19.240.5/32".to_string()]);
        assert!(ips(b"nonsense").is_empty());
    }

    fn finished(status: i32, stdout: &str, stderr: &str) -> Finished {
        Finished {
            status,
            outcome: exec::Outcome {
                elapsed: Duration::ZERO,
                cpu: Duration::ZERO,
                stdout: stdout.as_bytes().to_vec(),
            },
            stderr: stderr.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_failure_says_the_plugins_message_cut_short() {
        let error = r#"{"cniVersion":"1.0.0","code":100,"msg":"invalid key size 4, expected 8"}"#;
        assert_eq!(
            said(&finished(256, error, "")),
            "invalid key size 4, expected 8"
        );
        assert_eq!(said(&finished(256, "", "panicked")), "panicked");
        let long = format!(r#"{{"code":100,"msg":"{}"}}"#, "x".repeat(5000));
        let short = said(&finished(256, &long, ""));
        assert!(short.ends_with(" …") && short.chars().count() == MESSAGE_CHARS + 2);
        assert!(finished(libc::SIGKILL, "", "").killed());
        assert!(!finished(256, "", "").killed());
    }

    #[test]
    fn the_generator_is_reproducible_and_spread() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let xs: Vec<u64> = (0..5).map(|_| a.next()).collect();
        assert_eq!(xs, (0..5).map(|_| b.next()).collect::<Vec<_>>());
        let hits = (0..10_000).filter(|_| a.chance(10.0)).count();
        assert!((800..1200).contains(&hits), "{hits}");
    }
}
