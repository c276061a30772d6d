//! Handing the agent's objects over to their owners in Git, so that once Flux has taken them over
//! the agent owns no field of them and Git alone decides their content.
//!
//! kustomize-controller applies with server-side apply, field manager `kustomize-controller`,
//! forcing conflicts; it takes over only the managers `kubectl`, `before-first-apply`, its own
//! Update entries and those named by its `--override-manager` flag, which Flux's manifests leave
//! empty (fluxcd/kustomize-controller v1.9.4 `internal/controller/kustomization_controller.go`,
//! the `fieldManagers` list; fluxcd/pkg `ssa/patch.go`, `PatchReplaceFieldsManagers`). The agent's
//! own `bootstrap-agent` entry would therefore stay forever: a field removed from Git would stay
//! on the live object, and so would the agent's label. So the agent lets go itself, object by
//! object, once the new owner has applied it: a server-side apply of the bare object (apiVersion,
//! kind, name) as `bootstrap-agent`. Kubernetes then drops every field only the agent owned (its
//! label and digest annotation, anything Git no longer sets), keeps every field another manager
//! also owns, and removes the agent's entry (Kubernetes' server-side-apply documentation,
//! "Transferring ownership"; structured-merge-diff `merge/update.go`, prune of unapplied fields).
//!
//! Letting go before the new owner has applied would delete fields only the agent set, so an
//! object is released only when it has a `kustomize-controller` Apply entry and is in a
//! Kustomization's inventory (or, for CRDs that a HelmRelease installs, when another manager
//! owns it too). A Flux component the agent created that no Kustomization lists, once every
//! Kustomization in Flux's namespace is Ready and an inventory lists Flux's components at all,
//! is not in Git: the agent deletes it (only objects carrying its label, and only as it saw
//! them; never CRDs or Namespaces, whose deletion would take data with them). One that lost the
//! label, and a CRD or Namespace Git does not have, is left as it is and reported.

use std::collections::{BTreeMap, BTreeSet};

use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions};
use kube::core::PartialObjectMeta;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::flux::NAMESPACE;
use super::resources::{Mapping, Registry};
use super::retry::retry;
use super::{
    Cluster, FIELD_MANAGER, KubeError, MANAGED_BY_LABEL, MANAGED_BY_VALUE, ObjectReport,
    ObjectState,
};
use crate::bundle::{Bundle, Manifest};

/// kustomize-controller's field manager (fluxcd/kustomize-controller `main.go`,
/// `controllerName`).
pub const KUSTOMIZE_CONTROLLER: &str = "kustomize-controller";

/// What the hand-over found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HandOver {
    pub reports: Vec<ObjectReport>,
    /// Objects whose new owner has not applied them yet: ask again later.
    pub pending: usize,
}

/// The id kustomize-controller's inventory uses: `<namespace>_<name>_<group>_<kind>`, with `:`
/// in RBAC names written `__` (fluxcd/cli-utils `pkg/object/objmetadata.go`, `String`).
pub fn inventory_id(namespace: &str, name: &str, api_version: &str, kind: &str) -> String {
    let group = api_version.split_once('/').map_or("", |(g, _)| g);
    let name = if group == "rbac.authorization.k8s.io" {
        name.replace(':', "__")
    } else {
        name.to_string()
    };
    format!("{namespace}_{name}_{group}_{kind}")
}

/// Every Kustomization in Flux's namespace: the ids of their inventories, and whether each is
/// Ready at its current generation.
struct Inventories {
    ids: BTreeSet<String>,
    all_ready: bool,
}

async fn inventories(cluster: &Cluster, until: Instant) -> Result<Inventories, KubeError> {
    let mapping = Registry::new()
        .lookup("kustomize.toolkit.fluxcd.io/v1", "Kustomization")
        .ok_or_else(|| KubeError::Other {
            context: "Kustomization mapping".into(),
            message: "missing from the built-in table".into(),
        })?;
    let api: Api<DynamicObject> =
        Api::namespaced_with(cluster.client().clone(), NAMESPACE, &mapping.resource);
    let context = format!("list Kustomizations in {NAMESPACE}");
    let list = retry(until, || async {
        match api.list(&ListParams::default()).await {
            Ok(l) => Ok(l.items),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(Vec::new()),
            Err(e) => Err(KubeError::from_kube(&context, e)),
        }
    })
    .await?;
    let mut ids = BTreeSet::new();
    let mut all_ready = !list.is_empty();
    for k in &list {
        let status = &k.data["status"];
        for e in status["inventory"]["entries"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(id) = e["id"].as_str() {
                ids.insert(id.to_string());
            }
        }
        let observed = status["observedGeneration"].as_i64() == k.metadata.generation;
        let ready = status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        all_ready &= observed && ready;
    }
    Ok(Inventories { ids, all_ready })
}

/// The managers of an object's main resource and their operations (status writers, such as the
/// API server's own CRD controllers, own no part of what the agent applied).
fn managers(meta: &kube::api::ObjectMeta) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in meta
        .managed_fields
        .iter()
        .flatten()
        .filter(|e| e.subresource.as_deref().unwrap_or_default().is_empty())
    {
        if let Some(m) = &e.manager {
            out.entry(m.clone())
                .or_default()
                .insert(e.operation.clone().unwrap_or_default());
        }
    }
    out
}

/// One object the agent applied, as it is now.
struct Candidate<'m> {
    manifest: &'m Manifest,
    mapping: Mapping,
    namespace: Option<String>,
    /// Applied by the agent as one of Flux's components (deleted when Git does not have it).
    component: bool,
}

impl Candidate<'_> {
    fn report(&self, state: ObjectState, message: impl Into<String>) -> ObjectReport {
        ObjectReport::new(
            &self.manifest.kind,
            self.namespace.as_deref().unwrap_or_default(),
            &self.manifest.name,
            state,
            message,
        )
    }

    fn inventory_id(&self) -> String {
        inventory_id(
            self.namespace.as_deref().unwrap_or_default(),
            &self.manifest.name,
            &self.manifest.api_version,
            &self.manifest.kind,
        )
    }

    fn api(&self, cluster: &Cluster) -> Api<DynamicObject> {
        match &self.namespace {
            Some(ns) => Api::namespaced_with(cluster.client().clone(), ns, &self.mapping.resource),
            None => Api::all_with(cluster.client().clone(), &self.mapping.resource),
        }
    }
}

/// Hands every object of `bundle` (its CRD sets and Flux's components) and the sync objects
/// `sync` over to its owner in Git where that owner has taken it over.
pub(crate) async fn hand_over(
    cluster: &Cluster,
    bundle: &Bundle,
    sync: &[Manifest],
    until: Instant,
) -> Result<HandOver, KubeError> {
    let registry = {
        let mut r = Registry::new();
        for crd in bundle.all_crds().filter_map(|m| m.crd.as_ref()) {
            r.add_crd(crd);
        }
        r
    };
    let inventories = inventories(cluster, until).await?;
    let mut candidates = Vec::new();
    let sources = bundle
        .crds
        .iter()
        .map(|m| (m, false))
        .chain(bundle.flux.iter().map(|m| (m, true)))
        .chain(sync.iter().map(|m| (m, false)));
    for (m, component) in sources {
        let Some(mapping) = registry.lookup(&m.api_version, &m.kind) else {
            continue;
        };
        let namespace = if mapping.namespaced {
            m.namespace.clone()
        } else {
            None
        };
        candidates.push(Candidate {
            manifest: m,
            mapping,
            namespace,
            component,
        });
    }
    // Git's Flux components have been applied and recorded only once some inventory lists one
    // of them. Until then no component is taken for "not in Git", however Ready the
    // Kustomizations are (flux-components may exist and report Ready before it lists anything).
    let components_recorded = candidates
        .iter()
        .any(|c| c.component && inventories.ids.contains(&c.inventory_id()));
    let mut out = HandOver::default();
    for c in &candidates {
        let api = c.api(cluster);
        let context = format!("get {}", c.report(ObjectState::Unchanged, "").object());
        let live: Option<PartialObjectMeta<DynamicObject>> = retry(until, || async {
            match api.get_metadata_opt(&c.manifest.name).await {
                Ok(o) => Ok(o),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
                Err(e) => Err(KubeError::from_kube(&context, e)),
            }
        })
        .await?;
        let Some(live) = live else {
            continue;
        };
        let owners = managers(&live.metadata);
        if !owners.contains_key(FIELD_MANAGER) {
            // Handed over before (or never the agent's): nothing to do, nothing reported.
            continue;
        }
        let listed = inventories.ids.contains(&c.inventory_id());
        let taken = owners
            .get(KUSTOMIZE_CONTROLLER)
            .is_some_and(|ops| ops.contains("Apply"));
        let others: Vec<&String> = owners.keys().filter(|m| *m != FIELD_MANAGER).collect();
        let labelled = live
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(MANAGED_BY_LABEL))
            .is_some_and(|v| v == MANAGED_BY_VALUE);
        let definition = c.manifest.is_crd() || c.manifest.kind == "Namespace";
        if (listed && taken) || (!c.component && !listed && definition && !others.is_empty()) {
            release(cluster, c, until).await?;
            let by = if taken {
                KUSTOMIZE_CONTROLLER.to_string()
            } else {
                others
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            out.reports.push(c.report(
                ObjectState::Released,
                format!("handed over to {by}; the agent owns no field of it"),
            ));
        } else if listed {
            out.pending += 1;
            out.reports.push(c.report(
                ObjectState::Kept,
                "in Flux's inventory, not applied by kustomize-controller yet",
            ));
        } else if c.component
            && labelled
            && !definition
            && inventories.all_ready
            && components_recorded
        {
            if delete(cluster, c, &live.metadata, until).await? {
                out.reports.push(c.report(
                    ObjectState::Deleted,
                    "created by the agent and not in Git (no Kustomization lists it)",
                ));
            } else {
                out.pending += 1;
                out.reports.push(c.report(
                    ObjectState::Kept,
                    "changed by someone else while the agent looked at it: looked at again later",
                ));
            }
        } else if c.component && inventories.all_ready && components_recorded {
            // Not in Git, and not the agent's to delete: a definition (its deletion takes every
            // object of its kind, or of the namespace, with it) or an object someone has taken
            // the agent's label off. Nothing is left to wait for.
            out.reports.push(c.report(
                ObjectState::Kept,
                if definition {
                    "not in Git; the agent never deletes a CustomResourceDefinition or Namespace (its objects would go with it): delete it by hand if it is no longer wanted"
                } else {
                    "not in Git and no longer labelled as the agent's: left as it is"
                },
            ));
        } else if c.component {
            out.pending += 1;
            out.reports.push(c.report(
                ObjectState::Kept,
                "not in any Kustomization's inventory yet: Flux has not applied it",
            ));
        } else {
            out.reports.push(c.report(
                ObjectState::Kept,
                "no owner in Git has applied it yet; the agent keeps it",
            ));
        }
    }
    Ok(out)
}

/// Gives up every field of `c`: a server-side apply of the bare object as the agent's manager.
async fn release(cluster: &Cluster, c: &Candidate<'_>, until: Instant) -> Result<(), KubeError> {
    let mut bare = json!({
        "apiVersion": c.manifest.api_version,
        "kind": c.manifest.kind,
        "metadata": {"name": c.manifest.name},
    });
    if let Some(ns) = &c.namespace {
        bare["metadata"]["namespace"] = Value::String(ns.clone());
    }
    let api = c.api(cluster);
    let context = format!("release {}", c.report(ObjectState::Unchanged, "").object());
    let params = PatchParams::apply(FIELD_MANAGER);
    retry(until, || async {
        let req = kube::core::Request::new(api.resource_url())
            .patch(&c.manifest.name, &params, &Patch::Apply(&bare))
            .map_err(|e| KubeError::Other {
                context: context.clone(),
                message: e.to_string(),
            })?;
        cluster
            .client()
            .request::<super::apply::Applied>(req)
            .await
            .map(|_| ())
            .map_err(|e| KubeError::from_kube(&context, e))
    })
    .await
}

/// Deletes `c` as the agent saw it (`seen`): the UID and resourceVersion are preconditions, so an
/// object recreated or changed since (its label taken off, say) is never deleted. `false` when a
/// precondition failed.
async fn delete(
    cluster: &Cluster,
    c: &Candidate<'_>,
    seen: &kube::api::ObjectMeta,
    until: Instant,
) -> Result<bool, KubeError> {
    let api = c.api(cluster);
    let context = format!("delete {}", c.report(ObjectState::Unchanged, "").object());
    let params = DeleteParams::background().preconditions(Preconditions {
        uid: seen.uid.clone(),
        resource_version: seen.resource_version.clone(),
    });
    retry(until, || async {
        match api.delete(&c.manifest.name, &params).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(KubeError::from_kube(&context, e)),
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::inventory_id;

    #[test]
    fn inventory_ids_are_written_as_kustomize_controller_writes_them() {
        assert_eq!(
            inventory_id("", "flux-system", "v1", "Namespace"),
            "_flux-system__Namespace"
        );
        assert_eq!(
            inventory_id("flux-system", "source-controller", "apps/v1", "Deployment"),
            "flux-system_source-controller_apps_Deployment"
        );
        assert_eq!(
            inventory_id(
                "",
                "system:flux",
                "rbac.authorization.k8s.io/v1",
                "ClusterRole"
            ),
            "_system__flux_rbac.authorization.k8s.io_ClusterRole"
        );
    }
}
