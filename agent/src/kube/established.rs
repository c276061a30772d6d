//! Waiting until CustomResourceDefinitions are `Established`, the way the API server reports
//! it: one watch over CRDs, resumed from the last resourceVersion it delivered (bookmarks
//! included), relisted only when the server says the version is gone (410).
//!
//! Everything the server may send is accepted: a CRD created a moment ago arrives with
//! `"status": {"conditions": null}`, a BOOKMARK carries an empty object. Every reopen backs off
//! unless the previous watch was healthy (it delivered events or lasted); a watch that keeps
//! failing (error events, undecodable events, refused) is given up for polling each pending CRD
//! by name, also backing off. Nothing here asks the server again without a pause.
//!
//! One more thing the real server does: a CRD whose names were accepted but that was not yet
//! established when the API server stopped stays `Established=False` ("the initial names have
//! been accepted") after the restart, because the establishing controller is only queued on an
//! *update* of the CRD (kubernetes `staging/src/k8s.io/apiextensions-apiserver/pkg/apiserver/
//! customresource_handler.go`, `updateCustomResourceDefinition`), and an object the agent finds
//! already applied is not updated again. Such a CRD is nudged: an annotation is added and
//! removed (two updates, the object ends as it was), at most [`MAX_NUDGES`] times.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, DynamicObject, WatchEvent, WatchParams};
use serde_json::Value;
use tokio::time::Instant;

use super::resources::Registry;
use super::retry::{Backoff, retry};
use super::{Cluster, KubeError};

/// Unusable watches in a row before the wait falls back to polling.
const UNUSABLE_WATCHES: u32 = 3;
/// A watch that stayed open this long was healthy even if nothing happened.
const HEALTHY_WATCH: Duration = Duration::from_secs(5);
/// Reopening after an unhealthy watch: 250 ms doubling to 5 s.
const REOPEN_FIRST: Duration = Duration::from_millis(250);
const REOPEN_MAX: Duration = Duration::from_secs(5);
/// A CRD with its names accepted but not Established for this long is nudged (a
/// single API server establishes at once; with several, after 5 s).
const STUCK_AFTER: Duration = Duration::from_secs(10);
/// Nudges per CRD, each after twice the previous wait.
const MAX_NUDGES: u32 = 3;
/// The annotation a nudge adds and removes.
const NUDGE_ANNOTATION: &str = "bootstrap-agent.io/establish";
/// Polling pending CRDs: 1 s doubling to 10 s.
const POLL_FIRST: Duration = Duration::from_secs(1);
const POLL_MAX: Duration = Duration::from_secs(10);

/// The `Established` verdict and the condition messages of one CRD, read leniently.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CrdConditions {
    pub established: bool,
    pub names_accepted: bool,
    /// `Type=Status: message` of every condition that is not True, for the operator.
    pub not_true: Vec<String>,
}

pub(crate) fn conditions(object: &Value) -> CrdConditions {
    let mut out = CrdConditions::default();
    // `status`, `conditions` and any field below may be missing or null.
    let Some(list) = object
        .get("status")
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
    else {
        return out;
    };
    for c in list {
        let kind = c.get("type").and_then(Value::as_str).unwrap_or_default();
        let status = c.get("status").and_then(Value::as_str).unwrap_or_default();
        if kind == "Established" && status == "True" {
            out.established = true;
        } else if kind == "NamesAccepted" && status == "True" {
            out.names_accepted = true;
        } else if status != "True" {
            let message = c.get("message").and_then(Value::as_str).unwrap_or_default();
            out.not_true.push(format!("{kind}={status}: {message}"));
        }
    }
    out
}

/// How one watch ended.
enum WatchEnd {
    /// Every pending CRD is Established.
    Done,
    /// The server closed it (its timeout) or the connection dropped; `healthy` when it delivered
    /// events or stayed open a while.
    Closed { healthy: bool },
    /// 410 Gone: the resourceVersion is too old; start again from a fresh list.
    Gone,
    /// The watch cannot be used: an error event, an event that does not decode, a refusal.
    Unusable(String),
}

pub(crate) struct Waiter<'a> {
    cluster: &'a Cluster,
    api: Api<DynamicObject>,
    pending: BTreeSet<String>,
    /// The last conditions seen of each pending CRD, for the error message.
    seen: BTreeMap<String, CrdConditions>,
    rv: String,
    deadline: Instant,
    /// Pending CRDs whose names are accepted but that are not Established: since when, and how
    /// often they were nudged.
    stuck: BTreeMap<String, (Instant, u32)>,
}

impl<'a> Waiter<'a> {
    pub(crate) fn new(
        cluster: &'a Cluster,
        names: &[String],
        deadline: Instant,
    ) -> Result<Self, KubeError> {
        let crd = Registry::new()
            .lookup("apiextensions.k8s.io/v1", "CustomResourceDefinition")
            .ok_or_else(|| KubeError::Other {
                context: "CRD mapping".into(),
                message: "missing from the built-in table".into(),
            })?;
        Ok(Waiter {
            cluster,
            api: Api::all_with(cluster.client().clone(), &crd.resource),
            pending: names.iter().cloned().collect(),
            seen: BTreeMap::new(),
            rv: "0".into(),
            deadline,
            stuck: BTreeMap::new(),
        })
    }

    fn not_established(&self, waited: Duration) -> KubeError {
        KubeError::NotEstablished {
            names: self.pending.iter().cloned().collect(),
            conditions: self
                .pending
                .iter()
                .filter_map(|n| self.seen.get(n).map(|c| (n, c)))
                .flat_map(|(n, c)| c.not_true.iter().map(move |t| format!("{n}: {t}")))
                .collect(),
            waited,
        }
    }

    fn observe(&mut self, o: &DynamicObject) {
        let Some(name) = o.metadata.name.as_deref() else {
            return;
        };
        if !self.pending.contains(name) {
            return;
        }
        let c = conditions(&o.data);
        if c.established {
            self.pending.remove(name);
            self.seen.remove(name);
            self.stuck.remove(name);
        } else {
            if c.names_accepted {
                self.stuck
                    .entry(name.to_string())
                    .or_insert_with(|| (Instant::now(), 0));
            } else {
                self.stuck.remove(name);
            }
            self.seen.insert(name.to_string(), c);
        }
    }

    /// When the next nudge is due, if any.
    fn next_nudge(&self) -> Option<(Instant, String)> {
        self.stuck
            .iter()
            .filter(|(_, (_, n))| *n < MAX_NUDGES)
            .map(|(name, (since, n))| (*since + STUCK_AFTER * 2u32.pow(*n), name.clone()))
            .min()
    }

    /// Adds and removes an annotation on `name`, so that the server sees an update of the CRD
    /// and queues it for establishing.
    async fn nudge(&mut self, name: &str) -> Result<(), KubeError> {
        if let Some((since, n)) = self.stuck.get_mut(name) {
            *since = Instant::now();
            *n += 1;
        }
        tracing::warn!(
            crd = name,
            "names accepted but not Established; asking the API server to establish it again"
        );
        let params = kube::api::PatchParams {
            field_manager: Some(super::FIELD_MANAGER.into()),
            ..Default::default()
        };
        let url = self.api.resource_url().to_string();
        let client = self.cluster.client();
        for value in [serde_json::json!("requested"), Value::Null] {
            let body = serde_json::json!({"metadata": {"annotations": {NUDGE_ANNOTATION: value}}});
            let req = kube::core::Request::new(&url)
                .patch(name, &params, &kube::api::Patch::Merge(&body))
                .map_err(|e| KubeError::Other {
                    context: format!("nudge CustomResourceDefinition {name}"),
                    message: e.to_string(),
                })?;
            let context = format!("nudge CustomResourceDefinition {name}");
            retry(self.deadline, || {
                let req = super::apply::clone_request(&req);
                let context = &context;
                async move {
                    client
                        .request::<super::apply::Applied>(req)
                        .await
                        .map(|_| ())
                        .map_err(|e| KubeError::from_kube(context, e))
                }
            })
            .await?;
        }
        Ok(())
    }

    /// Nudges every CRD whose nudge is due. A nudge that fails is only logged: the wait goes
    /// on, and its error names what is not Established.
    async fn nudge_due(&mut self) {
        while let Some((at, name)) = self.next_nudge() {
            if at > Instant::now() {
                break;
            }
            if let Err(e) = self.nudge(&name).await {
                tracing::warn!(crd = %name, error = %e, "could not nudge the CRD");
            }
        }
    }

    /// Waits until every CRD is Established or the deadline passes.
    pub(crate) async fn wait(mut self, watch_timeout: Duration) -> Result<(), KubeError> {
        let started = Instant::now();
        let mut reopen = Backoff::new(REOPEN_FIRST, REOPEN_MAX);
        let mut unusable = 0u32;
        while !self.pending.is_empty() {
            if Instant::now() >= self.deadline {
                return Err(self.not_established(started.elapsed()));
            }
            if unusable >= UNUSABLE_WATCHES {
                return self.poll(started).await;
            }
            match self.watch_once(watch_timeout).await? {
                WatchEnd::Done => return Ok(()),
                WatchEnd::Closed { healthy: true } => {
                    unusable = 0;
                    reopen.reset();
                    continue;
                }
                WatchEnd::Closed { healthy: false } => {}
                WatchEnd::Gone => self.rv = "0".into(),
                WatchEnd::Unusable(why) => {
                    unusable += 1;
                    tracing::debug!(attempt = unusable, %why, "CRD watch unusable");
                    if unusable >= UNUSABLE_WATCHES {
                        tracing::warn!(%why, "the CRD watch keeps failing; polling the pending CRDs instead");
                        continue;
                    }
                }
            }
            if !reopen.wait(self.deadline).await {
                return Err(self.not_established(started.elapsed()));
            }
        }
        Ok(())
    }

    async fn watch_once(&mut self, timeout: Duration) -> Result<WatchEnd, KubeError> {
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        let secs = remaining.min(timeout).as_secs().max(1);
        let wp = WatchParams::default().timeout(u32::try_from(secs).unwrap_or(u32::MAX));
        let req = kube::core::Request::new(self.api.resource_url())
            .watch(&wp, &self.rv)
            .map_err(|e| KubeError::Other {
                context: "watch CustomResourceDefinitions".into(),
                message: e.to_string(),
            })?;
        let opened_at = Instant::now();
        let client = self.cluster.client();
        let opened = retry(self.deadline, || {
            let req = super::apply::clone_request(&req);
            async move {
                client
                    .request_events::<DynamicObject>(req)
                    .await
                    .map_err(|e| KubeError::from_kube("watch CustomResourceDefinitions", e))
            }
        })
        .await;
        let stream = match opened {
            Ok(s) => s,
            // Down past the deadline: the wait's own error says what is still pending.
            Err(e) if e.is_transient() => return Ok(WatchEnd::Closed { healthy: false }),
            // Refused (403, 405, …): polling may still work.
            Err(e) => return Ok(WatchEnd::Unusable(e.to_string())),
        };
        let mut stream = std::pin::pin!(stream);
        let mut delivered = false;
        loop {
            let wake = self
                .next_nudge()
                .map_or(self.deadline, |(at, _)| at.min(self.deadline));
            let next = match tokio::time::timeout_at(wake, stream.next()).await {
                Ok(n) => n,
                Err(_) if wake < self.deadline => {
                    self.nudge_due().await;
                    continue;
                }
                Err(_) => return Ok(WatchEnd::Closed { healthy: true }),
            };
            match next {
                Some(Ok(WatchEvent::Added(o) | WatchEvent::Modified(o))) => {
                    delivered = true;
                    if let Some(v) = &o.metadata.resource_version {
                        self.rv.clone_from(v);
                    }
                    self.observe(&o);
                    if self.pending.is_empty() {
                        return Ok(WatchEnd::Done);
                    }
                }
                Some(Ok(WatchEvent::Deleted(o))) => {
                    delivered = true;
                    if let Some(v) = &o.metadata.resource_version {
                        self.rv.clone_from(v);
                    }
                }
                Some(Ok(WatchEvent::Bookmark(b))) => {
                    delivered = true;
                    self.rv = b.metadata.resource_version;
                }
                Some(Ok(WatchEvent::Error(s))) if s.code == 410 => return Ok(WatchEnd::Gone),
                Some(Ok(WatchEvent::Error(s))) => {
                    return Ok(WatchEnd::Unusable(format!(
                        "error event {} {}: {}",
                        s.code, s.reason, s.message
                    )));
                }
                Some(Err(kube::Error::SerdeError(e))) => {
                    return Ok(WatchEnd::Unusable(format!("an event did not decode: {e}")));
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "CRD watch interrupted");
                    return Ok(WatchEnd::Closed { healthy: delivered });
                }
                None => {
                    return Ok(WatchEnd::Closed {
                        healthy: delivered || opened_at.elapsed() >= HEALTHY_WATCH,
                    });
                }
            }
        }
    }

    /// Reads each pending CRD by name until all are Established, backing off between rounds.
    async fn poll(mut self, started: Instant) -> Result<(), KubeError> {
        let mut pause = Backoff::new(POLL_FIRST, POLL_MAX);
        loop {
            for name in self.pending.clone() {
                let context = format!("get CustomResourceDefinition {name}");
                let api = &self.api;
                match retry(self.deadline, || async {
                    api.get_opt(&name)
                        .await
                        .map_err(|e| KubeError::from_kube(&context, e))
                })
                .await
                {
                    Ok(Some(o)) => self.observe(&o),
                    Ok(None) => {}
                    Err(e) if e.is_transient() => break,
                    Err(e) => return Err(e),
                }
            }
            if self.pending.is_empty() {
                return Ok(());
            }
            self.nudge_due().await;
            if !pause.wait(self.deadline).await {
                return Err(self.not_established(started.elapsed()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn conditions_accept_what_the_api_server_sends() {
        // A CRD's first events, as kube-apiserver 1.36 sends them.
        assert_eq!(
            conditions(
                &json!({"status": {"conditions": null, "acceptedNames": {"kind": "", "plural": ""}, "storedVersions": null}})
            ),
            CrdConditions::default()
        );
        assert_eq!(
            conditions(&json!({"status": null})),
            CrdConditions::default()
        );
        assert_eq!(conditions(&json!({})), CrdConditions::default());
        let c = conditions(&json!({"status": {"conditions": [
            {"type": "NamesAccepted", "status": "False", "reason": "MultipleNamesConflict", "message": "\"Issuer\" is already in use"},
            {"type": "Established", "status": "False", "reason": "NotAccepted", "message": null}
        ]}}));
        assert!(!c.established);
        assert_eq!(c.not_true.len(), 2);
        assert!(c.not_true[0].contains("already in use"));
        let c = conditions(
            &json!({"status": {"conditions": [{"type": "Established", "status": "True"}]}}),
        );
        assert!(c.established);
    }
}
