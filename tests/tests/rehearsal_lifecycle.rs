//! Whole-node rehearsal of the node's life: first boot on a fresh TPM, rebuild by reflash, and
//! reboot without reflash. The real agent binary runs as the Talos service against a real
//! swtpm, the Talos and Kubernetes API stand-ins and simulated controllers.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::time::Duration;

use bootstrap_agent::kube::ObjectState;
use bootstrap_agent::plan::StepId;
use bootstrap_agent::status::{Phase, Status, StepState};
use bootstrap_agent_tests::kubeapi::ObjectRef;
use bootstrap_agent_tests::node::{Node, NodeOptions};

const RUN: Duration = Duration::from_secs(90);

async fn secrets_in(node: &Node) -> usize {
    node.kube
        .list("", "secrets")
        .await
        .iter()
        .filter(|s| s["metadata"]["namespace"] == "flux-system")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_boot_enrols_waits_for_the_sealed_key_then_reaches_flux_ready_after_a_reboot() {
    let node = Node::start(NodeOptions::default()).await;
    node.write_config(None);
    let waiting = node.service();
    let enrolment = node.wait_for_enrolment(RUN).await;
    let recipient = enrolment.recipient.clone();
    let status = node.status().unwrap();
    assert_eq!(status.phase, Phase::Waiting);
    let tpm = status.tpm.clone().expect("the recipient is in the status");
    assert!(recipient.starts_with("age1"), "{recipient}");
    assert!(
        tpm.command.contains(&format!("age -a -r {recipient}")),
        "{}",
        tpm.command
    );
    assert_eq!(tpm.salt_key_name.as_deref().map(str::len), Some(68));
    assert_eq!(
        status.step(StepId::Unseal).unwrap().state,
        StepState::Done,
        "{}",
        status.render()
    );
    assert_eq!(
        status.step(StepId::Secrets).unwrap().state,
        StepState::Waiting
    );
    assert!(
        node.sops_age().await.is_none(),
        "no secret before the key is sealed"
    );
    // The first boot ends locked: nothing reads the seed for the rest of this boot.
    assert_ne!(node.pcr(15), "0".repeat(64));
    assert_eq!(node.tpm.attacker_read_seed(), None);

    // Operator: a new SOPS key, sealed with the real age CLI, and the recipient and salt key
    // name pinned, into the configuration. Without a reboot the agent (which runs again on the
    // change) cannot unseal it, and says so.
    let sealed = node.seal_to(&enrolment);
    node.write_config(Some(&sealed));
    let failed = node
        .wait_status(RUN, "a failure asking for a reboot", |s| {
            s.phase == Phase::Failed
        })
        .await;
    let err = failed.last_error.clone().unwrap();
    assert_eq!(err.step, StepId::Secrets, "{}", failed.render());
    assert!(
        err.message.contains("locked until the next boot"),
        "{}",
        err.message
    );
    assert!(err.hint.unwrap_or_default().contains("reboot the node"));
    // One process throughout (no restart loop), stopped while it waits for a new configuration
    // after the permanent failure.
    let first = waiting.stop().await;
    assert_eq!(first.exits.len(), 1, "{first:?}");

    // The reboot (Terraform's apply of the sealed key reboots the node).
    node.reboot();
    let ready = node.service().wait(RUN).await;
    assert_eq!(ready.last().unwrap().code, Some(0), "{}", ready.log);

    let status = node.status().unwrap();
    assert_eq!(status.phase, Phase::Ready, "{}", status.render());
    assert!(status.tpm.is_none());
    assert!(
        status.steps.iter().all(|s| s.state == StepState::Done),
        "{}",
        status.render()
    );
    assert_eq!(node.talos.bootstrap_calls(), 1);
    // Flux took over what the agent installed, and the agent let go of all of it: the only
    // object it still manages is the Secret Git never holds.
    // (The first run, which waited for the key, already handed them over; this one finds
    // nothing left but cert-manager's CRDs, which wait for their HelmRelease.)
    let handoff = status.step(StepId::Handoff).unwrap();
    assert_eq!(handoff.state, StepState::Done, "{handoff:?}");
    for d in node.kube.list("apps", "deployments").await {
        let managers = bootstrap_agent_tests::envtest::managers(&d);
        assert!(!managers.contains_key("bootstrap-agent"), "{managers:?}");
    }
    assert_eq!(node.tpm.attacker_read_seed(), None);

    // Operator side: the result read through the Talos API.
    let out = node.status_command(&[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("READY"), "{text}");
    let json = node.status_command(&["--json"]);
    let remote: Status = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(remote, status);

    // flux-system/sops-age holds exactly the key file, under age.agekey only.
    assert_eq!(node.sops_age().await.unwrap(), sealed.key_file.as_bytes());
    let secret = node
        .kube
        .get(&ObjectRef::new("", "secrets", "flux-system", "sops-age"))
        .await
        .unwrap();
    assert_eq!(secret["data"].as_object().unwrap().len(), 1, "{secret}");
    assert_eq!(secret["type"], "Opaque");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_by_reflash_brings_everything_back_with_no_input() {
    let mut node = Node::start(NodeOptions::default()).await;
    let (sealed, _, _) = node.first_boot(RUN).await;
    assert_eq!(node.talos.bootstrap_calls(), 1);

    // Reflash: /var wiped, a new cluster (etcd not bootstrapped, empty API), TPM state kept.
    node.reflash().await;
    assert!(node.status().is_none());
    assert!(!node.talos.is_bootstrapped());
    assert!(node.kube.agent_requests().await.is_empty());

    let report = node.service().wait(RUN).await;
    assert_eq!(report.last().unwrap().code, Some(0), "{}", report.log);
    assert_eq!(
        node.talos.bootstrap_calls(),
        1,
        "the new cluster was bootstrapped once"
    );
    assert!(node.talos.is_bootstrapped());
    let status = node.status().unwrap();
    assert_eq!(status.phase, Phase::Ready, "{}", status.render());
    assert_eq!(status.runs, 1, "a fresh /var starts a fresh status");
    // The same sealed configuration gives the same key back.
    assert_eq!(node.sops_age().await.unwrap(), sealed.key_file.as_bytes());
    assert_eq!(secrets_in(&node).await, 1);
    assert!(node.kube.established_crds().await.len() > 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboot_without_reflash_changes_nothing() {
    let node = Node::start(NodeOptions::default()).await;
    let (sealed, _, _) = node.first_boot(RUN).await;
    let before = node.status().unwrap();

    node.reboot();
    node.kube.reset_counts().await;
    let report = node.service().wait(RUN).await;
    assert_eq!(report.last().unwrap().code, Some(0), "{}", report.log);
    let mutations = node.kube.agent_mutations().await;
    assert!(
        mutations.is_empty(),
        "a reboot must not change the cluster (as the API server counted): {mutations:#?}"
    );
    assert!(
        !node.kube.agent_requests().await.is_empty(),
        "the agent did check the cluster"
    );
    assert_eq!(node.talos.bootstrap_calls(), 1, "no second Bootstrap");
    let status = node.status().unwrap();
    assert_eq!(status.phase, Phase::Ready, "{}", status.render());
    assert_eq!(status.runs, before.runs + 1);
    assert_eq!(node.sops_age().await.unwrap(), sealed.key_file.as_bytes());
    // The seed was unsealed again this boot and locked afterwards.
    assert_ne!(node.pcr(15), "0".repeat(64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_boot_without_the_key_flux_is_ready_and_the_encrypted_layer_waits() {
    let node = Node::start(NodeOptions::default()).await;
    // Git holds a layer of SOPS-encrypted files (`certificates`); flux-system itself decrypts
    // nothing, so Flux manages itself before the key is sealed.
    node.controllers.with_encrypted_layer();
    node.write_config(None);
    let waiting = node.service();
    let enrolment = node.wait_for_enrolment(RUN).await;
    let status = node
        .wait_status(RUN, "the encrypted layer reported", |s| {
            s.objects
                .iter()
                .any(|o| o.name == "certificates" && o.state == ObjectState::Waiting)
        })
        .await;
    assert_eq!(status.phase, Phase::Waiting, "{}", status.render());
    assert!(status.last_error.is_none(), "{}", status.render());
    // Flux is Ready on flux-system: the ready step is done.
    let ready = status.step(StepId::Ready).unwrap();
    assert_eq!(ready.state, StepState::Done, "{}", status.render());
    assert!(
        ready
            .message
            .as_deref()
            .unwrap_or("")
            .contains("certificates"),
        "{ready:?}"
    );
    let layer = status
        .objects
        .iter()
        .find(|o| o.name == "certificates")
        .unwrap();
    assert!(layer.message.contains("decryption failed"), "{layer:?}");
    assert!(layer.message.contains("SOPS key"), "{layer:?}");
    assert_eq!(status.tpm.as_ref().unwrap().recipient, enrolment.recipient);
    // No restart loop: the service waits for its configuration.
    assert!(waiting.exits().is_empty(), "{:?}", waiting.exits());

    // Once the key is sealed (and sops-age exists after the reboot) the layer decrypts and the
    // node is Ready.
    let sealed = node.seal_to(&enrolment);
    waiting.stop().await;
    node.write_config(Some(&sealed));
    node.reboot();
    let report = node.service().wait(RUN).await;
    assert_eq!(report.last().unwrap().code, Some(0), "{}", report.log);
    assert_eq!(node.status().unwrap().phase, Phase::Ready);
    assert_eq!(node.sops_age().await.unwrap(), sealed.key_file.as_bytes());
    // No layer waits for the key any more.
    let status = node.status().unwrap();
    assert!(
        !status
            .objects
            .iter()
            .any(|o| o.state == ObjectState::Waiting),
        "{}",
        status.render()
    );
}
