//! The boot steps. Each step is one unit in the module of its group ([`talos`], [`secrets`],
//! [`kube`]): its name, deadline, whether it is durable, why it would be skipped, what it does in
//! words, and one attempt of it, side by side. The list below puts them in order; everything
//! else (the `StepId` enum, its names in the status file, the `deadlines:` keys of the
//! configuration, the plan, the dispatch) is derived from it.
//!
//! A step's attempt works on a [`Context`]: the settings it needs (parsed by the configuration)
//! and the clients it opens on the way (Talos, the cluster, the bundle). The state machine in
//! [`crate::boot`] calls [`Steps::attempt`] and does the retrying.

mod kube;
mod secrets;
mod talos;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::bundle::{Bundle, BundleError};
use crate::error::{Classify, ErrorKind, chain};
use crate::kube::{Cluster, FluxSync, KubeError, ObjectReport};
use crate::seal::{SealError, TpmSettings, UnsealedSecret};
use crate::talos::{Kubeconfig, NodeClient, TalosError};

pub use self::kube::BundleSettings;
pub use self::secrets::{SealedSource, SecretFormat, SecretSettings};

/// One step of the boot sequence, everything about it in one place.
trait Step {
    /// The name in logs, the status file and the CLI, e.g. `talos-api`.
    const NAME: &'static str;
    /// How long the step may keep retrying before the run fails.
    const DEADLINE: Deadline;
    /// Its completion survives restarts within the life of the node's `/var`: once the status
    /// file records it done, a later run does not repeat it. Every other step is run again and
    /// must find nothing to change.
    const DURABLE: bool = false;

    /// Why the step will not run with these settings.
    fn skip(settings: &Settings) -> Option<String> {
        let _ = settings;
        None
    }

    /// What the step will do, in words (`bootstrap-agent plan` prints it).
    fn action(settings: &Settings) -> String;

    /// One idempotent attempt; the state machine does the retrying.
    async fn attempt(ctx: &mut Context) -> Result<Outcome, StepFailure>;
}

/// How long a step may keep retrying.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Deadline {
    /// Its own, configurable as `deadlines.<name in camelCase>`; this is the default.
    Own(Duration),
    /// The deadline of another step (a step that is part of reaching the same thing).
    SameAs(StepId),
}

macro_rules! sequence {
    ($($group:ident::$unit:ident,)+) => {
        /// The boot sequence, in order. Each variant is the step of the same name in its group
        /// module, where it is defined.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum StepId {
            $($unit,)+
        }

        impl StepId {
            /// Every step, in execution order.
            pub const ALL: [StepId; [$(StepId::$unit,)+].len()] = [$(StepId::$unit,)+];

            /// The name used in logs, the status file and the CLI.
            pub fn name(self) -> &'static str {
                match self {
                    $(StepId::$unit => <$group::$unit as Step>::NAME,)+
                }
            }

            /// Whether a completion recorded in the status file is not repeated.
            pub fn is_durable(self) -> bool {
                match self {
                    $(StepId::$unit => <$group::$unit as Step>::DURABLE,)+
                }
            }

            /// How long the step may keep retrying, by default.
            pub fn deadline(self) -> Deadline {
                match self {
                    $(StepId::$unit => <$group::$unit as Step>::DEADLINE,)+
                }
            }

            /// Why the step will not run with `settings`.
            pub fn skip(self, settings: &Settings) -> Option<String> {
                match self {
                    $(StepId::$unit => <$group::$unit as Step>::skip(settings),)+
                }
            }

            /// What the step will do with `settings`, in words.
            pub fn action(self, settings: &Settings) -> String {
                match self {
                    $(StepId::$unit => <$group::$unit as Step>::action(settings),)+
                }
            }
        }

        impl Context {
            async fn attempt_step(&mut self, step: StepId) -> Result<Outcome, StepFailure> {
                match step {
                    $(StepId::$unit => <$group::$unit as Step>::attempt(self).await,)+
                }
            }
        }
    };
}

sequence! {
    secrets::Unseal,
    talos::TalosApi,
    talos::Etcd,
    talos::Kubeconfig,
    kube::KubeApi,
    secrets::Secrets,
    kube::Crds,
    kube::Flux,
    kube::Sync,
    kube::Ready,
    kube::Handoff,
}

impl StepId {
    /// The step called `name`.
    pub fn from_name(name: &str) -> Option<StepId> {
        StepId::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The `deadlines:` key of a step with a deadline of its own: its name in camelCase
    /// (`kube-api` → `kubeApi`).
    pub fn deadline_key(self) -> Option<String> {
        let Deadline::Own(_) = self.deadline() else {
            return None;
        };
        let mut key = String::new();
        let mut upper = false;
        for c in self.name().chars() {
            if c == '-' {
                upper = true;
            } else if upper {
                key.push(c.to_ascii_uppercase());
                upper = false;
            } else {
                key.push(c);
            }
        }
        Some(key)
    }
}

impl fmt::Display for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for StepId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for StepId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<StepId, D::Error> {
        let name = String::deserialize(d)?;
        StepId::from_name(&name).ok_or_else(|| {
            let known: Vec<&str> = StepId::ALL.iter().map(|s| s.name()).collect();
            serde::de::Error::custom(format!(
                "unknown step `{name}`, expected one of {}",
                known.join(", ")
            ))
        })
    }
}

/// How long each step may keep retrying before the run fails.
#[derive(Debug, Clone, PartialEq)]
pub struct Deadlines {
    /// Steps with a deadline of their own.
    own: BTreeMap<StepId, Duration>,
}

impl Default for Deadlines {
    fn default() -> Self {
        let own = StepId::ALL
            .into_iter()
            .filter_map(|id| match id.deadline() {
                Deadline::Own(d) => Some((id, d)),
                Deadline::SameAs(_) => None,
            })
            .collect();
        Deadlines { own }
    }
}

impl Deadlines {
    /// The deadline of `step` (following [`Deadline::SameAs`]).
    pub fn for_step(&self, step: StepId) -> Duration {
        match step.deadline() {
            Deadline::Own(default) => self.own.get(&step).copied().unwrap_or(default),
            Deadline::SameAs(other) if other != step => self.for_step(other),
            Deadline::SameAs(_) => Duration::ZERO,
        }
    }

    /// Sets the deadline of a step that has its own.
    pub fn set(&mut self, step: StepId, deadline: Duration) {
        if let Deadline::Own(_) = step.deadline() {
            self.own.insert(step, deadline);
        }
    }

    /// Every deadline multiplied by `factor` (at least 1 ms).
    pub fn scaled(mut self, factor: f64) -> Deadlines {
        for d in self.own.values_mut() {
            *d = d.mul_f64(factor).max(Duration::from_millis(1));
        }
        self
    }
}

/// How the agent reaches the cluster.
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterAccess {
    /// On a Talos node: machined's local API gives etcd bootstrap and the kubeconfig.
    Talos {
        socket: PathBuf,
        bootstrap_etcd: bool,
    },
    /// Any cluster, through a kubeconfig file (tests, rehearsals, clusters not on Talos).
    Kubeconfig { path: PathBuf },
}

/// What the steps work with: the validated configuration, less what only the runner needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub cluster: ClusterAccess,
    pub tpm: TpmSettings,
    pub secrets: Vec<SecretSettings>,
    pub bundle: BundleSettings,
    pub flux: FluxSync,
    pub deadlines: Deadlines,
}

/// The operator has to seal an input to this TPM: its recipient and the command to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Awaiting {
    /// The public age recipient of this TPM.
    pub recipient: String,
    /// The exact command the operator runs to seal an input to it.
    pub command: String,
    /// The TPM's salt key name, to pin as `tpm.saltKeyName` (not known when the seed was locked
    /// by an earlier run of this boot).
    pub salt_key_name: Option<String>,
}

/// What a step attempt achieved.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The step's goal holds (whether this attempt did the work or found it done).
    Done {
        message: String,
        objects: Vec<ObjectReport>,
    },
    /// Not there yet, nothing wrong: poll again until the deadline (e.g. Flux still reconciling).
    Pending {
        message: String,
        objects: Vec<ObjectReport>,
    },
    /// The operator has to act (seal an input to this TPM); the run goes on with the other steps
    /// and ends in phase `waiting`.
    Waiting {
        message: String,
        awaiting: Option<Awaiting>,
    },
}

impl Outcome {
    pub fn done(message: impl Into<String>) -> Outcome {
        Outcome::Done {
            message: message.into(),
            objects: Vec::new(),
        }
    }
}

/// Why a step attempt failed.
#[derive(Debug, Clone, PartialEq)]
pub struct StepFailure {
    pub kind: ErrorKind,
    pub message: String,
    pub hint: Option<String>,
    /// The step's code is not part of this build.
    pub not_implemented: bool,
    pub objects: Vec<ObjectReport>,
}

impl StepFailure {
    fn new(kind: ErrorKind, message: impl Into<String>) -> StepFailure {
        StepFailure {
            kind,
            message: message.into(),
            hint: None,
            not_implemented: false,
            objects: Vec::new(),
        }
    }
    /// Retrying may help.
    pub fn transient(message: impl Into<String>) -> StepFailure {
        Self::new(ErrorKind::Transient, message)
    }
    /// Retrying will not help.
    pub fn permanent(message: impl Into<String>) -> StepFailure {
        Self::new(ErrorKind::Permanent, message)
    }
    /// The configuration (or what it references) is wrong.
    pub fn config(message: impl Into<String>) -> StepFailure {
        Self::new(ErrorKind::Config, message)
    }
    /// The step is not part of this build: reported, never faked.
    pub fn not_implemented(step: StepId) -> StepFailure {
        StepFailure {
            not_implemented: true,
            ..Self::permanent(format!("step {step} is not implemented in this build"))
        }
    }
    pub fn with_hint(mut self, hint: impl Into<String>) -> StepFailure {
        self.hint = Some(hint.into());
        self
    }
    pub fn with_objects(mut self, objects: Vec<ObjectReport>) -> StepFailure {
        self.objects = objects;
        self
    }

    /// A failure as its error classifies itself: kind, the message with its sources, the hint.
    pub fn classified<E: Classify>(e: &E) -> StepFailure {
        StepFailure {
            hint: e.hint(),
            ..Self::new(e.kind(), chain(e))
        }
    }
}

/// `?` in a step turns any of the agent's errors into a classified failure.
macro_rules! classified_failure {
    ($($error:ty),+) => {
        $(impl From<$error> for StepFailure {
            fn from(e: $error) -> StepFailure {
                StepFailure::classified(&e)
            }
        })+
    };
}
classified_failure!(TalosError, SealError, BundleError);

impl From<KubeError> for StepFailure {
    /// The objects that failed to apply are part of the failure's report.
    fn from(e: KubeError) -> StepFailure {
        let objects = match &e {
            KubeError::Apply { failures, .. } => failures.clone(),
            _ => Vec::new(),
        };
        StepFailure::classified(&e).with_objects(objects)
    }
}

/// What each step does: one attempt per call; the state machine does the retrying.
pub trait Steps {
    // Not `Send`: the state machine runs on the task that drives the whole run, never spawned.
    fn attempt(&mut self, step: StepId) -> impl Future<Output = Result<Outcome, StepFailure>>;
}

/// The agent's view of the node during one run: the settings, and the clients the steps open
/// on the way (kept for the later steps of the same run).
pub struct Context {
    settings: Settings,
    talos: Option<NodeClient>,
    kubeconfig: Option<Kubeconfig>,
    cluster: Option<Cluster>,
    bundle: Option<Result<Bundle, BundleError>>,
    /// Set by the unseal step while sealed inputs are missing (this run).
    awaiting: Option<Awaiting>,
    /// The decrypted inputs, from the unseal step until the secrets step has them in the
    /// cluster; zeroised when dropped. `None` when an earlier run of this boot unsealed and
    /// locked the seed.
    unsealed: Option<Vec<UnsealedSecret>>,
    /// When the hand-over started waiting for Flux to apply what the agent installed.
    handoff_since: Option<tokio::time::Instant>,
}

impl Context {
    /// A context for `settings`; `bundle` is the embedded bundle when the caller has read it
    /// already (otherwise the first step that needs it reads it).
    pub fn new(settings: Settings, bundle: Option<Bundle>) -> Context {
        Context {
            settings,
            talos: None,
            kubeconfig: None,
            cluster: None,
            bundle: bundle.map(Ok),
            awaiting: None,
            unsealed: None,
            handoff_since: None,
        }
    }

    /// Loads the bundle from its directory (embedded mode) once; fetch mode loads it in the
    /// `crds` step.
    fn local_bundle(&mut self) -> Option<&Result<Bundle, BundleError>> {
        if self.settings.bundle.fetch {
            return None;
        }
        if self.bundle.is_none() {
            self.bundle = Some(Bundle::load_dir(&self.settings.bundle.dir));
        }
        self.bundle.as_ref()
    }
}

impl Context {
    /// Whether this context holds decrypted inputs that are not in the cluster yet. The seed
    /// is locked once they are decrypted, so a new process could not decrypt them again this
    /// boot: the caller runs the sequence again with this context instead of exiting.
    pub fn holds_unsealed(&self) -> bool {
        self.unsealed.is_some()
    }
}

impl Steps for Context {
    fn attempt(&mut self, step: StepId) -> impl Future<Output = Result<Outcome, StepFailure>> {
        self.attempt_step(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_deadline_keys_are_derived_from_the_steps() {
        let names: Vec<&str> = StepId::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(
            names,
            [
                "unseal",
                "talos-api",
                "etcd",
                "kubeconfig",
                "kube-api",
                "secrets",
                "crds",
                "flux",
                "sync",
                "ready",
                "handoff"
            ]
        );
        let keys: Vec<String> = StepId::ALL
            .iter()
            .filter_map(|s| s.deadline_key())
            .collect();
        assert_eq!(
            keys,
            [
                "unseal", "talosApi", "etcd", "kubeApi", "secrets", "crds", "flux", "ready",
                "handoff"
            ]
        );
        for id in StepId::ALL {
            let json = serde_json::to_string(&id).unwrap();
            assert_eq!(json, format!("\"{id}\""));
            assert_eq!(serde_json::from_str::<StepId>(&json).unwrap(), id);
        }
        assert!(serde_json::from_str::<StepId>("\"nope\"").is_err());
    }

    #[test]
    fn shared_deadlines_follow_the_step_they_belong_to() {
        let mut d = Deadlines::default();
        assert_eq!(d.for_step(StepId::KubeApi), Duration::from_secs(900));
        d.set(StepId::KubeApi, Duration::from_secs(20));
        assert_eq!(d.for_step(StepId::Kubeconfig), Duration::from_secs(20));
        d.set(StepId::Sync, Duration::from_secs(1));
        assert_eq!(
            d.for_step(StepId::Sync),
            d.for_step(StepId::Flux),
            "sync has no deadline of its own"
        );
        let half = d.clone().scaled(0.5);
        assert_eq!(half.for_step(StepId::Ready), Duration::from_secs(450));
    }
}
