//! `bootstrap-agent tpm ...`: enrolment, the public recipient, and checking a sealed file.

use std::io::Write;
use std::path::PathBuf;

use crate::error::Classify;
use crate::exit::Exit;
use crate::seal::{self, KeyFactor, PcrField, PcrPolicy, SealError, SealedInput, TpmSettings};
use crate::secureboot;
use crate::tpm::transport::{self, Address};

use clap::{Args, Subcommand};

/// Where the TPM is and how the seed is guarded (must match the agent's configuration): the
/// options that make a [`TpmSettings`], checked by the same types as the configuration.
#[derive(Debug, Clone, Args)]
pub struct TpmArgs {
    /// TPM address: a device path, tcp://HOST:PORT or unix:///PATH.
    #[arg(long, default_value = transport::DEFAULT_DEVICE)]
    pub tpm: Address,
    /// NV index of the seed (hex).
    #[arg(long, default_value = "0x01305EED", value_parser = parse_nv_index)]
    pub nv_index: u32,
    /// Policy PCRs of the SHA-256 bank, comma-separated.
    #[arg(long, default_value = "7", value_delimiter = ',')]
    pub pcrs: Vec<u32>,
    /// PCR extended once the seed is read, at every boot (the lock).
    #[arg(long, default_value_t = seal::DEFAULT_LOCK_PCR)]
    pub lock_pcr: u32,
    /// Pinned salt key name (hex, as printed by `tpm enroll`); required for tcp:// and unix://
    /// unless --insecure-transport.
    #[arg(long, value_parser = seal::salt_key_name)]
    pub salt_key_name: Option<String>,
    /// Talk to a tcp:// or unix:// simulator without a pinned salt key name (tests only).
    #[arg(long)]
    pub insecure_transport: bool,
    /// File holding the configuration's key factor (64 hex digits, as in tpm.factor).
    #[arg(long)]
    pub factor_file: Option<PathBuf>,
    /// Pinned recipient: refuse a TPM whose seed yields another one.
    #[arg(long, value_parser = seal::parse_recipient)]
    pub recipient: Option<String>,
    /// Directory holding the SecureBoot and SetupMode UEFI variables (enrolment refuses to
    /// create a seed unless SecureBoot is enabled and the firmware is in user mode).
    #[arg(long, default_value = secureboot::KERNEL_EFIVARS)]
    pub efivars: PathBuf,
}

impl TpmArgs {
    /// The settings, or what is wrong with the PCR options.
    pub fn settings(&self) -> Result<TpmSettings, String> {
        let policy = PcrPolicy::new(self.pcrs.clone(), self.lock_pcr).map_err(|problems| {
            problems
                .into_iter()
                .map(|(about, invalid)| {
                    let option = match about {
                        PcrField::Pcrs => "--pcrs",
                        PcrField::LockPcr => "--lock-pcr",
                    };
                    format!("{option}: {invalid}")
                })
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        let factor = match &self.factor_file {
            Some(path) => {
                Some(KeyFactor::from_file(path).map_err(|e| format!("--factor-file: {e}"))?)
            }
            None => None,
        };
        let settings = TpmSettings {
            address: self.tpm.clone(),
            policy,
            nv_index: self.nv_index,
            salt_key_name: self.salt_key_name.clone(),
            insecure_transport: self.insecure_transport,
            recipient: self.recipient.clone(),
            factor,
            efivars: self.efivars.clone(),
        };
        if let Some(problem) = settings.transport_problem() {
            return Err(format!(
                "--tpm: {} (fix: pass --salt-key-name, or --insecure-transport for a simulator)",
                problem.message
            ));
        }
        if settings.factor.is_none() {
            return Err("--factor-file is required: the identity needs both the TPM's seed and the configuration's key factor (tpm.factor)".into());
        }
        Ok(settings)
    }
}

fn parse_nv_index(s: &str) -> Result<u32, String> {
    let digits = s.trim_start_matches("0x").trim_start_matches("0X");
    let value =
        u64::from_str_radix(digits, 16).map_err(|e| format!("{s:?} is not a hex number: {e}"))?;
    seal::nv_index(value).map_err(|e| e.to_string())
}

#[derive(Debug, Subcommand)]
pub enum TpmCommand {
    /// Create, fill and write-lock the NV seed when absent (only with SecureBoot enabled and the
    /// firmware in user mode); print the age recipient. Does not extend the lock PCR.
    Enroll {
        #[command(flatten)]
        tpm: TpmArgs,
    },
    /// Print the age recipient of this TPM (read-only; does not extend the lock PCR).
    Recipient {
        #[command(flatten)]
        tpm: TpmArgs,
    },
    /// Unseal, decrypt an age file and print the public recipient of the identity inside
    /// (does not extend the lock PCR).
    Check {
        /// The armored age file to check.
        #[arg(long)]
        sealed: PathBuf,
        #[command(flatten)]
        tpm: TpmArgs,
    },
}

/// Runs a `tpm` subcommand, writing to the process's stdout/stderr.
pub fn run(command: &TpmCommand) -> Exit {
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    run_with(command, &mut out, &mut err)
}

/// Runs a `tpm` subcommand: results on `out` (only public values), diagnostics on `err`.
pub fn run_with(command: &TpmCommand, out: &mut dyn Write, err: &mut dyn Write) -> Exit {
    match execute(command, out, err) {
        Ok(()) => Exit::Success,
        Err(Failure::Seal(e)) => {
            let _ = writeln!(err, "error: {e}");
            if let Some(h) = e.hint() {
                let _ = writeln!(err, "hint: {h}");
            }
            e.kind().into()
        }
        Err(Failure::Input(msg)) => {
            let _ = writeln!(err, "error: {msg}");
            Exit::Config
        }
    }
}

enum Failure {
    Seal(SealError),
    Input(String),
}

impl From<SealError> for Failure {
    fn from(e: SealError) -> Self {
        Failure::Seal(e)
    }
}

fn execute(command: &TpmCommand, out: &mut dyn Write, err: &mut dyn Write) -> Result<(), Failure> {
    match command {
        TpmCommand::Enroll { tpm } => {
            let settings = tpm.settings().map_err(Failure::Input)?;
            let mut t = open(&settings)?;
            let enrolled = seal::enroll_on(&mut t, &settings)?;
            let _ = writeln!(out, "{}", enrolled.recipient);
            let _ = writeln!(
                err,
                "{} NV index 0x{:08X}\nrecipient:     {}\nsalt key name: {}\npin both in the configuration (tpm.recipient, tpm.saltKeyName; Terraform: tpm_recipient, tpm_salt_key_name)\nencrypt the SOPS key with: age -a -r {} -o {} {}",
                if enrolled.created {
                    "enrolled: new seed in"
                } else {
                    "already enrolled: seed in"
                },
                settings.nv_index,
                enrolled.recipient,
                enrolled.salt_key_name,
                enrolled.recipient,
                seal::SEALED_FILE_HINT,
                seal::KEY_FILE_HINT,
            );
            Ok(())
        }
        TpmCommand::Recipient { tpm } => {
            let settings = tpm.settings().map_err(Failure::Input)?;
            let mut t = open(&settings)?;
            let id = seal::identity_on(&mut t, &settings)?;
            let _ = writeln!(out, "{}", id.recipient());
            Ok(())
        }
        TpmCommand::Check { sealed, tpm } => {
            let armor = std::fs::read_to_string(sealed).map_err(|e| {
                Failure::Input(format!("cannot read sealed file {}: {e}", sealed.display()))
            })?;
            let settings = tpm.settings().map_err(Failure::Input)?;
            let mut t = open(&settings)?;
            let id = seal::identity_on(&mut t, &settings)?;
            let input = SealedInput {
                label: sealed.display().to_string(),
                armor,
                expect_age_identity: true,
            };
            let secret = id.decrypt(&input)?;
            // Proof without disclosure: only the public recipients of the identities inside.
            let recipients =
                seal::age_identities(&secret.value).map_err(|detail| SealError::NotAnIdentity {
                    label: input.label.clone(),
                    detail,
                })?;
            for r in recipients {
                let _ = writeln!(out, "{r}");
            }
            Ok(())
        }
    }
}

fn open(settings: &TpmSettings) -> Result<crate::tpm::Tpm, Failure> {
    let transport = crate::tpm::transport::open(&settings.address)
        .map_err(|e| Failure::Seal(SealError::from(e)))?;
    Ok(crate::tpm::Tpm::new(transport))
}
