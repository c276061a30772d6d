//! Process exit codes: the one definition of a contract with Talos (`restart: untilSuccess`),
//! scripts and tests. `--help` prints the table below from [`Exit::ALL`].

use std::process::ExitCode;

use crate::error::ErrorKind;

/// How a command ended, as its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Everything the command had to do is done (for `run`: or waiting for the operator).
    Success = 0,
    /// A transient failure: a retry may succeed.
    Transient = 1,
    /// The configuration, or something it references, is wrong.
    Config = 2,
    /// A permanent failure that retrying will not fix (wrong TPM state, terminal Flux failure).
    Permanent = 3,
}

impl Exit {
    /// Every exit code, in order.
    pub const ALL: [Exit; 4] = [
        Exit::Success,
        Exit::Transient,
        Exit::Config,
        Exit::Permanent,
    ];

    /// The numeric code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// What the code means, as `--help` says it.
    pub fn meaning(self) -> &'static str {
        match self {
            Exit::Success => "success (or waiting for the operator to seal inputs to this TPM)",
            Exit::Transient => {
                "transient failure: retrying may succeed (Talos restarts the service)"
            }
            Exit::Config => "configuration error: fix the configuration",
            Exit::Permanent => {
                "permanent failure: something must change first (see the status and its hint)"
            }
        }
    }

    /// The `Exit codes:` section of `--help`.
    pub fn help() -> String {
        let mut text = String::from("Exit codes:");
        for exit in Exit::ALL {
            text.push_str(&format!("\n  {}  {}", exit.code(), exit.meaning()));
        }
        text.push_str(
            "\n`run` exits 2 or 3 only with --once: otherwise it records the failure in its status \
             and waits for the configuration to change (a restart would fail the same way).",
        );
        text
    }
}

impl From<ErrorKind> for Exit {
    fn from(kind: ErrorKind) -> Exit {
        match kind {
            ErrorKind::Transient => Exit::Transient,
            ErrorKind::Config => Exit::Config,
            ErrorKind::Permanent => Exit::Permanent,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_documented_numbers() {
        let codes: Vec<u8> = Exit::ALL.iter().map(|e| e.code()).collect();
        assert_eq!(codes, [0, 1, 2, 3]);
        assert!(Exit::help().contains("\n  2  configuration error"));
    }
}
