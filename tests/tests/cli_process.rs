//! Process-level guarantees of the `bootstrap-agent` binary: core dumps are off for every
//! command, and the command-line contract (help with examples, exit codes) holds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bootstrap_agent_tests::swtpm::agent_binary;

fn agent() -> Command {
    Command::new(agent_binary().unwrap())
}

#[test]
fn core_dumps_are_disabled_while_the_agent_runs() {
    let dir = tempfile::tempdir().unwrap();
    let status = dir.path().join("status.json");
    // A status document still running: `status --watch` keeps the process alive.
    std::fs::write(
        &status,
        br#"{"schemaVersion":1,"agentVersion":"0","phase":"running","message":"m","startedAt":"t","updatedAt":"t","runs":1,"steps":[]}"#,
    )
    .unwrap();
    // Start it with core dumps allowed, so that only the agent can have turned them off.
    let mut child = Command::new("sh")
        .args(["-c", "ulimit -c unlimited && exec \"$0\" \"$@\""])
        .arg(agent_binary().unwrap())
        .args(["status", "--watch", "--interval", "100ms", "--file"])
        .arg(&status)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let limits = format!("/proc/{}/limits", child.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    let core = loop {
        let text = std::fs::read_to_string(&limits).unwrap_or_default();
        let line = text
            .lines()
            .find(|l| l.starts_with("Max core file size"))
            .unwrap_or("")
            .to_string();
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(4..6) == Some(&["0", "0"][..]) || Instant::now() > deadline {
            break line;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(
        fields.get(4..6),
        Some(&["0", "0"][..]),
        "soft and hard core limits: {core}"
    );
}

#[test]
fn help_has_examples_and_exit_codes() {
    let out = agent().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "Examples:",
        "bootstrap-agent status --nodes",
        "Exit codes:",
        "2  configuration error",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    let version = agent().arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8(version.stdout).unwrap().trim(),
        format!("bootstrap-agent {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn status_of_a_failed_run_exits_3_and_an_unreadable_one_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let failed = dir.path().join("failed.json");
    std::fs::write(
        &failed,
        br#"{"schemaVersion":1,"agentVersion":"0","phase":"failed","message":"step ready failed","startedAt":"t","updatedAt":"t","runs":2,"steps":[],
            "lastError":{"step":"ready","kind":"permanent","message":"Kustomization flux-system/flux-system: kustomize build failed","hint":"fix it in Git","at":"t"}}"#,
    )
    .unwrap();
    let out = agent()
        .args(["status", "--file"])
        .arg(&failed)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("FAILED") && text.contains("hint: fix it in Git"),
        "{text}"
    );

    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, b"{").unwrap();
    let out = agent()
        .args(["status", "--file"])
        .arg(&garbage)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("is not a bootstrap-agent status document")
    );
}
