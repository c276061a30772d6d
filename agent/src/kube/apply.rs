//! Staged server-side apply: one metadata list per kind and namespace to learn what exists,
//! then one apply PATCH per object that is missing or differs, concurrent within a stage.
//! Conflicts with other field managers are reported (object, fields, managers), never forced
//! unless configured. CRDs the cluster has in the same or a newer version are left alone.

use futures::StreamExt;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use tokio::time::Instant;

use super::resources::{Mapping, Registry};
use super::retry::retry;
use super::{
    Cluster, DIGEST_ANNOTATION, FIELD_MANAGER, KubeError, MANAGED_BY_LABEL, MANAGED_BY_VALUE,
    ObjectReport, ObjectState,
};
use crate::bundle::{Bundle, Manifest};

const VERSION_LABEL: &str = "app.kubernetes.io/version";
const GATEWAY_VERSION_ANNOTATION: &str = "gateway.networking.k8s.io/bundle-version";

/// What the agent reads back from an apply: nothing but the metadata it needs, so that a
/// 1 MB CRD in the response is skipped rather than built into a tree.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Applied {}

pub(crate) struct Applier<'a> {
    cluster: &'a Cluster,
    registry: Registry,
    deadline: Instant,
    /// Namespaces this applier created: nothing can exist in them yet, so no list is needed.
    created_namespaces: std::sync::Mutex<BTreeSet<String>>,
}

/// One object ready to apply.
struct Planned<'o> {
    object: &'o Manifest,
    mapping: Mapping,
    namespace: Option<String>,
    name: String,
}

impl Planned<'_> {
    fn report(&self, state: ObjectState, message: impl Into<String>) -> ObjectReport {
        ObjectReport::new(
            &self.object.kind,
            self.namespace.as_deref().unwrap_or_default(),
            &self.name,
            state,
            message,
        )
    }
    /// `Kind namespace/name`, for messages.
    fn object(&self) -> String {
        self.report(ObjectState::Unchanged, "").object()
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

/// The object as sent: the definition plus the agent's label and digest annotation.
pub(crate) fn desired(m: &Manifest) -> Value {
    let mut v = m.object();
    if !v["metadata"]["labels"].is_object() {
        v["metadata"]["labels"] = json!({});
    }
    v["metadata"]["labels"][MANAGED_BY_LABEL] = json!(MANAGED_BY_VALUE);
    if !v["metadata"]["annotations"].is_object() {
        v["metadata"]["annotations"] = json!({});
    }
    v["metadata"]["annotations"][DIGEST_ANNOTATION] = json!(m.digest());
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
        for crd in bundle.all_crds().filter_map(|m| m.crd.as_ref()) {
            registry.add_crd(crd);
        }
        Applier {
            cluster,
            registry,
            deadline,
            created_namespaces: Default::default(),
        }
    }

    async fn plan<'o>(&self, objects: &[&'o Manifest]) -> Result<Vec<Planned<'o>>, KubeError> {
        let mut out = Vec::with_capacity(objects.len());
        for o in objects {
            let mapping = self
                .registry
                .resolve(self.cluster.client(), &o.api_version, &o.kind)
                .await?;
            let namespace = match (mapping.namespaced, &o.namespace) {
                (true, Some(ns)) => Some(ns.clone()),
                (true, None) => {
                    return Err(KubeError::Invalid {
                        object: format!("{} {}", o.kind, o.name),
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
                name: o.name.clone(),
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
            let fresh = p.namespace.as_ref().is_some_and(|ns| {
                self.created_namespaces
                    .lock()
                    .map(|c| c.contains(ns))
                    .unwrap_or(false)
            });
            if fresh {
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
    pub async fn apply_stage(&self, objects: &[&Manifest]) -> Result<Vec<ObjectReport>, KubeError> {
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
            .filter(|(r, _)| r.state.is_apply_failure())
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
        let want = p.object.digest();
        if let Some(live) = live {
            let annotations = live.metadata.annotations.as_ref();
            if annotations.and_then(|a| a.get(DIGEST_ANNOTATION)) == Some(&want) {
                return (p.report(ObjectState::Unchanged, ""), false);
            }
            if p.object.is_crd() {
                let live_v = version_of(live.metadata.labels.as_ref(), annotations);
                let ours = p.object.version_label.clone();
                if let (Some(lv), Some(ov)) = (
                    live_v.as_deref().and_then(parse_version),
                    ours.as_deref().and_then(parse_version),
                ) {
                    let lv_s = live_v.clone().unwrap_or_default();
                    if lv > ov {
                        return (p.report(ObjectState::Kept, format!("the cluster has {lv_s}, newer than the bundle's {}; left to its owner", ours.unwrap_or_default())), false);
                    }
                    if lv == ov {
                        return (
                            p.report(ObjectState::Unchanged, format!("{lv_s} already installed")),
                            false,
                        );
                    }
                }
            }
        }
        let body = desired(p.object);
        let api = p.api(self.cluster.client());
        let mut params = PatchParams::apply(FIELD_MANAGER);
        // Force only takes back fields on objects the agent created (they carry its label);
        // anything another tool made is never forced, whatever the configuration says.
        params.force = force
            && live.is_some_and(|l| {
                l.metadata
                    .labels
                    .as_ref()
                    .and_then(|ls| ls.get(MANAGED_BY_LABEL))
                    .is_some_and(|v| v == MANAGED_BY_VALUE)
            });
        let context = format!("apply {}", p.object());
        let request = kube::core::Request::new(api.resource_url()).patch(
            &p.name,
            &params,
            &Patch::Apply(&body),
        );
        drop(body);
        let result = match request {
            Ok(req) => {
                retry(self.deadline, || {
                    let req = clone_request(&req);
                    async {
                        self.cluster
                            .client()
                            .request::<Applied>(req)
                            .await
                            .map(|_| ())
                            .map_err(|e| KubeError::from_kube(&context, e))
                    }
                })
                .await
            }
            Err(e) => Err(KubeError::Invalid {
                object: p.object(),
                message: e.to_string(),
            }),
        };
        match result {
            Ok(()) if live.is_some() => (p.report(ObjectState::Configured, ""), false),
            Ok(()) => {
                if p.object.kind == "Namespace"
                    && p.object.api_version == "v1"
                    && let Ok(mut c) = self.created_namespaces.lock()
                {
                    c.insert(p.name.clone());
                }
                (p.report(ObjectState::Created, ""), false)
            }
            Err(e) => match conflict_message(&e) {
                Some(m) => (p.report(ObjectState::Conflict, m), false),
                None => {
                    tracing::warn!(object = %p.object(), error = %e, "apply failed");
                    let transient = e.is_transient();
                    (p.report(ObjectState::Failed, e.to_string()), transient)
                }
            },
        }
    }

    /// Waits until every named CRD has condition Established=True (see [`super::established`]).
    pub async fn wait_established(&self, names: &[String]) -> Result<(), KubeError> {
        if names.is_empty() {
            return Ok(());
        }
        super::established::Waiter::new(self.cluster, names, self.deadline)?
            .wait(self.cluster.options.watch_timeout)
            .await
    }
}

/// `http::Request` is not Clone; retries rebuild it from the parts.
pub(crate) fn clone_request(req: &http::Request<Vec<u8>>) -> http::Request<Vec<u8>> {
    let mut out = http::Request::new(req.body().clone());
    *out.method_mut() = req.method().clone();
    *out.uri_mut() = req.uri().clone();
    *out.headers_mut() = req.headers().clone();
    *out.version_mut() = req.version();
    out
}

#[cfg(test)]
mod tests {
    use super::parse_version;

    #[test]
    fn versions_compare_numerically() {
        assert!(parse_version("v1.21.1") < parse_version("v1.22.0"));
        assert!(parse_version("v1.10.0") > parse_version("v1.9.9"));
        assert_eq!(parse_version("v1.6.1"), parse_version("1.6.1"));
        assert_eq!(parse_version("v1.6.1-rc.1"), Some(vec![1, 6, 1]));
        assert_eq!(parse_version("latest"), None);
    }
}
