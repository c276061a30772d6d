//! The steps on the Kubernetes API: wait for it, install the bundle's CRDs and Flux's
//! components, apply Flux's sync objects, and wait until Flux reports them Ready.

use std::path::PathBuf;
use std::time::Duration;

use super::{ClusterAccess, Context, Deadline, Outcome, Settings, Step, StepFailure, StepId};
use crate::bundle::{Bundle, BundleLock, FetchOptions, LOCK_FILE};
use crate::kube::{Cluster, ObjectReport, ObjectState, Readiness};

/// Where the bundle comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct BundleSettings {
    /// Directory holding the bundle lock file (and, when embedded, the artifacts).
    pub dir: PathBuf,
    /// Fetch the artifacts over HTTPS at boot instead of reading them from `dir`.
    pub fetch: bool,
}

impl Context {
    /// The cluster connection, opened on first use (from the kubeconfig step's kubeconfig on
    /// Talos, or from the configured kubeconfig file).
    pub(super) async fn cluster(&mut self) -> Result<Cluster, StepFailure> {
        if let Some(c) = &self.cluster {
            return Ok(c.clone());
        }
        let cluster = match &self.settings.cluster {
            ClusterAccess::Talos { .. } => {
                let Some(kc) = &self.kubeconfig else {
                    return Err(StepFailure::transient(
                        "no kubeconfig yet: the kubeconfig step has not run",
                    ));
                };
                Cluster::connect(kc.as_str()).await
            }
            ClusterAccess::Kubeconfig { path } => Cluster::connect_path(path).await,
        }?;
        self.cluster = Some(cluster.clone());
        Ok(cluster)
    }

    /// The bundle: read from its directory once, or fetched (and kept) in fetch mode.
    async fn bundle(&mut self) -> Result<Bundle, StepFailure> {
        if self.settings.bundle.fetch {
            if let Some(Ok(b)) = &self.bundle {
                return Ok(b.clone());
            }
            let lock = BundleLock::load(&self.settings.bundle.dir.join(LOCK_FILE))?;
            let bundle = Bundle::fetch(&lock, &FetchOptions::default()).await?;
            self.bundle = Some(Ok(bundle.clone()));
            return Ok(bundle);
        }
        match self.local_bundle() {
            Some(Ok(b)) => Ok(b.clone()),
            Some(Err(e)) => Err(StepFailure::classified(e)),
            None => Err(StepFailure::permanent("bundle unavailable")),
        }
    }
}

/// `kube-api`: wait until the API server answers `/readyz`.
pub(super) enum KubeApi {}

impl Step for KubeApi {
    const NAME: &'static str = "kube-api";
    const DEADLINE: Deadline = Deadline::Own(Duration::from_secs(900));

    fn action(settings: &Settings) -> String {
        match &settings.cluster {
            ClusterAccess::Talos { .. } => "wait for the Kubernetes API".into(),
            ClusterAccess::Kubeconfig { path } => {
                format!("wait for the Kubernetes API of {}", path.display())
            }
        }
    }

    async fn attempt(ctx: &mut Context) -> Result<Outcome, StepFailure> {
        let cluster = ctx.cluster().await?;
        cluster.api_ready().await?;
        Ok(Outcome::done("the Kubernetes API is ready"))
    }
}

/// `crds`: the bundle's Namespaces and CRDs (cert-manager, optionally Gateway API), waited for
/// until Established.
pub(super) enum Crds {}

impl Step for Crds {
    const NAME: &'static str = "crds";
    const DEADLINE: Deadline = Deadline::Own(Duration::from_secs(300));

    fn action(_: &Settings) -> String {
        "apply Namespaces and CRDs, wait until Established".into()
    }

    async fn attempt(ctx: &mut Context) -> Result<Outcome, StepFailure> {
        let bundle = ctx.bundle().await?;
        let cluster = ctx.cluster().await?;
        let deadline = ctx.settings.deadlines.for_step(StepId::Crds);
        let reports = cluster.install_crds(&bundle, deadline).await?;
        Ok(applied("definitions", reports))
    }
}

/// `flux`: Flux's components, only while the `flux-system` Kustomization has never applied
/// (Git owns them afterwards).
pub(super) enum Flux {}

impl Step for Flux {
    const NAME: &'static str = "flux";
    const DEADLINE: Deadline = Deadline::Own(Duration::from_secs(300));

    fn action(_: &Settings) -> String {
        "apply Flux's components unless Flux has already synced from Git".into()
    }

    async fn attempt(ctx: &mut Context) -> Result<Outcome, StepFailure> {
        let bundle = ctx.bundle().await?;
        let cluster = ctx.cluster().await?;
        let deadline = ctx.settings.deadlines.for_step(StepId::Flux);
        let reports = cluster.install_flux(&bundle, deadline).await?;
        Ok(applied("Flux components", reports))
    }
}

/// `sync`: the GitRepository and Kustomization `flux-system` (no decryption: nothing in Flux's own
/// path is encrypted; the layers that hold encrypted files decrypt themselves). Part of
/// installing Flux: it runs under `flux`'s deadline.
pub(super) enum Sync {}

impl Step for Sync {
    const NAME: &'static str = "sync";
    const DEADLINE: Deadline = Deadline::SameAs(StepId::Flux);

    fn action(settings: &Settings) -> String {
        let f = &settings.flux;
        format!(
            "apply GitRepository and Kustomization flux-system ({} {} {})",
            f.url, f.branch, f.path
        )
    }

    async fn attempt(ctx: &mut Context) -> Result<Outcome, StepFailure> {
        let cluster = ctx.cluster().await?;
        let reports = cluster.apply_sync(&ctx.settings.flux).await?;
        Ok(applied("sync objects", reports))
    }
}

/// `ready`: the GitRepository, the Kustomization and Flux's controllers Ready as Flux judges
/// them; a terminal `Ready=False` is a failure carrying Flux's message.
pub(super) enum Ready {}

impl Step for Ready {
    const NAME: &'static str = "ready";
    const DEADLINE: Deadline = Deadline::Own(Duration::from_secs(900));

    fn action(_: &Settings) -> String {
        "wait until Flux reports the sync Ready".into()
    }

    async fn attempt(ctx: &mut Context) -> Result<Outcome, StepFailure> {
        let cluster = ctx.cluster().await?;
        match cluster.check_ready(&ctx.settings.flux).await? {
            Readiness::Ready(mut reports) => {
                let layers = layers(&cluster, ctx).await?;
                let behind: Vec<String> = layers
                    .iter()
                    .filter(|r| r.state != ObjectState::Ready)
                    .map(|r| format!("{} ({})", r.name, r.state.as_str().to_lowercase()))
                    .collect();
                reports.extend(layers);
                let mut message = "Flux reports the sync Ready".to_string();
                if !behind.is_empty() {
                    message.push_str(&format!(
                        "; not Ready yet (Flux goes on by itself): {}",
                        behind.join(", ")
                    ));
                }
                Ok(Outcome::Done {
                    message,
                    objects: reports,
                })
            }
            Readiness::Progressing(reports) => {
                let pending: Vec<String> = reports
                    .iter()
                    .filter(|r| r.state != ObjectState::Ready)
                    .map(ToString::to_string)
                    .collect();
                Ok(Outcome::Pending {
                    message: format!("waiting for {}", pending.join("; ")),
                    objects: reports,
                })
            }
            // Without its sealed inputs (the SOPS key) Flux cannot decrypt: its failure is the
            // expected consequence of the wait, not a fault in Git.
            Readiness::Failed {
                object, message, ..
            } if ctx.awaiting.is_some() => Ok(Outcome::Waiting {
                message: format!(
                    "{object}: {message} (expected until the sealed inputs are in the configuration; see the secrets step)"
                ),
                awaiting: ctx.awaiting.clone(),
            }),
            Readiness::Failed {
                object,
                message,
                reports,
            } => Err(StepFailure::permanent(format!("{object}: {message}"))
                .with_hint(
                    "this is Flux's own verdict: fix the cause in Git (or the cluster); Flux retries by itself",
                )
                .with_objects(reports)),
        }
    }
}

/// How long the hand-over waits, within one run, for Flux to apply what the agent installed;
/// what is left then is handed over by a later run (every boot runs the step again).
const HANDOFF_PATIENCE: Duration = Duration::from_secs(600);

/// `handoff`: once Flux has applied them from Git, give up every field of the objects the agent
/// applied (Flux's components, the sync objects, the CRDs a HelmRelease or Kustomization now
/// owns), and delete a component the agent created that Git does not have. See
/// [`crate::kube::HandOver`].
pub(super) enum Handoff {}

impl Step for Handoff {
    const NAME: &'static str = "handoff";
    const DEADLINE: Deadline = Deadline::Own(Duration::from_secs(900));

    fn action(_: &Settings) -> String {
        "hand what the agent applied over to its owners in Git once they have applied it".into()
    }

    async fn attempt(ctx: &mut Context) -> Result<Outcome, StepFailure> {
        let bundle = ctx.bundle().await?;
        let cluster = ctx.cluster().await?;
        let since = *ctx
            .handoff_since
            .get_or_insert_with(tokio::time::Instant::now);
        let h = cluster.hand_over(&bundle, &ctx.settings.flux).await?;
        let count = |state| h.reports.iter().filter(|r| r.state == state).count();
        let (released, deleted, kept) = (
            count(ObjectState::Released),
            count(ObjectState::Deleted),
            count(ObjectState::Kept),
        );
        let mut parts = Vec::new();
        if released > 0 {
            parts.push(format!(
                "{released} handed over to their owners in Git (the agent owns no field of them)"
            ));
        }
        if deleted > 0 {
            parts.push(format!(
                "{deleted} deleted (created by the agent, not in Git)"
            ));
        }
        if h.pending > 0 && since.elapsed() < HANDOFF_PATIENCE {
            parts.push(format!("waiting for Flux to apply {} more", h.pending));
            return Ok(Outcome::Pending {
                message: parts.join("; "),
                objects: h.reports,
            });
        }
        if kept > 0 {
            parts.push(format!(
                "{kept} kept by the agent until their owner in Git applies them (a later run hands them over)"
            ));
        }
        let message = if parts.is_empty() {
            "nothing left to hand over: Git owns what the agent installed".to_string()
        } else {
            parts.join("; ")
        };
        Ok(Outcome::Done {
            message,
            objects: h.reports,
        })
    }
}

/// Git's other layers as Flux reports them. While the sealed inputs are missing, a layer that
/// fails to decrypt waits for the operator, like the secrets step.
async fn layers(cluster: &Cluster, ctx: &Context) -> Result<Vec<ObjectReport>, StepFailure> {
    let mut layers = cluster.layers(&ctx.settings.flux).await?;
    if ctx.awaiting.is_some() {
        for r in &mut layers {
            let m = r.message.to_lowercase();
            if r.state != ObjectState::Ready && (m.contains("decrypt") || m.contains("sops")) {
                r.state = ObjectState::Waiting;
                r.message = format!(
                    "{} (waits for the SOPS key: see the secrets step)",
                    r.message
                );
            }
        }
    }
    Ok(layers)
}

/// `what: 3 created, 2 unchanged`, with the objects.
fn applied(what: &str, reports: Vec<ObjectReport>) -> Outcome {
    let mut counts: Vec<(ObjectState, usize)> = Vec::new();
    for r in &reports {
        match counts.iter_mut().find(|(s, _)| *s == r.state) {
            Some((_, n)) => *n += 1,
            None => counts.push((r.state, 1)),
        }
    }
    let parts: Vec<String> = counts
        .iter()
        .map(|(s, n)| format!("{n} {}", s.as_str().to_lowercase()))
        .collect();
    Outcome::Done {
        message: format!(
            "{what}: {}",
            if parts.is_empty() {
                "nothing to do".into()
            } else {
                parts.join(", ")
            }
        ),
        objects: reports,
    }
}
