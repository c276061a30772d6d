//! What happened to one object: the line the status file shows for it.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::secrets::SecretOutcome;

/// The state of one object after an apply, a readiness check or seeding a Secret. The status
/// file writes it by name (`"Created"`, `"Ready"`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ObjectState {
    /// Apply: the object did not exist. Secrets: created.
    Created,
    /// Apply: the object existed and was changed.
    Configured,
    /// Apply or Secrets: already as the agent would make it; nothing sent.
    Unchanged,
    /// Apply: left to its owner (a newer CRD, Flux components Git owns).
    Kept,
    /// Apply: another field manager owns fields the agent sets.
    Conflict,
    /// Apply: the API server refused it. Readiness: a terminal failure.
    Failed,
    /// Readiness: ready as Flux and kstatus judge it.
    Ready,
    /// Readiness: not there yet.
    Progressing,
    /// Readiness: waits for the operator (a layer that decrypts, while the SOPS key is not sealed
    /// yet).
    Waiting,
    /// Secrets: the cluster holds other content; left untouched.
    Differs,
    /// Secrets: other content replaced (overwrite configured).
    Replaced,
    /// Hand-over: its owner in Git has applied it and the agent gave up every field.
    Released,
    /// Hand-over: the agent created it and Git does not have it; deleted.
    Deleted,
}

impl ObjectState {
    /// The name, as the status file and the logs write it.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectState::Created => "Created",
            ObjectState::Configured => "Configured",
            ObjectState::Unchanged => "Unchanged",
            ObjectState::Kept => "Kept",
            ObjectState::Conflict => "Conflict",
            ObjectState::Failed => "Failed",
            ObjectState::Ready => "Ready",
            ObjectState::Progressing => "Progressing",
            ObjectState::Waiting => "Waiting",
            ObjectState::Differs => "Differs",
            ObjectState::Replaced => "Replaced",
            ObjectState::Released => "Released",
            ObjectState::Deleted => "Deleted",
        }
    }

    /// An apply that did not go through (the stage fails with these objects).
    pub fn is_apply_failure(self) -> bool {
        matches!(self, ObjectState::Conflict | ObjectState::Failed)
    }
}

impl fmt::Display for ObjectState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<SecretOutcome> for ObjectState {
    fn from(o: SecretOutcome) -> ObjectState {
        match o {
            SecretOutcome::Created => ObjectState::Created,
            SecretOutcome::Unchanged => ObjectState::Unchanged,
            SecretOutcome::Differs => ObjectState::Differs,
            SecretOutcome::Replaced => ObjectState::Replaced,
        }
    }
}

/// One line of the status file: what happened to one object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ObjectReport {
    pub kind: String,
    /// Empty for cluster-scoped objects.
    pub namespace: String,
    pub name: String,
    pub state: ObjectState,
    pub message: String,
}

impl ObjectReport {
    pub fn new(
        kind: &str,
        namespace: &str,
        name: &str,
        state: ObjectState,
        message: impl Into<String>,
    ) -> Self {
        ObjectReport {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
            state,
            message: message.into(),
        }
    }

    /// `Kind namespace/name` or `Kind name`.
    pub fn object(&self) -> String {
        if self.namespace.is_empty() {
            format!("{} {}", self.kind, self.name)
        } else {
            format!("{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

impl fmt::Display for ObjectReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object(), self.state)?;
        if !self.message.is_empty() {
            write!(f, " ({})", self.message)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_written_by_name() {
        for state in [
            ObjectState::Created,
            ObjectState::Progressing,
            ObjectState::Differs,
        ] {
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{state}\""));
            assert_eq!(serde_json::from_str::<ObjectState>(&json).unwrap(), state);
        }
    }
}
