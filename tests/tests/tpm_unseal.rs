//! Unsealing through the library API against a real swtpm: enrolment, reboot, lock, PCR 7,
//! every way a sealed input can be wrong, foreign NV indexes, the Unix transport, key pinning.
//! (The attacks on the seal are in `tpm_attacks.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::path::Path;
use std::process::Command;

use bootstrap_agent::error::Classify;
use bootstrap_agent::seal::{self, SealError, SealedInput, TpmSettings, Unsealed};
use bootstrap_agent::tpm::seed::SeedError;
use bootstrap_agent_tests::swtpm::Swtpm;

fn swtpm() -> Swtpm {
    Swtpm::start().expect("start swtpm")
}

/// `age-keygen -o DIR/NAME`; returns (key file contents, public key).
fn keygen(dir: &Path, name: &str) -> (String, String) {
    let path = dir.join(name);
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(&path)
        .output()
        .expect("run age-keygen");
    assert!(
        out.status.success(),
        "age-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = std::fs::read_to_string(&path).expect("read key");
    let public = key
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("public key line")
        .to_string();
    (key, public)
}

/// `age -a -r RECIPIENT` of a file; returns the armor.
fn age_encrypt(recipient: &str, plaintext: &Path) -> String {
    let out = Command::new("age")
        .args(["-a", "-r", recipient])
        .arg(plaintext)
        .output()
        .expect("run age");
    assert!(
        out.status.success(),
        "age: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("armor is text")
}

fn input(label: &str, armor: String) -> SealedInput {
    SealedInput {
        label: label.into(),
        armor,
        expect_age_identity: true,
    }
}

fn unseal_err(settings: &TpmSettings, inputs: &[SealedInput]) -> SealError {
    match seal::unseal(settings, inputs) {
        Err(e) => e,
        Ok(o) => panic!("expected an error, got {o:?}"),
    }
}

/// PCR 15 (the lock) still at its reset value, as tpm2_pcrread reports it.
fn lock_pcr_is_zero(tpm: &Swtpm) -> bool {
    let out = tpm
        .tpm2("tpm2_pcrread", &["sha256:15"])
        .expect("tpm2_pcrread");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).contains(&format!("0x{}", "0".repeat(64)))
}

/// No transient object or session may be left behind (swtpm has no resource manager).
fn assert_no_leaked_handles(tpm: &Swtpm) {
    for cap in [
        "handles-transient",
        "handles-loaded-session",
        "handles-saved-session",
    ] {
        let out = tpm.tpm2("tpm2_getcap", &[cap]).expect("tpm2_getcap");
        assert!(
            out.status.success(),
            "tpm2_getcap {cap}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.trim().is_empty(), "{cap} left behind: {text}");
    }
}

#[test]
fn first_boot_enrols_and_locks_then_the_next_boot_unseals_and_locks() {
    let tpm = swtpm();
    let mut settings = tpm.settings();
    let (key, public) = keygen(tpm.scratch(), "key.txt");

    // First boot: not enrolled → enrolled, nothing to decrypt yet, and the seed locked.
    let first = seal::unseal(&settings, &[]).expect("unseal on a fresh TPM");
    assert!(first.enrolled);
    assert!(first.secrets.is_empty());
    let recipient = first.recipient.clone();
    assert!(recipient.starts_with("age1"));
    assert_eq!(
        first.command(),
        format!("age -a -r {recipient} -o sops-age.tpm.age .age-key.txt")
    );
    assert_eq!(first.salt_key_name.len(), 68, "{}", first.salt_key_name);
    assert!(
        matches!(
            seal::recipient(&settings),
            Err(SealError::Seed(SeedError::Locked { pcr: 15 }))
        ),
        "the waiting path locks the seed"
    );
    assert_eq!(tpm.attacker_read_seed(), None);

    // Next boot: the operator has sealed the key to the recipient and pinned it.
    tpm.reboot().expect("reboot");
    assert_eq!(seal::recipient(&settings).expect("recipient"), recipient);
    assert_eq!(
        seal::enroll(&settings).expect("enroll again"),
        recipient,
        "enrolment is idempotent"
    );
    let armor = age_encrypt(&recipient, &tpm.scratch().join("key.txt"));
    let inputs = [input("flux-system/sops-age", armor)];
    settings.recipient = Some(recipient.clone());
    let unsealed: Unsealed = seal::unseal(&settings, &inputs).expect("unseal");
    assert!(!unsealed.enrolled);
    let secrets = unsealed.secrets;
    assert_eq!(secrets.len(), 1);
    assert_eq!(secrets[0].label, "flux-system/sops-age");
    assert_eq!(&secrets[0].value[..], key.as_bytes());
    assert_eq!(
        seal::age_identities(&secrets[0].value).expect("identity"),
        vec![public]
    );
    assert!(
        !format!("{:?}", secrets[0]).contains("AGE-SECRET-KEY"),
        "Debug must redact"
    );

    // Locked by the same call: nothing can read the seed until the next boot.
    let e = unseal_err(&settings, &inputs);
    assert!(
        matches!(e, SealError::Seed(SeedError::Locked { pcr: 15 })),
        "{e}"
    );
    assert!(e.to_string().contains("locked until next boot"), "{e}");
    assert!(!e.is_transient());
    assert_eq!(tpm.attacker_read_seed(), None);

    // Reboot: PCRs reset, NV kept; the agent sends Startup(CLEAR) itself.
    tpm.reboot().expect("reboot");
    let again = seal::unseal(&settings, &inputs).expect("unseal after reboot");
    assert_eq!(&again.secrets[0].value[..], key.as_bytes());
    assert_no_leaked_handles(&tpm);
}

#[test]
fn enrolment_after_the_lock_is_refused_and_leaves_nothing_behind() {
    let tpm = swtpm();
    let settings = tpm.settings();
    seal::lock(&settings).expect("extend the lock PCR before enrolment");
    let e = seal::enroll(&settings).expect_err("enrol while locked");
    assert!(
        matches!(
            e,
            SealError::Seed(SeedError::LockedBeforeEnrolment { pcr: 15 })
        ),
        "{e}"
    );
    assert!(e.to_string().contains("reboot"), "{e}");
    let public = tpm.tpm2("tpm2_nvreadpublic", &["0x01305EED"]).unwrap();
    assert!(!public.status.success(), "nothing may be defined");
    tpm.reboot().expect("reboot");
    let recipient = seal::enroll(&settings).expect("enrol after reboot");
    assert_eq!(
        seal::recipient(&settings).expect("recipient after enrolment"),
        recipient
    );
    assert_no_leaked_handles(&tpm);
}

#[test]
fn changed_pcr7_is_named_with_what_changes_it() {
    let tpm = swtpm();
    let mut settings = tpm.settings();
    settings.recipient = Some(seal::enroll(&settings).expect("enroll"));
    let out = tpm
        .tpm2(
            "tpm2_pcrextend",
            &[&format!("7:sha256={}", "ab".repeat(32))],
        )
        .expect("tpm2_pcrextend");
    assert!(out.status.success());
    let e = unseal_err(&settings, &[]);
    assert!(
        matches!(e, SealError::Seed(SeedError::PcrMismatch { .. })),
        "{e}"
    );
    let msg = e.to_string();
    for needle in [
        "PCR 7",
        "SecureBoot",
        "PK",
        "KEK",
        "db",
        "dbx",
        "re-enrol",
        "tampered",
    ] {
        assert!(msg.contains(needle), "{needle:?} missing from: {msg}");
    }
    // Nothing to read and the lock extended all the same.
    assert!(
        !lock_pcr_is_zero(&tpm),
        "the failed unseal must extend the lock PCR"
    );
    assert_no_leaked_handles(&tpm);
}

#[test]
fn bad_sealed_inputs_get_distinct_errors_naming_the_input() {
    let tpm = swtpm();
    let mut settings = tpm.settings();
    let recipient = seal::enroll(&settings).expect("enroll");
    settings.recipient = Some(recipient.clone());
    let dir = tpm.scratch();
    keygen(dir, "key.txt");
    let (_, other_recipient) = keygen(dir, "other.txt");
    std::fs::write(dir.join("note.txt"), "not a key, just a note\n").expect("write note");

    let good = age_encrypt(&recipient, &dir.join("key.txt"));

    // Wrong recipient. (Every unseal locks the seed: a reboot before each.)
    let wrong = age_encrypt(&other_recipient, &dir.join("key.txt"));
    let e = unseal_err(&settings, &[input("flux-system/sops-age", wrong)]);
    assert!(matches!(e, SealError::WrongRecipient { .. }), "{e}");
    assert!(e.to_string().contains("flux-system/sops-age"), "{e}");
    assert!(e.to_string().contains(&recipient), "{e}");

    // Corrupted: one base64 character of the payload changed (still valid armor).
    let mut lines: Vec<String> = good.lines().map(str::to_string).collect();
    let idx = lines.len() - 2; // last base64 line, part of the payload
    let flipped: String = {
        let mut chars: Vec<char> = lines[idx].chars().collect();
        chars[0] = if chars[0] == 'A' { 'B' } else { 'A' };
        chars.into_iter().collect()
    };
    lines[idx] = flipped;
    let corrupted = lines.join("\n") + "\n";
    tpm.reboot().unwrap();
    let e = unseal_err(&settings, &[input("corrupt-one", corrupted)]);
    assert!(matches!(e, SealError::Corrupted { .. }), "{e}");
    assert!(e.to_string().contains("corrupt-one"), "{e}");

    // Truncated: the file cut short (the end marker and the last part of the payload missing).
    let cut = &good[..good.len() * 2 / 3];
    tpm.reboot().unwrap();
    let e = unseal_err(&settings, &[input("cut-one", cut.to_string())]);
    assert!(matches!(e, SealError::Truncated { .. }), "{e}");
    assert!(e.to_string().contains("cut-one"), "{e}");

    // Decrypts, but is not an age identity.
    let note = age_encrypt(&recipient, &dir.join("note.txt"));
    tpm.reboot().unwrap();
    let e = unseal_err(&settings, &[input("flux-system/sops-age", note.clone())]);
    assert!(matches!(e, SealError::NotAnIdentity { .. }), "{e}");
    assert!(
        !e.to_string().contains("just a note"),
        "content must not leak: {e}"
    );
    // The same input is fine where any content is expected (e.g. a deploy key).
    tpm.reboot().unwrap();
    let ok = seal::unseal(
        &settings,
        &[SealedInput {
            label: "git/deploy-key".into(),
            armor: note,
            expect_age_identity: false,
        }],
    )
    .expect("non-identity input")
    .secrets;
    assert_eq!(&ok[0].value[..], b"not a key, just a note\n");

    assert_no_leaked_handles(&tpm);
}

#[test]
fn foreign_nv_index_is_refused_and_left_untouched() {
    let tpm = swtpm();
    let settings = tpm.settings();
    let index = format!("0x{:08X}", seal::DEFAULT_NV_INDEX);
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    ok(tpm
        .tpm2(
            "tpm2_nvdefine",
            &[&index, "-C", "o", "-s", "32", "-a", "ownerread|ownerwrite"],
        )
        .expect("tpm2_nvdefine"));
    std::fs::write(tpm.scratch().join("data"), [0x5Au8; 32]).expect("write data");
    ok(tpm
        .tpm2("tpm2_nvwrite", &[&index, "-C", "o", "-i", "data"])
        .expect("tpm2_nvwrite"));
    let before = ok(tpm
        .tpm2("tpm2_nvreadpublic", &[&index])
        .expect("nvreadpublic"))
    .stdout;

    // (`unseal` last: it extends the lock PCR.)
    for e in [
        seal::enroll(&settings).expect_err("enrol over a foreign index"),
        seal::recipient(&settings).expect_err("recipient of a foreign index"),
        unseal_err(&settings, &[]),
    ] {
        assert!(
            matches!(e, SealError::Seed(SeedError::Foreign { .. })),
            "{e}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("0x01305EED") && msg.contains("untouched") && msg.contains("attributes"),
            "{msg}"
        );
    }
    let after = ok(tpm
        .tpm2("tpm2_nvreadpublic", &[&index])
        .expect("nvreadpublic"))
    .stdout;
    assert_eq!(before, after, "the foreign index's public area changed");
    let data = ok(tpm
        .tpm2("tpm2_nvread", &[&index, "-C", "o", "-s", "32"])
        .expect("tpm2_nvread"))
    .stdout;
    assert_eq!(data, vec![0x5Au8; 32], "the foreign index's data changed");
    assert_no_leaked_handles(&tpm);
}

#[test]
fn unix_socket_transport_works() {
    let tpm = Swtpm::start_unix().expect("start swtpm on a Unix socket");
    let settings = tpm.settings();
    assert!(settings.address.to_string().starts_with("unix:///"));
    let r = seal::enroll(&settings).expect("enroll over a Unix socket");
    assert_eq!(seal::recipient(&settings).expect("recipient"), r);
}

#[test]
fn pinned_salt_key_name_is_enforced() {
    let tpm = swtpm();
    let mut settings = tpm.settings();
    let mut t = bootstrap_agent::tpm::Tpm::new(
        bootstrap_agent::tpm::transport::open(&settings.address).expect("open"),
    );
    let enrolled = seal::enroll_on(&mut t, &settings).expect("enroll");
    drop(t);
    // Pinned: the socket is acceptable without the test-only opt-out.
    settings.insecure_transport = false;
    settings.salt_key_name = Some(enrolled.salt_key_name.clone());
    assert_eq!(
        seal::recipient(&settings).expect("pinned recipient"),
        enrolled.recipient
    );
    // Same name every time: the key comes from a fixed template.
    let mut wrong = enrolled.salt_key_name.clone();
    wrong.replace_range(10..12, if &wrong[10..12] == "00" { "11" } else { "00" });
    settings.salt_key_name = Some(wrong);
    let e = seal::recipient(&settings).expect_err("a different salt key must be refused");
    assert!(e.to_string().contains("salt key"), "{e}");
    assert!(e.hint().is_some());
    assert_no_leaked_handles(&tpm);
}

#[test]
fn missing_tpm_is_a_clear_transient_error() {
    let settings = TpmSettings {
        factor: Some(bootstrap_agent_tests::swtpm::TEST_FACTOR.parse().unwrap()),
        ..TpmSettings::at("/nonexistent/tpmrm0").unwrap()
    };
    let e = seal::unseal(&settings, &[]).expect_err("no device");
    assert!(e.to_string().contains("/nonexistent/tpmrm0"), "{e}");
    assert!(e.is_transient());
    assert!(e.hint().is_some_and(|h| h.contains("TPM 2.0")));
    let bad = TpmSettings::at("tpm0").expect_err("not an address");
    assert!(bad.fix.contains("tcp://"), "{bad}");
}

/// Defines the agent's index with tpm2-tools, as an enrolment interrupted after NV_DefineSpace
/// would have left it, with a PolicyPCR(sha256:7,15) policy over `pcr_values` (64 bytes).
fn define_like_ours(tpm: &Swtpm, pcr_values: &[u8]) {
    std::fs::write(tpm.scratch().join("values.bin"), pcr_values).unwrap();
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(tpm
        .tpm2(
            "tpm2_createpolicy",
            &[
                "--policy-pcr",
                "-l",
                "sha256:7,15",
                "-f",
                "values.bin",
                "-L",
                "policy.bin",
            ],
        )
        .unwrap());
    // tpm2_createpolicy leaves its trial session loaded (no resource manager in front of swtpm).
    ok(tpm
        .tpm2("tpm2_flushcontext", &["--loaded-session"])
        .unwrap());
    ok(tpm
        .tpm2(
            "tpm2_nvdefine",
            &[
                "0x01305EED",
                "-C",
                "o",
                "-s",
                "32",
                "-a",
                "policywrite|writeall|writedefine|policyread|no_da",
                "-L",
                "policy.bin",
            ],
        )
        .unwrap());
}

#[test]
fn interrupted_enrolment_is_completed() {
    let tpm = swtpm();
    let settings = tpm.settings();
    // Fresh swtpm: PCR 7 and 15 are zero.
    define_like_ours(&tpm, &[0u8; 64]);
    let recipient = seal::enroll(&settings).expect("complete the enrolment");
    assert_eq!(seal::recipient(&settings).expect("recipient"), recipient);
    let public = tpm.tpm2("tpm2_nvreadpublic", &["0x01305EED"]).unwrap();
    let public = String::from_utf8_lossy(&public.stdout);
    assert!(
        public.contains("writelocked") && public.contains("written"),
        "{public}"
    );
    assert_no_leaked_handles(&tpm);
}

#[test]
fn unwritten_index_with_another_policy_is_refused() {
    let tpm = swtpm();
    let settings = tpm.settings();
    define_like_ours(&tpm, &[0x42u8; 64]);
    let e = seal::enroll(&settings).expect_err("another policy");
    assert!(
        matches!(e, SealError::Seed(SeedError::Foreign { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("never written"), "{e}");
    let public = tpm.tpm2("tpm2_nvreadpublic", &["0x01305EED"]).unwrap();
    assert!(
        !String::from_utf8_lossy(&public.stdout).contains("written"),
        "index was written"
    );
}
