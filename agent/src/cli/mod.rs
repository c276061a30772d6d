//! The command-line surface: a contract with Talos (the service entrypoint), operators and tests.
//!
//! Exit codes: 0 success (or waiting for the operator), 1 transient failure (a retry may
//! succeed), 2 configuration error, 3 permanent failure.

pub mod bundle;
pub mod plan;
pub mod run;
pub mod status;
pub mod tpm;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Default location of the configuration: the file an ExtensionServiceConfig mounts.
pub const DEFAULT_CONFIG: &str = "/usr/local/etc/bootstrap-agent/config.yaml";

const AFTER_HELP: &str = "\
Examples:
  On the node (the Talos service entrypoint):
    bootstrap-agent run --config /usr/local/etc/bootstrap-agent/config.yaml
  From an operator machine, through the Talos API:
    bootstrap-agent status --nodes 192.168.20.100
    bootstrap-agent status --watch
    bootstrap-agent status --json | jq .phase
  Offline, before deploying a configuration:
    bootstrap-agent plan --config config.yaml
  Bundle pins (with network access):
    bootstrap-agent bundle refresh --lock agent/bundle/bundle.lock.yaml
    bootstrap-agent bundle fetch --out target/bundle
  TPM enrolment and checks:
    bootstrap-agent tpm recipient
    bootstrap-agent tpm check --sealed sops-age.tpm.age

Exit codes:
  0  success (or waiting for the operator to seal inputs to this TPM)
  1  transient failure: retrying may succeed (Talos restarts the service)
  2  configuration error: fix the configuration
  3  permanent failure: something must change first (see the status and its hint)";

#[derive(Debug, Parser)]
#[command(
    name = "bootstrap-agent",
    version,
    about = "Brings a Talos node from a freshly flashed disk to a cluster that Flux manages from Git, unattended.",
    after_help = AFTER_HELP,
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the boot sequence (the Talos service entrypoint).
    Run(run::RunArgs),
    /// Show the agent's status, read from the node through the Talos API.
    Status(status::StatusArgs),
    /// Validate a configuration and everything it references; print what a run would do.
    Plan {
        /// Configuration file.
        #[arg(long, default_value = DEFAULT_CONFIG, env = "BOOTSTRAP_AGENT_CONFIG")]
        config: PathBuf,
    },
    /// Keep the pinned bundle (CRDs, Flux components) current.
    #[command(subcommand)]
    Bundle(bundle::BundleCommand),
    /// Work with the TPM-held seed and sealed inputs.
    #[command(subcommand)]
    Tpm(tpm::TpmCommand),
}
