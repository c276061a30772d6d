//! The Kubernetes half of the boot against a real kube-apiserver 1.36 and etcd 3.6: first boot
//! to Flux Ready (the test plays the controllers through `/status`), reruns that send nothing as
//! counted by the API server's audit log, a foreign Secret kept, a real server-side-apply
//! conflict reported and never forced, a newer CRD left alone, the API server killed for a
//! minute mid-apply, etcd restarted, and a CRD the server never establishes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::time::Duration;

use bootstrap_agent::bundle::Bundle;
use bootstrap_agent::kube::{
    Cluster, ClusterOptions, FluxSync, KubeError, ObjectState, Readiness, SecretOutcome, SecretSpec,
};
use bootstrap_agent_tests::envtest::{AGENT_USER, ApiServer, managers};
use bootstrap_agent_tests::kubeapi::ObjectRef;
use bootstrap_agent_tests::kubeapi::fixture::{Corpus, compose_bundle, upstream};
use serde_json::{Value, json};
use zeroize::Zeroizing;

const AGE_KEY: &str = "AGE-SECRET-KEY-1QYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQS5Q9DQ";
const REV: &str = "main@sha1:0123456789abcdef0123456789abcdef01234567";

struct Env {
    server: ApiServer,
    cluster: Cluster,
    bundle: Bundle,
    _dir: tempfile::TempDir,
}

async fn env(gateway_api: bool) -> Env {
    let server = ApiServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    compose_bundle(dir.path(), Corpus { gateway_api });
    let bundle = Bundle::load_dir(dir.path()).expect("composed bundle loads");
    let cluster = Cluster::connect(&server.kubeconfig())
        .await
        .expect("connects");
    Env {
        server,
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

fn sops_age_ref() -> ObjectRef {
    ObjectRef::new("", "secrets", "flux-system", "sops-age")
}

fn gitrepository() -> ObjectRef {
    ObjectRef::new(
        "source.toolkit.fluxcd.io",
        "gitrepositories",
        "flux-system",
        "flux-system",
    )
}

fn kustomization() -> ObjectRef {
    ObjectRef::new(
        "kustomize.toolkit.fluxcd.io",
        "kustomizations",
        "flux-system",
        "flux-system",
    )
}

async fn secret_value(server: &ApiServer) -> Vec<u8> {
    use base64::Engine;
    let s = server.get(&sops_age_ref()).await.expect("sops-age exists");
    base64::engine::general_purpose::STANDARD
        .decode(s["data"]["age.agekey"].as_str().unwrap())
        .unwrap()
}

/// Plays kube-controller-manager and Flux's controllers: every Deployment Available, the
/// GitRepository with an artifact, the Kustomization applied.
async fn play_controllers(server: &ApiServer) {
    for d in server.list("apps", "deployments").await {
        let ns = d["metadata"]["namespace"].as_str().unwrap();
        let name = d["metadata"]["name"].as_str().unwrap();
        assert!(server.mark_deployment_available(ns, name).await);
    }
    assert!(
        server
            .mark_flux(
                &gitrepository(),
                "True",
                "Succeeded",
                &format!("stored artifact for revision '{REV}'"),
                REV
            )
            .await
    );
    assert!(
        server
            .mark_flux(
                &kustomization(),
                "True",
                "ReconciliationSucceeded",
                &format!("Applied revision: {REV}"),
                REV
            )
            .await
    );
}

/// Every step of the Kubernetes half, as one run of the agent does them.
async fn full_run(e: &Env) -> (Vec<bootstrap_agent::kube::SecretReport>, Readiness) {
    let s = e
        .cluster
        .seed_secrets(&[sops_age(AGE_KEY, false)])
        .await
        .expect("secrets");
    e.cluster
        .install_crds(&e.bundle, Duration::from_secs(60))
        .await
        .expect("CRDs");
    e.cluster
        .install_flux(&e.bundle, Duration::from_secs(60))
        .await
        .expect("Flux");
    e.cluster.apply_sync(&sync()).await.expect("sync");
    let r = e.cluster.check_ready(&sync()).await.expect("readiness");
    (s, r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_boot_reaches_ready_and_reruns_send_no_mutating_request() {
    let e = env(true).await;
    e.cluster.api_ready().await.expect("readyz");

    let secrets = e
        .cluster
        .seed_secrets(&[sops_age(AGE_KEY, false)])
        .await
        .unwrap();
    assert_eq!(secrets[0].outcome, SecretOutcome::Created);
    assert_eq!(secret_value(&e.server).await, AGE_KEY.as_bytes());
    let s = e.server.get(&sops_age_ref()).await.unwrap();
    assert_eq!(s["type"], "Opaque");
    assert_eq!(
        s["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "bootstrap-agent"
    );

    let crd_reports = e
        .cluster
        .install_crds(&e.bundle, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(
        crd_reports.iter().all(|r| r.state == ObjectState::Created),
        "{crd_reports:#?}"
    );
    let established = e.server.established_crds().await;
    for d in docs("cert-manager.crds.yaml")
        .iter()
        .chain(docs("gateway-api.standard.crds.yaml").iter())
    {
        let name = d["metadata"]["name"].as_str().unwrap();
        assert!(established.contains(name), "{name} not Established");
        let stored = e.server.get(&ObjectRef::crd(name)).await.unwrap();
        // Large CRDs arrive intact: the stored schema is the upstream one.
        assert_eq!(
            stored["spec"]["versions"][0]["schema"], d["spec"]["versions"][0]["schema"],
            "{name}: stored schema differs from the upstream file"
        );
        assert!(managers(&stored).contains_key("bootstrap-agent"), "{name}");
    }
    // Once a CRD is Established its kinds are served: a custom resource can be created.
    let issuer = json!({"apiVersion": "cert-manager.io/v1", "kind": "ClusterIssuer",
        "metadata": {"name": "selfsigned"}, "spec": {"selfSigned": {}}});
    let (code, body) = e
        .server
        .apply_as(
            &ObjectRef::new("cert-manager.io", "clusterissuers", "", "selfsigned"),
            issuer,
            "test",
        )
        .await;
    assert_eq!(code, 201, "{body}");

    let flux_reports = e
        .cluster
        .install_flux(&e.bundle, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(flux_reports.len() > 20, "{flux_reports:#?}");
    let established = e.server.established_crds().await;
    for d in docs("flux.crds.yaml") {
        let name = d["metadata"]["name"].as_str().unwrap();
        assert!(established.contains(name), "{name} not Established");
    }
    let sc = e
        .server
        .get(&ObjectRef::new(
            "apps",
            "deployments",
            "flux-system",
            "source-controller",
        ))
        .await
        .expect("source-controller");
    assert_eq!(
        sc["spec"]["template"]["spec"]["containers"][0]["image"],
        "ghcr.io/fluxcd/source-controller:v1.9.1"
    );

    let sync_reports = e.cluster.apply_sync(&sync()).await.unwrap();
    assert_eq!(sync_reports.len(), 2);
    let git = e.server.get(&gitrepository()).await.unwrap();
    assert_eq!(
        git["spec"]["url"],
        "ssh://git@github.com/example/homelab.git"
    );
    assert_eq!(git["spec"]["interval"], "1m0s");
    assert_eq!(git["spec"]["ref"], json!({"branch": "main"}));
    assert_eq!(git["spec"]["secretRef"], json!({"name": "flux-system"}));
    let ks = e.server.get(&kustomization()).await.unwrap();
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
    let cursor = e.server.cursor().await;
    let (s, _) = full_run(&e).await;
    assert_eq!(s[0].outcome, SecretOutcome::Unchanged);
    let sent = e.server.agent_mutations_since(cursor).await;
    assert!(sent.is_empty(), "the rerun mutated: {sent:#?}");

    play_controllers(&e.server).await;
    match e.cluster.check_ready(&sync()).await.unwrap() {
        Readiness::Ready(r) => {
            assert!(
                r.iter()
                    .any(|l| l.kind == "Kustomization" && l.message.contains(REV)),
                "{r:#?}"
            );
            assert!(r.iter().all(|l| l.state == ObjectState::Ready), "{r:#?}");
        }
        other => panic!("expected Ready, got {other:?}"),
    }

    // A rerun over a finished cluster: Git owns Flux, nothing is sent.
    let cursor = e.server.cursor().await;
    let (_, r) = full_run(&e).await;
    assert!(matches!(r, Readiness::Ready(_)), "{r:?}");
    let sent = e.server.agent_mutations_since(cursor).await;
    assert!(sent.is_empty(), "the rerun mutated: {sent:#?}");
    let all = e.server.agent_requests_since(cursor).await;
    assert!(!all.is_empty(), "the rerun did look at the cluster");
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
async fn an_existing_sops_age_with_other_content_is_left_untouched() {
    let e = env(false).await;
    e.server
        .create_as(
            &ObjectRef::new("", "namespaces", "", ""),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "flux-system"}}),
            "kubectl-create",
        )
        .await;
    use base64::Engine;
    let other = base64::engine::general_purpose::STANDARD.encode("AGE-SECRET-KEY-1OTHER");
    e.server
        .create_as(
            &ObjectRef::new("", "secrets", "flux-system", ""),
            json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": "sops-age"}, "data": {"age.agekey": other}}),
            "kubectl-create",
        )
        .await;
    let before = e.server.get(&sops_age_ref()).await.unwrap();
    let cursor = e.server.cursor().await;
    let r = e
        .cluster
        .seed_secrets(&[sops_age(AGE_KEY, false)])
        .await
        .unwrap();
    assert_eq!(r[0].outcome, SecretOutcome::Differs);
    assert!(r[0].to_string().contains("left untouched"), "{}", r[0]);
    assert!(!format!("{r:?}").contains("AGE-SECRET"));
    let sent = e.server.agent_mutations_since(cursor).await;
    assert!(sent.is_empty(), "{sent:#?}");
    assert_eq!(e.server.get(&sops_age_ref()).await.unwrap(), before);

    // With overwrite configured it is replaced.
    let r = e
        .cluster
        .seed_secrets(&[sops_age(AGE_KEY, true)])
        .await
        .unwrap();
    assert_eq!(r[0].outcome, SecretOutcome::Replaced);
    assert_eq!(secret_value(&e.server).await, AGE_KEY.as_bytes());
}

/// `kubectl-edit` made the source-controller Service, with another target port and selector.
async fn seed_foreign_service(server: &ApiServer) {
    server
        .create_as(
            &ObjectRef::new("", "namespaces", "", ""),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "flux-system"}}),
            "kubectl-create",
        )
        .await;
    server
        .create_as(
            &ObjectRef::new("", "services", "flux-system", ""),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "source-controller"},
                "spec": {"type": "ClusterIP", "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 9090}],
                    "selector": {"app": "something-else"}}}),
            "kubectl-edit",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_conflict_is_reported_with_its_manager_and_never_forced() {
    let e = env(false).await;
    seed_foreign_service(&e.server).await;
    e.cluster
        .install_crds(&e.bundle, Duration::from_secs(60))
        .await
        .unwrap();
    let forcing = e.cluster.clone().with_options(ClusterOptions {
        force_conflicts: true,
        ..Default::default()
    });
    for cluster in [&e.cluster, &forcing] {
        let err = cluster
            .install_flux(&e.bundle, Duration::from_secs(60))
            .await
            .expect_err("the conflict fails the step");
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
                    ("Service", "source-controller", ObjectState::Conflict),
                    "{f}"
                );
                assert!(
                    f.message.contains("kubectl-edit") && f.message.contains(".spec.ports"),
                    "{f}"
                );
            }
            other => panic!("expected an apply conflict, got {other:?}"),
        }
    }
    let svc = e
        .server
        .get(&ObjectRef::new(
            "",
            "services",
            "flux-system",
            "source-controller",
        ))
        .await
        .unwrap();
    assert_eq!(
        (
            &svc["spec"]["ports"][0]["targetPort"],
            &svc["spec"]["selector"]["app"]
        ),
        (&json!(9090), &json!("something-else")),
        "a conflicting field must never be forced on an object someone else made"
    );

    // An object the agent created and someone edited since is taken back only when forced.
    let nc = ObjectRef::new("", "services", "flux-system", "notification-controller");
    let mut svc = e.server.get(&nc).await.expect("created by the agent");
    svc["spec"]["ports"][0]["targetPort"] = json!(9999);
    svc["metadata"]["annotations"]["bootstrap-agent.io/applied-digest"] = json!("edited");
    e.server.replace_as(&nc, svc, "kubectl-edit").await;
    let err = e
        .cluster
        .install_flux(&e.bundle, Duration::from_secs(60))
        .await
        .expect_err("without force it is reported");
    assert!(err.to_string().contains("notification-controller"), "{err}");
    let _ = forcing
        .install_flux(&e.bundle, Duration::from_secs(60))
        .await;
    assert_eq!(
        e.server.get(&nc).await.unwrap()["spec"]["ports"][0]["targetPort"],
        "http",
        "forced back to the bundle's value"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crd_served_in_a_newer_version_is_left_alone() {
    let e = env(false).await;
    let mut newer = docs("cert-manager.crds.yaml")
        .into_iter()
        .find(|d| d["metadata"]["name"] == "certificates.cert-manager.io")
        .unwrap();
    newer["metadata"]["labels"]["app.kubernetes.io/version"] = json!("v1.22.0");
    e.server
        .create_as(&ObjectRef::crd(""), newer, "helm-controller")
        .await;
    let reports = e
        .cluster
        .install_crds(&e.bundle, Duration::from_secs(60))
        .await
        .unwrap();
    let kept = reports
        .iter()
        .find(|r| r.name == "certificates.cert-manager.io")
        .unwrap();
    assert_eq!(kept.state, ObjectState::Kept, "{kept}");
    assert!(kept.message.contains("v1.22.0"), "{kept}");
    let stored = e
        .server
        .get(&ObjectRef::crd("certificates.cert-manager.io"))
        .await
        .unwrap();
    assert_eq!(
        stored["metadata"]["labels"]["app.kubernetes.io/version"],
        "v1.22.0"
    );
    assert!(!managers(&stored).contains_key("bootstrap-agent"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_kustomization_failure_carries_fluxs_message() {
    let e = env(false).await;
    full_run(&e).await;
    play_controllers(&e.server).await;
    let msg =
        "kustomize build failed: accumulating resources from 'apps': no such file or directory";
    assert!(
        e.server
            .mark_flux(&kustomization(), "False", "BuildFailed", msg, REV)
            .await
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
    // A failure that may pass (the source is not ready yet) is a wait.
    e.server
        .mark_flux(
            &kustomization(),
            "False",
            "ArtifactFailed",
            "Source artifact not found, retrying in 30s",
            REV,
        )
        .await;
    assert!(matches!(
        e.cluster.check_ready(&sync()).await.unwrap(),
        Readiness::Progressing(_)
    ));
}

/// Server-side applies of CRDs by the agent, as the API server recorded them.
async fn crd_applies(server: &ApiServer) -> usize {
    server
        .requests_by(AGENT_USER)
        .await
        .iter()
        .filter(|r| r.verb == "patch" && r.resource == "customresourcedefinitions")
        .count()
}

/// Waits until the API server has recorded `n` server-side applies of CRDs by the agent.
async fn wait_for_crd_applies(server: &ApiServer, n: usize) {
    for _ in 0..2000 {
        if crd_applies(server).await >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the agent never applied {n} CRDs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_killed_for_a_minute_mid_apply_is_ridden_out() {
    let outage: u64 = std::env::var("KUBE_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let e = env(true).await;
    // One request at a time, so that the kill lands in the middle of the CRD stage.
    let cluster = e.cluster.clone().with_options(ClusterOptions {
        concurrency: 1,
        ..Default::default()
    });
    let apply = cluster.install_crds(&e.bundle, Duration::from_secs(outage + 120));
    let outage = async {
        wait_for_crd_applies(&e.server, 3).await;
        let before = crd_applies(&e.server).await;
        e.server.kill_apiserver();
        tokio::time::sleep(Duration::from_secs(outage)).await;
        e.server.start_apiserver().await;
        before
    };
    let (result, before) = tokio::join!(apply, outage);
    let reports = result.expect("recovers once the API server is back");
    assert!(
        before < 16,
        "the apply was not interrupted: all {before} CRDs were applied before the kill"
    );
    assert!(crd_applies(&e.server).await >= 16);
    assert_eq!(reports.len(), 16, "{reports:#?}");
    assert_eq!(e.server.established_crds().await.len(), 16);
    // And a rerun finds everything in place.
    let cursor = e.server.cursor().await;
    e.cluster
        .install_crds(&e.bundle, Duration::from_secs(60))
        .await
        .unwrap();
    let sent = e.server.agent_mutations_since(cursor).await;
    assert!(sent.is_empty(), "{sent:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restarted_mid_apply_is_ridden_out() {
    let e = env(true).await;
    let cluster = e.cluster.clone().with_options(ClusterOptions {
        concurrency: 1,
        ..Default::default()
    });
    let apply = cluster.install_crds(&e.bundle, Duration::from_secs(120));
    let restart = async {
        wait_for_crd_applies(&e.server, 3).await;
        e.server.kill_etcd();
        tokio::time::sleep(Duration::from_secs(5)).await;
        e.server.start_etcd();
    };
    let (result, ()) = tokio::join!(apply, restart);
    let reports = result.expect("recovers once etcd is back");
    assert_eq!(reports.len(), 16, "{reports:#?}");
    assert_eq!(e.server.established_crds().await.len(), 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crd_the_server_never_establishes_fails_naming_why_and_the_watch_is_reopened_calmly() {
    let e = env(false).await;
    // Another CRD in cert-manager's group already uses the kind `Issuer`: the server refuses
    // the names of cert-manager's own issuers CRD (NamesAccepted=False) and never
    // establishes it.
    let mut squatter = docs("cert-manager.crds.yaml")
        .into_iter()
        .find(|d| d["metadata"]["name"] == "issuers.cert-manager.io")
        .unwrap();
    squatter["metadata"] = json!({"name": "squatters.cert-manager.io"});
    squatter["spec"]["names"] = json!({"kind": "Issuer", "listKind": "IssuerList",
        "plural": "squatters", "singular": "squatter"});
    e.server
        .create_as(&ObjectRef::crd(""), squatter, "someone")
        .await;
    let cluster = e.cluster.clone().with_options(ClusterOptions {
        // The server ends each watch after 2 s; the agent reopens it.
        watch_timeout: Duration::from_secs(2),
        ..Default::default()
    });
    let cursor = e.server.cursor().await;
    let err = cluster
        .install_crds(&e.bundle, Duration::from_secs(12))
        .await
        .expect_err("issuers.cert-manager.io is never Established");
    match &err {
        KubeError::NotEstablished {
            names, conditions, ..
        } => {
            assert_eq!(names, &vec!["issuers.cert-manager.io".to_string()]);
            assert!(
                conditions
                    .iter()
                    .any(|c| c.contains("NamesAccepted=False") && c.contains("Issuer")),
                "{conditions:#?}"
            );
        }
        other => panic!("expected NotEstablished, got {other:?}"),
    }
    let sent = e.server.agent_requests_since(cursor).await;
    let watches = sent.iter().filter(|r| r.verb == "watch").count();
    // 12 s of 2 s watches: about six, each ended by the server and resumed where it stopped.
    assert!(
        (3..=9).contains(&watches),
        "{watches} watches in 12 s: {sent:#?}"
    );
    assert!(
        sent.len() < 40,
        "{} requests in 12 s: {sent:#?}",
        sent.len()
    );
}
