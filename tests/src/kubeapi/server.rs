//! The HTTP side of the stand-in: routing, discovery, CRUD, server-side apply, status
//! subresource, list/watch, request counting and fault injection.

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
use super::fields;
use super::resources::{self, ResourceType};
use super::state::{Event, Key, now};

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

fn status(code: u16, reason: &str, message: String, details: Value) -> Response<Body> {
    let v = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "details": details, "code": code,
    });
    respond(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        "application/json",
        &v,
    )
}

fn not_found(t: &ResourceType, name: &str) -> Response<Body> {
    let what = if t.group.is_empty() {
        t.plural.clone()
    } else {
        format!("{}.{}", t.plural, t.group)
    };
    status(
        404,
        "NotFound",
        format!("{what} \"{name}\" not found"),
        json!({"name": name, "group": t.group, "kind": t.plural}),
    )
}

fn no_route() -> Response<Body> {
    status(
        404,
        "NotFound",
        "the server could not find the requested resource".into(),
        json!({}),
    )
}

fn bad_request(message: String) -> Response<Body> {
    status(400, "BadRequest", message, json!({}))
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
    Discovery(Response<Body>),
    Resource(Target),
    NotFound,
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

fn route(shared: &Shared, req: &Request<Incoming>) -> Route {
    let path = req.uri().path().trim_end_matches('/');
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let types = shared.state.lock().map(|s| s.types()).unwrap_or_default();
    let agg_ct = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
    match segs.as_slice() {
        ["version"] => Route::Discovery(ok(&json!({
            "major": "1", "minor": "37", "gitVersion": "v1.37.0-standin", "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.26", "compiler": "gc", "platform": "linux/amd64",
        }))),
        ["readyz"] | ["livez"] | ["healthz"] => {
            let mut r = Response::new(full(b"ok".to_vec()));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain"),
            );
            Route::Discovery(r)
        }
        ["api"] if wants_aggregated(req) => Route::Discovery(respond(
            StatusCode::OK,
            agg_ct,
            &resources::aggregated(&types, true),
        )),
        ["apis"] if wants_aggregated(req) => Route::Discovery(respond(
            StatusCode::OK,
            agg_ct,
            &resources::aggregated(&types, false),
        )),
        ["api"] => Route::Discovery(ok(
            &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}]}),
        )),
        ["apis"] => Route::Discovery(ok(&resources::group_list(&types))),
        ["openapi", "v3"] => Route::Discovery(ok(&resources::openapi_root(&types))),
        ["openapi", "v3", "api", v] => resources::openapi_gv(&types, "", v)
            .map(|d| Route::Discovery(ok(&d)))
            .unwrap_or(Route::NotFound),
        ["openapi", "v3", "apis", g, v] => resources::openapi_gv(&types, g, v)
            .map(|d| Route::Discovery(ok(&d)))
            .unwrap_or(Route::NotFound),
        ["api", v] => gv_list(&types, "", v),
        ["apis", g, v] => gv_list(&types, g, v),
        ["api", v, rest @ ..] => resource_route(&types, "", v, rest),
        ["apis", g, v, rest @ ..] => resource_route(&types, g, v, rest),
        _ => Route::NotFound,
    }
}

fn gv_list(types: &[ResourceType], g: &str, v: &str) -> Route {
    let ts: Vec<&ResourceType> = types
        .iter()
        .filter(|t| t.group == g && t.version == v)
        .collect();
    if ts.is_empty() {
        return Route::NotFound;
    }
    let gv = if g.is_empty() {
        v.to_string()
    } else {
        format!("{g}/{v}")
    };
    Route::Discovery(ok(&resources::resource_list(&gv, &ts)))
}

fn resource_route(types: &[ResourceType], g: &str, v: &str, rest: &[&str]) -> Route {
    let find = |plural: &str| {
        types
            .iter()
            .find(|t| t.group == g && t.version == v && t.plural == plural)
            .cloned()
    };
    let (t, namespace, tail) = match rest {
        ["namespaces", ns, plural, tail @ ..]
            if g.is_empty() && (*plural != "status" && *plural != "finalize") || !g.is_empty() =>
        {
            match find(plural) {
                Some(t) if t.namespaced => (t, Some(ns.to_string()), tail),
                _ => return Route::NotFound,
            }
        }
        [plural, tail @ ..] => match find(plural) {
            Some(t) => (t, None, tail),
            None => return Route::NotFound,
        },
        [] => return Route::NotFound,
    };
    let (name, subresource) = match tail {
        [] => (None, None),
        [name] => (Some(name.to_string()), None),
        [name, sub] => (Some(name.to_string()), Some(sub.to_string())),
        _ => return Route::NotFound,
    };
    if name.is_some() && t.namespaced && namespace.is_none() {
        return Route::NotFound;
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
            json!({}),
        ));
    }

    match route(&shared, &req) {
        Route::Discovery(r) => Ok(r),
        Route::NotFound => Ok(no_route()),
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
    let status_only = match subresource.as_deref() {
        None => false,
        Some("status") if t.status_subresource => true,
        Some(_) => return no_route(),
    };
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

    let Some(name) = name else {
        return match method {
            Method::GET if query.flag("watch") && take_watch_error(shared) => watch_error(),
            Method::GET if query.flag("watch") => watch(shared, &t, namespace, &query),
            Method::GET => list(shared, &t, namespace, &query, accept),
            Method::POST => create(shared, &t, namespace, body, &manager, dry_run),
            _ => status(
                405,
                "MethodNotAllowed",
                format!("{method} is not supported on a collection"),
                json!({}),
            ),
        };
    };
    let key = key_of(&t, &namespace, &name);
    match method {
        Method::GET => {
            let obj = shared
                .state
                .lock()
                .ok()
                .and_then(|s| s.objects.get(&key).cloned());
            match obj {
                Some(o) => ok(&with_version(o, &t)),
                None => not_found(&t, &name),
            }
        }
        Method::DELETE => {
            let removed = shared.state.lock().ok().and_then(|mut s| {
                let o = s.objects.remove(&key)?;
                let rv = s.next_rv();
                if t.plural == "customresourcedefinitions" {
                    s.refresh_crd_types(&name);
                }
                Some((o, rv))
            });
            match removed {
                Some((mut o, rv)) => {
                    o["metadata"]["resourceVersion"] = json!(rv);
                    shared.emit(Event {
                        key,
                        kind: "DELETED",
                        object: Arc::new(o.clone()),
                    });
                    ok(&with_version(o, &t))
                }
                None => not_found(&t, &name),
            }
        }
        Method::PUT => {
            let incoming = match parse_body(body) {
                Ok(v) => v,
                Err(e) => return bad_request(e),
            };
            write(shared, &t, &key, &name, dry_run, |old| {
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
                            t.plural
                        ),
                        json!({"name": name, "group": t.group, "kind": t.plural}),
                    ));
                }
                let mut new = old.clone();
                if status_only {
                    new["status"] = incoming["status"].clone();
                } else {
                    let keep_status = old.get("status").cloned();
                    new = incoming.clone();
                    new["metadata"]["managedFields"] = old["metadata"]["managedFields"].clone();
                    if t.status_subresource {
                        match keep_status {
                            Some(s) => new["status"] = s,
                            None => {
                                if let Some(m) = new.as_object_mut() {
                                    m.remove("status");
                                }
                            }
                        }
                    }
                }
                fields::record_update(Some(old), &mut new, &manager, status_only, &now());
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
                    return status(422, "Invalid", "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch".into(), json!({}));
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
                let mut applied = incoming.clone();
                applied["metadata"]["name"] = json!(name);
                if let Some(ns) = &namespace {
                    applied["metadata"]["namespace"] = json!(ns);
                }
                write(shared, &t, &key, &name, dry_run, |old| {
                    if old.is_none() && status_only {
                        return Err(not_found(&t, &name));
                    }
                    fields::apply(old, &applied, &manager, force, status_only, &now())
                        .map_err(|conflicts| conflict_response(&t, &name, &conflicts))
                })
            } else if content_type.starts_with("application/merge-patch+json")
                || content_type.starts_with("application/strategic-merge-patch+json")
            {
                write(shared, &t, &key, &name, dry_run, |old| {
                    let Some(old) = old else {
                        return Err(not_found(&t, &name));
                    };
                    let mut new = old.clone();
                    let mut patch = incoming.clone();
                    if let Some(m) = patch.as_object_mut() {
                        if status_only {
                            m.retain(|k, _| k == "status");
                        } else if t.status_subresource {
                            m.remove("status");
                        }
                    }
                    fields::merge_patch(&mut new, &patch);
                    fields::record_update(Some(old), &mut new, &manager, status_only, &now());
                    Ok(new)
                })
            } else {
                status(
                    415,
                    "UnsupportedMediaType",
                    format!(
                        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {content_type})"
                    ),
                    json!({}),
                )
            }
        }
        _ => status(
            405,
            "MethodNotAllowed",
            format!("{method} is not supported"),
            json!({}),
        ),
    }
}

fn conflict_response(
    t: &ResourceType,
    name: &str,
    conflicts: &[fields::Conflict],
) -> Response<Body> {
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|c| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{}\" using {}", c.manager, c.api_version), "field": c.field()}))
        .collect();
    let lines: Vec<String> = conflicts
        .iter()
        .map(|c| {
            format!(
                "- conflict with \"{}\" using {}: {}",
                c.manager,
                c.api_version,
                c.field()
            )
        })
        .collect();
    let message = if conflicts.len() == 1 {
        format!(
            "Apply failed with 1 conflict: conflict with \"{}\" using {}: {}",
            conflicts[0].manager,
            conflicts[0].api_version,
            conflicts[0].field()
        )
    } else {
        format!(
            "Apply failed with {} conflicts: {}",
            conflicts.len(),
            lines.join("\n")
        )
    };
    status(
        409,
        "Conflict",
        message,
        json!({"name": name, "group": t.group, "kind": t.plural, "causes": causes}),
    )
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
            json!({"name": ns, "kind": "namespaces"}),
        )
    })
}

/// Runs `f` on the current object under the store lock and stores its result.
fn write(
    shared: &Arc<Shared>,
    t: &ResourceType,
    key: &Key,
    name: &str,
    dry_run: bool,
    f: impl FnOnce(Option<&Value>) -> Result<Value, Response<Body>>,
) -> Response<Body> {
    let Ok(mut s) = shared.state.lock() else {
        return status(
            500,
            "InternalError",
            "store lock poisoned".into(),
            json!({}),
        );
    };
    let old = s.objects.get(key).cloned();
    let mut new = match f(old.as_ref()) {
        Ok(v) => v,
        Err(r) => return r,
    };
    new = with_version(new, t);
    new["metadata"]["name"] = json!(name);
    if !key.namespace.is_empty() {
        new["metadata"]["namespace"] = json!(key.namespace);
    }
    if dry_run {
        return ok(&new);
    }
    let (stored, kind, created) = match &old {
        None => (s.insert_new(key.clone(), new), "ADDED", true),
        Some(o) => {
            let stored = s.replace(key, new);
            let kind = if stored["metadata"]["resourceVersion"] == o["metadata"]["resourceVersion"]
            {
                ""
            } else {
                "MODIFIED"
            };
            (stored, kind, false)
        }
    };
    let is_crd = t.plural == "customresourcedefinitions";
    if is_crd && !created {
        s.refresh_crd_types(name);
    }
    drop(s);
    if !kind.is_empty() {
        shared.emit(Event {
            key: key.clone(),
            kind,
            object: Arc::new(stored.clone()),
        });
    }
    if is_crd && created {
        shared.schedule_crd(name.to_string());
    }
    respond(
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        "application/json",
        &stored,
    )
}

fn create(
    shared: &Arc<Shared>,
    t: &ResourceType,
    namespace: Option<String>,
    body: &[u8],
    manager: &str,
    dry_run: bool,
) -> Response<Body> {
    let mut obj = match parse_body(body) {
        Ok(v) => v,
        Err(e) => return bad_request(e),
    };
    let Some(name) = obj["metadata"]["name"].as_str().map(str::to_string) else {
        return status(
            422,
            "Invalid",
            format!(
                "{} is invalid: metadata.name: Required value: name is required",
                t.kind
            ),
            json!({}),
        );
    };
    if let Some(r) = namespace_missing(shared, t, &namespace) {
        return r;
    }
    let key = key_of(t, &namespace, &name);
    if shared
        .state
        .lock()
        .map(|s| s.objects.contains_key(&key))
        .unwrap_or(false)
    {
        let what = if t.group.is_empty() {
            t.plural.clone()
        } else {
            format!("{}.{}", t.plural, t.group)
        };
        return status(
            409,
            "AlreadyExists",
            format!("{what} \"{name}\" already exists"),
            json!({"name": name, "group": t.group, "kind": t.plural}),
        );
    }
    if t.status_subresource
        && let Some(m) = obj.as_object_mut()
    {
        m.remove("status");
    }
    fields::record_update(None, &mut obj, manager, false, &now());
    write(shared, t, &key, &name, dry_run, |_| Ok(obj))
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
    let Ok(s) = shared.state.lock() else {
        return status(
            500,
            "InternalError",
            "store lock poisoned".into(),
            json!({}),
        );
    };
    let metadata_only = accept
        .split(',')
        .next()
        .is_some_and(|a| a.contains("as=PartialObjectMetadataList"));
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
        respond(
            StatusCode::OK,
            "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
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

/// A watch that fails at once: 200, one ERROR event with a Status, end of stream.
fn watch_error() -> Response<Body> {
    let event = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
        "metadata": {}, "status": "Failure", "message": "etcdserver: request timed out",
        "reason": "InternalError", "code": 500}});
    let mut line = serde_json::to_vec(&event).unwrap_or_default();
    line.push(b'\n');
    respond(StatusCode::OK, "application/json", &Value::Null).map(|_| full(line))
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
    let since: Option<u64> = query
        .get("resourceVersion")
        .and_then(|s| s.parse().ok())
        .filter(|v| *v > 0);
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
    let (mut events, initial, rv) = {
        let Ok(s) = shared.state.lock() else {
            return status(
                500,
                "InternalError",
                "store lock poisoned".into(),
                json!({}),
            );
        };
        let events = shared.events.subscribe();
        let initial: Vec<(&'static str, Value)> = s
            .objects
            .iter()
            .filter(|(k, o)| in_scope(k, t, &namespace) && matches(o, query))
            .filter_map(|(_, o)| {
                let orv: u64 = o["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(0);
                match since {
                    _ if send_initial => Some(("ADDED", o.clone())),
                    None => Some(("ADDED", o.clone())),
                    Some(v) if orv > v => Some(("MODIFIED", o.clone())),
                    Some(_) => None,
                }
            })
            .collect();
        (events, initial, s.rv.to_string())
    };
    let t = t.clone();
    let selector = Query(query.0.clone());
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
        if send_initial {
            let bookmark = json!({"kind": t.kind, "apiVersion": t.api_version(), "metadata": {"resourceVersion": rv, "annotations": {"k8s.io/initial-events-end": "true"}}});
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
