//! Configuration: one YAML file (normally mounted by Talos from an ExtensionServiceConfig) plus a
//! few environment overrides for operational knobs.
//!
//! Raw input is turned into a validated [`Config`] once; nothing later re-validates. Validation
//! reports every problem it finds, each naming the field, the file and line where known, and the
//! fix.

mod load;
mod raw;
mod unknown;
mod validate;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::kube::FLUX_NAMESPACE;
pub use crate::seal::TpmSettings;
pub use crate::status::DEFAULT_PATH as DEFAULT_STATUS;
pub use crate::steps::{
    BundleSettings, ClusterAccess, Deadlines, SealedSource, SecretFormat, SecretSettings, Settings,
};

/// Where machined's API listens on a Talos node.
pub use crate::talos::DEFAULT_MACHINED_SOCKET as DEFAULT_TALOS_SOCKET;
/// Where the embedded bundle appears inside the service container (the extension carries it at
/// `/usr/local/lib/containers/bootstrap-agent/bundle`, under the service's own root).
pub const DEFAULT_BUNDLE_DIR: &str = "/bundle";
/// The SecureBoot state PCR, and a PCR Talos never extends (the lock).
pub use crate::seal::{DEFAULT_LOCK_PCR, DEFAULT_PCRS};

/// Environment variables that override the file (operational knobs only).
pub mod env {
    /// Status file path.
    pub const STATUS: &str = "BOOTSTRAP_AGENT_STATUS";
    /// TPM address (`/dev/tpmrm0`, `tcp://HOST:PORT`, `unix:///PATH`).
    pub const TPM: &str = "BOOTSTRAP_AGENT_TPM";
    /// Cap of the retry backoff, a duration such as `30s`.
    pub const RETRY_MAX: &str = "BOOTSTRAP_AGENT_RETRY_MAX";
    /// Multiplies every step deadline, e.g. `0.1` in rehearsals or `3` on slow hardware.
    pub const DEADLINE_SCALE: &str = "BOOTSTRAP_AGENT_DEADLINE_SCALE";
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this came from (for messages).
    pub source: PathBuf,
    /// What the boot steps work with.
    pub steps: Settings,
    pub status: PathBuf,
    pub retry: RetryConfig,
}

/// Capped exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryConfig {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the field, e.g. `tpm.lockPcr` or `secrets[0].name`.
    pub field: String,
    /// 1-based line in the file, where known.
    pub line: Option<u64>,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}: {}", self.field, self.message)?,
            None => write!(f, "{}: {}", self.field, self.message)?,
        }
        if !self.fix.is_empty() {
            write!(f, " (fix: {})", self.fix)?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "cannot read configuration {path}: {source} (fix: check the path, or the ExtensionServiceConfig mountPath)"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration {path} is not valid YAML for this agent:\n{message}")]
    Syntax { path: PathBuf, message: String },
    #[error("configuration {path} has {} problem(s):\n{}", problems.len(), list(problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// Every problem, for callers that render them differently.
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid { problems, .. } => {
                problems.iter().map(ToString::to_string).collect()
            }
            other => vec![other.to_string()],
        }
    }
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests;
