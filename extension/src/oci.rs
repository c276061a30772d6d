//! OCI image layout: writing a single-layer image deterministically, and reading an image back
//! (from a layout directory or an OCI archive tar) with every blob checked against its digest.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::Error;
use crate::tree::Tree;

pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct ImageConfig {
    architecture: Option<String>,
    os: Option<String>,
    rootfs: Option<RootFs>,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

/// A built image: its blobs (by digest) and the index that names it.
#[derive(Debug, Clone)]
pub struct Image {
    pub blobs: BTreeMap<String, Vec<u8>>,
    pub index: Vec<u8>,
    /// Digest of the image manifest: the image's identity.
    pub manifest_digest: String,
    /// The uncompressed layer: the extension's filesystem, for imager's `tarballPath`.
    pub layer_tar: Vec<u8>,
}

/// Builds a single-layer linux/amd64 image from `tree`. Same tree, same bytes.
pub fn build_image(tree: &Tree, tag: &str, version: &str) -> Result<Image, Error> {
    let layer_tar = tree.to_tar()?;
    let diff_id = sha256_digest(&layer_tar);
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::best());
    let gz_err = |source| Error::Tar {
        what: "the gzip-compressed layer".to_string(),
        source,
    };
    gz.write_all(&layer_tar).map_err(gz_err)?;
    let layer = gz.finish().map_err(gz_err)?;
    let layer_digest = sha256_digest(&layer);

    // serde_json's map is ordered by key, so this serialises the same way every time.
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Labels": {
                "org.opencontainers.image.title": "bootstrap-agent",
                "org.opencontainers.image.version": version,
            }
        },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{ "created_by": "bootstrap-agent-extension build", "comment": "Talos system extension" }],
    });
    let config = serde_json::to_vec(&config).map_err(Error::Json)?;
    let config_digest = sha256_digest(&config);

    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": { "mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config.len() },
        "layers": [{ "mediaType": MEDIA_LAYER_GZIP, "digest": layer_digest, "size": layer.len() }],
        "annotations": { "org.opencontainers.image.version": version },
    });
    let manifest = serde_json::to_vec(&manifest).map_err(Error::Json)?;
    let manifest_digest = sha256_digest(&manifest);

    // imager's `ociPath` picks the manifest whose platform matches the target architecture:
    // the platform must be on the index entry.
    let index = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [{
            "mediaType": MEDIA_MANIFEST,
            "digest": manifest_digest,
            "size": manifest.len(),
            "platform": { "architecture": "amd64", "os": "linux" },
            "annotations": { REF_NAME: tag },
        }],
    });
    let index = serde_json::to_vec(&index).map_err(Error::Json)?;

    let mut blobs = BTreeMap::new();
    blobs.insert(layer_digest, layer);
    blobs.insert(config_digest, config);
    blobs.insert(manifest_digest.clone(), manifest);
    Ok(Image {
        blobs,
        index,
        manifest_digest,
        layer_tar,
    })
}

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

impl Image {
    /// The files of the OCI image layout, relative to its root.
    fn layout_files(&self) -> Vec<(String, &[u8])> {
        let mut files: Vec<(String, &[u8])> = vec![
            ("oci-layout".to_string(), OCI_LAYOUT),
            ("index.json".to_string(), &self.index),
        ];
        for (digest, bytes) in &self.blobs {
            let hexpart = digest.trim_start_matches("sha256:");
            files.push((format!("blobs/sha256/{hexpart}"), bytes));
        }
        files.sort();
        files
    }

    /// Writes the OCI image layout to `dir` (created if missing; files it holds are replaced).
    pub fn write_layout(&self, dir: &Path) -> Result<(), Error> {
        for (rel, bytes) in self.layout_files() {
            let path = dir.join(&rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|source| Error::Io {
                    path: parent.to_path_buf(),
                    source,
                })?;
            }
            write_atomic(&path, bytes)?;
        }
        Ok(())
    }

    /// The OCI archive: a tar of the layout (for `skopeo copy oci-archive:`), deterministic.
    pub fn archive(&self) -> Result<Vec<u8>, Error> {
        let mut tree = Tree::default();
        for (rel, bytes) in self.layout_files() {
            tree.add_file(&rel, bytes.to_vec(), 0o644);
        }
        tree.to_tar()
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// A problem found while reading an image back; the validator turns these into findings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobProblem {
    pub path: String,
    pub message: String,
}

/// The filesystem of every linux/amd64 image in a layout, or the problems that prevented
/// reading it (missing or tampered blobs, bad JSON).
pub fn read_images(
    files: &dyn Fn(&str) -> Option<Vec<u8>>,
    source: &str,
) -> Vec<(String, Result<Tree, Vec<BlobProblem>>)> {
    let problem = |path: &str, message: String| BlobProblem {
        path: format!("{source}/{path}"),
        message,
    };
    let Some(index) = files("index.json") else {
        return vec![(
            source.to_string(),
            Err(vec![problem(
                "index.json",
                "missing: not an OCI image layout".into(),
            )]),
        )];
    };
    let index: Index = match serde_json::from_slice(&index) {
        Ok(i) => i,
        Err(e) => {
            return vec![(
                source.to_string(),
                Err(vec![problem(
                    "index.json",
                    format!("not a valid OCI index: {e}"),
                )]),
            )];
        }
    };
    if index.manifests.is_empty() {
        return vec![(
            source.to_string(),
            Err(vec![problem("index.json", "lists no manifests".into())]),
        )];
    }
    let mut out = Vec::new();
    for desc in index.manifests {
        let name = desc
            .annotations
            .get(REF_NAME)
            .map(|t| format!("{source}:{t}"))
            .unwrap_or_else(|| format!("{source}@{}", desc.digest));
        if let Some(p) = &desc.platform
            && (p.os != "linux" || p.architecture != "amd64")
        {
            continue;
        }
        out.push((name, read_image(files, &desc, &problem)));
    }
    out
}

fn blob(
    files: &dyn Fn(&str) -> Option<Vec<u8>>,
    desc: &Descriptor,
    problem: &dyn Fn(&str, String) -> BlobProblem,
) -> Result<Vec<u8>, BlobProblem> {
    let Some(hexpart) = desc.digest.strip_prefix("sha256:") else {
        return Err(problem(
            "index.json",
            format!("unsupported digest algorithm in {}", desc.digest),
        ));
    };
    let rel = format!("blobs/sha256/{hexpart}");
    let bytes = files(&rel).ok_or_else(|| problem(&rel, "blob is missing".into()))?;
    let actual = sha256_digest(&bytes);
    if actual != desc.digest {
        return Err(problem(
            &rel,
            format!(
                "blob digest mismatch: expected {}, content hashes to {actual} (tampered or corrupt)",
                desc.digest
            ),
        ));
    }
    if bytes.len() as u64 != desc.size {
        return Err(problem(
            &rel,
            format!(
                "blob size mismatch: descriptor says {}, blob has {}",
                desc.size,
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}

fn read_image(
    files: &dyn Fn(&str) -> Option<Vec<u8>>,
    desc: &Descriptor,
    problem: &dyn Fn(&str, String) -> BlobProblem,
) -> Result<Tree, Vec<BlobProblem>> {
    if desc.media_type != MEDIA_MANIFEST
        && desc.media_type != "application/vnd.docker.distribution.manifest.v2+json"
    {
        return Err(vec![problem(
            "index.json",
            format!(
                "manifest {} has media type {}, expected an image manifest",
                desc.digest, desc.media_type
            ),
        )]);
    }
    let manifest = blob(files, desc, problem).map_err(|p| vec![p])?;
    let manifest: Manifest = serde_json::from_slice(&manifest).map_err(|e| {
        vec![problem(
            &format!("blobs/{}", desc.digest),
            format!("not a valid image manifest: {e}"),
        )]
    })?;
    let config = blob(files, &manifest.config, problem).map_err(|p| vec![p])?;
    let config: ImageConfig = serde_json::from_slice(&config).map_err(|e| {
        vec![problem(
            &format!("blobs/{}", manifest.config.digest),
            format!("not a valid image config: {e}"),
        )]
    })?;
    let mut problems = Vec::new();
    if config.os.as_deref() != Some("linux") || config.architecture.as_deref() != Some("amd64") {
        problems.push(problem(
            &format!("blobs/{}", manifest.config.digest),
            format!(
                "image config is for {}/{}, Talos on this machine needs linux/amd64",
                config.os.unwrap_or_default(),
                config.architecture.unwrap_or_default()
            ),
        ));
    }
    let diff_ids = config.rootfs.map(|r| r.diff_ids).unwrap_or_default();
    if diff_ids.len() != manifest.layers.len() {
        problems.push(problem(
            &format!("blobs/{}", manifest.config.digest),
            format!(
                "config lists {} diff_ids for {} layers",
                diff_ids.len(),
                manifest.layers.len()
            ),
        ));
    }
    let mut tree = Tree::default();
    for (i, layer) in manifest.layers.iter().enumerate() {
        let bytes = match blob(files, layer, problem) {
            Ok(b) => b,
            Err(p) => {
                problems.push(p);
                continue;
            }
        };
        let tar = if layer.media_type == MEDIA_LAYER_TAR {
            bytes
        } else {
            let mut out = Vec::new();
            if let Err(e) = flate2::read::GzDecoder::new(bytes.as_slice()).read_to_end(&mut out) {
                problems.push(problem(
                    &format!("blobs/{}", layer.digest),
                    format!("layer is not valid gzip: {e}"),
                ));
                continue;
            }
            out
        };
        if let Some(expected) = diff_ids.get(i)
            && *expected != sha256_digest(&tar)
        {
            problems.push(problem(
                &format!("blobs/{}", layer.digest),
                format!("uncompressed layer does not match diff_id {expected}"),
            ));
        }
        if let Err(e) = tree.apply_layer(tar.as_slice(), &layer.digest) {
            problems.push(problem(&format!("blobs/{}", layer.digest), e.to_string()));
        }
    }
    if problems.is_empty() {
        Ok(tree)
    } else {
        Err(problems)
    }
}

/// Reads all regular files of a tar into memory (for an OCI archive).
pub fn tar_files(bytes: &[u8], what: &str) -> Result<BTreeMap<String, Vec<u8>>, Error> {
    let tree = Tree::from_tar(bytes, what)?;
    Ok(tree
        .entries
        .into_iter()
        .filter_map(|(k, e)| match e.node {
            crate::tree::Node::File(d) => Some((k, d)),
            _ => None,
        })
        .collect())
}
