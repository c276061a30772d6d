//! Builds and validates the bootstrap-agent Talos system extension image (build time only;
//! nothing here ships inside the agent).
//!
//! - [`image::write_outputs`] turns the static agent binary (and optionally the bundle) into an
//!   OCI image layout, an OCI archive and a flat extension tar, byte-for-byte reproducible.
//! - [`validate::validate_path`] checks any extension image or unpacked tree against Talos's
//!   rules and reports every finding with its path and rule.

pub mod elf;
pub mod image;
pub mod oci;
pub mod semver_range;
pub mod tree;
pub mod validate;

use std::path::PathBuf;

/// Errors that stop a build or a validation run (validation *findings* are not errors).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading or writing tar data of {what}: {source}")]
    Tar {
        what: String,
        source: std::io::Error,
    },
    #[error("serialising JSON: {0}")]
    Json(serde_json::Error),
    #[error("{0}")]
    Input(String),
}
