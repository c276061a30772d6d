//! The stand-in answers as the real API server does: the requests the agent makes (readiness,
//! server-side apply of the whole bundle and of the Flux sync objects, metadata lists, reads of
//! missing objects and unserved types, conflicts, Secrets, status writes, the CRD watch,
//! watches resumed from an older resourceVersion) are sent to both, and the answers are
//! compared: status codes, which fields are present, explicit `null`s, the kinds, reasons and
//! messages of errors, the exact `managedFields` each write leaves (FieldsV1 holds only keys),
//! generation, and the sequences of watch events. Values that differ by nature (uids,
//! timestamps, resourceVersions) are compared by type only. Last, the stand-in's schema
//! fragments for the built-in kinds are compared with the OpenAPI the real server serves.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::collections::BTreeMap;
use std::time::Duration;

use bootstrap_agent::bundle::Bundle;
use bootstrap_agent::kube::FluxSync;
use bootstrap_agent_tests::envtest::ApiServer;
use bootstrap_agent_tests::kubeapi::KubeApi;
use bootstrap_agent_tests::kubeapi::fixture::{Corpus, compose_bundle, upstream};
use bootstrap_agent_tests::kubeapi::schema;
use futures::StreamExt;
use serde_json::{Value, json};

/// One side: a client with the agent's settings (no hidden retries).
struct Side {
    name: &'static str,
    client: kube::Client,
}

impl Side {
    async fn new(name: &'static str, kubeconfig: &str) -> Side {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::from_yaml(kubeconfig).unwrap(),
            &Default::default(),
        )
        .await
        .unwrap();
        config.default_retry = false;
        Side {
            name,
            client: kube::Client::try_from(config).unwrap(),
        }
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &Value,
    ) -> (u16, Value) {
        let bytes = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", content_type)
            .header("accept", "application/json")
            .body(kube::client::Body::from(bytes))
            .unwrap();
        let resp = self
            .client
            .send(req)
            .await
            .unwrap_or_else(|e| panic!("{}: {method} {path}: {e}", self.name));
        let code = resp.status().as_u16();
        let bytes = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).trim().to_string()));
        (code, v)
    }

    /// A GET with its own Accept header: the status code, the content type and the body.
    async fn get(&self, path: &str, accept: &str) -> (u16, String, Value) {
        let req = http::Request::get(path)
            .header("accept", accept)
            .body(kube::client::Body::from(Vec::new()))
            .unwrap();
        let resp = self
            .client
            .send(req)
            .await
            .unwrap_or_else(|e| panic!("{}: GET {path}: {e}", self.name));
        let code = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        (
            code,
            ct,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Watch lines until `stop` holds for an event or `within` passes.
    async fn watch(
        &self,
        path: &str,
        within: Duration,
        stop: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let req = http::Request::get(path).body(Vec::new()).unwrap();
        let stream = self
            .client
            .request_stream(req)
            .await
            .unwrap_or_else(|e| panic!("{}: watch {path}: {e}", self.name));
        let mut lines = Box::pin(futures::io::AsyncBufReadExt::lines(stream));
        let mut out = Vec::new();
        let until = tokio::time::Instant::now() + within;
        while let Ok(Some(Ok(line))) = tokio::time::timeout_at(until, lines.next()).await {
            let v: Value = serde_json::from_str(&line).unwrap();
            let done = stop(&v);
            out.push(v);
            if done {
                break;
            }
        }
        out
    }
}

/// The shape of a JSON value: types in place of values, keys kept, `null` kept.
fn shape(v: &Value) -> Value {
    match v {
        Value::Null => json!("null"),
        Value::Bool(_) => json!("bool"),
        Value::Number(_) => json!("number"),
        Value::String(_) => json!("string"),
        Value::Array(a) => match a.first() {
            Some(first) => json!([shape(first)]),
            None => json!([]),
        },
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
    }
}

/// Both sides' answers, side by side.
#[derive(Default)]
struct Diff {
    mismatches: Vec<String>,
}

impl Diff {
    fn same(&mut self, what: &str, standin: Value, real: Value) {
        if standin != real {
            self.mismatches.push(format!(
                "{what}:\n  stand-in: {}\n  real:     {}",
                standin, real
            ));
        }
    }
    fn check(self) {
        assert!(
            self.mismatches.is_empty(),
            "the stand-in answers differently from kube-apiserver:\n{}",
            self.mismatches.join("\n")
        );
    }
}

fn crd(name: &str) -> Value {
    let docs: Vec<Value> = serde_saphyr::from_multiple(
        &std::fs::read_to_string(upstream("cert-manager.crds.yaml")).unwrap(),
    )
    .unwrap();
    docs.into_iter()
        .find(|d| d["metadata"]["name"] == name)
        .unwrap()
}

fn condition(event: &Value, t: &str) -> Option<String> {
    event["object"]["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == t)
        .and_then(|c| c["status"].as_str().map(str::to_string))
}

/// The events of a CRD from its creation until Established, reduced to (type, whether
/// `status.conditions` is null, NamesAccepted, Established), consecutive duplicates dropped.
fn crd_story(events: &[Value], name: &str) -> Value {
    let mut out: Vec<Value> = Vec::new();
    for e in events
        .iter()
        .filter(|e| e["object"]["metadata"]["name"] == name)
    {
        let step = json!([
            e["type"],
            e["object"]["status"]["conditions"].is_null(),
            condition(e, "NamesAccepted"),
            condition(e, "Established"),
        ]);
        if out.last() != Some(&step) {
            out.push(step);
        }
    }
    Value::Array(out)
}

async fn run(side: &Side, bundle: &Bundle) -> BTreeMap<String, Value> {
    let mut out: BTreeMap<String, Value> = BTreeMap::new();
    let apply = "application/apply-patch+yaml";
    let merge = "application/merge-patch+json";
    let json_ct = "application/json";

    let (code, body) = side.send("GET", "/readyz", json_ct, &Value::Null).await;
    out.insert("readyz".into(), json!([code, body]));

    // Server-side apply creates, then the same apply changes nothing.
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "flux-system",
        "labels": {"app.kubernetes.io/managed-by": "bootstrap-agent"},
        "annotations": {"bootstrap-agent.io/applied-digest": "abc"}}});
    let path = "/api/v1/namespaces/flux-system?fieldManager=bootstrap-agent";
    let (code, created) = side.send("PATCH", path, apply, &ns).await;
    out.insert(
        "apply create Namespace".into(),
        json!([
            code,
            shape(&created["metadata"]),
            created["metadata"]["managedFields"][0]["operation"]
        ]),
    );
    let (code, again) = side.send("PATCH", path, apply, &ns).await;
    out.insert(
        "apply unchanged Namespace".into(),
        json!([
            code,
            again["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
        ]),
    );

    // A metadata list, as the agent lists what exists, and one object's metadata, as it
    // looks for a namespace.
    let metadata =
        "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json";
    let (code, ct, list) = side.get("/api/v1/namespaces", metadata).await;
    let item = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["metadata"]["name"] == "flux-system")
        .cloned()
        .unwrap_or(Value::Null);
    out.insert(
        "metadata list".into(),
        json!([
            code,
            ct,
            list["kind"],
            list["apiVersion"],
            shape(&list["metadata"]),
            item["kind"],
            shape(&item["metadata"])
        ]),
    );
    let (code, ct, one) = side
        .get(
            "/api/v1/namespaces/flux-system",
            "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json",
        )
        .await;
    out.insert("metadata get".into(), json!([code, ct, shape(&one)]));

    // A missing object, and a type that is not served.
    let (code, missing) = side
        .send(
            "GET",
            "/api/v1/namespaces/flux-system/secrets/sops-age",
            json_ct,
            &Value::Null,
        )
        .await;
    out.insert(
        "get missing".into(),
        json!([
            code,
            shape(&missing),
            missing["reason"],
            missing["details"]["kind"]
        ]),
    );
    let (code, unserved) = side
        .send(
            "GET",
            "/apis/cert-manager.io/v1/clusterissuers",
            json_ct,
            &Value::Null,
        )
        .await;
    out.insert(
        "list unserved type".into(),
        json!([code, unserved["reason"]]),
    );

    // A Secret created with a field manager, read back.
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "sops-age", "namespace": "flux-system"}, "data": {"age.agekey": "QUdFLVNFQ1JFVC1LRVktMQ=="}});
    let (code, s) = side
        .send(
            "POST",
            "/api/v1/namespaces/flux-system/secrets?fieldManager=bootstrap-agent",
            json_ct,
            &secret,
        )
        .await;
    out.insert(
        "create Secret".into(),
        json!([code, s["type"], shape(&s["data"]), managed(&s)]),
    );
    let (code, again) = side
        .send(
            "POST",
            "/api/v1/namespaces/flux-system/secrets?fieldManager=bootstrap-agent",
            json_ct,
            &secret,
        )
        .await;
    out.insert("create Secret again".into(), json!([code, again]));
    let mut elsewhere = secret.clone();
    elsewhere["metadata"]["namespace"] = json!("nowhere");
    let (code, missing_ns) = side
        .send(
            "POST",
            "/api/v1/namespaces/nowhere/secrets?fieldManager=bootstrap-agent",
            json_ct,
            &elsewhere,
        )
        .await;
    out.insert(
        "create in a missing namespace".into(),
        json!([code, missing_ns]),
    );

    // A conflict: another manager owns a field the agent sets to another value.
    let svc = |target: Value| {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "conflict-demo", "namespace": "flux-system"},
            "spec": {"type": "ClusterIP", "selector": {"app": "conflict-demo"},
                "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": target}]}})
    };
    let (code, _) = side
        .send(
            "POST",
            "/api/v1/namespaces/flux-system/services?fieldManager=kubectl-edit",
            json_ct,
            &svc(json!(9090)),
        )
        .await;
    out.insert("create Service".into(), json!(code));
    let (code, conflict) = side
        .send(
            "PATCH",
            "/api/v1/namespaces/flux-system/services/conflict-demo?fieldManager=bootstrap-agent",
            apply,
            &svc(json!("http")),
        )
        .await;
    let causes: Vec<Value> = conflict["details"]["causes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| json!([c["reason"], c["field"]]))
        .collect();
    out.insert(
        "apply conflict".into(),
        json!([
            code,
            conflict["reason"],
            shape(&conflict),
            causes,
            conflict["message"]
        ]),
    );
    // Another port is another entry of the list (keyed by port and protocol): no conflict, but
    // two ports named `http` are invalid.
    let mut other = svc(json!("http"));
    other["spec"]["ports"][0]["port"] = json!(8080);
    let (code, invalid) = side
        .send(
            "PATCH",
            "/api/v1/namespaces/flux-system/services/conflict-demo?fieldManager=bootstrap-agent",
            apply,
            &other,
        )
        .await;
    out.insert("apply another port".into(), json!([code, invalid]));

    // A CRD from creation to Established, as the agent's watch sees it.
    let (code, list) = side
        .send(
            "GET",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            json_ct,
            &Value::Null,
        )
        .await;
    assert_eq!(code, 200);
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let name = "issuers.cert-manager.io";
    let watch_path = format!(
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions?watch=true&resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=20"
    );
    let watch = side.watch(&watch_path, Duration::from_secs(20), |e| {
        e["object"]["metadata"]["name"] == name
            && condition(e, "Established").as_deref() == Some("True")
    });
    let create = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        side.send(
            "PATCH",
            &format!("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}?fieldManager=bootstrap-agent"),
            apply,
            &crd(name),
        )
        .await
    };
    let (events, (code, _)) = tokio::join!(watch, create);
    out.insert("apply create CRD".into(), json!(code));
    out.insert("CRD watch story".into(), crd_story(&events, name));
    let first = events
        .iter()
        .find(|e| e["object"]["metadata"]["name"] == name)
        .cloned()
        .unwrap_or(Value::Null);
    out.insert(
        "CRD first event status".into(),
        shape(&first["object"]["status"]),
    );
    let last = events.last().cloned().unwrap_or(Value::Null);
    out.insert(
        "CRD established".into(),
        json!([shape(&last["object"]["status"]), managed(&last["object"])]),
    );

    // The agent's first CRD watch: from resourceVersion 0, with bookmarks: the current state,
    // then a bookmark saying where it ends.
    let start = side
        .watch(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions?watch=true&resourceVersion=0&allowWatchBookmarks=true&timeoutSeconds=2&fieldSelector=metadata.name%3Dissuers.cert-manager.io",
            Duration::from_secs(5),
            |e| e["type"] == "BOOKMARK",
        )
        .await;
    let steps: Vec<Value> = start
        .iter()
        .map(|e| json!([e["type"], shape(&e["object"]["metadata"])]))
        .collect();
    out.insert("watch from 0 with bookmarks".into(), json!(steps));

    // The agent's nudge of a CRD: an annotation added and removed by merge patches.
    let crd_path = format!(
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}?fieldManager=bootstrap-agent"
    );
    let mut nudges = Vec::new();
    for value in [json!("requested"), Value::Null] {
        let body = json!({"metadata": {"annotations": {"bootstrap-agent.io/establish": value}}});
        let (code, crd) = side.send("PATCH", &crd_path, merge, &body).await;
        nudges.push(json!([code, crd["metadata"]["generation"], managed(&crd)]));
    }
    out.insert("nudge CRD".into(), json!(nudges));

    // A watch from a resourceVersion the server no longer has.
    let old = side
        .watch(
            "/api/v1/namespaces?watch=true&resourceVersion=1&timeoutSeconds=5",
            Duration::from_secs(5),
            |_| true,
        )
        .await;
    let first = old.first().cloned().unwrap_or(Value::Null);
    out.insert(
        "watch too old".into(),
        json!([
            first["type"],
            first["object"]["code"],
            first["object"]["reason"]
        ]),
    );

    // A controller writes status; readers see it.
    let cr = json!({"apiVersion": "cert-manager.io/v1", "kind": "Issuer",
        "metadata": {"name": "selfsigned", "namespace": "flux-system"}, "spec": {"selfSigned": {}}});
    let (code, created) = side
        .send(
            "POST",
            "/apis/cert-manager.io/v1/namespaces/flux-system/issuers?fieldManager=test",
            json_ct,
            &cr,
        )
        .await;
    out.insert(
        "create custom resource".into(),
        json!([code, created["metadata"]["generation"]]),
    );
    let status = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "IsReady",
        "message": "ok", "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}]}});
    let (code, patched) = side
        .send(
            "PATCH",
            "/apis/cert-manager.io/v1/namespaces/flux-system/issuers/selfsigned/status",
            merge,
            &status,
        )
        .await;
    out.insert(
        "status write".into(),
        json!([
            code,
            patched["metadata"]["generation"],
            shape(&patched["status"]),
            managed(&patched)
        ]),
    );

    // A custom resource's watch cache starts at its first request: a watch from before that
    // is told the version is gone.
    let gone = side
        .watch(
            "/apis/cert-manager.io/v1/issuers?watch=true&resourceVersion=1&timeoutSeconds=5",
            Duration::from_secs(5),
            |_| true,
        )
        .await;
    let first = gone.first().cloned().unwrap_or(Value::Null);
    let message = first["object"]["message"].as_str().unwrap_or_default();
    out.insert(
        "watch before the cache".into(),
        json!([
            first["type"],
            shape(&first["object"]),
            first["object"]["code"],
            first["object"]["reason"],
            message.starts_with("too old resource version: 1 (")
        ]),
    );

    // A watch resumed from an older resourceVersion replays what happened since, as it
    // happened.
    out.insert("watch replay".into(), replay(side).await);

    // Paths the server does not serve.
    for path in [
        "/apis/cert-manager.io/v2/issuers",
        "/apis/cert-manager.io/v1/foos",
        "/apis/cert-manager.io/v1/issuers/selfsigned",
        "/apis/cert-manager.io/v1/namespaces/flux-system/issuers/selfsigned/scale",
        "/apis/nothing.example.com/v1",
        "/apis/nothing.example.com/v1/things",
        "/apis/apps/v2/deployments",
        "/apis/apps/v1/foos",
        "/apis/apps/v1/deployments/x",
        "/api/v2/pods",
        "/api/v1/foos",
        "/api/v1/namespaces/flux-system/secrets/sops-age/status",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/nothing.example.com",
        "/healthz/nothing",
    ] {
        let (code, body) = side.send("GET", path, json_ct, &Value::Null).await;
        out.insert(format!("GET {path}"), json!([code, body]));
    }
    let (code, group) = side.send("GET", "/apis/apps", json_ct, &Value::Null).await;
    out.insert(
        "GET /apis/apps".into(),
        json!([code, group["kind"], group["name"]]),
    );

    apply_bundle(side, bundle, &mut out).await;
    out
}

/// The managedFields entries, timestamps by type only. The server sorts entries by time (to
/// the second) before the manager's name, so they are compared in an order that does not
/// depend on when each write happened.
fn managed(obj: &Value) -> Value {
    let mut entries: Vec<Value> = obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let mut e = e.clone();
            e["time"] = shape(&e["time"]);
            e
        })
        .collect();
    entries.sort_by_key(|e| {
        ["operation", "manager", "apiVersion", "subresource"].map(|k| e[k].to_string())
    });
    Value::Array(entries)
}

/// The discovery entries a client resolving a kind reads: a group/version's resource list
/// (what kube-rs asks for a kind it does not know) and aggregated discovery (what kubectl asks).
async fn discovery(side: &Side, out: &mut BTreeMap<String, Value>) {
    let hashless = |mut r: Value| {
        if let Some(h) = r.get("storageVersionHash") {
            r["storageVersionHash"] = shape(h);
        }
        r
    };
    for (path, names) in [
        (
            "/api/v1",
            &["secrets", "namespaces", "namespaces/status", "services"][..],
        ),
        ("/apis/apps/v1", &["deployments"][..]),
        (
            "/apis/source.toolkit.fluxcd.io/v1",
            &["gitrepositories", "gitrepositories/status"][..],
        ),
    ] {
        let (code, ct, list) = side.get(path, "application/json").await;
        for name in names {
            let entry = list["resources"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["name"] == *name)
                .cloned()
                .unwrap_or(Value::Null);
            out.insert(
                format!("discovery {path} {name}"),
                json!([
                    code,
                    ct,
                    list["kind"],
                    list["groupVersion"],
                    hashless(entry)
                ]),
            );
        }
    }
    let aggregated =
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json";
    for (path, group, resource) in [
        ("/api", "", "secrets"),
        ("/apis", "apiextensions.k8s.io", "customresourcedefinitions"),
        ("/apis", "source.toolkit.fluxcd.io", "gitrepositories"),
    ] {
        let (code, ct, list) = side.get(path, aggregated).await;
        let item = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["metadata"]["name"].as_str().unwrap_or_default() == group)
            .cloned()
            .unwrap_or(Value::Null);
        let version = &item["versions"][0];
        let entry = version["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["resource"] == resource)
            .cloned()
            .unwrap_or(Value::Null);
        out.insert(
            format!("aggregated discovery {path} {resource}"),
            json!([
                code,
                ct,
                list["kind"],
                item["metadata"],
                version["freshness"],
                entry
            ]),
        );
    }
}

/// Creates two ConfigMaps, changes one, deletes the other, then watches from before.
async fn replay(side: &Side) -> Value {
    let base = "/api/v1/namespaces/flux-system/configmaps";
    let (_, list) = side
        .send("GET", base, "application/json", &Value::Null)
        .await;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let cm = |name: &str, v: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "flux-system"}, "data": {"k": v}});
    for (name, v) in [("replay-a", "1"), ("replay-b", "1")] {
        side.send(
            "POST",
            &format!("{base}?fieldManager=test"),
            "application/json",
            &cm(name, v),
        )
        .await;
    }
    side.send(
        "PATCH",
        &format!("{base}/replay-b"),
        "application/merge-patch+json",
        &json!({"data": {"k": "2"}}),
    )
    .await;
    side.send(
        "DELETE",
        &format!("{base}/replay-a"),
        "application/json",
        &Value::Null,
    )
    .await;
    let events = side
        .watch(
            &format!("{base}?watch=true&resourceVersion={rv}&timeoutSeconds=5"),
            Duration::from_secs(5),
            |e| e["type"] == "DELETED",
        )
        .await;
    events
        .iter()
        .map(|e| {
            json!([
                e["type"],
                e["object"]["metadata"]["name"],
                e["object"]["data"]
            ])
        })
        .collect()
}

fn plural(kind: &str) -> String {
    match kind {
        "NetworkPolicy" => "networkpolicies".into(),
        "Kustomization" => "kustomizations".into(),
        "GitRepository" => "gitrepositories".into(),
        "CustomResourceDefinition" => "customresourcedefinitions".into(),
        k => format!("{}s", k.to_lowercase()),
    }
}

/// Where an object is applied.
fn object_path(obj: &Value) -> String {
    let api_version = obj["apiVersion"].as_str().unwrap();
    let prefix = if api_version.contains('/') {
        format!("/apis/{api_version}")
    } else {
        format!("/api/{api_version}")
    };
    let ns = match obj["metadata"]["namespace"].as_str() {
        Some(ns) => format!("/namespaces/{ns}"),
        None => String::new(),
    };
    format!(
        "{prefix}{ns}/{}/{}",
        plural(obj["kind"].as_str().unwrap()),
        obj["metadata"]["name"].as_str().unwrap()
    )
}

/// Server-side applies `obj` as the agent does (its label and digest annotation added, forced),
/// and records what the server keeps: the agent's FieldsV1, who else manages the object, the
/// generation and the labels.
async fn apply_as_agent(
    side: &Side,
    what: &str,
    mut obj: Value,
    digest: &str,
    out: &mut BTreeMap<String, Value>,
) {
    if !obj["metadata"]["labels"].is_object() {
        obj["metadata"]["labels"] = json!({});
    }
    obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] = json!("bootstrap-agent");
    if !obj["metadata"]["annotations"].is_object() {
        obj["metadata"]["annotations"] = json!({});
    }
    obj["metadata"]["annotations"]["bootstrap-agent.io/applied-digest"] = json!(digest);
    let path = object_path(&obj);
    let (code, stored) = side
        .send(
            "PATCH",
            &format!("{path}?fieldManager=bootstrap-agent&force=true"),
            "application/apply-patch+yaml",
            &obj,
        )
        .await;
    let labels: Vec<&String> = stored["metadata"]["labels"]
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    out.insert(
        format!("{what} {path}"),
        json!([
            code,
            managed(&stored),
            stored["metadata"]["generation"],
            labels
        ]),
    );
}

async fn established(side: &Side, name: &str) {
    let path = format!("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}");
    for _ in 0..200 {
        let (_, crd) = side
            .send("GET", &path, "application/json", &Value::Null)
            .await;
        let ok = crd["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Established" && c["status"] == "True");
        if ok {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{}: {name} never Established", side.name);
}

/// The whole bundle as the agent applies it (namespaces, then CRDs, then the rest), the Flux
/// sync objects once their CRDs are Established, then a changed Deployment.
async fn apply_bundle(side: &Side, bundle: &Bundle, out: &mut BTreeMap<String, Value>) {
    let mut manifests: Vec<_> = bundle.crds.iter().chain(bundle.flux.iter()).collect();
    manifests.sort_by_key(|m| match m.kind.as_str() {
        "Namespace" => 0,
        "CustomResourceDefinition" => 1,
        _ => 2,
    });
    for m in &manifests {
        apply_as_agent(side, "apply", m.object(), &m.digest(), out).await;
    }
    for crd in [
        "gitrepositories.source.toolkit.fluxcd.io",
        "kustomizations.kustomize.toolkit.fluxcd.io",
    ] {
        established(side, crd).await;
    }
    discovery(side, out).await;
    let sync = FluxSync::new(
        "https://git.example.com/homelab.git",
        "main",
        "./kubernetes/flux",
    );
    for obj in sync.objects() {
        apply_as_agent(side, "apply", obj, "sync", out).await;
    }
    // A new bundle drops an environment variable and a port: the agent's apply prunes them,
    // and the new annotation moves the Deployment's generation.
    let m = manifests
        .iter()
        .find(|m| m.kind == "Deployment" && m.name == "source-controller")
        .unwrap();
    let mut d = m.object();
    let c = &mut d["spec"]["template"]["spec"]["containers"][0];
    c["env"].as_array_mut().unwrap().pop();
    c["ports"].as_array_mut().unwrap().pop();
    apply_as_agent(side, "apply changed", d, "next", out).await;
    let (_, live) = side
        .send(
            "GET",
            "/apis/apps/v1/namespaces/flux-system/deployments/source-controller",
            "application/json",
            &Value::Null,
        )
        .await;
    let c = &live["spec"]["template"]["spec"]["containers"][0];
    let env: Vec<&Value> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["name"])
        .collect();
    out.insert(
        "changed Deployment".into(),
        json!([live["metadata"]["generation"], c["ports"], env]),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standin_answers_the_agents_requests_as_kube_apiserver_does() {
    let real = ApiServer::start().await;
    let standin = KubeApi::start().await.unwrap();
    let real_side = Side::new("kube-apiserver", &real.kubeconfig()).await;
    let standin_side = Side::new("stand-in", &standin.kubeconfig()).await;
    let dir = tempfile::tempdir().unwrap();
    compose_bundle(dir.path(), Corpus { gateway_api: false });
    let bundle = Bundle::load_dir(dir.path()).unwrap();
    let real_answers = run(&real_side, &bundle).await;
    let standin_answers = run(&standin_side, &bundle).await;
    let mut diff = Diff::default();
    for (what, real) in &real_answers {
        diff.same(
            what,
            standin_answers.get(what).cloned().unwrap_or(Value::Null),
            real.clone(),
        );
    }
    openapi(&real_side, &mut diff).await;
    diff.check();
}

/// The stand-in's schema fragments say what the real server's OpenAPI says about every
/// built-in kind it serves: associative lists and their keys (with defaults), sets, atomic
/// objects.
async fn openapi(real: &Side, diff: &mut Diff) {
    let mut schemas = serde_json::Map::new();
    for gv in [
        "api/v1",
        "apis/apps/v1",
        "apis/rbac.authorization.k8s.io/v1",
        "apis/networking.k8s.io/v1",
        "apis/apiextensions.k8s.io/v1",
    ] {
        let (code, doc) = real
            .send(
                "GET",
                &format!("/openapi/v3/{gv}"),
                "application/json",
                &Value::Null,
            )
            .await;
        assert_eq!(code, 200, "/openapi/v3/{gv}");
        if let Some(m) = doc["components"]["schemas"].as_object() {
            schemas.extend(m.clone());
        }
    }
    let resolve = |r: &str| schemas.get(r.rsplit('/').next().unwrap_or(r));
    for (kind, def) in [
        (
            "ObjectMeta",
            "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        ),
        ("Namespace", "io.k8s.api.core.v1.Namespace"),
        ("Secret", "io.k8s.api.core.v1.Secret"),
        ("ConfigMap", "io.k8s.api.core.v1.ConfigMap"),
        ("Service", "io.k8s.api.core.v1.Service"),
        ("ServiceAccount", "io.k8s.api.core.v1.ServiceAccount"),
        ("ResourceQuota", "io.k8s.api.core.v1.ResourceQuota"),
        ("Pod", "io.k8s.api.core.v1.Pod"),
        ("Deployment", "io.k8s.api.apps.v1.Deployment"),
        ("ClusterRole", "io.k8s.api.rbac.v1.ClusterRole"),
        (
            "ClusterRoleBinding",
            "io.k8s.api.rbac.v1.ClusterRoleBinding",
        ),
        ("Role", "io.k8s.api.rbac.v1.Role"),
        ("RoleBinding", "io.k8s.api.rbac.v1.RoleBinding"),
        ("NetworkPolicy", "io.k8s.api.networking.v1.NetworkPolicy"),
        (
            "CustomResourceDefinition",
            "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition",
        ),
    ] {
        let root = schemas
            .get(def)
            .unwrap_or_else(|| panic!("{def} is not in the OpenAPI"));
        diff.same(
            &format!("OpenAPI annotations of {kind}"),
            json!(schema::describe_builtin(kind)),
            json!(schema::describe(root, &resolve)),
        );
    }
}
