//! A stand-in for the Talos API, built from the same protos as the agent's clients.
//!
//! It serves `machine.MachineService` on two listeners, as a node does:
//! - a Unix socket, plain HTTP/2, authorised by the `talos-role` metadata (machined's local
//!   socket);
//! - TCP `127.0.0.1:0` with mutual TLS, the role taken from the client certificate's
//!   Organization and requests routed by the `node` metadata (apid).
//!
//! What it models, and only that: the `MachineService` methods the agent and `bootstrap-agent
//! status` call, as machined and apid answer them — `Version`; `Bootstrap` (`FailedPrecondition`
//! while not ready, `AlreadyExists` once done, `Unimplemented` on a worker, `InvalidArgument`
//! without an etcd CA); `Kubeconfig` (a gzip tar, streamed in chunks); `Read` (a regular file
//! under the node's root, `NotFound` as machined words it); `ServiceList` — each behind its
//! role check (`os:admin`, or any `os:*` reader role for `Version` and `ServiceList`), with the
//! per-node `Metadata` apid adds to replies; on request ([`StandInBuilder::check_callers`]),
//! machined's check that the process calling its socket is an allowed service (`ext-*`). The
//! protos are the agent's own subset of Talos's,
//! so no other method exists here; neither do trustd, the machine configuration, or events.
//!
//! ```no_run
//! # async fn demo() {
//! use bootstrap_agent_tests::talos::StandIn;
//! let node = StandIn::builder().bootstrap_not_ready(2).start().await;
//! let socket = node.socket_path();
//! # }
//! ```

// Test support: a failure to set up the stand-in is a broken test environment, so it panics.
#![allow(clippy::expect_used)]

pub mod archive;
pub mod pki;
mod service;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bootstrap_agent::talos::proto::machine::machine_service_server::MachineServiceServer;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

pub use pki::{ClientIdentity, Pki, TalosconfigSpec, foreign_ca_pem};
pub use service::NodeKind;
use service::{CallerCheck, State, Svc, Transport};

/// Configures a [`StandIn`] before it starts.
#[derive(Debug)]
pub struct StandInBuilder {
    kind: NodeKind,
    version_tag: String,
    not_ready: usize,
    bootstrapped: bool,
    archive: Vec<u8>,
    chunk_size: usize,
    root: Option<PathBuf>,
    nodes: BTreeMap<String, Option<PathBuf>>,
    caller_check: Option<CallerCheck>,
}

impl Default for StandInBuilder {
    fn default() -> Self {
        StandInBuilder {
            kind: NodeKind::ControlPlane,
            version_tag: "v1.12.0".to_owned(),
            not_ready: 0,
            bootstrapped: false,
            archive: archive::kubeconfig_archive(archive::SAMPLE_KUBECONFIG),
            chunk_size: 256,
            root: None,
            nodes: BTreeMap::new(),
            caller_check: None,
        }
    }
}

impl StandInBuilder {
    /// The Talos version tag `Version` reports (default `v1.12.0`).
    pub fn version(mut self, tag: &str) -> Self {
        self.version_tag = tag.to_owned();
        self
    }

    /// The node type (default a control-plane node with etcd configured).
    pub fn kind(mut self, kind: NodeKind) -> Self {
        self.kind = kind;
        self
    }

    /// The first `n` `Bootstrap` calls answer `FailedPrecondition` ("not available yet").
    pub fn bootstrap_not_ready(mut self, n: usize) -> Self {
        self.not_ready = n;
        self
    }

    /// etcd is already bootstrapped: `Bootstrap` answers `AlreadyExists`.
    pub fn already_bootstrapped(mut self) -> Self {
        self.bootstrapped = true;
        self
    }

    /// `Kubeconfig` serves a well-formed archive holding `text`.
    pub fn kubeconfig(mut self, text: &str) -> Self {
        self.archive = archive::kubeconfig_archive(text);
        self
    }

    /// `Kubeconfig` serves these exact bytes (damaged archives, see [`archive`]).
    pub fn kubeconfig_archive(mut self, bytes: Vec<u8>) -> Self {
        self.archive = bytes;
        self
    }

    /// Size of each `common.Data` chunk in streamed replies (default 256 bytes).
    pub fn chunk_size(mut self, n: usize) -> Self {
        self.chunk_size = n.max(1);
        self
    }

    /// The directory `Read` maps to `/` of the node answering directly (no `node` metadata).
    pub fn root(mut self, dir: impl Into<PathBuf>) -> Self {
        self.root = Some(dir.into());
        self
    }

    /// A node apid can route to with `node: <name>` metadata, its `/` mapped to `dir`.
    pub fn node(mut self, name: &str, dir: impl Into<PathBuf>) -> Self {
        self.nodes.insert(name.to_owned(), Some(dir.into()));
        self
    }

    /// machined checks the process calling its socket, as Talos 1.13 and later do: only a
    /// registered service ([`StandIn::register_service`]) named `ext-*` (or apid, the installer,
    /// the dashboard) passes; any other caller gets `PermissionDenied` after `timeout` (Talos
    /// waits 5 s). See [`service::CallerCheck`].
    pub fn check_callers(mut self, timeout: std::time::Duration) -> Self {
        self.caller_check = Some(CallerCheck {
            services: BTreeMap::new(),
            timeout,
        });
        self
    }

    /// Binds both listeners and starts serving.
    pub async fn start(self) -> StandIn {
        bootstrap_agent::talos::install_crypto_provider();
        let state = Arc::new(Mutex::new(State {
            kind: self.kind,
            version_tag: self.version_tag,
            not_ready_left: self.not_ready,
            bootstrapped: self.bootstrapped,
            bootstrap_calls: 0,
            kubeconfig_archive: self.archive,
            chunk_size: self.chunk_size,
            root: self.root,
            nodes: self.nodes,
            caller_check: self.caller_check,
        }));
        let dir = tempfile::Builder::new()
            .prefix("talos-standin")
            .tempdir()
            .expect("temp dir for the socket");
        let socket = dir.path().join("machine.sock");
        let pki = Pki::new();

        let unix = UnixListener::bind(&socket).expect("bind the machined socket");
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind apid");
        let addr = tcp.local_addr().expect("apid address");

        let (local_tx, local_rx) = oneshot::channel::<()>();
        let (apid_tx, apid_rx) = oneshot::channel::<()>();
        let local = Svc {
            state: state.clone(),
            transport: Transport::Local,
        };
        let apid = Svc {
            state: state.clone(),
            transport: Transport::Apid,
        };
        let local_task = tokio::spawn(async move {
            let _ = Server::builder()
                .add_service(MachineServiceServer::new(local))
                .serve_with_incoming_shutdown(UnixListenerStream::new(unix), async {
                    let _ = local_rx.await;
                })
                .await;
        });
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(
                &pki.server_cert_pem,
                &pki.server_key_pem,
            ))
            .client_ca_root(Certificate::from_pem(pki.ca_cert_pem()));
        let server = Server::builder().tls_config(tls).expect("apid TLS config");
        let apid_task = tokio::spawn(async move {
            let mut server = server;
            let _ = server
                .add_service(MachineServiceServer::new(apid))
                .serve_with_incoming_shutdown(TcpListenerStream::new(tcp), async {
                    let _ = apid_rx.await;
                })
                .await;
        });
        StandIn {
            _dir: dir,
            socket,
            addr,
            pki,
            state,
            shutdown: vec![local_tx, apid_tx],
            tasks: vec![local_task, apid_task],
        }
    }
}

/// A running Talos API stand-in. Stops serving when dropped.
pub struct StandIn {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    addr: SocketAddr,
    pki: Pki,
    state: Arc<Mutex<State>>,
    shutdown: Vec<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl StandIn {
    /// A builder with defaults: control-plane node, `v1.12.0`, ready, sample kubeconfig.
    pub fn builder() -> StandInBuilder {
        StandInBuilder::default()
    }

    /// machined's socket (plain HTTP/2).
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// apid's `host:port` (mutual TLS).
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// The CA, server certificate and client issuing.
    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that service `id` runs as process `pid` (Talos's `ServicePID` resource), for the
    /// caller check ([`StandInBuilder::check_callers`]).
    pub fn register_service(&self, id: &str, pid: u32) {
        if let Some(check) = self.lock().caller_check.as_mut() {
            check.services.insert(id.to_owned(), pid);
        }
    }

    /// How many `Bootstrap` calls reached the handler past authorisation.
    pub fn bootstrap_calls(&self) -> usize {
        self.lock().bootstrap_calls
    }

    /// Whether a `Bootstrap` call has succeeded (or it started bootstrapped).
    pub fn is_bootstrapped(&self) -> bool {
        self.lock().bootstrapped
    }

    /// From now on the next `n` `Bootstrap` calls answer `FailedPrecondition`.
    pub fn set_bootstrap_not_ready(&self, n: usize) {
        self.lock().not_ready_left = n;
    }

    /// From now on `Kubeconfig` serves these exact bytes.
    pub fn set_kubeconfig_archive(&self, bytes: Vec<u8>) {
        self.lock().kubeconfig_archive = bytes;
    }

    /// From now on the node behaves as `kind`.
    pub fn set_kind(&self, kind: NodeKind) {
        self.lock().kind = kind;
    }

    /// A talosconfig for this stand-in with a client certificate for `role`, endpoint set,
    /// no nodes; adjust fields before writing.
    pub fn talosconfig_spec(&self, role: &str) -> TalosconfigSpec {
        let id = self.pki.issue_client(role);
        TalosconfigSpec {
            context: "standin".to_owned(),
            endpoints: vec![self.endpoint()],
            nodes: Vec::new(),
            ca_pem: self.pki.ca_cert_pem().to_owned(),
            crt_pem: id.crt_pem,
            key_pem: id.key_pem,
        }
    }

    /// Writes an `os:admin` talosconfig for this stand-in into `dir`; returns its path.
    pub fn write_talosconfig(&self, dir: &Path) -> PathBuf {
        self.talosconfig_spec("os:admin").write(dir)
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        for tx in self.shutdown.drain(..) {
            let _ = tx.send(());
        }
        for t in &self.tasks {
            t.abort();
        }
    }
}
