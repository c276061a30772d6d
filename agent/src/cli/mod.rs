//! The command-line surface: a contract with Talos (the service entrypoint), operators and tests.

pub mod tpm;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Default location of the configuration: the file an ExtensionServiceConfig mounts.
pub const DEFAULT_CONFIG: &str = "/usr/local/etc/bootstrap-agent/config.yaml";

#[derive(Debug, Parser)]
#[command(name = "bootstrap-agent", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the boot sequence (the Talos service entrypoint).
    Run {
        /// Configuration file.
        #[arg(long, default_value = DEFAULT_CONFIG, env = "BOOTSTRAP_AGENT_CONFIG")]
        config: PathBuf,
    },
    /// Work with the TPM-held seed and sealed inputs.
    #[command(subcommand)]
    Tpm(tpm::TpmCommand),
}
