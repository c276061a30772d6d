//! Errors of the Talos API clients: each names the socket or endpoint and the method, and says
//! what to do.

use std::path::PathBuf;

use tonic::Code;

use super::kubeconfig::ArchiveError;
use super::talosconfig::TalosConfigError;
use crate::error::{Classify, ErrorKind, chain, transient_if};

/// A failure talking to the Talos API.
#[derive(Debug, thiserror::Error)]
pub enum TalosError {
    /// machined's socket could not be reached (missing, refused, wrong permissions).
    #[error(
        "cannot connect to machined's socket {}: {}; machined may still be starting \
         (retry), or the socket is not mounted into the service (mount {} and depend on its path)",
        socket.display(), chain(source), socket.display()
    )]
    SocketConnect {
        /// The socket path.
        socket: PathBuf,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },

    /// No endpoint of the talosconfig context answered a TLS connection.
    #[error("cannot connect to the Talos API at {endpoint}: {}", chain(source))]
    EndpointConnect {
        /// `host:port` tried last.
        endpoint: String,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },

    /// An endpoint of the talosconfig context that cannot be dialled at all.
    #[error("cannot connect to the Talos API at {endpoint}: {reason}")]
    BadEndpoint {
        /// The endpoint as written, or `(none)`.
        endpoint: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The node refused the talosconfig's client certificate: its TLS stack sent an alert about
    /// our certificate (Talos's apid, in Go, answers a certificate that does not verify against
    /// the cluster's CA with `bad_certificate`: `crypto/tls` `handshake_server.go`,
    /// `processCertsFromClient`). With TLS 1.3 this surfaces at the first call, not at connect.
    #[error(
        "the Talos API at {target} rejected the talosconfig's client certificate (TLS alert: {alert})"
    )]
    ClientCertificateRejected {
        /// Where the call went.
        target: String,
        /// The TLS alert the node sent.
        alert: String,
    },

    /// The client certificate, key or CA of the talosconfig is not usable by TLS.
    #[error(
        "the talosconfig credentials cannot be used for TLS: {}",
        chain(source)
    )]
    Tls {
        /// What is wrong.
        #[source]
        source: tonic::transport::Error,
    },

    /// A call returned a gRPC error status.
    #[error("{method} on {target} failed ({code:?}): {message}")]
    Call {
        /// `machined socket /path` or `endpoint host:port (node N)`.
        target: String,
        /// The gRPC method name, e.g. `Bootstrap`.
        method: &'static str,
        /// The gRPC status code.
        code: Code,
        /// The status message from the server.
        message: String,
    },

    /// `Read` found no such file: for the status file this means the agent has not run there.
    #[error(
        "status file {path} not found on node {node}: has the agent started? It writes this file \
         once it runs (check `talosctl -n {node} service ext-bootstrap-agent`)"
    )]
    NotFoundOnNode {
        /// The node asked (or the endpoint when no node was selected).
        node: String,
        /// The path read.
        path: String,
    },

    /// apid reported a per-node error inside the reply metadata.
    #[error("{method} on node {node} failed: {message}")]
    NodeReported {
        /// The node.
        node: String,
        /// The gRPC method name.
        method: &'static str,
        /// `common.Metadata.error`.
        message: String,
    },

    /// A reply lacked a field the protocol promises.
    #[error("{method} on {target}: malformed reply: {detail}")]
    MalformedReply {
        /// Where the call went.
        target: String,
        /// The gRPC method name.
        method: &'static str,
        /// What was missing.
        detail: String,
    },

    /// A streamed reply exceeded the size we accept.
    #[error("{method} on {target}: reply exceeds {limit} bytes; refusing to buffer more")]
    ReplyTooLarge {
        /// Where the call went.
        target: String,
        /// The gRPC method name.
        method: &'static str,
        /// The cap in bytes.
        limit: usize,
    },

    /// The kubeconfig archive returned by `Kubeconfig` is unusable.
    #[error("Kubeconfig on {target}: {source}")]
    KubeconfigArchive {
        /// Where the call went.
        target: String,
        /// What is wrong with the archive.
        #[source]
        source: ArchiveError,
    },

    /// The talosconfig could not be loaded.
    #[error(transparent)]
    TalosConfig(#[from] TalosConfigError),
}

impl Classify for TalosError {
    /// Transient when retrying later may succeed (machined still starting, not ready yet,
    /// network hiccup); configuration and permission problems are not.
    fn kind(&self) -> ErrorKind {
        match self {
            TalosError::SocketConnect { .. } | TalosError::EndpointConnect { .. } => {
                ErrorKind::Transient
            }
            TalosError::Call {
                code: Code::PermissionDenied | Code::Unauthenticated,
                ..
            } => ErrorKind::Config,
            TalosError::Call { code, .. } => transient_if(is_transient_code(*code)),
            TalosError::NodeReported { .. } => ErrorKind::Transient,
            TalosError::BadEndpoint { .. }
            | TalosError::ClientCertificateRejected { .. }
            | TalosError::Tls { .. }
            | TalosError::TalosConfig(_) => ErrorKind::Config,
            TalosError::NotFoundOnNode { .. }
            | TalosError::MalformedReply { .. }
            | TalosError::ReplyTooLarge { .. }
            | TalosError::KubeconfigArchive { .. } => ErrorKind::Permanent,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            TalosError::Call { method, code, .. } => Some(hint(method, *code).to_owned()),
            TalosError::ClientCertificateRejected { .. } => Some(
                "the client certificate of the talosconfig is not one this cluster issued (or it \
                 has expired): use the talosconfig of this cluster (Terraform writes it \
                 SOPS-encrypted as talosconfig.enc.yaml), or have a new one made with \
                 `talosctl config new` by someone who has it"
                    .into(),
            ),
            TalosError::EndpointConnect { source, .. } => {
                connect_hint(&chain(source)).map(str::to_owned)
            }
            _ => None,
        }
    }
}

impl TalosError {
    /// The gRPC status code, when the error is a call failure.
    pub fn code(&self) -> Option<Code> {
        match self {
            TalosError::Call { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Builds a [`TalosError::Call`] from a status, or a [`TalosError::ClientCertificateRejected`]
    /// when the status is the transport failing on the node's TLS alert about our certificate.
    pub(crate) fn call(target: &str, method: &'static str, status: &tonic::Status) -> Self {
        if let Some(alert) = certificate_alert(status) {
            return TalosError::ClientCertificateRejected {
                target: target.to_owned(),
                alert,
            };
        }
        TalosError::Call {
            target: target.to_owned(),
            method,
            code: status.code(),
            message: status.message().to_owned(),
        }
    }

    /// An [`TalosError::EndpointConnect`], or a [`TalosError::ClientCertificateRejected`] when
    /// the handshake failed on the node's alert about our certificate (TLS 1.2).
    pub(crate) fn connect(endpoint: &str, source: tonic::transport::Error) -> Self {
        match certificate_alert(&source) {
            Some(alert) => TalosError::ClientCertificateRejected {
                target: format!("endpoint {endpoint}"),
                alert,
            },
            None => TalosError::EndpointConnect {
                endpoint: endpoint.to_owned(),
                source,
            },
        }
    }
}

/// TLS alerts a server sends about the client's certificate, by the names rustls gives them in
/// "received fatal alert: NAME" (rustls 0.23 `error.rs`: `Error::AlertReceived` display, line
/// 985; how it chooses an alert for a certificate error, lines 625-661). Go's `crypto/tls`, which
/// Talos's apid uses, sends `bad_certificate` for a client certificate that does not verify
/// (`handshake_server.go`, `processCertsFromClient`); rustls sends `decrypt_error` when the
/// chain names the right issuer but another key signed it — the case of another Talos cluster,
/// whose CA has the same name — and `unknown_ca` when the issuer is unknown.
const CERTIFICATE_ALERTS: &[&str] = &[
    "BadCertificate",
    "UnsupportedCertificate",
    "CertificateRevoked",
    "CertificateExpired",
    "CertificateUnknown",
    "CertificateRequired",
    "UnknownCA",
    "DecryptError",
    "AccessDenied",
];

/// A TLS alert the peer sent about our certificate, anywhere in `err`'s sources. The TLS error
/// reaches us as text inside an I/O error, whose payload `source()` skips, so the payload is
/// looked at too.
pub(crate) fn certificate_alert(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        let payload = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(ToString::to_string);
        for text in [Some(e.to_string()), payload].into_iter().flatten() {
            if let Some((_, rest)) = text.split_once("received fatal alert: ") {
                let alert: String = rest
                    .chars()
                    .take_while(char::is_ascii_alphanumeric)
                    .collect();
                if CERTIFICATE_ALERTS.contains(&alert.as_str()) {
                    return Some(alert);
                }
            }
        }
        cur = e.source();
    }
    None
}

/// gRPC codes a retry may cure.
fn is_transient_code(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::FailedPrecondition
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::ResourceExhausted
            | Code::Cancelled
            | Code::Unknown
    )
}

/// What to do about `code` returned by `method`.
fn hint(method: &str, code: Code) -> &'static str {
    match (method, code) {
        // machined answers "not authorized" both for a missing role and, since Talos 1.13, for
        // a calling process that is not an allowed service: on its socket only processes of
        // services matching `ext-*` (or apid, the installer...) pass (siderolabs/talos
        // v1.14.0-rc.1, `internal/app/machined/pkg/system/services/machined.go` lines 177-224;
        // `pkg/grpc/middleware/auth/unix/authorizer.go`, `ErrNotAuthorized` line 27,
        // `Authorize` lines 101-174).
        (_, Code::PermissionDenied) => {
            "The caller is not allowed. On machined's socket every call needs the \
             `talos-role: os:admin` metadata, and Talos 1.13 and later also check the calling \
             process: only a process of an extension service (`ext-*`, here \
             `ext-bootstrap-agent`) may use the socket, so the agent must run as the extension's \
             service, not by hand on the node or from another container. Over the network the \
             talosconfig's client certificate must carry the os:admin role (Organization)"
        }
        (_, Code::Unauthenticated) => {
            "The client certificate was not accepted: use a talosconfig issued by this cluster"
        }
        ("Bootstrap", Code::FailedPrecondition) => {
            "machined is not ready to bootstrap yet (still booting, or time not in sync): retry"
        }
        ("Bootstrap", Code::Unimplemented) => {
            "This node is not a control-plane node (or its machine type is not set yet): etcd \
             can only be bootstrapped on a control-plane node; check machine.type in the \
             machine configuration"
        }
        ("Bootstrap", Code::InvalidArgument) => {
            "etcd is not configured in the machine configuration (no cluster.etcd.ca): \
             bootstrap is impossible until the machine configuration is fixed"
        }
        ("Kubeconfig", Code::Unimplemented) => {
            "The kubeconfig is only available on control-plane nodes"
        }
        ("Kubeconfig", Code::FailedPrecondition) => {
            "The Kubernetes API server CA is not configured yet: retry"
        }
        (_, Code::Unavailable) => "The Talos API is not reachable right now: retry",
        (_, Code::Unimplemented) => "This Talos version does not offer this method",
        _ if is_transient_code(code) => "Retry later",
        _ => "This will not pass by retrying",
    }
}

/// What to do about a failed TLS connection, from the transport error's text.
fn connect_hint(detail: &str) -> Option<&'static str> {
    Some(
        if detail.contains("UnknownIssuer") || detail.contains("BadSignature") {
            "the server's certificate is not signed by the talosconfig's `ca`: is this \
             talosconfig for this cluster?"
        } else if detail.contains("NotValidForName") || detail.contains("not valid for name") {
            "the server's certificate does not name this endpoint: use an endpoint listed in the \
             machine configuration's certSANs"
        } else if detail.contains("Expired") || detail.contains("NotValidYet") {
            "a certificate is outside its validity period: check the clock, or regenerate the \
             talosconfig (`talosctl config new`)"
        } else if detail.contains("certificate") || detail.contains("alert") {
            "the TLS handshake failed: check that the talosconfig belongs to this cluster"
        } else {
            "is the node up and apid listening on this address?"
        },
    )
}
