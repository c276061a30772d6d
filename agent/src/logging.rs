//! Logging to stderr with `tracing`: Talos collects it (`talosctl logs ext-bootstrap-agent`
//! shows the raw bytes), so colour codes are written only when stderr is a terminal.
//! `RUST_LOG` filters (default `info`); `BOOTSTRAP_AGENT_LOG_FORMAT=json` switches to JSON lines.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Safe to call once per process.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("BOOTSTRAP_AGENT_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
