//! Enrol and unseal latency on swtpm (median of repeated runs), printed.
//!
//! `cargo bench -p bootstrap-agent-tests --bench tpm_latency`

#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a failed step aborts the bench

use std::process::Command;
use std::time::{Duration, Instant};

use bootstrap_agent::seal::{self, SealedInput};
use bootstrap_agent_tests::swtpm::Swtpm;

fn stats(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name:<28} n={:<3} median {:>7.2} ms   min {:>7.2} ms   max {:>7.2} ms",
        samples.len(),
        ms(samples[samples.len() / 2]),
        ms(samples[0]),
        ms(samples[samples.len() - 1]),
    );
}

fn main() {
    // Enrolment needs a TPM without the index: a fresh swtpm per run (start-up not timed).
    let mut enrol = Vec::new();
    for _ in 0..15 {
        let tpm = Swtpm::start().expect("start swtpm");
        let settings = tpm.settings();
        let t = Instant::now();
        seal::enroll(&settings).expect("enroll");
        enrol.push(t.elapsed());
    }
    stats("enrol (new seed)", enrol);

    let tpm = Swtpm::start().expect("start swtpm");
    let mut settings = tpm.settings();
    let recipient = seal::enroll(&settings).expect("enroll");
    settings.recipient = Some(recipient.clone());
    let key = tpm.scratch().join("key.txt");
    assert!(
        Command::new("age-keygen")
            .arg("-o")
            .arg(&key)
            .output()
            .unwrap()
            .status
            .success()
    );
    let out = Command::new("age")
        .args(["-a", "-r", &recipient])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let inputs = [SealedInput {
        label: "flux-system/sops-age".into(),
        armor: String::from_utf8(out.stdout).unwrap(),
        expect_age_identity: true,
    }];

    let mut recip = Vec::new();
    let mut unseal = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        seal::recipient(&settings).expect("recipient");
        recip.push(t.elapsed());
        let t = Instant::now();
        let unsealed = seal::unseal(&settings, &inputs).expect("unseal");
        assert_eq!(unsealed.secrets.len(), 1);
        unseal.push(t.elapsed());
        // The unseal locked the seed: the next sample needs a fresh boot (not timed).
        tpm.reboot().expect("reboot");
    }
    stats("recipient (seed read)", recip);
    stats("unseal + lock (seed + 1 age file)", unseal);
}
