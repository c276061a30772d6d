//! A "controllers" simulator: plays kube-controller-manager and Flux's source- and
//! kustomize-controller against the real API server (by writing `/status`, which the server
//! validates against each type's schema). Deployments become Available, the
//! GitRepository `flux-system` gets an artifact and the Kustomization `flux-system` applies it,
//! each after a configurable delay counted from when the object (at its generation) appeared.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::task::JoinHandle;

use crate::envtest::ApiServer;
use crate::envtest::kustomize_controller::Kustomization;
use crate::kubeapi::ObjectRef;

/// The revision of Flux's components the simulated OCIRepository fetched.
pub const COMPONENTS_REVISION: &str =
    "v2.9.4@sha256:4f2a7c1e9d8b6a5f4e3d2c1b0a99887766554433221100ffeeddccbbaa998877";

/// The revision the simulated source-controller fetches (branch `main`).
pub const REVISION: &str = "main@sha1:5f1c0a3e9d8b7c6a5f4e3d2c1b0a998877665544";

/// Delays of the simulated controllers.
#[derive(Debug, Clone, Copy)]
pub struct ControllerDelays {
    /// From a Deployment's (new) generation to Available.
    pub deployment: Duration,
    /// From the GitRepository's generation to its artifact.
    pub source: Duration,
    /// From the GitRepository being Ready to the Kustomization applying.
    pub kustomization: Duration,
    /// How often the controllers look at the API.
    pub poll: Duration,
}

impl Default for ControllerDelays {
    fn default() -> Self {
        ControllerDelays {
            deployment: Duration::from_millis(300),
            source: Duration::from_millis(300),
            kustomization: Duration::from_millis(300),
            poll: Duration::from_millis(50),
        }
    }
}

impl ControllerDelays {
    /// The delays on the critical path to Flux Ready (Deployments and the source run in
    /// parallel; the Kustomization waits for the source).
    pub fn critical_path(&self) -> Duration {
        self.deployment.max(self.source + self.kustomization)
    }

    pub fn none() -> Self {
        ControllerDelays {
            deployment: Duration::ZERO,
            source: Duration::ZERO,
            kustomization: Duration::ZERO,
            poll: Duration::from_millis(20),
        }
    }
}

#[derive(Default)]
struct Sim {
    /// `kind/ns/name@generation` → when the controller first saw it.
    seen: HashMap<String, Instant>,
    /// Ready=False (reason, message) for the Kustomization, when told to fail.
    failure: Option<(String, String)>,
    /// Git also holds a layer with SOPS-encrypted files (`certificates`), which Flux creates once
    /// flux-system has applied and which decrypts with `flux-system/sops-age`.
    encrypted_layer: bool,
    /// Flux has applied Git (the takeover below) once.
    taken_over: bool,
}

/// What Git holds for Flux to apply: `kubernetes/flux-system` (the sync objects and the
/// Kustomization of Flux's components) and Flux's components themselves.
#[derive(Clone, Debug, Default)]
pub struct Git {
    pub flux_system: Vec<Value>,
    pub components: Vec<Value>,
}

/// The running simulator; stops when dropped.
pub struct Controllers {
    sim: Arc<Mutex<Sim>>,
    task: JoinHandle<()>,
}

impl Drop for Controllers {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn gitrepository() -> ObjectRef {
    ObjectRef::new(
        "source.toolkit.fluxcd.io",
        "gitrepositories",
        "flux-system",
        "flux-system",
    )
}

/// The encrypted layer's Kustomization, as `kubernetes/flux-system/layers.yaml` defines it.
fn certificates() -> ObjectRef {
    ObjectRef::new(
        "kustomize.toolkit.fluxcd.io",
        "kustomizations",
        "flux-system",
        "certificates",
    )
}

fn kustomization() -> ObjectRef {
    ObjectRef::new(
        "kustomize.toolkit.fluxcd.io",
        "kustomizations",
        "flux-system",
        "flux-system",
    )
}

fn generation(o: &Value) -> i64 {
    o["metadata"]["generation"].as_i64().unwrap_or(1)
}

fn condition<'a>(o: &'a Value, t: &str) -> Option<&'a Value> {
    o["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == t)
}

/// The controller has written a verdict for the current generation.
fn observed(o: &Value) -> bool {
    o["status"]["observedGeneration"].as_i64() == Some(generation(o))
        && condition(o, "Ready").is_some()
}

impl Controllers {
    /// Starts playing the controllers against `api`.
    pub fn start(api: Arc<ApiServer>, delays: ControllerDelays, git: Git) -> Controllers {
        let sim = Arc::new(Mutex::new(Sim::default()));
        let s = sim.clone();
        let task = tokio::spawn(async move {
            loop {
                step(&api, &s, &delays, &git).await;
                tokio::time::sleep(delays.poll).await;
            }
        });
        Controllers { sim, task }
    }

    /// Git also holds a layer of SOPS-encrypted files: once flux-system has applied, Flux
    /// creates the Kustomization `certificates` (decryption with `flux-system/sops-age`), which
    /// fails to decrypt until that Secret exists and is Ready afterwards.
    pub fn with_encrypted_layer(&self) {
        if let Ok(mut s) = self.sim.lock() {
            s.encrypted_layer = true;
        }
    }

    /// From now on the Kustomization reconciles to Ready=True again.
    pub fn succeed_kustomization(&self) {
        if let Ok(mut s) = self.sim.lock() {
            s.failure = None;
        }
    }

    /// From now on the Kustomization reconciles to Ready=False with `reason` (a terminal one
    /// such as `ReconciliationFailed` or `BuildFailed`) and Flux's `message`.
    pub fn fail_kustomization(&self, reason: &str, message: &str) {
        if let Ok(mut s) = self.sim.lock() {
            s.failure = Some((reason.to_string(), message.to_string()));
        }
    }
}

fn due(sim: &Arc<Mutex<Sim>>, key: String, delay: Duration) -> bool {
    let Ok(mut s) = sim.lock() else { return false };
    let first = *s.seen.entry(key).or_insert_with(Instant::now);
    first.elapsed() >= delay
}

async fn step(api: &ApiServer, sim: &Arc<Mutex<Sim>>, d: &ControllerDelays, git: &Git) {
    for dep in api.list("apps", "deployments").await {
        let ns = dep["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = dep["metadata"]["name"].as_str().unwrap_or_default();
        let available = dep["status"]["observedGeneration"].as_i64() == Some(generation(&dep))
            && condition(&dep, "Available").is_some_and(|c| c["status"] == "True");
        if !available
            && due(
                sim,
                format!("deploy/{ns}/{name}@{}", generation(&dep)),
                d.deployment,
            )
        {
            api.mark_deployment_available(ns, name).await;
        }
    }
    let source_ready = match api.get(&gitrepository()).await {
        Some(repo) if observed(&repo) => true,
        Some(repo) => {
            if due(sim, format!("source@{}", generation(&repo)), d.source) {
                api.mark_flux(
                    &gitrepository(),
                    "True",
                    "Succeeded",
                    &format!("stored artifact for revision '{REVISION}'"),
                    REVISION,
                )
                .await;
            }
            false
        }
        None => false,
    };
    if !source_ready {
        return;
    }
    let Some(ks) = api.get(&kustomization()).await else {
        return;
    };
    let failure = sim.lock().ok().and_then(|s| s.failure.clone());
    let verdict_matches = observed(&ks)
        && match &failure {
            Some((reason, _)) => condition(&ks, "Ready").is_some_and(|c| c["reason"] == *reason),
            None => condition(&ks, "Ready").is_some_and(|c| c["status"] == "True"),
        };
    // Applying flux-system creates Git's other layers; the encrypted one is reconciled (and, without
    // the key, fails to decrypt) before flux-system reports Ready, and follows the key afterwards.
    let layer = sim.lock().map(|s| s.encrypted_layer).unwrap_or(false);
    if layer && !encrypted_layer(api).await {
        return;
    }
    if verdict_matches || !due(sim, format!("ks@{}", generation(&ks)), d.kustomization) {
        return;
    }
    match failure {
        Some((reason, message)) => {
            api.mark_flux(&kustomization(), "False", &reason, &message, REVISION)
                .await;
        }
        None => {
            // kustomize-controller applies Git: flux-system's path (the sync objects and the
            // Kustomization of Flux's components), then Flux's components, taking over what the
            // agent installed as it really does (`envtest::kustomize_controller`).
            let first = sim.lock().map(|s| !s.taken_over).unwrap_or(false);
            if first && !git.flux_system.is_empty() {
                Kustomization::new(api, "flux-system", "flux-system")
                    .reconcile(&git.flux_system, REVISION)
                    .await;
                if !git.components.is_empty() {
                    Kustomization::new(api, "flux-components", "flux-system")
                        .reconcile(&git.components, COMPONENTS_REVISION)
                        .await;
                }
                if let Ok(mut s) = sim.lock() {
                    s.taken_over = true;
                }
            }
            api.mark_flux(
                &kustomization(),
                "True",
                "ReconciliationSucceeded",
                &format!("Applied revision: {REVISION}"),
                REVISION,
            )
            .await;
        }
    }
}

/// Flux applying Git's `certificates` layer: created once, then Ready only while the SOPS key
/// Secret exists (kustomize-controller cannot decrypt without it). True once it has a verdict.
async fn encrypted_layer(api: &ApiServer) -> bool {
    let Some(layer) = api.get(&certificates()).await else {
        let ks = serde_json::json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": {"name": "certificates", "namespace": "flux-system"},
            "spec": {"interval": "10m0s", "path": "./kubernetes/infrastructure/certificates", "prune": true,
                "sourceRef": {"kind": "GitRepository", "name": "flux-system"},
                "decryption": {"provider": "sops", "secretRef": {"name": "sops-age"}}}});
        api.apply_as(&certificates(), ks, "kustomize-controller")
            .await;
        return false;
    };
    let key = api
        .get(&ObjectRef::new("", "secrets", "flux-system", "sops-age"))
        .await
        .is_some();
    let ready = condition(&layer, "Ready").and_then(|c| c["status"].as_str().map(str::to_string));
    match (key, ready.as_deref()) {
        (true, Some("True")) | (false, Some("False")) if observed(&layer) => true,
        (true, _) => {
            api.mark_flux(
                &certificates(),
                "True",
                "ReconciliationSucceeded",
                &format!("Applied revision: {REVISION}"),
                REVISION,
            )
            .await
        }
        (false, _) => {
            api.mark_flux(
                &certificates(),
                "False",
                "BuildFailed",
                "decryption failed for 'certificates/digitalocean-token.enc.yaml': cannot get sops-age decryption Secret: secrets \"sops-age\" not found",
                REVISION,
            )
            .await
        }
    }
}
