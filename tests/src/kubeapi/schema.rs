//! What server-side apply needs to know about an object's shape: which lists are associative
//! (and by which keys), which are sets, which objects are atomic, and which keys are declared
//! fields rather than entries of a map. kube-apiserver reads this from its OpenAPI models
//! (`x-kubernetes-list-type`, `x-kubernetes-list-map-keys`, `x-kubernetes-map-type`, a key's
//! `default`); the stand-in reads the same annotations from two sources:
//!
//! - for built-in kinds, the compact OpenAPI v3 fragments below: only the nodes that carry one
//!   of those annotations, and the paths to them. Every list of these kinds has an explicit
//!   `x-kubernetes-list-type` in Kubernetes v1.36's OpenAPI, so a list not named here is
//!   atomic. The fragments follow the `+listType`/`+listMapKey`/`+mapType`/`+structType` markers
//!   of `k8s.io/api` v0.36.2 (markers at e.g. `core/v1/types.go`: Container.Ports l.2958 keyed by
//!   `containerPort`+`protocol`, Env l.2976 by `name`, VolumeMounts l.3027 by `mountPath`,
//!   PodSpec.Volumes l.4143, Containers l.4170, ServiceSpec.Ports l.5985 by `port`+`protocol`,
//!   ServiceAccount.Secrets l.6365; `apps/v1/types.go` DeploymentStatus.Conditions l.524;
//!   `k8s.io/apimachinery` `pkg/apis/meta/v1/types.go` ObjectMeta.Finalizers l.278 (set),
//!   OwnerReferences l.259). `kube_differential` checks them against the OpenAPI the real
//!   kube-apiserver serves, node for node;
//! - for custom resources, the `openAPIV3Schema` of the CRD version, as the real server does
//!   (`x-kubernetes-preserve-unknown-fields` makes unknown keys map entries of unknown shape).
//!
//! A node without any schema is either *open* (an undeclared part of a built-in object: keys are
//! fields, lists atomic) or *deduced* (untyped: keys are map entries, lists atomic), as
//! kube-openapi's `schemaconv` and structured-merge-diff's deduced type treat them.

use std::sync::OnceLock;

use serde_json::{Map, Value, json};

/// How the items of a list are told apart.
#[derive(Clone, Debug, PartialEq)]
pub enum ListType {
    /// The list is one value.
    Atomic,
    /// Items are scalars, each its own element.
    Set,
    /// Items are objects identified by these keys, each with its default when the item omits
    /// it (e.g. a port's `protocol` defaults to `TCP`).
    Map(Vec<(String, Option<Value>)>),
}

#[derive(Clone, Copy, Debug)]
enum Node<'a> {
    Schema(&'a Value),
    /// Undeclared part of a built-in object: keys are fields, lists are atomic.
    Open,
    /// Untyped: keys are map entries, lists are atomic.
    Deduced,
}

/// The type of one node of an object, for field management.
#[derive(Clone, Copy, Debug)]
pub struct Ty<'a> {
    node: Node<'a>,
    /// The object's root: `metadata` is ObjectMeta whatever the schema says.
    root: bool,
}

fn defs() -> &'static Map<String, Value> {
    static DEFS: OnceLock<Map<String, Value>> = OnceLock::new();
    DEFS.get_or_init(builtin_defs)
}

fn lookup(name: &str) -> Option<&'static Value> {
    defs().get(name)
}

impl<'a> Ty<'a> {
    /// The type of a built-in kind's objects (open when the kind has no fragment).
    pub fn builtin(kind: &str) -> Ty<'static> {
        Ty {
            node: lookup(kind).map_or(Node::Open, Node::Schema),
            root: true,
        }
    }

    /// The type of custom resources validated by `schema` (a CRD version's `openAPIV3Schema`).
    pub fn custom(schema: Option<&'a Value>) -> Ty<'a> {
        Ty {
            node: schema.map_or(Node::Deduced, Node::Schema),
            root: true,
        }
    }

    fn at(node: Node<'a>) -> Ty<'a> {
        Ty { node, root: false }
    }

    /// The schema node behind `$ref`s.
    fn resolved(&self) -> Option<&'a Value> {
        let Node::Schema(mut s) = self.node else {
            return None;
        };
        for _ in 0..8 {
            match s.get("$ref").and_then(Value::as_str).and_then(lookup) {
                Some(r) => s = r,
                None => break,
            }
        }
        Some(s)
    }

    /// An annotation on the node itself or on what it refers to.
    fn ext(&self, key: &str) -> Option<&'a Value> {
        let Node::Schema(s) = self.node else {
            return None;
        };
        s.get(key)
            .or_else(|| self.resolved().and_then(|r| r.get(key)))
    }

    fn untyped(s: &Value) -> bool {
        [
            "type",
            "properties",
            "additionalProperties",
            "items",
            "$ref",
        ]
        .iter()
        .all(|k| s.get(k).is_none())
    }

    /// The type of key `key` of an object, and whether it is a declared field (as opposed to an
    /// entry of a map).
    pub fn child(&self, key: &str) -> (Ty<'a>, bool) {
        if self.root && key == "metadata" {
            return (Ty::at(Node::Schema(&defs()["ObjectMeta"])), true);
        }
        match self.node {
            Node::Open => (Ty::at(Node::Open), true),
            Node::Deduced => (Ty::at(Node::Deduced), false),
            Node::Schema(_) => {
                let Some(r) = self.resolved() else {
                    return (Ty::at(Node::Open), true);
                };
                if let Some(p) = r.get("properties").and_then(|p| p.get(key)) {
                    return (Ty::at(Node::Schema(p)), true);
                }
                match r.get("additionalProperties") {
                    Some(ap) if ap.is_object() => return (Ty::at(Node::Schema(ap)), false),
                    Some(Value::Bool(true)) => return (Ty::at(Node::Deduced), false),
                    _ => {}
                }
                if r["x-kubernetes-preserve-unknown-fields"] == true || Ty::untyped(r) {
                    (Ty::at(Node::Deduced), false)
                } else {
                    (Ty::at(Node::Open), true)
                }
            }
        }
    }

    /// The type of a list's items.
    pub fn items(&self) -> Ty<'a> {
        match self.node {
            Node::Open => Ty::at(Node::Open),
            Node::Deduced => Ty::at(Node::Deduced),
            Node::Schema(_) => match self.resolved().and_then(|r| r.get("items")) {
                Some(i) if i.is_object() => Ty::at(Node::Schema(i)),
                _ => Ty::at(Node::Deduced),
            },
        }
    }

    pub fn list_type(&self) -> ListType {
        match self.ext("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("set") => ListType::Set,
            Some("map") => {
                let items = self.items();
                let item = items.resolved();
                let keys = self
                    .ext("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .map(|ks| {
                        ks.iter()
                            .filter_map(Value::as_str)
                            .map(|k| {
                                let default = item
                                    .and_then(|i| i.get("properties"))
                                    .and_then(|p| p.get(k))
                                    .and_then(|p| p.get("default"))
                                    .cloned();
                                (k.to_string(), default)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                ListType::Map(keys)
            }
            _ => ListType::Atomic,
        }
    }

    /// Whether an object at this node is one value (`x-kubernetes-map-type: atomic`).
    pub fn atomic(&self) -> bool {
        self.ext("x-kubernetes-map-type").and_then(Value::as_str) == Some("atomic")
    }
}

/// The annotated nodes under a schema, one line each (`.spec.ports map[port=0,protocol=TCP]`,
/// `.spec.selector atomic`; `{*}` stands for map entries, `[*]` for list items), not
/// descending into atomic lists and objects nor into a definition already on the path.
/// Untyped nodes are not listed: in the built-in kinds they hold int-or-string values and
/// quantities, scalars that an open node treats the same way. Works on any
/// OpenAPI v3 document: `resolve` turns a `$ref` into its definition. The differential test
/// compares the real server's lines with the stand-in's.
pub fn describe<'v>(root: &'v Value, resolve: &dyn Fn(&str) -> Option<&'v Value>) -> Vec<String> {
    let mut out = Vec::new();
    walk_describe(root, "", &mut Vec::new(), resolve, &mut out);
    out.sort();
    out
}

fn walk_describe<'v>(
    s: &'v Value,
    path: &str,
    seen: &mut Vec<String>,
    resolve: &dyn Fn(&str) -> Option<&'v Value>,
    out: &mut Vec<String>,
) {
    let reference = s
        .get("$ref")
        .or_else(|| {
            s.get("allOf")
                .and_then(Value::as_array)
                .filter(|a| a.len() == 1)
                .and_then(|a| a[0].get("$ref"))
        })
        .and_then(Value::as_str);
    let (node, pushed) = match reference {
        Some(r) if seen.iter().any(|x| x == r) => return,
        Some(r) => match resolve(r) {
            Some(n) => {
                seen.push(r.to_string());
                (n, true)
            }
            None => return,
        },
        None => (s, false),
    };
    let get = |k: &str| s.get(k).or_else(|| node.get(k));
    let list_type = get("x-kubernetes-list-type").and_then(Value::as_str);
    let is_array = node.get("type").and_then(Value::as_str) == Some("array");
    if is_array {
        match list_type {
            Some("map") => {
                let item = node
                    .get("items")
                    .map(|i| resolve_ref(i, resolve))
                    .unwrap_or(&Value::Null);
                let keys: Vec<String> = get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(|k| match item["properties"][k].get("default") {
                        Some(d) => {
                            format!("{k}={}", d.as_str().map_or(d.to_string(), str::to_string))
                        }
                        None => k.to_string(),
                    })
                    .collect();
                out.push(format!("{path} map[{}]", keys.join(",")));
            }
            Some("set") => out.push(format!("{path} set")),
            _ => {}
        }
        if matches!(list_type, Some("map" | "set"))
            && let Some(items) = node.get("items")
        {
            walk_describe(items, &format!("{path}[*]"), seen, resolve, out);
        }
    } else if get("x-kubernetes-map-type").and_then(Value::as_str) == Some("atomic") {
        out.push(format!("{path} atomic"));
    } else {
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            for (k, v) in props {
                if path.is_empty() && matches!(k.as_str(), "metadata" | "apiVersion" | "kind") {
                    continue;
                }
                walk_describe(v, &format!("{path}.{k}"), seen, resolve, out);
            }
        }
        if let Some(ap) = node.get("additionalProperties").filter(|a| a.is_object()) {
            walk_describe(ap, &format!("{path}{{*}}"), seen, resolve, out);
        }
    }
    if pushed {
        seen.pop();
    }
}

fn resolve_ref<'v>(s: &'v Value, resolve: &dyn Fn(&str) -> Option<&'v Value>) -> &'v Value {
    s.get("$ref")
        .and_then(Value::as_str)
        .and_then(resolve)
        .unwrap_or(s)
}

/// The built-in fragments, as [`describe`] would read them.
pub fn describe_builtin(kind: &str) -> Vec<String> {
    match lookup(kind) {
        Some(root) => describe(root, &|r| lookup(r)),
        None => Vec::new(),
    }
}

fn obj(properties: Value) -> Value {
    json!({"type": "object", "properties": properties})
}

fn atomic_obj() -> Value {
    json!({"type": "object", "x-kubernetes-map-type": "atomic"})
}

fn atomic_map() -> Value {
    json!({"type": "object", "additionalProperties": {"type": "string"}, "x-kubernetes-map-type": "atomic"})
}

/// An associative list keyed by `keys`; a key given with a value defaults to it (the OpenAPI
/// gives required string keys `""` and required numbers `0`, the port protocols `TCP`).
fn keyed(keys: &[(&str, Option<Value>)], item: Value) -> Value {
    let mut item = item;
    // A referenced definition declares its key's default itself.
    if item.get("$ref").is_none() {
        for (k, default) in keys {
            if let Some(d) = default {
                item["properties"][*k] = json!({"default": d});
            }
        }
    }
    let names: Vec<&str> = keys.iter().map(|(k, _)| *k).collect();
    json!({"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": names, "items": item})
}

/// An associative list keyed by one required string field.
fn by(key: &str, item: Value) -> Value {
    keyed(&[(key, Some(json!("")))], item)
}

fn set() -> Value {
    json!({"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}})
}

fn reference(name: &str) -> Value {
    json!({"$ref": name})
}

/// Items keyed by a port number and `protocol`, which defaults to TCP.
fn ports(port: &str) -> Value {
    keyed(
        &[(port, Some(json!(0))), ("protocol", Some(json!("TCP")))],
        obj(json!({})),
    )
}

fn conditions() -> Value {
    by("type", obj(json!({})))
}

fn builtin_defs() -> Map<String, Value> {
    let atomic_fields = |names: &[&str]| -> Value {
        let mut m = Map::new();
        for n in names {
            m.insert((*n).to_string(), atomic_obj());
        }
        obj(Value::Object(m))
    };
    let claims = || obj(json!({"claims": by("name", obj(json!({})))}));
    let named = || json!({"type": "string", "default": ""});
    let container = obj(json!({
        "name": named(),
        "ports": ports("containerPort"),
        "env": by("name", obj(json!({"valueFrom": atomic_fields(&[
            "configMapKeyRef", "fieldRef", "fileKeyRef", "resourceFieldRef", "secretKeyRef"])}))),
        "volumeMounts": by("mountPath", obj(json!({}))),
        "volumeDevices": by("devicePath", obj(json!({}))),
        "resources": claims(),
    }));
    let secret_ref = || atomic_fields(&["secretRef"]);
    let volume = obj(json!({
        "name": named(),
        "cephfs": secret_ref(), "cinder": secret_ref(), "flexVolume": secret_ref(),
        "iscsi": secret_ref(), "rbd": secret_ref(), "scaleIO": secret_ref(),
        "storageos": secret_ref(),
        "csi": atomic_fields(&["nodePublishSecretRef"]),
        "ephemeral": obj(json!({"volumeClaimTemplate": obj(json!({
            "metadata": reference("ObjectMeta"),
            "spec": atomic_fields(&["dataSource", "selector"]),
        }))})),
    }));
    let pod_spec = obj(json!({
        "containers": by("name", reference("Container")),
        "initContainers": by("name", reference("Container")),
        "ephemeralContainers": by("name", reference("Container")),
        "volumes": by("name", reference("Volume")),
        "imagePullSecrets": by("name", atomic_obj()),
        "hostAliases": by("ip", obj(json!({}))),
        "topologySpreadConstraints": keyed(
            &[("topologyKey", Some(json!(""))), ("whenUnsatisfiable", Some(json!("")))],
            atomic_fields(&["labelSelector"])),
        "schedulingGates": by("name", obj(json!({}))),
        "resourceClaims": by("name", obj(json!({}))),
        "resources": claims(),
        "nodeSelector": atomic_map(),
        "affinity": obj(json!({"nodeAffinity": atomic_fields(&["requiredDuringSchedulingIgnoredDuringExecution"])})),
    }));
    let mut defs = Map::new();
    let mut def = |name: &str, v: Value| {
        defs.insert(name.to_string(), v);
    };
    def(
        "ObjectMeta",
        obj(json!({"finalizers": set(), "ownerReferences": by("uid", atomic_obj())})),
    );
    def("Container", container);
    def("Volume", volume);
    def("PodSpec", pod_spec);
    def(
        "Namespace",
        obj(json!({"status": obj(json!({"conditions": conditions()}))})),
    );
    def(
        "Service",
        obj(json!({
            "spec": obj(json!({"ports": ports("port"), "selector": atomic_map()})),
            "status": obj(json!({"conditions": conditions()})),
        })),
    );
    def(
        "ResourceQuota",
        obj(json!({"spec": obj(json!({"scopeSelector": atomic_obj()}))})),
    );
    def(
        "ServiceAccount",
        obj(json!({"secrets": keyed(&[("name", None)], atomic_obj())})),
    );
    def(
        "Pod",
        obj(json!({
            "spec": reference("PodSpec"),
            "status": obj(json!({
                "conditions": conditions(),
                "podIPs": by("ip", obj(json!({}))),
                "resourceClaimStatuses": by("name", obj(json!({}))),
                "resources": claims(),
            })),
        })),
    );
    def(
        "Deployment",
        obj(json!({
            "spec": obj(json!({
                "selector": atomic_obj(),
                "template": obj(json!({"metadata": reference("ObjectMeta"), "spec": reference("PodSpec")})),
            })),
            "status": obj(json!({"conditions": conditions()})),
        })),
    );
    def("ClusterRoleBinding", obj(json!({"roleRef": atomic_obj()})));
    def("RoleBinding", obj(json!({"roleRef": atomic_obj()})));
    def(
        "NetworkPolicy",
        obj(json!({"spec": obj(json!({"podSelector": atomic_obj()}))})),
    );
    def(
        "CustomResourceDefinition",
        obj(json!({"status": obj(json!({"conditions": conditions()}))})),
    );
    defs
}
