//! `bootstrap-agent tpm ...`: enrolment, the public recipient, and checking a sealed file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

/// Default TPM address: the kernel's resource manager.
pub const DEFAULT_TPM: &str = "/dev/tpmrm0";

#[derive(Debug, Subcommand)]
pub enum TpmCommand {
    /// Create, fill and write-lock the NV seed when absent; print the age recipient.
    Enroll {
        /// TPM address: a device path, tcp://HOST:PORT or unix:///PATH.
        #[arg(long, default_value = DEFAULT_TPM)]
        tpm: String,
    },
    /// Print the age recipient of this TPM (read-only).
    Recipient {
        #[arg(long, default_value = DEFAULT_TPM)]
        tpm: String,
    },
    /// Unseal, decrypt an age file and print the public recipient of the identity inside.
    Check {
        #[arg(long)]
        sealed: PathBuf,
        #[arg(long, default_value = DEFAULT_TPM)]
        tpm: String,
    },
}

/// Runs a `tpm` subcommand.
pub fn run(command: &TpmCommand) -> ExitCode {
    let _ = command;
    eprintln!("bootstrap-agent tpm: not implemented yet");
    ExitCode::from(crate::exit::PERMANENT)
}
