//! `bootstrap-agent`: parse the command line, set up logging and TLS, dispatch, exit.

use std::process::ExitCode;

use bootstrap_agent::cli::Cli;
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    bootstrap_agent::logging::init();
    // Every command may hold secrets in memory (the seed, decrypted inputs, a client key).
    if let Err(e) = bootstrap_agent::seal::disable_core_dumps() {
        tracing::warn!(error = %e, "could not disable core dumps");
    }
    bootstrap_agent::talos::install_crypto_provider();
    cli.command.run().into()
}
