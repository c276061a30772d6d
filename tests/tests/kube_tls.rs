//! The agent connects the way it will on a node: an in-memory kubeconfig with the cluster CA
//! and a client certificate, over TLS (rustls + ring), to a real kube-apiserver. The same
//! kubeconfig works with the real kubectl; a kubeconfig with another CA is refused before any
//! request reaches the server; errors name the API server the agent tried. The injected 503 is
//! the one part the real server cannot play: the stand-in answers it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use bootstrap_agent::kube::{Cluster, SecretOutcome, SecretSpec};
use bootstrap_agent_tests::envtest::ApiServer;
use bootstrap_agent_tests::envtest::pki::Pki;
use bootstrap_agent_tests::kubeapi::{CrdPolicy, KubeApi, ObjectRef};
use zeroize::Zeroizing;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_kubeconfig_with_client_certificate_works_and_a_wrong_ca_is_refused() {
    let server = ApiServer::start().await;
    assert!(server.url().starts_with("https://127.0.0.1:"));
    let cluster = Cluster::connect(&server.kubeconfig())
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

    // The real kubectl accepts the agent's kubeconfig, and sees what the agent wrote.
    let kc = server.kubeconfig_path();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kc)
            .arg("--cache-dir")
            .arg(kc.with_file_name("kubectl-cache"))
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
            .expect("kubectl must be installed (tests/install-deps.sh)")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("bootstrap-agent"));
    assert!(
        server
            .get(&ObjectRef::new("", "secrets", "flux-system", "sops-age"))
            .await
            .is_some()
    );

    // A kubeconfig trusting another CA must not talk to this server.
    let other = Pki::generate().unwrap();
    let forged = server
        .kubeconfig()
        .replace(&base64_of(server.ca_pem()), &base64_of(&other.ca_pem));
    assert_ne!(forged, server.kubeconfig());
    let cluster = Cluster::connect(&forged)
        .await
        .expect("config itself is valid");
    let cursor = server.cursor().await;
    let err = cluster
        .api_ready()
        .await
        .expect_err("untrusted server certificate must fail");
    let text = err.to_string().to_lowercase();
    assert!(
        text.contains("certificate") || text.contains("tls"),
        "{err}"
    );
    // A request the agent's user sends would be in the audit log (readyz included).
    let reached = server.agent_requests_since(cursor).await;
    assert!(
        reached.is_empty(),
        "no request may reach a server the kubeconfig does not trust: {reached:?}"
    );
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_api_server_they_tried() {
    let server = ApiServer::start().await;
    // Nothing listens on port 1: the connection is refused.
    let nowhere = server
        .kubeconfig()
        .replace(&server.url(), "https://127.0.0.1:1");
    let cluster = Cluster::connect(&nowhere).await.unwrap();
    assert_eq!(cluster.server(), "https://127.0.0.1:1");
    let err = cluster.api_ready().await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(
        err.to_string()
            .contains("cannot talk to the API server at https://127.0.0.1:1"),
        "{err}"
    );

    // The real API server stopped: the address the agent tried is named.
    let cluster = Cluster::connect(&server.kubeconfig()).await.unwrap();
    server.kill_apiserver();
    let err = cluster.api_ready().await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(
        err.to_string().contains(&format!(
            "cannot talk to the API server at {}",
            server.url()
        )),
        "{err}"
    );

    // An API server that answers with an error is named too (an injected 503: the stand-in).
    let api = KubeApi::start_tls(CrdPolicy::default()).await.unwrap();
    let cluster = Cluster::connect(&api.kubeconfig()).await.unwrap();
    api.unavailable_for(std::time::Duration::from_secs(30));
    let err = cluster.api_ready().await.unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("the API server at {} answered 503", api.url())),
        "{err}"
    );
}
