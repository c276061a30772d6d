//! Decoding of TPM 2.0 response codes (TPM 2.0 Part 2, 6.6) into readable text.

use std::fmt;

/// A non-zero TPM response code.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ResponseCode(pub u32);

/// Where a format-1 error points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    Parameter(u8),
    Handle(u8),
    Session(u8),
    Unspecified,
}

pub const RC_INITIALIZE: u32 = 0x100;
pub const RC_FAILURE: u32 = 0x101;
pub const RC_LOCKOUT: u32 = 0x921;
pub const RC_NV_DEFINED: u32 = 0x14C;
/// A PCR changed between the policy check and the command it authorizes (Part 2, 6.6.3).
pub const RC_PCR_CHANGED: u32 = 0x128;
/// Format-1 error numbers the agent reacts to.
pub const FMT1_HANDLE: u32 = 0x0B;
pub const FMT1_POLICY_FAIL: u32 = 0x1D;
pub const FMT1_VALUE: u32 = 0x04;
pub const FMT1_AUTH_FAIL: u32 = 0x0E;
pub const FMT1_BAD_AUTH: u32 = 0x22;

impl ResponseCode {
    /// Format-1 codes (bit 7 set) carry an error number plus a parameter/handle/session number.
    pub fn is_format1(self) -> bool {
        self.0 & 0x80 != 0
    }

    /// Format-0 warnings (TPM_RC_WARN): the command may succeed if retried.
    pub fn is_warning(self) -> bool {
        !self.is_format1() && self.0 & 0x900 == 0x900
    }

    /// The error number with the subject stripped (format 1) or the full code (format 0).
    pub fn base(self) -> u32 {
        if self.is_format1() {
            self.0 & 0x3F
        } else {
            self.0 & 0xFFF
        }
    }

    pub fn subject(self) -> Subject {
        if !self.is_format1() {
            return Subject::Unspecified;
        }
        let n = ((self.0 >> 8) & 0xF) as u8;
        if self.0 & 0x40 != 0 {
            Subject::Parameter(n)
        } else if self.0 & 0x800 != 0 {
            Subject::Session(n & 0x7)
        } else if n == 0 {
            Subject::Unspecified
        } else {
            Subject::Handle(n & 0x7)
        }
    }

    /// Format-1 code with error number `n`, whatever it points at.
    pub fn is_fmt1(self, n: u32) -> bool {
        self.is_format1() && self.base() == n
    }

    /// The spec's name and meaning of the code.
    pub fn meaning(self) -> (&'static str, &'static str) {
        if self.0 & 0x100 == 0 && !self.is_format1() {
            return (
                "TPM 1.2 code",
                "the device answered with a TPM 1.2 response code",
            );
        }
        if !self.is_format1() && self.0 & 0x400 != 0 {
            return ("vendor", "vendor-specific response code");
        }
        if self.is_format1() {
            return match self.base() {
                0x01 => (
                    "TPM_RC_ASYMMETRIC",
                    "asymmetric algorithm not supported or not correct",
                ),
                0x02 => ("TPM_RC_ATTRIBUTES", "inconsistent attributes"),
                0x03 => (
                    "TPM_RC_HASH",
                    "hash algorithm not supported or not appropriate",
                ),
                0x04 => (
                    "TPM_RC_VALUE",
                    "value is out of range or is not correct for the context",
                ),
                0x05 => (
                    "TPM_RC_HIERARCHY",
                    "hierarchy is not enabled or is not correct for the use",
                ),
                0x07 => ("TPM_RC_KEY_SIZE", "key size is not supported"),
                0x08 => ("TPM_RC_MGF", "mask generation function not supported"),
                0x09 => ("TPM_RC_MODE", "mode of operation not supported"),
                0x0A => (
                    "TPM_RC_TYPE",
                    "the type of the value is not appropriate for the use",
                ),
                0x0B => (
                    "TPM_RC_HANDLE",
                    "the handle is not correct for the use (for an NV index: not defined)",
                ),
                0x0C => ("TPM_RC_KDF", "unsupported key derivation function"),
                0x0D => ("TPM_RC_RANGE", "value was out of allowed range"),
                0x0E => (
                    "TPM_RC_AUTH_FAIL",
                    "the authorization HMAC check failed and the DA counter incremented",
                ),
                0x0F => ("TPM_RC_NONCE", "invalid nonce size or nonce value mismatch"),
                0x10 => (
                    "TPM_RC_PP",
                    "authorization requires assertion of physical presence",
                ),
                0x12 => ("TPM_RC_SCHEME", "unsupported or incompatible scheme"),
                0x15 => ("TPM_RC_SIZE", "structure is the wrong size"),
                0x16 => (
                    "TPM_RC_SYMMETRIC",
                    "unsupported symmetric algorithm or key size",
                ),
                0x17 => ("TPM_RC_TAG", "incorrect structure tag"),
                0x18 => ("TPM_RC_SELECTOR", "union selector is incorrect"),
                0x1A => (
                    "TPM_RC_INSUFFICIENT",
                    "the TPM was unable to unmarshal a value because there were not enough octets",
                ),
                0x1B => ("TPM_RC_SIGNATURE", "the signature is not valid"),
                0x1C => (
                    "TPM_RC_KEY",
                    "key fields are not compatible with the selected use",
                ),
                0x1D => (
                    "TPM_RC_POLICY_FAIL",
                    "a policy check failed (the PCR values differ from the policy)",
                ),
                0x1F => ("TPM_RC_INTEGRITY", "integrity check failed"),
                0x20 => ("TPM_RC_TICKET", "invalid ticket"),
                0x21 => (
                    "TPM_RC_RESERVED_BITS",
                    "reserved bits not set to zero as required",
                ),
                0x22 => (
                    "TPM_RC_BAD_AUTH",
                    "authorization failure without DA implications",
                ),
                0x23 => ("TPM_RC_EXPIRED", "the policy has expired"),
                0x24 => (
                    "TPM_RC_POLICY_CC",
                    "the command code in the policy is not the command code of the command",
                ),
                0x25 => (
                    "TPM_RC_BINDING",
                    "public and sensitive portions of an object are not cryptographically bound",
                ),
                0x26 => ("TPM_RC_CURVE", "curve not supported"),
                0x27 => ("TPM_RC_ECC_POINT", "point is not on the required curve"),
                _ => ("unknown format-1 code", "not a code this agent knows"),
            };
        }
        match self.0 & 0xFFF {
            0x100 => (
                "TPM_RC_INITIALIZE",
                "TPM not initialized by TPM2_Startup or already initialized",
            ),
            0x101 => (
                "TPM_RC_FAILURE",
                "the TPM is in failure mode; it needs a reset (power cycle) and may be faulty",
            ),
            0x103 => ("TPM_RC_SEQUENCE", "improper use of a sequence handle"),
            0x10B => ("TPM_RC_PRIVATE", "not currently used"),
            0x119 => ("TPM_RC_HMAC", "not currently used"),
            0x120 => ("TPM_RC_DISABLED", "the command is disabled"),
            0x121 => (
                "TPM_RC_EXCLUSIVE",
                "command failed because audit sequence required exclusivity",
            ),
            0x124 => (
                "TPM_RC_AUTH_TYPE",
                "authorization handle is not correct for the command",
            ),
            0x125 => (
                "TPM_RC_AUTH_MISSING",
                "the command requires an authorization session for a handle and it is not present",
            ),
            0x126 => (
                "TPM_RC_POLICY",
                "policy failure in math operation or an invalid authPolicy value",
            ),
            0x127 => ("TPM_RC_PCR", "PCR check fail"),
            0x128 => ("TPM_RC_PCR_CHANGED", "PCR have changed since checked"),
            0x12D => ("TPM_RC_UPGRADE", "the TPM is in field upgrade mode"),
            0x12E => (
                "TPM_RC_TOO_MANY_CONTEXTS",
                "context ID counter is at maximum",
            ),
            0x12F => (
                "TPM_RC_AUTH_UNAVAILABLE",
                "authValue or authPolicy is not available for the selected entity",
            ),
            0x130 => (
                "TPM_RC_REBOOT",
                "a _TPM_Init and Startup(CLEAR) is required before the TPM can resume operation",
            ),
            0x131 => (
                "TPM_RC_UNBALANCED",
                "the protection algorithms (hash and symmetric) are not reasonably balanced",
            ),
            0x142 => (
                "TPM_RC_COMMAND_SIZE",
                "command size value is inconsistent with the contents of the command buffer",
            ),
            0x143 => ("TPM_RC_COMMAND_CODE", "command code not supported"),
            0x144 => (
                "TPM_RC_AUTHSIZE",
                "the value of authorizationSize is out of range",
            ),
            0x145 => (
                "TPM_RC_AUTH_CONTEXT",
                "use of an authorization session with a context command or another command that cannot have one",
            ),
            0x146 => ("TPM_RC_NV_RANGE", "NV offset+size is out of range"),
            0x147 => (
                "TPM_RC_NV_SIZE",
                "requested allocation size is larger than allowed",
            ),
            0x148 => ("TPM_RC_NV_LOCKED", "NV access locked"),
            0x149 => (
                "TPM_RC_NV_AUTHORIZATION",
                "NV access authorization fails in command actions",
            ),
            0x14A => (
                "TPM_RC_NV_UNINITIALIZED",
                "an NV index is used before being initialized (written)",
            ),
            0x14B => ("TPM_RC_NV_SPACE", "insufficient space for NV allocation"),
            0x14C => (
                "TPM_RC_NV_DEFINED",
                "NV index or persistent object already defined",
            ),
            0x150 => (
                "TPM_RC_BAD_CONTEXT",
                "context in TPM2_ContextLoad() is not valid",
            ),
            0x151 => (
                "TPM_RC_CPHASH",
                "cpHash value already set or not correct for use",
            ),
            0x152 => ("TPM_RC_PARENT", "handle for parent is not a valid parent"),
            0x153 => ("TPM_RC_NEEDS_TEST", "some function needs testing"),
            0x154 => (
                "TPM_RC_NO_RESULT",
                "an internal function cannot process a request due to an unspecified problem",
            ),
            0x155 => (
                "TPM_RC_SENSITIVE",
                "the sensitive area did not unmarshal correctly after decryption",
            ),
            0x901 => ("TPM_RC_CONTEXT_GAP", "gap for context ID is too large"),
            0x902 => (
                "TPM_RC_OBJECT_MEMORY",
                "out of memory for object contexts (transient objects not flushed)",
            ),
            0x903 => (
                "TPM_RC_SESSION_MEMORY",
                "out of memory for session contexts",
            ),
            0x904 => (
                "TPM_RC_MEMORY",
                "out of shared object/session memory or need space for internal operations",
            ),
            0x905 => ("TPM_RC_SESSION_HANDLES", "out of session handles"),
            0x906 => ("TPM_RC_OBJECT_HANDLES", "out of object handles"),
            0x907 => ("TPM_RC_LOCALITY", "bad locality"),
            0x908 => (
                "TPM_RC_YIELDED",
                "the TPM has suspended operation on the command; retry",
            ),
            0x909 => ("TPM_RC_CANCELED", "the command was canceled"),
            0x90A => ("TPM_RC_TESTING", "the TPM is performing self-tests"),
            0x910..=0x916 => (
                "TPM_RC_REFERENCE_Hx",
                "a handle refers to a transient object that is not loaded",
            ),
            0x918..=0x91E => (
                "TPM_RC_REFERENCE_Sx",
                "a session handle refers to a session that is not loaded",
            ),
            0x920 => (
                "TPM_RC_NV_RATE",
                "the TPM is rate-limiting accesses to prevent wearout of NV",
            ),
            0x921 => (
                "TPM_RC_LOCKOUT",
                "authorizations for objects subject to DA protection are not allowed at this time because the TPM is in DA lockout mode",
            ),
            0x922 => (
                "TPM_RC_RETRY",
                "the TPM was not able to start the command; retry",
            ),
            0x923 => (
                "TPM_RC_NV_UNAVAILABLE",
                "the command may require writing of NV and NV is not currently accessible",
            ),
            _ => ("unknown format-0 code", "not a code this agent knows"),
        }
    }
}

impl fmt::Display for ResponseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, meaning) = self.meaning();
        write!(f, "{name} (0x{:03X}", self.0)?;
        match self.subject() {
            Subject::Parameter(n) => write!(f, ", parameter {n}")?,
            Subject::Handle(n) => write!(f, ", handle {n}")?,
            Subject::Session(n) => write!(f, ", session {n}")?,
            Subject::Unspecified => {}
        }
        write!(f, "): {meaning}")
    }
}

impl fmt::Debug for ResponseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_format1_subjects() {
        let nv_absent = ResponseCode(0x18B);
        assert_eq!(nv_absent.subject(), Subject::Handle(1));
        assert!(nv_absent.is_fmt1(FMT1_HANDLE));
        assert!(
            nv_absent
                .to_string()
                .starts_with("TPM_RC_HANDLE (0x18B, handle 1)")
        );
        let policy = ResponseCode(0x99D);
        assert_eq!(policy.subject(), Subject::Session(1));
        assert!(policy.to_string().contains("TPM_RC_POLICY_FAIL"));
        let value = ResponseCode(0x1C4);
        assert_eq!(value.subject(), Subject::Parameter(1));
        assert!(value.is_fmt1(FMT1_VALUE));
    }

    #[test]
    fn decodes_format0_and_warnings() {
        assert!(ResponseCode(RC_LOCKOUT).is_warning());
        assert!(ResponseCode(RC_LOCKOUT).to_string().contains("lockout"));
        assert!(!ResponseCode(RC_FAILURE).is_warning());
        assert!(
            ResponseCode(RC_FAILURE)
                .to_string()
                .contains("failure mode")
        );
        assert_eq!(ResponseCode(0x902).subject(), Subject::Unspecified);
    }
}
