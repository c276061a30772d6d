//! The Kubernetes half of the boot against the API stand-in: secrets, CRDs, Flux install and
//! sync, readiness, idempotence, conflicts, faults and deadlines. Tests play the controllers.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::time::Duration;

use bootstrap_agent::bundle::Bundle;
use bootstrap_agent::kube::{
    Cluster, FluxSync, KubeError, ObjectState, Readiness, SecretOutcome, SecretSpec,
};
use bootstrap_agent_tests::kubeapi::fixture::{Corpus, compose_bundle, upstream};
use bootstrap_agent_tests::kubeapi::{CrdPolicy, KubeApi, ObjectRef, owners};
use serde_json::{Value, json};
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

fn sync() -> FluxSync {
    let mut s = FluxSync::new(
        "ssh://git@github.com/example/homelab.git",
        "main",
        "./kubernetes/flux-system",
    );
    s.secret_ref = Some("flux-system".into());
    s
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

const REV: &str = "main@sha1:0123456789abcdef0123456789abcdef01234567";

fn play_controllers(api: &KubeApi) {
    for d in api.list("apps", "deployments") {
        assert!(
            api.mark_deployment_available("flux-system", d["metadata"]["name"].as_str().unwrap())
        );
    }
    assert!(api.mark_flux(
        &ObjectRef::new(
            "source.toolkit.fluxcd.io",
            "gitrepositories",
            "flux-system",
            "flux-system"
        ),
        "True",
        "Succeeded",
        &format!("stored artifact for revision '{REV}'"),
        REV
    ));
    assert!(api.mark_flux(
        &ObjectRef::new(
            "kustomize.toolkit.fluxcd.io",
            "kustomizations",
            "flux-system",
            "flux-system"
        ),
        "True",
        "ReconciliationSucceeded",
        &format!("Applied revision: {REV}"),
        REV
    ));
}

async fn full_run(e: &Env) -> (Vec<bootstrap_agent::kube::SecretReport>, Readiness) {
    let s = e
        .cluster
        .seed_secrets(&[sops_age(AGE_KEY, false)])
        .await
        .expect("secrets");
    e.cluster
        .install_crds(&e.bundle, Duration::from_secs(30))
        .await
        .expect("CRDs");
    e.cluster
        .install_flux(&e.bundle, Duration::from_secs(30))
        .await
        .expect("Flux");
    e.cluster.apply_sync(&sync()).await.expect("sync");
    let r = e.cluster.check_ready(&sync()).await.expect("readiness");
    (s, r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_cluster_is_bootstrapped_and_a_rerun_mutates_nothing() {
    let e = env_with(CrdPolicy::default(), true).await;
    e.cluster.api_ready().await.expect("readyz");

    let secrets = e
        .cluster
        .seed_secrets(&[sops_age(AGE_KEY, false)])
        .await
        .unwrap();
    assert_eq!(secrets[0].outcome, SecretOutcome::Created);
    assert_eq!(secret_value(&e.api), AGE_KEY.as_bytes());
    let s = e
        .api
        .get(&ObjectRef::new("", "secrets", "flux-system", "sops-age"))
        .unwrap();
    assert_eq!(s["type"], "Opaque");
    assert_eq!(
        s["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "bootstrap-agent"
    );

    let crd_reports = e
        .cluster
        .install_crds(&e.bundle, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        crd_reports.iter().all(|r| r.state == ObjectState::Created),
        "{crd_reports:#?}"
    );
    let established = e.api.established_crds();
    for d in docs("cert-manager.crds.yaml")
        .iter()
        .chain(docs("gateway-api.standard.crds.yaml").iter())
    {
        let name = d["metadata"]["name"].as_str().unwrap();
        assert!(established.contains(name), "{name} not Established");
        // Large CRDs apply intact: what the server stored is the input.
        let stored = e.api.get(&ObjectRef::crd(name)).unwrap();
        assert_eq!(
            stored["spec"], d["spec"],
            "{name}: stored spec differs from the upstream file"
        );
        assert!(owners(&stored).contains_key("bootstrap-agent"));
    }

    let flux_reports = e
        .cluster
        .install_flux(&e.bundle, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(flux_reports.len() > 20, "{flux_reports:#?}");
    for d in docs("flux.crds.yaml") {
        assert!(established.len() < e.api.established_crds().len());
        assert!(
            e.api
                .established_crds()
                .contains(d["metadata"]["name"].as_str().unwrap())
        );
    }
    let sc = e
        .api
        .get(&ObjectRef::new(
            "apps",
            "deployments",
            "flux-system",
            "source-controller",
        ))
        .expect("source-controller");
    assert_eq!(
        sc["spec"]["template"]["spec"]["containers"][0]["image"],
        "ghcr.io/fluxcd/source-controller:v1.9.1"
    );

    let sync_reports = e.cluster.apply_sync(&sync()).await.unwrap();
    assert_eq!(sync_reports.len(), 2);
    let git = e
        .api
        .get(&ObjectRef::new(
            "source.toolkit.fluxcd.io",
            "gitrepositories",
            "flux-system",
            "flux-system",
        ))
        .unwrap();
    assert_eq!(
        git["spec"],
        json!({"interval": "1m0s", "ref": {"branch": "main"}, "url": "ssh://git@github.com/example/homelab.git", "secretRef": {"name": "flux-system"}})
    );
    let ks = e
        .api
        .get(&ObjectRef::new(
            "kustomize.toolkit.fluxcd.io",
            "kustomizations",
            "flux-system",
            "flux-system",
        ))
        .unwrap();
    assert_eq!(
        ks["spec"]["decryption"],
        json!({"provider": "sops", "secretRef": {"name": "sops-age"}})
    );
    assert_eq!(ks["spec"]["prune"], true);
    assert_eq!(ks["spec"]["interval"], "10m0s");

    match e.cluster.check_ready(&sync()).await.unwrap() {
        Readiness::Progressing(r) => assert!(
            r.iter()
                .any(|l| l.kind == "Deployment" && l.state == ObjectState::Progressing),
            "{r:#?}"
        ),
        other => panic!("expected Progressing before the controllers run, got {other:?}"),
    }

    // A rerun before Flux has synced: everything is recognised, nothing is sent.
    e.api.reset_counts();
    let (s, _) = full_run(&e).await;
    assert_eq!(s[0].outcome, SecretOutcome::Unchanged);
    assert_eq!(
        e.api.mutating_requests(),
        0,
        "rerun mutated: {:#?}",
        e.api.request_log()
    );

    play_controllers(&e.api);
    match e.cluster.check_ready(&sync()).await.unwrap() {
        Readiness::Ready(r) => {
            assert_eq!(r.len(), 6, "{r:#?}");
            assert!(
                r.iter()
                    .any(|l| l.kind == "Kustomization" && l.message.contains(REV))
            );
        }
        other => panic!("expected Ready, got {other:?}"),
    }

    // A rerun over a finished cluster: Git owns Flux, nothing is sent.
    e.api.reset_counts();
    let (_, r) = full_run(&e).await;
    assert!(matches!(r, Readiness::Ready(_)), "{r:?}");
    assert_eq!(
        e.api.mutating_requests(),
        0,
        "rerun mutated: {:#?}",
        e.api.request_log()
    );
    let kept = e
        .cluster
        .install_flux(&e.bundle, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].state, ObjectState::Kept);
    assert!(kept[0].message.contains("owned by Git"), "{}", kept[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_sops_age_with_other_content_is_left_untouched_and_reported() {
    let e = env_with(CrdPolicy::default(), false).await;
    e.api.seed(
        &ObjectRef::new("", "namespaces", "", "flux-system"),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "flux-system"}}),
        "kubectl-create",
    );
    use base64::Engine;
    let other = base64::engine::general_purpose::STANDARD.encode("AGE-SECRET-KEY-1OTHER");
    e.api.seed(
        &ObjectRef::new("", "secrets", "flux-system", "sops-age"),
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": "sops-age"}, "data": {"age.agekey": other}}),
        "kubectl-create",
    );
    let before = e
        .api
        .get(&ObjectRef::new("", "secrets", "flux-system", "sops-age"))
        .unwrap();
    e.api.reset_counts();
    let r = e
        .cluster
        .seed_secrets(&[sops_age(AGE_KEY, false)])
        .await
        .unwrap();
    assert_eq!(r[0].outcome, SecretOutcome::Differs);
    assert!(r[0].to_string().contains("left untouched"), "{}", r[0]);
    assert!(
        !format!("{r:?}").contains("AGE-SECRET"),
        "reports must not carry values"
    );
    assert_eq!(e.api.mutating_requests(), 0);
    assert_eq!(
        e.api
            .get(&ObjectRef::new("", "secrets", "flux-system", "sops-age"))
            .unwrap(),
        before
    );

    // Debug of the spec is redacted.
    assert!(!format!("{:?}", sops_age(AGE_KEY, false)).contains("AGE-SECRET"));

    // With overwrite configured it is replaced.
    let r = e
        .cluster
        .seed_secrets(&[sops_age(AGE_KEY, true)])
        .await
        .unwrap();
    assert_eq!(r[0].outcome, SecretOutcome::Replaced);
    assert_eq!(secret_value(&e.api), AGE_KEY.as_bytes());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_kustomization_failure_carries_fluxs_message() {
    let e = env_with(CrdPolicy::default(), false).await;
    full_run(&e).await;
    play_controllers(&e.api);
    let msg =
        "kustomize build failed: accumulating resources from 'apps': no such file or directory";
    e.api.mark_flux(
        &ObjectRef::new(
            "kustomize.toolkit.fluxcd.io",
            "kustomizations",
            "flux-system",
            "flux-system",
        ),
        "False",
        "BuildFailed",
        msg,
        REV,
    );
    match e.cluster.check_ready(&sync()).await.unwrap() {
        Readiness::Failed {
            object, message, ..
        } => {
            assert_eq!(object, "Kustomization flux-system/flux-system");
            assert!(message.contains(msg), "{message}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    // A transient failure (source not ready yet) is a wait, not a failure.
    e.api.mark_flux(
        &ObjectRef::new(
            "kustomize.toolkit.fluxcd.io",
            "kustomizations",
            "flux-system",
            "flux-system",
        ),
        "False",
        "ArtifactFailed",
        "Source artifact not found, retrying in 30s",
        REV,
    );
    assert!(matches!(
        e.cluster.check_ready(&sync()).await.unwrap(),
        Readiness::Progressing(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_are_reported_not_forced_and_newer_crds_are_kept() {
    let e = env_with(CrdPolicy::default(), false).await;
    // Someone else owns the source-controller Service with other ports.
    seed_foreign_service(&e.api);
    // A newer cert-manager CRD is already there (the Flux tree upgraded it).
    let mut newer = docs("cert-manager.crds.yaml")
        .into_iter()
        .find(|d| d["metadata"]["name"] == "certificates.cert-manager.io")
        .unwrap();
    newer["metadata"]["labels"]["app.kubernetes.io/version"] = json!("v1.22.0");
    e.api.seed(
        &ObjectRef::crd("certificates.cert-manager.io"),
        newer,
        "kustomize-controller",
    );

    let reports = e
        .cluster
        .install_crds(&e.bundle, Duration::from_secs(30))
        .await
        .unwrap();
    let kept = reports
        .iter()
        .find(|r| r.name == "certificates.cert-manager.io")
        .unwrap();
    assert_eq!(kept.state, ObjectState::Kept, "{kept}");
    assert!(kept.message.contains("v1.22.0"), "{kept}");
    let stored = e
        .api
        .get(&ObjectRef::crd("certificates.cert-manager.io"))
        .unwrap();
    assert_eq!(
        stored["metadata"]["labels"]["app.kubernetes.io/version"],
        "v1.22.0"
    );
    assert!(!owners(&stored).contains_key("bootstrap-agent"));

    let err = e
        .cluster
        .install_flux(&e.bundle, Duration::from_secs(30))
        .await
        .expect_err("conflict must fail the step");
    match &err {
        KubeError::Apply {
            failures,
            transient,
        } => {
            assert!(!transient);
            assert_eq!(failures.len(), 1, "{failures:#?}");
            let f = &failures[0];
            assert_eq!(
                (f.kind.as_str(), f.name.as_str(), f.state),
                ("Service", "source-controller", ObjectState::Conflict)
            );
            assert!(
                f.message.contains("kubectl-edit") && f.message.contains(".spec.ports"),
                "{f}"
            );
        }
        other => panic!("expected Apply conflict, got {other:?}"),
    }
    let svc = e
        .api
        .get(&ObjectRef::new(
            "",
            "services",
            "flux-system",
            "source-controller",
        ))
        .unwrap();
    assert_eq!(
        svc["spec"]["ports"][0]["port"], 8080,
        "a conflicting field must not be forced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_takes_back_only_objects_the_agent_created() {
    use bootstrap_agent::kube::ClusterOptions;
    let e = env_with(CrdPolicy::default(), false).await;
    // Someone else made this Service: it must not be forced even with force configured.
    seed_foreign_service(&e.api);
    let forcing = e.cluster.clone().with_options(ClusterOptions {
        force_conflicts: true,
        ..Default::default()
    });
    e.cluster
        .install_crds(&e.bundle, Duration::from_secs(30))
        .await
        .unwrap();
    let err = forcing
        .install_flux(&e.bundle, Duration::from_secs(30))
        .await
        .expect_err("foreign object stays a conflict");
    assert!(
        matches!(&err, KubeError::Apply { failures, .. } if failures.len() == 1 && failures[0].name == "source-controller"),
        "{err}"
    );

    // An object the agent created and someone edited since is taken back when forced.
    let nc = ObjectRef::new("", "services", "flux-system", "notification-controller");
    let mut svc = e.api.get(&nc).expect("created by the agent");
    svc["spec"]["ports"][0]["port"] = json!(9999);
    svc["metadata"]["annotations"]["bootstrap-agent.io/applied-digest"] = json!("edited");
    e.api.replace_as(&nc, svc, "kubectl-edit");
    let err = e
        .cluster
        .install_flux(&e.bundle, Duration::from_secs(30))
        .await
        .expect_err("without force it is reported");
    assert!(err.to_string().contains("notification-controller"), "{err}");
    let _ = forcing
        .install_flux(&e.bundle, Duration::from_secs(30))
        .await;
    assert_eq!(
        e.api.get(&nc).unwrap()["spec"]["ports"][0]["port"],
        80,
        "forced back to the bundle's value"
    );
}

/// Someone else (`kubectl-edit`) owns the source-controller Service, with other ports.
fn seed_foreign_service(api: &KubeApi) {
    api.seed(
        &ObjectRef::new("", "namespaces", "", "flux-system"),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "flux-system"}}),
        "kubectl-create",
    );
    api.seed(
        &ObjectRef::new("", "services", "flux-system", "source-controller"),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "source-controller"}, "spec": {"type": "ClusterIP", "ports": [{"name": "http", "port": 8080}]}}),
        "kubectl-edit",
    );
}
