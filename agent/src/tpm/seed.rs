//! The NV seed: 32 random bytes in an owner-hierarchy NV index, written once, write-locked for
//! good, readable and writable only through PolicyPCR over the policy PCRs and the lock PCR at
//! its reset value.
//!
//! Writes go through the same PCR policy as reads (TPMA_NV_POLICYWRITE, not OWNERWRITE): the
//! owner hierarchy has no password on the machines the agent runs on, so an owner-writable index
//! could be deleted, redefined with the same attributes and policy, and filled with a seed of
//! the deleter's choice by any root process, at any time. With POLICYWRITE a planted seed can
//! only be written while the PCRs hold their boot-time values (SecureBoot state as enrolled,
//! lock PCR not yet extended); the configuration's pinned recipient catches that case.

use std::time::Duration;

use rand::RngCore;
use rand::rngs::OsRng;
use zeroize::Zeroizing;

use super::client::{SaltKey, Session, SessionKind, Tpm};
use super::commands::NvPublic;
use super::error::TpmError;
use super::policy::{self, ALG_SHA256, PCR_COUNT};
use crate::error::{Classify, ErrorKind};

pub const NV_OWNERWRITE: u32 = 1 << 1;
pub const NV_POLICYWRITE: u32 = 1 << 3;
pub const NV_WRITELOCKED: u32 = 1 << 11;
pub const NV_WRITEALL: u32 = 1 << 12;
pub const NV_WRITEDEFINE: u32 = 1 << 13;
pub const NV_POLICYREAD: u32 = 1 << 19;
pub const NV_NO_DA: u32 = 1 << 25;
pub const NV_WRITTEN: u32 = 1 << 29;
/// Attributes the agent defines its index with: written only through the PCR policy (once,
/// then locked until the index is deleted: WRITEDEFINE), whole-index writes, read only through
/// the policy, no dictionary-attack lockout.
pub const NV_ATTRIBUTES: u32 =
    NV_POLICYWRITE | NV_WRITEALL | NV_WRITEDEFINE | NV_POLICYREAD | NV_NO_DA;
/// Attributes of the index of earlier versions: owner-writable, hence untrusted.
pub const NV_ATTRIBUTES_OWNER_WRITABLE: u32 =
    NV_OWNERWRITE | NV_WRITEALL | NV_WRITEDEFINE | NV_POLICYREAD | NV_NO_DA;
/// State bits the TPM sets on its own.
const NV_STATE: u32 = NV_WRITTEN | NV_WRITELOCKED;

/// Reads retried when a PCR changes between the policy check and the read (TPM_RC_PCR_CHANGED).
const PCR_CHANGED_ATTEMPTS: u32 = 4;
/// First pause before such a retry; doubled each time.
const PCR_CHANGED_BACKOFF: Duration = Duration::from_millis(10);
/// Enrolment starts over at most this often when another process defines the index at the same
/// time (NV_DefineSpace answering TPM_RC_NV_DEFINED).
const DEFINE_ATTEMPTS: u32 = 2;

pub const SEED_LEN: usize = 32;

/// The value extended into the lock PCR: SHA-256 of a fixed, versioned string.
pub fn lock_digest() -> [u8; 32] {
    super::crypto::sha256(&[b"bootstrap-agent/lock-pcr/v1"])
}

/// Where the seed lives and what guards it.
#[derive(Debug, Clone)]
pub struct SeedLocation {
    pub nv_index: u32,
    /// Policy PCRs (SHA-256 bank), without the lock PCR.
    pub pcrs: Vec<u32>,
    pub lock_pcr: u32,
    /// Expected name of the salt key (nameAlg || SHA-256 of its public area), when pinned.
    pub salt_key_name: Option<Vec<u8>>,
}

impl SeedLocation {
    /// Every PCR the read policy covers, ascending.
    pub fn policy_pcrs(&self) -> Vec<u32> {
        let mut all = self.pcrs.clone();
        all.push(self.lock_pcr);
        policy::normalise(&all)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error(
        "the TPM is not enrolled: NV index 0x{index:08X} does not hold a seed yet; run `bootstrap-agent tpm enroll`"
    )]
    NotEnrolled { index: u32 },
    #[error(
        "NV index 0x{index:08X} exists but is not this agent's seed ({reason}); it was left untouched. Choose another index (tpm.nvIndex) or, if it is stale, remove it yourself with `tpm2_nvundefine 0x{index:08X}`"
    )]
    Foreign { index: u32, reason: String },
    #[error(
        "NV index 0x{index:08X} holds a seed defined by an earlier version of the agent, which the TPM owner can overwrite (any root process could have planted it): it is not trusted and was left untouched"
    )]
    OwnerWritable { index: u32 },
    #[error(
        "the seed is locked until next boot: PCR {pcr} was extended after the secrets were unsealed this boot (reboot to unseal again)"
    )]
    Locked { pcr: u32 },
    #[error(
        "cannot enrol: the lock PCR {pcr} is already extended this boot, so the seed could not be written through its policy; reboot and enrol before anything extends PCR {pcr}"
    )]
    LockedBeforeEnrolment { pcr: u32 },
    #[error("the seed's PCR policy no longer matches: {}", describe_pcrs(.pcrs))]
    PcrMismatch { pcrs: Vec<u32> },
    #[error(
        "the policy PCRs kept changing while the seed was read ({attempts} attempts): something extends PCR {} or the lock PCR right now",
        .pcrs.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
    )]
    PcrChanged { pcrs: Vec<u32>, attempts: u32 },
    #[error(
        "the seed read back after enrolment is not the one written: another process wrote NV index 0x{index:08X} at the same time; it is not trusted"
    )]
    Replaced { index: u32 },
    #[error(
        "another process kept defining NV index 0x{index:08X} while the agent enrolled ({attempts} attempts)"
    )]
    DefineRace { index: u32, attempts: u32 },
    #[error(transparent)]
    Firmware(#[from] crate::secureboot::FirmwareError),
    #[error("invalid TPM settings: {0}")]
    Settings(String),
    #[error(transparent)]
    Tpm(#[from] TpmError),
}

fn pcr_meaning(pcr: u32) -> &'static str {
    match pcr {
        0 => "firmware code",
        1 => "firmware configuration",
        2 => "option ROM code",
        3 => "option ROM configuration",
        4 => "boot loader / UKI code",
        5 => "boot configuration and GPT",
        7 => {
            "SecureBoot state: it changes when the SecureBoot variables PK, KEK, db or dbx change (a firmware or dbx update, enrolled keys), when SecureBoot is turned off or on, or when the boot chain is signed by another key"
        }
        9 => "kernel/initrd measurements",
        11 => "unified kernel image sections",
        12 => "kernel command line",
        14 => "shim MOK state",
        _ => "a PCR of the configured policy",
    }
}

fn describe_pcrs(pcrs: &[u32]) -> String {
    let parts: Vec<String> = pcrs
        .iter()
        .map(|p| format!("PCR {p} ({})", pcr_meaning(*p)))
        .collect();
    format!(
        "{} differs from its value at enrolment. If you changed it yourself (new keys, a dbx update), re-enrol deliberately as README describes (Re-enrolling the TPM); if nobody did, treat the machine as tampered with",
        parts.join(" or ")
    )
}

impl Classify for SeedError {
    fn kind(&self) -> ErrorKind {
        match self {
            SeedError::Tpm(e) => e.kind(),
            SeedError::Firmware(e) => e.kind(),
            SeedError::Settings(_) => ErrorKind::Config,
            SeedError::PcrChanged { .. } | SeedError::DefineRace { .. } => ErrorKind::Transient,
            _ => ErrorKind::Permanent,
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            SeedError::Tpm(e) => e.hint(),
            SeedError::Firmware(e) => e.hint(),
            SeedError::OwnerWritable { index } => Some(format!(
                "if you enrolled this TPM with an earlier version yourself, remove the index with `tpm2_nvundefine 0x{index:08X}` and enrol again (README: Re-enrolling the TPM)"
            )),
            _ => None,
        }
    }
}

fn validate(loc: &SeedLocation) -> Result<(), SeedError> {
    if !(0x0100_0000..=0x01FF_FFFF).contains(&loc.nv_index) {
        return Err(SeedError::Settings(format!(
            "NV index 0x{:08X} is not an NV index handle (0x01000000..0x01FFFFFF)",
            loc.nv_index
        )));
    }
    if let Some(bad) = loc.policy_pcrs().iter().find(|p| **p >= PCR_COUNT) {
        return Err(SeedError::Settings(format!(
            "PCR {bad} does not exist (0..=23)"
        )));
    }
    if loc.pcrs.contains(&loc.lock_pcr) {
        return Err(SeedError::Settings(format!(
            "the lock PCR {} is also listed as a policy PCR",
            loc.lock_pcr
        )));
    }
    if loc.policy_pcrs().len() > 8 {
        return Err(SeedError::Settings(
            "at most 7 policy PCRs plus the lock PCR".into(),
        ));
    }
    Ok(())
}

/// The policy PCR values the seed must be bound to: current values for the policy PCRs (PCR 7 is
/// set by firmware before anything of ours runs), the reset value (zeros) for the lock PCR
/// whatever its current value.
fn expected_values(tpm: &mut Tpm, loc: &SeedLocation) -> Result<PcrState, SeedError> {
    let pcrs = loc.policy_pcrs();
    let current = tpm.pcr_read(&pcrs)?;
    let expected = pcrs
        .iter()
        .zip(&current)
        .map(|(p, v)| if *p == loc.lock_pcr { [0u8; 32] } else { *v })
        .collect();
    Ok(PcrState {
        pcrs,
        current,
        expected,
    })
}

/// Policy PCRs (ascending), their current values, and the values the policy expects.
struct PcrState {
    pcrs: Vec<u32>,
    current: Vec<[u8; 32]>,
    expected: Vec<[u8; 32]>,
}

/// Runs `f` with the salt key, flushing it afterwards whatever happens.
fn with_salt_key<T>(
    tpm: &mut Tpm,
    loc: &SeedLocation,
    f: impl FnOnce(&mut Tpm, &SaltKey) -> Result<T, SeedError>,
) -> Result<T, SeedError> {
    let key = tpm.create_salt_key()?;
    if let Some(pin) = &loc.salt_key_name
        && *pin != key.name
    {
        tpm.flush_quietly(key.handle);
        return Err(TpmError::SaltKeyMismatch {
            expected: hex::encode(pin),
            got: hex::encode(&key.name),
        }
        .into());
    }
    let r = f(tpm, &key);
    tpm.flush_quietly(key.handle);
    r
}

/// Runs `f` with a salted session, flushing it afterwards whatever happens.
fn with_session<T>(
    tpm: &mut Tpm,
    key: &SaltKey,
    kind: SessionKind,
    f: impl FnOnce(&mut Tpm, &mut Session) -> Result<T, SeedError>,
) -> Result<T, SeedError> {
    let mut session = tpm.start_session(key, kind)?;
    let r = f(tpm, &mut session);
    tpm.flush_quietly(session.handle);
    r
}

/// Runs `f` with a salted policy session that satisfies PolicyPCR over `state` (the session is
/// flushed afterwards). A policy session authorizes one command: each write, lock or read gets
/// its own.
fn with_policy<T>(
    tpm: &mut Tpm,
    key: &SaltKey,
    state: &PolicyState,
    f: impl FnOnce(&mut Tpm, &mut Session) -> Result<T, SeedError>,
) -> Result<T, SeedError> {
    with_session(tpm, key, SessionKind::Policy, |tpm, session| {
        tpm.policy_pcr(session, &state.pcrs)?;
        if tpm.policy_get_digest(session)? != state.digest {
            // A PCR moved between PCR_Read and PolicyPCR.
            return Err(state.changed(1));
        }
        f(tpm, session)
    })
}

/// The PCR policy as it stands now: the PCRs, the digest the seed is bound to, and whether the
/// lock PCR is already extended.
struct PolicyState {
    pcrs: Vec<u32>,
    /// Policy PCRs only (without the lock PCR), for messages.
    policy_pcrs: Vec<u32>,
    digest: [u8; 32],
    locked: bool,
}

impl PolicyState {
    fn now(tpm: &mut Tpm, loc: &SeedLocation) -> Result<PolicyState, SeedError> {
        let PcrState {
            pcrs,
            current,
            expected,
        } = expected_values(tpm, loc)?;
        let locked = pcrs
            .iter()
            .position(|p| *p == loc.lock_pcr)
            .is_some_and(|i| current[i] != [0u8; 32]);
        Ok(PolicyState {
            digest: policy::policy_pcr(&pcrs, &expected),
            pcrs,
            policy_pcrs: loc.pcrs.clone(),
            locked,
        })
    }

    fn changed(&self, attempts: u32) -> SeedError {
        SeedError::PcrChanged {
            pcrs: self.policy_pcrs.clone(),
            attempts,
        }
    }

    fn mismatch(&self) -> SeedError {
        SeedError::PcrMismatch {
            pcrs: self.policy_pcrs.clone(),
        }
    }
}

/// Maps a refused NV command: a failed policy is a PCR mismatch, a PCR changed since PolicyPCR
/// is retried.
fn nv_refusal(state: &PolicyState, e: TpmError) -> SeedError {
    match e.response_code() {
        Some(rc) if rc.is_fmt1(super::rc::FMT1_POLICY_FAIL) => state.mismatch(),
        Some(rc) if rc.0 == super::rc::RC_PCR_CHANGED => state.changed(1),
        _ => e.into(),
    }
}

/// Checks that an existing index is shaped like ours (attributes, size, name algorithm, policy
/// length); the policy value itself is checked against PCRs when reading.
fn check_shape(public: &NvPublic) -> Result<(), SeedError> {
    let foreign = |reason: String| SeedError::Foreign {
        index: public.index,
        reason,
    };
    if public.attributes & !NV_STATE == NV_ATTRIBUTES_OWNER_WRITABLE {
        return Err(SeedError::OwnerWritable {
            index: public.index,
        });
    }
    if public.attributes & !NV_STATE != NV_ATTRIBUTES {
        return Err(foreign(format!(
            "attributes 0x{:08X}, expected 0x{:08X} plus written/write-locked",
            public.attributes, NV_ATTRIBUTES
        )));
    }
    if public.name_alg != ALG_SHA256 {
        return Err(foreign(format!(
            "name algorithm 0x{:04X}, expected SHA-256",
            public.name_alg
        )));
    }
    if usize::from(public.data_size) != SEED_LEN {
        return Err(foreign(format!(
            "size {} bytes, expected {SEED_LEN}",
            public.data_size
        )));
    }
    if public.auth_policy.len() != 32 {
        return Err(foreign(format!(
            "a read policy of {} bytes, expected a 32-byte SHA-256 PolicyPCR digest",
            public.auth_policy.len()
        )));
    }
    Ok(())
}

fn prepare(tpm: &mut Tpm, loc: &SeedLocation) -> Result<(), SeedError> {
    validate(loc)?;
    if tpm.is_simulator() {
        tpm.startup()?;
    }
    Ok(())
}

/// Reads the seed through a salted policy session with an encrypted response. Read-only.
pub fn read(tpm: &mut Tpm, loc: &SeedLocation) -> Result<Zeroizing<[u8; SEED_LEN]>, SeedError> {
    prepare(tpm, loc)?;
    let public = tpm
        .nv_read_public(loc.nv_index)?
        .ok_or(SeedError::NotEnrolled {
            index: loc.nv_index,
        })?;
    check_shape(&public)?;
    if public.attributes & NV_WRITTEN == 0 {
        return Err(SeedError::NotEnrolled {
            index: loc.nv_index,
        });
    }
    read_written(tpm, loc, &public)
}

/// Reads a written index, retrying (bounded, with backoff) when a PCR changes between the
/// policy check and the read.
fn read_written(
    tpm: &mut Tpm,
    loc: &SeedLocation,
    public: &NvPublic,
) -> Result<Zeroizing<[u8; SEED_LEN]>, SeedError> {
    let mut pause = PCR_CHANGED_BACKOFF;
    let mut attempt = 1;
    loop {
        match read_once(tpm, loc, public) {
            Err(SeedError::PcrChanged { pcrs, .. }) => {
                if attempt >= PCR_CHANGED_ATTEMPTS {
                    return Err(SeedError::PcrChanged {
                        pcrs,
                        attempts: attempt,
                    });
                }
                tracing::warn!(
                    attempt,
                    "a policy PCR changed while the seed was read; reading again"
                );
                std::thread::sleep(pause);
                pause *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}

fn read_once(
    tpm: &mut Tpm,
    loc: &SeedLocation,
    public: &NvPublic,
) -> Result<Zeroizing<[u8; SEED_LEN]>, SeedError> {
    let state = PolicyState::now(tpm, loc)?;
    if state.locked {
        return Err(SeedError::Locked { pcr: loc.lock_pcr });
    }
    if public.auth_policy != state.digest {
        return Err(state.mismatch());
    }
    with_salt_key(tpm, loc, |tpm, key| {
        with_policy(tpm, key, &state, |tpm, session| {
            let data = tpm
                .nv_read_encrypted(public, session)
                .map_err(|e| nv_refusal(&state, e))?;
            let mut seed = Zeroizing::new([0u8; SEED_LEN]);
            if data.len() != SEED_LEN {
                return Err(TpmError::Unexpected {
                    what: "seed",
                    detail: format!("{} bytes read, expected {SEED_LEN}", data.len()),
                }
                .into());
            }
            seed.copy_from_slice(&data);
            Ok(seed)
        })
    })
}

/// What [`enrol`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enrolment {
    /// The index was absent (or defined but never written by an interrupted enrolment) and now
    /// holds a new seed.
    Created,
    /// The index already held a seed; it was read, nothing was changed.
    Existing,
}

/// Creates, fills and write-locks the seed when absent; otherwise reads the existing one.
/// Never deletes or overwrites an index, and never adopts a seed it did not write: the seed
/// read back after writing must be the one written.
///
/// The caller decides whether enrolling is allowed at all (the agent never enrols while sealed
/// inputs are configured); `before_writing` runs right before a new seed would be written (the
/// firmware check) and stops the enrolment when it fails.
pub fn enrol(
    tpm: &mut Tpm,
    loc: &SeedLocation,
    before_writing: impl FnOnce() -> Result<(), SeedError>,
) -> Result<(Enrolment, Zeroizing<[u8; SEED_LEN]>), SeedError> {
    prepare(tpm, loc)?;
    let mut before_writing = Some(before_writing);
    for _ in 0..DEFINE_ATTEMPTS {
        let public = match tpm.nv_read_public(loc.nv_index)? {
            Some(public) => {
                check_shape(&public)?;
                if public.attributes & NV_WRITTEN != 0 {
                    if public.attributes & NV_WRITELOCKED == 0 {
                        tracing::warn!(
                            index = format!("0x{:08X}", loc.nv_index),
                            "seed written but not write-locked (interrupted enrolment): locking it now"
                        );
                        write_lock(tpm, loc, &public)?;
                    }
                    return Ok((Enrolment::Existing, read(tpm, loc)?));
                }
                // Defined by an interrupted enrolment: the policy must be the one we would define.
                let state = PolicyState::now(tpm, loc)?;
                if state.locked {
                    return Err(SeedError::LockedBeforeEnrolment { pcr: loc.lock_pcr });
                }
                if public.auth_policy != state.digest {
                    return Err(SeedError::Foreign {
                        index: loc.nv_index,
                        reason: "never written, and its policy is not PolicyPCR over the configured PCRs".into(),
                    });
                }
                public
            }
            None => {
                let state = PolicyState::now(tpm, loc)?;
                if state.locked {
                    return Err(SeedError::LockedBeforeEnrolment { pcr: loc.lock_pcr });
                }
                if let Some(check) = before_writing.take() {
                    check()?;
                }
                let public = NvPublic {
                    index: loc.nv_index,
                    name_alg: ALG_SHA256,
                    attributes: NV_ATTRIBUTES,
                    auth_policy: state.digest.to_vec(),
                    data_size: SEED_LEN as u16,
                };
                match tpm.nv_define(&public) {
                    Ok(()) => public,
                    // Another process defined it between NV_ReadPublic and here: look again.
                    Err(e)
                        if e.response_code().map(|rc| rc.0) == Some(super::rc::RC_NV_DEFINED) =>
                    {
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        if let Some(check) = before_writing.take() {
            check()?;
        }
        return write_new(tpm, loc, public).map(|seed| (Enrolment::Created, seed));
    }
    Err(SeedError::DefineRace {
        index: loc.nv_index,
        attempts: DEFINE_ATTEMPTS,
    })
}

/// Writes a new seed into a defined, unwritten index through the policy, write-locks it, and
/// reads it back: the TPM's copy must be the one written.
fn write_new(
    tpm: &mut Tpm,
    loc: &SeedLocation,
    public: NvPublic,
) -> Result<Zeroizing<[u8; SEED_LEN]>, SeedError> {
    // Neither source alone decides the seed: the OS RNG, and the TPM's RNG.
    let mut seed = Zeroizing::new([0u8; SEED_LEN]);
    OsRng.fill_bytes(&mut seed[..]);
    let tpm_random = tpm.get_random(SEED_LEN as u16)?;
    for (s, t) in seed.iter_mut().zip(tpm_random.iter()) {
        *s ^= t;
    }
    let state = PolicyState::now(tpm, loc)?;
    with_salt_key(tpm, loc, |tpm, key| {
        with_policy(tpm, key, &state, |tpm, session| {
            tpm.nv_write_encrypted(&public, session, &seed[..])
                .map_err(|e| nv_refusal(&state, e))
        })
    })?;
    let written = NvPublic {
        attributes: public.attributes | NV_WRITTEN,
        ..public
    };
    write_lock(tpm, loc, &written)?;
    let back = read(tpm, loc)?;
    if *back != *seed {
        return Err(SeedError::Replaced {
            index: loc.nv_index,
        });
    }
    Ok(seed)
}

/// NV_WriteLock through the policy (with WRITEDEFINE: locked until the index is deleted).
fn write_lock(tpm: &mut Tpm, loc: &SeedLocation, public: &NvPublic) -> Result<(), SeedError> {
    let state = PolicyState::now(tpm, loc)?;
    if state.locked {
        return Err(SeedError::LockedBeforeEnrolment { pcr: loc.lock_pcr });
    }
    with_salt_key(tpm, loc, |tpm, key| {
        with_policy(tpm, key, &state, |tpm, session| {
            tpm.nv_write_lock(public, session)
                .map_err(|e| nv_refusal(&state, e))
        })
    })
}

/// Extends the lock PCR: until the next boot, the seed's policy can no longer be satisfied
/// (neither for reading nor for writing).
pub fn lock(tpm: &mut Tpm, loc: &SeedLocation) -> Result<(), SeedError> {
    prepare(tpm, loc)?;
    tpm.pcr_extend(loc.lock_pcr, &lock_digest())?;
    Ok(())
}

/// The salt key's name, to pin it in the settings.
pub fn salt_key_name(tpm: &mut Tpm, loc: &SeedLocation) -> Result<Vec<u8>, SeedError> {
    prepare(tpm, loc)?;
    with_salt_key(tpm, loc, |_, key| Ok(key.name.clone()))
}
