//! The test's hands on the real API server: read objects, seed them as another field manager,
//! and play the controllers by writing `/status` (kube-controller-manager for Deployments,
//! Flux's source- and kustomize-controller for the sync objects). Every status written here
//! must pass the API server's schema validation of the status subresource, so it has the shape
//! the real controllers write.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::ApiServer;
use crate::kubeapi::ObjectRef;

/// The served version of each group the tests touch.
fn version(group: &str) -> &'static str {
    match group {
        "" | "apps" | "apiextensions.k8s.io" | "rbac.authorization.k8s.io" => "v1",
        "networking.k8s.io" | "policy" | "admissionregistration.k8s.io" => "v1",
        "source.toolkit.fluxcd.io" | "kustomize.toolkit.fluxcd.io" => "v1",
        "cert-manager.io" | "gateway.networking.k8s.io" => "v1",
        other => panic!("no served version known for group {other:?}"),
    }
}

fn base(group: &str, plural: &str, namespace: &str) -> String {
    let prefix = if group.is_empty() {
        "/api/v1".to_string()
    } else {
        format!("/apis/{group}/{}", version(group))
    };
    if namespace.is_empty() {
        format!("{prefix}/{plural}")
    } else {
        format!("{prefix}/namespaces/{namespace}/{plural}")
    }
}

fn url(r: &ObjectRef) -> String {
    format!("{}/{}", base(&r.group, &r.plural, &r.namespace), r.name)
}

/// RFC 3339 now, as controllers write `lastTransitionTime`.
fn now() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "2026-01-01T00:00:00Z".into())
}

/// The field managers of an object, with the operations they used.
pub fn managers(obj: &Value) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
    {
        out.entry(e["manager"].as_str().unwrap_or_default().to_string())
            .or_default()
            .push(e["operation"].as_str().unwrap_or_default().to_string());
    }
    out
}

impl ApiServer {
    async fn send(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", content_type)
            .header("accept", "application/json")
            .body(body)
            .unwrap_or_else(|e| panic!("request: {e}"));
        match self.admin().send(req.map(kube::client::Body::from)).await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let bytes = http_body_util::BodyExt::collect(resp.into_body())
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                (
                    status,
                    serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                )
            }
            // The API server is down (a test killed it): callers treat 0 as "no answer".
            Err(_) => (0, Value::Null),
        }
    }

    /// The object as the server returns it, or None (404).
    pub async fn get(&self, r: &ObjectRef) -> Option<Value> {
        match self
            .send("GET", &url(r), "application/json", Vec::new())
            .await
        {
            (200, v) => Some(v),
            // Not there, or the API server is down or still starting (a test restarted it).
            (404 | 0 | 429 | 500.., _) => None,
            (code, v) => panic!("GET {}: {code} {v}", url(r)),
        }
    }

    /// Every object of one resource, in all namespaces.
    pub async fn list(&self, group: &str, plural: &str) -> Vec<Value> {
        let path = base(group, plural, "");
        match self
            .send("GET", &path, "application/json", Vec::new())
            .await
        {
            (200, v) => v["items"].as_array().cloned().unwrap_or_default(),
            (404 | 0 | 429 | 500.., _) => Vec::new(),
            (code, v) => panic!("GET {path}: {code} {v}"),
        }
    }

    /// Creates `obj` as field manager `manager` (an Update entry, as `kubectl create` makes).
    pub async fn create_as(&self, r: &ObjectRef, obj: Value, manager: &str) -> Value {
        let path = format!(
            "{}?fieldManager={manager}",
            base(&r.group, &r.plural, &r.namespace)
        );
        match self
            .send(
                "POST",
                &path,
                "application/json",
                obj.to_string().into_bytes(),
            )
            .await
        {
            (201, v) => v,
            (code, v) => panic!("POST {path}: {code} {v}"),
        }
    }

    /// Server-side applies `obj` as field manager `manager`, without force.
    pub async fn apply_as(&self, r: &ObjectRef, obj: Value, manager: &str) -> (u16, Value) {
        let path = format!("{}?fieldManager={manager}", url(r));
        self.send(
            "PATCH",
            &path,
            "application/apply-patch+yaml",
            obj.to_string().into_bytes(),
        )
        .await
    }

    /// Server-side applies `obj` as `manager`, with force and dry run as asked; the answer as is.
    pub async fn apply_raw(
        &self,
        r: &ObjectRef,
        obj: &Value,
        manager: &str,
        force: bool,
        dry_run: bool,
    ) -> (u16, Value) {
        let mut path = format!("{}?fieldManager={manager}", url(r));
        if force {
            path.push_str("&force=true");
        }
        if dry_run {
            path.push_str("&dryRun=All");
        }
        self.send(
            "PATCH",
            &path,
            "application/apply-patch+yaml",
            obj.to_string().into_bytes(),
        )
        .await
    }

    /// A JSON patch (RFC 6902) as `manager`.
    pub async fn json_patch(&self, r: &ObjectRef, patch: &Value, manager: &str) -> (u16, Value) {
        let path = format!("{}?fieldManager={manager}", url(r));
        self.send(
            "PATCH",
            &path,
            "application/json-patch+json",
            patch.to_string().into_bytes(),
        )
        .await
    }

    /// Deletes the object (background propagation); false when it was not there.
    pub async fn delete(&self, r: &ObjectRef) -> bool {
        let body = json!({"propagationPolicy": "Background"})
            .to_string()
            .into_bytes();
        match self.send("DELETE", &url(r), "application/json", body).await {
            (200 | 202, _) => true,
            (404, _) => false,
            (code, v) => panic!("DELETE {}: {code} {v}", url(r)),
        }
    }

    /// Replaces `obj` (a full object read earlier) as field manager `manager` (an Update).
    pub async fn replace_as(&self, r: &ObjectRef, obj: Value, manager: &str) -> Value {
        let path = format!("{}?fieldManager={manager}", url(r));
        match self
            .send(
                "PUT",
                &path,
                "application/json",
                obj.to_string().into_bytes(),
            )
            .await
        {
            (200, v) => v,
            (code, v) => panic!("PUT {path}: {code} {v}"),
        }
    }

    /// Merges `status` into the object's status subresource, as a controller does.
    pub async fn patch_status(&self, r: &ObjectRef, status: Value) -> bool {
        let path = format!("{}/status?fieldManager=envtest-controllers", url(r));
        let body = json!({"status": status}).to_string().into_bytes();
        match self
            .send("PATCH", &path, "application/merge-patch+json", body)
            .await
        {
            (200, _) => true,
            (404 | 0 | 409 | 429 | 500.., _) => false,
            (code, v) => panic!("PATCH {path}: {code} {v}"),
        }
    }

    /// Marks a Deployment Available with all replicas updated, as kube-controller-manager would.
    pub async fn mark_deployment_available(&self, namespace: &str, name: &str) -> bool {
        let r = ObjectRef::new("apps", "deployments", namespace, name);
        let Some(obj) = self.get(&r).await else {
            return false;
        };
        let replicas = obj["spec"]["replicas"].as_i64().unwrap_or(1);
        let now = now();
        self.patch_status(&r, json!({
            "observedGeneration": obj["metadata"]["generation"], "replicas": replicas,
            "updatedReplicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas,
            "conditions": [
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable", "message": "Deployment has minimum availability.", "lastTransitionTime": now, "lastUpdateTime": now},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable", "message": format!("ReplicaSet \"{name}\" has successfully progressed."), "lastTransitionTime": now, "lastUpdateTime": now},
            ],
        }))
        .await
    }

    /// Marks a Flux object with a Ready condition (`True`, or `False` with a reason) for its
    /// current generation, and `revision` as its artifact / last applied revision, in the shape
    /// source- and kustomize-controller write.
    pub async fn mark_flux(
        &self,
        r: &ObjectRef,
        ready: &str,
        reason: &str,
        message: &str,
        revision: &str,
    ) -> bool {
        self.mark_flux_with(r, ready, reason, message, revision, Value::Null)
            .await
    }

    /// [`Self::mark_flux`] with more status fields (`extra`, an object) in the same write, as a
    /// Flux controller patches its whole status at once.
    pub async fn mark_flux_with(
        &self,
        r: &ObjectRef,
        ready: &str,
        reason: &str,
        message: &str,
        revision: &str,
        extra: Value,
    ) -> bool {
        let Some(obj) = self.get(r).await else {
            return false;
        };
        let generation = obj["metadata"]["generation"].clone();
        let now = now();
        let mut conditions = vec![json!({"type": "Ready", "status": ready, "reason": reason,
            "message": message, "observedGeneration": generation, "lastTransitionTime": now})];
        if reason == "Stalled" {
            conditions.push(
                json!({"type": "Stalled", "status": "True", "reason": reason,
                "message": message, "observedGeneration": generation, "lastTransitionTime": now}),
            );
        }
        let mut status = json!({"observedGeneration": generation, "conditions": conditions});
        if r.plural == "gitrepositories" && ready == "True" {
            status["artifact"] = json!({"revision": revision,
                "path": "gitrepository/flux-system/flux-system/5f1c0a3e.tar.gz",
                "url": "http://source-controller.flux-system.svc.cluster.local./gitrepository/flux-system/flux-system/5f1c0a3e.tar.gz",
                "digest": "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
                "lastUpdateTime": now});
        }
        if r.plural == "kustomizations" {
            status["lastAttemptedRevision"] = json!(revision);
            if ready == "True" {
                status["lastAppliedRevision"] = json!(revision);
            }
        }
        if let Value::Object(fields) = extra {
            for (k, v) in fields {
                status[k] = v;
            }
        }
        self.patch_status(r, status).await
    }

    /// Names of the CRDs that are Established now.
    pub async fn established_crds(&self) -> BTreeSet<String> {
        self.list("apiextensions.k8s.io", "customresourcedefinitions")
            .await
            .into_iter()
            .filter(|c| {
                c["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Established" && c["status"] == "True")
                })
            })
            .filter_map(|c| c["metadata"]["name"].as_str().map(str::to_string))
            .collect()
    }
}
