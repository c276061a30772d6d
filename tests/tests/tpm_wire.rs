//! What crosses the TPM bus: the seed never in clear, tampered responses rejected, and scripted
//! bad answers (lockout, failure mode, short reads, wrong tag or size) reported clearly.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::sync::{Arc, Mutex};

use bootstrap_agent::error::Classify;
use bootstrap_agent::seal::{self, SealError, TpmSettings};
use bootstrap_agent::tpm::seed::{self, SeedLocation};
use bootstrap_agent::tpm::transport::{self, Transport};
use bootstrap_agent::tpm::{Tpm, TpmError};
use bootstrap_agent_tests::swtpm::Swtpm;

const CC_NV_WRITE: u32 = 0x137;
const CC_NV_READ: u32 = 0x14E;

type Log = Arc<Mutex<Vec<(Vec<u8>, Vec<u8>)>>>;

/// Passes everything through to a real TPM and records both directions.
struct Recording {
    inner: Box<dyn Transport>,
    log: Log,
    /// Flip the last byte (the response HMAC) of responses to this command code.
    tamper: Option<u32>,
}

impl Transport for Recording {
    fn transact(&mut self, command: &[u8]) -> Result<Vec<u8>, TpmError> {
        let mut response = self.inner.transact(command)?;
        if self.tamper == Some(command_code(command))
            && response.len() > 10
            && let Some(last) = response.last_mut()
        {
            *last ^= 0x01;
        }
        self.log
            .lock()
            .expect("log lock")
            .push((command.to_vec(), response.clone()));
        Ok(response)
    }
    fn address(&self) -> String {
        format!("recording({})", self.inner.address())
    }
    fn is_simulator(&self) -> bool {
        true
    }
}

fn command_code(command: &[u8]) -> u32 {
    u32::from_be_bytes([command[6], command[7], command[8], command[9]])
}

fn recording_tpm(swtpm: &Swtpm, tamper: Option<u32>) -> (Tpm, Log) {
    let log: Log = Arc::default();
    let inner = transport::open(&swtpm.address().parse().unwrap()).expect("open swtpm");
    let tpm = Tpm::new(Box::new(Recording {
        inner,
        log: log.clone(),
        tamper,
    }));
    (tpm, log)
}

fn location() -> SeedLocation {
    SeedLocation {
        nv_index: seal::DEFAULT_NV_INDEX,
        pcrs: vec![7],
        lock_pcr: 15,
        salt_key_name: None,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn seed_never_crosses_the_bus_in_clear() {
    let swtpm = Swtpm::start().expect("start swtpm");
    let (mut tpm, log) = recording_tpm(&swtpm, None);
    let (_, enrolled_seed) = seed::enrol(&mut tpm, &location(), || Ok(())).expect("enrol");
    let read_seed = seed::read(&mut tpm, &location()).expect("read");
    assert_eq!(
        *enrolled_seed, *read_seed,
        "the seed read back differs from the one written"
    );

    let log = log.lock().expect("log lock");
    let codes: Vec<u32> = log.iter().map(|(c, _)| command_code(c)).collect();
    assert!(
        codes.contains(&CC_NV_WRITE),
        "no NV_Write recorded: {codes:x?}"
    );
    assert!(
        codes.contains(&CC_NV_READ),
        "no NV_Read recorded: {codes:x?}"
    );
    for (command, response) in log.iter() {
        // Any 8-byte window of the seed would betray it.
        for window in read_seed.windows(8) {
            assert!(
                !contains(command, window),
                "seed bytes in a command {:x}",
                command_code(command)
            );
            assert!(
                !contains(response, window),
                "seed bytes in a response to {:x}",
                command_code(command)
            );
        }
    }
    // The NV_Read response does carry 32 bytes of (encrypted) data.
    let (_, nv_read) = log
        .iter()
        .find(|(c, _)| command_code(c) == CC_NV_READ)
        .expect("NV_Read");
    assert!(
        nv_read.len() > 10 + 4 + 2 + 32,
        "NV_Read response too small to hold the seed"
    );
}

#[test]
fn tampered_response_hmac_is_rejected_and_nothing_leaks() {
    let swtpm = Swtpm::start().expect("start swtpm");
    seal::enroll(&swtpm.settings()).expect("enroll");
    let (mut tpm, _log) = recording_tpm(&swtpm, Some(CC_NV_READ));
    let e = seed::read(&mut tpm, &location()).expect_err("tampered NV_Read must fail");
    let msg = e.to_string();
    assert!(
        msg.contains("response HMAC of TPM2_NV_Read does not verify"),
        "{msg}"
    );
    assert!(matches!(
        e,
        seed::SeedError::Tpm(TpmError::ResponseHmac { command: "NV_Read" })
    ));
    assert!(e.hint().is_some());
    drop(tpm);
    // The session and the salt key were flushed on the error path.
    for cap in ["handles-transient", "handles-loaded-session"] {
        let out = swtpm.tpm2("tpm2_getcap", &[cap]).expect("tpm2_getcap");
        assert!(
            String::from_utf8_lossy(&out.stdout).trim().is_empty(),
            "{cap} leaked"
        );
    }
}

/// Answers every command with the same bytes.
struct Scripted(Vec<u8>);

impl Transport for Scripted {
    fn transact(&mut self, _command: &[u8]) -> Result<Vec<u8>, TpmError> {
        Ok(self.0.clone())
    }
    fn address(&self) -> String {
        "scripted".into()
    }
}

fn header(tag: u16, size: u32, rc: u32) -> Vec<u8> {
    let mut v = tag.to_be_bytes().to_vec();
    v.extend_from_slice(&size.to_be_bytes());
    v.extend_from_slice(&rc.to_be_bytes());
    v
}

fn scripted_error(answer: Vec<u8>) -> SealError {
    let mut tpm = Tpm::new(Box::new(Scripted(answer)));
    let settings = TpmSettings {
        factor: Some(bootstrap_agent_tests::swtpm::TEST_FACTOR.parse().unwrap()),
        ..TpmSettings::default()
    };
    seal::identity_on(&mut tpm, &settings).expect_err("scripted answer must fail")
}

#[test]
fn scripted_bad_answers_give_clear_errors() {
    let e = scripted_error(header(0x8001, 10, 0x921));
    assert!(
        e.to_string().contains("TPM_RC_LOCKOUT") && e.to_string().contains("lockout"),
        "{e}"
    );
    assert!(e.is_transient(), "lockout expires: {e}");
    assert!(e.hint().is_some_and(|h| h.contains("dictionary-attack")));

    let e = scripted_error(header(0x8001, 10, 0x101));
    assert!(e.to_string().contains("failure mode"), "{e}");
    assert!(!e.is_transient());
    assert!(e.hint().is_some_and(|h| h.contains("power-cycle")));

    let mut short = header(0x8001, 30, 0);
    short.extend_from_slice(&[0, 0]);
    let e = scripted_error(short);
    assert!(
        e.to_string()
            .contains("too short: 12 bytes read, header says 30"),
        "{e}"
    );

    let e = scripted_error(header(0x00C4, 10, 0));
    assert!(e.to_string().contains("tag 0x00C4"), "{e}");

    let mut long = header(0x8001, 10, 0);
    long.extend_from_slice(&[1, 2, 3]);
    let e = scripted_error(long);
    assert!(
        e.to_string()
            .contains("size field says 10 bytes but 13 were read"),
        "{e}"
    );

    let e = scripted_error(vec![0x80]);
    assert!(e.to_string().contains("too short"), "{e}");

    // A successful but empty NV_ReadPublic answer: malformed, not a panic.
    let e = scripted_error(header(0x8001, 10, 0));
    assert!(e.to_string().contains("malformed"), "{e}");

    // A format-1 answer names the parameter.
    let e = scripted_error(header(0x8001, 10, 0x1C4));
    assert!(
        e.to_string().contains("TPM_RC_VALUE (0x1C4, parameter 1)"),
        "{e}"
    );
}
