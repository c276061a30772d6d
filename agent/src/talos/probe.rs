//! Whether the node accepts the talosconfig's client certificate, asked on a connection of its
//! own. With TLS 1.3 a server verifies the client's certificate only after the client has
//! finished its side of the handshake; its verdict (an alert) arrives while the first request is
//! already on the wire, and often reaches the request as a broken pipe rather than as the alert.
//! So when a call fails at the transport level, one more connection completes the handshake,
//! sends nothing, and reads: a server that accepted the certificate sends application data (an
//! HTTP/2 server opens with its SETTINGS frame) or stays silent; one that rejected it sends an
//! alert and closes, and with nothing of ours left unread on its side, the alert is not lost to
//! a reset.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::error::certificate_alert;
use super::talosconfig::TalosConfigSelection;

/// How long the probe waits for the connection, then for the server's first word.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The TLS alert with which the node at `authority` refuses the selection's client certificate,
/// or `None` when it does not (or the probe cannot tell).
pub(crate) async fn rejected_certificate(
    sel: &TalosConfigSelection,
    host: &str,
    authority: &str,
) -> Option<String> {
    let config = client_config(sel)?;
    let name = ServerName::try_from(host.to_owned()).ok()?;
    let tcp = tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(authority))
        .await
        .ok()?
        .ok()?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tls = match tokio::time::timeout(PROBE_TIMEOUT, connector.connect(name, tcp)).await {
        Ok(Ok(tls)) => tls,
        // TLS 1.2: the verdict comes within the handshake.
        Ok(Err(e)) => return certificate_alert(&e),
        Err(_) => return None,
    };
    let mut first = [0u8; 1];
    match tokio::time::timeout(PROBE_TIMEOUT, tls.read(&mut first)).await {
        Ok(Err(e)) => certificate_alert(&e),
        _ => None,
    }
}

fn client_config(sel: &TalosConfigSelection) -> Option<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&sel.ca_pem) {
        roots.add(ca.ok()?).ok()?;
    }
    let chain = CertificateDer::pem_slice_iter(&sel.crt_pem)
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    let key = PrivateKeyDer::from_pem_slice(&sel.key_pem).ok()?;
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .ok()?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Some(config)
}
