//! The rehearsal under faults: the Kubernetes API server process down for a minute at boot, machined not ready to bootstrap
//! for a while, Flux's own terminal failure, a changed SecureBoot state (PCR 7) and a corrupted
//! sealed input. Each failure is named precisely in the status and nothing is created that
//! should not be. A failure that a restart would repeat (a bad configuration, a permanent
//! failure) is attempted once: the agent stays up and waits for its configuration to change,
//! while Talos would restart an exited `untilSuccess` service every 5 s.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::time::Duration;

use bootstrap_agent::plan::StepId;
use bootstrap_agent::status::{ErrorKind, Phase, StepState};
use bootstrap_agent_tests::node::{Node, NodeOptions, Sealed, TALOS_RESTART_INTERVAL};

const RUN: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_api_down_for_60s_at_boot_then_converges() {
    let node = Node::start(NodeOptions::default()).await;
    let sealed = node.enrol_and_seal();
    // The API server process is down for a minute while the node boots.
    node.kube.kill_apiserver();
    let service = node.service();
    tokio::time::sleep(Duration::from_secs(60)).await;
    node.kube.start_apiserver().await;
    let report = service.wait(RUN).await;
    assert_eq!(report.last().unwrap().code, Some(0), "{}", report.log);
    let status = node.status().unwrap();
    assert_eq!(status.phase, Phase::Ready, "{}", status.render());
    let kube_api = status.step(StepId::KubeApi).unwrap();
    assert!(kube_api.attempts > 5, "{kube_api:?}");
    assert!(kube_api.duration_ms.unwrap() >= 55_000, "{kube_api:?}");
    assert_eq!(node.sops_age().await.unwrap(), sealed.key_file.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn talos_bootstrap_not_ready_for_30s_then_bootstraps_once() {
    let node = Node::start(NodeOptions::default()).await;
    node.enrol_and_seal();
    // machined answers FailedPrecondition ("not available yet") for 30 s.
    node.talos.set_bootstrap_not_ready(usize::MAX);
    let service = node.service();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let refused = node.talos.bootstrap_calls();
    assert!(!node.talos.is_bootstrapped());
    assert!(refused >= 10, "the agent kept asking: {refused} calls");
    let s = node.status().unwrap();
    let etcd = s.step(StepId::Etcd).unwrap();
    assert_eq!(etcd.state, StepState::Retrying, "{}", s.render());
    assert!(
        etcd.error
            .as_deref()
            .unwrap_or("")
            .contains("not available yet"),
        "{etcd:?}"
    );
    node.talos.set_bootstrap_not_ready(0);
    let report = service.wait(RUN).await;
    assert_eq!(report.last().unwrap().code, Some(0), "{}", report.log);
    assert!(node.talos.is_bootstrapped());
    let status = node.status().unwrap();
    let etcd = status.step(StepId::Etcd).unwrap();
    assert_eq!(etcd.state, StepState::Done);
    assert_eq!(
        etcd.attempts as usize,
        node.talos.bootstrap_calls(),
        "one Bootstrap call per attempt, the last one succeeded: {etcd:?}"
    );
    assert_eq!(
        report.exits.len(),
        1,
        "retried within the run, not by restarts"
    );
    assert_eq!(status.phase, Phase::Ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kustomization_terminal_failure_is_reported_with_fluxs_message() {
    let node = Node::start(NodeOptions::default()).await;
    node.enrol_and_seal();
    let message = "kustomize build failed: accumulating resources: accumulation err='accumulating resources from 'apps': missing Resource metadata'";
    node.controllers.fail_kustomization("BuildFailed", message);
    let (service, status) = node.service_until_failed(RUN).await;
    service.stop().await;
    let err = status.last_error.clone().expect("last error");
    assert_eq!(err.step, StepId::Ready);
    assert_eq!(err.kind, ErrorKind::Permanent);
    assert!(err.message.contains(message), "{}", err.message);
    assert!(err.message.contains("Kustomization"), "{}", err.message);
    let human = node.status_command(&[]);
    assert_eq!(human.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&human.stdout).contains("BuildFailed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcr7_changed_is_a_precise_failure_and_nothing_is_created() {
    let node = Node::start(NodeOptions::default()).await;
    node.enrol_and_seal();
    // Next boot with another SecureBoot state: PCR 7 measures differently.
    node.reboot();
    node.extend_pcr(7, "5b");
    let (service, status) = node.service_until_failed(RUN).await;
    service.stop().await;
    let err = status.last_error.clone().unwrap();
    assert_eq!(err.step, StepId::Unseal);
    assert!(err.message.contains("PCR 7"), "{}", err.message);
    assert!(err.message.contains("SecureBoot"), "{}", err.message);
    let mutations = node.kube.agent_mutations().await;
    assert!(
        mutations.is_empty(),
        "nothing may be created: {mutations:#?}"
    );
    assert!(node.sops_age().await.is_none());
    assert!(node.kube.established_crds().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_sealed_input_is_a_precise_failure() {
    let node = Node::start(NodeOptions::default()).await;
    let sealed = node.enrol_and_seal();
    // Damage the body (not the armor lines): the file still looks like age armor.
    let mut lines: Vec<String> = sealed.armor.lines().map(str::to_string).collect();
    let body = &mut lines[2];
    let flipped: String = body
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if (10..20).contains(&i) {
                if c == 'A' { 'B' } else { 'A' }
            } else {
                c
            }
        })
        .collect();
    *body = flipped;
    node.write_config(Some(&Sealed {
        armor: lines.join("\n"),
        ..sealed
    }));
    let (service, status) = node.service_until_failed(RUN).await;
    service.stop().await;
    let err = status.last_error.unwrap();
    assert_eq!(err.step, StepId::Unseal);
    assert!(
        err.message.contains("flux-system/sops-age"),
        "{}",
        err.message
    );
    assert!(
        err.message.to_lowercase().contains("corrupt"),
        "{}",
        err.message
    );
    let mutations = node.kube.agent_mutations().await;
    assert!(mutations.is_empty(), "{mutations:#?}");
    assert!(node.sops_age().await.is_none());
}

/// Long enough for Talos to have restarted an exited `untilSuccess` service once.
const ONE_RESTART: Duration = Duration::from_secs(TALOS_RESTART_INTERVAL.as_secs() + 2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_configuration_is_attempted_once_then_again_when_it_changes() {
    let node = Node::start(NodeOptions::default()).await;
    let good = node.config_text(None);
    node.write_config_text(&good.replace("lockPcr: 15", "lockPcr: 16"));
    let (service, status) = node.service_until_failed(RUN).await;
    assert_eq!(status.last_error.unwrap().kind, ErrorKind::Config);
    tokio::time::sleep(ONE_RESTART).await;
    assert!(service.exits().is_empty(), "{:?}", service.exits());
    assert_eq!(node.status().unwrap().runs, 1, "one attempt");
    let log = service.log();
    assert_eq!(log.matches("tpm.lockPcr").count(), 1, "logged once:\n{log}");
    assert!(
        !log.contains("\u{1b}["),
        "colour codes in a log that is not a terminal:\n{log}"
    );
    assert_eq!(node.talos.bootstrap_calls(), 0);

    // The fixed configuration is picked up by the same process.
    node.write_config_text(&good);
    let enrolment = node.wait_for_enrolment(RUN).await;
    assert!(enrolment.recipient.starts_with("age1"));
    assert!(service.exits().is_empty(), "{:?}", service.exits());
    assert_eq!(node.status().unwrap().runs, 2);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_is_attempted_once_then_again_when_the_configuration_changes() {
    let node = Node::start(NodeOptions::default()).await;
    node.enrol_and_seal();
    node.controllers.fail_kustomization(
        "BuildFailed",
        "kustomize build failed: missing Resource metadata",
    );
    let (service, status) = node.service_until_failed(RUN).await;
    assert_eq!(status.last_error.unwrap().kind, ErrorKind::Permanent);
    assert!(
        status
            .message
            .contains("waiting for the configuration to change")
    );
    let bootstraps = node.talos.bootstrap_calls();
    tokio::time::sleep(ONE_RESTART).await;
    assert!(service.exits().is_empty(), "{:?}", service.exits());
    assert_eq!(node.status().unwrap().runs, 1, "one attempt");
    assert_eq!(node.talos.bootstrap_calls(), bootstraps, "no new run");

    // Git is fixed; the operator touches the configuration (Talos would also restart the
    // service on that change): the same process runs again and finishes.
    node.controllers.succeed_kustomization();
    let text = std::fs::read_to_string(node.config_path()).unwrap();
    node.write_config_text(&format!("{text}# Git fixed\n"));
    let report = service.wait(RUN).await;
    assert_eq!(
        report.exits.iter().map(|e| e.code).collect::<Vec<_>>(),
        [Some(0)],
        "{}",
        report.log
    );
    let status = node.status().unwrap();
    assert_eq!((status.phase, status.runs), (Phase::Ready, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_once_a_permanent_failure_still_exits_3() {
    let node = Node::start(NodeOptions::default()).await;
    node.enrol_and_seal();
    node.controllers.fail_kustomization(
        "BuildFailed",
        "kustomize build failed: missing Resource metadata",
    );
    let config = node.config_path().display().to_string();
    let out = std::process::Command::new(&node.agent)
        .args(["run", "--once", "--config", &config])
        .env_clear()
        .envs(node.service_env())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(node.status().unwrap().phase, Phase::Failed);
}
