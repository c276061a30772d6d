//! The stand-in answers as the real API server does: the requests the agent makes (readiness,
//! server-side apply, metadata lists, reads of missing objects, conflicts, Secrets, status
//! writes, the CRD watch) are sent to both, and the shapes of the answers are compared: status
//! codes, which fields are present, explicit `null`s, the kinds and reasons of errors, and the
//! sequence of watch events for a CRD from creation to Established. Values that differ by
//! nature (uids, timestamps, resourceVersions) are compared by type only.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::collections::BTreeMap;
use std::time::Duration;

use bootstrap_agent_tests::envtest::ApiServer;
use bootstrap_agent_tests::kubeapi::KubeApi;
use bootstrap_agent_tests::kubeapi::fixture::upstream;
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

    async fn send(&self, method: &str, path: &str, content_type: &str, body: &Value) -> (u16, Value) {
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

    /// Watch lines until `stop` holds for an event or `within` passes.
    async fn watch(&self, path: &str, within: Duration, stop: impl Fn(&Value) -> bool) -> Vec<Value> {
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
    for e in events.iter().filter(|e| e["object"]["metadata"]["name"] == name) {
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

async fn run(side: &Side) -> BTreeMap<&'static str, Value> {
    let mut out = BTreeMap::new();
    let apply = "application/apply-patch+yaml";
    let merge = "application/merge-patch+json";
    let json_ct = "application/json";

    let (code, body) = side.send("GET", "/readyz", json_ct, &Value::Null).await;
    out.insert("readyz", json!([code, body]));

    // Server-side apply creates, then the same apply changes nothing.
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "flux-system",
        "labels": {"app.kubernetes.io/managed-by": "bootstrap-agent"},
        "annotations": {"bootstrap-agent.io/applied-digest": "abc"}}});
    let path = "/api/v1/namespaces/flux-system?fieldManager=bootstrap-agent";
    let (code, created) = side.send("PATCH", path, apply, &ns).await;
    out.insert(
        "apply create Namespace",
        json!([code, shape(&created["metadata"]), created["metadata"]["managedFields"][0]["operation"]]),
    );
    let (code, again) = side.send("PATCH", path, apply, &ns).await;
    out.insert(
        "apply unchanged Namespace",
        json!([code, again["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]]),
    );

    // A metadata list, as the agent lists what exists.
    let req = http::Request::get("/api/v1/namespaces")
        .header(
            "accept",
            "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json",
        )
        .body(Vec::new())
        .unwrap();
    let list: Value = side.client.request(req).await.unwrap();
    let item = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["metadata"]["name"] == "flux-system")
        .cloned()
        .unwrap_or(Value::Null);
    out.insert(
        "metadata list",
        json!([list["kind"], list["apiVersion"], shape(&list["metadata"]), item["kind"], shape(&item["metadata"])]),
    );

    // A missing object, and a type that is not served.
    let (code, missing) = side
        .send("GET", "/api/v1/namespaces/flux-system/secrets/sops-age", json_ct, &Value::Null)
        .await;
    out.insert("get missing", json!([code, shape(&missing), missing["reason"], missing["details"]["kind"]]));
    let (code, unserved) = side
        .send(
            "GET",
            "/apis/cert-manager.io/v1/clusterissuers",
            json_ct,
            &Value::Null,
        )
        .await;
    out.insert("list unserved type", json!([code, unserved["reason"]]));

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
    out.insert("create Secret", json!([code, s["type"], shape(&s["data"]), s["metadata"]["managedFields"][0]["operation"]]));
    let (code, _) = side
        .send(
            "POST",
            "/api/v1/namespaces/flux-system/secrets?fieldManager=bootstrap-agent",
            json_ct,
            &secret,
        )
        .await;
    out.insert("create Secret again", json!(code));

    // A conflict: another manager owns a field the agent sets to another value.
    let svc = |target: Value| {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "source-controller", "namespace": "flux-system"},
            "spec": {"type": "ClusterIP", "selector": {"app": "source-controller"},
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
    out.insert("create Service", json!(code));
    let (code, conflict) = side
        .send(
            "PATCH",
            "/api/v1/namespaces/flux-system/services/source-controller?fieldManager=bootstrap-agent",
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
        "apply conflict",
        json!([code, conflict["reason"], shape(&conflict), causes, conflict["message"].as_str().unwrap_or_default().contains("kubectl-edit")]),
    );
    // Another port is another entry of the list (keyed by port and protocol): no conflict, but
    // two ports named `http` are invalid.
    let mut other = svc(json!("http"));
    other["spec"]["ports"][0]["port"] = json!(8080);
    let (code, invalid) = side
        .send(
            "PATCH",
            "/api/v1/namespaces/flux-system/services/source-controller?fieldManager=bootstrap-agent",
            apply,
            &other,
        )
        .await;
    out.insert("apply another port", json!([code, invalid["reason"]]));

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
    let rv = list["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    let name = "issuers.cert-manager.io";
    let watch_path = format!("/apis/apiextensions.k8s.io/v1/customresourcedefinitions?watch=true&resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=20");
    let watch = side.watch(
        &watch_path,
        Duration::from_secs(20),
        |e| e["object"]["metadata"]["name"] == name && condition(e, "Established").as_deref() == Some("True"),
    );
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
    out.insert("apply create CRD", json!(code));
    out.insert("CRD watch story", crd_story(&events, name));
    let first = events.iter().find(|e| e["object"]["metadata"]["name"] == name).cloned().unwrap_or(Value::Null);
    out.insert("CRD first event status", shape(&first["object"]["status"]));

    // A watch from a resourceVersion the server no longer has.
    let old = side
        .watch(
            "/api/v1/namespaces?watch=true&resourceVersion=1&timeoutSeconds=5",
            Duration::from_secs(5),
            |_| true,
        )
        .await;
    let first = old.first().cloned().unwrap_or(Value::Null);
    out.insert("watch too old", json!([first["type"], first["object"]["code"], first["object"]["reason"]]));

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
    out.insert("create custom resource", json!([code, created["metadata"]["generation"]]));
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
        "status write",
        json!([code, patched["metadata"]["generation"], shape(&patched["status"])]),
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standin_answers_the_agents_requests_as_kube_apiserver_does() {
    let real = ApiServer::start().await;
    let standin = KubeApi::start().await.unwrap();
    let real_side = Side::new("kube-apiserver", &real.kubeconfig()).await;
    let standin_side = Side::new("stand-in", &standin.kubeconfig()).await;
    let real_answers = run(&real_side).await;
    let standin_answers = run(&standin_side).await;
    let mut diff = Diff::default();
    for (what, real) in &real_answers {
        diff.same(
            what,
            standin_answers.get(what).cloned().unwrap_or(Value::Null),
            real.clone(),
        );
    }
    diff.check();
}
