//! Flux's sync objects (GitRepository + Kustomization `flux-system`, as `flux bootstrap` writes
//! them) and readiness judged as Flux and kstatus judge it.
//!
//! The `flux-system` Kustomization does not decrypt: nothing under Flux's own path is encrypted,
//! so Flux manages itself (and its upgrades) before the SOPS key is sealed. The layers that hold
//! encrypted files decrypt with `flux-system/sops-age` themselves (`kubernetes/flux-system/`).

use std::time::Duration;

use kube::api::{Api, DynamicObject, ListParams};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::resources::Registry;
use super::retry::retry;
use super::{Cluster, KubeError, ObjectReport, ObjectState};

pub const NAMESPACE: &str = "flux-system";
pub const NAME: &str = "flux-system";

/// What to sync from Git.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FluxSync {
    pub url: String,
    pub branch: String,
    /// Path inside the repository, e.g. `./kubernetes/flux-system`.
    pub path: String,
    /// Kustomization interval (flux bootstrap: 10m). The GitRepository polls every minute.
    pub interval: Duration,
    pub source_interval: Duration,
    /// Secret with the Git credentials (deploy key), when the repository is private.
    pub secret_ref: Option<String>,
    pub namespace: String,
    pub name: String,
}

impl FluxSync {
    /// flux bootstrap's defaults for everything but the repository.
    pub fn new(url: &str, branch: &str, path: &str) -> FluxSync {
        FluxSync {
            url: url.into(),
            branch: branch.into(),
            path: path.into(),
            interval: Duration::from_secs(600),
            source_interval: Duration::from_secs(60),
            secret_ref: None,
            namespace: NAMESPACE.into(),
            name: NAME.into(),
        }
    }

    /// The GitRepository and the Kustomization, in apply order.
    pub fn objects(&self) -> Vec<Value> {
        let mut git = json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "GitRepository",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "interval": go_duration(self.source_interval),
                "ref": {"branch": self.branch},
                "url": self.url,
            },
        });
        if let Some(s) = &self.secret_ref {
            git["spec"]["secretRef"] = json!({"name": s});
        }
        let ks = json!({
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
            "kind": "Kustomization",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "interval": go_duration(self.interval),
                "path": self.path,
                "prune": true,
                "sourceRef": {"kind": "GitRepository", "name": self.name},
            },
        });
        vec![git, ks]
    }
}

/// Go's `time.Duration` text as Flux writes it (`1m0s`, `10m0s`, `1h0m0s`).
pub fn go_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
    if h > 0 {
        format!("{h}h{m}m{sec}s")
    } else if m > 0 {
        format!("{m}m{sec}s")
    } else {
        format!("{sec}s")
    }
}

/// Overall verdict of one readiness pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    Ready(Vec<ObjectReport>),
    Progressing(Vec<ObjectReport>),
    /// A terminal failure; `message` is Flux's (or the Deployment controller's) own.
    Failed {
        object: String,
        message: String,
        reports: Vec<ObjectReport>,
    },
}

fn api(
    cluster: &Cluster,
    api_version: &str,
    kind: &str,
    ns: &str,
) -> Result<Api<DynamicObject>, KubeError> {
    let m = Registry::new()
        .lookup(api_version, kind)
        .ok_or_else(|| KubeError::Other {
            context: format!("{api_version} {kind}"),
            message: "missing from the built-in table".into(),
        })?;
    Ok(Api::namespaced_with(
        cluster.client().clone(),
        ns,
        &m.resource,
    ))
}

async fn get(
    cluster: &Cluster,
    api_version: &str,
    kind: &str,
    ns: &str,
    name: &str,
    until: Instant,
) -> Result<Option<DynamicObject>, KubeError> {
    let api = api(cluster, api_version, kind, ns)?;
    let context = format!("get {kind} {ns}/{name}");
    retry(until, || async {
        match api.get_opt(name).await {
            Ok(o) => Ok(o),
            // The type itself is not served yet (Flux's CRDs missing): nothing there.
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(e) => Err(KubeError::from_kube(&context, e)),
        }
    })
    .await
}

/// `status.lastAppliedRevision` of the flux-system Kustomization, when it has ever applied.
pub(crate) async fn applied_revision(
    cluster: &Cluster,
    until: Instant,
) -> Result<Option<String>, KubeError> {
    let ks = get(
        cluster,
        "kustomize.toolkit.fluxcd.io/v1",
        "Kustomization",
        NAMESPACE,
        NAME,
        until,
    )
    .await?;
    Ok(ks
        .and_then(|k| {
            k.data["status"]["lastAppliedRevision"]
                .as_str()
                .map(str::to_string)
        })
        .filter(|r| !r.is_empty()))
}

fn condition<'a>(o: &'a Value, t: &str) -> Option<&'a Value> {
    o["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == t)
}

fn generation_observed(o: &DynamicObject) -> bool {
    let generation = o.metadata.generation.unwrap_or(0);
    o.data["status"]["observedGeneration"]
        .as_i64()
        .unwrap_or(-1)
        >= generation
}

/// Ready=False reasons Flux uses for a reconciliation that failed on the current revision
/// and will fail again until Git changes.
const TERMINAL_KUSTOMIZATION_REASONS: &[&str] = &[
    "BuildFailed",
    "ReconciliationFailed",
    "HealthCheckFailed",
    "PruneFailed",
];

/// kstatus-style verdict on a Flux object.
fn judge_flux(kind: &str, o: &DynamicObject, branch: &str) -> ObjectReport {
    let ns = o.metadata.namespace.clone().unwrap_or_default();
    let name = o.metadata.name.clone().unwrap_or_default();
    let r = |state: ObjectState, msg: String| ObjectReport::new(kind, &ns, &name, state, msg);
    let ready = condition(&o.data, "Ready");
    let msg = ready
        .and_then(|c| c["message"].as_str())
        .unwrap_or_default()
        .to_string();
    if condition(&o.data, "Stalled").is_some_and(|c| c["status"] == "True") {
        let m = condition(&o.data, "Stalled")
            .and_then(|c| c["message"].as_str())
            .unwrap_or(&msg)
            .to_string();
        return r(ObjectState::Failed, m);
    }
    if !generation_observed(o) {
        return r(
            ObjectState::Progressing,
            "waiting for the controller to observe the latest generation".into(),
        );
    }
    match ready.and_then(|c| c["status"].as_str()) {
        Some("True") => {
            let revision = match kind {
                "GitRepository" => o.data["status"]["artifact"]["revision"].as_str(),
                _ => o.data["status"]["lastAppliedRevision"].as_str(),
            }
            .unwrap_or_default();
            if kind == "GitRepository"
                && !revision.starts_with(&format!("{branch}@"))
                && !revision.starts_with("refs/heads/")
            {
                return r(
                    ObjectState::Progressing,
                    format!("artifact revision {revision:?} is not from branch {branch} yet"),
                );
            }
            if revision.is_empty() {
                return r(ObjectState::Progressing, "no revision yet".into());
            }
            r(ObjectState::Ready, format!("revision {revision}"))
        }
        Some("False") => {
            let reason = ready.and_then(|c| c["reason"].as_str()).unwrap_or_default();
            if kind == "Kustomization" && TERMINAL_KUSTOMIZATION_REASONS.contains(&reason) {
                r(ObjectState::Failed, format!("{reason}: {msg}"))
            } else {
                r(ObjectState::Progressing, format!("{reason}: {msg}"))
            }
        }
        _ => r(
            ObjectState::Progressing,
            if msg.is_empty() {
                "not reconciled yet".into()
            } else {
                msg
            },
        ),
    }
}

/// kstatus rules for a Deployment.
fn judge_deployment(o: &DynamicObject) -> ObjectReport {
    let ns = o.metadata.namespace.clone().unwrap_or_default();
    let name = o.metadata.name.clone().unwrap_or_default();
    let r =
        |state: ObjectState, msg: String| ObjectReport::new("Deployment", &ns, &name, state, msg);
    let s = &o.data["status"];
    if condition(&o.data, "Progressing").is_some_and(|c| c["reason"] == "ProgressDeadlineExceeded")
    {
        let m = condition(&o.data, "Progressing")
            .and_then(|c| c["message"].as_str())
            .unwrap_or_default();
        return r(ObjectState::Failed, m.to_string());
    }
    if !generation_observed(o) {
        return r(
            ObjectState::Progressing,
            "waiting for the controller to observe the latest generation".into(),
        );
    }
    let want = o.data["spec"]["replicas"].as_i64().unwrap_or(1);
    let updated = s["updatedReplicas"].as_i64().unwrap_or(0);
    let available = s["availableReplicas"].as_i64().unwrap_or(0);
    let total = s["replicas"].as_i64().unwrap_or(0);
    if updated < want {
        return r(
            ObjectState::Progressing,
            format!("{updated} of {want} replicas updated"),
        );
    }
    if total > updated {
        return r(
            ObjectState::Progressing,
            format!("{} old replicas pending termination", total - updated),
        );
    }
    if available < updated {
        return r(
            ObjectState::Progressing,
            format!("{available} of {updated} updated replicas available"),
        );
    }
    if !condition(&o.data, "Available").is_some_and(|c| c["status"] == "True") {
        return r(ObjectState::Progressing, "not Available yet".into());
    }
    r(ObjectState::Ready, format!("{available}/{want} available"))
}

pub(crate) async fn check_ready(
    cluster: &Cluster,
    sync: &FluxSync,
    until: Instant,
) -> Result<Readiness, KubeError> {
    let mut reports = Vec::new();
    for (api_version, kind) in [
        ("source.toolkit.fluxcd.io/v1", "GitRepository"),
        ("kustomize.toolkit.fluxcd.io/v1", "Kustomization"),
    ] {
        match get(
            cluster,
            api_version,
            kind,
            &sync.namespace,
            &sync.name,
            until,
        )
        .await?
        {
            Some(o) => reports.push(judge_flux(kind, &o, &sync.branch)),
            None => reports.push(ObjectReport::new(
                kind,
                &sync.namespace,
                &sync.name,
                ObjectState::Progressing,
                "not found yet",
            )),
        }
    }
    let deployments = api(cluster, "apps/v1", "Deployment", &sync.namespace)?;
    let context = format!("list Deployments in {}", sync.namespace);
    let list = retry(until, || async {
        deployments
            .list(&ListParams::default())
            .await
            .map_err(|e| KubeError::from_kube(&context, e))
    })
    .await?;
    if list.items.is_empty() {
        reports.push(ObjectReport::new(
            "Deployment",
            &sync.namespace,
            "*",
            ObjectState::Progressing,
            "no Flux controllers yet",
        ));
    }
    reports.extend(list.items.iter().map(judge_deployment));
    if let Some(f) = reports.iter().find(|r| r.state == ObjectState::Failed) {
        return Ok(Readiness::Failed {
            object: f.object(),
            message: f.message.clone(),
            reports: reports.clone(),
        });
    }
    if reports.iter().all(|r| r.state == ObjectState::Ready) {
        Ok(Readiness::Ready(reports))
    } else {
        Ok(Readiness::Progressing(reports))
    }
}

/// The sync objects as they are in the cluster, compared with the configuration, once Git owns
/// them: `Kept`, with what differs (the operator changes it in Git, not in the agent's
/// configuration).
pub(crate) async fn compare_sync(
    cluster: &Cluster,
    sync: &FluxSync,
    revision: &str,
    until: Instant,
) -> Result<Vec<ObjectReport>, KubeError> {
    let want = sync.objects();
    let mut out = Vec::new();
    for (object, (api_version, kind)) in want.iter().zip([
        ("source.toolkit.fluxcd.io/v1", "GitRepository"),
        ("kustomize.toolkit.fluxcd.io/v1", "Kustomization"),
    ]) {
        let live = get(
            cluster,
            api_version,
            kind,
            &sync.namespace,
            &sync.name,
            until,
        )
        .await?;
        let mut differs = Vec::new();
        let fields: &[(&str, &[&str])] = match kind {
            "GitRepository" => &[("url", &["url"]), ("branch", &["ref", "branch"])],
            _ => &[("path", &["path"])],
        };
        for (what, path) in fields {
            let at = |v: &Value| {
                let mut cur = &v["spec"];
                for k in *path {
                    cur = &cur[*k];
                }
                cur.as_str().unwrap_or_default().to_string()
            };
            let (w, l) = (
                at(object),
                live.as_ref().map(|o| at(&o.data)).unwrap_or_default(),
            );
            if w != l {
                differs.push(format!(
                    "{what} is {l:?} in the cluster, {w:?} in the configuration"
                ));
            }
        }
        let message = if differs.is_empty() {
            format!("owned by Git (flux-system applied {revision})")
        } else {
            format!(
                "owned by Git (flux-system applied {revision}); {}: change kubernetes/flux-system/gotk-sync.yaml in Git, the agent does not write over it",
                differs.join("; ")
            )
        };
        if !differs.is_empty() {
            tracing::warn!(object = %format!("{kind} {}/{}", sync.namespace, sync.name), "{message}");
        }
        out.push(ObjectReport::new(
            kind,
            &sync.namespace,
            &sync.name,
            ObjectState::Kept,
            message,
        ));
    }
    Ok(out)
}

/// Every other Kustomization in Flux's namespace (the layers Git defines), judged as Flux
/// judges them. Informational: the boot does not wait for them, but the status shows, for
/// example, a layer that waits for the SOPS key.
pub(crate) async fn layers(
    cluster: &Cluster,
    sync: &FluxSync,
    until: Instant,
) -> Result<Vec<ObjectReport>, KubeError> {
    let api = api(
        cluster,
        "kustomize.toolkit.fluxcd.io/v1",
        "Kustomization",
        &sync.namespace,
    )?;
    let context = format!("list Kustomizations in {}", sync.namespace);
    let list = retry(until, || async {
        match api.list(&ListParams::default()).await {
            Ok(l) => Ok(l.items),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(Vec::new()),
            Err(e) => Err(KubeError::from_kube(&context, e)),
        }
    })
    .await?;
    Ok(list
        .iter()
        .filter(|k| k.metadata.name.as_deref() != Some(sync.name.as_str()))
        .map(|k| judge_flux("Kustomization", k, &sync.branch))
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn obj(v: Value) -> DynamicObject {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn durations_are_written_as_go_does() {
        assert_eq!(go_duration(Duration::from_secs(60)), "1m0s");
        assert_eq!(go_duration(Duration::from_secs(600)), "10m0s");
        assert_eq!(go_duration(Duration::from_secs(3725)), "1h2m5s");
        assert_eq!(go_duration(Duration::from_secs(30)), "30s");
    }

    #[test]
    fn sync_objects_match_flux_bootstrap() {
        let mut s = FluxSync::new("https://example.test/repo.git", "main", "./clusters/home");
        let o = s.objects();
        assert!(o[0]["spec"].get("secretRef").is_none());
        assert!(
            o[1]["spec"].get("decryption").is_none(),
            "flux-system must sync without the SOPS key"
        );
        assert_eq!(
            o[1]["spec"]["sourceRef"],
            json!({"kind": "GitRepository", "name": "flux-system"})
        );
        s.secret_ref = Some("deploy-key".into());
        assert_eq!(s.objects()[0]["spec"]["secretRef"]["name"], "deploy-key");
    }

    #[test]
    fn flux_objects_are_judged_like_flux() {
        let base = |status: Value, generation: i64| {
            obj(
                json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
                "metadata": {"name": "flux-system", "namespace": "flux-system", "generation": generation},
                "status": status}),
            )
        };
        let ready = json!({"observedGeneration": 2, "conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded", "message": "ok"}],
            "artifact": {"revision": "main@sha1:abc"}});
        assert_eq!(
            judge_flux("GitRepository", &base(ready.clone(), 2), "main").state,
            ObjectState::Ready
        );
        // An old generation is not ready yet, whatever its conditions say.
        assert_eq!(
            judge_flux("GitRepository", &base(ready, 3), "main").state,
            ObjectState::Progressing
        );
        // Another branch's artifact is not the one asked for.
        let other = json!({"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}], "artifact": {"revision": "dev@sha1:abc"}});
        assert_eq!(
            judge_flux("GitRepository", &base(other, 1), "main").state,
            ObjectState::Progressing
        );
        // Stalled is terminal, with Flux's message.
        let stalled = json!({"observedGeneration": 1, "conditions": [
            {"type": "Ready", "status": "False", "reason": "InvalidURL", "message": "bad url"},
            {"type": "Stalled", "status": "True", "reason": "InvalidURL", "message": "URL scheme not supported"}]});
        let r = judge_flux("GitRepository", &base(stalled, 1), "main");
        assert_eq!(
            (r.state.as_str(), r.message.as_str()),
            ("Failed", "URL scheme not supported")
        );
        // A Git error that may pass is a wait that shows the cause.
        let git = json!({"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "False", "reason": "GitOperationFailed", "message": "dial tcp: lookup github.com: no such host"}]});
        let r = judge_flux("GitRepository", &base(git, 1), "main");
        assert_eq!(r.state, ObjectState::Progressing);
        assert!(r.message.contains("no such host"));
    }

    #[test]
    fn deployments_are_judged_by_kstatus_rules() {
        let d = |status: Value| {
            obj(json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "kustomize-controller", "namespace": "flux-system", "generation": 1},
                "spec": {"replicas": 1}, "status": status}))
        };
        let available = json!({"type": "Available", "status": "True"});
        assert_eq!(judge_deployment(&d(json!({"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1, "conditions": [available]}))).state, ObjectState::Ready);
        assert_eq!(judge_deployment(&d(json!({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 1, "availableReplicas": 1, "conditions": [available]}))).state, ObjectState::Progressing);
        assert_eq!(
            judge_deployment(&d(json!({"observedGeneration": 0}))).state,
            ObjectState::Progressing
        );
        let stuck = json!({"observedGeneration": 1, "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet has timed out progressing."}]});
        let r = judge_deployment(&d(stuck));
        assert_eq!(
            (r.state.as_str(), r.message.as_str()),
            ("Failed", "ReplicaSet has timed out progressing.")
        );
    }
}
