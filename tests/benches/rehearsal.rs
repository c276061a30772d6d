//! Benchmark: the whole-node rehearsal with the full upstream corpus (cert-manager, Gateway API
//! and Flux CRDs, Flux's components). Prints, per run and as medians:
//! - time from "API server ready" (the kube-api step done) to "Flux Ready" (the ready step
//!   done), minus the simulated controllers' delays on the critical path;
//! - requests the agent made to the Kubernetes API, as the API server counted them;
//! - the agent's peak RSS (VmHWM, sampled every 5 ms while it runs);
//! - the agent binary's size;
//!
//! on a real kube-apiserver and etcd (the `kube_apply` bench sets the Kubernetes half side by
//! side with kubectl).
//!
//! Run: `cargo bench -p bootstrap-agent-tests --bench rehearsal` (needs the agent binary built
//! in the same profile directory as the bench executable), or with the static release build:
//! `BOOTSTRAP_AGENT_BIN=target/x86_64-unknown-linux-musl/release/bootstrap-agent cargo bench
//! --profile dev -p bootstrap-agent-tests --bench rehearsal`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a panic is the failure report

use std::time::Duration;

use bootstrap_agent::plan::StepId;
use bootstrap_agent::status::{Phase, Status};
use bootstrap_agent_tests::node::{AGENT_BIN_ENV, ControllerDelays, Node, NodeOptions};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const RUNS: usize = 3;

fn at(s: &Option<String>) -> OffsetDateTime {
    OffsetDateTime::parse(s.as_deref().expect("timestamp"), &Rfc3339).expect("RFC 3339")
}

fn step_ms(status: &Status, id: StepId) -> u64 {
    status.step(id).and_then(|s| s.duration_ms).unwrap_or(0)
}

struct AgentRun {
    api_to_ready: Duration,
    apply: Duration,
    requests: usize,
    mutating: usize,
    rss_kib: u64,
}

async fn agent_run(delays: ControllerDelays) -> AgentRun {
    let node = Node::start(NodeOptions {
        gateway_api: true,
        delays,
        retry_max: "1s".into(),
        max_starts: 1,
        ..NodeOptions::default()
    })
    .await;
    node.enrol_and_seal();
    let report = node.service().wait(Duration::from_secs(120)).await;
    assert_eq!(report.last().unwrap().code, Some(0), "{}", report.log);
    let status = node.status().unwrap();
    assert_eq!(status.phase, Phase::Ready);
    let api_ready = at(&status.step(StepId::KubeApi).unwrap().finished_at);
    let flux_ready = at(&status.step(StepId::Ready).unwrap().finished_at);
    let span: Duration = (flux_ready - api_ready).try_into().unwrap_or_default();
    let apply = [StepId::Secrets, StepId::Crds, StepId::Flux, StepId::Sync]
        .iter()
        .map(|s| step_ms(&status, *s))
        .sum();
    AgentRun {
        api_to_ready: span.saturating_sub(delays.critical_path()),
        apply: Duration::from_millis(apply),
        requests: node.kube.agent_requests().await.len(),
        mutating: node.kube.agent_mutations().await.len(),
        rss_kib: report.peak_rss_kib,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let delays = ControllerDelays::default();
    let agent = match std::env::var_os(AGENT_BIN_ENV) {
        Some(p) => std::path::PathBuf::from(p),
        None => bootstrap_agent_tests::swtpm::agent_binary().expect("agent binary"),
    };
    let size = std::fs::metadata(&agent).unwrap().len();
    println!(
        "rehearsal bench: full corpus on kube-apiserver v1.36.2, {RUNS} runs, controllers' delays {} ms on the critical path (subtracted)",
        delays.critical_path().as_millis()
    );
    let mut runs = Vec::new();
    for run in 0..RUNS {
        let r = rt.block_on(agent_run(delays));
        println!(
            "  agent run {run}: API ready -> Flux Ready {:>7.1} ms (apply steps {:>7.1} ms), requests {} (mutating {}), peak RSS {:.1} MiB",
            ms(r.api_to_ready),
            ms(r.apply),
            r.requests,
            r.mutating,
            r.rss_kib as f64 / 1024.0
        );
        runs.push(r);
    }
    println!(
        "agent  : API ready -> Flux Ready (minus controller delays) median {:>7.1} ms; apply steps median {:>7.1} ms; requests {}; peak RSS {:.1} MiB; binary {} ({:.1} MiB)",
        ms(median(runs.iter().map(|r| r.api_to_ready).collect())),
        ms(median(runs.iter().map(|r| r.apply).collect())),
        runs[0].requests,
        runs.iter().map(|r| r.rss_kib).max().unwrap_or(0) as f64 / 1024.0,
        agent.display(),
        size as f64 / 1048576.0
    );
}
