//! The Kubernetes half of the boot: the SOPS key and other sealed secrets, the CRD sets, Flux's
//! components and its sync objects, all by server-side apply with one field manager, then
//! readiness judged the way kstatus and Flux judge it.
//!
//! Every object the agent writes carries the label `app.kubernetes.io/managed-by:
//! bootstrap-agent` and the annotation `bootstrap-agent.io/applied-digest` (sha256 of the object
//! as the bundle or configuration defines it). A rerun compares that digest from one metadata
//! list per kind and sends nothing for objects already applied, so a finished cluster sees no
//! mutating request.

mod apply;
mod established;
mod flux;
mod handoff;
pub mod names;
mod report;
mod resources;
mod retry;
mod secrets;
pub mod source;

use std::path::Path;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::time::Instant;

use crate::bundle::{Bundle, BundleError, Manifest};
use crate::error::{Classify, ErrorKind, chain, transient_if};

pub use flux::{FluxSync, NAMESPACE as FLUX_NAMESPACE, Readiness};
pub use handoff::{HandOver, KUSTOMIZE_CONTROLLER, inventory_id};
pub use report::{ObjectReport, ObjectState};
pub use secrets::{SecretOutcome, SecretReport, SecretSpec};

/// The sync objects as manifests (what the agent applies and later hands over).
fn sync_manifests(sync: &FluxSync) -> Result<Vec<Manifest>, KubeError> {
    sync.objects()
        .iter()
        .map(|o| Manifest::from_value("flux-sync", "", o))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|message| KubeError::Invalid {
            object: "flux-system sync objects".into(),
            message,
        })
}

/// The field manager of every write.
pub const FIELD_MANAGER: &str = "bootstrap-agent";
/// Label on every object the agent creates or applies.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "bootstrap-agent";
/// Annotation holding the sha256 of the object as the agent last applied it.
pub const DIGEST_ANNOTATION: &str = "bootstrap-agent.io/applied-digest";

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("the kubeconfig is unusable: {0}; check the kubeconfig Talos returned")]
    Kubeconfig(String),
    #[error(
        "{context}: the API server{} answered {code} {reason}: {message}",
        at(server)
    )]
    Api {
        context: String,
        /// The API server's address, once known ([`KubeError::tried`]).
        server: String,
        code: u16,
        reason: String,
        message: String,
    },
    #[error(
        "{context}: cannot talk to the API server{}: {}",
        at(server),
        chain(source)
    )]
    Transport {
        context: String,
        /// The API server's address, once known ([`KubeError::tried`]).
        server: String,
        #[source]
        source: kube::Error,
    },
    #[error("{context}: {message}")]
    Other { context: String, message: String },
    #[error(
        "CustomResourceDefinitions not Established within {waited:?}: {}{}; check the API server's log for why they are not served",
        names.join(", "),
        if conditions.is_empty() { String::new() } else { format!(" ({})", conditions.join("; ")) }
    )]
    NotEstablished {
        names: Vec<String>,
        /// `name: Type=Status: message` of each condition that is not True, as last seen.
        conditions: Vec<String>,
        waited: Duration,
    },
    #[error("{} object(s) could not be applied: {}", failures.len(), failures.iter().map(|f| f.to_string()).collect::<Vec<_>>().join("; "))]
    Apply {
        failures: Vec<ObjectReport>,
        /// Every failure was a transient API error that outlasted the retry budget.
        transient: bool,
    },
    #[error("{object}: {message}")]
    Invalid { object: String, message: String },
    #[error(transparent)]
    Bundle(#[from] BundleError),
}

impl Classify for KubeError {
    fn kind(&self) -> ErrorKind {
        transient_if(KubeError::is_transient(self))
    }

    fn hint(&self) -> Option<String> {
        match self {
            KubeError::Bundle(b) => b.hint(),
            _ => None,
        }
    }
}

impl KubeError {
    /// Worth retrying: server errors (5xx, 429), connection failures, and deadlines that may
    /// pass on a later attempt. Conflicts, refusals and invalid objects are not. (The
    /// [`Classify`] answer; kept as a method of its own for the request retry helper.)
    pub fn is_transient(&self) -> bool {
        match self {
            KubeError::Api { code, .. } => *code >= 500 || *code == 429,
            KubeError::Transport { .. } | KubeError::NotEstablished { .. } => true,
            KubeError::Apply { transient, .. } => *transient,
            KubeError::Bundle(b) => b.is_transient(),
            _ => false,
        }
    }

    pub(crate) fn from_kube(context: &str, e: kube::Error) -> KubeError {
        match e {
            kube::Error::Api(s) => KubeError::Api {
                context: context.into(),
                server: String::new(),
                code: s.code,
                reason: s.reason.clone(),
                message: s.message.clone(),
            },
            kube::Error::HyperError(_)
            | kube::Error::Service(_)
            | kube::Error::ReadEvents(_)
            | kube::Error::HttpError(_) => KubeError::Transport {
                context: context.into(),
                server: String::new(),
                source: e,
            },
            other => KubeError::Other {
                context: context.into(),
                message: chain(&other),
            },
        }
    }

    /// Names the API server the request went to, where the error has no address yet.
    pub fn tried(mut self, address: &str) -> KubeError {
        if let KubeError::Api { server, .. } | KubeError::Transport { server, .. } = &mut self
            && server.is_empty()
        {
            *server = address.to_owned();
        }
        self
    }

    pub(crate) fn code(&self) -> Option<u16> {
        match self {
            KubeError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Tunables of a [`Cluster`].
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// How long one request is retried on transient errors when the call has no deadline.
    pub request_budget: Duration,
    /// Concurrent requests within one apply stage.
    pub concurrency: usize,
    /// Take back fields another manager changed, on objects the agent created (labelled
    /// `app.kubernetes.io/managed-by: bootstrap-agent`). Objects made by anyone else are never
    /// forced; their conflicts are reported.
    pub force_conflicts: bool,
    /// How long one CRD watch may stay open before the server ends it (and it is reopened from
    /// where it stopped). Under the client's 60 s read timeout.
    pub watch_timeout: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            request_budget: Duration::from_secs(60),
            concurrency: 8,
            force_conflicts: false,
            watch_timeout: Duration::from_secs(50),
        }
    }
}

/// ` at ADDRESS`, or nothing while the address is unknown.
fn at(server: &str) -> String {
    if server.is_empty() {
        String::new()
    } else {
        format!(" at {server}")
    }
}

/// A connection to the cluster's API server.
#[derive(Clone)]
pub struct Cluster {
    client: kube::Client,
    options: ClusterOptions,
    /// The API server's address, as the kubeconfig names it; errors name it.
    server: String,
}

impl Cluster {
    /// Connects with an in-memory kubeconfig (as Talos returns it); nothing is written to disk.
    pub async fn connect(kubeconfig_yaml: &str) -> Result<Cluster, KubeError> {
        let kc =
            Kubeconfig::from_yaml(kubeconfig_yaml).map_err(|e| KubeError::Kubeconfig(chain(&e)))?;
        Cluster::from_kubeconfig(kc).await
    }

    pub async fn connect_path(path: &Path) -> Result<Cluster, KubeError> {
        let kc = Kubeconfig::read_from(path)
            .map_err(|e| KubeError::Kubeconfig(format!("{}: {}", path.display(), chain(&e))))?;
        Cluster::from_kubeconfig(kc).await
    }

    async fn from_kubeconfig(kc: Kubeconfig) -> Result<Cluster, KubeError> {
        // kube is built with rustls + ring; make sure ring is the process provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(|e| KubeError::Kubeconfig(chain(&e)))?;
        config.connect_timeout = Some(Duration::from_secs(10));
        config.read_timeout = Some(Duration::from_secs(60));
        config.write_timeout = Some(Duration::from_secs(60));
        // kube's default layer retries 429/503/504 up to 15 times with backoff growing to
        // 1000 s, invisibly: one probe of an API that is down for a minute then takes over a
        // minute, the status shows no error meanwhile, and recovery is noticed late. Retries
        // belong to `retry` (per request, capped) and the boot machine (per step, in status).
        config.default_retry = false;
        let server = config
            .cluster_url
            .to_string()
            .trim_end_matches('/')
            .to_owned();
        let client =
            kube::Client::try_from(config).map_err(|e| KubeError::Kubeconfig(chain(&e)))?;
        Ok(Cluster {
            client,
            options: ClusterOptions::default(),
            server,
        })
    }

    pub fn with_options(mut self, options: ClusterOptions) -> Cluster {
        self.options = options;
        self
    }

    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// The API server's address (`https://HOST:PORT`).
    pub fn server(&self) -> &str {
        &self.server
    }

    fn tried(&self, e: KubeError) -> KubeError {
        e.tried(&self.server)
    }

    fn budget(&self) -> Instant {
        Instant::now() + self.options.request_budget
    }

    /// One readiness probe of the API server (`/readyz`); the caller polls.
    pub async fn api_ready(&self) -> Result<(), KubeError> {
        let req = http::Request::get("/readyz")
            .body(Vec::new())
            .map_err(|e| KubeError::Other {
                context: "build /readyz request".into(),
                message: e.to_string(),
            })?;
        let text = self
            .client
            .request_text(req)
            .await
            .map_err(|e| self.tried(KubeError::from_kube("GET /readyz", e)))?;
        if text.trim() == "ok" {
            Ok(())
        } else {
            Err(KubeError::Api {
                context: "GET /readyz".into(),
                server: self.server.clone(),
                code: 503,
                reason: "NotReady".into(),
                message: text.chars().take(500).collect(),
            })
        }
    }

    /// Whether the Secret `namespace/name` exists with data key `key` (values are not read out).
    pub async fn secret_has_key(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
    ) -> Result<bool, KubeError> {
        secrets::has_key(self, namespace, name, key)
            .await
            .map_err(|e| self.tried(e))
    }

    /// Creates each secret when missing; leaves a different one untouched unless `overwrite`.
    pub async fn seed_secrets(&self, specs: &[SecretSpec]) -> Result<Vec<SecretReport>, KubeError> {
        secrets::seed(self, specs).await.map_err(|e| self.tried(e))
    }

    /// Applies the bundle's CRD sets (namespaces and CRDs) and waits until every one is
    /// Established. CRDs the cluster already has in the same or a newer version are left alone.
    pub async fn install_crds(
        &self,
        bundle: &Bundle,
        deadline: Duration,
    ) -> Result<Vec<ObjectReport>, KubeError> {
        self.install_staged(bundle, &bundle.crds, deadline)
            .await
            .map_err(|e| self.tried(e))
    }

    /// Namespaces and CRDs, wait until the CRDs are Established and served, then the rest.
    async fn install_staged(
        &self,
        bundle: &Bundle,
        manifests: &[Manifest],
        deadline: Duration,
    ) -> Result<Vec<ObjectReport>, KubeError> {
        let until = Instant::now() + deadline;
        let applier = apply::Applier::new(self, bundle, until);
        let (first, rest): (Vec<&Manifest>, Vec<&Manifest>) = manifests
            .iter()
            .partition(|m| m.is_crd() || (m.kind == "Namespace" && m.api_version == "v1"));
        let mut reports = applier.apply_stage(&first).await?;
        let crds: Vec<String> = manifests
            .iter()
            .filter(|m| m.is_crd())
            .map(|m| m.name().to_string())
            .collect();
        applier.wait_established(&crds).await?;
        reports.extend(applier.apply_stage(&rest).await?);
        Ok(reports)
    }

    /// Installs Flux's components in two stages (namespaces + CRDs, wait Established, the
    /// rest), unless the `flux-system` Kustomization has already applied: then Git owns them.
    pub async fn install_flux(
        &self,
        bundle: &Bundle,
        deadline: Duration,
    ) -> Result<Vec<ObjectReport>, KubeError> {
        let until = Instant::now() + deadline;
        if let Some(rev) = flux::applied_revision(self, until)
            .await
            .map_err(|e| self.tried(e))?
        {
            return Ok(vec![ObjectReport::new(
                "Kustomization",
                flux::NAMESPACE,
                flux::NAME,
                ObjectState::Kept,
                format!("Flux components are owned by Git: flux-system has applied {rev}"),
            )]);
        }
        let left = until.saturating_duration_since(Instant::now());
        self.install_staged(bundle, &bundle.flux, left)
            .await
            .map_err(|e| self.tried(e))
    }

    /// Applies the GitRepository and Kustomization `flux-system`.
    pub async fn apply_sync(&self, sync: &FluxSync) -> Result<Vec<ObjectReport>, KubeError> {
        // Once flux-system has applied, Git's gotk-sync.yaml owns these objects (the `flux
        // bootstrap` convention): the agent reports a difference from its configuration and never
        // writes over Git (which would take fields back and end in a conflict on every boot).
        if let Some(rev) = flux::applied_revision(self, self.budget()).await? {
            return flux::compare_sync(self, sync, &rev, self.budget()).await;
        }
        let objects = sync_manifests(sync)?;
        let refs: Vec<&Manifest> = objects.iter().collect();
        let bundle = Bundle::default();
        apply::Applier::new(self, &bundle, self.budget())
            .apply_stage(&refs)
            .await
            .map_err(|e| self.tried(e))
    }

    /// Hands the bundle's objects and the sync objects over to their owners in Git, where they
    /// have taken them over (see [`handoff`]).
    pub async fn hand_over(
        &self,
        bundle: &Bundle,
        sync: &FluxSync,
    ) -> Result<handoff::HandOver, KubeError> {
        let objects = sync_manifests(sync)?;
        handoff::hand_over(self, bundle, &objects, self.budget()).await
    }

    /// One readiness pass over the sync objects and Flux's controllers.
    pub async fn check_ready(&self, sync: &FluxSync) -> Result<Readiness, KubeError> {
        flux::check_ready(self, sync, self.budget())
            .await
            .map_err(|e| self.tried(e))
    }

    /// The other Kustomizations in Flux's namespace (Git's layers), judged as Flux judges them;
    /// informational (the boot does not wait for them).
    pub async fn layers(&self, sync: &FluxSync) -> Result<Vec<ObjectReport>, KubeError> {
        flux::layers(self, sync, self.budget()).await
    }
}
