//! The hand-over to Git, on a real kube-apiserver: after the agent's first boot, Flux applies the
//! same manifests from Git as kustomize-controller does (its field manager, its staged apply,
//! its take-over of the managers it knows: `envtest::kustomize_controller`), helm-controller
//! installs cert-manager's CRDs, and the agent lets go. Then no object is left that only the
//! agent owns, the agent owns no field at all, a field Git dropped disappears, an object the
//! agent created that Git does not have is gone (only if it still carries the agent's label:
//! one an operator took the label off stays, and so does every object the agent never
//! created), and the next boot changes nothing, even with another Git URL in the agent's
//! configuration.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::time::Duration;

use bootstrap_agent::bundle::{Bundle, Manifest};
use bootstrap_agent::kube::{Cluster, FluxSync, ObjectState, Readiness, SecretSpec};
use bootstrap_agent_tests::envtest::kustomize_controller::{Kustomization, object_ref};
use bootstrap_agent_tests::envtest::{ApiServer, managers};
use bootstrap_agent_tests::kubeapi::ObjectRef;
use bootstrap_agent_tests::kubeapi::fixture::{Corpus, compose_bundle};
use serde_json::{Value, json};
use zeroize::Zeroizing;

const REV: &str = "main@sha1:0123456789abcdef0123456789abcdef01234567";
const URL: &str = "https://github.com/example/homelab";
/// Flux components the agent installed that Git no longer has.
const GIT_DROPPED: [&str; 2] = ["allow-scraping", "allow-webhooks"];

fn sync() -> FluxSync {
    FluxSync::new(URL, "main", "./kubernetes/flux-system")
}

fn sops_age() -> SecretSpec {
    SecretSpec {
        namespace: "flux-system".into(),
        name: "sops-age".into(),
        key: "age.agekey".into(),
        value: Zeroizing::new(
            b"AGE-SECRET-KEY-1QYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQS5Q9DQ".to_vec(),
        ),
        overwrite: false,
    }
}

/// One boot's Kubernetes half, as the agent's steps run it.
async fn boot(cluster: &Cluster, bundle: &Bundle, sync: &FluxSync) -> Readiness {
    cluster.seed_secrets(&[sops_age()]).await.expect("secrets");
    cluster
        .install_crds(bundle, Duration::from_secs(60))
        .await
        .expect("crds");
    cluster
        .install_flux(bundle, Duration::from_secs(60))
        .await
        .expect("flux");
    cluster.apply_sync(sync).await.expect("sync");
    cluster.check_ready(sync).await.expect("ready")
}

/// Flux's components as Git holds them: the same manifests as the agent's bundle (the point of
/// pinning one Flux), except that Git has since dropped a label from source-controller's
/// Deployment and the NetworkPolicies `allow-scraping` and `allow-webhooks`.
fn git_components(bundle: &Bundle) -> Vec<Value> {
    bundle
        .flux
        .iter()
        .map(Manifest::object)
        .filter(|o| !GIT_DROPPED.contains(&o["metadata"]["name"].as_str().unwrap_or_default()))
        .map(|mut o| {
            if o["kind"] == "Deployment"
                && o["metadata"]["name"] == "source-controller"
                && let Some(l) = o["metadata"]["labels"].as_object_mut()
            {
                l.remove("app.kubernetes.io/part-of");
            }
            o
        })
        .collect()
}

/// What `kubernetes/flux-system` holds: the sync objects, the Kustomization that applies Flux's
/// components from their OCI artifact, and the gateway-api layer.
fn git_flux_system() -> Vec<Value> {
    let mut objects = sync().objects();
    objects.push(json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "OCIRepository",
        "metadata": {"name": "flux-components", "namespace": "flux-system"},
        "spec": {"interval": "1h0m0s", "url": "oci://ghcr.io/fluxcd/flux-manifests", "ref": {"tag": "v2.9.4"}}}));
    objects.push(
        json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
        "metadata": {"name": "flux-components", "namespace": "flux-system"},
        "spec": {"interval": "1h0m0s", "path": "./", "prune": true,
            "sourceRef": {"kind": "OCIRepository", "name": "flux-components"}}}),
    );
    objects.push(
        json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
        "metadata": {"name": "gateway-api", "namespace": "flux-system"},
        "spec": {"interval": "24h0m0s", "url": "https://github.com/kubernetes-sigs/gateway-api",
            "ref": {"commit": "8bb74df00e56ec8f944d48c25e6c1c9c2f6848e3"}}}),
    );
    objects.push(
        json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
        "metadata": {"name": "gateway-api", "namespace": "flux-system"},
        "spec": {"interval": "1h0m0s", "path": "./config/crd/standard", "prune": false,
            "sourceRef": {"kind": "GitRepository", "name": "gateway-api"}}}),
    );
    objects
}

/// Flux takes over from Git: the controllers run, flux-system applies its path, flux-components
/// applies Flux's manifests, gateway-api applies the Gateway API's CRDs, helm-controller
/// installs cert-manager's CRDs with its chart.
async fn flux_applies_git(server: &ApiServer, bundle: &Bundle) {
    for d in server.list("apps", "deployments").await {
        let ns = d["metadata"]["namespace"].as_str().unwrap();
        assert!(
            server
                .mark_deployment_available(ns, d["metadata"]["name"].as_str().unwrap())
                .await
        );
    }
    let git = ObjectRef::new(
        "source.toolkit.fluxcd.io",
        "gitrepositories",
        "flux-system",
        "flux-system",
    );
    assert!(
        server
            .mark_flux(&git, "True", "Succeeded", "stored artifact", REV)
            .await
    );
    Kustomization::new(server, "flux-system", "flux-system")
        .reconcile(&git_flux_system(), REV)
        .await;
    Kustomization::new(server, "flux-components", "flux-system")
        .reconcile(&git_components(bundle), "v2.9.4@sha256:0")
        .await;
    // The gateway-api layer: kustomize-controller applies the Gateway API's CRDs from the
    // tagged source (kubernetes/flux-system/gateway-api.yaml, `prune: false`).
    let gateway_api = |m: &&Manifest| m.name().ends_with(".gateway.networking.k8s.io");
    let gateway: Vec<Value> = bundle
        .crds
        .iter()
        .filter(|m| m.is_crd() && gateway_api(m))
        .map(Manifest::object)
        .collect();
    assert!(!gateway.is_empty(), "the bundle has the Gateway API's CRDs");
    Kustomization::new(server, "gateway-api", "flux-system")
        .reconcile(
            &gateway,
            "v1.6.1@sha1:8bb74df00e56ec8f944d48c25e6c1c9c2f6848e3",
        )
        .await;
    for crd in bundle.crds.iter().filter(|m| m.is_crd() && !gateway_api(m)) {
        let (code, body) = server
            .apply_raw(
                &ObjectRef::crd(crd.name()),
                &crd.object(),
                "helm-controller",
                true,
                false,
            )
            .await;
        assert!(code < 300, "{code} {body}");
    }
}

/// Every object the agent applied that still exists, as the server has it.
async fn agent_objects(server: &ApiServer, bundle: &Bundle) -> Vec<Value> {
    let mut out = Vec::new();
    let all = bundle
        .crds
        .iter()
        .chain(bundle.flux.iter())
        .map(Manifest::object)
        .chain(sync().objects());
    for o in all {
        if let Some(live) = server.get(&object_ref(&o)).await {
            out.push(live);
        }
    }
    out
}

fn describe(o: &Value) -> String {
    format!(
        "{} {}/{}",
        o["kind"].as_str().unwrap_or_default(),
        o["metadata"]["namespace"].as_str().unwrap_or_default(),
        o["metadata"]["name"].as_str().unwrap_or_default()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_flux_takes_over_the_agent_owns_nothing_and_the_next_boot_changes_nothing() {
    let server = ApiServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    compose_bundle(dir.path(), Corpus { gateway_api: true });
    let bundle = Bundle::load_dir(dir.path()).unwrap();
    let cluster = Cluster::connect(&server.kubeconfig()).await.unwrap();

    // First boot: the agent installs everything; Flux has not run yet.
    boot(&cluster, &bundle, &sync()).await;
    let before = cluster.hand_over(&bundle, &sync()).await.unwrap();
    assert!(
        before.pending > 0,
        "nothing can be handed over before Flux applies"
    );
    assert!(
        !before
            .reports
            .iter()
            .any(|r| r.state == ObjectState::Released),
        "{before:#?}"
    );

    // Kustomizations Ready without an inventory that lists Flux's components (flux-components
    // created and reporting Ready before it has applied anything, or any controller that writes
    // Ready before its inventory): nothing is taken for "not in Git", nothing is deleted.
    let ks = |name: &str| {
        ObjectRef::new(
            "kustomize.toolkit.fluxcd.io",
            "kustomizations",
            "flux-system",
            name,
        )
    };
    let (code, body) = server
        .apply_raw(
            &ks("flux-components"),
            &json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
                "metadata": {"name": "flux-components", "namespace": "flux-system"},
                "spec": {"interval": "1h0m0s", "path": "./", "prune": true,
                    "sourceRef": {"kind": "OCIRepository", "name": "flux-components"}}}),
            "kustomize-controller",
            true,
            false,
        )
        .await;
    assert!(code < 300, "{code} {body}");
    for name in ["flux-system", "flux-components"] {
        assert!(
            server
                .mark_flux(&ks(name), "True", "ReconciliationSucceeded", "", REV)
                .await
        );
    }
    let early = cluster.hand_over(&bundle, &sync()).await.unwrap();
    assert!(
        early
            .reports
            .iter()
            .all(|r| r.state != ObjectState::Deleted),
        "{early:#?}"
    );
    assert!(early.pending > 0, "{early:#?}");

    // Meanwhile an operator takes the agent's label off one of them (it is theirs now), and keeps
    // a note of their own in Flux's namespace. Neither is the agent's to delete.
    let webhooks = ObjectRef::new(
        "networking.k8s.io",
        "networkpolicies",
        "flux-system",
        "allow-webhooks",
    );
    let (code, body) = server
        .json_patch(
            &webhooks,
            &json!([{"op": "remove", "path": "/metadata/labels/app.kubernetes.io~1managed-by"}]),
            "kubectl-label",
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let notes = ObjectRef::new("", "configmaps", "flux-system", "operator-notes");
    let notes_before = server
        .create_as(
            &notes,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "operator-notes", "namespace": "flux-system",
                    "labels": {"app.kubernetes.io/part-of": "flux"}},
                "data": {"note": "mine"}}),
            "kubectl-create",
        )
        .await;

    // Flux applies Git. On its own it does not take the agent's fields over: kustomize-controller
    // only takes over the managers it knows.
    flux_applies_git(&server, &bundle).await;
    let sc = ObjectRef::new("apps", "deployments", "flux-system", "source-controller");
    let live = server.get(&sc).await.unwrap();
    assert!(managers(&live).contains_key("bootstrap-agent"));
    assert!(managers(&live).contains_key("kustomize-controller"));
    assert_eq!(
        live["metadata"]["labels"]["app.kubernetes.io/part-of"], "flux",
        "a field Git dropped stays while the agent co-owns it"
    );

    // The agent lets go.
    let h = cluster.hand_over(&bundle, &sync()).await.unwrap();
    assert_eq!(h.pending, 0, "{h:#?}");
    let deleted: Vec<&str> = h
        .reports
        .iter()
        .filter(|r| r.state == ObjectState::Deleted)
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(deleted, ["allow-scraping"], "{h:#?}");
    // The object the operator took the label off stays, reported, and nothing waits for it.
    let kept: Vec<&str> = h
        .reports
        .iter()
        .filter(|r| r.state == ObjectState::Kept)
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(kept, ["allow-webhooks"], "{h:#?}");
    let report = h
        .reports
        .iter()
        .find(|r| r.name == "allow-webhooks")
        .unwrap();
    assert!(report.message.contains("no longer labelled"), "{report}");
    assert!(server.get(&webhooks).await.is_some());
    assert!(
        h.reports.iter().all(|r| matches!(
            r.state,
            ObjectState::Released | ObjectState::Deleted | ObjectState::Kept
        )),
        "{h:#?}"
    );
    // The operator's own object in Flux's namespace is untouched, its labels notwithstanding.
    let notes_after = server.get(&notes).await.unwrap();
    assert_eq!(
        notes_after["metadata"]["resourceVersion"], notes_before["metadata"]["resourceVersion"],
        "{notes_after}"
    );

    // No object is left that the agent owns, alone or with others, but the one the operator
    // claimed; nothing carries its label.
    for o in agent_objects(&server, &bundle).await {
        if o["metadata"]["name"] == "allow-webhooks" {
            continue;
        }
        assert!(
            !managers(&o).contains_key("bootstrap-agent"),
            "{} still has a bootstrap-agent entry: {:?}",
            describe(&o),
            managers(&o)
        );
        assert_ne!(
            o["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "bootstrap-agent",
            "{}",
            describe(&o)
        );
        assert!(
            o["metadata"]["annotations"]
                .get("bootstrap-agent.io/applied-digest")
                .is_none(),
            "{}",
            describe(&o)
        );
    }
    // The field Git dropped is gone; what Git sets is still there.
    let live = server.get(&sc).await.unwrap();
    assert!(
        live["metadata"]["labels"]
            .get("app.kubernetes.io/part-of")
            .is_none(),
        "{}",
        live["metadata"]["labels"]
    );
    assert_eq!(
        live["spec"]["template"]["spec"]["containers"][0]["image"],
        "ghcr.io/fluxcd/source-controller:v1.9.1"
    );
    // The object the agent created and Git does not have is gone.
    assert!(
        server
            .get(&ObjectRef::new(
                "networking.k8s.io",
                "networkpolicies",
                "flux-system",
                "allow-scraping"
            ))
            .await
            .is_none()
    );
    // The Secret Git never holds stays the agent's.
    let secret = server
        .get(&ObjectRef::new("", "secrets", "flux-system", "sops-age"))
        .await
        .unwrap();
    assert!(managers(&secret).contains_key("bootstrap-agent"));

    // Dropping the agent's digest annotation is an annotation update, which bumps a Deployment's
    // generation (the Deployment registry strategy copies annotations to ReplicaSets); the
    // controller observes it without a rollout, as here.
    for d in server.list("apps", "deployments").await {
        let name = d["metadata"]["name"].as_str().unwrap();
        assert!(server.mark_deployment_available("flux-system", name).await);
    }

    // The next boot: every step runs again and changes nothing, and does not fail.
    let cursor = server.cursor().await;
    let r = boot(&cluster, &bundle, &sync()).await;
    assert!(matches!(r, Readiness::Ready(_)), "{r:?}");
    let again = cluster.hand_over(&bundle, &sync()).await.unwrap();
    assert_eq!(again.pending, 0, "{again:#?}");
    let kept: Vec<(&str, ObjectState)> = again
        .reports
        .iter()
        .map(|r| (r.name.as_str(), r.state))
        .collect();
    assert_eq!(kept, [("allow-webhooks", ObjectState::Kept)], "{again:#?}");
    let sent = server.agent_mutations_since(cursor).await;
    assert!(sent.is_empty(), "the next boot mutated: {sent:#?}");

    // A new Git URL and branch in the agent's configuration after the hand-over: Git owns the
    // sync objects, so the agent reports the difference and writes nothing (no 409, no fight).
    let moved = FluxSync::new(
        "https://github.com/example/moved",
        "next",
        "./kubernetes/flux-system",
    );
    let cursor = server.cursor().await;
    let reports = cluster.apply_sync(&moved).await.expect("no conflict");
    assert!(
        reports.iter().all(|r| r.state == ObjectState::Kept),
        "{reports:#?}"
    );
    let git = reports.iter().find(|r| r.kind == "GitRepository").unwrap();
    assert!(
        git.message.contains("gotk-sync.yaml") && git.message.contains("example/moved"),
        "{git}"
    );
    boot(&cluster, &bundle, &moved).await;
    let sent = server.agent_mutations_since(cursor).await;
    assert!(sent.is_empty(), "{sent:#?}");
    let live = server
        .get(&ObjectRef::new(
            "source.toolkit.fluxcd.io",
            "gitrepositories",
            "flux-system",
            "flux-system",
        ))
        .await
        .unwrap();
    assert_eq!(live["spec"]["url"], URL, "Git's value stays");
}

/// What the hand-over's delete relies on, asked of the real API server: a delete whose UID or
/// resourceVersion precondition no longer holds is refused with 409 and deletes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_with_stale_preconditions_is_refused_with_409() {
    use kube::api::{Api, DeleteParams, Preconditions};
    use kube::core::DynamicObject;

    let server = ApiServer::start().await;
    let cm = ObjectRef::new("", "configmaps", "flux-system", "seen");
    server
        .create_as(
            &ObjectRef::new("", "namespaces", "", "flux-system"),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "flux-system"}}),
            "test",
        )
        .await;
    let seen = server
        .create_as(
            &cm,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "seen", "namespace": "flux-system"}, "data": {"a": "1"}}),
            "test",
        )
        .await;
    let (code, body) = server
        .json_patch(
            &cm,
            &json!([{"op": "add", "path": "/data/b", "value": "2"}]),
            "someone-else",
        )
        .await;
    assert_eq!(code, 200, "{body}");

    let resource =
        kube::discovery::ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(server.admin(), "flux-system", &resource);
    let uid = seen["metadata"]["uid"].as_str().map(str::to_string);
    let stale = |uid: Option<String>, rv: Option<String>| {
        DeleteParams::background().preconditions(Preconditions {
            uid,
            resource_version: rv,
        })
    };
    for params in [
        stale(
            uid.clone(),
            seen["metadata"]["resourceVersion"]
                .as_str()
                .map(str::to_string),
        ),
        stale(Some("00000000-0000-0000-0000-000000000000".into()), None),
    ] {
        match api.delete("seen", &params).await {
            Err(kube::Error::Api(s)) => assert_eq!(s.code, 409, "{s:?}"),
            other => panic!("a stale precondition must be refused: {other:?}"),
        }
        assert!(server.get(&cm).await.is_some(), "nothing deleted");
    }
    let live = server.get(&cm).await.unwrap();
    let current = stale(
        uid,
        live["metadata"]["resourceVersion"]
            .as_str()
            .map(str::to_string),
    );
    api.delete("seen", &current)
        .await
        .expect("current preconditions");
}
