#![allow(clippy::expect_used, clippy::unwrap_used)] // test fixture builder: a panic with a message is its error report
//! Builds a bundle directory from the real upstream CRDs in `../shared/fixtures/upstream/`
//! plus the project's own Flux namespace/RBAC/Service objects (`agent/bundle/flux-system.yaml`)
//! and Flux's controller Deployments with their namespace and image tags set, as `flux
//! install` would render them. The lock is written with the digests of what was composed.

use std::path::{Path, PathBuf};

use bootstrap_agent::bundle::{BundleLock, LOCK_FILE, LockedArtifact, Role, sha256_hex};
use serde_json::{Value, json};

/// Image tags of Flux v2.9.4's controllers (source-controller from its newest tag, v1.9.1).
pub const FLUX_IMAGES: &[(&str, &str)] = &[
    ("source-controller", "v1.9.1"),
    ("kustomize-controller", "v1.9.4"),
    ("helm-controller", "v1.6.3"),
    ("notification-controller", "v1.9.3"),
];

/// The upstream fixtures directory; panics with a clear message when it is missing.
pub fn upstream_dir() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/upstream");
    assert!(
        p.join("cert-manager.crds.yaml").is_file(),
        "upstream fixtures are missing at {}: clone the shared fixtures beside the repository",
        p.display()
    );
    p
}

pub fn upstream(file: &str) -> PathBuf {
    let p = upstream_dir().join(file);
    assert!(p.is_file(), "upstream fixture {} is missing", p.display());
    p
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

/// Flux's Deployments in `flux-system` with image tags, as one multi-document YAML text.
pub fn flux_deployments() -> String {
    let docs: Vec<Value> = serde_saphyr::from_multiple(&read(&upstream("flux.deployments.yaml")))
        .expect("flux.deployments.yaml parses");
    let mut out = String::new();
    for mut d in docs.into_iter().filter(|d| !d.is_null()) {
        let name = d["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let tag = FLUX_IMAGES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| *t)
            .unwrap_or("latest");
        d["metadata"]["namespace"] = json!("flux-system");
        d["metadata"]["labels"]["app.kubernetes.io/part-of"] = json!("flux");
        if let Some(cs) = d["spec"]["template"]["spec"]["containers"].as_array_mut() {
            for c in cs {
                c["image"] = json!(format!("ghcr.io/fluxcd/{name}:{tag}"));
            }
        }
        out.push_str("---\n");
        out.push_str(&serde_json::to_string_pretty(&d).unwrap_or_default());
        out.push('\n');
    }
    out
}

fn artifact(
    dir: &Path,
    name: &str,
    version: &str,
    role: Role,
    file: &str,
    text: &str,
) -> LockedArtifact {
    std::fs::write(dir.join(file), text).unwrap_or_else(|e| panic!("cannot write {file}: {e}"));
    LockedArtifact {
        name: name.into(),
        version: version.into(),
        role,
        url: format!("https://example.invalid/{file}"),
        file: file.into(),
        sha256: sha256_hex(text.as_bytes()),
    }
}

/// Which CRD sets to include.
#[derive(Clone, Copy, Debug)]
pub struct Corpus {
    pub gateway_api: bool,
}

/// Writes a complete bundle directory into `dir` and returns its lock.
pub fn compose_bundle(dir: &Path, corpus: Corpus) -> BundleLock {
    let own = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/bundle/flux-system.yaml");
    let mut artifacts = vec![artifact(
        dir,
        "cert-manager-crds",
        "v1.21.1",
        Role::Crds,
        "cert-manager.crds.yaml",
        &read(&upstream("cert-manager.crds.yaml")),
    )];
    if corpus.gateway_api {
        artifacts.push(artifact(
            dir,
            "gateway-api-crds",
            "v1.6.1",
            Role::Crds,
            "gateway-api.standard.crds.yaml",
            &read(&upstream("gateway-api.standard.crds.yaml")),
        ));
    }
    let flux = format!(
        "{}\n{}\n{}",
        read(&own),
        read(&upstream("flux.crds.yaml")),
        flux_deployments()
    );
    artifacts.push(artifact(
        dir,
        "flux-components",
        "v2.9.4",
        Role::FluxComponents,
        "flux-install.yaml",
        &flux,
    ));
    let lock = BundleLock {
        name: "test-bundle".into(),
        artifacts,
    };
    std::fs::write(
        dir.join(LOCK_FILE),
        lock.to_yaml().expect("lock serialises"),
    )
    .expect("write lock");
    lock
}
