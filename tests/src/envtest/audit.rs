//! The API server's own record of what each client sent: its audit log (policy level
//! `Metadata`, one JSON event per request at stage `ResponseComplete`). Counting requests here
//! measures the agent from the server's side, never from the agent's own counters.

use std::path::Path;

use serde_json::Value;

/// One request as the API server recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub user: String,
    pub user_agent: String,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, …
    pub verb: String,
    pub uri: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    pub code: u16,
    pub stage: String,
}

impl Request {
    /// Verbs that change state in etcd.
    pub fn is_mutating(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} -> {}", self.verb, self.uri, self.code)
    }
}

/// The audit policy: every request at `Metadata`, only its final stage (watches also record
/// `ResponseStarted`, which we drop: one event per request).
pub const POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
  - level: Metadata
";

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// Every event in the log so far (a line cut short by a concurrent write is skipped).
pub fn read(path: &Path) -> Vec<Request> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|e| Request {
            user: s(&e["user"]["username"]),
            user_agent: s(&e["userAgent"]),
            verb: s(&e["verb"]),
            uri: s(&e["requestURI"]),
            resource: s(&e["objectRef"]["resource"]),
            subresource: s(&e["objectRef"]["subresource"]),
            namespace: s(&e["objectRef"]["namespace"]),
            name: s(&e["objectRef"]["name"]),
            code: e["responseStatus"]["code"]
                .as_u64()
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(0),
            stage: s(&e["stage"]),
        })
        .collect()
}
