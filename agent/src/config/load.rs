//! Reading and parsing: the file, its syntax, the unknown-field pass, then validation.

use std::path::Path;

use super::raw::RawConfig;
use super::unknown::unknown_fields;
use super::validate::Validator;
use super::{Config, ConfigError, Problem};

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
        match v.config(raw, path, env) {
            Some(config) if v.problems.is_empty() => Ok(config),
            _ => {
                v.problems.sort_by_key(|p| p.line.unwrap_or(u64::MAX));
                Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    problems: v.problems,
                })
            }
        }
    }
}
