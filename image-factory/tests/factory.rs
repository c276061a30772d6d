//! Schematic IDs against the published ones, the factory client against a loopback HTTP
//! server, and the imager invocation.

#![allow(clippy::unwrap_used)] // tests panic on unexpected errors by design

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use image_factory::client::{FactoryClient, FactoryError};
use image_factory::imager::{self, ImagerError, ImagerInputs};
use image_factory::profile::{self, Kind, ProfileInputs};
use image_factory::schematic::Schematic;
use image_factory::{GUEST_AGENT_PLACEHOLDER, PROFILE_HEADER};
use sha2::Digest;

const EMPTY_ID: &str = "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba";
const GUEST_AGENT_ID: &str = "ce4c980550dd2ab1b17bbf2b08801c7eb59418eafe8f279833297925d67c7515";

fn crate_file(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn schematic_ids_equal_the_published_ones() {
    assert_eq!(Schematic::default().canonical_yaml(), "customization: {}\n");
    assert_eq!(Schematic::default().id(), EMPTY_ID);
    assert_eq!(
        Schematic::parse("customization: {}\n").unwrap().id(),
        EMPTY_ID
    );

    let agent = Schematic::with_official_extensions(&["siderolabs/qemu-guest-agent"]);
    assert_eq!(
        agent.canonical_yaml(),
        "customization:\n    systemExtensions:\n        officialExtensions:\n            - siderolabs/qemu-guest-agent\n"
    );
    assert_eq!(agent.id(), GUEST_AGENT_ID);
    // Formatting of the input does not matter, only content.
    let two_space = "customization:\n  systemExtensions:\n    officialExtensions: [siderolabs/qemu-guest-agent]\n";
    assert_eq!(Schematic::parse(two_space).unwrap().id(), GUEST_AGENT_ID);
    // The committed schematic is the guest-agent one.
    assert_eq!(
        Schematic::parse(&crate_file("schematic.yaml"))
            .unwrap()
            .id(),
        GUEST_AGENT_ID
    );
    // Unknown fields are refused, as the factory does.
    let err = Schematic::parse("customization:\n  systemExtension: {}\n").unwrap_err();
    assert!(err.to_string().contains("systemExtension"), "{err}");
}

/// The Image Factory's own test vectors (pkg/schematic/schematic_test.go): JSON-style input,
/// overlay, META (a sequence of mappings), SecureBoot and disk-image customisations.
#[test]
fn schematic_ids_equal_the_factorys_own_test_vectors() {
    for (input, id) in [
        ("{}", EMPTY_ID),
        (r#"customization: {"extraKernelArgs": []}"#, EMPTY_ID),
        (
            r#"{"customization": {"extraKernelArgs": ["noapic", "nolapic"], "systemExtensions": {}}}"#,
            "9cba8e32753f91a16c1837ab8abf356af021706ef284aef07380780177d9a06c",
        ),
        (
            r#"{"customization": {"meta": [{"key": 10, "value": "foo"}], "extraKernelArgs": [], "systemExtensions": {}}}"#,
            "d308a2a5ee2277bed5fbaa104fcbc8d59122abfa737df987a95b4ca763459a7f",
        ),
        (
            r#"{"overlay": {"name": "rpi_generic", "image": "siderolabs/sbc-raspberrypi"},"customization":{}}"#,
            "ee21ef4a5ef808a9b7484cc0dda0f25075021691c8c09a276591eedb638ea1f9",
        ),
        (
            r#"{"customization":{"secureboot": {"includeWellKnownCertificates": true}}}"#,
            "fa8e05f142a851d3ee568eb0a8e5841eaf6b0ebc8df9a63df16ac5ed2c04f3e6",
        ),
        (
            r#"{"customization":{"diskImage": {"sectorSize": 4096}}}"#,
            "92833e9ddd9bb9e11b2464fa5525429f01866306d52ebd882ee08d7918f6d1ea",
        ),
    ] {
        let s = Schematic::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(s.id(), id, "{input} rendered as\n{}", s.canonical_yaml());
    }
}

#[test]
fn the_cli_prints_schematic_ids() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_image-factory"))
        .arg("schematic-id")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("schematic.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{GUEST_AGENT_ID}\n")
    );
}

#[test]
fn committed_profiles_are_what_the_tool_renders() {
    for kind in [Kind::Iso, Kind::Installer] {
        let rendered = profile::render(&ProfileInputs {
            kind,
            talos_version: profile::DEFAULT_TALOS_VERSION.into(),
            guest_agent_ref: GUEST_AGENT_PLACEHOLDER.into(),
            embedded_config: None,
        })
        .unwrap();
        let committed = crate_file(&format!("profiles/{}.yaml", kind.name()));
        assert_eq!(
            committed,
            format!("{PROFILE_HEADER}{rendered}"),
            "profiles/{}.yaml is stale: regenerate with `image-factory profile --kind ...`",
            kind.name()
        );
        assert!(rendered.contains("ociPath: /extension"));
        assert!(rendered.contains("secureboot: true"));
    }
}

/// The default Talos version is the one `versions.yaml` pins (read by build.rs line by line;
/// here through a YAML parser, so a layout build.rs misreads fails).
#[test]
fn default_talos_version_is_the_pinned_one() {
    let versions: std::collections::BTreeMap<String, String> =
        serde_saphyr::from_str(&crate_file("versions.yaml")).unwrap();
    assert_eq!(
        versions.get("talos").map(String::as_str),
        Some(profile::DEFAULT_TALOS_VERSION),
        "versions.yaml and image-factory disagree"
    );
}

type Handler = Arc<dyn Fn(&str, &str, &[u8]) -> (StatusCode, String) + Send + Sync>;

/// A loopback HTTP server; returns its base URL and a request counter.
async fn serve(handler: Handler) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let handler = handler.clone();
                        let counter = counter.clone();
                        async move {
                            counter.fetch_add(1, Ordering::SeqCst);
                            let method = req.method().to_string();
                            let path = req.uri().path().to_string();
                            let body = req.into_body().collect().await?.to_bytes();
                            let (status, text) = handler(&method, &path, &body);
                            let mut resp = Response::new(Full::new(Bytes::from(text)));
                            *resp.status_mut() = status;
                            Ok::<_, hyper::Error>(resp)
                        }
                    });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), count)
}

/// A stand-in for the factory's `POST /schematics`: hashes the (canonical) body, answers 201
/// with `{"id": ...}`; and `GET /version/{v}/extensions/official`.
fn factory_stand_in() -> Handler {
    Arc::new(|method, path, body| {
        match (method, path) {
        ("POST", "/schematics") => {
            if std::str::from_utf8(body).is_err() {
                return (StatusCode::BAD_REQUEST, "schematic is not UTF-8".into());
            }
            let id = hex::encode(sha2::Sha256::digest(body));
            (StatusCode::CREATED, format!(r#"{{"id":"{id}"}}"#))
        }
        ("GET", "/version/v1.13.9/extensions/official") => (
            StatusCode::OK,
            r#"[{"name":"siderolabs/iscsi-tools","ref":"ghcr.io/siderolabs/iscsi-tools:v0.2.0","digest":"sha256:aa","author":"","description":""},
                {"name":"siderolabs/qemu-guest-agent","ref":"ghcr.io/siderolabs/qemu-guest-agent:10.0.2","digest":"sha256:bb","author":"Sidero Labs","description":"x"}]"#
                .into(),
        ),
        _ => (StatusCode::NOT_FOUND, "404 page not found".into()),
    }
    })
}

#[tokio::test]
async fn the_client_registers_schematics_and_resolves_extensions() {
    let (url, count) = serve(factory_stand_in()).await;
    let client = FactoryClient::new(&url).unwrap();
    let agent = Schematic::with_official_extensions(&["siderolabs/qemu-guest-agent"]);
    assert_eq!(
        client.create_schematic(&agent).await.unwrap(),
        GUEST_AGENT_ID
    );
    assert_eq!(
        client
            .create_schematic(&Schematic::default())
            .await
            .unwrap(),
        EMPTY_ID
    );
    let ext = client
        .official_extension("v1.13.9", "siderolabs/qemu-guest-agent")
        .await
        .unwrap();
    assert_eq!(
        ext.pinned(),
        "ghcr.io/siderolabs/qemu-guest-agent:10.0.2@sha256:bb"
    );
    let missing = client
        .official_extension("v1.13.9", "siderolabs/nope")
        .await
        .unwrap_err();
    assert!(
        matches!(missing, FactoryError::NoSuchExtension { .. }),
        "{missing}"
    );
    let unknown_version = client.official_extension("v9.9.9", "x").await.unwrap_err();
    assert!(
        unknown_version.to_string().contains("404"),
        "{unknown_version}"
    );
    assert_eq!(count.load(Ordering::SeqCst), 5);
    assert_eq!(
        client.image_url(GUEST_AGENT_ID, "v1.13.9", "metal-amd64-secureboot.iso"),
        format!("{url}/image/{GUEST_AGENT_ID}/v1.13.9/metal-amd64-secureboot.iso")
    );
    assert_eq!(
        client.secureboot_installer("abc", "v1.13.9"),
        format!(
            "{}/installer-secureboot/abc:v1.13.9",
            url.trim_start_matches("http://")
        )
    );
}

#[tokio::test]
async fn the_client_reports_http_errors_with_their_body() {
    let (url, _) = serve(Arc::new(|_, _, _| {
        (
            StatusCode::BAD_REQUEST,
            "error parsing schematic: yaml: unknown field \"foo\"".into(),
        )
    }))
    .await;
    let err = FactoryClient::new(&url)
        .unwrap()
        .create_schematic(&Schematic::default())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, FactoryError::Status { status: 400, .. }),
        "{text}"
    );
    assert!(text.contains("unknown field"), "{text}");
    assert!(text.contains(&format!("POST {url}/schematics")), "{text}");

    let (url, _) = serve(Arc::new(|_, _, _| {
        (StatusCode::INTERNAL_SERVER_ERROR, String::new())
    }))
    .await;
    let err = FactoryClient::new(&url)
        .unwrap()
        .create_schematic(&Schematic::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("500") && err.to_string().contains("(empty body)"),
        "{err}"
    );
}

#[tokio::test]
async fn the_client_reports_bad_json_and_id_mismatches() {
    let (url, _) = serve(Arc::new(|_, _, _| {
        (StatusCode::CREATED, "<html>gateway</html>".into())
    }))
    .await;
    let err = FactoryClient::new(&url)
        .unwrap()
        .create_schematic(&Schematic::default())
        .await
        .unwrap_err();
    assert!(matches!(err, FactoryError::BadJson { .. }), "{err}");
    assert!(err.to_string().contains("<html>gateway</html>"), "{err}");

    let (url, _) = serve(Arc::new(|_, _, _| {
        (StatusCode::CREATED, r#"{"id":"0000"}"#.into())
    }))
    .await;
    let err = FactoryClient::new(&url)
        .unwrap()
        .create_schematic(&Schematic::default())
        .await
        .unwrap_err();
    assert!(matches!(err, FactoryError::IdMismatch { .. }), "{err}");
    assert!(err.to_string().contains(EMPTY_ID), "{err}");
}

#[tokio::test]
async fn the_client_reports_connection_refused() {
    // Bind, read the port, close: nothing listens there any more.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let err = FactoryClient::new(&url)
        .unwrap()
        .create_schematic(&Schematic::default())
        .await
        .unwrap_err();
    assert!(matches!(err, FactoryError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains(&url), "{err}");

    assert!(matches!(
        FactoryClient::new("factory.talos.dev"),
        Err(FactoryError::BadUrl(_))
    ));
}

#[tokio::test]
async fn secrets_never_go_to_a_factory() {
    let (url, count) = serve(factory_stand_in()).await;
    let mut s = Schematic::default();
    s.customization.embedded_machine_configuration = "version: v1alpha1\n".into();
    let err = FactoryClient::new(&url)
        .unwrap()
        .create_schematic(&s)
        .await
        .unwrap_err();
    assert!(matches!(err, FactoryError::SecretsToFactory(_)), "{err}");
    assert_eq!(count.load(Ordering::SeqCst), 0);
}

fn keys_and_extension(dir: &Path, kind: Kind) -> (std::path::PathBuf, std::path::PathBuf) {
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    for k in imager::required_keys(kind) {
        std::fs::write(keys.join(k), "test key material").unwrap();
    }
    let ext = dir.join("ext");
    std::fs::create_dir_all(&ext).unwrap();
    std::fs::write(ext.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    (keys, ext)
}

#[test]
fn the_imager_plan_checks_inputs_and_renders_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let (keys, ext) = keys_and_extension(dir.path(), Kind::Installer);
    let inputs = ImagerInputs {
        profile: ProfileInputs {
            kind: Kind::Iso,
            talos_version: "v1.13.9".into(),
            guest_agent_ref: "ghcr.io/siderolabs/qemu-guest-agent:10.0.2@sha256:bb".into(),
            embedded_config: None,
        },
        keys: keys.clone(),
        extension: ext.clone(),
        out: dir.path().join("out"),
    };
    // The installer's keys are there, the ISO also needs the enrollment .auth files.
    let err = imager::plan(&inputs).unwrap_err();
    assert!(matches!(err, ImagerError::MissingKey { .. }), "{err}");
    assert!(
        err.to_string().contains("PK.auth") && err.to_string().contains("talosctl gen secureboot"),
        "{err}"
    );

    let (keys, _) = keys_and_extension(dir.path(), Kind::Iso);
    let inv = imager::plan(&ImagerInputs {
        keys,
        ..inputs.clone()
    })
    .unwrap();
    assert!(
        inv.args
            .contains(&"ghcr.io/siderolabs/imager:v1.13.9".to_string())
    );
    assert_eq!(inv.args.last().unwrap(), "-");
    assert!(
        inv.args.iter().any(|a| a.ends_with("/ext:/extension:ro")),
        "{:?}",
        inv.args
    );
    assert!(
        inv.args.iter().any(|a| a.ends_with("/keys:/secureboot:ro")),
        "{:?}",
        inv.args
    );
    assert!(
        inv.profile_yaml
            .contains("imageRef: ghcr.io/siderolabs/qemu-guest-agent:10.0.2@sha256:bb")
    );
    let cmd = inv.shell_command("docker", Path::new("/tmp/p.yaml"));
    assert!(
        cmd.starts_with("docker run --rm -i -v ") && cmd.ends_with(" - < /tmp/p.yaml"),
        "{cmd}"
    );

    let no_ext = ImagerInputs {
        extension: dir.path().join("missing"),
        ..inputs
    };
    let (keys, _) = keys_and_extension(dir.path(), Kind::Iso);
    let err = imager::plan(&ImagerInputs { keys, ..no_ext }).unwrap_err();
    assert!(matches!(err, ImagerError::NoExtension(_)), "{err}");
}

#[test]
fn the_cli_prints_the_imager_command_with_an_embedded_config_kept_private() {
    let dir = tempfile::tempdir().unwrap();
    let (keys, ext) = keys_and_extension(dir.path(), Kind::Installer);
    let config = dir.path().join("controlplane.yaml");
    std::fs::write(
        &config,
        "version: v1alpha1\nmachine:\n  type: controlplane\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_image-factory"))
        .args(["imager", "--kind", "installer", "--print"])
        .arg("--keys")
        .arg(&keys)
        .arg("--extension")
        .arg(&ext)
        .arg("--out")
        .arg(&out)
        .args([
            "--guest-agent-ref",
            "ghcr.io/siderolabs/qemu-guest-agent:10.0.2@sha256:bb",
        ])
        .arg("--embedded-config")
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("ghcr.io/siderolabs/imager:v1.13.9 - < "),
        "{stdout}"
    );
    assert!(stderr.contains("keep it private"), "{stderr}");
    let profile = out.join("secureboot-installer.profile.yaml");
    let text = std::fs::read_to_string(&profile).unwrap();
    assert!(text.contains("embeddedMachineConfiguration"), "{text}");
    assert!(text.contains("type: controlplane"), "{text}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&profile).unwrap().permissions(),
    );
    assert_eq!(
        mode & 0o777,
        0o600,
        "a profile holding secrets must be private"
    );
}
