//! A private etcd (Debian's `etcd-server`, started as its users start it,
//! never as a system service) for the tests of clusters kept in etcd: its
//! own data directory, clients on a unix socket in that directory (which
//! every node namespace reaches through the file system) or, with TLS, on
//! a free loopback port with client certificates made here with openssl;
//! peers and metrics on free loopback ports. Killed (SIGKILL) and its
//! directory removed when dropped, also when a test panics.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use crate::{free_port, http_get, run, wait_until, ChildGuard};

/// Debian's etcd binary (package etcd-server).
const ETCD: &str = "/usr/bin/etcd";
/// etcd 3.4 takes only `unix://HOST:PORT` and listens on the file
/// `HOST:PORT`, relative to its working directory (its own directory
/// here); clients name it by its full path.
const SOCKET: &str = "etcd.sock:0";

/// Certificates of a TLS etcd: a CA, the server's (for 127.0.0.1) and a
/// client's, all PEM.
pub struct Certificates {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

pub struct TestEtcd {
    pub dir: PathBuf,
    /// What `--cluster` takes.
    pub endpoints: String,
    pub tls: Option<Certificates>,
    peer_port: u16,
    metrics_port: u16,
    child: Option<ChildGuard>,
}

impl TestEtcd {
    /// etcd on a unix socket (`unix://<dir>/etcd.sock:0`).
    pub fn start() -> TestEtcd {
        let dir = scratch_dir();
        let endpoints = format!("unix://{}", dir.join(SOCKET).display());
        TestEtcd::launch(dir, endpoints, None)
    }

    /// etcd on `https://127.0.0.1:PORT` that wants client certificates
    /// signed by its CA (`--client-cert-auth`).
    pub fn start_tls() -> TestEtcd {
        let dir = scratch_dir();
        let tls = make_certificates(&dir);
        let endpoints = format!("https://127.0.0.1:{}", free_port());
        TestEtcd::launch(dir, endpoints, Some(tls))
    }

    fn launch(dir: PathBuf, endpoints: String, tls: Option<Certificates>) -> TestEtcd {
        assert!(
            Path::new(ETCD).exists(),
            "{ETCD} is missing: install etcd-server (`cargo xtask setup` does)"
        );
        let mut etcd = TestEtcd {
            dir,
            endpoints,
            tls,
            peer_port: free_port(),
            metrics_port: free_port(),
            child: None,
        };
        etcd.restart();
        etcd
    }

    /// The `--cluster`, `--etcd-*` arguments of vethctl for this etcd
    /// (with the client certificate when `with_cert`).
    pub fn args(&self, with_cert: bool) -> Vec<String> {
        let mut args = vec!["--cluster".to_string(), self.endpoints.clone()];
        if let Some(tls) = &self.tls {
            args.extend(["--etcd-ca".into(), tls.ca.display().to_string()]);
            if with_cert {
                args.extend(["--etcd-cert".into(), tls.client_cert.display().to_string()]);
                args.extend(["--etcd-key".into(), tls.client_key.display().to_string()]);
            }
        }
        args
    }

    /// Starts etcd (again, on the same data directory) and waits until it
    /// says it is healthy.
    pub fn restart(&mut self) {
        self.kill9();
        // etcd listens with net.Listen, which fails on the socket file a
        // killed etcd left.
        let _ = std::fs::remove_file(self.dir.join(SOCKET));
        // What etcd is told: the socket relative to its working directory.
        let listen = match self.tls {
            Some(_) => self.endpoints.clone(),
            None => format!("unix://{SOCKET}"),
        };
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.join("etcd.log")).expect("etcd log file");
        let mut cmd = Command::new(ETCD);
        cmd.args(["--name", "t", "--data-dir"])
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &listen])
            .args(["--advertise-client-urls", &listen])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")])
            .args([
                "--listen-metrics-urls",
                &format!("http://127.0.0.1:{}", self.metrics_port),
            ])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file").arg(&tls.server_cert);
            cmd.arg("--key-file").arg(&tls.server_key);
            cmd.arg("--trusted-ca-file").arg(&tls.ca);
            cmd.arg("--client-cert-auth");
        }
        self.child = Some(ChildGuard::spawn("etcd", &mut cmd));
        let metrics = SocketAddr::from((Ipv4Addr::LOCALHOST, self.metrics_port));
        let log = self.dir.join("etcd.log");
        wait_until(Duration::from_secs(20), "etcd to be healthy", || {
            let healthy = http_get(metrics, "/health")
                .is_ok_and(|(status, body)| status == 200 && body.contains("true"));
            if let Some(exited) = self.child.as_mut().and_then(|c| c.try_wait()) {
                panic!(
                    "etcd exited ({exited}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            healthy
        });
    }

    /// Kills etcd with SIGKILL (its data directory stays).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.signal(libc::SIGKILL);
            child.expect_exit(Duration::from_secs(10));
        }
    }
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        self.child = None; // Killed and reaped by ChildGuard.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh directory of this process's own, short enough for a unix
/// socket path (108 bytes).
fn scratch_dir() -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("vethctl-etcd-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating etcd's directory");
    dir
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as
/// an operator makes them with openssl (EC P-256 keys, one day).
fn make_certificates(dir: &Path) -> Certificates {
    let p = |name: &str| dir.join(name).display().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "1", "-subj", "/CN=vethctl test CA"];
    ca.extend(ec);
    let (ca_key, ca_cert) = (p("ca.key"), p("ca.pem"));
    ca.extend(["-keyout", ca_key.as_str(), "-out", ca_cert.as_str()]);
    ca.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
    ca.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
    run("openssl", &ca);
    let leaf = |name: &str, extensions: &str| {
        let (key, csr, cert, ext) = (
            p(&format!("{name}.key")),
            p(&format!("{name}.csr")),
            p(&format!("{name}.pem")),
            p(&format!("{name}.ext")),
        );
        std::fs::write(&ext, extensions).expect("writing an extensions file");
        let mut req = vec!["req", "-new", "-subj"];
        let subject = format!("/CN={name}");
        req.push(subject.as_str());
        req.extend(ec);
        req.extend(["-keyout", key.as_str(), "-out", csr.as_str()]);
        run("openssl", &req);
        let serial = p("ca.srl");
        run(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                csr.as_str(),
                "-CA",
                ca_cert.as_str(),
                "-CAkey",
                ca_key.as_str(),
                "-CAcreateserial",
                "-CAserial",
                serial.as_str(),
                "-days",
                "1",
                "-extfile",
                ext.as_str(),
                "-out",
                cert.as_str(),
            ],
        );
        (PathBuf::from(cert), PathBuf::from(key))
    };
    let (server_cert, server_key) = leaf(
        "server",
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    let (client_cert, client_key) = leaf(
        "client",
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    );
    Certificates {
        ca: PathBuf::from(ca_cert),
        server_cert,
        server_key,
        client_cert,
        client_key,
    }
}
