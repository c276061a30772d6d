//! Configuration: one YAML file (normally mounted by Talos from an ExtensionServiceConfig) plus a
//! few environment overrides for operational knobs.
//!
//! Raw input is turned into a validated [`Config`] once; nothing later re-validates. Validation
//! reports every problem it finds, each naming the field, the file and line where known, and the
//! fix.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::duration::parse_duration;

/// Where machined's API listens on a Talos node.
pub use crate::talos::DEFAULT_MACHINED_SOCKET as DEFAULT_TALOS_SOCKET;
/// The kernel's TPM resource manager.
pub const DEFAULT_TPM_DEVICE: &str = "/dev/tpmrm0";
/// Where the agent writes its status on the host (readable with `talosctl read`).
pub const DEFAULT_STATUS: &str = "/var/lib/bootstrap-agent/status.json";
/// Where the embedded bundle appears inside the service container (the extension carries it at
/// `/usr/local/lib/containers/bootstrap-agent/bundle`, under the service's own root).
pub const DEFAULT_BUNDLE_DIR: &str = "/bundle";
/// The SecureBoot state PCR, and a PCR Talos never extends (the lock).
pub use crate::seal::{DEFAULT_LOCK_PCR, DEFAULT_PCRS};
/// The namespace Flux lives in.
pub const FLUX_NAMESPACE: &str = "flux-system";

/// Environment variables that override the file (operational knobs only).
pub mod env {
    /// Status file path.
    pub const STATUS: &str = "BOOTSTRAP_AGENT_STATUS";
    /// TPM address (`/dev/tpmrm0`, `tcp://HOST:PORT`, `unix:///PATH`).
    pub const TPM: &str = "BOOTSTRAP_AGENT_TPM";
    /// Cap of the retry backoff, a duration such as `30s`.
    pub const RETRY_MAX: &str = "BOOTSTRAP_AGENT_RETRY_MAX";
    /// Multiplies every step deadline, e.g. `0.1` in rehearsals or `3` on slow hardware.
    pub const DEADLINE_SCALE: &str = "BOOTSTRAP_AGENT_DEADLINE_SCALE";
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this came from (for messages).
    pub source: PathBuf,
    pub cluster: ClusterAccess,
    pub tpm: TpmConfig,
    pub secrets: Vec<SecretConfig>,
    pub bundle: BundleConfig,
    pub flux: FluxConfig,
    pub status: PathBuf,
    pub deadlines: Deadlines,
    pub retry: RetryConfig,
}

/// How the agent reaches the cluster.
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterAccess {
    /// On a Talos node: machined's local API gives etcd bootstrap and the kubeconfig.
    Talos {
        socket: PathBuf,
        bootstrap_etcd: bool,
    },
    /// Any cluster, through a kubeconfig file (tests, rehearsals, clusters not on Talos).
    Kubeconfig { path: PathBuf },
}

#[derive(Debug, Clone, PartialEq)]
pub struct TpmConfig {
    /// `/dev/tpmrm0`, `tcp://HOST:PORT` or `unix:///PATH`.
    pub address: String,
    /// PCRs (SHA-256 bank) the seed's read policy binds to.
    pub pcrs: Vec<u32>,
    /// PCR extended after use to lock the seed until the next boot.
    pub lock_pcr: u32,
    /// NV index of the seed; `None` takes the agent's default.
    pub nv_index: Option<u32>,
    /// Pinned name of the salt key (hex, as `tpm enroll` prints it): a TPM answering with another
    /// key (an interposer on the bus) is refused.
    pub salt_key_name: Option<String>,
}

/// One Kubernetes Secret the agent seeds from a sealed (age-encrypted to the TPM) input.
#[derive(Debug, Clone, PartialEq)]
pub struct SecretConfig {
    pub namespace: String,
    pub name: String,
    /// Data key inside the Secret.
    pub key: String,
    /// `None` until the operator has sealed the value to this TPM.
    pub sealed: Option<SealedSource>,
    pub format: SecretFormat,
    /// Replace a Secret whose content differs (never done unless asked for).
    pub overwrite: bool,
}

impl SecretConfig {
    /// `namespace/name`, for messages.
    pub fn label(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum SealedSource {
    /// ASCII-armored age file inline in the configuration.
    Inline(String),
    /// A file holding the ASCII-armored age file.
    File(PathBuf),
}

/// What the decrypted value must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretFormat {
    /// An age identity (`AGE-SECRET-KEY-1...`), as SOPS and kustomize-controller expect.
    AgeIdentity,
    /// Any bytes (deploy keys, tokens).
    Raw,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BundleConfig {
    /// Directory holding the bundle lock file (and, when embedded, the artifacts).
    pub dir: PathBuf,
    /// Fetch the artifacts over HTTPS at boot instead of reading them from `dir`.
    pub fetch: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FluxConfig {
    pub url: String,
    pub branch: String,
    pub path: String,
    /// GitRepository interval.
    pub interval: Duration,
    /// Kustomization interval.
    pub kustomization_interval: Duration,
    /// Secret holding Git credentials (a deploy key), in `flux-system`.
    pub secret_ref: Option<String>,
}

/// Per-step deadlines: how long a step may keep retrying before the run fails.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Deadlines {
    pub talos_api: Duration,
    pub etcd: Duration,
    pub kube_api: Duration,
    pub secrets: Duration,
    pub crds: Duration,
    pub flux: Duration,
    pub ready: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            talos_api: Duration::from_secs(600),
            etcd: Duration::from_secs(600),
            kube_api: Duration::from_secs(900),
            secrets: Duration::from_secs(300),
            crds: Duration::from_secs(300),
            flux: Duration::from_secs(300),
            ready: Duration::from_secs(900),
        }
    }
}

/// Capped exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryConfig {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the field, e.g. `tpm.lockPcr` or `secrets[0].name`.
    pub field: String,
    /// 1-based line in the file, where known.
    pub line: Option<u64>,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}: {}", self.field, self.message)?,
            None => write!(f, "{}: {}", self.field, self.message)?,
        }
        if !self.fix.is_empty() {
            write!(f, " (fix: {})", self.fix)?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "cannot read configuration {path}: {source} (fix: check the path, or the ExtensionServiceConfig mountPath)"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration {path} is not valid YAML for this agent:\n{message}")]
    Syntax { path: PathBuf, message: String },
    #[error("configuration {path} has {} problem(s):\n{}", problems.len(), list(problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// Every problem, for callers that render them differently.
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid { problems, .. } => {
                problems.iter().map(ToString::to_string).collect()
            }
            other => vec![other.to_string()],
        }
    }
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------------
// Raw input, exactly as written. Unknown fields are rejected by a first pass over the untyped
// document (so that all of them are reported at once), then by serde.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawConfig {
    talos: Option<Spanned<RawTalos>>,
    kubernetes: Option<Spanned<RawKubernetes>>,
    tpm: Option<RawTpm>,
    #[serde(default)]
    secrets: Vec<Spanned<RawSecret>>,
    bundle: Option<RawBundle>,
    flux: Option<Spanned<RawFlux>>,
    status: Option<Spanned<String>>,
    deadlines: Option<RawDeadlines>,
    retry: Option<RawRetry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawTalos {
    socket: Option<Spanned<String>>,
    bootstrap_etcd: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawKubernetes {
    kubeconfig: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawTpm {
    device: Option<Spanned<String>>,
    pcrs: Option<Spanned<Vec<u32>>>,
    lock_pcr: Option<Spanned<u32>>,
    nv_index: Option<Spanned<RawNumber>>,
    salt_key_name: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawNumber {
    Int(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSecret {
    namespace: Option<Spanned<String>>,
    name: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    sealed: Option<Spanned<String>>,
    sealed_file: Option<Spanned<String>>,
    format: Option<Spanned<String>>,
    overwrite: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawBundle {
    dir: Option<Spanned<String>>,
    fetch: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawFlux {
    url: Option<Spanned<String>>,
    branch: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
    kustomization_interval: Option<Spanned<String>>,
    secret_ref: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawDeadlines {
    talos_api: Option<Spanned<String>>,
    etcd: Option<Spanned<String>>,
    kube_api: Option<Spanned<String>>,
    secrets: Option<Spanned<String>>,
    crds: Option<Spanned<String>>,
    flux: Option<Spanned<String>>,
    ready: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRetry {
    initial: Option<Spanned<String>>,
    max: Option<Spanned<String>>,
}

/// Known fields per section, for the unknown-field pass (keep in sync with the raw types; a unit
/// test checks that every example field is accepted).
const KNOWN: &[(&str, &[&str])] = &[
    (
        "",
        &[
            "talos",
            "kubernetes",
            "tpm",
            "secrets",
            "bundle",
            "flux",
            "status",
            "deadlines",
            "retry",
        ],
    ),
    ("talos", &["socket", "bootstrapEtcd"]),
    ("kubernetes", &["kubeconfig"]),
    (
        "tpm",
        &["device", "pcrs", "lockPcr", "nvIndex", "saltKeyName"],
    ),
    (
        "secrets[]",
        &[
            "namespace",
            "name",
            "key",
            "sealed",
            "sealedFile",
            "format",
            "overwrite",
        ],
    ),
    ("bundle", &["dir", "fetch"]),
    (
        "flux",
        &[
            "url",
            "branch",
            "path",
            "interval",
            "kustomizationInterval",
            "secretRef",
        ],
    ),
    (
        "deadlines",
        &[
            "talosApi", "etcd", "kubeApi", "secrets", "crds", "flux", "ready",
        ],
    ),
    ("retry", &["initial", "max"]),
];

impl Config {
    /// Reads and validates `path`, applying environment overrides from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with_env(path, &|name| std::env::var(name).ok())
    }

    /// Reads and validates `path`, taking environment overrides from `env`.
    pub fn load_with_env(
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path, env)
    }

    /// Validates configuration text; `path` names it in messages and anchors relative paths.
    pub fn parse(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let syntax = |message: String| ConfigError::Syntax {
            path: path.to_path_buf(),
            message,
        };
        if text.trim().is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems: vec![Problem {
                    field: "(file)".into(),
                    line: None,
                    message: "the configuration is empty".into(),
                    fix: "at least `flux: {url: ...}` and `talos: {}` or `kubernetes: {kubeconfig: ...}` are needed; see README".into(),
                }],
            });
        }
        let untyped: serde_json::Value =
            serde_saphyr::from_str(text).map_err(|e| syntax(e.to_string()))?;
        let unknown = unknown_fields(&untyped, text);
        if !unknown.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems: unknown,
            });
        }
        let raw: RawConfig = serde_saphyr::from_str(text).map_err(|e| syntax(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut v = Validator {
            base,
            problems: Vec::new(),
        };
        let config = v.config(raw, path, env);
        if v.problems.is_empty() {
            Ok(config)
        } else {
            v.problems.sort_by_key(|p| p.line.unwrap_or(u64::MAX));
            Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems: v.problems,
            })
        }
    }

    /// Problems with what the configuration references on this machine (files and directories).
    /// `plan` and `run` both call this; the bundle's own contents are checked by the bundle module.
    pub fn check_references(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if let ClusterAccess::Kubeconfig { path } = &self.cluster
            && !path.is_file()
        {
            problems.push(Problem {
                field: "kubernetes.kubeconfig".into(),
                line: None,
                message: format!("{} does not exist or is not a file", path.display()),
                fix: "point it at a readable kubeconfig".into(),
            });
        }
        for (i, secret) in self.secrets.iter().enumerate() {
            if let Some(SealedSource::File(file)) = &secret.sealed
                && !file.is_file()
            {
                problems.push(Problem {
                    field: format!("secrets[{i}].sealedFile"),
                    line: None,
                    message: format!("{} does not exist or is not a file", file.display()),
                    fix: format!("write the age file sealed to this TPM there, or use `sealed:` inline for {}", secret.label()),
                });
            }
        }
        if !self.bundle.dir.is_dir() {
            problems.push(Problem {
                field: "bundle.dir".into(),
                line: None,
                message: format!("{} does not exist or is not a directory", self.bundle.dir.display()),
                fix: "use the directory the extension image embeds, or build the extension with a bundle".into(),
            });
        }
        problems
    }
}

/// Reports every field the agent does not know, with a suggestion when one is close.
fn unknown_fields(doc: &serde_json::Value, text: &str) -> Vec<Problem> {
    let mut problems = Vec::new();
    let Some(top) = doc.as_object() else {
        return vec![Problem {
            field: "(file)".into(),
            line: None,
            message: "the configuration must be a YAML mapping".into(),
            fix: "start with `talos:` or `kubernetes:` and `flux:`; see README".into(),
        }];
    };
    let known = |section: &str| {
        KNOWN
            .iter()
            .find(|(s, _)| *s == section)
            .map(|(_, k)| *k)
            .unwrap_or(&[])
    };
    let mut check =
        |section: &str, prefix: &str, map: &serde_json::Map<String, serde_json::Value>| {
            let allowed = known(section);
            for key in map.keys() {
                if !allowed.contains(&key.as_str()) {
                    let field = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    let fix = match closest(key, allowed) {
                        Some(s) => format!(
                            "did you mean `{s}`? known fields here: {}",
                            allowed.join(", ")
                        ),
                        None => format!("remove it; known fields here: {}", allowed.join(", ")),
                    };
                    problems.push(Problem {
                        field,
                        line: line_of_key(text, key),
                        message: "unknown field".into(),
                        fix,
                    });
                }
            }
        };
    check("", "", top);
    for (section, value) in top {
        match value {
            serde_json::Value::Object(map) => check(section, section, map),
            serde_json::Value::Array(items) if section == "secrets" => {
                for (i, item) in items.iter().enumerate() {
                    if let Some(map) = item.as_object() {
                        check("secrets[]", &format!("secrets[{i}]"), map);
                    }
                }
            }
            _ => {}
        }
    }
    problems
}

/// The first line that has `key:` as a mapping key, in block or flow style (unknown keys are
/// rare and usually unique).
fn line_of_key(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .position(|line| {
            line.match_indices(key).any(|(at, _)| {
                let before = line[..at].chars().next_back();
                let after = line[at + key.len()..].trim_start();
                before.is_none_or(|c| matches!(c, ' ' | '{' | ',' | '-' | '\t'))
                    && after.starts_with(':')
            })
        })
        .map(|i| i as u64 + 1)
}

/// A known name within edit distance 2 of `input`.
fn closest<'a>(input: &str, known: &[&'a str]) -> Option<&'a str> {
    let lower = input.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (edit_distance(&lower, &k.to_ascii_lowercase()), *k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

struct Validator<'a> {
    base: &'a Path,
    problems: Vec<Problem>,
}

fn line<T>(s: &Spanned<T>) -> Option<u64> {
    let l = s.referenced.line();
    (l > 0).then_some(l)
}

impl Validator<'_> {
    fn problem(
        &mut self,
        field: impl Into<String>,
        line: Option<u64>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.problems.push(Problem {
            field: field.into(),
            line,
            message: message.into(),
            fix: fix.into(),
        });
    }

    /// Resolves a path relative to the configuration file's directory.
    fn path(&self, value: &str) -> PathBuf {
        let p = Path::new(value);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn non_empty_path(&mut self, field: &str, value: &Spanned<String>) -> PathBuf {
        if value.value.trim().is_empty() {
            self.problem(field, line(value), "is empty", "give a path");
        }
        self.path(&value.value)
    }

    fn duration(
        &mut self,
        field: &str,
        value: Option<&Spanned<String>>,
        default: Duration,
    ) -> Duration {
        let Some(value) = value else { return default };
        match parse_duration(&value.value) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.problem(
                    field,
                    line(value),
                    "must be longer than zero",
                    "use a duration such as `30s`, `5m` or `1h`",
                );
                default
            }
            Err(e) => {
                self.problem(
                    field,
                    line(value),
                    format!("`{}` is not a duration: {e}", value.value),
                    "use a duration such as `30s`, `5m` or `1h`",
                );
                default
            }
        }
    }

    fn config(
        &mut self,
        raw: RawConfig,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Config {
        let cluster = self.cluster(raw.talos, raw.kubernetes);
        let mut tpm = self.tpm(raw.tpm);
        if let Some(addr) = env(env::TPM) {
            if let Err(e) = check_tpm_address(&addr) {
                self.problem(
                    format!("env {}", env::TPM),
                    None,
                    e,
                    "use /dev/tpmrm0, tcp://HOST:PORT or unix:///PATH",
                );
            }
            tpm.address = addr;
        }
        let secrets = self.secrets(raw.secrets);
        let bundle = self.bundle(raw.bundle);
        let flux = self.flux(raw.flux, &secrets);
        let mut status = match &raw.status {
            Some(s) => self.non_empty_path("status", s),
            None => PathBuf::from(DEFAULT_STATUS),
        };
        if let Some(s) = env(env::STATUS) {
            status = PathBuf::from(s);
        }
        let mut deadlines = self.deadlines(raw.deadlines);
        if let Some(scale) = env(env::DEADLINE_SCALE) {
            match scale.parse::<f64>() {
                Ok(f) if f > 0.0 && f.is_finite() => deadlines = deadlines.scaled(f),
                _ => self.problem(
                    format!("env {}", env::DEADLINE_SCALE),
                    None,
                    format!("`{scale}` is not a positive number"),
                    "use e.g. 0.5 or 2",
                ),
            }
        }
        let mut retry = self.retry(raw.retry);
        if let Some(max) = env(env::RETRY_MAX) {
            match parse_duration(&max) {
                Ok(d) if !d.is_zero() => retry.max = d,
                _ => self.problem(
                    format!("env {}", env::RETRY_MAX),
                    None,
                    format!("`{max}` is not a positive duration"),
                    "use e.g. 5s",
                ),
            }
        }
        if retry.initial > retry.max {
            retry.initial = retry.max;
        }
        Config {
            source: path.to_path_buf(),
            cluster,
            tpm,
            secrets,
            bundle,
            flux,
            status,
            deadlines,
            retry,
        }
    }

    fn cluster(
        &mut self,
        talos: Option<Spanned<RawTalos>>,
        kube: Option<Spanned<RawKubernetes>>,
    ) -> ClusterAccess {
        match (talos, kube) {
            (Some(t), Some(k)) => {
                self.problem(
                    "kubernetes",
                    line(&k),
                    format!("both `talos` (line {}) and `kubernetes` are set", t.referenced.line()),
                    "keep `talos` on a Talos node (the kubeconfig comes from machined) or `kubernetes` elsewhere, not both",
                );
                self.talos(t.value)
            }
            (Some(t), None) => self.talos(t.value),
            (None, Some(k)) => match k.value.kubeconfig {
                Some(p) => ClusterAccess::Kubeconfig {
                    path: self.non_empty_path("kubernetes.kubeconfig", &p),
                },
                None => {
                    self.problem(
                        "kubernetes.kubeconfig",
                        line(&k),
                        "is missing",
                        "give the path of a kubeconfig file",
                    );
                    ClusterAccess::Kubeconfig {
                        path: PathBuf::new(),
                    }
                }
            },
            (None, None) => {
                self.problem(
                    "talos",
                    None,
                    "neither `talos` nor `kubernetes` is set: the agent does not know how to reach the cluster",
                    "add `talos: {}` on a Talos node, or `kubernetes: {kubeconfig: PATH}` for any other cluster",
                );
                ClusterAccess::Kubeconfig {
                    path: PathBuf::new(),
                }
            }
        }
    }

    fn talos(&mut self, raw: RawTalos) -> ClusterAccess {
        let socket = match &raw.socket {
            Some(s) => {
                if !Path::new(&s.value).is_absolute() {
                    self.problem(
                        "talos.socket",
                        line(s),
                        format!("`{}` is not an absolute path", s.value),
                        format!("use {DEFAULT_TALOS_SOCKET}"),
                    );
                }
                PathBuf::from(&s.value)
            }
            None => PathBuf::from(DEFAULT_TALOS_SOCKET),
        };
        ClusterAccess::Talos {
            socket,
            bootstrap_etcd: raw.bootstrap_etcd.unwrap_or(true),
        }
    }

    fn tpm(&mut self, raw: Option<RawTpm>) -> TpmConfig {
        let raw = raw.unwrap_or(RawTpm {
            device: None,
            pcrs: None,
            lock_pcr: None,
            nv_index: None,
            salt_key_name: None,
        });
        let address = match &raw.device {
            Some(d) => {
                if let Err(e) = check_tpm_address(&d.value) {
                    self.problem(
                        "tpm.device",
                        line(d),
                        e,
                        "use /dev/tpmrm0, tcp://HOST:PORT or unix:///PATH",
                    );
                }
                d.value.clone()
            }
            None => DEFAULT_TPM_DEVICE.to_string(),
        };
        let pcrs = match &raw.pcrs {
            Some(p) => {
                if p.value.is_empty() {
                    self.problem(
                        "tpm.pcrs",
                        line(p),
                        "is empty: the seed would be readable by any OS booted on this machine",
                        "use [7] (SecureBoot state)",
                    );
                }
                let mut seen = BTreeSet::new();
                for pcr in &p.value {
                    if *pcr > 23 {
                        self.problem(
                            "tpm.pcrs",
                            line(p),
                            format!("{pcr} is not a PCR index"),
                            "PCRs are 0 to 23; use [7]",
                        );
                    } else if !seen.insert(*pcr) {
                        self.problem(
                            "tpm.pcrs",
                            line(p),
                            format!("PCR {pcr} is listed twice"),
                            "list each PCR once",
                        );
                    } else if *pcr == 11 {
                        self.problem(
                            "tpm.pcrs",
                            line(p),
                            "PCR 11 changes at every boot phase on Talos",
                            "leave 11 out; use [7]",
                        );
                    }
                }
                p.value.clone()
            }
            None => DEFAULT_PCRS.to_vec(),
        };
        let lock_pcr = match &raw.lock_pcr {
            Some(l) => {
                let pcr = l.value;
                if pcr > 23 {
                    self.problem(
                        "tpm.lockPcr",
                        line(l),
                        format!("{pcr} is not a PCR index"),
                        "use 15 (unused by Talos)",
                    );
                } else if pcr == 16 || pcr == 23 {
                    self.problem(
                        "tpm.lockPcr",
                        line(l),
                        format!("PCR {pcr} can be reset by any process, which would undo the lock"),
                        "use 15 (unused by Talos)",
                    );
                } else if pcr == 11 {
                    self.problem(
                        "tpm.lockPcr",
                        line(l),
                        "PCR 11 is extended by Talos at every boot phase",
                        "use 15 (unused by Talos)",
                    );
                } else if pcrs.contains(&pcr) {
                    self.problem(
                        "tpm.lockPcr",
                        line(l),
                        format!("PCR {pcr} is also in tpm.pcrs"),
                        "the lock PCR must be a separate PCR; use 15",
                    );
                }
                pcr
            }
            None => DEFAULT_LOCK_PCR,
        };
        let nv_index = raw.nv_index.as_ref().and_then(|n| {
            let parsed = match &n.value {
                RawNumber::Int(i) => u32::try_from(*i).ok(),
                RawNumber::Text(t) => {
                    let t = t.trim();
                    match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok(),
                        None => t.parse().ok(),
                    }
                }
            };
            match parsed {
                Some(i) if (0x0100_0000..=0x01FF_FFFF).contains(&i) => Some(i),
                _ => {
                    self.problem(
                        "tpm.nvIndex",
                        line(n),
                        "is not an NV index (0x01000000 to 0x01FFFFFF)",
                        "leave it out to use the agent's default",
                    );
                    None
                }
            }
        });
        let salt_key_name = raw.salt_key_name.as_ref().map(|n| {
            let hex = n.value.trim().to_ascii_lowercase();
            // nameAlg (2 bytes) followed by a SHA-256 digest.
            if hex.len() != 68 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                self.problem(
                    "tpm.saltKeyName",
                    line(n),
                    "is not a TPM object name (68 hex digits: 000b followed by a SHA-256 digest)",
                    "copy the name `bootstrap-agent tpm enroll` prints, or leave it out",
                );
            }
            hex
        });
        TpmConfig {
            address,
            pcrs,
            lock_pcr,
            nv_index,
            salt_key_name,
        }
    }

    fn secrets(&mut self, raw: Vec<Spanned<RawSecret>>) -> Vec<SecretConfig> {
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, entry) in raw.into_iter().enumerate() {
            let at = line(&entry);
            let r = entry.value;
            let f = |name: &str| format!("secrets[{i}].{name}");
            let namespace = r
                .namespace
                .as_ref()
                .map_or(FLUX_NAMESPACE.to_string(), |s| s.value.clone());
            if let Some(ns) = &r.namespace
                && !is_dns_label(&ns.value)
            {
                self.problem(
                    f("namespace"),
                    line(ns),
                    format!("`{}` is not a valid namespace name", ns.value),
                    "use lower-case letters, digits and '-', at most 63 characters",
                );
            }
            let name = match &r.name {
                Some(n) => {
                    if !is_dns_subdomain(&n.value) {
                        self.problem(
                            f("name"),
                            line(n),
                            format!("`{}` is not a valid Secret name", n.value),
                            "use lower-case letters, digits, '-' and '.', at most 253 characters",
                        );
                    }
                    n.value.clone()
                }
                None => {
                    self.problem(
                        f("name"),
                        at,
                        "is missing",
                        "name the Kubernetes Secret, e.g. sops-age",
                    );
                    String::new()
                }
            };
            let key = match &r.key {
                Some(k) => {
                    if !is_data_key(&k.value) {
                        self.problem(
                            f("key"),
                            line(k),
                            format!("`{}` is not a valid Secret data key", k.value),
                            "use letters, digits, '-', '_' and '.'",
                        );
                    }
                    k.value.clone()
                }
                None => {
                    self.problem(
                        f("key"),
                        at,
                        "is missing",
                        "give the data key, e.g. age.agekey",
                    );
                    String::new()
                }
            };
            let format = match &r.format {
                None if key.ends_with(".agekey") => SecretFormat::AgeIdentity,
                None => SecretFormat::Raw,
                Some(s) => match s.value.as_str() {
                    "ageIdentity" => SecretFormat::AgeIdentity,
                    "raw" => SecretFormat::Raw,
                    other => {
                        self.problem(
                            f("format"),
                            line(s),
                            format!("`{other}` is not a format"),
                            "use `ageIdentity` or `raw`",
                        );
                        SecretFormat::Raw
                    }
                },
            };
            if format == SecretFormat::AgeIdentity
                && namespace == FLUX_NAMESPACE
                && !key.is_empty()
                && !key.ends_with(".agekey")
            {
                self.problem(
                    f("key"),
                    r.key.as_ref().and_then(line),
                    format!("`{key}` does not end in `.agekey`: kustomize-controller ignores it"),
                    "use `age.agekey`",
                );
            }
            let sealed = match (r.sealed, r.sealed_file) {
                (Some(s), Some(file)) => {
                    self.problem(
                        f("sealedFile"),
                        line(&file),
                        "both `sealed` and `sealedFile` are set",
                        "keep one of them",
                    );
                    Some(SealedSource::Inline(s.value))
                }
                (Some(s), None) => {
                    let text = s.value.trim();
                    if text.is_empty() {
                        None
                    } else {
                        if !text.starts_with("-----BEGIN AGE ENCRYPTED FILE-----")
                            || !text.ends_with("-----END AGE ENCRYPTED FILE-----")
                        {
                            self.problem(f("sealed"), line(&s), "is not an ASCII-armored age file", "paste the whole output of `age -a -r <recipient>`, BEGIN and END lines included");
                        }
                        Some(SealedSource::Inline(s.value))
                    }
                }
                (None, Some(file)) => Some(SealedSource::File(
                    self.non_empty_path(&f("sealedFile"), &file),
                )),
                (None, None) => None,
            };
            if !name.is_empty() && !seen.insert((namespace.clone(), name.clone())) {
                self.problem(
                    f("name"),
                    at,
                    format!("{namespace}/{name} is configured twice"),
                    "keep one entry per Secret",
                );
            }
            out.push(SecretConfig {
                namespace,
                name,
                key,
                sealed,
                format,
                overwrite: r.overwrite.unwrap_or(false),
            });
        }
        out
    }

    fn bundle(&mut self, raw: Option<RawBundle>) -> BundleConfig {
        let raw = raw.unwrap_or(RawBundle {
            dir: None,
            fetch: None,
        });
        let dir = match &raw.dir {
            Some(d) => self.non_empty_path("bundle.dir", d),
            None => PathBuf::from(DEFAULT_BUNDLE_DIR),
        };
        BundleConfig {
            dir,
            fetch: raw.fetch.unwrap_or(false),
        }
    }

    fn flux(&mut self, raw: Option<Spanned<RawFlux>>, secrets: &[SecretConfig]) -> FluxConfig {
        let Some(raw) = raw else {
            self.problem("flux", None, "is missing", "add `flux: {url: https://github.com/OWNER/REPO, branch: main, path: ./kubernetes/flux-system}`");
            return FluxConfig {
                url: String::new(),
                branch: "main".into(),
                path: "./".into(),
                interval: Duration::from_secs(60),
                kustomization_interval: Duration::from_secs(600),
                secret_ref: None,
            };
        };
        let at = line(&raw);
        let r = raw.value;
        let url = match &r.url {
            Some(u) => {
                if let Err(e) = check_git_url(&u.value) {
                    self.problem(
                        "flux.url",
                        line(u),
                        e,
                        "use https://HOST/OWNER/REPO or ssh://git@HOST/OWNER/REPO",
                    );
                }
                u.value.clone()
            }
            None => {
                self.problem(
                    "flux.url",
                    at,
                    "is missing",
                    "give the Git repository Flux syncs from",
                );
                String::new()
            }
        };
        let branch = match &r.branch {
            Some(b) => {
                if b.value.trim().is_empty()
                    || b.value.contains(char::is_whitespace)
                    || b.value.contains("..")
                {
                    self.problem(
                        "flux.branch",
                        line(b),
                        format!("`{}` is not a branch name", b.value),
                        "e.g. main",
                    );
                }
                b.value.clone()
            }
            None => "main".into(),
        };
        let path = match &r.path {
            Some(p) => {
                let v = p.value.trim();
                if v.starts_with('/') || v.split('/').any(|c| c == "..") {
                    self.problem(
                        "flux.path",
                        line(p),
                        format!("`{v}` must be relative to the repository root and stay inside it"),
                        "e.g. ./kubernetes/flux-system",
                    );
                }
                if v.starts_with("./") || v == "." {
                    v.to_string()
                } else {
                    format!("./{v}")
                }
            }
            None => "./".into(),
        };
        let interval = self.duration(
            "flux.interval",
            r.interval.as_ref(),
            Duration::from_secs(60),
        );
        let kustomization_interval = self.duration(
            "flux.kustomizationInterval",
            r.kustomization_interval.as_ref(),
            Duration::from_secs(600),
        );
        let secret_ref = r.secret_ref.as_ref().map(|s| {
            if !is_dns_subdomain(&s.value) {
                self.problem(
                    "flux.secretRef",
                    line(s),
                    format!("`{}` is not a valid Secret name", s.value),
                    "name a Secret in flux-system",
                );
            }
            s.value.clone()
        });
        if url.starts_with("ssh://") && secret_ref.is_none() {
            self.problem(
                "flux.secretRef",
                at,
                "an ssh:// URL needs Git credentials",
                "seal a deploy key as a secret in flux-system and name it in flux.secretRef",
            );
        }
        if let Some(name) = &secret_ref
            && !secrets
                .iter()
                .any(|s| s.namespace == FLUX_NAMESPACE && &s.name == name)
        {
            tracing::debug!(secret = %name, "flux.secretRef is not seeded by the agent: it must already exist");
        }
        FluxConfig {
            url,
            branch,
            path,
            interval,
            kustomization_interval,
            secret_ref,
        }
    }

    fn deadlines(&mut self, raw: Option<RawDeadlines>) -> Deadlines {
        let d = Deadlines::default();
        let Some(r) = raw else { return d };
        Deadlines {
            talos_api: self.duration("deadlines.talosApi", r.talos_api.as_ref(), d.talos_api),
            etcd: self.duration("deadlines.etcd", r.etcd.as_ref(), d.etcd),
            kube_api: self.duration("deadlines.kubeApi", r.kube_api.as_ref(), d.kube_api),
            secrets: self.duration("deadlines.secrets", r.secrets.as_ref(), d.secrets),
            crds: self.duration("deadlines.crds", r.crds.as_ref(), d.crds),
            flux: self.duration("deadlines.flux", r.flux.as_ref(), d.flux),
            ready: self.duration("deadlines.ready", r.ready.as_ref(), d.ready),
        }
    }

    fn retry(&mut self, raw: Option<RawRetry>) -> RetryConfig {
        let d = RetryConfig::default();
        let Some(r) = raw else { return d };
        RetryConfig {
            initial: self.duration("retry.initial", r.initial.as_ref(), d.initial),
            max: self.duration("retry.max", r.max.as_ref(), d.max),
        }
    }
}

impl Deadlines {
    fn scaled(self, f: f64) -> Deadlines {
        let s = |d: Duration| d.mul_f64(f).max(Duration::from_millis(1));
        Deadlines {
            talos_api: s(self.talos_api),
            etcd: s(self.etcd),
            kube_api: s(self.kube_api),
            secrets: s(self.secrets),
            crds: s(self.crds),
            flux: s(self.flux),
            ready: s(self.ready),
        }
    }
}

/// Checks a TPM address: a device path, `tcp://HOST:PORT` or `unix:///PATH`.
pub fn check_tpm_address(addr: &str) -> Result<(), String> {
    if let Some(rest) = addr.strip_prefix("tcp://") {
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("`{addr}` has no port"))?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(format!("`{addr}` is not tcp://HOST:PORT"));
        }
        Ok(())
    } else if let Some(path) = addr.strip_prefix("unix://") {
        if path.starts_with('/') {
            Ok(())
        } else {
            Err(format!("`{addr}` is not unix:///ABSOLUTE/PATH"))
        }
    } else if addr.starts_with('/') {
        Ok(())
    } else {
        Err(format!("`{addr}` is not a TPM address"))
    }
}

fn check_git_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" | "ssh" | "http" => {}
        other => {
            return Err(format!(
                "scheme `{other}` is not supported by Flux's GitRepository"
            ));
        }
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{url}` has no host"));
    }
    if parsed.path().trim_matches('/').is_empty() {
        return Err(format!("`{url}` names no repository"));
    }
    Ok(())
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn is_data_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/agent/config.yaml"), &|_| None)
    }

    const GOOD: &str = "\
talos: { socket: /system/run/machined/machine.sock, bootstrapEtcd: true }
tpm: { device: /dev/tpmrm0, pcrs: [7], lockPcr: 15, nvIndex: '0x01c1b00a', saltKeyName: 000b0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef }
secrets:
  - { namespace: flux-system, name: sops-age, key: age.agekey }
bundle: { dir: /bundle, fetch: false }
flux: { url: https://github.com/OWNER/REPO, branch: main, path: ./kubernetes/flux-system, interval: 1m, kustomizationInterval: 10m }
status: /var/lib/bootstrap-agent/status.json
deadlines: { talosApi: 10m, etcd: 10m, kubeApi: 15m, secrets: 5m, crds: 5m, flux: 5m, ready: 15m }
retry: { initial: 1s, max: 30s }
";

    #[test]
    fn the_documented_example_is_accepted_with_every_field() {
        let c = parse(GOOD).unwrap();
        assert_eq!(
            c.cluster,
            ClusterAccess::Talos {
                socket: DEFAULT_TALOS_SOCKET.into(),
                bootstrap_etcd: true
            }
        );
        assert_eq!(c.tpm.nv_index, Some(0x01c1_b00a));
        assert_eq!(c.secrets[0].format, SecretFormat::AgeIdentity);
        assert_eq!(c.secrets[0].sealed, None);
        assert_eq!(c.flux.interval, Duration::from_secs(60));
        assert_eq!(c.deadlines.kube_api, Duration::from_secs(900));
        assert_eq!(c.retry.initial, Duration::from_secs(1));
    }

    #[test]
    fn defaults_fill_what_is_left_out() {
        let c =
            parse("kubernetes: { kubeconfig: kc.yaml }\nflux: { url: https://example.org/o/r }\n")
                .unwrap();
        assert_eq!(
            c.cluster,
            ClusterAccess::Kubeconfig {
                path: "/etc/agent/kc.yaml".into()
            }
        );
        assert_eq!(c.tpm.address, DEFAULT_TPM_DEVICE);
        assert_eq!(c.tpm.pcrs, vec![7]);
        assert_eq!(c.tpm.lock_pcr, 15);
        assert_eq!(c.status, PathBuf::from(DEFAULT_STATUS));
        assert_eq!(c.bundle.dir, PathBuf::from(DEFAULT_BUNDLE_DIR));
        assert_eq!(c.flux.path, "./");
    }

    #[test]
    fn every_unknown_field_is_reported_with_its_line_and_a_suggestion() {
        let err = parse("talos: {}\nflux: { url: https://e.org/o/r, brnch: main }\ntpm:\n  lockPCR: 15\nextra: 1\n").unwrap_err();
        let ConfigError::Invalid { problems, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(problems.len(), 3, "{err}");
        let text = err.to_string();
        assert!(text.contains("line 5: extra: unknown field"), "{text}");
        assert!(
            text.contains("flux.brnch") && text.contains("did you mean `branch`"),
            "{text}"
        );
        assert!(
            text.contains("line 4: tpm.lockPCR") && text.contains("`lockPcr`"),
            "{text}"
        );
    }

    #[test]
    fn several_mistakes_are_all_listed() {
        let text = "\
talos: { socket: relative.sock }
tpm: { pcrs: [7, 7, 24], lockPcr: 16 }
secrets:
  - { name: Bad_Name, key: age.agekey, sealed: not-armor }
  - { name: ok, key: token, format: weird }
flux: { url: ftp://example.org/o/r, path: ../outside, interval: soon }
";
        let err = parse(text).unwrap_err();
        let problems = err.problems();
        let joined = problems.join("\n");
        for needle in [
            "talos.socket",
            "PCR 7 is listed twice",
            "24 is not a PCR index",
            "tpm.lockPcr",
            "secrets[0].name",
            "secrets[0].sealed",
            "secrets[1].format",
            "flux.url",
            "flux.path",
            "flux.interval",
        ] {
            assert!(joined.contains(needle), "missing {needle} in:\n{joined}");
        }
        assert!(problems.len() >= 10, "{joined}");
        assert!(joined.contains("line 2:"), "{joined}");
    }

    #[test]
    fn talos_and_kubernetes_are_exclusive_and_one_is_required() {
        let both =
            parse("talos: {}\nkubernetes: { kubeconfig: /k }\nflux: { url: https://e.org/o/r }\n")
                .unwrap_err();
        assert!(both.to_string().contains("both `talos`"), "{both}");
        let neither = parse("flux: { url: https://e.org/o/r }\n").unwrap_err();
        assert!(
            neither
                .to_string()
                .contains("neither `talos` nor `kubernetes`"),
            "{neither}"
        );
    }

    #[test]
    fn age_identities_for_flux_need_an_agekey_key() {
        let err = parse("talos: {}\nflux: { url: https://e.org/o/r }\nsecrets: [ { name: sops-age, key: key.txt, format: ageIdentity } ]\n").unwrap_err();
        assert!(
            err.to_string().contains("kustomize-controller ignores it"),
            "{err}"
        );
    }

    #[test]
    fn ssh_sources_need_credentials() {
        let err = parse("talos: {}\nflux: { url: ssh://git@github.com/o/r }\n").unwrap_err();
        assert!(err.to_string().contains("flux.secretRef"), "{err}");
    }

    #[test]
    fn environment_overrides_win_and_are_validated() {
        let env = |k: &str| match k {
            env::TPM => Some("tcp://127.0.0.1:2321".to_string()),
            env::STATUS => Some("/tmp/s.json".to_string()),
            env::DEADLINE_SCALE => Some("0.5".to_string()),
            _ => None,
        };
        let c = Config::parse(GOOD, Path::new("c.yaml"), &env).unwrap();
        assert_eq!(c.tpm.address, "tcp://127.0.0.1:2321");
        assert_eq!(c.status, PathBuf::from("/tmp/s.json"));
        assert_eq!(c.deadlines.ready, Duration::from_secs(450));
        let bad = |k: &str| (k == env::TPM).then(|| "tcp://nohost".to_string());
        let err = Config::parse(GOOD, Path::new("c.yaml"), &bad).unwrap_err();
        assert!(err.to_string().contains("env BOOTSTRAP_AGENT_TPM"), "{err}");
    }

    #[test]
    fn syntax_errors_name_the_file_and_position() {
        let err = parse("talos: {\nflux: [\n").unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
        assert!(err.to_string().contains("config.yaml"), "{err}");
        let wrong_type =
            parse("talos: {}\nflux: { url: https://e.org/o/r }\ntpm: { lockPcr: fifteen }\n")
                .unwrap_err();
        assert!(
            wrong_type.to_string().contains("line 3") || wrong_type.to_string().contains("3:"),
            "{wrong_type}"
        );
    }

    #[test]
    fn references_that_do_not_exist_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "kubernetes: {{ kubeconfig: missing.yaml }}\nflux: {{ url: https://e.org/o/r }}\nbundle: {{ dir: {} }}\nsecrets: [ {{ name: s, key: k, sealedFile: nope.age }} ]\n",
            dir.path().join("no-bundle").display()
        );
        let c = Config::parse(&text, &dir.path().join("c.yaml"), &|_| None).unwrap();
        let problems = c.check_references();
        assert_eq!(problems.len(), 3, "{problems:?}");
    }
}
