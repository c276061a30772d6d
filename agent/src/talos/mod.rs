//! Talos machine API: the node-side client over machined's Unix socket and the operator-side
//! client over mutual TLS (apid, TCP 50000).
//!
//! - [`node::NodeClient`]: what the agent itself uses on the node (`Version`, `Bootstrap`,
//!   `Kubeconfig`), authorised by the `talos-role: os:admin` metadata.
//! - [`operator::OperatorClient`]: what an operator uses from their machine (`Read` of the status
//!   file), authenticated with a talosconfig ([`talosconfig`]).

pub mod error;
pub mod kubeconfig;
pub mod node;
pub mod operator;
mod probe;
pub mod proto;
mod stream;
pub mod talosconfig;

pub use error::TalosError;
pub use kubeconfig::Kubeconfig;
pub use node::{BootstrapOutcome, DEFAULT_MACHINED_SOCKET, NodeClient};
pub use operator::OperatorClient;
pub use talosconfig::{TalosConfigError, TalosConfigOptions, TalosConfigSelection};

/// Installs rustls's `ring` crypto provider as the process default. Idempotent: a provider
/// already installed (by us or anyone else) is left in place.
pub fn install_crypto_provider() {
    // `install_default` fails only when a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
