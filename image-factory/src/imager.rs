//! The imager invocation: `docker|podman run ... ghcr.io/siderolabs/imager:VERSION -` with the
//! profile on stdin. Run when a working container engine exists, printed otherwise.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::profile::{self, EXTENSION_MOUNT, KEYS_MOUNT, ProfileInputs};

#[derive(Debug, thiserror::Error)]
pub enum ImagerError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("rendering the imager profile: {0}")]
    Render(String),
    #[error("missing SecureBoot key material {}: generate it with `talosctl gen secureboot uki --common-name NAME`, `talosctl gen secureboot pcr` and `talosctl gen secureboot database` (output directory --output {})", missing.display(), keys.display())]
    MissingKey { missing: PathBuf, keys: PathBuf },
    #[error("{} is not an OCI image layout (no oci-layout file): build the extension first (`make extension`)", .0.display())]
    NoExtension(PathBuf),
    #[error("`{engine} run` failed with {status}; the profile and command are above")]
    Failed { engine: String, status: String },
}

/// Everything imager needs, as host paths.
#[derive(Debug, Clone)]
pub struct ImagerInputs {
    pub profile: ProfileInputs,
    /// Directory with `uki-signing-key.pem`, `uki-signing-cert.pem`, `pcr-signing-key.pem`
    /// (and `PK.auth`, `KEK.auth`, `db.auth` for the ISO).
    pub keys: PathBuf,
    /// Our extension's OCI layout directory.
    pub extension: PathBuf,
    pub out: PathBuf,
}

/// A rendered invocation.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// Arguments after the engine name (`run --rm -i ...`).
    pub args: Vec<String>,
    pub profile_yaml: String,
}

fn absolute(p: &Path) -> Result<PathBuf, ImagerError> {
    std::path::absolute(p).map_err(|source| ImagerError::Io {
        path: p.to_path_buf(),
        source,
    })
}

/// The files imager will read from the keys directory.
pub fn required_keys(kind: profile::Kind) -> Vec<&'static str> {
    let mut keys = vec![
        "uki-signing-key.pem",
        "uki-signing-cert.pem",
        "pcr-signing-key.pem",
    ];
    if kind == profile::Kind::Iso {
        keys.extend(["PK.auth", "KEK.auth", "db.auth"]);
    }
    keys
}

/// Checks the inputs exist and renders profile and command line.
pub fn plan(inputs: &ImagerInputs) -> Result<Invocation, ImagerError> {
    for key in required_keys(inputs.profile.kind) {
        let path = inputs.keys.join(key);
        if !path.is_file() {
            return Err(ImagerError::MissingKey {
                missing: path,
                keys: inputs.keys.clone(),
            });
        }
    }
    if !inputs.extension.join("oci-layout").is_file() {
        return Err(ImagerError::NoExtension(inputs.extension.clone()));
    }
    let profile_yaml =
        profile::render(&inputs.profile).map_err(|e| ImagerError::Render(e.to_string()))?;
    let mount = |host: &Path, inside: &str, ro: bool| -> Result<String, ImagerError> {
        Ok(format!(
            "{}:{inside}{}",
            absolute(host)?.display(),
            if ro { ":ro" } else { "" }
        ))
    };
    let args = vec![
        "run".to_string(),
        "--rm".to_string(),
        "-i".to_string(),
        "-v".to_string(),
        mount(&inputs.out, "/out", false)?,
        "-v".to_string(),
        mount(&inputs.keys, KEYS_MOUNT, true)?,
        "-v".to_string(),
        mount(&inputs.extension, EXTENSION_MOUNT, true)?,
        format!("ghcr.io/siderolabs/imager:{}", inputs.profile.talos_version),
        "-".to_string(),
    ];
    Ok(Invocation { args, profile_yaml })
}

/// The first of docker/podman whose engine answers (`ENGINE info` succeeds).
pub fn working_engine() -> Option<String> {
    ["docker", "podman"].into_iter().find_map(|engine| {
        Command::new(engine)
            .arg("info")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()
            .filter(|s| s.success())
            .map(|_| engine.to_string())
    })
}

/// Shell-quotes one argument for the printed command.
fn quote(arg: &str) -> String {
    if arg
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@,+".contains(&b))
    {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

impl Invocation {
    /// The command line as a shell would take it, reading the profile from `profile_path`.
    pub fn shell_command(&self, engine: &str, profile_path: &Path) -> String {
        let mut parts = vec![engine.to_string()];
        parts.extend(self.args.iter().map(|a| quote(a)));
        format!(
            "{} < {}",
            parts.join(" "),
            quote(&profile_path.display().to_string())
        )
    }

    /// Writes the profile next to the outputs (mode 0600: it may embed cluster secrets).
    pub fn write_profile(&self, path: &Path) -> Result<(), ImagerError> {
        use std::os::unix::fs::OpenOptionsExt;
        let io = |source| ImagerError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        f.write_all(self.profile_yaml.as_bytes()).map_err(io)
    }

    /// Runs imager with `engine`, the profile on stdin.
    pub fn run(&self, engine: &str) -> Result<(), ImagerError> {
        let io = |source| ImagerError::Io {
            path: PathBuf::from(engine),
            source,
        };
        let mut child = Command::new(engine)
            .args(&self.args)
            .stdin(Stdio::piped())
            .spawn()
            .map_err(io)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(self.profile_yaml.as_bytes()).map_err(io)?;
        }
        let status = child.wait().map_err(io)?;
        if status.success() {
            Ok(())
        } else {
            Err(ImagerError::Failed {
                engine: engine.to_string(),
                status: status.to_string(),
            })
        }
    }
}
