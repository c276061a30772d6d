//! The resource types the stand-in serves: a fixed table of built-ins plus every served version
//! of an Established CustomResourceDefinition, and the discovery documents built from them.

use serde_json::{Value, json};

/// When `metadata.generation` moves, as each kind's registry strategy has it (kubernetes v1.36):
/// Deployments on a spec or annotation change (`pkg/registry/apps/deployment/strategy.go`,
/// `PrepareForUpdate`), Pods and NetworkPolicies on a spec change (their `strategy.go`),
/// CRDs on a spec change (`k8s.io/apiextensions-apiserver` v0.36.2
/// `pkg/registry/customresourcedefinition/strategy.go` l.77 and l.105), custom resources on
/// any change outside `metadata` (`pkg/registry/customresource/strategy.go` l.155 and
/// l.180-186). Namespaces, Secrets, ConfigMaps, Services, ServiceAccounts, ResourceQuotas and RBAC
/// objects have no generation at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generation {
    None,
    Spec,
    SpecOrAnnotations,
    AllButMetadata,
}

/// One served resource type (one group/version/plural).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub namespaced: bool,
    pub status_subresource: bool,
    pub short_names: Vec<String>,
    /// Discovery categories (`all` for Services, Pods and Deployments).
    pub categories: Vec<String>,
    pub generation: Generation,
    /// Served for a CustomResourceDefinition.
    pub custom: bool,
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    fn singular(&self) -> String {
        self.kind.to_lowercase()
    }
    /// `plural` or `plural.group`, as errors name the resource.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The kind's zero value, the "old object" a create is compared with: built-in objects
    /// decode into Go structs whose `spec` and `status` (and a few structs inside) exist even
    /// when empty, so a create does not add them; a custom resource starts from nothing.
    pub fn zero(&self) -> serde_json::Value {
        let mut v = json!({"metadata": {}});
        if self.custom {
            return v;
        }
        match self.kind.as_str() {
            "Namespace" | "ResourceQuota" | "Pod" => {
                v["spec"] = json!({});
                v["status"] = json!({});
            }
            "Service" => {
                v["spec"] = json!({});
                v["status"] = json!({"loadBalancer": {}});
            }
            "Deployment" => {
                v["spec"] = json!({"template": {"metadata": {}, "spec": {}}, "strategy": {}});
                v["status"] = json!({});
            }
            "NetworkPolicy" => v["spec"] = json!({}),
            "ClusterRoleBinding" | "RoleBinding" => v["roleRef"] = json!({}),
            "CustomResourceDefinition" => {
                v["spec"] = json!({"names": {}});
                v["status"] = json!({"acceptedNames": {}});
            }
            _ => {}
        }
        v
    }
}

/// Whether this is a built-in group (its unknown paths answer a NotFound Status rather than
/// the plain-text 404 of the API server's catch-all handler).
pub fn builtin_group(group: &str) -> bool {
    BUILTINS.iter().any(|b| b.0 == group)
}

const BUILTINS: &[(&str, &str, &str, &str, bool, bool, Generation)] = &[
    // group, version, kind, plural, namespaced, status subresource, generation
    (
        "",
        "v1",
        "Namespace",
        "namespaces",
        false,
        true,
        Generation::None,
    ),
    ("", "v1", "Secret", "secrets", true, false, Generation::None),
    (
        "",
        "v1",
        "ConfigMap",
        "configmaps",
        true,
        false,
        Generation::None,
    ),
    (
        "",
        "v1",
        "Service",
        "services",
        true,
        true,
        Generation::None,
    ),
    (
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        true,
        false,
        Generation::None,
    ),
    (
        "",
        "v1",
        "ResourceQuota",
        "resourcequotas",
        true,
        true,
        Generation::None,
    ),
    ("", "v1", "Pod", "pods", true, true, Generation::Spec),
    (
        "apps",
        "v1",
        "Deployment",
        "deployments",
        true,
        true,
        Generation::SpecOrAnnotations,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRole",
        "clusterroles",
        false,
        false,
        Generation::None,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        false,
        false,
        Generation::None,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "Role",
        "roles",
        true,
        false,
        Generation::None,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        "rolebindings",
        true,
        false,
        Generation::None,
    ),
    (
        "networking.k8s.io",
        "v1",
        "NetworkPolicy",
        "networkpolicies",
        true,
        false,
        Generation::Spec,
    ),
    (
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
        true,
        Generation::Spec,
    ),
];

fn short_names(kind: &str) -> &'static [&'static str] {
    match kind {
        "Namespace" => &["ns"],
        "Service" => &["svc"],
        "ServiceAccount" => &["sa"],
        "ConfigMap" => &["cm"],
        "ResourceQuota" => &["quota"],
        "Pod" => &["po"],
        "Deployment" => &["deploy"],
        "NetworkPolicy" => &["netpol"],
        "CustomResourceDefinition" => &["crd", "crds"],
        _ => &[],
    }
}

pub fn builtins() -> Vec<ResourceType> {
    BUILTINS
        .iter()
        .map(|(g, v, k, p, n, s, generation)| ResourceType {
            group: g.to_string(),
            version: v.to_string(),
            kind: k.to_string(),
            plural: p.to_string(),
            namespaced: *n,
            status_subresource: *s,
            short_names: short_names(k).iter().map(|n| n.to_string()).collect(),
            categories: match *k {
                "Service" | "Pod" | "Deployment" => vec!["all".to_string()],
                "CustomResourceDefinition" => vec!["api-extensions".to_string()],
                _ => Vec::new(),
            },
            generation: *generation,
            custom: false,
        })
        .collect()
}

/// The resource types a CRD object serves (every `served` version), as the real API server
/// derives them from `spec`.
pub fn from_crd(crd: &Value) -> Vec<ResourceType> {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default();
    let kind = spec["names"]["kind"].as_str().unwrap_or_default();
    let plural = spec["names"]["plural"].as_str().unwrap_or_default();
    let namespaced = spec["scope"].as_str() == Some("Namespaced");
    spec["versions"]
        .as_array()
        .map(|vs| {
            vs.iter()
                .filter(|v| v["served"].as_bool().unwrap_or(false))
                .map(|v| ResourceType {
                    group: group.to_string(),
                    version: v["name"].as_str().unwrap_or_default().to_string(),
                    kind: kind.to_string(),
                    plural: plural.to_string(),
                    namespaced,
                    status_subresource: v["subresources"]["status"].is_object(),
                    short_names: spec["names"]["shortNames"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|s| s.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default(),
                    categories: spec["names"]["categories"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|s| s.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default(),
                    generation: Generation::AllButMetadata,
                    custom: true,
                })
                .collect()
        })
        .unwrap_or_default()
}

impl ResourceType {
    /// The verbs discovery lists: the built-in order, or the order the CRD handler uses;
    /// Namespaces cannot be deleted as a collection.
    fn verbs(&self) -> Vec<&'static str> {
        if self.custom {
            return vec![
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "create",
                "update",
                "watch",
            ];
        }
        let all = [
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ];
        all.into_iter()
            .filter(|v| !(self.kind == "Namespace" && *v == "deletecollection"))
            .collect()
    }

    /// Short names and categories, each only when there are any.
    fn names_into(&self, entry: &mut Value) {
        if !self.short_names.is_empty() {
            entry["shortNames"] = json!(self.short_names);
        }
        if !self.categories.is_empty() {
            entry["categories"] = json!(self.categories);
        }
    }

    /// Identifies the storage version, as `storageVersionHash` does (8 bytes of a SHA-256,
    /// base64).
    fn storage_version_hash(&self) -> String {
        use base64::Engine;
        let digest = bootstrap_agent::bundle::sha256_hex(
            format!("{}/{}/{}", self.group, self.version, self.kind).as_bytes(),
        );
        let bytes: Vec<u8> = (0..8)
            .filter_map(|i| u8::from_str_radix(digest.get(2 * i..2 * i + 2)?, 16).ok())
            .collect();
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }
}

/// `APIResourceList` for one group/version (legacy discovery).
pub fn resource_list(group_version: &str, types: &[&ResourceType]) -> Value {
    let mut resources = Vec::new();
    for t in types {
        let mut entry = json!({
            "name": t.plural, "singularName": t.singular(), "namespaced": t.namespaced,
            "kind": t.kind, "verbs": t.verbs(),
        });
        t.names_into(&mut entry);
        entry["storageVersionHash"] = json!(t.storage_version_hash());
        resources.push(entry);
        if t.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", t.plural), "singularName": "", "namespaced": t.namespaced,
                "kind": t.kind, "verbs": ["get", "patch", "update"],
            }));
        }
    }
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
}

/// Groups in discovery order (legacy group first, then by name), each with its versions.
pub fn groups(types: &[ResourceType]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for t in types {
        match out.iter_mut().find(|(g, _)| *g == t.group) {
            Some((_, vs)) => {
                if !vs.contains(&t.version) {
                    vs.push(t.version.clone())
                }
            }
            None => out.push((t.group.clone(), vec![t.version.clone()])),
        }
    }
    out
}

/// Legacy `APIGroupList` (`/apis`).
pub fn group_list(types: &[ResourceType]) -> Value {
    let groups: Vec<Value> = groups(types)
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, vs)| {
            let versions: Vec<Value> = vs
                .iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            json!({"name": g, "versions": versions, "preferredVersion": versions[0].clone()})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `APIGroup` for one named group (`/apis/GROUP`), None when nothing of it is served.
pub fn group_doc(types: &[ResourceType], group: &str) -> Option<Value> {
    let (g, vs) = groups(types)
        .into_iter()
        .find(|(g, _)| g == group && !g.is_empty())?;
    let versions: Vec<Value> = vs
        .iter()
        .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    Some(
        json!({"kind": "APIGroup", "apiVersion": "v1", "name": g, "versions": versions, "preferredVersion": versions[0].clone()}),
    )
}

/// Aggregated discovery (`apidiscovery.k8s.io/v2`, `APIGroupDiscoveryList`) for either the
/// legacy group (`legacy = true`, served at `/api`) or the named groups (`/apis`).
pub fn aggregated(types: &[ResourceType], legacy: bool) -> Value {
    let items: Vec<Value> = groups(types)
        .into_iter()
        .filter(|(g, _)| g.is_empty() == legacy)
        .map(|(g, vs)| {
            let versions: Vec<Value> = vs
                .iter()
                .map(|v| {
                    let resources: Vec<Value> = types
                        .iter()
                        .filter(|t| t.group == g && &t.version == v)
                        .map(|t| {
                            // Built-in kinds leave the response kind's group and version empty.
                            let kind = if t.custom {
                                json!({"group": t.group, "version": t.version, "kind": t.kind})
                            } else {
                                json!({"group": "", "version": "", "kind": t.kind})
                            };
                            let mut r = json!({
                                "resource": t.plural,
                                "responseKind": kind,
                                "scope": if t.namespaced { "Namespaced" } else { "Cluster" },
                                "singularResource": t.singular(),
                                "verbs": t.verbs(),
                            });
                            t.names_into(&mut r);
                            if t.status_subresource {
                                r["subresources"] = json!([{
                                    "subresource": "status",
                                    "responseKind": kind,
                                    "verbs": ["get", "patch", "update"],
                                }]);
                            }
                            r
                        })
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            let metadata = if g.is_empty() {
                json!({})
            } else {
                json!({"name": g})
            };
            json!({"metadata": metadata, "versions": versions})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

/// `/openapi/v3`: one entry per group/version.
pub fn openapi_root(types: &[ResourceType]) -> Value {
    let mut paths = serde_json::Map::new();
    for (g, vs) in groups(types) {
        for v in vs {
            let p = if g.is_empty() {
                format!("api/{v}")
            } else {
                format!("apis/{g}/{v}")
            };
            paths.insert(
                p.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash=0")}),
            );
        }
    }
    json!({"paths": paths})
}

/// `/openapi/v3/apis/GROUP/VERSION`: the PATCH operations with the query parameters clients
/// probe for (`fieldValidation`, `fieldManager`, `force`, `dryRun`). Schemas are left open:
/// the stand-in does not validate field types.
pub fn openapi_gv(types: &[ResourceType], group: &str, version: &str) -> Option<Value> {
    let ts: Vec<&ResourceType> = types
        .iter()
        .filter(|t| t.group == group && t.version == version)
        .collect();
    if ts.is_empty() {
        return None;
    }
    let prefix = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    let mut paths = serde_json::Map::new();
    for t in ts {
        let path = if t.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", t.plural)
        } else {
            format!("{prefix}/{}/{{name}}", t.plural)
        };
        let params: Vec<Value> = ["dryRun", "fieldManager", "fieldValidation", "force"]
            .iter()
            .map(|n| json!({"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": true}}))
            .collect();
        let gvk = json!({"group": t.group, "version": t.version, "kind": t.kind});
        paths.insert(path, json!({
            "get": {"operationId": format!("read{}", t.kind), "x-kubernetes-group-version-kind": gvk, "responses": {"200": {"description": "OK"}}},
            "patch": {"operationId": format!("patch{}", t.kind), "x-kubernetes-group-version-kind": gvk, "parameters": params, "responses": {"200": {"description": "OK"}}},
        }));
    }
    Some(
        json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.36.2"}, "paths": paths, "components": {"schemas": {}}}),
    )
}
