//! talosconfig: the operator's client configuration, read the way talosctl reads it.
//!
//! ```yaml
//! context: homelab
//! contexts:
//!   homelab:
//!     endpoints: [192.168.20.100]
//!     nodes: [192.168.20.100]
//!     ca: <base64 PEM>
//!     crt: <base64 PEM>
//!     key: <base64 PEM>
//! ```
//!
//! Path: `--talosconfig`, else `$TALOSCONFIG`, else `$TALOS_HOME/config` (when absolute), else
//! `~/.talos/config`. `--context` overrides `context`; `--nodes`/`--endpoints` override the
//! context's lists.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use zeroize::Zeroizing;

/// What the operator passed on the command line.
#[derive(Debug, Clone, Default)]
pub struct TalosConfigOptions {
    /// `--talosconfig`.
    pub talosconfig: Option<PathBuf>,
    /// `--context`.
    pub context: Option<String>,
    /// `--nodes` (empty: the context's nodes).
    pub nodes: Vec<String>,
    /// `--endpoints` (empty: the context's endpoints).
    pub endpoints: Vec<String>,
}

/// The chosen context of a talosconfig, decoded and ready for TLS.
#[derive(Clone)]
pub struct TalosConfigSelection {
    /// The file it came from.
    pub path: PathBuf,
    /// The context name.
    pub context: String,
    /// Endpoints (`host`, `host:port`, `[v6]:port`); port 50000 when absent.
    pub endpoints: Vec<String>,
    /// Nodes the request is routed to through the endpoint (`node` metadata).
    pub nodes: Vec<String>,
    /// CA certificate (PEM) the server certificate must chain to.
    pub ca_pem: Vec<u8>,
    /// Client certificate (PEM).
    pub crt_pem: Vec<u8>,
    /// Client private key (PEM, label normalised to `PRIVATE KEY`). Zeroised on drop.
    pub key_pem: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for TalosConfigSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TalosConfigSelection")
            .field("path", &self.path)
            .field("context", &self.context)
            .field("endpoints", &self.endpoints)
            .field("nodes", &self.nodes)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Why a talosconfig cannot be used. Every message names the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum TalosConfigError {
    /// No path could be determined (no `$HOME`).
    #[error(
        "cannot find a talosconfig: pass --talosconfig, set TALOSCONFIG, or create ~/.talos/config (no home directory is known)"
    )]
    NoPath,
    /// The file could not be read.
    #[error(
        "cannot read talosconfig {path} ({source_of_path}): {source}; pass --talosconfig or set TALOSCONFIG"
    )]
    Read {
        /// The path.
        path: PathBuf,
        /// How the path was chosen.
        source_of_path: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Not valid YAML of the expected shape.
    #[error("talosconfig {path} is not valid: {detail}")]
    Yaml {
        /// The path.
        path: PathBuf,
        /// The parser's complaint.
        detail: String,
    },
    /// Neither `context` nor `--context` names a context.
    #[error(
        "talosconfig {path}: field `context` is not set and no --context was given (contexts: {available:?})"
    )]
    NoContext {
        /// The path.
        path: PathBuf,
        /// Context names present.
        available: Vec<String>,
    },
    /// The named context does not exist.
    #[error(
        "talosconfig {path}: context {name:?} not found under `contexts` (contexts: {available:?})"
    )]
    UnknownContext {
        /// The path.
        path: PathBuf,
        /// The missing name.
        name: String,
        /// Context names present.
        available: Vec<String>,
    },
    /// A required field is absent or empty.
    #[error("talosconfig {path}: field `{field}` is missing or empty{hint}")]
    MissingField {
        /// The path.
        path: PathBuf,
        /// e.g. `contexts.homelab.crt`.
        field: String,
        /// Extra advice.
        hint: &'static str,
    },
    /// A field is not valid base64.
    #[error(
        "talosconfig {path}: field `{field}` is not valid base64 ({detail}); it must hold base64-encoded PEM"
    )]
    Base64 {
        /// The path.
        path: PathBuf,
        /// e.g. `contexts.homelab.ca`.
        field: String,
        /// The decoder's complaint.
        detail: String,
    },
    /// A field decodes but does not hold the expected PEM.
    #[error("talosconfig {path}: field `{field}` does not hold a PEM {expected}")]
    Pem {
        /// The path.
        path: PathBuf,
        /// e.g. `contexts.homelab.key`.
        field: String,
        /// What was expected.
        expected: &'static str,
    },
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    context: Option<String>,
    #[serde(default)]
    contexts: Option<BTreeMap<String, RawContext>>,
}

#[derive(Deserialize)]
struct RawContext {
    /// Deprecated single endpoint; talosctl appends it to `endpoints`.
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    endpoints: Option<Vec<String>>,
    #[serde(default)]
    nodes: Option<Vec<String>>,
    #[serde(default)]
    ca: Option<String>,
    #[serde(default)]
    crt: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    auth: Option<serde::de::IgnoredAny>,
}

/// Chooses the talosconfig path like talosctl: explicit, `$TALOSCONFIG`, `$TALOS_HOME/config`
/// (absolute `TALOS_HOME` only), `$HOME/.talos/config`. Returns the path and how it was chosen.
pub fn resolve_path(
    explicit: Option<&Path>,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<(PathBuf, &'static str), TalosConfigError> {
    if let Some(p) = explicit {
        return Ok((p.to_path_buf(), "from --talosconfig"));
    }
    if let Some(p) = env("TALOSCONFIG").filter(|p| !p.is_empty()) {
        return Ok((PathBuf::from(p), "from TALOSCONFIG"));
    }
    if let Some(home) = env("TALOS_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
    {
        return Ok((home.join("config"), "from TALOS_HOME"));
    }
    let home = env("HOME")
        .filter(|h| !h.is_empty())
        .ok_or(TalosConfigError::NoPath)?;
    Ok((
        PathBuf::from(home).join(".talos").join("config"),
        "the default",
    ))
}

impl TalosConfigSelection {
    /// Finds, reads and decodes the talosconfig chosen by `opts` and the process environment.
    pub fn load(opts: &TalosConfigOptions) -> Result<Self, TalosConfigError> {
        let (path, how) = resolve_path(opts.talosconfig.as_deref(), |k| std::env::var_os(k))?;
        let text = std::fs::read_to_string(&path).map_err(|source| TalosConfigError::Read {
            path: path.clone(),
            source_of_path: how,
            source,
        })?;
        Self::from_yaml(&text, &path, opts)
    }

    /// Decodes talosconfig text read from `path` (used in messages only).
    pub fn from_yaml(
        text: &str,
        path: &Path,
        opts: &TalosConfigOptions,
    ) -> Result<Self, TalosConfigError> {
        let path = path.to_path_buf();
        let raw: RawConfig = serde_saphyr::from_str(text).map_err(|e| TalosConfigError::Yaml {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        let mut contexts = raw.contexts.unwrap_or_default();
        let available: Vec<String> = contexts.keys().cloned().collect();
        let name = match opts
            .context
            .clone()
            .or(raw.context)
            .filter(|c| !c.is_empty())
        {
            Some(name) => name,
            None => return Err(TalosConfigError::NoContext { path, available }),
        };
        let Some(ctx) = contexts.remove(&name) else {
            return Err(TalosConfigError::UnknownContext {
                path,
                name,
                available,
            });
        };
        let field = |f: &str| format!("contexts.{name}.{f}");

        let mut endpoints = ctx.endpoints.unwrap_or_default();
        if let Some(t) = ctx.target.filter(|t| !t.is_empty()) {
            endpoints.push(t);
        }
        if !opts.endpoints.is_empty() {
            endpoints = opts.endpoints.clone();
        }
        if endpoints.is_empty() {
            return Err(TalosConfigError::MissingField {
                path,
                field: field("endpoints"),
                hint: "; add the node's address or pass --endpoints",
            });
        }
        let nodes = if opts.nodes.is_empty() {
            ctx.nodes.unwrap_or_default()
        } else {
            opts.nodes.clone()
        };
        let omni = if ctx.auth.is_some() {
            "; contexts authenticating through `auth` (Omni) are not supported, use a talosconfig with a client certificate"
        } else {
            ""
        };
        let decode = |f: &str, v: Option<String>| -> Result<Zeroizing<Vec<u8>>, TalosConfigError> {
            let v = Zeroizing::new(v.unwrap_or_default());
            if v.trim().is_empty() {
                return Err(TalosConfigError::MissingField {
                    path: path.clone(),
                    field: field(f),
                    hint: omni,
                });
            }
            let compact: Zeroizing<String> =
                Zeroizing::new(v.chars().filter(|c| !c.is_whitespace()).collect());
            base64::engine::general_purpose::STANDARD
                .decode(compact.as_bytes())
                .map(Zeroizing::new)
                .map_err(|e| TalosConfigError::Base64 {
                    path: path.clone(),
                    field: field(f),
                    detail: e.to_string(),
                })
        };
        let ca_pem = decode("ca", ctx.ca)?;
        let crt_pem = decode("crt", ctx.crt)?;
        let key_pem = normalise_key_label(&decode("key", ctx.key)?);

        let bad_pem = |f: &str, expected| TalosConfigError::Pem {
            path: path.clone(),
            field: field(f),
            expected,
        };
        if !has_certificate(&ca_pem) {
            return Err(bad_pem("ca", "CERTIFICATE"));
        }
        if !has_certificate(&crt_pem) {
            return Err(bad_pem("crt", "CERTIFICATE"));
        }
        if PrivateKeyDer::from_pem_slice(&key_pem).is_err() {
            return Err(bad_pem("key", "private key (PKCS#8, EC or RSA)"));
        }
        Ok(TalosConfigSelection {
            path,
            context: name,
            endpoints,
            nodes,
            ca_pem: ca_pem.to_vec(),
            crt_pem: crt_pem.to_vec(),
            key_pem,
        })
    }
}

fn has_certificate(pem: &[u8]) -> bool {
    CertificateDer::pem_slice_iter(pem).any(|c| c.is_ok())
}

/// Talos writes Ed25519 keys as PKCS#8 under the non-standard label `ED25519 PRIVATE KEY`;
/// rustls reads PKCS#8 only under `PRIVATE KEY`. The DER is the same, so relabel.
fn normalise_key_label(pem: &[u8]) -> Zeroizing<Vec<u8>> {
    const FROM_BEGIN: &[u8] = b"-----BEGIN ED25519 PRIVATE KEY-----";
    const FROM_END: &[u8] = b"-----END ED25519 PRIVATE KEY-----";
    let replaced = replace(pem, FROM_BEGIN, b"-----BEGIN PRIVATE KEY-----");
    replace(&replaced, FROM_END, b"-----END PRIVATE KEY-----")
}

fn replace(hay: &[u8], from: &[u8], to: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(hay.len()));
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

/// Splits an endpoint into host and port (default `default_port`): `host`, `host:port`,
/// `[v6]`, `[v6]:port` or a bare IPv6 address.
pub fn split_endpoint(endpoint: &str, default_port: u16) -> Option<(String, u16)> {
    let e = endpoint.trim();
    let e = e.strip_prefix("https://").unwrap_or(e);
    if e.is_empty() {
        return None;
    }
    if let Some(rest) = e.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((host.to_owned(), port));
    }
    match e.matches(':').count() {
        0 => Some((e.to_owned(), default_port)),
        1 => {
            let (h, p) = e.split_once(':')?;
            Some((h.to_owned(), p.parse().ok()?))
        }
        _ => Some((e.to_owned(), default_port)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn path_resolution_order() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| OsString::from(*v))
            }
        };
        let all = env(&[
            ("TALOSCONFIG", "/t/c"),
            ("TALOS_HOME", "/th"),
            ("HOME", "/h"),
        ]);
        assert_eq!(
            resolve_path(Some(Path::new("/x")), all).unwrap().0,
            PathBuf::from("/x")
        );
        assert_eq!(resolve_path(None, all).unwrap().0, PathBuf::from("/t/c"));
        let no_env = env(&[("TALOS_HOME", "/th"), ("HOME", "/h")]);
        assert_eq!(
            resolve_path(None, no_env).unwrap().0,
            PathBuf::from("/th/config")
        );
        let rel_home = env(&[("TALOS_HOME", "rel"), ("HOME", "/h")]);
        assert_eq!(
            resolve_path(None, rel_home).unwrap().0,
            PathBuf::from("/h/.talos/config")
        );
        assert!(matches!(
            resolve_path(None, env(&[])),
            Err(TalosConfigError::NoPath)
        ));
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            split_endpoint("10.0.0.1", 50000),
            Some(("10.0.0.1".into(), 50000))
        );
        assert_eq!(
            split_endpoint("10.0.0.1:1234", 50000),
            Some(("10.0.0.1".into(), 1234))
        );
        assert_eq!(split_endpoint("[::1]:7", 50000), Some(("::1".into(), 7)));
        assert_eq!(split_endpoint("[::1]", 50000), Some(("::1".into(), 50000)));
        assert_eq!(
            split_endpoint("fd00::1", 50000),
            Some(("fd00::1".into(), 50000))
        );
        assert_eq!(split_endpoint("h:x", 50000), None);
        assert_eq!(split_endpoint("", 50000), None);
    }

    #[test]
    fn relabels_ed25519_keys() {
        let k = normalise_key_label(
            b"-----BEGIN ED25519 PRIVATE KEY-----\nAA==\n-----END ED25519 PRIVATE KEY-----\n",
        );
        assert_eq!(
            &k[..],
            b"-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n"
        );
    }
}
