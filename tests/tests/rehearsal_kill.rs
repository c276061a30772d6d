//! kill -9 at every step boundary: the agent is SIGKILLed as soon as the status file shows each
//! step running, Talos restarts it (`restart: untilSuccess`), and it converges with no
//! duplicated or half-written objects.
//!
//! A kill after `unseal` and before `secrets` loses the decrypted inputs while the seed is
//! locked: the restarted agent says "reboot the node" (a permanent failure), and the test does
//! what the operator does, a reboot (the supervisor starts the agent again, as Talos does after
//! a reboot).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bootstrap_agent::plan::StepId;
use bootstrap_agent::status::{Phase, Status, StepState};
use bootstrap_agent_tests::kubeapi::ObjectRef;
use bootstrap_agent_tests::kubeapi::fixture::flux_deployments;
use bootstrap_agent_tests::node::{ControllerDelays, Node, NodeOptions};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_each_step_then_restart_converges_without_duplicates() {
    let node = Node::start(NodeOptions {
        // Slow enough that each step is visible in the status file for a while.
        bootstrap_not_ready: 2,
        delays: ControllerDelays {
            deployment: Duration::from_millis(800),
            source: Duration::from_millis(500),
            kustomization: Duration::from_millis(500),
            poll: Duration::from_millis(50),
        },
        max_starts: 40,
        // What a restart finds is the point here, not when it comes: Talos's 5 s, shortened.
        restart_interval: Duration::from_millis(200),
        ..NodeOptions::default()
    })
    .await;
    let sealed = node.enrol_and_seal();
    let service = node.service();

    let mut killed_at: Vec<StepId> = Vec::new();
    let mut runs_seen = 0;
    let mut reboots = 0;
    let mut rebooted_after = 0;
    for target in StepId::ALL {
        let t0 = Instant::now();
        // Wait for a new process (a restart after the previous kill) that reaches `target`.
        let hit = loop {
            if service.finished() {
                break None;
            }
            if let Some(s) = node.status()
                && s.runs > rebooted_after
                && asks_for_a_reboot(&s)
                && service.pid().is_some()
            {
                node.reboot();
                assert!(service.kill9().is_some());
                reboots += 1;
                rebooted_after = s.runs;
                let t1 = Instant::now();
                while service.pid().is_some() && t1.elapsed() < Duration::from_secs(5) {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                continue;
            }
            if let Some(s) = node.status()
                && s.runs > runs_seen
                && let Some(running) = s
                    .steps
                    .iter()
                    .find(|r| matches!(r.state, StepState::Running | StepState::Retrying))
                && running.step >= target
            {
                break Some((running.step, s.runs));
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "the agent never reached {target}; steps {:?}; log:\n{}",
                node.steps(),
                service.log()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let Some((step, runs)) = hit else { break };
        if service.kill9().is_some() {
            killed_at.push(step);
            runs_seen = runs;
        }
        // Wait for the supervisor to notice and restart.
        let t1 = Instant::now();
        while service.pid().is_some() && t1.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let report = service.wait(Duration::from_secs(90)).await;
    assert_eq!(report.last().unwrap().code, Some(0), "{}", report.log);
    let kills = report.exits.iter().filter(|e| e.signal == Some(9)).count();
    assert_eq!(kills, killed_at.len() + reboots, "{:?}", report.exits);
    eprintln!("rebooted {reboots} times");
    let distinct: BTreeSet<StepId> = killed_at.iter().copied().collect();
    // The slow steps are always caught; the fast ones may be passed between two polls.
    for step in [StepId::Etcd, StepId::Crds, StepId::Ready] {
        assert!(
            distinct.contains(&step),
            "never killed during {step}: {killed_at:?}"
        );
    }
    assert!(distinct.len() >= 5, "killed at {killed_at:?}");
    eprintln!("killed at {killed_at:?}");

    let status = node.status().unwrap();
    assert_eq!(status.phase, Phase::Ready, "{}", status.render());
    assert!(node.talos.is_bootstrapped());

    // Exactly one of everything, and complete.
    assert_eq!(node.sops_age().await.unwrap(), sealed.key_file.as_bytes());
    let secrets: Vec<Value> = node
        .kube
        .list("", "secrets")
        .await
        .into_iter()
        .filter(|s| s["metadata"]["namespace"] == "flux-system")
        .collect();
    assert_eq!(secrets.len(), 1, "{secrets:#?}");
    let names: Vec<String> = node
        .kube
        .list("apiextensions.k8s.io", "customresourcedefinitions")
        .await
        .iter()
        .map(|c| c["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let unique: BTreeSet<&String> = names.iter().collect();
    assert_eq!(unique.len(), names.len());
    assert_eq!(node.kube.established_crds().await.len(), names.len());
    let expected_deployments = flux_deployments()
        .matches("\"kind\": \"Deployment\"")
        .count();
    let deployments = node.kube.list("apps", "deployments").await;
    assert_eq!(deployments.len(), expected_deployments);
    for d in &deployments {
        assert!(
            d["spec"]["template"]["spec"]["containers"][0]["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("ghcr.io/fluxcd/")),
            "{d}"
        );
    }
    for (group, plural) in [
        ("source.toolkit.fluxcd.io", "gitrepositories"),
        ("kustomize.toolkit.fluxcd.io", "kustomizations"),
    ] {
        let named = node
            .kube
            .list(group, plural)
            .await
            .into_iter()
            .filter(|o| o["metadata"]["name"] == "flux-system")
            .count();
        assert_eq!(named, 1, "{plural}");
        let o = node
            .kube
            .get(&ObjectRef::new(group, plural, "flux-system", "flux-system"))
            .await
            .unwrap();
        assert_eq!(
            o["metadata"]["generation"], 1,
            "applied once, never changed: {o}"
        );
    }
    // The status file itself was never left half-written: it parsed at every poll above, and
    // no temporary file of a killed process is left beside it.
    let dir = node.status_path().parent().unwrap().to_path_buf();
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "status.json")
        .collect();
    assert!(
        leftovers.is_empty(),
        "left in the status directory: {leftovers:?}"
    );
}

/// The restarted agent found the seed locked and `sops-age` missing: it asks for a reboot.
fn asks_for_a_reboot(s: &Status) -> bool {
    s.phase == Phase::Failed
        && s.last_error.as_ref().is_some_and(|e| {
            e.step == StepId::Secrets && e.hint.as_deref().unwrap_or("").contains("reboot the node")
        })
}
