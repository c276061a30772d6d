//! Security of the whole run: no secret bytes in the agent's log, its status file or any file
//! it wrote; the seed unreadable (tpm2-tools as the attacker) after every way a run ends:
//! success, waiting, permanent failure, SIGTERM and SIGKILL mid-run; a second unseal in the
//! same boot refused, and the decrypted inputs kept across a transient failure instead.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use bootstrap_agent::plan::StepId;
use bootstrap_agent::status::{Phase, StepState};
use bootstrap_agent_tests::node::{Node, NodeOptions, key_line};
use bootstrap_agent_tests::swtpm::TEST_FACTOR;

const RUN: Duration = Duration::from_secs(90);

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Every form in which a secret could leak: the identity line, the whole key file, their
/// base64 (standard and URL-safe, as a Secret's data holds it), the bare bech32 payload, and
/// any age identity at all (the TPM-derived identity is an `AGE-SECRET-KEY-1` string too).
fn needles(key_file: &str) -> Vec<(String, Vec<u8>)> {
    let line = key_line(key_file);
    let b64 = base64::engine::general_purpose::STANDARD;
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut n = vec![
        ("key line".to_string(), line.clone().into_bytes()),
        (
            "key line, lower case".to_string(),
            line.to_lowercase().into_bytes(),
        ),
        (
            "key payload".to_string(),
            line.as_bytes()["AGE-SECRET-KEY-1".len()..].to_vec(),
        ),
        (
            "key file base64".to_string(),
            b64.encode(key_file).into_bytes(),
        ),
        (
            "key line base64".to_string(),
            b64.encode(&line).into_bytes(),
        ),
        (
            "key line base64url".to_string(),
            url.encode(&line).into_bytes(),
        ),
        ("any age identity".to_string(), b"AGE-SECRET-KEY-1".to_vec()),
        (
            "any age identity, lower case".to_string(),
            b"age-secret-key-1".to_vec(),
        ),
    ];
    // base64 at the other two alignments, as it would appear inside a longer encoded blob.
    for pad in 1..3 {
        let s = format!("{}{key_file}", "x".repeat(pad));
        let enc = b64.encode(s);
        // From the second 3-byte group on, every character comes from the key file alone.
        n.push((
            format!("key file base64 +{pad}"),
            enc.as_bytes()[4..enc.len() - 4].to_vec(),
        ));
    }
    n
}

fn find(haystack: &[u8], needle: &[u8]) -> bool {
    needle.len() <= haystack.len() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_logs_status_or_files_lock_extended_second_unseal_refused() {
    let node = Node::start(NodeOptions::default()).await;
    let zero = "0".repeat(64);
    assert_eq!(node.pcr(15), zero, "the lock PCR starts at zero");
    let (sealed, waiting, ready) = node.first_boot(RUN).await;
    assert_eq!(node.status().unwrap().phase, Phase::Ready);
    // The cluster does hold the key: the needles are right.
    let secret = node
        .kube
        .get(&bootstrap_agent_tests::kubeapi::ObjectRef::new(
            "",
            "secrets",
            "flux-system",
            "sops-age",
        ))
        .await
        .unwrap();
    let stored = secret["data"]["age.agekey"].as_str().unwrap();
    assert_eq!(
        stored,
        base64::engine::general_purpose::STANDARD.encode(&sealed.key_file)
    );

    let needles = needles(&sealed.key_file);
    let mut places: Vec<(String, Vec<u8>)> = vec![
        (
            "log of the waiting run".into(),
            waiting.log.clone().into_bytes(),
        ),
        (
            "log of the ready run".into(),
            ready.log.clone().into_bytes(),
        ),
    ];
    // Everything on the node's host root (the status file and anything else the agent wrote;
    // the configuration holds only the sealed armor).
    let mut files = Vec::new();
    files_under(node.root(), &mut files);
    assert!(files.contains(&node.status_path()));
    // The agent writes its status and nothing else (no kubeconfig, no key, no temp files).
    let written: Vec<&PathBuf> = files
        .iter()
        .filter(|f| {
            **f != node.config_path()
                && **f != node.status_path()
                && !f.starts_with(node.efivars_dir())
        })
        .collect();
    assert!(
        written.is_empty(),
        "unexpected files on the node: {written:?}"
    );
    for f in files {
        places.push((f.display().to_string(), std::fs::read(&f).unwrap()));
    }
    // The status as an operator reads it.
    places.push(("status output".into(), node.status_command(&[]).stdout));
    places.push((
        "status --json output".into(),
        node.status_command(&["--json"]).stdout,
    ));
    for (place, bytes) in &places {
        for (what, needle) in &needles {
            assert!(!find(bytes, needle), "{what} found in {place}");
        }
    }
    // The logs are real logs: they say what happened; the factor is never in them.
    assert!(ready.log.contains("lock PCR extended"), "{}", ready.log);
    let config = node.config_path().display().to_string();
    for (place, bytes) in places.iter().filter(|(p, _)| *p != config) {
        assert!(
            !find(bytes, TEST_FACTOR.as_bytes()),
            "the key factor found in {place}"
        );
    }

    // The lock PCR was extended after success.
    assert_ne!(
        node.pcr(15),
        zero,
        "PCR 15 must be extended after the secrets are in place"
    );

    assert_eq!(node.tpm.attacker_read_seed(), None);

    // A second unseal in the same boot fails, naming the lock.
    let sealed_file = node.work().join("sops-age.tpm.age");
    std::fs::write(&sealed_file, &sealed.armor).unwrap();
    let factor = node.tpm.factor_file().display().to_string();
    let check_args = [
        "tpm",
        "check",
        "--tpm",
        &node.tpm.address(),
        "--salt-key-name",
        &sealed.salt_key_name,
        "--recipient",
        &sealed.recipient,
        "--factor-file",
        &factor,
        "--sealed",
        &sealed_file.display().to_string(),
    ];
    let check = node.agent(&check_args);
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(!check.status.success(), "unseal after the lock must fail");
    assert!(err.contains("locked"), "{err}");
    assert!(!find(&check.stdout, key_line(&sealed.key_file).as_bytes()));

    // After a reboot the same check works again (the lock resets with the PCRs).
    node.reboot();
    let check = node.agent(&check_args);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

/// Waits until step `step` is running (or retrying) in the status file.
async fn wait_running(node: &Node, step: StepId) {
    node.wait_status(RUN, &format!("{step} running"), |s| {
        s.step(step)
            .is_some_and(|r| matches!(r.state, StepState::Running | StepState::Retrying))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_is_unreadable_after_every_way_a_run_ends() {
    let node = Node::start(NodeOptions::default()).await;
    let locked = |what: &str| {
        assert_eq!(
            node.tpm.attacker_read_seed(),
            None,
            "the attacker read the seed after: {what}"
        );
    };

    // Waiting (first boot): enrolled, locked, waiting for the operator.
    node.write_config(None);
    let waiting = node.service();
    let enrolment = node.wait_for_enrolment(RUN).await;
    locked("the waiting path");
    waiting.stop().await;
    locked("SIGTERM while waiting");
    let sealed = node.seal_to(&enrolment);
    node.write_config(Some(&sealed));

    // SIGTERM mid-run: unsealed, the API server not up yet.
    node.reboot();
    assert!(
        node.tpm.attacker_read_seed().is_some(),
        "the attacker's read works before the agent"
    );
    node.kube.kill_apiserver();
    let service = node.service();
    wait_running(&node, StepId::KubeApi).await;
    locked("the unseal step, while the run goes on");
    service.stop().await;
    locked("SIGTERM after the unseal");

    // A new process in the same boot: the seed is locked and sops-age is not in the cluster.
    node.kube.start_apiserver().await;
    let (service, status) = node.service_until_failed(RUN).await;
    let err = status.last_error.unwrap();
    assert_eq!(err.step, StepId::Secrets);
    assert!(err.hint.unwrap_or_default().contains("reboot the node"));
    service.stop().await;
    locked("a permanent failure");

    // SIGKILL mid-run, then Talos's restart: the same permanent failure, and locked.
    node.reboot();
    node.kube.kill_apiserver();
    let runs = node.status().unwrap().runs;
    let service = node.service();
    wait_running(&node, StepId::KubeApi).await;
    service.kill9();
    node.kube.start_apiserver().await;
    node.wait_status(RUN, "failed after the restart", |s| {
        s.phase == Phase::Failed && s.runs >= runs + 2
    })
    .await;
    service.stop().await;
    locked("SIGKILL after the unseal");

    // Flux's terminal failure after everything was created.
    node.reboot();
    node.controllers
        .fail_kustomization("BuildFailed", "kustomize build failed");
    let (service, status) = node.service_until_failed(RUN).await;
    assert_eq!(status.last_error.unwrap().step, StepId::Ready);
    service.stop().await;
    locked("a permanent failure in the last step");
    assert_eq!(node.sops_age().await.unwrap(), sealed.key_file.as_bytes());

    // Success.
    node.reboot();
    node.controllers.succeed_kustomization();
    let ready = node.service().wait(RUN).await;
    assert_eq!(ready.last().unwrap().code, Some(0), "{}", ready.log);
    locked("success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_after_the_unseal_keeps_the_plaintext_and_runs_again_in_process() {
    let node = Node::start(NodeOptions::default()).await;
    let sealed = node.enrol_and_seal();
    let text = std::fs::read_to_string(node.config_path()).unwrap();
    node.write_config_text(&format!("{text}deadlines:\n  kubeApi: 3s\n"));
    // The API server is down longer than kube-api's deadline: the run fails transiently. A
    // new process could not unseal again (locked), so this one keeps what it decrypted.
    node.kube.kill_apiserver();
    let service = node.service();
    node.wait_status(RUN, "a second run after the transient failure", |s| {
        s.runs >= 2
    })
    .await;
    assert!(
        service.exits().is_empty(),
        "the agent exited: {:?}",
        service.exits()
    );
    assert!(
        service
            .log()
            .contains("keeping the unsealed inputs in memory"),
        "{}",
        service.log()
    );
    assert_eq!(node.tpm.attacker_read_seed(), None);
    node.kube.start_apiserver().await;
    let report = service.wait(RUN).await;
    assert_eq!(
        report.exits.iter().map(|e| e.code).collect::<Vec<_>>(),
        [Some(0)],
        "{}",
        report.log
    );
    assert_eq!(node.sops_age().await.unwrap(), sealed.key_file.as_bytes());
    assert_eq!(node.status().unwrap().phase, Phase::Ready);
}
