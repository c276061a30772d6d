//! Where Flux syncs from: a Git repository URL, a branch and a path inside the repository, each
//! checked as Flux's GitRepository and Kustomization will read it.

use std::fmt;
use std::str::FromStr;

use crate::error::Invalid;

/// The repository URL: `https://`, `http://` or `ssh://` with a host and a repository path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitUrl(String);

impl FromStr for GitUrl {
    type Err = Invalid;

    fn from_str(url: &str) -> Result<Self, Invalid> {
        let invalid = |message: String| {
            Invalid::new(
                message,
                "use https://HOST/OWNER/REPO or ssh://git@HOST/OWNER/REPO",
            )
        };
        let parsed =
            reqwest::Url::parse(url).map_err(|e| invalid(format!("`{url}` is not a URL: {e}")))?;
        match parsed.scheme() {
            "https" | "ssh" | "http" => {}
            other => {
                return Err(invalid(format!(
                    "scheme `{other}` is not supported by Flux's GitRepository"
                )));
            }
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(invalid(format!("`{url}` has no host")));
        }
        if parsed.path().trim_matches('/').is_empty() {
            return Err(invalid(format!("`{url}` names no repository")));
        }
        Ok(GitUrl(url.to_string()))
    }
}

impl GitUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// An `ssh://` URL: Flux needs Git credentials for it.
    pub fn is_ssh(&self) -> bool {
        self.0.starts_with("ssh://")
    }
}

/// A branch name Git would accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branch(String);

impl FromStr for Branch {
    type Err = Invalid;

    fn from_str(s: &str) -> Result<Self, Invalid> {
        if s.trim().is_empty() || s.contains(char::is_whitespace) || s.contains("..") {
            Err(Invalid::new(
                format!("`{s}` is not a branch name"),
                "e.g. main",
            ))
        } else {
            Ok(Branch(s.to_string()))
        }
    }
}

impl Default for Branch {
    fn default() -> Self {
        Branch("main".into())
    }
}

impl Branch {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A path inside the repository, written as Flux writes it (`./kubernetes/flux-system`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoPath(String);

impl FromStr for RepoPath {
    type Err = Invalid;

    fn from_str(s: &str) -> Result<Self, Invalid> {
        let v = s.trim();
        if v.starts_with('/') || v.split('/').any(|c| c == "..") {
            return Err(Invalid::new(
                format!("`{v}` must be relative to the repository root and stay inside it"),
                "e.g. ./kubernetes/flux-system",
            ));
        }
        Ok(RepoPath(if v.starts_with("./") || v == "." {
            v.to_string()
        } else {
            format!("./{v}")
        }))
    }
}

impl Default for RepoPath {
    /// The repository root.
    fn default() -> Self {
        RepoPath("./".into())
    }
}

impl RepoPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! display {
    ($($t:ty),+) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    )+};
}
display!(GitUrl, Branch, RepoPath);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_checked_as_flux_reads_them() {
        assert!("https://github.com/o/r".parse::<GitUrl>().is_ok());
        assert!(
            "ssh://git@github.com/o/r"
                .parse::<GitUrl>()
                .unwrap()
                .is_ssh()
        );
        for bad in ["ftp://e.org/o/r", "https://e.org", "not a url"] {
            assert!(bad.parse::<GitUrl>().is_err(), "{bad}");
        }
        assert!("feature/x".parse::<Branch>().is_ok());
        assert!("a..b".parse::<Branch>().is_err());
        assert_eq!(
            "kubernetes/flux-system"
                .parse::<RepoPath>()
                .unwrap()
                .as_str(),
            "./kubernetes/flux-system"
        );
        assert!("../outside".parse::<RepoPath>().is_err());
        assert!("/abs".parse::<RepoPath>().is_err());
    }
}
