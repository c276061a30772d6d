//! Server-side apply field management: field sets per manager (leaf granularity; lists are
//! atomic), the `managedFields` wire form (`FieldsV1`), conflicts, merge and removal.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

pub type FieldPath = Vec<String>;
pub type FieldSet = BTreeSet<FieldPath>;

/// Metadata fields the server owns; never part of a manager's set.
const SERVER_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
];

/// The leaf field paths an object sets (`status` only when `subresource` is status).
pub fn field_set(obj: &Value, status_only: bool) -> FieldSet {
    let mut out = FieldSet::new();
    let Some(map) = obj.as_object() else {
        return out;
    };
    for (k, v) in map {
        match k.as_str() {
            "apiVersion" | "kind" => {}
            "status" if !status_only => {}
            "status" => walk(v, vec![k.clone()], &mut out),
            _ if status_only => {}
            "metadata" => {
                if let Some(m) = v.as_object() {
                    for (mk, mv) in m {
                        if !SERVER_METADATA.contains(&mk.as_str()) {
                            walk(mv, vec![k.clone(), mk.clone()], &mut out);
                        }
                    }
                }
            }
            _ => walk(v, vec![k.clone()], &mut out),
        }
    }
    out
}

fn walk(v: &Value, path: FieldPath, out: &mut FieldSet) {
    match v.as_object() {
        Some(m) if !m.is_empty() => {
            for (k, c) in m {
                let mut p = path.clone();
                p.push(k.clone());
                walk(c, p, out);
            }
        }
        _ => {
            out.insert(path);
        }
    }
}

pub fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for k in path {
        cur = cur.as_object()?.get(k)?;
    }
    Some(cur)
}

fn remove_at(obj: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for k in parents {
        match cur.as_object_mut().and_then(|m| m.get_mut(k)) {
            Some(c) => cur = c,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(last);
    }
}

/// Deep-merges `src` into `dst`: maps merge key by key, everything else replaces.
pub fn merge(dst: &mut Value, src: &Value) {
    match (dst.as_object_mut(), src.as_object()) {
        (Some(d), Some(s)) => {
            for (k, v) in s {
                match d.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                    _ => {
                        d.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        _ => *dst = src.clone(),
    }
}

/// JSON merge patch (RFC 7386): `null` deletes.
pub fn merge_patch(dst: &mut Value, patch: &Value) {
    match patch.as_object() {
        Some(p) => {
            if !dst.is_object() {
                *dst = Value::Object(Map::new());
            }
            if let Some(d) = dst.as_object_mut() {
                for (k, v) in p {
                    if v.is_null() {
                        d.remove(k);
                    } else {
                        merge_patch(d.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        None => *dst = patch.clone(),
    }
}

fn overlaps(a: &FieldPath, b: &FieldPath) -> bool {
    let n = a.len().min(b.len());
    a[..n] == b[..n]
}

/// One `managedFields` entry.
#[derive(Clone, Debug)]
pub struct Entry {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: Option<String>,
    pub fields: FieldSet,
}

pub fn read_entries(obj: &Value) -> Vec<Entry> {
    obj["metadata"]["managedFields"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    let mut fields = FieldSet::new();
                    tree_to_paths(&e["fieldsV1"], Vec::new(), &mut fields);
                    Entry {
                        manager: e["manager"].as_str().unwrap_or_default().to_string(),
                        operation: e["operation"].as_str().unwrap_or_default().to_string(),
                        api_version: e["apiVersion"].as_str().unwrap_or_default().to_string(),
                        time: e["time"].as_str().unwrap_or_default().to_string(),
                        subresource: e["subresource"].as_str().map(str::to_string),
                        fields,
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn write_entries(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut tree = Map::new();
            for p in &e.fields {
                let mut cur = &mut tree;
                for k in p {
                    let next = cur
                        .entry(format!("f:{k}"))
                        .or_insert_with(|| Value::Object(Map::new()));
                    if !next.is_object() {
                        *next = Value::Object(Map::new());
                    }
                    match next.as_object_mut() {
                        Some(m) => cur = m,
                        None => break,
                    }
                }
            }
            let mut v = json!({
                "manager": e.manager, "operation": e.operation, "apiVersion": e.api_version,
                "time": e.time, "fieldsType": "FieldsV1", "fieldsV1": Value::Object(tree),
            });
            if let Some(s) = &e.subresource {
                v["subresource"] = json!(s);
            }
            v
        })
        .collect();
    if let Some(m) = obj["metadata"].as_object_mut() {
        m.insert("managedFields".into(), Value::Array(list));
    }
}

fn tree_to_paths(tree: &Value, path: FieldPath, out: &mut FieldSet) {
    match tree.as_object() {
        Some(m) if !m.is_empty() => {
            for (k, v) in m {
                let Some(name) = k.strip_prefix("f:") else {
                    continue;
                };
                let mut p = path.clone();
                p.push(name.to_string());
                tree_to_paths(v, p, out);
            }
        }
        _ => {
            if !path.is_empty() {
                out.insert(path);
            }
        }
    }
}

/// A field another manager owns with a different value.
#[derive(Clone, Debug)]
pub struct Conflict {
    pub manager: String,
    pub api_version: String,
    pub path: FieldPath,
}

impl Conflict {
    pub fn field(&self) -> String {
        format!(".{}", self.path.join("."))
    }
}

/// Server-side apply of `applied` by `manager` onto `live` (None: create). Returns the new object
/// or the conflicts when `force` is false.
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    status_only: bool,
    now: &str,
) -> Result<Value, Vec<Conflict>> {
    let applied_set = field_set(applied, status_only);
    let mut obj = live.cloned().unwrap_or_else(|| json!({"metadata": {}}));
    let mut entries = read_entries(&obj);
    let subresource = status_only.then(|| "status".to_string());

    let mut conflicts = Vec::new();
    for e in entries
        .iter()
        .filter(|e| e.manager != manager || e.operation != "Apply")
    {
        for p in &applied_set {
            for q in e.fields.iter().filter(|q| overlaps(p, q)) {
                if value_at(&obj, q) != value_at(applied, q)
                    && !conflicts
                        .iter()
                        .any(|c: &Conflict| c.path == *q && c.manager == e.manager)
                {
                    conflicts.push(Conflict {
                        manager: e.manager.clone(),
                        api_version: e.api_version.clone(),
                        path: q.clone(),
                    });
                }
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    for e in entries
        .iter_mut()
        .filter(|e| e.manager != manager || e.operation != "Apply")
    {
        e.fields.retain(|q| {
            !conflicts
                .iter()
                .any(|c| c.path == *q && c.manager == e.manager)
        });
    }

    // Fields this manager set before and no longer sets, and nobody else owns: removed.
    let previous: FieldSet = entries
        .iter()
        .find(|e| e.manager == manager && e.operation == "Apply" && e.subresource == subresource)
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    for p in previous.difference(&applied_set) {
        let owned_elsewhere = entries
            .iter()
            .filter(|e| !(e.manager == manager && e.operation == "Apply"))
            .any(|e| e.fields.iter().any(|q| overlaps(p, q)));
        if !owned_elsewhere {
            remove_at(&mut obj, p);
        }
    }

    let mut body = applied.clone();
    if let Some(m) = body.as_object_mut() {
        if status_only {
            m.retain(|k, _| k == "status");
        } else {
            m.remove("status");
        }
        if let Some(md) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            md.remove("managedFields");
        }
    }
    merge(&mut obj, &body);

    let api_version = applied["apiVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    entries.retain(|e| {
        !(e.manager == manager && e.operation == "Apply" && e.subresource == subresource)
    });
    entries.push(Entry {
        manager: manager.to_string(),
        operation: "Apply".into(),
        api_version,
        time: now.to_string(),
        subresource,
        fields: applied_set,
    });
    write_entries(&mut obj, &entries);
    Ok(obj)
}

/// Records an update (create, replace, merge patch) by `manager`: it takes the fields whose
/// values changed from everyone else.
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    status_only: bool,
    now: &str,
) {
    let new_set = field_set(new, status_only);
    let changed: FieldSet = new_set
        .into_iter()
        .filter(|p| old.and_then(|o| value_at(o, p)) != value_at(new, p))
        .collect();
    let mut entries = old.map(read_entries).unwrap_or_default();
    for e in entries.iter_mut() {
        e.fields.retain(|q| !changed.iter().any(|p| overlaps(p, q)));
    }
    let subresource = status_only.then(|| "status".to_string());
    let api_version = new["apiVersion"].as_str().unwrap_or_default().to_string();
    match entries
        .iter_mut()
        .find(|e| e.manager == manager && e.operation == "Update" && e.subresource == subresource)
    {
        Some(e) => {
            e.fields.extend(changed);
            e.time = now.to_string();
        }
        None => entries.push(Entry {
            manager: manager.to_string(),
            operation: "Update".into(),
            api_version,
            time: now.to_string(),
            subresource,
            fields: changed,
        }),
    }
    write_entries(new, &entries);
}

/// Managers and the fields they own, for assertions in tests.
pub fn owners(obj: &Value) -> BTreeMap<String, FieldSet> {
    let mut out: BTreeMap<String, FieldSet> = BTreeMap::new();
    for e in read_entries(obj) {
        out.entry(e.manager).or_default().extend(e.fields);
    }
    out
}
