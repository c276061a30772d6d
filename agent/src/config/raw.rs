//! The configuration exactly as written: every field optional and spanned (for line numbers),
//! unknown fields rejected by serde after the unknown-field pass has reported all of them.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

// ---------------------------------------------------------------------------------------------
// Raw input, exactly as written. Unknown fields are rejected by a first pass over the untyped
// document (so that all of them are reported at once), then by serde.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawConfig {
    pub(super) talos: Option<Spanned<RawTalos>>,
    pub(super) kubernetes: Option<Spanned<RawKubernetes>>,
    pub(super) tpm: Option<RawTpm>,
    #[serde(default)]
    pub(super) secrets: Vec<Spanned<RawSecret>>,
    pub(super) bundle: Option<RawBundle>,
    pub(super) flux: Option<Spanned<RawFlux>>,
    pub(super) status: Option<Spanned<String>>,
    pub(super) deadlines: Option<RawDeadlines>,
    pub(super) retry: Option<RawRetry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawTalos {
    pub(super) socket: Option<Spanned<String>>,
    pub(super) bootstrap_etcd: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawKubernetes {
    pub(super) kubeconfig: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawTpm {
    pub(super) device: Option<Spanned<String>>,
    pub(super) pcrs: Option<Spanned<Vec<u32>>>,
    pub(super) lock_pcr: Option<Spanned<u32>>,
    pub(super) nv_index: Option<Spanned<RawNumber>>,
    pub(super) salt_key_name: Option<Spanned<String>>,
    pub(super) insecure_transport: Option<bool>,
    pub(super) recipient: Option<Spanned<String>>,
    pub(super) factor: Option<Spanned<String>>,
    pub(super) efivars: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawNumber {
    Int(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawSecret {
    pub(super) namespace: Option<Spanned<String>>,
    pub(super) name: Option<Spanned<String>>,
    pub(super) key: Option<Spanned<String>>,
    pub(super) sealed: Option<Spanned<String>>,
    pub(super) sealed_file: Option<Spanned<String>>,
    pub(super) format: Option<Spanned<String>>,
    pub(super) overwrite: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawBundle {
    pub(super) dir: Option<Spanned<String>>,
    pub(super) fetch: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawFlux {
    pub(super) url: Option<Spanned<String>>,
    pub(super) branch: Option<Spanned<String>>,
    pub(super) path: Option<Spanned<String>>,
    pub(super) interval: Option<Spanned<String>>,
    pub(super) kustomization_interval: Option<Spanned<String>>,
    pub(super) secret_ref: Option<Spanned<String>>,
}

/// `deadlines:`, keyed by step (the unknown-field pass checks the keys against the steps).
pub(super) type RawDeadlines = BTreeMap<String, Spanned<String>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawRetry {
    pub(super) initial: Option<Spanned<String>>,
    pub(super) max: Option<Spanned<String>>,
}
