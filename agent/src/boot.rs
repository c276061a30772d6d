//! The boot state machine: executes the plan's steps in order, each retried with capped
//! exponential backoff and jitter under its own deadline, and records every transition in the
//! status file.
//!
//! What a step does lives behind the [`Steps`] trait ([`crate::steps`] has the real one), so
//! the state machine itself is tested in isolation with scripted steps and tokio's paused clock.

use std::time::Duration;

use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::config::RetryConfig;
use crate::error::ErrorKind;
use crate::exit::Exit;
use crate::kube::ObjectReport;
use crate::plan::Plan;
use crate::status::{ErrorRecord, Phase, Status, StatusFile, StepState, now};
use crate::steps::{Awaiting, Outcome, StepFailure, StepId, Steps};

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunResult {
    /// Every step is done.
    Ready,
    /// Everything that could be done is done; the operator has to act.
    Waiting,
    /// A step failed.
    Failed(ErrorKind),
}

impl RunResult {
    /// The process exit code for this result.
    pub fn exit(self) -> Exit {
        match self {
            RunResult::Ready | RunResult::Waiting => Exit::Success,
            RunResult::Failed(kind) => kind.into(),
        }
    }
}

/// The delay before attempt `attempt + 1` (attempt counts from 1): `initial * 2^(attempt-1)`,
/// capped at `max`, then scaled by `jitter` (a factor in [0.5, 1.0]).
pub fn backoff(attempt: u32, retry: RetryConfig, jitter: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(20);
    let base = retry.initial.saturating_mul(1u32 << exp).min(retry.max);
    base.mul_f64(jitter.clamp(0.5, 1.0))
}

/// The longest pause between two polls of a pending step (Flux still reconciling). Pending is
/// progress, not failure: it is not slowed down to the failure backoff's cap (30 s by default),
/// or the agent would notice Flux Ready up to that long after it happened.
pub const PENDING_POLL_MAX: Duration = Duration::from_secs(2);

/// Executes a plan.
pub struct Sequence<'a, S> {
    plan: &'a Plan,
    steps: S,
    status: Status,
    file: StatusFile,
    retry: RetryConfig,
    jitter: Box<dyn FnMut() -> f64 + Send + 'a>,
    warned_status: bool,
}

/// What happened during a run: the one input of [`Sequence::record`], which applies it to the
/// status document, logs it and saves the document.
enum Event {
    RunStarted,
    Skipped {
        id: StepId,
        reason: String,
    },
    Started {
        id: StepId,
        deadline: Duration,
    },
    Pending {
        id: StepId,
        attempt: u32,
        message: String,
        objects: Vec<ObjectReport>,
    },
    Retrying {
        id: StepId,
        attempt: u32,
        failure: StepFailure,
    },
    Done {
        id: StepId,
        attempts: u32,
        elapsed: Duration,
        message: String,
        objects: Vec<ObjectReport>,
    },
    Waiting {
        id: StepId,
        elapsed: Duration,
        message: String,
        awaiting: Option<Awaiting>,
    },
    Failed {
        id: StepId,
        attempts: u32,
        elapsed: Duration,
        failure: StepFailure,
    },
    RunFinished {
        waiting: bool,
    },
}

impl<'a, S: Steps> Sequence<'a, S> {
    /// A sequence for `plan`. `previous` is the status document of an earlier run, if any: its
    /// run count carries on and durable steps it records as done are not repeated.
    pub fn new(
        plan: &'a Plan,
        steps: S,
        file: StatusFile,
        previous: Option<Status>,
        retry: RetryConfig,
    ) -> Self {
        let ids: Vec<StepId> = plan.steps.iter().map(|s| s.id).collect();
        let mut status = Status::new(&ids);
        if let Some(prev) = previous {
            status.runs = prev.runs.saturating_add(1);
            // The recipient shown while waiting stays shown: a later run of the same boot finds
            // the seed locked and cannot derive it again.
            status.tpm = prev.tpm.clone();
            for id in ids.iter().copied().filter(|id| id.is_durable()) {
                if let Some(done) = prev.step(id).filter(|r| r.state == StepState::Done) {
                    status.step_mut(id).carry_over(done);
                }
            }
        }
        Sequence {
            plan,
            steps,
            status,
            file,
            retry,
            jitter: Box::new(|| rand::random::<f64>() * 0.5 + 0.5),
            warned_status: false,
        }
    }

    /// Replaces the jitter source (tests make it deterministic).
    pub fn with_jitter(mut self, jitter: impl FnMut() -> f64 + Send + 'a) -> Self {
        self.jitter = Box::new(jitter);
        self
    }

    /// The status document as it stands.
    pub fn status(&self) -> &Status {
        &self.status
    }

    /// The steps, once the run is over (the caller may still need what they hold).
    pub fn into_parts(self) -> (S, Status) {
        (self.steps, self.status)
    }

    /// The one place where the run's state changes: applies `event` to the status document
    /// (through the step record's transitions), logs it once, and writes the document.
    fn record(&mut self, event: Event) {
        let st = &mut self.status;
        match event {
            Event::RunStarted => {
                info!(
                    run = st.runs,
                    steps = self.plan.steps.len(),
                    "boot sequence starting"
                );
                st.phase = Phase::Running;
                st.message = "starting".into();
            }
            Event::Skipped { id, reason } => {
                info!(step = %id, %reason, "step skipped");
                st.step_mut(id).skip(&reason);
            }
            Event::Started { id, deadline } => {
                info!(step = %id, deadline = ?deadline, "step started");
                st.step_mut(id).start();
                st.message = format!("step {id}");
            }
            Event::Pending {
                id,
                attempt,
                message,
                objects,
            } => {
                info!(step = %id, attempt, %message, "step pending");
                st.upsert_objects(objects);
                let r = st.step_mut(id);
                r.attempt(attempt);
                r.progress(&message);
            }
            Event::Retrying {
                id,
                attempt,
                failure,
            } => {
                warn!(step = %id, attempt, error = %failure.message, "step failed, will retry");
                st.upsert_objects(failure.objects.clone());
                let r = st.step_mut(id);
                r.attempt(attempt);
                r.retry(&failure.message);
                st.last_error = Some(record(id, &failure));
            }
            Event::Done {
                id,
                attempts,
                elapsed,
                message,
                objects,
            } => {
                info!(step = %id, attempts, took = ?elapsed, %message, "step done");
                st.upsert_objects(objects);
                let r = st.step_mut(id);
                r.attempt(attempts);
                r.finish(StepState::Done, elapsed, Some(message), None);
            }
            Event::Waiting {
                id,
                elapsed,
                message,
                awaiting,
            } => {
                warn!(step = %id, %message, "waiting for the operator");
                if let Some(awaiting) = awaiting {
                    st.tpm = Some(awaiting.into());
                }
                st.step_mut(id)
                    .finish(StepState::Waiting, elapsed, Some(message), None);
            }
            Event::Failed {
                id,
                attempts,
                elapsed,
                failure,
            } => {
                error!(step = %id, kind = ?failure.kind, error = %failure.message, hint = failure.hint.as_deref().unwrap_or(""), "step failed");
                st.upsert_objects(failure.objects.clone());
                st.last_error = Some(record(id, &failure));
                st.message = format!("step {id} failed");
                st.phase = Phase::Failed;
                let state = if failure.not_implemented {
                    StepState::NotImplemented
                } else {
                    StepState::Failed
                };
                let r = st.step_mut(id);
                r.attempt(attempts);
                r.finish(state, elapsed, None, Some(failure.message));
            }
            Event::RunFinished { waiting } => {
                if waiting {
                    st.phase = Phase::Waiting;
                    st.message = "waiting for the operator: see the waiting step".into();
                } else {
                    st.phase = Phase::Ready;
                    st.message = "Flux manages the cluster: every step is done".into();
                    st.last_error = None;
                    st.tpm = None;
                }
                info!(phase = ?st.phase, "boot sequence finished");
            }
        }
        self.save();
    }

    fn save(&mut self) {
        if let Err(e) = self.file.write(&mut self.status) {
            if !self.warned_status {
                warn!(error = %e, "status file not written; carrying on");
                self.warned_status = true;
            }
        } else {
            self.warned_status = false;
        }
    }

    /// Runs every step of the plan.
    pub async fn run(&mut self) -> RunResult {
        self.record(Event::RunStarted);
        let mut waiting = false;
        for planned in self.plan.steps.clone() {
            let id = planned.id;
            if let Some(reason) = planned.skip {
                self.record(Event::Skipped { id, reason });
                continue;
            }
            if self
                .status
                .step(id)
                .is_some_and(|r| r.state == StepState::Done)
            {
                info!(step = %id, "step already done in an earlier run");
                continue;
            }
            match self.run_step(id, planned.deadline).await {
                StepEnd::Done => {}
                StepEnd::Waiting => waiting = true,
                StepEnd::Failed(kind) => return RunResult::Failed(kind),
            }
        }
        self.record(Event::RunFinished { waiting });
        if waiting {
            RunResult::Waiting
        } else {
            RunResult::Ready
        }
    }

    async fn run_step(&mut self, id: StepId, deadline: Duration) -> StepEnd {
        let started = Instant::now();
        let give_up = started + deadline;
        self.record(Event::Started { id, deadline });
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let result = self.steps.attempt(id).await;
            let elapsed = started.elapsed();
            let pending = match result {
                Ok(Outcome::Done { message, objects }) => {
                    self.record(Event::Done {
                        id,
                        attempts: attempt,
                        elapsed,
                        message,
                        objects,
                    });
                    return StepEnd::Done;
                }
                Ok(Outcome::Waiting { message, awaiting }) => {
                    self.record(Event::Waiting {
                        id,
                        elapsed,
                        message,
                        awaiting,
                    });
                    return StepEnd::Waiting;
                }
                Ok(Outcome::Pending { message, objects }) if Instant::now() >= give_up => {
                    let failure = StepFailure::transient(format!("deadline of {deadline:?} exceeded: {message}"))
                        .with_hint("the cluster did not converge in time; the objects below say what is still pending")
                        .with_objects(objects);
                    return self.fail(id, attempt, elapsed, failure);
                }
                Ok(Outcome::Pending { message, objects }) => {
                    self.record(Event::Pending {
                        id,
                        attempt,
                        message,
                        objects,
                    });
                    true
                }
                Err(failure) if failure.kind != ErrorKind::Transient => {
                    return self.fail(id, attempt, elapsed, failure);
                }
                Err(failure) if Instant::now() >= give_up => {
                    let message = format!(
                        "deadline of {deadline:?} exceeded after {attempt} attempts; last error: {}",
                        failure.message
                    );
                    return self.fail(id, attempt, elapsed, StepFailure { message, ..failure });
                }
                Err(failure) => {
                    self.record(Event::Retrying {
                        id,
                        attempt,
                        failure,
                    });
                    false
                }
            };
            let retry = if pending {
                RetryConfig {
                    max: self.retry.max.min(PENDING_POLL_MAX),
                    ..self.retry
                }
            } else {
                self.retry
            };
            let delay = backoff(attempt, retry, (self.jitter)());
            let until = (Instant::now() + delay).min(give_up);
            tokio::time::sleep_until(until).await;
        }
    }

    fn fail(
        &mut self,
        id: StepId,
        attempt: u32,
        elapsed: Duration,
        failure: StepFailure,
    ) -> StepEnd {
        let kind = failure.kind;
        self.record(Event::Failed {
            id,
            attempts: attempt,
            elapsed,
            failure,
        });
        StepEnd::Failed(kind)
    }
}

enum StepEnd {
    Done,
    Waiting,
    Failed(ErrorKind),
}

fn record(step: StepId, f: &StepFailure) -> ErrorRecord {
    ErrorRecord {
        step,
        kind: f.kind,
        message: f.message.clone(),
        hint: f.hint.clone(),
        at: now(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, VecDeque};
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use super::*;
    use std::future::Future;

    use crate::config::Config;
    use crate::kube::ObjectState;
    use crate::status::{ObjectRecord, TpmRecord};

    type Script = HashMap<StepId, VecDeque<Result<Outcome, StepFailure>>>;

    /// Scripted steps: each attempt pops the next answer; an empty script means done.
    #[derive(Clone, Default)]
    struct Scripted {
        script: Arc<Mutex<Script>>,
        calls: Arc<Mutex<Vec<StepId>>>,
    }

    impl Scripted {
        fn answer(self, step: StepId, answers: Vec<Result<Outcome, StepFailure>>) -> Self {
            self.script
                .lock()
                .unwrap()
                .entry(step)
                .or_default()
                .extend(answers);
            self
        }
        fn calls(&self, step: StepId) -> usize {
            self.calls
                .lock()
                .unwrap()
                .iter()
                .filter(|s| **s == step)
                .count()
        }
    }

    impl Steps for Scripted {
        fn attempt(&mut self, step: StepId) -> impl Future<Output = Result<Outcome, StepFailure>> {
            self.calls.lock().unwrap().push(step);
            let next = self
                .script
                .lock()
                .unwrap()
                .get_mut(&step)
                .and_then(VecDeque::pop_front);
            async move { next.unwrap_or_else(|| Ok(Outcome::done(format!("{step} ok")))) }
        }
    }

    fn plan(text: &str) -> Plan {
        Plan::new(
            &Config::parse(text, Path::new("/c.yaml"), &|_| None).unwrap(),
            vec![],
        )
    }

    const TALOS: &str = "talos: {}\nflux: { url: https://e.org/o/r }\ntpm: { factor: '0000000000000000000000000000000000000000000000000000000000000000' }\nsecrets: [ { name: sops-age, key: age.agekey } ]\n";
    const RETRY: RetryConfig = RetryConfig {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(8),
    };

    fn machine<'a>(
        plan: &'a Plan,
        steps: Scripted,
        dir: &Path,
        previous: Option<Status>,
    ) -> Sequence<'a, Scripted> {
        Sequence::new(
            plan,
            steps,
            StatusFile::new(dir.join("status.json")),
            previous,
            RETRY,
        )
        .with_jitter(|| 1.0)
    }

    #[test]
    fn backoff_doubles_then_caps_and_jitter_only_shortens() {
        let r = RetryConfig {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        };
        assert_eq!(backoff(1, r, 1.0), Duration::from_millis(500));
        assert_eq!(backoff(2, r, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(5, r, 1.0), Duration::from_secs(8));
        assert_eq!(backoff(9, r, 1.0), Duration::from_secs(30));
        assert_eq!(backoff(u32::MAX, r, 1.0), Duration::from_secs(30));
        assert_eq!(backoff(9, r, 0.5), Duration::from_secs(15));
        assert_eq!(
            backoff(9, r, 0.0),
            Duration::from_secs(15),
            "jitter is clamped to [0.5, 1]"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn all_steps_run_in_order_and_the_status_file_says_ready() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan(TALOS);
        let steps = Scripted::default();
        let mut m = machine(&plan, steps.clone(), dir.path(), None);
        assert_eq!(m.run().await, RunResult::Ready);
        assert_eq!(*steps.calls.lock().unwrap(), StepId::ALL.to_vec());
        let saved = StatusFile::new(dir.path().join("status.json"))
            .load()
            .unwrap()
            .unwrap();
        assert_eq!(saved.phase, Phase::Ready);
        assert!(
            saved
                .steps
                .iter()
                .all(|s| s.state == StepState::Done && s.attempts == 1),
            "{saved:?}"
        );
        assert_eq!(
            saved.step(StepId::Etcd).unwrap().message.as_deref(),
            Some("etcd ok")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_with_backoff_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan(TALOS);
        let steps = Scripted::default().answer(
            StepId::Etcd,
            vec![
                Err(StepFailure::transient(
                    "FailedPrecondition: time not in sync",
                )),
                Err(StepFailure::transient("Unavailable")),
            ],
        );
        let mut m = machine(&plan, steps.clone(), dir.path(), None);
        let t0 = Instant::now();
        assert_eq!(m.run().await, RunResult::Ready);
        assert_eq!(steps.calls(StepId::Etcd), 3);
        assert_eq!(
            t0.elapsed(),
            Duration::from_secs(1 + 2),
            "1 s then 2 s of backoff"
        );
        let r = m.status().step(StepId::Etcd).unwrap();
        assert_eq!(
            (r.state, r.attempts, r.error.clone()),
            (StepState::Done, 3, None)
        );
        assert_eq!(
            m.status().last_error,
            None,
            "a finished run clears the last error"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_step_that_keeps_failing_stops_at_its_deadline_with_the_last_error() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan(&format!("{TALOS}deadlines: {{ kubeApi: 20s }}\n"));
        let steps = Scripted::default().answer(
            StepId::KubeApi,
            (0..100)
                .map(|_| Err(StepFailure::transient("connection refused")))
                .collect(),
        );
        let mut m = machine(&plan, steps.clone(), dir.path(), None);
        let t0 = Instant::now();
        assert_eq!(m.run().await, RunResult::Failed(ErrorKind::Transient));
        assert_eq!(
            t0.elapsed(),
            Duration::from_secs(20),
            "stops exactly at the deadline"
        );
        assert_eq!(steps.calls(StepId::Secrets), 0, "later steps do not run");
        let saved = StatusFile::new(dir.path().join("status.json"))
            .load()
            .unwrap()
            .unwrap();
        assert_eq!(saved.phase, Phase::Failed);
        let e = saved.last_error.clone().unwrap();
        assert_eq!((e.step, e.kind), (StepId::KubeApi, ErrorKind::Transient));
        assert!(
            e.message.contains("deadline") && e.message.contains("connection refused"),
            "{}",
            e.message
        );
        assert_eq!(
            saved.step(StepId::KubeApi).unwrap().state,
            StepState::Failed
        );
        assert_eq!(
            RunResult::Failed(ErrorKind::Transient).exit(),
            Exit::Transient
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_failure_stops_at_once_with_its_hint() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan(TALOS);
        let steps = Scripted::default().answer(
            StepId::Ready,
            vec![Err(StepFailure::permanent(
                "Kustomization flux-system: kustomize build failed",
            )
            .with_hint("fix the tree in Git"))],
        );
        let mut m = machine(&plan, steps.clone(), dir.path(), None);
        assert_eq!(m.run().await, RunResult::Failed(ErrorKind::Permanent));
        assert_eq!(steps.calls(StepId::Ready), 1);
        let e = m.status().last_error.clone().unwrap();
        assert_eq!(e.hint.as_deref(), Some("fix the tree in Git"));
        assert!(m.status().render().contains("hint: fix the tree in Git"));
    }

    #[tokio::test(start_paused = true)]
    async fn pending_is_polled_until_done_and_reports_objects() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan(TALOS);
        let obj = |state: ObjectState| {
            ObjectReport::new("Kustomization", "flux-system", "flux-system", state, "")
        };
        let steps = Scripted::default().answer(
            StepId::Ready,
            vec![
                Ok(Outcome::Pending {
                    message: "reconciling".into(),
                    objects: vec![obj(ObjectState::Progressing)],
                }),
                Ok(Outcome::Done {
                    message: "ready".into(),
                    objects: vec![obj(ObjectState::Ready)],
                }),
            ],
        );
        let mut m = machine(&plan, steps.clone(), dir.path(), None);
        assert_eq!(m.run().await, RunResult::Ready);
        assert_eq!(
            m.status().objects,
            vec![ObjectRecord::from(obj(ObjectState::Ready))],
            "one line per object, updated in place"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pending_is_polled_at_most_two_seconds_apart_whatever_the_failure_backoff() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan(TALOS);
        let pending = || {
            Ok(Outcome::Pending {
                message: "reconciling".into(),
                objects: vec![],
            })
        };
        let steps = Scripted::default().answer(StepId::Ready, (0..10).map(|_| pending()).collect());
        let mut m = machine(&plan, steps, dir.path(), None);
        let t0 = Instant::now();
        assert_eq!(m.run().await, RunResult::Ready);
        // 1 s, then 2 s for the other nine polls; the failure backoff (cap 8 s) would take 59 s.
        assert_eq!(t0.elapsed(), Duration::from_secs(19));
    }

    #[tokio::test(start_paused = true)]
    async fn pending_past_the_deadline_fails_saying_what_is_pending() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan(&format!("{TALOS}deadlines: {{ ready: 10s }}\n"));
        let pending = || {
            Ok(Outcome::Pending {
                message: "GitRepository flux-system not Ready".into(),
                objects: vec![],
            })
        };
        let steps =
            Scripted::default().answer(StepId::Ready, (0..100).map(|_| pending()).collect());
        let mut m = machine(&plan, steps, dir.path(), None);
        assert_eq!(m.run().await, RunResult::Failed(ErrorKind::Transient));
        assert!(
            m.status()
                .last_error
                .as_ref()
                .unwrap()
                .message
                .contains("GitRepository flux-system not Ready")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_sealed_input_lets_the_other_steps_run_and_ends_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan(TALOS);
        let awaiting = Awaiting {
            recipient: "age1abc".into(),
            command: "age -a -r age1abc ...".into(),
            salt_key_name: None,
        };
        let steps = Scripted::default().answer(
            StepId::Secrets,
            vec![Ok(Outcome::Waiting {
                message: "waiting for sealed secrets".into(),
                awaiting: Some(awaiting.clone()),
            })],
        );
        let mut m = machine(&plan, steps.clone(), dir.path(), None);
        assert_eq!(m.run().await, RunResult::Waiting);
        assert_eq!(RunResult::Waiting.exit(), Exit::Success);
        assert_eq!(steps.calls(StepId::Ready), 1);
        assert_eq!(m.status().phase, Phase::Waiting);
        assert_eq!(m.status().tpm, Some(TpmRecord::from(awaiting)));
        assert_eq!(
            m.status().step(StepId::Secrets).unwrap().state,
            StepState::Waiting
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_run_of_the_same_boot_keeps_showing_the_recipient_until_ready() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan(TALOS);
        let awaiting = Awaiting {
            recipient: "age1abc".into(),
            command: "age -a -r age1abc ...".into(),
            salt_key_name: Some("000b".into()),
        };
        let first = Scripted::default().answer(
            StepId::Secrets,
            vec![Ok(Outcome::Waiting {
                message: "waiting".into(),
                awaiting: Some(awaiting.clone()),
            })],
        );
        let mut m = machine(&plan, first, dir.path(), None);
        assert_eq!(m.run().await, RunResult::Waiting);
        let previous = m.status().clone();
        // The seed is locked now: a second run cannot derive the recipient again.
        let second = Scripted::default().answer(
            StepId::Secrets,
            vec![Ok(Outcome::Waiting {
                message: "waiting".into(),
                awaiting: None,
            })],
        );
        let mut m = machine(&plan, second, dir.path(), Some(previous.clone()));
        assert_eq!(m.run().await, RunResult::Waiting);
        assert_eq!(m.status().tpm, Some(TpmRecord::from(awaiting)));
        let mut m = machine(&plan, Scripted::default(), dir.path(), Some(previous));
        assert_eq!(m.run().await, RunResult::Ready);
        assert_eq!(m.status().tpm, None, "nothing to seal once ready");
    }

    #[tokio::test(start_paused = true)]
    async fn skipped_steps_are_not_attempted() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan("kubernetes: { kubeconfig: /k }\nflux: { url: https://e.org/o/r }\n");
        let steps = Scripted::default();
        let mut m = machine(&plan, steps.clone(), dir.path(), None);
        assert_eq!(m.run().await, RunResult::Ready);
        for id in [
            StepId::TalosApi,
            StepId::Etcd,
            StepId::Kubeconfig,
            StepId::Secrets,
        ] {
            assert_eq!(steps.calls(id), 0);
            assert_eq!(m.status().step(id).unwrap().state, StepState::Skipped);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_resumes_without_repeating_durable_steps() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan(TALOS);
        // First run: etcd bootstrapped, then killed while the kube API was down (the status file
        // is what a kill leaves behind).
        let first =
            Scripted::default().answer(StepId::KubeApi, vec![Err(StepFailure::permanent("boom"))]);
        let mut m = machine(&plan, first.clone(), dir.path(), None);
        assert_eq!(m.run().await, RunResult::Failed(ErrorKind::Permanent));
        assert_eq!(first.calls(StepId::Etcd), 1);
        let previous = StatusFile::new(dir.path().join("status.json"))
            .load()
            .unwrap();

        let second = Scripted::default();
        let mut m = machine(&plan, second.clone(), dir.path(), previous);
        assert_eq!(m.run().await, RunResult::Ready);
        assert_eq!(
            second.calls(StepId::Etcd),
            0,
            "etcd is not bootstrapped twice"
        );
        assert_eq!(
            second.calls(StepId::TalosApi),
            1,
            "non-durable steps are verified again"
        );
        assert_eq!(second.calls(StepId::KubeApi), 1);
        assert_eq!(m.status().runs, 2);
        assert!(
            m.status()
                .step(StepId::Etcd)
                .unwrap()
                .message
                .as_deref()
                .unwrap()
                .contains("earlier run")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn not_implemented_is_reported_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan(TALOS);
        let steps = Scripted::default().answer(
            StepId::Crds,
            vec![Err(StepFailure::not_implemented(StepId::Crds))],
        );
        let mut m = machine(&plan, steps, dir.path(), None);
        assert_eq!(m.run().await, RunResult::Failed(ErrorKind::Permanent));
        assert_eq!(
            m.status().step(StepId::Crds).unwrap().state,
            StepState::NotImplemented
        );
        assert!(m.status().render().contains("not implemented"));
    }

    #[tokio::test(start_paused = true)]
    async fn every_transition_is_written_to_the_status_file() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan(TALOS);
        // A step that observes the status file while it runs.
        struct Observer(std::path::PathBuf, Arc<Mutex<Vec<StepState>>>);
        impl Steps for Observer {
            fn attempt(
                &mut self,
                step: StepId,
            ) -> impl Future<Output = Result<Outcome, StepFailure>> {
                let seen = StatusFile::new(&self.0).load().unwrap().unwrap();
                self.1.lock().unwrap().push(seen.step(step).unwrap().state);
                async { Ok(Outcome::done("ok")) }
            }
        }
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut m = Sequence::new(
            &plan,
            Observer(dir.path().join("status.json"), seen.clone()),
            StatusFile::new(dir.path().join("status.json")),
            None,
            RETRY,
        );
        assert_eq!(m.run().await, RunResult::Ready);
        assert!(
            seen.lock()
                .unwrap()
                .iter()
                .all(|s| *s == StepState::Running),
            "{seen:?}"
        );
    }
}
