//! Logging to stderr with `tracing`: Talos collects it (`talosctl logs ext-bootstrap-agent`
//! shows the raw bytes), so colour codes are written only when stderr is a terminal.
//! `RUST_LOG` filters (default `info`) with `target=level` directives and a bare default level,
//! as `tracing_subscriber::filter::Targets` reads them (no span or field filters: they would
//! need a regex engine in the static binary for nobody's benefit on a node);
//! `BOOTSTRAP_AGENT_LOG_FORMAT=json` switches to JSON lines. Records that dependencies write
//! through the `log` crate (rustls, reqwest) are not bridged: every failure they see reaches
//! the agent as an error, which the agent logs with its cause chain.

use std::io::IsTerminal;

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The filter `RUST_LOG` asks for; `info` when it is unset or unreadable.
fn filter(rust_log: Option<&str>) -> Targets {
    let mut targets = rust_log
        .and_then(|v| v.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO));
    // kube's client logs every failed request at ERROR ("failed with error client error
    // (Connect)") while the agent is only waiting for the API server; the agent logs its own
    // retries with the step and the cause. Shown only when RUST_LOG asks for kube_client.
    if !rust_log.is_some_and(names_kube) {
        targets = targets.with_target("kube_client", LevelFilter::OFF);
    }
    targets
}

/// Whether a directive in `RUST_LOG` names kube's crates (`kube_client=debug`, or a bare
/// `kube_client`, which enables every level of it).
fn names_kube(rust_log: &str) -> bool {
    rust_log.split(',').any(|d| d.trim().starts_with("kube"))
}

/// Installs the global subscriber. Safe to call once per process.
pub fn init() {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = filter(rust_log.as_deref());
    let json = std::env::var("BOOTSTRAP_AGENT_LOG_FORMAT").is_ok_and(|v| v == "json");
    let ansi = std::io::stderr().is_terminal();
    let registry = tracing_subscriber::registry().with(filter);
    let _ = if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr)
                    .with_target(false),
            )
            .try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(ansi)
                    .with_target(false),
            )
            .try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    fn enabled(f: &Targets, target: &str, level: Level) -> bool {
        f.would_enable(target, &level)
    }

    #[test]
    fn default_is_info_without_kube_client_noise() {
        let f = filter(None);
        assert!(enabled(&f, "bootstrap_agent::boot", Level::INFO));
        assert!(!enabled(&f, "bootstrap_agent::boot", Level::DEBUG));
        assert!(!enabled(&f, "kube_client::client", Level::ERROR));
    }

    #[test]
    fn rust_log_directives_are_read() {
        let f = filter(Some("warn,bootstrap_agent::kube=debug"));
        assert!(enabled(&f, "bootstrap_agent::kube::apply", Level::DEBUG));
        assert!(!enabled(&f, "bootstrap_agent::boot", Level::INFO));
        assert!(enabled(&f, "bootstrap_agent::boot", Level::WARN));
        assert!(!enabled(&f, "kube_client", Level::ERROR));
    }

    #[test]
    fn naming_kube_brings_its_client_back() {
        let f = filter(Some("info,kube_client=debug"));
        assert!(enabled(&f, "kube_client::client::builder", Level::DEBUG));
        let f = filter(Some("info,kube_client"));
        assert!(enabled(&f, "kube_client::client", Level::ERROR));
    }

    #[test]
    fn unreadable_rust_log_falls_back_to_info() {
        let f = filter(Some("bootstrap_agent=loud"));
        assert!(enabled(&f, "bootstrap_agent", Level::INFO));
        assert!(!enabled(&f, "bootstrap_agent", Level::DEBUG));
    }
}
