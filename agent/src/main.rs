//! `bootstrap-agent`: parse the command line, set up logging and TLS, dispatch, exit.

use std::process::ExitCode;

use bootstrap_agent::cli::{self, Cli, Command};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    bootstrap_agent::logging::init();
    // Every command may hold secrets in memory (the seed, decrypted inputs, a client key).
    if let Err(e) = bootstrap_agent::seal::disable_core_dumps() {
        tracing::warn!(error = %e, "could not disable core dumps");
    }
    bootstrap_agent::talos::install_crypto_provider();
    let code = match cli.command {
        Command::Run(args) => cli::run::main(&args),
        Command::Status(args) => cli::status::main(&args),
        Command::Plan { config } => cli::plan::main(&config),
        Command::Bundle(cmd) => cli::bundle::main(&cmd),
        Command::Tpm(cmd) => return cli::tpm::run(&cmd),
    };
    ExitCode::from(code)
}
