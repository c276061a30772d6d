//! The bundle: lock parsing, digest checks (directory and network delivery), size cap,
//! HTTPS-only sources, and the pins refresh against a loopback HTTP server.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use bootstrap_agent::bundle::{
    Bundle, BundleError, BundleLock, FetchOptions, LOCK_FILE, refresh_lock, sha256_hex,
};
use bootstrap_agent_tests::kubeapi::fixture::{Corpus, compose_bundle};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// Serves `files` (path → body) on 127.0.0.1; `/r/<path>` redirects to `/<path>`.
async fn serve(files: HashMap<String, Vec<u8>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let files = Arc::new(files);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let files = files.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let files = files.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let mut resp = Response::new(Full::new(Bytes::new()));
                        if let Some(rest) = path.strip_prefix("/r/") {
                            *resp.status_mut() = hyper::StatusCode::FOUND;
                            resp.headers_mut()
                                .insert("location", format!("/{rest}").parse().unwrap());
                        } else if let Some(rest) = path.strip_prefix("/insecure/") {
                            *resp.status_mut() = hyper::StatusCode::FOUND;
                            resp.headers_mut().insert(
                                "location",
                                format!("http://example.com/{rest}").parse().unwrap(),
                            );
                        } else if let Some(b) = files.get(path.trim_start_matches('/')) {
                            *resp.body_mut() = Full::new(Bytes::from(b.clone()));
                        } else {
                            *resp.status_mut() = hyper::StatusCode::NOT_FOUND;
                        }
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

fn loopback() -> FetchOptions {
    FetchOptions {
        allow_loopback_http: true,
        ..Default::default()
    }
}

fn served_lock(
    dir: &std::path::Path,
    base: &str,
    prefix: &str,
) -> (BundleLock, HashMap<String, Vec<u8>>) {
    let mut lock = compose_bundle(dir, Corpus { gateway_api: false });
    let mut files = HashMap::new();
    for a in lock.artifacts.iter_mut() {
        files.insert(a.file.clone(), std::fs::read(dir.join(&a.file)).unwrap());
        a.url = format!("{base}/{prefix}{}", a.file);
    }
    (lock, files)
}

#[test]
fn a_directory_bundle_loads_and_groups_documents() {
    let dir = tempfile::tempdir().unwrap();
    compose_bundle(dir.path(), Corpus { gateway_api: true });
    let b = Bundle::load_dir(dir.path()).unwrap();
    assert_eq!(b.crds.len(), 16);
    assert!(b.crds.iter().all(|m| m.is_crd()));
    assert_eq!(b.flux.iter().filter(|m| m.is_crd()).count(), 11);
    assert_eq!(
        b.flux.iter().filter(|m| m.kind() == "Deployment").count(),
        4
    );
    assert!(
        b.flux
            .iter()
            .any(|m| m.kind() == "Namespace" && m.name() == "flux-system")
    );
}

#[test]
fn a_digest_mismatch_is_refused_with_both_digests() {
    let dir = tempfile::tempdir().unwrap();
    let lock = compose_bundle(dir.path(), Corpus { gateway_api: false });
    let a = &lock.artifacts[0];
    let path = dir.path().join(&a.file);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(b"\n# tampered\n");
    std::fs::write(&path, &bytes).unwrap();
    let err = Bundle::load_dir(dir.path()).expect_err("tampered artifact must be refused");
    let msg = err.to_string();
    assert!(matches!(err, BundleError::DigestMismatch { .. }), "{err:?}");
    assert!(
        msg.contains(&a.sha256) && msg.contains(&sha256_hex(&bytes)),
        "{msg}"
    );
    assert!(msg.contains(&a.name) && msg.contains("refused"), "{msg}");
}

#[test]
fn an_unpinned_or_malformed_lock_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    compose_bundle(dir.path(), Corpus { gateway_api: false });
    let lock_path = dir.path().join(LOCK_FILE);
    let text = std::fs::read_to_string(&lock_path).unwrap();
    let first = BundleLock::parse(&text, "t").unwrap().artifacts[0]
        .sha256
        .clone();
    std::fs::write(&lock_path, text.replace(&first, "")).unwrap();
    let err = Bundle::load_dir(dir.path()).unwrap_err();
    assert!(matches!(err, BundleError::Unpinned { .. }), "{err:?}");
    std::fs::write(&lock_path, text.replace(&first, "abc")).unwrap();
    let err = Bundle::load_dir(dir.path()).unwrap_err();
    assert!(err.to_string().contains("64 hex digits"), "{err}");
    // The committed lock parses.
    let committed = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../agent/bundle")
        .join(LOCK_FILE);
    let lock = BundleLock::load(&committed).unwrap();
    assert!(
        lock.artifacts
            .iter()
            .any(|a| a.name == "cert-manager-crds" && a.version == "v1.21.1")
    );
    assert!(
        lock.artifacts
            .iter()
            .all(|a| a.url.starts_with("https://") || a.oci == "ghcr.io/fluxcd/flux-manifests"),
        "{lock:?}"
    );
    // Exactly one source per artifact.
    let mut both = BundleLock::parse(&text, "t").unwrap();
    both.artifacts[0].oci = "ghcr.io/example/crds".into();
    let err = BundleLock::parse(&both.to_yaml().unwrap(), "t").unwrap_err();
    assert!(err.to_string().contains("exactly one of url"), "{err}");
}

#[tokio::test]
async fn fetched_artifacts_are_digest_checked_size_capped_and_https_only() {
    let dir = tempfile::tempdir().unwrap();
    let (lock, mut files) = served_lock(dir.path(), "PLACEHOLDER", "r/");
    let base = serve(files.clone()).await;
    let fix = |l: &BundleLock, base: &str| {
        let mut l = l.clone();
        for a in l.artifacts.iter_mut() {
            a.url = a.url.replace("PLACEHOLDER", base);
        }
        l
    };
    let good = fix(&lock, &base);
    // Through one redirect, over loopback HTTP (test-only allowance).
    let b = Bundle::fetch(&good, &loopback()).await.expect("fetch");
    assert_eq!(b.crds.len(), 6);

    // Without the allowance, http:// is refused before any request.
    let err = Bundle::fetch(&good, &FetchOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, BundleError::Insecure { .. }), "{err:?}");

    // A redirect to plain HTTP elsewhere is refused.
    let mut insecure = good.clone();
    insecure.artifacts[0].url = insecure.artifacts[0].url.replace("/r/", "/insecure/");
    let err = Bundle::fetch(&insecure, &loopback()).await.unwrap_err();
    assert!(err.to_string().contains("redirect"), "{err}");

    // Size cap.
    let err = Bundle::fetch(
        &good,
        &FetchOptions {
            max_bytes: 1000,
            ..loopback()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, BundleError::TooLarge { .. }), "{err:?}");

    // Tampered upstream: refused with both digests.
    let f = good.artifacts[0].file.clone();
    files
        .get_mut(&f)
        .unwrap()
        .extend_from_slice(b"\n# changed upstream\n");
    let tampered_base = serve(files.clone()).await;
    let tampered = fix(&lock, &tampered_base);
    let err = Bundle::fetch(&tampered, &loopback()).await.unwrap_err();
    assert!(matches!(err, BundleError::DigestMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains(&sha256_hex(&files[&f])), "{err}");

    // The pins refresh picks up the new digest, and only that one.
    let (refreshed, changes) = refresh_lock(&tampered, &loopback()).await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].artifact, good.artifacts[0].name);
    assert_eq!(refreshed.artifacts[0].sha256, sha256_hex(&files[&f]));
    assert_eq!(refreshed.artifacts[1], tampered.artifacts[1]);
    Bundle::fetch(&refreshed, &loopback())
        .await
        .expect("refreshed lock fetches");
    // And it round-trips through YAML.
    assert_eq!(
        BundleLock::parse(&refreshed.to_yaml().unwrap(), "t").unwrap(),
        refreshed
    );
}
