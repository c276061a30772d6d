//! The stand-in's object store: objects as JSON keyed by group/plural/namespace/name, one
//! resourceVersion counter, events for watchers, and the CRD lifecycle (Established after a
//! configurable delay, or never).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::resources::{self, ResourceType};

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
}

/// When a CRD becomes Established.
#[derive(Clone, Debug)]
pub struct CrdPolicy {
    /// Delay between a CRD's creation and its Established condition.
    pub delay: Duration,
    /// CRD names (`plural.group`) that never become Established.
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

pub struct State {
    pub objects: BTreeMap<Key, Value>,
    pub rv: u64,
    uid: u64,
    builtins: Vec<ResourceType>,
    /// CRD name → the types it serves (only once Established).
    served: BTreeMap<String, Vec<ResourceType>>,
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

impl State {
    pub fn new() -> State {
        let mut s = State {
            objects: BTreeMap::new(),
            rv: 1,
            uid: 0,
            builtins: resources::builtins(),
            served: BTreeMap::new(),
        };
        for ns in ["default", "kube-system", "kube-public"] {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
            s.insert_new(
                Key {
                    group: String::new(),
                    plural: "namespaces".into(),
                    namespace: String::new(),
                    name: ns.into(),
                },
                obj,
            );
        }
        s
    }

    pub fn types(&self) -> Vec<ResourceType> {
        let mut out = self.builtins.clone();
        for ts in self.served.values() {
            out.extend(ts.iter().cloned());
        }
        out
    }

    pub fn next_rv(&mut self) -> String {
        self.rv += 1;
        self.rv.to_string()
    }

    /// Stores a new object, filling in the server-owned metadata.
    pub fn insert_new(&mut self, key: Key, mut obj: Value) -> Value {
        self.uid += 1;
        let rv = self.next_rv();
        let md = &mut obj["metadata"];
        md["uid"] = json!(format!("00000000-0000-4000-8000-{:012}", self.uid));
        md["resourceVersion"] = json!(rv);
        md["creationTimestamp"] = json!(now());
        md["generation"] = json!(1);
        self.objects.insert(key, obj.clone());
        obj
    }

    /// Replaces an object, bumping resourceVersion always and generation when anything but
    /// metadata and status changed.
    pub fn replace(&mut self, key: &Key, mut obj: Value) -> Value {
        let old = self.objects.get(key).cloned().unwrap_or(Value::Null);
        let spec_changed = strip_meta_status(&old) != strip_meta_status(&obj);
        let gen_ = old["metadata"]["generation"].as_i64().unwrap_or(1);
        for k in ["uid", "creationTimestamp"] {
            obj["metadata"][k] = old["metadata"][k].clone();
        }
        obj["metadata"]["generation"] = json!(if spec_changed { gen_ + 1 } else { gen_ });
        if obj == old {
            return obj;
        }
        obj["metadata"]["resourceVersion"] = json!(self.next_rv());
        self.objects.insert(key.clone(), obj.clone());
        obj
    }

    /// Marks a CRD Established (or only NamesAccepted when it must never establish) and
    /// starts serving its versions. Returns the updated object.
    pub fn settle_crd(&mut self, name: &str, establish: bool) -> Option<Value> {
        let key = Key {
            group: "apiextensions.k8s.io".into(),
            plural: "customresourcedefinitions".into(),
            namespace: String::new(),
            name: name.into(),
        };
        let mut obj = self.objects.get(&key)?.clone();
        let ts = now();
        let established = if establish {
            json!({"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": ts})
        } else {
            json!({"type": "Established", "status": "False", "reason": "Installing", "message": "the initial names have been accepted", "lastTransitionTime": ts})
        };
        let stored: Vec<Value> = obj["spec"]["versions"]
            .as_array()
            .map(|vs| {
                vs.iter()
                    .filter(|v| v["storage"].as_bool() == Some(true))
                    .map(|v| v["name"].clone())
                    .collect()
            })
            .unwrap_or_default();
        obj["status"] = json!({
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": ts},
                established,
            ],
            "acceptedNames": obj["spec"]["names"].clone(),
            "storedVersions": stored,
        });
        if establish {
            self.served
                .insert(name.to_string(), resources::from_crd(&obj));
        }
        Some(self.replace(&key, obj))
    }

    /// Keeps served versions in step with an Established CRD's spec after an update.
    pub fn refresh_crd_types(&mut self, name: &str) {
        let key = Key {
            group: "apiextensions.k8s.io".into(),
            plural: "customresourcedefinitions".into(),
            namespace: String::new(),
            name: name.into(),
        };
        match self.objects.get(&key) {
            Some(obj) if self.served.contains_key(name) => {
                let types = resources::from_crd(obj);
                self.served.insert(name.to_string(), types);
            }
            Some(_) => {}
            None => {
                self.served.remove(name);
            }
        }
    }
}

impl Default for State {
    fn default() -> Self {
        State::new()
    }
}

fn strip_meta_status(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}
