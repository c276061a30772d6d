//! The few validation rules of kube-apiserver the stand-in applies, because a server-side
//! apply can produce an object that breaks them (two appliers' ports merged into one list):
//! a Service's ports need names when there is more than one, and the names must differ
//! (kubernetes v1.36 `pkg/apis/core/validation/validation.go`, `validateServicePort`). Errors
//! come back as the API server words them: `Service "x" is invalid: spec.ports[1].name:
//! Duplicate value: "http"`, a 422 whose details list the causes.

use std::collections::BTreeSet;

use serde_json::{Value, json};

/// One validation error: the field (`spec.ports[1].name`), the cause's reason and message.
#[derive(Debug)]
pub struct FieldError {
    pub field: String,
    pub reason: &'static str,
    pub message: String,
}

impl FieldError {
    fn text(&self) -> String {
        format!("{}: {}", self.field, self.message)
    }
}

/// What is wrong with `obj` of kind `kind`, empty when nothing is.
pub fn validate(kind: &str, obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if kind == "Service"
        && let Some(ports) = obj["spec"]["ports"].as_array()
    {
        let mut names = BTreeSet::new();
        for (i, p) in ports.iter().enumerate() {
            let field = format!("spec.ports[{i}].name");
            match p["name"].as_str().filter(|n| !n.is_empty()) {
                None if ports.len() > 1 => errs.push(FieldError {
                    field,
                    reason: "FieldValueRequired",
                    message: "Required value".into(),
                }),
                None => {}
                Some(n) if !names.insert(n.to_string()) => errs.push(FieldError {
                    field,
                    reason: "FieldValueDuplicate",
                    message: format!("Duplicate value: {}", json!(n)),
                }),
                Some(_) => {}
            }
        }
    }
    errs
}

/// The message and details of the 422 for `errs` on object `name` of `kind` in `group`.
pub fn invalid(group: &str, kind: &str, name: &str, errs: &[FieldError]) -> (String, Value) {
    let list = if errs.len() == 1 {
        errs[0].text()
    } else {
        format!(
            "[{}]",
            errs.iter()
                .map(FieldError::text)
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let causes: Vec<Value> = errs
        .iter()
        .map(|e| json!({"reason": e.reason, "message": e.message, "field": e.field}))
        .collect();
    let mut details = json!({"name": name, "kind": kind, "causes": causes});
    if !group.is_empty() {
        details["group"] = json!(group);
    }
    (
        format!("{kind} {} is invalid: {list}", json!(name)),
        details,
    )
}
