//! A client for the Image Factory HTTP API (public factory.talos.dev or a self-hosted one).

use std::time::Duration;

use serde::Deserialize;

use crate::schematic::Schematic;

/// The public factory.
pub const PUBLIC_FACTORY: &str = "https://factory.talos.dev";

/// What went wrong talking to the factory; every variant names the URL.
#[derive(Debug, thiserror::Error)]
pub enum FactoryError {
    #[error("`{0}` is not a usable factory URL: give http(s)://host[:port]")]
    BadUrl(String),
    #[error("building the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("cannot reach the Image Factory at {url}: {source}; check the URL and the network")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the Image Factory answered {status} for {method} {url}: {body}")]
    Status {
        method: &'static str,
        url: String,
        status: u16,
        body: String,
    },
    #[error(
        "the Image Factory's answer to {url} is not the expected JSON ({expected}): {source}; body: {body}"
    )]
    BadJson {
        url: String,
        expected: &'static str,
        body: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "the Image Factory at {url} computed schematic ID {remote}, we computed {local}: it canonicalises differently; do not trust either ID until resolved"
    )]
    IdMismatch {
        url: String,
        local: String,
        remote: String,
    },
    #[error("the Image Factory lists no official extension `{name}` for Talos {version}")]
    NoSuchExtension { name: String, version: String },
    #[error(
        "refusing to send a schematic that embeds a machine configuration (cluster secrets) to {0}; build such images locally with imager"
    )]
    SecretsToFactory(String),
}

/// One official extension as the factory lists it for a Talos version.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct OfficialExtension {
    pub name: String,
    #[serde(rename = "ref")]
    pub reference: String,
    pub digest: String,
}

impl OfficialExtension {
    /// `ref@digest`, pinned.
    pub fn pinned(&self) -> String {
        format!("{}@{}", self.reference, self.digest)
    }
}

#[derive(Deserialize)]
struct CreatedSchematic {
    id: String,
}

pub struct FactoryClient {
    base: String,
    http: reqwest::Client,
}

/// Installs ring as rustls's process-wide crypto provider (idempotent).
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

const MAX_BODY_IN_ERRORS: usize = 2048;

fn clip(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.len() > MAX_BODY_IN_ERRORS {
        let mut end = MAX_BODY_IN_ERRORS;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}… ({} bytes)", &text[..end], body.len())
    } else if text.is_empty() {
        "(empty body)".to_string()
    } else {
        text.to_string()
    }
}

impl FactoryClient {
    pub fn new(base_url: &str) -> Result<FactoryClient, FactoryError> {
        let base = base_url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) || base.len() < 8 {
            return Err(FactoryError::BadUrl(base_url.to_string()));
        }
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .user_agent(concat!(
                "bootstrap-agent-image-factory/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(FactoryError::Client)?;
        Ok(FactoryClient { base, http })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    async fn send(
        &self,
        method: &'static str,
        url: String,
        request: reqwest::RequestBuilder,
    ) -> Result<Vec<u8>, FactoryError> {
        let response = request
            .send()
            .await
            .map_err(|source| FactoryError::Unreachable {
                url: url.clone(),
                source,
            })?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|source| FactoryError::Unreachable {
                url: url.clone(),
                source,
            })?;
        if !status.is_success() {
            return Err(FactoryError::Status {
                method,
                url,
                status: status.as_u16(),
                body: clip(&body),
            });
        }
        Ok(body.to_vec())
    }

    /// `POST /schematics`: registers the schematic and returns its ID, after checking that the
    /// factory's ID equals ours.
    pub async fn create_schematic(&self, schematic: &Schematic) -> Result<String, FactoryError> {
        let url = format!("{}/schematics", self.base);
        if schematic.holds_secrets() {
            return Err(FactoryError::SecretsToFactory(url));
        }
        let request = self
            .http
            .post(&url)
            .header("content-type", "application/yaml")
            .body(schematic.canonical_yaml());
        let body = self.send("POST", url.clone(), request).await?;
        let created: CreatedSchematic =
            serde_json::from_slice(&body).map_err(|source| FactoryError::BadJson {
                url: url.clone(),
                expected: r#"{"id": "<64 hex>"}"#,
                body: clip(&body),
                source,
            })?;
        let local = schematic.id();
        if created.id != local {
            return Err(FactoryError::IdMismatch {
                url,
                local,
                remote: created.id,
            });
        }
        tracing::info!(id = %created.id, "schematic registered");
        Ok(created.id)
    }

    /// `GET /version/{version}/extensions/official`, then the entry named `name`.
    pub async fn official_extension(
        &self,
        version: &str,
        name: &str,
    ) -> Result<OfficialExtension, FactoryError> {
        let url = format!("{}/version/{version}/extensions/official", self.base);
        let body = self.send("GET", url.clone(), self.http.get(&url)).await?;
        let list: Vec<OfficialExtension> =
            serde_json::from_slice(&body).map_err(|source| FactoryError::BadJson {
                url,
                expected: r#"[{"name", "ref", "digest"}]"#,
                body: clip(&body),
                source,
            })?;
        list.into_iter()
            .find(|e| e.name == name)
            .ok_or_else(|| FactoryError::NoSuchExtension {
                name: name.to_string(),
                version: version.to_string(),
            })
    }

    /// Download URL of a boot asset, e.g. `metal-amd64-secureboot.iso`.
    pub fn image_url(&self, id: &str, version: &str, file: &str) -> String {
        format!("{}/image/{id}/{version}/{file}", self.base)
    }

    /// The SecureBoot installer image reference served by this factory's registry.
    pub fn secureboot_installer(&self, id: &str, version: &str) -> String {
        let host = self
            .base
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        format!("{host}/installer-secureboot/{id}:{version}")
    }
}
