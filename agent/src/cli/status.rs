//! `bootstrap-agent status`: reads the agent's status document from the node through the Talos
//! API (`MachineService/Read` over mTLS, credentials from the talosconfig as talosctl finds it)
//! and renders it.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::duration::parse_duration;
use crate::error::{Classify, ErrorKind};
use crate::exit::Exit;
use crate::status::{Phase, Status};
use crate::talos::{OperatorClient, TalosConfigOptions, TalosConfigSelection, TalosError};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// talosconfig file (default: $TALOSCONFIG, then ~/.talos/config, as talosctl).
    #[arg(long)]
    pub talosconfig: Option<PathBuf>,
    /// Context of the talosconfig to use (default: its current context).
    #[arg(long)]
    pub context: Option<String>,
    /// Node to read from (default: the context's first node).
    #[arg(long, short = 'n', value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// Endpoints to connect to (default: the context's endpoints).
    #[arg(long, short = 'e', value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Print the status document as JSON.
    #[arg(long)]
    pub json: bool,
    /// Keep reading until the agent is ready, waiting or failed.
    #[arg(long)]
    pub watch: bool,
    /// How often `--watch` reads, e.g. 2s.
    #[arg(long, default_value = "2s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Path of the status file on the node.
    #[arg(long, default_value = crate::status::DEFAULT_PATH)]
    pub path: String,
    /// Read a local status file instead of going through the Talos API (on the node itself, or
    /// a copy from `talosctl read`).
    #[arg(long, conflicts_with_all = ["talosconfig", "context", "nodes", "endpoints"])]
    pub file: Option<PathBuf>,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    parse_duration(s).and_then(|d| {
        if d.is_zero() {
            Err("must be longer than zero".into())
        } else {
            Ok(d)
        }
    })
}

#[derive(Debug, thiserror::Error)]
enum StatusCommandError {
    #[error(transparent)]
    TalosConfig(#[from] crate::talos::TalosConfigError),
    #[error(transparent)]
    Talos(#[from] TalosError),
    #[error("cannot read {path}: {source}")]
    Local {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} is not a bootstrap-agent status document: {source}")]
    Decode {
        what: String,
        source: serde_json::Error,
    },
}

enum Source {
    Local(PathBuf),
    Remote {
        client: Box<OperatorClient>,
        path: String,
    },
}

impl Source {
    async fn read(&mut self) -> Result<Status, StatusCommandError> {
        let (what, bytes) = match self {
            Source::Local(path) => {
                let bytes = std::fs::read(&*path).map_err(|source| StatusCommandError::Local {
                    path: path.clone(),
                    source,
                })?;
                (path.display().to_string(), bytes)
            }
            Source::Remote { client, path } => {
                let bytes = client.read(path).await?;
                (
                    format!("{path} on {}", client.node().unwrap_or(client.endpoint())),
                    bytes,
                )
            }
        };
        serde_json::from_slice(&bytes).map_err(|source| StatusCommandError::Decode { what, source })
    }
}

/// Reads and renders the status: [`Exit::Success`] when read (ready, running or waiting),
/// [`Exit::Permanent`] when the agent reports a failure, [`Exit::Transient`] when the status
/// cannot be read, [`Exit::Config`] when the talosconfig is unusable or the node refuses it (its
/// client certificate rejected, a role without access).
pub fn run(args: &StatusArgs) -> Exit {
    super::block_on(0, async {
        match read(args).await {
            Ok(exit) => exit,
            Err(e) => {
                eprintln!("bootstrap-agent status: {e}");
                if let StatusCommandError::Talos(t) = &e
                    && let Some(hint) = t.hint()
                {
                    eprintln!("hint: {hint}");
                }
                // 3 is the agent's failure; a talosconfig the node will not take is 2.
                match e {
                    StatusCommandError::TalosConfig(_) => Exit::Config,
                    StatusCommandError::Talos(t) if t.kind() == ErrorKind::Config => Exit::Config,
                    _ => Exit::Transient,
                }
            }
        }
    })
}

async fn read(args: &StatusArgs) -> Result<Exit, StatusCommandError> {
    let mut source = match &args.file {
        Some(path) => Source::Local(path.clone()),
        None => {
            let selection = TalosConfigSelection::load(&TalosConfigOptions {
                talosconfig: args.talosconfig.clone(),
                context: args.context.clone(),
                nodes: args.nodes.clone(),
                endpoints: args.endpoints.clone(),
            })?;
            let client = OperatorClient::connect(&selection).await?;
            Source::Remote {
                client: Box::new(client),
                path: args.path.clone(),
            }
        }
    };
    let mut last: Option<String> = None;
    loop {
        let status = source.read().await?;
        let text = if args.json {
            serde_json::to_string_pretty(&status).map_err(|source| StatusCommandError::Decode {
                what: "status".into(),
                source,
            })?
        } else {
            status.render()
        };
        if last.as_deref() != Some(text.as_str()) {
            println!("{}", text.trim_end());
            last = Some(text);
        }
        let settled = matches!(status.phase, Phase::Ready | Phase::Failed | Phase::Waiting);
        if !args.watch || settled {
            return Ok(if status.phase == Phase::Failed {
                Exit::Permanent
            } else {
                Exit::Success
            });
        }
        tokio::time::sleep(args.interval).await;
    }
}
