//! The HTTP side of the stand-in: routing, discovery, CRUD, server-side apply, status
//! subresource, list/watch, request counting and fault injection.
//!
//! Paths the real server does not serve answer as it does: under a built-in group (`/api`,
//! `/apis/apps`, ...) a NotFound Status with empty details; anywhere else (a group no CRD
//! defines, a CRD's group with an unserved version or resource, a scope that does not match)
//! the plain-text `404 page not found` of the API server's catch-all handler
//! (`k8s.io/apiextensions-apiserver` v0.36.2 `pkg/apiserver/customresource_handler.go`
//! `ServeHTTP` l.228-315 passes those to its delegate); an unknown subresource of a custom
//! resource names the object (l.353-357).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::Shared;
use super::fields::{self, Op};
use super::resources::{self, ResourceType};
use super::state::{Event, Key, State, default_object, now};
use super::validate;

pub type Body = BoxBody<Bytes, Infallible>;

fn full(bytes: Vec<u8>) -> Body {
    Full::new(Bytes::from(bytes)).boxed()
}

fn respond(code: StatusCode, content_type: &str, v: &Value) -> Response<Body> {
    let mut r = Response::new(full(serde_json::to_vec(v).unwrap_or_default()));
    *r.status_mut() = code;
    if let Ok(ct) = content_type.parse() {
        r.headers_mut().insert(http::header::CONTENT_TYPE, ct);
    }
    r
}

fn ok(v: &Value) -> Response<Body> {
    respond(StatusCode::OK, "application/json", v)
}

/// A Status; `details` is left out when None, as the API server leaves out an empty one.
fn status(code: u16, reason: &str, message: String, details: Option<Value>) -> Response<Body> {
    let mut v = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    });
    if let Some(d) = details {
        v["details"] = d;
    }
    respond(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        "application/json",
        &v,
    )
}

/// `StatusDetails` naming one object: `group` only when not empty.
fn object_details(group: &str, kind: &str, name: &str) -> Value {
    let mut d = json!({"name": name, "kind": kind});
    if !group.is_empty() {
        d["group"] = json!(group);
    }
    d
}

fn not_found(t: &ResourceType, name: &str) -> Response<Body> {
    status(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", t.qualified()),
        Some(object_details(&t.group, &t.plural, name)),
    )
}

/// The NotFound a built-in group answers for a path it does not serve.
fn no_resource() -> Response<Body> {
    status(
        404,
        "NotFound",
        "the server could not find the requested resource".into(),
        Some(json!({})),
    )
}

/// The catch-all handler's answer: Go's `http.NotFound`.
fn page_not_found() -> Response<Body> {
    let mut r = Response::new(full(b"404 page not found\n".to_vec()));
    *r.status_mut() = StatusCode::NOT_FOUND;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut().insert(
        "x-content-type-options",
        http::HeaderValue::from_static("nosniff"),
    );
    r
}

/// The OpenAPI handler's answer for a group/version it does not have: 404, empty body.
fn empty_not_found() -> Response<Body> {
    let mut r = Response::new(full(Vec::new()));
    *r.status_mut() = StatusCode::NOT_FOUND;
    r
}

fn bad_request(message: String) -> Response<Body> {
    status(400, "BadRequest", message, None)
}

fn internal(message: &str) -> Response<Body> {
    status(500, "InternalError", message.to_string(), None)
}

/// Parsed query string (percent-decoded).
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Query {
        Query(
            q.unwrap_or_default()
                .split('&')
                .filter(|s| !s.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (decode(k), decode(v))
                })
                .collect(),
        )
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }
    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1"))
    }
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Which object(s) a request addresses.
struct Target {
    t: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

enum Route {
    Answer(Response<Body>),
    Resource(Target),
}

fn wants_aggregated(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(|a| {
            a.split(',').next().is_some_and(|first| {
                first.contains("as=APIGroupDiscoveryList") && first.contains("v=v2")
            })
        })
        .unwrap_or(false)
}

/// How a group answers a path it does not serve.
fn unserved(group: &str) -> Route {
    Route::Answer(if group.is_empty() || resources::builtin_group(group) {
        no_resource()
    } else {
        page_not_found()
    })
}

fn route(shared: &Shared, req: &Request<Incoming>) -> Route {
    let path = req.uri().path().trim_end_matches('/');
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (served, listed) = shared
        .state
        .lock()
        .map(|s| (s.types(), s.discoverable()))
        .unwrap_or_default();
    let agg_ct = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
    let answer = |r: Response<Body>| Route::Answer(r);
    match segs.as_slice() {
        ["version"] => answer(ok(&json!({
            "major": "1", "minor": "36", "gitVersion": "v1.36.2-standin", "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.26", "compiler": "gc", "platform": "linux/amd64",
        }))),
        ["readyz"] | ["livez"] | ["healthz"] => {
            let mut r = Response::new(full(b"ok".to_vec()));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            answer(r)
        }
        ["api"] if wants_aggregated(req) => answer(respond(
            StatusCode::OK,
            agg_ct,
            &resources::aggregated(&listed, true),
        )),
        ["apis"] if wants_aggregated(req) => answer(respond(
            StatusCode::OK,
            agg_ct,
            &resources::aggregated(&listed, false),
        )),
        ["api"] => answer(ok(
            &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}]}),
        )),
        ["apis"] => answer(ok(&resources::group_list(&listed))),
        ["openapi", "v3"] => answer(ok(&resources::openapi_root(&listed))),
        ["openapi", "v3", "api", v] => answer(
            resources::openapi_gv(&listed, "", v)
                .map(|d| ok(&d))
                .unwrap_or_else(empty_not_found),
        ),
        ["openapi", "v3", "apis", g, v] => answer(
            resources::openapi_gv(&listed, g, v)
                .map(|d| ok(&d))
                .unwrap_or_else(empty_not_found),
        ),
        ["api", v] => gv_list(&listed, "", v),
        ["apis", g] => match resources::group_doc(&listed, g) {
            Some(d) => answer(ok(&d)),
            None => unserved(g),
        },
        ["apis", g, v] => gv_list(&listed, g, v),
        ["api", v, rest @ ..] => resource_route(&served, "", v, rest),
        ["apis", g, v, rest @ ..] => resource_route(&served, g, v, rest),
        _ => answer(page_not_found()),
    }
}

fn gv_list(types: &[ResourceType], g: &str, v: &str) -> Route {
    let ts: Vec<&ResourceType> = types
        .iter()
        .filter(|t| t.group == g && t.version == v)
        .collect();
    if ts.is_empty() {
        return unserved(g);
    }
    let gv = if g.is_empty() {
        v.to_string()
    } else {
        format!("{g}/{v}")
    };
    Route::Answer(ok(&resources::resource_list(&gv, &ts)))
}

fn resource_route(types: &[ResourceType], g: &str, v: &str, rest: &[&str]) -> Route {
    let find = |plural: &str| {
        types
            .iter()
            .find(|t| t.group == g && t.version == v && t.plural == plural)
            .cloned()
    };
    let (t, namespace, tail) = match rest {
        // `/api/v1/namespaces/NAME/status` is the Namespace's own status, not a resource
        // named `status` in it.
        ["namespaces", ns, plural, tail @ ..]
            if !g.is_empty() || (*plural != "status" && *plural != "finalize") =>
        {
            match find(plural) {
                Some(t) if t.namespaced => (t, Some(ns.to_string()), tail),
                _ => return unserved(g),
            }
        }
        [plural, tail @ ..] => match find(plural) {
            Some(t) => (t, None, tail),
            None => return unserved(g),
        },
        [] => return unserved(g),
    };
    let (name, subresource) = match tail {
        [] => (None, None),
        [name] => (Some(name.to_string()), None),
        [name, sub] => (Some(name.to_string()), Some(sub.to_string())),
        _ => return unserved(g),
    };
    if name.is_some() && t.namespaced && namespace.is_none() {
        return unserved(g);
    }
    if let Some(sub) = &subresource
        && !(sub == "status" && t.status_subresource)
    {
        return Route::Answer(if t.custom {
            not_found(&t, name.as_deref().unwrap_or_default())
        } else {
            no_resource()
        });
    }
    Route::Resource(Target {
        t,
        namespace,
        name,
        subresource,
    })
}

/// Entry point for every request.
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::io::Error> {
    let method = req.method().clone();
    let mutating = matches!(
        method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    shared.total.fetch_add(1, Ordering::SeqCst);
    if mutating {
        let n = shared.mutating.fetch_add(1, Ordering::SeqCst) + 1;
        let mut f = shared
            .faults
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?;
        if let Some((after, dur)) = f.unavailable_after_mutations
            && n >= after
        {
            f.unavailable_until = Some(Instant::now() + dur);
            f.unavailable_after_mutations = None;
        }
    }
    if let Ok(mut log) = shared.log.lock() {
        log.push(format!("{} {}", method, req.uri()));
    }
    let (stall, drop, unavailable) = {
        let mut f = shared
            .faults
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?;
        let stall = match &mut f.stall {
            Some((n, d)) if *n > 0 => {
                *n -= 1;
                Some(*d)
            }
            _ => None,
        };
        let drop = if f.drop_next > 0 {
            f.drop_next -= 1;
            true
        } else {
            false
        };
        let unavailable = f.unavailable_until.is_some_and(|u| Instant::now() < u);
        (stall, drop, unavailable)
    };
    if let Some(d) = stall {
        tokio::time::sleep(d).await;
    }
    if drop {
        return Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "fault injection: dropped connection",
        ));
    }
    if unavailable {
        shared.faulted.fetch_add(1, Ordering::SeqCst);
        return Ok(status(
            503,
            "ServiceUnavailable",
            "fault injection: the server is currently unable to handle the request".into(),
            None,
        ));
    }

    match route(&shared, &req) {
        Route::Answer(r) => Ok(r),
        Route::Resource(target) => {
            let query = Query::parse(req.uri().query());
            let accept = header(&req, http::header::ACCEPT, "");
            let content_type = header(&req, http::header::CONTENT_TYPE, "");
            let user_agent = header(&req, http::header::USER_AGENT, "unknown");
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return Err(std::io::Error::other(e)),
            };
            Ok(resource(
                &shared,
                method,
                target,
                query,
                &accept,
                &content_type,
                &user_agent,
                &body,
            )
            .await)
        }
    }
}

fn key_of(t: &ResourceType, ns: &Option<String>, name: &str) -> Key {
    Key {
        group: t.group.clone(),
        plural: t.plural.clone(),
        namespace: ns.clone().unwrap_or_default(),
        name: name.to_string(),
    }
}

fn with_version(mut obj: Value, t: &ResourceType) -> Value {
    obj["apiVersion"] = json!(t.api_version());
    obj["kind"] = json!(t.kind);
    obj
}

fn parse_body(body: &[u8]) -> Result<Value, String> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return Ok(v);
    }
    let text = std::str::from_utf8(body).map_err(|e| format!("body is not UTF-8: {e}"))?;
    serde_saphyr::from_str::<Value>(text).map_err(|e| format!("body is neither JSON nor YAML: {e}"))
}

/// What a write through the main resource may not set (the status, when the type has a
/// status subresource), or what a write through `/status` may (only the status).
fn endpoint_part(t: &ResourceType, status_only: bool, obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        if status_only {
            m.retain(|k, _| matches!(k.as_str(), "status" | "apiVersion" | "kind" | "metadata"));
            if let Some(md) = m.get_mut("metadata").and_then(Value::as_object_mut) {
                md.retain(|k, _| matches!(k.as_str(), "name" | "namespace" | "resourceVersion"));
            }
        } else if t.status_subresource {
            m.remove("status");
        }
    }
    v
}

#[allow(clippy::too_many_arguments)]
async fn resource(
    shared: &Arc<Shared>,
    method: Method,
    target: Target,
    query: Query,
    accept: &str,
    content_type: &str,
    user_agent: &str,
    body: &[u8],
) -> Response<Body> {
    let Target {
        t,
        namespace,
        name,
        subresource,
    } = target;
    let status_only = subresource.as_deref() == Some("status");
    let dry_run = query.get("dryRun") == Some("All");
    let default_manager = user_agent
        .split('/')
        .next()
        .unwrap_or("unknown")
        .to_string();
    let manager = query
        .get("fieldManager")
        .map(str::to_string)
        .unwrap_or(default_manager);
    let api_version = t.api_version();
    let now = now();
    let op = Op {
        manager: &manager,
        api_version: &api_version,
        subresource: status_only.then_some("status"),
        now: &now,
    };

    let Some(name) = name else {
        return match method {
            Method::GET if query.flag("watch") && take_watch_error(shared) => watch_error(),
            Method::GET if query.flag("watch") => watch(shared, &t, namespace, &query),
            Method::GET => list(shared, &t, namespace, &query, accept),
            Method::POST => create(shared, &t, namespace, body, op, dry_run),
            _ => status(
                405,
                "MethodNotAllowed",
                format!("{method} is not supported on a collection"),
                None,
            ),
        };
    };
    let key = key_of(&t, &namespace, &name);
    match method {
        Method::GET => {
            let obj = shared.state.lock().ok().and_then(|mut s| {
                s.touch(&t);
                s.objects.get(&key).cloned()
            });
            match obj {
                Some(o) if wants_metadata(accept, "PartialObjectMetadata") => ok(&json!({
                    "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                    "metadata": o["metadata"],
                })),
                Some(o) => ok(&with_version(o, &t)),
                None => not_found(&t, &name),
            }
        }
        Method::DELETE => {
            let removed = shared
                .state
                .lock()
                .ok()
                .and_then(|mut s| s.delete(&t, &key));
            match removed {
                Some(o) => ok(&with_version(o, &t)),
                None => not_found(&t, &name),
            }
        }
        Method::PUT => {
            let incoming = match parse_body(body) {
                Ok(v) => v,
                Err(e) => return bad_request(e),
            };
            commit(shared, &t, &key, dry_run, |s, old| {
                let Some(old) = old else {
                    return Err(not_found(&t, &name));
                };
                if let Some(rv) = incoming["metadata"]["resourceVersion"].as_str()
                    && Some(rv) != old["metadata"]["resourceVersion"].as_str()
                {
                    return Err(status(
                        409,
                        "Conflict",
                        format!(
                            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                            t.qualified()
                        ),
                        Some(object_details(&t.group, &t.plural, &name)),
                    ));
                }
                let mut new = if status_only {
                    let mut n = old.clone();
                    n["status"] = incoming["status"].clone();
                    n
                } else {
                    let mut n = endpoint_part(&t, false, &incoming);
                    n["metadata"]["managedFields"] = old["metadata"]["managedFields"].clone();
                    if t.status_subresource
                        && let Some(st) = old.get("status")
                    {
                        n["status"] = st.clone();
                    }
                    n
                };
                default_object(&t.kind, &mut new);
                fields::record_update(old, &mut new, op, s.ty(&t));
                Ok(new)
            })
        }
        Method::PATCH => {
            let incoming = match parse_body(body) {
                Ok(v) => v,
                Err(e) => return bad_request(e),
            };
            if content_type.starts_with("application/apply-patch") {
                if query.get("fieldManager").is_none() {
                    return status(
                        422,
                        "Invalid",
                        "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch".into(),
                        Some(json!({"group": "meta.k8s.io", "kind": "PatchOptions", "causes": [{"reason": "FieldValueRequired", "message": "Required value: is required for apply patch", "field": "fieldManager"}]})),
                    );
                }
                if incoming["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n != name)
                {
                    return bad_request(format!(
                        "the name of the object ({}) does not match the name on the URL ({name})",
                        incoming["metadata"]["name"]
                    ));
                }
                if incoming["apiVersion"].is_null() || incoming["kind"].is_null() {
                    return bad_request("apiVersion and kind must be set in an apply patch".into());
                }
                if !status_only && let Some(r) = namespace_missing(shared, &t, &namespace) {
                    return r;
                }
                let force = query.flag("force");
                let mut config = endpoint_part(&t, status_only, &incoming);
                config["metadata"]["name"] = json!(name);
                if let Some(ns) = &namespace {
                    config["metadata"]["namespace"] = json!(ns);
                }
                commit(shared, &t, &key, dry_run, |s, old| {
                    if old.is_none() && status_only {
                        return Err(not_found(&t, &name));
                    }
                    let live = old.cloned().unwrap_or_else(|| t.zero());
                    let mut new = fields::apply(&live, &config, op, force, s.ty(&t))
                        .map_err(|c| conflict_response(&c))?;
                    default_object(&t.kind, &mut new);
                    Ok(new)
                })
            } else if content_type.starts_with("application/merge-patch+json")
                || content_type.starts_with("application/strategic-merge-patch+json")
            {
                commit(shared, &t, &key, dry_run, |s, old| {
                    let Some(old) = old else {
                        return Err(not_found(&t, &name));
                    };
                    let mut new = old.clone();
                    let patch = endpoint_part(&t, status_only, &incoming);
                    fields::merge_patch(&mut new, &patch);
                    default_object(&t.kind, &mut new);
                    fields::record_update(old, &mut new, op, s.ty(&t));
                    Ok(new)
                })
            } else {
                status(
                    415,
                    "UnsupportedMediaType",
                    format!(
                        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {content_type})"
                    ),
                    None,
                )
            }
        }
        _ => status(
            405,
            "MethodNotAllowed",
            format!("{method} is not supported"),
            None,
        ),
    }
}

/// An apply's conflicts as the API server reports them (`k8s.io/apimachinery` v0.36.2
/// `pkg/util/managedfields/internal/conflict.go`): a 409 whose details hold only the causes.
fn conflict_response(conflicts: &[fields::Conflict]) -> Response<Body> {
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|c| json!({"reason": "FieldManagerConflict", "message": format!("conflict with {}", c.manager), "field": c.field()}))
        .collect();
    let message = if let [c] = conflicts {
        format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            c.manager,
            c.field()
        )
    } else {
        let mut lines = Vec::new();
        let mut last: Option<&str> = None;
        for c in conflicts {
            if last != Some(c.manager.as_str()) {
                lines.push(format!("conflicts with {}:", c.manager));
                last = Some(&c.manager);
            }
            lines.push(format!("- {}", c.field()));
        }
        format!(
            "Apply failed with {} conflicts: {}",
            conflicts.len(),
            lines.join("\n")
        )
    };
    status(409, "Conflict", message, Some(json!({"causes": causes})))
}

fn namespace_missing(
    shared: &Shared,
    t: &ResourceType,
    namespace: &Option<String>,
) -> Option<Response<Body>> {
    let ns = namespace.as_ref().filter(|_| t.namespaced)?;
    let key = Key {
        group: String::new(),
        plural: "namespaces".into(),
        namespace: String::new(),
        name: ns.clone(),
    };
    let exists = shared
        .state
        .lock()
        .map(|s| s.objects.contains_key(&key))
        .unwrap_or(false);
    (!exists).then(|| {
        status(
            404,
            "NotFound",
            format!("namespaces \"{ns}\" not found"),
            Some(object_details("", "namespaces", ns)),
        )
    })
}

/// Runs `f` on the current object under the store lock, validates and stores its result (or
/// only returns it for a dry run), and starts a new CRD's lifecycle.
fn commit(
    shared: &Arc<Shared>,
    t: &ResourceType,
    key: &Key,
    dry_run: bool,
    f: impl FnOnce(&State, Option<&Value>) -> Result<Value, Response<Body>>,
) -> Response<Body> {
    let Ok(mut s) = shared.state.lock() else {
        return internal("store lock poisoned");
    };
    s.touch(t);
    let old = s.objects.get(key).cloned();
    let mut new = match f(&s, old.as_ref()) {
        Ok(v) => v,
        Err(r) => return r,
    };
    new = with_version(new, t);
    new["metadata"]["name"] = json!(key.name);
    if !key.namespace.is_empty() {
        new["metadata"]["namespace"] = json!(key.namespace);
    }
    if !t.custom {
        let errs = validate::validate(&t.kind, &new);
        if !errs.is_empty() {
            let (message, details) = validate::invalid(&t.group, &t.kind, &key.name, &errs);
            return status(422, "Invalid", message, Some(details));
        }
    }
    if dry_run {
        return ok(&new);
    }
    let created = old.is_none();
    let stored = if created {
        s.create(t, key.clone(), new)
    } else {
        s.replace(t, key, new)
    };
    drop(s);
    if created && !t.custom && t.plural == "customresourcedefinitions" {
        shared.schedule_crd(key.name.clone());
    }
    respond(
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        "application/json",
        &with_version(stored, t),
    )
}

fn create(
    shared: &Arc<Shared>,
    t: &ResourceType,
    namespace: Option<String>,
    body: &[u8],
    op: Op,
    dry_run: bool,
) -> Response<Body> {
    let obj = match parse_body(body) {
        Ok(v) => v,
        Err(e) => return bad_request(e),
    };
    let Some(name) = obj["metadata"]["name"].as_str().map(str::to_string) else {
        return status(
            422,
            "Invalid",
            format!(
                "{} is invalid: metadata.name: Required value: name or generateName is required",
                t.kind
            ),
            Some(
                json!({"kind": t.kind, "causes": [{"reason": "FieldValueRequired", "message": "Required value: name or generateName is required", "field": "metadata.name"}]}),
            ),
        );
    };
    if let (Some(ns), Some(body_ns)) = (&namespace, obj["metadata"]["namespace"].as_str())
        && ns != body_ns
    {
        return bad_request(
            "the namespace of the provided object does not match the namespace sent on the request"
                .into(),
        );
    }
    if let Some(r) = namespace_missing(shared, t, &namespace) {
        return r;
    }
    let key = key_of(t, &namespace, &name);
    commit(shared, t, &key, dry_run, |s, old| {
        if old.is_some() {
            return Err(status(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", t.qualified()),
                Some(object_details(&t.group, &t.plural, &name)),
            ));
        }
        let mut new = endpoint_part(t, false, &obj);
        if let Some(m) = new["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
        default_object(&t.kind, &mut new);
        fields::record_update(&t.zero(), &mut new, op, s.ty(t));
        Ok(new)
    })
}

/// `fieldSelector=metadata.name=X` and simple `labelSelector=k=v,k2=v2`.
fn matches(obj: &Value, query: &Query) -> bool {
    if let Some(fs) = query.get("fieldSelector") {
        for term in fs.split(',').filter(|s| !s.is_empty()) {
            let (k, v) = term.split_once('=').unwrap_or((term, ""));
            let v = v.trim_start_matches('=');
            let actual = match k {
                "metadata.name" => obj["metadata"]["name"].as_str(),
                "metadata.namespace" => obj["metadata"]["namespace"].as_str(),
                _ => None,
            };
            if actual != Some(v) {
                return false;
            }
        }
    }
    if let Some(ls) = query.get("labelSelector") {
        for term in ls.split(',').filter(|s| !s.is_empty()) {
            let (k, v) = term.split_once('=').unwrap_or((term, ""));
            let actual = obj["metadata"]["labels"][k].as_str();
            if term.contains('=') {
                if actual != Some(v.trim_start_matches('=')) {
                    return false;
                }
            } else if actual.is_none() {
                return false;
            }
        }
    }
    true
}

/// Whether the first media type accepted asks for metadata only (`as=<what>`).
fn wants_metadata(accept: &str, what: &str) -> bool {
    accept.split(',').next().is_some_and(|a| {
        a.split(';')
            .any(|p| p.trim().strip_prefix("as=") == Some(what))
    })
}

fn in_scope(key: &Key, t: &ResourceType, namespace: &Option<String>) -> bool {
    key.group == t.group
        && key.plural == t.plural
        && namespace.as_ref().is_none_or(|ns| &key.namespace == ns)
}

fn list(
    shared: &Shared,
    t: &ResourceType,
    namespace: Option<String>,
    query: &Query,
    accept: &str,
) -> Response<Body> {
    let Ok(mut s) = shared.state.lock() else {
        return internal("store lock poisoned");
    };
    s.touch(t);
    let metadata_only = wants_metadata(accept, "PartialObjectMetadataList");
    let items: Vec<Value> = s
        .objects
        .iter()
        .filter(|(k, o)| in_scope(k, t, &namespace) && matches(o, query))
        .map(|(_, o)| {
            if metadata_only {
                json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"].clone()})
            } else {
                with_version(o.clone(), t)
            }
        })
        .collect();
    let rv = s.rv.to_string();
    drop(s);
    if metadata_only {
        ok(
            &json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv}, "items": items}),
        )
    } else {
        ok(
            &json!({"kind": format!("{}List", t.kind), "apiVersion": t.api_version(), "metadata": {"resourceVersion": rv}, "items": items}),
        )
    }
}

fn take_watch_error(shared: &Arc<Shared>) -> bool {
    let Ok(mut f) = shared.faults.lock() else {
        return false;
    };
    if f.watch_errors == 0 {
        return false;
    }
    f.watch_errors -= 1;
    shared.faulted.fetch_add(1, Ordering::Relaxed);
    true
}

/// A watch answered 200 with one ERROR event carrying `status`, then closed.
fn watch_ended(status: Value) -> Response<Body> {
    let mut line =
        serde_json::to_vec(&json!({"type": "ERROR", "object": status})).unwrap_or_default();
    line.push(b'\n');
    let mut r = Response::new(full(line));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// Injected fault: the watch fails at once with a 500 Status (as when storage fails).
fn watch_error() -> Response<Body> {
    watch_ended(json!({"kind": "Status", "apiVersion": "v1",
        "metadata": {}, "status": "Failure", "message": "etcdserver: request timed out",
        "reason": "InternalError", "code": 500}))
}

fn watch(
    shared: &Arc<Shared>,
    t: &ResourceType,
    namespace: Option<String>,
    query: &Query,
) -> Response<Body> {
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1800);
    let send_initial = query.flag("sendInitialEvents");
    let bookmarks = query.flag("allowWatchBookmarks");
    let since: Option<u64> = query
        .get("resourceVersion")
        .and_then(|s| s.parse().ok())
        .filter(|v| *v > 0);
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
    let selector = Query(query.0.clone());
    let (mut events, initial, rv, from_now) = {
        let Ok(mut s) = shared.state.lock() else {
            return internal("store lock poisoned");
        };
        s.touch(t);
        match since {
            Some(since) if !send_initial => {
                let keep =
                    |e: &Event| in_scope(&e.key, t, &namespace) && matches(&e.object, &selector);
                match s.replay(t, since, keep) {
                    Ok((replayed, rx)) => {
                        let initial: Vec<(&'static str, Value)> = replayed
                            .into_iter()
                            .map(|e| (e.kind, (*e.object).clone()))
                            .collect();
                        (rx, initial, s.rv.to_string(), false)
                    }
                    Err(e) => {
                        return watch_ended(json!({"kind": "Status", "apiVersion": "v1",
                            "metadata": {}, "status": "Failure",
                            "message": format!("too old resource version: {} ({})", e.asked, e.oldest),
                            "reason": "Expired", "code": 410}));
                    }
                }
            }
            _ => {
                let initial: Vec<(&'static str, Value)> = s
                    .objects
                    .iter()
                    .filter(|(k, o)| in_scope(k, t, &namespace) && matches(o, &selector))
                    .map(|(_, o)| ("ADDED", o.clone()))
                    .collect();
                (s.events.subscribe(), initial, s.rv.to_string(), true)
            }
        }
    };
    let t = t.clone();
    tokio::spawn(async move {
        let line = |kind: &str, obj: Value| {
            let mut v =
                serde_json::to_vec(&json!({"type": kind, "object": obj})).unwrap_or_default();
            v.push(b'\n');
            Ok(Frame::data(Bytes::from(v)))
        };
        for (kind, o) in initial {
            if tx.send(line(kind, with_version(o, &t))).await.is_err() {
                return;
            }
        }
        // After the initial events, a watch that takes bookmarks is told where they end (the
        // real server does this for every watch that starts with the current state, not only
        // for `sendInitialEvents`); the object is the kind's zero value.
        if send_initial || (from_now && bookmarks) {
            let mut bookmark = with_version(t.zero(), &t);
            bookmark["metadata"] = json!({"resourceVersion": rv, "annotations": {"k8s.io/initial-events-end": "true"}});
            if tx.send(line("BOOKMARK", bookmark)).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        loop {
            let ev = tokio::select! {
                ev = events.recv() => ev,
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
            };
            match ev {
                Ok(ev) if in_scope(&ev.key, &t, &namespace) && matches(&ev.object, &selector) => {
                    if tx
                        .send(line(ev.kind, with_version((*ev.object).clone(), &t)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => return,
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    let mut r = Response::new(StreamBody::new(stream).boxed());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// A request header as text, or `default` when absent or not ASCII.
fn header<B>(req: &http::Request<B>, name: http::header::HeaderName, default: &str) -> String {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(default)
        .to_string()
}
