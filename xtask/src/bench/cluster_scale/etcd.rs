//! A private etcd for the scale simulation (Debian's `etcd-server`, run as
//! its users run it, as `tests/src/etcd.rs` does): its own directory, its
//! clients and peers on unix sockets in it (no port another run could
//! take), killed and removed when dropped. The benchmark writes the
//! simulated nodes through etcd's JSON gateway (`/v3/kv/put`, …), which
//! etcd serves on the same socket: one request per key over a unix
//! socket, timed to the millisecond, with no etcd client linked into
//! xtask.

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

const ETCD: &str = "/usr/bin/etcd";
/// etcd 3.4 takes a `unix://` URL only as `HOST:PORT`, and listens on the
/// file of that name in its working directory.
const CLIENT_SOCKET: &str = "etcd.sock:0";
const PEER_SOCKET: &str = "peer.sock:0";

pub struct PrivateEtcd {
    pub dir: PathBuf,
    child: Child,
}

impl PrivateEtcd {
    /// Starts etcd in a fresh directory under `parent` and waits until it
    /// answers.
    pub fn start(parent: &Path, tag: &str) -> Result<PrivateEtcd> {
        if !Path::new(ETCD).exists() {
            bail!("{ETCD} is missing: install etcd-server (`cargo xtask setup` does)");
        }
        let dir = parent.join(format!("etcd-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let (client, peer) = (
            format!("unix://{CLIENT_SOCKET}"),
            format!("unix://{PEER_SOCKET}"),
        );
        let log = std::fs::File::create(dir.join("etcd.log"))?;
        let child = Command::new(ETCD)
            .args(["--name", "scale", "--data-dir", "data"])
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("scale={peer}")])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {ETCD}"))?;
        let mut etcd = PrivateEtcd { dir, child };
        etcd.wait_healthy()?;
        Ok(etcd)
    }

    fn wait_healthy(&mut self) -> Result<()> {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if let Some(status) = self.child.try_wait()? {
                let log = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
                bail!("etcd exited ({status}): {log}");
            }
            if self.status().is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("etcd in {} did not answer within 20 s", self.dir.display())
    }

    /// What vethctl's `--cluster` takes.
    pub fn endpoints(&self) -> String {
        format!("unix://{}", self.dir.join(CLIENT_SOCKET).display())
    }

    /// One JSON request to etcd's gateway (`path` like `/v3/kv/put`).
    pub fn call(&self, path: &str, body: &Value) -> Result<Value> {
        let mut stream = UnixStream::connect(self.dir.join(CLIENT_SOCKET))
            .with_context(|| format!("connecting to etcd in {}", self.dir.display()))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let body = body.to_string();
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: etcd\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        parse_response(path, &response)
    }

    /// etcd's `Status`: revision, `dbSize`, …
    pub fn status(&self) -> Result<Value> {
        self.call("/v3/maintenance/status", &json!({}))
    }

    /// A lease of `ttl` seconds: its ID.
    pub fn grant(&self, ttl: i64) -> Result<String> {
        let r = self.call("/v3/lease/grant", &json!({ "TTL": ttl }))?;
        r["ID"]
            .as_str()
            .map(String::from)
            .context("a lease grant without an ID")
    }

    pub fn revoke(&self, lease: &str) -> Result<()> {
        self.call("/v3/lease/revoke", &json!({ "ID": lease }))
            .map(drop)
    }

    pub fn put(&self, key: &str, value: &[u8], lease: &str) -> Result<()> {
        let body = json!({ "key": base64(key.as_bytes()), "value": base64(value), "lease": lease });
        self.call("/v3/kv/put", &body).map(drop)
    }

    /// The version of `key` (how many times it was put since it was
    /// made; 0 when there is none).
    pub fn version(&self, key: &str) -> Result<u64> {
        let r = self.call("/v3/kv/range", &json!({ "key": base64(key.as_bytes()) }))?;
        Ok(r["kvs"][0]["version"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// Every key under `prefix`: (key length, value length) each.
    pub fn sizes(&self, prefix: &str) -> Result<Vec<(usize, usize)>> {
        let end = prefix_end(prefix);
        let body = json!({ "key": base64(prefix.as_bytes()), "range_end": base64(&end) });
        let r = self.call("/v3/kv/range", &body)?;
        let kvs = r["kvs"].as_array().cloned().unwrap_or_default();
        Ok(kvs
            .iter()
            .map(|kv| {
                let len = |f: &str| kv[f].as_str().map_or(0, decoded_len);
                (len("key"), len("value"))
            })
            .collect())
    }
}

impl Drop for PrivateEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The JSON body of an HTTP/1.1 response, which must be a 200.
fn parse_response(path: &str, response: &str) -> Result<Value> {
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("etcd {path}: no HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("etcd {path}: {}: {body}", head.lines().next().unwrap_or(""));
    }
    // Go's server chunks a body it does not know the length of.
    let body = match head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        true => dechunk(body),
        false => body.to_string(),
    };
    serde_json::from_str(&body).with_context(|| format!("etcd {path}: {body}"))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The key right after every key that starts with `prefix` (etcd's
/// `range_end` for a prefix).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding: how the gateway takes bytes.
pub fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            match i <= chunk.len() {
                true => out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char),
                false => out.push('='),
            }
        }
    }
    out
}

fn decoded_len(b64: &str) -> usize {
    b64.len() / 4 * 3 - b64.bytes().rev().take_while(|&c| c == b'=').count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_as_the_gateway_takes_it() {
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(decoded_len("Zm8="), 2);
        assert_eq!(prefix_end("/a/"), b"/a0");
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
    }
}
