//! The attacks on the TPM seal, each played against a real swtpm with tpm2-tools (or a second
//! client on the same bus) as the attacker, and each refused. Every one of them succeeded
//! against the agent before the seal was hardened:
//!
//! 1. a planted seed (the owner hierarchy has no password: delete the index, define it again
//!    with the same attributes and policy, write a seed of one's choice) was used, and the
//!    agent's hint asked the operator to re-encrypt the SOPS key to the planter's recipient;
//!    a deleted index was silently enrolled again;
//! 2. the seed stayed readable after the waiting path and after failures;
//! 3. our signed image booted with a foreign configuration (PCR 7 right, PCR 15 zero, no agent
//!    running) read the seed, and the seed alone opened the sealed file;
//! 4. enrolment went ahead with the firmware in SecureBoot setup mode.
//!
//! Plus the hardening around them: PCR changes while reading, a define race, a malformed
//! StartAuthSession answer. (The whole-node exit paths, with the real binary, are in
//! `rehearsal_security.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use bootstrap_agent::error::Classify;
use bootstrap_agent::seal::{self, KeyFactor, SealError, SealedInput, TpmIdentity, TpmSettings};
use bootstrap_agent::secureboot::FirmwareError;
use bootstrap_agent::tpm::seed::{self, SeedError, SeedLocation};
use bootstrap_agent::tpm::transport::{self, Transport};
use bootstrap_agent::tpm::{Tpm, TpmError};
use bootstrap_agent_tests::swtpm::Swtpm;

const INDEX: &str = "0x01305EED";
/// The agent's attributes, as tpm2-tools spells them.
const ATTRIBUTES: &str = "policywrite|writeall|writedefine|policyread|no_da";

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn run(tpm: &Swtpm, tool: &str, args: &[&str]) -> Output {
    tpm.tpm2(tool, args).expect("run tpm2-tools")
}

/// The operator's side: `age-keygen`, then `age -a -r RECIPIENT`; returns (key file, armor).
fn seal_new_key(tpm: &Swtpm, recipient: &str) -> (String, String) {
    let key = tpm.scratch().join("key.txt");
    let _ = std::fs::remove_file(&key);
    ok(Command::new("age-keygen")
        .arg("-o")
        .arg(&key)
        .output()
        .unwrap());
    let armor = ok(Command::new("age")
        .args(["-a", "-r", recipient])
        .arg(&key)
        .output()
        .unwrap())
    .stdout;
    (
        std::fs::read_to_string(&key).unwrap(),
        String::from_utf8(armor).unwrap(),
    )
}

fn sops_input(armor: &str) -> SealedInput {
    SealedInput {
        label: "flux-system/sops-age".into(),
        armor: armor.to_string(),
        expect_age_identity: true,
    }
}

/// First boot and sealing as the agent and the operator do them; returns the pinned settings
/// for the next boot and the sealed key's armor. The TPM is rebooted (the first boot locked it).
fn enrolled_and_sealed(tpm: &Swtpm) -> (TpmSettings, String) {
    let mut settings = tpm.settings();
    let first = seal::unseal(&settings, &[]).expect("first boot enrols");
    let (_, armor) = seal_new_key(tpm, &first.recipient);
    settings.recipient = Some(first.recipient);
    reboot(tpm);
    (settings, armor)
}

/// The attacker's plant: delete the index (owner auth, no password), define it again with the
/// agent's attributes and policy (so it has the same name), write `seed` through the policy and
/// write-lock it. Returns whether the TPM let the write through.
fn plant(tpm: &Swtpm, seed: &[u8; 32]) -> bool {
    ok(run(tpm, "tpm2_nvundefine", &[INDEX, "-C", "o"]));
    std::fs::write(tpm.scratch().join("zeros.bin"), [0u8; 64]).unwrap();
    ok(run(
        tpm,
        "tpm2_createpolicy",
        &[
            "--policy-pcr",
            "-l",
            "sha256:7,15",
            "-f",
            "zeros.bin",
            "-L",
            "p.bin",
        ],
    ));
    ok(run(tpm, "tpm2_flushcontext", &["--loaded-session"]));
    ok(run(
        tpm,
        "tpm2_nvdefine",
        &[
            INDEX, "-C", "o", "-s", "32", "-a", ATTRIBUTES, "-L", "p.bin",
        ],
    ));
    std::fs::write(tpm.scratch().join("planted.bin"), seed).unwrap();
    // The owner cannot write it: only the policy can.
    assert!(
        !run(
            tpm,
            "tpm2_nvwrite",
            &[INDEX, "-C", "o", "-i", "planted.bin"]
        )
        .status
        .success(),
        "an owner write went through"
    );
    ok(run(
        tpm,
        "tpm2_startauthsession",
        &["--policy-session", "-S", "s.ctx"],
    ));
    ok(run(
        tpm,
        "tpm2_policypcr",
        &["-S", "s.ctx", "-l", "sha256:7,15"],
    ));
    let written = run(
        tpm,
        "tpm2_nvwrite",
        &[
            INDEX,
            "-C",
            INDEX,
            "-P",
            "session:s.ctx",
            "-i",
            "planted.bin",
        ],
    )
    .status
    .success();
    ok(run(tpm, "tpm2_flushcontext", &["s.ctx"]));
    written
}

/// A reboot as the firmware does it: PCRs reset, then TPM2_Startup(CLEAR).
fn reboot(tpm: &Swtpm) {
    tpm.reboot().unwrap();
    ok(run(tpm, "tpm2_startup", &["-c"]));
}

fn lock_pcr_is_zero(tpm: &Swtpm) -> bool {
    let out = ok(run(tpm, "tpm2_pcrread", &["sha256:15"]));
    String::from_utf8_lossy(&out.stdout).contains(&format!("0x{}", "0".repeat(64)))
}

// ------------------------------------------------------------------------------- 1. planted

#[test]
fn a_planted_seed_cannot_be_written_on_a_running_node_and_is_refused_when_it_is() {
    let tpm = Swtpm::start().unwrap();
    let (settings, armor) = enrolled_and_sealed(&tpm);
    let unsealed = seal::unseal(&settings, &[sops_input(&armor)]).expect("unseal");
    assert_eq!(unsealed.secrets.len(), 1);

    // Root on the running node, after the agent's lock: the index can be deleted and defined
    // again, but not written (PolicyPCR needs PCR 15 at zero).
    assert!(
        !plant(&tpm, &[0x42; 32]),
        "a seed was planted on a running node"
    );

    // A boot where nothing locks (our image with a foreign configuration, PCR 15 zero): the
    // plant goes through at the TPM...
    reboot(&tpm);
    assert!(plant(&tpm, &[0x42; 32]), "the policy write failed");
    reboot(&tpm);
    // ...and the agent refuses the seed, naming the cause and suggesting no new recipient.
    let e = seal::unseal(&settings, &[sops_input(&armor)]).expect_err("planted seed accepted");
    assert!(matches!(e, SealError::SeedChanged { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("the TPM seed is missing or changed (TPM cleared, or tampered with)"),
        "{text}"
    );
    let planted = TpmIdentity::derive(&[0x42; 32], settings.factor.as_ref().unwrap()).recipient();
    let hint = e.hint().unwrap_or_default();
    for said in [&text, &hint] {
        assert!(
            !said.contains(&planted),
            "the planter's recipient is shown: {said}"
        );
        assert!(
            !said.contains("age -a -r"),
            "re-sealing is suggested: {said}"
        );
    }
    assert_eq!(e.kind(), bootstrap_agent::error::ErrorKind::Permanent);
    assert!(!lock_pcr_is_zero(&tpm), "the refusal must lock too");
    assert_eq!(tpm.attacker_read_seed(), None);
}

#[test]
fn a_deleted_seed_is_reported_and_never_enrolled_again() {
    let tpm = Swtpm::start().unwrap();
    let (settings, armor) = enrolled_and_sealed(&tpm);
    ok(run(&tpm, "tpm2_nvundefine", &[INDEX, "-C", "o"]));

    let e = seal::unseal(&settings, &[sops_input(&armor)]).expect_err("deleted seed");
    assert!(matches!(e, SealError::SeedMissing { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("the TPM seed is missing or changed (TPM cleared, or tampered with)"),
        "{e}"
    );
    assert!(!e.is_transient());
    // Pinned but nothing sealed yet (a restart while waiting): not enrolled either.
    reboot(&tpm);
    let e = seal::unseal(&settings, &[]).expect_err("pinned, no inputs");
    assert!(matches!(e, SealError::SeedMissing { .. }), "{e}");
    // Nor by `tpm enroll` with the recipient pinned.
    reboot(&tpm);
    let e = seal::enroll(&settings).expect_err("enrolled over a pinned recipient");
    assert!(matches!(e, SealError::SeedMissing { .. }), "{e}");
    assert!(
        !run(&tpm, "tpm2_nvreadpublic", &[INDEX]).status.success(),
        "the index was defined again"
    );
}

#[test]
fn an_index_of_the_owner_writable_kind_is_not_trusted() {
    let tpm = Swtpm::start().unwrap();
    std::fs::write(tpm.scratch().join("zeros.bin"), [0u8; 64]).unwrap();
    ok(run(
        &tpm,
        "tpm2_createpolicy",
        &[
            "--policy-pcr",
            "-l",
            "sha256:7,15",
            "-f",
            "zeros.bin",
            "-L",
            "p.bin",
        ],
    ));
    ok(run(&tpm, "tpm2_flushcontext", &["--loaded-session"]));
    ok(run(
        &tpm,
        "tpm2_nvdefine",
        &[
            INDEX,
            "-C",
            "o",
            "-s",
            "32",
            "-a",
            "ownerwrite|writeall|writedefine|policyread|no_da",
            "-L",
            "p.bin",
        ],
    ));
    std::fs::write(tpm.scratch().join("planted.bin"), [7u8; 32]).unwrap();
    ok(run(
        &tpm,
        "tpm2_nvwrite",
        &[INDEX, "-C", "o", "-i", "planted.bin"],
    ));
    let e = seal::unseal(&tpm.settings(), &[]).expect_err("owner-writable seed used");
    assert!(
        matches!(e, SealError::Seed(SeedError::OwnerWritable { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("planted"), "{e}");
}

/// Passes commands to the TPM; before the first NV_WriteLock, a second client on the same bus
/// (a root process racing the enrolment) writes its own seed through the policy.
struct RacingWriter {
    shared: Arc<Mutex<Box<dyn Transport>>>,
    armed: bool,
}

struct Shared(Arc<Mutex<Box<dyn Transport>>>);

impl Transport for Shared {
    fn transact(&mut self, command: &[u8]) -> Result<Vec<u8>, TpmError> {
        self.0.lock().unwrap().transact(command)
    }
    fn address(&self) -> String {
        "shared".into()
    }
    fn is_simulator(&self) -> bool {
        true
    }
}

fn command_code(command: &[u8]) -> u32 {
    u32::from_be_bytes([command[6], command[7], command[8], command[9]])
}

const CC_NV_WRITELOCK: u32 = 0x138;

impl Transport for RacingWriter {
    fn transact(&mut self, command: &[u8]) -> Result<Vec<u8>, TpmError> {
        if self.armed && command_code(command) == CC_NV_WRITELOCK {
            self.armed = false;
            racing_write(&self.shared);
        }
        self.shared.lock().unwrap().transact(command)
    }
    fn address(&self) -> String {
        "racing".into()
    }
    fn is_simulator(&self) -> bool {
        true
    }
}

/// The racing writer: salt key, policy session, PolicyPCR, NV_Write of its own seed.
fn racing_write(shared: &Arc<Mutex<Box<dyn Transport>>>) {
    use bootstrap_agent::tpm::client::SessionKind;
    let mut tpm = Tpm::new(Box::new(Shared(shared.clone())));
    let public = tpm.nv_read_public(seal::DEFAULT_NV_INDEX).unwrap().unwrap();
    let key = tpm.create_salt_key().unwrap();
    let mut session = tpm.start_session(&key, SessionKind::Policy).unwrap();
    tpm.policy_pcr(&session, &[7, 15]).unwrap();
    tpm.nv_write_encrypted(&public, &mut session, &[0x66; 32])
        .unwrap();
    tpm.flush(session.handle).unwrap();
    tpm.flush(key.handle).unwrap();
}

fn location() -> SeedLocation {
    SeedLocation {
        nv_index: seal::DEFAULT_NV_INDEX,
        pcrs: vec![7],
        lock_pcr: 15,
        salt_key_name: None,
    }
}

#[test]
fn enrolment_never_adopts_a_seed_it_did_not_write() {
    let swtpm = Swtpm::start().unwrap();
    let inner = transport::open(&swtpm.address().parse().unwrap()).unwrap();
    let mut tpm = Tpm::new(Box::new(RacingWriter {
        shared: Arc::new(Mutex::new(inner)),
        armed: true,
    }));
    let e = seed::enrol(&mut tpm, &location(), || Ok(())).expect_err("adopted a raced seed");
    assert!(matches!(e, SeedError::Replaced { .. }), "{e}");
    assert!(!e.is_transient());
}

// ------------------------------------------------------------------------------ 2. the lock

#[test]
fn the_seed_is_locked_after_every_outcome_of_an_unseal() {
    let tpm = Swtpm::start().unwrap();
    // First boot: enrolled, waiting for the operator.
    let mut settings = tpm.settings();
    let first = seal::unseal(&settings, &[]).unwrap();
    assert!(first.enrolled);
    assert_eq!(tpm.attacker_read_seed(), None, "waiting path");
    reboot(&tpm);
    assert!(
        tpm.attacker_read_seed().is_some(),
        "the attacker's read works before the lock"
    );

    let (_, armor) = seal_new_key(&tpm, &first.recipient);
    settings.recipient = Some(first.recipient.clone());
    reboot(&tpm);
    seal::unseal(&settings, &[sops_input(&armor)]).unwrap();
    assert_eq!(tpm.attacker_read_seed(), None, "success path");

    // Failures: a damaged input, another recipient pinned, a changed SecureBoot state.
    reboot(&tpm);
    let damaged = armor.replacen("-----END", "AAAA\n-----END", 1);
    assert!(seal::unseal(&settings, &[sops_input(&damaged)]).is_err());
    assert_eq!(
        tpm.attacker_read_seed(),
        None,
        "failure path: damaged input"
    );

    reboot(&tpm);
    let (_, other) = seal_new_key(&tpm, &first.recipient);
    let mut wrong_pin = settings.clone();
    wrong_pin.recipient =
        Some("age1ypdhz4d9jcynk52crgnzq6kq9mdppdqvhfdaq49xktyendswgvjqgs8qye".into());
    assert!(seal::unseal(&wrong_pin, &[sops_input(&other)]).is_err());
    assert_eq!(tpm.attacker_read_seed(), None, "failure path: seed changed");

    reboot(&tpm);
    ok(run(
        &tpm,
        "tpm2_pcrextend",
        &[&format!("7:sha256={}", "5b".repeat(32))],
    ));
    assert!(seal::unseal(&settings, &[sops_input(&armor)]).is_err());
    assert!(!lock_pcr_is_zero(&tpm), "failure path: PCR mismatch");
}

// ------------------------------------------------------------- 3. a foreign configuration

#[test]
fn the_seed_without_the_factor_and_the_factor_without_the_tpm_yield_nothing() {
    let tpm = Swtpm::start().unwrap();
    let (settings, armor) = enrolled_and_sealed(&tpm);
    let ours = settings.factor.clone().unwrap();

    // Our signed image booted with a foreign configuration: PCR 7 right, PCR 15 zero, the agent
    // never runs. The seed reads, but without our configuration's factor it opens nothing.
    let stolen: [u8; 32] = tpm
        .attacker_read_seed()
        .expect("the seed reads when nothing locks")
        .try_into()
        .unwrap();
    for guess in ["00".repeat(32), "ff".repeat(32)] {
        let factor: KeyFactor = guess.parse().unwrap();
        assert_ne!(factor, ours);
        let identity = TpmIdentity::derive(&stolen, &factor);
        let r = identity.decrypt(&sops_input(&armor));
        assert!(
            matches!(r, Err(SealError::WrongRecipient { .. })),
            "the seed alone opened the sealed file"
        );
    }
    // With both, it does: the test reads the real seed.
    assert!(
        TpmIdentity::derive(&stolen, &ours)
            .decrypt(&sops_input(&armor))
            .is_ok()
    );

    // Our configuration (factor, pinned recipient, sealed file) against another TPM (a leaked
    // machine configuration, a cleared TPM): no seed, and no enrolment.
    let elsewhere = Swtpm::start().unwrap();
    let config = TpmSettings {
        address: elsewhere.address().parse().unwrap(),
        efivars: elsewhere.efivars(true, false),
        ..settings.clone()
    };
    let e = seal::unseal(&config, &[sops_input(&armor)]).expect_err("opened on another TPM");
    assert!(matches!(e, SealError::SeedMissing { .. }), "{e}");
    // Even enrolled there with our factor, it is another identity.
    let mut unpinned = config.clone();
    unpinned.recipient = None;
    reboot(&elsewhere);
    let there = seal::enroll(&unpinned).unwrap();
    assert_ne!(Some(there), settings.recipient);
    let e = seal::unseal(&config, &[sops_input(&armor)]).expect_err("opened on another TPM");
    assert!(matches!(e, SealError::SeedChanged { .. }), "{e}");
}

// ------------------------------------------------------------------ 4. the firmware state

#[test]
fn enrolment_is_refused_in_setup_mode_or_with_secureboot_off() {
    let tpm = Swtpm::start().unwrap();
    for (secure_boot, setup_mode) in [(true, true), (false, false)] {
        let settings = TpmSettings {
            efivars: tpm.efivars(secure_boot, setup_mode),
            ..tpm.settings()
        };
        // `tpm.settings()` wrote user mode; write the state under test again.
        tpm.efivars(secure_boot, setup_mode);
        let e = seal::unseal(&settings, &[]).expect_err("enrolled in an unsafe firmware state");
        match e {
            SealError::Seed(SeedError::Firmware(FirmwareError::SetupMode { .. })) => {
                assert!(setup_mode)
            }
            SealError::Seed(SeedError::Firmware(FirmwareError::Disabled { .. })) => {
                assert!(!secure_boot)
            }
            other => panic!("{other}"),
        }
        assert!(
            !run(&tpm, "tpm2_nvreadpublic", &[INDEX]).status.success(),
            "an index was defined"
        );
        // Refused, and locked all the same.
        assert!(!lock_pcr_is_zero(&tpm));
        reboot(&tpm);
    }
    // Missing variables (not mounted, or no UEFI): refused too, naming where to mount them.
    let settings = TpmSettings {
        efivars: tpm.scratch().join("no-efivars"),
        ..tpm.settings()
    };
    let e = seal::enroll(&settings).expect_err("enrolled without the variables");
    assert!(e.hint().unwrap().contains("/run/efivars"), "{e}");
    // The CLI refuses it the same way.
    let factor = tpm.factor_file().display().to_string();
    let efivars = tpm.efivars(true, true).display().to_string();
    let out = Command::new(bootstrap_agent_tests::swtpm::agent_binary().unwrap())
        .args([
            "tpm",
            "enroll",
            "--tpm",
            &tpm.address(),
            "--insecure-transport",
            "--factor-file",
            &factor,
            "--efivars",
            &efivars,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("setup mode"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An existing seed is read in any firmware state (the policy decides what reads it).
    let settings = tpm.settings();
    let recipient = seal::enroll(&settings).unwrap();
    tpm.efivars(true, true);
    assert_eq!(seal::enroll(&settings).ok(), Some(recipient));
}

// ---------------------------------------------------------------------------- hardening

/// Passes commands through; the first `n` NV_Reads are preceded by an extend of PCR 10 (as IMA
/// does at any time), so the TPM answers TPM_RC_PCR_CHANGED.
struct PcrMover {
    shared: Arc<Mutex<Box<dyn Transport>>>,
    remaining: usize,
    nv_reads: Arc<Mutex<usize>>,
}

const CC_NV_READ: u32 = 0x14E;

impl Transport for PcrMover {
    fn transact(&mut self, command: &[u8]) -> Result<Vec<u8>, TpmError> {
        if command_code(command) == CC_NV_READ {
            *self.nv_reads.lock().unwrap() += 1;
            if self.remaining > 0 {
                self.remaining -= 1;
                let mut other = Tpm::new(Box::new(Shared(self.shared.clone())));
                other.pcr_extend(10, &[0xAA; 32]).unwrap();
            }
        }
        self.shared.lock().unwrap().transact(command)
    }
    fn address(&self) -> String {
        "pcr-mover".into()
    }
    fn is_simulator(&self) -> bool {
        true
    }
}

fn moving_tpm(swtpm: &Swtpm, moves: usize) -> (Tpm, Arc<Mutex<usize>>) {
    let inner = transport::open(&swtpm.address().parse().unwrap()).unwrap();
    let nv_reads = Arc::new(Mutex::new(0));
    let tpm = Tpm::new(Box::new(PcrMover {
        shared: Arc::new(Mutex::new(inner)),
        remaining: moves,
        nv_reads: nv_reads.clone(),
    }));
    (tpm, nv_reads)
}

#[test]
fn a_pcr_changing_during_the_read_is_retried_a_few_times_then_reported() {
    let swtpm = Swtpm::start().unwrap();
    let recipient = seal::enroll(&swtpm.settings()).unwrap();

    let (mut tpm, reads) = moving_tpm(&swtpm, 2);
    let identity = seal::identity_on(&mut tpm, &swtpm.settings()).expect("retried");
    assert_eq!(identity.recipient(), recipient);
    assert_eq!(
        *reads.lock().unwrap(),
        3,
        "two refused reads, then one that worked"
    );
    // One connection at a time (swtpm serves one client).
    drop(tpm);

    let (mut tpm, reads) = moving_tpm(&swtpm, usize::MAX);
    let e = seal::identity_on(&mut tpm, &swtpm.settings()).expect_err("kept changing");
    assert!(
        matches!(
            e,
            SealError::Seed(SeedError::PcrChanged { attempts: 4, .. })
        ),
        "{e}"
    );
    assert!(e.is_transient(), "{e}");
    assert_eq!(*reads.lock().unwrap(), 4, "bounded");
    drop(tpm);
    for cap in ["handles-transient", "handles-loaded-session"] {
        let out = ok(run(&swtpm, "tpm2_getcap", &[cap]));
        assert!(
            String::from_utf8_lossy(&out.stdout).trim().is_empty(),
            "{cap} leaked"
        );
    }
}

/// Answers every NV_DefineSpace with TPM_RC_NV_DEFINED while NV_ReadPublic says the index is
/// absent: another process defining it over and over.
struct DefineRace(Box<dyn Transport>);

impl Transport for DefineRace {
    fn transact(&mut self, command: &[u8]) -> Result<Vec<u8>, TpmError> {
        if command_code(command) == 0x12A {
            let mut answer = 0x8001u16.to_be_bytes().to_vec();
            answer.extend_from_slice(&10u32.to_be_bytes());
            answer.extend_from_slice(&0x14Cu32.to_be_bytes());
            return Ok(answer);
        }
        self.0.transact(command)
    }
    fn address(&self) -> String {
        "define-race".into()
    }
    fn is_simulator(&self) -> bool {
        true
    }
}

#[test]
fn a_define_race_ends_after_a_bounded_number_of_attempts() {
    let swtpm = Swtpm::start().unwrap();
    let inner = transport::open(&swtpm.address().parse().unwrap()).unwrap();
    let mut tpm = Tpm::new(Box::new(DefineRace(inner)));
    let e = seed::enrol(&mut tpm, &location(), || Ok(())).expect_err("endless race");
    assert!(
        matches!(e, SeedError::DefineRace { attempts: 2, .. }),
        "{e}"
    );
    assert!(e.is_transient());
}

/// Appends a byte to StartAuthSession's answer (fixing the size): a malformed answer that
/// still carries a session handle.
struct LongSessionAnswer(Box<dyn Transport>);

impl Transport for LongSessionAnswer {
    fn transact(&mut self, command: &[u8]) -> Result<Vec<u8>, TpmError> {
        let mut answer = self.0.transact(command)?;
        if command_code(command) == 0x176 && answer.len() > 10 {
            answer.push(0);
            let size = answer.len() as u32;
            answer[2..6].copy_from_slice(&size.to_be_bytes());
        }
        Ok(answer)
    }
    fn address(&self) -> String {
        "long-session-answer".into()
    }
    fn is_simulator(&self) -> bool {
        true
    }
}

#[test]
fn a_malformed_start_auth_session_answer_leaves_no_session_behind() {
    let swtpm = Swtpm::start().unwrap();
    seal::enroll(&swtpm.settings()).unwrap();
    let inner = transport::open(&swtpm.address().parse().unwrap()).unwrap();
    let mut tpm = Tpm::new(Box::new(LongSessionAnswer(inner)));
    let e = seal::identity_on(&mut tpm, &swtpm.settings()).expect_err("malformed answer");
    assert!(e.to_string().contains("StartAuthSession"), "{e}");
    drop(tpm);
    for cap in ["handles-transient", "handles-loaded-session"] {
        let out = ok(run(&swtpm, "tpm2_getcap", &[cap]));
        assert!(
            String::from_utf8_lossy(&out.stdout).trim().is_empty(),
            "{cap} left behind: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
