//! TPM seed + the configuration's key factor → age identity; unsealing the configuration's
//! sealed inputs and locking the seed, in one call.
//!
//! The seed in the TPM's NV index and a 32-byte factor that only the configuration holds are
//! turned into an X25519 age identity with HKDF-SHA256 and a versioned label: neither the TPM
//! alone (our signed image booted with someone else's configuration reads the seed) nor the
//! configuration alone (a leaked machine configuration) yields it. Its recipient (`age1...`) is
//! public: operators encrypt bootstrap secrets to it with the standard `age` CLI, and the
//! configuration pins it (`tpm.recipient`), so that a seed planted in the TPM is refused rather
//! than used.
//!
//! [`unseal`] reads the seed (or enrols, when nothing sealed is configured and nothing is
//! pinned yet), checks the recipient, decrypts every input, and extends the lock PCR before it
//! returns, whatever happened: nothing can read the seed again until the next boot.

use std::fmt;
use std::io::Read;
use std::path::PathBuf;
use std::str::FromStr;

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Classify, ErrorKind, Invalid};
use crate::secureboot;
use crate::tpm::seed::{self, Enrolment, SEED_LEN, SeedError, SeedLocation};
use crate::tpm::transport::{self, Address};
use crate::tpm::{Tpm, TpmError};

/// Default NV index of the seed: in the TCG owner range (0x01000000..0x013FFFFF), "5EED".
pub const DEFAULT_NV_INDEX: u32 = 0x0130_5EED;
/// Default policy PCRs: 7, the SecureBoot state.
pub const DEFAULT_PCRS: [u32; 1] = [7];
/// Default lock PCR: 15, unused by Talos and the firmware; zero at every boot.
pub const DEFAULT_LOCK_PCR: u32 = 15;
/// HKDF salt and info: changing either changes every recipient (hence the version). v2 mixes
/// the configuration's key factor into the input keying material.
const HKDF_SALT: &[u8] = b"bootstrap-agent";
const HKDF_INFO: &[u8] = b"bootstrap-agent/age-x25519-identity/v2";
/// File names used in the operator's `age` command.
pub const SEALED_FILE_HINT: &str = "sops-age.tpm.age";
pub const KEY_FILE_HINT: &str = ".age-key.txt";
/// Length of the key factor, in bytes.
pub const FACTOR_LEN: usize = 32;

/// The configuration's half of the identity: 32 random bytes (Terraform's `random_bytes`),
/// written as 64 hex digits. Zeroised on drop; never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyFactor(Zeroizing<[u8; FACTOR_LEN]>);

impl fmt::Debug for KeyFactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyFactor(<redacted>)")
    }
}

impl FromStr for KeyFactor {
    type Err = Invalid;

    /// 64 hex digits. The error never repeats the value.
    fn from_str(text: &str) -> Result<KeyFactor, Invalid> {
        let text = text.trim();
        let mut bytes = Zeroizing::new([0u8; FACTOR_LEN]);
        if text.len() != 2 * FACTOR_LEN || hex::decode_to_slice(text, &mut bytes[..]).is_err() {
            return Err(Invalid::new(
                format!(
                    "is not {FACTOR_LEN} bytes in hex ({} characters given, {} expected; content not shown)",
                    text.len(),
                    2 * FACTOR_LEN
                ),
                "use Terraform's random_bytes (length 32) `.hex`, or `openssl rand -hex 32`",
            ));
        }
        Ok(KeyFactor(bytes))
    }
}

impl KeyFactor {
    /// Reads a factor from a file holding its hex (the `tpm` subcommand's `--factor-file`).
    pub fn from_file(path: &std::path::Path) -> Result<KeyFactor, Invalid> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            Invalid::new(
                format!("cannot read {}: {e}", path.display()),
                "give the file holding the key factor (64 hex digits)",
            )
        })?);
        text.parse()
            .map_err(|e: Invalid| Invalid::new(format!("{}: {}", path.display(), e.message), e.fix))
    }

    fn bytes(&self) -> &[u8; FACTOR_LEN] {
        &self.0
    }
}

/// Checks an age recipient as pinned in `tpm.recipient`; returns it as written.
pub fn parse_recipient(text: &str) -> Result<String, Invalid> {
    let text = text.trim();
    age::x25519::Recipient::from_str(text)
        .map(|_| text.to_string())
        .map_err(|_| {
            Invalid::new(
                format!("`{text}` is not an age X25519 recipient (age1…)"),
                "copy the recipient `bootstrap-agent status` shows while waiting (or `tpm enroll` prints)",
            )
        })
}

/// Where the TPM is and how the seed is guarded: the one shape of the TPM settings, which the
/// configuration's `tpm` section and the `tpm` subcommand's options both produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmSettings {
    pub address: Address,
    pub policy: PcrPolicy,
    /// NV index of the seed; default [`DEFAULT_NV_INDEX`] (see [`nv_index`]).
    pub nv_index: u32,
    /// Pinned name of the salt key (hex of nameAlg || SHA-256 of its public area), as printed by
    /// `tpm enroll` (see [`salt_key_name`]). When set, a different key is refused (bus
    /// interposer). Required for `tcp://` and `unix://` unless `insecure_transport`.
    pub salt_key_name: Option<String>,
    /// Accept a `tcp://` or `unix://` TPM without a pinned salt key (simulators in tests).
    pub insecure_transport: bool,
    /// The recipient the sealed inputs were made for. When set, a TPM that yields another one
    /// is refused, and the agent never enrols.
    pub recipient: Option<String>,
    /// The configuration's half of the identity.
    pub factor: Option<KeyFactor>,
    /// The directory holding the `SecureBoot` and `SetupMode` UEFI variables.
    pub efivars: PathBuf,
}

impl Default for TpmSettings {
    fn default() -> Self {
        Self {
            address: Address::default(),
            policy: PcrPolicy::default(),
            nv_index: DEFAULT_NV_INDEX,
            salt_key_name: None,
            insecure_transport: false,
            recipient: None,
            factor: None,
            efivars: PathBuf::from(secureboot::SERVICE_EFIVARS),
        }
    }
}

impl TpmSettings {
    /// Settings for a TPM address with every other value at its default.
    pub fn at(address: &str) -> Result<Self, Invalid> {
        Ok(Self {
            address: address.parse()?,
            ..Self::default()
        })
    }

    /// Why the transport may not be used as configured: a simulator socket is a bus anyone on
    /// the path can sit on, and only a pinned salt key keeps an interposer out of the session.
    pub fn transport_problem(&self) -> Option<Invalid> {
        let simulator = matches!(self.address, Address::Tcp(_) | Address::Unix(_));
        (simulator && self.salt_key_name.is_none() && !self.insecure_transport).then(|| {
            Invalid::new(
                format!(
                    "{} is a socket, and no salt key name is pinned: an interposer could substitute its own key",
                    self.address
                ),
                "pin tpm.saltKeyName as `tpm enroll` prints it, or set tpm.insecureTransport: true for a simulator in tests",
            )
        })
    }

    fn location(&self) -> Result<SeedLocation, SealError> {
        let salt_key_name = match &self.salt_key_name {
            None => None,
            Some(h) => Some(hex::decode(h.trim()).map_err(|_| {
                SealError::Seed(SeedError::Settings(format!(
                    "the pinned salt key name {h:?} is not hex"
                )))
            })?),
        };
        Ok(SeedLocation {
            nv_index: self.nv_index,
            pcrs: self.policy.pcrs.clone(),
            lock_pcr: self.policy.lock_pcr,
            salt_key_name,
        })
    }

    fn factor(&self) -> Result<&KeyFactor, SealError> {
        self.factor.as_ref().ok_or_else(|| {
            SealError::Seed(SeedError::Settings(
                "no key factor (tpm.factor, or --factor-file): the identity needs both the TPM's seed and the configuration's factor".into(),
            ))
        })
    }

    fn open(&self) -> Result<Tpm, SealError> {
        if let Some(problem) = self.transport_problem() {
            return Err(SealError::Seed(SeedError::Settings(problem.to_string())));
        }
        Ok(Tpm::new(
            transport::open(&self.address).map_err(SeedError::from)?,
        ))
    }
}

/// The PCRs the seed's policy binds to (SHA-256 bank) and the lock PCR extended once it is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrPolicy {
    pcrs: Vec<u32>,
    lock_pcr: u32,
}

/// Which half of a [`PcrPolicy`] a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PcrField {
    /// The policy PCRs.
    Pcrs,
    /// The lock PCR.
    LockPcr,
}

impl Default for PcrPolicy {
    fn default() -> Self {
        PcrPolicy {
            pcrs: DEFAULT_PCRS.to_vec(),
            lock_pcr: DEFAULT_LOCK_PCR,
        }
    }
}

impl PcrPolicy {
    /// A policy over `pcrs` locked by `lock_pcr`, or every problem with it. Talos extends PCR 11
    /// at every boot phase; PCRs 16 and 23 can be reset by any process, which would undo the
    /// lock.
    pub fn new(pcrs: Vec<u32>, lock_pcr: u32) -> Result<PcrPolicy, Vec<(PcrField, Invalid)>> {
        let mut problems = Vec::new();
        let mut pcr = |message: String, fix: &str| {
            problems.push((PcrField::Pcrs, Invalid::new(message, fix)));
        };
        if pcrs.is_empty() {
            pcr(
                "is empty: the seed would be readable by any OS booted on this machine".into(),
                "use [7] (SecureBoot state)",
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for &p in &pcrs {
            if p > 23 {
                pcr(
                    format!("{p} is not a PCR index"),
                    "PCRs are 0 to 23; use [7]",
                );
            } else if !seen.insert(p) {
                pcr(format!("PCR {p} is listed twice"), "list each PCR once");
            } else if p == 11 {
                pcr(
                    "PCR 11 changes at every boot phase on Talos".into(),
                    "leave 11 out; use [7]",
                );
            }
        }
        let lock = |message: String| Invalid::new(message, "use 15 (unused by Talos)");
        let lock_problem = if lock_pcr > 23 {
            Some(lock(format!("{lock_pcr} is not a PCR index")))
        } else if lock_pcr == 16 || lock_pcr == 23 {
            Some(lock(format!(
                "PCR {lock_pcr} can be reset by any process, which would undo the lock"
            )))
        } else if lock_pcr == 11 {
            Some(lock(
                "PCR 11 is extended by Talos at every boot phase".into(),
            ))
        } else if pcrs.contains(&lock_pcr) {
            Some(Invalid::new(
                format!("the lock PCR {lock_pcr} is also listed as a policy PCR"),
                "the lock PCR must be a separate PCR; use 15",
            ))
        } else {
            None
        };
        problems.extend(lock_problem.map(|i| (PcrField::LockPcr, i)));
        if problems.is_empty() {
            Ok(PcrPolicy { pcrs, lock_pcr })
        } else {
            Err(problems)
        }
    }

    /// The policy PCRs.
    pub fn pcrs(&self) -> &[u32] {
        &self.pcrs
    }

    /// The PCR extended once the seed is read.
    pub fn lock_pcr(&self) -> u32 {
        self.lock_pcr
    }
}

/// Checks an NV index handle for the seed (0x01000000 to 0x01FFFFFF).
pub fn nv_index(value: u64) -> Result<u32, Invalid> {
    u32::try_from(value)
        .ok()
        .filter(|i| (0x0100_0000..=0x01FF_FFFF).contains(i))
        .ok_or_else(|| {
            Invalid::new(
                format!("0x{value:X} is not an NV index (0x01000000 to 0x01FFFFFF)"),
                "leave it out to use the agent's default",
            )
        })
}

/// Checks a salt key name as `tpm enroll` prints it; returns it in lower case.
pub fn salt_key_name(text: &str) -> Result<String, Invalid> {
    let hex = text.trim().to_ascii_lowercase();
    // nameAlg (2 bytes) followed by a SHA-256 digest.
    if hex.len() == 68 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex)
    } else {
        Err(Invalid::new(
            "is not a TPM object name (68 hex digits: 000b followed by a SHA-256 digest)",
            "copy the name `bootstrap-agent tpm enroll` prints, or leave it out",
        ))
    }
}

/// One sealed input from the configuration: an armored age file encrypted to the recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedInput {
    /// What it is, for messages (e.g. "flux-system/sops-age").
    pub label: String,
    /// ASCII-armored age ciphertext.
    pub armor: String,
    /// The plaintext must be an age X25519 identity file (the SOPS key).
    pub expect_age_identity: bool,
}

/// A decrypted input. Zeroised on drop; Debug redacts the value.
pub struct UnsealedSecret {
    pub label: String,
    pub value: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for UnsealedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "UnsealedSecret {{ label: {:?}, value: <{} bytes redacted> }}",
            self.label,
            self.value.len()
        )
    }
}

/// What [`unseal`] found: the recipient, the salt key's name (both public, to pin), and the
/// decrypted inputs. The seed is locked by the time this exists.
#[derive(Debug)]
pub struct Unsealed {
    /// This TPM's recipient (the pinned one, when pinned: they were compared).
    pub recipient: String,
    /// The salt key's name, as `tpm.saltKeyName` pins it.
    pub salt_key_name: String,
    /// The seed was created by this call (first boot).
    pub enrolled: bool,
    /// The decrypted inputs, in the order given; zeroised on drop.
    pub secrets: Vec<UnsealedSecret>,
}

impl Unsealed {
    /// The exact operator command: `age -a -r age1... -o sops-age.tpm.age .age-key.txt`.
    pub fn command(&self) -> String {
        await_command(&self.recipient)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(transparent)]
    Seed(#[from] SeedError),
    #[error(
        "the TPM seed is missing or changed (TPM cleared, or tampered with): NV index 0x{index:08X} holds no seed, and {why}; the agent does not enrol again on its own"
    )]
    SeedMissing { index: u32, why: &'static str },
    #[error(
        "the TPM seed is missing or changed (TPM cleared, or tampered with): the identity this TPM yields is not the pinned recipient {pinned} (tpm.recipient); nothing was decrypted. If tpm.factor changed, that is the cause instead"
    )]
    SeedChanged { pinned: String },
    #[error(
        "sealed input {label}: it is not encrypted to this TPM's recipient {recipient} (wrong recipient, another TPM, or a re-enrolled one); encrypt it again with `age -a -r {recipient}`"
    )]
    WrongRecipient { label: String, recipient: String },
    #[error("sealed input {label} is corrupted: {detail}; encrypt it again")]
    Corrupted { label: String, detail: String },
    #[error(
        "sealed input {label} is truncated: {detail}; copy the whole file (from -----BEGIN AGE ENCRYPTED FILE----- to -----END AGE ENCRYPTED FILE-----)"
    )]
    Truncated { label: String, detail: String },
    #[error(
        "sealed input {label} decrypts, but {detail}; it must be an age identity file as written by `age-keygen` (content not shown)"
    )]
    NotAnIdentity { label: String, detail: String },
}

/// What an operator does when the seed is gone or not the pinned one: find out why before
/// anything else. Re-sealing to whatever the TPM now yields would hand the key to whoever
/// planted it.
const SEED_CHANGED_HINT: &str = "do not encrypt anything to a new recipient until you know why: if nobody cleared this TPM or recreated the VM, treat the node as tampered with. A deliberate re-enrolment is described in README (Re-enrolling the TPM)";

impl Classify for SealError {
    fn kind(&self) -> ErrorKind {
        match self {
            SealError::Seed(e) => e.kind(),
            _ => ErrorKind::Permanent,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            SealError::Seed(e) => e.hint(),
            SealError::SeedMissing { .. } | SealError::SeedChanged { .. } => {
                Some(SEED_CHANGED_HINT.into())
            }
            _ => None,
        }
    }
}

impl From<TpmError> for SealError {
    fn from(e: TpmError) -> Self {
        SealError::Seed(SeedError::Tpm(e))
    }
}

impl From<secureboot::FirmwareError> for SealError {
    fn from(e: secureboot::FirmwareError) -> Self {
        SealError::Seed(SeedError::Firmware(e))
    }
}

/// The age identity bound to this TPM and this configuration. Zeroised on drop.
pub struct TpmIdentity {
    identity: age::x25519::Identity,
}

impl fmt::Debug for TpmIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TpmIdentity({})", self.recipient())
    }
}

impl TpmIdentity {
    /// HKDF-SHA256(seed || factor) → 32-byte X25519 secret → `AGE-SECRET-KEY-1...` → age
    /// identity.
    ///
    /// Zeroised here: the input keying material, the derived secret and its bech32 encodings.
    /// Not zeroised: the HMAC-SHA256 state inside `hkdf` 0.12 / `hmac` 0.12 / `sha2` 0.10 (the
    /// HKDF pseudorandom key among it), which these crates keep in plain structs without
    /// `Zeroize` support; they live on this function's stack only.
    pub fn derive(seed: &[u8; SEED_LEN], factor: &KeyFactor) -> Self {
        let mut ikm = Zeroizing::new([0u8; SEED_LEN + FACTOR_LEN]);
        ikm[..SEED_LEN].copy_from_slice(seed);
        ikm[SEED_LEN..].copy_from_slice(factor.bytes());
        let hk = Hkdf::<Sha256>::new(Some(HKDF_SALT), &ikm[..]);
        let mut secret = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's output limit (255 * 32).
        if hk.expand(HKDF_INFO, &mut secret[..]).is_err() {
            unreachable!("HKDF output length is valid");
        }
        let encoded = bech32::encode_upper("age-secret-key-", &secret[..]);
        let identity = match age::x25519::Identity::from_str(&encoded) {
            Ok(i) => i,
            Err(_) => unreachable!("a well-formed bech32 identity always parses"),
        };
        Self { identity }
    }

    pub fn recipient(&self) -> String {
        self.identity.to_public().to_string()
    }

    /// Decrypts one armored age input, checking it is an identity when asked.
    pub fn decrypt(&self, input: &SealedInput) -> Result<UnsealedSecret, SealError> {
        let label = input.label.clone();
        check_armor(&label, &input.armor)?;
        let reader = age::armor::ArmoredReader::new(input.armor.as_bytes());
        let decryptor = age::Decryptor::new(reader).map_err(|e| self.classify(&label, e))?;
        let mut stream = decryptor
            .decrypt(std::iter::once(&self.identity as &dyn age::Identity))
            .map_err(|e| self.classify(&label, e))?;
        // The plaintext is shorter than its armor: no reallocation leaves a copy behind.
        let mut value = Zeroizing::new(Vec::with_capacity(input.armor.len() + 64));
        stream
            .read_to_end(&mut value)
            .map_err(|e| self.classify(&label, age::DecryptError::Io(e)))?;
        if input.expect_age_identity {
            age_identities(&value).map_err(|detail| SealError::NotAnIdentity {
                label: label.clone(),
                detail,
            })?;
        }
        Ok(UnsealedSecret { label, value })
    }

    fn classify(&self, label: &str, e: age::DecryptError) -> SealError {
        let label = label.to_string();
        match e {
            age::DecryptError::NoMatchingKeys => SealError::WrongRecipient {
                label,
                recipient: self.recipient(),
            },
            age::DecryptError::Io(io) => {
                let detail = io.to_string();
                if io.kind() == std::io::ErrorKind::UnexpectedEof
                    || detail.contains("truncated")
                    || detail.contains("end marker")
                    || detail.contains("Missing")
                {
                    SealError::Truncated { label, detail }
                } else {
                    SealError::Corrupted { label, detail }
                }
            }
            age::DecryptError::InvalidHeader => SealError::Corrupted {
                label,
                detail: "the age header is invalid".into(),
            },
            age::DecryptError::InvalidMac => SealError::Corrupted {
                label,
                detail: "the age header MAC does not verify".into(),
            },
            age::DecryptError::DecryptionFailed | age::DecryptError::KeyDecryptionFailed => {
                SealError::Corrupted {
                    label,
                    detail: "the payload does not decrypt (authentication failed)".into(),
                }
            }
            age::DecryptError::UnknownFormat => SealError::Corrupted {
                label,
                detail: "not an age v1 file".into(),
            },
            other => SealError::Corrupted {
                label,
                detail: other.to_string(),
            },
        }
    }
}

const ARMOR_BEGIN: &str = "-----BEGIN AGE ENCRYPTED FILE-----";
const ARMOR_END: &str = "-----END AGE ENCRYPTED FILE-----";

/// Tells a cut-short file (no end line) from a damaged one before age looks at it.
fn check_armor(label: &str, armor: &str) -> Result<(), SealError> {
    let text = armor.trim();
    if !text.starts_with(ARMOR_BEGIN) {
        return Err(SealError::Corrupted {
            label: label.to_string(),
            detail: format!(
                "it does not start with {ARMOR_BEGIN} (sealed inputs are ASCII-armored: `age -a`)"
            ),
        });
    }
    if !text.ends_with(ARMOR_END) {
        return Err(SealError::Truncated {
            label: label.to_string(),
            detail: format!("the closing {ARMOR_END} line is missing"),
        });
    }
    Ok(())
}

/// Parses an age identity file (comments, blank lines, one or more `AGE-SECRET-KEY-1...` lines)
/// and returns the public recipients. The error text never contains the content.
pub fn age_identities(plaintext: &[u8]) -> Result<Vec<String>, String> {
    let text = std::str::from_utf8(plaintext).map_err(|_| "it is not UTF-8 text".to_string())?;
    let mut recipients = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut candidate = Zeroizing::new(line.to_string());
        match age::x25519::Identity::from_str(&candidate) {
            Ok(id) => recipients.push(id.to_public().to_string()),
            Err(_) => {
                candidate.zeroize();
                return Err(format!("line {} is not an age X25519 identity", n + 1));
            }
        }
    }
    if recipients.is_empty() {
        return Err("it contains no AGE-SECRET-KEY-1... line".into());
    }
    Ok(recipients)
}

fn await_command(recipient: &str) -> String {
    format!("age -a -r {recipient} -o {SEALED_FILE_HINT} {KEY_FILE_HINT}")
}

/// Unseals on an open TPM, then locks (see [`unseal`]).
pub fn unseal_on(
    tpm: &mut Tpm,
    settings: &TpmSettings,
    inputs: &[SealedInput],
) -> Result<Unsealed, SealError> {
    let loc = settings.location()?;
    let result = unseal_unlocked(tpm, settings, &loc, inputs);
    match &result {
        // Nothing to do: the lock PCR is extended already.
        Err(SealError::Seed(
            SeedError::Locked { .. } | SeedError::LockedBeforeEnrolment { .. },
        )) => {}
        _ => match seed::lock(tpm, &loc) {
            Ok(()) => tracing::info!(
                pcr = loc.lock_pcr,
                "lock PCR extended: the seed is sealed until next boot"
            ),
            // The plaintext is dropped (zeroised) with `result`: nothing unsealed is handed out
            // while the seed is still readable.
            Err(e) if result.is_ok() => return Err(e.into()),
            Err(e) => {
                tracing::error!(error = %e, "could not extend the lock PCR after a failed unseal")
            }
        },
    }
    result
}

fn unseal_unlocked(
    tpm: &mut Tpm,
    settings: &TpmSettings,
    loc: &SeedLocation,
    inputs: &[SealedInput],
) -> Result<Unsealed, SealError> {
    let factor = settings.factor()?;
    // Enrol only on a first boot: nothing sealed, nothing pinned. Otherwise a missing seed is
    // reported, never replaced.
    let why_not = if !inputs.is_empty() {
        Some("sealed inputs are configured")
    } else if settings.recipient.is_some() {
        Some("a recipient is pinned (tpm.recipient)")
    } else {
        None
    };
    let (seed, enrolled) = match why_not {
        None => {
            let efivars = settings.efivars.clone();
            let (enrolment, seed) = seed::enrol(tpm, loc, move || {
                secureboot::check_enrolment_allowed(&efivars).map_err(SeedError::from)
            })?;
            (seed, enrolment == Enrolment::Created)
        }
        Some(why) => match seed::read(tpm, loc) {
            Ok(seed) => (seed, false),
            Err(SeedError::NotEnrolled { index }) => {
                return Err(SealError::SeedMissing { index, why });
            }
            Err(e) => return Err(e.into()),
        },
    };
    let identity = TpmIdentity::derive(&seed, factor);
    drop(seed);
    let recipient = identity.recipient();
    if let Some(pinned) = &settings.recipient
        && *pinned != recipient
    {
        return Err(SealError::SeedChanged {
            pinned: pinned.clone(),
        });
    }
    if enrolled {
        tracing::info!(%recipient, "enrolled this TPM: new seed written and write-locked");
    }
    let salt_key_name = hex::encode(seed::salt_key_name(tpm, loc)?);
    let secrets = inputs
        .iter()
        .map(|i| identity.decrypt(i))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Unsealed {
        recipient,
        salt_key_name,
        enrolled,
        secrets,
    })
}

/// Reads the seed, checks the recipient, decrypts every input, and extends the lock PCR before
/// returning, on success and on failure alike (blocking: call it from `spawn_blocking`).
///
/// Enrols only when `inputs` is empty and no recipient is pinned (a first boot), and then only
/// with SecureBoot enabled and the firmware in user mode. With sealed inputs or a pinned
/// recipient, a missing seed is [`SealError::SeedMissing`] and another seed
/// [`SealError::SeedChanged`]: permanent, never re-enrolled.
pub fn unseal(settings: &TpmSettings, inputs: &[SealedInput]) -> Result<Unsealed, SealError> {
    let mut tpm = settings.open()?;
    unseal_on(&mut tpm, settings, inputs)
}

/// Extends the lock PCR: nothing can read the seed again until the next boot.
pub fn lock(settings: &TpmSettings) -> Result<(), SealError> {
    let loc = settings.location()?;
    let mut tpm = settings.open()?;
    seed::lock(&mut tpm, &loc)?;
    tracing::info!(
        pcr = settings.policy.lock_pcr,
        "lock PCR extended: the seed is sealed until next boot"
    );
    Ok(())
}

/// The identity on an open TPM, read-only (does not lock), checked against the pinned recipient.
pub fn identity_on(tpm: &mut Tpm, settings: &TpmSettings) -> Result<TpmIdentity, SealError> {
    let loc = settings.location()?;
    let factor = settings.factor()?;
    let seed = seed::read(tpm, &loc)?;
    let identity = TpmIdentity::derive(&seed, factor);
    if let Some(pinned) = &settings.recipient
        && *pinned != identity.recipient()
    {
        return Err(SealError::SeedChanged {
            pinned: pinned.clone(),
        });
    }
    Ok(identity)
}

/// This TPM's recipient, read-only (fails when not enrolled or locked).
pub fn recipient(settings: &TpmSettings) -> Result<String, SealError> {
    let mut tpm = settings.open()?;
    Ok(identity_on(&mut tpm, settings)?.recipient())
}

/// Enrolment result: the recipient and the salt key name to pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolled {
    pub recipient: String,
    pub salt_key_name: String,
    pub created: bool,
}

/// Enrols on an open TPM (idempotent; does not lock). A new seed is only written with
/// SecureBoot enabled and the firmware in user mode, and never while a recipient is pinned.
pub fn enroll_on(tpm: &mut Tpm, settings: &TpmSettings) -> Result<Enrolled, SealError> {
    let loc = settings.location()?;
    let factor = settings.factor()?;
    let (enrolment, seed) = if settings.recipient.is_some() {
        match seed::read(tpm, &loc) {
            Ok(seed) => (Enrolment::Existing, seed),
            Err(SeedError::NotEnrolled { index }) => {
                return Err(SealError::SeedMissing {
                    index,
                    why: "a recipient is pinned (--recipient)",
                });
            }
            Err(e) => return Err(e.into()),
        }
    } else {
        let efivars = settings.efivars.clone();
        seed::enrol(tpm, &loc, move || {
            secureboot::check_enrolment_allowed(&efivars).map_err(SeedError::from)
        })?
    };
    let recipient = TpmIdentity::derive(&seed, factor).recipient();
    drop(seed);
    if let Some(pinned) = &settings.recipient
        && *pinned != recipient
    {
        return Err(SealError::SeedChanged {
            pinned: pinned.clone(),
        });
    }
    let salt_key_name = hex::encode(seed::salt_key_name(tpm, &loc)?);
    Ok(Enrolled {
        recipient,
        salt_key_name,
        created: enrolment == Enrolment::Created,
    })
}

/// Creates, fills and write-locks the seed when absent; returns the recipient. Idempotent.
pub fn enroll(settings: &TpmSettings) -> Result<String, SealError> {
    let mut tpm = settings.open()?;
    Ok(enroll_on(&mut tpm, settings)?.recipient)
}

/// Disables core dumps for this process (RLIMIT_CORE 0 and not dumpable), so that the seed and
/// decrypted secrets never reach a core file. Call once at start-up.
pub fn disable_core_dumps() -> Result<(), nix::Error> {
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0)?;
    nix::sys::prctl::set_dumpable(false)?;
    Ok(())
}

/// Minimal bech32 (BIP 173) encoder for the identity string, which age then parses (and whose
/// checksum it verifies).
mod bech32 {
    use zeroize::Zeroizing;

    const CHARSET: &[u8; 32] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";
    const GEN: [u32; 5] = [
        0x3b6a_57b2,
        0x2650_8e6d,
        0x1ea1_19fa,
        0x3d42_33dd,
        0x2a14_62b3,
    ];

    fn polymod(values: &[u8]) -> u32 {
        let mut chk: u32 = 1;
        for v in values {
            let b = chk >> 25;
            chk = ((chk & 0x01ff_ffff) << 5) ^ u32::from(*v);
            for (i, g) in GEN.iter().enumerate() {
                if (b >> i) & 1 == 1 {
                    chk ^= g;
                }
            }
        }
        chk
    }

    pub fn encode_upper(hrp: &str, data: &[u8]) -> Zeroizing<String> {
        let mut five = Zeroizing::new(Vec::with_capacity(data.len() * 8 / 5 + 1));
        let (mut acc, mut bits) = (0u32, 0u32);
        for b in data {
            acc = (acc << 8) | u32::from(*b);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                five.push(((acc >> bits) & 31) as u8);
            }
        }
        if bits > 0 {
            five.push(((acc << (5 - bits)) & 31) as u8);
        }
        // Sized up front so that no reallocation leaves a copy of the secret behind.
        let mut values = Zeroizing::new(Vec::with_capacity(2 * hrp.len() + 1 + five.len() + 6));
        values.extend(hrp.bytes().map(|c| c >> 5));
        values.push(0);
        values.extend(hrp.bytes().map(|c| c & 31));
        values.extend_from_slice(&five);
        values.extend_from_slice(&[0; 6]);
        let m = polymod(&values) ^ 1;
        let mut out = Zeroizing::new(String::with_capacity(hrp.len() + 1 + five.len() + 6));
        out.push_str(hrp);
        out.push('1');
        for v in five.iter() {
            out.push(CHARSET[usize::from(*v)] as char);
        }
        for i in 0..6 {
            out.push(CHARSET[((m >> (5 * (5 - i))) & 31) as usize] as char);
        }
        out.make_ascii_uppercase();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn factor(byte: u8) -> KeyFactor {
        hex::encode([byte; FACTOR_LEN]).parse().unwrap()
    }

    #[test]
    fn identity_needs_both_the_seed_and_the_factor() {
        let a = TpmIdentity::derive(&[1; 32], &factor(9));
        let b = TpmIdentity::derive(&[1; 32], &factor(9));
        assert_eq!(a.recipient(), b.recipient());
        assert!(a.recipient().starts_with("age1"));
        assert!(!format!("{a:?}").contains("SECRET"));
        // Another seed, or another factor: another identity.
        assert_ne!(
            a.recipient(),
            TpmIdentity::derive(&[2; 32], &factor(9)).recipient()
        );
        assert_ne!(
            a.recipient(),
            TpmIdentity::derive(&[1; 32], &factor(8)).recipient()
        );
    }

    #[test]
    fn factors_parse_from_hex_and_never_show() {
        let f = factor(0xab);
        assert_eq!(format!("{f:?}"), "KeyFactor(<redacted>)");
        let e = "ab".repeat(31).parse::<KeyFactor>().unwrap_err();
        assert!(e.message.contains("62 characters"), "{e}");
        assert!(!e.message.contains("abab"), "{e}");
        let e = "zz".repeat(32).parse::<KeyFactor>().unwrap_err();
        assert!(e.fix.contains("random_bytes"), "{e}");
        assert!(
            format!(" {} ", "AB".repeat(32))
                .parse::<KeyFactor>()
                .is_ok()
        );
    }

    #[test]
    fn simulator_sockets_need_a_pinned_salt_key_or_an_explicit_opt_out() {
        let mut s = TpmSettings::at("tcp://127.0.0.1:2321").unwrap();
        let problem = s.transport_problem().unwrap();
        assert!(
            problem.message.contains("tcp://127.0.0.1:2321"),
            "{problem}"
        );
        assert!(problem.fix.contains("insecureTransport"), "{problem}");
        s.insecure_transport = true;
        assert!(s.transport_problem().is_none());
        let mut s = TpmSettings::at("unix:///run/swtpm.sock").unwrap();
        s.salt_key_name = Some("000b".to_string() + &"00".repeat(32));
        assert!(s.transport_problem().is_none());
        assert!(TpmSettings::default().transport_problem().is_none());
    }

    #[test]
    fn recognises_identity_files() {
        let id = age::x25519::Identity::generate();
        use age::secrecy::ExposeSecret;
        let file = format!(
            "# created: now\n# public key: {}\n{}\n",
            id.to_public(),
            id.to_string().expose_secret()
        );
        assert_eq!(
            age_identities(file.as_bytes()).ok(),
            Some(vec![id.to_public().to_string()])
        );
        let e = age_identities(b"hunter2 password\n")
            .err()
            .unwrap_or_default();
        assert!(e.contains("line 1"));
        assert!(!e.contains("hunter2"));
        assert!(age_identities(b"# only comments\n").is_err());
    }

    #[test]
    fn secrets_debug_redacted() {
        let s = UnsealedSecret {
            label: "x".into(),
            value: Zeroizing::new(b"topsecret".to_vec()),
        };
        assert!(!format!("{s:?}").contains("topsecret"));
    }
}
