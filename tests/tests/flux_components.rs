//! One Flux: the agent installs exactly the artifact Git's `flux-components` OCIRepository
//! applies. An artifact in flux-manifests' format is pushed to a real OCI registry (the CNCF
//! distribution registry); the agent pins it by manifest digest (`bundle refresh`), pulls it
//! (`bundle fetch`, or at boot), and the objects it gets are the objects kustomize-controller
//! builds from the same artifact (a generated kustomization listing every YAML file, built by
//! the real kustomize in kubectl): kind, namespace, name and content.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bootstrap_agent::bundle::{
    self, Bundle, BundleError, BundleLock, FetchOptions, LockedArtifact, Role,
};
use bootstrap_agent_tests::kubeapi::fixture::flux_components;
use bootstrap_agent_tests::registry::{Registry, digest, flux_layer};
use http_body_util::Full;
use hyper::body::Bytes;
use serde_json::Value;

const REPO: &str = "fluxcd/flux-manifests";
const FILE: &str = "gotk-components.yaml";

fn opts() -> FetchOptions {
    FetchOptions {
        allow_loopback_http: true,
        ..FetchOptions::default()
    }
}

fn lock(oci: &str) -> BundleLock {
    BundleLock {
        name: "test".into(),
        artifacts: vec![LockedArtifact {
            name: "flux-components".into(),
            version: "v2.9.4".into(),
            role: Role::FluxComponents,
            url: String::new(),
            oci: oci.into(),
            digest: String::new(),
            file: FILE.into(),
            sha256: String::new(),
        }],
    }
}

/// (apiVersion, kind, namespace, name) → object.
fn by_id(
    objects: impl IntoIterator<Item = Value>,
) -> BTreeMap<(String, String, String, String), Value> {
    objects
        .into_iter()
        .filter(|o| !o.is_null())
        .map(|o| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            (
                (
                    s(&o["apiVersion"]),
                    s(&o["kind"]),
                    s(&o["metadata"]["namespace"]),
                    s(&o["metadata"]["name"]),
                ),
                o,
            )
        })
        .collect()
}

/// What kustomize-controller applies from an artifact with `path: ./` and no kustomization:
/// fluxcd/pkg `kustomize/kustomize_generator.go` writes a kustomization whose resources are every
/// `.yaml`/`.yml` file below the path, then kustomize builds it (here: kubectl's kustomize).
fn kustomize_controller_build(layer: &[u8]) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    tar::Archive::new(flate2::read::GzDecoder::new(layer))
        .unpack(dir.path())
        .unwrap();
    let mut resources: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .map(|n| format!("./{n}"))
        .collect();
    resources.sort();
    let mut k = String::from(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n",
    );
    for r in &resources {
        k.push_str(&format!("  - {r}\n"));
    }
    std::fs::write(dir.path().join("kustomization.yaml"), k).unwrap();
    let out = std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(dir.path())
        .output()
        .expect("run kubectl kustomize (tests/install-deps.sh installs kubectl)");
    assert!(
        out.status.success(),
        "kustomize build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_saphyr::from_multiple(&String::from_utf8(out.stdout).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_installs_exactly_the_artifact_git_applies() {
    let registry = Registry::start().await;
    let content = flux_components();
    let pushed = registry
        .push_flux_artifact(REPO, "v2.9.4", &[(FILE, content.as_bytes())])
        .await;

    // `bundle refresh` pins the tag's manifest digest and the file's sha256.
    let oci = format!("{}/{REPO}", registry.host());
    let (pinned, changes) = bundle::refresh_lock(&lock(&oci), &opts()).await.unwrap();
    let a = &pinned.artifacts[0];
    assert_eq!(a.digest, pushed);
    assert_eq!(a.sha256, bundle::sha256_hex(content.as_bytes()));
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].new_digest, pushed);

    // What the agent installs: the artifact, pulled by digest.
    let fetched = Bundle::fetch(&pinned, &opts()).await.unwrap();
    let agent = by_id(fetched.flux.iter().map(|m| m.object()));
    // What kustomize-controller applies from the same artifact.
    let flux = by_id(kustomize_controller_build(&flux_layer(&[(
        FILE,
        content.as_bytes(),
    )])));
    assert_eq!(
        agent.keys().collect::<Vec<_>>(),
        flux.keys().collect::<Vec<_>>(),
        "the same objects"
    );
    for (id, object) in &agent {
        assert_eq!(object, &flux[id], "{id:?}: the same content");
    }
    assert!(agent.len() > 20, "{}", agent.len());

    // The embedded bundle (`bundle fetch --out`) is the same bytes, loaded offline.
    let dir = tempfile::tempdir().unwrap();
    bundle::download_to_dir(&pinned, &opts(), dir.path())
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join(FILE)).unwrap(),
        content
    );
    let embedded = Bundle::load_dir(dir.path()).unwrap();
    assert_eq!(by_id(embedded.flux.iter().map(|m| m.object())), agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_holds_when_the_tag_moves_and_an_unpinned_artifact_is_refused() {
    let registry = Registry::start().await;
    let first = flux_components();
    registry
        .push_flux_artifact(REPO, "v2.9.4", &[(FILE, first.as_bytes())])
        .await;
    let oci = format!("{}/{REPO}", registry.host());
    let (pinned, _) = bundle::refresh_lock(&lock(&oci), &opts()).await.unwrap();

    // Unpinned: refused before anything is pulled.
    match Bundle::fetch(&lock(&oci), &opts()).await {
        Err(BundleError::Unpinned { artifact }) => assert_eq!(artifact, "flux-components"),
        other => panic!("expected Unpinned, got {other:?}"),
    }

    // Someone moves the tag: the pinned digest still gives the pinned content, and the next
    // refresh says the tag now points elsewhere.
    let other = format!(
        "{first}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: extra\n  namespace: flux-system\n"
    );
    let moved = registry
        .push_flux_artifact(REPO, "v2.9.4", &[(FILE, other.as_bytes())])
        .await;
    let fetched = Bundle::fetch(&pinned, &opts()).await.unwrap();
    assert!(!fetched.flux.iter().any(|m| m.name() == "extra"));
    let (_, changes) = bundle::refresh_lock(&pinned, &opts()).await.unwrap();
    assert_eq!(changes[0].old_digest, pinned.artifacts[0].digest);
    assert_eq!(changes[0].new_digest, moved);

    // A digest the registry does not have: a precise, permanent error.
    let mut missing = pinned.clone();
    missing.artifacts[0].digest = digest(b"not a manifest");
    let err = Bundle::fetch(&missing, &opts()).await.unwrap_err();
    assert!(
        !bootstrap_agent::error::Classify::is_transient(&err),
        "{err}"
    );
    assert!(err.to_string().contains("404"), "{err}");

    // A file the artifact does not hold.
    let mut wrong = pinned.clone();
    wrong.artifacts[0].file = "install.yaml".into();
    let err = Bundle::fetch(&wrong, &opts()).await.unwrap_err();
    assert!(err.to_string().contains("gotk-components.yaml"), "{err}");
}

/// A registry front that wants a bearer token, as ghcr.io does for anonymous pulls: 401 with a
/// `WWW-Authenticate: Bearer realm=…,service=…,scope=…` challenge, a token endpoint that hands
/// out a token for that scope, and the registry behind it once the token is presented.
async fn token_front(
    registry: &Registry,
    tokens: Arc<AtomicUsize>,
) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let upstream = format!("http://{}", registry.host());
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (upstream, client, tokens) = (upstream.clone(), client.clone(), tokens.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (upstream, client, tokens) =
                            (upstream.clone(), client.clone(), tokens.clone());
                        async move {
                            let path = req
                                .uri()
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default();
                            let reply = |code: u16, headers: Vec<(&str, String)>, body: Vec<u8>| {
                                let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
                                *r.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
                                for (k, v) in headers {
                                    r.headers_mut().insert(
                                        hyper::header::HeaderName::from_bytes(k.as_bytes())
                                            .unwrap(),
                                        v.parse().unwrap(),
                                    );
                                }
                                Ok::<_, Infallible>(r)
                            };
                            if path.starts_with("/token?") {
                                let want = format!(
                                    "scope=repository%3A{}%3Apull",
                                    REPO.replace('/', "%2F")
                                );
                                if path.contains("service=registry.test") && path.contains(&want) {
                                    tokens.fetch_add(1, Ordering::SeqCst);
                                    return reply(200, vec![], br#"{"token":"granted"}"#.to_vec());
                                }
                                return reply(403, vec![], b"wrong scope".to_vec());
                            }
                            let auth = req
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_string();
                            if auth != "Bearer granted" {
                                let challenge = format!(
                                    "Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"registry.test\",scope=\"repository:{REPO}:pull\""
                                );
                                return reply(
                                    401,
                                    vec![("www-authenticate", challenge)],
                                    b"{}".to_vec(),
                                );
                            }
                            let accept = req
                                .headers()
                                .get("accept")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("*/*")
                                .to_string();
                            let resp = client
                                .get(format!("{upstream}{path}"))
                                .header("accept", accept)
                                .send()
                                .await
                                .unwrap();
                            let code = resp.status().as_u16();
                            let body = resp.bytes().await.unwrap().to_vec();
                            reply(code, vec![], body)
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            });
        }
    });
    (port, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_bearer_token_is_obtained_as_from_ghcr() {
    let registry = Registry::start().await;
    let content = flux_components();
    let pushed = registry
        .push_flux_artifact(REPO, "v2.9.4", &[(FILE, content.as_bytes())])
        .await;
    let tokens = Arc::new(AtomicUsize::new(0));
    let (port, task) = token_front(&registry, tokens.clone()).await;
    let oci = format!("127.0.0.1:{port}/{REPO}");
    let (pinned, _) = bundle::refresh_lock(&lock(&oci), &opts()).await.unwrap();
    assert_eq!(pinned.artifacts[0].digest, pushed);
    let fetched = Bundle::fetch(&pinned, &opts()).await.unwrap();
    assert!(fetched.flux.len() > 20);
    assert_eq!(tokens.load(Ordering::SeqCst), 2, "one token per pull");
    task.abort();
}
