//! Errors of the TPM client: transport, framing, TPM response codes, session integrity.

use super::rc::{self, ResponseCode};
use crate::error::{Classify, ErrorKind, transient_if};

#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    #[error(
        "cannot open the TPM at {address}: {source} (is a TPM 2.0 present and enabled in the firmware/VM settings?)"
    )]
    NoDevice {
        address: String,
        source: std::io::Error,
    },
    #[error("I/O error talking to the TPM at {address} while {op}: {source}")]
    Io {
        address: String,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("TPM response too short: {got} bytes read, header says {expected}")]
    ShortResponse { got: usize, expected: usize },
    #[error("TPM response has tag 0x{0:04X}, expected 0x8001 or 0x8002")]
    BadTag(u16),
    #[error("TPM response size field says {header} bytes but {got} were read")]
    SizeMismatch { header: u32, got: usize },
    #[error("malformed TPM {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("TPM answered {0}")]
    Tpm(ResponseCode),
    #[error("TPM2_{command} failed: {rc}")]
    Rejected {
        command: &'static str,
        rc: ResponseCode,
    },
    #[error(
        "the response HMAC of TPM2_{command} does not verify: the response was altered between the TPM and the agent (bus tampering or a faulty TPM)"
    )]
    ResponseHmac { command: &'static str },
    #[error(
        "the TPM's salt key has name {got}, expected {expected}: another key was substituted (bus interposer?) or this is a different TPM"
    )]
    SaltKeyMismatch { expected: String, got: String },
    #[error("TPM returned a {what} that does not match what was asked for: {detail}")]
    Unexpected { what: &'static str, detail: String },
}

impl TpmError {
    /// The TPM response code, when the TPM itself refused a command.
    pub fn response_code(&self) -> Option<ResponseCode> {
        match self {
            TpmError::Tpm(rc) | TpmError::Rejected { rc, .. } => Some(*rc),
            _ => None,
        }
    }
}

impl Classify for TpmError {
    /// Transient when retrying later (same boot) may succeed.
    fn kind(&self) -> ErrorKind {
        match self {
            TpmError::NoDevice { .. } | TpmError::Io { .. } | TpmError::ShortResponse { .. } => {
                ErrorKind::Transient
            }
            // Warnings (including DA lockout, which expires) may clear with time.
            TpmError::Tpm(rc) | TpmError::Rejected { rc, .. } => transient_if(rc.is_warning()),
            _ => ErrorKind::Permanent,
        }
    }

    /// What an operator can do about it.
    fn hint(&self) -> Option<String> {
        match self {
            TpmError::NoDevice { .. } => Some(
                "check that the machine has a TPM 2.0 (on Proxmox: add a TPM state volume, version v2.0) and that /dev/tpmrm0 exists".into(),
            ),
            TpmError::ResponseHmac { .. } | TpmError::SaltKeyMismatch { .. } => Some(
                "do not trust this machine's TPM bus; investigate before re-enrolling".into(),
            ),
            _ => match self.response_code().map(|rc| rc.0) {
                Some(rc::RC_LOCKOUT) => Some(
                    "the TPM is in dictionary-attack lockout; wait for the lockout to expire or reset it with `tpm2_dictionarylockout -c` using the lockout authorization".into(),
                ),
                Some(rc::RC_FAILURE) => Some(
                    "the TPM is in failure mode; power-cycle the machine (on Proxmox: stop and start the VM); if it persists, the TPM (state) is faulty".into(),
                ),
                Some(0x902) | Some(0x903) | Some(0x905) | Some(0x906) => Some(
                    "the TPM is out of object/session slots; another program may be leaking handles (use /dev/tpmrm0, not /dev/tpm0)".into(),
                ),
                _ => None,
            },
        }
    }
}
