//! `bootstrap-agent run` as the Talos service against the Talos API stand-in (issue 2's
//! "Done when"): Bootstrap exactly once across two runs, the kubeconfig obtained, the status
//! file written and read back over mTLS by `bootstrap-agent status`; and a configuration with
//! several mistakes refused by `plan` (exit 2) and `run` (recorded, then waiting for a change),
//! every mistake listed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::time::Duration;

use bootstrap_agent::plan::StepId;
use bootstrap_agent::status::{Phase, Status, StepState};
use bootstrap_agent_tests::node::{Node, NodeOptions};

const RUN: Duration = Duration::from_secs(60);

/// The rehearsal node's configuration without secrets: no TPM involvement.
fn no_secrets(node: &Node) -> String {
    let text = node.config_text(None);
    let start = text.find("secrets:\n").unwrap();
    let end = text.find("bundle:\n").unwrap();
    format!("{}secrets: []\n{}", &text[..start], &text[end..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_bootstraps_once_across_two_runs_and_status_reads_it_over_mtls() {
    let node = Node::start(NodeOptions::default()).await;
    node.write_config_text(&no_secrets(&node));

    let first = node.service().wait(RUN).await;
    assert_eq!(first.last().map(|e| e.code), Some(Some(0)), "{}", first.log);
    assert_eq!(node.talos.bootstrap_calls(), 1);
    assert!(node.talos.is_bootstrapped());
    let status = node.status().expect("status file written");
    assert_eq!(status.phase, Phase::Ready, "{}", status.render());
    let kc = status.step(StepId::Kubeconfig).unwrap();
    assert_eq!(kc.state, StepState::Done);
    assert!(
        kc.message
            .as_deref()
            .unwrap_or("")
            .contains("kubeconfig obtained"),
        "{kc:?}"
    );
    // The kubeconfig was used: the cluster has Flux's sync objects.
    assert!(!node.kube.agent_requests().await.is_empty());
    assert!(
        node.kube
            .get(&bootstrap_agent_tests::kubeapi::ObjectRef::new(
                "kustomize.toolkit.fluxcd.io",
                "kustomizations",
                "flux-system",
                "flux-system"
            ))
            .await
            .is_some()
    );

    let second = node.service().wait(RUN).await;
    assert_eq!(
        second.last().map(|e| e.code),
        Some(Some(0)),
        "{}",
        second.log
    );
    assert_eq!(
        node.talos.bootstrap_calls(),
        1,
        "the second run must not call Bootstrap again"
    );
    let status = node.status().unwrap();
    assert_eq!(status.runs, 2);
    assert_eq!(status.phase, Phase::Ready);
    assert!(
        status
            .step(StepId::Etcd)
            .unwrap()
            .message
            .as_deref()
            .unwrap_or("")
            .contains("earlier run"),
        "{}",
        status.render()
    );

    // Operator side: through apid's mTLS port with the stand-in's talosconfig.
    let human = node.status_command(&[]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.status.success(),
        "{}",
        String::from_utf8_lossy(&human.stderr)
    );
    assert!(text.contains("READY"), "{text}");
    for step in StepId::ALL {
        assert!(text.contains(step.name()), "{step} missing from:\n{text}");
    }
    let json = node.status_command(&["--json"]);
    assert!(json.status.success());
    let parsed: Status = serde_json::from_slice(&json.stdout).expect("--json is a status document");
    let file: Status = serde_json::from_slice(&std::fs::read(node.status_path()).unwrap()).unwrap();
    assert_eq!(parsed, file, "--json must round-trip the status file");
}

const BROKEN: &str = "talos:
  socket: relative/machine.sock
tpm:
  lockPcr: 16
secrets:
  - name: Not_A_Name
    key: age.agekey
flux:
  url: ftp://example.com/repo
  interval: soon
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_with_several_mistakes_is_refused_by_plan_and_run_listing_all() {
    let node = Node::start(NodeOptions::default()).await;
    node.write_config_text(BROKEN);
    let config = node.config_path().display().to_string();
    let expected = [
        "talos.socket",
        "tpm.lockPcr",
        "secrets[0].name",
        "flux.url",
        "flux.interval",
    ];

    let plan = node.agent(&["plan", "--config", &config]);
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&plan.stdout),
        String::from_utf8_lossy(&plan.stderr)
    );
    assert_eq!(plan.status.code(), Some(2), "{out}");
    for field in expected {
        assert!(out.contains(field), "plan does not name {field}:\n{out}");
    }

    // run records it and waits for the configuration to change (no restart loop).
    let (service, status) = node.service_until_failed(RUN).await;
    let run = service.stop().await;
    for field in expected {
        assert!(
            run.log.contains(field),
            "run does not name {field}:\n{}",
            run.log
        );
    }
    // The status file says so too, for `bootstrap-agent status`.
    let err = status.last_error.expect("last error");
    for field in expected {
        assert!(err.message.contains(field), "{}", err.message);
    }
    assert_eq!(node.talos.bootstrap_calls(), 0);
    assert!(node.kube.agent_requests().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_makes_the_offline_checks_plan_makes_before_touching_the_node() {
    let node = Node::start(NodeOptions::default()).await;
    // A bundle directory without its lock: plan has always refused it; run used to find out
    // only at the crds step, after bootstrapping etcd.
    let empty = node.work().join("empty-bundle");
    std::fs::create_dir_all(&empty).unwrap();
    let text = no_secrets(&node).replace(
        &node.bundle_dir().display().to_string(),
        &empty.display().to_string(),
    );
    node.write_config_text(&text);
    let config = node.config_path().display().to_string();

    let plan = node.agent(&["plan", "--config", &config]);
    assert_eq!(
        plan.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&plan.stderr)
    );
    assert!(String::from_utf8_lossy(&plan.stderr).contains("bundle.lock.yaml"));

    let (service, status) = node.service_until_failed(RUN).await;
    let run = service.stop().await;
    assert!(run.log.contains("bundle.lock.yaml"), "{}", run.log);
    assert!(
        status
            .last_error
            .unwrap()
            .message
            .contains("bundle.lock.yaml"),
        "{}",
        run.log
    );
    assert_eq!(node.talos.bootstrap_calls(), 0, "{}", run.log);
    assert!(node.kube.agent_requests().await.is_empty());
}
