//! Faults the real API server cannot be made to produce, on the Kubernetes API stand-in: 503s
//! for half a minute, dropped connections, stalls, a CRD that is never Established, and a watch
//! that answers every request with an error event. Everything else runs against the real API
//! server (`kube_real`). The stand-in's answers are checked against the real server's in
//! `kube_differential`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::time::Duration;

use bootstrap_agent::bundle::Bundle;
use bootstrap_agent::kube::{Cluster, KubeError, SecretOutcome, SecretSpec};
use bootstrap_agent_tests::kubeapi::fixture::{Corpus, compose_bundle, upstream};
use bootstrap_agent_tests::kubeapi::{CrdPolicy, KubeApi, ObjectRef};
use serde_json::Value;
use zeroize::Zeroizing;

const AGE_KEY: &str = "AGE-SECRET-KEY-1QYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQS5Q9DQ";

struct Env {
    api: KubeApi,
    cluster: Cluster,
    bundle: Bundle,
    _dir: tempfile::TempDir,
}

async fn env_with(policy: CrdPolicy, gateway_api: bool) -> Env {
    let api = KubeApi::start_with(policy).await.expect("stand-in starts");
    let dir = tempfile::tempdir().unwrap();
    compose_bundle(dir.path(), Corpus { gateway_api });
    let bundle = Bundle::load_dir(dir.path()).expect("composed bundle loads");
    let cluster = Cluster::connect(&api.kubeconfig()).await.expect("connects");
    Env {
        api,
        cluster,
        bundle,
        _dir: dir,
    }
}

fn sops_age(value: &str, overwrite: bool) -> SecretSpec {
    SecretSpec {
        namespace: "flux-system".into(),
        name: "sops-age".into(),
        key: "age.agekey".into(),
        value: Zeroizing::new(value.as_bytes().to_vec()),
        overwrite,
    }
}

fn docs(file: &str) -> Vec<Value> {
    serde_saphyr::from_multiple(&std::fs::read_to_string(upstream(file)).unwrap()).unwrap()
}

fn secret_value(api: &KubeApi) -> Vec<u8> {
    use base64::Engine;
    let s = api
        .get(&ObjectRef::new("", "secrets", "flux-system", "sops-age"))
        .expect("sops-age exists");
    base64::engine::general_purpose::STANDARD
        .decode(s["data"]["age.agekey"].as_str().unwrap())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_answering_503_for_30s_mid_apply_is_ridden_out() {
    let window: u64 = std::env::var("KUBE_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let e = env_with(CrdPolicy::default(), true).await;
    // The outage starts at the 5th mutating request, in the middle of the CRD stage.
    e.api
        .unavailable_after_mutations(5, Duration::from_secs(window));
    let reports = e
        .cluster
        .install_crds(&e.bundle, Duration::from_secs(window + 60))
        .await
        .expect("recovers after the outage");
    assert!(e.api.faulted_requests() > 0, "the outage never hit");
    assert_eq!(reports.len(), 16);
    assert_eq!(e.api.established_crds().len(), 16);
    for d in docs("cert-manager.crds.yaml") {
        let stored = e
            .api
            .get(&ObjectRef::crd(d["metadata"]["name"].as_str().unwrap()))
            .unwrap();
        assert_eq!(stored["spec"], d["spec"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_and_stalls_are_retried() {
    let e = env_with(CrdPolicy::default(), false).await;
    e.api.drop_next(3);
    e.api.stall_next(2, Duration::from_millis(500));
    let r = e
        .cluster
        .seed_secrets(&[sops_age(AGE_KEY, false)])
        .await
        .expect("retried");
    assert_eq!(r[0].outcome, SecretOutcome::Created);
    assert_eq!(secret_value(&e.api), AGE_KEY.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crd_never_established_fails_at_the_deadline_naming_it() {
    let mut policy = CrdPolicy::default();
    policy.never.insert("certificates.cert-manager.io".into());
    let e = env_with(policy, false).await;
    let err = e
        .cluster
        .install_crds(&e.bundle, Duration::from_secs(3))
        .await
        .expect_err("must time out");
    match &err {
        KubeError::NotEstablished { names, .. } => {
            assert_eq!(names, &vec!["certificates.cert-manager.io".to_string()])
        }
        other => panic!("expected NotEstablished, got {other:?}"),
    }
    assert!(
        err.to_string().contains("certificates.cert-manager.io"),
        "{err}"
    );
}

/// Agent requests to the CRD watch and to single CRDs, from the stand-in's log.
fn crd_reads(api: &KubeApi) -> (usize, usize) {
    let log = api.request_log();
    let watches = log
        .iter()
        .filter(|l| l.contains("customresourcedefinitions") && l.contains("watch=true"))
        .count();
    let gets = log
        .iter()
        .filter(|l| l.starts_with("GET /apis/apiextensions.k8s.io/v1/customresourcedefinitions/"))
        .count();
    (watches, gets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_keeps_failing_is_given_up_for_polling() {
    let e = env_with(CrdPolicy::default(), false).await;
    e.api.fail_watches(usize::MAX);
    let reports = e
        .cluster
        .install_crds(&e.bundle, Duration::from_secs(60))
        .await
        .expect("the CRDs are found Established by polling");
    assert_eq!(reports.len(), 6);
    let (watches, gets) = crd_reads(&e.api);
    assert_eq!(watches, 3, "three unusable watches, then polling");
    assert!(gets >= 6, "each pending CRD was read: {gets}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_rate_stays_bounded_when_the_watch_keeps_failing() {
    // The old failure: an ERROR event on every watch reopened it at once, tens of thousands
    // of requests a minute. Now: three watches backing off, then one read of the pending CRD
    // per poll, backing off to 10 s.
    let window = Duration::from_secs(20);
    let mut policy = CrdPolicy::default();
    policy.never.insert("certificates.cert-manager.io".into());
    let e = env_with(policy, false).await;
    e.api.fail_watches(usize::MAX);
    let err = e
        .cluster
        .install_crds(&e.bundle, window)
        .await
        .expect_err("never Established");
    assert!(matches!(err, KubeError::NotEstablished { .. }), "{err}");
    let (watches, _) = crd_reads(&e.api);
    assert_eq!(watches, 3, "{:#?}", e.api.request_log());
    // The first poll reads every pending CRD; later ones only the one still pending, about
    // 1, 2, 4, 8 and 10 s apart (with jitter): at most 8 reads of it in 20 s.
    let reads = e
        .api
        .request_log()
        .iter()
        .filter(|l| l.starts_with("GET ") && l.ends_with("/certificates.cert-manager.io"))
        .count();
    assert!(
        (3..=8).contains(&reads),
        "{reads} reads of the pending CRD in {window:?}: {:#?}",
        e.api.request_log()
    );
    // Everything: one list and 6 applies, 3 watches, 5 first reads, the polls, one nudge.
    assert!(
        e.api.requests() <= 25,
        "{} requests in {window:?}",
        e.api.requests()
    );
}
