//! The extension's service spec (`extension/bootstrap-agent.yaml`), read the way Talos reads it:
//! entrypoint, args, environment, mounts and restart policy.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// Talos's restart policies for extension services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    Always,
    Never,
    /// Restart on a non-zero exit, stop on 0.
    UntilSuccess,
}

/// One bind mount of the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: String,
    pub destination: String,
    pub options: Vec<String>,
}

/// What the harness needs of the service spec.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub name: String,
    pub entrypoint: String,
    pub args: Vec<String>,
    /// `KEY=value` pairs, in order.
    pub environment: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    pub restart: Restart,
}

/// The repository's service spec.
pub fn spec_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../extension/bootstrap-agent.yaml")
}

impl ServiceSpec {
    /// Reads and checks `extension/bootstrap-agent.yaml`.
    pub fn load() -> Result<ServiceSpec, String> {
        let path = spec_path();
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read the service spec {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<ServiceSpec, String> {
        let doc: Value = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        let s = |v: &Value, what: &str| -> Result<String, String> {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("{what} is missing or not a string"))
        };
        let name = s(&doc["name"], "name")?;
        let container = &doc["container"];
        let entrypoint = s(&container["entrypoint"], "container.entrypoint")?;
        let args = match container["args"].as_array() {
            Some(a) => a
                .iter()
                .map(|v| s(v, "container.args[]"))
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let mut environment = Vec::new();
        for v in container["environment"].as_array().into_iter().flatten() {
            let kv = s(v, "container.environment[]")?;
            let (k, val) = kv
                .split_once('=')
                .ok_or_else(|| format!("environment entry {kv:?} is not KEY=value"))?;
            environment.push((k.to_string(), val.to_string()));
        }
        let mut mounts = Vec::new();
        for m in container["mounts"].as_array().into_iter().flatten() {
            mounts.push(Mount {
                source: s(&m["source"], "container.mounts[].source")?,
                destination: s(&m["destination"], "container.mounts[].destination")?,
                options: m["options"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|o| s(o, "container.mounts[].options[]"))
                    .collect::<Result<_, _>>()?,
            });
        }
        let restart = match doc["restart"].as_str() {
            Some("always") => Restart::Always,
            Some("never") => Restart::Never,
            Some("untilSuccess") => Restart::UntilSuccess,
            other => return Err(format!("restart {other:?} is not a Talos restart policy")),
        };
        Ok(ServiceSpec {
            name,
            entrypoint,
            args,
            environment,
            mounts,
            restart,
        })
    }

    /// The spec's args with every absolute path moved under `root` (the node's host root).
    pub fn mapped_args(&self, root: &Path) -> Vec<String> {
        self.args
            .iter()
            .map(|a| {
                if a.starts_with('/') {
                    host_path(root, a).display().to_string()
                } else {
                    a.clone()
                }
            })
            .collect()
    }

    /// The mount whose destination is `destination`.
    pub fn mount_at(&self, destination: &str) -> Option<&Mount> {
        self.mounts.iter().find(|m| m.destination == destination)
    }

    /// The path of `--config` as the spec passes it (inside the container).
    pub fn config_path(&self) -> Option<&str> {
        self.args
            .iter()
            .position(|a| a == "--config")
            .and_then(|i| self.args.get(i + 1))
            .map(String::as_str)
    }
}

/// `path` (absolute, as the node sees it) under the host root `root`.
pub fn host_path(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}
