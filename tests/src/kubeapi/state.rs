//! The stand-in's object store: objects as JSON keyed by group/plural/namespace/name, one
//! resourceVersion counter, what the registry strategies do on create and update (generation,
//! a Namespace's name label, a CRD's initial status), the event history watches replay, and
//! the CRD lifecycle (names accepted, then Established after a configurable delay, or never).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::fields::{self, Op};
use super::resources::{self, Generation, ResourceType};
use super::schema::Ty;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub group: String,
    pub plural: String,
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug)]
pub struct Event {
    pub key: Key,
    pub kind: &'static str,
    pub object: Arc<Value>,
    pub rv: u64,
}

/// When a CRD becomes Established.
#[derive(Clone, Debug)]
pub struct CrdPolicy {
    /// Delay between a CRD's names being accepted and its Established condition.
    pub delay: Duration,
    /// CRD names (`plural.group`) that never become Established (their names are accepted and
    /// they stay `Established=False`, reason `Installing`).
    pub never: BTreeSet<String>,
}

impl Default for CrdPolicy {
    fn default() -> Self {
        CrdPolicy {
            delay: Duration::from_millis(100),
            never: BTreeSet::new(),
        }
    }
}

/// Events kept for watches that resume from an older resourceVersion.
const HISTORY: usize = 20_000;

/// The manager the API server's own controllers write status as.
const APISERVER: &str = "kube-apiserver";

/// Why a watch cannot start from the resourceVersion asked for: the Status of its ERROR event.
pub struct Expired {
    pub asked: u64,
    pub oldest: u64,
}

pub struct State {
    pub objects: BTreeMap<Key, Value>,
    pub rv: u64,
    uid: u64,
    builtins: Vec<ResourceType>,
    /// CRD name → the types it serves (once its names are accepted, as the API server's
    /// `crdHandler` does: `customresource_handler.go` l.292-296).
    served: BTreeMap<String, Vec<ResourceType>>,
    /// CRDs that are Established: discovery lists only these
    /// (`customresource_discovery_controller.go` l.105).
    established: BTreeSet<String>,
    history: VecDeque<Event>,
    /// resourceVersion of the newest event no longer in `history`.
    history_floor: u64,
    /// (group, plural) → the resourceVersion its watch cache started at. Built-in caches start
    /// with the server; a custom resource's on the first request for it, so a watch from
    /// before that answers 410 Expired, as the real server's does.
    windows: BTreeMap<(String, String), u64>,
    pub events: broadcast::Sender<Event>,
}

pub fn now() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn crd_key(name: &str) -> Key {
    Key {
        group: "apiextensions.k8s.io".into(),
        plural: "customresourcedefinitions".into(),
        namespace: String::new(),
        name: name.into(),
    }
}

fn rv_of(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// Everything but metadata and status.
fn spec_part(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

/// Defaults the real server sets while decoding, before field management sees the object:
/// a Namespace's `kubernetes.io/metadata.name` label (kubernetes v1.36
/// `pkg/apis/core/v1/defaults.go` `SetDefaults_Namespace`) and the `TCP` protocol of
/// Service and container ports (`SetDefaults_ServicePort`, `SetDefaults_ContainerPort`).
pub fn default_object(kind: &str, obj: &mut Value) {
    fn tcp(ports: &mut Value) {
        for p in ports.as_array_mut().into_iter().flatten() {
            if p.is_object() && p.get("protocol").is_none() {
                p["protocol"] = json!("TCP");
            }
        }
    }
    fn containers(pod_spec: &mut Value) {
        for list in ["containers", "initContainers"] {
            for c in pod_spec[list].as_array_mut().into_iter().flatten() {
                if c.get("ports").is_some() {
                    tcp(&mut c["ports"]);
                }
            }
        }
    }
    match kind {
        "Namespace" => {
            if let Some(name) = obj["metadata"]["name"].as_str().map(str::to_string) {
                if !obj["metadata"]["labels"].is_object() {
                    obj["metadata"]["labels"] = json!({});
                }
                obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
            }
        }
        "Service" if obj["spec"]["ports"].is_array() => tcp(&mut obj["spec"]["ports"]),
        "Deployment" if obj["spec"]["template"]["spec"].is_object() => {
            containers(&mut obj["spec"]["template"]["spec"])
        }
        "Pod" if obj["spec"].is_object() => containers(&mut obj["spec"]),
        _ => {}
    }
}

impl State {
    pub fn new() -> State {
        let (events, _) = broadcast::channel(4096);
        let mut s = State {
            objects: BTreeMap::new(),
            rv: 1,
            uid: 0,
            builtins: resources::builtins(),
            served: BTreeMap::new(),
            established: BTreeSet::new(),
            history: VecDeque::new(),
            history_floor: 0,
            windows: BTreeMap::new(),
            events,
        };
        for t in s.builtins.clone() {
            s.windows.insert((t.group.clone(), t.plural.clone()), 1);
        }
        let ns_type = s.builtins[0].clone();
        for ns in ["kube-system", "kube-public", "default", "kube-node-lease"] {
            let key = Key {
                group: String::new(),
                plural: "namespaces".into(),
                namespace: String::new(),
                name: ns.into(),
            };
            let mut obj =
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            default_object("Namespace", &mut obj);
            let op = Op {
                manager: APISERVER,
                api_version: "v1",
                subresource: None,
                now: &now(),
            };
            fields::record_update(&ns_type.zero(), &mut obj, op, Ty::builtin("Namespace"));
            s.create(&ns_type, key, obj);
        }
        s
    }

    /// Types requests are served for.
    pub fn types(&self) -> Vec<ResourceType> {
        let mut out = self.builtins.clone();
        for ts in self.served.values() {
            out.extend(ts.iter().cloned());
        }
        out
    }

    /// Types discovery lists: built-ins and those of Established CRDs.
    pub fn discoverable(&self) -> Vec<ResourceType> {
        let mut out = self.builtins.clone();
        for (name, ts) in &self.served {
            if self.established.contains(name) {
                out.extend(ts.iter().cloned());
            }
        }
        out
    }

    /// The type of `t`'s objects for field management: a built-in fragment, or the schema of
    /// the CRD version that serves it.
    pub fn ty(&self, t: &ResourceType) -> Ty<'_> {
        if !t.custom {
            return Ty::builtin(&t.kind);
        }
        let crd = self.objects.get(&crd_key(&t.qualified()));
        let schema = crd.and_then(|c| {
            c["spec"]["versions"]
                .as_array()?
                .iter()
                .find(|v| v["name"] == t.version.as_str())
                .map(|v| &v["schema"]["openAPIV3Schema"])
                .filter(|s| s.is_object())
        });
        Ty::custom(schema)
    }

    /// Notes a request for `t`: a custom resource's watch cache starts at the first one.
    pub fn touch(&mut self, t: &ResourceType) {
        let rv = self.rv;
        self.windows
            .entry((t.group.clone(), t.plural.clone()))
            .or_insert(rv);
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn emit(&mut self, key: Key, kind: &'static str, object: Value) {
        let ev = Event {
            rv: rv_of(&object),
            key,
            kind,
            object: Arc::new(object),
        };
        if self.history.len() >= HISTORY
            && let Some(old) = self.history.pop_front()
        {
            self.history_floor = old.rv;
        }
        self.history.push_back(ev.clone());
        let _ = self.events.send(ev);
    }

    /// Stores a new object: server-owned metadata, what the kind's strategy sets on create,
    /// an ADDED event.
    pub fn create(&mut self, t: &ResourceType, key: Key, mut obj: Value) -> Value {
        self.uid += 1;
        let rv = self.next_rv();
        let md = &mut obj["metadata"];
        md["uid"] = json!(format!("00000000-0000-4000-8000-{:012}", self.uid));
        md["resourceVersion"] = json!(rv.to_string());
        md["creationTimestamp"] = json!(now());
        if let Some(m) = md.as_object_mut() {
            m.remove("generation");
        }
        if t.generation != Generation::None {
            obj["metadata"]["generation"] = json!(1);
        }
        match t.kind.as_str() {
            "Namespace" if !t.custom => {
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
                obj["status"] = json!({"phase": "Active"});
            }
            "CustomResourceDefinition" if !t.custom => {
                let stored: Vec<Value> = obj["spec"]["versions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|v| v["storage"] == true)
                    .map(|v| v["name"].clone())
                    .take(1)
                    .collect();
                obj["status"] = json!({"conditions": null, "acceptedNames": {"plural": "", "kind": ""}, "storedVersions": stored});
            }
            _ => {}
        }
        self.objects.insert(key.clone(), obj.clone());
        self.emit(key, "ADDED", obj.clone());
        obj
    }

    /// Replaces an object: generation as the kind's strategy moves it, a new resourceVersion
    /// and a MODIFIED event unless nothing changed. Returns the stored object.
    pub fn replace(&mut self, t: &ResourceType, key: &Key, mut obj: Value) -> Value {
        let old = self.objects.get(key).cloned().unwrap_or(Value::Null);
        for k in ["uid", "creationTimestamp", "resourceVersion", "generation"] {
            match old["metadata"].get(k) {
                Some(v) => obj["metadata"][k] = v.clone(),
                None => {
                    if let Some(m) = obj["metadata"].as_object_mut() {
                        m.remove(k);
                    }
                }
            }
        }
        let bump = match t.generation {
            Generation::None => false,
            Generation::Spec => old["spec"] != obj["spec"],
            Generation::SpecOrAnnotations => {
                old["spec"] != obj["spec"]
                    || old["metadata"]["annotations"] != obj["metadata"]["annotations"]
            }
            Generation::AllButMetadata => spec_part(&old) != spec_part(&obj),
        };
        if bump {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(0);
            obj["metadata"]["generation"] = json!(g + 1);
        }
        if obj == old {
            return obj;
        }
        obj["metadata"]["resourceVersion"] = json!(self.next_rv().to_string());
        self.objects.insert(key.clone(), obj.clone());
        if !t.custom && t.plural == "customresourcedefinitions" {
            self.refresh_crd_types(&key.name);
        }
        self.emit(key.clone(), "MODIFIED", obj.clone());
        obj
    }

    /// Removes an object (a DELETED event). Returns it with its final resourceVersion.
    pub fn delete(&mut self, t: &ResourceType, key: &Key) -> Option<Value> {
        let mut o = self.objects.remove(key)?;
        o["metadata"]["resourceVersion"] = json!(self.next_rv().to_string());
        if !t.custom && t.plural == "customresourcedefinitions" {
            self.served.remove(&key.name);
            self.established.remove(&key.name);
        }
        self.emit(key.clone(), "DELETED", o.clone());
        Some(o)
    }

    /// Writes `status` as one of the API server's own controllers (an Update of the status
    /// subresource by `kube-apiserver`).
    fn controller_status(&mut self, key: &Key, status: Value) -> Option<Value> {
        let t = self
            .builtins
            .iter()
            .find(|t| t.group == key.group && t.plural == key.plural)?
            .clone();
        let old = self.objects.get(key)?.clone();
        let mut new = old.clone();
        new["status"] = status;
        let op = Op {
            manager: APISERVER,
            api_version: &t.api_version(),
            subresource: Some("status"),
            now: &now(),
        };
        fields::record_update(&old, &mut new, op, Ty::builtin(&t.kind));
        Some(self.replace(&t, key, new))
    }

    /// The naming controller's pass over a new or changed CRD: its names are accepted, it is
    /// `Established=False` ("Installing") until the establishing controller gets to it, and
    /// its resources are served from now on (`k8s.io/apiextensions-apiserver` v0.36.2
    /// `pkg/controller/status/naming_controller.go`, `calculateNamesAndConditions`, l.198-227).
    pub fn accept_names(&mut self, name: &str) -> Option<Value> {
        let key = crd_key(name);
        let obj = self.objects.get(&key)?.clone();
        let names = &obj["spec"]["names"];
        let kind = names["kind"].as_str().unwrap_or_default();
        let mut accepted = json!({
            "plural": names["plural"],
            "singular": names.get("singular").cloned().unwrap_or_else(|| json!(kind.to_lowercase())),
            "kind": kind,
            "listKind": names.get("listKind").cloned().unwrap_or_else(|| json!(format!("{kind}List"))),
        });
        for k in ["shortNames", "categories"] {
            if let Some(v) = names.get(k) {
                accepted[k] = v.clone();
            }
        }
        let ts = now();
        let mut status = obj["status"].clone();
        let established = condition(&status, "Established").filter(|c| c["status"] == "True");
        status["acceptedNames"] = accepted;
        status["conditions"] = json!([
            condition(&status, "NamesAccepted").filter(|c| c["status"] == "True").unwrap_or_else(|| json!({"type": "NamesAccepted", "status": "True", "lastTransitionTime": ts, "reason": "NoConflicts", "message": "no conflicts found"})),
            established.unwrap_or_else(|| json!({"type": "Established", "status": "False", "lastTransitionTime": ts, "reason": "Installing", "message": "the initial names have been accepted"})),
        ]);
        self.served
            .insert(name.to_string(), resources::from_crd(&obj));
        self.controller_status(&key, status)
    }

    /// The establishing controller: `Established=True` (`pkg/controller/establish/
    /// establishing_controller.go` l.157-162); discovery lists the CRD's resources from now on.
    pub fn establish(&mut self, name: &str) -> Option<Value> {
        let key = crd_key(name);
        let obj = self.objects.get(&key)?;
        let mut status = obj["status"].clone();
        let conditions: Vec<Value> = status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                if c["type"] == "Established" {
                    json!({"type": "Established", "status": "True", "lastTransitionTime": now(), "reason": "InitialNamesAccepted", "message": "the initial names have been accepted"})
                } else {
                    c.clone()
                }
            })
            .collect();
        status["conditions"] = json!(conditions);
        self.established.insert(name.to_string());
        self.controller_status(&key, status)
    }

    /// Keeps served versions in step with a CRD's spec after an update.
    fn refresh_crd_types(&mut self, name: &str) {
        if let Some(obj) = self.objects.get(&crd_key(name))
            && self.served.contains_key(name)
        {
            let types = resources::from_crd(obj);
            self.served.insert(name.to_string(), types);
        }
    }

    /// What a watch of `t` from resourceVersion `since` replays: the events after it, as they
    /// happened (an object created since then is ADDED, one changed MODIFIED), with a receiver
    /// for what follows. Expired when `since` is older than the type's watch cache.
    pub fn replay(
        &self,
        t: &ResourceType,
        since: u64,
        keep: impl Fn(&Event) -> bool,
    ) -> Result<(Vec<Event>, broadcast::Receiver<Event>), Expired> {
        let oldest = self
            .windows
            .get(&(t.group.clone(), t.plural.clone()))
            .copied()
            .unwrap_or(self.rv)
            .max(self.history_floor);
        if since < oldest {
            return Err(Expired {
                asked: since,
                oldest,
            });
        }
        let events = self
            .history
            .iter()
            .filter(|e| e.rv > since && e.key.group == t.group && e.key.plural == t.plural)
            .filter(|e| keep(e))
            .cloned()
            .collect();
        Ok((events, self.events.subscribe()))
    }
}

fn condition(status: &Value, t: &str) -> Option<Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == t)
        .cloned()
}

impl Default for State {
    fn default() -> Self {
        State::new()
    }
}
