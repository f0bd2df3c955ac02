//! Talking to etcd, where the nodes of a cluster find each other (see
//! [`crate::model::registry`] for the keys and records): the `etcd-client`
//! crate (gRPC over tonic; docs/etcd.md says why this one). Endpoints are
//! `http://`, `https://` (TLS, with client certificates if etcd wants
//! them) or one `unix://` socket, which a lab's node namespaces reach
//! through the file system when no address of the host is theirs.
//!
//! Every request has a deadline: tonic's balanced channel waits for an
//! endpoint that never comes up, and a command must say that etcd is
//! unreachable instead of hanging.

pub mod cluster;
pub mod member;
pub mod sync;
pub mod sync_state;

use std::{
    future::Future,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

/// How long one request may take before etcd counts as unreachable.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// `--cluster ENDPOINTS` and the TLS files, as given.
#[derive(Clone, Debug, Default)]
pub struct EtcdOptions {
    pub endpoints: String,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Where etcd listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoints {
    /// `http://` and `https://` URLs (TLS when they are `https://`).
    Urls { urls: Vec<String>, tls: bool },
    /// One `unix://` socket.
    Unix(PathBuf),
}

fn bad(field: &str, message: String) -> anyhow::Error {
    crate::Error::InvalidConfig {
        field: field.into(),
        message,
    }
    .into()
}

/// Parses `--cluster` and checks the TLS options against it.
pub fn parse_endpoints(o: &EtcdOptions) -> Result<Endpoints> {
    let items: Vec<&str> = o.endpoints.split(',').map(str::trim).collect();
    if items.iter().all(|i| i.is_empty()) {
        return Err(bad(
            "--cluster",
            "no endpoint given; write etcd's client URLs, e.g. --cluster http://10.0.0.1:2379"
                .into(),
        ));
    }
    let mut urls = Vec::new();
    let mut sockets = Vec::new();
    for item in items.iter().filter(|i| !i.is_empty()) {
        match item.split_once("://") {
            Some(("unix", path)) if path.starts_with('/') => sockets.push(PathBuf::from(path)),
            Some(("http" | "https", host)) if !host.is_empty() => urls.push(item.to_string()),
            _ => return Err(bad("--cluster", format!("{item:?} is not an etcd client URL; write http://HOST:2379, https://HOST:2379 or unix:///PATH/TO/SOCKET"))),
        }
    }
    let tls = urls.iter().any(|u| u.starts_with("https://"));
    if tls && urls.iter().any(|u| u.starts_with("http://")) {
        return Err(bad("--cluster", "mixes http:// and https:// endpoints; etcd serves one or the other to this client: give the same scheme for all".into()));
    }
    check_tls_files(o, tls)?;
    match (sockets.len(), urls.is_empty()) {
        (0, _) => Ok(Endpoints::Urls { urls, tls }),
        (1, true) => Ok(Endpoints::Unix(sockets.remove(0))),
        _ => Err(bad("--cluster", "a unix:// socket is the only endpoint when given: give one socket, or only http(s):// URLs".into())),
    }
}

fn check_tls_files(o: &EtcdOptions, tls: bool) -> Result<()> {
    let any = o.ca.is_some() || o.cert.is_some() || o.key.is_some();
    if any && !tls {
        return Err(bad("--etcd-ca", "TLS files need https:// endpoints in --cluster (etcd's --listen-client-urls https://…)".into()));
    }
    if tls && o.ca.is_none() {
        return Err(bad(
            "--etcd-ca",
            "https:// endpoints need the CA certificate that signed etcd's (PEM): --etcd-ca FILE"
                .into(),
        ));
    }
    if o.cert.is_some() != o.key.is_some() {
        let missing = if o.cert.is_some() {
            "--etcd-key"
        } else {
            "--etcd-cert"
        };
        return Err(bad(
            missing,
            "a client certificate needs both --etcd-cert and --etcd-key (PEM)".into(),
        ));
    }
    Ok(())
}

/// A connection to etcd; cheap to clone.
#[derive(Clone)]
pub struct Etcd {
    client: Client,
    /// The endpoints, for messages.
    shown: String,
}

impl Etcd {
    /// Connects and asks etcd for its status once, so a wrong endpoint,
    /// certificate or a stopped etcd is reported here.
    pub async fn connect(o: &EtcdOptions) -> Result<Etcd> {
        let client = match parse_endpoints(o)? {
            Endpoints::Unix(path) => unix_client(&path).await?,
            Endpoints::Urls { urls, tls } => {
                let options = connect_options(o, tls)?;
                Client::connect(urls, Some(options))
                    .await
                    .with_context(|| format!("--cluster {}: connecting", o.endpoints))?
            }
        };
        let etcd = Etcd {
            client,
            shown: o.endpoints.clone(),
        };
        etcd.call("reaching etcd", |mut c| async move { c.status().await })
            .await?;
        Ok(etcd)
    }

    /// Runs one request within [`REQUEST_TIMEOUT`]; the error says which
    /// etcd and what to check.
    pub async fn call<T, F, Fut>(&self, what: &str, request: F) -> Result<T>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        match tokio::time::timeout(REQUEST_TIMEOUT, request(self.client.clone())).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) if unreachable(&e) => Err(crate::Error::TryAgain(format!(
                "{what}: etcd at {} cannot be reached: {}",
                self.shown,
                describe(&e)
            ))
            .into()),
            Ok(Err(e)) => Err(anyhow::anyhow!(
                "{what}: etcd at {}: {}",
                self.shown,
                describe(&e)
            )),
            Err(_) => Err(crate::Error::TryAgain(format!(
                "{what}: etcd at {} did not answer within {} s; is it running and reachable from \
                 this node (check --cluster, and with https:// --etcd-ca, --etcd-cert and \
                 --etcd-key)?",
                self.shown,
                REQUEST_TIMEOUT.as_secs()
            ))
            .into()),
        }
    }

    pub fn endpoints(&self) -> &str {
        &self.shown
    }
}

/// Whether etcd could not be reached (try again later), rather than
/// refusing the request.
fn unreachable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
        ),
        _ => false,
    }
}

/// The error with its causes: etcd-client's says only "transport
/// error" where tonic's chain says which connection failed and why.
fn describe(e: &etcd_client::Error) -> String {
    let mut text = e.to_string();
    if let etcd_client::Error::TransportError(t) = e {
        let mut cause = std::error::Error::source(t);
        while let Some(c) = cause {
            text.push_str(&format!(": {c}"));
            cause = c.source();
        }
    }
    text
}

fn connect_options(o: &EtcdOptions, tls: bool) -> Result<ConnectOptions> {
    let options = ConnectOptions::new().with_connect_timeout(REQUEST_TIMEOUT);
    if !tls {
        return Ok(options);
    }
    let read = |flag: &str, path: &Path| {
        std::fs::read(path).with_context(|| format!("{flag}: reading {}", path.display()))
    };
    let mut config = TlsOptions::new();
    if let Some(ca) = &o.ca {
        config = config.ca_certificate(Certificate::from_pem(read("--etcd-ca", ca)?));
    }
    if let (Some(cert), Some(key)) = (&o.cert, &o.key) {
        config = config.identity(Identity::from_pem(
            read("--etcd-cert", cert)?,
            read("--etcd-key", key)?,
        ));
    }
    Ok(options.with_tls(config))
}

/// A client over a unix socket: a channel of our own that dials the
/// socket (etcd-client's `raw-channel`); the URI is required but unused.
async fn unix_client(path: &Path) -> Result<Client> {
    let socket = path.to_path_buf();
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_timeout(REQUEST_TIMEOUT)
        .connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }));
    Client::from_channel(etcd_client::Channel::Tonic(channel), None)
        .await
        .with_context(|| format!("--cluster unix://{}: connecting", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(endpoints: &str) -> EtcdOptions {
        EtcdOptions {
            endpoints: endpoints.into(),
            ..Default::default()
        }
    }

    fn field(o: &EtcdOptions) -> String {
        match crate::Error::from(parse_endpoints(o).unwrap_err()) {
            crate::Error::InvalidConfig { field, .. } => field,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn endpoints_are_urls_or_one_socket() {
        let e = parse_endpoints(&options("http://10.0.0.1:2379, http://10.0.0.2:2379")).unwrap();
        assert!(matches!(e, Endpoints::Urls { urls, tls: false } if urls.len() == 2));
        let e = parse_endpoints(&options("unix:///run/etcd.sock")).unwrap();
        assert_eq!(e, Endpoints::Unix("/run/etcd.sock".into()));
        for wrong in [
            "",
            "10.0.0.1:2379",
            "unix://relative",
            "http://a:1,unix:///s",
            "http://a:1,https://b:2",
        ] {
            assert_eq!(field(&options(wrong)), "--cluster", "{wrong:?}");
        }
    }

    #[test]
    fn tls_files_go_with_https() {
        assert_eq!(field(&options("https://10.0.0.1:2379")), "--etcd-ca");
        let mut o = options("http://10.0.0.1:2379");
        o.ca = Some("ca.pem".into());
        assert_eq!(field(&o), "--etcd-ca");
        let mut o = options("https://10.0.0.1:2379");
        o.ca = Some("ca.pem".into());
        o.cert = Some("c.pem".into());
        assert_eq!(field(&o), "--etcd-key");
        o.key = Some("k.pem".into());
        assert!(matches!(
            parse_endpoints(&o),
            Ok(Endpoints::Urls { tls: true, .. })
        ));
    }
}
