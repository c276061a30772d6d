//! Benchmark: the agent's whole Kubernetes half on a real kube-apiserver 1.36 + etcd 3.6, side
//! by side with kubectl doing the same.
//!
//! - agent: from the API server ready to every object applied and every CRD Established:
//!   `/readyz`, the `flux-system/sops-age` Secret, the CRD sets (cert-manager and Gateway API,
//!   waited for until Established), Flux's components (its CRDs waited for), the sync objects.
//!   It runs in its own process (this binary re-executed), so its peak RSS is its own; the
//!   wall time is the process's, bundle parsing included.
//! - kubectl: `kubectl apply --server-side` of the same files and Secret, `kubectl wait
//!   --for=condition=Established crd --all`, then `kubectl apply --server-side` of the sync
//!   objects; cold discovery cache; peak RSS sampled every 2 ms, the largest of the three.
//!
//! Each side gets a fresh API server per run, and both connect as the same user, so the
//! requests are counted by the API server itself (its audit log). Runs interleave; medians.
//!
//! Run: `cargo bench -p bootstrap-agent-tests --bench kube_apply`

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bootstrap_agent::bundle::Bundle;
use bootstrap_agent::kube::{Cluster, FluxSync, SecretSpec};
use bootstrap_agent_tests::envtest::ApiServer;
use bootstrap_agent_tests::kubeapi::fixture::{Corpus, compose_bundle};
use zeroize::Zeroizing;

const CHILD_ENV: &str = "KUBE_APPLY_BENCH_CHILD";
const RUNS: usize = 3;
const KEY: &str = "AGE-SECRET-KEY-1QYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQS5Q9DQ";
const URL: &str = "https://github.com/example/homelab";

fn sync() -> FluxSync {
    FluxSync::new(URL, "main", "./kubernetes/flux-system")
}

fn agent_child(kubeconfig: &Path, bundle_dir: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let bundle = Bundle::load_dir(bundle_dir).expect("bundle");
        let applying = Instant::now();
        let cluster = Cluster::connect_path(kubeconfig).await.expect("connect");
        cluster.api_ready().await.expect("readyz");
        cluster
            .seed_secrets(&[SecretSpec {
                namespace: "flux-system".into(),
                name: "sops-age".into(),
                key: "age.agekey".into(),
                value: Zeroizing::new(KEY.as_bytes().to_vec()),
                overwrite: false,
            }])
            .await
            .expect("secret");
        let a = cluster
            .install_crds(&bundle, Duration::from_secs(120))
            .await
            .expect("CRDs");
        let b = cluster
            .install_flux(&bundle, Duration::from_secs(120))
            .await
            .expect("Flux");
        let c = cluster.apply_sync(&sync()).await.expect("sync");
        let apply_ms = applying.elapsed().as_secs_f64() * 1000.0;
        println!(
            "{} {} {apply_ms}",
            a.len() + b.len() + c.len() + 1,
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
    requests: usize,
    mutating: usize,
    rss_kib: u64,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn counted(server: &ApiServer) -> (usize, usize) {
    let r = server.agent_requests().await;
    (r.len(), r.iter().filter(|r| r.is_mutating()).count())
}

fn write_yaml(path: &Path, objects: &[serde_json::Value]) {
    let text: String = objects
        .iter()
        .map(|o| format!("---\n{}\n", serde_json::to_string_pretty(o).unwrap()))
        .collect();
    std::fs::write(path, text).unwrap();
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
    let mut files: Vec<PathBuf> = lock
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
    // kubectl's Secret: the same one the agent creates.
    use base64::Engine;
    let secret = dir.path().join("sops-age.yaml");
    write_yaml(
        &secret,
        &[
            serde_json::json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "sops-age", "namespace": "flux-system"},
            "data": {"age.agekey": base64::engine::general_purpose::STANDARD.encode(KEY)}}),
        ],
    );
    files.push(secret);
    let sync_file = dir.path().join("sync.yaml");
    write_yaml(&sync_file, &sync().objects());
    let exe = std::env::current_exe().unwrap();

    let mut agent = Vec::new();
    let mut kubectl = Vec::new();
    let mut apply_only = Vec::new();
    for run in 0..RUNS {
        // The agent, in its own process, on a fresh API server.
        let server = rt.block_on(ApiServer::start());
        let start = Instant::now();
        let out = Command::new(&exe)
            .arg(server.kubeconfig_path())
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
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let field = |i: usize| stdout.split_whitespace().nth(i).unwrap_or("0").to_string();
        apply_only.push(Duration::from_secs_f64(
            field(2).parse::<f64>().unwrap_or(0.0) / 1000.0,
        ));
        let (requests, mutating) = rt.block_on(counted(&server));
        agent.push(Figures {
            wall,
            requests,
            mutating,
            rss_kib: field(1).parse().unwrap_or(0),
        });
        drop(server);

        // kubectl, cold discovery cache, the same files, a fresh API server.
        let server = rt.block_on(ApiServer::start());
        let kc = server.kubeconfig_path();
        let cache = dir.path().join(format!("cache-{run}"));
        let kubectl_cmd = |args: &[&str]| {
            let mut c = Command::new("kubectl");
            c.arg("--kubeconfig")
                .arg(&kc)
                .arg("--cache-dir")
                .arg(&cache)
                .args(args);
            c
        };
        let mut apply = kubectl_cmd(&["apply", "--server-side"]);
        for f in &files {
            apply.arg("-f").arg(f);
        }
        let mut wait = kubectl_cmd(&[
            "wait",
            "--for=condition=Established",
            "crd",
            "--all",
            "--timeout=120s",
        ]);
        let mut sync_apply = kubectl_cmd(&["apply", "--server-side", "-f"]);
        sync_apply.arg(&sync_file);
        let start = Instant::now();
        let mut rss = 0;
        for cmd in [&mut apply, &mut wait, &mut sync_apply] {
            let (out, peak) = run_sampled(cmd);
            assert!(
                out.status.success(),
                "kubectl failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            rss = rss.max(peak);
        }
        let wall = start.elapsed();
        let (requests, mutating) = rt.block_on(counted(&server));
        kubectl.push(Figures {
            wall,
            requests,
            mutating,
            rss_kib: rss,
        });
        drop(server);
        eprintln!(
            "run {run}: agent {:.1} ms, {} requests; kubectl {:.1} ms, {} requests",
            ms(agent[run].wall),
            agent[run].requests,
            ms(kubectl[run].wall),
            kubectl[run].requests
        );
    }

    let a = median(agent.iter().map(|f| f.wall).collect());
    let k = median(kubectl.iter().map(|f| f.wall).collect());
    let rss = |f: &[Figures]| f.iter().map(|f| f.rss_kib).max().unwrap_or(0) as f64 / 1024.0;
    println!(
        "corpus: {} files + the sops-age Secret + the sync objects, {} bundle objects, {:.1} MiB; kube-apiserver v1.36.2, etcd 3.6.13; {RUNS} runs, medians",
        files.len() - 1,
        count,
        bytes as f64 / 1048576.0
    );
    println!(
        "agent   : {:>8.1} ms  requests {:>4} (mutating {:>3})  peak RSS {:>5.1} MiB",
        ms(a),
        agent[0].requests,
        agent[0].mutating,
        rss(&agent)
    );
    println!(
        "kubectl : {:>8.1} ms  requests {:>4} (mutating {:>3})  peak RSS {:>5.1} MiB",
        ms(k),
        kubectl[0].requests,
        kubectl[0].mutating,
        rss(&kubectl)
    );
    println!(
        "agent/kubectl: {:.2}x the time; of the agent's time, connect + apply + wait (bundle already parsed, as at boot): {:.1} ms",
        a.as_secs_f64() / k.as_secs_f64(),
        ms(median(apply_only))
    );
}
