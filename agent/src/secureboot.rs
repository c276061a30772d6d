//! The firmware's SecureBoot state, read from the `SecureBoot` and `SetupMode` UEFI variables
//! (efivarfs). The seed is only created when SecureBoot is enabled and the firmware is not in
//! setup mode: otherwise PCR 7 proves nothing (anyone can boot anything, or enrol their own
//! keys), and a seed bound to it would be readable by whatever boots next.
//!
//! Talos makes the same check before it seals its own disk keys to the TPM
//! (siderolabs/talos v1.13.9 `internal/pkg/encryption/keys/tpm2.go:56-64`: `efi.GetSecureBoot()`
//! must be true and `efi.GetSetupMode()` false), reading the same variables through
//! foxboron/go-uefi (`efi/efi.go`, `GetSetupMode` and `GetSecureBoot`: the first data byte, after
//! efivarfs' 4 attribute bytes, equal to 1).

use std::path::{Path, PathBuf};

use crate::error::{Classify, ErrorKind};

/// EFI_GLOBAL_VARIABLE, the vendor GUID of `SecureBoot` and `SetupMode` (UEFI 2.10, 3.3).
pub const EFI_GLOBAL_VARIABLE: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
/// Where the kernel mounts efivarfs.
pub const KERNEL_EFIVARS: &str = "/sys/firmware/efi/efivars";
/// Where the extension mounts the two variables inside the service (`extension/
/// bootstrap-agent.yaml`): the container's `/sys/firmware` is masked, `/run` is a tmpfs.
pub const SERVICE_EFIVARS: &str = "/run/efivars";

/// The two variables, as efivarfs names them.
pub fn variable_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}-{EFI_GLOBAL_VARIABLE}"))
}

#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    #[error(
        "enrolment refused: SecureBoot is disabled ({path}: SecureBoot = 0), so PCR 7 does not prove what booted and anything booted on this machine could read the seed"
    )]
    Disabled { path: String },
    #[error(
        "enrolment refused: the firmware is in SecureBoot setup mode ({path}: SetupMode = 1), so anyone can enrol their own keys and PCR 7 proves nothing yet"
    )]
    SetupMode { path: String },
    #[error("enrolment refused: cannot read the SecureBoot state from {path}: {source}")]
    Unreadable {
        path: String,
        source: std::io::Error,
    },
    #[error("enrolment refused: {path} is not a UEFI variable as efivarfs presents it ({detail})")]
    Malformed { path: String, detail: String },
}

impl Classify for FirmwareError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Permanent
    }

    fn hint(&self) -> Option<String> {
        Some(match self {
            FirmwareError::Disabled { .. } => "enable SecureBoot with our keys enrolled and reboot; the agent enrols on the next boot".into(),
            FirmwareError::SetupMode { .. } => "enrol the platform key (our SecureBoot ISO does this on its first boot), then reboot; the agent enrols on the next boot".into(),
            FirmwareError::Unreadable { .. } | FirmwareError::Malformed { .. } => format!(
                "on Talos the extension mounts SecureBoot-{EFI_GLOBAL_VARIABLE} and SetupMode-{EFI_GLOBAL_VARIABLE} read-only at {SERVICE_EFIVARS} (tpm.efivars); elsewhere point tpm.efivars or --efivars at {KERNEL_EFIVARS}"
            ),
        })
    }
}

/// Reads a one-byte UEFI variable: efivarfs gives 4 attribute bytes, then the data.
fn flag(dir: &Path, name: &str) -> Result<(bool, String), FirmwareError> {
    let path = variable_file(dir, name);
    let shown = path.display().to_string();
    let bytes = std::fs::read(&path).map_err(|source| FirmwareError::Unreadable {
        path: shown.clone(),
        source,
    })?;
    match bytes.get(4..) {
        Some([value]) if *value <= 1 => Ok((*value == 1, shown)),
        Some([value]) => Err(FirmwareError::Malformed {
            path: shown,
            detail: format!("value {value}, expected 0 or 1"),
        }),
        _ => Err(FirmwareError::Malformed {
            path: shown,
            detail: format!(
                "{} bytes, expected 4 attribute bytes and 1 data byte",
                bytes.len()
            ),
        }),
    }
}

/// Ok when SecureBoot is enabled and the firmware is in user mode (not setup mode).
pub fn check_enrolment_allowed(dir: &Path) -> Result<(), FirmwareError> {
    let (enabled, path) = flag(dir, "SecureBoot")?;
    if !enabled {
        return Err(FirmwareError::Disabled { path });
    }
    let (setup, path) = flag(dir, "SetupMode")?;
    if setup {
        return Err(FirmwareError::SetupMode { path });
    }
    Ok(())
}

/// Writes the two variables as efivarfs presents them (attributes NV|BS|RT), for tests and
/// rehearsals that have no firmware.
pub fn write_fake(dir: &Path, secure_boot: bool, setup_mode: bool) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, value) in [("SecureBoot", secure_boot), ("SetupMode", setup_mode)] {
        let mut bytes = 0x0000_0006u32.to_le_bytes().to_vec();
        bytes.push(u8::from(value));
        std::fs::write(variable_file(dir, name), bytes)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_secureboot_on_in_user_mode_allows_enrolment() {
        let dir = tempfile::tempdir().unwrap();
        write_fake(dir.path(), true, false).unwrap();
        assert!(check_enrolment_allowed(dir.path()).is_ok());

        write_fake(dir.path(), false, false).unwrap();
        let e = check_enrolment_allowed(dir.path()).unwrap_err();
        assert!(matches!(e, FirmwareError::Disabled { .. }), "{e}");
        assert!(e.to_string().contains("SecureBoot = 0"), "{e}");

        write_fake(dir.path(), true, true).unwrap();
        let e = check_enrolment_allowed(dir.path()).unwrap_err();
        assert!(matches!(e, FirmwareError::SetupMode { .. }), "{e}");
        assert!(e.hint().unwrap().contains("platform key"));
    }

    #[test]
    fn missing_or_odd_variables_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = check_enrolment_allowed(dir.path()).unwrap_err();
        assert!(matches!(e, FirmwareError::Unreadable { .. }), "{e}");
        assert!(e.to_string().contains(EFI_GLOBAL_VARIABLE), "{e}");
        assert!(e.hint().unwrap().contains(SERVICE_EFIVARS));

        std::fs::write(variable_file(dir.path(), "SecureBoot"), [6, 0, 0, 0]).unwrap();
        let e = check_enrolment_allowed(dir.path()).unwrap_err();
        assert!(e.to_string().contains("4 bytes"), "{e}");
        std::fs::write(variable_file(dir.path(), "SecureBoot"), [6, 0, 0, 0, 7]).unwrap();
        let e = check_enrolment_allowed(dir.path()).unwrap_err();
        assert!(e.to_string().contains("value 7"), "{e}");
    }
}
