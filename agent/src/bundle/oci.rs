//! One file out of an OCI artifact, as Flux publishes its manifests: `flux push artifact` writes
//! an OCI image manifest whose config has media type `application/vnd.cncf.flux.config.v1+json`
//! and whose one layer, `application/vnd.cncf.flux.content.v1.tar+gzip`, is a gzip tarball of the
//! pushed directory (fluxcd/pkg `oci/constants.go`, `oci/push.go`, `oci/build.go`); for
//! `ghcr.io/fluxcd/flux-manifests` that directory holds `gotk-components.yaml` (fluxcd/flux2
//! `.github/workflows/release.yaml`, job `release-flux-manifests`). source-controller takes the
//! first layer of that media type (fluxcd/source-controller `ocirepository_controller.go`).
//!
//! The registry side is the OCI distribution API: `GET /v2/<name>/manifests/<reference>` and
//! `GET /v2/<name>/blobs/<digest>`; a registry that wants a token answers 401 with
//! `WWW-Authenticate: Bearer realm=…,service=…,scope=…`, and an anonymous `GET realm?service=…&
//! scope=…` gives one (`{"token": …}` or `{"access_token": …}`), as ghcr.io does for public
//! images (distribution's token authentication specification). Every blob is checked against its
//! digest, and the manifest against the pinned digest, before anything is read from it.

use std::io::Read;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::FetchOptions;
use crate::error::chain;

/// The layer media type Flux pushes (fluxcd/pkg `oci/constants.go`, `ContentTypeOCILayer`
/// default for `flux push artifact`).
pub const FLUX_LAYER: &str = "application/vnd.cncf.flux.content.v1.tar+gzip";
const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
/// Manifests are small; a larger answer is not one.
const MANIFEST_LIMIT: usize = 1024 * 1024;

/// Why a pull failed: the network (may pass) or the artifact (will not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullError {
    Network(String),
    Artifact(String),
}

impl std::fmt::Display for PullError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PullError::Network(m) | PullError::Artifact(m) => f.write_str(m),
        }
    }
}

/// `REGISTRY/REPOSITORY`, e.g. `ghcr.io/fluxcd/flux-manifests`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, String> {
        let s = s.strip_prefix("oci://").unwrap_or(s);
        let (registry, repository) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not REGISTRY/REPOSITORY"))?;
        let valid_repo = !repository.is_empty()
            && repository.split('/').all(|p| {
                !p.is_empty()
                    && p.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            });
        if registry.is_empty() || !valid_repo || repository.contains(':') || s.contains('@') {
            return Err(format!(
                "{s:?} is not REGISTRY/REPOSITORY (lower-case, no tag or digest: those are `version` and `digest`)"
            ));
        }
        Ok(Reference {
            registry: registry.into(),
            repository: repository.into(),
        })
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)
    }
}

/// The hex of a `sha256:<64 hex>` digest.
pub fn parse_digest(d: &str) -> Option<&str> {
    let hex = d.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    #[serde(default)]
    size: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Token {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

/// What a pull found.
#[derive(Debug)]
pub struct Pulled {
    /// The manifest's digest (what the tag resolved to).
    pub digest: String,
    /// The requested file's bytes.
    pub file: Vec<u8>,
}

/// A `Bearer realm="…",service="…",scope="…"` challenge, as (realm, query parameters).
fn parse_challenge(header: &str) -> Option<(String, Vec<(String, String)>)> {
    let rest = header.trim().strip_prefix("Bearer ")?;
    let mut realm = None;
    let mut params = Vec::new();
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        let v = v.trim().trim_matches('"').to_string();
        match k.trim() {
            "realm" => realm = Some(v),
            key @ ("service" | "scope") => params.push((key.to_string(), v)),
            _ => {}
        }
    }
    Some((realm?, params))
}

struct Session<'a> {
    client: &'a reqwest::Client,
    base: String,
    opts: &'a FetchOptions,
    token: Option<zeroize::Zeroizing<String>>,
}

impl Session<'_> {
    async fn get(&mut self, url: &str, accept: &str) -> Result<reqwest::Response, PullError> {
        let net = |e: reqwest::Error| PullError::Network(chain(&e));
        let send = |token: Option<&str>| {
            let mut req = self.client.get(url).header(reqwest::header::ACCEPT, accept);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            req.send()
        };
        let resp = send(self.token.as_deref().map(String::as_str))
            .await
            .map_err(net)?;
        if resp.status() != reqwest::StatusCode::UNAUTHORIZED || self.token.is_some() {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_challenge)
            .ok_or_else(|| {
                PullError::Artifact(format!(
                    "{url}: the registry answered 401 without a Bearer challenge; only anonymous pulls are supported"
                ))
            })?;
        let (realm, params) = challenge;
        let realm_url = reqwest::Url::parse_with_params(&realm, &params)
            .map_err(|e| PullError::Artifact(format!("token realm {realm:?}: {e}")))?;
        if !super::url_allowed(&realm_url, self.opts) {
            return Err(PullError::Artifact(format!(
                "token realm {realm} is not HTTPS; refused"
            )));
        }
        let answer = self.client.get(realm_url).send().await.map_err(net)?;
        if !answer.status().is_success() {
            return Err(PullError::Network(format!(
                "the registry's token service {realm} answered {}",
                answer.status()
            )));
        }
        let body = answer
            .bytes()
            .await
            .map_err(|e| PullError::Network(format!("token from {realm}: {}", chain(&e))))?;
        let token: Token = serde_json::from_slice(&body)
            .map_err(|e| PullError::Network(format!("token from {realm}: {e}")))?;
        let token = token.token.or(token.access_token).ok_or_else(|| {
            PullError::Network(format!("the token service {realm} returned no token"))
        })?;
        self.token = Some(zeroize::Zeroizing::new(token));
        send(self.token.as_deref().map(String::as_str))
            .await
            .map_err(net)
    }

    async fn body(&mut self, url: &str, accept: &str, limit: usize) -> Result<Vec<u8>, PullError> {
        let mut resp = self.get(url, accept).await?;
        if !resp.status().is_success() {
            let status = resp.status();
            let what = format!("{url}: HTTP {status}");
            return Err(if status.is_server_error() || status.as_u16() == 429 {
                PullError::Network(what)
            } else {
                PullError::Artifact(what)
            });
        }
        if resp.content_length().is_some_and(|n| n > limit as u64) {
            return Err(PullError::Artifact(format!(
                "{url}: larger than the {limit}-byte cap"
            )));
        }
        let mut out = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| PullError::Network(chain(&e)))?
        {
            if out.len() + chunk.len() > limit {
                return Err(PullError::Artifact(format!(
                    "{url}: larger than the {limit}-byte cap"
                )));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }
}

/// The base URL of a reference's repository: HTTPS, or plain HTTP for a loopback registry when
/// the options allow it (tests).
fn base_url(r: &Reference, opts: &FetchOptions) -> Result<String, PullError> {
    let https = format!("https://{}/v2/{}", r.registry, r.repository);
    let url = reqwest::Url::parse(&https).map_err(|e| PullError::Artifact(format!("{r}: {e}")))?;
    let loopback = url.host_str().is_some_and(|h| {
        let h = h.trim_start_matches('[').trim_end_matches(']');
        h == "localhost"
            || h.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    Ok(if opts.allow_loopback_http && loopback {
        format!("http://{}/v2/{}", r.registry, r.repository)
    } else {
        https
    })
}

/// Pulls `file` out of the artifact `reference` at `tag` (or, when `pinned` is a digest, at
/// that digest, which the manifest must match).
pub async fn pull(
    client: &reqwest::Client,
    reference: &Reference,
    tag: &str,
    pinned: Option<&str>,
    file: &str,
    opts: &FetchOptions,
) -> Result<Pulled, PullError> {
    let mut session = Session {
        client,
        base: base_url(reference, opts)?,
        opts,
        token: None,
    };
    let at = pinned.unwrap_or(tag);
    let url = format!("{}/manifests/{at}", session.base);
    let raw = session.body(&url, MANIFEST_TYPES, MANIFEST_LIMIT).await?;
    let digest = sha256_digest(&raw);
    if let Some(p) = pinned
        && !p.eq_ignore_ascii_case(&digest)
    {
        return Err(PullError::Artifact(format!(
            "{reference}@{p}: the registry served a manifest with digest {digest}; refused (tampered with, or not this artifact)"
        )));
    }
    let manifest: Manifest = serde_json::from_slice(&raw)
        .map_err(|e| PullError::Artifact(format!("{reference}:{at}: not an OCI manifest: {e}")))?;
    let layer = manifest
        .layers
        .iter()
        .find(|l| l.media_type == FLUX_LAYER)
        .ok_or_else(|| {
            PullError::Artifact(format!(
                "{reference}:{at}: no layer of media type {FLUX_LAYER} (is it an artifact `flux push artifact` made?)"
            ))
        })?;
    if parse_digest(&layer.digest).is_none() {
        return Err(PullError::Artifact(format!(
            "{reference}:{at}: layer digest {:?} is not sha256",
            layer.digest
        )));
    }
    if layer.size > opts.max_bytes as u64 {
        return Err(PullError::Artifact(format!(
            "{reference}:{at}: the layer is {} bytes, over the {}-byte cap",
            layer.size, opts.max_bytes
        )));
    }
    let base = session.base.clone();
    let blob = session
        .body(
            &format!("{base}/blobs/{}", layer.digest),
            "application/octet-stream",
            opts.max_bytes,
        )
        .await?;
    let actual = sha256_digest(&blob);
    if !actual.eq_ignore_ascii_case(&layer.digest) {
        return Err(PullError::Artifact(format!(
            "{reference}:{at}: layer {} arrived with digest {actual}; refused",
            layer.digest
        )));
    }
    let file = extract(&blob, file, opts.max_bytes)
        .map_err(|m| PullError::Artifact(format!("{reference}:{at}: {m}")))?;
    Ok(Pulled { digest, file })
}

/// The regular file `name` (at the root of the tarball, `./` allowed) of a gzip tarball.
fn extract(gz: &[u8], name: &str, limit: usize) -> Result<Vec<u8>, String> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(gz));
    let entries = archive
        .entries()
        .map_err(|e| format!("the layer is not a gzip tarball: {e}"))?;
    let mut seen = Vec::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("the layer's tarball is damaged: {e}"))?;
        let path = entry
            .path()
            .map_err(|e| format!("the layer's tarball is damaged: {e}"))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        if !entry.header().entry_type().is_file() {
            continue;
        }
        if path == name {
            let mut out = Vec::new();
            (&mut entry)
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| format!("{name}: {e}"))?;
            if out.len() > limit {
                return Err(format!("{name} is larger than the {limit}-byte cap"));
            }
            return Ok(out);
        }
        seen.push(path);
    }
    Err(format!(
        "the layer holds no file {name} (it holds: {})",
        if seen.is_empty() {
            "nothing".to_string()
        } else {
            seen.join(", ")
        }
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn references_and_digests_are_parsed_strictly() {
        let r = Reference::parse("ghcr.io/fluxcd/flux-manifests").unwrap();
        assert_eq!(r.registry, "ghcr.io");
        assert_eq!(r.repository, "fluxcd/flux-manifests");
        assert_eq!(
            Reference::parse("oci://ghcr.io/fluxcd/flux-manifests").unwrap(),
            r
        );
        assert!(Reference::parse("ghcr.io/fluxcd/flux-manifests:v2.9.4").is_err());
        assert!(Reference::parse("ghcr.io/fluxcd/flux-manifests@sha256:00").is_err());
        assert!(Reference::parse("flux-manifests").is_err());
        assert!(Reference::parse("ghcr.io/FluxCD/x").is_err());
        assert!(parse_digest(&format!("sha256:{}", "a".repeat(64))).is_some());
        assert!(parse_digest("sha256:abc").is_none());
        assert!(parse_digest(&"a".repeat(64)).is_none());
    }

    #[test]
    fn bearer_challenges_are_read_as_registries_write_them() {
        let (realm, params) = parse_challenge(
            r#"Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:fluxcd/flux-manifests:pull""#,
        )
        .unwrap();
        assert_eq!(realm, "https://ghcr.io/token");
        assert_eq!(
            params,
            vec![
                ("service".to_string(), "ghcr.io".to_string()),
                (
                    "scope".to_string(),
                    "repository:fluxcd/flux-manifests:pull".to_string()
                )
            ]
        );
        assert!(parse_challenge(r#"Basic realm="x""#).is_none());
    }

    #[test]
    fn the_file_is_found_at_the_tarball_root() {
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        tar.append_data(&mut h, "./", std::io::empty()).unwrap();
        let body = b"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: flux-system\n";
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        tar.append_data(&mut h, "./gotk-components.yaml", &body[..])
            .unwrap();
        let raw = tar.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &raw).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(extract(&gz, "gotk-components.yaml", 1024).unwrap(), body);
        let err = extract(&gz, "other.yaml", 1024).unwrap_err();
        assert!(err.contains("gotk-components.yaml"), "{err}");
        assert!(extract(&gz, "gotk-components.yaml", 10).is_err());
        assert!(extract(b"not gzip", "x", 10).is_err());
    }
}
