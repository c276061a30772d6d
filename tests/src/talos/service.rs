//! The stand-in's `machine.MachineService`, following machined's and apid's observable
//! behaviour for the methods the agent uses.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bootstrap_agent::talos::proto::common::{Data, Metadata};
use bootstrap_agent::talos::proto::machine::machine_service_server::MachineService;
use bootstrap_agent::talos::proto::machine::{
    Bootstrap, BootstrapRequest, BootstrapResponse, ReadRequest, ServiceHealth, ServiceInfo,
    ServiceList, ServiceListResponse, Version, VersionInfo, VersionResponse,
};
use bootstrap_agent::talos::proto::{NODE_METADATA_KEY, ROLE_METADATA_KEY};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// How the node answers `Bootstrap` and `Kubeconfig` beyond the normal path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NodeKind {
    /// A control-plane node with etcd configured.
    #[default]
    ControlPlane,
    /// A worker: `Bootstrap`/`Kubeconfig` answer `Unimplemented`.
    Worker,
    /// A control-plane node whose config lacks the etcd CA: `Bootstrap` answers `InvalidArgument`.
    EtcdNotConfigured,
}

/// Mutable state shared by both listeners.
#[derive(Debug)]
pub(crate) struct State {
    pub kind: NodeKind,
    pub version_tag: String,
    pub not_ready_left: usize,
    pub bootstrapped: bool,
    pub bootstrap_calls: usize,
    pub kubeconfig_archive: Vec<u8>,
    pub chunk_size: usize,
    pub root: Option<PathBuf>,
    /// node name → root directory, for `node` metadata through apid.
    pub nodes: BTreeMap<String, Option<PathBuf>>,
    /// machined's check of the calling process on its socket, when modelled.
    pub caller_check: Option<CallerCheck>,
}

/// machined's check of the process calling its socket (siderolabs/talos, since v1.13.0;
/// `pkg/grpc/middleware/auth/unix/authorizer.go` at v1.14.0-rc.1): the caller's PID, read from
/// the socket's peer credentials, must be the PID of a running service whose ID matches an
/// allowed pattern — for the agent, `ext-*` (`internal/app/machined/pkg/system/services/
/// machined.go`, lines 177-224); the check waits up to `PIDTimeout` (5 s, line 30) for the PID
/// to be registered, then answers `PermissionDenied` "not authorized" (`ErrNotAuthorized`, line
/// 27; `Authorize`, lines 101-174). Forked processes matched by mount namespace
/// (`AllowNamespaceMatch`) are not modelled.
#[derive(Debug, Clone)]
pub struct CallerCheck {
    /// Service ID → PID, as Talos's `ServicePID` resources list them.
    pub services: BTreeMap<String, u32>,
    /// How long an unknown PID is waited for.
    pub timeout: std::time::Duration,
}

/// Service IDs machined lets call its socket (with their patterns; roles are not narrowed here).
const ALLOWED_SERVICES: &[&str] = &["apid", "installer", "dashboard", "ext-"];

impl CallerCheck {
    fn allows(&self, pid: u32) -> bool {
        self.services.iter().any(|(id, p)| {
            *p == pid
                && ALLOWED_SERVICES
                    .iter()
                    .any(|a| id == a || (a.ends_with('-') && id.starts_with(a)))
        })
    }
}

/// Which listener a request came through: the local socket trusts `talos-role` metadata;
/// apid's TLS port takes roles from the client certificate and routes by `node`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Local,
    Apid,
}

#[derive(Clone)]
pub(crate) struct Svc {
    pub state: Arc<Mutex<State>>,
    pub transport: Transport,
}

const ADMIN: &[&str] = &["os:admin"];
const READERS: &[&str] = &["os:admin", "os:operator", "os:reader"];

type DataStream = Pin<Box<dyn Stream<Item = Result<Data, Status>> + Send + 'static>>;

impl Svc {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panicking handler cannot leave the state half-updated in a way tests care about.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The caller's roles, as machined (metadata) or apid (certificate Organization) sees them.
    fn roles<T>(&self, req: &Request<T>) -> Vec<String> {
        match self.transport {
            Transport::Local => req
                .metadata()
                .get_all(ROLE_METADATA_KEY)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(',').map(|s| s.trim().to_owned()))
                .filter(|s| !s.is_empty())
                .collect(),
            Transport::Apid => {
                let Some(certs) = req.peer_certs() else {
                    return Vec::new();
                };
                let Some(leaf) = certs.first() else {
                    return Vec::new();
                };
                match x509_parser::parse_x509_certificate(leaf.as_ref()) {
                    Ok((_, cert)) => cert
                        .subject()
                        .iter_organization()
                        .filter_map(|o| o.as_str().ok())
                        .map(str::to_owned)
                        .collect(),
                    Err(_) => Vec::new(),
                }
            }
        }
    }

    /// machined's check of the calling process (local socket only), when modelled.
    async fn check_caller<T>(&self, req: &Request<T>) -> Result<(), Status> {
        if self.transport != Transport::Local {
            return Ok(());
        }
        let Some(timeout) = self.lock().caller_check.as_ref().map(|c| c.timeout) else {
            return Ok(());
        };
        let pid = req
            .extensions()
            .get::<tonic::transport::server::UdsConnectInfo>()
            .and_then(|info| info.peer_cred)
            .and_then(|cred| cred.pid())
            .and_then(|pid| u32::try_from(pid).ok());
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let allowed = pid.is_some_and(|pid| {
                self.lock()
                    .caller_check
                    .as_ref()
                    .is_some_and(|c| c.allows(pid))
            });
            if allowed {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Status::permission_denied("not authorized"));
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    fn authorize<T>(&self, req: &Request<T>, allowed: &[&str]) -> Result<(), Status> {
        let roles = self.roles(req);
        if roles.iter().any(|r| allowed.contains(&r.as_str())) {
            Ok(())
        } else {
            Err(Status::permission_denied("not authorized"))
        }
    }

    /// Resolves the `node` metadata (apid only): `Some(node)` for a known node, `None` when
    /// absent, `Unavailable` for a node apid cannot reach.
    fn node<T>(&self, req: &Request<T>) -> Result<Option<String>, Status> {
        if self.transport != Transport::Apid {
            return Ok(None);
        }
        let Some(v) = req.metadata().get(NODE_METADATA_KEY) else {
            return Ok(None);
        };
        let node = v
            .to_str()
            .map_err(|_| Status::invalid_argument("node metadata is not text"))?
            .to_owned();
        if self.lock().nodes.contains_key(&node) {
            Ok(Some(node))
        } else {
            Err(Status::unavailable(format!(
                "connection error: desc = \"transport: Error while dialing: dial tcp {node}:50000: connect: no route to host\""
            )))
        }
    }

    fn metadata(node: &Option<String>) -> Option<Metadata> {
        node.as_ref().map(|n| Metadata {
            hostname: n.clone(),
            ..Default::default()
        })
    }

    fn chunked(bytes: Vec<u8>, size: usize, node: &Option<String>) -> DataStream {
        let md = Self::metadata(node);
        let msgs: Vec<Result<Data, Status>> = bytes
            .chunks(size.max(1))
            .map(|c| {
                Ok(Data {
                    metadata: md.clone(),
                    bytes: c.to_vec(),
                })
            })
            .collect();
        Box::pin(tokio_stream::iter(msgs))
    }
}

/// Maps an absolute node path under `root`, refusing `..`.
fn under_root(root: &Path, path: &str) -> Result<PathBuf, Status> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(Status::invalid_argument(format!(
            "path {path:?} is not absolute"
        )));
    }
    let mut out = root.to_path_buf();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(s) => out.push(s),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(Status::invalid_argument(format!(
                    "path {path:?} is not clean"
                )));
            }
        }
    }
    Ok(out)
}

#[tonic::async_trait]
impl MachineService for Svc {
    async fn bootstrap(
        &self,
        request: Request<BootstrapRequest>,
    ) -> Result<Response<BootstrapResponse>, Status> {
        self.check_caller(&request).await?;
        self.authorize(&request, ADMIN)?;
        let node = self.node(&request)?;
        let mut st = self.lock();
        st.bootstrap_calls += 1;
        if st.not_ready_left > 0 {
            st.not_ready_left -= 1;
            return Err(Status::failed_precondition(
                "bootstrap is not available yet",
            ));
        }
        match st.kind {
            NodeKind::Worker => {
                return Err(Status::unimplemented(
                    "bootstrap is only available on control plane nodes",
                ));
            }
            NodeKind::EtcdNotConfigured => {
                return Err(Status::invalid_argument(
                    "etcd is not configured, bootstrap is not possible",
                ));
            }
            NodeKind::ControlPlane => {}
        }
        if st.bootstrapped {
            return Err(Status::already_exists("etcd data directory is not empty"));
        }
        st.bootstrapped = true;
        Ok(Response::new(BootstrapResponse {
            messages: vec![Bootstrap {
                metadata: Self::metadata(&node),
            }],
        }))
    }

    type KubeconfigStream = DataStream;

    async fn kubeconfig(
        &self,
        request: Request<()>,
    ) -> Result<Response<Self::KubeconfigStream>, Status> {
        self.check_caller(&request).await?;
        self.authorize(&request, ADMIN)?;
        let node = self.node(&request)?;
        let st = self.lock();
        if st.kind == NodeKind::Worker {
            return Err(Status::unimplemented(
                "kubeconfig is only available on control plane nodes",
            ));
        }
        Ok(Response::new(Self::chunked(
            st.kubeconfig_archive.clone(),
            st.chunk_size,
            &node,
        )))
    }

    type ReadStream = DataStream;

    async fn read(
        &self,
        request: Request<ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        self.check_caller(&request).await?;
        self.authorize(&request, ADMIN)?;
        let node = self.node(&request)?;
        let (root, chunk) = {
            let st = self.lock();
            let root = match &node {
                Some(n) => st.nodes.get(n).cloned().flatten(),
                None => st.root.clone(),
            };
            (root, st.chunk_size)
        };
        let path = &request.get_ref().path;
        let Some(root) = root else {
            return Err(Status::not_found(format!(
                "stat {path}: no such file or directory"
            )));
        };
        let host = under_root(&root, path)?;
        let meta = match tokio::fs::metadata(&host).await {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Status::not_found(format!(
                    "stat {path}: no such file or directory"
                )));
            }
            Err(e) => return Err(Status::unknown(format!("stat {path}: {e}"))),
        };
        if !meta.is_file() {
            return Err(Status::unknown("path must be a regular file"));
        }
        let bytes = tokio::fs::read(&host)
            .await
            .map_err(|e| Status::unknown(format!("open {path}: {e}")))?;
        Ok(Response::new(Self::chunked(bytes, chunk, &node)))
    }

    async fn service_list(
        &self,
        request: Request<()>,
    ) -> Result<Response<ServiceListResponse>, Status> {
        self.check_caller(&request).await?;
        self.authorize(&request, READERS)?;
        let node = self.node(&request)?;
        let services = ["apid", "etcd", "machined", "trustd"]
            .iter()
            .map(|id| ServiceInfo {
                id: (*id).to_owned(),
                state: "Running".to_owned(),
                events: None,
                health: Some(ServiceHealth {
                    unknown: false,
                    healthy: true,
                    last_message: String::new(),
                    last_change: None,
                }),
            })
            .collect();
        Ok(Response::new(ServiceListResponse {
            messages: vec![ServiceList {
                metadata: Self::metadata(&node),
                services,
            }],
        }))
    }

    async fn version(&self, request: Request<()>) -> Result<Response<VersionResponse>, Status> {
        self.check_caller(&request).await?;
        self.authorize(&request, READERS)?;
        let node = self.node(&request)?;
        let tag = self.lock().version_tag.clone();
        Ok(Response::new(VersionResponse {
            messages: vec![Version {
                metadata: Self::metadata(&node),
                version: Some(VersionInfo {
                    tag,
                    sha: "0000000".to_owned(),
                    built: String::new(),
                    go_version: "go1.25".to_owned(),
                    os: "linux".to_owned(),
                    arch: "amd64".to_owned(),
                }),
                platform: None,
                features: None,
            }],
        }))
    }
}
