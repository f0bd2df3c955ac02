//! The README as a reader meets it: short, with a table of contents, every
//! relative link of it, BENCHMARKS.md and `docs/*.md` (and its `#anchor`)
//! leading to something that exists, and every shell block marked runnable
//! running as written.
//!
//! A runnable block is a fenced `sh` block right after the line
//! `<!-- runnable -->` or `<!-- runnable; cleanup: COMMAND -->`. The test
//! runs each block as root with `bash -euo pipefail` (so any failing
//! command fails the block), in an empty directory, with `vethctl` on
//! `PATH` (this package's `vethctl-test`, the same code), and runs the
//! block's cleanup command afterwards, also when the block failed or the
//! test panicked. A block must only touch what it makes and must not reuse
//! names or addresses another test uses: the README's lab uses topology
//! `try` in 198.18.255.0/24, which the test reserves as every test
//! reserves its block, so it never meets another test's topology.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use veth_tests::{require_root, vethctl_bin, AddressBlock};

const README: &str = include_str!("../../README.md");

/// The README's own length limit: the reference lives in docs/.
const MAX_README_LINES: usize = 300;

/// The addresses the README's runnable lab names.
const LAB_BLOCK: &str = "198.18.255.0/24";

/// How long one runnable block may take (they take seconds).
const BLOCK_TIMEOUT: Duration = Duration::from_secs(120);

struct RunnableBlock {
    /// 1-based line of the block's first line in README.md.
    line: usize,
    script: String,
    cleanup: Option<String>,
}

/// Every block marked runnable; a marker not followed by an `sh` block is
/// a mistake in the README and fails the test.
fn runnable_blocks(markdown: &str) -> Vec<RunnableBlock> {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut blocks = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(marker) = line
            .trim()
            .strip_prefix("<!-- runnable")
            .and_then(|m| m.strip_suffix("-->"))
        else {
            continue;
        };
        assert!(
            marker.trim().is_empty() || marker.trim().starts_with(';'),
            "README.md:{}: unknown marker {line}",
            i + 1
        );
        let cleanup = marker.trim().strip_prefix(';').map(str::trim).map(|m| {
            m.strip_prefix("cleanup:")
                .unwrap_or_else(|| panic!("README.md:{}: unknown marker {line}", i + 1))
                .trim()
                .to_string()
        });
        let fence = lines.get(i + 1).copied().unwrap_or_default();
        assert!(
            fence.trim_end() == "```sh",
            "README.md:{}: a runnable marker must be followed by a ```sh block, found {fence:?}",
            i + 1
        );
        let body: Vec<&str> = lines[i + 2..]
            .iter()
            .take_while(|l| !l.starts_with("```"))
            .copied()
            .collect();
        blocks.push(RunnableBlock {
            line: i + 3,
            script: body.join("\n") + "\n",
            cleanup,
        });
    }
    blocks
}

/// GitHub's anchor for a heading: lower case, spaces to `-`, punctuation
/// other than `-` and `_` dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown file's headings (outside code blocks).
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut out = BTreeSet::new();
    for line in markdown.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            out.insert(anchor(line.trim_start_matches('#')));
        }
    }
    out
}

/// Every `](target)` of a Markdown file outside code blocks.
fn link_targets(markdown: &str) -> Vec<String> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in markdown.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        for (at, _) in line.match_indices("](") {
            let rest = &line[at + 2..];
            if let Some(end) = rest.find(')') {
                out.push(rest[..end].to_string());
            }
        }
    }
    out
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

#[test]
fn the_readme_is_short_and_has_a_table_of_contents() {
    let lines = README.lines().count();
    assert!(
        lines <= MAX_README_LINES,
        "README.md has {lines} lines; keep it to {MAX_README_LINES} and move reference text to docs/"
    );
    let toc: Vec<&str> = README
        .split("## Contents\n")
        .nth(1)
        .expect("README.md has a `## Contents` section")
        .split("\n## ")
        .next()
        .unwrap_or_default()
        .lines()
        .collect();
    let sections: Vec<String> = README
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .filter(|h| *h != "Contents")
        .map(anchor)
        .collect();
    let listed = toc.join("\n");
    for section in &sections {
        assert!(
            listed.contains(&format!("(#{section})")),
            "the table of contents lacks section #{section}"
        );
    }
}

#[test]
fn relative_links_of_the_readme_and_docs_lead_somewhere() {
    let root = repo_root();
    let mut files = vec![root.join("README.md"), root.join("BENCHMARKS.md")];
    for entry in std::fs::read_dir(root.join("docs")).expect("reading docs/") {
        let path = entry.expect("a docs/ entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    let mut broken = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("reading a Markdown file");
        for target in link_targets(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, fragment) = target.split_once('#').unwrap_or((&target, ""));
            let dest = if path.is_empty() {
                file.clone()
            } else {
                file.parent().expect("a directory").join(path)
            };
            if !dest.exists() {
                broken.push(format!("{}: {target} (no such file)", file.display()));
                continue;
            }
            let is_markdown = dest.extension().is_some_and(|e| e == "md");
            if !fragment.is_empty() && is_markdown {
                let text = std::fs::read_to_string(&dest).expect("reading a link's target");
                if !anchors(&text).contains(fragment) {
                    broken.push(format!("{}: {target} (no such heading)", file.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_readme_marks_runnable_blocks() {
    let blocks = runnable_blocks(README);
    assert!(!blocks.is_empty(), "README.md marks no runnable block");
    for block in &blocks {
        assert!(
            block.script.contains("vethctl"),
            "README.md:{}: a runnable block that does not run vethctl",
            block.line
        );
    }
}

/// Runs a block's cleanup command when dropped: after the block, whether it
/// failed or not, and when the test panics.
struct Cleanup<'a> {
    command: Option<&'a str>,
    dir: &'a Path,
    path: &'a str,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if let Some(command) = self.command {
            let _ = Command::new("bash")
                .args(["-c", command])
                .current_dir(self.dir)
                .env("PATH", self.path)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A directory of its own, with `vethctl` in `bin/`, removed when dropped.
struct Sandbox {
    dir: PathBuf,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = std::env::temp_dir().join(format!("vethctl-readme-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bin")).expect("making the sandbox");
        std::os::unix::fs::symlink(vethctl_bin(), dir.join("bin/vethctl"))
            .expect("linking vethctl");
        Sandbox { dir }
    }

    fn path(&self) -> String {
        format!(
            "{}:{}",
            self.dir.join("bin").display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        )
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `script` with bash, failing on its first failing command; kills it
/// after `BLOCK_TIMEOUT`. Returns whether it succeeded and what it printed.
fn run_block(script: &str, dir: &Path, path: &str) -> (bool, String) {
    let log = dir.join("block.log");
    let out = std::fs::File::create(&log).expect("creating the block's log");
    let mut child = Command::new("bash")
        .args(["-euxo", "pipefail", "-c", script])
        .current_dir(dir)
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("the log"))
        .stderr(out)
        .spawn()
        .expect("running bash");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for bash") {
            break Some(status);
        }
        if start.elapsed() > BLOCK_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let printed = std::fs::read_to_string(&log).unwrap_or_default();
    match status {
        Some(status) => (status.success(), format!("{status}\n{printed}")),
        None => (false, format!("killed after {BLOCK_TIMEOUT:?}\n{printed}")),
    }
}

/// What a block must not leave: the lab's namespaces, links and state.
fn leftovers() -> Vec<String> {
    let mut left = Vec::new();
    let netns = veth_tests::run("ip", &["netns", "list"]);
    for line in netns.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if name.starts_with("try-") || name.starts_with("trynode") {
            left.push(format!("netns {name}"));
        }
    }
    let links = veth_tests::run("ip", &["-o", "link", "show"]);
    for line in links.lines() {
        if let Some(name) = line.split(": ").nth(1) {
            if name.starts_with("try-") {
                left.push(format!("link {name}"));
            }
        }
    }
    for path in ["/run/vethctl/try", "/sys/fs/bpf/vethctl/try"] {
        if Path::new(path).exists() {
            left.push(path.to_string());
        }
    }
    // A node's state directory names its namespace in the file `netns`.
    let nodes = std::fs::read_dir("/run/vethctl/_nodes")
        .into_iter()
        .flatten();
    for dir in nodes.flatten() {
        let netns = std::fs::read_to_string(dir.path().join("netns")).unwrap_or_default();
        if netns.trim().ends_with("trynode") {
            left.push(format!("{} (node trynode)", dir.path().display()));
        }
    }
    left
}

#[test]
fn runnable_blocks_run_as_written() {
    require_root();
    // The lab's addresses are written in the README, so its block is
    // reserved by address; holding it also keeps two runs of this test
    // (two checkouts on one machine) from meeting.
    let _block = AddressBlock::reserve_exact(LAB_BLOCK, Duration::from_secs(300));
    let sandbox = Sandbox::new();
    let path = sandbox.path();
    for block in runnable_blocks(README) {
        let _cleanup = Cleanup {
            command: block.cleanup.as_deref(),
            dir: &sandbox.dir,
            path: &path,
        };
        let (ok, printed) = run_block(&block.script, &sandbox.dir, &path);
        assert!(
            ok,
            "the runnable block at README.md:{} failed: {printed}",
            block.line
        );
        // Before the cleanup command runs: a reader has none, so the
        // block itself must take down what it made.
        let left = leftovers();
        assert!(
            left.is_empty(),
            "the runnable block at README.md:{} left {left:?}",
            block.line
        );
    }
}
