//! `bootstrap-agent run`: the service entrypoint on the node.
//!
//! Talos runs the agent with `restart: untilSuccess`: every non-zero exit is followed by a new
//! start 5 s later, forever (siderolabs/talos
//! `internal/app/machined/pkg/system/runner/restart/restart.go`, `DefaultOptions` line 80 and
//! `Run` lines 132-155, at ad88231). A configuration error or a permanent failure would fail the
//! same way at every start, so `run` does not exit on them: it records the failure in the status
//! file, logs it once, and waits for the configuration file to change, then runs again (on
//! Talos, a changed `ExtensionServiceConfig` also restarts the service:
//! `internal/app/machined/pkg/controllers/runtime/extension_service.go`, `handleRestart`, lines
//! 202-226). A transient failure (a deadline passed) still exits 1, so that Talos starts it again.
//! `--once` exits in every case, with the exit code of the outcome.
//!
//! One exception to exiting on a transient failure: once the `unseal` step has decrypted the
//! sealed inputs, the TPM seed is locked until the next boot, so a new process could not
//! decrypt them again. While the decrypted inputs are not in the cluster yet, a transient
//! failure runs the sequence again in this process (after `retry.max`) instead of exiting
//! (except with `--once`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::{error, info, warn};

use crate::boot::{RunResult, Sequence};
use crate::bundle::Bundle;
use crate::config::{Config, ConfigError, DEFAULT_STATUS, env};
use crate::error::ErrorKind;
use crate::exit::Exit;
use crate::plan::Plan;
use crate::preflight;
use crate::status::{ErrorRecord, Phase, Status, StatusFile, now};
use crate::steps::{Context, StepId};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Configuration file.
    #[arg(long, default_value = super::DEFAULT_CONFIG, env = "BOOTSTRAP_AGENT_CONFIG")]
    pub config: PathBuf,
    /// Exit when the run waits for the operator or fails, with the exit code of the outcome,
    /// instead of waiting for the configuration to change.
    #[arg(long)]
    pub once: bool,
}

/// How often a waiting agent looks at its configuration file.
const CONFIG_POLL: Duration = Duration::from_secs(5);

/// What waiting for a changed configuration says in the status.
const WAITING_FOR_CHANGE: &str = "waiting for the configuration to change before running again";

/// Runs the boot sequence.
pub fn run(args: &RunArgs) -> Exit {
    super::block_on(2, boot(args))
}

/// How one pass over the configuration ended.
enum Pass {
    Ready,
    /// The operator has to seal an input.
    Waiting,
    /// The run failed; the status says why.
    Failed(ErrorKind),
    /// Stopped by a signal.
    Stopped,
}

async fn boot(args: &RunArgs) -> Exit {
    let mut stop = match Shutdown::listen() {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot listen for SIGTERM and SIGINT");
            return Exit::Transient;
        }
    };
    loop {
        // Read once: the same bytes are validated and later compared to notice a change.
        let text = std::fs::read(&args.config);
        let pass = match load(&args.config, &text) {
            Ok((config, bundle)) => run_once(config, bundle, args.once, &mut stop).await,
            Err(e) => {
                error!("{e}");
                report_config_error(&e, args.once);
                Pass::Failed(ErrorKind::Config)
            }
        };
        let after = match pass {
            Pass::Ready => return Exit::Success,
            Pass::Stopped => return Exit::Transient,
            Pass::Waiting if args.once => return Exit::Success,
            Pass::Failed(kind) if args.once || kind == ErrorKind::Transient => {
                return kind.into();
            }
            Pass::Waiting => {
                info!(config = %args.config.display(), "waiting for the configuration to change (Talos restarts the service when it does)");
                Exit::Success
            }
            Pass::Failed(kind) => {
                warn!(config = %args.config.display(), "not exiting: a restart would fail the same way; waiting for the configuration to change (Talos restarts the service when it does)");
                kind.into()
            }
        };
        tokio::select! {
            () = changed(&args.config, text.ok()) => info!("configuration changed; running again"),
            () = stop.recv() => return after,
        }
    }
}

/// One run of the boot sequence over a loaded configuration.
async fn run_once(config: Config, bundle: Option<Bundle>, once: bool, stop: &mut Shutdown) -> Pass {
    let objects = bundle
        .as_ref()
        .map(Plan::bundle_objects)
        .unwrap_or_default();
    let plan = Plan::new(&config, objects);
    let mut context = Context::new(config.steps.clone(), bundle);
    let file = StatusFile::new(&config.status);
    loop {
        let previous = previous_status(&file);
        let mut sequence = Sequence::new(&plan, context, file.clone(), previous, config.retry);
        let result = tokio::select! {
            r = sequence.run() => r,
            () = stop.recv() => {
                info!("stopped by signal");
                return Pass::Stopped;
            }
        };
        let (steps, mut status) = sequence.into_parts();
        context = steps;
        return match result {
            RunResult::Ready => Pass::Ready,
            RunResult::Waiting => Pass::Waiting,
            // The seed is locked and the decrypted inputs are not in the cluster yet: a new
            // process could not decrypt them again this boot, so this one runs again.
            RunResult::Failed(ErrorKind::Transient) if context.holds_unsealed() && !once => {
                let pause = config.retry.max;
                warn!(
                    pause = ?pause,
                    "keeping the unsealed inputs in memory and running again (the seed is locked until the next boot, so a restart could not unseal them)"
                );
                tokio::select! {
                    () = tokio::time::sleep(pause) => continue,
                    () = stop.recv() => {
                        info!("stopped by signal");
                        Pass::Stopped
                    }
                }
            }
            RunResult::Failed(kind) => {
                if kind != ErrorKind::Transient {
                    status.message = format!("{}; {WAITING_FOR_CHANGE}", status.message);
                    if let Err(e) = file.write(&mut status) {
                        warn!(error = %e, "status file not written");
                    }
                }
                Pass::Failed(kind)
            }
        };
    }
}

/// The status document of the previous run, if it reads; an unreadable one is kept aside.
fn previous_status(file: &StatusFile) -> Option<Status> {
    match file.load() {
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
fn report_config_error(e: &ConfigError, once: bool) {
    let path = std::env::var(env::STATUS).unwrap_or_else(|_| DEFAULT_STATUS.to_string());
    let file = StatusFile::new(path);
    let mut status = Status::new(&StepId::ALL);
    if let Ok(Some(prev)) = file.load() {
        status.runs = prev.runs.saturating_add(1);
    }
    status.phase = Phase::Failed;
    status.message = if once {
        "the configuration is not valid".into()
    } else {
        format!("the configuration is not valid; {WAITING_FOR_CHANGE}")
    };
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

/// Returns once the file at `path` reads differently from `before` (polled, [`CONFIG_POLL`]).
async fn changed(path: &Path, before: Option<Vec<u8>>) {
    loop {
        tokio::time::sleep(CONFIG_POLL).await;
        if std::fs::read(path).ok() != before {
            return;
        }
    }
}

/// SIGTERM (Talos stopping the service) and SIGINT, listened for once for the whole process so
/// that a signal between two waits is not missed.
struct Shutdown {
    term: Signal,
    int: Signal,
}

impl Shutdown {
    fn listen() -> std::io::Result<Shutdown> {
        Ok(Shutdown {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
