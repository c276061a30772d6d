//! `bootstrap-agent bundle verify` and `bootstrap-agent plan` on a real bundle directory
//! composed from the upstream fixtures.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

use bootstrap_agent_tests::kubeapi::fixture::{Corpus, compose_bundle};
use bootstrap_agent_tests::swtpm::agent_binary;

fn agent(args: &[&str], dir: &Path) -> Output {
    Command::new(agent_binary().unwrap())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn verify_accepts_a_pinned_bundle_and_names_both_digests_of_a_tampered_one() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    let lock = compose_bundle(&bundle, Corpus { gateway_api: true });
    let out = agent(&["bundle", "verify", bundle.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("every digest matches its pin"),
        "{}",
        text(&out)
    );

    let cert_manager = lock
        .artifacts
        .iter()
        .find(|a| a.name == "cert-manager-crds")
        .unwrap();
    let file = bundle.join(&cert_manager.file);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes.extend_from_slice(b"\n# tampered\n");
    std::fs::write(&file, &bytes).unwrap();
    let out = agent(&["bundle", "verify", bundle.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let message = text(&out);
    assert!(
        message.contains(&cert_manager.sha256),
        "expected digest missing: {message}"
    );
    let actual = bootstrap_agent::bundle::sha256_hex(&bytes);
    assert!(
        message.contains(&actual),
        "actual digest missing: {message}"
    );
}

#[test]
fn plan_lists_the_bundle_objects_in_stages_and_the_sync_objects() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("bundle")).unwrap();
    compose_bundle(&dir.path().join("bundle"), Corpus { gateway_api: false });
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, "apiVersion: v1\nkind: Config\n").unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "kubernetes: { kubeconfig: kubeconfig }\n\
         bundle: { dir: bundle }\n\
         tpm: { factor: 5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed }\n\
         secrets: [ { name: sops-age, key: age.agekey } ]\n\
         flux: { url: https://github.com/catinthehack/homelab, path: ./kubernetes/flux-system }\n",
    )
    .unwrap();
    let out = agent(&["plan", "--config", config.to_str().unwrap()], dir.path());
    let plan = text(&out);
    assert_eq!(out.status.code(), Some(0), "{plan}");
    for needle in [
        "talos-api  skip",
        "unseal",
        "[secrets]",
        "Secret flux-system/sops-age (key age.agekey: sealed input missing",
        "[definitions]",
        "CustomResourceDefinition certificates.cert-manager.io",
        "CustomResourceDefinition kustomizations.kustomize.toolkit.fluxcd.io",
        "[components]",
        "Deployment flux-system/source-controller",
        "[sync]",
        "GitRepository flux-system/flux-system (https://github.com/catinthehack/homelab branch main every 1m0s)",
        "is valid",
    ] {
        assert!(plan.contains(needle), "missing {needle:?} in:\n{plan}");
    }
    // Definitions come before the components that need them.
    assert!(
        plan.find("[definitions]") < plan.find("[components]"),
        "{plan}"
    );
}
