//! Collecting a `stream common.Data` reply into one buffer, with a size cap.

use tonic::Streaming;
use zeroize::Zeroizing;

use super::error::TalosError;
use super::proto::common::Data;

/// Concatenates the `bytes` of every message. Stops with [`TalosError::ReplyTooLarge`] past
/// `limit` bytes and with [`TalosError::NodeReported`] if apid put an error in the metadata.
/// The buffer is zeroised on drop, as it may hold a secret (the kubeconfig archive).
pub(crate) async fn collect(
    mut stream: Streaming<Data>,
    target: &str,
    node: Option<&str>,
    method: &'static str,
    limit: usize,
) -> Result<Zeroizing<Vec<u8>>, TalosError> {
    let mut out = Zeroizing::new(Vec::new());
    loop {
        let msg = match stream.message().await {
            Ok(Some(msg)) => msg,
            Ok(None) => return Ok(out),
            Err(status) => return Err(TalosError::call(target, method, &status)),
        };
        if let Some(md) = &msg.metadata
            && !md.error.is_empty()
        {
            let node = if md.hostname.is_empty() {
                node.unwrap_or(target).to_owned()
            } else {
                md.hostname.clone()
            };
            return Err(TalosError::NodeReported {
                node,
                method,
                message: md.error.clone(),
            });
        }
        if out.len().saturating_add(msg.bytes.len()) > limit {
            return Err(TalosError::ReplyTooLarge {
                target: target.to_owned(),
                method,
                limit,
            });
        }
        // Grow by hand so no reallocation leaves a copy of the secret behind unzeroised.
        if out.capacity() < out.len() + msg.bytes.len() {
            let mut bigger = Zeroizing::new(Vec::with_capacity(
                (out.len() + msg.bytes.len())
                    .max(out.capacity() * 2)
                    .min(limit),
            ));
            bigger.extend_from_slice(&out);
            out = bigger;
        }
        out.extend_from_slice(&msg.bytes);
        let mut bytes = msg.bytes;
        zeroize::Zeroize::zeroize(&mut bytes);
    }
}
