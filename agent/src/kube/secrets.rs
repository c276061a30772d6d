//! Bootstrap secrets (the SOPS age key `flux-system/sops-age` and any other sealed secret):
//! created when missing, left alone when equal, and never overwritten unless configured.
//! Values are never logged; the agent's copies are zeroised after use.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use zeroize::{Zeroize, Zeroizing};

use super::retry::retry;
use super::{Cluster, FIELD_MANAGER, KubeError, MANAGED_BY_LABEL, MANAGED_BY_VALUE};

/// One secret to seed: an Opaque Secret with one data key.
pub struct SecretSpec {
    pub namespace: String,
    pub name: String,
    pub key: String,
    pub value: Zeroizing<Vec<u8>>,
    /// Replace a different existing value (otherwise it is left untouched and reported).
    pub overwrite: bool,
}

impl fmt::Debug for SecretSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretSpec")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("key", &self.key)
            .field("value", &"<redacted>")
            .field("overwrite", &self.overwrite)
            .finish()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum SecretOutcome {
    Created,
    Unchanged,
    /// The cluster holds a different value; left untouched (overwrite not configured).
    Differs,
    Replaced,
}

/// What happened to one secret (never its value).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SecretReport {
    pub namespace: String,
    pub name: String,
    pub key: String,
    pub outcome: SecretOutcome,
}

impl fmt::Display for SecretReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.outcome {
            SecretOutcome::Created => "created",
            SecretOutcome::Unchanged => "already present with the same content",
            SecretOutcome::Differs => {
                "exists with different content; left untouched (set overwrite to replace it)"
            }
            SecretOutcome::Replaced => "replaced (overwrite configured)",
        };
        write!(
            f,
            "Secret {}/{} key {}: {what}",
            self.namespace, self.name, self.key
        )
    }
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([(MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string())])
}

/// Zeroises the data of a Secret the agent built or read.
fn scrub(secret: &mut Secret) {
    if let Some(data) = secret.data.as_mut() {
        for v in data.values_mut() {
            v.0.zeroize();
        }
    }
}

async fn ensure_namespace(cluster: &Cluster, ns: &str) -> Result<(), KubeError> {
    let api: Api<Namespace> = Api::all(cluster.client().clone());
    let context = format!("namespace {ns}");
    let exists = retry(cluster.budget(), || async {
        api.get_metadata_opt(ns)
            .await
            .map_err(|e| KubeError::from_kube(&context, e))
    })
    .await?
    .is_some();
    if exists {
        return Ok(());
    }
    let body = serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": ns, "labels": labels()},
    });
    retry(cluster.budget(), || async {
        api.patch(ns, &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&body))
            .await
            .map(|_| ())
            .map_err(|e| KubeError::from_kube(&context, e))
    })
    .await
}

pub(crate) async fn seed(
    cluster: &Cluster,
    specs: &[SecretSpec],
) -> Result<Vec<SecretReport>, KubeError> {
    let mut namespaces = BTreeSet::new();
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        if namespaces.insert(spec.namespace.clone()) {
            ensure_namespace(cluster, &spec.namespace).await?;
        }
        let outcome = seed_one(cluster, spec).await?;
        let report = SecretReport {
            namespace: spec.namespace.clone(),
            name: spec.name.clone(),
            key: spec.key.clone(),
            outcome,
        };
        if outcome == SecretOutcome::Differs {
            tracing::warn!(secret = %format!("{}/{}", spec.namespace, spec.name), "{report}");
        } else {
            tracing::info!(secret = %format!("{}/{}", spec.namespace, spec.name), "{report}");
        }
        out.push(report);
    }
    Ok(out)
}

fn build(spec: &SecretSpec) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(spec.name.clone()),
            namespace: Some(spec.namespace.clone()),
            labels: Some(labels()),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            spec.key.clone(),
            ByteString(spec.value.to_vec()),
        )])),
        ..Default::default()
    }
}

async fn seed_one(cluster: &Cluster, spec: &SecretSpec) -> Result<SecretOutcome, KubeError> {
    let api: Api<Secret> = Api::namespaced(cluster.client().clone(), &spec.namespace);
    let context = format!("secret {}/{}", spec.namespace, spec.name);
    // Two rounds: a concurrent creator between our GET and POST sends us back to comparing.
    for _ in 0..2 {
        let live = retry(cluster.budget(), || async {
            api.get_opt(&spec.name)
                .await
                .map_err(|e| KubeError::from_kube(&context, e))
        })
        .await?;
        match live {
            Some(mut live) => {
                let same = live
                    .data
                    .as_ref()
                    .and_then(|d| d.get(&spec.key))
                    .is_some_and(|v| v.0.as_slice() == spec.value.as_slice());
                scrub(&mut live);
                if same {
                    return Ok(SecretOutcome::Unchanged);
                }
                if !spec.overwrite {
                    return Ok(SecretOutcome::Differs);
                }
                let mut body = build(spec);
                let result = retry(cluster.budget(), || async {
                    api.patch(
                        &spec.name,
                        &PatchParams::apply(FIELD_MANAGER).force(),
                        &Patch::Apply(&body),
                    )
                    .await
                    .map(|mut s| scrub(&mut s))
                    .map_err(|e| KubeError::from_kube(&context, e))
                })
                .await;
                scrub(&mut body);
                result?;
                return Ok(SecretOutcome::Replaced);
            }
            None => {
                let mut body = build(spec);
                let params = PostParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..Default::default()
                };
                let result = retry(cluster.budget(), || async {
                    api.create(&params, &body)
                        .await
                        .map(|mut s| scrub(&mut s))
                        .map_err(|e| KubeError::from_kube(&context, e))
                })
                .await;
                scrub(&mut body);
                match result {
                    Ok(()) => return Ok(SecretOutcome::Created),
                    Err(e) if e.code() == Some(409) => continue,
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Err(KubeError::Other {
        context,
        message: "the secret was created and deleted concurrently twice; retry".into(),
    })
}

/// Whether `namespace/name` exists with data key `key` (the value is not looked at and is
/// scrubbed at once).
pub(crate) async fn has_key(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<bool, KubeError> {
    let api: Api<Secret> = Api::namespaced(cluster.client().clone(), namespace);
    let context = format!("secret {namespace}/{name}");
    let live = retry(cluster.budget(), || async {
        api.get_opt(name)
            .await
            .map_err(|e| KubeError::from_kube(&context, e))
    })
    .await?;
    Ok(live.is_some_and(|mut s| {
        let present = s.data.as_ref().is_some_and(|d| d.contains_key(key));
        scrub(&mut s);
        present
    }))
}
