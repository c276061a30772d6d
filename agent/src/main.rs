use std::process::ExitCode;

use bootstrap_agent::cli::{Cli, Command};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Run { .. } => ExitCode::from(bootstrap_agent::exit::PERMANENT),
        Command::Tpm(cmd) => bootstrap_agent::cli::tpm::run(cmd),
    }
}
