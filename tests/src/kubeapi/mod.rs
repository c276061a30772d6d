//! A Kubernetes API stand-in: an HTTP(S) server on 127.0.0.1 that answers the requests the
//! agent (kube-rs) and kubectl make the way kube-apiserver v1.36 answers them, for what the
//! real server cannot be made to do: injected 503s, stalls, dropped connections, watches that
//! fail with error events, a CRD that is never Established. Everything else is tested against
//! the real kube-apiserver (`kube_real`), and `kube_differential` sends the agent's requests to
//! both and compares the answers.
//!
//! What it models:
//! - discovery (legacy and aggregated `/api`, `/apis`, `/apis/GROUP[/VERSION]`, OpenAPI v3
//!   path lists) for a fixed table of built-in kinds and every served version of a CRD whose
//!   names were accepted (listed once it is Established);
//! - get, list (also as `PartialObjectMetadataList`), create, replace, merge patch and
//!   server-side apply, the status subresource, delete;
//! - server-side apply and `managedFields` as structured-merge-diff computes them, with
//!   associative lists keyed as the Kubernetes OpenAPI says ([`schema`], [`fields`]): merged
//!   lists, conflicts named by key (`.spec.ports[port=80,protocol="TCP"].targetPort`), pruning;
//! - what the registry strategies do: `generation` only for kinds that have one, a Namespace's
//!   `kubernetes.io/metadata.name` label, a CRD's initial status; the one validation rule an
//!   apply can trip (a Service's port names, a 422);
//! - a CRD's lifecycle: created with `conditions: null`, names accepted with
//!   `Established=False` ("Installing"), then `Established=True` after a delay (or never);
//! - watches: from now (ADDED for what exists), from an older resourceVersion (the events since
//!   then, as they happened: ADDED, MODIFIED, DELETED), 410 Expired when that is older than the
//!   type's watch cache; a watch starting from the current state ends its initial events with
//!   a bookmark when bookmarks are allowed (or `sendInitialEvents` asks);
//! - errors as the real server words them: Status details without an empty group, the plain
//!   text `404 page not found` for paths outside the served groups.
//!
//! Not modelled: defaulting beyond port protocols and the Namespace label (a CRD's
//! `conversion`, a Deployment's strategy, ...), validation beyond Service ports, admission,
//! RBAC, finalizers, the scale subresource, field selectors other than name and namespace,
//! periodic bookmarks, a watch cache that lags behind writes, the real server's two-second
//! pause before creating a custom resource whose CRD has just been Established. Tests play the
//! controllers through [`KubeApi::update_status`] and friends; request counting and fault
//! injection are on [`KubeApi`].

pub mod fields;
#[allow(clippy::result_large_err)] // handlers return ready-made error responses
pub mod fixture;
mod resources;
pub mod schema;
#[allow(clippy::result_large_err)] // handlers return ready-made error responses
mod server;
mod state;
mod tls;
mod validate;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub use fields::{FieldSet, owners};
use resources::ResourceType;
pub use state::CrdPolicy;
use state::{Key, State};

#[derive(Default)]
struct Faults {
    unavailable_until: Option<Instant>,
    unavailable_after_mutations: Option<(u64, Duration)>,
    stall: Option<(usize, Duration)>,
    drop_next: usize,
    /// Watches answered with one ERROR event (500) and closed.
    watch_errors: usize,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    total: AtomicU64,
    mutating: AtomicU64,
    faulted: AtomicU64,
    log: Mutex<Vec<String>>,
    faults: Mutex<Faults>,
    crd_policy: Mutex<CrdPolicy>,
}

/// The manager the stand-in's status helpers write as, playing the controllers.
const CONTROLLERS: &str = "test-controllers";

impl Shared {
    /// The API server's own CRD controllers: names accepted at once, Established after the
    /// policy's delay unless the CRD is one that never establishes.
    fn schedule_crd(self: &Arc<Self>, name: String) {
        let (delay, establish) = match self.crd_policy.lock() {
            Ok(p) => (p.delay, !p.never.contains(&name)),
            Err(_) => return,
        };
        let shared = self.clone();
        tokio::spawn(async move {
            if let Ok(mut s) = shared.state.lock() {
                s.accept_names(&name);
            }
            if !establish {
                return;
            }
            tokio::time::sleep(delay).await;
            if let Ok(mut s) = shared.state.lock() {
                s.establish(&name);
            }
        });
    }

    /// The served type of a stored object (any served version), or one made up for a type
    /// nobody serves.
    fn type_of(&self, r: &ObjectRef) -> ResourceType {
        let served = self.state.lock().ok().and_then(|s| {
            s.types()
                .into_iter()
                .find(|t| t.group == r.group && t.plural == r.plural)
        });
        served.unwrap_or_else(|| ResourceType {
            group: r.group.clone(),
            version: "v1".into(),
            kind: r.plural.clone(),
            plural: r.plural.clone(),
            namespaced: !r.namespace.is_empty(),
            status_subresource: false,
            short_names: Vec::new(),
            categories: Vec::new(),
            generation: resources::Generation::AllButMetadata,
            custom: true,
        })
    }
}

/// Names one object in the stand-in: `group` is empty for the core group, `plural` the
/// resource, `namespace` empty for cluster-scoped objects.
#[derive(Clone, Debug)]
pub struct ObjectRef {
    pub group: String,
    pub plural: String,
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(group: &str, plural: &str, namespace: &str, name: &str) -> ObjectRef {
        ObjectRef {
            group: group.into(),
            plural: plural.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }
    pub fn crd(name: &str) -> ObjectRef {
        ObjectRef::new(
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            "",
            name,
        )
    }
    fn key(&self) -> Key {
        Key {
            group: self.group.clone(),
            plural: self.plural.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

/// A running stand-in. Dropping it stops accepting connections.
pub struct KubeApi {
    shared: Arc<Shared>,
    addr: std::net::SocketAddr,
    accept: tokio::task::JoinHandle<()>,
    tls: Option<tls::TlsMaterial>,
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl KubeApi {
    /// Starts a stand-in on 127.0.0.1 with a free port.
    pub async fn start() -> std::io::Result<KubeApi> {
        KubeApi::start_with(CrdPolicy::default()).await
    }

    pub async fn start_with(policy: CrdPolicy) -> std::io::Result<KubeApi> {
        KubeApi::start_inner(policy, None).await
    }

    /// Starts a stand-in serving HTTPS with a fresh cluster CA and requiring the admin client
    /// certificate, as a Talos control plane does; [`KubeApi::kubeconfig`] embeds all three.
    pub async fn start_tls(policy: CrdPolicy) -> std::io::Result<KubeApi> {
        KubeApi::start_inner(policy, Some(tls::generate()?)).await
    }

    async fn start_inner(
        policy: CrdPolicy,
        tls: Option<tls::TlsMaterial>,
    ) -> std::io::Result<KubeApi> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new()),
            total: AtomicU64::new(0),
            mutating: AtomicU64::new(0),
            faulted: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
            faults: Mutex::new(Faults::default()),
            crd_policy: Mutex::new(policy),
        });
        let s = shared.clone();
        let acceptor = tls
            .as_ref()
            .map(|t| tokio_rustls::TlsAcceptor::from(t.server.clone()));
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| server::handle(s.clone(), req));
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match acceptor {
                        Some(a) => {
                            if let Ok(tls) = a.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                            }
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
            }
        });
        Ok(KubeApi {
            shared,
            addr,
            accept,
            tls,
        })
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// A kubeconfig pointing at this stand-in: plain HTTP without credentials, or with TLS the
    /// cluster CA and the admin client certificate and key (base64 PEM, like Talos writes them).
    pub fn kubeconfig(&self) -> String {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let (ca, user) = match &self.tls {
            Some(t) => (
                format!("\n    certificate-authority-data: {}", b64(&t.ca_pem)),
                format!(
                    "\n    client-certificate-data: {}\n    client-key-data: {}",
                    b64(&t.client_cert_pem),
                    b64(&t.client_key_pem)
                ),
            ),
            None => (String::new(), " {}".to_string()),
        };
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: {}{ca}\ncontexts:\n- name: standin\n  context:\n    cluster: standin\n    user: admin\nusers:\n- name: admin\n  user:{user}\ncurrent-context: standin\n",
            self.url()
        )
    }

    /// The cluster CA (PEM) when serving TLS.
    pub fn ca_pem(&self) -> Option<&str> {
        self.tls.as_ref().map(|t| t.ca_pem.as_str())
    }

    /// Requests received so far (every method, including faulted ones).
    pub fn requests(&self) -> u64 {
        self.shared.total.load(Ordering::SeqCst)
    }

    /// POST/PUT/PATCH/DELETE requests received so far.
    pub fn mutating_requests(&self) -> u64 {
        self.shared.mutating.load(Ordering::SeqCst)
    }

    /// Requests answered with an injected 503.
    pub fn faulted_requests(&self) -> u64 {
        self.shared.faulted.load(Ordering::SeqCst)
    }

    /// `METHOD URI` of every request so far.
    pub fn request_log(&self) -> Vec<String> {
        self.shared
            .log
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    pub fn reset_counts(&self) {
        self.shared.total.store(0, Ordering::SeqCst);
        self.shared.mutating.store(0, Ordering::SeqCst);
        self.shared.faulted.store(0, Ordering::SeqCst);
        if let Ok(mut l) = self.shared.log.lock() {
            l.clear();
        }
    }

    /// Every request is answered 503 for `window`, starting now.
    pub fn unavailable_for(&self, window: Duration) {
        if let Ok(mut f) = self.shared.faults.lock() {
            f.unavailable_until = Some(Instant::now() + window);
        }
    }

    /// Every request is answered 503 for `window`, starting at the `n`th mutating request.
    pub fn unavailable_after_mutations(&self, n: u64, window: Duration) {
        if let Ok(mut f) = self.shared.faults.lock() {
            f.unavailable_after_mutations = Some((n, window));
        }
    }

    /// The next `n` requests wait `delay` before being handled.
    pub fn stall_next(&self, n: usize, delay: Duration) {
        if let Ok(mut f) = self.shared.faults.lock() {
            f.stall = Some((n, delay));
        }
    }

    /// The next `n` requests get their connection closed without an answer.
    pub fn drop_next(&self, n: usize) {
        if let Ok(mut f) = self.shared.faults.lock() {
            f.drop_next = n;
        }
    }

    /// The next `n` watch requests are answered 200 with a single ERROR event carrying a 500
    /// Status (as the API server does when its storage fails mid-watch), then closed.
    pub fn fail_watches(&self, n: usize) {
        if let Ok(mut f) = self.shared.faults.lock() {
            f.watch_errors = n;
        }
    }

    /// CRDs created from now on follow `policy`.
    pub fn set_crd_policy(&self, policy: CrdPolicy) {
        if let Ok(mut p) = self.shared.crd_policy.lock() {
            *p = policy;
        }
    }

    /// The stored object (as the API would return it, in its stored apiVersion).
    pub fn get(&self, r: &ObjectRef) -> Option<Value> {
        self.shared
            .state
            .lock()
            .ok()?
            .objects
            .get(&r.key())
            .cloned()
    }

    /// Objects of one resource (all namespaces).
    pub fn list(&self, group: &str, plural: &str) -> Vec<Value> {
        self.shared
            .state
            .lock()
            .map(|s| {
                s.objects
                    .iter()
                    .filter(|(k, _)| k.group == group && k.plural == plural)
                    .map(|(_, v)| v.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Plays a controller: sets `status` (generation-aware helpers below build it) as an
    /// update of the status subresource by `test-controllers`, bumping resourceVersion and
    /// notifying watchers. Returns false when the object is missing.
    pub fn update_status(&self, r: &ObjectRef, status: Value) -> bool {
        let t = self.shared.type_of(r);
        let Ok(mut s) = self.shared.state.lock() else {
            return false;
        };
        let key = r.key();
        let Some(old) = s.objects.get(&key).cloned() else {
            return false;
        };
        let mut new = old.clone();
        new["status"] = status;
        let op = fields::Op {
            manager: CONTROLLERS,
            api_version: &t.api_version(),
            subresource: Some("status"),
            now: &state::now(),
        };
        fields::record_update(&old, &mut new, op, s.ty(&t));
        s.replace(&t, &key, new);
        true
    }

    /// Seeds an object directly, as another client's create (`manager` owns what it set).
    pub fn seed(&self, r: &ObjectRef, mut obj: Value, manager: &str) {
        let t = self.shared.type_of(r);
        obj["metadata"]["name"] = json!(r.name);
        if !r.namespace.is_empty() {
            obj["metadata"]["namespace"] = json!(r.namespace);
        }
        state::default_object(&t.kind, &mut obj);
        let created = match self.shared.state.lock() {
            Ok(mut s) => {
                let op = fields::Op {
                    manager,
                    api_version: &t.api_version(),
                    subresource: None,
                    now: &state::now(),
                };
                fields::record_update(&t.zero(), &mut obj, op, s.ty(&t));
                s.create(&t, r.key(), obj);
                true
            }
            Err(_) => false,
        };
        if created && !t.custom && r.plural == "customresourcedefinitions" {
            self.shared.schedule_crd(r.name.clone());
        }
    }

    /// Replaces an object as another client's update (`manager` takes the fields it changed).
    pub fn replace_as(&self, r: &ObjectRef, mut obj: Value, manager: &str) -> bool {
        let t = self.shared.type_of(r);
        let Ok(mut s) = self.shared.state.lock() else {
            return false;
        };
        let key = r.key();
        let Some(old) = s.objects.get(&key).cloned() else {
            return false;
        };
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
        obj["metadata"]["managedFields"] = old["metadata"]["managedFields"].clone();
        state::default_object(&t.kind, &mut obj);
        let op = fields::Op {
            manager,
            api_version: &t.api_version(),
            subresource: None,
            now: &state::now(),
        };
        fields::record_update(&old, &mut obj, op, s.ty(&t));
        s.replace(&t, &key, obj);
        true
    }

    /// Marks a Deployment Available with all replicas updated, as kube-controller-manager would.
    pub fn mark_deployment_available(&self, namespace: &str, name: &str) -> bool {
        let r = ObjectRef::new("apps", "deployments", namespace, name);
        let Some(obj) = self.get(&r) else {
            return false;
        };
        let replicas = obj["spec"]["replicas"].as_i64().unwrap_or(1);
        let generation = obj["metadata"]["generation"].clone();
        self.update_status(&r, json!({
            "observedGeneration": generation, "replicas": replicas, "updatedReplicas": replicas,
            "readyReplicas": replicas, "availableReplicas": replicas,
            "conditions": [
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable", "message": "Deployment has minimum availability."},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable", "message": format!("ReplicaSet \"{name}\" has successfully progressed.")},
            ],
        }))
    }

    /// Marks a Flux object Ready=True (or the given status/reason/message) for its current
    /// generation, with `revision` as its artifact / last applied revision.
    pub fn mark_flux(
        &self,
        r: &ObjectRef,
        ready: &str,
        reason: &str,
        message: &str,
        revision: &str,
    ) -> bool {
        let Some(obj) = self.get(r) else { return false };
        let generation = obj["metadata"]["generation"].clone();
        let mut conditions = vec![
            json!({"type": "Ready", "status": ready, "reason": reason, "message": message, "observedGeneration": generation, "lastTransitionTime": state::now()}),
        ];
        if reason == "Stalled" {
            conditions.push(json!({"type": "Stalled", "status": "True", "reason": reason, "message": message, "observedGeneration": generation, "lastTransitionTime": state::now()}));
        }
        let mut status = json!({"observedGeneration": generation, "conditions": conditions});
        if r.plural == "gitrepositories" && ready == "True" {
            status["artifact"] = json!({"revision": revision, "path": "gitrepository/flux-system/flux-system/x.tar.gz", "url": "http://source-controller/x.tar.gz", "digest": "sha256:0", "lastUpdateTime": state::now()});
        }
        if r.plural == "kustomizations" {
            status["lastAttemptedRevision"] = json!(revision);
            if ready == "True" {
                status["lastAppliedRevision"] = json!(revision);
            }
        }
        self.update_status(r, status)
    }

    /// Names of CRDs currently Established.
    pub fn established_crds(&self) -> BTreeSet<String> {
        self.list("apiextensions.k8s.io", "customresourcedefinitions")
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
