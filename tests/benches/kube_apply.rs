//! Benchmark: the agent applying the full upstream corpus (cert-manager, Gateway API and Flux
//! CRDs, Flux's components) vs `kubectl apply --server-side -f` of the same files, each against
//! a fresh Kubernetes API stand-in. Prints wall time, request count and peak RSS.
//!
//! Run: `cargo bench -p bootstrap-agent-tests --bench kube_apply`
//! The agent runs in a child process (this binary re-executed) so its peak RSS is its own.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bootstrap_agent::bundle::Bundle;
use bootstrap_agent::kube::Cluster;
use bootstrap_agent_tests::kubeapi::fixture::{Corpus, compose_bundle};
use bootstrap_agent_tests::kubeapi::{CrdPolicy, KubeApi};

const CHILD_ENV: &str = "KUBE_APPLY_BENCH_CHILD";
const RUNS: usize = 5;

fn agent_child(kubeconfig: &Path, bundle_dir: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let t0 = Instant::now();
        let hwm = |what: &str| {
            if std::env::var_os("KUBE_APPLY_BENCH_TRACE").is_some() {
                let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
                let l = s
                    .lines()
                    .filter(|l| l.starts_with("VmHWM") || l.starts_with("VmRSS"))
                    .collect::<Vec<_>>()
                    .join(" ");
                eprintln!(
                    "{:>7.1} ms {what}: {l}",
                    t0.elapsed().as_secs_f64() * 1000.0
                );
            }
        };
        hwm("start");
        let bundle = Bundle::load_dir(bundle_dir).expect("bundle");
        hwm("bundle loaded");
        let applying = Instant::now();
        let cluster = Cluster::connect_path(kubeconfig).await.expect("connect");
        let a = cluster
            .install_crds(&bundle, Duration::from_secs(120))
            .await
            .expect("CRDs");
        hwm("CRDs");
        let b = cluster
            .install_flux(&bundle, Duration::from_secs(120))
            .await
            .expect("Flux");
        hwm("Flux");
        let apply_ms = applying.elapsed().as_secs_f64() * 1000.0;
        println!(
            "{} {} {apply_ms}",
            a.len() + b.len(),
            vm_hwm_kib(std::process::id())
        );
    });
}

/// Peak resident set size of a live process (`VmHWM`), in KiB.
fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Runs `cmd`, sampling its peak RSS every 2 ms until it exits.
fn run_sampled(cmd: &mut Command) -> (std::process::Output, u64) {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d = done.clone();
    let sampler = std::thread::spawn(move || {
        let mut peak = 0;
        while !d.load(std::sync::atomic::Ordering::SeqCst) {
            peak = peak.max(vm_hwm_kib(pid));
            std::thread::sleep(Duration::from_millis(2));
        }
        peak
    });
    let out = child.wait_with_output().unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    (out, sampler.join().unwrap())
}

struct Figures {
    wall: Duration,
    requests: u64,
    mutating: u64,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if std::env::var_os(CHILD_ENV).is_some() {
        let args: Vec<String> = std::env::args().collect();
        agent_child(Path::new(&args[1]), Path::new(&args[2]));
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bundle_dir = dir.path().join("bundle");
    std::fs::create_dir(&bundle_dir).unwrap();
    let lock = compose_bundle(&bundle_dir, Corpus { gateway_api: true });
    let files: Vec<PathBuf> = lock
        .artifacts
        .iter()
        .map(|a| bundle_dir.join(&a.file))
        .collect();
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    let objects = Bundle::load_dir(&bundle_dir).unwrap();
    let count = objects.crds.len() + objects.flux.len();
    drop(objects);
    let policy = CrdPolicy {
        delay: Duration::from_millis(20),
        ..Default::default()
    };
    let exe = std::env::current_exe().unwrap();

    let mut agent_runs = Vec::new();
    let mut kubectl_runs = Vec::new();
    let mut agent_rss = 0;
    let mut kubectl_rss = 0;
    let mut apply_only = Vec::new();
    for run in 0..RUNS {
        // The agent, in its own process.
        let api = rt.block_on(KubeApi::start_with(policy.clone())).unwrap();
        let kc = dir.path().join(format!("agent-{run}.kubeconfig"));
        std::fs::write(&kc, api.kubeconfig()).unwrap();
        let start = Instant::now();
        let out = Command::new(&exe)
            .arg(&kc)
            .arg(&bundle_dir)
            .env(CHILD_ENV, "1")
            .output()
            .unwrap();
        let wall = start.elapsed();
        assert!(
            out.status.success(),
            "agent run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let reported: u64 = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        agent_rss = agent_rss.max(reported);
        let apply_ms: f64 = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(2)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        apply_only.push(Duration::from_secs_f64(apply_ms / 1000.0));
        if std::env::var_os("KUBE_APPLY_BENCH_TRACE").is_some() {
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
        }
        agent_runs.push(Figures {
            wall,
            requests: api.requests(),
            mutating: api.mutating_requests(),
        });
        drop(api);

        // kubectl, cold discovery cache, same files, fresh stand-in.
        let api = rt.block_on(KubeApi::start_with(policy.clone())).unwrap();
        let kc = dir.path().join(format!("kubectl-{run}.kubeconfig"));
        std::fs::write(&kc, api.kubeconfig()).unwrap();
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(&kc)
            .arg("--cache-dir")
            .arg(dir.path().join(format!("cache-{run}")));
        cmd.args(["apply", "--server-side"]);
        for f in &files {
            cmd.arg("-f").arg(f);
        }
        let start = Instant::now();
        let (out, rss) = run_sampled(&mut cmd);
        let wall = start.elapsed();
        kubectl_rss = kubectl_rss.max(rss);
        assert!(
            out.status.success(),
            "kubectl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        kubectl_runs.push(Figures {
            wall,
            requests: api.requests(),
            mutating: api.mutating_requests(),
        });
        drop(api);
    }

    let a = median(agent_runs.iter().map(|f| f.wall).collect());
    let k = median(kubectl_runs.iter().map(|f| f.wall).collect());
    let a_min = agent_runs.iter().map(|f| f.wall).min().unwrap_or_default();
    let k_min = kubectl_runs
        .iter()
        .map(|f| f.wall)
        .min()
        .unwrap_or_default();
    println!(
        "corpus: {} files, {} objects, {:.1} MiB",
        files.len(),
        count,
        bytes as f64 / 1048576.0
    );
    println!(
        "runs: {RUNS} (median wall time), fresh stand-in per run, CRDs Established after 20 ms"
    );
    println!(
        "agent   : wall {:>8.1} ms  requests {:>4} (mutating {:>3})  peak RSS {:.1} MiB  [includes waiting for Established]",
        a.as_secs_f64() * 1000.0,
        agent_runs[0].requests,
        agent_runs[0].mutating,
        agent_rss as f64 / 1024.0
    );
    println!(
        "kubectl : wall {:>8.1} ms  requests {:>4} (mutating {:>3})  peak RSS {:.1} MiB (sampled every 2 ms)",
        k.as_secs_f64() * 1000.0,
        kubectl_runs[0].requests,
        kubectl_runs[0].mutating,
        kubectl_rss as f64 / 1024.0
    );
    let ap = median(apply_only);
    println!(
        "agent, connect + apply only (bundle already loaded, as at boot while the API comes up): {:.1} ms median = {:.2}x kubectl",
        ap.as_secs_f64() * 1000.0,
        ap.as_secs_f64() / k.as_secs_f64()
    );
    println!(
        "agent/kubectl wall time: {:.2}x median, {:.2}x best ({:.1} ms vs {:.1} ms)",
        a.as_secs_f64() / k.as_secs_f64(),
        a_min.as_secs_f64() / k_min.as_secs_f64(),
        a_min.as_secs_f64() * 1000.0,
        k_min.as_secs_f64() * 1000.0
    );
}
