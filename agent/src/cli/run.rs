//! `bootstrap-agent run`: the service entrypoint on the node.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use tracing::{error, info, warn};

use crate::boot::{RunResult, Sequence};
use crate::bundle::Bundle;
use crate::config::{Config, ConfigError, DEFAULT_STATUS, env};
use crate::exit::Exit;
use crate::plan::Plan;
use crate::preflight;
use crate::status::{ErrorKind, ErrorRecord, Phase, Status, StatusFile, now};
use crate::steps::{Context, StepId};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Configuration file.
    #[arg(long, default_value = super::DEFAULT_CONFIG, env = "BOOTSTRAP_AGENT_CONFIG")]
    pub config: PathBuf,
    /// Exit when the run waits for the operator instead of waiting for the configuration to
    /// change.
    #[arg(long)]
    pub once: bool,
}

/// How often a waiting agent looks at its configuration file for the sealed inputs.
const CONFIG_POLL: Duration = Duration::from_secs(5);

/// Runs the boot sequence.
pub fn run(args: &RunArgs) -> Exit {
    super::block_on(2, boot(args))
}

async fn boot(args: &RunArgs) -> Exit {
    loop {
        // Read once: the same bytes are validated and later compared to notice a change.
        let text = std::fs::read(&args.config);
        let (config, bundle) = match load(&args.config, &text) {
            Ok(loaded) => loaded,
            Err(e) => {
                error!("{e}");
                report_config_error(&e);
                return Exit::Config;
            }
        };
        let objects = bundle
            .as_ref()
            .map(Plan::bundle_objects)
            .unwrap_or_default();
        let plan = Plan::new(&config, objects);
        let context = Context::new(config.steps.clone(), bundle);
        let file = StatusFile::new(&config.status);
        let previous = match file.load() {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "previous status unreadable; starting afresh");
                match file.set_aside() {
                    Ok(aside) => {
                        warn!(kept = %aside.display(), "unreadable status document kept aside")
                    }
                    Err(e) => {
                        warn!(error = %e, "could not keep the unreadable status document aside")
                    }
                }
                None
            }
        };
        let mut sequence = Sequence::new(&plan, context, file, previous, config.retry);
        let result = tokio::select! {
            r = sequence.run() => r,
            () = shutdown() => {
                info!("stopped by signal");
                return Exit::Transient;
            }
        };
        match result {
            RunResult::Ready => return Exit::Success,
            RunResult::Failed(kind) => return kind.into(),
            RunResult::Waiting if args.once => return Exit::Success,
            RunResult::Waiting => {
                info!(config = %args.config.display(), "waiting for the configuration to change (Talos restarts the service when it does)");
                tokio::select! {
                    () = changed(&args.config, text.ok()) => info!("configuration changed; running again"),
                    () = shutdown() => return Exit::Success,
                }
            }
        }
    }
}

/// Validates the configuration read from `path` and runs the same offline checks as `plan`;
/// returns it with the embedded bundle they read.
fn load(
    path: &Path,
    read: &std::io::Result<Vec<u8>>,
) -> Result<(Config, Option<Bundle>), ConfigError> {
    let read_error = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let bytes = read
        .as_ref()
        .map_err(|e| read_error(std::io::Error::new(e.kind(), e.to_string())))?;
    let text = std::str::from_utf8(bytes)
        .map_err(|e| read_error(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    let config = Config::parse(text, path, &|name| std::env::var(name).ok())?;
    let checked = preflight::check(&config);
    if checked.problems.is_empty() {
        Ok((config, checked.bundle))
    } else {
        Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            problems: checked.problems,
        })
    }
}

/// Puts a configuration error in the status file too, so that `bootstrap-agent status` shows it.
fn report_config_error(e: &ConfigError) {
    let path = std::env::var(env::STATUS).unwrap_or_else(|_| DEFAULT_STATUS.to_string());
    let file = StatusFile::new(path);
    let mut status = Status::new(&StepId::ALL);
    if let Ok(Some(prev)) = file.load() {
        status.runs = prev.runs.saturating_add(1);
    }
    status.phase = Phase::Failed;
    status.message = "the configuration is not valid".into();
    status.last_error = Some(ErrorRecord {
        step: StepId::TalosApi,
        kind: ErrorKind::Config,
        message: e.to_string(),
        hint: Some("fix the ExtensionServiceConfig `bootstrap-agent`; Talos restarts the service when it changes".into()),
        at: now(),
    });
    if let Err(e) = file.write(&mut status) {
        warn!(error = %e, "could not record the configuration error in the status file");
    }
}

async fn changed(path: &Path, before: Option<Vec<u8>>) {
    loop {
        tokio::time::sleep(CONFIG_POLL).await;
        if std::fs::read(path).ok() != before {
            return;
        }
    }
}

async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
