//! Node side: machined's local API over its Unix socket (plain HTTP/2, no TLS), every call with
//! the `talos-role: os:admin` metadata that machined authorises local callers by.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};
use tower::service_fn;
use tracing::debug;

use super::error::TalosError;
use super::kubeconfig::{Kubeconfig, MAX_ARCHIVE_BYTES};
use super::proto::machine::BootstrapRequest;
use super::proto::machine::machine_service_client::MachineServiceClient;
use super::proto::{ROLE_ADMIN, ROLE_METADATA_KEY};
use super::stream::collect;

/// Where machined listens on a Talos node (mounted into the extension service).
pub const DEFAULT_MACHINED_SOCKET: &str = "/system/run/machined/machine.sock";

/// Upper bound on one call to machined; a call that takes longer fails with the transient
/// `DeadlineExceeded` instead of hanging the agent.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// What `Bootstrap` achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootstrapOutcome {
    /// etcd was bootstrapped by this call.
    Bootstrapped,
    /// etcd was already bootstrapped (`AlreadyExists`: "etcd data directory is not empty").
    AlreadyBootstrapped,
}

/// A client of machined's local socket.
#[derive(Debug, Clone)]
pub struct NodeClient {
    socket: PathBuf,
    target: String,
    client: MachineServiceClient<Channel>,
}

impl NodeClient {
    /// Connects to machined's socket (default [`DEFAULT_MACHINED_SOCKET`]). A missing or
    /// refusing socket is a transient [`TalosError::SocketConnect`].
    pub async fn connect(socket: &Path) -> Result<NodeClient, TalosError> {
        let path = socket.to_path_buf();
        let connector = service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        });
        // The URI is required by the API but unused: the connector ignores it.
        let channel = Endpoint::from_static("http://machined.sock")
            .timeout(CALL_TIMEOUT)
            .connect_with_connector(connector)
            .await
            .map_err(|source| TalosError::SocketConnect {
                socket: socket.to_path_buf(),
                source,
            })?;
        debug!(socket = %socket.display(), "connected to machined");
        Ok(NodeClient {
            socket: socket.to_path_buf(),
            target: format!("machined socket {}", socket.display()),
            client: MachineServiceClient::new(channel),
        })
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn request<T>(msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        req.metadata_mut().insert(
            ROLE_METADATA_KEY,
            tonic::metadata::MetadataValue::from_static(ROLE_ADMIN),
        );
        req
    }

    /// The running Talos version tag (e.g. `v1.12.0`); a reply means machined's API is up.
    pub async fn version(&mut self) -> Result<String, TalosError> {
        let reply = self
            .client
            .version(Self::request(()))
            .await
            .map_err(|s| TalosError::call(&self.target, "Version", &s))?
            .into_inner();
        reply
            .messages
            .into_iter()
            .find_map(|m| m.version.map(|v| v.tag))
            .ok_or_else(|| TalosError::MalformedReply {
                target: self.target.clone(),
                method: "Version",
                detail: "no VersionInfo in the reply".into(),
            })
    }

    /// Bootstraps etcd. `AlreadyExists` means it was done before and is reported as
    /// [`BootstrapOutcome::AlreadyBootstrapped`]. `FailedPrecondition`/`Unavailable` are
    /// transient errors (retry); `Unimplemented` (not a control-plane node) and
    /// `InvalidArgument` (etcd not configured) are permanent.
    pub async fn bootstrap(&mut self) -> Result<BootstrapOutcome, TalosError> {
        let req = BootstrapRequest {
            recover_etcd: false,
            recover_skip_hash_check: false,
        };
        match self.client.bootstrap(Self::request(req)).await {
            Ok(_) => Ok(BootstrapOutcome::Bootstrapped),
            Err(s) if s.code() == Code::AlreadyExists => {
                debug!(message = s.message(), "etcd already bootstrapped");
                Ok(BootstrapOutcome::AlreadyBootstrapped)
            }
            Err(s) => Err(TalosError::call(&self.target, "Bootstrap", &s)),
        }
    }

    /// Fetches the admin kubeconfig: the streamed gzip tar is concatenated, decompressed and
    /// unpacked in memory; only the `kubeconfig` file is kept.
    pub async fn kubeconfig(&mut self) -> Result<Kubeconfig, TalosError> {
        let stream = self
            .client
            .kubeconfig(Self::request(()))
            .await
            .map_err(|s| TalosError::call(&self.target, "Kubeconfig", &s))?
            .into_inner();
        let archive = collect(stream, &self.target, None, "Kubeconfig", MAX_ARCHIVE_BYTES).await?;
        Kubeconfig::from_archive(&archive).map_err(|source| TalosError::KubeconfigArchive {
            target: self.target.clone(),
            source,
        })
    }
}
