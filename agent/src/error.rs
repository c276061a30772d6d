//! How failures are classified: one trait that every error type of the agent implements, so the
//! state machine (retry or stop), the status (`lastError.kind`, the hint) and the exit codes read
//! the same answer; and one helper that renders an error with its sources.

use serde::{Deserialize, Serialize};

/// What kind of failure: decides whether the state machine retries and which exit code a
/// command ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// Retrying may help.
    Transient,
    /// Retrying will not help; something must change.
    Permanent,
    /// The configuration (or what it references) is wrong.
    Config,
}

/// Every error type of the agent says what kind of failure it is and, where it can, what the
/// operator should do about it (the hint is kept apart from the message, so the status and the
/// commands show it on its own line).
pub trait Classify: std::error::Error {
    /// Transient, permanent or a configuration error.
    fn kind(&self) -> ErrorKind;

    /// What an operator can do, beyond the message.
    fn hint(&self) -> Option<String> {
        None
    }

    /// Whether retrying later (in the same boot) may succeed.
    fn is_transient(&self) -> bool {
        self.kind() == ErrorKind::Transient
    }
}

/// A value that is not what it stands for: what is wrong and what to write instead. The types
/// that model the agent's inputs (a TPM address, a PCR policy, a Kubernetes name, a Git source)
/// return it from their parsers; the configuration adds the field and the line, the command
/// line the option.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (fix: {fix})")]
pub struct Invalid {
    /// What is wrong, naming the value.
    pub message: String,
    /// What to do about it.
    pub fix: String,
}

impl Invalid {
    pub fn new(message: impl Into<String>, fix: impl Into<String>) -> Invalid {
        Invalid {
            message: message.into(),
            fix: fix.into(),
        }
    }
}

/// Transient or permanent, from a yes/no answer.
pub fn transient_if(transient: bool) -> ErrorKind {
    if transient {
        ErrorKind::Transient
    } else {
        ErrorKind::Permanent
    }
}

/// Renders an error and its whole `source()` chain on one line; a source whose text the line
/// already holds (an error that prints its source itself) is not repeated.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {}", chain(.0))]
    struct Prints(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Hides(#[source] std::io::Error);

    #[test]
    fn chain_names_every_source_once() {
        let io = || std::io::Error::other("inner");
        assert_eq!(chain(&Prints(io())), "outer: inner");
        assert_eq!(chain(&Hides(io())), "outer: inner");
    }
}
