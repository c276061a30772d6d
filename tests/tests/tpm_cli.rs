//! The `bootstrap-agent tpm` commands as an operator runs them, against a real swtpm, with the
//! real `age` CLI for the operator side and tpm2-tools cross-checking what the agent defined.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::path::Path;
use std::process::{Command, Output};

use bootstrap_agent_tests::swtpm::{Swtpm, agent_binary};

fn agent(args: &[&str]) -> Output {
    let bin = agent_binary().expect("locate bootstrap-agent");
    Command::new(bin)
        .args(args)
        .output()
        .expect("run bootstrap-agent")
}

/// `bootstrap-agent tpm COMMAND` against `tpm` as the tests use it: a simulator socket without
/// a pinned salt key (`--insecure-transport`), the test key factor, fake efivars with SecureBoot
/// on in user mode, and `extra` options.
fn tpm_cmd(tpm: &Swtpm, command: &str, extra: &[&str]) -> Output {
    let factor = tpm.factor_file();
    let efivars = tpm.efivars(true, false);
    let mut args = vec![
        "tpm".to_string(),
        command.to_string(),
        "--tpm".into(),
        tpm.address(),
        "--insecure-transport".into(),
        "--factor-file".into(),
        factor.display().to_string(),
        "--efivars".into(),
        efivars.display().to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    agent(&refs)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn ok(o: Output) -> Output {
    assert!(
        o.status.success(),
        "failed ({:?}): {}",
        o.status,
        stderr(&o)
    );
    o
}

fn age_keygen(path: &Path) -> String {
    ok(Command::new("age-keygen")
        .arg("-o")
        .arg(path)
        .output()
        .expect("age-keygen"));
    std::fs::read_to_string(path)
        .expect("read key")
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("public key line")
        .to_string()
}

/// Value of a `key: value` line in tpm2_nvreadpublic's YAML output.
fn field(yaml: &str, key: &str) -> String {
    yaml.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("{key} missing from {yaml}"))
        .trim()
        .to_string()
}

#[test]
fn enroll_encrypt_with_age_then_check_proves_the_key() {
    let tpm = Swtpm::start().expect("start swtpm");
    let addr = tpm.address();
    let dir = tpm.scratch();

    // As the firmware would: PCR 7 holds a SecureBoot measurement before the agent runs.
    ok(tpm
        .tpm2(
            "tpm2_pcrextend",
            &[&format!("7:sha256={}", "c7".repeat(32))],
        )
        .unwrap());

    let enrolled = ok(tpm_cmd(&tpm, "enroll", &[]));
    let recipient = stdout(&enrolled);
    assert!(
        recipient.starts_with("age1") && !recipient.contains('\n'),
        "{recipient}"
    );
    assert!(stderr(&enrolled).contains(&format!("age -a -r {recipient} -o sops-age.tpm.age")));
    // The salt key name to pin, and where it goes.
    let salt_key_name = stderr(&enrolled)
        .lines()
        .find_map(|l| l.strip_prefix("salt key name: "))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no salt key name in:\n{}", stderr(&enrolled)));
    assert!(
        salt_key_name.len() == 68 && salt_key_name.starts_with("000b"),
        "{salt_key_name}"
    );
    assert!(
        stderr(&enrolled).contains("tpm_salt_key_name"),
        "{}",
        stderr(&enrolled)
    );

    // tpm2-tools: the index has exactly our attributes and a PolicyPCR(sha256:7,15) digest
    // over PCR 7's current value and PCR 15's reset value (zeros).
    let public = stdout(&ok(tpm.tpm2("tpm2_nvreadpublic", &["0x01305EED"]).unwrap()));
    assert_eq!(field(&public, "value"), "0xB", "name algorithm SHA-256");
    assert_eq!(
        field(&public, "friendly")
            .lines()
            .last()
            .unwrap_or_default(),
        "sha256"
    );
    assert!(
        public.contains("policywrite|writelocked|writeall|writedefine|policyread|no_da|written"),
        "{public}"
    );
    assert!(public.contains("value: 0x22083808"), "{public}");
    assert_eq!(field(&public, "size"), "32");
    ok(tpm
        .tpm2("tpm2_pcrread", &["sha256:7", "-o", "pcr7.bin"])
        .unwrap());
    let mut values = std::fs::read(dir.join("pcr7.bin")).unwrap();
    assert_eq!(values.len(), 32);
    values.extend_from_slice(&[0u8; 32]);
    std::fs::write(dir.join("expected.bin"), &values).unwrap();
    ok(tpm
        .tpm2(
            "tpm2_createpolicy",
            &[
                "--policy-pcr",
                "-l",
                "sha256:7,15",
                "-f",
                "expected.bin",
                "-L",
                "policy.bin",
            ],
        )
        .unwrap());
    let policy = hex::encode_upper(std::fs::read(dir.join("policy.bin")).unwrap());
    assert_eq!(field(&public, "authorization policy"), policy);

    // Write-locked for good: not even the owner can overwrite it; the owner cannot read it.
    std::fs::write(dir.join("zeros"), [0u8; 32]).unwrap();
    let overwrite = tpm
        .tpm2("tpm2_nvwrite", &["0x01305EED", "-C", "o", "-i", "zeros"])
        .unwrap();
    assert!(
        !overwrite.status.success(),
        "owner could overwrite the seed"
    );
    let owner_read = tpm
        .tpm2("tpm2_nvread", &["0x01305EED", "-C", "o", "-s", "32"])
        .unwrap();
    assert!(!owner_read.status.success(), "owner could read the seed");

    // Operator side: the real age CLI encrypts a generated key to the printed recipient.
    let public_key = age_keygen(&dir.join("age-key.txt"));
    ok(Command::new("age")
        .args(["-a", "-r", &recipient, "-o"])
        .arg(dir.join("sops-age.tpm.age"))
        .arg(dir.join("age-key.txt"))
        .output()
        .unwrap());
    let sealed = dir.join("sops-age.tpm.age");
    let sealed = sealed.to_str().unwrap();
    let checked = ok(tpm_cmd(&tpm, "check", &["--sealed", sealed]));
    assert_eq!(
        stdout(&checked),
        public_key,
        "check must print the public key only"
    );
    assert!(!String::from_utf8_lossy(&checked.stdout).contains("AGE-SECRET-KEY"));
    assert!(!stderr(&checked).contains("AGE-SECRET-KEY"));

    // Recipient (read-only) and a second enrolment agree.
    assert_eq!(stdout(&ok(tpm_cmd(&tpm, "recipient", &[]))), recipient);
    // Pinned: the same salt key, without the simulator opt-out.
    let pinned = ok(agent(&[
        "tpm",
        "recipient",
        "--tpm",
        &addr,
        "--salt-key-name",
        &salt_key_name,
        "--recipient",
        &recipient,
        "--factor-file",
        &tpm.factor_file().display().to_string(),
    ]));
    assert_eq!(stdout(&pinned), recipient);
    let again = ok(tpm_cmd(&tpm, "enroll", &[]));
    assert_eq!(stdout(&again), recipient);
    assert!(stderr(&again).contains("already enrolled"));
    let public_after = stdout(&ok(tpm.tpm2("tpm2_nvreadpublic", &["0x01305EED"]).unwrap()));
    assert_eq!(public, public_after, "a second enrolment changed the index");
}

#[test]
fn check_failures_exit_non_zero_with_a_reason() {
    let tpm = Swtpm::start().expect("start swtpm");
    let dir = tpm.scratch();

    // Not enrolled: recipient is read-only and says what to do.
    let r = tpm_cmd(&tpm, "recipient", &[]);
    assert_eq!(r.status.code(), Some(3), "{}", stderr(&r));
    assert!(stderr(&r).contains("tpm enroll"), "{}", stderr(&r));

    ok(tpm_cmd(&tpm, "enroll", &[]));
    let other = age_keygen(&dir.join("other.txt"));
    age_keygen(&dir.join("key.txt"));
    ok(Command::new("age")
        .args(["-a", "-r", &other, "-o"])
        .arg(dir.join("wrong.age"))
        .arg(dir.join("key.txt"))
        .output()
        .unwrap());
    let wrong = dir.join("wrong.age");
    let c = tpm_cmd(&tpm, "check", &["--sealed", wrong.to_str().unwrap()]);
    assert_eq!(c.status.code(), Some(3));
    assert!(
        stderr(&c).contains("wrong.age") && stderr(&c).contains("not encrypted to this TPM"),
        "{}",
        stderr(&c)
    );
    assert!(stdout(&c).is_empty());

    let missing = dir.join("missing.age");
    let c = tpm_cmd(&tpm, "check", &["--sealed", missing.to_str().unwrap()]);
    assert_eq!(c.status.code(), Some(2));
    assert!(stderr(&c).contains("missing.age"), "{}", stderr(&c));

    // The lock is visible from the CLI too.
    ok(tpm
        .tpm2(
            "tpm2_pcrextend",
            &[&format!("15:sha256={}", "01".repeat(32))],
        )
        .unwrap());
    let c = tpm_cmd(&tpm, "recipient", &[]);
    assert_eq!(c.status.code(), Some(3));
    assert!(
        stderr(&c).contains("locked until next boot"),
        "{}",
        stderr(&c)
    );

    // No TPM at all: transient, with a hint.
    let factor = tpm.factor_file().display().to_string();
    let c = agent(&[
        "tpm",
        "recipient",
        "--tpm",
        "tcp://127.0.0.1:1",
        "--insecure-transport",
        "--factor-file",
        &factor,
    ]);
    assert_eq!(c.status.code(), Some(1), "{}", stderr(&c));
    assert!(stderr(&c).contains("hint:"), "{}", stderr(&c));
}

#[test]
fn options_choose_index_and_pcrs() {
    let tpm = Swtpm::start().expect("start swtpm");
    let dir = tpm.scratch();
    let opts = ["--nv-index", "0x01000123", "--pcrs", "0,7"];
    let enrolled = ok(tpm_cmd(&tpm, "enroll", &opts));
    let recipient = stdout(&enrolled);
    assert_eq!(stdout(&ok(tpm_cmd(&tpm, "recipient", &opts))), recipient);
    // The default index was not touched; the chosen one carries PolicyPCR(sha256:0,7,15).
    let default = tpm.tpm2("tpm2_nvreadpublic", &["0x01305EED"]).unwrap();
    assert!(!default.status.success(), "default index defined");
    let public = stdout(&ok(tpm.tpm2("tpm2_nvreadpublic", &["0x01000123"]).unwrap()));
    std::fs::write(dir.join("zeros.bin"), [0u8; 96]).unwrap();
    ok(tpm
        .tpm2(
            "tpm2_createpolicy",
            &[
                "--policy-pcr",
                "-l",
                "sha256:0,7,15",
                "-f",
                "zeros.bin",
                "-L",
                "p.bin",
            ],
        )
        .unwrap());
    let policy = hex::encode_upper(std::fs::read(dir.join("p.bin")).unwrap());
    assert_eq!(field(&public, "authorization policy"), policy);

    // The lock PCR cannot also be a policy PCR: a configuration error (exit 2).
    let bad = tpm_cmd(&tpm, "enroll", &["--pcrs", "7,15"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("lock PCR 15"), "{}", stderr(&bad));
}

#[test]
fn the_cli_refuses_what_the_configuration_refuses() {
    let tpm = Swtpm::start().expect("start swtpm");
    // Lock PCRs Talos extends (11) or any process can reset (16, 23).
    for (pcr, why) in [("11", "Talos"), ("16", "reset"), ("23", "reset")] {
        let out = tpm_cmd(&tpm, "enroll", &["--lock-pcr", pcr]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "--lock-pcr {pcr}: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains("--lock-pcr") && stderr(&out).contains(why),
            "--lock-pcr {pcr}: {}",
            stderr(&out)
        );
    }
    // A simulator socket without a pinned salt key, and without the opt-out.
    let factor = tpm.factor_file().display().to_string();
    let out = agent(&[
        "tpm",
        "enroll",
        "--tpm",
        &tpm.address(),
        "--factor-file",
        &factor,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--salt-key-name") && stderr(&out).contains("--insecure-transport"),
        "{}",
        stderr(&out)
    );
    // No key factor.
    let out = agent(&[
        "tpm",
        "enroll",
        "--tpm",
        &tpm.address(),
        "--insecure-transport",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--factor-file"), "{}", stderr(&out));
    // Nothing reached the TPM.
    assert!(
        !tpm.tpm2("tpm2_nvreadpublic", &["0x01305EED"])
            .unwrap()
            .status
            .success()
    );
}
