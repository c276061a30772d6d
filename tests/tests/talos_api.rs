//! The agent's Talos API clients against the Talos API stand-in, over a real Unix socket
//! (machined) and real mutual TLS on 127.0.0.1 (apid).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use base64::Engine as _;
use bootstrap_agent::error::Classify;
use bootstrap_agent::talos::kubeconfig::ArchiveError;
use bootstrap_agent::talos::proto::machine::machine_service_client::MachineServiceClient;
use bootstrap_agent::talos::proto::machine::{BootstrapRequest, ReadRequest};
use bootstrap_agent::talos::{
    BootstrapOutcome, NodeClient, OperatorClient, TalosConfigError, TalosConfigOptions,
    TalosConfigSelection, TalosError,
};
use bootstrap_agent_tests::talos::{NodeKind, Pki, StandIn, archive, foreign_ca_pem};
use hyper_util::rt::TokioIo;
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

const STATUS_PATH: &str = "/var/lib/bootstrap-agent/status.json";

fn write_node_file(root: &Path, path: &str, bytes: &[u8]) {
    let host = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(host.parent().unwrap()).unwrap();
    std::fs::write(host, bytes).unwrap();
}

fn opts(talosconfig: &Path) -> TalosConfigOptions {
    TalosConfigOptions {
        talosconfig: Some(talosconfig.to_path_buf()),
        ..Default::default()
    }
}

async fn operator(standin: &StandIn, dir: &Path) -> OperatorClient {
    let path = standin.write_talosconfig(dir);
    let sel = TalosConfigSelection::load(&opts(&path)).unwrap();
    OperatorClient::connect(&sel).await.unwrap()
}

// ---- node side: machined's socket ----

#[tokio::test]
async fn version_and_bootstrap_then_already_done() {
    let standin = StandIn::builder().version("v1.12.3").start().await;
    let mut node = NodeClient::connect(standin.socket_path()).await.unwrap();
    assert_eq!(node.version().await.unwrap(), "v1.12.3");
    assert_eq!(
        node.bootstrap().await.unwrap(),
        BootstrapOutcome::Bootstrapped
    );
    assert!(standin.is_bootstrapped());
    // A restarted agent bootstraps again: AlreadyExists means done.
    assert_eq!(
        node.bootstrap().await.unwrap(),
        BootstrapOutcome::AlreadyBootstrapped
    );
    assert_eq!(standin.bootstrap_calls(), 2);
}

#[tokio::test]
async fn already_bootstrapped_node_reports_done() {
    let standin = StandIn::builder().already_bootstrapped().start().await;
    let mut node = NodeClient::connect(standin.socket_path()).await.unwrap();
    assert_eq!(
        node.bootstrap().await.unwrap(),
        BootstrapOutcome::AlreadyBootstrapped
    );
    assert_eq!(standin.bootstrap_calls(), 1);
}

#[tokio::test]
async fn not_ready_is_transient_then_bootstrap_succeeds() {
    let standin = StandIn::builder().bootstrap_not_ready(2).start().await;
    let mut node = NodeClient::connect(standin.socket_path()).await.unwrap();
    for _ in 0..2 {
        let err = node.bootstrap().await.unwrap_err();
        assert_eq!(err.code(), Some(Code::FailedPrecondition), "{err}");
        assert!(err.is_transient(), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("Bootstrap") && msg.contains("machine.sock"),
            "{msg}"
        );
        assert!(!standin.is_bootstrapped());
    }
    assert_eq!(
        node.bootstrap().await.unwrap(),
        BootstrapOutcome::Bootstrapped
    );
    assert_eq!(standin.bootstrap_calls(), 3);
}

#[tokio::test]
async fn worker_and_missing_etcd_are_permanent() {
    let worker = StandIn::builder().kind(NodeKind::Worker).start().await;
    let mut node = NodeClient::connect(worker.socket_path()).await.unwrap();
    let err = node.bootstrap().await.unwrap_err();
    assert_eq!(err.code(), Some(Code::Unimplemented));
    assert!(!err.is_transient());
    assert!(
        err.hint().unwrap().contains("not a control-plane node"),
        "{err:?}"
    );
    let err = node.kubeconfig().await.unwrap_err();
    assert_eq!(err.code(), Some(Code::Unimplemented));
    assert!(!worker.is_bootstrapped());
    // Once the machine config makes it a control-plane node, the same client bootstraps.
    worker.set_kind(NodeKind::ControlPlane);
    assert_eq!(
        node.bootstrap().await.unwrap(),
        BootstrapOutcome::Bootstrapped
    );

    let no_etcd = StandIn::builder()
        .kind(NodeKind::EtcdNotConfigured)
        .start()
        .await;
    let mut node = NodeClient::connect(no_etcd.socket_path()).await.unwrap();
    let err = node.bootstrap().await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument));
    assert!(!err.is_transient());
    assert!(
        err.hint().unwrap().contains("etcd is not configured"),
        "{err:?}"
    );
    assert!(!no_etcd.is_bootstrapped());
}

#[tokio::test]
async fn missing_socket_is_transient_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("machine.sock");
    let err = NodeClient::connect(&socket).await.unwrap_err();
    assert!(matches!(err, TalosError::SocketConnect { .. }), "{err:?}");
    assert!(err.is_transient());
    assert!(
        err.to_string().contains(&socket.display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn calls_without_the_role_are_denied() {
    let standin = StandIn::builder().start().await;
    let path = standin.socket_path().to_path_buf();
    let channel = Endpoint::from_static("http://local")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .unwrap();
    let mut raw = MachineServiceClient::new(channel);
    let status = raw.version(()).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = raw
        .bootstrap(BootstrapRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(standin.bootstrap_calls(), 0, "denied before the handler");

    // os:reader may ask the version but not bootstrap.
    let mut req = tonic::Request::new(());
    req.metadata_mut()
        .insert("talos-role", "os:reader".parse().unwrap());
    let reply = raw.version(req).await.unwrap().into_inner();
    assert_eq!(reply.messages[0].version.as_ref().unwrap().tag, "v1.12.0");
    let mut req = tonic::Request::new(BootstrapRequest::default());
    req.metadata_mut()
        .insert("talos-role", "os:reader".parse().unwrap());
    assert_eq!(
        raw.bootstrap(req).await.unwrap_err().code(),
        Code::PermissionDenied
    );
}

#[tokio::test]
async fn kubeconfig_is_reassembled_from_chunks() {
    let text = archive::SAMPLE_KUBECONFIG.repeat(20);
    let standin = StandIn::builder()
        .kubeconfig(&text)
        .chunk_size(64)
        .start()
        .await;
    let mut node = NodeClient::connect(standin.socket_path()).await.unwrap();
    let kubeconfig = node.kubeconfig().await.unwrap();
    assert_eq!(kubeconfig.as_str(), text);
    let debug = format!("{kubeconfig:?}");
    assert!(
        !debug.contains("client-key-data"),
        "Debug must redact: {debug}"
    );
}

async fn kubeconfig_error(bytes: Vec<u8>) -> ArchiveError {
    let standin = StandIn::builder()
        .kubeconfig_archive(bytes)
        .chunk_size(100)
        .start()
        .await;
    let mut node = NodeClient::connect(standin.socket_path()).await.unwrap();
    match node.kubeconfig().await.unwrap_err() {
        TalosError::KubeconfigArchive { source, target } => {
            assert!(target.contains("machine.sock"), "{target}");
            source
        }
        other => panic!("expected an archive error, got {other:?}"),
    }
}

#[tokio::test]
async fn damaged_kubeconfig_archives_are_precise_errors() {
    let good = archive::kubeconfig_archive(archive::SAMPLE_KUBECONFIG);

    let err = kubeconfig_error(archive::truncated(&good, good.len() / 2)).await;
    assert!(matches!(err, ArchiveError::Truncated { .. }), "{err:?}");
    assert!(err.to_string().contains("truncated"), "{err}");

    // Only the gzip trailer (CRC, length) cut short: still truncated, not silently accepted.
    let err = kubeconfig_error(archive::truncated(&good, good.len() - 4)).await;
    assert!(matches!(err, ArchiveError::Truncated { .. }), "{err:?}");

    let err = kubeconfig_error(archive::corrupted(&good)).await;
    assert!(matches!(err, ArchiveError::CorruptGzip { .. }), "{err:?}");

    let no_kubeconfig = archive::gzip(&archive::tar_of(&[("talosconfig", b"x")]));
    let err = kubeconfig_error(no_kubeconfig).await;
    assert!(
        matches!(&err, ArchiveError::Missing { entries } if entries == &["talosconfig"]),
        "{err:?}"
    );

    let err = kubeconfig_error(b"not an archive".to_vec()).await;
    assert!(matches!(err, ArchiveError::NotGzip), "{err:?}");

    let err = kubeconfig_error(Vec::new()).await;
    assert!(matches!(err, ArchiveError::Empty), "{err:?}");

    // A well-compressed tar whose kubeconfig entry announces more bytes than follow.
    let tar = archive::tar_of(&[("kubeconfig", archive::SAMPLE_KUBECONFIG.as_bytes())]);
    let err = kubeconfig_error(archive::gzip(&tar[..600])).await;
    assert!(matches!(err, ArchiveError::Truncated { .. }), "{err:?}");
}

// ---- operator side: apid over mutual TLS ----

#[tokio::test]
async fn read_over_mtls_returns_the_file() {
    let root = tempfile::tempdir().unwrap();
    let status: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect();
    write_node_file(root.path(), STATUS_PATH, &status);
    let standin = StandIn::builder()
        .root(root.path())
        .chunk_size(1024)
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let mut op = operator(&standin, dir.path()).await;
    assert_eq!(op.node(), None);
    assert_eq!(op.read(STATUS_PATH).await.unwrap(), status);
}

#[tokio::test]
async fn talos_style_ed25519_key_label_is_accepted() {
    let standin = StandIn::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = standin.write_talosconfig(dir.path());
    let text = std::fs::read_to_string(&path).unwrap();
    let key_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("key:"))
        .unwrap();
    let key = base64::engine::general_purpose::STANDARD
        .decode(key_line.trim_start().trim_start_matches("key:").trim())
        .unwrap();
    assert!(
        String::from_utf8(key)
            .unwrap()
            .starts_with("-----BEGIN ED25519 PRIVATE KEY-----")
    );
    let sel = TalosConfigSelection::load(&opts(&path)).unwrap();
    assert!(
        !format!("{sel:?}").contains("PRIVATE KEY"),
        "Debug must redact the key"
    );
    OperatorClient::connect(&sel).await.unwrap();
}

#[tokio::test]
async fn missing_status_file_says_the_agent_has_not_run() {
    let root = tempfile::tempdir().unwrap();
    let standin = StandIn::builder().root(root.path()).start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut op = operator(&standin, dir.path()).await;
    let err = op.read(STATUS_PATH).await.unwrap_err();
    assert!(matches!(err, TalosError::NotFoundOnNode { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(STATUS_PATH) && msg.contains("has the agent started"),
        "{msg}"
    );
    assert!(msg.contains(&standin.endpoint()), "names the node: {msg}");
}

#[tokio::test]
async fn reader_certificate_cannot_read() {
    let root = tempfile::tempdir().unwrap();
    write_node_file(root.path(), STATUS_PATH, b"{}");
    let standin = StandIn::builder().root(root.path()).start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = standin.talosconfig_spec("os:reader").write(dir.path());
    let sel = TalosConfigSelection::load(&opts(&path)).unwrap();
    let mut op = OperatorClient::connect(&sel).await.unwrap();
    let err = op.read(STATUS_PATH).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");
    assert!(!err.is_transient());
    assert!(err.hint().unwrap().contains("os:admin"), "{err:?}");
}

#[tokio::test]
async fn wrong_ca_is_a_clear_error() {
    let standin = StandIn::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut spec = standin.talosconfig_spec("os:admin");
    spec.ca_pem = foreign_ca_pem();
    let sel = TalosConfigSelection::load(&opts(&spec.write(dir.path()))).unwrap();
    let err = OperatorClient::connect(&sel).await.unwrap_err();
    assert!(matches!(err, TalosError::EndpointConnect { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&standin.endpoint()), "{msg}");
    assert!(
        err.hint()
            .unwrap()
            .contains("not signed by the talosconfig's `ca`"),
        "{msg}"
    );
}

#[tokio::test]
async fn node_metadata_routes_the_request() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    write_node_file(a.path(), STATUS_PATH, b"from node-a");
    write_node_file(b.path(), STATUS_PATH, b"from node-b");
    let standin = StandIn::builder()
        .node("node-a", a.path())
        .node("node-b", b.path())
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();

    // The context's nodes.
    let mut spec = standin.talosconfig_spec("os:admin");
    spec.nodes = vec!["node-a".into()];
    let path = spec.write(dir.path());
    let sel = TalosConfigSelection::load(&opts(&path)).unwrap();
    let mut op = OperatorClient::connect(&sel).await.unwrap();
    assert_eq!(op.node(), Some("node-a"));
    assert_eq!(op.read(STATUS_PATH).await.unwrap(), b"from node-a");

    // --nodes overrides them.
    let sel = TalosConfigSelection::load(&TalosConfigOptions {
        nodes: vec!["node-b".into()],
        ..opts(&path)
    })
    .unwrap();
    let mut op = OperatorClient::connect(&sel).await.unwrap();
    assert_eq!(op.read(STATUS_PATH).await.unwrap(), b"from node-b");

    // A node apid cannot reach.
    op.set_node(Some("node-c".into()));
    let err = op.read(STATUS_PATH).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::Unavailable), "{err}");
    assert!(err.is_transient());
    assert!(err.to_string().contains("node node-c"), "{err}");

    // The reply metadata names the node that answered.
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&sel.ca_pem))
        .identity(Identity::from_pem(&sel.crt_pem, &*sel.key_pem))
        .domain_name("127.0.0.1");
    let channel = Endpoint::from_shared(format!("https://{}", standin.endpoint()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = MachineServiceClient::new(channel);
    let mut req = tonic::Request::new(ReadRequest {
        path: STATUS_PATH.into(),
    });
    req.metadata_mut().insert("node", "node-b".parse().unwrap());
    let mut stream = raw.read(req).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.metadata.unwrap().hostname, "node-b");
    assert_eq!(first.bytes, b"from node-b");
}

// ---- talosconfig parsing ----

fn parse(yaml: &str, o: &TalosConfigOptions) -> Result<TalosConfigSelection, TalosConfigError> {
    TalosConfigSelection::from_yaml(yaml, Path::new("/home/op/.talos/config"), o)
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn talosconfig_errors_name_the_field() {
    let standin = StandIn::builder().start().await;
    let spec = standin.talosconfig_spec("os:admin");
    let good = spec.to_yaml();
    let none = TalosConfigOptions::default();
    parse(&good, &none).unwrap();

    // No current context and no --context.
    let no_ctx = good.replacen("context: standin\n", "", 1);
    let err = parse(&no_ctx, &none).unwrap_err();
    assert!(matches!(err, TalosConfigError::NoContext { .. }), "{err:?}");
    assert!(err.to_string().contains("`context`"), "{err}");
    // --context fixes it.
    let with = TalosConfigOptions {
        context: Some("standin".into()),
        ..Default::default()
    };
    assert_eq!(parse(&no_ctx, &with).unwrap().context, "standin");

    // --context naming a context that is not there.
    let other = TalosConfigOptions {
        context: Some("prod".into()),
        ..Default::default()
    };
    let err = parse(&good, &other).unwrap_err();
    assert!(
        matches!(err, TalosConfigError::UnknownContext { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("\"prod\"") && err.to_string().contains("standin"),
        "{err}"
    );

    // Bad base64 in ca.
    let bad = good.replace(&b64(&spec.ca_pem), "not*base64!");
    let err = parse(&bad, &none).unwrap_err();
    assert!(matches!(err, TalosConfigError::Base64 { .. }), "{err:?}");
    assert!(err.to_string().contains("contexts.standin.ca"), "{err}");

    // Base64 that is not PEM in crt.
    let bad = good.replace(&b64(&spec.crt_pem), &b64("hello"));
    let err = parse(&bad, &none).unwrap_err();
    assert!(matches!(err, TalosConfigError::Pem { .. }), "{err:?}");
    assert!(err.to_string().contains("contexts.standin.crt"), "{err}");

    // No key.
    let bad: String = good
        .lines()
        .filter(|l| !l.trim_start().starts_with("key:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let err = parse(&bad, &none).unwrap_err();
    assert!(
        matches!(err, TalosConfigError::MissingField { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("contexts.standin.key"), "{err}");

    // --endpoints overrides; the deprecated `target` still counts as an endpoint.
    let o = TalosConfigOptions {
        endpoints: vec!["10.0.0.9".into()],
        ..Default::default()
    };
    assert_eq!(
        parse(&good, &o).unwrap().endpoints,
        vec!["10.0.0.9".to_owned()]
    );
    let target = good.replace(
        &format!("endpoints:\n      - {}", standin.endpoint()),
        "endpoints: []\n    target: 10.0.0.7",
    );
    assert_eq!(
        parse(&target, &none).unwrap().endpoints,
        vec!["10.0.0.7".to_owned()]
    );

    // Not YAML of the right shape.
    let err = parse("contexts: [1, 2]\n", &none).unwrap_err();
    assert!(matches!(err, TalosConfigError::Yaml { .. }), "{err:?}");
    assert!(err.to_string().contains("/home/op/.talos/config"), "{err}");

    // A file that is not there.
    let err = TalosConfigSelection::load(&opts(Path::new("/nonexistent/talosconfig"))).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/talosconfig"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_the_node_rejects_is_named_as_such() {
    let root = tempfile::tempdir().unwrap();
    write_node_file(root.path(), STATUS_PATH, b"{}");
    let standin = StandIn::builder().root(root.path()).start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut spec = standin.talosconfig_spec("os:admin");
    // Issued by another cluster's CA: the node's certificate still verifies, ours does not.
    let other = Pki::new().issue_client("os:admin");
    spec.crt_pem = other.crt_pem;
    spec.key_pem = other.key_pem;
    let path = spec.write(dir.path());
    let sel = TalosConfigSelection::load(&opts(&path)).unwrap();
    // With TLS 1.3 the node's verdict arrives after the handshake, at the first call.
    let err = match OperatorClient::connect(&sel).await {
        Ok(mut op) => op.read(STATUS_PATH).await.unwrap_err(),
        Err(e) => e,
    };
    assert!(
        matches!(err, TalosError::ClientCertificateRejected { .. }),
        "{err:?}"
    );
    assert!(!err.is_transient(), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&standin.endpoint())
            && msg.contains("rejected the talosconfig's client certificate"),
        "{msg}"
    );
    assert!(err.hint().unwrap().contains("talosconfig"), "{err:?}");

    // The command says the same and exits 2 (a configuration problem), not 1 (retry later).
    let agent = bootstrap_agent_tests::swtpm::agent_binary().unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(agent)
            .args(["status", "--talosconfig"])
            .arg(&path)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("rejected the talosconfig's client certificate")
            && stderr.contains("hint:"),
        "{stderr}"
    );
    assert!(!stderr.contains("transport error"), "{stderr}");
}

#[tokio::test]
async fn a_caller_that_is_not_an_extension_service_is_refused_and_the_hint_says_so() {
    // Talos waits up to 5 s for the caller's PID to appear among the services; shortened here.
    let standin = StandIn::builder()
        .check_callers(std::time::Duration::from_millis(100))
        .start()
        .await;
    let mut node = NodeClient::connect(standin.socket_path()).await.unwrap();
    let err = node.version().await.unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");
    assert!(!err.is_transient());
    let hint = err.hint().unwrap();
    assert!(
        hint.contains("ext-*") && hint.contains("ext-bootstrap-agent") && hint.contains("os:admin"),
        "{hint}"
    );

    // The same process, once it is the extension service's, passes.
    standin.register_service("ext-bootstrap-agent", std::process::id());
    node.version().await.unwrap();
    // Other services' processes do not.
    standin.register_service("ext-bootstrap-agent", std::process::id() + 1);
    standin.register_service("kubelet", std::process::id());
    assert_eq!(
        node.version().await.unwrap_err().code(),
        Some(Code::PermissionDenied)
    );
}
