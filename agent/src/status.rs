//! The status document: what the agent is doing and has done, written atomically to a host path
//! at every change so that an operator can read it with `talosctl read` or `bootstrap-agent
//! status`. It never holds secret material.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::duration::format_short;
pub use crate::error::ErrorKind;
use crate::kube::{ObjectReport, ObjectState};
use crate::steps::{Awaiting, StepId};

/// Where the agent writes its status on the host (readable with `talosctl read`).
pub const DEFAULT_PATH: &str = "/var/lib/bootstrap-agent/status.json";

/// Version of the document's shape; bump on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub schema_version: u32,
    pub agent_version: String,
    pub phase: Phase,
    /// One line saying where things stand.
    pub message: String,
    /// When the current run started (RFC 3339).
    pub started_at: String,
    pub updated_at: String,
    /// How many runs this status file has seen (restarts included).
    pub runs: u32,
    pub steps: Vec<StepRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<ErrorRecord>,
    /// Set while the agent waits for sealed inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<TpmRecord>,
    /// One line per object the agent applied or watches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<ObjectRecord>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Working through the steps.
    Running,
    /// Waiting for the operator (sealed inputs); not a failure.
    Waiting,
    /// Every step is done: Flux reports Ready.
    Ready,
    /// A step failed; `lastError` says why.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepRecord {
    pub step: StepId,
    pub state: StepState,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// What the step found or did ("already bootstrapped", "3 created").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The last error of this step, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A step record changes only through these transitions; each names the states it may start
/// from (checked in debug builds), and all of them go through [`StepRecord::transition_to`].
/// The model is zincati's update agent: one `transition_to` behind named transitions
/// (coreos/zincati, `src/update_agent/mod.rs`, `UpdateAgentMachineState::transition_to`, line
/// 127 at be76c4a).
impl StepRecord {
    /// A step that has not started.
    pub fn pending(step: StepId) -> StepRecord {
        StepRecord {
            step,
            state: StepState::Pending,
            attempts: 0,
            started_at: None,
            finished_at: None,
            duration_ms: None,
            message: None,
            error: None,
        }
    }

    fn transition_to(&mut self, to: StepState) {
        debug_assert!(
            self.state.may_become(to),
            "step {}: transition not allowed: {:?} to {:?}",
            self.step,
            self.state,
            to
        );
        self.state = to;
    }

    /// Done in an earlier run (a durable step): not repeated in this one.
    pub fn carry_over(&mut self, earlier: &StepRecord) {
        self.transition_to(StepState::Done);
        self.attempts = 0;
        self.finished_at = earlier.finished_at.clone();
        self.message = Some(format!(
            "done in an earlier run ({})",
            earlier
                .message
                .as_deref()
                .unwrap_or("recorded in the status file")
        ));
    }

    /// Not part of this run, for `reason`.
    pub fn skip(&mut self, reason: &str) {
        self.transition_to(StepState::Skipped);
        self.message = Some(reason.to_string());
    }

    /// The first attempt is about to start.
    pub fn start(&mut self) {
        self.transition_to(StepState::Running);
        self.started_at = Some(now());
        self.finished_at = None;
        self.error = None;
    }

    /// Attempt number `attempt` is under way.
    pub fn attempt(&mut self, attempt: u32) {
        self.attempts = attempt;
    }

    /// Not there yet, nothing wrong: polled again.
    pub fn progress(&mut self, message: &str) {
        self.transition_to(StepState::Running);
        self.message = Some(message.to_string());
    }

    /// Failed transiently; tried again after a backoff.
    pub fn retry(&mut self, error: &str) {
        self.transition_to(StepState::Retrying);
        self.error = Some(error.to_string());
    }

    /// Finished in `state` (done, waiting, failed or not implemented) after `elapsed`.
    pub fn finish(
        &mut self,
        state: StepState,
        elapsed: Duration,
        message: Option<String>,
        error: Option<String>,
    ) {
        self.transition_to(state);
        self.finished_at = Some(now());
        self.duration_ms = Some(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
        self.message = message;
        self.error = error;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepState {
    Pending,
    Running,
    /// Failed transiently; will try again.
    Retrying,
    /// Waiting for the operator.
    Waiting,
    Done,
    Skipped,
    Failed,
    /// The step's code is not part of this build; reported honestly, never faked.
    NotImplemented,
}

impl StepState {
    /// The transitions a step record may make.
    fn may_become(self, to: StepState) -> bool {
        use StepState::*;
        matches!(
            (self, to),
            (Pending, Skipped | Done | Running)
                | (
                    Running | Retrying,
                    Running | Retrying | Done | Waiting | Failed | NotImplemented
                )
        )
    }

    fn mark(self) -> &'static str {
        match self {
            StepState::Done => "[ok]",
            StepState::Skipped => "[--]",
            StepState::Running | StepState::Retrying => "[..]",
            StepState::Waiting => "[??]",
            StepState::Pending => "[  ]",
            StepState::Failed | StepState::NotImplemented => "[!!]",
        }
    }

    fn word(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Running => "running",
            StepState::Retrying => "retrying",
            StepState::Waiting => "waiting",
            StepState::Done => "done",
            StepState::Skipped => "skipped",
            StepState::Failed => "failed",
            StepState::NotImplemented => "not implemented",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorRecord {
    pub step: StepId,
    pub kind: ErrorKind,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TpmRecord {
    /// The public age recipient of this TPM (not secret).
    pub recipient: String,
    /// The exact command the operator runs to seal an input to it.
    pub command: String,
    /// The name of the TPM's salt key, to pin as `tpm.saltKeyName` (not secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt_key_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRecord {
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    pub state: ObjectState,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl From<Awaiting> for TpmRecord {
    fn from(a: Awaiting) -> TpmRecord {
        TpmRecord {
            recipient: a.recipient,
            command: a.command,
            salt_key_name: a.salt_key_name,
        }
    }
}

impl From<ObjectReport> for ObjectRecord {
    fn from(r: ObjectReport) -> ObjectRecord {
        ObjectRecord {
            kind: r.kind,
            namespace: (!r.namespace.is_empty()).then_some(r.namespace),
            name: r.name,
            state: r.state,
            message: r.message,
        }
    }
}

/// Now, as RFC 3339 (UTC).
pub fn now() -> String {
    timestamp(OffsetDateTime::now_utc())
}

fn timestamp(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

impl Status {
    /// A fresh document for `steps`, all pending.
    pub fn new(steps: &[StepId]) -> Status {
        let at = now();
        Status {
            schema_version: SCHEMA_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            phase: Phase::Running,
            message: "starting".into(),
            started_at: at.clone(),
            updated_at: at,
            runs: 1,
            steps: steps
                .iter()
                .map(|&step| StepRecord::pending(step))
                .collect(),
            last_error: None,
            tpm: None,
            objects: Vec::new(),
        }
    }

    /// The record of `step`.
    pub fn step(&self, step: StepId) -> Option<&StepRecord> {
        self.steps.iter().find(|s| s.step == step)
    }

    /// The mutable record of `step`, added when missing.
    pub fn step_mut(&mut self, step: StepId) -> &mut StepRecord {
        let i = match self.steps.iter().position(|s| s.step == step) {
            Some(i) => i,
            None => {
                self.steps.push(StepRecord::pending(step));
                self.steps.len() - 1
            }
        };
        &mut self.steps[i]
    }

    /// Replaces the object lines of one kind of report (matched by kind and name).
    pub fn upsert_objects<O: Into<ObjectRecord>>(&mut self, objects: impl IntoIterator<Item = O>) {
        for o in objects.into_iter().map(Into::into) {
            match self
                .objects
                .iter_mut()
                .find(|x| x.kind == o.kind && x.namespace == o.namespace && x.name == o.name)
            {
                Some(existing) => *existing = o,
                None => self.objects.push(o),
            }
        }
    }

    /// A human summary: phase, steps with state and duration, the last error with its hint, and
    /// what to do while waiting.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let phase = match self.phase {
            Phase::Running => "RUNNING",
            Phase::Waiting => "WAITING",
            Phase::Ready => "READY",
            Phase::Failed => "FAILED",
        };
        let _ = writeln!(
            out,
            "bootstrap-agent {}: {phase}: {}",
            self.agent_version, self.message
        );
        let _ = writeln!(
            out,
            "  run {} started {}, updated {}",
            self.runs, self.started_at, self.updated_at
        );
        let _ = writeln!(out, "Steps:");
        for s in &self.steps {
            let took = s
                .duration_ms
                .map(|ms| format_short(Duration::from_millis(ms)))
                .unwrap_or_default();
            let attempts = if s.attempts > 1 {
                format!("{} attempts", s.attempts)
            } else {
                String::new()
            };
            let note = s.error.as_deref().or(s.message.as_deref()).unwrap_or("");
            let _ = writeln!(
                out,
                "  {} {:<10} {:<15} {:>7} {:<11} {}",
                s.state.mark(),
                s.step.name(),
                s.state.word(),
                took,
                attempts,
                one_line(note)
            )
            .map(|()| ());
        }
        if let Some(tpm) = &self.tpm {
            let _ = writeln!(
                out,
                "TPM: waiting for sealed secrets. This TPM's age recipient:\n  {}",
                tpm.recipient
            );
            let _ = writeln!(
                out,
                "Seal the SOPS key to it and put the result in the agent's configuration:\n  {}",
                tpm.command
            );
            match &tpm.salt_key_name {
                Some(name) => {
                    let _ = writeln!(
                        out,
                        "Pin the recipient (tpm.recipient) and the salt key name (tpm.saltKeyName):\n  {name}"
                    );
                }
                None => {
                    let _ = writeln!(out, "Pin the recipient (tpm.recipient).");
                }
            }
            let _ = writeln!(
                out,
                "The seed is locked until the next boot: reboot the node once the sealed key is in the configuration (Terraform's apply of the sealed key does)."
            );
        }
        if let Some(e) = &self.last_error {
            let kind = match e.kind {
                ErrorKind::Transient => "transient",
                ErrorKind::Permanent => "permanent",
                ErrorKind::Config => "configuration",
            };
            let _ = writeln!(
                out,
                "Last error ({kind}, step {}, {}):\n  {}",
                e.step, e.at, e.message
            );
            if let Some(h) = &e.hint {
                let _ = writeln!(out, "  hint: {h}");
            }
        }
        if !self.objects.is_empty() {
            let _ = writeln!(out, "Objects:");
            for o in &self.objects {
                let name = match &o.namespace {
                    Some(ns) => format!("{ns}/{}", o.name),
                    None => o.name.clone(),
                };
                let _ = writeln!(
                    out,
                    "  {:<26} {:<44} {:<12} {}",
                    o.kind,
                    name,
                    o.state,
                    one_line(&o.message)
                );
            }
        }
        out
    }
}

fn one_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("");
    if line.chars().count() > 160 {
        format!("{}...", line.chars().take(157).collect::<String>())
    } else {
        line.to_string()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(
        "cannot write status file {path}: {source} (fix: make its directory writable; on Talos mount /var/lib/bootstrap-agent into the service)"
    )]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("status document is not valid: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("status file {path} is not a bootstrap-agent status document: {source}")]
    Decode {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Writes the status document atomically: a temporary file in the same directory, fsync,
/// rename, then fsync of the directory. A reader sees the old or the new document, never half.
#[derive(Debug, Clone)]
pub struct StatusFile {
    path: PathBuf,
}

impl StatusFile {
    pub fn new(path: impl Into<PathBuf>) -> StatusFile {
        StatusFile { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the previous run's document. A missing file is `Ok(None)`. Also removes temporary
    /// files that an earlier process, killed between create and rename, left behind.
    pub fn load(&self) -> Result<Option<Status>, StatusError> {
        self.remove_stale_temps();
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| StatusError::Decode {
                        path: self.path.clone(),
                        source,
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StatusError::Write {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Writes `status`, stamping `updatedAt`.
    pub fn write(&self, status: &mut Status) -> Result<(), StatusError> {
        status.updated_at = now();
        let mut bytes = serde_json::to_vec_pretty(status)?;
        bytes.push(b'\n');
        self.write_bytes(&bytes)
            .map_err(|source| StatusError::Write {
                path: self.path.clone(),
                source,
            })
    }

    fn write_bytes(&self, bytes: &[u8]) -> std::io::Result<()> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir)?;
        let file_name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "status.json".into());
        let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
        let result = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, &self.path)?;
            std::fs::File::open(&dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Removes `.NAME.<pid>.tmp` files of processes that no longer run (only this agent's own
    /// temporary files match; a live writer's file is left alone).
    fn remove_stale_temps(&self) {
        let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) else {
            return;
        };
        let Some(name) = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
        else {
            return;
        };
        let prefix = format!(".{name}.");
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = file
                .strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix(".tmp"))
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Keeps an unreadable previous document aside (the agent never deletes what it cannot read).
    pub fn set_aside(&self) -> std::io::Result<PathBuf> {
        let aside = self.path.with_extension(format!(
            "json.unreadable-{}",
            OffsetDateTime::now_utc().unix_timestamp()
        ));
        std::fs::rename(&self.path, &aside)?;
        Ok(aside)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_files_of_dead_writers_are_removed_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let file = StatusFile::new(dir.path().join("status.json"));
        // u32::MAX is never a live pid; our own pid is.
        let dead = dir.path().join(format!(".status.json.{}.tmp", u32::MAX));
        let live = dir
            .path()
            .join(format!(".status.json.{}.tmp", std::process::id()));
        let other = dir.path().join("notes.tmp");
        for p in [&dead, &live, &other] {
            std::fs::write(p, b"{").unwrap();
        }
        assert!(file.load().unwrap().is_none());
        assert!(!dead.exists());
        assert!(live.exists());
        assert!(other.exists());
    }

    fn sample() -> Status {
        let mut s = Status::new(&StepId::ALL);
        let r = s.step_mut(StepId::Etcd);
        r.state = StepState::Done;
        r.attempts = 3;
        r.duration_ms = Some(1500);
        r.message = Some("bootstrapped".into());
        s.step_mut(StepId::Ready).state = StepState::Failed;
        s.phase = Phase::Failed;
        s.message = "ready failed".into();
        s.last_error = Some(ErrorRecord {
            step: StepId::Ready,
            kind: ErrorKind::Permanent,
            message: "Kustomization flux-system/flux-system: kustomize build failed".into(),
            hint: Some("fix the manifests in Git".into()),
            at: now(),
        });
        s.tpm = Some(TpmRecord {
            recipient: "age1xyz".into(),
            command: "age -a -r age1xyz -o sops-age.tpm.age .age-key.txt".into(),
            salt_key_name: Some(format!("000b{}", "ab".repeat(32))),
        });
        s.upsert_objects([ObjectRecord {
            kind: "Kustomization".into(),
            namespace: Some("flux-system".into()),
            name: "flux-system".into(),
            state: ObjectState::Failed,
            message: "kustomize build failed".into(),
        }]);
        s
    }

    #[test]
    fn json_round_trips_with_camel_case_fields() {
        let s = sample();
        let json = serde_json::to_string(&s).unwrap();
        assert!(
            json.contains("\"schemaVersion\":1")
                && json.contains("\"lastError\"")
                && json.contains("\"kube-api\""),
            "{json}"
        );
        let back: Status = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn render_shows_phase_steps_error_hint_and_recipient() {
        let text = sample().render();
        assert!(text.contains("FAILED: ready failed"), "{text}");
        assert!(
            text.contains("[ok] etcd")
                && text.contains("1.5s")
                && text.contains("3 attempts")
                && text.contains("bootstrapped"),
            "{text}"
        );
        assert!(text.contains("hint: fix the manifests in Git"), "{text}");
        assert!(text.contains("age -a -r age1xyz"), "{text}");
        assert!(text.contains("(tpm.saltKeyName):\n  000babab"), "{text}");
        assert!(text.contains("reboot"), "{text}");
        assert!(text.contains("flux-system/flux-system"), "{text}");
    }

    #[test]
    fn writes_atomically_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let file = StatusFile::new(dir.path().join("nested/status.json"));
        assert_eq!(file.load().unwrap(), None);
        let mut s = sample();
        file.write(&mut s).unwrap();
        assert_eq!(file.load().unwrap(), Some(s.clone()));
        s.message = "second".into();
        file.write(&mut s).unwrap();
        assert_eq!(file.load().unwrap().unwrap().message, "second");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("nested"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            leftovers.len(),
            1,
            "temporary files left behind: {leftovers:?}"
        );
    }

    #[test]
    fn an_unreadable_document_is_reported_and_set_aside_not_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        std::fs::write(&path, b"{not json").unwrap();
        let file = StatusFile::new(&path);
        let err = file.load().unwrap_err();
        assert!(
            err.to_string()
                .contains("not a bootstrap-agent status document"),
            "{err}"
        );
        let aside = file.set_aside().unwrap();
        assert_eq!(std::fs::read(aside).unwrap(), b"{not json");
    }

    #[test]
    fn a_write_into_an_unwritable_place_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"x").unwrap();
        let file = StatusFile::new(blocker.join("status.json"));
        let err = file.write(&mut Status::new(&StepId::ALL)).unwrap_err();
        assert!(
            err.to_string().contains(&*blocker.to_string_lossy()),
            "{err}"
        );
    }
}
