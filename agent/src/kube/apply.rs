//! Staged server-side apply: one metadata list per kind and namespace to learn what exists,
//! then one apply PATCH per object that is missing or differs, concurrent within a stage.
//! Conflicts with other field managers are reported (object, fields, managers), never forced
//! unless configured. CRDs the cluster has in the same or a newer version are left alone.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use kube::core::PartialObjectMeta;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::resources::{Mapping, Registry};
use super::retry::retry;
use super::{
    Cluster, DIGEST_ANNOTATION, FIELD_MANAGER, KubeError, MANAGED_BY_LABEL, MANAGED_BY_VALUE,
    ObjectReport,
};
use crate::bundle::{Bundle, sha256_hex};

const VERSION_LABEL: &str = "app.kubernetes.io/version";
const GATEWAY_VERSION_ANNOTATION: &str = "gateway.networking.k8s.io/bundle-version";

pub(crate) struct Applier<'a> {
    cluster: &'a Cluster,
    registry: Registry,
    deadline: Instant,
}

/// One object ready to apply.
struct Planned<'o> {
    object: &'o Value,
    mapping: Mapping,
    namespace: Option<String>,
    name: String,
}

impl Planned<'_> {
    fn report(&self, state: &str, message: impl Into<String>) -> ObjectReport {
        ObjectReport::new(
            self.object["kind"].as_str().unwrap_or_default(),
            self.namespace.as_deref().unwrap_or_default(),
            &self.name,
            state,
            message,
        )
    }
    fn api(&self, client: &kube::Client) -> Api<DynamicObject> {
        match &self.namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &self.mapping.resource),
            None => Api::all_with(client.clone(), &self.mapping.resource),
        }
    }
}

/// `vX.Y.Z` → comparable numbers; None when it is not a plain version.
fn parse_version(v: &str) -> Option<Vec<u64>> {
    let core = v.trim_start_matches('v').split(['-', '+']).next()?;
    core.split('.').map(|p| p.parse().ok()).collect()
}

fn version_of(
    labels: Option<&BTreeMap<String, String>>,
    annotations: Option<&BTreeMap<String, String>>,
) -> Option<String> {
    labels
        .and_then(|l| l.get(VERSION_LABEL))
        .or_else(|| annotations.and_then(|a| a.get(GATEWAY_VERSION_ANNOTATION)))
        .cloned()
}

fn object_version(o: &Value) -> Option<String> {
    o["metadata"]["labels"][VERSION_LABEL]
        .as_str()
        .or_else(|| o["metadata"]["annotations"][GATEWAY_VERSION_ANNOTATION].as_str())
        .map(str::to_string)
}

/// The digest identifies the object as defined (before the agent's own label/annotation).
pub(crate) fn digest(o: &Value) -> String {
    sha256_hex(&serde_json::to_vec(o).unwrap_or_default())
}

/// The object as sent: the definition plus the agent's label and digest annotation.
pub(crate) fn desired(o: &Value) -> Value {
    let d = digest(o);
    let mut v = o.clone();
    if !v["metadata"]["labels"].is_object() {
        v["metadata"]["labels"] = json!({});
    }
    v["metadata"]["labels"][MANAGED_BY_LABEL] = json!(MANAGED_BY_VALUE);
    if !v["metadata"]["annotations"].is_object() {
        v["metadata"]["annotations"] = json!({});
    }
    v["metadata"]["annotations"][DIGEST_ANNOTATION] = json!(d);
    v
}

/// A 409 from server-side apply: the fields and managers, from the Status causes.
fn conflict_message(e: &KubeError) -> Option<String> {
    match e {
        KubeError::Api {
            code: 409, message, ..
        } => Some(format!(
            "{message}; another field manager owns these fields: change them through their owner, or enable force for objects the agent owns"
        )),
        _ => None,
    }
}

impl<'a> Applier<'a> {
    pub fn new(cluster: &'a Cluster, bundle: &Bundle, deadline: Instant) -> Applier<'a> {
        let mut registry = Registry::new();
        for crd in bundle.all_crds() {
            registry.add_crd(&crd.object);
        }
        Applier {
            cluster,
            registry,
            deadline,
        }
    }

    async fn plan<'o>(&self, objects: &[&'o Value]) -> Result<Vec<Planned<'o>>, KubeError> {
        let mut out = Vec::with_capacity(objects.len());
        for o in objects {
            let api_version = o["apiVersion"].as_str().unwrap_or_default();
            let kind = o["kind"].as_str().unwrap_or_default();
            let name = o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let mapping = self
                .registry
                .resolve(self.cluster.client(), api_version, kind)
                .await?;
            let namespace = match (mapping.namespaced, o["metadata"]["namespace"].as_str()) {
                (true, Some(ns)) => Some(ns.to_string()),
                (true, None) => {
                    return Err(KubeError::Invalid {
                        object: format!("{kind} {name}"),
                        message:
                            "namespaced object without metadata.namespace; set it in the bundle"
                                .into(),
                    });
                }
                (false, _) => None,
            };
            out.push(Planned {
                object: o,
                mapping,
                namespace,
                name,
            });
        }
        Ok(out)
    }

    /// Metadata of what exists, one list request per (resource, namespace).
    async fn existing(
        &self,
        planned: &[Planned<'_>],
    ) -> Result<BTreeMap<(String, String, String), PartialObjectMeta<DynamicObject>>, KubeError>
    {
        let mut groups: BTreeSet<(String, String, Option<String>)> = BTreeSet::new();
        let mut out = BTreeMap::new();
        for p in planned {
            let k = (
                p.mapping.resource.api_version.clone(),
                p.mapping.resource.plural.clone(),
                p.namespace.clone(),
            );
            if !groups.insert(k) {
                continue;
            }
            let api = p.api(self.cluster.client());
            let context = format!(
                "list {} {}",
                p.mapping.resource.plural,
                p.namespace.as_deref().unwrap_or("")
            );
            let listed = retry(self.deadline, || async {
                match api.list_metadata(&ListParams::default()).await {
                    Ok(l) => Ok(l.items),
                    // A type not served yet (its CRD is in a later stage) has nothing in it.
                    Err(kube::Error::Api(s)) if s.code == 404 => Ok(Vec::new()),
                    Err(e) => Err(KubeError::from_kube(&context, e)),
                }
            })
            .await?;
            for item in listed {
                let name = item.metadata.name.clone().unwrap_or_default();
                out.insert(
                    (
                        p.mapping.resource.plural.clone() + "." + &p.mapping.resource.group,
                        p.namespace.clone().unwrap_or_default(),
                        name,
                    ),
                    item,
                );
            }
        }
        Ok(out)
    }

    /// Applies one stage; returns a report per object, or the failures.
    pub async fn apply_stage(&self, objects: &[&Value]) -> Result<Vec<ObjectReport>, KubeError> {
        if objects.is_empty() {
            return Ok(Vec::new());
        }
        let planned = self.plan(objects).await?;
        let existing = self.existing(&planned).await?;
        let force = self.cluster.options.force_conflicts;
        let results: Vec<(ObjectReport, bool)> = futures::stream::iter(planned.iter().map(|p| {
            let live = existing.get(&(
                p.mapping.resource.plural.clone() + "." + &p.mapping.resource.group,
                p.namespace.clone().unwrap_or_default(),
                p.name.clone(),
            ));
            self.apply_one(p, live, force)
        }))
        .buffered(self.cluster.options.concurrency.max(1))
        .collect()
        .await;
        let failures: Vec<&(ObjectReport, bool)> = results
            .iter()
            .filter(|(r, _)| r.state == "Conflict" || r.state == "Failed")
            .collect();
        if failures.is_empty() {
            Ok(results.into_iter().map(|(r, _)| r).collect())
        } else {
            let transient = failures.iter().all(|(_, t)| *t);
            Err(KubeError::Apply {
                failures: failures.into_iter().map(|(r, _)| r.clone()).collect(),
                transient,
            })
        }
    }

    /// Returns the report and whether a failure was transient.
    async fn apply_one(
        &self,
        p: &Planned<'_>,
        live: Option<&PartialObjectMeta<DynamicObject>>,
        force: bool,
    ) -> (ObjectReport, bool) {
        let want = digest(p.object);
        if let Some(live) = live {
            let annotations = live.metadata.annotations.as_ref();
            if annotations.and_then(|a| a.get(DIGEST_ANNOTATION)) == Some(&want) {
                return (p.report("Unchanged", ""), false);
            }
            if p.object["kind"] == "CustomResourceDefinition" {
                let live_v = version_of(live.metadata.labels.as_ref(), annotations);
                let ours = object_version(p.object);
                if let (Some(lv), Some(ov)) = (
                    live_v.as_deref().and_then(parse_version),
                    ours.as_deref().and_then(parse_version),
                ) {
                    let lv_s = live_v.clone().unwrap_or_default();
                    if lv > ov {
                        return (p.report("Kept", format!("the cluster has {lv_s}, newer than the bundle's {}; left to its owner", ours.unwrap_or_default())), false);
                    }
                    if lv == ov {
                        return (
                            p.report("Unchanged", format!("{lv_s} already installed")),
                            false,
                        );
                    }
                }
            }
        }
        let body = desired(p.object);
        let api = p.api(self.cluster.client());
        let mut params = PatchParams::apply(FIELD_MANAGER);
        params.force = force;
        let context = format!("apply {}", p.report("", "").object());
        let result = retry(self.deadline, || async {
            api.patch(&p.name, &params, &Patch::Apply(&body))
                .await
                .map(|_| ())
                .map_err(|e| KubeError::from_kube(&context, e))
        })
        .await;
        match result {
            Ok(()) if live.is_some() => (p.report("Configured", ""), false),
            Ok(()) => (p.report("Created", ""), false),
            Err(e) => match conflict_message(&e) {
                Some(m) => (p.report("Conflict", m), false),
                None => {
                    tracing::warn!(object = %p.report("", "").object(), error = %e, "apply failed");
                    let transient = e.is_transient();
                    (p.report("Failed", e.to_string()), transient)
                }
            },
        }
    }

    /// Waits until every named CRD has condition Established=True, with one watch (re-opened
    /// when the server ends it) rather than polling each CRD.
    pub async fn wait_established(
        &self,
        names: &[String],
        deadline: Duration,
    ) -> Result<(), KubeError> {
        let mut pending: BTreeSet<String> = names.iter().cloned().collect();
        if pending.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let until = self.deadline;
        let crd = self
            .registry
            .lookup("apiextensions.k8s.io/v1", "CustomResourceDefinition")
            .ok_or_else(|| KubeError::Other {
                context: "CRD mapping".into(),
                message: "missing from the built-in table".into(),
            })?;
        let api: Api<DynamicObject> = Api::all_with(self.cluster.client().clone(), &crd.resource);
        let mut rv = "0".to_string();
        let not_established = |pending: &BTreeSet<String>| KubeError::NotEstablished {
            names: pending.iter().cloned().collect(),
            waited: started.elapsed().min(deadline),
        };
        while !pending.is_empty() {
            let remaining = until.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(not_established(&pending));
            }
            let wp = WatchParams::default().timeout(remaining.as_secs().clamp(1, 290) as u32);
            let opened = retry(until, || async {
                api.watch(&wp, &rv)
                    .await
                    .map_err(|e| KubeError::from_kube("watch CustomResourceDefinitions", e))
            })
            .await;
            let stream = match opened {
                Ok(s) => s,
                Err(e) if e.is_transient() => return Err(not_established(&pending)),
                Err(e) => return Err(e),
            };
            let mut stream = std::pin::pin!(stream.into_stream());
            loop {
                let next = match tokio::time::timeout_at(until, stream.try_next()).await {
                    Ok(n) => n,
                    Err(_) => return Err(not_established(&pending)),
                };
                match next {
                    Ok(Some(WatchEvent::Added(o) | WatchEvent::Modified(o))) => {
                        if let Some(v) = o.metadata.resource_version.clone() {
                            rv = v;
                        }
                        if is_established(&o) {
                            if let Some(n) = &o.metadata.name {
                                pending.remove(n);
                            }
                            if pending.is_empty() {
                                return Ok(());
                            }
                        }
                    }
                    Ok(Some(WatchEvent::Bookmark(b))) => rv = b.metadata.resource_version,
                    Ok(Some(WatchEvent::Deleted(_))) => {}
                    Ok(Some(WatchEvent::Error(s))) => {
                        if s.code == 410 {
                            rv = "0".into();
                        }
                        break;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "CRD watch interrupted, reopening");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}

fn is_established(o: &DynamicObject) -> bool {
    o.data["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Established" && c["status"] == "True")
    })
}
