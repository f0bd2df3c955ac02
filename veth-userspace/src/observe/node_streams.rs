//! Following a lab from its machine: one command run on every node of the
//! lab, as its operator would run it there (`vethctl --node NS …`), and
//! the lines each prints merged into one stream. `trace` and `stats
//! --watch` of a lab are their nodes' own, so what a node shows is what
//! the lab shows of it.

use std::process::Stdio;

use anyhow::{bail, Context, Result};
use nix::{sys::signal, unistd::Pid};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};

use crate::model::cluster::node_netns;

/// What a node's command printed, line by line, then how it ended.
#[derive(Debug)]
enum NodeOutput {
    Line {
        node: NodeName,
        line: String,
    },
    /// The command ended: its exit status and what it said on stderr.
    Ended {
        node: NodeName,
        success: bool,
        stderr: String,
    },
}

/// A node of a lab.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NodeName {
    pub lab: String,
    pub node: String,
}

/// The commands running on every node of a lab.
pub struct NodeStreams {
    /// Each node and its command's pid, while it runs.
    running: Vec<(NodeName, u32)>,
    output: mpsc::Receiver<NodeOutput>,
    /// Nodes whose command failed (said on stderr as it did).
    failures: Vec<NodeName>,
    /// A node's command printed or ended well.
    worked: bool,
}

impl NodeStreams {
    /// Runs this binary on every node of the labs `labs`, with the
    /// arguments `args` gives for the lab.
    pub fn start(labs: &[String], args: impl Fn(&str) -> Vec<String>) -> Result<NodeStreams> {
        let (tx, output) = mpsc::channel(1024);
        let mut running = Vec::new();
        for lab in labs {
            let cluster = crate::lab::recorded_cluster(lab)?;
            for node in &cluster.nodes {
                let name = NodeName {
                    lab: cluster.name.clone(),
                    node: node.name.clone(),
                };
                let child = spawn(&node_netns(lab, &node.name), &args(lab))?;
                running.extend(child.id().map(|pid| (name.clone(), pid)));
                tokio::spawn(forward(name, child, tx.clone()));
            }
        }
        Ok(NodeStreams {
            running,
            output,
            failures: Vec::new(),
            worked: false,
        })
    }

    /// The next line a node's command printed; `None` once every node's
    /// command has ended. A command that fails is said on stderr.
    pub async fn next_line(&mut self) -> Option<(NodeName, String)> {
        loop {
            match self.next().await? {
                NodeOutput::Line { node, line } => {
                    self.worked = true;
                    return Some((node, line));
                }
                NodeOutput::Ended {
                    node,
                    success: false,
                    stderr,
                } => {
                    let said = stderr.trim();
                    let said = said.strip_prefix("error: ").unwrap_or(said);
                    eprintln!("vethctl: node {} of {}: {said}", node.node, node.lab);
                    self.failures.push(node);
                }
                NodeOutput::Ended { .. } => self.worked = true,
            }
        }
    }

    async fn next(&mut self) -> Option<NodeOutput> {
        if self.running.is_empty() {
            return None;
        }
        let out = self.output.recv().await?;
        if let NodeOutput::Ended { node, .. } = &out {
            self.running.retain(|(n, _)| n != node);
        }
        Some(out)
    }

    /// How many nodes' commands still run.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Asks every node's command still running to end as Ctrl-C would
    /// (SIGTERM: a trace switches its session off) and waits until they
    /// have; an error naming each node's reason if none could run it.
    pub async fn finish(mut self) -> Result<()> {
        let worked = self.worked || !self.running.is_empty();
        for (_, pid) in &self.running {
            let _ = signal::kill(Pid::from_raw(*pid as i32), signal::SIGTERM);
        }
        while self.next().await.is_some() {}
        if worked || self.failures.is_empty() {
            return Ok(());
        }
        bail!(
            "no node of the lab could run it ({} failed, as said above)",
            self.failures.len()
        )
    }
}

/// This binary run with `args` for the node in namespace `ns`, its output
/// piped.
fn spawn(ns: &str, args: &[String]) -> Result<Child> {
    let exe = std::env::current_exe().context("finding the vethctl binary")?;
    let mut command = Command::new(exe);
    command
        .arg("--node")
        .arg(ns)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe and nothing else runs between fork
    // and exec. A node's command must not outlive this one (a trace would
    // keep its session on).
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
        .spawn()
        .with_context(|| format!("running vethctl for node namespace {ns:?}"))
}

/// Sends a node's stdout lines, then how its command ended, to `tx`.
async fn forward(node: NodeName, mut child: Child, tx: mpsc::Sender<NodeOutput>) {
    let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return;
    };
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let line = NodeOutput::Line {
            node: node.clone(),
            line,
        };
        if tx.send(line).await.is_err() {
            return;
        }
    }
    let success = child.wait().await.is_ok_and(|s| s.success());
    let stderr = errors.await.unwrap_or_default();
    let _ = tx
        .send(NodeOutput::Ended {
            node,
            success,
            stderr,
        })
        .await;
}
