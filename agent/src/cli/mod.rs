//! The command-line surface: a contract with Talos (the service entrypoint), operators and tests.
//! Every subcommand is a `run(&args) -> Exit`; the exit codes are defined once, in
//! [`crate::exit::Exit`].

pub mod bundle;
pub mod plan;
pub mod run;
pub mod status;
pub mod tpm;

use std::future::Future;

use clap::{Parser, Subcommand};

use crate::exit::Exit;

/// Default location of the configuration: the file an ExtensionServiceConfig mounts.
pub const DEFAULT_CONFIG: &str = "/usr/local/etc/bootstrap-agent/config.yaml";

const EXAMPLES: &str = "\
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
    bootstrap-agent tpm check --sealed sops-age.tpm.age";

fn after_help() -> String {
    format!("{EXAMPLES}\n\n{}", Exit::help())
}

#[derive(Debug, Parser)]
#[command(
    name = "bootstrap-agent",
    version,
    about = "Brings a Talos node from a freshly flashed disk to a cluster that Flux manages from Git, unattended.",
    after_help = after_help(),
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
    Plan(plan::PlanArgs),
    /// Keep the pinned bundle (CRDs, Flux components) current.
    #[command(subcommand)]
    Bundle(bundle::BundleCommand),
    /// Work with the TPM-held seed and sealed inputs.
    #[command(subcommand)]
    Tpm(tpm::TpmCommand),
}

impl Command {
    /// Runs the subcommand.
    pub fn run(&self) -> Exit {
        match self {
            Command::Run(args) => run::run(args),
            Command::Status(args) => status::run(args),
            Command::Plan(args) => plan::run(args),
            Command::Bundle(command) => bundle::run(command),
            Command::Tpm(command) => tpm::run(command),
        }
    }
}

/// Runs `work` on a tokio runtime (`workers` threads, or the current thread with 0).
fn block_on<F: Future<Output = Exit>>(workers: usize, work: F) -> Exit {
    let mut builder = if workers == 0 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    match builder.enable_all().build() {
        Ok(runtime) => runtime.block_on(work),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            Exit::Transient
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_ends_with_every_exit_code() {
        let help = Cli::command().render_long_help().to_string();
        for exit in Exit::ALL {
            assert!(
                help.contains(&format!("{}  {}", exit.code(), exit.meaning())),
                "{help}"
            );
        }
    }
}
