//! Logging to stderr with `tracing`: Talos collects it (`talosctl logs ext-bootstrap-agent`
//! shows the raw bytes), so colour codes are written only when stderr is a terminal.
//! `RUST_LOG` filters (default `info`); `BOOTSTRAP_AGENT_LOG_FORMAT=json` switches to JSON lines.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Safe to call once per process.
pub fn init() {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // kube's client logs every failed request at ERROR ("failed with error client error
    // (Connect)") while the agent is only waiting for the API server; the agent logs its own
    // retries with the step and the cause. Shown only when RUST_LOG asks for kube_client.
    let asked = std::env::var("RUST_LOG").is_ok_and(|v| v.contains("kube"));
    if !asked && let Ok(quiet) = "kube_client=off".parse() {
        filter = filter.add_directive(quiet);
    }
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
