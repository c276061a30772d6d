//! Operator side: the Talos API through apid (TCP 50000, mutual TLS), authenticated by a
//! talosconfig. Used to read the agent's status file from an operator machine.

use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request};
use tracing::debug;

use super::error::TalosError;
use super::probe;
use super::proto::NODE_METADATA_KEY;
use super::proto::machine::ReadRequest;
use super::proto::machine::machine_service_client::MachineServiceClient;
use super::stream::collect;
use super::talosconfig::{TalosConfigSelection, split_endpoint};

/// apid's port when an endpoint names none.
pub const DEFAULT_APID_PORT: u16 = 50000;
/// Largest file `read` accepts.
pub const MAX_READ_BYTES: usize = 16 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound on one call through apid: a node that accepts the connection but never answers
/// fails the call (`DeadlineExceeded`) instead of hanging the command.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A client of apid with the talosconfig's client certificate.
#[derive(Debug, Clone)]
pub struct OperatorClient {
    endpoint: String,
    node: Option<String>,
    client: MachineServiceClient<Channel>,
    /// What a second connection needs to ask whether the node takes our certificate.
    selection: Arc<TalosConfigSelection>,
    host: String,
}

impl OperatorClient {
    /// Connects over mutual TLS to the first endpoint of the selection that answers. The server
    /// certificate must chain to the talosconfig's `ca`. Requests go to the selection's first
    /// node (`node` metadata) when it names any.
    pub async fn connect(sel: &TalosConfigSelection) -> Result<OperatorClient, TalosError> {
        super::install_crypto_provider();
        let mut last = None;
        for raw in &sel.endpoints {
            let Some((host, port)) = split_endpoint(raw, DEFAULT_APID_PORT) else {
                last = Some(TalosError::BadEndpoint {
                    endpoint: raw.clone(),
                    reason: "not a valid endpoint (expected host, host:port or [ipv6]:port)",
                });
                continue;
            };
            let authority = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            match connect_one(sel, &host, &authority).await {
                Ok(channel) => {
                    debug!(endpoint = %authority, "connected to the Talos API");
                    return Ok(OperatorClient {
                        endpoint: authority,
                        node: sel.nodes.first().cloned(),
                        client: MachineServiceClient::new(channel),
                        selection: Arc::new(sel.clone()),
                        host,
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| TalosError::BadEndpoint {
            endpoint: "(none)".into(),
            reason: "the talosconfig context lists no endpoints",
        }))
    }

    /// The endpoint in use (`host:port`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The node requests are routed to, if any.
    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    /// Routes later requests to `node` (or to the endpoint itself with `None`).
    pub fn set_node(&mut self, node: Option<String>) {
        self.node = node;
    }

    fn target(&self) -> String {
        match &self.node {
            Some(n) => format!("endpoint {} (node {n})", self.endpoint),
            None => format!("endpoint {}", self.endpoint),
        }
    }

    /// Reads a regular file on the node (MachineService/Read, needs os:admin). A missing file
    /// is [`TalosError::NotFoundOnNode`]; a client certificate the node refuses is
    /// [`TalosError::ClientCertificateRejected`].
    pub async fn read(&mut self, path: &str) -> Result<Vec<u8>, TalosError> {
        let result = self.read_once(path).await;
        if let Err(TalosError::Call { code, .. }) = &result
            && matches!(
                code,
                Code::Unknown | Code::Unavailable | Code::Cancelled | Code::Internal
            )
            && let Some(alert) =
                probe::rejected_certificate(&self.selection, &self.host, &self.endpoint).await
        {
            return Err(TalosError::ClientCertificateRejected {
                target: self.target(),
                alert,
            });
        }
        result
    }

    async fn read_once(&mut self, path: &str) -> Result<Vec<u8>, TalosError> {
        let target = self.target();
        let mut req = Request::new(ReadRequest {
            path: path.to_owned(),
        });
        if let Some(node) = &self.node {
            let value = MetadataValue::try_from(node.as_str()).map_err(|_| TalosError::Call {
                target: target.clone(),
                method: "Read",
                code: Code::InvalidArgument,
                message: format!(
                    "node name {node:?} is not valid gRPC metadata: pass a node address or hostname"
                ),
            })?;
            req.metadata_mut().insert(NODE_METADATA_KEY, value);
        }
        let not_found = |s: &tonic::Status| {
            if s.code() == Code::NotFound {
                TalosError::NotFoundOnNode {
                    node: self.node.clone().unwrap_or_else(|| self.endpoint.clone()),
                    path: path.to_owned(),
                }
            } else {
                TalosError::call(&target, "Read", s)
            }
        };
        let stream = self
            .client
            .read(req)
            .await
            .map_err(|s| not_found(&s))?
            .into_inner();
        match collect(
            stream,
            &target,
            self.node.as_deref(),
            "Read",
            MAX_READ_BYTES,
        )
        .await
        {
            Ok(bytes) => Ok(bytes.to_vec()),
            Err(TalosError::Call {
                code: Code::NotFound,
                message,
                ..
            }) => Err(not_found(&tonic::Status::not_found(message))),
            Err(e) => Err(e),
        }
    }
}

async fn connect_one(
    sel: &TalosConfigSelection,
    host: &str,
    authority: &str,
) -> Result<Channel, TalosError> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&sel.ca_pem))
        .identity(Identity::from_pem(&sel.crt_pem, &*sel.key_pem))
        .domain_name(host);
    let endpoint = Endpoint::from_shared(format!("https://{authority}"))
        .map_err(|source| TalosError::connect(authority, source))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .tls_config(tls)
        .map_err(|source| TalosError::Tls { source })?;
    endpoint
        .connect()
        .await
        .map_err(|source| TalosError::connect(authority, source))
}
