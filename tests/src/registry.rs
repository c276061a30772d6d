//! A real OCI registry for tests: the CNCF distribution registry (Debian's `docker-registry`)
//! on a free loopback port with filesystem storage in a temporary directory, plus what `flux
//! push artifact` does to it: a gzip tarball layer of media type
//! `application/vnd.cncf.flux.content.v1.tar+gzip` and a config of media type
//! `application/vnd.cncf.flux.config.v1+json` in an OCI image manifest (fluxcd/pkg
//! `oci/push.go`, `oci/build.go`: paths relative to the pushed directory, uid/gid 0, zero
//! timestamps). Pushes use the distribution API (monolithic blob upload, then the manifest).

#![allow(clippy::expect_used, clippy::unwrap_used)] // test support: a panic is the report

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use sha2::{Digest, Sha256};

pub const FLUX_CONFIG: &str = "application/vnd.cncf.flux.config.v1+json";
pub const FLUX_LAYER: &str = "application/vnd.cncf.flux.content.v1.tar+gzip";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A gzip tarball of `files` as `flux push artifact` builds it from a directory.
pub fn flux_layer(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    dir.set_mtime(0);
    tar.append_data(&mut dir, ".", std::io::empty()).unwrap();
    for (name, body) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(body.len() as u64);
        h.set_mtime(0);
        tar.append_data(&mut h, name, *body).unwrap();
    }
    let raw = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &raw).unwrap();
    gz.finish().unwrap()
}

pub struct Registry {
    _dir: tempfile::TempDir,
    child: Child,
    pub port: u16,
    client: reqwest::Client,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    /// Starts the registry and waits until `/v2/` answers.
    pub async fn start() -> Registry {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let bin = ["/usr/bin/docker-registry", "/usr/bin/registry"]
            .into_iter()
            .find(|p| std::path::Path::new(p).is_file())
            .expect("the OCI registry is missing: install Debian's docker-registry (tests/install-deps.sh)");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let dir = tempfile::tempdir().expect("registry dir");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .expect("registry config");
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the registry");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let registry = Registry {
            _dir: dir,
            child,
            port,
            client,
        };
        for _ in 0..200 {
            if let Ok(r) = registry.client.get(registry.url("/v2/")).send().await
                && r.status().is_success()
            {
                return registry;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the registry did not answer on 127.0.0.1:{port}");
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let d = digest(bytes);
        let start = self
            .client
            .post(self.url(&format!("/v2/{repo}/blobs/uploads/")))
            .send()
            .await
            .unwrap();
        assert_eq!(start.status().as_u16(), 202, "start upload");
        let location = start
            .headers()
            .get("location")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let location = if location.starts_with("http") {
            location
        } else {
            self.url(&location)
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = self
            .client
            .put(format!("{location}{sep}digest={d}"))
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(put.status().as_u16(), 201, "upload blob {d}");
        d
    }

    /// Pushes `files` as a Flux artifact under `repo:tag`; returns the manifest digest.
    pub async fn push_flux_artifact(
        &self,
        repo: &str,
        tag: &str,
        files: &[(&str, &[u8])],
    ) -> String {
        let layer = flux_layer(files);
        let config = br#"{"created":"2026-01-01T00:00:00Z"}"#;
        let layer_digest = self.push_blob(repo, &layer).await;
        let config_digest = self.push_blob(repo, config).await;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": FLUX_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": FLUX_LAYER, "digest": layer_digest, "size": layer.len()}],
            "annotations": {
                "org.opencontainers.image.created": "2026-01-01T00:00:00Z",
                "org.opencontainers.image.source": "https://github.com/fluxcd/flux2",
                "org.opencontainers.image.revision": format!("{tag}@sha1:889be9d6cc8afa8ed639e1e1ba4ab678e3b38d8c"),
            },
        });
        let body = serde_json::to_vec(&manifest).unwrap();
        let put = self
            .client
            .put(self.url(&format!("/v2/{repo}/manifests/{tag}")))
            .header("content-type", OCI_MANIFEST)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(put.status().as_u16(), 201, "push manifest");
        digest(&body)
    }
}
