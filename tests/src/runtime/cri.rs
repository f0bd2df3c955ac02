//! A CRI `runtime.v1` client standing in for kubelet: the generated tonic
//! client of the `k8s-cri` crate over a unix socket, behind a blocking
//! facade (its own tokio runtime) so plain `#[test]` functions and threads
//! can call it. It is `Sync`: several threads may call it at once (three
//! RunPodSandbox in parallel, as kubelet does).

use std::{
    collections::HashMap,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    runtime_service_client::RuntimeServiceClient, LinuxPodSandboxConfig, ListPodSandboxRequest,
    PodSandbox, PodSandboxConfig, PodSandboxMetadata, PodSandboxState, PodSandboxStatusRequest,
    PortMapping, RemovePodSandboxRequest, RunPodSandboxRequest, StatusRequest,
    StopPodSandboxRequest, VersionRequest, VersionResponse,
};
use serde_json::Value;
use tonic::transport::{Channel, Endpoint, Uri};

pub use k8s_cri::v1 as api;
pub use k8s_cri::v1::Protocol;
pub use tonic::{Code, Status};

/// How long one CRI call may take before it fails with `DeadlineExceeded`.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A blocking CRI runtime service client on a unix socket.
pub struct CriClient {
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
    socket: PathBuf,
}

impl CriClient {
    /// A client for the socket at `socket`. Connects lazily: the first call
    /// fails with `Unavailable` if nothing listens there yet, and a client
    /// reconnects by itself when the server comes back.
    pub fn new(socket: &Path) -> CriClient {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cri-client")
            .enable_all()
            .build()
            .expect("a tokio runtime for the CRI client");
        let path = socket.to_path_buf();
        let channel = {
            let _guard = rt.enter();
            // The URI is required but unused: the connector dials the socket.
            Endpoint::from_static("http://[::]:50051")
                .connect_timeout(Duration::from_secs(5))
                .timeout(CALL_TIMEOUT)
                .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                }))
        };
        CriClient {
            rt,
            client: RuntimeServiceClient::new(channel),
            socket: socket.to_path_buf(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Runs any call of the generated client, for what the facade lacks:
    /// `cri.call(|mut c| async move { c.list_containers(req).await })`.
    pub fn call<T, F, Fut>(&self, f: F) -> Result<T, Status>
    where
        F: FnOnce(RuntimeServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let client = self.client.clone();
        self.rt.block_on(f(client)).map(tonic::Response::into_inner)
    }

    pub fn version(&self) -> Result<VersionResponse, Status> {
        self.call(|mut c| async move {
            c.version(VersionRequest {
                version: "v1".into(),
            })
            .await
        })
    }

    /// `Status`: the runtime's conditions by type (`RuntimeReady`,
    /// `NetworkReady`) as (status, reason: message).
    pub fn conditions(&self) -> Result<HashMap<String, (bool, String)>, Status> {
        let status =
            self.call(|mut c| async move { c.status(StatusRequest { verbose: false }).await })?;
        Ok(status
            .status
            .unwrap_or_default()
            .conditions
            .into_iter()
            .map(|c| (c.r#type, (c.status, format!("{}: {}", c.reason, c.message))))
            .collect())
    }

    /// `RunPodSandbox` of `config`: the new sandbox's id.
    pub fn run_pod_sandbox(&self, config: PodSandboxConfig) -> Result<String, Status> {
        self.call(|mut c| async move {
            c.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
        })
        .map(|r| r.pod_sandbox_id)
    }

    /// `PodSandboxStatus{verbose: true}`, digested.
    pub fn pod_sandbox_status(&self, id: &str) -> Result<PodStatus, Status> {
        let id = id.to_string();
        let response = self.call(|mut c| async move {
            c.pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id,
                verbose: true,
            })
            .await
        })?;
        Ok(PodStatus::from_response(response))
    }

    pub fn stop_pod_sandbox(&self, id: &str) -> Result<(), Status> {
        let id = id.to_string();
        self.call(|mut c| async move {
            c.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id })
                .await
        })
        .map(drop)
    }

    pub fn remove_pod_sandbox(&self, id: &str) -> Result<(), Status> {
        let id = id.to_string();
        self.call(|mut c| async move {
            c.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
                .await
        })
        .map(drop)
    }

    /// Every sandbox the runtime knows, ready or not.
    pub fn list_pod_sandbox(&self) -> Result<Vec<PodSandbox>, Status> {
        self.call(|mut c| async move {
            c.list_pod_sandbox(ListPodSandboxRequest { filter: None })
                .await
        })
        .map(|r| r.items)
    }
}

/// What a test asks kubelet to start: a pod's metadata and host ports.
#[derive(Clone, Debug)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// hostPort mappings (handed to the `portmap` plugin as
    /// `runtimeConfig.portMappings`).
    pub port_mappings: Vec<PortMapping>,
    pub labels: HashMap<String, String>,
    /// Kubernetes annotations, e.g. `kubernetes.io/egress-bandwidth`, which
    /// containerd hands to the `bandwidth` plugin as `runtimeConfig.bandwidth`.
    pub annotations: HashMap<String, String>,
}

impl PodSpec {
    /// A pod `name` in Kubernetes namespace `default` with a unique uid.
    pub fn new(name: &str) -> PodSpec {
        use std::sync::atomic::{AtomicU32, Ordering};
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        PodSpec {
            name: name.to_string(),
            namespace: "default".to_string(),
            uid: format!("{:08x}-0000-4000-8000-{:012x}", std::process::id(), n),
            port_mappings: Vec::new(),
            labels: HashMap::new(),
            annotations: HashMap::new(),
        }
    }

    pub fn namespace(mut self, namespace: &str) -> PodSpec {
        self.namespace = namespace.to_string();
        self
    }

    /// Adds a hostPort: `host_port` on every host address (`host_ip` empty)
    /// to `container_port` of the pod, like a container's
    /// `ports: [{containerPort, hostPort, protocol}]`.
    pub fn host_port(mut self, protocol: Protocol, container_port: u16, host_port: u16) -> PodSpec {
        self.port_mappings.push(PortMapping {
            protocol: protocol as i32,
            container_port: i32::from(container_port),
            host_port: i32::from(host_port),
            host_ip: String::new(),
        });
        self
    }

    /// Adds an annotation (`kubernetes.io/ingress-bandwidth` = `10M`, say).
    pub fn annotation(mut self, key: &str, value: &str) -> PodSpec {
        self.annotations.insert(key.to_string(), value.to_string());
        self
    }

    /// The CRI config kubelet would send; `cgroup_parent` as kubelet's
    /// cgroupfs driver gives it (an absolute cgroup path).
    pub fn to_config(&self, cgroup_parent: &str) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: self.name.clone(),
                uid: self.uid.clone(),
                namespace: self.namespace.clone(),
                attempt: 0,
            }),
            hostname: self.name.clone(),
            port_mappings: self.port_mappings.clone(),
            labels: self.labels.clone(),
            annotations: self.annotations.clone(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: cgroup_parent.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// A sandbox's status as a test wants it.
#[derive(Clone, Debug)]
pub struct PodStatus {
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub ready: bool,
    /// `status.network.ip` (the first address the CNI result gave the
    /// interface named `eth0`), if any.
    pub ip: Option<IpAddr>,
    /// `status.network.additional_ips`.
    pub additional_ips: Vec<IpAddr>,
    /// The pod's network namespace, from the verbose info
    /// (`runtimeSpec.linux.namespaces[type=network].path`), e.g.
    /// `/var/run/netns/cni-…`. None for a host-network pod.
    pub netns: Option<PathBuf>,
    /// The pause process (verbose info `pid`; 0 once it is stopped).
    pub pid: Option<u32>,
    /// The CNI result containerd kept (verbose info `cniResult`).
    pub cni_result: Option<Value>,
    /// The verbose info as JSON (containerd: its `info` key).
    pub info: Value,
}

impl PodStatus {
    fn from_response(response: k8s_cri::v1::PodSandboxStatusResponse) -> PodStatus {
        let status = response.status.unwrap_or_default();
        let metadata = status.metadata.unwrap_or_default();
        let network = status.network.unwrap_or_default();
        let info: Value = response
            .info
            .get("info")
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or(Value::Null);
        let netns = info["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|ns| ns["type"] == "network")
            .and_then(|ns| ns["path"].as_str())
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        PodStatus {
            id: status.id,
            name: metadata.name,
            namespace: metadata.namespace,
            ready: status.state == PodSandboxState::SandboxReady as i32,
            ip: network.ip.parse().ok(),
            additional_ips: network
                .additional_ips
                .iter()
                .filter_map(|ip| ip.ip.parse().ok())
                .collect(),
            netns,
            pid: info["pid"].as_u64().and_then(|p| u32::try_from(p).ok()),
            cni_result: info.get("cniResult").cloned(),
            info,
        }
    }

    /// The pod's netns path, which a ready pod with a network must have.
    pub fn netns(&self) -> &Path {
        self.netns
            .as_deref()
            .unwrap_or_else(|| panic!("pod {} ({}) has no network namespace", self.name, self.id))
    }

    /// The pod's IPv4/IPv6 address, which a ready pod must have.
    pub fn ip(&self) -> IpAddr {
        self.ip
            .unwrap_or_else(|| panic!("pod {} ({}) has no IP", self.name, self.id))
    }
}
