//! The admin kubeconfig returned by machined's `Kubeconfig` method: a gzip-compressed tar
//! holding one file named `kubeconfig`. Extracted in memory only, never written to disk.

use std::fmt;
use std::io::{ErrorKind, Read};

use zeroize::Zeroizing;

/// Largest compressed archive we accept (a kubeconfig is a few KiB).
pub const MAX_ARCHIVE_BYTES: usize = 1 << 20;
/// Largest decompressed tar we accept: guards against decompression bombs.
pub const MAX_TAR_BYTES: usize = 4 << 20;
/// Largest `kubeconfig` file we accept.
pub const MAX_KUBECONFIG_BYTES: usize = 1 << 20;
/// The file name Talos gives the kubeconfig inside the archive.
pub const KUBECONFIG_ENTRY: &str = "kubeconfig";

/// An admin kubeconfig held in memory. Zeroised on drop; `Debug` does not show it.
#[derive(Clone)]
pub struct Kubeconfig(Zeroizing<String>);

impl Kubeconfig {
    /// Wraps kubeconfig text.
    pub fn new(text: Zeroizing<String>) -> Self {
        Kubeconfig(text)
    }

    /// The kubeconfig YAML.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Extracts the `kubeconfig` file from a gzip-compressed tar (the `Kubeconfig` reply).
    pub fn from_archive(archive: &[u8]) -> Result<Self, ArchiveError> {
        if archive.is_empty() {
            return Err(ArchiveError::Empty);
        }
        if archive.len() > MAX_ARCHIVE_BYTES {
            return Err(ArchiveError::TooLarge {
                what: "compressed archive",
                limit: MAX_ARCHIVE_BYTES,
            });
        }
        if archive.len() < 2 || archive[0] != 0x1f || archive[1] != 0x8b {
            return Err(ArchiveError::NotGzip);
        }
        let tar = gunzip(archive)?;
        let text = find_kubeconfig(&tar)?;
        Ok(Kubeconfig(text))
    }
}

impl fmt::Debug for Kubeconfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kubeconfig(<redacted, {} bytes>)", self.0.len())
    }
}

/// Why a `Kubeconfig` archive is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The stream carried no bytes.
    #[error("the kubeconfig archive is empty (the stream carried no data)")]
    Empty,
    /// No gzip magic number.
    #[error("the kubeconfig archive is not gzip-compressed (no gzip header)")]
    NotGzip,
    /// The gzip stream ended early.
    #[error("the kubeconfig archive is truncated: {detail}")]
    Truncated {
        /// Where it ended.
        detail: String,
    },
    /// The gzip stream is damaged (bad deflate data or checksum).
    #[error("the kubeconfig archive's gzip data is corrupt: {detail}")]
    CorruptGzip {
        /// The decoder's complaint.
        detail: String,
    },
    /// The tar inside is damaged.
    #[error("the kubeconfig archive's tar data is corrupt: {detail}")]
    CorruptTar {
        /// The tar reader's complaint.
        detail: String,
    },
    /// Something exceeded a size cap.
    #[error("the kubeconfig archive's {what} exceeds {limit} bytes; refusing it")]
    TooLarge {
        /// What was too big.
        what: &'static str,
        /// The cap.
        limit: usize,
    },
    /// The tar has no regular file named `kubeconfig`.
    #[error("the kubeconfig archive holds no file named `kubeconfig` (entries: {entries:?})")]
    Missing {
        /// Entry names found.
        entries: Vec<String>,
    },
    /// The kubeconfig is not UTF-8 text.
    #[error("the `kubeconfig` file in the archive is not UTF-8 text")]
    NotUtf8,
}

fn gunzip(archive: &[u8]) -> Result<Zeroizing<Vec<u8>>, ArchiveError> {
    let decoder = flate2::read::GzDecoder::new(archive);
    let mut limited = decoder.take(MAX_TAR_BYTES as u64 + 1);
    let mut out = Zeroizing::new(Vec::with_capacity(MAX_TAR_BYTES.min(archive.len() * 8)));
    // Reading in fixed chunks into a buffer that never reallocates past the cap keeps copies of
    // the secret from being left behind.
    let mut chunk = Zeroizing::new([0u8; 8192]);
    loop {
        let n = match limited.read(&mut chunk[..]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                return Err(ArchiveError::Truncated {
                    detail: format!("gzip stream ended early after {} bytes of tar", out.len()),
                });
            }
            Err(e) => {
                return Err(ArchiveError::CorruptGzip {
                    detail: e.to_string(),
                });
            }
        };
        if out.len() + n > MAX_TAR_BYTES {
            return Err(ArchiveError::TooLarge {
                what: "decompressed tar",
                limit: MAX_TAR_BYTES,
            });
        }
        if out.capacity() < out.len() + n {
            let mut bigger = Zeroizing::new(Vec::with_capacity(
                (out.capacity() * 2).max(out.len() + n).min(MAX_TAR_BYTES),
            ));
            bigger.extend_from_slice(&out);
            out = bigger;
        }
        out.extend_from_slice(&chunk[..n]);
    }
    Ok(out)
}

fn find_kubeconfig(tar_bytes: &[u8]) -> Result<Zeroizing<String>, ArchiveError> {
    let mut archive = tar::Archive::new(tar_bytes);
    let entries = archive.entries().map_err(corrupt_tar)?;
    let mut names = Vec::new();
    for entry in entries {
        let mut entry = entry.map_err(corrupt_tar)?;
        let name = entry
            .path()
            .map_err(corrupt_tar)?
            .to_string_lossy()
            .into_owned();
        let is_file = entry.header().entry_type().is_file();
        if is_file && name.trim_start_matches("./") == KUBECONFIG_ENTRY {
            let size = entry.header().size().map_err(corrupt_tar)?;
            if size > MAX_KUBECONFIG_BYTES as u64 {
                return Err(ArchiveError::TooLarge {
                    what: "kubeconfig file",
                    limit: MAX_KUBECONFIG_BYTES,
                });
            }
            // `size` is at most MAX_KUBECONFIG_BYTES, so this fits in usize.
            let mut buf = Zeroizing::new(vec![0u8; size as usize]);
            entry.read_exact(&mut buf).map_err(|e| {
                if e.kind() == ErrorKind::UnexpectedEof {
                    ArchiveError::Truncated {
                        detail: format!(
                            "`kubeconfig` entry announces {size} bytes but fewer follow"
                        ),
                    }
                } else {
                    corrupt_tar(e)
                }
            })?;
            let text = std::str::from_utf8(&buf).map_err(|_| ArchiveError::NotUtf8)?;
            return Ok(Zeroizing::new(text.to_owned()));
        }
        names.push(name);
    }
    Err(ArchiveError::Missing { entries: names })
}

fn corrupt_tar(e: std::io::Error) -> ArchiveError {
    ArchiveError::CorruptTar {
        detail: e.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write;

    fn archive(name: &str, body: &[u8]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o600);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, name, body).unwrap();
        let tar = tar.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn extracts_kubeconfig() {
        let k = Kubeconfig::from_archive(&archive("kubeconfig", b"apiVersion: v1\n")).unwrap();
        assert_eq!(k.as_str(), "apiVersion: v1\n");
        assert!(!format!("{k:?}").contains("apiVersion"));
    }

    #[test]
    fn missing_entry_names_what_was_found() {
        let err = Kubeconfig::from_archive(&archive("other", b"x")).unwrap_err();
        assert!(matches!(&err, ArchiveError::Missing { entries } if entries == &["other"]));
    }

    #[test]
    fn bomb_is_refused() {
        let zeros = vec![0u8; MAX_TAR_BYTES + 4096];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&zeros).unwrap();
        let err = Kubeconfig::from_archive(&gz.finish().unwrap()).unwrap_err();
        assert!(
            matches!(
                err,
                ArchiveError::TooLarge {
                    what: "decompressed tar",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn not_gzip() {
        let err = Kubeconfig::from_archive(b"plain text").unwrap_err();
        assert!(matches!(err, ArchiveError::NotGzip));
    }
}
