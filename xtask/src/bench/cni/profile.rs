//! Where a plugin's time goes: a few ADDs and DELs of each plugin under
//! `strace -f -T`, every syscall's time summed by what it was for — the
//! kernel work behind one rtnetlink request (it runs inside `sendto`), a
//! TCX attach (`bpf(BPF_LINK_CREATE)`, which waits for an RCU grace
//! period), the lock, starting the IPAM plugin and waiting for it — and by
//! which program made it (the plugin, or the `host-local` it started).
//!
//! strace slows every syscall down, so the wall times here are above the
//! untraced ones; the long kernel waits (grace periods, link deletion)
//! are what to read. Threads of one plugin overlap: their sums can add up
//! to more than the wall time.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    fs,
    path::Path,
};

use anyhow::Result;
use serde::Serialize;

use super::{exec, summary::Verb, Run, RUN_DIR};

/// Traced ADD+DEL pairs per plugin.
const PODS: usize = 8;
/// Rows of the table per plugin and verb (all are in the JSON).
const SHOWN: usize = 8;

/// Time in one kind of syscall, per plugin execution.
#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    pub plugin: String,
    pub verb: Verb,
    /// The program that made the calls (`veth-cni`, `host-local`, …).
    pub program: String,
    pub what: String,
    pub calls_per_op: f64,
    pub ms_per_op: f64,
    pub ms_per_call_max: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Profile {
    /// Wall time under strace, median, per plugin and verb.
    pub traced_wall_ms: Vec<(String, Verb, f64)>,
    pub entries: Vec<Entry>,
    pub text: String,
}

/// One finished syscall.
#[derive(Debug, PartialEq)]
struct Call {
    pid: u32,
    name: String,
    what: String,
    seconds: f64,
}

/// The kind of a syscall, from its name and its arguments' text.
fn classify(name: &str, args: &str) -> String {
    let field = |key: &str| -> Option<String> {
        let at = args.find(key)? + key.len();
        Some(
            args[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect(),
        )
    };
    match name {
        "bpf" => format!(
            "bpf {}",
            args.split([',', ' '])
                .next()
                .unwrap_or("")
                .trim_start_matches("BPF_")
        ),
        "sendto" | "sendmsg" => match field("nlmsg_type=") {
            // strace decodes the types of sockets in its own namespace
            // only; the pod's come as numbers.
            Some(t) => format!("netlink {}", rtm_name(&t)),
            None => format!("{name} (not netlink)"),
        },
        "flock" => "flock (the network's lock)".into(),
        "wait4" | "waitid" => "waiting for a child process".into(),
        "execve" => "execve".into(),
        "clone" | "clone3" | "fork" | "vfork" => "clone (thread or process)".into(),
        "setns" | "unshare" => "setns".into(),
        "futex" | "epoll_wait" | "epoll_pwait" | "epoll_pwait2" | "nanosleep"
        | "clock_nanosleep" | "poll" | "ppoll" | "select" | "pselect6" | "rt_sigsuspend"
        | "sched_yield" => "waiting (own threads, events, sleeps)".into(),
        "recvfrom" | "recvmsg" => "netlink/socket receive".into(),
        "openat" | "open" | "read" | "write" | "pread64" | "pwrite64" | "close" | "rename"
        | "renameat" | "renameat2" | "unlink" | "unlinkat" | "mkdir" | "mkdirat" | "fstat"
        | "newfstatat" | "statx" | "statfs" | "fstatfs" | "getdents64" | "fsync" | "fdatasync"
        | "readlinkat" | "lseek" | "fcntl" | "ioctl" => "files".into(),
        "mmap" | "munmap" | "mprotect" | "brk" | "madvise" | "mremap" => "memory".into(),
        _ => "other".into(),
    }
}

/// `RTM_*` for the rtnetlink message types strace leaves as numbers.
fn rtm_name(t: &str) -> String {
    let name = match t {
        "0x10" => "RTM_NEWLINK",
        "0x11" => "RTM_DELLINK",
        "0x12" => "RTM_GETLINK",
        "0x13" => "RTM_SETLINK",
        "0x14" => "RTM_NEWADDR",
        "0x15" => "RTM_DELADDR",
        "0x16" => "RTM_GETADDR",
        "0x18" => "RTM_NEWROUTE",
        "0x19" => "RTM_DELROUTE",
        "0x1a" => "RTM_GETROUTE",
        "0x1c" => "RTM_NEWNEIGH",
        "0x1d" => "RTM_DELNEIGH",
        "0x1e" => "RTM_GETNEIGH",
        other => other,
    };
    name.to_string()
}

/// Parses `strace -f -T -ttt` output into finished calls, joining
/// `<unfinished ...>` halves to their `resumed` halves, and names each pid
/// by the program it runs (threads and children inherit their parent's
/// until an execve).
fn parse(text: &str) -> (Vec<Call>, HashMap<u32, String>) {
    let mut calls = Vec::new();
    let mut pending: HashMap<u32, (String, String)> = HashMap::new();
    let mut program: HashMap<u32, String> = HashMap::new();
    for line in text.lines() {
        // `PID  TIMESTAMP CALL`, the pid padded with spaces.
        let Some((pid, rest)) = line.trim_start().split_once(' ') else {
            continue;
        };
        let Some((_ts, rest)) = rest.trim_start().split_once(' ') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        let (name, args, tail) = if let Some(r) = rest.strip_prefix("<... ") {
            let Some((name, tail)) = r.split_once(" resumed>") else {
                continue;
            };
            let args = pending
                .remove(&pid)
                .filter(|(n, _)| n == name)
                .map(|(_, a)| a)
                .unwrap_or_default();
            (name.to_string(), args, tail.to_string())
        } else {
            let Some((name, args)) = rest.split_once('(') else {
                continue;
            };
            if let Some(args) = args.strip_suffix(" <unfinished ...>") {
                pending.insert(pid, (name.to_string(), args.to_string()));
                continue;
            }
            (name.to_string(), args.to_string(), args.to_string())
        };
        // The result: `= 12 <0.000029>` at the end.
        let seconds = tail
            .rsplit_once('<')
            .and_then(|(_, t)| t.strip_suffix('>'))
            .and_then(|t| t.parse::<f64>().ok());
        let result = tail.rsplit_once(") = ").map(|(_, r)| r).unwrap_or("");
        if name == "execve" && result.starts_with('0') {
            let path = args.split('"').nth(1).unwrap_or("");
            let base = Path::new(path)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            program.insert(pid, base);
        }
        if matches!(name.as_str(), "clone" | "clone3" | "fork" | "vfork") {
            if let Some(child) = result
                .split_whitespace()
                .next()
                .and_then(|c| c.parse::<u32>().ok())
            {
                let parent = program.get(&pid).cloned().unwrap_or_default();
                program.entry(child).or_insert(parent);
            }
        }
        if let Some(seconds) = seconds {
            calls.push(Call {
                pid,
                what: classify(&name, &args),
                name,
                seconds,
            });
        }
    }
    (calls, program)
}

/// (plugin, verb, program, what)
type Key = (usize, Verb, String, String);
/// (calls, seconds, longest call's seconds)
type Sum = (usize, f64, f64);

/// What the traced runs add up to: per (plugin, verb, program, call) the
/// calls, their seconds and the slowest; per (plugin, verb) the wall times.
#[derive(Default)]
struct Traced {
    sums: BTreeMap<Key, Sum>,
    walls: BTreeMap<(usize, Verb), Vec<f64>>,
}

impl Traced {
    /// Adds one traced execution of plugin `index`.
    fn add(&mut self, index: usize, verb: Verb, trace: &str, elapsed_ms: f64) {
        self.walls
            .entry((index, verb))
            .or_default()
            .push(elapsed_ms);
        let (calls, programs) = parse(trace);
        for call in calls {
            let program = programs
                .get(&call.pid)
                .cloned()
                .unwrap_or_else(|| "?".into());
            let e = self
                .sums
                .entry((index, verb, program, call.what))
                .or_insert((0, 0.0, 0.0));
            e.0 += 1;
            e.1 += call.seconds;
            e.2 = f64::max(e.2, call.seconds);
        }
    }
}

/// One ADD and its DEL of pod `pod` by plugin `index` under strace.
fn trace_add_del(
    run: &Run,
    dir: &Path,
    (index, pod, run_id): (usize, usize, u32),
    traced: &mut Traced,
) -> Result<()> {
    let plugin = &run.plugins[index];
    let attachment = exec::Attachment {
        container_id: exec::container_id(run_id, index, 99, 0, pod),
        netns: run.netns(pod).to_path_buf(),
        pod_name: format!("trace-{pod}"),
    };
    super::lock_live(run).insert(attachment.container_id.clone(), (index, attachment.clone()));
    let add_trace = dir.join("add");
    let add = exec::run_traced(
        &plugin.binary,
        &add_trace,
        "ADD",
        &attachment,
        &plugin.config,
    )?;
    let del_config = exec::with_prev_result(&plugin.config, &add.stdout)?;
    let del_trace = dir.join("del");
    let del = exec::run_traced(&plugin.binary, &del_trace, "DEL", &attachment, &del_config)?;
    super::lock_live(run).remove(&attachment.container_id);
    for (verb, trace, out) in [(Verb::Add, &add_trace, &add), (Verb::Del, &del_trace, &del)] {
        let ms = out.elapsed.as_secs_f64() * 1e3;
        traced.add(index, verb, &fs::read_to_string(trace)?, ms);
    }
    Ok(())
}

pub fn run(run: &Run, run_id: u32) -> Result<Profile> {
    let dir = Path::new(RUN_DIR).join("trace");
    fs::create_dir_all(&dir)?;
    let pods = PODS.min(run.namespaces.len());
    let mut traced = Traced::default();
    for pod in 0..pods {
        for index in 0..run.plugins.len() {
            super::interrupted()?;
            trace_add_del(run, &dir, (index, pod, run_id), &mut traced)?;
        }
        super::check_empty(run, "a traced plugin", pod + 1)?;
    }
    let mut entries: Vec<Entry> = traced
        .sums
        .into_iter()
        .map(
            |((index, verb, program, what), (calls, seconds, max))| Entry {
                plugin: run.plugins[index].name.to_string(),
                verb,
                program,
                what,
                calls_per_op: calls as f64 / pods as f64,
                ms_per_op: seconds * 1e3 / pods as f64,
                ms_per_call_max: max * 1e3,
            },
        )
        .collect();
    entries.sort_by(|a, b| {
        (&a.plugin, a.verb)
            .cmp(&(&b.plugin, b.verb))
            .then(b.ms_per_op.total_cmp(&a.ms_per_op))
    });
    let traced_wall_ms: Vec<(String, Verb, f64)> = traced
        .walls
        .iter()
        .map(|((index, verb), ms)| {
            (
                run.plugins[*index].name.to_string(),
                *verb,
                super::median(ms),
            )
        })
        .collect();
    let text = text(pods, &traced_wall_ms, &entries);
    let _ = fs::remove_dir_all(&dir);
    Ok(Profile {
        traced_wall_ms,
        entries,
        text,
    })
}

/// The profile as a table: the calls of each plugin and verb that took at
/// least 0.3 ms per execution, the largest first.
fn text(pods: usize, traced_wall_ms: &[(String, Verb, f64)], entries: &[Entry]) -> String {
    let mut text = format!(
        "where the time goes: {pods} ADD+DEL per plugin under strace -f -T (slower than \
         untraced: strace adds some 0.05 ms to every call, so many short calls — files, \
         memory — look bigger than they are; threads overlap, so sums can exceed the wall \
         time); calls that took at least 0.3 ms per execution, the 8 largest per plugin and \
         verb (all in the JSON), waiting on own threads left out\n\n\
         | plugin | verb | wall under strace ms | program | syscall | calls/op | ms/op | slowest call ms |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    );
    for (plugin, verb, wall) in traced_wall_ms {
        for e in entries
            .iter()
            .filter(|e| {
                &e.plugin == plugin
                    && e.verb == *verb
                    && e.ms_per_op >= 0.3
                    && !e.what.starts_with("waiting (own")
            })
            .take(SHOWN)
        {
            let _ = writeln!(
                text,
                "| {plugin} | {} | {wall:.1} | {} | {} | {:.1} | {:.2} | {:.2} |",
                verb.name(),
                e.program,
                e.what,
                e.calls_per_op,
                e.ms_per_op,
                e.ms_per_call_max
            );
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strace_lines_are_joined_and_classified() {
        let text = "\
100  1.0 execve(\"/usr/lib/cni/bridge\", [\"bridge\"], 0x1 /* 2 vars */) = 0 <0.000300>
100 1.1 clone3({flags=CLONE_VM|CLONE_THREAD, child_tid=0x1}, 88) = 101 <0.000080>
101 1.2 bpf(BPF_LINK_CREATE, {link_create={prog_fd=13}}, 152 <unfinished ...>
100 1.2 sendto(11, [{nlmsg_len=32, nlmsg_type=0x11, nlmsg_flags=NLM_F_REQUEST}], 32, 0) = 32 <0.043990>
101 1.3 <... bpf resumed>) = 18 <0.027014>
100 1.4 clone(child_stack=NULL, flags=SIGCHLD) = 102 <0.000100>
102 1.5 execve(\"/usr/lib/cni/host-local\", [\"host-local\"], 0x1) = 0 <0.000200>
102 1.6 flock(3, LOCK_EX) = 0 <0.001000>
100 1.7 wait4(102, [{WIFEXITED(s) && WEXITSTATUS(s) == 0}], 0, NULL) = 102 <0.005000>
100 1.8 +++ exited with 0 +++
";
        let (calls, programs) = parse(text);
        let find = |what: &str| calls.iter().find(|c| c.what == what).unwrap();
        assert_eq!(find("bpf LINK_CREATE").seconds, 0.027014);
        assert_eq!(find("bpf LINK_CREATE").pid, 101);
        assert_eq!(find("netlink RTM_DELLINK").seconds, 0.043990);
        assert_eq!(find("flock (the network's lock)").pid, 102);
        assert_eq!(find("waiting for a child process").name, "wait4");
        assert_eq!(programs[&101], "bridge");
        assert_eq!(programs[&102], "host-local");
        assert_eq!(calls.len(), 8);
    }
}
