//! The built binary answers `--version` and `--help`. Also makes `cargo test --workspace` (and
//! nextest) build `bootstrap-agent` itself, which the end-to-end tests in `tests/` run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_bootstrap-agent");

#[test]
fn version_and_help() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for word in ["run", "status", "plan", "tpm", "Exit codes"] {
        assert!(text.contains(word), "{word} missing from --help:\n{text}");
    }
}
