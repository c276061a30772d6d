//! The bundle the agent installs: one lock file naming every artifact (name, version, source,
//! sha256), delivered either as a directory (embedded in the extension at build time) or
//! fetched at boot over HTTPS. An artifact's source is a URL, or an OCI artifact pinned by its
//! manifest digest (Flux's components: `ghcr.io/fluxcd/flux-manifests`, the artifact Git's
//! `flux-components` OCIRepository applies, so that the agent installs exactly what Git then
//! owns; see [`oci`]). Every artifact's digest is checked before it is parsed; a mismatch is
//! refused with both digests. Artifacts are kept in memory, never written to disk.

pub mod oci;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{Classify, ErrorKind, chain, transient_if};

/// File name of the lock inside a bundle directory.
pub const LOCK_FILE: &str = "bundle.lock.yaml";

/// What an artifact is for, which decides the boot step that applies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// CRD sets (cert-manager, Gateway API): applied before Flux, CRDs first; anything else in
    /// the set (Gateway API's admission policy) once they are Established.
    Crds,
    /// Flux's own components (namespace, CRDs, RBAC, Services, controllers).
    FluxComponents,
}

/// One pinned artifact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LockedArtifact {
    pub name: String,
    pub version: String,
    pub role: Role,
    /// Where `refresh_lock` and `Bundle::fetch` get it (HTTPS); empty for an OCI artifact.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// Or an OCI artifact: `REGISTRY/REPOSITORY` (e.g. `ghcr.io/fluxcd/flux-manifests`), whose
    /// tag is `version`, pinned by `digest`, holding `file` in its one layer.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub oci: String,
    /// The OCI manifest digest (`sha256:…`) `version` resolved to when the pins were refreshed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    /// File name inside a bundle directory (and, for an OCI artifact, inside its layer).
    pub file: String,
    /// Lower-case hex sha256 of the artifact's bytes; empty until the pins refresh fills it.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub sha256: String,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

/// The lock file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BundleLock {
    pub name: String,
    pub artifacts: Vec<LockedArtifact>,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read {path}: {source}; check that the bundle directory is complete")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bundle lock {origin} is invalid: {message}")]
    Lock { origin: String, message: String },
    #[error(
        "artifact {artifact} from {origin} has sha256 {actual} but the lock pins {expected}; refused. \
         If upstream legitimately changed, refresh the pins; otherwise the source was tampered with or corrupted"
    )]
    DigestMismatch {
        artifact: String,
        origin: String,
        expected: String,
        actual: String,
    },
    #[error(
        "artifact {artifact} has no sha256 pin; refused. Run the pins refresh to pin it before use"
    )]
    Unpinned { artifact: String },
    #[error("artifact {artifact}, document {index}: {message}")]
    Document {
        artifact: String,
        index: usize,
        message: String,
    },
    #[error("cannot fetch artifact {artifact} from {url}: {message}")]
    Fetch {
        artifact: String,
        url: String,
        message: String,
    },
    #[error("artifact {artifact} from {url} is larger than the {limit}-byte cap; refused")]
    TooLarge {
        artifact: String,
        url: String,
        limit: usize,
    },
    #[error(
        "artifact {artifact}: URL {url} is not HTTPS; only HTTPS sources are accepted (fix the lock)"
    )]
    Insecure { artifact: String, url: String },
    #[error("artifact {artifact}: {message}")]
    Artifact { artifact: String, message: String },
}

impl Classify for BundleError {
    /// Network failures may pass; digest and content errors will not.
    fn kind(&self) -> ErrorKind {
        transient_if(matches!(self, BundleError::Fetch { .. }))
    }

    fn hint(&self) -> Option<String> {
        (!self.is_transient()).then(|| {
            "check bundle.lock.yaml: its pins decide what the agent accepts; rebuild the \
             extension with a complete, pinned bundle, or set bundle.fetch: true"
                .into()
        })
    }
}

impl BundleLock {
    pub fn parse(text: &str, origin: &str) -> Result<BundleLock, BundleError> {
        let lock: BundleLock = serde_saphyr::from_str(text).map_err(|e| BundleError::Lock {
            origin: origin.into(),
            message: e.to_string(),
        })?;
        lock.validate(origin)?;
        Ok(lock)
    }

    pub fn load(path: &Path) -> Result<BundleLock, BundleError> {
        let text = std::fs::read_to_string(path).map_err(|source| BundleError::Read {
            path: path.into(),
            source,
        })?;
        BundleLock::parse(&text, &path.display().to_string())
    }

    fn validate(&self, origin: &str) -> Result<(), BundleError> {
        let mut problems = Vec::new();
        for a in &self.artifacts {
            if !a.sha256.is_empty()
                && (a.sha256.len() != 64 || !a.sha256.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                problems.push(format!(
                    "artifact {}: sha256 must be 64 hex digits, got {:?}",
                    a.name, a.sha256
                ));
            }
            if a.file.is_empty() || a.file.contains('/') || a.file.starts_with('.') {
                problems.push(format!(
                    "artifact {}: file must be a plain file name, got {:?}",
                    a.name, a.file
                ));
            }
            if a.url.is_empty() == a.oci.is_empty() {
                problems.push(format!(
                    "artifact {}: give exactly one of url (an HTTPS file) and oci (an OCI artifact)",
                    a.name
                ));
            }
            if !a.digest.is_empty() && oci::parse_digest(&a.digest).is_none() {
                problems.push(format!(
                    "artifact {}: digest must be sha256:<64 hex digits>, got {:?}",
                    a.name, a.digest
                ));
            }
            if self.artifacts.iter().filter(|b| b.name == a.name).count() > 1 {
                problems.push(format!("artifact {} is listed twice", a.name));
            }
        }
        if self.artifacts.is_empty() {
            problems.push("no artifacts".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            problems.dedup();
            Err(BundleError::Lock {
                origin: origin.into(),
                message: problems.join("; "),
            })
        }
    }

    pub fn to_yaml(&self) -> Result<String, BundleError> {
        serde_saphyr::to_string(self).map_err(|e| BundleError::Lock {
            origin: self.name.clone(),
            message: e.to_string(),
        })
    }
}

/// What the API server needs to serve a CRD's kind (taken from its spec).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrdNames {
    pub group: String,
    pub kind: String,
    pub plural: String,
    pub namespaced: bool,
    pub versions: Vec<String>,
}

/// One Kubernetes object from the bundle, kept as compact JSON (keys sorted) so that a large
/// CRD set stays small in memory; it is parsed again only while it is being applied.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub artifact: String,
    pub version: String,
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
    /// `app.kubernetes.io/version` label, or Gateway API's bundle-version annotation.
    pub version_label: Option<String>,
    pub crd: Option<CrdNames>,
    /// The document as compact JSON: the canonical form the applied digest is taken over.
    pub json: String,
}

impl Manifest {
    /// Builds a manifest from a parsed document; the error says what is missing.
    pub fn from_value(artifact: &str, version: &str, object: &Value) -> Result<Manifest, String> {
        let (Some(api_version), Some(kind)) =
            (object["apiVersion"].as_str(), object["kind"].as_str())
        else {
            return Err("apiVersion and kind must be strings".into());
        };
        let Some(name) = object["metadata"]["name"].as_str() else {
            return Err("metadata.name is missing".into());
        };
        let md = &object["metadata"];
        let version_label = md["labels"]["app.kubernetes.io/version"]
            .as_str()
            .or_else(|| md["annotations"]["gateway.networking.k8s.io/bundle-version"].as_str())
            .map(str::to_string);
        let crd = (kind == "CustomResourceDefinition" && api_version == "apiextensions.k8s.io/v1")
            .then(|| {
                let spec = &object["spec"];
                Some(CrdNames {
                    group: spec["group"].as_str()?.to_string(),
                    kind: spec["names"]["kind"].as_str()?.to_string(),
                    plural: spec["names"]["plural"].as_str()?.to_string(),
                    namespaced: spec["scope"].as_str() == Some("Namespaced"),
                    versions: spec["versions"]
                        .as_array()?
                        .iter()
                        .filter_map(|v| v["name"].as_str().map(str::to_string))
                        .collect(),
                })
            })
            .map(|c| {
                c.ok_or_else(|| "CRD without spec.group, spec.names or spec.versions".to_string())
            })
            .transpose()?;
        Ok(Manifest {
            artifact: artifact.into(),
            version: version.into(),
            api_version: api_version.into(),
            kind: kind.into(),
            name: name.into(),
            namespace: md["namespace"].as_str().map(str::to_string),
            version_label,
            crd,
            json: serde_json::to_string(object).map_err(|e| e.to_string())?,
        })
    }

    pub fn kind(&self) -> &str {
        &self.kind
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }
    pub fn is_crd(&self) -> bool {
        self.crd.is_some()
    }
    /// The document, parsed.
    pub fn object(&self) -> Value {
        serde_json::from_str(&self.json).unwrap_or(Value::Null)
    }
    /// sha256 of the canonical JSON.
    pub fn digest(&self) -> String {
        sha256_hex(self.json.as_bytes())
    }
}

/// Parsed, digest-checked documents grouped by the step that applies them.
#[derive(Clone, Debug, Default)]
pub struct Bundle {
    pub lock: Option<BundleLock>,
    /// CRD sets applied before Flux (role `crds`).
    pub crds: Vec<Manifest>,
    /// Flux's components (role `flux-components`).
    pub flux: Vec<Manifest>,
}

/// Options for fetching artifacts over the network.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// Cap per artifact; larger bodies are refused while streaming.
    pub max_bytes: usize,
    pub max_redirects: usize,
    pub timeout: Duration,
    /// Test-only: accept `http://` URLs whose host is a loopback address.
    pub allow_loopback_http: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            max_bytes: 16 * 1024 * 1024,
            max_redirects: 5,
            timeout: Duration::from_secs(60),
            allow_loopback_http: false,
        }
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn check_digest(a: &LockedArtifact, bytes: &[u8], origin: &str) -> Result<(), BundleError> {
    if a.sha256.is_empty() {
        return Err(BundleError::Unpinned {
            artifact: a.name.clone(),
        });
    }
    let actual = sha256_hex(bytes);
    if actual.eq_ignore_ascii_case(&a.sha256) {
        Ok(())
    } else {
        Err(BundleError::DigestMismatch {
            artifact: a.name.clone(),
            origin: origin.into(),
            expected: a.sha256.to_lowercase(),
            actual,
        })
    }
}

/// Parses a digest-checked artifact into its documents, one document at a time.
fn parse_artifact(a: &LockedArtifact, bytes: &[u8]) -> Result<Vec<Manifest>, BundleError> {
    std::str::from_utf8(bytes).map_err(|e| BundleError::Document {
        artifact: a.name.clone(),
        index: 0,
        message: format!("not UTF-8 text: {e}"),
    })?;
    let text = std::str::from_utf8(bytes).unwrap_or_default();
    let docs: Vec<Value> = serde_saphyr::from_multiple_with_options(
        text,
        serde_saphyr::options! { emit_comments: false },
    )
    .map_err(|e| BundleError::Document {
        artifact: a.name.clone(),
        index: 0,
        message: format!("not valid YAML: {e}"),
    })?;
    let mut out = Vec::new();
    for (index, object) in docs.into_iter().enumerate() {
        let err = |message: String| BundleError::Document {
            artifact: a.name.clone(),
            index,
            message,
        };
        if object.is_null() {
            continue;
        }
        out.push(Manifest::from_value(&a.name, &a.version, &object).map_err(err)?);
    }
    Ok(out)
}

impl Bundle {
    fn push(&mut self, a: &LockedArtifact, docs: Vec<Manifest>) {
        match a.role {
            Role::Crds => self.crds.extend(docs),
            Role::FluxComponents => self.flux.extend(docs),
        }
    }

    /// Parses digest-checked artifacts, one thread per artifact (YAML parsing dominates the
    /// load time of the 2 MB CRD sets).
    /// `raw` pairs each artifact's bytes with where they came from (for the digest error).
    fn from_artifacts(
        lock: &BundleLock,
        raw: Vec<(Vec<u8>, String)>,
    ) -> Result<Bundle, BundleError> {
        let parsed: Vec<Result<Vec<Manifest>, BundleError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = lock
                .artifacts
                .iter()
                .zip(raw.iter())
                .map(|(a, (bytes, origin))| {
                    scope.spawn(move || {
                        check_digest(a, bytes, origin)?;
                        parse_artifact(a, bytes)
                    })
                })
                .collect();
            handles
                .into_iter()
                .zip(lock.artifacts.iter())
                .map(|(h, a)| {
                    h.join().unwrap_or_else(|_| {
                        Err(BundleError::Document {
                            artifact: a.name.clone(),
                            index: 0,
                            message: "the parser panicked".into(),
                        })
                    })
                })
                .collect()
        });
        drop(raw);
        let mut bundle = Bundle::default();
        for (a, docs) in lock.artifacts.iter().zip(parsed) {
            bundle.push(a, docs?);
        }
        bundle.lock = Some(lock.clone());
        Ok(bundle)
    }

    /// Loads a bundle directory: `bundle.lock.yaml` plus one file per artifact.
    pub fn load_dir(dir: &Path) -> Result<Bundle, BundleError> {
        let lock = BundleLock::load(&dir.join(LOCK_FILE))?;
        let mut raw = Vec::with_capacity(lock.artifacts.len());
        for a in &lock.artifacts {
            let path = dir.join(&a.file);
            let bytes = std::fs::read(&path).map_err(|source| BundleError::Read {
                path: path.clone(),
                source,
            })?;
            raw.push((bytes, path.display().to_string()));
        }
        Bundle::from_artifacts(&lock, raw)
    }

    /// Fetches every artifact of `lock` over HTTPS, checks its digest, parses it. Nothing is
    /// written to disk.
    pub async fn fetch(lock: &BundleLock, opts: &FetchOptions) -> Result<Bundle, BundleError> {
        let client = http_client(opts)?;
        let mut raw = Vec::with_capacity(lock.artifacts.len());
        for a in &lock.artifacts {
            let (bytes, _) = fetch_artifact(&client, a, opts, true).await?;
            raw.push((bytes, a.source()));
        }
        let lock = lock.clone();
        tokio::task::spawn_blocking(move || Bundle::from_artifacts(&lock, raw))
            .await
            .map_err(|e| BundleError::Document {
                artifact: String::new(),
                index: 0,
                message: format!("the parser task failed: {e}"),
            })?
    }

    /// Every CRD in the bundle (both roles).
    pub fn all_crds(&self) -> impl Iterator<Item = &Manifest> {
        self.crds
            .iter()
            .chain(self.flux.iter())
            .filter(|m| m.is_crd())
    }
}

/// A pin that `refresh_lock` changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinChange {
    pub artifact: String,
    pub old_sha256: String,
    pub new_sha256: String,
    /// An OCI artifact's manifest digest, before and after (empty for a URL).
    pub old_digest: String,
    pub new_digest: String,
}

/// Re-downloads every artifact of `lock` from its URL and returns the lock with the current
/// digests, plus what changed. Users edit `version`/`url`, then run this to update `sha256`.
pub async fn refresh_lock(
    lock: &BundleLock,
    opts: &FetchOptions,
) -> Result<(BundleLock, Vec<PinChange>), BundleError> {
    let client = http_client(opts)?;
    let mut new = lock.clone();
    let mut changes = Vec::new();
    for a in new.artifacts.iter_mut() {
        // Resolve the tag again (an OCI artifact): a moved tag is a new pin.
        let (bytes, resolved) = fetch_artifact(&client, a, opts, false).await?;
        parse_artifact(a, &bytes)?;
        let digest = sha256_hex(&bytes);
        let resolved = resolved.unwrap_or_default();
        if digest != a.sha256.to_lowercase() || resolved != a.digest {
            changes.push(PinChange {
                artifact: a.name.clone(),
                old_sha256: a.sha256.clone(),
                new_sha256: digest.clone(),
                old_digest: a.digest.clone(),
                new_digest: resolved.clone(),
            });
            a.sha256 = digest;
            a.digest = resolved;
        }
    }
    Ok((new, changes))
}

pub(crate) fn url_allowed(url: &reqwest::Url, opts: &FetchOptions) -> bool {
    match url.scheme() {
        "https" => true,
        "http" if opts.allow_loopback_http => url.host_str().is_some_and(|h| {
            let h = h.trim_start_matches('[').trim_end_matches(']');
            h == "localhost"
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }),
        _ => false,
    }
}

fn http_client(opts: &FetchOptions) -> Result<reqwest::Client, BundleError> {
    // reqwest is built without a default crypto provider: use ring (no-op when installed).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let policy_opts = opts.clone();
    let redirect = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > policy_opts.max_redirects {
            attempt.error(format!("more than {} redirects", policy_opts.max_redirects))
        } else if !url_allowed(attempt.url(), &policy_opts) {
            let u = attempt.url().to_string();
            attempt.error(format!("redirect to non-HTTPS URL {u} refused"))
        } else {
            attempt.follow()
        }
    });
    reqwest::Client::builder()
        .redirect(redirect)
        .timeout(opts.timeout)
        .user_agent(concat!("bootstrap-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| BundleError::Fetch {
            artifact: String::new(),
            url: String::new(),
            message: format!("cannot build the HTTP client: {e}"),
        })
}

impl LockedArtifact {
    /// Where it comes from, for messages: the URL, or `REGISTRY/REPOSITORY:TAG@DIGEST`.
    pub fn source(&self) -> String {
        if self.oci.is_empty() {
            self.url.clone()
        } else if self.digest.is_empty() {
            format!("{}:{}", self.oci, self.version)
        } else {
            format!("{}:{}@{}", self.oci, self.version, self.digest)
        }
    }
}

/// An artifact's bytes from its source; for an OCI artifact also the manifest digest its tag
/// resolved to. `pinned`: an OCI artifact must be pulled by its pinned digest (boot and
/// `bundle fetch`); otherwise by its tag (`bundle refresh`).
async fn fetch_artifact(
    client: &reqwest::Client,
    a: &LockedArtifact,
    opts: &FetchOptions,
    pinned: bool,
) -> Result<(Vec<u8>, Option<String>), BundleError> {
    if a.oci.is_empty() {
        return Ok((download(client, a, opts).await?, None));
    }
    if pinned && a.digest.is_empty() {
        return Err(BundleError::Unpinned {
            artifact: a.name.clone(),
        });
    }
    let reference = oci::Reference::parse(&a.oci).map_err(|message| BundleError::Lock {
        origin: a.name.clone(),
        message,
    })?;
    let digest = (pinned && !a.digest.is_empty()).then_some(a.digest.as_str());
    match oci::pull(client, &reference, &a.version, digest, &a.file, opts).await {
        Ok(p) => Ok((p.file, Some(p.digest))),
        Err(oci::PullError::Network(message)) => Err(BundleError::Fetch {
            artifact: a.name.clone(),
            url: a.source(),
            message,
        }),
        Err(oci::PullError::Artifact(message)) => Err(BundleError::Artifact {
            artifact: a.name.clone(),
            message,
        }),
    }
}

async fn download(
    client: &reqwest::Client,
    a: &LockedArtifact,
    opts: &FetchOptions,
) -> Result<Vec<u8>, BundleError> {
    let fetch_err = |message: String| BundleError::Fetch {
        artifact: a.name.clone(),
        url: a.url.clone(),
        message,
    };
    let url = reqwest::Url::parse(&a.url).map_err(|e| fetch_err(format!("invalid URL: {e}")))?;
    if !url_allowed(&url, opts) {
        return Err(BundleError::Insecure {
            artifact: a.name.clone(),
            url: a.url.clone(),
        });
    }
    let mut resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| fetch_err(chain(&e)))?;
    if !resp.status().is_success() {
        return Err(fetch_err(format!("HTTP {}", resp.status())));
    }
    let too_large = || BundleError::TooLarge {
        artifact: a.name.clone(),
        url: a.url.clone(),
        limit: opts.max_bytes,
    };
    if resp
        .content_length()
        .is_some_and(|n| n > opts.max_bytes as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| fetch_err(chain(&e)))? {
        if body.len() + chunk.len() > opts.max_bytes {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Downloads every artifact of `lock`, checks each against its pin and parses it, then writes
/// the lock and the artifacts into `dir` (the directory the extension builder embeds). Nothing
/// is written unless every artifact passed; files are written whole (temporary name, rename).
pub async fn download_to_dir(
    lock: &BundleLock,
    opts: &FetchOptions,
    dir: &Path,
) -> Result<(), BundleError> {
    let client = http_client(opts)?;
    let mut files = Vec::with_capacity(lock.artifacts.len());
    for a in &lock.artifacts {
        let (bytes, _) = fetch_artifact(&client, a, opts, true).await?;
        check_digest(a, &bytes, &a.source())?;
        parse_artifact(a, &bytes)?;
        files.push((a.file.clone(), bytes));
    }
    files.push((LOCK_FILE.to_string(), lock.to_yaml()?.into_bytes()));
    let write = |name: &str, bytes: &[u8]| -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, dir.join(name))
    };
    for (name, bytes) in &files {
        write(name, bytes).map_err(|source| BundleError::Read {
            path: dir.join(name),
            source,
        })?;
    }
    Ok(())
}
