//! Server-side apply and `managedFields`, computed the way kube-apiserver v1.36 computes them
//! with structured-merge-diff v6.3.2 (the version `k8s.io/apimachinery` v0.36.2 uses). Paths
//! and line numbers below are in that repository at tag v6.3.2 unless they name another.
//!
//! - A field set holds paths of fields (`f:`), associative-list items (`k:{...}`), set items
//!   (`v:`) and, where nothing else identifies an item, indices (`i:`); [`super::schema`] says
//!   which lists are which.
//! - The set an *applier* owns is its configuration's set (`typed/tofieldset.go`
//!   `visitListItems` l.96, `visitMapItems` l.151): leaves, list items, map entries that are
//!   not declared fields, and empty or null values.
//! - An *update* (create, replace, merge patch, status write) takes what it added or changed
//!   (`typed/compare.go` `compare` l.107: every node present on one side only, leaves that
//!   differ), so its set also names intermediate nodes (`".": {}` in FieldsV1) it created.
//! - Apply merges the configuration into the live object (`typed/merge.go` `visitListItems`
//!   l.168 keeps the live order and slots new items in), prunes what the applier set last time
//!   and nobody owns any more (`merge/update.go` `prune` l.256), then compares live and merged:
//!   another manager's field that would change is a conflict (`merge/update.go` `update` l.73).
//! - kube-apiserver's layer on top (`k8s.io/apimachinery` v0.36.2,
//!   `pkg/util/managedfields/internal/`): server-owned metadata is never in a set
//!   (`stripmeta.go`), an update's time moves only when it took fields
//!   (`managedfieldsupdater.go`), appliers are identified without their apiVersion
//!   (`managedfields.go` `BuildManagerIdentifier`), entries are sorted by operation, time and
//!   manager (`sortEncodedManagedFields`), and a conflict is a 409 whose details hold only the
//!   causes, printed as `conflict with "m" using v1: .spec.ports[port=80,protocol="TCP"]`
//!   (`conflict.go`).
//!
//! Not modelled: the cap of ten update managers, the last-applied annotation, conversion
//! between versions, and defaulting other than list-map keys (the real server also records
//! fields its defaulting adds on create, e.g. a Service's `sessionAffinity`).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::schema::{ListType, Ty};

/// One element of a field path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pe {
    Field(String),
    /// An associative-list item: its key fields, sorted by name, values as JSON text.
    Key(Vec<(String, String)>),
    /// A set item, as JSON text.
    Value(String),
    Index(usize),
}

pub type Path = Vec<Pe>;
pub type FieldSet = BTreeSet<Path>;

impl Pe {
    fn field(name: &str) -> Pe {
        Pe::Field(name.to_string())
    }

    /// The FieldsV1 key (`f:name`, `k:{"port":80}`, `v:"x"`, `i:0`).
    fn encode(&self) -> String {
        match self {
            Pe::Field(f) => format!("f:{f}"),
            Pe::Key(kv) => {
                let inner: Vec<String> = kv
                    .iter()
                    .map(|(k, v)| format!("{}:{v}", Value::String(k.clone())))
                    .collect();
                format!("k:{{{}}}", inner.join(","))
            }
            Pe::Value(v) => format!("v:{v}"),
            Pe::Index(i) => format!("i:{i}"),
        }
    }

    fn decode(s: &str) -> Option<Pe> {
        let (kind, rest) = s.split_at_checked(2)?;
        match kind {
            "f:" => Some(Pe::Field(rest.to_string())),
            "k:" => {
                let m: Map<String, Value> = serde_json::from_str(rest).ok()?;
                let mut kv: Vec<(String, String)> =
                    m.into_iter().map(|(k, v)| (k, v.to_string())).collect();
                kv.sort();
                Some(Pe::Key(kv))
            }
            "v:" => serde_json::from_str::<Value>(rest)
                .ok()
                .map(|v| Pe::Value(v.to_string())),
            "i:" => rest.parse().ok().map(Pe::Index),
            _ => None,
        }
    }
}

/// A path as the API server prints it in conflicts (`fieldpath/element.go` `String` l.170):
/// `.spec.ports[port=80,protocol="TCP"].targetPort`.
pub fn path_string(p: &[Pe]) -> String {
    p.iter()
        .map(|pe| match pe {
            Pe::Field(f) => format!(".{f}"),
            Pe::Key(kv) => {
                let parts: Vec<String> = kv.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("[{}]", parts.join(","))
            }
            Pe::Value(v) => format!("[={v}]"),
            Pe::Index(i) => format!("[{i}]"),
        })
        .collect()
}

/// The element identifying `item` in a list of type `lt`; None when the item cannot be
/// identified (a keyed item without any key, a set item that is not a scalar).
fn item_pe(item: &Value, lt: &ListType) -> Option<Pe> {
    match lt {
        ListType::Map(keys) => {
            let m = item.as_object()?;
            let mut kv: Vec<(String, String)> = keys
                .iter()
                .filter_map(|(k, default)| {
                    m.get(k)
                        .or(default.as_ref())
                        .map(|v| (k.clone(), v.to_string()))
                })
                .collect();
            if kv.is_empty() {
                return None;
            }
            kv.sort();
            Some(Pe::Key(kv))
        }
        ListType::Set => (!item.is_object() && !item.is_array() && !item.is_null())
            .then(|| Pe::Value(item.to_string())),
        ListType::Atomic => None,
    }
}

/// Items of a granular list with their elements (indices where an item has no identity).
fn indexed<'v>(items: &'v [Value], lt: &ListType) -> Vec<(Pe, &'v Value)> {
    items
        .iter()
        .enumerate()
        .map(|(i, v)| (item_pe(v, lt).unwrap_or(Pe::Index(i)), v))
        .collect()
}

fn child(path: &[Pe], pe: Pe) -> Path {
    let mut p = path.to_vec();
    p.push(pe);
    p
}

fn is_empty(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::Object(m)) => m.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(_) => false,
    }
}

// ---- the field set of an object ------------------------------------------------------------

/// The fields `v` sets: what an applier owns.
pub fn field_set(v: &Value, ty: Ty) -> FieldSet {
    let mut out = FieldSet::new();
    to_set(v, ty, &[], &mut out);
    out
}

fn to_set(v: &Value, ty: Ty, path: &[Pe], out: &mut FieldSet) {
    match v {
        Value::Object(m) => {
            if ty.atomic() {
                out.insert(path.to_vec());
                return;
            }
            for (k, c) in m {
                let (ct, declared) = ty.child(k);
                let p = child(path, Pe::field(k));
                to_set(c, ct, &p, out);
                if c.is_null() || c.as_object().is_some_and(Map::is_empty) || !declared {
                    out.insert(p);
                }
            }
        }
        Value::Array(items) => {
            let lt = ty.list_type();
            if lt == ListType::Atomic {
                out.insert(path.to_vec());
                return;
            }
            let pes = indexed(items, &lt);
            let mut seen = BTreeSet::new();
            let mut dups = BTreeSet::new();
            for (pe, _) in &pes {
                if !seen.insert(pe.clone()) {
                    dups.insert(pe.clone());
                }
            }
            for pe in &dups {
                out.insert(child(path, pe.clone()));
            }
            for (pe, item) in pes {
                if dups.contains(&pe) {
                    continue;
                }
                let p = child(path, pe);
                to_set(item, ty.items(), &p, out);
                out.insert(p);
            }
        }
        _ => {
            out.insert(path.to_vec());
        }
    }
}

// ---- comparing two versions of an object ---------------------------------------------------

/// What changed between two versions of an object.
#[derive(Default, Debug)]
pub struct Comparison {
    pub added: FieldSet,
    pub modified: FieldSet,
    pub removed: FieldSet,
}

pub fn compare(old: &Value, new: &Value, ty: Ty) -> Comparison {
    let mut c = Comparison::default();
    cmp(Some(old), Some(new), ty, &[], &mut c);
    c
}

fn cmp(l: Option<&Value>, r: Option<&Value>, ty: Ty, path: &[Pe], c: &mut Comparison) {
    let shape = |v: Option<&Value>| match v {
        Some(Value::Object(_)) => 1,
        Some(Value::Array(_)) => 2,
        _ => 0,
    };
    let kind = match (shape(l), shape(r)) {
        (a, 0) if matches!(r, None | Some(Value::Null)) => a,
        (0, b) if matches!(l, None | Some(Value::Null)) => b,
        (a, b) if a == b => a,
        _ => 0,
    };
    let both_empty = is_empty(l) && is_empty(r);
    let granular = match kind {
        1 => !ty.atomic() && !both_empty,
        2 => ty.list_type() != ListType::Atomic && !both_empty,
        _ => false,
    };
    if !granular {
        match (l, r) {
            (None, _) => {
                c.added.insert(path.to_vec());
            }
            (_, None) => {
                c.removed.insert(path.to_vec());
            }
            (Some(a), Some(b)) if a != b => {
                c.modified.insert(path.to_vec());
            }
            _ => {}
        }
        return;
    }
    if kind == 1 {
        let empty = Map::new();
        let lm = l.and_then(Value::as_object).unwrap_or(&empty);
        let rm = r.and_then(Value::as_object).unwrap_or(&empty);
        let keys: BTreeSet<&String> = lm.keys().chain(rm.keys()).collect();
        for k in keys {
            let (ct, _) = ty.child(k);
            cmp(lm.get(k), rm.get(k), ct, &child(path, Pe::field(k)), c);
        }
    } else {
        let lt = ty.list_type();
        let empty = Vec::new();
        let la = l.and_then(Value::as_array).unwrap_or(&empty);
        let ra = r.and_then(Value::as_array).unwrap_or(&empty);
        let group = |items: &[Value]| {
            let mut order: Vec<Pe> = Vec::new();
            let mut by: BTreeMap<Pe, Vec<Value>> = BTreeMap::new();
            for (pe, v) in indexed(items, &lt) {
                let e = by.entry(pe.clone()).or_default();
                if e.is_empty() {
                    order.push(pe);
                }
                e.push(v.clone());
            }
            (order, by)
        };
        let (lo, lby) = group(la);
        let (ro, rby) = group(ra);
        let mut all = lo;
        all.extend(ro.into_iter().filter(|pe| !lby.contains_key(pe)));
        let none = Vec::new();
        for pe in all {
            let ll = lby.get(&pe).unwrap_or(&none);
            let rl = rby.get(&pe).unwrap_or(&none);
            let p = child(path, pe);
            match (ll.len(), rl.len()) {
                (0..=1, 0..=1) => cmp(ll.first(), rl.first(), ty.items(), &p, c),
                (2.., 2..) => {
                    if ll != rl {
                        c.modified.insert(p);
                    }
                }
                (2.., _) => {
                    if let Some(rv) = rl.first() {
                        cmp(None, Some(rv), ty.items(), &p, c);
                    }
                    c.removed.insert(p);
                }
                (_, 2..) => {
                    if let Some(lv) = ll.first() {
                        cmp(Some(lv), None, ty.items(), &p, c);
                    }
                    c.added.insert(p);
                }
            }
        }
    }
    match (l, r) {
        (None, _) => {
            c.added.insert(path.to_vec());
        }
        (_, None) => {
            c.removed.insert(path.to_vec());
        }
        _ => {}
    }
}

// ---- merging a configuration into an object ------------------------------------------------

/// `config` merged into `live`: maps key by key, associative lists item by item (live order
/// kept, new items slotted in where the configuration puts them), everything else replaced.
pub fn merge(live: &Value, config: &Value, ty: Ty) -> Value {
    merge_opt(Some(live), Some(config), ty).unwrap_or(Value::Null)
}

fn merge_opt(l: Option<&Value>, r: Option<&Value>, ty: Ty) -> Option<Value> {
    let (l, r) = match (l, r) {
        (None, None) => return None,
        (Some(l), None) => return Some(l.clone()),
        (None, Some(r)) => return Some(r.clone()),
        (Some(l), Some(r)) => (l, r),
    };
    let both_empty = is_empty(Some(l)) && is_empty(Some(r));
    match (l, r) {
        (Value::Object(_), Value::Object(_) | Value::Null) | (Value::Null, Value::Object(_))
            if !ty.atomic() && !both_empty =>
        {
            let empty = Map::new();
            let lm = l.as_object().unwrap_or(&empty);
            let rm = r.as_object().unwrap_or(&empty);
            let mut out = Map::new();
            for k in lm.keys().chain(rm.keys().filter(|k| !lm.contains_key(*k))) {
                let (ct, _) = ty.child(k);
                if let Some(v) = merge_opt(lm.get(k), rm.get(k), ct) {
                    out.insert(k.clone(), v);
                }
            }
            Some(Value::Object(out))
        }
        (Value::Array(_), Value::Array(_) | Value::Null) | (Value::Null, Value::Array(_))
            if ty.list_type() != ListType::Atomic && !both_empty =>
        {
            let empty = Vec::new();
            let la = l.as_array().unwrap_or(&empty);
            let ra = r.as_array().unwrap_or(&empty);
            Some(Value::Array(merge_list(la, ra, ty)))
        }
        _ => Some(r.clone()),
    }
}

/// `typed/merge.go` `visitListItems` (l.168): walk both lists together; an item only in the
/// live list stays where it is, shared items follow the configuration's order, new items go
/// where the configuration puts them.
fn merge_list(la: &[Value], ra: &[Value], ty: Ty) -> Vec<Value> {
    let lt = ty.list_type();
    let it = ty.items();
    let lpes = indexed(la, &lt);
    let mut rpes: Vec<(Pe, &Value)> = Vec::new();
    for (pe, v) in indexed(ra, &lt) {
        if !rpes.iter().any(|(p, _)| *p == pe) {
            rpes.push((pe, v));
        }
    }
    let mut observed_l: BTreeMap<&Pe, Option<&Value>> = BTreeMap::new();
    for (pe, v) in &lpes {
        observed_l
            .entry(pe)
            .and_modify(|e| *e = None)
            .or_insert(Some(*v));
    }
    let observed_r: BTreeMap<&Pe, &Value> = rpes.iter().map(|(p, v)| (p, *v)).collect();
    let mut shared = rpes
        .iter()
        .map(|(p, _)| p)
        .filter(|p| observed_l.contains_key(p));
    let mut next_shared = shared.next();
    let mut merged_r: BTreeSet<&Pe> = BTreeSet::new();
    let mut out = Vec::new();
    let (mut li, mut ri) = (0, 0);
    while li < lpes.len() || ri < rpes.len() {
        if li < lpes.len() && ri < rpes.len() {
            let pe = &lpes[li].0;
            if *pe == rpes[ri].0 {
                merged_r.insert(pe);
                let lv = observed_l.get(pe).copied().flatten();
                out.extend(merge_opt(lv, observed_r.get(pe).copied(), it));
                li += 1;
                ri += 1;
                next_shared = shared.next();
                continue;
            }
            if observed_r.contains_key(pe) && next_shared.is_some_and(|n| n != pe) {
                li += 1;
                continue;
            }
        }
        if li < lpes.len() {
            let pe = &lpes[li].0;
            if !observed_r.contains_key(pe) {
                out.extend(merge_opt(Some(lpes[li].1), None, it));
                li += 1;
                continue;
            } else if merged_r.contains(pe) {
                li += 1;
            }
        }
        if ri < rpes.len() {
            let pe = &rpes[ri].0;
            merged_r.insert(pe);
            let lv = observed_l.get(pe).copied().flatten();
            out.extend(merge_opt(lv, Some(rpes[ri].1), it));
            ri += 1;
            if next_shared == Some(pe) {
                next_shared = shared.next();
            }
        }
    }
    out
}

// ---- removing items (pruning) --------------------------------------------------------------

/// `v` without the members of `set` (`typed/remove.go`): a path in the set removes that field,
/// list item or map entry with everything under it. A map or list emptied this way goes too
/// (the real server leaves a `null` there, which a typed object then drops).
fn remove_items(v: &Value, set: &FieldSet, ty: Ty) -> Option<Value> {
    if set.is_empty() {
        return Some(v.clone());
    }
    match v {
        Value::Object(m) => {
            if ty.atomic() || m.is_empty() {
                return Some(v.clone());
            }
            let mut out = Map::new();
            for (k, c) in m {
                let pe = Pe::field(k);
                if set.contains(&vec![pe.clone()]) {
                    continue;
                }
                let sub = with_prefix(set, &pe);
                if sub.is_empty() {
                    out.insert(k.clone(), c.clone());
                } else if let Some(c) = remove_items(c, &sub, ty.child(k).0) {
                    out.insert(k.clone(), c);
                }
            }
            (!out.is_empty()).then_some(Value::Object(out))
        }
        Value::Array(items) => {
            let lt = ty.list_type();
            if lt == ListType::Atomic || items.is_empty() {
                return Some(v.clone());
            }
            let mut out = Vec::new();
            for (pe, item) in indexed(items, &lt) {
                if set.contains(&vec![pe.clone()]) {
                    continue;
                }
                let sub = with_prefix(set, &pe);
                if sub.is_empty() {
                    out.push(item.clone());
                } else if let Some(i) = remove_items(item, &sub, ty.items()) {
                    out.push(i);
                }
            }
            (!out.is_empty()).then_some(Value::Array(out))
        }
        _ => Some(v.clone()),
    }
}

/// The paths below `pe`, without it.
fn with_prefix(set: &FieldSet, pe: &Pe) -> FieldSet {
    set.iter()
        .filter(|p| p.len() > 1 && p[0] == *pe)
        .map(|p| p[1..].to_vec())
        .collect()
}

/// `fieldpath/set.go` `EnsureNamedFieldsAreMembers` (l.132): declared fields on the way to a
/// member become members too, so that pruning can remove them.
fn with_named_fields(set: &FieldSet, ty: Ty) -> FieldSet {
    let mut out = set.clone();
    for p in set {
        let mut t = ty;
        for i in 0..p.len().saturating_sub(1) {
            t = match &p[i] {
                Pe::Field(f) => {
                    let (ct, declared) = t.child(f);
                    if declared {
                        out.insert(p[..=i].to_vec());
                    }
                    ct
                }
                _ => t.items(),
            };
        }
    }
    out
}

fn prune(merged: &Value, all_owned: &FieldSet, last: &FieldSet, ty: Ty) -> Value {
    if last.is_empty() {
        return merged.clone();
    }
    let last = with_named_fields(last, ty);
    let set_of = |v: &Value| with_named_fields(&field_set(v, ty), ty);
    let merged_set = set_of(merged);
    let owned = with_named_fields(all_owned, ty);
    let removed_once = remove_items(merged, &last, ty).unwrap_or_else(|| json!({}));
    let keep: FieldSet = set_of(&removed_once).union(&owned).cloned().collect();
    let owned_back: FieldSet = merged_set.difference(&keep).cloned().collect();
    let pruned = remove_items(merged, &owned_back, ty).unwrap_or_else(|| json!({}));
    let pruned_set = set_of(&pruned);
    let dangling: FieldSet = merged_set
        .difference(&pruned_set)
        .filter(|p| last.contains(*p))
        .cloned()
        .collect();
    remove_items(merged, &dangling, ty).unwrap_or_else(|| json!({}))
}

// ---- managedFields --------------------------------------------------------------------------

/// One `managedFields` entry.
#[derive(Clone, Debug)]
pub struct Entry {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: Option<String>,
    pub subresource: Option<String>,
    pub fields: FieldSet,
}

impl Entry {
    /// Who the entry belongs to: appliers regardless of apiVersion, updaters per apiVersion.
    fn id(&self) -> (String, String, Option<String>, String) {
        let version = if self.operation == "Apply" {
            String::new()
        } else {
            self.api_version.clone()
        };
        (
            self.manager.clone(),
            self.operation.clone(),
            self.subresource.clone(),
            version,
        )
    }

    /// As conflicts name it: `"kubectl-edit" using v1`, `"flux"`.
    fn display(&self) -> String {
        let mut s = Value::String(self.manager.clone()).to_string();
        if let Some(sub) = &self.subresource {
            s = format!("{s} with subresource {}", Value::String(sub.clone()));
        }
        if self.operation == "Update" {
            s = format!("{s} using {}", self.api_version);
        }
        s
    }
}

/// Metadata the server owns, never part of a manager's set (`stripmeta.go`).
fn strip_meta(set: &mut FieldSet) {
    set.retain(|p| match p.as_slice() {
        [Pe::Field(f)] => !matches!(f.as_str(), "apiVersion" | "kind" | "metadata"),
        [Pe::Field(m), Pe::Field(f)] if m == "metadata" => !matches!(
            f.as_str(),
            "name"
                | "namespace"
                | "creationTimestamp"
                | "selfLink"
                | "uid"
                | "clusterName"
                | "generation"
                | "managedFields"
                | "resourceVersion"
        ),
        _ => true,
    });
}

pub fn read_entries(obj: &Value) -> Vec<Entry> {
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let mut fields = FieldSet::new();
            tree_to_paths(&e["fieldsV1"], &[], &mut fields);
            Entry {
                manager: e["manager"].as_str().unwrap_or_default().to_string(),
                operation: e["operation"].as_str().unwrap_or_default().to_string(),
                api_version: e["apiVersion"].as_str().unwrap_or_default().to_string(),
                time: e["time"].as_str().map(str::to_string),
                subresource: e["subresource"].as_str().map(str::to_string),
                fields,
            }
        })
        .collect()
}

fn tree_to_paths(tree: &Value, path: &[Pe], out: &mut FieldSet) {
    let Some(m) = tree.as_object() else { return };
    for (k, v) in m {
        if k == "." {
            out.insert(path.to_vec());
            continue;
        }
        let Some(pe) = Pe::decode(k) else { continue };
        let p = child(path, pe);
        if v.as_object().is_none_or(Map::is_empty) {
            out.insert(p);
        } else {
            tree_to_paths(v, &p, out);
        }
    }
}

/// The FieldsV1 form of a set.
pub fn fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for p in set {
        let mut cur = &mut root;
        for pe in p {
            let next = cur
                .entry(pe.encode())
                .or_insert_with(|| Value::Object(Map::new()));
            match next.as_object_mut() {
                Some(m) => cur = m,
                None => break,
            }
        }
    }
    // A member that also has children carries ".".
    fn mark(node: &mut Map<String, Value>, path: &[Pe], set: &FieldSet) {
        for (k, v) in node.iter_mut() {
            let Some(pe) = Pe::decode(k) else { continue };
            let p = child(path, pe);
            if let Some(m) = v.as_object_mut()
                && !m.is_empty()
            {
                mark(m, &p, set);
                if set.contains(&p) {
                    m.insert(".".into(), json!({}));
                }
            }
        }
    }
    mark(&mut root, &[], set);
    Value::Object(root)
}

/// Writes `entries` into the object, sorted as the API server sorts them.
pub fn write_entries(obj: &mut Value, entries: &[Entry]) {
    let mut sorted: Vec<&Entry> = entries.iter().filter(|e| !e.fields.is_empty()).collect();
    sorted.sort_by(|a, b| {
        (
            &a.operation,
            &a.time,
            &a.manager,
            &a.api_version,
            &a.subresource,
        )
            .cmp(&(
                &b.operation,
                &b.time,
                &b.manager,
                &b.api_version,
                &b.subresource,
            ))
    });
    let list: Vec<Value> = sorted
        .into_iter()
        .map(|e| {
            let mut v = json!({
                "manager": e.manager, "operation": e.operation, "apiVersion": e.api_version,
                "fieldsType": "FieldsV1", "fieldsV1": fields_v1(&e.fields),
            });
            if let Some(t) = &e.time {
                v["time"] = json!(t);
            }
            if let Some(s) = &e.subresource {
                v["subresource"] = json!(s);
            }
            v
        })
        .collect();
    if let Some(m) = obj["metadata"].as_object_mut() {
        if list.is_empty() {
            m.remove("managedFields");
        } else {
            m.insert("managedFields".into(), Value::Array(list));
        }
    }
}

fn without_managed_fields(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v["metadata"].as_object_mut() {
        m.remove("managedFields");
    }
    v
}

/// Another manager's field that an apply would change.
#[derive(Clone, Debug)]
pub struct Conflict {
    /// The manager as the API server names it (`"kubectl-edit" using v1`).
    pub manager: String,
    pub path: Path,
}

impl Conflict {
    pub fn field(&self) -> String {
        path_string(&self.path)
    }
}

/// What a write is.
#[derive(Clone, Copy, Debug)]
pub struct Op<'a> {
    pub manager: &'a str,
    pub api_version: &'a str,
    /// `Some("status")` for writes through the status subresource.
    pub subresource: Option<&'a str>,
    pub now: &'a str,
}

/// Server-side apply of `config` onto `live` (`empty` when the object does not exist: the
/// kind's zero value). `config` holds only what this endpoint may set. Returns the new object
/// with its managedFields, or the conflicts when `force` is false.
pub fn apply(
    live: &Value,
    config: &Value,
    op: Op,
    force: bool,
    ty: Ty,
) -> Result<Value, Vec<Conflict>> {
    let mut entries = read_entries(live);
    let live_v = without_managed_fields(live);
    let config = without_managed_fields(config);
    let merged = merge(&live_v, &config, ty);
    let mut set = field_set(&config, ty);
    let me = Entry {
        manager: op.manager.to_string(),
        operation: "Apply".into(),
        api_version: op.api_version.to_string(),
        time: None,
        subresource: op.subresource.map(str::to_string),
        fields: FieldSet::new(),
    };
    let mine = entries.iter().position(|e| e.id() == me.id());
    let (last, previous_time) = match mine {
        Some(i) => {
            let e = entries.remove(i);
            (e.fields, e.time)
        }
        None => (FieldSet::new(), None),
    };
    let mut owned: FieldSet = set.clone();
    for e in &entries {
        owned.extend(e.fields.iter().cloned());
    }
    let merged = prune(&merged, &owned, &last, ty);
    let c = compare(&live_v, &merged, ty);
    let changed: FieldSet = c.modified.union(&c.added).cloned().collect();
    let mut conflicts = Vec::new();
    for e in &entries {
        for p in e.fields.intersection(&changed) {
            conflicts.push(Conflict {
                manager: e.display(),
                path: p.clone(),
            });
        }
    }
    if !conflicts.is_empty() && !force {
        conflicts.sort_by(|a, b| (&a.manager, &a.path).cmp(&(&b.manager, &b.path)));
        return Err(conflicts);
    }
    for e in entries.iter_mut() {
        e.fields
            .retain(|p| !changed.contains(p) && !c.removed.contains(p));
    }
    strip_meta(&mut set);
    let object_changed = merged != live_v;
    let mut me = me;
    me.fields = set;
    me.time = if object_changed || previous_time.is_none() {
        Some(op.now.to_string())
    } else {
        previous_time
    };
    entries.push(me);
    let mut out = merged;
    write_entries(&mut out, &entries);
    Ok(out)
}

/// Records an update (create, replace, merge patch, status write) of `old` into `new`: the
/// writer takes the fields it added or changed from everyone else. `old` is the kind's zero
/// value on create.
pub fn record_update(old: &Value, new: &mut Value, op: Op, ty: Ty) {
    let mut entries = read_entries(old);
    let c = compare(
        &without_managed_fields(old),
        &without_managed_fields(new),
        ty,
    );
    let mut took: FieldSet = c.added.union(&c.modified).cloned().collect();
    for e in entries.iter_mut() {
        e.fields
            .retain(|p| !took.contains(p) && !c.removed.contains(p));
    }
    strip_meta(&mut took);
    if !took.is_empty() {
        let me = Entry {
            manager: op.manager.to_string(),
            operation: "Update".into(),
            api_version: op.api_version.to_string(),
            time: Some(op.now.to_string()),
            subresource: op.subresource.map(str::to_string),
            fields: FieldSet::new(),
        };
        match entries.iter_mut().find(|e| e.id() == me.id()) {
            Some(e) => {
                e.fields.extend(took);
                e.time = me.time;
            }
            None => entries.push(Entry { fields: took, ..me }),
        }
    }
    write_entries(new, &entries);
}

/// Managers and the fields they own (as FieldsV1 paths joined by `.`), for assertions in
/// tests.
pub fn owners(obj: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in read_entries(obj) {
        out.entry(e.manager)
            .or_default()
            .extend(e.fields.iter().map(|p| path_string(p)));
    }
    out
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

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;

    fn svc(ports: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": ports}})
    }

    #[test]
    fn service_ports_are_keyed_by_port_and_protocol() {
        let set = field_set(
            &svc(json!([{"name": "http", "port": 80, "targetPort": 8080}])),
            Ty::builtin("Service"),
        );
        let v1 = fields_v1(&set);
        assert_eq!(
            v1["f:spec"]["f:ports"]["k:{\"port\":80,\"protocol\":\"TCP\"}"],
            json!({".": {}, "f:name": {}, "f:port": {}, "f:targetPort": {}})
        );
        let back = {
            let mut s = FieldSet::new();
            tree_to_paths(&v1, &[], &mut s);
            s
        };
        assert_eq!(back, set);
    }

    #[test]
    fn a_new_port_is_slotted_in_after_the_live_ones() {
        let live = svc(json!([{"name": "a", "port": 80}]));
        let config = svc(json!([{"name": "b", "port": 8080}]));
        let merged = merge(&live, &config, Ty::builtin("Service"));
        assert_eq!(
            merged["spec"]["ports"],
            json!([{"name": "a", "port": 80}, {"name": "b", "port": 8080}])
        );
    }

    #[test]
    fn another_managers_changed_field_is_a_conflict_named_by_key() {
        let ty = Ty::builtin("Service");
        let op = |m| Op {
            manager: m,
            api_version: "v1",
            subresource: None,
            now: "2026-01-01T00:00:00Z",
        };
        let mut live =
            svc(json!([{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 9090}]));
        record_update(
            &json!({"metadata": {}, "spec": {}}),
            &mut live,
            op("kubectl-edit"),
            ty,
        );
        let config =
            svc(json!([{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}]));
        let err = apply(&live, &config, op("agent"), false, ty).unwrap_err();
        assert_eq!(err.len(), 1);
        assert_eq!(
            err[0].field(),
            ".spec.ports[port=80,protocol=\"TCP\"].targetPort"
        );
        assert_eq!(err[0].manager, "\"kubectl-edit\" using v1");
        let forced = apply(&live, &config, op("agent"), true, ty).unwrap();
        assert_eq!(forced["spec"]["ports"][0]["targetPort"], "http");
    }

    #[test]
    fn fields_an_applier_drops_are_pruned() {
        let ty = Ty::builtin("Deployment");
        let op = Op {
            manager: "agent",
            api_version: "apps/v1",
            subresource: None,
            now: "t",
        };
        let d = |env: Value| {
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
                "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "x", "env": env}]}}}})
        };
        let first = apply(
            &json!({"metadata": {}}),
            &d(json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}])),
            op,
            false,
            ty,
        )
        .unwrap();
        let second = apply(
            &first,
            &d(json!([{"name": "B", "value": "2"}])),
            op,
            false,
            ty,
        )
        .unwrap();
        assert_eq!(
            second["spec"]["template"]["spec"]["containers"][0]["env"],
            json!([{"name": "B", "value": "2"}])
        );
    }
}
