//! Assembles the extension's filesystem and writes it out as an OCI image layout, an OCI
//! archive and a flat extension tar.

use std::path::{Path, PathBuf};

use crate::tree::{Node, Tree};
use crate::{Error, oci};

/// The manifest template (`extension/manifest.yaml`); `{{VERSION}}` becomes the crate version.
pub const MANIFEST_TEMPLATE: &str = include_str!("../manifest.yaml");
/// The service spec (`extension/bootstrap-agent.yaml`), installed as is.
pub const SERVICE_SPEC: &str = include_str!("../bootstrap-agent.yaml");
/// The workspace version, stamped into the manifest and the image.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The service name; Talos runs it as `ext-bootstrap-agent`.
pub const SERVICE: &str = "bootstrap-agent";
/// Where the service's root filesystem lives inside the image.
pub const CONTAINER_ROOT: &str = "rootfs/usr/local/lib/containers/bootstrap-agent";
/// Where the bundle goes: `/bundle` inside the service's root.
pub const BUNDLE_DIR: &str = "rootfs/usr/local/lib/containers/bootstrap-agent/bundle";

/// What to build from.
#[derive(Debug, Clone)]
pub struct BuildInputs {
    /// The static agent binary.
    pub binary: PathBuf,
    /// A bundle directory (holding `bundle.lock.yaml`) to embed, if any.
    pub bundle: Option<PathBuf>,
    /// Version for the manifest and the tag.
    pub version: String,
}

/// Paths of what [`write_outputs`] produced.
#[derive(Debug, Clone)]
pub struct BuildOutputs {
    /// OCI image layout directory (`skopeo copy oci:DIR:TAG`, imager `ociPath`).
    pub layout: PathBuf,
    /// OCI archive (`skopeo copy oci-archive:FILE`).
    pub archive: PathBuf,
    /// Flat extension tar: `manifest.yaml` + `rootfs/` (imager `tarballPath`).
    pub flat_tar: PathBuf,
    pub tag: String,
    /// `sha256:...` of the image manifest.
    pub digest: String,
}

/// The manifest for `version`.
pub fn manifest(version: &str) -> String {
    MANIFEST_TEMPLATE.replace("{{VERSION}}", version)
}

/// Builds the extension tree in memory.
pub fn extension_tree(inputs: &BuildInputs) -> Result<Tree, Error> {
    let binary = std::fs::read(&inputs.binary).map_err(|source| Error::Io {
        path: inputs.binary.clone(),
        source,
    })?;
    let mut tree = Tree::default();
    tree.add_file(
        "manifest.yaml",
        manifest(&inputs.version).into_bytes(),
        0o644,
    );
    tree.add_dir("rootfs", 0o755);
    tree.add_file(
        &format!("rootfs/usr/local/etc/containers/{SERVICE}.yaml"),
        SERVICE_SPEC.as_bytes().to_vec(),
        0o644,
    );
    tree.add_dir(CONTAINER_ROOT, 0o755);
    tree.add_file(&format!("{CONTAINER_ROOT}/{SERVICE}"), binary, 0o755);
    if let Some(bundle) = &inputs.bundle {
        add_bundle(&mut tree, bundle)?;
    }
    Ok(tree)
}

/// Copies a bundle directory into the tree: regular files 0644 (0755 when executable),
/// directories 0755. Anything else is refused: a bundle is plain data.
fn add_bundle(tree: &mut Tree, bundle: &Path) -> Result<(), Error> {
    if !bundle.join("bundle.lock.yaml").is_file() {
        return Err(Error::Input(format!(
            "{}: not a bundle directory (no bundle.lock.yaml); build the bundle first or leave out --bundle",
            bundle.display()
        )));
    }
    let source = Tree::from_dir(bundle)?;
    tree.add_dir(BUNDLE_DIR, 0o755);
    for (rel, entry) in source.entries {
        let dest = format!("{BUNDLE_DIR}/{rel}");
        match entry.node {
            Node::Dir => tree.add_dir(&dest, 0o755),
            Node::File(data) => {
                let mode = if entry.mode & 0o111 != 0 {
                    0o755
                } else {
                    0o644
                };
                tree.add_file(&dest, data, mode);
            }
            Node::Symlink(_) | Node::Special(_) => {
                return Err(Error::Input(format!(
                    "{}: bundles may hold only regular files and directories; replace it with the file it points to",
                    bundle.join(&rel).display()
                )));
            }
        }
    }
    Ok(())
}

/// Builds the image and writes the three outputs into `out` (created if needed):
/// `oci/` (layout), `bootstrap-agent-extension.oci.tar`, `bootstrap-agent-extension.tar`.
pub fn write_outputs(inputs: &BuildInputs, out: &Path) -> Result<BuildOutputs, Error> {
    let tree = extension_tree(inputs)?;
    let tag = inputs.version.clone();
    let image = oci::build_image(&tree, &tag, &inputs.version)?;
    std::fs::create_dir_all(out).map_err(|source| Error::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let layout = out.join("oci");
    if layout.exists() {
        // Only replace a directory that is an OCI layout: never delete what we did not write.
        if !layout.join("oci-layout").is_file() {
            return Err(Error::Input(format!(
                "{} exists and is not an OCI layout; move it away or pick another --out",
                layout.display()
            )));
        }
        std::fs::remove_dir_all(&layout).map_err(|source| Error::Io {
            path: layout.clone(),
            source,
        })?;
    }
    image.write_layout(&layout)?;
    let archive = out.join("bootstrap-agent-extension.oci.tar");
    oci::write_atomic(&archive, &image.archive()?)?;
    let flat_tar = out.join("bootstrap-agent-extension.tar");
    oci::write_atomic(&flat_tar, &image.layer_tar)?;
    Ok(BuildOutputs {
        layout,
        archive,
        flat_tar,
        tag,
        digest: image.manifest_digest,
    })
}
