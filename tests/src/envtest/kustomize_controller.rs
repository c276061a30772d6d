//! kustomize-controller's apply, played against the real API server: what Flux does when a
//! Kustomization reconciles, request for request, so that hand-over tests see the field
//! ownership Flux really leaves. Modelled on fluxcd/kustomize-controller v1.9.4 and the
//! fluxcd/pkg `ssa` module v0.76.1 it uses:
//!
//! - every object gets the owner labels `kustomize.toolkit.fluxcd.io/name` and `/namespace`
//!   (`ssa/manager.go`, `SetOwnerLabels`);
//! - objects go in stages: CRDs, Namespaces and ClusterRoles first, then a wait until the CRDs
//!   are Established; `*Class` kinds; then the rest (`ssa/manager_apply.go`, `ApplyAllStaged`;
//!   `ssa/utils/is.go`);
//! - per object: GET, a server-side apply dry run (force, field manager `kustomize-controller`),
//!   then, when the live object has entries of the managers Flux takes over (`kubectl` Apply and
//!   Update, `before-first-apply` Update, its own Update, and `--override-manager` names, prefix
//!   matched, main resource only) or the `kubectl.kubernetes.io/last-applied-configuration`
//!   annotation, one JSON patch that renames (or merges) those entries into
//!   `kustomize-controller`/Apply and removes that annotation
//!   (`internal/controller/kustomization_controller.go`, the `fieldManagers` list;
//!   `ssa/patch.go`, `PatchReplaceFieldsManagers`; `ssa/manager_apply.go`, `cleanupMetadata`);
//! - then the real apply (force) only if that patch was sent or the dry run differs from the
//!   live object in labels, annotations or anything outside metadata and status
//!   (`ssa/manager_diff.go`, `hasDrifted`);
//! - the inventory is every object as `<namespace>_<name>_<group>_<kind>` with its version, and
//!   prune deletes objects of the previous inventory that are not in the new one and still carry
//!   both owner labels (`internal/inventory/inventory.go`; `ssa/manager_delete.go`).

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use super::ApiServer;
use crate::kubeapi::ObjectRef;

/// The field manager kustomize-controller applies with.
pub const MANAGER: &str = "kustomize-controller";
const NAME_LABEL: &str = "kustomize.toolkit.fluxcd.io/name";
const NAMESPACE_LABEL: &str = "kustomize.toolkit.fluxcd.io/namespace";
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What one reconciliation did to one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub id: String,
    /// `created`, `configured` or `unchanged`, as Flux logs it.
    pub action: &'static str,
}

/// A Kustomization that kustomize-controller reconciles.
pub struct Kustomization<'a> {
    server: &'a ApiServer,
    pub name: String,
    pub namespace: String,
    /// `--override-manager` values (Flux's manifests set none).
    pub override_managers: Vec<String>,
}

fn group_of(api_version: &str) -> &str {
    api_version.split_once('/').map_or("", |(g, _)| g)
}

fn plural(kind: &str) -> String {
    let lower = kind.to_lowercase();
    match lower.as_str() {
        "networkpolicy" => "networkpolicies".into(),
        "ingressclass" | "gatewayclass" => format!("{lower}es"),
        _ if lower.ends_with("policy") => format!("{}ies", &lower[..lower.len() - 1]),
        _ if lower.ends_with('s') => format!("{lower}es"),
        _ => format!("{lower}s"),
    }
}

/// The object's reference in the harness's terms.
pub fn object_ref(obj: &Value) -> ObjectRef {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    let plural = match kind {
        "CustomResourceDefinition" => "customresourcedefinitions".into(),
        "GitRepository" => "gitrepositories".into(),
        "OCIRepository" => "ocirepositories".into(),
        "Kustomization" => "kustomizations".into(),
        other => plural(other),
    };
    ObjectRef::new(
        group_of(api_version),
        &plural,
        obj["metadata"]["namespace"].as_str().unwrap_or_default(),
        obj["metadata"]["name"].as_str().unwrap_or_default(),
    )
}

/// `<namespace>_<name>_<group>_<kind>` (fluxcd/cli-utils `pkg/object/objmetadata.go`).
pub fn inventory_id(obj: &Value) -> String {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let group = group_of(api_version);
    let mut name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if group == "rbac.authorization.k8s.io" {
        name = name.replace(':', "__");
    }
    format!(
        "{}_{name}_{group}_{}",
        obj["metadata"]["namespace"].as_str().unwrap_or_default(),
        obj["kind"].as_str().unwrap_or_default()
    )
}

/// Which stage an object goes in (`ssa/utils/is.go`).
fn stage(obj: &Value) -> u8 {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    let group = group_of(api_version);
    if group == "apiextensions.k8s.io"
        || (kind == "Namespace" && api_version == "v1")
        || (group == "rbac.authorization.k8s.io" && kind == "ClusterRole")
    {
        0
    } else if kind.ends_with("Class") {
        1
    } else {
        2
    }
}

/// Deep union of two FieldsV1 tries (sets of field paths).
fn union(into: &mut Value, from: &Value) {
    if let (Some(a), Some(b)) = (into.as_object_mut(), from.as_object()) {
        for (k, v) in b {
            match a.get_mut(k) {
                Some(existing) => union(existing, v),
                None => {
                    a.insert(k.clone(), v.clone());
                }
            }
        }
    }
}

impl<'a> Kustomization<'a> {
    pub fn new(server: &'a ApiServer, name: &str, namespace: &str) -> Kustomization<'a> {
        Kustomization {
            server,
            name: name.into(),
            namespace: namespace.into(),
            override_managers: Vec::new(),
        }
    }

    /// The managers whose entries Flux takes over: (name prefix, operation).
    fn taken_over(&self) -> Vec<(String, &'static str)> {
        let mut out = vec![
            ("kubectl".to_string(), "Apply"),
            ("kubectl".to_string(), "Update"),
            ("before-first-apply".to_string(), "Update"),
            (MANAGER.to_string(), "Update"),
        ];
        for m in &self.override_managers {
            out.push((m.clone(), "Apply"));
            out.push((m.clone(), "Update"));
        }
        out
    }

    /// The cleanup patch, when the live object needs one.
    fn cleanup(&self, live: &Value) -> Option<Value> {
        let mut ops = Vec::new();
        if live["metadata"]["annotations"].get(LAST_APPLIED).is_some() {
            ops.push(json!({"op": "remove", "path": "/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration"}));
        }
        let entries = live["metadata"]["managedFields"].as_array()?.clone();
        let rules = self.taken_over();
        let matches = |e: &Value| {
            e.get("subresource")
                .and_then(Value::as_str)
                .unwrap_or_default()
                == ""
                && rules.iter().any(|(prefix, op)| {
                    e["manager"]
                        .as_str()
                        .unwrap_or_default()
                        .starts_with(prefix.as_str())
                        && e["operation"] == *op
                })
        };
        if entries.iter().any(matches) {
            let mut ours = entries
                .iter()
                .find(|e| e["manager"] == MANAGER && e["operation"] == "Apply")
                .cloned();
            let mut kept = Vec::new();
            for e in &entries {
                if e["manager"] == MANAGER && e["operation"] == "Apply" {
                    continue;
                }
                if matches(e) {
                    match ours.as_mut() {
                        Some(o) => union(&mut o["fieldsV1"], &e["fieldsV1"]),
                        None => {
                            let mut renamed = e.clone();
                            renamed["manager"] = json!(MANAGER);
                            renamed["operation"] = json!("Apply");
                            ours = Some(renamed);
                        }
                    }
                } else {
                    kept.push(e.clone());
                }
            }
            kept.extend(ours);
            ops.push(json!({"op": "replace", "path": "/metadata/managedFields", "value": kept}));
        }
        (!ops.is_empty()).then_some(Value::Array(ops))
    }

    /// Applies one object as kustomize-controller does.
    async fn apply_one(&self, desired: &Value) -> Change {
        let r = object_ref(desired);
        let id = inventory_id(desired);
        let live = self.server.get(&r).await;
        let body = desired.clone();
        let (code, dry) = self.server.apply_raw(&r, &body, MANAGER, true, true).await;
        assert!(code < 300, "dry-run apply of {id}: {code} {dry}");
        let mut patched = false;
        if let Some(live) = &live
            && let Some(patch) = self.cleanup(live)
        {
            let (code, out) = self.server.json_patch(&r, &patch, MANAGER).await;
            assert!(code < 300, "cleanup patch of {id}: {code} {out}");
            patched = true;
        }
        let drifted = match &live {
            None => true,
            Some(live) => {
                let strip = |v: &Value| {
                    let mut v = v.clone();
                    if let Some(m) = v.as_object_mut() {
                        m.remove("metadata");
                        m.remove("status");
                    }
                    v
                };
                dry["metadata"]["labels"] != live["metadata"]["labels"]
                    || dry["metadata"]["annotations"] != live["metadata"]["annotations"]
                    || strip(&dry) != strip(live)
            }
        };
        if !(patched || drifted) {
            return Change {
                id,
                action: "unchanged",
            };
        }
        let (code, out) = self.server.apply_raw(&r, &body, MANAGER, true, false).await;
        assert!(code < 300, "apply of {id}: {code} {out}");
        Change {
            id,
            action: if live.is_some() {
                "configured"
            } else {
                "created"
            },
        }
    }

    /// One reconciliation of `objects`: staged apply, inventory, prune, and a Ready status with
    /// `revision`. Returns the changes.
    pub async fn reconcile(&self, objects: &[Value], revision: &str) -> Vec<Change> {
        let mut labelled: Vec<Value> = objects
            .iter()
            .map(|o| {
                let mut o = o.clone();
                o["metadata"]["labels"][NAME_LABEL] = json!(self.name);
                o["metadata"]["labels"][NAMESPACE_LABEL] = json!(self.namespace);
                o
            })
            .collect();
        labelled.sort_by_key(stage);
        let mut changes = Vec::new();
        for st in 0..=2 {
            let batch: Vec<&Value> = labelled.iter().filter(|o| stage(o) == st).collect();
            for o in &batch {
                changes.push(self.apply_one(o).await);
            }
            if st == 0 {
                let crds: BTreeSet<String> = batch
                    .iter()
                    .filter(|o| o["kind"] == "CustomResourceDefinition")
                    .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_string))
                    .collect();
                self.wait_established(&crds).await;
            }
        }
        let ks = ObjectRef::new(
            "kustomize.toolkit.fluxcd.io",
            "kustomizations",
            &self.namespace,
            &self.name,
        );
        let old: BTreeSet<String> = self
            .server
            .get(&ks)
            .await
            .map(|k| {
                k["status"]["inventory"]["entries"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e["id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let new: BTreeSet<String> = changes.iter().map(|c| c.id.clone()).collect();
        for stale in old.difference(&new) {
            self.prune(stale).await;
        }
        let entries: Vec<Value> = labelled
            .iter()
            .map(|o| {
                let v = o["apiVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_string();
                json!({"id": inventory_id(o), "v": v})
            })
            .collect();
        // Ready and the inventory arrive in one status write: kustomize-controller sets
        // `Status.Inventory` during the reconciliation and patches the whole status once, when
        // Reconcile returns (internal/controller/kustomization_controller.go, the deferred
        // `finalizeStatus` and patch), so nobody sees a Ready Kustomization without its inventory.
        if self.server.get(&ks).await.is_some() {
            assert!(
                self.server
                    .mark_flux_with(
                        &ks,
                        "True",
                        "ReconciliationSucceeded",
                        &format!("Applied revision: {revision}"),
                        revision,
                        json!({"inventory": {"entries": entries}}),
                    )
                    .await
            );
        }
        changes
    }

    async fn prune(&self, id: &str) {
        let parts: Vec<&str> = id.splitn(4, '_').collect();
        let [namespace, name, group, kind] = parts[..] else {
            return;
        };
        let obj = json!({"apiVersion": if group.is_empty() { "v1".to_string() } else { format!("{group}/v1") },
            "kind": kind, "metadata": {"name": name, "namespace": namespace}});
        let r = object_ref(&obj);
        let Some(live) = self.server.get(&r).await else {
            return;
        };
        let labels = &live["metadata"]["labels"];
        if labels[NAME_LABEL] == json!(self.name)
            && labels[NAMESPACE_LABEL] == json!(self.namespace)
        {
            self.server.delete(&r).await;
        }
    }

    async fn wait_established(&self, crds: &BTreeSet<String>) {
        for _ in 0..600 {
            let established = self.server.established_crds().await;
            if crds.is_subset(&established) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("CRDs not Established within 60 s: {crds:?}");
    }
}
