//! An in-memory file tree: the extension's filesystem as the builder writes it and as the
//! validator reads it back from a directory, a flat tar or an OCI layer stack.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::Error;

/// One entry of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    /// Device, FIFO or socket; the string names the kind.
    Special(&'static str),
}

/// A node plus its permission bits (the low 12 bits of the mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub node: Node,
    pub mode: u32,
}

/// Paths are relative, `/`-separated, without leading `./` or trailing `/`, e.g.
/// `rootfs/usr/local/etc/containers/bootstrap-agent.yaml`. Sorted by path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    pub entries: BTreeMap<String, Entry>,
}

/// Normalises a tar or filesystem path to the tree's form; `None` for the root itself.
pub fn normalise(path: &str) -> Option<String> {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.is_empty() {
        None
    } else {
        Some(parts.join("/"))
    }
}

impl Tree {
    /// Adds a directory and any missing parents (mode 0755).
    pub fn add_dir(&mut self, path: &str, mode: u32) {
        let Some(path) = normalise(path) else { return };
        self.add_parents(&path);
        self.entries.insert(
            path,
            Entry {
                node: Node::Dir,
                mode,
            },
        );
    }

    /// Adds a regular file and any missing parent directories (mode 0755).
    pub fn add_file(&mut self, path: &str, data: Vec<u8>, mode: u32) {
        let Some(path) = normalise(path) else { return };
        self.add_parents(&path);
        self.entries.insert(
            path,
            Entry {
                node: Node::File(data),
                mode,
            },
        );
    }

    fn add_parents(&mut self, path: &str) {
        let mut prefix = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            self.entries.entry(prefix.clone()).or_insert(Entry {
                node: Node::Dir,
                mode: 0o755,
            });
        }
    }

    /// The direct children names of the root.
    pub fn top_level(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .entries
            .keys()
            .map(|k| k.split('/').next().unwrap_or(k))
            .collect();
        names.dedup();
        names
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(path)
    }

    /// Reads a directory from disk without following symlinks.
    pub fn from_dir(root: &Path) -> Result<Tree, Error> {
        let mut tree = Tree::default();
        walk(root, root, &mut tree)?;
        Ok(tree)
    }

    /// Reads a flat (uncompressed) filesystem tar, such as the extension tar for imager's
    /// `tarballPath`.
    pub fn from_tar<R: Read>(reader: R, what: &str) -> Result<Tree, Error> {
        let mut tree = Tree::default();
        tree.apply_layer(reader, what)?;
        Ok(tree)
    }

    /// Applies one OCI layer (an uncompressed tar) on top of the tree, honouring whiteouts.
    pub fn apply_layer<R: Read>(&mut self, reader: R, what: &str) -> Result<(), Error> {
        let tar_err = |source: std::io::Error| Error::Tar {
            what: what.to_string(),
            source,
        };
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries().map_err(tar_err)? {
            let mut entry = entry.map_err(tar_err)?;
            let raw = entry.path().map_err(tar_err)?.to_string_lossy().to_string();
            let Some(path) = normalise(&raw) else {
                continue;
            };
            let (parent, name) = match path.rsplit_once('/') {
                Some((p, n)) => (Some(p.to_string()), n.to_string()),
                None => (None, path.clone()),
            };
            if name == ".wh..wh..opq" {
                let dir = parent.unwrap_or_default();
                let prefix = format!("{dir}/");
                self.entries
                    .retain(|k, _| !(dir.is_empty() || k.starts_with(&prefix)) || *k == dir);
                continue;
            }
            if let Some(hidden) = name.strip_prefix(".wh.") {
                let target = match &parent {
                    Some(p) => format!("{p}/{hidden}"),
                    None => hidden.to_string(),
                };
                let prefix = format!("{target}/");
                self.entries
                    .retain(|k, _| *k != target && !k.starts_with(&prefix));
                continue;
            }
            let mode = entry.header().mode().map_err(tar_err)? & 0o7777;
            let node = match entry.header().entry_type() {
                tar::EntryType::Directory => Node::Dir,
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let mut data = Vec::new();
                    entry.read_to_end(&mut data).map_err(tar_err)?;
                    Node::File(data)
                }
                tar::EntryType::Symlink => Node::Symlink(
                    entry
                        .link_name()
                        .map_err(tar_err)?
                        .map(|l| l.to_string_lossy().to_string())
                        .unwrap_or_default(),
                ),
                tar::EntryType::Link => {
                    let target = entry
                        .link_name()
                        .map_err(tar_err)?
                        .and_then(|l| normalise(&l.to_string_lossy()));
                    match target.and_then(|t| self.entries.get(&t).cloned()) {
                        Some(e) => e.node,
                        None => Node::Special("hard link to a missing file"),
                    }
                }
                tar::EntryType::Char => Node::Special("character device"),
                tar::EntryType::Block => Node::Special("block device"),
                tar::EntryType::Fifo => Node::Special("FIFO"),
                _ => Node::Special("unknown tar entry type"),
            };
            self.add_parents(&path);
            self.entries.insert(path, Entry { node, mode });
        }
        Ok(())
    }

    /// Writes the tree as a deterministic tar: sorted paths, mtime 0, uid/gid 0, no user or
    /// group names, directories with a trailing `/`.
    pub fn to_tar(&self) -> Result<Vec<u8>, Error> {
        let io = |source: std::io::Error| Error::Tar {
            what: "the image layer being built".to_string(),
            source,
        };
        let mut builder = tar::Builder::new(Vec::new());
        builder.mode(tar::HeaderMode::Deterministic);
        for (path, entry) in &self.entries {
            let mut header = tar::Header::new_gnu();
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mode(entry.mode);
            match &entry.node {
                Node::Dir => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    builder
                        .append_data(&mut header, format!("{path}/"), std::io::empty())
                        .map_err(io)?;
                }
                Node::File(data) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(data.len() as u64);
                    builder
                        .append_data(&mut header, path, data.as_slice())
                        .map_err(io)?;
                }
                Node::Symlink(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    builder.append_link(&mut header, path, target).map_err(io)?;
                }
                Node::Special(kind) => {
                    return Err(Error::Input(format!(
                        "{path}: cannot write a {kind} into the image"
                    )));
                }
            }
        }
        builder.into_inner().map_err(io)
    }
}

fn walk(root: &Path, dir: &Path, tree: &mut Tree) -> Result<(), Error> {
    let read = |p: &Path, source: std::io::Error| Error::Io {
        path: p.to_path_buf(),
        source,
    };
    let mut children: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| read(dir, e))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(|e| read(dir, e))?;
    children.sort();
    for path in children {
        let meta = std::fs::symlink_metadata(&path).map_err(|e| read(&path, e))?;
        let rel = path
            .strip_prefix(root)
            .map(|p| p.to_string_lossy().to_string())
            .unwrap_or_default();
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
        let ft = meta.file_type();
        let node = if ft.is_dir() {
            Node::Dir
        } else if ft.is_file() {
            Node::File(std::fs::read(&path).map_err(|e| read(&path, e))?)
        } else if ft.is_symlink() {
            Node::Symlink(
                std::fs::read_link(&path)
                    .map_err(|e| read(&path, e))?
                    .to_string_lossy()
                    .to_string(),
            )
        } else {
            use std::os::unix::fs::FileTypeExt;
            Node::Special(if ft.is_char_device() {
                "character device"
            } else if ft.is_block_device() {
                "block device"
            } else if ft.is_fifo() {
                "FIFO"
            } else if ft.is_socket() {
                "socket"
            } else {
                "special file"
            })
        };
        let is_dir = node == Node::Dir;
        tree.entries.insert(rel, Entry { node, mode });
        if is_dir {
            walk(root, &path, tree)?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tar_round_trip_keeps_modes_and_order() {
        let mut t = Tree::default();
        t.add_file("rootfs/usr/local/bin/x", b"abc".to_vec(), 0o755);
        t.add_file("manifest.yaml", b"m".to_vec(), 0o644);
        let bytes = t.to_tar().unwrap();
        let back = Tree::from_tar(bytes.as_slice(), "test").unwrap();
        assert_eq!(back, t);
        assert_eq!(back.top_level(), vec!["manifest.yaml", "rootfs"]);
    }

    #[test]
    fn whiteouts_remove_entries() {
        let mut base = Tree::default();
        base.add_file("a/b", b"1".to_vec(), 0o644);
        base.add_file("a/c", b"2".to_vec(), 0o644);
        let mut upper = Tree::default();
        upper.add_file("a/.wh.b", Vec::new(), 0o644);
        let mut t = base.clone();
        t.apply_layer(upper.to_tar().unwrap().as_slice(), "upper")
            .unwrap();
        assert!(t.get("a/b").is_none());
        assert!(t.get("a/c").is_some());
    }
}
